"""``make bench`` (part): the four MLPerf Tiny models, layer by layer and resident, on one simulated device.

Usage: ``python -m tessera.verif.bench_residency [--models a,b] [--width W] [--out build/bench]``

Each model (:mod:`tessera.verif.mlperf_tiny`, seeded random weights, quantized by onnxruntime) runs one inference
twice on the same simulated RTL: ``per-layer`` (every device layer its own program: weights and activations over the
link each time) and ``resident`` (runs of Conv and Gemm layers compiled once into the device's memories; only inputs
and results cross the link; :mod:`tessera.sw_driver.model_compiler`). Both outputs must equal onnxruntime's bit for
bit (a mismatch stops the bench). The rows give, per inference, the device's cycles and latency at the configuration's
clock, link bytes in and out beside the model's own input and output bytes, and energy by level
(:mod:`tessera.sw_driver.energy`); the resident rows add the one-time load and which layers stayed resident.
Writes ``residency.json`` and ``residency.md`` under ``--out``.

The device is a 16x16 weight-stationary array with buffers sized for the models (:data:`BENCH_CONFIG`).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tessera.fpga.boards import BOARDS, board_configs
from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver.energy import layer_energy
from tessera.sw_driver.model_compiler import compile_model, residency, run_model
from tessera.sw_driver.model_runner import run_graph_on
from tessera.sw_driver.onnx_import import load_model
from tessera.sw_driver.reports import markdown_table, write_json, write_markdown
from tessera.sw_driver.runtime import open_sim_device
from tessera.verif.layer_profile import PARTS, layer_rows, plot_layers
from tessera.verif.mlperf_tiny import MODELS, quantized

__all__ = ["BENCH_CONFIG", "model_and_reference", "run_model_both_ways", "main"]

#: A 16x16 WS array whose buffers hold the models' weights and maps where the array can keep them (the depthwise
#: layers of MobileNet expand into dense block-diagonal weights, which do not all fit: those run layer by layer).
BENCH_CONFIG = AcceleratorConfig(rows=16, cols=16, act_depth=16384, weight_depth=65536, acc_depth=1024,
                                 param_depth=1024, vec_depth=16384, program_depth=65536)

_LEVELS = ("link", "buffers", "rf", "mac", "total")

#: The MLPerf Tiny issue's latency targets (ms, on the ULX3S default) and the published FPGA results beside them
#: (MLPerf Tiny submissions, vendor tools), as that issue lists them.
PUBLISHED = {
    "ic_resnet8": (0.6, ("fpgaConvNet int8: ZedBoard 0.411 ms, ZC706 0.147 ms; FINN binary CNV, Pynq-Z2 1.51 ms; "
                         "hls4ml ResNet, Pynq-Z2 7.64 ms")),
    "kws_ds_cnn": (0.2, "fpgaConvNet ZedBoard 0.324 ms; FINN 3-bit, Pynq-Z2 0.0175 ms"),
    "vww_mobilenet": (0.6, "fpgaConvNet ZC706 0.72 ms, ZedBoard 9.49 ms"),
    "ad_autoencoder": (0.15, "hls4ml, Pynq-Z2 0.0187 ms"),
}


class BenchError(RuntimeError):
    """A model's output differs from onnxruntime's."""


def _device_rows(reports):
    return [r for r in reports if r.target == "device"]


def _figures(cfg, reports, io_bytes):
    device = _device_rows(reports)
    cycles = sum(r.cycles for r in device)
    counters = {}
    for r in device:
        for key, value in r.counters.items():
            counters[key] = counters.get(key, 0) + value
    energy = {key: sum(layer_energy(cfg, r.counters)[key] for r in device) for key in _LEVELS}
    macs = sum(r.macs for r in device)
    return {"cycles": cycles, "latency_us": cycles / cfg.clock_mhz,
            "utilization": macs / (cfg.pes * cycles) if cycles else 0.0,
            "link_bytes_in": 4 * counters.get("link_words_in", 0),
            "link_bytes_out": 4 * counters.get("link_words_out", 0), "io_bytes": io_bytes,
            "energy_pj": energy}


def model_and_reference(name, folder, *, width=1.0, seed=0):
    """MLPerf Tiny model ``name`` quantized into ``folder``: its graph, a seeded random input, onnxruntime's output
    for it, and the model's own input and output bytes (one per quantized value each way)."""
    path = quantized(name, folder / name, seed=seed, width=width)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    x = np.random.default_rng(seed).normal(0, 1, spec.shape).astype(np.float32)
    reference = session.run(None, {spec.name: x})[0]
    return load_model(path), {spec.name: x}, reference, int(np.prod(spec.shape)) + int(reference.size)


def run_model_both_ways(name, cfg, folder, *, width=1.0, seed=0, fold_row_taps=False):
    """One inference of MLPerf Tiny model ``name`` per-layer and resident (``fold_row_taps``: its first conv's row
    taps folded into channels by the host, where faster) on the simulated device of ``cfg``: ``[per-layer row,
    resident row]``."""
    graph, inputs, reference, io_bytes = model_and_reference(name, folder, width=width, seed=seed)
    rows = []
    with open_sim_device(cfg) as device:
        outputs, reports = run_graph_on(graph, inputs, device)
        _check(name, "per-layer", outputs[graph.outputs[0].name], reference)
        rows.append({"model": name, "mode": "per-layer", **_figures(cfg, reports, io_bytes),
                     "layers": layer_rows(name, cfg, reports)})
        segments = compile_model(graph, cfg, fold_row_taps=fold_row_taps)
        outputs, reports, one_time = run_model(graph, inputs, device, segments)
        _check(name, "resident", outputs[graph.outputs[0].name], reference)
        kept = residency(graph, segments)
        rows.append({"model": name, "mode": "resident", **_figures(cfg, reports, io_bytes),
                     "one_time_bytes": 4 * one_time.counters["link_words_in"] if one_time else 0,
                     "resident_layers": f"{kept['resident_layers']} of {kept['compute_layers']}",
                     "not_resident": kept["not_resident"], "streamed_layers": kept["streamed_layers"]})
    return rows


def latency_table(cfg, rows, width=1.0):
    """The resident rows' device latency (the run's cycles at the configuration's clock, the input's LOAD
    included) and utilisation beside the MLPerf Tiny issue's target and the published FPGA results. The targets are
    the full models': at another channel ``width`` the table says so and does not call them met."""
    full = width == 1.0
    resident = [{**row, "latency_ms": row["latency_us"] / 1000, "target_ms": PUBLISHED[row["model"]][0],
                 "met": ("yes" if row["latency_us"] / 1000 <= PUBLISHED[row["model"]][0] else "no") if full
                 else "n/a", "published": PUBLISHED[row["model"]][1]}
                for row in rows if row["mode"] == "resident"]
    caveat = "" if full else f" (models at width {width:g}: the targets are the full models')"
    return (f"Latency per inference, resident, at {cfg.clock_mhz:g} MHz ({cfg.dataflow} {cfg.rows}x{cfg.cols})"
            f"{caveat}:\n\n"
            + markdown_table(resident, [("model", "model", ""), ("latency_ms", "latency ms", ".3f"),
                                        ("utilization", "utilisation", ".0%"), ("target_ms", "target ms", ".2f"),
                                        ("met", "met", ""), ("published", "published FPGA results", "")]))


def _check(name, mode, y, reference):
    if not np.array_equal(y, reference):
        raise BenchError(f"{name} ({mode}): {int(np.count_nonzero(y != reference))} of {y.size} outputs differ "
                         f"from onnxruntime's")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"default: {','.join(MODELS)}")
    parser.add_argument("--width", type=float, default=1.0, help="channel width factor (1.0: the reference models)")
    parser.add_argument("--out", default="build/bench", help="output folder (default build/bench)")
    parser.add_argument("--board", choices=sorted(BOARDS),
                        help="the board's default configuration, at the clock its bitstream meets (default: a 16x16 "
                             "WS array sized to hold the models)")
    parser.add_argument("--fold-row-taps", action="store_true",
                        help="resident, the host folds a first conv's kernel row taps into channels where that is "
                             "faster (its input crossing the link as many times over)")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; accepted: {', '.join(MODELS)}")
    cfg = board_configs()[args.board] if args.board else BENCH_CONFIG
    print(f"MLPerf Tiny, one inference each, per layer and resident, on {cfg.dataflow} {cfg.rows}x{cfg.cols} "
          f"(config {cfg.hash}, {cfg.clock_mhz:g} MHz), simulated RTL; every output equal to onnxruntime's"
          + ("; resident, first convs' row taps folded by the host" if args.fold_row_taps else ""))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            started = time.perf_counter()
            rows += run_model_both_ways(name, cfg, Path(folder), width=args.width, fold_row_taps=args.fold_row_taps)
            print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    table = markdown_table([{**row, "energy_uj": row["energy_pj"]["total"] / 1e6,
                             "link_share": row["energy_pj"]["link"] / row["energy_pj"]["total"]} for row in rows],
                           [("model", "model", ""), ("mode", "mode", ""), ("cycles", "cycles", ",d"),
                            ("latency_us", "latency us", ",.1f"), ("link_bytes_in", "link B in", ",d"),
                            ("link_bytes_out", "link B out", ",d"), ("io_bytes", "input+output B", ",d"),
                            ("energy_uj", "energy uJ", ".2f"), ("link_share", "link share", ".0%")])
    print(table)
    print()
    print(latency_table(cfg, rows, args.width))
    for row in rows:
        if row["mode"] == "resident":
            print(f"{row['model']}: resident layers {row['resident_layers']}; one-time load "
                  f"{row['one_time_bytes']:,} B" + "".join(f"\n  per layer: {why}" for why in row["not_resident"])
                  + (f"\n  weights streamed with every run: {', '.join(row['streamed_layers'])}"
                     if row["streamed_layers"] else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nWhere the cycles go, layer by layer (per-layer runs; pictures in {out}/<model>_layers.png):")
    for row in rows:
        if row["mode"] == "per-layer":
            total = sum(layer["cycles"] for layer in row["layers"]) or 1
            shares = ", ".join(f"{part} {sum(layer[part] for layer in row['layers']) / total:.0%}" for part in PARTS)
            slowest = max(row["layers"], key=lambda layer: layer["cycles"])
            print(f"  {row['model']}: {shares}; slowest layer {slowest['layer']} ({slowest['kind']}), "
                  f"{slowest['cycles']:,} cycles at {slowest['utilization']:.0%} utilisation")
            plot_layers(row["layers"], out / f"{row['model']}_layers.png",
                        f"{row['model']} per layer on {cfg.dataflow} {cfg.rows}x{cfg.cols}: cycles and utilisation")
    write_json(out / "residency.json", {"config": cfg.to_dict(), "rows": rows})
    layers = markdown_table([layer for row in rows if row["mode"] == "per-layer" for layer in row["layers"]],
                            [("model", "model", ""), ("layer", "layer", ""), ("kind", "kind", ""),
                             ("macs", "MACs", ",d"), ("cycles", "cycles", ",d"), ("utilization", "utilisation", ".0%"),
                             *((part, part, ",d") for part in PARTS)])
    write_markdown(out / "residency.md", table + "\n\n" + latency_table(cfg, rows, args.width) + "\n\n" + layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
