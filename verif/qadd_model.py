"""A Python model of the vector unit's add lane (:class:`tessera.hw.qadd.QAddLane`), integer for integer."""

from tessera.hw.qadd import FRACTION_BITS, SIGNIFICAND_BITS

__all__ = ["qadd_reference"]


def _round_significand(value):
    """Python model of ``fl``: round an integer to 24 significant bits, ties to even."""
    magnitude = abs(value)
    drop = max(magnitude.bit_length() - SIGNIFICAND_BITS, 0)
    return (1 if value >= 0 else -1) * _round_shift(magnitude, drop) << drop


def _round_shift(magnitude, drop):
    """``magnitude / 2**drop`` rounded half to even."""
    if drop == 0:
        return magnitude
    kept, rest, half = magnitude >> drop, magnitude & ((1 << drop) - 1), 1 << (drop - 1)
    return kept + (rest > half or (rest == half and kept & 1))


def qadd_reference(a, b, params):
    """What the hardware computes for raw operands ``a``, ``b`` (Python ints): the raw result."""
    p = params
    fixed = (p["fixed_hi"] << 32) | p["fixed_lo"]
    t = _round_significand((b * p["rb_mant"] << p["rb_shift"]) + fixed)
    s = _round_significand((a * p["ra_mant"] << p["ra_shift"]) + t)
    y = (1 if s >= 0 else -1) * _round_shift(abs(s), FRACTION_BITS)
    low, high = (0, 255) if p["uint8"] else (-128, 127)
    return min(max(y, low), high)
