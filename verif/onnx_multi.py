"""Small random multi-layer float ONNX models for the importer's tests.

Like ``onnx_models``, each function returns a checked, shape-inferred float model with one float input ``x``
and weights drawn from ``rng``; quantize it with ``onnx_models.quantize_model``. Every node is named, so a
test can match the importer's layer names against the nodes onnxruntime leaves in its optimized graph.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tessera.verif.onnx_models import IR_VERSION, OPSET, conv_output_size


class _Builder:
    """Accumulates named nodes and float initializers; ``model()`` closes the graph."""

    def __init__(self, rng):
        self.rng = rng
        self.nodes, self.initializers = [], []

    def weight(self, name, shape, fan_in):
        self.initializers.append(numpy_helper.from_array(
            self.rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32), name))
        return name

    def node(self, op_type, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x, name, in_channels, out_channels, kernel, *, stride=1, pad=0, group=1, bias=True):
        w = self.weight(f"{name}.W", (out_channels, in_channels // group, kernel, kernel),
                        kernel * kernel * in_channels // group)
        inputs = [x, w]
        if bias:
            inputs.append(self.weight(f"{name}.B", (out_channels,), 4.0))
        return self.node("Conv", inputs, name, kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[pad] * 4, group=group)

    def model(self, input_shape, outputs):
        graph = helper.make_graph(
            self.nodes, "tessera_multi",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
            initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        # The checker wants output shapes: shape inference fills them in rather than this code working them out.
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        return model


def sequential_cnn(rng, *, channels=3, size=10, width=4, classes=10, reshape=False):
    """conv3x3 -> relu -> maxpool2x2 -> conv3x3 -> flatten -> gemm (transB, as PyTorch exports Linear); with
    ``reshape`` a Reshape to ``(0, -1)`` instead of the Flatten."""
    b = _Builder(rng)
    t = b.conv("x", "conv1", channels, width, 3, pad=1)
    t = b.node("Relu", [t], "relu1")
    t = b.node("MaxPool", [t], "pool1", kernel_shape=[2, 2], strides=[2, 2])
    t = b.conv(t, "conv2", width, 2 * width, 3)
    if reshape:
        b.initializers.append(numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"))
        t = b.node("Reshape", [t, "flat_shape"], "flatten")
    else:
        t = b.node("Flatten", [t], "flatten")
    side = conv_output_size(size // 2, 3, 1, 0, 0)
    features = 2 * width * side * side
    w = b.weight("fc.W", (classes, features), features)
    bias = b.weight("fc.B", (classes,), 4.0)
    b.node("Gemm", [t, w, bias], "fc", transB=1)
    return b.model((1, channels, size, size), ["fc"])


def depthwise_separable(rng, *, channels=6, size=9, out_channels=8, stride=1):
    """depthwise conv3x3 (group = channels) -> relu -> pointwise conv1x1 (a MobileNet block)."""
    b = _Builder(rng)
    t = b.conv("x", "depthwise", channels, channels, 3, stride=stride, pad=1, group=channels)
    t = b.node("Relu", [t], "relu")
    b.conv(t, "pointwise", channels, out_channels, 1)
    return b.model((1, channels, size, size), ["pointwise"])


def residual_block(rng, *, channels=4, size=8, tail=False):
    """stem conv -> relu -> conv -> relu -> conv, plus the stem (a ResNet basic block); ``tail`` adds a relu and
    a 1x1 conv after the Add. The stem's output feeds two nodes, the case where onnxruntime keeps int8 QDQ
    tensors and so some ops in float."""
    b = _Builder(rng)
    stem = b.node("Relu", [b.conv("x", "stem", 3, channels, 3, pad=1)], "stem_relu")
    t = b.node("Relu", [b.conv(stem, "conv1", channels, channels, 3, pad=1)], "relu1")
    t = b.conv(t, "conv2", channels, channels, 3, pad=1)
    t = b.node("Add", [stem, t], "add")
    if tail:
        t = b.conv(b.node("Relu", [t], "add_relu"), "head", channels, 2, 1)
    return b.model((1, 3, size, size), [t])


def pooling_net(rng, *, channels=4, size=9):
    """conv -> maxpool3x3/2 (padded) -> conv -> averagepool2x2 -> conv -> globalaveragepool -> flatten -> gemm."""
    b = _Builder(rng)
    t = b.node("Relu", [b.conv("x", "conv1", 3, channels, 3, pad=1)], "relu1")
    t = b.node("MaxPool", [t], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    t = b.conv(t, "conv2", channels, channels, 1)
    t = b.node("AveragePool", [t], "avgpool", kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1])
    t = b.conv(t, "conv3", channels, 2 * channels, 3, pad=1)
    t = b.node("GlobalAveragePool", [t], "gap")
    t = b.node("Flatten", [t], "flatten")
    w = b.weight("fc.W", (2 * channels, 5), 2 * channels)
    b.node("MatMul", [t, w], "fc")
    return b.model((1, 3, size, size), ["fc"])


def fan_out(rng, op_type, *, channels=4, size=8):
    """A stem conv whose output feeds both ``op_type`` and a 1x1 conv (two graph outputs): an int8 tensor
    onnxruntime cannot rewrite to uint8, read by one op of each kind."""
    b = _Builder(rng)
    stem = b.conv("x", "stem", 3, channels, 3, pad=1)
    side = b.conv(stem, "side", channels, channels, 1)
    if op_type == "Gemm":
        flat = b.node("Flatten", [stem], "flatten")
        features = channels * size * size
        head = b.node("Gemm", [flat, b.weight("fc.W", (features, 6), features), b.weight("fc.B", (6,), 4.0)], "fc")
    elif op_type == "AveragePool":
        head = b.node(op_type, [stem], "pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    elif op_type == "MaxPool":
        head = b.node(op_type, [stem], "pool", kernel_shape=[2, 2], strides=[2, 2])
    elif op_type == "GlobalAveragePool":
        head = b.node(op_type, [stem], "pool")
    else:
        raise ValueError(f"op_type must be Gemm, AveragePool, MaxPool or GlobalAveragePool, got {op_type!r}")
    return b.model((1, 3, size, size), [head, side])


def relu_branch(rng, *, channels=4, size=8):
    """conv -> relu -> conv, plus Add(conv2, conv1): the relu's input feeds two nodes, so the quantizer keeps
    a DequantizeLinear -> Relu -> QuantizeLinear."""
    b = _Builder(rng)
    c1 = b.conv("x", "conv1", 3, channels, 1)
    c2 = b.conv(b.node("Relu", [c1], "relu"), "conv2", channels, channels, 1)
    b.node("Add", [c2, c1], "add")
    return b.model((1, 3, size, size), ["add"])


def input_relu(rng, *, channels=4, size=6):
    """relu on the float input, then a conv: the quantizer quantizes the relu's output."""
    b = _Builder(rng)
    b.conv(b.node("Relu", ["x"], "relu"), "conv", 3, channels, 1)
    return b.model((1, 3, size, size), ["conv"])


def shared_fc(rng, op_type):
    """conv1x1 -> flatten -> fc1 -> (fc2, fc3), and flatten -> fc4, every fc a ``op_type`` (Gemm or MatMul).
    The flatten's and fc1's outputs each feed two nodes: an int8 fc1 reads and writes tensors onnxruntime
    keeps int8, which QGemm accepts and QLinearMatMul (on x86) does not."""
    b = _Builder(rng)
    flat = b.node("Flatten", [b.conv("x", "stem", 3, 4, 1)], "flatten")

    def fc(x, name, k, n):
        if op_type == "Gemm":
            return b.node("Gemm", [x, b.weight(f"{name}.W", (n, k), k), b.weight(f"{name}.B", (n,), 4.0)], name,
                          transB=1)
        return b.node("MatMul", [x, b.weight(f"{name}.W", (k, n), k)], name)

    hidden = fc(flat, "fc1", 64, 8)
    return b.model((1, 3, 4, 4), [fc(hidden, "fc2", 8, 3), fc(hidden, "fc3", 8, 5), fc(flat, "fc4", 64, 2)])


def softmax_head(rng):
    """conv1x1 -> flatten -> softmax: the quantizer quantizes the Softmax too (QLinearSoftmax in QOperator)."""
    b = _Builder(rng)
    b.node("Softmax", [b.node("Flatten", [b.conv("x", "conv", 3, 4, 1)], "flatten")], "softmax", axis=1)
    return b.model((1, 3, 4, 4), ["softmax"])


def mixed_head(rng, *, channels=3, size=8, classes=5):
    """Two convs -> Concat -> Resize (nearest, x2) -> conv (stride 2) -> Sigmoid -> GlobalAveragePool -> Flatten ->
    Gemm -> Softmax: a float model with the ops Tessera leaves to onnxruntime (Concat, Resize, Sigmoid,
    Softmax) between the ones the device runs."""
    b = _Builder(rng)
    left = b.node("Relu", [b.conv("x", "conv_a", channels, 4, 3, pad=1)], "relu_a")
    right = b.conv("x", "conv_b", channels, 4, 1)
    t = b.node("Concat", [left, right], "concat", axis=1)
    b.initializers.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "resize.scales"))
    t = b.node("Resize", [t, "", "resize.scales"], "resize", mode="nearest")
    t = b.node("Sigmoid", [b.conv(t, "conv_c", 8, 6, 3, stride=2, pad=1)], "sigmoid")
    t = b.node("Flatten", [b.node("GlobalAveragePool", [t], "gap")], "flatten")
    t = b.node("Gemm", [t, b.weight("fc.W", (classes, 6), 6), b.weight("fc.B", (classes,), 4.0)], "fc", transB=1)
    return b.model((1, channels, size, size), [b.node("Softmax", [t], "softmax", axis=1)])


def qdq_add(a_params, b_params, y_params, shape):
    """A hand-made int8 QDQ ``y = Add(a, b)`` with the given ``(scale, zero_point)`` for ``a``, ``b`` and ``y``
    (float inputs ``a`` and ``b``, float output ``y``), for when calibration would not pick the parameters."""
    nodes, initializers = [], []
    for tensor, (scale, zero_point) in (("a", a_params), ("b", b_params), ("y", y_params)):
        initializers += [numpy_helper.from_array(np.float32(scale), f"{tensor}_scale"),
                         numpy_helper.from_array(np.int8(zero_point), f"{tensor}_zp")]
        source = "sum" if tensor == "y" else tensor
        nodes += [helper.make_node("QuantizeLinear", [source, f"{tensor}_scale", f"{tensor}_zp"], [f"{tensor}_q"],
                                   name=f"{tensor}_quantize"),
                  helper.make_node("DequantizeLinear", [f"{tensor}_q", f"{tensor}_scale", f"{tensor}_zp"],
                                   [f"{tensor}_dq" if tensor != "y" else "y"], name=f"{tensor}_dequantize")]
    nodes.insert(4, helper.make_node("Add", ["a_dq", "b_dq"], ["sum"], name="add"))
    graph = helper.make_graph(
        nodes, "qdq_add", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


__all__ = ["depthwise_separable", "fan_out", "input_relu", "mixed_head", "pooling_net", "qdq_add", "relu_branch",
           "residual_block", "sequential_cnn", "shared_fc", "softmax_head"]
