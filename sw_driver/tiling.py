"""Tiling a requantised int8 GEMM onto a compute core: buffer loads, commands, and where results land.

This is the layout contract of :mod:`hw.layouts` written as code; the testbenches, the benchmark and the
layer compiler all tile through here.
"""

import dataclasses
import math

import numpy as np

__all__ = ["TilingError", "Pass", "GemmPlan", "plan_gemm", "check_gemm_operands"]

_MAX_PRODUCT = 128 * 128  # |int8 x int8| at most, reached by -128 x -128


class TilingError(ValueError):
    """The layer cannot be tiled onto this configuration; the message says which limit and by how much."""


@dataclasses.dataclass
class Pass:
    """Loads that must land before ``commands`` run; commands of one pass only read what it loaded."""
    act_loads: list = dataclasses.field(default_factory=list)     # (addr, int8 vector of rows)
    weight_loads: list = dataclasses.field(default_factory=list)  # (addr, int8 vector of cols)
    param_loads: list = dataclasses.field(default_factory=list)   # (addr, int32 bias[cols], uint32 scale[cols])
    commands: list = dataclasses.field(default_factory=list)      # dicts of command_layout fields
    outputs: list = dataclasses.field(default_factory=list)       # (m0, n0, rows) per command


@dataclasses.dataclass
class GemmPlan:
    m: int
    n: int
    k: int
    macs: int
    passes: list

    @property
    def result_rows(self):
        return sum(rows for p in self.passes for _, _, rows in p.outputs)

    def assemble(self, rows, cols):
        """Place the core's result rows (in command order, each ``cols`` int8) into the ``M x N`` output."""
        rows = np.asarray(rows, dtype=np.int8).reshape(-1, cols)
        if len(rows) != self.result_rows:
            raise ValueError(f"expected {self.result_rows} result rows, got {len(rows)}")
        y = np.zeros((self.m, self.n), dtype=np.int8)
        i = 0
        for p in self.passes:
            for m0, n0, count in p.outputs:
                width = min(cols, self.n - n0)
                y[m0:m0 + count, n0:n0 + width] = rows[i:i + count, :width]
                i += count
        return y


def plan_gemm(cfg, x, w, bias, scale, y_zp):
    """Tile ``Y = requantize(x @ w + bias, scale, y_zp)`` onto the core of ``cfg``.

    Parameters
    ----------
    x : int8 array (M, K); w : int8 array (K, N); bias : int32 array (N,); scale : float32 array (N,)
        Zero points of ``x`` must already be folded into ``bias`` (see the golden model).
    y_zp : int
        Output zero point, -128 to 127.
    """
    x, w, bias, scale = check_gemm_operands(x, w, bias, scale, y_zp)
    plan = _plan_ws if cfg.dataflow == "ws" else _plan_os
    return plan(cfg, x, w, bias, scale.view(np.uint32), int(y_zp))


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


def _param_words(bias, scale_bits, cols, n_tiles):
    width = n_tiles * cols
    bias = np.pad(bias, (0, width - len(bias)))
    # Padding channels are computed and discarded; a unit scale keeps them inside the requantiser's domain.
    scale_bits = np.pad(scale_bits, (0, width - len(scale_bits)), constant_values=np.float32(1).view(np.uint32))
    return [(bias[t * cols:(t + 1) * cols], scale_bits[t * cols:(t + 1) * cols]) for t in range(n_tiles)]


def _groups(count, size):
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def _plan_ws(cfg, x, w, bias, scale_bits, y_zp):
    R, C = cfg.rows, cfg.cols
    (m, k), n = x.shape, w.shape[1]
    folds, n_tiles = math.ceil(k / R), math.ceil(n / C)
    w_pad = np.zeros((folds * R, n_tiles * C), dtype=np.int8)
    w_pad[:k, :n] = w
    x_pad = np.zeros((m, folds * R), dtype=np.int8)
    x_pad[:, :k] = x
    tile_words = folds * R
    per_pass_n = min(cfg.weight_depth // tile_words, cfg.param_depth, n_tiles)
    if per_pass_n == 0:
        raise TilingError(f"K={k} needs {tile_words} weight words per column tile; weight_depth is "
                          f"{cfg.weight_depth} (accepted: K <= {cfg.weight_depth // R * R})")
    rows_per_cmd = min(m, cfg.acc_half_depth, cfg.act_depth // folds)
    if rows_per_cmd == 0:
        raise TilingError(f"K={k} needs {folds} activation words per row; act_depth is {cfg.act_depth}")
    params = _param_words(bias, scale_bits, C, n_tiles)
    passes = []
    for m_group in _groups(m, rows_per_cmd):
        m0, rows = m_group.start, len(m_group)
        for g, n_group in enumerate(_groups(n_tiles, per_pass_n)):
            p = Pass()
            if g == 0:  # activations of this row block stay for all its column groups
                for f in range(folds):
                    for i in range(rows):
                        p.act_loads.append((f * rows + i, x_pad[m0 + i, f * R:(f + 1) * R]))
            for slot, t in enumerate(n_group):
                for r in range(tile_words):
                    p.weight_loads.append((slot * tile_words + r, w_pad[r, t * C:(t + 1) * C]))
                p.param_loads.append((slot, *params[t]))
                p.commands.append({"m": rows, "k": folds, "x_base": 0, "w_base": slot * tile_words,
                                   "p_base": slot, "y_zp": y_zp})
                p.outputs.append((m0, t * C, rows))
            passes.append(p)
    return GemmPlan(m=m, n=n, k=k, macs=m * n * k, passes=passes)


def _plan_os(cfg, x, w, bias, scale_bits, y_zp):
    R, C = cfg.rows, cfg.cols
    (m, k), n = x.shape, w.shape[1]
    m_tiles, n_tiles = math.ceil(m / R), math.ceil(n / C)
    if k > cfg.act_depth or k > cfg.weight_depth:
        raise TilingError(f"K={k} reduction steps must fit the buffers; accepted: K <= "
                          f"{min(cfg.act_depth, cfg.weight_depth)} (act_depth, weight_depth)")
    x_pad = np.zeros((m_tiles * R, k), dtype=np.int8)
    x_pad[:m] = x
    w_pad = np.zeros((k, n_tiles * C), dtype=np.int8)
    w_pad[:, :n] = w
    per_pass_m = min(cfg.act_depth // k, m_tiles)
    per_pass_n = min(cfg.weight_depth // k, cfg.param_depth, n_tiles)
    params = _param_words(bias, scale_bits, C, n_tiles)
    passes = []
    for m_group in _groups(m_tiles, per_pass_m):
        for g, n_group in enumerate(_groups(n_tiles, per_pass_n)):
            p = Pass()
            if g == 0:
                for slot, t in enumerate(m_group):
                    for j in range(k):
                        p.act_loads.append((slot * k + j, x_pad[t * R:(t + 1) * R, j]))
            for slot, t in enumerate(n_group):
                for j in range(k):
                    p.weight_loads.append((slot * k + j, w_pad[j, t * C:(t + 1) * C]))
                p.param_loads.append((slot, *params[t]))
            for a, mt in enumerate(m_group):
                rows = min(R, m - mt * R)
                for b, nt in enumerate(n_group):
                    p.commands.append({"m": rows, "k": k, "x_base": a * k, "w_base": b * k,
                                       "p_base": b, "y_zp": y_zp})
                    p.outputs.append((mt * R, nt * C, rows))
            passes.append(p)
    return GemmPlan(m=m, n=n, k=k, macs=m * n * k, passes=passes)
