"""Reports of layer runs: a JSON record per layer, Markdown tables and matplotlib pictures.

A *row* is a dict describing one layer run on one device: at least ``layer``, ``dataflow``, ``rows``, ``cols``,
``macs``, ``cycles``, ``utilization`` and ``energy_levels_pj`` (the levels of
:func:`~tessera.sw_driver.energy.energy_breakdown`); :func:`layer_record` builds the energy and counter fields of one
from a device's counters, in the report shape ARCHITECTURE.md gives.

Pictures use matplotlib's Agg backend (no display needed) and are written as PNG files:
:func:`plot_energy_breakdown` (pJ per MAC stacked by level), :func:`plot_pj_per_mac` and
:func:`plot_utilization` (grouped by layer, one bar per device).
"""

import json
from pathlib import Path

import numpy as np

from tessera.sw_driver.energy import buffer_geometry, energy_breakdown, inter_pe_transfers, layer_energy, rf_accesses

__all__ = ["layer_record", "write_json", "markdown_table", "write_markdown", "plot_energy_breakdown", "plot_pe_heatmap",
           "plot_pj_per_mac", "plot_utilization", "write_pictures"]


def layer_record(cfg, macs, counters, *, costs=None):
    """The counter and energy fields of a layer's report entry.

    Parameters
    ----------
    cfg : AcceleratorConfig
    macs : int
        Useful MACs of the layer (not counting zeros a grouped conv multiplies).
    counters : dict
        The device's hardware counters for the layer.
    costs : optional
        Cost table (see :func:`tessera.sw_driver.energy.cost_table`).

    Returns
    -------
    dict
        ``macs``, ``cycles``, ``utilization``, ``counters`` (``link_bytes_in/out``, ``buffer_reads/writes`` by
        buffer, ``rf_accesses``, ``noc_transfers`` (counted, or estimated: see
        :func:`~.energy.inter_pe_transfers`), ``macs_gated``, ``raw``), ``energy_pj`` (``link / buffers /
        rf / mac / total``), ``energy_levels_pj`` (every level) and ``energy_pj_per_mac``.
    """
    cycles = counters["cycles"]
    levels = energy_breakdown(cfg, counters, costs)
    buffers = list(buffer_geometry(cfg))
    return {
        "macs": int(macs),
        "cycles": int(cycles),
        "utilization": macs / (cfg.pes * cycles) if cycles else 0.0,
        "counters": {
            "link_bytes_in": 4 * counters["link_words_in"],
            "link_bytes_out": 4 * counters["link_words_out"],
            "buffer_reads": {b: counters.get(f"{b}_reads", 0) for b in buffers},
            "buffer_writes": {b: counters.get(f"{b}_writes", 0) for b in buffers},
            "rf_accesses": rf_accesses(counters),
            "noc_transfers": inter_pe_transfers(cfg, counters),
            "macs_gated": counters.get("macs_gated", 0),
            "raw": dict(counters),
        },
        "energy_pj": layer_energy(cfg, counters, costs),
        "energy_levels_pj": levels,
        "energy_pj_per_mac": levels["total"] / macs if macs else 0.0,
    }


def write_json(path, payload):
    """Write ``payload`` as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable))
    return path


def _jsonable(value):
    if hasattr(value, "item"):     # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _cell(value, spec):
    if value is None or value == "":
        return ""
    if callable(spec):
        return spec(value)
    return format(value, spec) if spec else str(value)


def markdown_table(rows, columns):
    """A Markdown table of ``rows`` (dicts); ``columns`` is a list of ``(key, header, format_spec)`` where the
    format is a ``format()`` spec, a callable, or ``""`` for ``str``. Numbers are right-aligned."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    align = []
    for key, _, _ in columns:
        numeric = any(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in rows)
        align.append("---:" if numeric else "---")
    lines.append("|" + "|".join(align) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), spec) for key, _, spec in columns) + " |")
    return "\n".join(lines)


def write_markdown(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


# --- pictures ---------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")    # files only: no display, same output everywhere
    import matplotlib.pyplot as plt
    return plt


def _device_label(row):
    return f"{row['dataflow']} {row['rows']}x{row['cols']}"


def _row_label(row):
    return f"{row['layer']}\n{_device_label(row)}"


def plot_energy_breakdown(rows, path, *, title="Energy per MAC by level"):
    """Stacked bars, one per row: pJ per useful MAC at each level (link, each buffer, inter-PE, RF, MAC...).
    The gated-MAC credit, when any, is drawn below zero."""
    plt = _pyplot()
    levels = []
    for row in rows:
        for level in row["energy_levels_pj"]:
            if level != "total" and level not in levels:
                levels.append(level)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.4 * len(rows) + 2), 6.0), layout="constrained")
    positions = range(len(rows))
    cmap = plt.get_cmap("tab20")
    up = [0.0] * len(rows)
    down = [0.0] * len(rows)
    for i, level in enumerate(levels):
        values = [row["energy_levels_pj"].get(level, 0.0) / row["macs"] if row["macs"] else 0.0 for row in rows]
        if not any(values):
            continue
        bottoms = [d if v < 0 else u for v, u, d in zip(values, up, down, strict=True)]
        ax.bar(positions, values, bottom=bottoms, label=level, color=cmap(i % 20))
        up = [u + max(v, 0.0) for u, v in zip(up, values, strict=True)]
        down = [d + min(v, 0.0) for d, v in zip(down, values, strict=True)]
    ax.axhline(0.0, color="black", linewidth=0.6)
    # A few outliers (a depthwise layer run dense costs ~100x per useful MAC) would flatten every other bar:
    # clip the axis and print the clipped totals on their bars.
    totals = sorted(up)
    typical = totals[len(totals) // 2] if totals else 0.0
    shown = [v for v in totals if v <= 10 * typical] or totals
    bottom = 1.1 * min(down + [0.0])
    ax.set_ylim(bottom=bottom)
    if shown and totals[-1] > 1.25 * shown[-1] and shown[-1] > 0:
        top = 1.2 * shown[-1]
        ax.set_ylim(bottom, top)
        for x, value in zip(positions, up, strict=True):
            if value > top:
                ax.text(x, 0.97 * top, f"{value:,.0f}", rotation=90, ha="center", va="top", fontsize=7,
                        color="white")
    ax.set_xticks(list(positions), [_row_label(r) for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("pJ per useful MAC")
    ax.set_title(title)
    ax.legend(fontsize=7, ncols=2)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _grouped_bars(rows, path, value, ylabel, title, *, log=False):
    plt = _pyplot()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    devices = list(dict.fromkeys(_device_label(r) for r in rows))
    width = 0.8 / max(1, len(devices))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(layers) + 2), 4.5), layout="constrained")
    for d, device in enumerate(devices):
        xs, ys = [], []
        for i, layer in enumerate(layers):
            for r in rows:
                if r["layer"] == layer and _device_label(r) == device:
                    xs.append(i + (d - (len(devices) - 1) / 2) * width)
                    ys.append(value(r))
        ax.bar(xs, ys, width=width, label=device)
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_pj_per_mac(rows, path, *, title="Energy per useful MAC"):
    """pJ per useful MAC, grouped by layer, one bar per device (dataflow and array); log scale."""
    return _grouped_bars(rows, path, lambda r: r["energy_levels_pj"]["total"] / r["macs"] if r["macs"] else 0.0,
                         "pJ per MAC (log)", title, log=True)


def plot_utilization(rows, path, *, title="PE utilisation over the whole layer"):
    """Utilisation (useful MACs / (PEs x cycles)), grouped by layer, one bar per device."""
    return _grouped_bars(rows, path, lambda r: 100.0 * r["utilization"], "utilisation %", title)


def write_pictures(rows, folder, *, prefix=""):
    """All three pictures of ``rows`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [plot_energy_breakdown(rows, folder / f"{prefix}energy_breakdown.png"),
            plot_pj_per_mac(rows, folder / f"{prefix}pj_per_mac.png"),
            plot_utilization(rows, folder / f"{prefix}utilization.png")]


def plot_pe_heatmap(values, rows, cols, path, *, title, label):
    """A ``rows x cols`` heat map of a per-PE count (``{(row, col): value}``), e.g. effective MACs or toggles
    from :mod:`tessera.verif.activity`."""
    plt = _pyplot()
    grid = np.zeros((rows, cols))
    for (r, c), value in values.items():
        grid[r, c] = value
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * cols, 1.0 + 0.5 * rows))
    image = ax.imshow(grid, cmap="viridis")
    ax.set_xlabel("PE column")
    ax.set_ylabel("PE row")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
