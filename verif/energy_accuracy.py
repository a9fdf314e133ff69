"""Accuracy against energy over PE multipliers and pruning levels together, on the digits CNN and the RTL.

``python -m tessera.verif.energy_accuracy --out DIR [--multipliers exact,mitchell] [--fractions 0,0.5,0.8]``

Each point is one ``tessera demo`` run on the simulated RTL of the default 8x8 WS device with that multiplier,
the model pruned by whole weight tiles (``--prune-by tile``) to that fraction: its test accuracy and the energy per
image of its Conv and Gemm layers from the counters (an approximate device leaves the GlobalAveragePool to the host,
so only the array's layers compare). Writes ``energy_accuracy.csv``, ``.md`` and ``.png`` (one line per multiplier).
"""

import argparse
import contextlib
import csv
import json
from pathlib import Path

from tessera.gen.config import AcceleratorConfig
from tessera.hw.pe_multipliers import MULTIPLIERS

__all__ = ["run_point", "main"]

_ARRAY_OPS = ("Conv", "Gemm")


def run_point(multiplier, fraction, out, *, images=None):
    """One demo run; ``{multiplier, fraction, accuracy, equal_to_golden_model, energy_uj, mac_uj}``."""
    from tessera.sw_driver.demo import run_demo
    cfg = AcceleratorConfig(multiplier=multiplier)
    stem = f"{multiplier}_{round(fraction * 100):02d}"
    report = out / f"{stem}.json"
    with open(out / f"{stem}.log", "w") as log, contextlib.redirect_stdout(log):
        status = run_demo(cfg, images=images, prune=fraction, prune_by="tile", build_root=out / "build",
                          report=report)
    summary = json.loads(report.read_text())
    count = summary["totals"]["images"]
    array = [layer["energy_pj"] for layer in summary["layers"] if layer["op"] in _ARRAY_OPS]
    return {"multiplier": multiplier, "fraction": fraction, "accuracy": summary["totals"]["accuracy"]["accelerator"],
            "equal_to_golden_model": status == 0,
            "energy_uj": sum(e["total"] for e in array) / count / 1e6,
            "mac_uj": sum(e["mac"] for e in array) / count / 1e6}


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for name in dict.fromkeys(row["multiplier"] for row in rows):
        line = sorted((row for row in rows if row["multiplier"] == name), key=lambda row: row["fraction"])
        axes.plot([row["energy_uj"] for row in line], [row["accuracy"] for row in line], marker="o", label=name)
        for row in line:
            axes.annotate(f"{row['fraction']:.0%}", (row["energy_uj"], row["accuracy"]), fontsize=7)
    axes.set_xlabel("Conv + Gemm energy per image, uJ (RTL counters, 8x8 WS)")
    axes.set_ylabel("test accuracy")
    axes.set_title("digits CNN: multipliers x tile pruning (labels: fraction pruned)", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--multipliers", default="exact,drum6,mitchell,drum4",
                        help="comma-separated designs (default exact,drum6,mitchell,drum4)")
    parser.add_argument("--fractions", default="0,0.5,0.8", help="tile-pruning fractions (default 0,0.5,0.8)")
    parser.add_argument("--images", type=int, help="first N test images (default all 360)")
    args = parser.parse_args(argv)
    multipliers = args.multipliers.split(",")
    unknown = [name for name in multipliers if name not in MULTIPLIERS]
    if unknown:
        parser.error(f"--multipliers: {', '.join(unknown)} not a design; accepted: {', '.join(MULTIPLIERS)}")
    fractions = [float(f) for f in args.fractions.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in multipliers:
        for fraction in fractions:
            rows.append(run_point(name, fraction, out, images=args.images))
            print(rows[-1], flush=True)
    with open(out / "energy_accuracy.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| multiplier | pruned | accuracy | equal to its golden model | Conv + Gemm uJ/image | of it MAC |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['multiplier']} | {r['fraction']:.0%} | {r['accuracy']:.2%} | {r['equal_to_golden_model']} | "
              f"{r['energy_uj']:.3f} | {r['mac_uj']:.4f} |" for r in rows]
    (out / "energy_accuracy.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "energy_accuracy.png")


if __name__ == "__main__":
    main()
