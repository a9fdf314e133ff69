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
import math

import numpy as np

from tessera.hw.isa import BufferId, Opcode, result_row_words
from tessera.sw_driver.compiler import (
    Program,
    TilingError,
    _fmap_words,
    _GemmTiles,
    check_gemm_operands,
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

    ``load_words`` stores the weights, parameters and program (sent once); ``inference_words(x)`` loads an
    input and runs the program; ``assemble`` turns the RESULT packets of one inference into its output
    (O, out_h, out_w). ``plan`` says where each tensor lives."""
    cfg: object
    in_shape: tuple
    out_shape: tuple
    load_words: np.ndarray
    run_words: np.ndarray
    input_base: int
    outputs: list            # (first pixel, first channel, rows) of the last layer's commands
    macs: int
    plan: dict               # what lives where: tensors' activation words, weight and parameter words

    @property
    def commands(self):
        return len(self.outputs)

    def input_words(self, x):
        """The LOAD of one input image x (C, H, W) int8 into its place in the activation buffer."""
        x = np.asarray(x)
        if x.dtype != np.int8 or x.shape != tuple(self.in_shape):
            raise ValueError(f"a resident model's input is int8 {list(self.in_shape)}; got {x.dtype}{list(x.shape)}")
        channels, rows = x.shape[0], self.cfg.rows
        fmap = np.zeros((*x.shape[1:], math.ceil(channels / rows) * rows), np.int8)
        fmap[..., :channels] = x.transpose(1, 2, 0)
        return load(self.cfg, BufferId.ACT, self.input_base, _fmap_words(fmap, rows))

    def inference_words(self, x):
        """Link words of one inference: the input's LOAD, then the RUN."""
        return np.concatenate([self.input_words(x), self.run_words])

    def reply_words(self):
        return sum(1 + rows * result_row_words(self.cfg) for _, _, rows in self.outputs)

    def assemble(self, results):
        out_channels, out_h, out_w = self.out_shape
        program = Program(words=np.zeros(0, np.uint32), outputs=self.outputs, m=out_h * out_w, n=out_channels,
                          macs=self.macs)
        return program.assemble(results, self.cfg.cols).reshape(out_h, out_w, out_channels).transpose(2, 0, 1)


def compile_resident(cfg, layers, in_shape):
    """Compile ``layers`` (a chain of :class:`DeviceLayer`, each reading the one before) for an input of
    ``in_shape`` (C, H, W) into a :class:`ResidentModel` for ``cfg`` (ws or os; the row-stationary array's
    results leave as columns and are not stored yet).

    Raises TilingError, naming what does not fit, if the weights, parameters, feature maps or program do not
    fit the configuration's buffers."""
    if cfg.dataflow == "rs":
        raise TilingError("resident models run on ws and os arrays; a row-stationary array's result rows are "
                          "output columns, which it does not store on chip yet (accepted: --per-layer)")
    if not layers:
        raise TilingError("a resident model needs at least one layer")
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
    offsets = plan_memory(map_words[:-1], [(max(0, i - 1), i) for i in range(len(layers))], cfg.act_depth)

    weights, params, program = [], [], []
    weight_base = param_base = 0
    outputs = []
    for index, layer in enumerate(layers):
        (_, in_h, in_w), (out_channels, out_h, out_w) = shapes[index], shapes[index + 1]
        kh, kw = layer.kernel
        folds = kh * kw * blocks[index]
        gemm_w = _conv_as_gemm_weights(layer.w, R, blocks[index])
        check_gemm_operands(np.zeros((1, folds * R), np.int8), gemm_w, layer.bias, layer.scale, layer.y_zp)
        gemm = _GemmTiles(cfg, np.zeros((1, folds * R), np.int8), gemm_w, np.asarray(layer.bias),
                          np.asarray(layer.scale), conv=True)
        _check_fits("weight", weight_base + gemm.n_tiles * gemm.weight_words, cfg.weight_depth)
        _check_fits("param", param_base + gemm.n_tiles, cfg.param_depth)
        weights += [gemm._weight_tile(t) for t in range(gemm.n_tiles)]
        params.append((gemm.bias.reshape(gemm.n_tiles, C), gemm.scale.reshape(gemm.n_tiles, C)))
        last = index == len(layers) - 1
        if index:
            program.append(instruction(cfg, Opcode.WAIT, pending=0))   # the layer before has stored its map
        program.append(instruction(cfg, Opcode.CONV_SETUP, in_h=in_h, in_w=in_w, out_w=out_w,
                                   channel_blocks=blocks[index], kernel_h=kh, kernel_w=kw, stride=layer.strides[0],
                                   pad_top=layer.pads[0], pad_left=layer.pads[1], pad_value=int(layer.pad_value)))
        pixels = out_h * out_w
        block_rows = min(pixels, cfg.acc_half_depth, 4 * (R + C)) if cfg.dataflow == "ws" else min(pixels, R)
        k_field = folds if cfg.dataflow == "ws" else folds * R
        for t in range(gemm.n_tiles):
            first = t * C   # the tile's first output channel: where its rows start within a pixel's words
            if not last:
                program.append(instruction(cfg, Opcode.STORE_SETUP, lane=first % R,
                                           lanes=min(C, out_channels - first), stride=blocks[index + 1]))
            for p0 in range(0, pixels, block_rows):
                rows = min(block_rows, pixels - p0)
                store = {} if last else {
                    "store": 1, "s_base": offsets[index + 1] + p0 * blocks[index + 1] + first // R}
                program.append(instruction(cfg, Opcode.GEMM, m=rows, k=k_field, x_base=offsets[index],
                                           w_base=weight_base + t * gemm.weight_words, p_base=param_base + t,
                                           y_zp=int(layer.y_zp), conv=1, out_y=p0 // out_w, out_x=p0 % out_w,
                                           **store))
                if last:
                    outputs.append((p0, first, rows))
        weight_base += gemm.n_tiles * gemm.weight_words
        param_base += gemm.n_tiles
    # the next input may overwrite this one only once every command that reads it is done
    program.append(instruction(cfg, Opcode.WAIT, pending=0))
    program = np.concatenate(program)

    _check_fits("program", len(program), cfg.program_depth)
    store_program, run = stored_program(cfg, program)
    load_words = [store_program]
    if weights:
        load_words.append(load(cfg, BufferId.WEIGHT, 0, np.concatenate(weights)))
    bias = np.concatenate([b for b, _ in params])
    scale = np.concatenate([s for _, s in params])
    load_words.append(load(cfg, BufferId.PARAM, 0, (bias, scale)))
    macs = sum(int(np.prod(shapes[i + 1])) * int(np.prod(layer.w.shape[1:])) for i, layer in enumerate(layers))
    plan = {"tensors": [{"shape": list(shape), "act_words": [offset, offset + words]}
                        for shape, offset, words in zip(shapes, offsets, map_words, strict=False)],
            "weight_words": weight_base, "param_words": param_base, "program_words": len(program)}
    return ResidentModel(cfg=cfg, in_shape=tuple(in_shape), out_shape=shapes[-1],
                         load_words=np.concatenate(load_words), run_words=run, input_base=offsets[0],
                         outputs=outputs, macs=macs, plan=plan)


def _conv_as_gemm_weights(w, rows, blocks):
    """Conv weights (O, C, KH, KW) as the GEMM a conv command runs: fold ``(kh * KW + kw) * blocks + b`` holds
    the weights of channel block ``b`` at tap (kh, kw), ``rows`` input channels a fold (see hw.layouts)."""
    out_channels, _, kh, kw = w.shape
    gemm_w = np.zeros((kh * kw * blocks * rows, out_channels), np.int8)
    for i in range(kh):
        for j in range(kw):
            for b in range(blocks):
                f = (i * kw + j) * blocks + b
                part = w[:, b * rows:(b + 1) * rows, i, j].T
                gemm_w[f * rows:f * rows + len(part)] = part
    return gemm_w


def _check_fits(buffer, words, depth):
    if words > depth:
        raise TilingError(f"the model's {buffer} words (at least {words}) do not fit {buffer}_depth={depth} "
                          f"(accepted: {buffer}_depth >= {words}, or --per-layer)")

