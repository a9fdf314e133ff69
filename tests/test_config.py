"""The configuration object: validation messages, serialisation round trips, the CLI's overrides."""

import argparse
import json

import pytest

from tessera.gen.config import AcceleratorConfig, ConfigError, ConfigTypeError
from tessera.sw_driver.cli import config_from_args, main


class TestValidation:
    @pytest.mark.parametrize("field, value, accepted", [
        ("rows", 0, "from 1 to 32"),
        ("cols", 33, "from 1 to 32"),
        ("rows", 2.5, "an integer"),
        ("dataflow", "xs", "'ws'"),
        ("operand_width", 16, "accepted: 8"),
        ("act_depth", 3, "one tile needs rows=4"),
        ("weight_depth", 2, "weight tile"),
        ("acc_depth", 6, "double-buffered"),
        ("acc_depth", 9, "even"),
        ("param_depth", 0, "from 1"),
        ("clock_mhz", 0, "1 to 1000"),
        ("rs_filters", 0, "from 1 to 16"),
        ("rs_filters", 17, "filters interleaved in a row-stationary PE"),
        ("requant_lanes", 5, "from 0 to 4 (0 for one lane per column)"),
        ("requant_lanes", 3, "does not divide cols=4; accepted: 0 (one lane per column) or one of 1, 2, 4"),
        ("single_port_buffers", 1, "must be true or false"),
        ("counters", "no", "must be true or false"),
    ])
    def test_illegal_value_names_parameter_and_range(self, field, value, accepted):
        with pytest.raises(ConfigError) as error:
            AcceleratorConfig(**{"rows": 4, "cols": 4, field: value})
        assert str(error.value).startswith(f"{field}:")
        assert accepted in str(error.value)

    @pytest.mark.parametrize("field, value, message", [
        ("rows", "8", "rows: must be an integer, not str '8'"),
        ("cols", 4.0, "cols: must be an integer, not float 4.0"),
        ("rows", True, "rows: must be an integer, not bool True"),
        ("act_depth", [512], "act_depth: must be an integer, not list [512]"),
        ("operand_width", "8", "operand_width: must be an integer, not str '8'"),
        ("dataflow", 1, "dataflow: must be a string, not int 1; accepted: 'ws', 'os', 'rs'"),
        ("clock_mhz", "100", "clock_mhz: must be a number, not str '100'"),
        ("counters", "no", "counters: must be true or false, not str 'no'"),
    ])
    def test_wrong_type_is_a_type_error_not_a_range_error(self, field, value, message):
        with pytest.raises(ConfigTypeError) as error:
            AcceleratorConfig(**{"rows": 4, "cols": 4, field: value})
        assert str(error.value) == message
        assert isinstance(error.value, TypeError) and isinstance(error.value, ConfigError)

    def test_range_error_is_not_a_type_error(self):
        with pytest.raises(ConfigError) as error:
            AcceleratorConfig(rows=40)
        assert not isinstance(error.value, TypeError)
        assert str(error.value) == "rows: 40 is out of range; accepted: an integer from 1 to 32"

    def test_every_legal_array_size(self):
        for rows in (1, 2, 7, 32):
            for cols in (1, 3, 32):
                assert AcceleratorConfig(rows=rows, cols=cols).pes == rows * cols

    def test_unknown_key_is_refused(self):
        with pytest.raises(ConfigError, match="unknown configuration key.*colums"):
            AcceleratorConfig.from_dict({"colums": 4})


class TestSerialisation:
    def test_toml_round_trip(self, tmp_path):
        cfg = AcceleratorConfig(rows=4, cols=8, dataflow="os", act_depth=512, counters=False, clock_mhz=62.5)
        path = tmp_path / "a.toml"
        path.write_text(cfg.to_toml())
        assert AcceleratorConfig.from_toml(path) == cfg

    def test_json_round_trip_and_hash(self):
        cfg = AcceleratorConfig(rows=3, cols=5)
        again = AcceleratorConfig.from_json(cfg.to_json())
        assert again == cfg and again.hash == cfg.hash
        assert cfg.replace(rows=4).hash != cfg.hash

    @pytest.mark.parametrize("suffix", [".toml", ".json", ".JSON"])
    def test_file_round_trip_by_suffix(self, tmp_path, suffix):
        cfg = AcceleratorConfig(rows=4, cols=8, dataflow="os", act_depth=512, counters=False, clock_mhz=62.5)
        path = tmp_path / f"a{suffix}"
        path.write_text(cfg.to_toml() if suffix == ".toml" else cfg.to_json())
        assert AcceleratorConfig.from_file(path) == cfg

    def test_json_accepts_an_accelerator_table_as_toml_does(self, tmp_path):
        path = tmp_path / "a.json"
        path.write_text(json.dumps({"accelerator": {"rows": 2, "cols": 3}}))
        assert AcceleratorConfig.from_file(path) == AcceleratorConfig(rows=2, cols=3)

    @pytest.mark.parametrize("suffix, text", [(".toml", 'rows = "8"\n'), (".json", '{"rows": "8"}')])
    def test_wrong_type_in_a_file_is_a_type_error(self, tmp_path, suffix, text):
        path = tmp_path / f"a{suffix}"
        path.write_text(text)
        with pytest.raises(ConfigTypeError, match="^rows: must be an integer, not str '8'$"):
            AcceleratorConfig.from_file(path)

    @pytest.mark.parametrize("name, text, message", [
        ("a.yaml", "rows: 4", "configuration file '.*a.yaml': unknown suffix .yaml; accepted: .toml, .json"),
        ("a", "rows = 4", "unknown suffix \\(none\\); accepted: .toml, .json"),
        ("a.json", "{rows: 4", "cannot read configuration .*a.json: Expecting property name"),
        ("a.json", "[4]", "a configuration must be a table of keys, not list \\[4\\]"),
        ("a.toml", "accelerator = 4", "a configuration must be a table of keys, not int 4"),
        ("none.json", None, "cannot read configuration .*none.json"),
    ])
    def test_unreadable_files_are_reported(self, tmp_path, name, text, message):
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            AcceleratorConfig.from_file(path)

    def test_malformed_toml_is_reported(self, tmp_path):
        path = tmp_path / "bad.toml"
        path.write_text("rows = = 3")
        with pytest.raises(ConfigError, match="cannot read configuration"):
            AcceleratorConfig.from_toml(path)


class TestCommandLine:
    def test_verilog_records_its_configuration(self, tmp_path, capsys):
        config = tmp_path / "c.toml"
        config.write_text(AcceleratorConfig(rows=2, cols=2, act_depth=16, weight_depth=16, acc_depth=8).to_toml())
        assert main(["verilog", "--config", str(config), "--cols", "3", "--out", str(tmp_path)]) == 0
        path = next(tmp_path.glob("ws_2x3_*/tessera_core.v"))
        header = path.read_text().splitlines()[:3]
        recorded = json.loads(header[2].removeprefix("// config: "))
        assert recorded["rows"] == 2 and recorded["cols"] == 3
        assert header[1] == f"// config_hash: {AcceleratorConfig.from_dict(recorded).hash}"

    def test_json_configuration_file(self, tmp_path):
        path = tmp_path / "c.json"
        path.write_text(AcceleratorConfig(rows=2, cols=2, dataflow="rs").to_json())
        args = argparse.Namespace(config=str(path), rows=None, cols=3, dataflow=None, multiplier=None)
        assert config_from_args(args) == AcceleratorConfig(rows=2, cols=3, dataflow="rs")

    def test_wrong_type_in_the_file_exits_with_message(self, tmp_path, capsys):
        path = tmp_path / "c.toml"
        path.write_text('rows = "8"\n')
        assert main(["verilog", "--config", str(path), "--out", str(tmp_path)]) == 2
        assert capsys.readouterr().err == "tessera: configuration type error: rows: must be an integer, not str '8'\n"

    def test_bad_override_exits_with_message(self, tmp_path, capsys):
        assert main(["verilog", "--rows", "0", "--out", str(tmp_path)]) == 2
        assert "rows: 0 is out of range" in capsys.readouterr().err
