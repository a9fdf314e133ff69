"""The multiplier study's accuracy on the device model (no RTL): its reference points and its per-layer variant."""

import numpy as np
import onnxruntime as ort
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver.demo import FLOAT_MODEL
from tessera.sw_driver.digits.data import load_digits_split
from tessera.sw_driver.digits.quantize import quantize_digits
from tessera.sw_driver.onnx_import import load_model
from tessera.verif.multiplier_study import FirstAndLastExact, accuracy

IMAGES = 40


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = quantize_digits(FLOAT_MODEL, tmp_path_factory.mktemp("study") / "digits.onnx")
    _, _, x, labels = load_digits_split()
    return path, load_model(path), x[:IMAGES], labels[:IMAGES]


def test_exact_device_model_has_onnxruntimes_accuracy(digits):
    path, graph, x, labels = digits
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    expected = float(np.mean(np.argmax(logits, axis=1) == labels))
    cfg = AcceleratorConfig()
    assert accuracy(graph, x, labels, cfg) == expected
    assert accuracy(graph, x, labels, cfg, first_last_exact=True) == expected


def test_first_and_last_array_layers_are_exact(digits):
    _, graph, x, _ = digits
    model = FirstAndLastExact(AcceleratorConfig(multiplier="drum4"), layers=4)
    assert [model.multiplier() for _ in range(8)] == ["exact", "drum4", "drum4", "exact"] * 2


def test_a_coarse_multiplier_costs_accuracy_that_exact_end_layers_win_back(digits):
    _, graph, x, labels = digits
    cfg = AcceleratorConfig(multiplier="drum4")
    exact = accuracy(graph, x, labels, AcceleratorConfig())
    approximate = accuracy(graph, x, labels, cfg)
    assert approximate < exact
    assert approximate <= accuracy(graph, x, labels, cfg, first_last_exact=True) <= exact


def test_energy_accuracy_study_refuses_an_unknown_design_and_plots_one_line_per_multiplier(tmp_path, capsys):
    from tessera.verif import energy_accuracy
    with pytest.raises(SystemExit):
        energy_accuracy.main(["--out", str(tmp_path), "--multipliers", "exact,booth"])
    assert "--multipliers: booth not a design; accepted: exact, truncated4" in capsys.readouterr().err
    rows = [{"multiplier": m, "fraction": f, "accuracy": 0.9 - f / 10, "energy_uj": 2.5 - f - (m != "exact") / 50,
             "mac_uj": 0.07} for m in ("exact", "mitchell") for f in (0.0, 0.5)]
    energy_accuracy._plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
