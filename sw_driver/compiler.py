"""The layer compiler: tiles a layer onto a configuration and emits the device's instruction stream.

Tiles of activations (row blocks), weights (column tiles) and parameters live in slots of the on-chip
buffers. A tile is loaded just before the first command that needs it, while earlier commands still run
(the device overlaps loads with compute); when a slot must be reused, a WAIT holds the load back until the
commands that read the old tile have completed. Commands are ordered so that each new tile brings as much
new work as possible ("growing square" over row blocks x column tiles), which keeps a compute-bound layer
from waiting on the link after the first tiles.
"""

import collections
import copy
import dataclasses
import math
from typing import NamedTuple

import numpy as np

from tessera.gen.packing import pack
from tessera.hw.array_rs import rs_mapping
from tessera.hw.controller_queues import COMMAND_QUEUE
from tessera.hw.isa import INSTRUCTION_WORDS, BufferId, Opcode, result_row_words, words_per_buffer_word
from tessera.hw.layouts import (
    MAX_KERNEL,
    MAX_PAD,
    MAX_STRIDE,
    act_word,
    fmap_word,
    fold_header_layout,
    rs_filter_entries,
    rs_filter_word,
    rs_result_row,
    weight_word,
)
from tessera.sw_driver.depthwise import (
    depthwise_block,
    depthwise_eligible,
    depthwise_fields,
    depthwise_geometry,
    depthwise_weight_words,
)
from tessera.sw_driver.isa_encode import disassemble, instruction, load
from tessera.sw_driver.space_to_depth import input_fold

__all__ = ["Program", "compile_gemm", "compile_conv", "raw_results", "conv_output_shape", "dense_group_weights",
           "check_gemm_operands", "conv_limits_violation", "TilingError"]


_MAX_PRODUCT = 128 * 128  # |int8 x int8| at most, reached by -128 x -128


class TilingError(ValueError):
    """The layer cannot be tiled onto this configuration; the message says which limit and by how much."""


def check_gemm_operands(x, w, bias, scale, y_zp):
    """Validate GEMM operands for the core; return them as arrays, or raise :class:`TilingError`."""
    x, w = np.asarray(x), np.asarray(w)
    bias = np.asarray(bias)
    scale = np.asarray(scale, dtype=np.float32)
    if x.dtype != np.int8 or w.dtype != np.int8 or x.ndim != 2 or w.ndim != 2:
        raise TilingError(f"x and w must be 2-D int8 arrays, got x {x.dtype}{x.shape} and w {w.dtype}{w.shape}")
    (m, k), (k2, n) = x.shape, w.shape
    if k != k2 or m == 0 or k == 0 or n == 0:
        raise TilingError(f"shapes do not make a GEMM: x is {x.shape}, w is {w.shape}")
    if bias.shape != (n,) or scale.shape != (n,):
        raise TilingError(f"bias and scale need shape ({n},), got {bias.shape} and {scale.shape}")
    if bias.dtype != np.int32:
        raise TilingError(f"bias must be int32, got {bias.dtype}")
    if not (np.all(np.isfinite(scale)) and np.all((scale == 0) | (np.abs(scale) >= np.finfo(np.float32).tiny))):
        raise TilingError("scale must be finite normal float32 values or zero (the requantiser's domain)")
    if not -128 <= int(y_zp) <= 127:
        raise TilingError(f"y_zp {y_zp} is out of range; accepted: -128 to 127")
    headroom = (2**31 - 1 - int(np.abs(bias.astype(np.int64)).max())) // _MAX_PRODUCT
    if k > headroom:
        raise TilingError(f"K={k} could overflow the int32 accumulator; accepted: K <= {headroom} for this bias")
    return x, w, bias, scale


@dataclasses.dataclass
class Program:
    """An instruction stream and how to read its results."""
    words: np.ndarray        # uint32 link words
    outputs: list            # (m0, n0, rows) per compute command, in command order
    m: int
    n: int
    macs: int
    macs_skipped: int = 0     # MACs of all-zero weight tiles the program does not run
    constants: list = dataclasses.field(default_factory=list)   # (n0, int8 row) of output tiles not run
    raw: bool = False        # the results are the int32 accumulators (see raw_results)

    @property
    def commands(self):
        return len(self.outputs)

    @property
    def dtype(self):
        """The outputs' element type: int8, or int32 for a raw program."""
        return np.int32 if self.raw else np.int8

    def reply_words(self, cfg):
        """Words of the RESULT packets the device sends back for this program."""
        rows_out = 4 if self.raw else 1      # a raw row comes as four rows of its bytes
        return sum(1 + rows * rows_out * result_row_words(cfg) for _, _, rows in self.outputs)

    def result_rows(self, results):
        """The result packets' rows as the program's outputs: a raw program's byte rows joined into int32."""
        if not self.raw:
            return results
        return [_joined_bytes(np.asarray(block)) for block in results]

    def assemble(self, results, cols):
        """Place per-command result rows into the ``m x n`` output."""
        if len(results) != len(self.outputs):
            raise ValueError(f"expected results of {len(self.outputs)} commands, got {len(results)}")
        results = self.result_rows(results)
        y = np.zeros((self.m, self.n), dtype=self.dtype)
        for n0, row in self.constants:
            y[:, n0:n0 + len(row)] = row
        for (m0, n0, rows), block in zip(self.outputs, results, strict=True):
            width = min(cols, self.n - n0)
            y[m0:m0 + rows, n0:n0 + width] = np.asarray(block)[:rows, :width]
        return y


def _joined_bytes(block):
    """Rows of int8 bytes, four per int32 row (least significant first), as the int32 rows."""
    if len(block) % 4:
        raise ValueError(f"a raw result of {len(block)} rows is not whole int32 rows (four byte rows each)")
    planes = np.ascontiguousarray(block).view(np.uint8).astype(np.uint32).reshape(-1, 4, block.shape[1])
    words = planes[:, 0] | planes[:, 1] << 8 | planes[:, 2] << 16 | planes[:, 3] << 24
    return words.astype(np.uint32).view(np.int32)


def raw_results(cfg, program):
    """``program`` with every compute command's ``raw`` bit set: its outputs are the accumulators' int32 values
    (``x @ w`` with the configuration's products, no bias, no requantisation), for integer layers with an int32
    output (MatMulInteger, ConvInteger). An output tile the program skips (all-zero weights) is 0."""
    words = np.array(program.words, dtype=np.uint32, copy=True)
    at = 0
    for opcode, operands, data in disassemble(cfg, words):
        if opcode == Opcode.GEMM:
            words[at:at + INSTRUCTION_WORDS] = instruction(cfg, Opcode.GEMM, **{**operands, "raw": 1})
        at += INSTRUCTION_WORDS + len(data)
    raw = copy.copy(program)
    raw.words, raw.raw = words, True
    raw.constants = [(where, np.zeros(np.shape(row), np.int32)) for where, row in program.constants]
    return raw


class _SlotPool:
    """Fixed-size slots of one buffer (``act``, ``weight`` or ``param``), reused least recently used first; by
    default as many slots as the buffer's depth holds."""

    _NAMES = {"act": "activation", "weight": "weight", "param": "parameter"}

    def __init__(self, cfg, buffer, slot_words, slots=None):
        depth = getattr(cfg, f"{buffer}_depth")
        slots = depth // slot_words if slots is None else slots
        if slots < 1:
            raise TilingError(f"one {self._NAMES[buffer]} tile needs {slot_words} words; {buffer}_depth is {depth} "
                              f"(accepted: {buffer}_depth >= {slot_words} for this layer)")
        self.slot_words = slot_words
        self.resident = collections.OrderedDict()   # tile -> slot
        self.free = list(range(slots))
        self.last_reader = {}                       # slot -> index of the last command reading it

    def find(self, tile):
        if tile in self.resident:
            self.resident.move_to_end(tile)
            return self.resident[tile], None
        if self.free:
            slot = self.free.pop(0)
            wait_for = None
        else:
            _, slot = self.resident.popitem(last=False)
            wait_for = self.last_reader.get(slot)
        self.resident[tile] = slot
        return slot, wait_for


class _Stream:
    """An instruction stream under construction: tiles placed in slot pools (loaded behind a WAIT when their
    slot is still read by earlier commands), and commands that record which slots they read."""

    def __init__(self, cfg, words=()):
        self.cfg = cfg
        self.words = list(words)
        self.commands = 0       # commands issued so far
        self.waited = 0         # commands known complete through an earlier WAIT

    def place(self, pool, buffer, tile, payload):
        """Slot of ``tile`` in ``pool``, loading ``payload`` into it unless it is already resident."""
        resident = tile in pool.resident
        slot, wait_for = pool.find(tile)
        if not resident:
            if wait_for is not None and wait_for + 1 > self.waited:
                self.waited = wait_for + 1
                self.words.append(instruction(self.cfg, Opcode.WAIT, pending=self.commands - self.waited))
            self.words.append(load(self.cfg, buffer, slot * pool.slot_words, payload))
        return slot

    def command(self, words, *reads):
        """Append a compute command that reads ``(pool, slot)`` pairs."""
        self.words.append(words)
        for pool, slot in reads:
            pool.last_reader[slot] = self.commands
        self.commands += 1


def _square_order(blocks, tiles):
    """Every (block, tile) pair, each new block or tile followed by all the work it completes."""
    order = []
    for s in range(max(blocks, tiles)):
        if s < tiles:
            order += [(b, s) for b in range(min(s, blocks))]
        if s < blocks:
            order += [(s, t) for t in range(min(s + 1, tiles))]
    return order


def _block_order(blocks, tiles):
    """Row block by row block: the weights stream in once, during the first block."""
    return [(b, t) for b in range(blocks) for t in range(tiles)]


#: Commands the controller can queue ahead of the core: its command FIFO, plus the one the core holds (the core
#: takes a command from the FIFO when it starts it, which frees that FIFO entry).
_RUN_AHEAD = COMMAND_QUEUE + 1


def _estimate_cycles(steps):
    """Cycles a schedule takes at one link word per cycle, with loads overlapping queued compute.

    A deliberately simple model of the device (the RTL's counters are the measurement): the controller
    executes steps in order, a GEMM queues unless ``_RUN_AHEAD`` are already waiting, the core runs GEMMs
    back to back, a WAIT holds the link until enough of them are done.
    """
    link = 0
    ends = []       # completion time of each GEMM
    for kind, value in steps:
        if kind == "load":
            link += value
        elif kind == "wait":
            done = len(ends) - value
            if done > 0:
                link = max(link, ends[done - 1])
        else:
            if len(ends) >= _RUN_AHEAD:
                link = max(link, ends[-_RUN_AHEAD] - value)   # a queue slot frees when a GEMM starts
            start = max(link, ends[-1] if ends else 0)
            ends.append(start + value)
    return ends[-1] if ends else link


def compile_gemm(cfg, x, w, bias, scale, y_zp):
    """Compile ``Y = requantize(x @ w + bias, scale, y_zp)`` (int8 operands, input zero point already folded
    into ``bias``) into a :class:`Program` for the device of ``cfg``.

    Several schedules (row block sizes, command orders) are laid out symbolically, their cycles estimated
    with :func:`_estimate_cycles`, and the fastest one is emitted.
    """
    x, w, bias, scale = check_gemm_operands(x, w, bias, scale, y_zp)
    if cfg.dataflow == "rs":
        return _gemm_as_pointwise_conv(cfg, x, w, bias, scale, y_zp)
    layer = _GemmTiles(cfg, x, w, bias, scale)
    candidates = []
    for block_rows in layer.block_sizes():
        for order in (_square_order, _block_order):
            steps = layer.schedule(block_rows, order)
            candidates.append((_estimate_cycles(layer.cost(steps)), block_rows, order.__name__, steps))
    _, block_rows, _, steps = min(candidates, key=lambda c: c[0])
    return layer.emit(steps, block_rows, int(y_zp))


class _GemmTiles:
    """A GEMM cut into row blocks of activations and column tiles of weights, in the layouts of
    :mod:`tessera.hw.layouts`."""

    def __init__(self, cfg, x, w, bias, scale, *, conv=False):
        self.cfg = cfg
        R, C = cfg.rows, cfg.cols
        (self.m, self.k), self.n = x.shape, w.shape[1]
        self.n_tiles = math.ceil(self.n / C)
        self.x = x
        self.w = np.zeros((self.k, self.n_tiles * C), np.int8)
        self.w[:, :self.n] = w
        self.bias, self.scale = _tile_params(bias, scale, C)
        if cfg.dataflow == "ws":
            self.folds = math.ceil(self.k / R)
            if cfg.act_depth // self.folds == 0:
                raise TilingError(f"K={self.k} needs {self.folds} activation words per row; act_depth is "
                                  f"{cfg.act_depth}")
            self.weight_words = self.folds * R
        else:
            # a conv's activations are a stored feature map, gathered on chip: only its weights need k words
            if (self.k > cfg.act_depth and not conv) or self.k > cfg.weight_depth:
                raise TilingError(f"K={self.k} reduction steps must fit the buffers; accepted: K <= "
                                  f"{min(cfg.act_depth, cfg.weight_depth)} (act_depth, weight_depth)")
            self.weight_words = self.k
        self.link_words = {b: words_per_buffer_word(cfg, b) for b in BufferId}

    def block_sizes(self):
        """Candidate rows per command. WS wants at least rows + cols vectors per fold (so the array's weight
        preload hides behind the previous fold) and not more than an accumulator half; OS tiles are R rows."""
        cfg = self.cfg
        if cfg.dataflow == "os":
            return [cfg.rows]
        limit = min(self.m, cfg.acc_half_depth, cfg.act_depth // self.folds)
        sizes = {min(limit, max(1, size)) for size in (cfg.rows + cfg.cols, 2 * (cfg.rows + cfg.cols),
                                                       4 * (cfg.rows + cfg.cols), 8 * (cfg.rows + cfg.cols))}
        return sorted(sizes)

    def act_words(self, rows):
        return self.folds * rows if self.cfg.dataflow == "ws" else self.k

    def schedule(self, block_rows, order):
        """Symbolic steps: ("load", buffer, address, tile, rows), ("wait", pending), ("gemm", b, t, addresses,
        rows). Nothing is packed yet, so schedules are cheap to compare."""
        cfg = self.cfg
        blocks = math.ceil(self.m / block_rows)
        slot_act_words = self.act_words(block_rows)
        acts = _SlotPool(cfg, "act", slot_act_words)
        weights = _SlotPool(cfg, "weight", self.weight_words)
        params = _SlotPool(cfg, "param", 1)
        steps = []
        waited = 0  # commands a WAIT already guaranteed complete; later WAITs for fewer are redundant
        for index, (b, t) in enumerate(order(blocks, self.n_tiles)):
            rows = min(block_rows, self.m - b * block_rows)
            addresses = []
            for pool, buffer, tile in ((acts, BufferId.ACT, b), (weights, BufferId.WEIGHT, t),
                                       (params, BufferId.PARAM, t)):
                resident = tile in pool.resident
                slot, wait_for = pool.find(tile)
                if not resident:
                    if wait_for is not None and wait_for + 1 > waited:
                        waited = wait_for + 1
                        steps.append(("wait", index - waited))
                    steps.append(("load", buffer, slot * pool.slot_words, tile, rows))
                pool.last_reader[slot] = index
                addresses.append(slot * pool.slot_words)
            steps.append(("gemm", b, t, addresses, rows))
        return steps

    def cost(self, steps):
        """The steps as ("load", link words) / ("wait", pending) / ("gemm", cycles) for the estimate."""
        sizes = {BufferId.ACT: lambda rows: self.act_words(rows), BufferId.WEIGHT: lambda rows: self.weight_words,
                 BufferId.PARAM: lambda rows: 1}
        out = []
        for step in steps:
            out.append(("load", INSTRUCTION_WORDS))
            if step[0] == "load":
                _, buffer, _, _, rows = step
                out.append(("load", sizes[buffer](rows) * self.link_words[buffer]))
            elif step[0] == "wait":
                out.append(step)
            else:
                rows = step[4]
                out.append(("gemm", rows * self.folds if self.cfg.dataflow == "ws" else self.k))
        return out

    def _act_tile(self, b, block_rows, rows):
        """The activation words of row block ``b`` (``rows`` rows), in the layout of :func:`act_word`."""
        cfg, R = self.cfg, self.cfg.rows
        if cfg.dataflow == "ws":
            block = np.zeros((rows, self.folds, R), np.int8)
            block.reshape(rows, -1)[:, :self.k] = self.x[b * block_rows:b * block_rows + rows]
            fold, row = np.meshgrid(np.arange(self.folds), np.arange(rows), indexing="ij")
            words = np.zeros((self.folds * rows, R), np.int8)
            words[act_word(cfg, rows, fold, row)] = block.transpose(1, 0, 2)
            return words
        block = np.zeros((R, self.k), np.int8)
        block[:rows] = self.x[b * R:b * R + rows]
        words = np.zeros((self.k, R), np.int8)
        words[act_word(cfg, rows, np.arange(self.k), 0)] = block.T
        return words

    def _weight_tile(self, t):
        """The weight words of column tile ``t``, in the layout of :func:`weight_word`."""
        cfg, C = self.cfg, self.cfg.cols
        step, row = np.divmod(np.arange(self.k), cfg.rows) if cfg.dataflow == "ws" else (np.arange(self.k), 0)
        tile = np.zeros((self.weight_words, C), np.int8)
        tile[weight_word(cfg, step, row)] = self.w[:, t * C:(t + 1) * C]
        return tile

    def emit(self, steps, block_rows, y_zp):
        cfg, C = self.cfg, self.cfg.cols
        words, outputs = [], []
        for step in steps:
            if step[0] == "load":
                _, buffer, address, tile, rows = step
                if buffer == BufferId.ACT:
                    payload = self._act_tile(tile, block_rows, rows)
                elif buffer == BufferId.WEIGHT:
                    payload = self._weight_tile(tile)
                else:
                    payload = (self.bias[None, tile * C:(tile + 1) * C], self.scale[None, tile * C:(tile + 1) * C])
                words.append(load(cfg, buffer, address, payload))
            elif step[0] == "wait":
                words.append(instruction(cfg, Opcode.WAIT, pending=step[1]))
            else:
                _, b, t, (x_base, w_base, p_base), rows = step
                k_field = self.folds if cfg.dataflow == "ws" else self.k
                words.append(instruction(cfg, Opcode.GEMM, m=rows, k=k_field, x_base=x_base, w_base=w_base,
                                         p_base=p_base, y_zp=y_zp))
                outputs.append((b * block_rows, t * C, rows))
        return Program(words=np.concatenate(words), outputs=outputs, m=self.m, n=self.n, macs=self.m * self.n * self.k)


def _tile_params(bias, scale, cols):
    """Bias and scale padded to whole output tiles of ``cols`` channels: the padding channels are computed and
    dropped, and a unit scale keeps them in the requantiser's domain."""
    n_tiles = math.ceil(len(bias) / cols)
    padded_bias, padded_scale = np.zeros(n_tiles * cols, np.int32), np.ones(n_tiles * cols, np.float32)
    padded_bias[:len(bias)], padded_scale[:len(scale)] = bias, scale
    return padded_bias, padded_scale


def _constant_outputs(bias, scale, y_zp):
    """What output channels with all-zero weights give at every pixel: their requantised bias (the
    requantiser's contract, :func:`tessera.sw_driver.golden.requantize`)."""
    from tessera.sw_driver.golden import requantize
    return requantize(np.asarray(bias, np.int32)[None], np.asarray(scale, np.float32), int(y_zp))[0]


def _stored_folds(layer, folds, skip):
    """Per column tile of a conv's weights, the folds (rows x cols weight tiles) that are not all zero;
    every fold when ``skip`` is off."""
    R, C = layer.cfg.rows, layer.cfg.cols
    if not skip:
        return [np.arange(folds)] * layer.n_tiles
    nonzero = np.any(layer.w.reshape(folds, R, layer.n_tiles, C) != 0, axis=(1, 3))     # (folds, tiles)
    return [np.flatnonzero(nonzero[:, t]) for t in range(layer.n_tiles)]


def _weight_tile_plan(layer, folds, skip):
    """Per column tile: the folds it runs, whether it is a ``sparse`` command, and its words in the weight
    buffer. Sparse only where a fold is skipped (ws, two or more columns for the header), and never where the
    headers would make a tile that fits dense outgrow the buffer."""
    cfg, R = layer.cfg, layer.cfg.rows
    stored = _stored_folds(layer, folds, skip)
    sparse = [cfg.dataflow == "ws" and cfg.cols >= 2 and 0 < len(s) < folds for s in stored]
    words = [len(s) * (R + 1) if sp else layer.weight_words for s, sp in zip(stored, sparse, strict=True)]
    if max(words) > cfg.weight_depth:
        sparse = [sp and size <= layer.weight_words for sp, size in zip(sparse, words, strict=True)]
        words = [min(size, layer.weight_words) for size in words]
    return stored, sparse, words


def _skipped_weights(layer, counted, stored, sparse, folds, blocks):
    """Weights (per output pixel) of the layer's own (``counted``) that fall in folds the program skips: the
    unstored folds of sparse commands and every fold of a tile that is not run."""
    R, C = layer.cfg.rows, layer.cfg.cols
    blocked = np.zeros((layer.n_tiles * C, blocks * R), bool)
    blocked[:counted.shape[0], :counted.shape[1]] = counted
    per_block = blocked.reshape(layer.n_tiles, C, blocks, R).sum(axis=(1, 3))     # per (tile, channel block)
    total = 0
    for t in range(layer.n_tiles):
        if sparse[t] or not len(stored[t]):
            total += int(per_block[t, np.setdiff1d(np.arange(folds), stored[t]) % blocks].sum())
    return total


def _sparse_weight_tile(layer, t, stored, kw, blocks):
    """The weight tile of a ``sparse`` command: each stored fold's header word (its tap and channel block,
    :func:`tessera.hw.layouts.fold_header_layout`) followed by its ``rows`` weight words."""
    R, C = layer.cfg.rows, layer.cfg.cols
    dense = layer._weight_tile(t).reshape(-1, R, C)
    words = np.zeros((len(stored), R + 1, C), np.int8)
    for i, f in enumerate(stored):
        tap, cb = divmod(int(f), blocks)
        header = pack(fold_header_layout(), {"kh": tap // kw, "kw": tap % kw, "cb": cb})
        words[i, 0, :2] = np.array([header & 0xFF, header >> 8], np.uint8).view(np.int8)
        words[i, 1:] = dense[f]
    return words.reshape(-1, C)


def _fmap_words(fmap, rows):
    """A feature map (H, W, channel_blocks * rows) as activation words, in the layout of
    :func:`tessera.hw.layouts.fmap_word`."""
    in_h, in_w, channels = fmap.shape
    blocks = channels // rows
    y, x, block = np.meshgrid(np.arange(in_h), np.arange(in_w), np.arange(blocks), indexing="ij")
    words = np.zeros((in_h * in_w * blocks, rows), np.int8)
    words[fmap_word(in_w, blocks, y, x, block)] = fmap.reshape(in_h, in_w, blocks, rows)
    return words


def conv_as_gemm_weights(w, rows, blocks):
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


def command_rows(cfg, pixels, whole_half=False):
    """The output pixels of one conv command of a band of ``pixels``: ws, as many as keep the array busy while the
    last command's rows drain, at most an accumulator half (``whole_half``: a whole one); os, a tile's rows."""
    if cfg.dataflow != "ws":
        return min(pixels, cfg.rows)
    return min(pixels, cfg.acc_half_depth, cfg.acc_half_depth if whole_half else 4 * (cfg.rows + cfg.cols))


def conv_limits_violation(kernel, strides, pads):
    """Why no dataflow's conv commands (nor the vector unit's pooling) can take this kernel, stride and padding,
    or None if they can."""
    (kh, kw), (stride_y, stride_x) = kernel, strides
    if stride_y != stride_x or not 1 <= stride_y <= MAX_STRIDE:
        return f"strides {tuple(strides)}: the device supports equal strides of 1 to {MAX_STRIDE}"
    if not (1 <= kh <= MAX_KERNEL and 1 <= kw <= MAX_KERNEL) or max(pads) > MAX_PAD:
        return (f"kernel {kh}x{kw} with pads {tuple(pads)}: the device supports kernels up to "
                f"{MAX_KERNEL}x{MAX_KERNEL}, pads up to {MAX_PAD}")
    return None


def compile_conv(cfg, x, w, bias, scale, y_zp, *, strides=(1, 1), pads=(0, 0, 0, 0), pad_value=0,
                 skip_zero_tiles=True, counted=None):
    """Compile a 2-D convolution (``group=1``) of one image or a batch, for either dataflow.

    The input feature map goes over the link once and stays in the activation buffer; every conv command
    gathers its taps on chip (:mod:`tessera.hw.window`). ``x`` is int8 (C, H, W) or (N, C, H, W), ``w`` int8 (O, C,
    KH, KW), the input zero point is already folded into ``bias`` and ``pad_value`` is that zero point
    (padding must read as it). Returns a :class:`Program` whose ``assemble`` gives (N * out_h * out_w, O),
    image by image; see :func:`conv_output_shape`.

    When an image fits half the activation buffer, the images of a batch take the two halves in turn under
    one CONV_SETUP (a command's ``x_base`` says where its image is), so the next image loads while the array
    works on the previous one. A larger image is split into bands of output rows, which take the halves in
    turn the same way where the buffer's depth is a power of two (else each fills the buffer behind its own
    setup). Each image or band streams in as its first commands need its rows.

    With ``skip_zero_tiles`` (pruned models), all-zero weight tiles cost neither link words nor cycles: a
    column tile of output channels whose weights are all zero is not run (its outputs are the requantised
    bias), and on ``ws`` arrays of two or more columns a command stores and runs only the folds whose
    ``rows x cols`` weight tile is not all zero (``sparse`` commands). ``counted`` (bool (O, C)) says which
    weights are the layer's own, for its MAC count: a grouped conv's dense weights hold zeros between groups.

    A depthwise conv (each output channel reads its own input channel alone: dense weights zero off the diagonal)
    of stride 1 or 2 on a ws array whose rows are a whole number of its columns runs as depthwise commands
    (:mod:`tessera.sw_driver.depthwise`): ``KH * KW`` weight words an output tile, ``KH`` folds a command, each
    streaming its rows' positions once; its bands, stores and outputs are a dense conv's.
    """
    R, C = cfg.rows, cfg.cols
    x, w = np.asarray(x), np.asarray(w)
    if x.ndim == 3:
        x = x[None]
    if x.dtype != np.int8 or w.dtype != np.int8 or x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
        raise TilingError(f"conv needs int8 x (C, H, W) or (N, C, H, W) and w (O, C, KH, KW) with matching C; "
                          f"got x {x.dtype}{x.shape}, w {w.dtype}{w.shape}")
    violation = conv_limits_violation(w.shape[2:], strides, pads)
    fold = input_fold(w.shape[2:], strides, pads, x.shape[2:]) if violation else None
    if fold is not None:    # a strided window past the device's: the host folds the input it sends
        return _compile_folded_conv(cfg, fold, x, w, bias, scale, y_zp, pad_value, skip_zero_tiles, counted)
    if violation:
        raise TilingError(violation)
    if cfg.dataflow == "rs":
        return _compile_conv_rs(cfg, x, w, bias, scale, y_zp, strides, pads, pad_value, skip_zero_tiles, counted)
    images, channels, in_h, in_w = x.shape
    out_channels, _, kh, kw = w.shape
    stride_y, (pad_t, pad_l) = strides[0], pads[:2]
    out_h, out_w = conv_output_shape(in_h, in_w, kh, kw, stride_y, pads)
    blocks = math.ceil(channels / R)
    counted = np.ones((out_channels, channels), bool) if counted is None else np.asarray(counted, bool)
    if depthwise_eligible(cfg, w, strides, out_w):
        plan = _depthwise_plan(cfg, w, np.asarray(bias), np.asarray(scale), y_zp, blocks, out_w, stride_y,
                               skip_zero_tiles, counted)
    else:
        plan = _dense_conv_plan(cfg, w, np.asarray(bias), np.asarray(scale), y_zp, blocks, out_w, skip_zero_tiles,
                                counted)

    fmaps = np.zeros((images, in_h, in_w, blocks * R), np.int8)
    fmaps[..., :channels] = x.transpose(0, 2, 3, 1)
    image_words = in_h * in_w * blocks
    row_words = in_w * blocks
    halves = image_words <= cfg.act_depth // 2
    run_tiles = [t for t, runs in enumerate(plan.runs) if runs]
    weights = _SlotPool(cfg, "weight", max(len(tile.weights) for tile in plan.tiles))
    # A larger map goes in bands of output rows. Where the buffer's addresses wrap at its depth (a power of
    # two), the bands take the two halves in turn as images do: a band's commands address the whole map
    # through a base that puts the band's first input row at the start of its half, so one CONV_SETUP serves
    # every band and the next band loads while the array works on this one. Otherwise each band fills the
    # buffer behind its own setup, which waits for the device to go idle.
    ring = not halves and cfg.act_depth & (cfg.act_depth - 1) == 0 and \
        _output_row_bands(cfg.act_depth // 2, in_h, row_words, out_h, kh, stride_y, check=False)
    bands = [(0, out_h)] if halves else _output_row_bands(cfg.act_depth, in_h, row_words, out_h, kh, stride_y)
    if ring and _ring_pays(cfg, ring, bands, weights, [len(plan.tiles[t].weights) for t in run_tiles],
                           sum(_row_cycles(cfg, plan.tiles[t], plan.kernel["out_w"]) for t in run_tiles)):
        bands = ring
    else:
        ring = None
    shared_setup = halves or bool(ring)
    params = _SlotPool(cfg, "param", 1)
    acts = _SlotPool(cfg, "act", cfg.act_depth // 2 if shared_setup else cfg.act_depth, 2 if shared_setup else 1)
    stream, outputs = _Stream(cfg), []
    pixel_count = images * out_h * out_w

    def setup(first_row, last_row, pad_top):
        # The band of input rows these output rows read, stored from its slot's first word; the geometry's
        # pad_top is counted from the band's first row (see _band_rows).
        return instruction(cfg, Opcode.CONV_SETUP, in_h=last_row - first_row, in_w=in_w, channel_blocks=blocks,
                           stride=stride_y, pad_top=pad_top, pad_left=pad_l, pad_value=int(pad_value),
                           **plan.kernel)

    if shared_setup:
        stream.words.append(setup(0, in_h, pad_t))
    for image in range(images if run_tiles else 0):
        for oy0, oy1 in bands:
            first_row, last_row, band_out_y, band_pad_top = _band_rows(oy0, oy1, stride_y, pad_t, kh, in_h)
            if not shared_setup:
                stream.words.append(setup(first_row, last_row, band_pad_top))
            pixels = (oy1 - oy0) * out_w
            block_rows = command_rows(cfg, pixels)
            band = _fmap_words(fmaps[image, first_row:last_row], R)

            def words_needed(p_end, oy0=oy0, first_row=first_row, last_row=last_row):
                # the words of the input rows that the band's output pixels up to p_end (exclusive) read
                last_in = min(last_row, (oy0 + (p_end - 1) // out_w) * stride_y - pad_t + kh)
                return max(1, last_in - first_row) * row_words

            # The map goes in as the first tile's commands need its rows, so the array starts after one
            # command's rows have arrived instead of the whole map (the rest streams in behind the compute).
            loaded = words_needed(min(block_rows, pixels))
            act_slot = stream.place(acts, BufferId.ACT, (image, oy0), band[:loaded])
            # where the commands see the map: the band's own rows (out_y counted from the band) or, in the
            # ring, the whole map shifted so that its row first_row lands at the slot (addresses wrap)
            x_base = act_slot * acts.slot_words - (first_row * row_words if ring else 0)
            band_y = oy0 if ring else band_out_y
            for t in run_tiles:
                tile = plan.tiles[t]
                w_slot = stream.place(weights, BufferId.WEIGHT, t, tile.weights)
                p_slot = stream.place(params, BufferId.PARAM, t, (plan.bias[None, t * C:(t + 1) * C],
                                                                  plan.scale[None, t * C:(t + 1) * C]))
                for p0 in range(0, pixels, block_rows):
                    rows = min(block_rows, pixels - p0)
                    if words_needed(p0 + rows) > loaded:
                        need = words_needed(p0 + rows)
                        stream.words.append(load(cfg, BufferId.ACT, act_slot * acts.slot_words + loaded,
                                                 band[loaded:need]))
                        loaded = need
                    stream.command(instruction(cfg, Opcode.GEMM, m=rows,
                                               x_base=(x_base + tile.x_offset) % cfg.act_depth,
                                               w_base=w_slot * weights.slot_words, p_base=p_slot, y_zp=int(y_zp),
                                               conv=1, out_y=band_y + p0 // out_w, out_x=p0 % out_w, **tile.fields),
                                   (weights, w_slot), (params, p_slot), (acts, act_slot))
                    outputs.append(((image * out_h + oy0) * out_w + p0, t * C, rows))
    constants = _constant_outputs(plan.bias, plan.scale, y_zp)
    skipped_tiles = [(t * C, constants[t * C:min(out_channels, (t + 1) * C)]) for t, runs in enumerate(plan.runs)
                     if not runs]
    return Program(words=np.concatenate(stream.words) if stream.words else np.zeros(0, np.uint32),
                   outputs=outputs, m=pixel_count, n=out_channels,
                   macs=pixel_count * int(counted.sum()) * kh * kw, macs_skipped=pixel_count * plan.skipped,
                   constants=skipped_tiles)


class _ConvTile(NamedTuple):
    """One output tile of a ws or os conv as its commands run it: its weight words, the GEMM fields its commands
    carry besides the pixels and the bases (``k``, and ``sparse``, or ``taps`` and ``lane_group``), and the word of
    a pixel from which they read the map (a depthwise tile's channel block)."""
    weights: np.ndarray
    fields: dict
    x_offset: int = 0


class _ConvPlan(NamedTuple):
    """A conv's output tiles and whether each runs (not where its weights are all zero), their bias and scale
    padded to whole tiles, its CONV_SETUP's kernel fields (``kernel_h``, ``kernel_w``, ``out_w``) and the layer's
    own weights (per output pixel) that the program does not run."""
    tiles: list
    runs: list
    bias: np.ndarray
    scale: np.ndarray
    kernel: dict
    skipped: int


def _dense_conv_tiles(layer, folds, stored, sparse, kw, blocks):
    """Every output tile of a dense conv (``stored`` and ``sparse`` as :func:`_weight_tile_plan` gives them): its
    weight tile and its commands' ``k`` (ws: the folds it runs; os: every channel of every fold, hw.gather) and
    ``sparse``."""
    k_field = folds if layer.cfg.dataflow == "ws" else folds * layer.cfg.rows
    return [_ConvTile(_sparse_weight_tile(layer, t, stored[t], kw, blocks) if sparse[t] else layer._weight_tile(t),
                      dict(k=len(stored[t]) if sparse[t] else k_field, sparse=int(sparse[t])))
            for t in range(layer.n_tiles)]


def _dense_conv_plan(cfg, w, bias, scale, y_zp, blocks, out_w, skip, counted):
    """A conv as a GEMM of ``KH * KW * blocks`` folds (:func:`conv_as_gemm_weights`); with ``skip``, tiles and
    folds whose weights are all zero are not run (see :func:`compile_conv`)."""
    R = cfg.rows
    kh, kw = w.shape[2:]
    folds = kh * kw * blocks
    # The flattened layer is a GEMM of (out_h*out_w) x (folds*R) x O; check operands and overflow through it.
    w_gemm = conv_as_gemm_weights(w, R, blocks)
    check_gemm_operands(np.zeros((1, folds * R), np.int8), w_gemm, bias, scale, y_zp)
    layer = _GemmTiles(cfg, np.zeros((1, folds * R), np.int8), w_gemm, bias, scale, conv=True)
    stored, sparse, _ = _weight_tile_plan(layer, folds, skip)
    return _ConvPlan(_dense_conv_tiles(layer, folds, stored, sparse, kw, blocks), [len(kept) > 0 for kept in stored],
                     layer.bias, layer.scale, dict(kernel_h=kh, kernel_w=kw, out_w=out_w),
                     _skipped_weights(layer, counted, stored, sparse, folds, blocks))


def _depthwise_tiles(cfg, w):
    """Every output tile of a depthwise conv (dense weights ``w``, zero off the diagonal): its ``KH * KW`` weight
    words, its commands' fields, and the channel block it reads."""
    kernel = w.shape[2:]
    return [_ConvTile(depthwise_weight_words(cfg, w, t), depthwise_fields(cfg, kernel, t), depthwise_block(cfg, t))
            for t in range(math.ceil(len(w) / cfg.cols))]


def _depthwise_plan(cfg, w, bias, scale, y_zp, blocks, out_w, stride, skip, counted):
    """A depthwise conv as depthwise commands (:mod:`tessera.sw_driver.depthwise`); with ``skip``, a tile whose
    weights are all zero is not run."""
    C, (kh, kw) = cfg.cols, w.shape[2:]
    # a column sums its own channel's KH * KW products alone: the accumulator's headroom is for those
    check_gemm_operands(np.zeros((1, kh * kw), np.int8), np.zeros((kh * kw, len(w)), np.int8), bias, scale, y_zp)
    tiles = _depthwise_tiles(cfg, w)
    runs = [not skip or tile.weights.any() for tile in tiles]
    skipped = sum(int(counted[t * C:(t + 1) * C].sum()) for t, run in enumerate(runs) if not run)
    return _ConvPlan(tiles, runs, *_tile_params(bias, scale, C), depthwise_geometry((kh, kw), out_w, stride),
                     skipped * kh * kw)


def _row_cycles(cfg, tile, width):
    """Array cycles a tile's commands take per output row: each fold streams a geometry's row of ``width``
    positions (ws), or steps through an os command's ``k`` for every ``rows`` of them."""
    return width * tile.fields["k"] // (1 if cfg.dataflow == "ws" else cfg.rows)


def _compile_folded_conv(cfg, fold, x, w, bias, scale, y_zp, pad_value, skip_zero_tiles, counted):
    """A strided convolution whose window the device cannot take, run on the input folded space-to-depth by the host
    (:mod:`tessera.sw_driver.space_to_depth`): the same outputs, the layer's own MAC count."""
    counted = np.ones(w.shape[:2], bool) if counted is None else np.asarray(counted, bool)
    program = compile_conv(cfg, fold.input(x, pad_value), fold.weights(w), bias, scale, y_zp, pad_value=pad_value,
                           skip_zero_tiles=skip_zero_tiles, counted=np.tile(counted, (1, fold.stride ** 2)))
    own = len(x) * math.prod(fold.out_hw) * int(counted.sum()) * math.prod(fold.kernel)
    # (the folded kernel's taps past the layer's are zero: skipped MACs scale with the MACs)
    program.macs_skipped = program.macs_skipped * own // program.macs if program.macs else 0
    program.macs = own
    return program


def _gemm_as_pointwise_conv(cfg, x, w, bias, scale, y_zp):
    """A GEMM on the row-stationary array: a 1x1 convolution whose pixels are the rows of ``x``, laid out as
    images of ``cols`` rows (the array's output rows) by up to an accumulator half of columns."""
    m, k = x.shape
    # an image of cols x width pixels must fit half the activation buffer (ceil(k / rows) words a pixel)
    fit = (cfg.act_depth // 2) // (cfg.cols * math.ceil(k / cfg.rows))
    if fit < 1:
        raise TilingError(f"K={k} needs {math.ceil(k / cfg.rows)} activation words per row of the GEMM, times "
                          f"cols={cfg.cols}; half the activation buffer holds {cfg.act_depth // 2}")
    # narrow enough that a command's filters (rs_filters of them, each width result rows) fit an accumulator half
    # (at least one column: with an accumulator half shorter than rs_filters, commands take fewer filters)
    width = min(max(1, cfg.acc_half_depth // min(cfg.rs_filters, w.shape[1])), -(-m // cfg.cols), fit)
    per_image = cfg.cols * width
    images = -(-m // per_image)
    pixels = np.zeros((images * per_image, k), np.int8)
    pixels[:m] = x
    fmaps = pixels.reshape(images, cfg.cols, width, k).transpose(0, 3, 1, 2)
    program = _compile_conv_rs(cfg, fmaps, np.ascontiguousarray(w.T)[:, :, None, None], bias, scale, y_zp,
                               (1, 1), (0, 0, 0, 0), 0)
    program.keep_rows = m
    program.macs = m * k * w.shape[1]     # the layer's, not the padding pixels'
    program.macs_skipped = m * k * len(program.constants)
    return program


class _RowStationaryConv(Program):
    """A row-stationary conv program: each command's result rows are the output columns of its filters, one
    filter after another, lanes the band's output rows (see hw.compute_rs); ``placements`` holds each
    command's (image, first output row, filters), and ``assemble`` gives (N * out_h * out_w, O) like the
    others."""

    def __init__(self, words, outputs, placements, images, out_h, out_w, out_channels, macs):
        super().__init__(words=words, outputs=outputs, m=images * out_h * out_w, n=out_channels, macs=macs)
        self.placements, self.out_h, self.out_w = placements, out_h, out_w
        self.keep_rows = self.m     # a GEMM mapped onto a conv keeps its own rows only

    def assemble(self, results, cols):
        if len(results) != len(self.placements):
            raise ValueError(f"expected results of {len(self.placements)} commands, got {len(results)}")
        images = self.m // (self.out_h * self.out_w)
        y = np.zeros((images, self.n, self.out_h, self.out_w), self.dtype)
        for f, value in self.constants:
            y[:, f] = value[0]
        for (image, oy0, filters), block in zip(self.placements, self.result_rows(results), strict=True):
            rows = min(cols, self.out_h - oy0)
            f, ox = np.meshgrid(np.arange(len(filters)), np.arange(self.out_w), indexing="ij")
            columns = np.asarray(block)[rs_result_row(self.out_w, f, ox), :rows]     # (filters, out_w, rows)
            y[image, list(filters), oy0:oy0 + rows] = columns.transpose(0, 2, 1)
        return y.transpose(0, 2, 3, 1).reshape(self.m, self.n)[:self.keep_rows]


def _compile_conv_rs(cfg, x, w, bias, scale, y_zp, strides, pads, pad_value, skip_zero_tiles=True, counted=None):
    """A convolution on the row-stationary array: one command per (image, band of ``cols`` output rows, group
    of up to ``cfg.rs_filters`` filters), reducing over the channel blocks of the feature map (hw.compute_rs).
    With ``skip_zero_tiles``, a filter whose weights are all zero is not run (its outputs are the requantised
    bias)."""
    R, C = cfg.rows, cfg.cols
    images, channels, in_h, in_w = x.shape
    out_channels, _, kh, kw = w.shape
    stride_y, (pad_t, pad_l) = strides[0], pads[:2]
    out_h, out_w = conv_output_shape(in_h, in_w, kh, kw, stride_y, pads)
    if out_w > cfg.acc_half_depth:
        raise TilingError(f"output width {out_w} exceeds an accumulator half ({cfg.acc_half_depth} rows)")
    bias, scale = np.asarray(bias, np.int32).reshape(-1), np.asarray(scale, np.float32).reshape(-1)
    if bias.shape != (out_channels,) or scale.shape != (out_channels,):
        raise TilingError(f"bias and scale need {out_channels} entries; got {bias.shape} and {scale.shape}")
    # overflow and operand checks through the equivalent GEMM
    check_gemm_operands(np.zeros((1, channels * kh * kw), np.int8), w.reshape(out_channels, -1).T, bias, scale, y_zp)
    chunks, height, q, filter_words = rs_filter_shape(cfg, kh, kw, channels)
    blocks = math.ceil(channels / R)
    fmaps = np.zeros((images, in_h, in_w, blocks * R), np.int8)
    fmaps[..., :channels] = x.transpose(0, 2, 3, 1)
    # whole images in the two halves of the activation buffer under one setup; larger maps in bands of `cols`
    # output rows, each band's input rows loaded (into the free half) before its own setup
    row_words = in_w * blocks
    whole = in_h * row_words <= cfg.act_depth // 2
    band_rows = min(in_h, (C - 1) * stride_y + kh)
    if not whole and band_rows * row_words > cfg.act_depth // 2:
        raise TilingError(f"a band of {C} output rows needs {band_rows} input rows of {row_words} activation words; "
                          f"half the activation buffer holds {cfg.act_depth // 2}")
    zero = ~np.any(w.reshape(out_channels, -1) != 0, axis=1) if skip_zero_tiles else np.zeros(out_channels, bool)
    run_filters = np.flatnonzero(~zero)
    groups = _filter_groups(cfg, run_filters, out_w, filter_words)
    p = max(map(len, groups), default=1)
    acts = _SlotPool(cfg, "act", cfg.act_depth // 2, 2)
    weights = _SlotPool(cfg, "weight", p * filter_words)
    params = _SlotPool(cfg, "param", p)

    def group_weights(group):
        return rs_group_weights(cfg, w[group], height, q, chunks, filter_words)

    def setup(rows, pad_top):
        return instruction(cfg, Opcode.CONV_SETUP, in_h=rows, in_w=in_w, out_w=out_w, channel_blocks=blocks,
                           kernel_h=height, kernel_w=kw, stride=stride_y, pad_top=pad_top, pad_left=pad_l,
                           pad_value=int(pad_value))

    stream = _Stream(cfg, [setup(in_h, pad_t)] if whole else [])
    outputs, placements = [], []
    for image in range(images if len(run_filters) else 0):
        if whole:
            act_slot = stream.place(acts, BufferId.ACT, image, _fmap_words(fmaps[image], R))
        for oy0 in range(0, out_h, C):
            out_y = oy0                      # commands count output rows from the stored rows' band
            if not whole:
                first_row, last_row, out_y, pad_top = _band_rows(oy0, oy0 + C, stride_y, pad_t, kh, in_h)
                band = _fmap_words(fmaps[image, first_row:last_row], R)
                act_slot = stream.place(acts, BufferId.ACT, (image, oy0), band)
                stream.words.append(setup(last_row - first_row, pad_top))
            for g, group in enumerate(groups):
                w_slot = stream.place(weights, BufferId.WEIGHT, g, group_weights(group))
                # parameter word i: filter i's bias and scale in every lane (hw.layouts)
                p_slot = stream.place(params, BufferId.PARAM, g, (np.repeat(bias[group, None], C, axis=1),
                                                                  np.repeat(scale[group, None], C, axis=1)))
                stream.command(instruction(cfg, Opcode.GEMM, m=len(group) * out_w, k=blocks, filters=len(group),
                                           x_base=act_slot * acts.slot_words, w_base=w_slot * weights.slot_words,
                                           p_base=p_slot * params.slot_words, y_zp=int(y_zp), conv=1,
                                           out_y=out_y, out_x=chunks),
                               (weights, w_slot), (params, p_slot), (acts, act_slot))
                outputs.append((0, 0, len(group) * out_w))
                placements.append((image, oy0, tuple(int(f) for f in group)))
    counted = np.ones((out_channels, channels), bool) if counted is None else np.asarray(counted, bool)
    pixel_macs = images * out_h * out_w * kh * kw
    program = _RowStationaryConv(np.concatenate(stream.words) if stream.words else np.zeros(0, np.uint32), outputs,
                                 placements, images, out_h, out_w, out_channels, macs=pixel_macs * int(counted.sum()))
    program.macs_skipped = pixel_macs * int(counted[zero].sum())
    constants = _constant_outputs(bias, scale, y_zp)
    program.constants = [(int(f), constants[f:f + 1]) for f in np.flatnonzero(zero)]
    return program


def rs_filter_shape(cfg, kernel_h, kernel_w, channels):
    """How a row-stationary array runs filters of ``kernel_h x kernel_w`` over ``channels``: ``(chunks, height,
    channels_per_pe, filter_words)``. A filter taller than the array folds into ``chunks`` of at most ``height``
    rows, each a pass of its own; ``filter_words`` are a filter's weight words over all its passes."""
    chunks = math.ceil(kernel_h / min(cfg.rows, MAX_KERNEL))
    height = math.ceil(kernel_h / chunks)
    _, q = rs_mapping(cfg.rows, height)
    return chunks, height, q, math.ceil(channels / cfg.rows) * chunks * rs_filter_entries(q, kernel_w)


def rs_group_weights(cfg, w, height, q, chunks, filter_words):
    """The weight words of a row-stationary command computing filters ``w`` (F, C, KH, KW), in the layout of
    :func:`tessera.hw.layouts.rs_filter_word`."""
    f, c, y, x = np.meshgrid(*map(np.arange, w.shape), indexing="ij")
    word, lane = rs_filter_word(cfg, height, w.shape[3], q, chunks, len(w), f, c, y, x)
    words = np.zeros((len(w) * filter_words, cfg.rows), np.int8)
    words[word, lane] = w
    return words


def _band_rows(oy0, oy1, stride, pad_top, kh, in_h):
    """The input rows that output rows ``oy0 .. oy1 - 1`` read, as ``(first_row, last_row, out_y, band_pad_top)``:
    the band stores rows ``first_row .. last_row - 1``, its CONV_SETUP has ``band_pad_top``, and its first output
    row is command row ``out_y`` (the window of command row ``r`` starts at stored row ``r * stride -
    band_pad_top``).

    A band whose windows lie wholly in the padding (pads as large as the kernel, which ONNX allows) still stores
    one real row, as a geometry of no rows is refused, and reaches its padding through ``out_y`` and
    ``band_pad_top``.
    """
    start = oy0 * stride - pad_top          # the first input row the band reads; negative in the top padding
    first_row = min(max(0, start), in_h - 1)
    last_row = max(first_row + 1, min(in_h, (oy1 - 1) * stride - pad_top + kh))
    offset = start - first_row              # where that row lies from the first stored one
    out_y = max(0, -(-offset // stride))
    return first_row, last_row, out_y, out_y * stride - offset


def _filter_groups(cfg, filters, out_w, filter_words):
    """The filters of a row-stationary conv in groups, one command each: as many as a PE interleaves
    (``cfg.rs_filters``) while their result rows fit an accumulator half, two groups' weights fit the weight
    buffer (so the next group's load overlaps a command) and a group's parameter words fit the parameter buffer;
    the last group may be smaller."""
    p = min(cfg.rs_filters, cfg.acc_half_depth // out_w, cfg.weight_depth // (2 * filter_words), cfg.param_depth)
    p = max(1, p)
    return [filters[i:i + p] for i in range(0, len(filters), p)]


def _ring_pays(cfg, ring, bands, weights, tile_words, cycles_per_output_row):
    """Whether bands in the halves (``ring``) beat fewer, larger ``bands`` each behind its own setup.

    Every band runs every weight tile, so the ring's smaller bands stream the weights in again per band
    unless they all stay resident. That is free while the reload hides behind the band's compute, which
    needs two weight slots (one loading, one in use) and a reload of at most half the compute time.
    """
    if len(ring) <= len(bands) or len(weights.free) >= len(tile_words):
        return True
    reload = sum(tile_words) * words_per_buffer_word(cfg, BufferId.WEIGHT)
    compute = (ring[0][1] - ring[0][0]) * cycles_per_output_row
    return len(weights.free) >= 2 and reload <= compute / 2


def _output_row_bands(capacity, in_h, words_per_row, out_h, kh, stride, check=True):
    """Output rows in bands whose input rows fit ``capacity`` activation words (one band if the whole map
    fits); None, or with ``check`` an error, if not even one kernel's rows fit."""
    rows_fit = min(in_h, capacity // words_per_row)
    per_band = (rows_fit - kh) // stride + 1 if rows_fit >= kh else 0
    if rows_fit == in_h:
        per_band = out_h
    if per_band < 1:
        if not check:
            return None
        raise TilingError(f"a {kh}-row kernel needs {kh} input rows of {words_per_row} words in the activation "
                          f"buffer; act_depth is {capacity}")
    return [(start, min(out_h, start + per_band)) for start in range(0, out_h, per_band)]


def conv_output_shape(in_h, in_w, kh, kw, stride, pads):
    """Output height and width of a convolution with ONNX pads (top, left, bottom, right)."""
    pad_t, pad_l, pad_b, pad_r = pads
    out_h, out_w = (in_h + pad_t + pad_b - kh) // stride + 1, (in_w + pad_l + pad_r - kw) // stride + 1
    if out_h < 1 or out_w < 1:
        raise TilingError(f"a {kh}x{kw} kernel with pads {pads} and stride {stride} leaves no output of a "
                          f"{in_h}x{in_w} input")
    return out_h, out_w


def dense_group_weights(w, group):
    """Grouped (and depthwise) weights ``w`` (O, C/group, KH, KW) as one block-diagonal (O, C, KH, KW) filter: the
    device runs every group at once, and the compiler skips the weight tiles that lie wholly between groups."""
    if group == 1:
        return w
    out_channels, per_group = w.shape[0], w.shape[1]
    dense = np.zeros((out_channels, per_group * group, *w.shape[2:]), np.int8)
    out_per_group = out_channels // group
    for o in range(out_channels):
        g = o // out_per_group
        dense[o, g * per_group:(g + 1) * per_group] = w[o]
    return dense
