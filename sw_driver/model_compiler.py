"""Whole-model compilation: the runs of layers a device can keep resident, compiled once, and the rest of the
graph as the model runner runs it.

A *segment* is a run of consecutive layers the device runs (Conv, Gemm and GlobalAveragePool on the array,
MaxPool and Add on the vector unit; Flatten and Reshape where they only drop unit dimensions) that reads one
tensor from outside, begins on the array, and whose tensors other than its output no layer outside
reads: a residual block, say, whose skip map stays on chip until its Add. It runs as one
:class:`~tessera.sw_driver.resident.ResidentModel`, its feature maps in the activation and vector buffers, its
weights and program loaded once. Each segment has its own part of the weight, parameter and program memories, so every
segment of a model stays loaded at once. The other layers run as :func:`~tessera.sw_driver.model_runner.run_graph_on`
runs them (one device program each, or the host); the tensors between them and the segments cross the link.
"""

import dataclasses

import numpy as np

from tessera.sw_driver import golden
from tessera.sw_driver.compiler import TilingError
from tessera.sw_driver.energy import layer_energy
from tessera.sw_driver.layers import Add, AveragePool, Conv, Flatten, Gemm, GlobalAveragePool, MaxPool, Reshape
from tessera.sw_driver.model_runner import (
    LayerReport,
    _add_params,
    _conv_weights,
    _device_params,
    _from_int8,
    _gemm_weights,
    _to_int8,
    device_placement,
    run_layer_on,
)
from tessera.sw_driver.resident import AddStep, DeviceLayer, PoolStep, Step, compile_resident

__all__ = ["COMPUTE_KINDS", "Segment", "compile_model", "find_segments", "load_segments", "residency", "run_model"]

#: The layer kinds that compute (the others reshape or convert): what "layers resident" counts.
COMPUTE_KINDS = ("Conv", "Gemm", "Add", "MaxPool", "AveragePool", "GlobalAveragePool")


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


def _gap_layer(graph, layer):
    """A GlobalAveragePool (or an AveragePool of one window over the whole map: onnxruntime computes it as one) as
    a :class:`DeviceLayer`: a conv whose one kernel covers the map, of ones on each
    channel's own input (the integers the model runner's product by a column of ones computes), or why not."""
    shape = _image_shape(graph, layer.inputs[0])
    if shape is None or len(shape) != 3:
        return "its input's shape is not a known (C, H, W) map"
    channels, h, w = shape
    xp, yp = layer.x_params, layer.y_params
    try:    # onnxruntime refuses scales outside [2**-32, 256); so does the golden model, with the reason
        golden.global_avgpool(np.zeros((1, 1, h, w), np.int8), xp.scale, xp.zero_point, yp.scale, yp.zero_point)
    except ValueError as error:
        return str(error)
    scale = np.float32(xp.scale) / (np.float32(yp.scale) * np.float32(h * w))   # MLAS's order, as the runner's
    x_zp = xp.zero_point - 128 if xp.dtype == np.uint8 else xp.zero_point
    y_zp = yp.zero_point - 128 if yp.dtype == np.uint8 else yp.zero_point
    ones = np.zeros((channels, channels, h, w), np.int8)
    ones[np.arange(channels), np.arange(channels)] = 1
    bias = golden.fold_input_zero_point(np.zeros(channels, np.int32), int(x_zp), ones, output_axis=0)
    return DeviceLayer(w=ones, bias=bias, scale=np.full(channels, scale, np.float32), y_zp=int(y_zp),
                       pad_value=int(x_zp), macs_per_pixel=channels * h * w, channelwise=True)


def _step_op(graph, layer, cfg):
    """What ``layer`` is in a resident model: a DeviceLayer, PoolStep or AddStep, ``ALIAS`` (a unit reshape),
    or None (not one the device keeps on chip)."""
    if _unit_reshape(graph, layer):
        return ALIAS
    if isinstance(layer, AveragePool):   # one window over the whole unpadded map is a global average pool
        whole = (_image_shape(graph, layer.inputs[0]) or (0,))[1:] == tuple(layer.kernel) and not any(layer.pads)
        if not whole or graph.onnxruntime_path(layer.name) == "float" or cfg.multiplier != "exact":
            return None
        op = _gap_layer(graph, layer)
        return op if isinstance(op, DeviceLayer) else None
    if _image_shape(graph, layer.outputs[0]) is None or device_placement(graph, layer, cfg) != (True, ""):
        return None
    if isinstance(layer, (Conv, Gemm)):
        return _device_layer(layer) if _chainable(graph, layer, cfg) else None
    if isinstance(layer, GlobalAveragePool):
        op = _gap_layer(graph, layer)
        return op if isinstance(op, DeviceLayer) else None
    if isinstance(layer, MaxPool):
        return PoolStep(kernel=tuple(layer.kernel), strides=tuple(layer.strides), pads=tuple(layer.pads))
    if isinstance(layer, Add):
        return AddStep(_add_params(graph, layer))
    return None


#: A unit reshape's place in a resident model: it names the tensor before it again.
ALIAS = "alias"


@dataclasses.dataclass
class _Run:
    """Consecutive layers that could stay on chip together, the first on the array: their names, ops (or the
    reason the first cannot be a DeviceLayer), and the ends of their prefixes that could be segments."""
    input: str
    layers: list
    ops: list
    ends: list


def _next_run(graph, cfg, index):
    """The graph's next run (see :class:`_Run`) from layer ``index`` on, and the index of its first layer; None if
    there is none. A run grows while the next layer reads only tensors of the run; a prefix can be a segment if it
    leaves only its last tensor to the layers after it."""
    readers = {}
    for at, layer in enumerate(graph.layers):
        for name in layer.inputs:
            readers.setdefault(name, []).append(at)
    graph_outputs = {io.name for io in graph.outputs}
    for start in range(index, len(graph.layers)):
        first = graph.layers[start]
        op = _step_op(graph, first, cfg) if isinstance(first, (Conv, Gemm, GlobalAveragePool, AveragePool)) else None
        if op is not None:
            break
    else:
        return None
    run = _Run(first.inputs[0], [first], [op], [])
    known = {first.inputs[0], first.outputs[0]}
    while isinstance(op, DeviceLayer) and start + len(run.layers) < len(graph.layers):
        layer = graph.layers[start + len(run.layers)]
        step = _step_op(graph, layer, cfg)
        alias_elsewhere = step is ALIAS and layer.inputs[0] != run.layers[-1].outputs[0]
        if step is None or alias_elsewhere or not set(layer.inputs) <= known:
            break
        run.layers.append(layer)
        run.ops.append(step)
        known.add(layer.outputs[0])
    for end in range(1, len(run.layers) + 1):
        last = next(op for op in reversed(run.ops[:end]) if op is not ALIAS)
        inside = set(range(start, start + end))
        escaping = {name for layer in run.layers[:end] for name in layer.outputs
                    if name in graph_outputs or set(readers.get(name, [])) - inside}
        if not isinstance(last, str) and escaping <= {run.layers[end - 1].outputs[0]}:
            run.ends.append(end)
    return start, run


def _steps(run, end):
    """The first ``end`` layers of a run as resident steps (tensor 0 the run's input)."""
    tensors, steps = {run.input: 0}, []
    for layer, op in zip(run.layers[:end], run.ops[:end], strict=True):
        if op == ALIAS:
            tensors[layer.outputs[0]] = tensors[layer.inputs[0]]
        else:
            steps.append(Step(op, tuple(tensors[name] for name in layer.inputs)))
            tensors[layer.outputs[0]] = len(steps)
    return steps


def find_segments(graph, cfg):
    """The graph's longest candidate segments, in order, uncompiled (see the module docstring)."""
    segments, index = [], 0
    while (found := _next_run(graph, cfg, index)) is not None:
        start, run = found
        if run.ends:
            end = run.ends[-1]
            segments.append(Segment([layer.name for layer in run.layers[:end]], run.input,
                                    run.layers[end - 1].outputs[0]))
        index = start + (run.ends[-1] if run.ends else 1)
    return segments


def compile_model(graph, cfg, batch=1, *, fold_row_taps=False):
    """Find the graph's resident segments and compile each for ``cfg``, each for runs of up to ``batch`` images
    (as many as its feature maps and program fit). A segment that does not fit is cut after the longest prefix
    that does; a layer that does not fit even alone, for one image, is left out with the reason (it then runs one
    by one).

    The segments' weights and parameters are stacked at the top of their buffers, one segment below the other in
    graph order, so that every segment stays loaded and the layers run one by one, whose programs fill those
    buffers from the bottom, rarely reach them (where one does, the device loads the segment again:
    ``Device.infer``). Their programs stack from the bottom of the program memory. ``fold_row_taps``: the host may fold
    a first layer's kernel row taps into channels (:func:`~tessera.sw_driver.resident.compile_resident`)."""
    placed = _Placement(cfg, fold_row_taps)
    compiled, index = [], 0
    while (found := _next_run(graph, cfg, index)) is not None:
        start, run = found
        if isinstance(run.ops[0], str):    # a conv or Gemm that cannot be a DeviceLayer, and why
            segment = Segment([run.layers[0].name], run.input, run.layers[0].outputs[0], reason=run.ops[0])
        else:
            segment = _fitting_segment(graph, run, placed, batch)
        compiled.append(segment)
        index = start + len(segment.layers)
    return compiled


class _Placement:
    """Where the next segment goes: below the weights and parameters of those before it, after their programs,
    and above the words any of them streams its layers' weights into."""

    def __init__(self, cfg, fold_row_taps):
        self.cfg, self.fold_row_taps = cfg, fold_row_taps
        self.top = {"weight": cfg.weight_depth, "param": cfg.param_depth}
        self.program = 0
        self.stream = 0     # the weight buffer's bottom words that streamed layers load

    def compile(self, steps, in_shape, batch):
        """The steps compiled at the next place for runs of up to ``batch`` images: of the run sizes that fit
        (fewer images never need more room), the largest that wastes fewest images on ``batch`` (a run computes
        all its images); TilingError, for one image, if none fits."""
        try:
            return self._compile_at(steps, in_shape, batch)
        except TilingError as error:
            failure = error
        low, high, best = 1, batch - 1, None
        while low <= high:
            middle = (low + high) // 2
            try:
                best, low = self._compile_at(steps, in_shape, middle), middle + 1
            except TilingError as error:
                failure, high = error, middle - 1
        if best is None:
            raise failure
        fits = best.batch
        size = min(range(1, fits + 1), key=lambda size: (-(-batch // size) * size, -size))
        return best if size == fits else self._compile_at(steps, in_shape, size)

    def _compile_at(self, steps, in_shape, batch):
        # sized where it would start at the bottom, then placed below the segments before it
        cfg = self.cfg
        room = {"weight_top": self.top["weight"], "stream_floor": self.stream}
        fold = self.fold_row_taps
        plan = compile_resident(cfg, steps, in_shape, batch=batch, bases=room, fold_row_taps=fold).plan
        bases = {"weight": self.top["weight"] - plan["weight_words"], "param": self.top["param"] - plan["param_words"],
                 "program": self.program, **room}
        for buffer in ("weight", "param"):
            if bases[buffer] < 0:
                raise TilingError(f"with the segments before it, its {buffer} words ({plan[buffer + '_words']} of "
                                  f"them) do not fit {buffer}_depth={getattr(cfg, buffer + '_depth')}; "
                                  f"{self.top[buffer]} are left")
        return compile_resident(cfg, steps, in_shape, bases=bases, batch=batch, fold_row_taps=fold)

    def take(self, model):
        bases = model.plan["bases"]
        self.top = {"weight": bases["weight"], "param": bases["param"]}
        self.program += model.plan["program_words"]
        self.stream = max(self.stream, model.plan["stream_words"])


def _fitting_segment(graph, run, placed, batch):
    """A run's longest prefix that fits as a segment (fewer layers never need more room), or its first layer with
    the reason it does not stay resident; the rest of the run is searched again for runs."""
    in_shape = _as_map(_image_shape(graph, run.input))
    low, high, best, reason = 0, len(run.ends) - 1, None, ""
    while low <= high:
        middle = (low + high) // 2
        try:
            best, low = (run.ends[middle], placed.compile(_steps(run, run.ends[middle]), in_shape, batch)), middle + 1
        except TilingError as error:
            reason, high = f"does not stay resident on this configuration: {error}", middle - 1
    end = best[0] if best else 1
    names, output = [layer.name for layer in run.layers[:end]], run.layers[end - 1].outputs[0]
    if best:
        placed.take(best[1])
        computing = [layer.name for layer, op in zip(run.layers[:end], run.ops[:end], strict=True) if op is not ALIAS]
        best[1].plan["streamed_layers"] = [computing[i] for i in best[1].plan["streamed_steps"]]
        return Segment(names, run.input, output, best[1])
    return Segment(names, run.input, output, reason=reason)


def residency(graph, segments):
    """How much of ``graph`` its compiled ``segments`` keep on chip: its compute layers resident of all, the
    layers whose weights stream with every run, why the others run one by one, whether the model is whole on chip
    (every compute layer resident, no weights streamed), and the words it takes of each memory (the weights'
    streaming words included; of the activation and vector buffers, the most any segment takes)."""
    models = [segment.model for segment in segments if segment.model is not None]
    resident = sum(graph.layer(name).kind in COMPUTE_KINDS
                   for segment in segments if segment.model is not None for name in segment.layers)
    compute = sum(layer.kind in COMPUTE_KINDS for layer in graph.layers)
    streamed = [name for model in models for name in model.plan.get("streamed_layers", [])]

    def map_words(buffer):
        return max((tensor[f"{buffer}_words"][1] for model in models for tensor in model.plan["tensors"]), default=0)

    return {"resident_layers": resident, "compute_layers": compute, "streamed_layers": streamed,
            "whole": 0 < resident == compute and not streamed,
            "not_resident": [f"{segment.layers[0]}: {segment.reason}" for segment in segments if segment.model is None],
            "weight_words": sum(model.plan["weight_words"] for model in models)
            + max((model.plan["stream_words"] for model in models), default=0),
            "param_words": sum(model.plan["param_words"] for model in models),
            "program_words": sum(model.plan["program_words"] for model in models),
            "act_words": map_words("act"), "vec_words": map_words("vec")}


def load_segments(device, segments):
    """Load the compiled segments onto ``device``, once; returns the LayerRun of the load (its counters), or None
    if no segment compiled."""
    models = [segment.model for segment in segments if segment.model is not None]
    return device.load_resident(models) if models else None


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
    streamed = model.plan.get("streamed_layers", [])
    reason = f"weights streamed with every run (they do not all fit): {', '.join(streamed)}" if streamed else ""
    return LayerReport(name, _kinds(graph, segment), "device", reason=reason, macs=run.macs, cycles=run.cycles,
                       utilization=run.utilization, counters=run.counters,
                       energy_pj=layer_energy(device.cfg, run.counters), resident=True)


def _kinds(graph, segment):
    """A segment's compute layers' kinds, repeats counted: "Conv", "Conv+Gemm", "Gemm x10"."""
    kinds = [layer.kind for layer in map(graph.layer, segment.layers) if not isinstance(layer, (Flatten, Reshape))]
    runs = [[kinds[0], 1]]
    for kind in kinds[1:]:
        if kind == runs[-1][0]:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    return "+".join(kind if count == 1 else f"{kind} x{count}" for kind, count in runs)
