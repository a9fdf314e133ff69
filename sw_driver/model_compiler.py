"""Whole-model compilation: the runs of layers a device can keep resident, compiled once, and the rest of the
graph as the model runner runs it.

A *segment* is a chain of Conv and Gemm layers (Flatten and Reshape between them where they only drop unit
dimensions) in which each layer reads the one before and nothing else reads the tensors between them: it runs
as one :class:`~tessera.sw_driver.resident.ResidentModel`, its feature maps in the activation buffer, its weights
and program loaded once. Each segment has its own part of the weight, parameter and program memories, so every
segment of a model stays loaded at once. The other layers run as :func:`~tessera.sw_driver.model_runner.run_graph_on`
runs them (one device program each, or the host); the tensors between them and the segments cross the link.
"""

import dataclasses

import numpy as np

from tessera.sw_driver import golden
from tessera.sw_driver.compiler import TilingError
from tessera.sw_driver.energy import layer_energy
from tessera.sw_driver.layers import Conv, Flatten, Gemm, Reshape
from tessera.sw_driver.model_runner import (
    LayerReport,
    _conv_weights,
    _device_params,
    _from_int8,
    _gemm_weights,
    _to_int8,
    device_placement,
    run_layer_on,
)
from tessera.sw_driver.resident import DeviceLayer, compile_resident

__all__ = ["Segment", "compile_model", "find_segments", "load_segments", "run_model"]


@dataclasses.dataclass
class Segment:
    """A resident run of layers: their names, the tensor it reads and the one it writes, and its compiled model
    (None, with ``reason``, where it did not compile: its layers then run one by one)."""
    layers: list
    input: str
    output: str
    model: object = None
    reason: str = ""


def _image_shape(graph, name):
    """The shape of one item of a batch of tensor ``name`` (its leading dimension dropped), or None if unknown."""
    shape = graph.shapes.get(name)
    if shape is None or len(shape) < 2 or any(d is None for d in shape[1:]):
        return None
    return tuple(shape[1:])


def _as_map(shape):
    """A tensor shape as the (C, H, W) feature map a device layer reads: (C,) is a 1x1 map."""
    if shape is None:
        return None
    if len(shape) == 1:
        return (shape[0], 1, 1)
    return tuple(shape) if len(shape) == 3 else None


def _device_layer(layer):
    """A Conv or Gemm as a :class:`DeviceLayer`, or a string saying why it cannot be one."""
    x_zp, scale, y_zp = _device_params(layer)
    if isinstance(layer, Conv):
        w, again = _conv_weights(layer)
        bias = golden.fold_input_zero_point(layer.bias, x_zp, w, output_axis=0)
        strides, pads = tuple(layer.strides), tuple(layer.pads)
    else:
        w, again = _gemm_weights(layer)
        bias = golden.fold_input_zero_point(layer.bias, x_zp, w)
        w = np.ascontiguousarray(w.T)[:, :, None, None]     # a 1x1 conv over a 1x1 map
        strides, pads = (1, 1), (0, 0, 0, 0)
    if len(again):
        return ("its weights have a zero point or are uint8: the layer reads its input twice, which it does not do "
                "from on-chip storage")
    return DeviceLayer(w=w, bias=bias, scale=scale, y_zp=int(y_zp), strides=strides, pads=pads,
                       pad_value=int(x_zp), macs_per_pixel=int(np.prod(layer.w_q.shape)))


def _chainable(graph, layer, cfg):
    """A layer a segment can hold: a Conv or Gemm the device runs, on one item's known shapes."""
    if not isinstance(layer, (Conv, Gemm)):
        return False
    placed, _ = device_placement(graph, layer, cfg)
    shape = _as_map(_image_shape(graph, layer.inputs[0]))
    if not placed or shape is None or _image_shape(graph, layer.outputs[0]) is None:
        return False
    return isinstance(layer, Conv) or shape[1:] == (1, 1)


def _unit_reshape(graph, layer):
    """A Flatten or Reshape that changes nothing on chip: from or to a (C, 1, 1) map of the same channels."""
    if not isinstance(layer, (Flatten, Reshape)):
        return False
    before, after = _as_map(_image_shape(graph, layer.inputs[0])), _as_map(_image_shape(graph, layer.outputs[0]))
    return before is not None and before == after and before[1:] == (1, 1)


def find_segments(graph, cfg):
    """The graph's resident segments, in order (see the module docstring)."""
    readers = {}
    for layer in graph.layers:
        for name in layer.inputs:
            readers[name] = readers.get(name, 0) + 1
    graph_outputs = {io.name for io in graph.outputs}
    segments, current, compute = [], None, []

    def close():
        if current is not None and compute:
            segments.append(dataclasses.replace(current, layers=list(current.layers)))

    for layer in graph.layers:
        joins = (current is not None and layer.inputs[0] == current.output and readers.get(current.output) == 1
                 and current.output not in graph_outputs)
        if _chainable(graph, layer, cfg):
            if not joins:
                close()
                current, compute = Segment([], layer.inputs[0], layer.outputs[0]), []
            current.layers.append(layer.name)
            current.output = layer.outputs[0]
            compute.append(layer)
        elif joins and _unit_reshape(graph, layer):
            current.layers.append(layer.name)
            current.output = layer.outputs[0]
        else:
            close()
            current, compute = None, []
    close()
    return segments


def compile_model(graph, cfg, batch=1):
    """Find the graph's resident segments and compile each for ``cfg``, each for runs of up to ``batch`` images
    (halved until its feature maps and program fit). A segment that does not fit is cut after the longest run of
    its layers that does; a layer that does not fit even alone, for one image, is left out with the reason (it then
    runs one by one).

    The segments' weights and parameters are stacked at the top of their buffers, one segment below the other in
    graph order, so that every segment stays loaded and the layers run one by one, whose programs fill those
    buffers from the bottom, rarely reach them (where one does, the device loads the segment again:
    ``Device.infer``). Their programs stack from the bottom of the program memory."""
    placed = _Placement(cfg)
    compiled = []
    for segment in find_segments(graph, cfg):
        layers = [graph.layer(name) for name in segment.layers]
        device_layers = [_device_layer(layer) for layer in layers if isinstance(layer, (Conv, Gemm))]
        why = next((d for d in device_layers if isinstance(d, str)), None)
        if why:
            compiled.append(dataclasses.replace(segment, reason=why))
            continue
        compiled += _fitting_segments(graph, cfg, layers, device_layers, segment.input, placed, batch)
    return compiled


class _Placement:
    """Where the next segment goes: below the weights and parameters of those before it, after their programs."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.top = {"weight": cfg.weight_depth, "param": cfg.param_depth}
        self.program = 0

    def compile(self, device_layers, in_shape, batch):
        """The layers compiled at the next place, for the largest batch (halving) that fits; TilingError if none."""
        cfg, error = self.cfg, None
        for size in _halvings(batch):
            try:
                # sized where it would start at the bottom, then placed below the segments before it
                plan = compile_resident(cfg, device_layers, in_shape, batch=size).plan
                bases = {"weight": self.top["weight"] - plan["weight_words"],
                         "param": self.top["param"] - plan["param_words"], "program": self.program}
                for buffer in ("weight", "param"):
                    if bases[buffer] < 0:
                        raise TilingError(f"with the segments before it, its {buffer} words ({plan[buffer + '_words']}"
                                          f" of them) do not fit {buffer}_depth={getattr(cfg, buffer + '_depth')}; "
                                          f"{self.top[buffer]} are left")
                return compile_resident(cfg, device_layers, in_shape, bases=bases, batch=size)
            except TilingError as err:
                error = err
        raise error

    def take(self, model):
        bases = model.plan["bases"]
        self.top = {"weight": bases["weight"], "param": bases["param"]}
        self.program += model.plan["program_words"]


def _fitting_segments(graph, cfg, layers, device_layers, input_name, placed, batch):
    """A found segment's layers as segments that fit: the whole, or the longest runs that do, one after another."""
    segments = []
    while layers:
        compute = [i for i, layer in enumerate(layers) if isinstance(layer, (Conv, Gemm))]
        in_shape = _as_map(_image_shape(graph, input_name))
        # the longest run of its first n compute layers that fits (fewer layers never need more room)
        low, high, best, reason = 1, len(compute), None, ""
        while low <= high:
            n = (low + high) // 2
            try:
                model = placed.compile(device_layers[:n], in_shape, batch)
                best, low = (n, model), n + 1
            except TilingError as error:
                reason, high = f"does not stay resident on this configuration: {error}", n - 1
        end = compute[best[0] - 1] + 1 if best else compute[0] + 1
        names = [layer.name for layer in layers[:end]]
        output = layers[end - 1].outputs[0]
        if best:
            placed.take(best[1])
            segments.append(Segment(names, input_name, output, best[1]))
        else:
            segments.append(Segment(names, input_name, output, reason=reason))
        used = best[0] if best else 1
        layers, device_layers, input_name = layers[end:], device_layers[used:], output
        if layers and not any(isinstance(layer, (Conv, Gemm)) for layer in layers):
            break     # (a trailing reshape runs on the host, as outside a segment)
    return segments


def load_segments(device, segments):
    """Load the compiled segments onto ``device``, once; returns the LayerRun of the load (its counters), or None
    if no segment compiled."""
    models = [segment.model for segment in segments if segment.model is not None]
    return device.load_resident(models) if models else None


def _halvings(batch):
    """batch, batch / 2, ... 1."""
    sizes = [max(1, batch)]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    return sizes


def run_model(graph, inputs, device, segments, progress=None, *, load=True):
    """Run ``graph`` on ``inputs`` with its compiled ``segments`` resident on ``device`` (loaded here first unless
    ``load`` is off: they are already), the other layers as :func:`run_layer_on` runs them. Every item of a batch
    runs through a segment back to back.

    Returns ``(outputs, [LayerReport], one_time)``: a segment's report stands for all its layers (its counters
    cover them together); ``one_time`` is the LayerRun of loading the segments (None if not loaded here).
    """
    one_time = load_segments(device, segments) if load else None
    loaded = [segment for segment in segments if segment.model is not None]
    starts = {segment.layers[0]: segment for segment in loaded}
    inside = {name for segment in loaded for name in segment.layers[1:]}
    tensors = {name: np.asarray(value) for name, value in inputs.items()}
    reports = []
    for layer in graph.layers:
        if layer.name in inside:
            continue
        segment = starts.get(layer.name)
        if segment is None:
            reports.append(run_layer_on(graph, layer, tensors, device))
        else:
            reports.append(_run_segment(graph, segment, tensors, device))
        if progress:
            progress(layer, reports[-1])
    return {io.name: tensors[io.name] for io in graph.outputs}, reports, one_time


def _run_segment(graph, segment, tensors, device):
    x = tensors[segment.input]
    model = segment.model
    images = _to_int8(x).reshape(len(x), *model.in_shape)
    y, run = device.infer(model, images)
    out_dtype = graph.tensors[segment.output].dtype
    tensors[segment.output] = _from_int8(y, out_dtype).reshape(len(x), *_image_shape(graph, segment.output))
    name = segment.layers[0] if len(segment.layers) == 1 else f"{segment.layers[0]}..{segment.layers[-1]}"
    return LayerReport(name, _kinds(graph, segment), "device", macs=run.macs, cycles=run.cycles,
                       utilization=run.utilization, counters=run.counters,
                       energy_pj=layer_energy(device.cfg, run.counters), resident=True)


def _kinds(graph, segment):
    """A segment's compute layers' kinds, repeats counted: "Conv", "Conv+Gemm", "Gemm x10"."""
    kinds = [layer.kind for layer in map(graph.layer, segment.layers) if isinstance(layer, (Conv, Gemm))]
    runs = [[kinds[0], 1]]
    for kind in kinds[1:]:
        if kind == runs[-1][0]:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    return "+".join(kind if count == 1 else f"{kind} x{count}" for kind, count in runs)
