"""The energy model (cost tables, YAML tables, level breakdown) and the report pictures and tables."""

import math

import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver import energy
from tessera.sw_driver.energy import (
    BUILTIN_TABLES,
    DEFAULT_COSTS,
    EnergyTableError,
    cost_table,
    energy_breakdown,
    layer_energy,
    load_cost_table,
    sram_pj_per_64bit,
)
from tessera.sw_driver.reports import layer_record, markdown_table, write_pictures

CFG = AcceleratorConfig(rows=4, cols=4, dataflow="ws", act_depth=256, weight_depth=256, acc_depth=64,
                        param_depth=4, vec_depth=64)

COUNTERS = {"cycles": 1000, "busy_cycles": 900, "stall_input_cycles": 50, "stall_output_cycles": 0,
            "array_cycles": 600, "commands": 4, "act_reads": 700, "act_writes": 300, "weight_reads": 40,
            "weight_writes": 40, "acc_reads": 200, "acc_writes": 300, "param_reads": 4, "param_writes": 4,
            "link_words_in": 500, "link_words_out": 60, "vec_cycles": 10, "vec_reads": 20, "vec_writes": 10}


class TestTables:
    def test_horowitz_values(self):
        t = BUILTIN_TABLES["horowitz-45nm"]
        assert t["mac"] == pytest.approx(0.2 + 0.1)
        assert t["gated_mac_saving"] == pytest.approx(0.2)
        assert t["vec_lane_op"] == pytest.approx(0.03)
        assert t["dram"] == {"cost": 2000.0, "bits": 64}
        assert 1300 <= t["dram"]["cost"] <= 2600
        assert t["sram"]["by_size_bytes"] == {8192: 10.0, 32768: 20.0, 1048576: 100.0}
        assert DEFAULT_COSTS is t

    def test_eyeriss_ratios(self):
        t = BUILTIN_TABLES["eyeriss"]
        ratios = (t["dram"]["cost"], *t["sram"]["by_size_bytes"].values(), t["inter_pe"], t["rf"], t["mac"])
        assert ratios == (200, 6, 2, 1, 1)
        assert t["dram"]["bits"] == t["sram"]["bits"] == 16
        assert t["unit_pj"] == pytest.approx(BUILTIN_TABLES["horowitz-45nm"]["mac"])

    def test_sram_cost_by_size(self):
        assert sram_pj_per_64bit(8 * 1024) == 10.0
        assert sram_pj_per_64bit(32 * 1024) == 20.0
        assert sram_pj_per_64bit(1 << 20) == 100.0
        assert sram_pj_per_64bit(16 * 1024) == pytest.approx(15.0)     # halfway in log(size)
        assert sram_pj_per_64bit(1024) == 10.0                         # clamped below and above
        assert sram_pj_per_64bit(1 << 24) == 100.0

    def test_every_builtin_is_valid(self):
        for name in BUILTIN_TABLES:
            assert cost_table(name) is BUILTIN_TABLES[name]


class TestYaml:
    def test_full_table(self, tmp_path):
        path = tmp_path / "mine.yaml"
        path.write_text("""
unit_pj: 1.0
mac: 0.5
gated_mac_saving: 0.25
vec_lane_op: 0.05
dram: {cost: 640, bits: 64}
sram: {bits: 64, by_size_bytes: {1024: 1.0, 1048576: 4.0}}
inter_pe: 0.0
rf: 0.0
sources: {mac: "a made-up 7 nm figure"}
""")
        table = load_cost_table(path)
        assert table["name"] == "mine"
        assert table["mac"] == 0.5
        levels = energy_breakdown(CFG, COUNTERS, path)
        assert levels["mac"] == pytest.approx(600 * 16 * 0.5)
        assert levels["link"] == pytest.approx(560 * 32 / 64 * 640)
        assert levels["inter_pe"] == 0.0

    def test_base_fills_in_and_nested_keys_merge(self, tmp_path):
        path = tmp_path / "cheap_dram.yaml"
        path.write_text("base: horowitz-45nm\ndram: {cost: 1300}\n")
        table = load_cost_table(path)
        assert table["dram"] == {"cost": 1300, "bits": 64}
        assert table["mac"] == BUILTIN_TABLES["horowitz-45nm"]["mac"]
        assert BUILTIN_TABLES["horowitz-45nm"]["dram"]["cost"] == 2000.0   # the built-in is untouched
        ratio = energy_breakdown(CFG, COUNTERS, path)["link"] / energy_breakdown(CFG, COUNTERS)["link"]
        assert ratio == pytest.approx(1300 / 2000)

    @pytest.mark.parametrize("text, message", [
        ("base: horowitz-45nm\nmacs: 1\n", "unknown key.*macs"),
        ("mac: 1\n", "missing key"),
        ("base: horowitz-45nm\nmac: -1\n", "mac must be a non-negative number"),
        ("base: horowitz-45nm\ndram: {bits: 0}\n", "dram.bits"),
        ("base: horowitz-45nm\nsram: {by_size_bytes: {}}\n", "sram.by_size_bytes"),
        ("base: tsmc3\n", "base 'tsmc3' is not a built-in"),
        ("- 1\n- 2\n", "is a mapping"),
    ])
    def test_bad_tables_name_the_key(self, tmp_path, text, message):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(EnergyTableError, match=message):
            load_cost_table(path)

    def test_unknown_table_name(self):
        with pytest.raises(EnergyTableError):
            cost_table(42)


class TestBreakdown:
    def test_levels_by_hand(self):
        levels = energy_breakdown(CFG, COUNTERS)
        t = DEFAULT_COSTS
        assert levels["link"] == pytest.approx(560 * 32 / 64 * 2000)
        # act buffer: 256 words of 4 int8 = 1 KiB (clamped to the 8 KB cost), 32-bit words
        assert levels["buffer.act"] == pytest.approx(1000 * 32 / 64 * 10.0)
        # acc buffer: 64 words of 4 int32 = 1 KiB, 128-bit words
        assert levels["buffer.acc"] == pytest.approx(500 * 128 / 64 * 10.0)
        assert levels["mac"] == pytest.approx(600 * 16 * t["mac"])
        assert levels["inter_pe"] == pytest.approx(600 * 16 * 2 * t["inter_pe"])
        assert levels["rf"] == 0.0
        assert levels["vec_alu"] == pytest.approx(10 * 4 * 0.03)
        assert levels["mac_gated_credit"] == 0.0

    def test_levels_sum_to_total(self):
        for table in BUILTIN_TABLES:
            levels = energy_breakdown(CFG, dict(COUNTERS, macs_gated=123, rf_accesses=77), table)
            assert math.isclose(sum(v for k, v in levels.items() if k != "total"), levels["total"])
            grouped = layer_energy(CFG, dict(COUNTERS, macs_gated=123, rf_accesses=77), table)
            assert set(grouped) == {"link", "buffers", "rf", "mac", "total"}
            assert grouped["total"] == pytest.approx(levels["total"])
            assert sum(v for k, v in grouped.items() if k != "total") == pytest.approx(grouped["total"])

    def test_every_buffer_is_a_level(self):
        levels = energy_breakdown(CFG, COUNTERS)
        assert [k for k in levels if k.startswith("buffer.")] == \
            ["buffer.act", "buffer.weight", "buffer.acc", "buffer.param", "buffer.vec", "buffer.program"]
        no_vec = AcceleratorConfig(rows=4, cols=4, act_depth=256, weight_depth=256, acc_depth=64, param_depth=4,
                                   vec_depth=0, program_depth=0)
        assert "buffer.vec" not in energy_breakdown(no_vec, COUNTERS)
        assert "buffer.program" not in energy_breakdown(no_vec, COUNTERS)

    def test_gated_macs_earn_a_credit(self):
        plain = energy_breakdown(CFG, COUNTERS)
        gated = energy_breakdown(CFG, dict(COUNTERS, macs_gated=1000))
        assert gated["mac_gated_credit"] == pytest.approx(-1000 * 0.2)
        assert gated["total"] == pytest.approx(plain["total"] - 200)

    def test_device_counters_replace_the_estimates(self):
        levels = energy_breakdown(CFG, dict(COUNTERS, noc_transfers=10, rf_reads=30, rf_writes=5))
        assert levels["inter_pe"] == pytest.approx(10 * DEFAULT_COSTS["inter_pe"])
        assert levels["rf"] == pytest.approx(35 * DEFAULT_COSTS["rf"])
        assert energy_breakdown(CFG, dict(COUNTERS, rf_accesses=7))["rf"] == pytest.approx(7 * DEFAULT_COSTS["rf"])

    def test_no_estimate_for_an_unknown_dataflow_pattern(self):
        rs_like = type("Cfg", (), {"dataflow": "rs", "pes": 16, "rows": 4, "cols": 4, "act_depth": 256,
                                   "weight_depth": 256, "acc_depth": 64, "param_depth": 4, "vec_depth": 0,
                                   "program_depth": 0, "multiplier": "exact"})()
        assert energy_breakdown(rs_like, COUNTERS)["inter_pe"] == 0.0

    def test_eyeriss_units(self):
        levels = energy_breakdown(CFG, COUNTERS, "eyeriss")
        unit = energy.BUILTIN_TABLES["eyeriss"]["unit_pj"]
        assert levels["link"] == pytest.approx(560 * 2 * 200 * unit)     # two 16-bit words per link word
        assert levels["mac"] == pytest.approx(600 * 16 * unit)


def _rows():
    rows = []
    for layer, macs in (("a", 1000), ("b", 5000)):
        for dataflow in ("ws", "os"):
            cfg = AcceleratorConfig(rows=4, cols=4, dataflow=dataflow, act_depth=256, weight_depth=256,
                                    acc_depth=64, param_depth=4, vec_depth=64)
            record = layer_record(cfg, macs, dict(COUNTERS, macs_gated=50))
            rows.append(dict(record, layer=layer, dataflow=dataflow, rows=4, cols=4))
    return rows


class TestReports:
    def test_layer_record_shape(self):
        record = layer_record(CFG, 9000, COUNTERS)
        assert record["utilization"] == pytest.approx(9000 / (16 * 1000))
        assert record["counters"]["link_bytes_in"] == 2000
        assert record["counters"]["buffer_reads"]["act"] == 700
        assert record["counters"]["macs_gated"] == 0
        assert record["energy_pj_per_mac"] == pytest.approx(record["energy_levels_pj"]["total"] / 9000)

    def test_pictures_are_png_files(self, tmp_path):
        paths = write_pictures(_rows(), tmp_path)
        assert [p.name for p in paths] == ["energy_breakdown.png", "pj_per_mac.png", "utilization.png"]
        for path in paths:
            data = path.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, path

    def test_markdown_table(self):
        text = markdown_table([{"name": "x", "n": 1234, "u": 0.5}, {"name": "y", "n": 5, "u": None}],
                              [("name", "layer", ""), ("n", "MACs", lambda v: f"{v:,}"), ("u", "util", ".0%")])
        assert text.splitlines() == ["| layer | MACs | util |", "|---|---:|---:|", "| x | 1,234 | 50% |",
                                     "| y | 5 |  |"]


def test_an_approximate_multiplier_scales_the_multiply_and_its_gating_credit():
    from tessera.sw_driver.energy import multiplier_energy_ratio
    approximate = CFG.replace(multiplier="mitchell")
    ratio = multiplier_energy_ratio("mitchell")
    assert 0.4 < ratio < 0.55       # EvoApproxLib's power at mitchell's MAE of 0.23 %: 0.47
    exact, cheaper = energy_breakdown(CFG, COUNTERS), energy_breakdown(approximate, COUNTERS)
    multiply = energy.DEFAULT_COSTS["gated_mac_saving"]
    issued = COUNTERS["array_cycles"] * CFG.pes
    assert exact["mac"] - cheaper["mac"] == pytest.approx(issued * multiply * (1 - ratio))
    assert cheaper["mac_gated_credit"] == pytest.approx(exact["mac_gated_credit"] * ratio)
    assert cheaper["link"] == exact["link"] and cheaper["rf"] == exact["rf"]
