"""A sweep's outputs: every point as JSON and CSV, the Pareto front, the winners per objective and the plots."""

import csv
import json
from pathlib import Path

from .sweep_point import ENERGY_LEVELS

__all__ = ["OBJECTIVES", "dominates", "pareto_front", "winners", "write_outputs"]

#: What the front trades: latency per inference, energy per inference and LUTs (when synthesised), all minimised,
#: and the test accuracy (when the workload has labels, as ``--demo`` has), maximised.
OBJECTIVES = {"latency_us": "latency per inference (us)", "energy_uj": "energy per inference (uJ)",
              "lut": "LUTs (Yosys)", "accuracy": "test accuracy"}
_MAXIMISED = {"accuracy"}
_CSV_FIRST = ("key", "label", "status", "reason", "hash", "cached", "bit_exact", "matches_onnxruntime", "cycles",
              "cycles_per_inference", "latency_us", "energy_uj", "accuracy", "utilization", "lut", "ff", "dsp",
              "bram", "spram", "board", "seconds")


def objectives(points):
    """The objectives every measured point has (LUTs only when the sweep synthesised)."""
    ok = [p for p in points if p["status"] == "ok"]
    return [name for name in OBJECTIVES if ok and all(name in p for p in ok)]


def dominates(a, b, names):
    """``a`` is no worse than ``b`` in every objective and better in one."""
    return all(_cost(a, n) <= _cost(b, n) for n in names) and any(_cost(a, n) < _cost(b, n) for n in names)


def _cost(point, name):
    return -point[name] if name in _MAXIMISED else point[name]


def pareto_front(points, names=None):
    """The measured points no other measured point dominates (ties: all kept)."""
    names = names or objectives(points)
    ok = [p for p in points if p["status"] == "ok"]
    return [p for p in ok if not any(dominates(q, p, names) for q in ok if q is not p)]


def winners(points, names=None):
    """``{objective: point}``: the best measured point for each objective alone."""
    ok = [p for p in points if p["status"] == "ok"]
    return {name: min(ok, key=lambda p, name=name: _cost(p, name)) for name in (names or objectives(points))} \
        if ok else {}


def label(point, varied=None):
    """``ws 4x4 act_depth=512``: the dataflow and array, with the other fields the sweep varies (``varied``; all
    of the point's values if not given); a point already labelled keeps its label."""
    if varied is None and "label" in point:
        return point["label"]
    values = point["values"]
    rest = " ".join(f"{k}={v}" for k, v in values.items()
                    if k not in ("dataflow", "rows", "cols") and (varied is None or k in varied))
    config = point.get("config", values)
    array = f"{config.get('dataflow', 'ws')} {config.get('rows', '?')}x{config.get('cols', '?')}"
    return f"{array} {rest}".strip()


def write_outputs(points, outdir, summary):
    """Write points.json, points.csv, pareto.json, pareto.png and resources.png into ``outdir``; return the
    paths. ``summary`` (the run's figures) goes into points.json and pareto.json beside the points."""
    outdir = Path(outdir)
    names = objectives(points)
    front = pareto_front(points, names)
    best = winners(points, names)
    (outdir / "points.json").write_text(json.dumps({"summary": summary, "points": points}, indent=1) + "\n")
    _write_csv(points, outdir / "points.csv")
    (outdir / "pareto.json").write_text(json.dumps({
        "objectives": names, "front": [p["key"] for p in front],
        "points": [{"key": p["key"], "label": label(p), **{n: p[n] for n in names}} for p in front],
        "winners": {n: {"key": p["key"], "label": label(p), "value": p[n]} for n, p in best.items()},
        "summary": summary}, indent=1) + "\n")
    paths = {"points.json": outdir / "points.json", "points.csv": outdir / "points.csv",
             "pareto.json": outdir / "pareto.json"}
    paths["pareto.png"] = _plot_pareto(points, front, names, outdir / "pareto.png")
    paths["resources.png"] = _plot_resources(points, outdir / "resources.png")
    return paths


def _write_csv(points, path):
    varied = sorted({k for p in points for k in p["values"]})
    columns = list(_CSV_FIRST) + varied + [f"energy_uj_{level}" for level in ENERGY_LEVELS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        for p in points:
            row = {k: p.get(k, "") for k in _CSV_FIRST}
            row.update({k: p["values"].get(k, "") for k in varied})
            row.update({f"energy_uj_{level}": p["energy_pj_by_level"][level] / 1e6
                        for level in ENERGY_LEVELS if "energy_pj_by_level" in p})
            writer.writerow(row)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")    # files only: no display, same output everywhere
    import matplotlib.pyplot as plt
    return plt


def _plot_pareto(points, front, names, path):
    """Latency against energy per inference, every measured point (and the figures of failed ones, where a layer
    ran on the host), the front marked and labelled."""
    plt = _pyplot()
    ok = [p for p in points if p["status"] == "ok" or "latency_us" in p]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for status, style in (("ok", dict(c="tab:blue", marker="o")), ("does not fit", dict(c="tab:orange", marker="x")),
                          ("failed", dict(c="tab:red", marker="x"))):
        chosen = [p for p in ok if p["status"] == status]
        if chosen:
            ax.scatter([p["latency_us"] for p in chosen], [p["energy_uj"] for p in chosen], s=25, label=status,
                       **style)
    if front:
        on_front = sorted(front, key=lambda p: p["latency_us"])
        ax.plot([p["latency_us"] for p in on_front], [p["energy_uj"] for p in on_front], "-", c="tab:green",
                lw=1, zorder=0)
        ax.scatter([p["latency_us"] for p in on_front], [p["energy_uj"] for p in on_front], s=90,
                   facecolors="none", edgecolors="tab:green", label="Pareto front")
        for p in on_front:
            ax.annotate(label(p), (p["latency_us"], p["energy_uj"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    if ok:
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no point was measured (see points.json for the reasons)", ha="center", va="center")
    ax.set_xlabel(OBJECTIVES["latency_us"])
    ax.set_ylabel(OBJECTIVES["energy_uj"])
    front_over = ", ".join(OBJECTIVES[n].split(" (")[0] for n in names) or "nothing measured"
    ax.set_title(f"Latency against energy per inference; Pareto front over {front_over}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_resources(points, path):
    """LUT, FF, DSP and block RAM per synthesised point, as a share of the board's."""
    plt = _pyplot()
    kinds = ("LUT", "FF", "DSP", "BRAM")
    shown = [p for p in points if "resources" in p]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(shown) + 2), 4.5))
    if shown:
        width = 0.8 / len(kinds)
        for i, kind in enumerate(kinds):
            ax.bar([x + i * width for x in range(len(shown))],
                   [100 * p["resources"][kind] / p["available"][kind] for p in shown], width, label=kind)
        ax.axhline(100, c="k", lw=0.8)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(shown))])
        ax.set_xticklabels([label(p) for p in shown], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"% of the {shown[0]['device']}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no point was synthesised (no board in the space)", ha="center", va="center")
    ax.set_title("FPGA resources per point (Yosys synthesis)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
