"""The lint gate: generated Verilog must pass ``verilator --lint-only -Wall``.

Waived, and only these: Amaranth's own width idioms (WIDTHEXPAND/WIDTHTRUNC: it emits ``!x[15:0]`` reductions
and widening adds by design), the three style warnings TOOLCHAIN.md names as generator artefacts, and
CASEINCOMPLETE. That last one comes from how Amaranth writes a ``Switch`` or ``FSM`` out: one ``casez`` per
driven signal, holding only the arms that drive it, after a default assignment, so a missing arm means
"keep the default" and the Verilog is complete in meaning. A ``Switch`` with an ``m.Default()`` arm still trips
it (checked on the controller's FSM rewritten as one), so it cannot be fixed in the source.
"""

import subprocess

from tessera.gen.toolchain import verilator_bin, verilator_env

__all__ = ["LINT_WAIVERS", "lint_verilog", "LintError"]

LINT_WAIVERS = ["UNUSEDSIGNAL", "DECLFILENAME", "PROCASSINIT", "WIDTHEXPAND", "WIDTHTRUNC", "CASEINCOMPLETE"]


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
