"""Energy-aware against magnitude pruning on the digits CNN: ``python -m tessera.verif.pruning_study --out DIR``.

For each pruning method (magnitude by single weights, magnitude by array tiles, energy-aware) and each fraction,
the demo pipeline runs as ``tessera demo`` does (prune and fine-tune, quantize with onnxruntime, run on the
simulated RTL of the default 8x8 ws device), one run at a time. Under ``DIR`` it writes ``pruning.csv``,
``pruning.md`` (the table and the lowest energy per method at equal accuracy) and ``pruning.png`` (accuracy
against energy per image), plus each run's demo log and JSON report. Energy and cycles are the hardware
counters' (:func:`tessera.sw_driver.energy.layer_energy`), per image.
"""

import argparse
import contextlib
import csv
import json
import sys
import time
from pathlib import Path

from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver.demo import PRUNE_BY, check_batch, check_images, check_prune, count_test_images, run_demo

__all__ = ["FRACTIONS", "METHODS", "COLUMNS", "run_point", "run_study", "write_table", "write_plot",
           "lowest_energy_at_accuracy"]

#: The methods compared: the demo's ``--prune-by`` values.
METHODS = ("weight", "tile", "energy")
FRACTIONS = (0.0, 0.3, 0.5, 0.7, 0.8)
#: Accuracy points below the unpruned model's that still count as "equal accuracy" in the summary.
ACCURACY_MARGINS = (0.0, 0.01, 0.02)
COLUMNS = ("method", "fraction", "skipped_conv2", "skipped_conv3", "accuracy_float", "accuracy_int8",
           "accuracy_accelerator", "agrees", "energy_uj_per_image", "cycles_per_image", "wall_s")
_PRUNED_CONVS = ("conv2_quant", "conv3_quant")


def run_point(cfg, method, fraction, out, *, images, batch):
    """One demo run (its log and report under ``out``); its row of :data:`COLUMNS`."""
    stem = f"{method}_{round(fraction * 100):02d}"
    report = out / f"{stem}.json"
    started = time.perf_counter()
    with open(out / f"{stem}.log", "w") as log, contextlib.redirect_stdout(log):
        status = run_demo(cfg, batch=batch, images=images, prune=fraction, prune_by=method if fraction else "tile",
                          build_root=out / "build", report=report)
    wall = time.perf_counter() - started
    summary = json.loads(report.read_text())
    device = {layer["name"]: layer for layer in summary["layers"] if layer["target"] == "device"}
    accuracy = summary["totals"]["accuracy"]
    row = {"method": method if fraction else "none", "fraction": fraction,
           "accuracy_float": accuracy["float"], "accuracy_int8": accuracy["onnxruntime_int8"],
           "accuracy_accelerator": accuracy["accelerator"], "agrees": status == 0,
           "energy_uj_per_image": sum(layer["energy_pj"]["total"] for layer in device.values()) / images / 1e6,
           "cycles_per_image": sum(layer["cycles"] for layer in device.values()) / images, "wall_s": wall}
    for name in _PRUNED_CONVS:
        layer = device[name]
        row[f"skipped_{name.removesuffix('_quant')}"] = layer["macs_skipped"] / layer["macs"]
    return row


def run_study(out, *, methods=METHODS, fractions=FRACTIONS, images=None, batch=60, cfg=None, log=print):
    """Every (method, fraction) point, the unpruned model once; returns the rows."""
    cfg = cfg or AcceleratorConfig()
    images = images or count_test_images()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = ([("none", 0.0)] if 0.0 in fractions else []) + [(m, f) for m in methods for f in fractions if f]
    rows = []
    for method, fraction in points:
        rows.append(run_point(cfg, method, fraction, out, images=images, batch=batch))
        row = rows[-1]
        log(f"{method:6} {fraction:4.2f}: accuracy {row['accuracy_accelerator']:.2%}, "
            f"{row['energy_uj_per_image']:.3f} uJ and {row['cycles_per_image']:,.0f} cycles per image, "
            f"{'agrees' if row['agrees'] else 'DIFFERS from onnxruntime'} ({row['wall_s']:.0f} s)")
    return rows


def lowest_energy_at_accuracy(rows, margin):
    """``{method: row}``: per method, its lowest-energy point whose accelerator accuracy is at most ``margin``
    below the unpruned model's (the unpruned point itself counts for every method)."""
    baseline = next(row for row in rows if row["method"] == "none")
    best = {}
    for method in sorted({row["method"] for row in rows} - {"none"}):
        eligible = [row for row in rows if row["method"] in (method, "none")
                    and row["accuracy_accelerator"] >= baseline["accuracy_accelerator"] - margin - 1e-9]
        best[method] = min(eligible, key=lambda row: row["energy_uj_per_image"])
    return best


def write_table(rows, out, images):
    """``pruning.csv`` and ``pruning.md`` under ``out``."""
    with open(out / "pruning.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: row[key] for key in COLUMNS} for row in rows)
    lines = [(f"Digits CNN on the simulated 8x8 ws device, {images} test images; energy and cycles per image from "
              "the hardware counters."), "",
             ("| method | prune | MACs skipped conv2 / conv3 | accuracy float / int8 / device | device = onnxruntime "
              "| energy uJ/image | cycles/image |"),
             "|---|---:|---:|---:|:-:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['fraction']:.0%} | {row['skipped_conv2']:.0%} / "
                     f"{row['skipped_conv3']:.0%} | {row['accuracy_float']:.1%} / {row['accuracy_int8']:.1%} / "
                     f"{row['accuracy_accelerator']:.1%} | {'yes' if row['agrees'] else 'no'} | "
                     f"{row['energy_uj_per_image']:.3f} | {row['cycles_per_image']:,.0f} |")
    baseline = next((row for row in rows if row["method"] == "none"), None)
    if baseline is None:        # no unpruned run (fraction 0 not asked for): nothing to measure accuracy against
        (out / "pruning.md").write_text("\n".join(lines) + "\n")
        return
    lines += ["", ("Lowest energy per image at equal accuracy (device accuracy at most the margin below the "
                   f"unpruned model's {baseline['accuracy_accelerator']:.1%}):"), "",
              "| margin | " + " | ".join(sorted({row["method"] for row in rows} - {"none"})) + " |",
              "|---|" + "---:|" * len({row["method"] for row in rows} - {"none"})]
    for margin in ACCURACY_MARGINS:
        best = lowest_energy_at_accuracy(rows, margin)
        lines.append(f"| {margin * 100:.0f} point{'s' if margin != 0.01 else ''} | " + " | ".join(
            f"{row['energy_uj_per_image']:.3f} uJ ({row['fraction']:.0%}, {row['accuracy_accelerator']:.1%})"
            for row in best.values()) + " |")
    (out / "pruning.md").write_text("\n".join(lines) + "\n")


def write_plot(rows, out):
    """``pruning.png`` under ``out``: device accuracy against energy per image, one line per method."""
    import matplotlib
    matplotlib.use("Agg")    # files only: no display, same output everywhere
    import matplotlib.pyplot as plt

    baseline = [row for row in rows if row["method"] == "none"]
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for method, marker in zip(METHODS, "osD", strict=True):
        points = baseline + sorted((row for row in rows if row["method"] == method), key=lambda r: r["fraction"])
        if len(points) == len(baseline):
            continue
        axes.plot([r["energy_uj_per_image"] for r in points], [100 * r["accuracy_accelerator"] for r in points],
                  marker=marker, label=f"{method}" + (" (magnitude)" if method != "energy" else "-aware"))
        for r in points[len(baseline):]:
            axes.annotate(f"{r['fraction']:.0%}", (r["energy_uj_per_image"], 100 * r["accuracy_accelerator"]),
                          textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xlabel("energy per image on the device (uJ, from the hardware counters)")
    axes.set_ylabel("accuracy on the device (%)")
    axes.set_title("Digits CNN, 8x8 ws: pruning methods (labels: fraction pruned)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "pruning.png", dpi=120)
    plt.close(figure)


def _checked(convert, check):
    """An argparse type: ``convert``, then the demo's own ``check`` (its message, one line)."""
    def argument(text):
        try:
            value = convert(text)
            check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value
    return argument


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the table, the plot and the runs")
    parser.add_argument("--images", type=_checked(int, check_images), default=None,
                        help="first N test images (default: all 360)")
    parser.add_argument("--batch", type=_checked(int, check_batch), default=60,
                        help="images per device program (default 60)")
    parser.add_argument("--fractions", type=_checked(float, check_prune), nargs="+", default=list(FRACTIONS),
                        help="prune fractions, 0 <= F < 1 (default: " + " ".join(map(str, FRACTIONS)) + ")")
    parser.add_argument("--methods", nargs="+", choices=[m for m in PRUNE_BY if m in METHODS], default=list(METHODS))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run_study(args.out, methods=args.methods, fractions=args.fractions, images=args.images, batch=args.batch,
                     log=lambda line: print(line, file=sys.stderr, flush=True))
    images = args.images or count_test_images()
    write_table(rows, args.out, images)
    write_plot(rows, args.out)
    print((args.out / "pruning.md").read_text())
    print(f"wrote {args.out / 'pruning.csv'}, {args.out / 'pruning.md'}, {args.out / 'pruning.png'} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0 if all(row["agrees"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
