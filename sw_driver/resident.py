"""Resident models: a chain of layers compiled once into the device's own memories, so that an inference is
"load the input, RUN, read the result".

The weights, biases and scales of every layer are loaded once into the weight and parameter buffers, and the
instructions into the program memory (``program_depth``). Each layer reads its input feature map from the
activation buffer and writes its output there (``store`` commands), in the layout the next layer reads
(:func:`tessera.hw.layouts.fmap_word`); only the last layer's rows go to the host, as RESULT packets. The
activation buffer is planned statically over the tensors' lifetimes (:func:`plan_memory`).

A model is a list of :class:`Step`: a :class:`DeviceLayer` on the array (a convolution in the int8 domain, as the
model runner hands the device; a fully connected layer is a 1x1 convolution over a 1x1 map whose channels are its
inputs), or a :class:`PoolStep` or :class:`AddStep` on the vector unit. A tensor that a vector step reads lives in
the vector buffer (pixel by pixel, four channels a word); one an array layer reads, in the activation buffer; one
both read is written into the vector buffer and copied into the activation buffer by a 1x1 pool. A plain list of
DeviceLayers is a chain, each reading the one before.
"""

import bisect
import dataclasses
import math
from typing import NamedTuple

import numpy as np

from tessera.hw.isa import INSTRUCTION_WORDS, LANES_PER_WORD, BufferId, Opcode, WaitUnit, result_row_words
from tessera.hw.layouts import MAX_CONV_SIDE, StoreTarget
from tessera.sw_driver.compiler import (
    Program,
    TilingError,
    _dense_conv_tiles,
    _depthwise_plan,
    _fmap_words,
    _GemmTiles,
    _weight_tile_plan,
    check_gemm_operands,
    command_rows,
    conv_as_gemm_weights,
    conv_limits_violation,
    conv_output_shape,
    rs_filter_shape,
    rs_group_weights,
)
from tessera.sw_driver.depthwise import depthwise_eligible, fold_positions
from tessera.sw_driver.isa_encode import instruction, load, stored_program
from tessera.sw_driver.resident_schedule import Task, schedule
from tessera.sw_driver.space_to_depth import input_fold

__all__ = ["AddStep", "DeviceLayer", "PoolStep", "ResidentModel", "Step", "compile_resident", "plan_groups",
           "plan_memory"]

#: The accelerator's own link (``host_in``, as simulated): a 32-bit word a cycle.
_STREAM_BYTES_PER_CYCLE = 4.0


@dataclasses.dataclass(frozen=True)
class DeviceLayer:
    """One layer of a resident model, as the array computes it: ``requantize(conv(x, w) + bias, scale, y_zp)``
    with int8 ``w`` (O, C, KH, KW), the input zero point folded into the int32 ``bias`` and read as padding
    (``pad_value``)."""
    w: np.ndarray
    bias: np.ndarray
    scale: np.ndarray
    y_zp: int
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    pad_value: int = 0
    macs_per_pixel: int = None   # the layer's own MACs per output pixel (a grouped conv's, not its dense zeros')
    # each output channel sums only its own input channel, with weight 1 (a global average pool): on an array as
    # wide as it is tall, the map it reads may lie channel block by channel block (_Compilation.block_major)
    channelwise: bool = False

    @property
    def own_macs_per_pixel(self):
        return self.macs_per_pixel if self.macs_per_pixel is not None else int(np.prod(self.w.shape))

    @property
    def kernel(self):
        return self.w.shape[2:]

    def output_shape(self, in_shape):
        """(O, out_h, out_w) for an input (C, H, W)."""
        _, in_h, in_w = in_shape
        out_h, out_w = conv_output_shape(in_h, in_w, *self.kernel, self.strides[0], self.pads)
        return self.w.shape[0], out_h, out_w


class _LayerTiles(NamedTuple):
    tiles: list          # each output tile as its commands run it (a compiler _ConvTile), every one: its outputs
    bias: np.ndarray     # are stored for the next layer
    scale: np.ndarray
    geometry: dict
    whole_maps: bool

    @property
    def tile_words(self):
        return [len(tile.weights) for tile in self.tiles]


class _RsTiles(NamedTuple):
    groups: list         # ranges of consecutive filters, a command each
    weights: list        # each group's weight words
    tile_words: list
    geometry: dict
    chunks: int
    pass_cycles: int     # a filter's MACs per output column over all passes (the array's steps)
    whole_maps: bool
    x_offsets: list      # where each group's command reads the map, from the map's first word


@dataclasses.dataclass(frozen=True)
class PoolStep:
    """Max pooling on the vector unit, as onnxruntime's MaxPool (padding never wins)."""
    kernel: tuple
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)

    def output_shape(self, in_shape):
        channels, in_h, in_w = in_shape
        return (channels, *conv_output_shape(in_h, in_w, *self.kernel, self.strides[0], self.pads))


#: The 1x1 pool that copies a map from the vector buffer into the activation buffer.
COPY = PoolStep(kernel=(1, 1))


@dataclasses.dataclass(frozen=True, eq=False)
class AddStep:
    """A quantized add of two maps of one shape on the vector unit; ``params`` are its VEC_SETUP fields
    (:func:`tessera.sw_driver.vector_compiler.add_params_for`)."""
    params: dict

    def output_shape(self, in_shape):
        return in_shape


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a resident model: ``op`` reads ``inputs`` (0: the model's input; ``i + 1``: step ``i``'s
    output)."""
    op: object
    inputs: tuple


def _setup(cfg, opcode, **geometry):
    """A CONV_SETUP or POOL_SETUP instruction; TilingError (the layer then runs one by one) where the geometry
    exceeds the instruction's fields, e.g. more than 255 channel blocks a pixel."""
    try:
        return instruction(cfg, opcode, **geometry)
    except ValueError as error:
        raise TilingError(f"its geometry does not fit {opcode.name}: {error}") from None


def plan_memory(sizes, lifetimes, depth, buffer="act"):
    """Offsets for tensors of ``sizes`` words, each live over ``lifetimes[i] = (first, last)`` steps inclusive,
    in a buffer of ``depth`` words: two tensors share words only if their lifetimes do not overlap. First fit,
    largest tensors first (a tensor freed early leaves its words to the later ones). Raises TilingError if they
    do not fit."""
    return plan_groups([[(0, size, lifetime)] for size, lifetime in zip(sizes, lifetimes, strict=True)], depth,
                       buffer)


def _clashes(base, group, placed):
    """Whether ``group`` at ``base`` takes words that a tensor ``placed`` takes while both live."""
    return any(start < base + offset + size and base + offset < end and first <= life[1] and life[0] <= last
               for offset, size, life in group for start, end, first, last in placed)


def plan_groups(groups, depth, buffer="act"):
    """:func:`plan_memory` of groups of tensors, each ``[(offset in the group, size, (first, last)), ...]``: a
    group's tensors keep their offsets from one another (a layer that writes its output over its own input), and
    each takes its words only while it lives. Returns each group's first word; first fit, widest groups first."""
    spans = [max(offset + size for offset, size, _ in group) for group in groups]
    placed, bases = [], [None] * len(groups)     # placed: (start, end, first, last)
    for g in sorted(range(len(groups)), key=lambda g: (-spans[g], min(life for _, _, life in groups[g]))):
        # (the lowest base that fits puts the group at 0, or one of its tensors right after one placed)
        candidates = sorted({0} | {end - offset for offset, _, life in groups[g] for _, end, first, last in placed
                                   if first <= life[1] and life[0] <= last and end >= offset})
        base = next(base for base in candidates if not _clashes(base, groups[g], placed))
        if base + spans[g] > depth:
            need = base + spans[g]
            raise TilingError(f"the feature maps live at once need {need} {buffer} buffer words; {buffer}_depth is "
                              f"{depth} (accepted: {buffer}_depth >= {need} for this model, or --per-layer)")
        bases[g] = base
        placed += [(base + offset, base + offset + size, *life) for offset, size, life in groups[g]]
    return bases


@dataclasses.dataclass
class ResidentModel:
    """A chain of layers compiled for residency on a device of ``cfg``.

    ``load_words`` stores the weights, parameters and program (sent once); ``inference_words(x)`` loads up to
    ``batch`` inputs and runs the program, which computes ``batch`` images back to back (the feature maps of each
    image in their own words); ``assemble`` turns the RESULT packets of one run into the ``batch`` outputs
    (batch, O, out_h, out_w). ``plan`` says where each tensor lives."""
    cfg: object
    batch: int
    in_shape: tuple
    out_shape: tuple
    load_words: np.ndarray
    run_words: np.ndarray
    input_base: int
    outputs: list            # (image, first pixel, first channel, rows) of the last layer's commands
    macs: int
    plan: dict               # what lives where: tensors' activation words, weight and parameter words
    # fully connected chains: the program computes the batch's images as the pixels of one 1 x batch map (each
    # command then covers many images, as a GEMM's rows do)
    images_as_pixels: bool = False
    # the last step is on the vector unit: its maps leave as VECTOR packets, ``outputs`` their images in order
    vector_out: bool = False
    # (program section, LOAD words): the weights of a streamed layer, which the host sends before that section
    stream_loads: list = dataclasses.field(default_factory=list)
    # row-stationary arrays: the output columns of each filter in the last layer's commands (its geometry's out_w;
    # the batch's images where it reads them as the pixels of one map)
    result_columns: int = 0
    # ... and their lanes are the batch's images, not output rows (a whole-map layer, or a fully connected chain,
    # reads the images as the pixels of one column, so that each command computes ``cols`` of them at once)
    images_as_rows: bool = False
    # the host folds each input image space-to-depth (its first layer's window, strided, exceeds the device's)
    input_fold: object = None

    @property
    def commands(self):
        return len(self.outputs)

    def input_words(self, x):
        """The LOADs of input images x (N, C, H, W) int8, N from 1 to ``batch``, one per image into its place in the
        activation buffer (a run computes ``batch`` images whatever N is: the outputs past N are dropped)."""
        x = np.asarray(x)
        if x.dtype != np.int8 or x.ndim != 4 or x.shape[1:] != tuple(self.in_shape) or not 1 <= len(x) <= self.batch:
            shape = ", ".join(map(str, self.in_shape))
            raise ValueError(f"a resident model's input is int8 [1 to {self.batch}, {shape}]; got "
                             f"{x.dtype}{list(x.shape)}")
        if self.input_fold is not None:
            x = self.input_fold.input(x)
        channels, rows = x.shape[1], self.cfg.rows
        if self.images_as_pixels:    # (one map, whose pixels lie one after another, in a row or a column alike)
            x = x.reshape(len(x), channels).T.reshape(1, channels, 1, len(x))
        fmap = np.zeros((len(x), *x.shape[2:], math.ceil(channels / rows) * rows), np.int8)
        fmap[..., :channels] = x.transpose(0, 2, 3, 1)
        words = [_fmap_words(image, rows) for image in fmap]
        # a map of fewer channels than a word's lanes crosses the link packed, without its words' padding
        lanes = channels if channels < rows else 0
        return [load(self.cfg, BufferId.ACT, self.input_base + i * len(w), w, lanes=lanes)
                for i, w in enumerate(words)]

    def inference_words(self, x):
        """Link words of one run: each image's LOAD and the RUN of its program section, then the RUNs of the rest,
        each after the weights of the streamed layer it starts (the sections of images not given run all the same,
        on whatever their words hold)."""
        loads = self.input_words(x)
        streamed = {}
        for section, words in self.stream_loads:
            streamed.setdefault(section, []).append(words)
        runs = self.run_words.reshape(-1, INSTRUCTION_WORDS)
        return np.concatenate([word for i, run in enumerate(runs)
                               for word in (*streamed.get(i, []), *loads[i:i + 1], run)])

    def _vector_words(self):
        """Words of each VECTOR packet of a model whose last step is on the vector unit: one image's map."""
        channels, out_h, out_w = self.out_shape
        return out_h * out_w * math.ceil(channels / LANES_PER_WORD)

    def reply_words(self):
        if self.vector_out:
            return len(self.outputs) * (1 + self._vector_words())
        return sum(1 + rows * result_row_words(self.cfg) for _, _, _, rows in self.outputs)

    def assemble(self, results):
        """The ``batch`` outputs (batch, O, out_h, out_w) of one run's RESULT packets (or VECTOR packets, one per
        image, where the last step is on the vector unit)."""
        out_channels, out_h, out_w = self.out_shape
        if self.vector_out:
            y = np.zeros((self.batch, out_channels, out_h, out_w), np.int8)
            for image, body in zip(self.outputs, results, strict=True):
                words = np.asarray(body, np.int8).reshape(out_h, out_w, -1)
                y[image] = words[..., :out_channels].transpose(2, 0, 1)
            return y
        if self.cfg.dataflow == "rs":
            return self._assemble_columns(results)
        pixels = out_h * out_w
        outputs = [(image * pixels + p0, n0, rows) for image, p0, n0, rows in self.outputs]
        program = Program(words=np.zeros(0, np.uint32), outputs=outputs, m=self.batch * pixels, n=out_channels,
                          macs=self.macs)
        y = program.assemble(results, self.cfg.cols)    # (images x pixels, channels), or (pixels = images, ...)
        return y.reshape(self.batch, out_h, out_w, out_channels).transpose(0, 3, 1, 2)


    def _assemble_columns(self, results):
        """The outputs of a row-stationary model: each command's rows are its filters' output columns, their lanes
        the output rows from the command's first (or the batch's images from that one)."""
        out_channels, out_h, out_w = self.out_shape
        y = np.zeros((self.batch, out_channels, out_h, out_w), np.int8)
        for (image, oy0, f0, rows), block in zip(self.outputs, results, strict=True):
            block = np.asarray(block, np.int8).reshape(rows // self.result_columns, self.result_columns, -1)
            filters = slice(f0, f0 + len(block))
            if self.images_as_rows:
                valid = min(self.cfg.cols, self.batch - oy0)
                y[oy0:oy0 + valid, filters, 0, 0] = block[:, 0, :valid].T
            else:
                valid = min(self.cfg.cols, out_h - oy0)
                y[image, filters, oy0:oy0 + valid] = block[..., :valid].transpose(0, 2, 1)
        return y


def compile_resident(cfg, layers, in_shape, bases=None, batch=1, *, fold_row_taps=False):
    """Compile ``layers`` (a list of :class:`Step`, or a chain of :class:`DeviceLayer` each reading the one before)
    for an input of ``in_shape`` (C, H, W) into a :class:`ResidentModel` for ``cfg`` (any dataflow). ``bases``
    (``{"weight", "param", "program"}``, default all 0) are the first words of those memories the model may take:
    other models stay loaded below them.
    ``bases["weight_top"]`` (default weight_depth) and ``bases["stream_floor"]`` (default 0) bound the weight
    words it may use: where its weights do not fit, the largest layers' are streamed (the host sends them with
    every run, into the bottom words) and the rest stay resident.
    A run computes ``batch`` images, step by step (each step's setup once for all of them).
    With ``fold_row_taps``, the host may fold a first layer's kernel row taps into channels, where that is faster
    (:func:`_input_folds`): its input then crosses the link that many times over, past the on-chip issue's 1.5 x
    the model's own input and output bytes, so only where asked.

    Raises TilingError, naming what does not fit, if the weights, parameters, feature maps or program do not
    fit the configuration's buffers, or a step is not one the device keeps on chip."""
    if not layers:
        raise TilingError("a resident model needs at least one layer")
    if all(isinstance(step, Step) and isinstance(step.op, DeviceLayer) and step.inputs == (index,)
           for index, step in enumerate(layers)):
        layers = [step.op for step in layers]    # a chain
    chain = all(isinstance(layer, DeviceLayer) for layer in layers)
    if chain and batch > 1 and _fully_connected(layers, in_shape):
        # (a row-stationary array computes cols output rows at once: there, the images are a column's pixels)
        rows_stationary = cfg.dataflow == "rs"
        model = compile_resident(cfg, layers, (in_shape[0], *((batch, 1) if rows_stationary else (1, batch))), bases)
        return dataclasses.replace(model, batch=batch, in_shape=tuple(in_shape), out_shape=(model.out_shape[0], 1, 1),
                                   images_as_pixels=True, images_as_rows=rows_stationary)
    steps = [Step(layer, (index,)) for index, layer in enumerate(layers)] if chain else list(layers)
    bases = {"weight": 0, "param": 0, "program": 0, "weight_top": cfg.weight_depth, "stream_floor": 0,
             **(bases or {})}
    failure = None
    for fold in _input_folds(cfg, steps, in_shape, fold_row_taps):   # (a larger input may not fit)
        try:
            if fold is None:
                return _Compilation(cfg, steps, tuple(in_shape), bases, batch).model()
            first = steps[0].op
            folded = DeviceLayer(w=fold.weights(first.w), bias=first.bias, scale=first.scale, y_zp=first.y_zp,
                                 pad_value=first.pad_value, macs_per_pixel=first.own_macs_per_pixel)
            model = _Compilation(cfg, [Step(folded, (0,)), *steps[1:]], fold.folded_shape(in_shape[0]), bases,
                                 batch).model()
            return dataclasses.replace(model, in_shape=tuple(in_shape), input_fold=fold)
        except TilingError as error:
            failure = failure or error
    raise failure


def _input_folds(cfg, steps, in_shape, fold_row_taps):
    """The ways to send the model's input, fastest first (:mod:`tessera.sw_driver.space_to_depth`; None: as it
    is), where its first layer alone reads it. Folded space-to-depth where that layer's strided window exceeds the
    device's, or (ws, os) where folded it takes fewer cycles, the array's and the word stream's for its input: a
    dense first layer of few channels fills more of the array's rows (3 channels at stride 2 become 12; with
    ``fold_row_taps``, a 3x3 kernel's row over 3 channels, 9, for an input that crosses the link 3 times over).
    The first that fits wins."""
    first = steps[0]
    if not isinstance(first.op, DeviceLayer) or first.inputs != (0,) or any(0 in step.inputs for step in steps[1:]):
        return [None]
    layer = first.op
    violation = conv_limits_violation(layer.kernel, layer.strides, layer.pads)
    out_shape = layer.output_shape(in_shape)
    # (a depthwise layer runs as depthwise commands, whose folds a dense fold would only multiply)
    dense = not depthwise_eligible(cfg, layer.w, layer.strides, out_shape[2])
    candidates = [] if violation else [None]
    for row_taps in (False, True) if dense and fold_row_taps else (False,):
        fold = input_fold(layer.kernel, layer.strides, layer.pads, in_shape[1:], row_taps=row_taps)
        if fold is not None and (violation or cfg.dataflow != "rs") and not (row_taps and cfg.dataflow == "rs"):
            candidates.append(dataclasses.replace(fold, pad_value=int(layer.pad_value)))

    def cycles(fold):
        kernel, shape = (layer.kernel, in_shape) if fold is None else (fold.folded_kernel,
                                                                        fold.folded_shape(in_shape[0]))
        channels, height, width = shape
        array = (math.prod(kernel) * math.ceil(channels / cfg.rows) * math.prod(out_shape[1:])
                 * math.ceil(out_shape[0] / cfg.cols))
        lanes = channels if channels < cfg.rows else math.ceil(channels / cfg.rows) * cfg.rows  # (packed: load)
        return array + height * width * lanes / _STREAM_BYTES_PER_CYCLE

    # (of equal cycles, the plain layer, then space-to-depth, before a row's taps)
    return sorted(candidates, key=cycles) or [None]


class _Compilation:
    """One resident model's compilation: each tensor's shape and home, the memory plan, then each step's
    instructions."""

    def __init__(self, cfg, steps, in_shape, bases, batch):
        self.cfg, self.steps, self.bases, self.batch = cfg, steps, bases, batch
        self.shapes = self._shapes(in_shape)
        self._homes()
        self.block_major = {self.steps[i].inputs[0] for i in range(len(steps))
                            if self._on_array(i) and self._reads_by_block(i)}
        self._check_windows()
        self._tile_cache, self.stream_loads = {}, {}
        self.ops, self.act_offsets, self.vec_offsets = self._plan()
        self.streamed = self._streamed()
        self.stream_words = max([0] + [sum(self._tiles(i).tile_words) for i in self.streamed])
        # the resident weights above every stream's words (this model's and the models' loaded before it)
        self.bases = {**bases, "weight": max(bases["weight"], bases["stream_floor"], self.stream_words)}
        self.weights, self.params, self.outputs = [], [], []
        self.weight_base, self.param_base = self.bases["weight"], bases["param"]
        self.array_cycles = self.vector_cycles = 0
        self.result_columns, self.images_as_rows = 0, False

    def _shapes(self, in_shape):
        """(C, H, W) of every tensor, after checking that each step is one the device keeps on chip."""
        cfg, shapes = self.cfg, [in_shape]
        for index, step in enumerate(self.steps):
            op = step.op
            if not step.inputs or any(not 0 <= t <= index for t in step.inputs):
                raise TilingError(f"step {index} reads tensors {list(step.inputs)}; it may read 0 (the input) to "
                                  f"{index}")
            shape = shapes[step.inputs[0]]
            if isinstance(op, DeviceLayer):
                if op.w.shape[1] != shape[0]:
                    raise TilingError(f"layer {index} reads {op.w.shape[1]} channels; its input has {shape[0]}")
                violation = None     # (its window: once the maps' homes are known, _check_windows)
            elif isinstance(op, PoolStep):
                violation = conv_limits_violation(op.kernel, op.strides, op.pads)
            elif isinstance(op, AddStep):
                if len(step.inputs) != 2 or shapes[step.inputs[1]] != shape:
                    raise TilingError(f"step {index} adds {[shapes[t] for t in step.inputs]}: an add takes two maps "
                                      f"of one shape")
                violation = None
            else:
                raise TilingError(f"step {index} is a {type(op).__name__}; a resident model takes DeviceLayer, "
                                  f"PoolStep and AddStep")
            if violation:
                raise TilingError(f"layer {index}: {violation}")
            if not isinstance(op, DeviceLayer) and cfg.vec_depth == 0:
                raise TilingError(f"step {index} needs the vector unit, and this configuration has none (vec_depth "
                                  f"= 0)")
            shapes.append(op.output_shape(shape))
        return shapes

    def _reads_by_block(self, index):
        """Whether array layer ``index`` reads a map that lies channel block by channel block, image by image, pixel
        by pixel ([block][image][pixel], one word each) rather than pixel by pixel: it is a channelwise layer (a
        global pool) on an array whose rows are a whole number of its columns (or a row-stationary one), and the
        only reader of a map the array writes. Each of its output tiles (filter groups) then reads only the channel
        block its channels lie in: its commands step through the map's pixels, not all its words."""
        layer, (source,) = self.steps[index].op, self.steps[index].inputs
        channels, h, w = self.shapes[source]
        # the map's writer: a layer on the array, or the copy of a map the vector unit wrote (an add's), which
        # copies it block by block where a block is whole vector words (_copy_by_block)
        written = self._on_array(source - 1) and not self.in_vec[source] if source > 0 else False
        copied = source > 0 and self.copied[source] and self._copies_by_block(channels)
        # (ws and os: an output tile is cols channels, a block rows of them, so a tile lies in one block where cols
        # divides rows; rs commands take filters of one block)
        return ((self.cfg.rows % self.cfg.cols == 0 or self.cfg.dataflow == "rs") and layer.channelwise
                and (written or copied) and self.readers[source] == [index] and (h, w) == tuple(layer.kernel)
                and not any(layer.pads))

    def _reduces(self, index):
        """Whether array layer ``index`` sums each block's pixels with ``reduce`` commands: a ws layer reading a
        block-major map (a global pool), whose pixels are no more than a command's rows. Its one weight fold then
        stays in the array for all of them, where a fold a pixel loaded the array for one vector each."""
        (source,) = self.steps[index].inputs
        _, in_h, in_w = self.shapes[source]
        return self.cfg.dataflow == "ws" and source in self.block_major and in_h * in_w <= self.cfg.acc_half_depth

    def _copies_by_block(self, channels):
        """Whether a map of ``channels`` copies from the vector buffer block by block: each activation block is
        whole vector words, every block full."""
        rows = self.cfg.rows
        return rows % LANES_PER_WORD == 0 and channels % rows == 0

    def _check_windows(self):
        """Each array layer's window within the device's limits, unless it covers the whole map (read as one
        pixel: any size of it)."""
        for index, step in enumerate(self.steps):
            if self._on_array(index) and not self._whole_map(index, step.op, self.shapes[step.inputs[0]]):
                violation = conv_limits_violation(step.op.kernel, step.op.strides, step.op.pads)
                if violation:
                    raise TilingError(f"layer {index}: {violation}")

    def _whole_map(self, index, layer, in_shape):
        """Whether array layer ``index`` reads the batch's maps as the pixels of one map: its window covers its
        whole unpadded input, which is not the model's (the first layer runs image by image), and each map's words
        are at most 255 channel blocks (CONV_SETUP's field)."""
        channels, in_h, in_w = in_shape
        blocks = 1 if self._reads_by_block(index) else math.ceil(channels / self.cfg.rows)
        return (index > 0 and (in_h, in_w) == tuple(layer.kernel) and not any(layer.pads)
                and in_h * in_w * blocks < 256 and self.batch <= MAX_CONV_SIDE)

    def _on_array(self, step):
        return isinstance(self.steps[step].op, DeviceLayer)

    def _homes(self):
        """Which buffers hold each tensor: the activation buffer if an array layer reads it, the vector buffer if a
        vector step reads it or an add writes it (both: written into the vector buffer, then copied)."""
        steps, last = self.steps, len(self.steps)
        self.readers = [[i for i, step in enumerate(steps) if t in step.inputs] for t in range(last + 1)]
        self.in_act = [any(map(self._on_array, readers)) for readers in self.readers]
        self.in_vec = [any(not self._on_array(r) for r in readers) for readers in self.readers]
        for t in range(1, last):
            self.in_vec[t] |= isinstance(steps[t - 1].op, AddStep)
            if not self.readers[t]:
                raise TilingError(f"no step reads step {t - 1}'s output; only the last step's leaves the model")
        if self.in_vec[0]:
            raise TilingError("a vector step reads the model's input: a resident model's input goes into the "
                              "activation buffer (accepted: a first layer on the array)")
        self.in_act[0], self.in_act[last], self.in_vec[last] = True, False, False
        self.copied = [t > 0 and self.in_act[t] and self.in_vec[t] for t in range(last + 1)]

    def act_words(self, t):
        channels, h, w = self.shapes[t]
        return h * w * math.ceil(channels / self.cfg.rows)

    def vec_words(self, t):
        channels, h, w = self.shapes[t]
        return h * w * math.ceil(channels / LANES_PER_WORD)

    def _plan(self):
        """The order of the work (each step, and the copy of a tensor both buffers hold right after its step), and
        every tensor's offset in each buffer that holds it (planned over the work's order)."""
        ops, at = [], {}
        for index in range(len(self.steps)):
            at[index] = len(ops)
            ops.append(("step", index))
            if self.copied[index + 1]:
                ops.append(("copy", index + 1))
        act, vec = [], []     # (tensor, first op, last op)
        for t, readers in enumerate(self.readers[:-1]):
            written = at[t - 1] if t else 0
            if self.in_act[t]:
                act.append((t, written + self.copied[t], max(at[r] for r in readers if self._on_array(r))))
            if self.in_vec[t]:
                vector_reads = [at[r] for r in readers if not self._on_array(r)]
                vec.append((t, written, max(vector_reads + [written + self.copied[t]])))
        vec, in_place = self._adds_in_place(vec, at)
        planned = plan_memory([self.batch * self.vec_words(t) for t, _, _ in vec],
                              [(first, last) for _, first, last in vec], self.cfg.vec_depth, "vec")
        vec_offsets = {t: offset for (t, _, _), offset in zip(vec, planned, strict=True)}
        for t, operand in in_place.items():
            vec_offsets[t] = vec_offsets[operand]
        return ops, self._plan_act(act), vec_offsets

    def _plan_act(self, act):
        """The activation buffer's offsets of tensors ``act`` (tensor, first op, last op). Where they do not fit
        apart, a layer may write its output over its own input (the largest such pairs first, until they fit):
        at a displacement where no command's output words are words a later command of the layer still reads
        (:meth:`_displacement`). A layer of several output tiles then runs band by band, each band's tiles
        together, so that a band's input is done with before its output is stored."""
        self.band_major, overlaps = set(), {}

        def words(t):      # (a run's images lie one after another)
            return self.batch * self.act_words(t)

        try:
            return _place_overlapping(act, overlaps, words, self.cfg.act_depth)
        except TilingError as error:
            failure = error
        if self.cfg.dataflow != "ws" or self.batch != 1:
            raise failure
        pairs = sorted(self._overwritable(),
                       key=lambda i: -(self.act_words(self.steps[i].inputs[0]) + self.act_words(i + 1)))
        for index in pairs:
            band_major = len(self._tiles(index).tiles) > 1
            overlaps[index + 1] = (self.steps[index].inputs[0], self._displacement(index, band_major))
            if band_major:
                self.band_major.add(index)
            try:
                return _place_overlapping(act, overlaps, words, self.cfg.act_depth)
            except TilingError:
                continue
        raise failure

    def _band_rows_read(self, index, p0, rows):
        """The words of its input (from the map's first) that array layer ``index`` reads for output pixels ``p0``
        to ``p0 + rows``: the input rows their windows reach, whole."""
        layer, (source,) = self.steps[index].op, self.steps[index].inputs
        _, in_h, in_w = self.shapes[source]
        out_w = self.shapes[index + 1][2]
        row_words = in_w * (self.act_words(source) // (in_h * in_w))
        stride, pad_top, kernel_h = layer.strides[0], layer.pads[0], layer.kernel[0]
        top = max(0, p0 // out_w * stride - pad_top)
        bottom = min(in_h, (p0 + rows - 1) // out_w * stride - pad_top + kernel_h)
        return top * row_words, bottom * row_words

    def _overwritable(self):
        """The ws layers that may store their output over their own input: they alone read it, from the
        activation buffer pixel by pixel, and store their output there themselves, pixel by pixel."""
        last = len(self.steps) - 1
        return [index for index, step in enumerate(self.steps[:last])
                if self._on_array(index) and self.readers[step.inputs[0]] == [index]
                and self.in_act[index + 1] and not self.in_vec[index + 1]
                and not {step.inputs[0], index + 1} & self.block_major
                and not self._whole_map_layer(index) and not self._reduces(index)]

    def _displacement(self, index, band_major):
        """Where array layer ``index``'s output may start, in words from its input's first: the displacement that
        spans fewest words of those where no command's output words meet the input words a later command (in
        the order they run) reads. A command stores its rows after it has read all its own input; the ones after
        it may read while it stores."""
        (source,), t = self.steps[index].inputs, index + 1
        _, out_h, out_w = self.shapes[t]
        out_pixel = self.act_words(t) // (out_h * out_w)
        commands = []   # (first input word read, past the last; first output word stored, past the last)
        pixels = out_h * out_w
        tiles = len(self._tiles(index).tiles)
        for _, p0, rows in _command_order(tiles, pixels, command_rows(self.cfg, pixels, band_major), band_major):
            commands.append((*self._band_rows_read(index, p0, rows), p0 * out_pixel, (p0 + rows) * out_pixel))
        # output words [w0 + d, w1 + d) meet later reads [r0, r1) for r0 - w1 < d < r1 - w0: open intervals, merged
        forbidden = []
        for lo, hi in sorted((r0 - w1, r1 - w0) for i, (_, _, w0, w1) in enumerate(commands)
                             for r0, r1, _, _ in commands[i + 1:]):
            if forbidden and lo < forbidden[-1][1]:
                forbidden[-1][1] = max(forbidden[-1][1], hi)
            else:
                forbidden.append([lo, hi])
        in_words, out_words = self.act_words(source), self.act_words(t)
        # (the best displacement is 0, an end of a forbidden interval, or clear of the input altogether)
        candidates = {0, -out_words, in_words} | {edge for interval in forbidden for edge in interval}
        starts = [lo for lo, _ in forbidden]
        allowed = [d for d in candidates if not (i := bisect.bisect_left(starts, d)) or not d < forbidden[i - 1][1]]
        return min(allowed, key=lambda d: (max(in_words, d + out_words) - min(0, d), abs(d)))

    def _adds_in_place(self, vec, at):
        """An add writes its result over an operand that no later step reads (it reads each word before it writes
        it): the two share words, the operand's lifetime extended over the result's. Returns the vector buffer's
        tensors so merged, and ``{result: operand}``."""
        lifetimes = {t: (first, last) for t, first, last in vec}
        in_place = {}
        for index, step in enumerate(self.steps[:-1]):
            t = index + 1
            if not isinstance(step.op, AddStep):
                continue
            operand = next((s for s in step.inputs if s in lifetimes and lifetimes[s][1] == at[index]
                            and s not in in_place.values()), None)
            if operand is not None:
                in_place[t] = operand
                lifetimes[operand] = (lifetimes[operand][0], lifetimes.pop(t)[1])
        return [(t, first, last) for t, (first, last) in lifetimes.items()], in_place

    def model(self):
        cfg, batch = self.cfg, self.batch
        by_op = []       # each op's tasks' indices
        tasks = []
        for kind, index in self.ops:
            if kind == "step" and self._on_array(index):
                made = self._rs_layer(index) if cfg.dataflow == "rs" else self._layer(index)
            else:
                made = self._vector(kind, index)
            by_op.append(list(range(len(tasks), len(tasks) + len(made))))
            tasks += [dataclasses.replace(task, op=len(by_op) - 1) for task in made]
        self._dependencies(tasks, by_op)
        # The first layer runs image by image, each image a program section of its own that the host RUNs right
        # after that image's LOAD: the next image's LOAD then overlaps this one's compute. The other steps follow
        # in one section, the array's and the vector unit's work side by side (resident_schedule), cut where a
        # streamed layer starts: the host sends its weights before the section that runs it.
        op_of = {index: position for position, (kind, index) in enumerate(self.ops) if kind == "step"}
        streamed_ops = sorted(op_of[index] for index in self.streamed)
        sections, starts = schedule(cfg, tasks, by_op[0], [op for op in streamed_ops if op > 0])
        step_of = {position: index for index, position in op_of.items()}
        stream_loads = [(0 if op == 0 else starts[op], self.stream_loads[step_of[op]]) for op in streamed_ops]
        program = np.concatenate(sections)

        bases = self.bases
        _check_fits("program", bases["program"] + len(program), cfg.program_depth)
        store_program, _ = stored_program(cfg, program, bases["program"])
        starts = bases["program"] + np.cumsum([0] + [len(section) for section in sections[:-1]])
        runs = [instruction(cfg, Opcode.RUN, base=int(start), words=len(section))
                for start, section in zip(starts, sections, strict=True)]
        bias = np.concatenate([b for b, _ in self.params])
        scale = np.concatenate([s for _, s in self.params])
        load_words = [store_program, load(cfg, BufferId.PARAM, bases["param"], (bias, scale))]
        if self.weights:    # (every layer's weights may be streamed)
            load_words.append(load(cfg, BufferId.WEIGHT, bases["weight"], np.concatenate(self.weights)))
        macs = batch * sum(int(np.prod(self.shapes[i + 1][1:])) * step.op.own_macs_per_pixel
                           for i, step in enumerate(self.steps) if self._on_array(i))

        def span(offsets, t, words):
            return list(self._span(offsets, t, words)) if t in offsets else [0, 0]

        plan = {"batch": batch,
                "tensors": [{"shape": list(shape), "act_words": span(self.act_offsets, t, self.act_words),
                             "vec_words": span(self.vec_offsets, t, self.vec_words)}
                            for t, shape in enumerate(self.shapes[:-1])],
                "weight_words": self.weight_base - bases["weight"], "param_words": self.param_base - bases["param"],
                "program_words": len(program), "bases": bases, "array_cycles": self.array_cycles,
                "vector_cycles": self.vector_cycles, "streamed_steps": sorted(self.streamed),
                "stream_words": self.stream_words}
        return ResidentModel(cfg=cfg, batch=batch, in_shape=self.shapes[0], out_shape=self.shapes[-1],
                             load_words=np.concatenate(load_words), run_words=np.concatenate(runs),
                             input_base=self.act_offsets[0], outputs=self.outputs, macs=macs, plan=plan,
                             vector_out=not self._on_array(len(self.steps) - 1), stream_loads=stream_loads,
                             result_columns=self.result_columns, images_as_rows=self.images_as_rows)

    def _destination(self, t):
        """Where the step writing tensor ``t`` stores it: its StoreTarget, first word (of image 0), lanes per word
        and words per pixel there."""
        if self.in_vec[t]:
            return StoreTarget.VEC, self.vec_offsets[t], LANES_PER_WORD, math.ceil(self.shapes[t][0] / LANES_PER_WORD)
        return StoreTarget.ACT, self.act_offsets[t], self.cfg.rows, math.ceil(self.shapes[t][0] / self.cfg.rows)

    def _tiles(self, index):
        """Array layer ``index``'s GEMM as the array runs it: its tiles, the folds each stores, their words, and
        the CONV_SETUP geometry its commands read (made once)."""
        if index not in self._tile_cache:
            self._tile_cache[index] = self._make_tiles(index)
        return self._tile_cache[index]

    def _make_tiles(self, index):
        if self.cfg.dataflow == "rs":
            return self._make_rs_tiles(index)
        cfg, layer = self.cfg, self.steps[index].op
        R = cfg.rows
        (source,), t = self.steps[index].inputs, index + 1
        (_, in_h, in_w), (out_channels, _, out_w) = self.shapes[source], self.shapes[t]
        blocks = math.ceil(self.shapes[source][0] / R)
        kh, kw = layer.kernel
        geometry = dict(in_h=in_h, in_w=in_w, out_w=out_w, channel_blocks=blocks, kernel_h=kh, kernel_w=kw,
                        stride=layer.strides[0], pad_top=layer.pads[0], pad_left=layer.pads[1])
        if self._depthwise(index):
            plan = _depthwise_plan(cfg, layer.w, np.asarray(layer.bias), np.asarray(layer.scale), layer.y_zp, blocks,
                                   out_w, layer.strides[0], skip=False, counted=None)
            return _LayerTiles(plan.tiles, plan.bias, plan.scale, {**geometry, **plan.kernel}, whole_maps=False)
        folds = kh * kw * blocks
        gemm_w = conv_as_gemm_weights(layer.w, R, blocks)
        if source in self.block_major:   # each tile's folds are its own block's pixels: lane l of each sums into l
            # (a reduce command streams the pixels through one fold's weights instead)
            folds = 1 if self._reduces(index) else in_h * in_w
            gemm_w = np.zeros((folds * R, out_channels), np.int8)
            gemm_w[(np.arange(folds)[:, None] * R + np.arange(out_channels) % R).reshape(-1),
                   np.tile(np.arange(out_channels), folds)] = 1
        check_gemm_operands(np.zeros((1, folds * R), np.int8), gemm_w, layer.bias, layer.scale, layer.y_zp)
        gemm = _GemmTiles(cfg, np.zeros((1, folds * R), np.int8), gemm_w, np.asarray(layer.bias),
                          np.asarray(layer.scale), conv=True)
        # A window over the whole map (a global pool, a fully connected layer) reads each image's map as one pixel
        # of folds channel blocks; the batch's maps lie one after another, so one command reads them all as the
        # pixels of a 1 x batch map (its weights, the conv's, stream through the array once for all images).
        # (a reduce command reads one image's pixels of one block: image by image, and no CONV_SETUP)
        whole_maps = self._whole_map_layer(index)
        if whole_maps:
            geometry = dict(in_h=1, in_w=self.batch, out_w=self.batch, channel_blocks=folds, kernel_h=1, kernel_w=1,
                            stride=1, pad_top=0, pad_left=0)
        stored, sparse = _weight_tiles(cfg, gemm, folds)
        tiles = _dense_conv_tiles(gemm, folds, stored, sparse, geometry["kernel_w"], geometry["channel_blocks"])
        return _LayerTiles(tiles, gemm.bias, gemm.scale, geometry, whole_maps)

    def _whole_map_layer(self, index):
        """Whether array layer ``index`` reads the batch's maps as the pixels of one map (:meth:`_whole_map`),
        which a reduce command does not: it reads one image's pixels of one block."""
        layer, (source,) = self.steps[index].op, self.steps[index].inputs
        return self._whole_map(index, layer, self.shapes[source]) and not self._reduces(index)

    def _depthwise(self, index):
        """Whether ws layer ``index`` runs as depthwise commands (:func:`~tessera.sw_driver.depthwise.
        depthwise_eligible`): not where it reads whole maps as pixels, nor a block-major map."""
        layer, (source,) = self.steps[index].op, self.steps[index].inputs
        return (source not in self.block_major and not self._whole_map_layer(index)
                and depthwise_eligible(self.cfg, layer.w, layer.strides, self.shapes[index + 1][2]))

    def _make_rs_tiles(self, index):
        """A row-stationary layer's filter groups (one command each, of consecutive filters: every filter runs, so
        that its outputs are stored), their weight words and its CONV_SETUP geometry."""
        cfg, layer, R = self.cfg, self.steps[index].op, self.cfg.rows
        (source,), t = self.steps[index].inputs, index + 1
        (channels, in_h, in_w), (out_channels, _, out_w) = self.shapes[source], self.shapes[t]
        w, (kh, kw), stride, pads = layer.w, layer.kernel, layer.strides[0], layer.pads
        whole_maps = self._whole_map(index, layer, self.shapes[source])
        by_block, pixels = source in self.block_major, in_h * in_w
        if by_block:        # filter f sums only its own channel, in block f // rows: the map's block-major words of
            # that block are its image's pixels, one block each
            taps = w.reshape(out_channels, channels, in_h * in_w)
            by_pixel = np.zeros((out_channels, in_h * in_w, R), np.int8)
            for f in range(out_channels):
                first = f // R * R
                by_pixel[f, :, :min(channels, first + R) - first] = taps[f, first:first + R].T
            w = by_pixel.reshape(out_channels, -1, 1, 1)
        elif whole_maps:    # each image's map is one pixel of its words' channel blocks
            w = conv_as_gemm_weights(w, R, math.ceil(channels / R)).T.reshape(out_channels, -1, 1, 1)
        if whole_maps:      # a 1x1 conv over the batch's maps as the pixels of one column: cols images a command
            channels, in_h, in_w, out_w, (kh, kw), stride, pads = w.shape[1], self.batch, 1, 1, (1, 1), 1, \
                (0, 0, 0, 0)
        check_gemm_operands(np.zeros((1, w[0].size), np.int8), w.reshape(out_channels, -1).T, layer.bias,
                            layer.scale, layer.y_zp)
        if out_w > cfg.acc_half_depth:
            raise TilingError(f"layer {index}: output width {out_w} exceeds an accumulator half ({cfg.acc_half_depth} "
                              f"rows; accepted: acc_depth >= {2 * out_w})")
        chunks, height, q, filter_words = rs_filter_shape(cfg, kh, kw, channels)
        per_group = max(1, min(cfg.rs_filters, cfg.acc_half_depth // out_w))
        # a group's filters lie in one channel block where a block-major map is read or written
        block = R if by_block or t in self.block_major else out_channels
        groups = [range(f0, min(out_channels, f0 + per_group, first + block))
                  for first in range(0, out_channels, block) for f0 in range(first, min(out_channels, first + block),
                                                                              per_group)]
        weights = [rs_group_weights(cfg, w[group.start:group.stop], height, q, chunks, filter_words)
                   for group in groups]
        # where each group's command reads the map: a block-major map's block of the group's filters
        x_offsets = [group.start // R * self.batch * pixels if by_block else 0 for group in groups]
        geometry = dict(in_h=in_h, in_w=in_w, out_w=out_w, channel_blocks=math.ceil(channels / R),
                        kernel_h=height, kernel_w=kw, stride=stride, pad_top=pads[0], pad_left=pads[1])
        return _RsTiles(groups, weights, [len(words) for words in weights], geometry, chunks,
                        chunks * geometry["channel_blocks"] * q * kw, whole_maps, x_offsets)

    def _streamed(self):
        """The array layers whose weights the host sends with every run, into the weight buffer's bottom words,
        because the model's weights do not all fit between ``stream_floor`` and ``weight_top`` (``bases``): the
        largest first, until the others and the largest streamed one fit. TilingError if none does."""
        words = {i: sum(self._tiles(i).tile_words) for i in range(len(self.steps)) if self._on_array(i)}
        top, floor = self.bases["weight_top"], self.bases["stream_floor"]
        streamed = set()

        def room_needed():
            stream = max([floor] + [words[i] for i in streamed])
            return stream + sum(w for i, w in words.items() if i not in streamed)

        for index in sorted(words, key=lambda i: -words[i]):
            if room_needed() <= top:
                break
            streamed.add(index)
        if room_needed() > top:
            raise TilingError(f"the model's weight words do not fit weight_depth={self.cfg.weight_depth} even "
                              f"streamed layer by layer: its largest layer has {max(words.values())}, "
                              f"{top - floor} are free (accepted: a larger weight_depth, or --per-layer)")
        return streamed

    def _layer(self, index):
        """An array layer's tasks, image by image (or one for the batch): its weights and parameters placed, in
        the resident words or (streamed) in the bottom words that the host loads before its section."""
        cfg, layer = self.cfg, self.steps[index].op
        R, C = cfg.rows, cfg.cols
        (source,), t = self.steps[index].inputs, index + 1
        (_, in_h, in_w), (out_channels, out_h, out_w) = self.shapes[source], self.shapes[t]
        planned = self._tiles(index)
        tiles, bias, scale, geometry, whole_maps = planned
        by_block, reduce = source in self.block_major, self._reduces(index)
        _check_fits("param", self.param_base + len(tiles), cfg.param_depth)
        tile_bases = self._place_weights(index, [tile.weights for tile in tiles], planned.tile_words)
        self.params.append((bias.reshape(len(tiles), C), scale.reshape(len(tiles), C)))
        param_base = self.param_base
        self.param_base += len(tiles)
        last = t == len(self.steps)
        target, base, lanes_per_word, out_blocks = (None, 0, 1, 1) if last else self._destination(t)
        setups = [] if reduce else [(Opcode.CONV_SETUP, _setup(cfg, Opcode.CONV_SETUP, **geometry,
                                                                pad_value=int(layer.pad_value)))]
        pixels = self.batch if whole_maps else out_h * out_w
        # the pixels of an output row (a depthwise geometry's out_w counts the positions its folds stream)
        row_pixels = self.batch if whole_maps else out_w
        stored_by_block = t in self.block_major
        # A task a band where the vector unit takes the layer's output band by band as it is stored, or gives it
        # its input so (each band's tiles together); band by band too where the layer stores over its own input
        # (each command a whole accumulator half: each needs a STORE_SETUP of its own).
        banded = (index > 0 and cfg.dataflow == "ws" and (self.in_vec[t] or self.copied[source])
                  and not (whole_maps or reduce or by_block or stored_by_block or last))
        band_major = index in self.band_major or (banded and self.in_vec[t])
        order = _command_order(len(tiles), pixels, command_rows(cfg, pixels, index in self.band_major), band_major)
        in_base, in_words, out_words = self.act_offsets[source], self.act_words(source), pixels * out_blocks
        out_buffer = "vec" if target == StoreTarget.VEC else "act"

        def band(image, p0, rows):
            """The task of the commands that store the band of ``rows`` pixels from ``p0`` on, without them yet:
            the words they read and store."""
            top, bottom = self._band_rows_read(index, p0, rows)
            spans = {(source, "act"): (in_base + image * in_words + top, in_base + image * in_words + bottom),
                     (t, out_buffer): (base + image * out_words + p0 * out_blocks,
                                       base + image * out_words + (p0 + rows) * out_blocks)}
            return Task(op=0, image=image, unit=WaitUnit.ARRAY, items=list(setups), cost=0, spans=spans)

        def task(image):
            # the layer's commands for one image (or, reading whole maps, the batch) in their order: one task, or
            # (banded) a task a band, band-major the band's tiles one after another
            items, cost = list(setups), 0
            made, band_start = [], None
            for n, p0, rows in order:
                if banded and p0 != band_start:
                    made.append(band(image, p0, rows))
                    items, cost, band_start = made[-1].items, 0, p0
                tile = tiles[n]
                first = n * C   # the tile's first output channel: where its rows start within a pixel's words
                if not last:    # (sent only where it changes: resident_schedule)
                    items.append((Opcode.STORE_SETUP, instruction(
                        cfg, Opcode.STORE_SETUP, lane=first % lanes_per_word, lanes=min(C, out_channels - first),
                        stride=1 if stored_by_block else out_blocks)))
                if stored_by_block:     # [block][image][pixel]: this tile lies in block first // R
                    s_base = base + (first // R * self.batch + image) * pixels + p0
                else:
                    s_base = base + image * out_words + p0 * out_blocks + first // lanes_per_word
                store = {} if last else {"store": int(target), "s_base": s_base}
                x_base = in_base + tile.x_offset + (first // R * self.batch * in_h * in_w if by_block
                                                    else image * in_words)
                if reduce:      # this image's pixels of block n, all through the tile's one fold
                    shape = dict(m=in_h * in_w, conv=0, reduce=1)
                    x_base += image * in_h * in_w
                else:
                    shape = dict(m=rows, conv=1, out_y=p0 // row_pixels, out_x=p0 % row_pixels)
                steps = _array_steps(cfg, tile.fields, shape, geometry["out_w"], geometry["stride"])
                self.array_cycles += steps
                cost += steps + R + C
                if made:
                    made[-1].cost = cost
                items.append((Opcode.GEMM, instruction(
                    cfg, Opcode.GEMM, x_base=x_base, w_base=int(tile_bases[n]), p_base=param_base + n,
                    y_zp=int(layer.y_zp), **tile.fields, **shape, **store)))
                if last:
                    self.outputs.append((image, p0, first, rows))
            if made:
                return made
            return [Task(op=0, image=None if whole_maps else image, unit=WaitUnit.ARRAY, items=items, cost=cost)]

        return task(0) if whole_maps else [band for image in range(self.batch) for band in task(image)]

    def _place_weights(self, index, weights, tile_words):
        """The first word of each of array layer ``index``'s weight tiles: resident above the others' or, streamed,
        in the bottom words that the host loads before its section."""
        cfg = self.cfg
        if index in self.streamed:
            self.stream_loads[index] = load(cfg, BufferId.WEIGHT, 0, np.concatenate(weights))
            return np.cumsum([0] + tile_words[:-1])
        _check_fits("weight", self.weight_base + sum(tile_words), cfg.weight_depth)
        self.weights += weights
        bases = self.weight_base + np.cumsum([0] + tile_words[:-1])
        self.weight_base += sum(tile_words)
        return bases

    def _rs_layer(self, index):
        """A row-stationary layer's tasks: per image (or one for the batch) and band of ``cols`` output rows, a
        command per filter group, whose rows (output columns) are stored channel by channel
        (:func:`tessera.hw.layouts.store_setup_layout`)."""
        cfg, layer = self.cfg, self.steps[index].op
        (source,), t = self.steps[index].inputs, index + 1
        groups, weights, tile_words, geometry, chunks, pass_cycles, whole_maps, x_offsets = self._tiles(index)
        out_channels = self.shapes[t][0]
        tile_bases = self._place_weights(index, weights, tile_words)
        # parameter word f: filter f's bias and scale in every lane
        _check_fits("param", self.param_base + out_channels, cfg.param_depth)
        self.params.append((np.repeat(np.asarray(layer.bias)[:, None], cfg.cols, axis=1),
                            np.repeat(np.asarray(layer.scale)[:, None], cfg.cols, axis=1)))
        param_base = self.param_base
        self.param_base += out_channels
        last = t == len(self.steps)
        target, base, lanes_per_word, out_blocks = (None, 0, 1, 1) if last else self._destination(t)
        out_h, out_w = (self.batch, 1) if whole_maps else self.shapes[t][1:]
        if last:
            self.result_columns, self.images_as_rows = out_w, whole_maps
        setup = _setup(cfg, Opcode.CONV_SETUP, **geometry, pad_value=int(layer.pad_value))
        in_base, in_words, out_words = self.act_offsets[source], self.act_words(source), out_h * out_w * out_blocks

        # a block-major map ([block][image][pixel]) is a map of one block per pixel, block after block
        by_block = t in self.block_major
        pixel_words = 1 if by_block else out_blocks

        def task(image):
            items, cost = [(Opcode.CONV_SETUP, setup)], 0
            for oy0 in range(0, out_h, cfg.cols):
                for group, w_base, x_offset in zip(groups, tile_bases, x_offsets, strict=True):
                    store = {}
                    if not last:
                        items.append((Opcode.STORE_SETUP, instruction(
                            cfg, Opcode.STORE_SETUP, lane=group.start % lanes_per_word,
                            lanes=min(cfg.cols, out_h - oy0), stride=pixel_words, lane_stride=out_w * pixel_words)))
                        block = group.start // lanes_per_word
                        first = ((block * self.batch + image) * out_h * out_w if by_block
                                 else image * out_words + block)
                        store = {"store": int(target), "s_base": base + first + oy0 * out_w * pixel_words}
                    steps = len(group) * pass_cycles * (out_w + 1)
                    self.array_cycles += steps
                    cost += steps + cfg.rows + cfg.cols
                    items.append((Opcode.GEMM, instruction(
                        cfg, Opcode.GEMM, m=len(group) * out_w, k=geometry["channel_blocks"], filters=len(group),
                        x_base=in_base + x_offset + image * in_words, w_base=int(w_base),
                        p_base=param_base + group.start, y_zp=int(layer.y_zp), conv=1, out_y=oy0, out_x=chunks,
                        **store)))
                    if last:
                        self.outputs.append((image, oy0, group.start, len(group) * out_w))
            return Task(op=0, image=None if whole_maps else image, unit=WaitUnit.ARRAY, items=items, cost=cost)

        return [task(0)] if whole_maps else [task(image) for image in range(self.batch)]

    def _copy_by_block(self, t):
        """The copy of map ``t`` into the activation buffer block-major ([block][image][pixel]), image by image: a
        1x1 pool per block, whose geometry reads the vector words of each pixel as a row of pixels of one block
        each and takes only the first: the block's words, at the pool's first word."""
        cfg = self.cfg
        channels, h, w = self.shapes[t]
        words_per_block, pixels = cfg.rows // LANES_PER_WORD, h * w
        blocks, in_words = channels // cfg.rows, self.vec_words(t)
        setups = [(Opcode.POOL_SETUP, _setup(
            cfg, Opcode.POOL_SETUP, in_h=pixels, in_w=blocks, out_w=1, channel_blocks=words_per_block, kernel_h=1,
            kernel_w=1, stride=1, pad_top=0, pad_left=0, pad_value=0)),
            (Opcode.STORE_SETUP, instruction(cfg, Opcode.STORE_SETUP, lane=0, lanes=cfg.rows, stride=1))]
        cost = pixels * blocks * words_per_block * 2
        self.vector_cycles += self.batch * cost
        return [Task(op=0, image=image, unit=WaitUnit.VECTOR, cost=cost, items=setups + [(
            Opcode.POOL, instruction(cfg, Opcode.POOL, x_base=self.vec_offsets[t] + image * in_words
                                     + block * words_per_block, m=pixels, out_y=0, out_x=0,
                                     store=int(StoreTarget.ACT),
                                     d_base=self.act_offsets[t] + (block * self.batch + image) * pixels))
            for block in range(blocks)]) for image in range(self.batch)]

    def _vector(self, kind, index):
        """A vector step's (or a copy's) tasks, image by image."""
        cfg = self.cfg
        if kind == "copy" and index in self.block_major:
            return self._copy_by_block(index)
        if kind == "copy":
            op, sources, t = COPY, (index,), index
            target, base, out_blocks = StoreTarget.ACT, self.act_offsets[t], math.ceil(self.shapes[t][0] / cfg.rows)
        elif index + 1 == len(self.steps):     # the model's output: VECTOR packets, an image's map each
            op, sources, t = self.steps[index].op, self.steps[index].inputs, index + 1
            target, base, out_blocks = StoreTarget.HOST, 0, math.ceil(self.shapes[t][0] / LANES_PER_WORD)
        else:
            op, sources, t = self.steps[index].op, self.steps[index].inputs, index + 1
            target, base, _, out_blocks = self._destination(t)
        last = kind == "step" and t == len(self.steps)
        channels, in_h, in_w = self.shapes[sources[0]]
        _, out_h, out_w = op.output_shape(self.shapes[sources[0]])
        in_words = self.vec_words(sources[0])
        out_words = out_h * out_w * out_blocks
        # (band by band as a ws array stores them, where its result is not the model's output)
        pixels = in_h * in_w
        band_rows = command_rows(cfg, pixels) if cfg.dataflow == "ws" and not last else pixels
        bands = [(p0, min(band_rows, pixels - p0)) for p0 in range(0, pixels, band_rows)]
        in_pixel = in_words // pixels
        out_buffer = "vec" if target == StoreTarget.VEC else "act"

        def spans(image, p0, rows, reads):
            words = {(s, "vec"): (self.vec_offsets[s] + image * in_words + p0 * in_pixel,
                                  self.vec_offsets[s] + image * in_words + (p0 + rows) * in_pixel) for s in reads}
            if not last:
                words[(t, out_buffer)] = (base + image * out_words + p0 * out_blocks,
                                          base + image * out_words + (p0 + rows) * out_blocks)
            return words

        if isinstance(op, AddStep):
            setup = (Opcode.VEC_SETUP, instruction(cfg, Opcode.VEC_SETUP, **op.params))
            self.vector_cycles += 2 * self.batch * in_words
            self.outputs += list(range(self.batch)) if last else []
            return [Task(op=0, image=image, unit=WaitUnit.VECTOR, cost=2 * rows * in_pixel, items=[setup, (
                Opcode.ADD, instruction(
                    cfg, Opcode.ADD, a_base=self.vec_offsets[sources[0]] + image * in_words + p0 * in_pixel,
                    b_base=self.vec_offsets[sources[1]] + image * in_words + p0 * in_pixel, words=rows * in_pixel,
                    store=int(target), d_base=0 if last else base + image * out_words + p0 * out_blocks))],
                         spans=spans(image, p0, rows, sources))
                    for image in range(self.batch) for p0, rows in bands]
        if target == StoreTarget.ACT and channels > 255:
            raise TilingError(f"a pool of {channels} channels into the activation buffer (STORE_SETUP takes up to "
                              f"255 lanes)")
        blocks = math.ceil(channels / LANES_PER_WORD)
        kh, kw = op.kernel
        setups = [(Opcode.POOL_SETUP, _setup(
            cfg, Opcode.POOL_SETUP, in_h=in_h, in_w=in_w, out_w=out_w, channel_blocks=blocks, kernel_h=kh,
            kernel_w=kw, stride=op.strides[0], pad_top=op.pads[0], pad_left=op.pads[1], pad_value=0))]
        if target == StoreTarget.ACT:
            setups.append((Opcode.STORE_SETUP, instruction(cfg, Opcode.STORE_SETUP, lane=0, lanes=channels,
                                                           stride=out_blocks)))
        cost = out_h * out_w * blocks * (kh * kw + 1)
        self.vector_cycles += self.batch * cost
        self.outputs += list(range(self.batch)) if last else []
        if kind == "copy":      # (a pixel a pixel: band by band)
            return [Task(op=0, image=image, unit=WaitUnit.VECTOR, cost=rows * blocks * 2, items=setups + [(
                Opcode.POOL, instruction(cfg, Opcode.POOL, x_base=self.vec_offsets[sources[0]] + image * in_words,
                                         m=rows, out_y=p0 // out_w, out_x=p0 % out_w, store=int(target),
                                         d_base=base + image * out_words + p0 * out_blocks))],
                         spans=spans(image, p0, rows, sources))
                    for image in range(self.batch) for p0, rows in bands]
        return [Task(op=0, image=image, unit=WaitUnit.VECTOR, cost=cost, items=setups + [(
            Opcode.POOL, instruction(cfg, Opcode.POOL, x_base=self.vec_offsets[sources[0]] + image * in_words,
                                     m=out_h * out_w, out_y=0, out_x=0, store=int(target),
                                     d_base=0 if last else base + image * out_words))])
                for image in range(self.batch)]

    def _dependencies(self, tasks, by_op):
        """Each task's dependencies: the tasks that write what it reads (for its image, or all of them where either
        covers the batch), and every task that reads or writes words its op overwrites (an earlier tensor's, by
        the memory plan)."""
        op_at = {op: position for position, op in enumerate(self.ops)}

        def producer(t, on_array):
            # the op that writes tensor t where a reader on the array (or the vector unit) finds it
            return op_at[("copy", t)] if on_array and self.copied[t] else op_at[("step", t - 1)]

        reads, writes = {}, {}   # op: [(tensor, buffer)]
        for position, (kind, index) in enumerate(self.ops):
            if kind == "copy":
                reads[position], writes[position] = [(index, "vec")], [(index, "act")]
                continue
            buffer = "act" if self._on_array(index) else "vec"
            reads[position] = [(t, buffer) for t in self.steps[index].inputs]
            t = index + 1
            writes[position] = [] if t == len(self.steps) else [(t, "vec" if self.in_vec[t] else "act")]
        regions = [(t, "act") for t in self.act_offsets] + [(t, "vec") for t in self.vec_offsets]
        users = {}   # (tensor, buffer): the ops that read or write it
        for position in range(len(self.ops)):
            for place in reads[position] + writes[position]:
                users.setdefault(place, []).append(position)

        def span(index, place):
            # the words of tensor place that task index reads or writes: its band's, or its image's
            return tasks[index].spans.get(place) or self._image_span(place, tasks[index].image)

        def meet(a, b):
            return a[0] < b[1] and b[0] < a[1]

        for position in range(len(self.ops)):
            for t, buffer in reads[position]:
                if t == 0:
                    continue     # the host's LOAD, before the run
                for index in by_op[position]:
                    image, words = tasks[index].image, span(index, (t, buffer))
                    tasks[index].deps |= {s for s in by_op[producer(t, buffer == "act")]
                                          if (image is None or tasks[s].image in (None, image))
                                          and meet(words, span(s, (t, buffer)))}
            for place in writes[position]:
                for index in by_op[position]:
                    words = span(index, place)
                    for other in regions:
                        if other == place or other[1] != place[1]:
                            continue
                        for u in users.get(other, []):
                            if u >= position:
                                continue
                            tasks[index].deps |= {s for s in by_op[u] if meet(words, span(s, other))}

    def _image_span(self, place, image):
        """The words of tensor ``place = (t, buffer)`` that image ``image`` (None: every image) takes."""
        t, buffer = place
        offsets, words = (self.act_offsets, self.act_words) if buffer == "act" else (self.vec_offsets, self.vec_words)
        if image is None or (buffer == "act" and t in self.block_major):
            return self._span(offsets, t, words)
        return offsets[t] + image * words(t), offsets[t] + (image + 1) * words(t)

    def _span(self, offsets, t, words):
        return offsets[t], offsets[t] + self.batch * words(t)


def _command_order(tiles, pixels, block_rows, band_major):
    """``(tile, first pixel, pixels)`` of a ws or os layer's commands for one image, in the order they run:
    tile by tile, each over the map's bands of ``block_rows`` pixels, or (``band_major``) band by band."""
    bands = [(p0, min(block_rows, pixels - p0)) for p0 in range(0, pixels, block_rows)]
    if band_major:
        return [(n, p0, rows) for p0, rows in bands for n in range(tiles)]
    return [(n, p0, rows) for n in range(tiles) for p0, rows in bands]


def _place_overlapping(tensors, overlaps, words, depth):
    """:func:`plan_groups` of the activation buffer's ``tensors`` (tensor, first op, last op), where each tensor of
    ``overlaps`` (``{tensor: (input, displacement)}``) lies at a fixed displacement from its input's first word.
    Returns ``{tensor: offset}``."""
    relative = {}

    def root(t):
        if t not in overlaps:
            relative[t] = 0
            return t
        source, displacement = overlaps[t]
        top = root(source)
        relative[t] = relative[source] + displacement
        return top

    groups = {}
    for t, first, last in tensors:
        groups.setdefault(root(t), []).append((t, first, last))
    lows = [min(relative[t] for t, _, _ in members) for members in groups.values()]
    bases = plan_groups([[(relative[t] - low, words(t), (first, last)) for t, first, last in members]
                         for members, low in zip(groups.values(), lows, strict=True)], depth)
    return {t: base - low + relative[t]
            for members, low, base in zip(groups.values(), lows, bases, strict=True) for t, _, _ in members}


def _weight_tiles(cfg, gemm, folds):
    """Per output tile of a layer: the folds its commands run, and whether they are ``sparse`` (ws: only the folds
    whose weights are not all zero are stored, each behind its header). A tile with no such fold still runs, on one
    zero fold: its outputs (the requantised bias) are stored for the next layer."""
    stored, sparse, _ = _weight_tile_plan(gemm, folds, skip=True)
    for t, kept in enumerate(stored):
        if not len(kept):
            stored[t] = np.zeros(1, int)
            sparse[t] = cfg.dataflow == "ws" and cfg.cols >= 2 and folds > 1
    return stored, sparse


def _array_steps(cfg, fields, shape, width, stride):
    """Array cycles of a command of ``fields`` (k, taps) and ``shape`` (m, out_x) over a geometry ``width``
    positions wide at ``stride``: ws streams each fold's positions (:func:`~tessera.sw_driver.depthwise.
    fold_positions`), os steps through k."""
    if cfg.dataflow != "ws":
        return fields["k"]
    return fields["k"] * fold_positions(shape["m"], fields.get("taps", 0), shape.get("out_x", 0), width, stride)


def _fully_connected(layers, in_shape):
    """Layers that are fully connected ones: 1x1 convolutions over a 1x1 map."""
    return tuple(in_shape[1:]) == (1, 1) and all(layer.kernel == (1, 1) and tuple(layer.strides) == (1, 1)
                                                 and not any(layer.pads) for layer in layers)


def _check_fits(buffer, words, depth):
    if words > depth:
        raise TilingError(f"the model's {buffer} words (at least {words}) do not fit {buffer}_depth={depth} "
                          f"(accepted: {buffer}_depth >= {words}, or --per-layer)")

