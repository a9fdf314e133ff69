"""Benchmark: a 256x256x256 GEMM through the whole device over its 32-bit host link (simulated in C++),
utilisation from the hardware cycle counter over the whole layer, and simulation speed."""

import sys
import time

import numpy as np

from gen.config import AcceleratorConfig
from sw_driver.runtime import open_sim_device
from verif import golden
from verif.cases import random_gemm


def run(dataflow, m=256, k=256, n=256):
    cfg = AcceleratorConfig(rows=16, cols=16, dataflow=dataflow)
    with open_sim_device(cfg) as device:
        operands = random_gemm(np.random.default_rng(7), m, k, n)
        start = time.perf_counter()
        y, layer = device.gemm(*operands)
        wall = time.perf_counter() - start
        # The same RTL clocked by the harness's bare C++ loop with nothing to do: the ceiling for simulation.
        start = time.perf_counter()
        device.transport.run(200_000)
        bare = 200_000 / (time.perf_counter() - start)
    if not np.array_equal(y, golden.gemm_hw(*operands)):
        raise SystemExit(f"{dataflow}: device output differs from the golden model")
    c = layer.counters
    print(f"{dataflow} 16x16, GEMM {m}x{k}x{n}: bit-exact; {layer.cycles:,} cycles (hardware counter), "
          f"utilization {layer.utilization:.1%}; array fed {c['array_cycles']:,} cycles, stalled on input "
          f"{c['stall_input_cycles']:,}, on output {c['stall_output_cycles']:,}; link in {layer.link_bytes_in:,} B, "
          f"out {layer.link_bytes_out:,} B; {layer.cycles / wall:,.0f} simulated cycles/s ({wall:.1f} s) "
          f"against {bare:,.0f} cycles/s for the bare Verilator loop ({layer.cycles / wall / bare:.0%})")
    return layer, wall, bare


def main():
    rows = [(df, *run(df)) for df in ("ws", "os")]
    print()
    print("| dataflow | array | GEMM | cycles | utilization | link bytes in | link bytes out | sim cycles/s | "
          "bare loop cycles/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for df, layer, wall, bare in rows:
        print(f"| {df} | 16x16 | 256^3 | {layer.cycles:,} | {layer.utilization:.1%} | {layer.link_bytes_in:,} | "
              f"{layer.link_bytes_out:,} | {layer.cycles / wall:,.0f} | {bare:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
