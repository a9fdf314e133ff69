"""``make bench``: a layer suite on the simulated RTL of several arrays and dataflows, beside SCALE-Sim.

Usage: ``python -m tessera.verif.bench_suite [--quick] [--layers a,b] [--arrays 8x8,16x16] [--dataflows ws,os,rs]
[--scalesim run|closed-form|off] [--out build/bench]``

Every row is one layer on one device (default buffer depths), run as one device program over the simulated host link:
its output is checked bit for bit against the golden model (a mismatch stops the bench), and the row records the
hardware cycle counter over the whole layer (first instruction to last result), utilisation (useful MACs / (PEs x
cycles)), SCALE-Sim's compute cycles for the same layer, array and dataflow (:mod:`~tessera.verif.scalesim_peer`),
energy per useful MAC and its levels (:mod:`~tessera.sw_driver.energy`), link bytes per MAC, and how fast the simulation
ran (simulated cycles / wall seconds of the device run, beside the same RTL clocked by the harness's bare C++ loop).
Writes ``bench.json``, ``bench.md`` and the pictures of :mod:`tessera.sw_driver.reports` under ``--out``.

Grouped convolutions run as the device runs them in ``tessera run`` (block-diagonal dense weights,
``tessera.sw_driver.compiler.dense_group_weights``): the compiler skips the weight tiles that lie wholly between groups,
but inside a tile the zeros between groups are multiplied, so the rows report useful MACs only and their
utilisation is low by design. Depthwise ones of stride 1 on ws arrays whose rows are a multiple of their columns run
as depthwise commands instead (:mod:`tessera.sw_driver.depthwise`), which multiply only the layer's own weights. A
dataflow the configuration does not accept yet (``rs``) is skipped with a note.
"""

import argparse
import dataclasses
import math
import statistics
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np

from tessera.fpga.boards import BOARDS, board_configs
from tessera.gen.config import AcceleratorConfig, ConfigError
from tessera.hw.isa import Opcode
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import TilingError, compile_conv, compile_gemm, dense_group_weights
from tessera.sw_driver.energy import buffer_geometry
from tessera.sw_driver.isa_encode import disassemble
from tessera.sw_driver.reports import layer_record, markdown_table, write_json, write_markdown, write_pictures
from tessera.verif.cases import random_gemm
from tessera.verif.scalesim_peer import SCALESIM_DATAFLOWS, PeerLayer, ScaleSimError, peer_for, scalesim_cycles

__all__ = ["BenchLayer", "SUITE", "QUICK", "BenchError", "run_suite", "main"]

#: Simulated cycles per second assumed when estimating how long a run will take (TOOLCHAIN.md measurements).
ASSUMED_SIM_RATE = 300_000
#: Cycles the bare C++ loop runs to measure the ceiling of simulation speed.
BARE_LOOP_CYCLES = 200_000


class BenchError(RuntimeError):
    """The device gave a wrong answer (or none) for a bench layer."""


@dataclasses.dataclass(frozen=True)
class BenchLayer:
    """A layer of the suite: a GEMM (``m x k x n``) or a convolution (``batch`` images of ``channels x size x
    size``, ``out_channels`` filters of ``kernel x kernel``, ``group`` groups)."""
    name: str
    kind: str                   # "gemm" or "conv"
    m: int = 0
    k: int = 0
    n: int = 0
    channels: int = 0
    out_channels: int = 0
    size: int = 0
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    group: int = 1
    batch: int = 1
    note: str = ""

    @property
    def out_size(self):
        return (self.size + 2 * self.pad - self.kernel) // self.stride + 1

    @property
    def macs(self):
        """Useful MACs (a grouped conv's zeros between groups not counted)."""
        if self.kind == "gemm":
            return self.m * self.k * self.n
        return (self.batch * self.out_size ** 2 * self.out_channels * (self.channels // self.group)
                * self.kernel ** 2)

    @property
    def computed_macs(self):
        """MACs the device multiplies: a grouped conv runs with dense (block-diagonal) weights."""
        return self.macs * (self.group if self.kind == "conv" else 1)

    def peer(self):
        """The layer as SCALE-Sim sees it: its im2col GEMM; a grouped conv as ``group`` GEMMs of one group each
        (SCALE-Sim runs its own depthwise layers channel by channel)."""
        if self.kind == "gemm":
            return PeerLayer(self.name, self.m, self.k, self.n)
        return PeerLayer(self.name, self.batch * self.out_size ** 2, self.channels // self.group * self.kernel ** 2,
                         self.out_channels // self.group, repeat=self.group)

    def describe(self):
        if self.kind == "gemm":
            return f"GEMM {self.m}x{self.k}x{self.n}"
        group = f", group {self.group}" if self.group > 1 else ""
        batch = f"{self.batch} x " if self.batch > 1 else ""
        return (f"conv {batch}{self.channels}x{self.size}x{self.size} -> {self.out_channels}, {self.kernel}x"
                f"{self.kernel} s{self.stride} p{self.pad}{group}")


def _conv(name, channels, out_channels, size, kernel, pad=None, **kw):
    return BenchLayer(name, "conv", channels=channels, out_channels=out_channels, size=size, kernel=kernel,
                      pad=kernel // 2 if pad is None else pad, **kw)


DIGITS_BATCH = 60

SUITE = [
    BenchLayer("gemm64", "gemm", m=64, k=64, n=64),
    BenchLayer("gemm256", "gemm", m=256, k=256, n=256),
    _conv("conv3x3_32x32", 16, 32, 32, 3),
    _conv("resnet18_conv2_x", 64, 64, 56, 3, note="ResNet-18 conv2_x"),
    _conv("resnet18_conv4_x", 256, 256, 14, 3, note="ResNet-18 conv4_x"),
    _conv("mobilenet_pw", 512, 512, 14, 1, note="MobileNet-v1 pointwise"),
    # MobileNet-v1 depthwise layers, run dense block-diagonal: the 14x14x512 one needs K = 4608 weight rows per tile,
    # more than the default 4096-word weight buffer, so it does not tile (tessera run puts it on the host); the
    # 28x28x256 one does.
    _conv("mobilenet_dw14", 512, 512, 14, 3, group=512, note="MobileNet-v1 depthwise 14x14x512"),
    _conv("mobilenet_dw28", 256, 256, 28, 3, group=256, note="MobileNet-v1 depthwise 28x28x256"),
    _conv("digits_conv1", 1, 16, 8, 3, batch=DIGITS_BATCH, note="digits CNN"),
    _conv("digits_conv2", 16, 16, 8, 3, batch=DIGITS_BATCH, note="digits CNN"),
    _conv("digits_conv3", 16, 32, 4, 3, batch=DIGITS_BATCH, note="digits CNN (after 2x2 max pooling)"),
    BenchLayer("digits_fc", "gemm", m=DIGITS_BATCH, k=32, n=10, note="digits CNN"),
]

#: The smoke subset (``--quick``): small layers that still cover GEMM, conv, batch and a partial tile.
QUICK = ["gemm64", "conv3x3_32x32", "digits_conv2", "digits_fc"]

DEFAULT_ARRAYS = [(8, 8), (16, 16)]
DEFAULT_DATAFLOWS = ["ws", "os", "rs"]


# --- operands and the expected answer ---------------------------------------------------------------------------


def _seed(layer):
    return sum(map(ord, layer.name)) * 7919 + 17


def _operands(layer):
    """``(compile(cfg) -> Program, expected output as the Program assembles it)`` for ``layer``."""
    rng = np.random.default_rng(_seed(layer))
    if layer.kind == "gemm":
        operands = random_gemm(rng, layer.m, layer.k, layer.n)
        return (lambda cfg: compile_gemm(cfg, *operands)), golden.gemm_hw(*operands)
    x = rng.integers(-128, 128, (layer.batch, layer.channels, layer.size, layer.size), dtype=np.int8)
    w = rng.integers(-128, 128, (layer.out_channels, layer.channels // layer.group, layer.kernel, layer.kernel),
                     dtype=np.int8)
    x_zp = int(rng.integers(-128, 128))
    bias = rng.integers(-2**16, 2**16, layer.out_channels, dtype=np.int32)
    fan_in = layer.channels // layer.group * layer.kernel ** 2
    scale = (rng.uniform(0.5, 2, layer.out_channels) / (64 * np.sqrt(fan_in))).astype(np.float32)
    y_zp = int(rng.integers(-128, 128))
    pads = (layer.pad,) * 4
    strides = (layer.stride, layer.stride)
    acc = golden.conv2d_int(x, x_zp, w, 0, strides=strides, pads=pads, group=layer.group)
    expected = golden.requantize(acc + bias[None, :, None, None], scale, y_zp, axis=1)
    dense = dense_group_weights(w, layer.group)
    folded = golden.fold_input_zero_point(bias, x_zp, dense, output_axis=0)
    # compile_conv's Program assembles (N * out_h * out_w, O), image by image
    expected = expected.transpose(0, 2, 3, 1).reshape(-1, layer.out_channels)
    return ((lambda cfg: compile_conv(cfg, x, dense, folded, scale, y_zp, strides=strides, pads=pads,
                                      pad_value=x_zp)), expected)


# --- one device, one layer --------------------------------------------------------------------------------------


def _sram_kb(cfg):
    """SCALE-Sim's ifmap / filter / ofmap SRAM sizes for ``cfg``: its activation, weight and accumulator buffers."""
    geometry = buffer_geometry(cfg)
    return tuple(max(1, geometry[b][1] // 1024) for b in ("act", "weight", "acc"))


def run_layer(device, layer, *, costs=None):
    """Run ``layer`` on ``device`` (bit-exact check included); returns its bench row (without SCALE-Sim)."""
    cfg = device.cfg
    start = time.perf_counter()
    compile_program, expected = _operands(layer)
    program = compile_program(cfg)
    compile_s = time.perf_counter() - start
    sim_before = device.transport.cycles
    start = time.perf_counter()
    y, run = device.run(program)
    wall = time.perf_counter() - start
    sim_cycles = device.transport.cycles - sim_before
    if y.shape != expected.shape or not np.array_equal(y, expected):
        wrong = int(np.count_nonzero(y != expected)) if y.shape == expected.shape else "shape"
        raise BenchError(f"{layer.name} on {cfg.dataflow} {cfg.rows}x{cfg.cols}: the device's output differs from "
                         f"the golden model ({wrong} of {expected.size} values)")
    record = layer_record(cfg, layer.macs, run.counters, costs=costs)
    link_bytes = record["counters"]["link_bytes_in"] + record["counters"]["link_bytes_out"]
    return {
        "layer": layer.name, "shape": layer.describe(), "dataflow": cfg.dataflow, "rows": cfg.rows,
        "cols": cfg.cols, "macs": layer.macs,
        "computed_macs": layer.macs if _runs_depthwise(cfg, program) else program.macs - program.macs_skipped,
        "cycles": record["cycles"], "utilization": record["utilization"],
        "scalesim_cycles": None, "scalesim_source": "", "rtl_over_scalesim": None, "busy_over_scalesim": None,
        "energy_pj_per_mac": record["energy_pj_per_mac"], "link_bytes_per_mac": link_bytes / layer.macs,
        "sim_cycles": sim_cycles, "sim_cycles_per_s": sim_cycles / wall if wall else 0.0, "wall_s": wall,
        "compile_s": compile_s, "bit_exact": True, "energy_pj": record["energy_pj"],
        "energy_levels_pj": record["energy_levels_pj"], "counters": record["counters"], "config_hash": cfg.hash,
        "note": layer.note, "conv_channels": layer.channels if layer.kind == "conv" else None,
    }


def _runs_depthwise(cfg, program):
    """Whether ``program`` runs depthwise commands (each multiplies the layer's own weights only)."""
    return any(opcode == Opcode.GEMM and ops["taps"] for opcode, ops, _ in disassemble(cfg, program.words))


def _lower_bound_cycles(cfg, layer):
    """A floor on a layer's simulated cycles: its useful MACs on every PE, or its operands over the link."""
    if layer.kind == "gemm":
        link_bytes = layer.m * layer.k + layer.k * layer.n + layer.m * layer.n
    else:
        link_bytes = (layer.batch * layer.channels * layer.size ** 2 + layer.out_channels * layer.channels
                      * layer.kernel ** 2 + layer.batch * layer.out_channels * layer.out_size ** 2)
    return max(layer.macs / cfg.pes, link_bytes / 4)


# --- the suite --------------------------------------------------------------------------------------------------


def _configs(arrays, dataflows, log):
    configs = []
    for rows, cols in arrays:
        for dataflow in dataflows:
            try:
                configs.append(AcceleratorConfig(rows=rows, cols=cols, dataflow=dataflow))
            except ConfigError as error:
                log(f"note: skipping dataflow {dataflow!r} on {rows}x{cols}: {error}")
    return configs


def _peer_job(configs, layers, mode, budget, log):
    """SCALE-Sim for every (config, layer) in a background thread (it runs in its own process, so it overlaps
    the RTL simulation). Returns ``(thread, results)``; results map (config hash, layer name) to PeerResult."""
    results = {}

    def work():
        for cfg in configs:
            if cfg.dataflow not in SCALESIM_DATAFLOWS:
                continue
            peers = [layer.peer() for layer in layers]
            if mode == "closed-form":
                found = [types.SimpleNamespace(cycles=peer_for(p, cfg.rows, cfg.cols, cfg.dataflow),
                                               source="closed-form") for p in peers]
            else:
                try:
                    found = scalesim_cycles(peers, cfg.rows, cfg.cols, cfg.dataflow, sram_kb=_sram_kb(cfg),
                                            budget_cycles=budget)
                except ScaleSimError as error:
                    log(f"SCALE-Sim failed on {cfg.dataflow} {cfg.rows}x{cfg.cols}; closed form used: {error}")
                    found = [types.SimpleNamespace(cycles=peer_for(p, cfg.rows, cfg.cols, cfg.dataflow),
                                                   source="closed-form (SCALE-Sim failed)") for p in peers]
            for layer, result in zip(layers, found, strict=True):
                results[(cfg.hash, layer.name)] = result

    def guarded():
        try:
            work()
        except Exception as error:  # noqa: BLE001 -- the RTL rows stand without a peer; say why they lack one
            log(f"SCALE-Sim peer stopped: {type(error).__name__}: {error}")

    thread = threading.Thread(target=guarded, name="scalesim-peer", daemon=True)
    if mode != "off":
        thread.start()
    return thread, results


def run_suite(layers, configs, *, out_dir="build/bench", scalesim="run", scalesim_budget=500_000, bare_loop=True,
              costs=None, pictures=True, log=print):
    """Run ``layers`` on every configuration of ``configs``; write ``bench.json``, ``bench.md`` and pictures
    under ``out_dir``; return the JSON payload (``rows``, ``devices``, ``summary``)."""
    from tessera.sw_driver.runtime import open_sim_device

    started = time.perf_counter()
    estimate = sum(_lower_bound_cycles(cfg, layer) for cfg in configs for layer in layers)
    log(f"{len(layers)} layers x {len(configs)} devices; at least {estimate / 1e6:.1f} M simulated cycles, "
        f"~{estimate / ASSUMED_SIM_RATE / 60:.1f} min at {ASSUMED_SIM_RATE:,} cycles/s")
    peer_thread, peer_results = _peer_job(configs, layers, scalesim, scalesim_budget, log)
    rows, devices = [], []
    for cfg in configs:
        t0 = time.perf_counter()
        with open_sim_device(cfg) as device:
            device_info = {"dataflow": cfg.dataflow, "rows": cfg.rows, "cols": cfg.cols, "config_hash": cfg.hash,
                           "config": cfg.to_dict(), "open_s": time.perf_counter() - t0,
                           "harness_rebuilt": device.transport.build.rebuilt}
            for layer in layers:
                try:
                    row = run_layer(device, layer, costs=costs)
                except TilingError as error:
                    log(f"  {layer.name:18} {cfg.dataflow} {cfg.rows}x{cfg.cols}: does not tile: {error}")
                    rows.append({"layer": layer.name, "shape": layer.describe(), "dataflow": cfg.dataflow,
                                 "rows": cfg.rows, "cols": cfg.cols, "macs": layer.macs, "skipped": str(error)})
                    continue
                rows.append(row)
                log(f"  {layer.name:18} {cfg.dataflow} {cfg.rows:>2}x{cfg.cols:<2} {row['cycles']:>11,} cycles "
                    f"util {row['utilization']:6.1%}  {row['energy_pj_per_mac']:7.2f} pJ/MAC  "
                    f"{row['sim_cycles_per_s']:>9,.0f} cycles/s  {row['wall_s']:6.1f} s")
            if bare_loop:
                device_info["bare_loop_cycles_per_s"] = _bare_loop_rate(device)
        devices.append(device_info)
    if peer_thread.is_alive():
        log("waiting for SCALE-Sim ...")
    if scalesim != "off":
        peer_thread.join()
    for row in rows:
        bare = next((d.get("bare_loop_cycles_per_s") for d in devices if d["config_hash"] == row.get("config_hash")),
                    None)
        if "cycles" in row:
            row["sim_vs_bare_loop"] = row["sim_cycles_per_s"] / bare if bare else None
        peer = peer_results.get((row.get("config_hash"), row["layer"]))
        if peer is not None and "cycles" in row:
            row["scalesim_cycles"], row["scalesim_source"] = int(peer.cycles), peer.source
            row["scalesim_seconds"] = getattr(peer, "seconds", 0.0)
            row["rtl_over_scalesim"] = row["cycles"] / peer.cycles
            # the core's busy cycles leave out the time it waited for the link, which SCALE-Sim does not model
            row["busy_over_scalesim"] = row["counters"]["raw"]["busy_cycles"] / peer.cycles
    summary = _summary(rows, devices, time.perf_counter() - started)
    payload = {"rows": rows, "devices": devices, "summary": summary,
               "layers": [dataclasses.asdict(layer) for layer in layers]}
    out_dir = Path(out_dir)
    write_json(out_dir / "bench.json", payload)
    ran = [r for r in rows if "cycles" in r]
    if pictures and ran:
        summary["pictures"] = [str(p) for p in write_pictures(ran, out_dir)]
        write_json(out_dir / "bench.json", payload)
    write_markdown(out_dir / "bench.md", format_markdown(payload))
    return payload


def _bare_loop_rate(device, repeats=3):
    """The same RTL clocked by the harness's bare C++ loop with nothing to do: the ceiling for simulation speed
    (median of a few runs: the machine is shared)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        device.transport.run(BARE_LOOP_CYCLES // repeats)
        rates.append(BARE_LOOP_CYCLES // repeats / (time.perf_counter() - start))
    return statistics.median(rates)


def _medians(ran, key):
    by_dataflow = {df: [r[key] for r in ran if r["dataflow"] == df and r.get(key)]
                   for df in dict.fromkeys(r["dataflow"] for r in ran)}
    return {df: statistics.median(v) for df, v in by_dataflow.items() if v}


def _summary(rows, devices, wall):
    ran = [r for r in rows if "cycles" in r]
    summary = {"wall_s": wall, "rows": len(ran), "skipped": len(rows) - len(ran),
               "median_rtl_over_scalesim": _medians(ran, "rtl_over_scalesim"),
               "median_busy_over_scalesim": _medians(ran, "busy_over_scalesim"),
               "scalesim_seconds": sum(r.get("scalesim_seconds", 0.0) for r in ran),
               "median_sim_cycles_per_s": statistics.median([r["sim_cycles_per_s"] for r in ran]) if ran else None}
    # The speed target is about a compute-bound layer: the largest GEMM on each device that keeps the
    # array at least half busy.
    bound = {}
    for r in ran:
        if r["layer"].startswith("gemm") and r.get("sim_vs_bare_loop") and r["utilization"] >= 0.5:
            key = f"{r['dataflow']} {r['rows']}x{r['cols']}"
            if key not in bound or r["macs"] > bound[key]["macs"]:
                bound[key] = {"layer": r["layer"], "macs": r["macs"], "sim_vs_bare_loop": r["sim_vs_bare_loop"],
                              "sim_cycles_per_s": r["sim_cycles_per_s"]}
    summary["compute_bound_sim_vs_bare_loop"] = bound
    return summary


# --- tables -----------------------------------------------------------------------------------------------------


def _int(value):
    return f"{value:,}"


COLUMNS = [("layer", "layer", ""), ("dataflow", "dataflow", ""), ("array", "array", ""), ("macs", "MACs", _int),
           ("cycles", "cycles", _int), ("utilization", "util", ".1%"),
           ("scalesim_cycles", "SCALE-Sim cycles", _int), ("rtl_over_scalesim", "RTL/SCALE-Sim", ".2f"),
           ("energy_pj_per_mac", "pJ/MAC", ".2f"), ("link_bytes_per_mac", "link B/MAC", ".3f"),
           ("sim_cycles_per_s", "sim cycles/s", ",.0f"), ("wall_s", "wall s", ".1f")]


def format_markdown(payload):
    rows = [dict(r, array=f"{r['rows']}x{r['cols']}") for r in payload["rows"]]
    ran = [r for r in rows if "cycles" in r]
    summary = payload["summary"]
    lines = ["# Tessera bench", "", markdown_table(ran, COLUMNS), ""]
    for r in rows:
        if "skipped" in r:
            lines.append(f"- {r['layer']} on {r['dataflow']} {r['array']}: not run ({r['skipped']})")
    medians = summary["median_rtl_over_scalesim"]
    for df, value in medians.items():
        verdict = "target <= 1.0 met" if value <= 1.0 else "above the target of 1.0"
        busy = summary["median_busy_over_scalesim"].get(df)
        lines.append(f"- median RTL cycles / SCALE-Sim cycles on {df} rows: **{value:.2f}** ({verdict}); counting "
                     f"only the core's busy cycles (not its wait for the link): {busy:.2f}")
    over = [r for r in ran if r["dataflow"] == "ws" and r["rtl_over_scalesim"] and r["rtl_over_scalesim"] > 1.0]
    if over:
        lines.append("- ws rows above 1.0, and why:")
        lines += [f"  - {r['layer']} {r['array']}: {r['rtl_over_scalesim']:.2f}; {_why_slower(r)}" for r in over]
    closed = sorted({f"{r['layer']} {r['dataflow']} {r['array']}" for r in ran
                     if r["scalesim_source"].startswith("closed-form")})
    if closed:
        lines.append(f"- SCALE-Sim cycles from its closed form (checked against SCALE-Sim by "
                     f"tests/test_scalesim_peer.py), not simulated here: {', '.join(closed)}")
    no_peer = sorted({r["dataflow"] for r in ran if r["dataflow"] not in SCALESIM_DATAFLOWS})
    if no_peer:
        lines.append(f"- SCALE-Sim has no {', '.join(no_peer)} dataflow: those rows have no peer")
    lines.append("- RTL cycles are the device's cycle counter over the whole layer, link transfers included; "
                 "SCALE-Sim's are its stall-free compute cycles.")
    lines.append("- Grouped convs run with block-diagonal weights: ws skips the all-zero weight tiles between groups "
                 "(the zeros inside a tile are multiplied), os and rs skip only all-zero output tiles, so they run "
                 "dense; depthwise ones of stride 1 run as depthwise commands on ws (the 8x8 and 16x16 arrays); "
                 "MACs, utilisation, pJ/MAC and link B/MAC count useful MACs only. SCALE-Sim runs them channel by "
                 "channel.")
    for d in payload["devices"]:
        if d.get("bare_loop_cycles_per_s"):
            lines.append(f"- {d['dataflow']} {d['rows']}x{d['cols']}: bare Verilator loop "
                         f"{d['bare_loop_cycles_per_s']:,.0f} cycles/s")
    for key, b in summary["compute_bound_sim_vs_bare_loop"].items():
        lines.append(f"- compute-bound {b['layer']} on {key}: simulated at {b['sim_cycles_per_s']:,.0f} cycles/s, "
                     f"{b['sim_vs_bare_loop']:.0%} of the bare loop (target >= 50%)")
    if summary["scalesim_seconds"] > 10:
        lines.append(f"- SCALE-Sim simulated layers for {summary['scalesim_seconds']:.0f} s alongside the RTL runs "
                     f"(results not cached yet), sharing the cores: simulation speeds above are lower than on a "
                     f"quiet machine")
    lines.append(f"- total wall time {summary['wall_s']:.0f} s")
    return "\n".join(lines) + "\n"


def _why_slower(row):
    """Where a row's cycles beyond SCALE-Sim's went, from its counters."""
    raw = row["counters"]["raw"]
    reasons = []
    if row["computed_macs"] > row["macs"]:
        reasons.append(f"grouped conv: the array multiplies {row['computed_macs'] // row['macs']}x the useful MACs "
                       f"(block-diagonal weights; the all-zero tiles between groups are skipped)")
    elif row.get("conv_channels") and row["conv_channels"] < row["rows"]:
        reasons.append(f"{row['conv_channels']} input channel(s) fill {row['conv_channels']} of {row['rows']} "
                       f"array rows (the device maps channels to rows and slides the window on chip; SCALE-Sim's "
                       f"im2col maps C x KH x KW to rows)")
    waiting = raw["stall_input_cycles"] / raw["cycles"]
    if waiting >= 0.02:
        reasons.append(f"{waiting:.0%} of the cycles wait for operands over the link, which SCALE-Sim does not "
                       f"model (busy cycles / SCALE-Sim: {row['busy_over_scalesim']:.2f})")
    idle = 1 - raw["array_cycles"] / max(1, raw["busy_cycles"])
    if idle >= 0.05:
        reasons.append(f"the array is fed in {1 - idle:.0%} of the busy cycles (fill, drain and per-command "
                       f"latency: {raw['commands']} commands of {row['macs'] // max(1, raw['commands']):,} MACs)")
    return "; ".join(reasons) or "within a few percent"


def rerender(out_dir):
    """Rewrite ``bench.md`` and the pictures from ``bench.json`` (after a change to the report, not the run)."""
    import json

    out_dir = Path(out_dir)
    payload = json.loads((out_dir / "bench.json").read_text())
    payload["summary"] = _summary(payload["rows"], payload["devices"], payload["summary"]["wall_s"])
    ran = [r for r in payload["rows"] if "cycles" in r]
    if ran:
        payload["summary"]["pictures"] = [str(p) for p in write_pictures(ran, out_dir)]
    write_json(out_dir / "bench.json", payload)
    write_markdown(out_dir / "bench.md", format_markdown(payload))
    return payload


def _parse_arrays(text):
    arrays = []
    for item in text.split(","):
        try:
            rows, cols = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"array {item!r}: write ROWSxCOLS, e.g. 8x8") from None
        arrays.append((rows, cols))
    return arrays


def select_layers(names):
    by_name = {layer.name: layer for layer in SUITE}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown layer(s) {', '.join(unknown)}; the suite has: {', '.join(by_name)}")
    return [by_name[n] for n in names]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke subset: {', '.join(QUICK)}, 8x8 only")
    parser.add_argument("--layers", help="comma-separated layer names (default: the whole suite)")
    parser.add_argument("--arrays", type=_parse_arrays, help="e.g. 8x8,16x16 (default)")
    parser.add_argument("--dataflows", help="default: ws,os,rs (with --board: the board's)")
    parser.add_argument("--board", choices=sorted(BOARDS),
                        help="the board's default configuration, at the clock its bitstream meets, instead of "
                             "--arrays")
    parser.add_argument("--batch", type=int, help=f"images per digits layer (default {DIGITS_BATCH})")
    parser.add_argument("--scalesim", choices=["run", "closed-form", "off"], default="run",
                        help="run SCALE-Sim (cached; layers over the budget use its closed form), closed form only, "
                             "or no peer")
    parser.add_argument("--scalesim-budget", type=int, default=500_000,
                        help="simulate in SCALE-Sim only layers of at most this many cycles (~12k cycles/s)")
    parser.add_argument("--energy-table", help="cost table: horowitz-45nm (default), eyeriss, or a YAML file")
    parser.add_argument("--out", default="build/bench")
    parser.add_argument("--no-pictures", action="store_true")
    parser.add_argument("--rerender", action="store_true",
                        help="run nothing: rewrite bench.md and the pictures from OUT/bench.json")
    args = parser.parse_args(argv)
    if args.rerender:
        print(format_markdown(rerender(args.out)))
        return 0

    started = time.perf_counter()
    names = args.layers.split(",") if args.layers else (QUICK if args.quick else [layer.name for layer in SUITE])
    layers = select_layers(names)
    if args.batch:
        layers = [dataclasses.replace(layer, batch=args.batch, m=args.batch if layer.kind == "gemm" else layer.m)
                  if layer.name.startswith("digits") else layer for layer in layers]
    dataflows = [d.strip() for d in args.dataflows.split(",") if d.strip()] if args.dataflows else None
    if args.board:
        if args.arrays:
            parser.error(f"--arrays and --board {args.board} both name the arrays; accepted: one of them")
        board = board_configs()[args.board]
        configs = [board.replace(dataflow=dataflow) for dataflow in dataflows or [board.dataflow]]
    else:
        arrays = args.arrays or ([(8, 8)] if args.quick else DEFAULT_ARRAYS)
        configs = _configs(arrays, dataflows or list(DEFAULT_DATAFLOWS), print)
    payload = run_suite(layers, configs, out_dir=args.out, scalesim=args.scalesim,
                        scalesim_budget=args.scalesim_budget, costs=args.energy_table,
                        pictures=not args.no_pictures)
    print()
    print(format_markdown(payload))
    print(f"wrote {Path(args.out) / 'bench.json'} and {Path(args.out) / 'bench.md'}; wall time "
          f"{time.perf_counter() - started:.0f} s ({math.ceil((time.perf_counter() - started) / 60)} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
