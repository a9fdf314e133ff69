"""The layer compiler: tiles a layer onto a configuration and emits the device's instruction stream.

Tiles of activations (row blocks), weights (column tiles) and parameters live in slots of the on-chip
buffers. A tile is loaded just before the first command that needs it, while earlier commands still run
(the device overlaps loads with compute); when a slot must be reused, a WAIT holds the load back until the
commands that read the old tile have completed. Commands are ordered so that each new tile brings as much
new work as possible ("growing square" over row blocks x column tiles), which keeps a compute-bound layer
from waiting on the link after the first tiles.
"""

import collections
import dataclasses
import math

import numpy as np

from hw.isa import BufferId, Opcode
from sw_driver.isa_encode import instruction, load
from sw_driver.tiling import TilingError, _check_operands

__all__ = ["Program", "compile_gemm", "TilingError"]


@dataclasses.dataclass
class Program:
    """An instruction stream and how to read its results."""
    words: np.ndarray        # uint32 link words
    outputs: list            # (m0, n0, rows) per compute command, in command order
    m: int
    n: int
    macs: int

    def assemble(self, results, cols):
        """Place per-command result rows into the ``m x n`` output."""
        if len(results) != len(self.outputs):
            raise ValueError(f"expected results of {len(self.outputs)} commands, got {len(results)}")
        y = np.zeros((self.m, self.n), dtype=np.int8)
        for (m0, n0, rows), block in zip(self.outputs, results, strict=True):
            width = min(cols, self.n - n0)
            y[m0:m0 + rows, n0:n0 + width] = np.asarray(block)[:rows, :width]
        return y


class _SlotPool:
    """Fixed-size slots of one buffer, reused least recently used first."""

    def __init__(self, name, slot_words, slots):
        if slots < 1:
            raise TilingError(f"one {name} tile needs {slot_words} words; the buffer holds fewer")
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


def _square_order(blocks, tiles):
    """Every (block, tile) pair, each new block or tile followed by all the work it completes."""
    order = []
    for s in range(max(blocks, tiles)):
        if s < tiles:
            order += [(b, s) for b in range(min(s, blocks))]
        if s < blocks:
            order += [(s, t) for t in range(min(s + 1, tiles))]
    return order


def compile_gemm(cfg, x, w, bias, scale, y_zp):
    """Compile ``Y = requantize(x @ w + bias, scale, y_zp)`` (int8 operands, input zero point already folded
    into ``bias``) into a :class:`Program` for the device of ``cfg``."""
    x, w, bias, scale = _check_operands(x, w, bias, scale, y_zp)
    R, C = cfg.rows, cfg.cols
    (m, k), n = x.shape, w.shape[1]
    n_tiles = math.ceil(n / C)
    w_pad = np.zeros((k, n_tiles * C), np.int8)
    w_pad[:, :n] = w
    bias_pad = np.zeros(n_tiles * C, np.int32)
    bias_pad[:n] = bias
    # padding channels are computed and dropped; a unit scale keeps them in the requantiser's domain
    scale_pad = np.ones(n_tiles * C, np.float32)
    scale_pad[:n] = scale

    if cfg.dataflow == "ws":
        folds = math.ceil(k / R)
        # Rows per command: enough that the array's weight preload hides behind the previous fold
        # (rows + cols vectors), few enough that several row blocks exist to overlap their loads.
        block_rows = min(m, cfg.acc_half_depth, max(4 * (R + C), 64), cfg.act_depth // folds)
        if block_rows == 0:
            raise TilingError(f"K={k} needs {folds} activation words per row; act_depth is {cfg.act_depth}")
        x_pad = np.zeros((m, folds * R), np.int8)
        x_pad[:, :k] = x

        def act_tile(b):
            rows = x_pad[b * block_rows:(b + 1) * block_rows]
            # word f*rows + i holds row i of fold f
            return np.concatenate([rows[:, f * R:(f + 1) * R] for f in range(folds)])

        def weight_tile(t):
            tile = np.zeros((folds * R, C), np.int8)
            tile[:k] = w_pad[:, t * C:(t + 1) * C]
            return tile
        act_words, weight_words = folds * block_rows, folds * R
        k_field = folds
    else:
        block_rows = R
        if k > cfg.act_depth or k > cfg.weight_depth:
            raise TilingError(f"K={k} reduction steps must fit the buffers; accepted: K <= "
                              f"{min(cfg.act_depth, cfg.weight_depth)} (act_depth, weight_depth)")

        def act_tile(b):
            rows = np.zeros((R, k), np.int8)
            part = x[b * R:(b + 1) * R]
            rows[:len(part)] = part
            return np.ascontiguousarray(rows.T)     # word j holds X[m0:m0+R, j]

        def weight_tile(t):
            return w_pad[:, t * C:(t + 1) * C]
        act_words = weight_words = k
        k_field = k

    blocks = math.ceil(m / block_rows)
    acts = _SlotPool("activation", act_words, cfg.act_depth // act_words)
    weights = _SlotPool("weight", weight_words, cfg.weight_depth // weight_words)
    params = _SlotPool("parameter", 1, cfg.param_depth)

    words, outputs = [], []
    waited = 0  # commands a WAIT already guaranteed complete; later WAITs for fewer are redundant
    for index, (b, t) in enumerate(_square_order(blocks, n_tiles)):
        slots = []
        def param_tile(t):
            return bias_pad[None, t * C:(t + 1) * C], scale_pad[None, t * C:(t + 1) * C]
        # (pool, buffer, tile, how to make the tile's words): built only when the tile is not resident
        for pool, buffer, tile, make in ((acts, BufferId.ACT, b, act_tile), (weights, BufferId.WEIGHT, t, weight_tile),
                                         (params, BufferId.PARAM, t, param_tile)):
            resident = tile in pool.resident
            slot, wait_for = pool.find(tile)
            if not resident:
                if wait_for is not None and wait_for + 1 > waited:
                    waited = wait_for + 1
                    words.append(instruction(cfg, Opcode.WAIT, pending=index - waited))
                words.append(load(cfg, buffer, slot * pool.slot_words, make(tile)))
            pool.last_reader[slot] = index
            slots.append(slot)
        rows = min(block_rows, m - b * block_rows)
        words.append(instruction(cfg, Opcode.GEMM, m=rows, k=k_field, x_base=slots[0] * acts.slot_words,
                                 w_base=slots[1] * weights.slot_words, p_base=slots[2], y_zp=int(y_zp)))
        outputs.append((b * block_rows, t * C, rows))
    return Program(words=np.concatenate(words), outputs=outputs, m=m, n=n, macs=m * n * k)
