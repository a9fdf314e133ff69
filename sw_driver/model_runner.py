"""Runs an imported quantized model: layers the device supports on the device, the rest on the host.

Device layers today: fully connected / MatMul / Gemm and GlobalAveragePool (a GEMM with a column of ones) on
the PE array of every dataflow; Conv (grouped and depthwise included), whose sliding-window addressing
reads each input activation from the link once; MaxPool and Add on the vector unit. Weights may be int8 or
uint8 with any zero point (see ``weight_parts``), and onnxruntime must compute the layer with its integer (or
QLinearAdd) kernel.
Tessera's other layers run on the host with the golden model, with onnxruntime's semantics; host partitions
(nodes Tessera has no layer for) run on onnxruntime itself. The report says where each layer ran and why.
"""

import dataclasses

import numpy as np

from tessera.sw_driver import golden
from tessera.sw_driver.compiler import TilingError, conv_limits_violation, dense_group_weights
from tessera.sw_driver.energy import layer_energy
from tessera.sw_driver.host_exec import run_layer
from tessera.sw_driver.layers import (
    Add,
    Conv,
    ConvInteger,
    Gemm,
    GlobalAveragePool,
    HostPartition,
    MatMulInteger,
    MaxPool,
)
from tessera.sw_driver.space_to_depth import foldable
from tessera.sw_driver.vector_compiler import add_params_for

__all__ = ["LayerReport", "run_graph_on", "run_layer_on", "device_placement", "weight_parts"]


@dataclasses.dataclass
class LayerReport:
    name: str
    op: str
    target: str              # "device" or "host"
    reason: str = ""         # why a layer ran on the host
    macs: int = 0
    macs_skipped: int = 0    # of macs: in all-zero weight tiles the compiler skipped
    cycles: int = 0
    utilization: float = 0.0
    counters: dict = dataclasses.field(default_factory=dict)
    energy_pj: dict = dataclasses.field(default_factory=dict)
    resident: bool = False   # a resident segment's row: ``name`` spans its layers, ``op`` their kinds


def device_placement(graph, layer, cfg):
    """``(True, "")`` if ``layer`` can run on the device of ``cfg``, else ``(False, why)``."""
    if isinstance(layer, HostPartition):
        return False, f"onnxruntime runs it: {layer.reason}"
    if graph.onnxruntime_path(layer.name) == "float":
        return False, "onnxruntime computes this layer in float; the host reproduces it"
    if isinstance(layer, (MaxPool, Add)):
        return _vector_placement(graph, layer, cfg)
    if isinstance(layer, GlobalAveragePool):
        if cfg.multiplier != "exact":
            return False, (f"the array takes the mean as a product by ones, which the {cfg.multiplier} multiplier "
                           f"does not keep exact")
        return True, ""    # its scale depends on the image size: checked when it runs
    if isinstance(layer, (Conv, ConvInteger)):
        if layer.w_q.ndim != 4:
            return False, f"a {layer.w_q.ndim - 2}-D convolution (the device runs 2-D ones)"
        if tuple(layer.dilations) != (1, 1):
            return False, f"dilations {layer.dilations} (the device supports 1)"
        violation = conv_limits_violation(layer.w_q.shape[2:], layer.strides, layer.pads)
        if violation and not foldable(layer.w_q.shape[2:], layer.strides):   # (else the host folds its input)
            return False, violation
    elif not isinstance(layer, (Gemm, MatMulInteger)):
        return False, (f"{layer.kind} runs on the host (the device runs Gemm/MatMul, Conv, MatMulInteger, "
                       f"ConvInteger, MaxPool, GlobalAveragePool and Add)")
    return True, ""


def _vector_placement(graph, layer, cfg):
    if cfg.vec_depth == 0:
        return False, "this configuration has no vector unit (vec_depth = 0)"
    if isinstance(layer, MaxPool):
        violation = conv_limits_violation(layer.kernel, layer.strides, layer.pads)
        return (False, violation) if violation else (True, "")
    try:
        _add_params(graph, layer)
    except ValueError as error:
        return False, str(error)
    return True, ""


def _add_params(graph, layer):
    return add_params_for(layer.a_params, layer.b_params, layer.y_params,
                          on_uint8=graph.onnxruntime_path(layer.name) == "uint8")


def _device_maxpool(device, graph, layer, x):
    y, run = device.maxpool(_to_int8(x), layer.kernel, layer.strides, layer.pads)
    return _from_int8(y, x.dtype), run


def _device_add(device, graph, layer, a, b):
    y, run = device.add(_to_int8(a), _to_int8(b), _add_params(graph, layer))
    return _from_int8(y, layer.y_params.dtype), run


def _device_global_avgpool(device, graph, layer, x):
    """The mean over H and W as a GEMM on the array: (N*C, H*W) activations times a column of ones, the
    input zero point folded into the bias and onnxruntime's scale; integer, so exact."""
    xp, yp = layer.x_params, layer.y_params
    n, c, h, w = x.shape
    pixels = h * w
    scale = np.float32(xp.scale) / (np.float32(yp.scale) * np.float32(pixels))   # MLAS's order
    # onnxruntime refuses scales outside [2**-32, 256); so does the golden model, with the reason
    golden.global_avgpool(np.zeros((1, 1, h, w), x.dtype), xp.scale, xp.zero_point, yp.scale, yp.zero_point)
    ones = np.ones((pixels, 1), np.int8)
    x_zp = xp.zero_point - 128 if xp.dtype == np.uint8 else xp.zero_point
    y_zp = yp.zero_point - 128 if yp.dtype == np.uint8 else yp.zero_point
    bias = golden.fold_input_zero_point(np.zeros(1, np.int32), x_zp, ones)
    rows = np.ascontiguousarray(_to_int8(x).reshape(n * c, pixels))
    y, run = device.gemm(rows, ones, bias, np.array([scale], np.float32), y_zp)
    return _from_int8(y, yp.dtype).reshape(n, c, 1, 1), run


def _device_params(layer):
    """Input zero point in the int8 domain, scale per output channel, output zero point in the int8 domain."""
    xp, yp = layer.x_params, layer.y_params
    x_zp = xp.zero_point - 128 if xp.dtype == np.uint8 else xp.zero_point
    n = layer.bias.shape[0]
    scale = np.broadcast_to(golden.requant_scale(xp.scale, layer.w_scale, yp.scale), (n,)).astype(np.float32)
    y_zp = yp.zero_point - 128 if yp.dtype == np.uint8 else yp.zero_point
    return x_zp, scale, y_zp


def _to_int8(x):
    # uint8 activations become int8 by x - 128 (exact, with the zero point moved alike: see the golden model)
    return (x.astype(np.int16) - 128).astype(np.int8) if x.dtype == np.uint8 else x


def _from_int8(y, dtype):
    return (y.astype(np.int16) + 128).astype(np.uint8) if dtype == np.uint8 else y


def _group_mask(layer, shape):
    """Which (output, input) channel pairs of the dense weights are the layer's own (its groups)."""
    out_channels, channels = shape
    out_group = np.arange(out_channels) // (out_channels // layer.group)
    in_group = np.arange(channels) // (channels // layer.group)
    return out_group[:, None] == in_group[None, :]


def weight_parts(w_q, w_zp, output_axis):
    """``w_q - w_zp`` (the weights the layer really multiplies by) as int8 arrays whose sum it is, exactly.

    The array multiplies int8 by int8 and folds only the input zero point into the bias. Weights with a zero
    point, or uint8 weights, differ from it by up to 255 either way, so they are split: the first part is
    ``w_q - w_zp`` clipped to int8, each further one what is left. The layer then reads its input once per part
    (``sum x (a + b) == sum x a + sum x b``), only along the input channels or rows where a part is not zero:
    int8 weights with zero point 0 are one part, as they are; weights whose differences all fit in int8, too.
    """
    shape = [1] * w_q.ndim
    shape[output_axis] = -1
    rest = w_q.astype(np.int16) - np.asarray(w_zp, np.int16).reshape(shape if np.ndim(w_zp) else ())
    parts = []
    while not parts or rest.any():
        parts.append(np.clip(rest, -128, 127).astype(np.int8))
        rest = rest - parts[-1]
    return parts


def _extra_reads(parts, axis, dense=lambda part: part):
    """``(weights, reads)``: the parts stacked along ``axis`` (the reduction axis) after the first, keeping only the
    indices where a part is not zero, and those indices, for the input to be read again."""
    stacked, reads = [dense(parts[0])], []
    for part in map(dense, parts[1:]):
        used = np.flatnonzero(np.any(part != 0, axis=tuple(a for a in range(part.ndim) if a != axis)))
        stacked.append(np.take(part, used, axis=axis))
        reads.append(used)
    return np.concatenate(stacked, axis=axis), np.concatenate(reads) if reads else np.zeros(0, int)


def _conv_weights(layer):
    """A conv's dense int8 weight parts, stacked along the input channels, and the channels read again."""
    return _extra_reads(weight_parts(layer.w_q, layer.w_zp, output_axis=0), axis=1,
                        dense=lambda part: dense_group_weights(part, layer.group))


def _gemm_weights(layer):
    """A GEMM's int8 weight parts, stacked along K, and the input columns read again."""
    return _extra_reads(weight_parts(layer.w_q, layer.w_zp, output_axis=1), axis=0)


def _conv_input(layer, x, w, again):
    """The int8 input with its channels read again, and which MACs are the layer's: the zeros between groups are
    not; the extra reads of split weights are (the array does them)."""
    own = _group_mask(layer, (w.shape[0], x.shape[1]))
    return np.concatenate([x, x[:, again]], axis=1), np.concatenate([own, own[:, again]], axis=1)


def _gemm_rows(x, again):
    """The int8 input as rows (every leading dimension flattened), with its columns read again."""
    rows = x.reshape(-1, x.shape[-1])
    return np.ascontiguousarray(np.concatenate([rows, rows[:, again]], axis=1))


def _device_conv(device, graph, layer, x):
    """A Conv layer on the device, the whole batch in one program."""
    x_zp, scale, y_zp = _device_params(layer)
    w, again = _conv_weights(layer)
    bias = golden.fold_input_zero_point(layer.bias, x_zp, w, output_axis=0)
    x, counted = _conv_input(layer, _to_int8(x), w, again)
    y, run = device.conv(x, w, bias, scale, y_zp, strides=tuple(layer.strides), pads=tuple(layer.pads),
                         pad_value=x_zp, counted=counted)
    return _from_int8(y, layer.y_params.dtype), run


def _device_gemm(device, graph, layer, x):
    """A Gemm layer on the device, every leading dimension flattened into rows."""
    x_zp, scale, y_zp = _device_params(layer)
    w, again = _gemm_weights(layer)
    bias = golden.fold_input_zero_point(layer.bias, x_zp, w)
    y, run = device.gemm(_gemm_rows(_to_int8(x), again), w, bias, scale, y_zp)
    return _from_int8(y, layer.y_params.dtype).reshape(*x.shape[:-1], y.shape[-1]), run


def _integer_zero_point(layer, x, x_zp):
    """An integer layer's input zero point in the int8 domain (the layer's, or its run-time second input)."""
    zp = np.asarray(layer.x_zp if x_zp is None else x_zp)
    if zp.size != 1:
        raise ValueError(f"an input zero point of shape {list(zp.shape)} (the device takes one per tensor)")
    zp = int(zp.reshape(()))
    return zp - 128 if x.dtype == np.uint8 else zp       # the zero point moves with x - 128 (see _to_int8)


def _int32_output(acc, zero_point_term, channel_axis):
    """The accumulators plus the zero-point term, as the layer's int32 output (refused if it overflows int32)."""
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    y = acc.astype(np.int64) + zero_point_term.astype(np.int64).reshape(shape)
    if y.min(initial=0) < -2**31 or y.max(initial=0) > 2**31 - 1:
        raise ValueError("its int32 output overflows once the input zero point is taken out")
    return y.astype(np.int32)


def _device_conv_integer(device, graph, layer, x, x_zp=None):
    """A ConvInteger on the device: the accumulators (raw results), then the input zero point's term
    (``-x_zp * sum(w)``, as `fold_input_zero_point` folds it into a Conv's bias)."""
    zp = _integer_zero_point(layer, x, x_zp)
    w, again = _conv_weights(layer)
    x8, counted = _conv_input(layer, _to_int8(x), w, again)
    acc, run = device.conv_acc(x8, w, strides=tuple(layer.strides), pads=tuple(layer.pads), pad_value=zp,
                               counted=counted)
    term = golden.fold_input_zero_point(None, zp, w, output_axis=0)
    return _int32_output(acc, term, channel_axis=-3), run


def _device_matmul_integer(device, graph, layer, x, x_zp=None):
    """A MatMulInteger on the device, every leading dimension flattened into rows."""
    zp = _integer_zero_point(layer, x, x_zp)
    w, again = _gemm_weights(layer)
    acc, run = device.gemm_acc(_gemm_rows(_to_int8(x), again), w)
    term = golden.fold_input_zero_point(None, zp, w, output_axis=1)
    return _int32_output(acc, term, channel_axis=-1).reshape(*x.shape[:-1], w.shape[1]), run


_DEVICE_RUNNERS = {Conv: _device_conv, Gemm: _device_gemm, MaxPool: _device_maxpool, Add: _device_add,
                   GlobalAveragePool: _device_global_avgpool, ConvInteger: _device_conv_integer,
                   MatMulInteger: _device_matmul_integer}


def run_graph_on(graph, inputs, device=None, progress=None):
    """Run ``graph`` on ``inputs``; device layers on ``device`` (None: everything on the host).

    Returns ``(outputs, [LayerReport])``.
    """
    tensors = {name: np.asarray(value) for name, value in inputs.items()}
    reports = []
    for layer in graph.layers:
        reports.append(run_layer_on(graph, layer, tensors, device))
        if progress:
            progress(layer, reports[-1])
    return {io.name: tensors[io.name] for io in graph.outputs}, reports


def run_layer_on(graph, layer, tensors, device=None):
    """Run one layer of ``graph`` on ``device`` where it can run there, else on the host; its inputs are in
    ``tensors``, where its outputs go. Returns its :class:`LayerReport`."""
    if device is not None:
        on_device, reason = device_placement(graph, layer, device.cfg)
    else:
        on_device, reason = False, (f"onnxruntime runs it: {layer.reason}" if isinstance(layer, HostPartition)
                                    else "host run")
    if on_device:
        try:
            y, run = _DEVICE_RUNNERS[type(layer)](device, graph, layer, *(tensors[i] for i in layer.inputs))
        except TilingError as error:
            on_device, reason = False, f"does not tile onto this configuration: {error}"
        except ValueError as error:     # parameters the device cannot reproduce exactly
            on_device, reason = False, str(error)
    if on_device:
        tensors[layer.outputs[0]] = y
        return LayerReport(layer.name, layer.kind, "device", macs=run.macs, cycles=run.cycles,
                           macs_skipped=run.macs_skipped, utilization=run.utilization, counters=run.counters,
                           energy_pj=layer_energy(device.cfg, run.counters))
    tensors.update(run_layer(layer, tensors, path=graph.onnxruntime_path(layer.name)))
    return LayerReport(layer.name, layer.kind, "host", reason=reason)
