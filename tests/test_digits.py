"""The demo digits CNN: the committed float model, its int8 quantizations, the NumPy trainer and its export."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tessera.sw_driver import host_exec
from tessera.sw_driver.digits import cnn
from tessera.sw_driver.digits.data import load_digits_split
from tessera.sw_driver.digits.export import BATCH_DIM, INPUT_NAME, OUTPUT_NAME, params_from_onnx, to_onnx
from tessera.sw_driver.digits.quantize import quantize_digits
from tessera.sw_driver.digits.train import DENSE_LAYERS, MODEL_PATH, accuracy, prune, train
from tessera.sw_driver.onnx_import import load_model

# The committed model scores 352/360 = 0.978; the margin allows two more misses if it is ever retrained.
FLOAT_ACCURACY_MIN = 0.97
QUANTIZED_ACCURACY_DROP_MAX = 0.02
QOPERATOR_OPS = ["QuantizeLinear", "QLinearConv", "QLinearConv", "QLinearAdd", "MaxPool", "QLinearConv",
                 "QLinearGlobalAveragePool", "Flatten", "QGemm", "DequantizeLinear"]
QDQ_COMPUTE_OPS = ["Conv", "Conv", "Add", "MaxPool", "Conv", "GlobalAveragePool", "Flatten", "Gemm"]


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _accuracy(path, images, labels):
    logits = _session(path).run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    return float((logits.argmax(axis=1) == labels).mean())


class TestData:
    def test_split_is_stratified_normalised_nchw(self, split):
        x_train, y_train, x_test, y_test = split
        assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
        assert x_train.dtype == np.float32 and y_train.dtype == np.int64
        assert x_train.min() == 0.0 and x_train.max() == 1.0
        assert set(np.bincount(y_test)) <= {35, 36, 37}  # every class 20% of its own count

    def test_split_is_the_same_on_every_call(self, split):
        for first, again in zip(split, load_digits_split(), strict=True):
            np.testing.assert_array_equal(first, again)


class TestFloatModel:
    def test_committed_model_reaches_accuracy(self, split):
        _, _, x_test, y_test = split
        assert _accuracy(MODEL_PATH, x_test, y_test) >= FLOAT_ACCURACY_MIN

    def test_batch_dimension_is_symbolic(self, split):
        model = onnx.load(MODEL_PATH)
        for value in (model.graph.input[0], model.graph.output[0]):
            assert value.type.tensor_type.shape.dim[0].dim_param == BATCH_DIM
        session = _session(MODEL_PATH)
        for batch in (1, 7):
            assert session.run(None, {INPUT_NAME: split[2][:batch]})[0].shape == (batch, cnn.NUM_CLASSES)

    def test_numpy_forward_matches_onnxruntime(self, split):
        """The export is faithful: the NumPy network on the model's own weights gives onnxruntime's logits."""
        x_test = split[2]
        params = params_from_onnx(onnx.load(MODEL_PATH))
        expected = _session(MODEL_PATH).run(None, {INPUT_NAME: x_test})[0]
        np.testing.assert_allclose(cnn.forward(params, x_test), expected, rtol=1e-5, atol=5e-5)

    def test_export_round_trips_parameters(self):
        params = cnn.init_params(np.random.default_rng(3))
        restored = params_from_onnx(to_onnx(params))
        assert restored.keys() == params.keys()
        for name, value in params.items():
            np.testing.assert_array_equal(restored[name], value)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("quant_format", ["QOperator", "QDQ"])
class TestQuantizedModel:
    def test_accuracy_within_two_points_of_float(self, split, tmp_path, quant_format, per_channel):
        _, _, x_test, y_test = split
        path = quantize_digits(MODEL_PATH, tmp_path / "digits_int8.onnx", quant_format=quant_format,
                               per_channel=per_channel)
        assert _accuracy(path, x_test, y_test) >= _accuracy(MODEL_PATH, x_test, y_test) - QUANTIZED_ACCURACY_DROP_MAX

    def test_every_device_op_appears(self, tmp_path, quant_format, per_channel):
        """The quantizer folds each Relu into its Conv's output range and keeps the other ops, in order."""
        path = quantize_digits(MODEL_PATH, tmp_path / "digits_int8.onnx", quant_format=quant_format,
                               per_channel=per_channel)
        ops = [node.op_type for node in onnx.load(path).graph.node]
        if quant_format == "QOperator":
            assert ops == QOPERATOR_OPS
        else:
            assert [op for op in ops if op not in ("QuantizeLinear", "DequantizeLinear")] == QDQ_COMPUTE_OPS

    def test_host_executor_reproduces_onnxruntime(self, split, tmp_path, quant_format, per_channel):
        """The driver imports the demo model whole and its host run equals onnxruntime bit for bit."""
        images = split[2][:16]
        path = quantize_digits(MODEL_PATH, tmp_path / "digits_int8.onnx", quant_format=quant_format,
                               per_channel=per_channel)
        graph = load_model(path)
        assert graph.float_in_onnxruntime == {}
        expected = _session(path).run([OUTPUT_NAME], {INPUT_NAME: images})[0]
        np.testing.assert_array_equal(host_exec.run_graph(graph, {INPUT_NAME: images})[OUTPUT_NAME], expected)


class TestQuantizeArguments:
    def test_quantization_is_deterministic(self, tmp_path):
        first = quantize_digits(MODEL_PATH, tmp_path / "first.onnx")
        again = quantize_digits(MODEL_PATH, tmp_path / "again.onnx")
        assert first.read_bytes() == again.read_bytes()

    @pytest.mark.parametrize("argument, value", [("quant_format", "QLinear"), ("activation_type", "int4")])
    def test_unknown_choice_names_the_argument(self, tmp_path, argument, value):
        with pytest.raises(ValueError, match=f"{argument}='{value}': expected one of"):
            quantize_digits(MODEL_PATH, tmp_path / "never.onnx", **{argument: value})


class TestTraining:
    def test_backward_matches_finite_differences(self, split):
        rng = np.random.default_rng(1)
        params = {name: value.astype(np.float64) for name, value in cnn.init_params(rng).items()}
        for name in params:  # nonzero biases, so no ReLU sits exactly at its kink
            if name.endswith(".bias"):
                params[name] = rng.normal(0.0, 0.1, params[name].shape)
        images, labels = split[0][:4].astype(np.float64), split[1][:4]
        logits, cache = cnn.forward(params, images, keep=True)
        grads = cnn.backward(params, cache, cnn.softmax_cross_entropy(logits, labels)[1])
        step = 1e-6
        for name, value in params.items():
            index = tuple(int(rng.integers(size)) for size in value.shape)
            original = value[index]
            value[index] = original + step
            loss_up = cnn.softmax_cross_entropy(cnn.forward(params, images), labels)[0]
            value[index] = original - step
            loss_down = cnn.softmax_cross_entropy(cnn.forward(params, images), labels)[0]
            value[index] = original
            assert grads[name][index] == pytest.approx((loss_up - loss_down) / (2 * step), rel=1e-4, abs=1e-8)

    def test_one_epoch_reduces_loss(self, split):
        images, labels = split[0][:200], split[1][:200]
        untrained = cnn.init_params(np.random.default_rng(0))  # train() draws the same weights from seed 0
        trained, _ = train(images, labels, epochs=1, seed=0)
        loss_before = cnn.softmax_cross_entropy(cnn.forward(untrained, images), labels)[0]
        loss_after = cnn.softmax_cross_entropy(cnn.forward(trained, images), labels)[0]
        assert loss_after < 0.9 * loss_before

    def test_training_reproduces_bit_for_bit(self, split):
        images, labels = split[0][:200], split[1][:200]
        first, first_losses = train(images, labels, epochs=1, seed=5)
        again, again_losses = train(images, labels, epochs=1, seed=5)
        assert first_losses == again_losses
        for name, value in first.items():
            np.testing.assert_array_equal(again[name], value)


@pytest.mark.parametrize("fraction", [0.5, 0.8])
@pytest.mark.parametrize("block", [None, (4, 8)], ids=["weights", "tiles"])
def test_pruning_keeps_the_pruned_weights_at_zero(fraction, block):
    """Gradual magnitude pruning with fine-tuning: ``fraction`` of each pruned layer's weights (rounded down)
    end at zero, in whole rows x cols tiles per filter tap when pruning by tile; the dense layers are
    untouched by the mask, and the fine-tuned model still learns (it beats chance by far)."""
    x_train, y_train, x_test, y_test = load_digits_split()
    params = params_from_onnx(onnx.load(str(MODEL_PATH)))
    pruned = prune(params, x_train, y_train, fraction, block=block, steps=2, epochs=3)
    for name, value in pruned.items():
        if not name.endswith(".weight"):
            continue
        if name in DENSE_LAYERS:
            assert np.count_nonzero(value == 0) < value.size // 10, name
            continue
        if not block:
            assert np.sum(value == 0) >= int(fraction * value.size), name
            continue
        rows, cols = block
        # (out tiles, cols, in tiles, rows, taps): a tile is all zero or holds its weights
        tiles = value.reshape(value.shape[0] // cols, cols, value.shape[1] // rows, rows, -1)
        nonzero = np.count_nonzero(tiles, axis=(1, 3))
        assert np.all((nonzero == 0) | (nonzero > rows * cols // 2)), name
        assert np.sum(nonzero == 0) >= round(fraction * nonzero.size), name
    assert accuracy(pruned, x_test, y_test) > 0.5
