"""The int8 x int8 products a PE can be built with: exact, and approximate designs from published families.

Approximate multipliers trade a small, known error in each product for less logic and less switching (Zervakis
et al., survey, 2021; Peccia et al., 2023). Each design here is a combinational function of a PE's activation
``x`` and weight ``w`` (both ``signed(8)``), written once as Amaranth; its NumPy twin, which the golden model
uses, is `tessera.sw_driver.products`, and the two are compared on all 65,536 operand pairs
(``tests/test_multipliers.py``). Every design gives 0 when either operand is 0, so zero gating (which holds a
gated PE's operands at 0) keeps its meaning, and every product's magnitude is below :data:`PRODUCT_BOUND`.

The approximate families:

* **truncated** (the broken-array multiplier's vertical break, Mahdiani et al., 2010): the partial-product bits
  ``x[i] & w[j]`` with ``i + j < k`` are never formed; the rest add up with their two's-complement weights, so
  the product is exact above bit ``k`` and always rounds down (a negative bias of about ``k * 2**k / 8``).
* **drum** (dynamic range unbiased multiplier, Hashemi et al., ICCAD 2015): each operand's magnitude keeps only
  its ``k`` bits from the leading one down, the lowest of them forced to 1 (which unbiases the cut), and the
  ``k x k`` product is shifted back; the sign is applied after.
* **mitchell** (Mitchell, 1962): ``|x| = 2**p (1 + f)``; the product is taken as ``2**(px + pw) (1 + fx + fw)``
  (a carry in ``fx + fw`` doubles the power instead), which reads log-add-antilog with no multiplier at all
  and always errs low, by at most 11.1 %.
"""

import dataclasses

from amaranth.hdl import Const, Mux, Value, signed, unsigned

__all__ = ["MULTIPLIERS", "Multiplier", "PRODUCT_BOUND", "multiplier"]

#: Every design's products lie strictly between -PRODUCT_BOUND and PRODUCT_BOUND (a DRUM can round 128 up).
PRODUCT_BOUND = 1 << 15


@dataclasses.dataclass(frozen=True)
class Multiplier:
    """One PE multiplier design: its configuration name, family, parameter and a one-line description."""
    name: str
    family: str
    k: int = 0
    description: str = ""

    @property
    def exact(self):
        return self.family == "exact"

    @property
    def magnitude_bound(self):
        """A bound on ``|product|``: ``128 * 128`` for the exact product, :data:`PRODUCT_BOUND` otherwise."""
        return 128 * 128 if self.exact else PRODUCT_BOUND

    def product(self, x, w):
        """``x * w`` (or its approximation), a combinational ``signed(16)`` value, of two ``signed(8)`` values."""
        x, w = Value.cast(x), Value.cast(w)
        family = {"exact": _exact, "truncated": _truncated, "drum": _drum, "mitchell": _mitchell}[self.family]
        return family(x, w, self.k)[:16].as_signed()


def _exact(x, w, k):
    return x * w


def _truncated(x, w, k):
    # Row i of the partial-product array is x[i] times w with its bits below k - i cleared (floor to a multiple
    # of 2**(k - i), which keeps w's negative sign bit while k - i < 8); the sign row x[7] is subtracted.
    rows = []
    for i in range(8):
        cut = max(0, k - i)
        kept = Const(0, signed(8)) if cut >= 8 else (w >> cut) << cut
        rows.append(Mux(x[i], kept, 0) << i)
    return sum(rows[:7]) - rows[7]


def _magnitude(v):
    """``|v|`` of a ``signed(8)`` value as ``unsigned(8)`` (128 fits)."""
    return Mux(v[7], -v, v).as_unsigned()[:8]


def _leading_one(v):
    """Position of the highest set bit of an unsigned ``v`` (0 when ``v`` is 0 or 1)."""
    position = Const(0, 3)
    for i in range(1, len(v)):
        position = Mux(v[i], i, position)
    return position


def _signed_result(magnitude, x, w):
    negative = x[7] ^ w[7]
    return Mux(negative, -magnitude, magnitude)


def _drum(x, w, k):
    def segment(v):
        # the k bits from the leading one down, lowest set when bits below were dropped; and the shift back
        magnitude = _magnitude(v)
        lead = _leading_one(magnitude)
        shift = Mux(lead > k - 1, lead - (k - 1), 0)[:3]
        return (magnitude >> shift)[:k] | (shift != 0), shift
    (sx, shift_x), (sw, shift_w) = segment(x), segment(w)
    return _signed_result(((sx * sw) << (shift_x + shift_w))[:16], x, w)


def _mitchell(x, w, k):
    def logarithm(v):
        # characteristic (the leading one's position) and 7-bit mantissa (the bits below it), exact for int8
        magnitude = _magnitude(v)
        lead = _leading_one(magnitude)
        return lead, ((magnitude << ~lead)[:7]), magnitude == 0
    (lead_x, frac_x, zero_x), (lead_w, frac_w, zero_w) = logarithm(x), logarithm(w)
    total = (frac_x + frac_w)[:8]
    power = (lead_x + lead_w)[:4]
    # no carry: 2**p (1 + f); carry (f >= 1): 2**(p + 1) f; both scaled by 2**7 and floored
    scaled = Mux(total[7], total << (power + 1), (Const(128, unsigned(9)) + total) << power)
    magnitude = Mux(zero_x | zero_w, 0, (scaled >> 7)[:16])
    return _signed_result(magnitude, x, w)


#: The designs a configuration's ``multiplier`` field names, from exact to the largest error.
MULTIPLIERS = {design.name: design for design in (
    Multiplier("exact", "exact", description="the exact product (a DSP block or a LUT array)"),
    Multiplier("truncated4", "truncated", 4, "partial products of the 4 lowest columns not formed"),
    Multiplier("drum6", "drum", 6, "DRUM, 6 significant bits per operand"),
    Multiplier("mitchell", "mitchell", description="Mitchell's logarithmic product"),
    Multiplier("drum4", "drum", 4, "DRUM, 4 significant bits per operand"),
    Multiplier("truncated8", "truncated", 8, "partial products of the 8 lowest columns not formed"),
)}


def multiplier(name):
    """The :class:`Multiplier` called ``name`` (a configuration's ``multiplier``)."""
    return MULTIPLIERS[name]
