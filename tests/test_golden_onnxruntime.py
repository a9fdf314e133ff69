"""The golden model against onnxruntime, bit for bit, on random statically quantized models.

Each test builds a small random float model, quantizes it with onnxruntime's own ``quantize_static``
(QOperator and QDQ formats, per-tensor and per-channel weights, uint8 and int8 activations), runs it with
onnxruntime on fresh random inputs and recomputes it with ``tessera.sw_driver.golden`` from the quantized model's
initializers.

What is compared: the integer output tensor, the input of the model's final DequantizeLinear. onnxruntime only
returns the float output of that node, ``float32(q - zp) * s``; ``golden.quantize`` of it with the same ``s``
and ``zp`` gives back ``q`` exactly (for 8-bit ``q`` the two float roundings move it by < 1e-4, far from a
rounding boundary), and the test checks the round trip reproduces onnxruntime's floats bit for bit. Making
the integer tensor a graph output instead would change what onnxruntime runs: on x86 it rewrites int8 QDQ
groups to uint8 before fusing them (it cannot for a tensor that is a graph output) and would leave the Conv in
float.

onnxruntime fuses every QDQ pattern used here into an integer kernel (QLinearConv, QLinearMatMul, QGemm,
QLinearAdd, QLinearAveragePool, QLinearGlobalAveragePool, int8 MaxPool); each test also checks, on the
optimized graph, that the kernel it expects really ran, so a change in onnxruntime's fusions shows up as a
named failure rather than as an unexplained mismatch.
"""

from collections import namedtuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tessera.sw_driver import golden
from tessera.verif.onnx_models import (
    IR_VERSION,
    OPSET,
    QuantFormat,
    QuantType,
    add_model,
    avgpool_model,
    gemm_model,
    global_avgpool_model,
    matmul_model,
    maxpool_model,
    quantize_model,
    random_inputs,
)
from tessera.verif.onnxruntime_ref import (
    needs_fma,
    needs_vnni,
    on_x86,
    output_quantization,
    random_conv,
    run_onnxruntime,
)

pytestmark = on_x86


# ------------------------------------------------------------------------------------------------------------
# a tiny walker over quantized graphs (test support, not the product importer)

Quantized = namedtuple("Quantized", "values scale zero_point axis")


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class GoldenRunner:
    """Evaluates a statically quantized model (QOperator or QDQ) with ``tessera.sw_driver.golden``.

    ``DequantizeLinear`` nodes are not evaluated: the float tensor they define is remembered as the integer
    tensor plus its parameters, and the float op that consumes it runs in integers with the parameters of the
    ``QuantizeLinear`` that consumes its output, exactly the pattern onnxruntime fuses.
    """

    def __init__(self, model):
        self.graph = model.graph
        self.values = {init.name: numpy_helper.to_array(init) for init in self.graph.initializer}
        self.dequantized = {}  # float tensor name -> Quantized
        self.consumers = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def run(self, feeds):
        """Return ``{graph output name: integer ndarray}``."""
        self.values.update(feeds)
        skip = set()
        for node in self.graph.node:
            if id(node) not in skip:
                skip.update(self._evaluate(node))
        # A graph output is normally the float result of a DequantizeLinear: return its integer input.
        return {out.name: self.dequantized[out.name].values if out.name in self.dequantized
                else self.values[out.name] for out in self.graph.output}

    def _quantized(self, node, index, axis=None):
        """Operand ``index`` of a QOperator node: (values, scale, zero point) at ``index * 3``."""
        names = node.input[3 * index: 3 * index + 3]
        return Quantized(*(self.values[n] for n in names), axis)

    def _evaluate(self, node):
        """Evaluate ``node``; return ids of nodes it consumed (the output QuantizeLinear of a QDQ group)."""
        op, ins, attrs = node.op_type, node.input, _attrs(node)
        if op == "DequantizeLinear":
            zero_point = self.values[ins[2]] if len(ins) > 2 and ins[2] else np.int8(0)
            self.dequantized[node.output[0]] = Quantized(
                self.values[ins[0]], self.values[ins[1]], zero_point, attrs.get("axis", 1))
            return ()
        if op == "QuantizeLinear":
            zero_point = self.values[ins[2]]
            self.values[node.output[0]] = golden.quantize(
                self.values[ins[0]], self.values[ins[1]], zero_point, zero_point.dtype, attrs.get("axis"))
            return ()
        if op.startswith("QLinear") or op == "QGemm":  # QOperator format
            self.values[node.output[0]] = self._qoperator(op, ins, attrs, node)
            return ()
        return self._qdq(op, ins, attrs, node)

    def _qoperator(self, op, ins, attrs, node):
        v = self.values
        if op == "QLinearConv":
            bias = v[ins[8]] if len(ins) > 8 and ins[8] else None
            return _compute("Conv", attrs, [self._quantized(node, 0), self._quantized(node, 1, 0)], bias,
                            v[ins[6]], v[ins[7]])
        if op == "QLinearMatMul":
            return _compute("MatMul", attrs, [self._quantized(node, 0), self._quantized(node, 1, 1)], None,
                            v[ins[6]], v[ins[7]])
        if op == "QGemm":  # A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp
            bias = v[ins[6]] if ins[6] else None  # C is optional: an empty name
            b_axis = 0 if attrs.get("transB", 0) else 1  # per-channel scales follow N
            return _compute("Gemm", attrs, [self._quantized(node, 0), self._quantized(node, 1, b_axis)], bias,
                            v[ins[7]], v[ins[8]])
        if op == "QLinearAdd":
            return _compute("Add", attrs, [self._quantized(node, 0), self._quantized(node, 1)], None,
                            v[ins[6]], v[ins[7]])
        if op in ("QLinearAveragePool", "QLinearGlobalAveragePool"):
            if attrs.get("channels_last", 0):
                raise NotImplementedError(f"{node.name}: channels_last {op}")
            float_op = op[len("QLinear"):]
            return _compute(float_op, attrs, [self._quantized(node, 0)], None, v[ins[3]], v[ins[4]])
        raise NotImplementedError(f"{node.name}: QOperator op {op} is not modelled by the test walker")

    def _qdq(self, op, ins, attrs, node):
        """A float op between DequantizeLinear inputs and one QuantizeLinear consumer."""
        if op == "MaxPool" and ins[0] in self.values:  # QOperator leaves MaxPool on the int8 tensor itself
            x = Quantized(self.values[ins[0]], None, None, None)
            self.values[node.output[0]] = _compute(op, attrs, [x], None, None, None)
            return ()
        consumers = self.consumers.get(node.output[0], [])
        if len(consumers) != 1 or consumers[0].op_type != "QuantizeLinear":
            raise NotImplementedError(f"{node.name}: {op} output is not quantized by a single QuantizeLinear")
        quantize = consumers[0]
        operands = [self.dequantized[name] for name in ins if name]
        bias = None
        if op in ("Conv", "Gemm") and len(operands) == 3:
            bias = operands.pop().values  # int32, scale x_scale * w_scale: already accumulator units
        y_scale, y_zp = self.values[quantize.input[1]], self.values[quantize.input[2]]
        self.values[quantize.output[0]] = _compute(op, attrs, operands, bias, y_scale, y_zp)
        return (id(quantize),)


def _channel_axis_check(w, expected, what):
    if np.asarray(w.scale).size > 1 and w.axis % w.values.ndim != expected % w.values.ndim:
        raise NotImplementedError(f"{what}: per-channel axis {w.axis}, expected the output-channel axis")


def _compute(op, attrs, operands, bias, y_scale, y_zp):
    """Run the golden model for one float ``op`` on quantized operands."""
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or attrs.get("ceil_mode", 0):
        raise NotImplementedError(f"{op}: auto_pad / ceil_mode are not modelled")
    y_dtype = None if y_zp is None else y_zp.dtype
    if op == "Conv":
        x, w = operands
        _channel_axis_check(w, 0, "Conv weight")
        conv_attrs = {"strides": attrs.get("strides", (1, 1)), "pads": attrs.get("pads", (0, 0, 0, 0)),
                      "dilations": attrs.get("dilations", (1, 1)), "group": attrs.get("group", 1)}
        return golden.qlinear_conv(x.values, x.scale, x.zero_point, w.values, w.scale, w.zero_point, y_scale,
                                   y_zp, bias, y_dtype, **conv_attrs)
    if op in ("MatMul", "Gemm"):
        x, w = operands
        weights, axis = w.values, 1
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise NotImplementedError("Gemm with transA, alpha or beta is not modelled")
        if attrs.get("transB", 0):
            weights, axis = weights.T, 0  # the caller's job in golden's API; per-channel axis follows N
        _channel_axis_check(w, axis, f"{op} weight")
        return golden.qlinear_matmul(x.values, x.scale, x.zero_point, weights, w.scale, w.zero_point, y_scale,
                                     y_zp, bias, y_dtype)
    if op == "Add":
        a, b = operands
        return golden.qlinear_add(a.values, a.scale, a.zero_point, b.values, b.scale, b.zero_point, y_scale,
                                  y_zp)
    if op == "AveragePool":
        (x,) = operands
        return golden.avgpool(x.values, x.scale, x.zero_point, y_scale, y_zp, attrs["kernel_shape"],
                              attrs.get("strides", (1, 1)), attrs.get("pads", (0, 0, 0, 0)),
                              bool(attrs.get("count_include_pad", 0)))
    if op == "GlobalAveragePool":
        (x,) = operands
        return golden.global_avgpool(x.values, x.scale, x.zero_point, y_scale, y_zp)
    if op == "MaxPool":
        (x,) = operands
        if y_scale is not None and (x.scale != y_scale or x.zero_point != y_zp):
            raise NotImplementedError("MaxPool with different input and output quantization")
        return golden.maxpool(x.values, attrs["kernel_shape"], attrs.get("strides", (1, 1)),
                              attrs.get("pads", (0, 0, 0, 0)))
    raise NotImplementedError(f"op {op} is not modelled by the test walker")


# ------------------------------------------------------------------------------------------------------------
# running onnxruntime on the integers


def check_bit_exact(float_model, tmp_path, rng, *, kernel, quant_format, per_channel=False,
                    activation_type=QuantType.QUInt8, input_scale=1.5):
    """Quantize, run onnxruntime and the golden model, and require identical integer outputs.

    ``input_scale`` above the calibration data's 1.0 makes some inputs exceed the calibrated range, so
    saturation is exercised too.
    """
    quantized = quantize_model(float_model, tmp_path, rng, quant_format=quant_format, per_channel=per_channel,
                               activation_type=activation_type)
    feeds = random_inputs(rng, float_model, input_scale)
    (y_float,) = run_onnxruntime(quantized, feeds, tmp_path / "optimized.onnx")
    executed = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    kernels = (kernel,) if isinstance(kernel, str) else kernel
    assert set(kernels) & set(executed), f"onnxruntime ran {executed}, not the integer kernel {kernel}"

    y_scale, y_zp = output_quantization(quantized)
    expected = golden.quantize(y_float, y_scale, y_zp, y_zp.dtype)
    np.testing.assert_array_equal(golden.dequantize(expected, y_scale, y_zp), y_float)  # exact round trip
    (actual,) = GoldenRunner(quantized).run(feeds).values()
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)
    return expected


# ------------------------------------------------------------------------------------------------------------
# random models, every quantization flavour

FORMATS = [QuantFormat.QOperator, QuantFormat.QDQ]
ACTIVATIONS = [QuantType.QUInt8, QuantType.QInt8]
FLAVOURS = [pytest.param(f, pc, a, id=f"{f.name}-{'perchannel' if pc else 'pertensor'}-{a.name}")
            for f in FORMATS for pc in (False, True) for a in ACTIVATIONS]
WEIGHTLESS_FLAVOURS = [pytest.param(f, a, id=f"{f.name}-{a.name}") for f in FORMATS for a in ACTIVATIONS]


@needs_vnni
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
def test_conv(tmp_path, seed, quant_format, per_channel, activation_type):
    rng = np.random.default_rng(1000 + seed)
    check_bit_exact(random_conv(rng), tmp_path, rng, kernel="QLinearConv", quant_format=quant_format,
                    per_channel=per_channel, activation_type=activation_type)


@needs_vnni
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
def test_depthwise_conv(tmp_path, seed, quant_format, per_channel, activation_type):
    rng = np.random.default_rng(2000 + seed)
    check_bit_exact(random_conv(rng, depthwise=True), tmp_path, rng, kernel="QLinearConv",
                    quant_format=quant_format, per_channel=per_channel, activation_type=activation_type)


@needs_vnni
@pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
def test_conv_relu(tmp_path, quant_format, per_channel, activation_type):
    # The quantizer removes the Relu and calibrates the conv output to the Relu's range: the zero point sits
    # at the bottom of the range and saturation does the clipping.
    rng = np.random.default_rng(3000)
    y = check_bit_exact(random_conv(rng, relu=True), tmp_path, rng, kernel="QLinearConv",
                        quant_format=quant_format, per_channel=per_channel, activation_type=activation_type)
    assert (y == golden.qrange(y.dtype)[0]).any(), "expected some outputs clipped at zero"


@needs_vnni
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
def test_matmul(tmp_path, seed, quant_format, per_channel, activation_type):
    rng = np.random.default_rng(4000 + seed)
    m, k, n = (int(v) for v in rng.integers(1, 65, 3))
    check_bit_exact(matmul_model(rng, m=m, k=k, n=n), tmp_path, rng, kernel="QLinearMatMul",
                    quant_format=quant_format, per_channel=per_channel, activation_type=activation_type)


@needs_vnni
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
def test_gemm(tmp_path, trans_b, quant_format, per_channel, activation_type):
    rng = np.random.default_rng(5000 + trans_b)
    m, k, n = (int(v) for v in rng.integers(1, 65, 3))
    check_bit_exact(gemm_model(rng, m=m, k=k, n=n, trans_b=trans_b), tmp_path, rng, kernel="QGemm",
                    quant_format=quant_format, per_channel=per_channel, activation_type=activation_type)


@needs_fma
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quant_format, activation_type", WEIGHTLESS_FLAVOURS)
def test_add(tmp_path, seed, quant_format, activation_type):
    rng = np.random.default_rng(6000 + seed)
    shape = (1, int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 40)))  # odd tails too
    check_bit_exact(add_model(shape), tmp_path, rng, kernel="QLinearAdd", quant_format=quant_format,
                    activation_type=activation_type)


def random_pool_geometry(rng):
    kernel = int(rng.integers(1, 5))
    pads = tuple(int(p) for p in rng.integers(0, kernel, 4)) if rng.random() < 0.6 else (0, 0, 0, 0)
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 5)), *(int(s) for s in rng.integers(kernel, 10, 2)))
    return shape, {"kernel": kernel, "stride": int(rng.integers(1, 3)), "pads": pads}


@needs_vnni
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quant_format, activation_type", WEIGHTLESS_FLAVOURS)
def test_avgpool(tmp_path, seed, quant_format, activation_type):
    rng = np.random.default_rng(7000 + seed)
    shape, geometry = random_pool_geometry(rng)
    model = avgpool_model(rng, shape, count_include_pad=bool(seed % 2), **geometry)
    check_bit_exact(model, tmp_path, rng, kernel="QLinearAveragePool", quant_format=quant_format,
                    activation_type=activation_type)


@needs_vnni
@pytest.mark.parametrize("quant_format, activation_type", WEIGHTLESS_FLAVOURS)
def test_avgpool_whole_image(tmp_path, quant_format, activation_type):
    # A window covering the whole unpadded image takes onnxruntime's integer global-average path.
    rng = np.random.default_rng(7500)
    model = avgpool_model(rng, (1, 3, 5, 5), kernel=5, stride=1, pads=(0, 0, 0, 0))
    check_bit_exact(model, tmp_path, rng, kernel="QLinearAveragePool", quant_format=quant_format,
                    activation_type=activation_type)


@needs_vnni
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("quant_format, activation_type", WEIGHTLESS_FLAVOURS)
def test_global_avgpool(tmp_path, seed, quant_format, activation_type):
    rng = np.random.default_rng(8000 + seed)
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 20)), *(int(s) for s in rng.integers(1, 12, 2)))
    model = global_avgpool_model(rng, shape)
    check_bit_exact(model, tmp_path, rng, kernel="QLinearGlobalAveragePool",
                    quant_format=quant_format, activation_type=activation_type)


@needs_vnni
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("quant_format, activation_type", WEIGHTLESS_FLAVOURS)
def test_maxpool(tmp_path, seed, quant_format, activation_type):
    rng = np.random.default_rng(9000 + seed)
    shape, geometry = random_pool_geometry(rng)
    model = maxpool_model(rng, shape, **geometry)
    check_bit_exact(model, tmp_path, rng, kernel=("MaxPool", "NhwcMaxPool"),
                    quant_format=quant_format,
                    activation_type=activation_type)


@pytest.mark.parametrize("seed", range(3))
def test_int8_qdq_conv_with_integer_graph_output_runs_in_float(tmp_path, seed):
    # The one place found where onnxruntime does not compute in integers: an int8 QDQ Conv whose quantized
    # output is itself a graph output (no DequantizeLinear after it). On x86 onnxruntime fuses int8 QDQ only
    # after rewriting it to uint8, which it cannot do for a graph output, so it runs DQ -> float Conv -> Q.
    # Float sums can land on the other side of a rounding boundary: within 1 LSB (in practice equal).
    rng = np.random.default_rng(9500 + seed)
    model = random_conv(rng)
    quantized = quantize_model(model, tmp_path, rng, quant_format=QuantFormat.QDQ, per_channel=bool(seed % 2),
                               activation_type=QuantType.QInt8)
    int_output = onnx.ModelProto.FromString(quantized.SerializeToString())
    (dq,) = [n for n in int_output.graph.node if n.op_type == "DequantizeLinear"
             and n.output[0] == int_output.graph.output[0].name]
    int_output.graph.node.remove(dq)
    int_output.graph.output.pop()
    int_output.graph.output.append(helper.make_tensor_value_info(dq.input[0], TensorProto.INT8, None))
    feeds = random_inputs(rng, model, 1.5)
    (y,) = run_onnxruntime(int_output, feeds, tmp_path / "optimized.onnx")
    executed = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert "Conv" in executed and "QLinearConv" not in executed, executed
    (golden_y,) = GoldenRunner(quantized).run(feeds).values()
    assert np.abs(y.astype(np.int16) - golden_y.astype(np.int16)).max() <= 1


# ------------------------------------------------------------------------------------------------------------
# hand-made single nodes for the rounding corner cases random data rarely reaches


def run_node(op_type, inputs, initializers, output_type, domain="", **attrs):
    """Run one node with float/int ``inputs`` fed and ``initializers`` as constants; return its output."""
    names = list(inputs) + list(initializers)
    node = helper.make_node(op_type, names, ["y"], domain=domain, **attrs)
    graph = helper.make_graph(
        [node], "single_node",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in inputs.items()],
        [helper.make_tensor_value_info("y", output_type, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in initializers.items()])
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = IR_VERSION
    (y,) = run_onnxruntime(model, inputs)
    return y


def tensor_type(dtype):
    return {np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8}[dtype]


def differs_somewhere(alternative, expected, what):
    """Guard that a dense test can tell the golden formula from a plausible ``alternative`` one."""
    assert (alternative != expected).any(), f"test data no longer distinguishes {what}"


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_quantize_linear_ties_and_extremes(dtype):
    scale, zero_point = np.float32(0.25), dtype(3)
    steps = np.arange(-300, 300) + 0.5  # every value an exact tie
    x = np.concatenate([steps * scale, [np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0]]).astype(np.float32)
    expected = run_node("QuantizeLinear", {"x": x}, {"s": scale, "zp": zero_point}, tensor_type(dtype))
    np.testing.assert_array_equal(golden.quantize(x, scale, zero_point, dtype), expected)
    half_up = np.clip(np.floor(x / scale + 0.5) + 3, *golden.qrange(dtype))
    differs_somewhere(half_up, expected, "half-up rounding")


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_quantize_linear_near_ties_per_axis(dtype):
    # 64 random scales (per-axis), values within an ulp of every tie: only the exact float32 division
    # x / scale rounds these right (a multiply by 1 / scale does not always).
    rng = np.random.default_rng(12)
    lo, hi = golden.qrange(dtype)
    scale = rng.uniform(0.001, 1.0, 64).astype(np.float32)
    zero_point = rng.integers(lo, hi + 1, 64).astype(dtype)
    ties = ((np.arange(-260, 260) + 0.5)[None, :] * scale[:, None]).astype(np.float32)
    x = np.concatenate([np.nextafter(ties, -np.inf), ties, np.nextafter(ties, np.inf)], axis=1)
    consts = {"s": scale, "zp": zero_point}
    expected = run_node("QuantizeLinear", {"x": x}, consts, tensor_type(dtype), axis=0)
    np.testing.assert_array_equal(golden.quantize(x, scale, zero_point, dtype, axis=0), expected)
    reciprocal = np.rint(x * (np.float32(1) / scale[:, None])) + zero_point[:, None]
    differs_somewhere(np.clip(reciprocal, lo, hi), expected, "division from multiplication by 1 / scale")


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_dequantize_linear_per_axis(dtype):
    rng = np.random.default_rng(13)
    lo, hi = golden.qrange(dtype)
    q = np.tile(np.arange(lo, hi + 1), (16, 1)).astype(dtype)
    scale = rng.uniform(1e-4, 10.0, 16).astype(np.float32)
    zero_point = rng.integers(lo, hi + 1, 16).astype(dtype)
    consts = {"s": scale, "zp": zero_point}
    expected = run_node("DequantizeLinear", {"q": q}, consts, TensorProto.FLOAT, axis=0)
    np.testing.assert_array_equal(golden.dequantize(q, scale, zero_point, axis=0), expected)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_requantize_ties_go_to_even_like_qlinear_matmul(dtype):
    # requant scale 0.5 turns every odd accumulator into an exact tie; zero point 1 would expose rounding
    # after adding it (odd + tie) instead of before.
    x = np.arange(-40, 41).reshape(-1, 1).astype(dtype) if dtype == np.int8 else \
        np.arange(0, 81).reshape(-1, 1).astype(dtype)
    w = np.array([[3, -5, 1]], np.int8)
    consts = {"xs": np.float32(0.5), "xz": dtype(0 if dtype == np.int8 else 40), "w": w,
              "ws": np.float32(1.0), "wz": np.int8(0), "ys": np.float32(1.0), "yz": dtype(1)}
    expected = run_node("QLinearMatMul", {"x": x}, consts, tensor_type(dtype))
    actual = golden.qlinear_matmul(x, 0.5, consts["xz"], w, 1.0, 0, 1.0, consts["yz"], y_dtype=dtype)
    np.testing.assert_array_equal(actual, expected)


@needs_vnni
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_requantize_dense_per_channel_matmul(dtype):
    # 4096 x 64 random accumulators against 64 random per-column scales, outputs over the whole range.
    rng = np.random.default_rng(14)
    lo, hi = golden.qrange(dtype)
    x = rng.integers(lo, hi + 1, (4096, 2)).astype(dtype)
    w = rng.integers(-127, 128, (2, 64)).astype(np.int8)
    x_scale, x_zp = np.float32(rng.uniform(0.001, 0.1)), dtype(rng.integers(lo, hi + 1))
    w_scale = rng.uniform(0.001, 0.1, 64).astype(np.float32)
    y_scale, y_zp = np.float32(x_scale * w_scale.mean() * 200), dtype(rng.integers(lo, hi + 1))
    consts = {"xs": x_scale, "xz": x_zp, "w": w, "ws": w_scale, "wz": np.zeros(64, np.int8), "ys": y_scale,
              "yz": y_zp}
    expected = run_node("QLinearMatMul", {"x": x}, consts, tensor_type(dtype))
    actual = golden.qlinear_matmul(x, x_scale, x_zp, w, w_scale, 0, y_scale, y_zp, y_dtype=dtype)
    np.testing.assert_array_equal(actual, expected)


def tie_making_weight_scales(x_scale, y_scale, count):
    """Weight scales ``ws`` for which ``float32(float32(x_scale * ws) / y_scale)`` is a short dyadic fraction
    ``m / 2**e`` (so some accumulators land exactly on a tie) while ``x_scale * (ws / y_scale)`` is not."""
    found = []
    for e in range(1, 9):
        for m in range(1, 2**e, 2):
            target = np.float32(m / 2**e)
            near = np.float32(np.float64(target) * y_scale / x_scale)
            candidates = (near + np.arange(-4, 5) * np.spacing(near)).astype(np.float32)
            hits = ((x_scale * candidates) / y_scale == target) & (x_scale * (candidates / y_scale) != target)
            found += list(candidates[hits][:1])
            if len(found) == count:
                return np.array(found, np.float32)
    raise AssertionError(f"only {len(found)} tie-making weight scales for scales {x_scale}, {y_scale}")


def test_requant_scale_order_decides_ties():
    # Per channel, the requant scale in onnxruntime's order is a short dyadic fraction, so accumulators
    # x - 128 in [-128, 127] hit exact ties; in any other order (or in exact arithmetic) the same scales are
    # an ulp off the fraction and those ties round the other way half of the time.
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    x_scale, y_scale = np.float32(0.0371), np.float32(0.413)
    w_scale = tie_making_weight_scales(x_scale, y_scale, 64)
    w = np.ones((64, 1, 1, 1), np.int8)
    consts = {"xs": x_scale, "xz": np.uint8(128), "w": w, "ws": w_scale, "wz": np.zeros(64, np.int8),
              "ys": y_scale, "yz": np.uint8(128)}
    expected = run_node("QLinearConv", {"x": x}, consts, TensorProto.UINT8)
    np.testing.assert_array_equal(golden.qlinear_conv(x, x_scale, 128, w, w_scale, 0, y_scale, 128), expected)
    acc = golden.conv2d_int(x, 128, w, 0)
    other_order = golden.requantize(acc, x_scale * (w_scale / y_scale), 128, np.uint8, axis=1)
    differs_somewhere(other_order, expected, "x_scale * w_scale / y_scale from x_scale * (w_scale / y_scale)")
    exact = np.float64(x_scale) * w_scale.astype(np.float64) / np.float64(y_scale)
    differs_somewhere(np.clip(np.rint(acc * exact[:, None, None]) + 128, 0, 255), expected, "exact scales")


def test_requantize_rounds_large_accumulators_to_float32():
    # acc + bias beyond 2**24 loses low bits when onnxruntime converts it to float32 before scaling. With the
    # scale exactly 2**-20 and biases odd multiples of 2**19, every acc within 8 of a bias is an exact tie
    # after that conversion but not before it, so the conversion decides the result.
    rng = np.random.default_rng(15)
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    w = np.ones((32, 1, 1, 1), np.int8)
    bias = (2**19 * (2 * rng.integers(32, 100, 32) + 1)).astype(np.int32)
    x_scale, w_scale, y_scale = np.float32(2**-6), np.full(32, 2**-7, np.float32), np.float32(2**7)
    consts = {"xs": x_scale, "xz": np.uint8(128), "w": w, "ws": w_scale, "wz": np.zeros(32, np.int8),
              "ys": y_scale, "yz": np.uint8(0), "b": bias}
    expected = run_node("QLinearConv", {"x": x}, consts, TensorProto.UINT8)
    actual = golden.qlinear_conv(x, x_scale, 128, w, w_scale, 0, y_scale, 0, bias)
    np.testing.assert_array_equal(actual, expected)
    acc = golden.conv2d_int(x, 128, w, 0).astype(np.int64) + bias[:, None, None]
    differs_somewhere(np.clip(np.rint(acc * 2.0**-20), 0, 255), expected, "float32 from exact accumulators")


def test_avgpool_adds_zero_point_before_rounding():
    # Averages of k + 0.5 with an odd output zero point: QLinearAveragePool rounds (k + 0.5 + 3) to even,
    # which differs from round(k + 0.5) + 3. The golden model must take onnxruntime's side.
    x = np.array([[[[0, 1, 2, 5, 4, 7]]]], np.uint8)
    consts = {"xs": np.float32(1.0), "xz": np.uint8(0), "ys": np.float32(1.0), "yz": np.uint8(3)}
    expected = run_node("QLinearAveragePool", {"x": x}, consts, TensorProto.UINT8, domain="com.microsoft",
                        kernel_shape=[1, 2], strides=[1, 2])
    actual = golden.avgpool(x, 1.0, 0, 1.0, 3, kernel=(1, 2), strides=(1, 2), pads=(0, 0, 0, 0))
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(actual.ravel(), [4, 6, 8])  # 0.5+3 -> 4, 3.5+3 -> 6, 5.5+3 -> 8 (to even)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_avgpool_float_path_decides_ties(dtype):
    # 2x2 windows with y_scale == x_scale: every window sum that is 2 mod 4 is, in exact arithmetic, a tie;
    # onnxruntime's float32 path (scale each tap, sum in window order, divide twice) lands just off it.
    rng = np.random.default_rng(16)
    lo, hi = golden.qrange(dtype)
    x_zp, y_zp = dtype(lo + 100), dtype(lo + 140)  # averages mostly inside the output range
    x = (int(x_zp) + rng.integers(-100, 100, (1, 16, 64, 64))).astype(dtype)
    scale = np.float32(0.0123)
    consts = {"xs": scale, "xz": x_zp, "ys": scale, "yz": y_zp}
    expected = run_node("QLinearAveragePool", {"x": x}, consts, tensor_type(dtype), domain="com.microsoft",
                        kernel_shape=[2, 2], strides=[2, 2])
    actual = golden.avgpool(x, scale, x_zp, scale, y_zp, kernel=2, strides=2, pads=(0, 0, 0, 0))
    np.testing.assert_array_equal(actual, expected)
    window_sums = (x.astype(np.int64) - int(x_zp)).reshape(1, 16, 32, 2, 32, 2).sum(axis=(3, 5))
    exact = np.clip(np.rint(window_sums / 4 + int(y_zp)), lo, hi)
    differs_somewhere(exact, expected, "the float32 path from exact averages")


@pytest.mark.parametrize("node", [
    pytest.param({"op_type": "QLinearGlobalAveragePool"}, id="global"),
    pytest.param({"op_type": "QLinearAveragePool", "kernel_shape": [7, 7]}, id="whole-image-window"),
])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_global_avgpool_scale_order_decides_ties(dtype, node):
    # 7x7 images, scales chosen so that x_scale / (y_scale * 49), onnxruntime's order, is exactly 1/8 while
    # x_scale / y_scale / 49 is not: sums 4 mod 8 are ties for one and not for the other. An AveragePool
    # window covering the whole image takes the same integer path (the float path would not see the ties).
    rng = np.random.default_rng(17)
    lo, hi = golden.qrange(dtype)
    count, eighth = np.float32(49), np.float32(0.125)
    for _ in range(1000):
        y_scale = np.float32(rng.uniform(0.001, 0.1))
        x_scale = eighth * (y_scale * count)
        if x_scale / (y_scale * count) == eighth and x_scale / y_scale / count != eighth:
            break
    x_zp, y_zp = dtype((lo + hi + 1) // 2), dtype((lo + hi + 1) // 2)
    x = (int(x_zp) + rng.integers(-40, 40, (1, 4096, 7, 7))).astype(dtype)  # sums / 8 within the range
    consts = {"xs": x_scale, "xz": x_zp, "ys": y_scale, "yz": y_zp}
    expected = run_node(inputs={"x": x}, initializers=consts, output_type=tensor_type(dtype),
                        domain="com.microsoft", **node)
    if node["op_type"] == "QLinearAveragePool":
        actual = golden.avgpool(x, x_scale, x_zp, y_scale, y_zp, kernel=7, strides=1, pads=(0, 0, 0, 0))
    else:
        actual = golden.global_avgpool(x, x_scale, x_zp, y_scale, y_zp)
    np.testing.assert_array_equal(actual, expected)
    acc = x.astype(np.int64).sum(axis=(2, 3), keepdims=True) - int(x_zp) * 49
    other_order = golden.requantize(acc, x_scale / y_scale / count, y_zp, dtype)
    differs_somewhere(other_order, expected, "x_scale / (y_scale * N) from x_scale / y_scale / N")


def add_parameter_sets(rng, dtype, count):
    """Random QLinearAdd parameters for which the constant term differs with and without its FMA."""
    lo, hi = golden.qrange(dtype)
    while count:
        a_s, b_s, y_s = (np.float32(s) for s in rng.uniform(0.001, 0.1, 3))
        a_zp, b_zp, y_zp = (dtype(z) for z in rng.integers(lo, hi + 1, 3))
        ra, rb = a_s / y_s, b_s / y_s
        if golden.fma_f32(ra, np.float32(a_zp), rb * np.float32(b_zp)) != ra * np.float32(a_zp) + rb * b_zp:
            count -= 1
            yield a_s, a_zp, b_s, b_zp, y_s, y_zp


@needs_fma
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_qlinear_add_exhaustive(dtype):
    # Every pair of inputs, for parameter sets where the constant term is sensitive to its FMA: both the FMAs
    # per element and the one in the constant term show in the results.
    lo, hi = golden.qrange(dtype)
    grid = np.arange(lo, hi + 1)
    a, b = np.repeat(grid, grid.size).astype(dtype), np.tile(grid, grid.size).astype(dtype)
    af, bf = a.astype(np.float32), b.astype(np.float32)
    results, unfused, unfused_constant = [], [], []
    for a_s, a_zp, b_s, b_zp, y_s, y_zp in add_parameter_sets(np.random.default_rng(11), dtype, 24):
        consts = {"as": a_s, "az": a_zp, "b": b, "bs": b_s, "bz": b_zp, "ys": y_s, "yz": y_zp}
        expected = run_node("QLinearAdd", {"a": a}, consts, tensor_type(dtype), domain="com.microsoft")
        np.testing.assert_array_equal(golden.qlinear_add(a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp), expected)
        ra, rb = a_s / y_s, b_s / y_s
        constant = np.float32(y_zp) - (ra * np.float32(a_zp) + rb * np.float32(b_zp))
        results.append(expected)
        unfused.append(np.clip(np.rint(constant + af * ra + bf * rb), lo, hi))
        fused = golden.fma_f32(af, ra, golden.fma_f32(bf, rb, constant))
        unfused_constant.append(np.clip(np.rint(fused), lo, hi))
    expected = np.concatenate(results)
    differs_somewhere(np.concatenate(unfused), expected, "fused from separate multiply-adds")
    differs_somewhere(np.concatenate(unfused_constant), expected, "the FMA in the constant term")
