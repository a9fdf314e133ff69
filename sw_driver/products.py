"""The golden model of the PE multipliers (`tessera.hw.pe_multipliers`): each design as a vectorised NumPy function.

``product_table(name)[x + 128, w + 128]`` is the design's product of activation ``x`` and weight ``w``; the
golden model's matrix products (:func:`approximate_matmul`) sum these instead of exact products, so a device
built with an approximate multiplier is still checked bit for bit, against its own model.
"""

import dataclasses
import functools

import numpy as np

from tessera.hw.pe_multipliers import MULTIPLIERS, multiplier

__all__ = ["ErrorMetrics", "approximate_matmul", "error_metrics", "product_table", "products"]

_OPERANDS = np.arange(-128, 128, dtype=np.int64)
# Rows of the lookup product per block: bounds the (rows, K, N) gather to about 32 MB of int32.
_GATHER_ELEMENTS = 1 << 23


def products(name, x, w):
    """The design ``name``'s products of int8 arrays ``x`` and ``w`` (broadcast), as int64."""
    design = multiplier(name)
    x, w = np.broadcast_arrays(np.asarray(x, np.int64), np.asarray(w, np.int64))
    return _FAMILIES[design.family](x, w, design.k)


@functools.cache
def product_table(name):
    """``(256, 256)`` int32: entry ``[x + 128, w + 128]`` is the design's product of ``x`` and ``w``."""
    table = products(name, _OPERANDS[:, None], _OPERANDS[None, :]).astype(np.int32)
    table.flags.writeable = False
    return table


@dataclasses.dataclass(frozen=True)
class ErrorMetrics:
    """A design's error against the exact product over all 65,536 operand pairs (uniform operands).

    ``mae_percent`` and ``wce_percent`` are the mean and worst absolute error as a percentage of the output
    range 2**16 (EvoApproxLib's normalisation, so its published figures compare directly); ``mred_percent`` the
    mean of ``|error| / |exact|`` over non-zero exact products; ``error_rate`` the fraction of pairs with any
    error; ``mean_bias`` the mean signed error, in units of the product.
    """
    mae_percent: float
    wce_percent: float
    mred_percent: float
    error_rate: float
    mean_bias: float


@functools.cache
def error_metrics(name):
    """:class:`ErrorMetrics` of the design ``name``."""
    exact = product_table("exact").astype(np.int64)
    error = product_table(name).astype(np.int64) - exact
    nonzero = exact != 0
    return ErrorMetrics(
        mae_percent=float(np.abs(error).mean() / 2 ** 16 * 100),
        wce_percent=float(np.abs(error).max() / 2 ** 16 * 100),
        mred_percent=float((np.abs(error[nonzero]) / np.abs(exact[nonzero])).mean() * 100),
        error_rate=float((error != 0).mean()),
        mean_bias=float(error.mean()))


def approximate_matmul(a, b, name):
    """``sum_k product(a[..., m, k], b[k, n])`` for int8-valued ``a`` (..., M, K) and ``b`` (K, N), as int64."""
    table = product_table(name)
    a = np.asarray(a, np.int64)
    b_index = np.asarray(b, np.int64) + 128
    rows = a.reshape(-1, a.shape[-1]) + 128
    out = np.empty((rows.shape[0], b_index.shape[1]), np.int64)
    block = max(1, _GATHER_ELEMENTS // max(1, b_index.size))
    for start in range(0, rows.shape[0], block):
        chunk = rows[start:start + block]
        out[start:start + block] = table[chunk[:, :, None], b_index[None, :, :]].sum(axis=1, dtype=np.int64)
    return out.reshape(*a.shape[:-1], b_index.shape[1])


def _exact(x, w, k):
    return x * w


def _truncated(x, w, k):
    # the partial-product bits x[i] w[j] with i + j < k dropped: row i adds x[i] * floor(w / 2**(k-i)) * 2**(k-i)
    # * 2**i, the sign row (i = 7) subtracts, as in two's complement
    total = np.zeros(x.shape, np.int64)
    for i in range(8):
        cut = max(0, k - i)
        kept = np.zeros_like(w) if cut >= 8 else (w >> cut) << cut
        row = ((x >> i) & 1) * kept << i
        total += -row if i == 7 else row
    return total


def _leading_one(magnitude):
    return np.where(magnitude > 1, np.floor(np.log2(np.maximum(magnitude, 1))), 0).astype(np.int64)


def _drum(x, w, k):
    def segment(v):
        magnitude = np.abs(v)
        shift = np.maximum(_leading_one(magnitude) - (k - 1), 0)
        return (magnitude >> shift) | (shift > 0), shift
    (sx, shift_x), (sw, shift_w) = segment(x), segment(w)
    return np.sign(x) * np.sign(w) * ((sx * sw) << (shift_x + shift_w))


def _mitchell(x, w, k):
    mx, mw = np.abs(x), np.abs(w)
    lead_x, lead_w = _leading_one(mx), _leading_one(mw)
    frac = ((mx << (7 - lead_x)) & 127) + ((mw << (7 - lead_w)) & 127)
    power = lead_x + lead_w
    scaled = np.where(frac >= 128, frac << (power + 1), (128 + frac) << power)
    return np.sign(x) * np.sign(w) * (scaled >> 7)


_FAMILIES = {"exact": _exact, "truncated": _truncated, "drum": _drum, "mitchell": _mitchell}
assert {design.family for design in MULTIPLIERS.values()} <= set(_FAMILIES)
