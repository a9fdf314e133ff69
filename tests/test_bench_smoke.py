"""The bench's machinery on tiny layers and a small device: rows complete and consistent, files written, and a
wrong answer stops it."""

import json

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.verif import bench_suite
from tessera.verif.bench_suite import BenchError, BenchLayer, format_markdown, run_suite
from tessera.verif.scalesim_peer import closed_form_cycles

pytestmark = pytest.mark.rtl

# The zero-gating test's device: one harness build serves both.
CFG = AcceleratorConfig(rows=4, cols=4, dataflow="ws", act_depth=256, weight_depth=256, acc_depth=64,
                        param_depth=4, vec_depth=0)
LAYERS = [BenchLayer("tiny_gemm", "gemm", m=10, k=7, n=6),
          BenchLayer("tiny_dw", "conv", channels=4, out_channels=4, size=5, kernel=3, pad=1, group=4, batch=2)]


def test_bench_rows_and_files(tmp_path):
    payload = run_suite(LAYERS, [CFG], out_dir=tmp_path, scalesim="closed-form", log=lambda *a: None)
    rows = payload["rows"]
    assert [r["layer"] for r in rows] == ["tiny_gemm", "tiny_dw"]
    for row, layer in zip(rows, LAYERS, strict=True):
        for key in ("layer", "dataflow", "rows", "cols", "macs", "cycles", "utilization", "scalesim_cycles",
                    "energy_pj_per_mac", "link_bytes_per_mac", "sim_cycles_per_s", "wall_s"):
            assert row[key] is not None, key
        assert row["bit_exact"] and row["macs"] == layer.macs
        assert row["cycles"] > 0 and row["sim_cycles"] >= row["cycles"]
        assert row["utilization"] == pytest.approx(row["macs"] / (CFG.pes * row["cycles"]))
        assert row["energy_pj_per_mac"] > 0
        assert row["energy_pj_per_mac"] == pytest.approx(row["energy_levels_pj"]["total"] / row["macs"])
        link = row["counters"]["link_bytes_in"] + row["counters"]["link_bytes_out"]
        assert row["link_bytes_per_mac"] == pytest.approx(link / row["macs"])
        assert row["rtl_over_scalesim"] == pytest.approx(row["cycles"] / row["scalesim_cycles"])
        assert row["scalesim_source"] == "closed-form"
    # the depthwise layer runs as depthwise commands on this ws array: the array multiplies its own weights only
    assert rows[1]["computed_macs"] == rows[1]["macs"]
    assert rows[1]["scalesim_cycles"] == 4 * closed_form_cycles("ws", 4, 4, 50, 9, 1)

    written = json.loads((tmp_path / "bench.json").read_text())
    assert len(written["rows"]) == 2 and written["summary"]["median_rtl_over_scalesim"]["ws"] > 0
    markdown = (tmp_path / "bench.md").read_text()
    assert markdown == format_markdown(written)
    assert "| tiny_gemm | ws | 4x4 |" in markdown and "median RTL cycles / SCALE-Sim cycles on ws" in markdown
    for name in ("energy_breakdown.png", "pj_per_mac.png", "utilization.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_a_wrong_answer_stops_the_bench(tmp_path, monkeypatch):
    real = bench_suite._operands

    def off_by_one(layer):
        compile_program, expected = real(layer)
        wrong = expected.copy()
        wrong.flat[0] = np.int8(wrong.flat[0] ^ 1)
        return compile_program, wrong

    monkeypatch.setattr(bench_suite, "_operands", off_by_one)
    with pytest.raises(BenchError, match="differs from the golden model"):
        run_suite(LAYERS[:1], [CFG], out_dir=tmp_path, scalesim="off", pictures=False, log=lambda *a: None)


def test_a_board_names_the_bench_configuration(tmp_path, monkeypatch, capsys):
    from tessera.fpga.boards import BOARDS, board_config
    seen = {}
    monkeypatch.setattr(bench_suite, "run_suite", lambda layers, configs, **kwargs: seen.update(configs=configs)
                        or {"rows": [], "summary": {}})
    monkeypatch.setattr(bench_suite, "format_markdown", lambda payload: "")
    assert bench_suite.main(["--board", "ulx3s", "--quick", "--out", str(tmp_path)]) == 0
    assert [cfg.hash for cfg in seen["configs"]] == [board_config(BOARDS["ulx3s"]).hash]
    assert bench_suite.main(["--board", "ulx3s", "--quick", "--dataflows", "os,rs", "--out", str(tmp_path)]) == 0
    assert [(cfg.dataflow, cfg.rows, cfg.cols, cfg.clock_mhz) for cfg in seen["configs"]] == [
        ("os", 16, 8, 60.0), ("rs", 16, 8, 60.0)]
    with pytest.raises(SystemExit):
        bench_suite.main(["--board", "ulx3s", "--arrays", "8x8"])
    assert "--arrays and --board ulx3s both name the arrays" in capsys.readouterr().err


def test_a_board_names_the_residency_bench_configuration(tmp_path, monkeypatch):
    from tessera.fpga.boards import BOARDS, board_config
    from tessera.verif import bench_residency
    seen = []
    monkeypatch.setattr(bench_residency, "run_model_both_ways",
                        lambda name, cfg, folder, width, fold_row_taps: seen.append((cfg, fold_row_taps)) or [])
    assert bench_residency.main(["--board", "icebreaker", "--models", "ad_autoencoder", "--out", str(tmp_path),
                                 "--fold-row-taps"]) == 0
    assert [(cfg.hash, fold) for cfg, fold in seen] == [(board_config(BOARDS["icebreaker"]).hash, True)]
    written = json.loads((tmp_path / "residency.json").read_text())
    assert written["config"]["clock_mhz"] == 24.0
