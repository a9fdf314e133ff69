"""Run one requantised GEMM on the simulated RTL of a configuration and report what it cost."""

import json
import tempfile
from pathlib import Path

from gen.verilog import TOPLEVEL, write_verilog
from verif.toolchain import build_simulator, run_cocotb

__all__ = ["run_gemm_on_rtl"]


def run_gemm_on_rtl(cfg, m, k, n, *, seed=1, verbose=False):
    """Build (or reuse) the simulator for ``cfg``, run a random ``m x k x n`` GEMM without stalls, check it
    bit for bit against the golden model (the cocotb test fails otherwise) and return its report dict with
    ``utilization`` (MACs / (PEs x core busy cycles)) and ``issue_rate`` (array input vectors per busy cycle)."""
    verilog = write_verilog(cfg)
    if verbose:
        print(f"RTL: {verilog} ({cfg.dataflow} {cfg.rows}x{cfg.cols}, config {cfg.hash}); building simulator...")
    build = build_simulator(verilog, TOPLEVEL)
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        job = {"config": cfg.to_dict(), "seed": seed, "problems": [[m, k, n]], "report": str(report_path),
               "stall": 0.0, "backpressure": 0.0}
        run_cocotb(build, TOPLEVEL, "verif.tb_core", "gemm_bench", env={"TESSERA_TB": json.dumps(job)},
                   results_name=f"bench_{m}x{k}x{n}")
        report = json.loads(report_path.read_text())
    busy = report["core_busy_cycles"]
    report["utilization"] = report["macs"] / (cfg.pes * busy)
    report["issue_rate"] = report["array_issue_cycles"] / busy
    if verbose:
        print(f"GEMM {m}x{k}x{n} ({report['macs']:,} MACs) on {cfg.dataflow} {cfg.rows}x{cfg.cols}: "
              f"bit-exact against the golden model\n"
              f"  loads: {report['load_beats']:,} buffer words in {report['load_cycles']:,} cycles\n"
              f"  compute: {busy:,} busy cycles (hardware counter), array fed on {report['array_issue_cycles']:,} "
              f"of them ({report['issue_rate']:.1%})\n"
              f"  utilization (MACs / (PEs x busy cycles)): {report['utilization']:.1%}\n"
              f"  whole run incl. loads: {report['load_cycles'] + report['compute_cycles']:,} cycles, "
              f"utilization {report['macs'] / (cfg.pes * (report['load_cycles'] + report['compute_cycles'])):.1%}")
    return report
