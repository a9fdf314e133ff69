"""What each PE multiplier costs in accuracy and saves in energy on the digits CNN (issue 21's study).

``python -m tessera.verif.multiplier_study --out DIR [--images N] [--rtl]``

For every design of `tessera.hw.pe_multipliers` it reports the test accuracy of the device's answers (the golden
model with that multiplier, `tessera.sw_driver.device_model`) for two activation quantizations: the demo's
(uint8, asymmetric: a ReLU output's zero sits at -128 after the device's shift to int8, so every product carries
the offset's error) and int8 centred on zero (``ActivationSymmetric``). It also gives the accuracy with the first
and last array layers exact (what a per-layer choice would buy; the device has one multiplier, see
docs/multipliers.md). With ``--rtl`` it runs the demo on the simulated RTL for each design (the demo's
quantization): energy per image of the Conv and Gemm layers from the counters (total and MAC level), and the RTL's
answers against the golden model image by image.
Writes ``multipliers.md``, ``multipliers.csv`` and ``accuracy_energy.png`` into ``--out``.
"""

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from tessera.gen.config import AcceleratorConfig
from tessera.hw.pe_multipliers import MULTIPLIERS
from tessera.sw_driver.device_model import DeviceModel
from tessera.sw_driver.model_runner import run_graph_on

__all__ = ["FirstAndLastExact", "accuracy", "main"]


class FirstAndLastExact(DeviceModel):
    """The device model with exact products in its first and last array layers (of ``layers``)."""

    def __init__(self, cfg, layers):
        super().__init__(cfg)
        self.layers, self.seen = layers, 0

    def multiplier(self):
        index, self.seen = self.seen % self.layers, self.seen + 1
        return "exact" if index in (0, self.layers - 1) else self.cfg.multiplier


def _array_layers(graph, cfg, x):
    """How many layers of ``graph`` run on the PE array of ``cfg`` (GEMM or convolution calls)."""
    model = DeviceModel(cfg)
    calls = []
    model.multiplier = lambda: calls.append(1) or cfg.multiplier
    run_graph_on(graph, {graph.inputs[0].name: x[:1]}, model)
    return len(calls)


def accuracy(graph, x, labels, cfg, *, first_last_exact=False):
    """Test accuracy of a device of ``cfg`` (its golden model) on images ``x``."""
    model = FirstAndLastExact(cfg, _array_layers(graph, cfg, x)) if first_last_exact else DeviceModel(cfg)
    outputs, _ = run_graph_on(graph, {graph.inputs[0].name: x}, model)
    return float(np.mean(np.argmax(outputs[graph.outputs[0].name], axis=1) == labels))


def _rtl_figures(cfg, images, out):
    """Figures of a demo run on the RTL: energy per image (the array layers' total and their multiply-accumulate
    level, so that a layer the approximate device leaves to the host does not count as a saving), images equal
    to the golden model, accuracy."""
    from tessera.sw_driver.demo import run_demo
    report = out / f"demo_{cfg.multiplier}.json"
    run_demo(cfg, images=images, build_root=out / "build", report=report)
    summary = json.loads(report.read_text())
    totals = summary["totals"]
    array = [layer["energy_pj"] for layer in summary["layers"] if layer["op"] in ("Conv", "Gemm")]
    per_image = 1e6 * totals["images"]
    return {"energy uJ per image (RTL counters)": sum(e["total"] for e in array) / per_image,
            "of it MAC uJ": sum(e["mac"] for e in array) / per_image,
            "RTL equal to golden model": totals["images"] - totals["images_differing_from_golden_model"],
            "accuracy uint8 (RTL)": totals["accuracy"]["accelerator"]}


def main(argv=None):
    from tessera.sw_driver.demo import FLOAT_MODEL
    from tessera.sw_driver.digits.data import load_digits_split
    from tessera.sw_driver.digits.quantize import quantize_digits
    from tessera.sw_driver.energy import multiplier_energy_ratio
    from tessera.sw_driver.onnx_import import load_model
    from tessera.sw_driver.products import error_metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the table, CSV and plot (created)")
    parser.add_argument("--images", type=int, help="first N test images (default all 360)")
    parser.add_argument("--rtl", action="store_true", help="also run each design on the simulated RTL")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, _, x, labels = load_digits_split()
    x, labels = x[:args.images], labels[:args.images]
    graphs = {"uint8": load_model(quantize_digits(FLOAT_MODEL, out / "digits_uint8.onnx")),
              "int8 symmetric": load_model(quantize_digits(FLOAT_MODEL, out / "digits_int8_symmetric.onnx",
                                                           quant_format="QDQ", activation_type="int8",
                                                           symmetric_activations=True))}
    rows = []
    for name in MULTIPLIERS:
        cfg = AcceleratorConfig(multiplier=name)
        row = {"multiplier": name, "mae_percent": error_metrics(name).mae_percent,
               "multiply_energy_ratio": multiplier_energy_ratio(name)}
        for quantization, graph in graphs.items():
            row[f"accuracy {quantization}"] = accuracy(graph, x, labels, cfg)
            row[f"accuracy {quantization}, first and last exact"] = accuracy(graph, x, labels, cfg,
                                                                             first_last_exact=True)
        if args.rtl:
            row.update(_rtl_figures(cfg, args.images, out))
        rows.append(row)
        print(row, flush=True)
    _write(rows, out, len(labels))


def _write(rows, out, images):
    with open(out / "multipliers.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[k]) for k in keys) + " |")
    (out / "multipliers.md").write_text(f"Digits CNN, {images} test images\n\n" + "\n".join(lines) + "\n")
    if "energy uJ per image (RTL counters)" in rows[0]:
        _plot(rows, out / "accuracy_energy.png")


def _cell(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(6, 4))
    # the RTL runs are the demo's (uint8) quantization: its energy and accuracy are measured together
    energy = [row["energy uJ per image (RTL counters)"] for row in rows]
    axes.scatter(energy, [row["accuracy uint8 (RTL)"] for row in rows])
    for row, e in zip(rows, energy, strict=True):
        axes.annotate(row["multiplier"], (e, row["accuracy uint8 (RTL)"]), fontsize=8)
    axes.set_xlabel("Conv + Gemm energy per image, uJ (RTL counters, 8x8 WS)")
    axes.set_ylabel("test accuracy (uint8 activations)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
