"""Run a :class:`~tessera.sw_driver.layers.HostPartition` with onnxruntime, on the host.

The partition is a subgraph cut from the user's model: its inputs are the tensors a run holds (integer
activations Tessera's layers computed, or the model's own inputs), its initializers are the model's. One
onnxruntime session per partition and input signature is built the first time it runs and kept.
"""

from functools import lru_cache

import numpy as np
import onnx
from onnx import helper

__all__ = ["run_partition"]

def run_partition(layer, tensors):
    """``{output name: ndarray}`` of ``layer`` given ``tensors`` (which hold at least its inputs)."""
    feeds = {name: np.asarray(tensors[name]) for name in layer.inputs}
    signature = tuple((name, feeds[name].dtype.str, feeds[name].ndim) for name in layer.inputs)
    session = _session(layer, signature)
    return dict(zip(layer.outputs, session.run(list(layer.outputs), feeds), strict=True))


@lru_cache(maxsize=64)
def _session(layer, signature):
    import onnxruntime as ort

    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [None] * ndim)
              for name, dtype, ndim in signature]
    outputs = [helper.make_value_info(name, onnx.TypeProto()) for name in layer.outputs]  # onnxruntime infers them
    graph = helper.make_graph(list(layer.nodes), f"tessera_host_{layer.name}", inputs, outputs,
                              initializer=list(layer.initializers))
    model = helper.make_model(graph, opset_imports=list(layer.opsets), ir_version=layer.ir_version)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
