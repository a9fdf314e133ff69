"""Data movement of one layer on the three dataflows, from the RTL's counters: ``python -m
tessera.verif.compare_dataflows``.

Eyeriss's claim (Chen, Emer, Sze, ISCA 2016) is that row stationary needs fewer accesses to the global
buffer per MAC than the systolic dataflows, paying with register-file (scratchpad) accesses, which cost far
less. This runs the same layer, bit-exact, on arrays of the same PE count and prints, per MAC: bytes read
from the on-chip buffers, register-file accesses, PE-to-PE transfers and link bytes.
"""

import argparse
import time

import numpy as np

from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver.runtime import open_sim_device
from tessera.verif.cases import random_conv

__all__ = ["buffer_bytes_read", "compare"]


def buffer_bytes_read(cfg, counters):
    """Bytes read from the on-chip buffers (activations, weights, accumulator, parameters)."""
    return (counters["act_reads"] * cfg.rows + counters["weight_reads"] * cfg.weight_lanes
            + counters["acc_reads"] * cfg.cols * 4 + counters["param_reads"] * cfg.cols * 8)


def compare(rows, cols, layer, seed=1, dataflows=("ws", "os", "rs"), rs_filters=None):
    """Rows of figures for ``layer`` (random_conv's keywords) on ``rows x cols`` devices of each dataflow
    (``rs_filters``: filters a row-stationary PE interleaves, the configuration's default if None)."""
    results = []
    for dataflow in dataflows:
        cfg = AcceleratorConfig(rows=rows, cols=cols, dataflow=dataflow).replace(rs_filters=rs_filters)
        operands, attrs, expected = random_conv(np.random.default_rng(seed), **layer)
        with open_sim_device(cfg) as device:
            started = time.perf_counter()
            y, run = device.conv(*operands, **attrs)
            wall = time.perf_counter() - started
        if not np.array_equal(y, expected):
            raise AssertionError(f"{dataflow}: the device's output differs from the golden model")
        c, macs = run.counters, run.macs
        results.append({
            "dataflow": dataflow, "cycles": run.cycles, "utilization": run.utilization,
            "buffer_bytes_per_mac": buffer_bytes_read(cfg, c) / macs,
            "rf_accesses_per_mac": (c["rf_reads"] + c["rf_writes"]) / macs,
            "noc_per_mac": c["noc_transfers"] / macs,
            "link_bytes_per_mac": 4 * (c["link_words_in"] + c["link_words_out"]) / macs,
            "wall_s": wall,
        })
    return results


#: AlexNet's CONV2-5 (Krizhevsky et al. 2012) with a quarter of the channels, ungrouped, on the full feature maps.
#: CONV1 (11x11, stride 4) is left out: the device takes kernels up to 7x7.
ALEXNET_REDUCED = {
    "CONV2": {"channels": 24, "out_channels": 64, "size": 27, "kernel": 5, "stride": 1, "pad": 2},
    "CONV3": {"channels": 64, "out_channels": 96, "size": 13, "kernel": 3, "stride": 1, "pad": 1},
    "CONV4": {"channels": 96, "out_channels": 96, "size": 13, "kernel": 3, "stride": 1, "pad": 1},
    "CONV5": {"channels": 96, "out_channels": 64, "size": 13, "kernel": 3, "stride": 1, "pad": 1},
}


def _describe(layer):
    k = layer["kernel"]
    return (f"{k}x{k} conv {layer['channels']}->{layer['out_channels']} on {layer['size']}x{layer['size']}, "
            f"pad {layer['pad']}")


def _print_table(rows):
    print(f"{'dataflow':8} {'cycles':>9} {'util':>6} {'buffer B':>9} {'RF acc':>7} {'PE-PE':>6} {'link B':>7}")
    for r in rows:
        print(f"{r['dataflow']:8} {r['cycles']:9,} {r['utilization']:6.1%} {r['buffer_bytes_per_mac']:9.3f} "
              f"{r['rf_accesses_per_mac']:7.2f} {r['noc_per_mac']:6.2f} {r['link_bytes_per_mac']:7.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--out-channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--dataflows", default="ws,os,rs", help="comma-separated (default: ws,os,rs)")
    parser.add_argument("--rs-filters", type=int, help="filters a row-stationary PE interleaves (default: the "
                                                          "configuration's)")
    parser.add_argument("--alexnet", action="store_true",
                        help="AlexNet's CONV2-5 with a quarter of the channels instead of one layer")
    args = parser.parse_args(argv)
    layers = ALEXNET_REDUCED if args.alexnet else {
        "layer": {"channels": args.channels, "out_channels": args.out_channels, "size": args.size, "kernel": 3,
                  "stride": 1, "pad": 1}}
    for name, layer in layers.items():
        print(f"{name if args.alexnet else ''} {_describe(layer)}, {args.rows}x{args.cols} PEs; per MAC:".lstrip())
        _print_table(compare(args.rows, args.cols, layer, dataflows=args.dataflows.split(","),
                             rs_filters=args.rs_filters))


if __name__ == "__main__":
    main()
