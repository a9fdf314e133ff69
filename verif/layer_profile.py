"""Where each layer's cycles go, from the device's counters: the MLPerf Tiny bench's per-layer table and pictures.

A layer run on its own (``--per-layer``) reads its counters from first instruction to last result. Its cycles split
into four parts that add up to the whole:

* ``array``: cycles in which a vector (ws) or reduction step (os, rs) entered the PE array, the only ones that
  multiply;
* ``core other``: the rest of the cycles the compute core had work (weights into the array, fills and drains,
  requantisation);
* ``waiting for input``: the core idle while instructions or data were still arriving over the link;
* ``other``: the rest (the vector unit's cycles, results waiting for the link, the gaps between commands).

Utilisation is the layer's useful MACs over PEs x cycles.
"""

__all__ = ["layer_rows", "plot_layers", "PARTS"]

#: The parts a layer's cycles split into, in the pictures' order.
PARTS = ("array", "core other", "waiting for input", "other")


def layer_rows(model, cfg, reports):
    """One row per device layer of a per-layer run's ``reports``: its name, kind, MACs, cycles, utilisation and
    the cycles of each of :data:`PARTS`."""
    rows = []
    for report in reports:
        if report.target != "device":
            continue
        counters = report.counters
        array, busy = counters.get("array_cycles", 0), counters.get("busy_cycles", 0)
        waiting = counters.get("stall_input_cycles", 0)
        # (the counters as they are: array cycles are busy ones, and busy and waiting cycles are disjoint)
        parts = {"array": array, "core other": busy - array, "waiting for input": waiting,
                 "other": report.cycles - busy - waiting}
        rows.append({"model": model, "layer": report.name, "kind": report.op, "macs": report.macs,
                     "cycles": report.cycles,
                     "utilization": report.macs / (cfg.pes * report.cycles) if report.cycles else 0.0, **parts})
    return rows


def plot_layers(rows, path, title):
    """A bar per layer of its cycles split into :data:`PARTS`, its utilisation marked above; written to ``path``
    (PNG)."""
    import matplotlib
    matplotlib.use("Agg")    # files only: no display, same output everywhere
    import matplotlib.pyplot as plt

    figure, cycles_axis = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) + 2), 4.5))
    positions = range(len(rows))
    bottom = [0] * len(rows)
    for part in PARTS:
        heights = [row[part] for row in rows]
        cycles_axis.bar(positions, heights, bottom=bottom, label=part)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    cycles_axis.set_ylabel("cycles")
    cycles_axis.set_xticks(list(positions), [f"{row['layer']} ({row['kind']})" for row in rows], rotation=90,
                           fontsize=7)
    share = cycles_axis.twinx()
    share.plot(list(positions), [100 * row["utilization"] for row in rows], "k.", label="utilisation")
    share.set_ylabel("utilisation %")
    share.set_ylim(0, 100)
    cycles_axis.legend(loc="upper left", fontsize=7)
    cycles_axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
