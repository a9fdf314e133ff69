"""Small random float ONNX models and their static int8 quantization, for tests.

Each ``*_model`` function returns an ``onnx.ModelProto`` with one graph input ``x`` (``add_model``: ``a`` and
``b``) and one output ``y``, weights drawn from ``rng``. ``quantize_model`` runs onnxruntime's own static
quantizer over it, calibrated on random data, so tests see exactly the graphs a user's toolchain produces.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

OPSET = 17
# onnx 1.23 stamps IR version 14 by default, which onnxruntime 1.31 refuses (it reads up to 13); 10 is what
# opset 17 needs and every supported onnxruntime reads.
IR_VERSION = 10


def _model(nodes, inputs, output_shape, initializers=()):
    graph = helper.make_graph(
        nodes,
        "tessera_test",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), name) for name, v in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def conv_output_size(size, kernel, stride, pad_begin, pad_end, dilation=1):
    """Spatial output size of a convolution or pool (ONNX, ``ceil_mode=0``)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def conv_model(rng, *, batch, in_channels, out_channels, size, kernel, stride, pads, group=1, dilation=1,
               relu=False):
    """``y = Conv(x, W, B)`` (then ``Relu`` if asked); ``kernel`` a side or (KH, KW); ``pads`` is ONNX order (top,
    left, bottom, right)."""
    height, width = size
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    w = rng.normal(0.0, 1.0 / np.sqrt(kh * kw * in_channels / group), (out_channels, in_channels // group, kh, kw))
    b = rng.normal(0.0, 0.5, out_channels)
    conv = helper.make_node("Conv", ["x", "W", "B"], ["conv" if relu else "y"], kernel_shape=[kh, kw],
                            strides=[stride, stride], pads=list(pads), dilations=[dilation, dilation],
                            group=group)
    nodes = [conv, helper.make_node("Relu", ["conv"], ["y"])] if relu else [conv]
    out_h = conv_output_size(height, kh, stride, pads[0], pads[2], dilation)
    out_w = conv_output_size(width, kw, stride, pads[1], pads[3], dilation)
    return _model(nodes, [("x", (batch, in_channels, height, width))], (batch, out_channels, out_h, out_w),
                  [("W", w), ("B", b)])


def matmul_model(rng, *, m, k, n):
    """``y = MatMul(x[m, k], W[k, n])``."""
    w = rng.normal(0.0, 1.0 / np.sqrt(k), (k, n))
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [("x", (m, k))], (m, n), [("W", w)])


def gemm_model(rng, *, m, k, n, trans_b):
    """``y = Gemm(x[m, k], W, C[n])``; ``W`` is ``[n, k]`` if ``trans_b`` (as PyTorch exports Linear)."""
    w = rng.normal(0.0, 1.0 / np.sqrt(k), (n, k) if trans_b else (k, n))
    c = rng.normal(0.0, 0.5, n)
    gemm = helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=int(trans_b))
    return _model([gemm], [("x", (m, k))], (m, n), [("W", w), ("C", c)])


def add_model(shape):
    """``y = Add(a, b)`` of two activations of the same shape (a residual connection)."""
    return _model([helper.make_node("Add", ["a", "b"], ["y"])], [("a", shape), ("b", shape)], shape)


def _pool_model(rng, op_type, shape, out_shape, **attrs):
    # onnxruntime's quantizer only quantizes a pool whose input is already quantized (the float model's input
    # is not), so every pool model starts with a random 1x1 Conv, as pools follow convolutions in a CNN.
    channels = shape[1]
    w = rng.normal(0.0, 1.0 / np.sqrt(channels), (channels, channels, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "W"], ["conv"]),
             helper.make_node(op_type, ["conv"], ["y"], **attrs)]
    return _model(nodes, [("x", shape)], out_shape, [("W", w)])


def _window_output_shape(shape, kernel, stride, pads):
    batch, channels, height, width = shape
    return (batch, channels, conv_output_size(height, kernel, stride, pads[0], pads[2]),
            conv_output_size(width, kernel, stride, pads[1], pads[3]))


def avgpool_model(rng, shape, *, kernel, stride, pads, count_include_pad=False):
    """``y = AveragePool(Conv1x1(x))`` over a square window."""
    return _pool_model(rng, "AveragePool", shape, _window_output_shape(shape, kernel, stride, pads),
                       kernel_shape=[kernel, kernel], strides=[stride, stride], pads=list(pads),
                       count_include_pad=int(count_include_pad))


def maxpool_model(rng, shape, *, kernel, stride, pads):
    """``y = MaxPool(Conv1x1(x))`` over a square window."""
    return _pool_model(rng, "MaxPool", shape, _window_output_shape(shape, kernel, stride, pads),
                       kernel_shape=[kernel, kernel], strides=[stride, stride], pads=list(pads))


def global_avgpool_model(rng, shape):
    """``y = GlobalAveragePool(Conv1x1(x))``."""
    return _pool_model(rng, "GlobalAveragePool", shape, (*shape[:2], 1, 1))


def input_shapes(model):
    """``{name: shape}`` of a model's graph inputs (initializers excluded)."""
    initializers = {init.name for init in model.graph.initializer}
    return {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
            for vi in model.graph.input if vi.name not in initializers}


def random_inputs(rng, model, scale=1.0):
    """One feed of normal random float32 inputs for ``model``."""
    shapes = input_shapes(model)
    return {name: rng.normal(0.0, scale, shape).astype(np.float32) for name, shape in shapes.items()}


class RandomCalibration(CalibrationDataReader):
    """Feeds ``count`` random batches to onnxruntime's calibrator."""

    def __init__(self, rng, model, count=4):
        self._feeds = iter([random_inputs(rng, model) for _ in range(count)])

    def get_next(self):
        return next(self._feeds, None)


def quantize_model(model, path, rng, *, quant_format, per_channel, activation_type, weight_type=QuantType.QInt8):
    """Quantize ``model`` statically with onnxruntime and return the quantized model.

    Parameters
    ----------
    model : onnx.ModelProto
        Float model.
    path : pathlib.Path
        Folder for the float and quantized files (onnxruntime's quantizer works on files).
    quant_format : QuantFormat
        ``QuantFormat.QOperator`` (QLinearConv, ...) or ``QuantFormat.QDQ`` (Q/DQ pairs around float ops).
    per_channel : bool
        Per-output-channel weight scales.
    activation_type, weight_type : QuantType
        ``QuantType.QUInt8`` or ``QuantType.QInt8`` (weights int8 unless told).
    """
    float_path, quant_path = path / "float.onnx", path / "quant.onnx"
    onnx.save(model, float_path)
    quantize_static(float_path, quant_path, RandomCalibration(rng, model), quant_format=quant_format,
                    per_channel=per_channel, activation_type=activation_type, weight_type=weight_type)
    return onnx.load(quant_path)


def quantize_dynamic_model(model, path, *, weight_type):
    """Quantize ``model``'s MatMul, Gemm and Conv dynamically with onnxruntime (``quantize_dynamic``: MatMulInteger /
    ConvInteger with the input's zero point computed at run time) and return the quantized model; ``path`` as in
    `quantize_model`."""
    float_path, quant_path = path / "float.onnx", path / "dynamic.onnx"
    onnx.save(model, float_path)
    quantize_dynamic(float_path, quant_path, weight_type=weight_type, op_types_to_quantize=["MatMul", "Gemm", "Conv"])
    return onnx.load(quant_path)


def qlinear_model(rng, w, w_zp, w_scale, x_shape, *, pads=(1, 1, 1, 1)):
    """A hand-made QLinearConv (4-D ``w``) or QLinearMatMul (2-D ``w``, (K, N)) on a uint8 input ``x`` with the
    given weights and weight zero point, for weights no quantizer would write (e.g. uint8 over their whole range
    with zero point 0). Input and output scales and zero points, and the conv's bias, are drawn from ``rng``, for
    inputs drawn uniformly over uint8."""
    conv = w.ndim == 4
    out_channels, reduction = (w.shape[0], w[0].size) if conv else (w.shape[1], w.shape[0])
    x_scale = np.float32(rng.uniform(0.01, 0.03))
    # For uniform uint8 inputs centred on x_zp, a sum has a standard deviation of about sqrt(K) * 74 * 150 steps
    # (74: a uniform byte's; 150: of a weight around a zero point anywhere in [0, 255]). The output scale puts
    # that at 30 to 60 output steps, so the outputs spread over uint8 rather than saturate.
    y_scale = np.float32(x_scale * np.max(w_scale) * np.sqrt(reduction) * 74 * 150 / rng.uniform(30, 60))
    constants = {"x_scale": x_scale, "x_zp": np.uint8(rng.integers(118, 139)), "w": w, "w_scale": w_scale,
                 "w_zp": w_zp, "y_scale": y_scale, "y_zp": np.uint8(rng.integers(100, 156))}
    names = ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"]
    if conv:
        constants["bias"] = rng.integers(-2000, 2000, out_channels).astype(np.int32)
        node = helper.make_node("QLinearConv", [*names, "bias"], ["y"], name="qconv", pads=list(pads))
    else:
        node = helper.make_node("QLinearMatMul", names, ["y"], name="qmatmul")
    graph = helper.make_graph([node], "tessera_qlinear", [helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                                                        list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [None] * len(x_shape))],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


__all__ = ["QuantFormat", "QuantType", "add_model", "avgpool_model", "conv_model", "conv_output_size",
           "gemm_model", "global_avgpool_model", "input_shapes", "matmul_model", "maxpool_model",
           "qlinear_model", "quantize_model", "random_inputs"]
