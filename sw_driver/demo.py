"""``make demo``: the digits CNN, quantized by onnxruntime, on the simulated accelerator.

The float model (trained by ``python -m tessera.sw_driver.digits.train``, committed) is quantized statically by
onnxruntime, calibrated on training digits; the whole test split then runs three ways: the float model and
the int8 model in onnxruntime, and the int8 model on the accelerator's RTL under Verilator, in batches so
that each layer of a batch is one device program. The int8 answers must agree image by image.
"""

import dataclasses
import functools
import math
import sys
import time
from pathlib import Path

import numpy as np

from tessera.sw_driver.carbon import CarbonAssumptions, per_million, summary_line
from tessera.sw_driver.energy import layer_energy

__all__ = ["QUANT_FORMATS", "PRUNE_BY", "check_batch", "check_images", "check_prune", "check_prune_by",
           "count_test_images", "pruned_model", "run_demo"]

FLOAT_MODEL = Path(__file__).resolve().parent / "digits" / "digits_cnn.onnx"
#: Quantization formats of onnxruntime's ``quantize_static`` the demo can ask for.
QUANT_FORMATS = ("QOperator", "QDQ")
#: What ``prune`` zeroes: whole rows x cols weight tiles or single weights, every inner layer alike; or tiles
#: by energy, each layer's share of them by its energy per weight on the device
#: (:mod:`tessera.sw_driver.digits.energy_prune`).
PRUNE_BY = ("tile", "weight", "energy")
_ENERGY_KEYS = ("link", "buffers", "rf", "mac", "total")


@functools.cache
def count_test_images():
    """Images in the digits test split (360)."""
    from tessera.sw_driver.digits.data import load_digits_split
    return len(load_digits_split()[2])


# The checks of the demo's arguments, shared by run_demo and the command line's argument types: each raises a
# ValueError saying what is accepted, without the argument's name (the caller knows how the user spelled it).

def check_batch(batch):
    """``batch`` (images per device program) is an integer of at least 1."""
    _check_integer(batch)
    if batch < 1:
        raise ValueError(f"{batch} is out of range; accepted: an integer of at least 1 (images per device program)")


def check_images(images):
    """``images`` (the first N test digits) is an integer from 1 to :func:`count_test_images`."""
    _check_integer(images)
    if not 1 <= images <= count_test_images():
        raise ValueError(f"{images} is out of range; accepted: an integer from 1 to {count_test_images()} (the "
                         f"test digits)")


def check_prune(fraction):
    """``fraction`` (of the weights to zero) is a number in [0, 1)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ValueError(f"must be a number, not {type(fraction).__name__} {fraction!r}")
    if not 0 <= fraction < 1:     # NaN fails this too
        raise ValueError(f"{fraction} is out of range; accepted: a fraction from 0 up to, not including, 1")


def check_prune_by(prune_by, cfg):
    """``prune_by`` is one of :data:`PRUNE_BY`; ``"energy"`` needs a ws ``cfg`` (its estimate counts ws programs)."""
    if prune_by not in PRUNE_BY:
        raise ValueError(f"{prune_by!r} is not a pruning method; accepted: {', '.join(PRUNE_BY)}")
    if prune_by == "energy" and cfg.dataflow != "ws":
        raise ValueError(f"'energy' needs a ws device (its energy estimate counts ws programs), and this one is "
                         f"{cfg.dataflow!r}; accepted with {cfg.dataflow}: "
                         + ", ".join(p for p in PRUNE_BY if p != "energy"))


def _check_integer(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {type(value).__name__} {value!r}")


@dataclasses.dataclass
class _LayerTotals:
    """One layer of the model, summed over the batches."""
    name: str
    op: str
    target: str
    reason: str = ""
    resident: bool = False
    macs: int = 0
    macs_skipped: int = 0
    cycles: int = 0
    counters: dict = dataclasses.field(default_factory=dict)

    def add(self, report):
        self.macs += report.macs
        self.macs_skipped += report.macs_skipped
        self.cycles += report.cycles
        for key, value in report.counters.items():
            self.counters[key] = self.counters.get(key, 0) + value


class _Progress:
    """A one-line progress bar of images done, on stderr (plain lines, every tenth of the way, when stderr is not a
    terminal)."""

    def __init__(self, total, label, *, stream=None):
        self.total, self.done, self.label = total, 0, label
        self.started = time.perf_counter()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.next_line = math.ceil(total / 10)

    def update(self, images=0, note=""):
        """``images`` more images are done; ``note`` says what is running now (shown on a terminal only)."""
        self.done += images
        width = 30
        filled = width * self.done // self.total
        elapsed = time.perf_counter() - self.started
        line = (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} images "
                f"{elapsed:5.1f} s")
        if self.tty:
            print("\r" + f"{line} {note}".ljust(100), end="", file=self.stream, flush=True)
        elif images and (self.done >= self.next_line or self.done == self.total):
            print(line, file=self.stream, flush=True)
            self.next_line = self.done + math.ceil(self.total / 10)

    def close(self):
        if self.tty:
            print(file=self.stream)


def _onnxruntime_outputs(path, images):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def prune_model(float_path, out_path, fraction, block=None):
    """The digits model with ``fraction`` of the weights (or ``block`` tiles) of its inner layers zeroed by
    gradual magnitude pruning and the rest fine-tuned (``tessera.sw_driver.digits.train.prune``), written to
    ``out_path``. ``fraction`` is one number, or ``{weight name: fraction}`` per layer."""
    import onnx

    from tessera.sw_driver.digits.data import load_digits_split
    from tessera.sw_driver.digits.export import params_from_onnx, to_onnx
    from tessera.sw_driver.digits.train import prune

    x_train, y_train, _, _ = load_digits_split()
    params = prune(params_from_onnx(onnx.load(str(float_path))), x_train, y_train, fraction, block=block)
    onnx.save(to_onnx(params), str(out_path))
    return Path(out_path)


def pruned_model(cfg, fraction, prune_by, out_dir, *, batch):
    """The digits model pruned for a device of ``cfg`` (see :data:`PRUNE_BY`), written to ``out_dir``; its path.

    ``"energy"`` prints its plan first: each layer's fraction and its energy per weight, estimated from the
    compiled programs of ``batch`` images (:func:`tessera.sw_driver.digits.energy_prune.energy_plan`).
    """
    try:
        check_prune_by(prune_by, cfg)
    except ValueError as error:
        raise ValueError(f"prune_by: {error}") from None
    name = f"digits_cnn_pruned{round(fraction * 100)}"
    if prune_by == "energy":
        import onnx

        from tessera.sw_driver.digits.energy_prune import energy_plan
        from tessera.sw_driver.digits.export import params_from_onnx
        plan = energy_plan(cfg, params_from_onnx(onnx.load(str(FLOAT_MODEL))), fraction, batch=batch)
        print(plan.summary())
        return prune_model(FLOAT_MODEL, Path(out_dir) / f"{name}_energy{cfg.rows}x{cfg.cols}.onnx", plan.fractions,
                           (cfg.rows, cfg.cols))
    block = (cfg.rows, cfg.cols) if prune_by == "tile" else None
    name += f"_tiles{cfg.rows}x{cfg.cols}" if block else ""
    return prune_model(FLOAT_MODEL, Path(out_dir) / f"{name}.onnx", fraction, block)


def run_demo(cfg, *, batch=60, images=None, quant_format="QOperator", prune=0.0, prune_by="tile", skip_zero_tiles=True,
             build_root="build", report=None, carbon=None, per_layer=False):
    """Run the demo on a device of ``cfg`` (on the first ``images`` test digits, or all); print the tables;
    return 0 if the accelerator's int8 answers equal onnxruntime's for every image (with an approximate
    ``cfg.multiplier``: equal to the golden model of that device, image by image).

    ``prune`` zeroes that fraction of each inner layer's weights by magnitude first: single weights
    (``prune_by="weight"``) or the array's rows x cols weight tiles (``"tile"``), which the compiler then
    skips unless ``skip_zero_tiles`` is off; ``"energy"`` zeroes as many weights in tiles, more of them in the
    layers that cost more energy per weight (:func:`pruned_model`).

    The model's runs of Conv and Gemm layers stay resident on the device (loaded once, before the first image:
    :mod:`tessera.sw_driver.model_compiler`) unless ``per_layer``, which sends every layer's weights and
    activations per batch, as the device ran models before.
    """
    for name, check, value in (("batch", check_batch, batch), ("prune", check_prune, prune),
                               ("images", check_images, images if images is not None else count_test_images())):
        try:
            check(value)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    if quant_format not in QUANT_FORMATS:
        raise ValueError(f"quant_format: {quant_format!r}; accepted: {', '.join(QUANT_FORMATS)}")
    if prune_by not in PRUNE_BY:
        raise ValueError(f"prune_by: {prune_by!r}; accepted: {', '.join(PRUNE_BY)}")
    if report:
        from tessera.sw_driver.inputs import check_output_path
        check_output_path(report, "report")     # before the minutes of simulation, not after
    from tessera.sw_driver.digits.data import load_digits_split
    from tessera.sw_driver.digits.quantize import quantize_digits
    from tessera.sw_driver.model_compiler import load_segments, run_model
    from tessera.sw_driver.model_image import cached_image
    from tessera.sw_driver.onnx_import import load_model
    from tessera.sw_driver.runtime import open_sim_device

    wall = time.perf_counter()
    out = Path(build_root) / "demo"
    out.mkdir(parents=True, exist_ok=True)
    _, _, x_test, y_test = load_digits_split()
    x_test, y_test = x_test[:images], y_test[:images]
    float_model = FLOAT_MODEL
    if prune:
        float_model = pruned_model(cfg, prune, prune_by, out, batch=min(batch, len(x_test)))
    quantized = quantize_digits(float_model, out / f"{float_model.stem}_int8_{quant_format.lower()}.onnx",
                                quant_format=quant_format)
    print(f"Tessera demo: the digits CNN ({float_model.name}), quantized by onnxruntime ({quant_format}, "
          f"calibrated on training digits), {len(x_test)} test images")

    float_logits = _onnxruntime_outputs(float_model, x_test)
    int8_logits = _onnxruntime_outputs(quantized, x_test)
    graph = load_model(quantized)

    started = time.perf_counter()
    device = open_sim_device(cfg, skip_zero_tiles=skip_zero_tiles)
    print(f"device: {cfg.dataflow} {cfg.rows}x{cfg.cols} (config {cfg.hash}): Verilog generated and built under "
          f"Verilator in {time.perf_counter() - started:.1f} s")
    layers = {}
    accelerator = []
    segments = [] if per_layer else cached_image(quantized, cfg, batch).segments
    progress = _Progress(len(x_test), "running on the simulated RTL")
    sim_started = time.perf_counter()
    try:
        one_time = load_segments(device, segments)
        for first in range(0, len(x_test), batch):
            images_in_batch = x_test[first:first + batch]

            def seen(layer, layer_report):
                r = layer_report
                totals = layers.setdefault(r.name, _LayerTotals(r.name, r.op, r.target, r.reason, r.resident))
                totals.add(layer_report)
                progress.update(note=f"{layer.name[:28]}")
            outputs, _, _ = run_model(graph, {graph.inputs[0].name: images_in_batch}, device, segments,
                                      progress=seen, load=False)
            accelerator.append(outputs[graph.outputs[0].name])
            progress.update(len(images_in_batch))
    finally:
        progress.close()
        device.close()
    sim_seconds = time.perf_counter() - sim_started
    accelerator = np.concatenate(accelerator)

    float_pred, int8_pred, accel_pred = (np.argmax(v, axis=1) for v in (float_logits, int8_logits, accelerator))
    from_onnxruntime = int(np.count_nonzero(np.any(accelerator != int8_logits, axis=1)))
    approximate = cfg.multiplier != "exact"
    print()
    print(f"{'model':44} {'accuracy':>9}")
    print(f"{'float (onnxruntime)':44} {np.mean(float_pred == y_test):9.2%}")
    print(f"{'int8, exact products (onnxruntime CPU)':44} {np.mean(int8_pred == y_test):9.2%}")
    print(f"{f'int8, {cfg.multiplier} products (Tessera RTL, simulated)':44} {np.mean(accel_pred == y_test):9.2%}")
    if approximate:
        # the reference of an approximate device is its own golden model; onnxruntime shows what it costs
        from tessera.sw_driver.device_model import device_model_outputs
        expected = device_model_outputs(graph, {graph.inputs[0].name: x_test}, cfg)[graph.outputs[0].name]
        differing = int(np.count_nonzero(np.any(accelerator != expected, axis=1)))
        print(f"int8 outputs equal to the golden model with the {cfg.multiplier} multiplier, image by image: "
              f"{len(x_test) - differing} of {len(x_test)}; equal to onnxruntime's: "
              f"{len(x_test) - from_onnxruntime} of {len(x_test)}")
    else:
        differing = from_onnxruntime
        print(f"int8 outputs equal to onnxruntime's, image by image: {len(x_test) - differing} of {len(x_test)}")
    print()
    energy_pj = _print_layers(cfg, list(layers.values()))
    per_image, one_time = _per_image(cfg, list(layers.values()), len(x_test), one_time)
    print(f"per image: {per_image['cycles']:,.0f} cycles ({per_image['latency_us']:,.1f} us at {cfg.clock_mhz:g} "
          f"MHz), link {per_image['link_bytes_in']:,.1f} B in, {per_image['link_bytes_out']:,.1f} B out "
          f"({'per layer' if per_layer else 'resident'}); one-time load {one_time['link_bytes_in']:,} B, "
          f"{one_time['cycles']:,} cycles")
    footprint = per_million(energy_pj / len(x_test), carbon or CarbonAssumptions())
    print(f"energy per image: {summary_line(footprint)}")
    print(f"\nwall time {time.perf_counter() - wall:.1f} s (simulation {sim_seconds:.1f} s)")
    if report:
        _write_report(report, cfg, list(layers.values()), float_pred, int8_pred, accel_pred, y_test,
                      {"golden_model" if approximate else "onnxruntime": differing,
                       "onnxruntime": from_onnxruntime}, footprint,
                      {"mode": "per-layer" if per_layer else "resident", "per_inference": per_image,
                       "one_time": one_time})
        print(f"report: {report}")
    return 0 if differing == 0 else 1


def _print_layers(cfg, layers):
    print(f"{'layer':28} {'op':17} {'ran on':7} {'MACs':>10} {'cycles':>9} {'util':>6} {'link B in':>10} "
          f"{'link B out':>10} {'energy uJ':>9}")
    totals = dict.fromkeys(_ENERGY_KEYS, 0.0)
    macs = skipped = cycles = bytes_in = bytes_out = 0
    for layer in layers:
        if layer.target != "device":
            print(f"{layer.name[:28]:28} {layer.op[:17]:17} {'host':7}   ({layer.reason})")
            continue
        energy = layer_energy(cfg, layer.counters)
        for key in _ENERGY_KEYS:
            totals[key] += energy[key]
        util = (layer.macs - layer.macs_skipped) / (cfg.pes * layer.cycles) if layer.cycles else 0.0
        skipped += layer.macs_skipped
        link_in, link_out = 4 * layer.counters["link_words_in"], 4 * layer.counters["link_words_out"]
        macs, cycles, bytes_in, bytes_out = macs + layer.macs, cycles + layer.cycles, bytes_in + link_in, \
            bytes_out + link_out
        print(f"{layer.name[:28]:28} {layer.op[:17]:17} {'device':7} {layer.macs:10,} {layer.cycles:9,} "
              f"{util:6.1%} {link_in:10,} {link_out:10,} {energy['total'] / 1e6:9.2f}")
    util = (macs - skipped) / (cfg.pes * cycles) if cycles else 0.0
    gated = sum(layer.counters.get("macs_gated", 0) for layer in layers if layer.target == "device")
    array_macs = sum(layer.counters.get("array_cycles", 0) for layer in layers if layer.target == "device") * cfg.pes
    print(f"{'total on the device':28} {'':17} {'':7} {macs:10,} {cycles:9,} {util:6.1%} {bytes_in:10,} "
          f"{bytes_out:10,} {totals['total'] / 1e6:9.2f}")
    share = {k: totals[k] / totals["total"] for k in ("link", "buffers", "rf", "mac")} if totals["total"] else {}
    print(f"energy estimate {totals['total'] / 1e6:.2f} uJ, {totals['total'] / max(macs, 1):.1f} pJ/MAC: "
          + ", ".join(f"{k} {v:.0%}" for k, v in share.items())
          + "  (data movement, not arithmetic, dominates)")
    if skipped:
        print(f"all-zero weight tiles skipped by the compiler: {skipped:,} of {macs:,} MACs ({skipped / macs:.1%}); "
              "utilisation counts the MACs run")
    if array_macs:
        print(f"zero-gated MACs: {gated:,} of {array_macs:,} PE-cycles with an operand ({gated / array_macs:.1%})")
    return totals["total"]


def _per_image(cfg, layers, images, one_time):
    """The device's figures per image over the run (latency at the configuration's clock), and the one-time load's."""
    device = [layer for layer in layers if layer.target == "device"]
    cycles = sum(layer.cycles for layer in device) / images
    macs = sum(layer.macs - layer.macs_skipped for layer in device) / images
    energy = {key: sum(layer_energy(cfg, layer.counters)[key] for layer in device) / images for key in _ENERGY_KEYS}
    per_image = {"cycles": cycles, "latency_us": cycles / cfg.clock_mhz,
                 "utilization": macs / (cfg.pes * cycles) if cycles else 0.0,
                 "link_bytes_in": sum(4 * layer.counters["link_words_in"] for layer in device) / images,
                 "link_bytes_out": sum(4 * layer.counters["link_words_out"] for layer in device) / images,
                 "energy_pj": energy}
    if one_time is None:     # nothing resident
        return per_image, {"link_bytes_in": 0, "cycles": 0, "energy_pj": {}}
    load = {"link_bytes_in": 4 * one_time.counters["link_words_in"], "cycles": one_time.cycles,
            "energy_pj": layer_energy(cfg, one_time.counters)}
    return per_image, load


def _write_report(path, cfg, layers, float_pred, int8_pred, accel_pred, labels, differing, carbon, residency):
    import json
    rows = []
    for layer in layers:
        row = {"name": layer.name, "op": layer.op, "target": layer.target, "reason": layer.reason,
               "resident": layer.resident,
               "macs": layer.macs, "macs_skipped": layer.macs_skipped, "cycles": layer.cycles}
        if layer.target == "device":
            row["utilization"] = ((layer.macs - layer.macs_skipped) / (cfg.pes * layer.cycles) if layer.cycles
                                  else 0.0)
            row["counters"] = layer.counters
            row["energy_pj"] = layer_energy(cfg, layer.counters)
        rows.append(row)
    summary = {"accuracy": {name: float(np.mean(pred == labels)) for name, pred in
                            (("float", float_pred), ("onnxruntime_int8", int8_pred), ("accelerator", accel_pred))},
               "images": int(len(labels)), "images_differing_from_onnxruntime": differing["onnxruntime"],
               "images_differing_from_golden_model": differing.get("golden_model", differing["onnxruntime"]),
               "multiplier": cfg.multiplier}
    Path(path).write_text(json.dumps({"config": cfg.to_dict(), "layers": rows, "totals": summary, "carbon": carbon,
                                      **residency}, indent=2))
