"""Every option of ``tessera`` is checked as it is parsed: a bad value fails before any work, in one line that
names the option and what it accepts (exit status 2)."""

import os

import pytest

import tessera.sw_driver.demo
import tessera.sw_driver.runtime
from tessera.gen.cache import CACHE_ENV
from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver.cli import main
from tessera.sw_driver.demo import count_test_images, run_demo


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Nothing may start: not the demo, not a simulator."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")
    monkeypatch.setattr(tessera.sw_driver.demo, "run_demo", refuse)
    monkeypatch.setattr(tessera.sw_driver.runtime, "open_sim_device", refuse)


def _usage_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "usage:" not in err, err
    return err.strip()


class TestDemoArguments:
    @pytest.mark.parametrize("option, value, accepted", [
        ("--images", "-5", "-5 is out of range; accepted: an integer from 1 to 360 (the test digits)"),
        ("--images", "0", "0 is out of range; accepted: an integer from 1 to 360 (the test digits)"),
        ("--images", "361", "361 is out of range; accepted: an integer from 1 to 360 (the test digits)"),
        ("--images", "ten", "'ten' is not an integer"),
        ("--batch", "0", "0 is out of range; accepted: an integer of at least 1 (images per device program)"),
        ("--batch", "2.5", "'2.5' is not an integer"),
        ("--prune", "1.5", "1.5 is out of range; accepted: a fraction from 0 up to, not including, 1"),
        ("--prune", "1", "1.0 is out of range; accepted: a fraction from 0 up to, not including, 1"),
        ("--prune", "-0.1", "-0.1 is out of range; accepted: a fraction from 0 up to, not including, 1"),
        ("--prune", "nan", "nan is out of range; accepted: a fraction from 0 up to, not including, 1"),
        ("--format", "QInt8", "'QInt8' is not a quantization format; accepted: QOperator, QDQ"),
        ("--prune-by", "row", "'row' is not a pruning granularity; accepted: tile, weight, energy"),
    ])
    def test_bad_value_is_one_line_with_what_is_accepted(self, capsys, option, value, accepted):
        line = _usage_error(capsys, ["demo", option, value])
        assert line == f"tessera demo: error: argument {option}: {accepted}"

    def test_good_values_reach_the_demo(self, monkeypatch):
        seen = {}
        monkeypatch.setattr(tessera.sw_driver.demo, "run_demo", lambda cfg, **kwargs: seen.update(kwargs) or 0)
        assert main(["demo", "--images", "360", "--batch", "1", "--prune", "0.5", "--format", "qdq",
                     "--prune-by", "WEIGHT", "--rows", "4", "--cols", "4"]) == 0
        assert seen["images"] == count_test_images() == 360 and seen["batch"] == 1 and seen["prune"] == 0.5
        assert seen["quant_format"] == "QDQ" and seen["prune_by"] == "weight"

    def test_missing_report_folder_is_found_first(self, tmp_path, capsys):
        assert main(["demo", "--report", str(tmp_path / "no" / "r.json")]) == 1
        assert capsys.readouterr().err.startswith("tessera: InputError: --report ")

    @pytest.mark.parametrize("kwargs, message", [
        ({"batch": 0}, "batch: 0 is out of range"),
        ({"images": -5}, "images: -5 is out of range"),
        ({"images": 2.0}, "images: must be an integer, not float 2.0"),
        ({"prune": 1.5}, "prune: 1.5 is out of range"),
        ({"quant_format": "qdq"}, "quant_format: 'qdq'; accepted: QOperator, QDQ"),
    ])
    def test_run_demo_checks_its_arguments_too(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            run_demo(AcceleratorConfig(rows=4, cols=4), **kwargs)


class TestConfigurationArguments:
    @pytest.mark.parametrize("command", ["verilog", "lint", "demo", "run"])
    @pytest.mark.parametrize("option, value, accepted", [
        ("--rows", "0", "0 is out of range; accepted: an integer from 1 to 32"),
        ("--cols", "33", "33 is out of range; accepted: an integer from 1 to 32"),
        ("--rows", "8.0", "'8.0' is not an integer"),
        ("--dataflow", "xs", "'xs' is not a dataflow; accepted: ws, os, rs"),
        ("--config", "c.yaml", "configuration file 'c.yaml': unknown suffix .yaml; accepted: .toml, .json"),
    ])
    def test_bad_value_fails_in_every_command(self, capsys, command, option, value, accepted):
        extra = ["m.onnx", "--input", "x.npy"] if command == "run" else []
        line = _usage_error(capsys, [command, *extra, option, value])
        assert line == f"tessera {command}: error: argument {option}: {accepted}"

    def test_out_must_not_be_a_file(self, tmp_path, capsys):
        (tmp_path / "f").write_text("")
        line = _usage_error(capsys, ["verilog", "--out", str(tmp_path / "f")])
        assert line.endswith("is a file; accepted: a folder (created if missing)")


class TestRunArguments:
    @pytest.mark.parametrize("target", ["tcp", "serial:", "SIM"])
    def test_bad_target(self, capsys, target):
        line = _usage_error(capsys, ["run", "m.onnx", "--input", "x.npy", "--target", target])
        assert line == (f"tessera run: error: argument --target: {target!r} is not a target; accepted: sim, host, "
                        f"serial:PORT")

    def test_input_is_required(self, capsys):
        assert _usage_error(capsys, ["run", "m.onnx"]) == \
            "tessera run: error: the following arguments are required: --input"


class TestCacheDir:
    def test_sets_the_cache_for_the_command(self, tmp_path, monkeypatch):
        monkeypatch.setenv(CACHE_ENV, "/somewhere/else")     # restored after the test
        # a command that fails fast (the model is missing) still runs with the cache set
        assert main(["--cache-dir", str(tmp_path / "cache"), "run", str(tmp_path / "m.onnx"), "--input",
                     str(tmp_path / "x.npy"), "--target", "host"]) == 1
        assert os.environ[CACHE_ENV] == str((tmp_path / "cache").resolve())

    def test_must_not_be_a_file(self, tmp_path, capsys, monkeypatch):
        monkeypatch.setenv(CACHE_ENV, "/somewhere/else")
        (tmp_path / "f").write_text("")
        line = _usage_error(capsys, ["--cache-dir", str(tmp_path / "f"), "verilog"])
        assert line.startswith("tessera: error: argument --cache-dir:")
        assert os.environ[CACHE_ENV] == "/somewhere/else"


class TestBoardArgument:
    @pytest.mark.parametrize("command", ["demo", "run", "compile"])
    def test_a_board_that_does_not_exist_names_the_boards(self, capsys, command):
        extra = {"run": ["m.onnx", "--input", "x.npy"], "compile": ["m.onnx", "-o", "m.tsr"]}.get(command, [])
        line = _usage_error(capsys, [command, *extra, "--board", "arty"])
        assert line.startswith(f"tessera {command}: error: argument --board: 'arty' is not a board; accepted: ")
        assert "icebreaker" in line and "ulx3s" in line

    def test_a_board_and_a_configuration_file_are_refused_together(self, tmp_path, capsys):
        (tmp_path / "c.toml").write_text("rows = 4\n")
        assert main(["demo", "--board", "ulx3s", "--config", str(tmp_path / "c.toml")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--board ulx3s and --config" in err and "accepted: one of them" in err

    @pytest.mark.parametrize("board, rows, cols, mhz", [("ulx3s", 16, 8, 60.0), ("ulx3s-peak", 20, 16, 81.0),
                                                         ("icebreaker", 1, 1, 24.0)])
    def test_the_demo_runs_on_the_boards_configuration_at_its_clock(self, monkeypatch, board, rows, cols, mhz):
        from tessera.fpga.boards import BOARDS, board_config
        seen = {}
        monkeypatch.setattr(tessera.sw_driver.demo, "run_demo", lambda cfg, **kwargs: seen.update(cfg=cfg) or 0)
        assert main(["demo", "--board", board]) == 0
        assert (seen["cfg"].rows, seen["cfg"].cols, seen["cfg"].clock_mhz) == (rows, cols, mhz)
        # the configuration its bitstream is built with (an image compiled for one runs on the other)
        assert seen["cfg"].hash == board_config(BOARDS[board]).hash
        assert main(["demo", "--board", board, "--dataflow", "os"]) == 0    # single fields on top of it
        assert seen["cfg"].dataflow == "os" and seen["cfg"].rows == rows
