"""Whole models on the iCEBreaker (verif/icebreaker_fit.py): the words it says a model needs hold it whole, one word
fewer in any memory but the activation buffer's does not (there its maps may share words), and the report has a row
per model. Reduced-width models, no Yosys."""

import json

import pytest

from tessera.fpga.boards import board_config
from tessera.fpga.resident_fit import resident_fit
from tessera.sw_driver.model_compiler import compile_model
from tessera.sw_driver.onnx_import import load_model
from tessera.verif import icebreaker_fit as fit

DEFAULT = board_config(fit.BOARD)
#: The KWS DS-CNN at 4 of its 64 channels: whole on the 1x1 in a second.
KWS_CHANNELS = 4


@pytest.fixture(scope="module")
def kws(tmp_path_factory):
    """The reduced KWS's row and the path of its model."""
    folder = tmp_path_factory.mktemp("icebreaker")
    row = fit.needs_at("kws_ds_cnn", folder, DEFAULT, KWS_CHANNELS)
    return row, folder / f"kws_ds_cnn_{KWS_CHANNELS}" / "kws_ds_cnn.onnx"


def test_the_words_it_needs_are_what_resident_fit_reports_at_those_depths(kws):
    row, path = kws
    assert row["whole"] and row["fits_ram"] and not row["at_least"]
    smallest = fit.smallest_config(DEFAULT, row["words"])
    assert (smallest.weight_depth, smallest.act_depth, smallest.param_depth, smallest.program_depth) == (
        row["words"]["weight"], row["words"]["act"], row["words"]["param"], row["words"]["program"])
    (there,) = resident_fit(smallest, [path])
    assert there["whole"] and not there["streamed_layers"] and not there["not_resident"]
    for memory in ("weight", "act", "param", "program"):
        assert there[f"{memory}_words"] == row["words"][memory], memory


@pytest.mark.parametrize("field", ["weight_depth", "param_depth", "program_depth"])
def test_one_word_fewer_in_any_memory_is_not_whole(kws, field):
    row, path = kws
    smallest = fit.smallest_config(DEFAULT, row["words"])
    (short,) = resident_fit(smallest.replace(**{field: getattr(smallest, field) - 1}), [path])
    assert not short["whole"]


def test_activation_words_are_the_maps_apart(kws):
    # with a word fewer, a layer stores its output over its own input (tessera.sw_driver.resident): still whole,
    # its maps sharing words; the report's words are the maps' apart, an upper bound
    row, path = kws
    smallest = fit.smallest_config(DEFAULT, row["words"])
    short = smallest.replace(act_depth=smallest.act_depth - 1)
    (segment,) = [s for s in compile_model(load_model(path), short) if s.model is not None]
    words = [range(*t["act_words"]) for t in segment.model.plan["tensors"]]
    assert any(set(a) & set(b) for a, b in zip(words, words[1:], strict=False))


def test_ram_blocks_follow_the_block_shapes():
    # an 8-bit word takes a whole 16-bit SPRAM address: 16,384 words a block, whatever their width up to 16
    assert fit.blocks("SPRAM", 16384, 8) == fit.blocks("SPRAM", 16384, 16) == 1
    assert fit.blocks("SPRAM", 16385, 8) == 2 and fit.blocks("SPRAM", 16384, 32) == 2
    # a 32-bit program word: two 256x16 EBRs per 256 words; 64-bit parameters, four
    assert fit.blocks("EBR", 256, 32) == 2 and fit.blocks("EBR", 257, 32) == 4 and fit.blocks("EBR", 62, 64) == 4
    bits = fit.word_bits(DEFAULT)
    assert bits == {"weight": 8, "act": 8, "param": 64, "program": 32, "acc": 32}
    use = fit.ram_use({"weight": 20000, "act": 100, "param": None, "program": 300, "acc": 16}, bits)
    assert use["SPRAM"] == {"blocks": 3, "bytes": 20100}
    assert use["EBR"] == {"blocks": 4 + 2, "bytes": 1200 + 64}


def test_a_layer_past_conv_setup_s_fields_is_left_out_and_says_why(tmp_path):
    # the autoencoder's 640 input features are 640 channel blocks on one PE row: more than CONV_SETUP's 8-bit field
    row = fit.needs_at("ad_autoencoder", tmp_path, DEFAULT, 8)
    assert not row["whole"] and not row["fits_ram"] and row["at_least"]
    assert "not resident (QGemm_1" in row["why"]
    assert any("does not fit CONV_SETUP: channel_blocks: 640 does not fit unsigned(8)" in reason
               for reason in row["reasons"])
    line = fit.conclusion([row], [row], None, [])
    assert line.startswith("No whole model fits the iCEBreaker: ad_autoencoder (8 of 128 channels)")
    assert "No ad_autoencoder fits at any width (with 8 of 128 channels: 1 layer(s) not resident" in line


def _synth_stand_in(calls, lut=4000):
    def synth(board, cfg, progress):
        calls.append(cfg)
        used = lut + 500 * (cfg.program_depth > 0) + 300 * (cfg.act_depth > DEFAULT.act_depth)
        return {"resources": {"LUT": used, "FF": 1000, "DSP": 5, "BRAM": 20, "SPRAM": 2}, "fits": used <= 5280,
                "over": [] if used <= 5280 else [f"LUT: needs {used}, the iCE40UP5K has 5280"], "seconds": 1.0}
    return synth


def test_the_report_has_a_row_per_model_and_synthesises_the_smallest_holding_configuration(tmp_path, capsys):
    calls = []
    assert fit.main(["--width", "0.0625", "--out", str(tmp_path)], synth=_synth_stand_in(calls)) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "icebreaker_fit.json").read_text())
    assert [row["model"] for row in report["models"]] == list(fit.CHANNELS)
    table = [line for line in out.splitlines() if line.startswith("| kws_ds_cnn") or line.startswith("| ad_auto")]
    assert len(table) == len(report["models"]) + len(report["widest"])
    kws = report["models"][0]
    assert kws["channels"] == 4 and kws["fits_ram"]
    # the default, the default with the model's program memory, then with every depth it needs
    assert [cfg.program_depth for cfg in calls] == [0, kws["words"]["program"], kws["words"]["program"]]
    assert calls[0] == DEFAULT and calls[2].to_dict() == report["smallest_config"]
    assert calls[2].weight_depth == kws["words"]["weight"] and calls[1].weight_depth == DEFAULT.weight_depth
    assert report["conclusion"] == out.strip().splitlines()[-1]
    assert report["conclusion"].startswith("kws_ds_cnn (4 of 64 channels) fits the iCEBreaker whole")
    assert "the default 4,000; its program memory adds 500, the deeper buffers 300" in report["conclusion"]


def test_quick_does_not_synthesise(tmp_path, capsys):
    def refuse(*args):
        raise AssertionError("--quick ran Yosys")
    assert fit.main(["--quick", "--width", "0.02", "--out", str(tmp_path)], synth=refuse) == 0
    assert "logic not measured (--quick)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--width", "0"], "argument --width: 0 is out of range; accepted: above 0, up to 1"),
    (["--width", "1.5"], "argument --width: 1.5 is out of range; accepted: above 0, up to 1"),
    (["--width", "half"], "argument --width: 'half' is not a number"),
    (["--depth", "3"], "unrecognized arguments: --depth 3"),
])
def test_a_bad_argument_is_one_line_naming_it(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        fit.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err and message in err, err


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        fit.main(["--out", str(tmp_path / "file")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file; accepted: a folder" in err
