"""Run an imported :class:`~tessera.sw_driver.layers.QuantizedGraph` on the host with the golden model only.

``run_graph`` takes and returns what onnxruntime's CPU provider takes and returns for the same model (float
inputs and outputs, or the quantized ones where the model has them) and computes every layer with
:mod:`tessera.sw_driver.golden`, whose functions match onnxruntime's integer kernels bit for bit, except the host
partitions (nodes Tessera has no layer for), which onnxruntime itself runs (:mod:`tessera.sw_driver.host_partition`).
``run_layer`` runs one layer, so a device runtime can run some layers on the accelerator and the rest here.

``run_graph`` follows ``graph.onnxruntime_path`` (see :mod:`tessera.sw_driver.onnx_import`) for each layer:

* ``"uint8"``: onnxruntime computes an int8 layer on uint8 copies of its tensors (zero points + 128). The
  integer kernels give the same values either way, but QLinearAdd and QLinearAveragePool work in float and
  round differently, so the host shifts to uint8, runs the kernel and shifts back.
* ``"float"``: onnxruntime runs DQ -> float op -> Q. Reproduced where float is exact: an Add is
  ``Q(DQ(a) + DQ(b))`` (one correctly rounded float32 add per element); MaxPool, Flatten, Reshape and Clip give
  the same values either way. A float Conv, Gemm or pool sums in MLAS's order, which the host does not
  reproduce: those run the integer kernel and ``inexact_layers`` lists them (their outputs can differ from
  onnxruntime's in the last bit, and the difference then propagates).
"""

import dataclasses
from functools import singledispatch

import numpy as np

from tessera.sw_driver import golden
from tessera.sw_driver.host_partition import run_partition

from .layers import (
    Add,
    AveragePool,
    Clip,
    Conv,
    ConvInteger,
    Dequantize,
    Flatten,
    Gemm,
    GlobalAveragePool,
    HostPartition,
    MatMulInteger,
    MaxPool,
    Quantize,
    QuantParams,
    Reshape,
)

__all__ = ["HostLayerError", "inexact_layers", "run_graph", "run_layer"]


class HostLayerError(RuntimeError):
    """A layer the golden model cannot compute on these inputs (e.g. its int32 accumulator would overflow, where
    onnxruntime would wrap around silently); the message names the layer."""

_FLOAT_EXACT = (Add, MaxPool, Flatten, Reshape, Clip)


def inexact_layers(graph):
    """``{layer name: why}`` for the layers whose host result may differ from onnxruntime's in the last bit.

    These are the layers onnxruntime runs in float whose float arithmetic the host does not reproduce
    (Conv, Gemm, AveragePool, GlobalAveragePool): ``run_graph`` runs their integer kernels instead. A caller
    comparing against onnxruntime should report them.
    """
    return {layer.name: graph.float_in_onnxruntime[layer.name] for layer in graph.layers
            if layer.name in graph.float_in_onnxruntime and not isinstance(layer, _FLOAT_EXACT)}


def run_graph(graph, inputs):
    """Run every layer of ``graph`` on the host.

    Parameters
    ----------
    graph : QuantizedGraph
    inputs : dict
        ``{graph input name: ndarray}``; float32 for float inputs, the model's int8/uint8 for quantized ones.

    Returns
    -------
    dict
        ``{graph output name: ndarray}``, float32 for float outputs, as onnxruntime returns them.
    """
    expected = {io.name: io for io in graph.inputs}
    missing, unknown = sorted(set(expected) - set(inputs)), sorted(set(inputs) - set(expected))
    if missing or unknown:
        raise ValueError(f"inputs must be exactly the graph inputs {sorted(expected)}; missing {missing}, "
                         f"unknown {unknown}")
    tensors = {}
    for name, io in expected.items():
        value = np.asarray(inputs[name])
        if io.dtype == np.float32:
            value = value.astype(np.float32, copy=False)
        elif value.dtype != io.dtype:
            raise ValueError(f"input {name!r} must be {io.dtype}, got {value.dtype}")
        if len(value.shape) != len(io.shape) or any(
                want is not None and want != got for want, got in zip(io.shape, value.shape, strict=True)):
            raise ValueError(f"input {name!r} must have shape {io.shape} (None: any), got {value.shape}")
        tensors[name] = value
    for layer in graph.layers:
        tensors.update(run_layer(layer, tensors, path=graph.onnxruntime_path(layer.name)))
    return {io.name: tensors[io.name] for io in graph.outputs}


_PATHS = ("integer", "uint8", "float")
_PARAM_FIELDS = ("x_params", "a_params", "b_params", "y_params")


def run_layer(layer, tensors, *, path="integer"):
    """Run one layer on the host.

    Parameters
    ----------
    layer : Layer
    tensors : dict
        ``{name: ndarray}`` holding at least the layer's inputs (quantized values for quantized tensors).
    path : {"integer", "uint8", "float"}
        How onnxruntime computes the layer (``QuantizedGraph.onnxruntime_path``; see the module docstring).
        ``"integer"`` is the accelerator's arithmetic, the layer as imported.

    Returns
    -------
    dict
        ``{output name: ndarray}``.
    """
    if path not in _PATHS:
        raise ValueError(f"path must be one of {_PATHS}, got {path!r}")
    missing = [name for name in layer.inputs if name not in tensors]
    if missing:
        raise ValueError(f"layer {layer.name!r} ({layer.kind}) needs tensors {missing}")
    if isinstance(layer, HostPartition):
        return run_partition(layer, tensors)
    args = [tensors[name] for name in layer.inputs]
    try:
        # Saturation is what quantization does with values beyond its range, and a degenerate scale gives what
        # onnxruntime gives (--check compares): not worth a warning on the user's terminal.
        with np.errstate(all="ignore"):
            if path == "uint8" and any(isinstance(getattr(layer, f, None), QuantParams) for f in _PARAM_FIELDS):
                return {layer.outputs[0]: _on_uint8(layer, args)}
            return {layer.outputs[0]: _compute(layer, *args, float_path=path == "float")}
    except ValueError as error:     # the golden model refuses what it cannot compute exactly (an int32 overflow)
        why = " ".join(str(error).split())     # one line, whatever arrays the reason prints
        raise HostLayerError(f"layer {layer.name!r} ({layer.kind}) cannot be computed on the host: {why}") from error


def _on_uint8(layer, args):
    """Run a layer with int8 tensors on uint8 copies of them (values and zero points + 128), as onnxruntime's rewrite
    does; its uint8 tensors stay as they are."""
    def shifted(params):
        return QuantParams(params.scale, params.zero_point + 128, np.uint8) if params.dtype == np.int8 else params

    changes = {f: shifted(getattr(layer, f)) for f in _PARAM_FIELDS if isinstance(getattr(layer, f, None), QuantParams)}
    unsigned = [(np.asarray(a).astype(np.int16) + 128).astype(np.uint8) if np.asarray(a).dtype == np.int8 else a
                for a in args]
    result = _compute(dataclasses.replace(layer, **changes), *unsigned, float_path=False)
    output = getattr(layer, "y_params", None)
    return (result.astype(np.int16) - 128).astype(np.int8) if output is not None and output.dtype == np.int8 \
        else result


@singledispatch
def _compute(layer, *args, float_path):
    raise NotImplementedError(f"no host implementation for layer kind {type(layer).__name__}")


@_compute.register
def _(layer: Quantize, x, *, float_path):
    p = layer.y_params
    return golden.quantize(x, p.scale, p.zero_point, p.dtype)


@_compute.register
def _(layer: Dequantize, x, *, float_path):
    return golden.dequantize(x, layer.x_params.scale, layer.x_params.zero_point)


@_compute.register
def _(layer: Conv, x, *, float_path):
    xp, yp = layer.x_params, layer.y_params
    return golden.qlinear_conv(x, xp.scale, xp.zero_point, layer.w_q, layer.w_scale, layer.w_zp, yp.scale,
                               yp.zero_point, layer.bias, yp.dtype, strides=layer.strides, pads=layer.pads,
                               dilations=layer.dilations, group=layer.group)


@_compute.register
def _(layer: Gemm, x, *, float_path):
    xp, yp = layer.x_params, layer.y_params
    return golden.qlinear_matmul(x, xp.scale, xp.zero_point, layer.w_q, layer.w_scale, layer.w_zp, yp.scale,
                                 yp.zero_point, layer.bias, yp.dtype)


@_compute.register
def _(layer: ConvInteger, x, x_zp=None, *, float_path):
    return golden.conv2d_int(x, layer.x_zp if x_zp is None else x_zp, layer.w_q, layer.w_zp, strides=layer.strides,
                             pads=layer.pads, dilations=layer.dilations, group=layer.group)


@_compute.register
def _(layer: MatMulInteger, x, x_zp=None, *, float_path):
    return golden.matmul_int(x, layer.x_zp if x_zp is None else x_zp, layer.w_q, layer.w_zp)


@_compute.register
def _(layer: MaxPool, x, *, float_path):
    return golden.maxpool(x, layer.kernel, layer.strides, layer.pads)


@_compute.register
def _(layer: AveragePool, x, *, float_path):
    xp, yp = layer.x_params, layer.y_params
    return golden.avgpool(x, xp.scale, xp.zero_point, yp.scale, yp.zero_point, layer.kernel, layer.strides,
                          layer.pads, layer.count_include_pad)


@_compute.register
def _(layer: GlobalAveragePool, x, *, float_path):
    xp, yp = layer.x_params, layer.y_params
    return golden.global_avgpool(x, xp.scale, xp.zero_point, yp.scale, yp.zero_point)


@_compute.register
def _(layer: Add, a, b, *, float_path):
    ap, bp, yp = layer.a_params, layer.b_params, layer.y_params
    if float_path:  # DQ -> float Add -> Q: each step is correctly rounded float32, so this is exact
        total = golden.dequantize(a, ap.scale, ap.zero_point) + golden.dequantize(b, bp.scale, bp.zero_point)
        return golden.quantize(total, yp.scale, yp.zero_point, yp.dtype)
    return golden.qlinear_add(a, ap.scale, ap.zero_point, b, bp.scale, bp.zero_point, yp.scale, yp.zero_point)


@_compute.register
def _(layer: Clip, x, *, float_path):
    # DQ -> Clip -> Q as onnxruntime runs it (or fuses it away where the output range already clips: the same
    # values, since quantization is monotonic).
    xp, yp = layer.x_params, layer.y_params
    real = golden.dequantize(x, xp.scale, xp.zero_point)
    real = np.clip(real, np.float32(layer.low), np.float32(layer.high))
    return golden.quantize(real, yp.scale, yp.zero_point, yp.dtype)


@_compute.register
def _(layer: Flatten, x, *, float_path):
    return x.reshape(layer.output_shape(x.shape))


@_compute.register
def _(layer: Reshape, x, *, float_path):
    return x.reshape(layer.resolve(x.shape))
