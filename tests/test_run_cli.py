"""``tessera run`` end to end: quantized ONNX models on the simulated RTL, bit for bit against onnxruntime."""

import json
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tessera.sw_driver.cli import main
from tessera.verif.onnx_models import (
    QuantFormat,
    QuantType,
    conv_model,
    gemm_model,
    matmul_model,
    qlinear_model,
    quantize_dynamic_model,
    quantize_model,
    random_inputs,
)
from tessera.verif.onnx_multi import depthwise_separable, mixed_head, pooling_net, residual_block, sequential_cnn

pytestmark = pytest.mark.rtl

# these tests check each layer's own report: they run every device layer as its own program (tests/test_resident.py
# runs models resident)
_CONFIG = ["--rows", "4", "--cols", "4", "--per-layer"]


def _onnxruntime(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _run(tmp_path, model, x, *extra):
    model_path, x_path, y_path, report = (tmp_path / n for n in ("q.onnx", "x.npy", "y.npy", "r.json"))
    model_path.write_bytes(model.SerializeToString())
    np.save(x_path, x)
    status = main(["run", str(model_path), "--input", str(x_path), "--output", str(y_path), "--report",
                   str(report), "--check", *_CONFIG, *extra])
    return status, np.load(y_path), json.loads(report.read_text())


@pytest.mark.parametrize("quant_format", [QuantFormat.QOperator, QuantFormat.QDQ], ids=["qop", "qdq"])
@pytest.mark.parametrize("activation", [QuantType.QUInt8, QuantType.QInt8], ids=["u8", "s8"])
@pytest.mark.parametrize("dataflow", ["ws", "os", "rs"])
def test_fully_connected_runs_on_device_bit_exact(tmp_path, quant_format, activation, dataflow):
    rng = np.random.default_rng(zlib.crc32(f"{quant_format}{activation}{dataflow}".encode()))
    float_model = gemm_model(rng, m=9, k=21, n=10, trans_b=True)
    model = quantize_model(float_model, tmp_path, rng, quant_format=quant_format, per_channel=True,
                           activation_type=activation)
    x = random_inputs(rng, float_model)["x"]
    status, y, report = _run(tmp_path, model, x, "--dataflow", dataflow)
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(model, x))
    gemm = [layer for layer in report["layers"] if layer["op"] == "Gemm"]
    assert gemm and gemm[0]["target"] == "device" and gemm[0]["macs"] == 9 * 21 * 10
    assert gemm[0]["cycles"] > 0 and 0 < gemm[0]["utilization"] <= 1
    assert gemm[0]["counters"]["link_bytes_in"] > 21 * 10  # at least the weights went over the link
    assert report["check"]["golden_mismatches"] == report["check"]["onnxruntime_mismatches"] == 0
    assert report["totals"]["energy_pj"]["total"] > 0
    # the input's 9 rows are 9 inferences: energy per inference, and per million as kWh and gCO2e
    assert report["totals"]["inferences"] == 9
    per_inference = report["totals"]["energy_pj"]["total"] / 9
    assert report["carbon"]["energy_uj_per_inference"] * 1e6 == pytest.approx(per_inference)


def test_matmul_and_host_layers_are_reported(tmp_path):
    rng = np.random.default_rng(5)
    float_model = matmul_model(rng, m=3, k=8, n=5)
    model = quantize_model(float_model, tmp_path, rng, quant_format=QuantFormat.QOperator, per_channel=False,
                           activation_type=QuantType.QUInt8)
    x = random_inputs(rng, float_model)["x"]
    status, y, report = _run(tmp_path, model, x)
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(model, x))
    targets = {layer["op"]: layer["target"] for layer in report["layers"]}
    assert targets["Gemm"] == "device" and targets["Quantize"] == "host"


@pytest.mark.parametrize("quant_format", [QuantFormat.QOperator, QuantFormat.QDQ], ids=["qop", "qdq"])
def test_depthwise_and_pointwise_convs_run_on_device_bit_exact(tmp_path, quant_format):
    rng = np.random.default_rng(6)
    float_model = depthwise_separable(rng)
    model = quantize_model(float_model, tmp_path, rng, quant_format=quant_format, per_channel=True,
                           activation_type=QuantType.QUInt8)
    x = random_inputs(rng, float_model)["x"]
    status, y, report = _run(tmp_path, model, x, "--dataflow", "ws")
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(model, x))
    convs = [layer for layer in report["layers"] if layer["op"] == "Conv"]
    assert len(convs) == 2 and all(layer["target"] == "device" for layer in convs)


@pytest.mark.parametrize("quant_format", [QuantFormat.QOperator, QuantFormat.QDQ], ids=["qop", "qdq"])
@pytest.mark.parametrize("kernel, stride, pads", [(3, 2, (1, 1, 1, 1)), (5, 1, (2, 1, 0, 2)), (1, 1, (0, 0, 0, 0))])
def test_single_conv_runs_on_device_bit_exact(tmp_path, quant_format, kernel, stride, pads):
    rng = np.random.default_rng(kernel * 10 + stride)
    float_model = conv_model(rng, batch=2, in_channels=5, out_channels=6, size=(9, 9), kernel=kernel, stride=stride,
                             pads=pads)
    model = quantize_model(float_model, tmp_path, rng, quant_format=quant_format, per_channel=True,
                           activation_type=QuantType.QUInt8)
    x = random_inputs(rng, float_model)["x"]
    status, y, report = _run(tmp_path, model, x, "--dataflow", "ws")
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(model, x))
    (conv,) = [layer for layer in report["layers"] if layer["op"] == "Conv"]
    assert conv["target"] == "device"
    # the input crossed the link once per image: 5 channels x 9 x 9 int8, in words of `rows` channels
    assert conv["counters"]["buffer_writes"]["act"] == 2 * 9 * 9 * 2


@pytest.mark.parametrize("dataflow", ["ws", "os", "rs"])
@pytest.mark.parametrize("kernel, stride, pads", [((10, 4), 2, (4, 1, 5, 1)), ((9, 9), 3, (1, 2, 0, 3))])
def test_a_strided_kernel_past_the_window_runs_on_its_folded_input(tmp_path, dataflow, kernel, stride, pads):
    # beyond 7x7: the host folds the input space-to-depth, the device runs a kernel of ceil(k / stride) a side
    rng = np.random.default_rng(kernel[0] * 10 + stride)
    float_model = conv_model(rng, batch=2, in_channels=2, out_channels=5, size=(15, 11), kernel=kernel,
                             stride=stride, pads=pads)
    model = quantize_model(float_model, tmp_path, rng, quant_format=QuantFormat.QOperator, per_channel=True,
                           activation_type=QuantType.QUInt8)
    x = random_inputs(rng, float_model)["x"]
    status, y, report = _run(tmp_path, model, x, "--dataflow", dataflow)
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(model, x))
    (conv,) = [layer for layer in report["layers"] if layer["op"] == "Conv"]
    out_h, out_w = y.shape[2:]
    assert conv["target"] == "device" and conv["macs"] == 2 * out_h * out_w * 5 * 2 * kernel[0] * kernel[1]


@pytest.mark.parametrize("quant_format", [QuantFormat.QOperator, QuantFormat.QDQ], ids=["qop", "qdq"])
@pytest.mark.parametrize("dataflow, activation", [("ws", QuantType.QUInt8), ("ws", QuantType.QInt8),
                                                  ("rs", QuantType.QUInt8)], ids=["ws-u8", "ws-s8", "rs-u8"])
@pytest.mark.parametrize("net", ["residual", "pooling", "sequential"])
def test_small_cnns_run_on_device_bit_exact(tmp_path, quant_format, activation, net, dataflow):
    """Conv, MaxPool, Add, GlobalAveragePool and Gemm all on the device; the answer is onnxruntime's, bit for
    bit, and only layers that onnxruntime itself computes in float (or AveragePool) stay on the host."""
    rng = np.random.default_rng(zlib.crc32(f"{quant_format}{activation}{net}".encode()))
    build = {"residual": lambda: residual_block(rng, tail=True), "pooling": lambda: pooling_net(rng),
             "sequential": lambda: sequential_cnn(rng)}[net]
    float_model = build()
    model = quantize_model(float_model, tmp_path, rng, quant_format=quant_format, per_channel=True,
                           activation_type=activation)
    x = random_inputs(rng, float_model)["x"]
    status, y, report = _run(tmp_path, model, x, "--dataflow", dataflow)
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(model, x))
    for layer in report["layers"]:
        if layer["op"] in ("Conv", "MaxPool", "Add", "GlobalAveragePool", "Gemm"):
            assert layer["target"] == "device" or "float" in layer["reason"], layer
    ops_on_device = {layer["op"] for layer in report["layers"] if layer["target"] == "device"}
    expected = {"residual": {"Conv"}, "pooling": {"Conv", "MaxPool", "GlobalAveragePool", "Gemm"},
                "sequential": {"Conv", "MaxPool", "Gemm"}}[net]
    assert expected <= ops_on_device
    if net == "residual" and quant_format == QuantFormat.QOperator:
        assert "Add" in ops_on_device
        (add,) = [layer for layer in report["layers"] if layer["op"] == "Add"]
        assert add["counters"]["buffer_reads"]["vec"] > 0


@pytest.mark.parametrize("net", ["depthwise", "pooling"])
def test_convs_on_output_stationary_device_bit_exact(tmp_path, net):
    """The output-stationary array runs convolutions too (operands gathered on chip, hw.gather)."""
    rng = np.random.default_rng(8)
    float_model = depthwise_separable(rng) if net == "depthwise" else pooling_net(rng)
    model = quantize_model(float_model, tmp_path, rng, quant_format=QuantFormat.QOperator, per_channel=False,
                           activation_type=QuantType.QInt8)
    x = random_inputs(rng, float_model)["x"]
    status, y, report = _run(tmp_path, model, x, "--dataflow", "os")
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(model, x))
    convs = [layer for layer in report["layers"] if layer["op"] == "Conv"]
    assert convs and all(layer["target"] == "device" for layer in convs)


@pytest.mark.parametrize("quant_format", [QuantFormat.QOperator, QuantFormat.QDQ], ids=["qop", "qdq"])
@pytest.mark.parametrize("dataflow", ["ws", "os", "rs"])
def test_uint8_weights_run_on_device_bit_exact(tmp_path, quant_format, dataflow):
    """U8U8, as ``quantize_static(activation_type=QUInt8, weight_type=QUInt8)`` writes it: the convs and the GEMM
    run on the device (--strict), and the output is onnxruntime's."""
    rng = np.random.default_rng(zlib.crc32(f"u8u8{quant_format}{dataflow}".encode()))
    float_model = sequential_cnn(rng)
    model = quantize_model(float_model, tmp_path, rng, quant_format=quant_format, per_channel=True,
                           activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    assert any(init.data_type == onnx.TensorProto.UINT8 and len(init.dims) >= 2 for init in model.graph.initializer)
    x = random_inputs(rng, float_model, 1.5)["x"]
    status, y, report = _run(tmp_path, model, x, "--dataflow", dataflow, "--strict")
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(model, x))
    compute = [layer for layer in report["layers"] if layer["op"] in ("Conv", "Gemm")]
    assert len(compute) == 3 and all(layer["target"] == "device" for layer in compute)


@pytest.mark.parametrize("dataflow", ["ws", "os", "rs"])
@pytest.mark.parametrize("op", ["conv", "matmul"])
def test_weights_far_from_their_zero_point_split_exactly(tmp_path, dataflow, op):
    """uint8 weights over their whole range with zero point 0 (differences up to 255, three int8 parts) and with a
    random zero point per channel: the device reads the input once more per part where a part is not zero."""
    rng = np.random.default_rng(zlib.crc32(f"split{dataflow}{op}".encode()))
    for per_channel in (False, True):
        shape = (5, 3, 3, 3) if op == "conv" else (12, 6)
        w = rng.integers(0, 256, shape).astype(np.uint8)
        w[..., 0] = 255     # at least one 255 - 0: three parts
        channels = shape[0] if op == "conv" else shape[1]
        w_zp = rng.integers(0, 256, channels).astype(np.uint8) if per_channel else np.uint8(0)
        w_scale = rng.uniform(0.005, 0.02, channels).astype(np.float32) if per_channel else np.float32(0.01)
        x_shape = (2, 3, 6, 5) if op == "conv" else (7, 12)
        model = qlinear_model(rng, w, w_zp, w_scale, x_shape)
        x = rng.integers(0, 256, x_shape).astype(np.uint8)
        status, y, report = _run(tmp_path, model, x, "--dataflow", dataflow, "--strict")
        assert status == 0
        np.testing.assert_array_equal(y, _onnxruntime(model, x))
        (layer,) = [layer for layer in report["layers"] if layer["target"] == "device"]
        own = int(np.prod(w.shape)) * (2 * 6 * 5 if op == "conv" else 7)    # MACs of the layer itself
        assert layer["macs"] > own      # the extra reads of the split weights are the array's work too
        assert np.unique(y).size > 10   # the output scale spreads the results: not all saturated


# each dataflow with both ops, and each op with both weight types (int8, and uint8 split into int8 parts)
@pytest.mark.parametrize("dataflow, op, weight", [
    ("ws", "gemm", QuantType.QUInt8), ("ws", "conv", QuantType.QInt8), ("os", "gemm", QuantType.QInt8),
    ("os", "conv", QuantType.QUInt8), ("rs", "gemm", QuantType.QUInt8), ("rs", "conv", QuantType.QInt8)],
    ids=["ws-gemm-u8", "ws-conv-s8", "os-gemm-s8", "os-conv-u8", "rs-gemm-u8", "rs-conv-s8"])
def test_dynamic_quantization_runs_its_integer_layers_on_device(tmp_path, dataflow, op, weight):
    """``quantize_dynamic``'s MatMulInteger / ConvInteger on the device: raw commands return the int32
    accumulators, the zero point DynamicQuantizeLinear computes at run time comes off on the host, and the float
    code around them is onnxruntime's; the whole output equals onnxruntime's."""
    rng = np.random.default_rng(zlib.crc32(f"dynamic{op}{weight}{dataflow}".encode()))
    float_model = (gemm_model(rng, m=7, k=19, n=6, trans_b=False) if op == "gemm" else
                   conv_model(rng, batch=2, in_channels=3, out_channels=5, size=(7, 6), kernel=3, stride=1,
                              pads=(1, 1, 1, 1)))
    model = quantize_dynamic_model(float_model, tmp_path, weight_type=weight)
    x = random_inputs(rng, float_model, 2.0)["x"]
    status, y, report = _run(tmp_path, model, x, "--dataflow", dataflow)
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(model, x))
    (integer,) = [layer for layer in report["layers"] if layer["op"] in ("MatMulInteger", "ConvInteger")]
    assert integer["target"] == "device" and integer["macs"] > 0 and integer["cycles"] > 0
    assert report["check"]["golden_mismatches"] == report["check"]["onnxruntime_mismatches"] == 0


@pytest.mark.parametrize("quant_format", [QuantFormat.QOperator, QuantFormat.QDQ], ids=["qop", "qdq"])
def test_mixed_model_runs_its_compute_layers_on_device(tmp_path, capsys, quant_format):
    """Softmax, Concat, Resize and Sigmoid on onnxruntime, every conv and the GEMM on the device, the whole model
    equal to onnxruntime; the table says once why each host partition ran there."""
    rng = np.random.default_rng(77)
    float_model = mixed_head(rng)
    model = quantize_model(float_model, tmp_path, rng, quant_format=quant_format, per_channel=True,
                           activation_type=QuantType.QUInt8)
    x = random_inputs(rng, float_model)["x"]
    status, y, report = _run(tmp_path, model, x, "--strict")
    out = capsys.readouterr().out
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(model, x))
    # QOperator names the quantized ones QLinearConcat, QLinearSigmoid, QLinearSoftmax
    q = "QLinear" if quant_format == QuantFormat.QOperator else ""
    targets = {layer["op"]: layer["target"] for layer in report["layers"]}
    assert targets["Conv"] == targets["Gemm"] == targets["GlobalAveragePool"] == "device"
    assert targets[f"{q}Concat+Resize"] == targets[f"{q}Sigmoid"] == targets[f"{q}Softmax"] == "host"
    for ops in (f"{q}Concat, Resize", f"{q}Sigmoid", f"{q}Softmax"):
        assert out.count(f"onnxruntime runs it: no Tessera layer for {ops}\n") == 1
    assert report["check"]["onnxruntime_mismatches"] == 0


@pytest.mark.parametrize("dataflow, multiplier", [("ws", "mitchell"), ("rs", "truncated8")])
def test_approximate_multiplier_is_checked_against_its_own_golden_model(tmp_path, capsys, dataflow, multiplier):
    """--check with an approximate multiplier: the device equals the golden model with that multiplier (exit 0),
    and differs from onnxruntime, which is said, not failed."""
    rng = np.random.default_rng(21)
    float_model = sequential_cnn(rng)
    model = quantize_model(float_model, tmp_path, rng, quant_format=QuantFormat.QOperator, per_channel=True,
                           activation_type=QuantType.QUInt8)
    x = random_inputs(rng, float_model)["x"]
    status, y, report = _run(tmp_path, model, x, "--dataflow", dataflow, "--multiplier", multiplier)
    out = capsys.readouterr().out
    assert status == 0, out
    assert report["config"]["multiplier"] == multiplier and report["check"]["multiplier"] == multiplier
    assert report["check"]["golden_mismatches"] == 0 and report["check"]["onnxruntime_mismatches"] > 0
    assert f"golden model with the {multiplier} multiplier: 0 of" in out
    assert not np.array_equal(y, _onnxruntime(model, x))
    assert any(layer["target"] == "device" and layer["op"] == "Conv" for layer in report["layers"])


def test_approximate_multiplier_on_the_host_target_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(22)
    float_model = gemm_model(rng, m=2, k=3, n=4, trans_b=False)
    model = quantize_model(float_model, tmp_path, rng, quant_format=QuantFormat.QOperator, per_channel=False,
                           activation_type=QuantType.QUInt8)
    (tmp_path / "q.onnx").write_bytes(model.SerializeToString())
    np.save(tmp_path / "x.npy", random_inputs(rng, float_model)["x"])
    status = main(["run", str(tmp_path / "q.onnx"), "--input", str(tmp_path / "x.npy"), "--target", "host",
                   "--multiplier", "drum6"])
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert "'drum6'" in err and "accepted with an approximate multiplier: --target sim" in err
    assert main(["run", str(tmp_path / "q.onnx"), "--input", str(tmp_path / "x.npy"), "--multiplier", "booth"]) == 2
    err = capsys.readouterr().err
    assert "'booth' is not a PE multiplier; accepted: exact, truncated4" in err


def test_bad_target_and_missing_model_are_clear_errors(tmp_path, capsys):
    x_path = tmp_path / "x.npy"
    np.save(x_path, np.zeros((1, 4), np.float32))
    assert main(["run", str(tmp_path / "missing.onnx"), "--input", str(x_path)]) == 1
    assert "missing.onnx" in capsys.readouterr().err


@pytest.fixture(scope="module")
def conv(tmp_path_factory):
    """A quantized 3x3 convolution and an input for it."""
    folder = tmp_path_factory.mktemp("conv")
    rng = np.random.default_rng(11)
    float_model = conv_model(rng, batch=1, in_channels=3, out_channels=4, size=(8, 8), kernel=3, stride=1,
                             pads=(1, 1, 1, 1))
    model = quantize_model(float_model, folder, rng, quant_format=QuantFormat.QDQ, per_channel=True,
                           activation_type=QuantType.QUInt8)
    return model, random_inputs(rng, float_model)["x"]


class TestNoSilentFallback:
    """A run says where the work went: --strict refuses host fallbacks, and a run without one says so."""

    def test_strict_run_on_the_device_checks_against_both_references(self, tmp_path, capsys, conv):
        model, x = conv
        status, y, report = _run(tmp_path, model, x, "--strict")
        out, err = capsys.readouterr()
        assert status == 0 and "warning" not in err
        np.testing.assert_array_equal(y, _onnxruntime(model, x))
        assert "check: golden model: 0 of 256 outputs differ; onnxruntime: 0 of 256 outputs differ" in out
        (row,) = [line for line in out.splitlines() if line.split()[1:2] == ["Conv"]]
        assert row.split()[2] == "device"

    def test_buffers_too_small_for_any_layer(self, tmp_path, capsys, conv):
        """Every layer falls back to the host: the table says why, stderr says nothing reached the device, and
        --check still compares with onnxruntime itself, not only host with host."""
        model, x = conv
        config = tmp_path / "tiny.json"
        config.write_text(json.dumps({"rows": 4, "cols": 4, "act_depth": 4, "weight_depth": 4, "acc_depth": 8,
                                      "param_depth": 1, "vec_depth": 16}))
        status, y, report = _run(tmp_path, model, x, "--config", str(config))
        out, err = capsys.readouterr()
        assert status == 0
        assert "tessera: warning: the model's one compute layer, 'Conv_4' (Conv), ran on the host" in err
        assert "does not tile onto this configuration" in out
        assert report["check"]["onnxruntime_mismatches"] == 0


def test_a_boards_default_configuration_runs_and_quotes_latency_at_its_clock(tmp_path):
    # the ULX3S-25F's: a 2x2 WS array at 75 MHz; latency is its cycles at that clock
    rng = np.random.default_rng(5)
    float_model = gemm_model(rng, m=3, k=6, n=5, trans_b=True)
    model = quantize_model(float_model, tmp_path, rng, quant_format=QuantFormat.QOperator, per_channel=True,
                           activation_type=QuantType.QUInt8)
    model_path, x_path, report = tmp_path / "q.onnx", tmp_path / "x.npy", tmp_path / "r.json"
    model_path.write_bytes(model.SerializeToString())
    x = random_inputs(rng, float_model)["x"]
    np.save(x_path, x)
    assert main(["run", str(model_path), "--input", str(x_path), "--output", str(tmp_path / "y.npy"), "--report",
                 str(report), "--check", "--board", "ulx3s-25f"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), _onnxruntime(model, x))
    summary = json.loads(report.read_text())
    per_inference = summary["per_inference"]
    assert per_inference["latency_us"] == pytest.approx(per_inference["cycles"] / 75.0)
    assert summary["config"]["rows"] == summary["config"]["cols"] == 2
