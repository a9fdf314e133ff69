"""Energy-aware pruning: the allocation of the pruning budget by energy per weight, the counters estimated from
compiled programs against the simulated RTL's, and ``--prune-by energy`` end to end on the simulated device."""

import json

import numpy as np
import onnx
import pytest

import tessera.sw_driver.digits.train as train
from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver.demo import check_prune_by, run_demo
from tessera.sw_driver.digits.energy_prune import (
    MAX_LAYER_FRACTION,
    allocate,
    energy_plan,
    estimated_counters,
    estimated_energy,
)
from tessera.sw_driver.digits.export import params_from_onnx
from tessera.sw_driver.digits.train import DENSE_LAYERS, MODEL_PATH
from tessera.sw_driver.program_counters import ESTIMATED_COUNTERS, ws_program_counters

ENERGY = {"a": 5.0, "b": 1.0, "c": 2.0}       # pJ per weight per image
WEIGHTS = {"a": 100, "b": 400, "c": 200}


def _pruned_weights(fractions, weights=WEIGHTS):
    return sum(fractions[layer] * weights[layer] for layer in weights)


@pytest.fixture(scope="module")
def params():
    return params_from_onnx(onnx.load(str(MODEL_PATH)))


class TestAllocate:
    @pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 0.8, 0.95])
    def test_total_is_the_requested_fraction_of_all_weights(self, fraction):
        fractions = allocate(ENERGY, WEIGHTS, fraction)
        assert _pruned_weights(fractions) == pytest.approx(fraction * sum(WEIGHTS.values()))
        assert all(0 <= f <= max(MAX_LAYER_FRACTION, fraction) for f in fractions.values())

    @pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.8])
    def test_layers_are_pruned_in_order_of_energy_per_weight(self, fraction):
        fractions = allocate(ENERGY, WEIGHTS, fraction)
        by_energy = sorted(ENERGY, key=ENERGY.get, reverse=True)
        assert [fractions[layer] for layer in by_energy] == sorted(fractions.values(), reverse=True)

    def test_below_the_cap_shares_follow_energy(self):
        fractions = allocate(ENERGY, WEIGHTS, 0.1)
        assert fractions["a"] / fractions["b"] == pytest.approx(ENERGY["a"] / ENERGY["b"])

    def test_the_costliest_layer_caps_first_and_the_rest_take_the_remainder(self):
        fractions = allocate(ENERGY, WEIGHTS, 0.5, cap=0.8)
        assert fractions["a"] == 0.8 and fractions["b"] < fractions["c"] < 0.8
        assert fractions["c"] / fractions["b"] == pytest.approx(ENERGY["c"] / ENERGY["b"])

    def test_a_fraction_above_the_cap_prunes_every_layer_alike(self):
        assert allocate(ENERGY, WEIGHTS, 0.95, cap=0.9) == pytest.approx(dict.fromkeys(WEIGHTS, 0.95))

    def test_layers_without_energy_share_what_is_left_evenly(self):
        fractions = allocate({"a": 1.0, "b": 0.0, "c": 0.0}, WEIGHTS, 0.5, cap=0.9)
        assert fractions["a"] == 0.9 and fractions["b"] == fractions["c"]
        assert _pruned_weights(fractions) == pytest.approx(0.5 * sum(WEIGHTS.values()))

    @pytest.mark.parametrize("energy, weights, fraction, cap, message", [
        ({"a": -1.0}, {"a": 1}, 0.5, 0.9, "energy per weight of a: -1.0; accepted: a finite number, at least 0"),
        ({"a": float("nan")}, {"a": 1}, 0.5, 0.9, "energy per weight of a: nan; accepted"),
        ({"a": 1.0}, {"a": 0}, 0.5, 0.9, "weights of a: 0; accepted: an integer, at least 1"),
        ({"a": 1.0}, {"b": 1}, 0.5, 0.9, "accepted: the same layers, at least one"),
        ({}, {}, 0.5, 0.9, "accepted: the same layers, at least one"),
        ({"a": 1.0}, {"a": 1}, 1.0, 0.9, "fraction 1.0 is out of range; accepted: 0 <= fraction < 1"),
        ({"a": 1.0}, {"a": 1}, float("nan"), 0.9, "fraction nan is out of range"),
        ({"a": 1.0}, {"a": 1}, "0.5", 0.9, "fraction '0.5' is out of range"),
        ({"a": 1.0}, {"a": 1}, 0.5, 0.0, "cap 0.0 is out of range; accepted: 0 < cap <= 1"),
    ])
    def test_bad_values_are_refused_in_one_line(self, energy, weights, fraction, cap, message):
        with pytest.raises(ValueError, match=message.replace("(", r"\(")) as error:
            allocate(energy, weights, fraction, cap=cap)
        assert "\n" not in str(error.value)


class TestEnergyPlan:
    @pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
    def test_pruned_layers_follow_the_estimated_energy_per_weight(self, params, fraction):
        cfg = AcceleratorConfig()
        plan = energy_plan(cfg, params, fraction, batch=60)
        assert set(plan.fractions) == {name for name in params if name.endswith(".weight")} - set(DENSE_LAYERS)
        per_weight = {name: plan.energy_pj[name] / plan.weights[name] for name in plan.fractions}
        order = sorted(per_weight, key=per_weight.get, reverse=True)
        assert [plan.fractions[name] for name in order] == sorted(plan.fractions.values(), reverse=True)
        assert _pruned_weights(plan.fractions, plan.weights) == pytest.approx(fraction * sum(plan.weights.values()))
        assert plan.summary().startswith("energy-aware pruning: " + order[0].removesuffix(".weight"))

    def test_estimate_counts_all_zero_tiles_as_skipped(self, params):
        cfg = AcceleratorConfig()
        sparse = dict(params, **{"conv3.weight": np.zeros_like(params["conv3.weight"])})
        assert estimated_energy(cfg, sparse, batch=4)["conv3.weight"] < estimated_energy(cfg, params,
                                                                                        batch=4)["conv3.weight"]
        assert estimated_counters(cfg, sparse, batch=4)["conv3.weight"]["array_cycles"] == 0

    def test_other_dataflows_are_refused_in_one_line(self, params, tmp_path):
        cfg = AcceleratorConfig(dataflow="os")
        with pytest.raises(ValueError, match="counts ws programs only, and this device is 'os'; accepted: a ws"):
            energy_plan(cfg, params, 0.5, batch=4)
        with pytest.raises(ValueError, match="'energy' needs a ws device .* is 'os'; accepted with os: tile, weight$"):
            check_prune_by("energy", cfg)
        with pytest.raises(ValueError, match="^prune_by: 'energy' needs a ws device"):
            run_demo(cfg, images=1, prune=0.5, prune_by="energy", build_root=tmp_path)
        with pytest.raises(ValueError, match="'row' is not a pruning method; accepted: tile, weight, energy"):
            check_prune_by("row", cfg)
        with pytest.raises(ValueError, match="ws dataflow only, not 'os'"):
            ws_program_counters(cfg, None)


class TestPerLayerFractions:
    def test_masks_prune_only_the_named_layers_each_by_its_fraction(self, params):
        masks = train.magnitude_masks(params, {"conv2.weight": 0.75, "conv3.weight": 0.25}, block=(8, 8))
        assert set(masks) == {"conv2.weight", "conv3.weight"}
        for name, fraction in (("conv2.weight", 0.75), ("conv3.weight", 0.25)):
            tiles = masks[name].reshape(-1, 8, masks[name].shape[1] // 8, 8, 9)
            empty = np.all(tiles == 0, axis=(1, 3))
            assert empty.sum() == round(fraction * empty.size), name

    @pytest.mark.parametrize("fraction, message", [
        ({"conv9.weight": 0.5}, "prune fraction for 'conv9.weight': not a weight of the model; accepted: "),
        ({"conv2.bias": 0.5}, "prune fraction for 'conv2.bias': not a weight of the model"),
        ({"conv2.weight": 1.0}, "prune fraction 1.0 is out of range; accepted: 0 <= fraction < 1"),
        (1.0, "prune fraction 1.0 is out of range; accepted: 0 <= fraction < 1"),
    ])
    def test_bad_fractions_are_refused_before_training(self, params, fraction, message):
        with pytest.raises(ValueError, match=message) as error:
            train.prune(params, None, None, fraction)
        assert "\n" not in str(error.value)


def _device_layers(report_path):
    layers = json.loads(report_path.read_text())["layers"]
    return {layer["name"]: layer for layer in layers if layer["target"] == "device"}


def _energy_per_image(report_path):
    report = json.loads(report_path.read_text())
    return sum(layer["energy_pj"]["total"] for layer in report["layers"] if layer["target"] == "device") \
        / report["totals"]["images"]


@pytest.mark.rtl
def test_energy_pruned_demo_agrees_with_onnxruntime_and_costs_less(tmp_path, capsys, monkeypatch):
    """``--prune-by energy`` end to end on the 8x8 ws default device, on a few images (one short fine-tuning step,
    to keep the test short): the device answers as onnxruntime does image by image, uses less energy than the
    unpruned model, zeroes the planned tiles, and its counters are the estimate's (see the tolerance below)."""
    cfg = AcceleratorConfig()
    images = 12
    full_prune = train.prune

    def short_prune(params, x_train, y_train, fraction, **kwargs):
        # one epoch on a few training digits: the masks are what this test checks, not the fine-tuned accuracy
        return full_prune(params, x_train[:256], y_train[:256], fraction, **{**kwargs, "steps": 1, "epochs": 1})
    monkeypatch.setattr(train, "prune", short_prune)
    reports = {fraction: tmp_path / f"pruned{fraction}.json" for fraction in (0.0, 0.5)}
    for fraction, report in reports.items():
        # layer by layer: the estimate below is of the per-layer programs (weights sent with each batch)
        status = run_demo(cfg, batch=images, images=images, prune=fraction, prune_by="energy", build_root=tmp_path,
                          report=report, per_layer=True)
        out = capsys.readouterr().out
        assert status == 0 and f"equal to onnxruntime's, image by image: {images} of {images}" in out, out
    plan = energy_plan(cfg, params_from_onnx(onnx.load(str(MODEL_PATH))), 0.5, batch=images)
    assert plan.summary() in out        # the demo says how it shares the pruning out
    assert _energy_per_image(reports[0.5]) < _energy_per_image(reports[0.0])

    pruned = params_from_onnx(onnx.load(str(tmp_path / "demo" / "digits_cnn_pruned50_energy8x8.onnx")))
    zeroed = 0
    for name, fraction in plan.fractions.items():
        # (out tiles, cols, in tiles, rows, taps): whole tiles go, as many as the plan gives the layer
        tiles = pruned[name].reshape(-1, cfg.cols, pruned[name].shape[1] // cfg.rows, cfg.rows, 9)
        empty = np.all(tiles == 0, axis=(1, 3))
        assert empty.sum() == round(fraction * empty.size), name
        zeroed += int((pruned[name] == 0).sum())
    # equal sparsity with magnitude pruning: the budget's weights to within one tile per layer
    assert abs(zeroed - 0.5 * sum(plan.weights.values())) <= len(plan.weights) * cfg.rows * cfg.cols

    # The estimate from the compiled programs against the RTL's counters: every counter equal except macs_gated,
    # where the estimate sees only zero weights (a lower bound: zero activations gate too), so each layer's
    # energy is within 0.5 % (a gated MAC is credited 0.2 pJ against the several pJ every PE-cycle costs).
    for fraction, model in ((0.0, MODEL_PATH), (0.5, tmp_path / "demo" / "digits_cnn_pruned50_energy8x8.onnx")):
        measured = _device_layers(reports[fraction])
        estimate = estimated_counters(cfg, params_from_onnx(onnx.load(str(model))), batch=images)
        energy = estimated_energy(cfg, params_from_onnx(onnx.load(str(model))), batch=images)
        for name, counters in estimate.items():
            layer = measured[f"{name.removesuffix('.weight')}_quant"]
            for counter in ESTIMATED_COUNTERS:
                if counter == "macs_gated":
                    assert counters[counter] <= layer["counters"][counter], name
                else:
                    assert counters[counter] == layer["counters"][counter], (name, counter)
            assert energy[name] * images == pytest.approx(layer["energy_pj"]["total"], rel=5e-3), name


def test_energy_pruning_on_another_dataflow_is_one_line_before_any_work(capsys):
    from tessera.sw_driver.cli import main
    assert main(["demo", "--dataflow", "os", "--prune", "0.5", "--prune-by", "energy"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("tessera: UsageError: --prune-by: 'energy' needs a ws device (its energy estimate counts ws "
                   "programs), and this one is 'os'; accepted with os: tile, weight")
