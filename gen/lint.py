"""The lint gate: generated Verilog must pass ``verilator --lint-only -Wall``.

Waived, and only these: Amaranth's own width idioms (WIDTHEXPAND/WIDTHTRUNC: it emits ``!x[15:0]`` reductions
and widening adds by design), and the three style warnings TOOLCHAIN.md names as generator artefacts.
"""

import subprocess

from verif.toolchain import verilator_bin, verilator_env

__all__ = ["LINT_WAIVERS", "lint_verilog", "LintError"]

LINT_WAIVERS = ["UNUSEDSIGNAL", "DECLFILENAME", "PROCASSINIT", "WIDTHEXPAND", "WIDTHTRUNC"]


class LintError(RuntimeError):
    """Verilator reported warnings or errors outside the waivers."""


def lint_verilog(path, toplevel):
    """Run the lint gate on one Verilog file; raise :class:`LintError` with Verilator's report on failure."""
    command = [verilator_bin(), "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS),
               "--top-module", toplevel, str(path)]
    run = subprocess.run(command, env=verilator_env(), capture_output=True, text=True)
    report = (run.stdout + run.stderr).strip()
    if run.returncode != 0 or "%Warning" in report or "%Error" in report:
        raise LintError(f"lint of {path} failed:\n{report}")
    return report
