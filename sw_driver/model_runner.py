"""Runs an imported quantized model: layers the device supports on the device, the rest on the host.

Device layers today: fully connected / MatMul / Gemm with int8 weights of zero point 0 that onnxruntime
computes with an integer kernel. Everything else runs on the host with the golden model, with
onnxruntime's semantics, and the report says where each layer ran.
"""

import dataclasses

import numpy as np

from sw_driver.energy import layer_energy
from sw_driver.host_exec import run_layer
from sw_driver.layers import Gemm
from verif import golden

__all__ = ["LayerReport", "run_graph_on", "device_placement"]


@dataclasses.dataclass
class LayerReport:
    name: str
    op: str
    target: str              # "device" or "host"
    reason: str = ""         # why a layer ran on the host
    macs: int = 0
    cycles: int = 0
    utilization: float = 0.0
    counters: dict = dataclasses.field(default_factory=dict)
    energy_pj: dict = dataclasses.field(default_factory=dict)


def device_placement(graph, layer):
    """``(True, "")`` if ``layer`` can run on the device, else ``(False, why)``."""
    if not isinstance(layer, Gemm):
        return False, f"{layer.kind} runs on the host (the device runs Gemm/MatMul today)"
    if graph.onnxruntime_path(layer.name) == "float":
        return False, "onnxruntime computes this layer in float; the host reproduces it"
    if np.any(layer.w_zp != 0):
        return False, "weights with a non-zero zero point (the device folds only the input zero point)"
    return True, ""


def _device_gemm(device, layer, x):
    """A Gemm layer on the device: uint8 activations shifted to int8, input zero point folded into the bias."""
    xp, yp = layer.x_params, layer.y_params
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    x_zp = xp.zero_point
    if x2.dtype == np.uint8:
        x2, x_zp = golden.to_signed_activation(x2, x_zp)
    bias = golden.fold_input_zero_point(layer.bias, x_zp, layer.w_q)
    n = layer.w_q.shape[1]
    scale = np.broadcast_to(golden.requant_scale(xp.scale, layer.w_scale, yp.scale), (n,)).astype(np.float32)
    y_zp = yp.zero_point - 128 if yp.dtype == np.uint8 else yp.zero_point
    y, run = device.gemm(np.ascontiguousarray(x2, dtype=np.int8), layer.w_q, bias, scale, y_zp)
    if yp.dtype == np.uint8:
        y, _ = golden.to_unsigned_activation(y, y_zp)
    return y.reshape(*shape[:-1], n), run


def run_graph_on(graph, inputs, device=None, progress=None):
    """Run ``graph`` on ``inputs``; device layers on ``device`` (None: everything on the host).

    Returns ``(outputs, [LayerReport])``.
    """
    tensors = {name: np.asarray(value) for name, value in inputs.items()}
    reports = []
    for layer in graph.layers:
        on_device, reason = device_placement(graph, layer) if device is not None else (False, "host run")
        if on_device:
            y, run = _device_gemm(device, layer, tensors[layer.inputs[0]])
            tensors[layer.outputs[0]] = y
            reports.append(LayerReport(layer.name, layer.kind, "device", macs=run.macs, cycles=run.cycles,
                                       utilization=run.utilization, counters=run.counters,
                                       energy_pj=layer_energy(device.cfg, run.counters)))
        else:
            tensors.update(run_layer(layer, tensors, path=graph.onnxruntime_path(layer.name)))
            reports.append(LayerReport(layer.name, layer.kind, "host", reason=reason))
        if progress:
            progress(layer, reports[-1])
    return {io.name: tensors[io.name] for io in graph.outputs}, reports
