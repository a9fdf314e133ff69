"""The trained parameters as a float ONNX model, one node per step of ``cnn.forward``."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .cnn import IMAGE_SHAPE, KERNEL, NUM_CLASSES, POOL

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
BATCH_DIM = "N"  # symbolic, so one onnxruntime session runs any batch size
OPSET = 17  # the opset onnxruntime's quantize_static is tested on here (tests/onnx_models.py)
# onnx 1.23 stamps IR version 14, which onnxruntime 1.31 refuses to load; opset 17 needs only IR 10.
IR_VERSION = 10


def _conv_relu(name, x, out):
    pad = KERNEL // 2
    return [helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}.out"], name=name,
                             kernel_shape=[KERNEL, KERNEL], strides=[1, 1], pads=[pad] * 4),
            helper.make_node("Relu", [f"{name}.out"], [out], name=f"{name}.relu")]


def to_onnx(params):
    """The float ONNX model of ``params`` (from ``cnn.init_params`` or training), checked and shape-inferred."""
    nodes = [
        *_conv_relu("conv1", INPUT_NAME, "relu1"),
        *_conv_relu("conv2", "relu1", "relu2"),
        helper.make_node("Add", ["relu2", "relu1"], ["residual"], name="residual"),
        helper.make_node("MaxPool", ["residual"], ["pool"], name="pool", kernel_shape=[POOL, POOL],
                         strides=[POOL, POOL]),
        *_conv_relu("conv3", "pool", "relu3"),
        helper.make_node("GlobalAveragePool", ["relu3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["features"], name="flatten", axis=1),
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], [OUTPUT_NAME], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, *IMAGE_SHAPE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, NUM_CLASSES])],
        initializer=[numpy_helper.from_array(np.asarray(value, np.float32), name)
                     for name, value in sorted(params.items())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tessera")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def params_from_onnx(model):
    """The parameters back from a model written by ``to_onnx``, keyed as ``cnn.init_params``."""
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
