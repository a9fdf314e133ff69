"""Run a :class:`~tessera.sw_driver.layers.HostPartition` with onnxruntime, on the host.

The partition is a subgraph cut from the user's model: its inputs are the tensors a run holds (integer
activations Tessera's layers computed, or the model's own inputs), its initializers are the model's. One
onnxruntime session per partition and input signature is built the first time it runs and kept.
"""

import re
from functools import lru_cache

import numpy as np
import onnx
from onnx import helper

__all__ = ["OnnxRuntimeError", "onnxruntime_reason", "prepare_partition", "run_partition"]


class OnnxRuntimeError(RuntimeError):
    """onnxruntime refused or failed a host partition; the message names the partition and says onnxruntime's why."""

def run_partition(layer, tensors):
    """``{output name: ndarray}`` of ``layer`` given ``tensors`` (which hold at least its inputs)."""
    feeds = {_subgraph_name(layer, name): np.asarray(tensors[name]) for name in layer.inputs}
    for name in layer.uint8_inputs:     # values + 128: see HostPartition.uint8_inputs
        key = _subgraph_name(layer, name)
        feeds[key] = (feeds[key].astype(np.int16) + 128).astype(np.uint8)
    session = prepare_partition(layer, {name: (a.dtype, a.ndim) for name, a in feeds.items()})
    try:
        results = session.run([_subgraph_name(layer, name) for name in layer.outputs], feeds)
    except Exception as error:  # noqa: BLE001 - onnxruntime's exception types are not public
        raise OnnxRuntimeError(f"onnxruntime cannot run host partition {layer.name!r} ({layer.kind}): "
                               f"{onnxruntime_reason(error)}") from error
    return {name: (y.astype(np.int16) - 128).astype(np.int8) if name in layer.uint8_outputs else y
            for name, y in zip(layer.outputs, results, strict=True)}


def _subgraph_name(layer, tensor):
    """The name ``tensor`` has in the subgraph: its uint8 copy's where onnxruntime runs it as uint8."""
    shifted = tensor in layer.uint8_inputs or tensor in layer.uint8_outputs
    return tensor + layer.UINT8_SUFFIX if shifted else tensor


def prepare_partition(layer, types):
    """The onnxruntime session for ``layer`` given ``{subgraph input name: (dtype, ndim)}``: made once, so that a
    partition onnxruntime refuses is found before a run starts."""
    names = [_subgraph_name(layer, name) for name in layer.inputs]
    signature = tuple((name, np.dtype(types[name][0]).str, types[name][1]) for name in names)
    try:
        return _session(layer, signature)
    except Exception as error:  # noqa: BLE001 - as above
        raise OnnxRuntimeError(f"onnxruntime refuses host partition {layer.name!r} ({layer.kind}): "
                               f"{onnxruntime_reason(error)}") from error


#: onnxruntime's error prefix (``[ONNXRuntimeError] : 1 : FAIL : ``) and the C++ source location and function it
#: names (``/onnxruntime_src/.../model.cc:256 onnxruntime::Model::Model(...)``): internals, not the reason.
_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE = re.compile(r"/onnxruntime_src/\S+:\d+\s+(?:virtual\s+)?(?:[\w:<>*&]+\s+)?[\w:~<>]+\([^()]*\)\s*(?:const\s*)?")


def onnxruntime_reason(error):
    """onnxruntime's own reason in one line, without its error prefix and source location."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "Status Message: " in text:
        text = text.split("Status Message: ")[-1]
    return re.sub(r"failed:(?=\S)", "failed: ", " ".join(_SOURCE.sub(" ", _PREFIX.sub("", text)).split()))


@lru_cache(maxsize=64)
def _session(layer, signature):
    import onnxruntime as ort

    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [None] * ndim)
              for name, dtype, ndim in signature]
    outputs = [helper.make_value_info(_subgraph_name(layer, name), onnx.TypeProto())   # onnxruntime infers them
               for name in layer.outputs]
    graph = helper.make_graph(list(layer.nodes), f"tessera_host_{layer.name}", inputs, outputs,
                              initializer=list(layer.initializers))
    model = helper.make_model(graph, opset_imports=list(layer.opsets), ir_version=layer.ir_version,
                              functions=list(layer.functions))
    options = ort.SessionOptions()
    options.log_severity_level = 4      # a failure reaches the user as OnnxRuntimeError's one line, not the log too
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
