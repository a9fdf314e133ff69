"""Resident models: a chain of layers compiled once into the device's own memories, so that an inference is
"load the input, RUN, read the result".

The weights, biases and scales of every layer are loaded once into the weight and parameter buffers, and the
instructions into the program memory (``program_depth``). Each layer reads its input feature map from the
activation buffer and writes its output there (``store`` commands), in the layout the next layer reads
(:func:`tessera.hw.layouts.fmap_word`); only the last layer's rows go to the host, as RESULT packets. The
activation buffer is planned statically over the tensors' lifetimes (:func:`plan_memory`).

A layer here is a :class:`DeviceLayer`: a convolution in the int8 domain, as the model runner hands the device
(a fully connected layer is a 1x1 convolution over a 1x1 map whose channels are its inputs).
"""

import dataclasses
import itertools
import math

import numpy as np

from tessera.hw.isa import INSTRUCTION_WORDS, BufferId, Opcode, result_row_words
from tessera.sw_driver.compiler import (
    Program,
    TilingError,
    _fmap_words,
    _GemmTiles,
    _sparse_weight_tile,
    _weight_tile_plan,
    check_gemm_operands,
    conv_as_gemm_weights,
    conv_limits_violation,
    conv_output_shape,
)
from tessera.sw_driver.isa_encode import instruction, load, stored_program

__all__ = ["DeviceLayer", "ResidentModel", "compile_resident", "plan_memory"]


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


def plan_memory(sizes, lifetimes, depth):
    """Offsets for tensors of ``sizes`` words, each live over ``lifetimes[i] = (first, last)`` steps inclusive,
    in a buffer of ``depth`` words: two tensors share words only if their lifetimes do not overlap. First fit,
    largest tensors first (a tensor freed early leaves its words to the later ones). Raises TilingError if they
    do not fit."""
    offsets = [None] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], lifetimes[i])):
        taken = sorted((offsets[j], offsets[j] + sizes[j]) for j in range(len(sizes))
                       if offsets[j] is not None and lifetimes[j][0] <= lifetimes[i][1]
                       and lifetimes[i][0] <= lifetimes[j][1])
        at = 0
        for start, end in taken:
            if at + sizes[i] <= start:
                break
            at = max(at, end)
        if at + sizes[i] > depth:
            raise TilingError(f"the feature maps live at once need {at + sizes[i]} activation words; act_depth is "
                              f"{depth} (accepted: act_depth >= {at + sizes[i]} for this model, or --per-layer)")
        offsets[i] = at
    return offsets


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
        channels, rows = x.shape[1], self.cfg.rows
        if self.images_as_pixels:
            x = x.reshape(len(x), channels).T.reshape(1, channels, 1, len(x))
        fmap = np.zeros((len(x), *x.shape[2:], math.ceil(channels / rows) * rows), np.int8)
        fmap[..., :channels] = x.transpose(0, 2, 3, 1)
        words = [_fmap_words(image, rows) for image in fmap]
        return [load(self.cfg, BufferId.ACT, self.input_base + i * len(w), w) for i, w in enumerate(words)]

    def inference_words(self, x):
        """Link words of one run: each image's LOAD and the RUN of its program section, then the RUN of the rest
        (the sections of images not given run all the same, on whatever their words hold)."""
        loads = self.input_words(x)
        runs = self.run_words.reshape(-1, INSTRUCTION_WORDS)
        return np.concatenate([*(word for i, run in enumerate(runs[:-1]) for word in (loads[i:i + 1] + [run])),
                               runs[-1]])

    def reply_words(self):
        return sum(1 + rows * result_row_words(self.cfg) for _, _, _, rows in self.outputs)

    def assemble(self, results):
        """The ``batch`` outputs (batch, O, out_h, out_w) of one run's RESULT packets."""
        out_channels, out_h, out_w = self.out_shape
        pixels = out_h * out_w
        outputs = [(image * pixels + p0, n0, rows) for image, p0, n0, rows in self.outputs]
        program = Program(words=np.zeros(0, np.uint32), outputs=outputs, m=self.batch * pixels, n=out_channels,
                          macs=self.macs)
        y = program.assemble(results, self.cfg.cols)    # (images x pixels, channels), or (pixels = images, ...)
        return y.reshape(self.batch, out_h, out_w, out_channels).transpose(0, 3, 1, 2)


def compile_resident(cfg, layers, in_shape, bases=None, batch=1):
    """Compile ``layers`` (a chain of :class:`DeviceLayer`, each reading the one before) for an input of
    ``in_shape`` (C, H, W) into a :class:`ResidentModel` for ``cfg`` (ws or os; the row-stationary array's
    results leave as columns and are not stored yet). ``bases`` (``{"weight", "param", "program"}``, default all
    0) are the first words of those memories the model may take: other models stay loaded below them. A run
    computes ``batch`` images, layer by layer (each layer's setup once for all of them).

    Raises TilingError, naming what does not fit, if the weights, parameters, feature maps or program do not
    fit the configuration's buffers."""
    if cfg.dataflow == "rs":
        raise TilingError("resident models run on ws and os arrays; a row-stationary array's result rows are "
                          "output columns, which it does not store on chip yet (accepted: --per-layer)")
    if not layers:
        raise TilingError("a resident model needs at least one layer")
    if batch > 1 and _fully_connected(layers, in_shape):
        model = compile_resident(cfg, layers, (in_shape[0], 1, batch), bases)
        return dataclasses.replace(model, batch=batch, in_shape=tuple(in_shape), out_shape=(model.out_shape[0], 1, 1),
                                   images_as_pixels=True)
    R, C = cfg.rows, cfg.cols
    shapes = [tuple(in_shape)]
    for index, layer in enumerate(layers):
        if layer.w.shape[1] != shapes[-1][0]:
            raise TilingError(f"layer {index} reads {layer.w.shape[1]} channels; the layer before gives "
                              f"{shapes[-1][0]}")
        violation = conv_limits_violation(layer.kernel, layer.strides, layer.pads)
        if violation:
            raise TilingError(f"layer {index}: {violation}")
        shapes.append(layer.output_shape(shapes[-1]))
    blocks = [math.ceil(c / R) for c, _, _ in shapes]
    map_words = [h * w * b for (_, h, w), b in zip(shapes, blocks, strict=True)]
    # tensor i (0: the input) is written by layer i - 1 and read by layer i; the last layer's output leaves as
    # RESULT packets and takes no words
    offsets = plan_memory([batch * words for words in map_words[:-1]],
                          [(max(0, i - 1), i) for i in range(len(layers))], cfg.act_depth)

    bases = {"weight": 0, "param": 0, "program": 0, **(bases or {})}
    weights, params, per_layer = [], [], []
    array_cycles = [0]    # (a list: the commands() closures add to it) vectors or steps into the array, per run
    weight_base, param_base = bases["weight"], bases["param"]
    outputs = []
    for index, layer in enumerate(layers):
        (_, in_h, in_w), (out_channels, out_h, out_w) = shapes[index], shapes[index + 1]
        kh, kw = layer.kernel
        folds = kh * kw * blocks[index]
        gemm_w = conv_as_gemm_weights(layer.w, R, blocks[index])
        check_gemm_operands(np.zeros((1, folds * R), np.int8), gemm_w, layer.bias, layer.scale, layer.y_zp)
        gemm = _GemmTiles(cfg, np.zeros((1, folds * R), np.int8), gemm_w, np.asarray(layer.bias),
                          np.asarray(layer.scale), conv=True)
        stored, sparse, tile_words = _weight_tiles(cfg, gemm, folds)
        _check_fits("weight", weight_base + sum(tile_words), cfg.weight_depth)
        _check_fits("param", param_base + gemm.n_tiles, cfg.param_depth)
        weights += [_sparse_weight_tile(gemm, t, stored[t], kw, blocks[index]) if sparse[t] else gemm._weight_tile(t)
                    for t in range(gemm.n_tiles)]
        tile_bases = weight_base + np.cumsum([0] + tile_words[:-1])
        params.append((gemm.bias.reshape(gemm.n_tiles, C), gemm.scale.reshape(gemm.n_tiles, C)))
        last = index == len(layers) - 1
        setup = instruction(cfg, Opcode.CONV_SETUP, in_h=in_h, in_w=in_w, out_w=out_w, channel_blocks=blocks[index],
                            kernel_h=kh, kernel_w=kw, stride=layer.strides[0], pad_top=layer.pads[0],
                            pad_left=layer.pads[1], pad_value=int(layer.pad_value))
        pixels = out_h * out_w
        block_rows = min(pixels, cfg.acc_half_depth, 4 * (R + C)) if cfg.dataflow == "ws" else min(pixels, R)
        k_field = folds if cfg.dataflow == "ws" else folds * R

        def commands(images, index=index, gemm=gemm, last=last, out_channels=out_channels, out_w=out_w,
                     pixels=pixels, block_rows=block_rows, k_field=k_field, tile_bases=tile_bases, stored=stored,
                     sparse=sparse, param_base=param_base, y_zp=int(layer.y_zp)):
            # the layer's commands for `images`, output tile by output tile
            words = []
            for t in range(gemm.n_tiles):
                first = t * C   # the tile's first output channel: where its rows start within a pixel's words
                if not last:
                    words.append(instruction(cfg, Opcode.STORE_SETUP, lane=first % R,
                                             lanes=min(C, out_channels - first), stride=blocks[index + 1]))
                for image, p0 in itertools.product(images, range(0, pixels, block_rows)):
                    rows = min(block_rows, pixels - p0)
                    store = {} if last else {"store": 1, "s_base": offsets[index + 1] + image * map_words[index + 1]
                                             + p0 * blocks[index + 1] + first // R}
                    k = len(stored[t]) if sparse[t] else k_field
                    array_cycles[0] += rows * k if cfg.dataflow == "ws" else k
                    words.append(instruction(cfg, Opcode.GEMM, m=rows, k=k,
                                             x_base=offsets[index] + image * map_words[index],
                                             w_base=int(tile_bases[t]), p_base=param_base + t, y_zp=y_zp, conv=1,
                                             out_y=p0 // out_w, out_x=p0 % out_w, sparse=int(sparse[t]), **store))
                    if last:
                        outputs.append((image, p0, first, rows))
            return words

        per_layer.append((setup, commands))
        weight_base += sum(tile_words)
        param_base += gemm.n_tiles

    # The first layer runs image by image, each image a program section of its own that the host RUNs right after
    # that image's LOAD: the next image's LOAD then overlaps this one's compute. The other layers follow in one
    # section, each after the layer before has stored its maps (WAIT), over every image at once.
    wait = instruction(cfg, Opcode.WAIT, pending=0)
    setup, first_layer = per_layer[0]
    # (the run before may still be reading or writing these feature maps)
    sections = [[wait, setup, *first_layer([0])]] + [first_layer([image]) for image in range(1, batch)]
    rest = [word for setup, commands in per_layer[1:] for word in (wait, setup, *commands(range(batch)))]
    # the next inputs may overwrite these only once every command that reads them is done
    sections.append(rest + [wait])
    sections = [np.concatenate(section) for section in sections]
    program = np.concatenate(sections)

    _check_fits("program", bases["program"] + len(program), cfg.program_depth)
    store_program, _ = stored_program(cfg, program, bases["program"])
    starts = bases["program"] + np.cumsum([0] + [len(section) for section in sections[:-1]])
    runs = [instruction(cfg, Opcode.RUN, base=int(start), words=len(section))
            for start, section in zip(starts, sections, strict=True)]
    bias = np.concatenate([b for b, _ in params])
    scale = np.concatenate([s for _, s in params])
    load_words = [store_program, load(cfg, BufferId.WEIGHT, bases["weight"], np.concatenate(weights)),
                  load(cfg, BufferId.PARAM, bases["param"], (bias, scale))]
    macs = batch * sum(int(np.prod(shapes[i + 1][1:])) * layer.own_macs_per_pixel for i, layer in enumerate(layers))
    plan = {"batch": batch, "tensors": [{"shape": list(shape), "act_words": [offset, offset + batch * words]}
                                        for shape, offset, words in zip(shapes, offsets, map_words, strict=False)],
            "weight_words": weight_base - bases["weight"], "param_words": param_base - bases["param"],
            "program_words": len(program), "bases": bases, "array_cycles": array_cycles[0]}
    return ResidentModel(cfg=cfg, batch=batch, in_shape=tuple(in_shape), out_shape=shapes[-1],
                         load_words=np.concatenate(load_words), run_words=np.concatenate(runs), input_base=offsets[0],
                         outputs=outputs, macs=macs, plan=plan)


def _weight_tiles(cfg, gemm, folds):
    """Per output tile of a layer: the folds its commands run, whether they are ``sparse`` (ws: only the folds
    whose weights are not all zero are stored, each behind its header), and its weight words. A tile with no such
    fold still runs, on one zero fold: its outputs (the requantised bias) are stored for the next layer."""
    stored, sparse, words = _weight_tile_plan(gemm, folds, skip=True)
    for t, kept in enumerate(stored):
        if not len(kept):
            stored[t] = np.zeros(1, int)
            sparse[t] = cfg.dataflow == "ws" and cfg.cols >= 2 and folds > 1
            words[t] = cfg.rows + 1 if sparse[t] else gemm.weight_words
    return stored, sparse, [int(w) for w in words]


def _fully_connected(layers, in_shape):
    """Layers that are fully connected ones: 1x1 convolutions over a 1x1 map."""
    return tuple(in_shape[1:]) == (1, 1) and all(layer.kernel == (1, 1) and tuple(layer.strides) == (1, 1)
                                                 and not any(layer.pads) for layer in layers)


def _check_fits(buffer, words, depth):
    if words > depth:
        raise TilingError(f"the model's {buffer} words (at least {words}) do not fit {buffer}_depth={depth} "
                          f"(accepted: {buffer}_depth >= {words}, or --per-layer)")

