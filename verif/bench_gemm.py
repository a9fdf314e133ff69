"""Benchmark: a 256x256x256 requantised GEMM streamed through a 16x16 weight-stationary array (and OS beside it).

Prints cycles and utilisation from the core's hardware counters; run with ``make bench``.
"""

import sys
import time

from gen.config import AcceleratorConfig
from verif.gemm_run import run_gemm_on_rtl


def main():
    rows = []
    for dataflow in ("ws", "os"):
        cfg = AcceleratorConfig(rows=16, cols=16, dataflow=dataflow)
        start = time.perf_counter()
        report = run_gemm_on_rtl(cfg, 256, 256, 256, verbose=True)
        rows.append((dataflow, report, time.perf_counter() - start))
    print("\n| dataflow | array | GEMM | busy cycles | issue rate | utilization | wall s |")
    print("|---|---|---|---|---|---|---|")
    for dataflow, r, wall in rows:
        print(f"| {dataflow} | 16x16 | 256^3 | {r['core_busy_cycles']:,} | {r['issue_rate']:.1%} | "
              f"{r['utilization']:.1%} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
