"""The bitstream report's resident section: which models a configuration keeps whole on chip, and the largest."""

import pytest

from tessera.fpga import build
from tessera.fpga.resident_fit import largest_whole, render_resident, resident_fit
from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver.cli import main
from tessera.verif import mlperf_tiny

#: A 4x4 array whose memories hold the reduced-width MLPerf Tiny models, the autoencoder's weights excepted.
ROOMY = AcceleratorConfig(rows=4, cols=4, act_depth=4096, weight_depth=6144, acc_depth=256, param_depth=256,
                          vec_depth=4096, program_depth=4096)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The four models at a quarter of their width, written by the module's command line."""
    folder = tmp_path_factory.mktemp("mlperf")
    assert mlperf_tiny.main(["--out", str(folder), "--width", "0.25"]) == 0
    return {name: folder / name / f"{name}.onnx" for name in mlperf_tiny.MODELS}


def test_the_models_command_prints_the_quantized_files_it_wrote(tmp_path, capsys):
    assert mlperf_tiny.main(["--out", str(tmp_path), "--width", "0.25"]) == 0
    printed = capsys.readouterr().out.strip().split(",")
    assert printed == [str(tmp_path / name / f"{name}.onnx") for name in mlperf_tiny.MODELS]
    assert all((tmp_path / name / f"{name}.onnx").stat().st_size > 0 for name in mlperf_tiny.MODELS)
    with pytest.raises(SystemExit):
        mlperf_tiny.main(["--width", "0"])
    assert "--width: 0 is out of range" in capsys.readouterr().err


def test_rows_say_what_stays_whole_and_what_streams(models):
    rows = {row["model"]: row for row in resident_fit(ROOMY, list(models.values()))}
    for name in ("ic_resnet8", "kws_ds_cnn"):
        assert rows[name]["whole"] and rows[name]["resident_layers"] == rows[name]["compute_layers"] > 0
        assert rows[name]["weight_words"] <= ROOMY.weight_depth and rows[name]["act_words"] <= ROOMY.act_depth
    # the autoencoder's weights do not all fit 6,144 words: its largest layers stream, so it is not whole
    ad = rows["ad_autoencoder"]
    assert not ad["whole"] and ad["streamed_layers"] and ad["resident_layers"] == ad["compute_layers"]
    assert ad["weight_bytes"] == ad["weight_words"] * ROOMY.cols
    # (its depthwise layers take a few words a tile: 624 in all)
    assert ROOMY.replace(weight_depth=512).weight_depth < rows["kws_ds_cnn"]["weight_words"]
    smaller = {row["model"]: row for row in resident_fit(ROOMY.replace(weight_depth=512), [models["kws_ds_cnn"]])}
    assert not smaller["kws_ds_cnn"]["whole"] and smaller["kws_ds_cnn"]["streamed_layers"]


def test_the_largest_whole_model_is_the_one_with_most_weights(models):
    rows = resident_fit(ROOMY, list(models.values()))
    whole = [row for row in rows if row["whole"]]
    assert len(whole) >= 2
    assert largest_whole(rows) == max(whole, key=lambda row: row["weight_bytes"])
    assert largest_whole([row for row in rows if not row["whole"]]) is None
    text = render_resident(ROOMY.to_dict(), rows)
    assert f"Largest model whole on chip: {largest_whole(rows)['model']}" in text
    assert "weight_depth 6,144" in text and "| ad_autoencoder |" in text and "streamed" in text
    assert "Largest model whole on chip: none of these." in render_resident(ROOMY.to_dict(), [])


def test_the_bitstream_report_carries_the_resident_section(models, tmp_path, capsys, monkeypatch):
    seen = {}

    def stand_in(board, cfg, **options):
        seen.update(options)
        report = {"board": board.name, "device": "LFE5U-85F", "config": {**cfg.to_dict(), "hash": cfg.hash},
                  "clock_mhz": 50.0, "timing_met": True, "fmax_mhz": {"sync": 55.0}, "utilisation": {},
                  "peak_gops": 1.6, "uart_baud": 3_000_000, "uart_cycles_per_bit": 17, "wall_seconds": 1,
                  "resident_models": options["resident_models"], "bitstream": str(tmp_path / "top.bit")}
        (tmp_path / "report.md").write_text(build.render_markdown(report))
        return report

    monkeypatch.setattr(build, "build_bitstream", stand_in)
    config = tmp_path / "roomy.toml"
    config.write_text(ROOMY.to_toml())
    paths = ",".join(str(models[name]) for name in ("ic_resnet8", "ad_autoencoder"))
    assert main(["bitstream", "--board", "ulx3s", "--config", str(config), "--models", paths]) == 0
    assert [row["model"] for row in seen["resident_models"]] == ["ic_resnet8", "ad_autoencoder"]
    out = capsys.readouterr().out
    assert "## Models resident" in out and "Largest model whole on chip: ic_resnet8" in out


@pytest.mark.parametrize("write, message", [
    (lambda path: path.write_bytes(b"not a model"), "is not a readable ONNX model"),
    (lambda path: None, "No such file"),
])
def test_a_model_it_cannot_read_stops_the_bitstream_before_it_builds(write, message, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr(build, "build_bitstream", lambda *a, **k: pytest.fail("built despite a bad model"))
    model = tmp_path / "bad.onnx"
    write(model)
    assert main(["bitstream", "--board", "ulx3s", "--models", str(model)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tessera: --models: ") and message in err and len(err.splitlines()) == 1, err
    assert "accepted: quantized ONNX files" in err


def test_the_ulx3s_default_keeps_the_full_size_resnet8_and_ds_cnn_whole(tmp_path):
    """The MLPerf Tiny issue's default: the reference models themselves, every layer resident, no weights streamed,
    within the default's memories."""
    from tessera.fpga.boards import BOARDS, board_config
    cfg = board_config(BOARDS["ulx3s"])
    paths = [mlperf_tiny.quantized(name, tmp_path) for name in ("ic_resnet8", "kws_ds_cnn")]
    for row in resident_fit(cfg, paths):
        assert row["whole"] and not row["streamed_layers"], row
        assert row["resident_layers"] == row["compute_layers"] > 0
        assert row["weight_words"] <= cfg.weight_depth and row["program_words"] <= cfg.program_depth
