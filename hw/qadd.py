"""Element-wise quantized add (onnxruntime's ``QLinearAdd``), bit-exact, in fixed point.

onnxruntime (MLAS, AVX2) computes in float32 with fused multiply-adds (see ``tessera.sw_driver.golden.qlinear_add``)::

    t = fl(b * rb + fixed)          y = saturate(round_half_even(fl(a * ra + t)))

with ``a``, ``b`` the raw quantized values and ``fl`` one rounding to float32. Here every quantity is an
integer multiple of ``2**-FRACTION_BITS``: ``ra``, ``rb`` and ``fixed`` are such multiples (the host checks,
:func:`tessera.sw_driver.vector_compiler.qadd_params`), a product of one of them with a small integer is exact,
and rounding a multiple of
``2**-FRACTION_BITS`` to 24 significant bits gives another one. So ``fl`` becomes "round the integer to its
24 leading bits, ties to even", which a leading-one detector and a shifter do exactly, and no float unit is
needed. Any scale ratio from ``2**-17`` to ``2**8`` qualifies, which covers real models; the host runs the
rest itself.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = ["FRACTION_BITS", "SIGNIFICAND_BITS", "MAX_SHIFT", "MAX_FIXED", "add_params_layout", "QAddLane",
           "QADD_LATENCY"]

#: Fraction bits of the fixed-point representation.
FRACTION_BITS = 40
#: Significant bits kept by every rounding (float32's).
SIGNIFICAND_BITS = 24
_WIDTH = 64          # |values| < 2**18 (ratios below 2**8 times 9-bit operands, plus |fixed| < 2**17)
#: Largest shift of a scale ratio's significand (the 5-bit ``*_shift`` fields).
MAX_SHIFT = 31
#: Bound on ``|fixed| * 2**FRACTION_BITS``, the constant term's range.
MAX_FIXED = 1 << (17 + FRACTION_BITS)


def add_params_layout():
    """Per-layer parameters of the add (the VEC_SETUP instruction): ``r = mant * 2**(shift - 40)``."""
    return data.StructLayout({
        "ra_mant": unsigned(SIGNIFICAND_BITS), "ra_shift": unsigned(5),
        "rb_mant": unsigned(SIGNIFICAND_BITS), "rb_shift": unsigned(5),
        # the constant term, 2**40 times fixed, in two words (the C encoders take 32-bit fields)
        "fixed_lo": unsigned(32), "fixed_hi": signed(17 + FRACTION_BITS + 1 - 32),
        "uint8": 1,      # operands and result are uint8, held on the device as x - 128
    })


def _stage(m, value, name, shape=None):
    """``value`` registered: one pipeline stage."""
    reg = Signal(shape if shape is not None else value.shape(), name=name)
    m.d.sync += reg.eq(value)
    return reg


def _sign_magnitude(m, value, name):
    """``(negative, |value|)`` of a signed ``_WIDTH``-bit value, both registered: one pipeline stage."""
    return (_stage(m, value[-1], f"negative_{name}"),
            _stage(m, Mux(value[-1], -value, value), f"magnitude_{name}", unsigned(_WIDTH)))


def _leading_one(bits):
    """``(any, index)``: whether ``bits`` has a set bit, and the index of the highest, as a tree of muxes
    (log2 levels deep, where a chain of priority ifs would be one level per bit)."""
    if len(bits) == 1:
        return bits[0], Const(0, 0)
    half = 1 << (ceil_log2(len(bits)) - 1)
    any_low, low = _leading_one(bits[:half])
    any_high, high = _leading_one(bits[half:])
    if half == 1:
        return any_low | any_high, any_high
    width = ceil_log2(half)
    return any_low | any_high, Cat(Mux(any_high, high, low)[:width], any_high)


#: Cycles of :class:`_RoundSignificand`, input to registered output.
ROUND_LATENCY = 6


class _RoundSignificand(wiring.Component):
    """Pipelined ``fl``: keep the 24 leading bits of ``|value|``, ties to even, ``ROUND_LATENCY`` cycles later.
    Each stage holds at most one wide carry chain or one barrel shift, to shorten the ECP5's paths (the 4x16 ULX3S
    build's critical path left this unit once its products were split too; docs/fpga.md)."""

    value: In(signed(_WIDTH))
    rounded: Out(signed(_WIDTH))

    def elaborate(self, platform):
        m = Module()
        # 1: sign and magnitude
        negative, magnitude = _sign_magnitude(m, self.value, "1")
        # 2: how many low bits to drop
        _, leading = _leading_one(magnitude)
        drop = Signal(range(_WIDTH))
        with m.If(leading >= SIGNIFICAND_BITS):
            m.d.comb += drop.eq(leading - (SIGNIFICAND_BITS - 1))
        drop_2 = _stage(m, drop, "drop_2")
        negative_2, magnitude_2 = _stage(m, negative, "negative_2"), _stage(m, magnitude, "magnitude_2")
        # 3-5: shift them out, rounding half to even, then the sign
        total, drop_5 = _rne_shift(m, magnitude_2, drop_2, negative_2, SIGNIFICAND_BITS + 1)
        # 6: back to the value's scale
        m.d.sync += self.rounded.eq(total << drop_5)
        return m


#: Cycles of :func:`_rne_shift`.
RNE_LATENCY = 3


def _rne_shift(m, magnitude, drop, negative, kept_width):
    """Signed ``±magnitude / 2**drop`` rounded half to even, ``RNE_LATENCY`` cycles later, in a signed
    ``kept_width + 1``-bit signal; ``drop`` may be a signal or a constant, and the quotient must fit ``kept_width``
    bits. Returns the result and ``drop`` delayed alike."""
    width = len(magnitude)
    one = Const(1, width + 1)
    # 1: the kept bits, the dropped ones
    kept = _stage(m, magnitude >> drop, "kept", unsigned(kept_width))
    rest = _stage(m, magnitude & ((one << drop) - 1), "rest", unsigned(width))
    drop_1, negative_1 = _stage(m, drop, "drop_s1", range(width + 1)), _stage(m, negative, "negative_s1")
    # 2: round up?
    half = ((one << drop_1) >> 1)[:width]
    up = _stage(m, (drop_1 != 0) & ((rest > half) | ((rest == half) & kept[0])), "up")
    kept_2, drop_2, negative_2 = (_stage(m, kept, "kept_2"), _stage(m, drop_1, "drop_s2"),
                                  _stage(m, negative_1, "negative_s2"))
    # 3: with the sign
    total = Signal(signed(kept_width + 1))
    m.d.comb += total.eq(kept_2 + up)
    return (_stage(m, Mux(negative_2, -total, total), "signed_total", signed(kept_width + 1)),
            _stage(m, drop_2, "drop_s3"))


def _delay(m, value, cycles, name):
    """``value``, ``cycles`` registers later."""
    for i in range(cycles):
        value = _stage(m, value, f"{name}_{i + 1}")
    return value


#: Cycles of :func:`_product`.
PRODUCT_LATENCY = 2


def _product(m, operand, mant, name):
    """``operand * mant`` (a 9-bit operand, a 24-bit significand), ``PRODUCT_LATENCY`` cycles later: the
    significand's halves times the operand first, their sum next, so that neither cycle holds a whole 9 x 24-bit
    multiply in logic."""
    half = SIGNIFICAND_BITS // 2
    low = _stage(m, operand * mant[:half], f"{name}_low", signed(9 + half + 1))
    high = _stage(m, operand * mant[half:], f"{name}_high", signed(9 + half + 1))
    return _stage(m, (high << half) + low, name, signed(9 + SIGNIFICAND_BITS + 1))


#: Cycles from an operand pair entering a :class:`QAddLane` to its result.
QADD_LATENCY = 1 + PRODUCT_LATENCY + 2 + ROUND_LATENCY + 1 + ROUND_LATENCY + 1 + RNE_LATENCY + 1


class QAddLane(wiring.Component):
    """One lane of the add, pipelined: raw operands in, raw saturated result out, ``QADD_LATENCY`` later.

    Attributes
    ----------
    params : In(add_params_layout())
        Must hold still while operands are in flight.
    valid, a, b : In
        Raw operand values (uint8 operands as 0..255, int8 as -128..127).
    out_valid, y : Out
    """

    def __init__(self):
        super().__init__({
            "params": In(add_params_layout()),
            "valid": In(1), "a": In(signed(9)), "b": In(signed(9)),
            "out_valid": Out(1), "y": Out(signed(9)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        fixed = Signal(signed(17 + FRACTION_BITS + 1))
        m.d.comb += fixed.eq(Cat(p.fixed_lo, p.fixed_hi))
        # 1: the operands, straight from flip-flops into the products (they come from a block RAM's read port)
        a, b = _stage(m, self.a, "a_in"), _stage(m, self.b, "b_in")
        # 2-5: b's product, at its scale, plus the constant term
        scaled_b = _stage(m, _product(m, b, p.rb_mant, "pb") << p.rb_shift, "scaled_b", signed(_WIDTH))
        sum_b = _stage(m, scaled_b + fixed, "sum_b", signed(_WIDTH))
        # 6-11: rounded to float32 (t); meanwhile a waits, then its product is formed, at its scale (9-11)
        m.submodules.round_t = round_t = _RoundSignificand()
        m.d.comb += round_t.value.eq(sum_b)
        pa = _product(m, _delay(m, a, 1 + ROUND_LATENCY, "a"), p.ra_mant, "pa")
        scaled_a = _stage(m, pa << p.ra_shift, "scaled_a", signed(_WIDTH))
        # 12: a's term plus t
        sum_a = _stage(m, scaled_a + round_t.rounded, "sum_a", signed(_WIDTH))
        # 13-18: rounded to float32 (s)
        m.submodules.round_s = round_s = _RoundSignificand()
        m.d.comb += round_s.value.eq(sum_a)
        # 19-23: to the nearest integer, ties to even, then saturated to the output type
        negative, magnitude = _sign_magnitude(m, round_s.rounded, "y")
        y, _ = _rne_shift(m, magnitude, FRACTION_BITS, negative, _WIDTH - FRACTION_BITS)
        low, high = Mux(p.uint8, 0, -128), Mux(p.uint8, 255, 127)
        m.d.sync += self.y.eq(Mux(y < low, low, Mux(y > high, high, y)))
        m.d.comb += self.out_valid.eq(_delay(m, self.valid, QADD_LATENCY, "valid"))
        return m
