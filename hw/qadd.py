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


class _RoundSignificand(wiring.Component):
    """Combinational ``fl``: keep the 24 leading bits of ``|value|``, ties to even."""

    value: In(signed(_WIDTH))
    rounded: Out(signed(_WIDTH))

    def elaborate(self, platform):
        m = Module()
        negative = self.value[-1]
        magnitude = Signal(unsigned(_WIDTH))
        m.d.comb += magnitude.eq(Mux(negative, -self.value, self.value))
        leading = Signal(range(_WIDTH))
        for i in range(_WIDTH):            # the last assignment wins: the highest set bit
            with m.If(magnitude[i]):
                m.d.comb += leading.eq(i)
        drop = Signal(range(_WIDTH))
        with m.If(leading >= SIGNIFICAND_BITS):
            m.d.comb += drop.eq(leading - (SIGNIFICAND_BITS - 1))
        m.d.comb += self.rounded.eq(_rne_shift(m, magnitude, drop, negative) << drop)
        return m


def _rne_shift(m, magnitude, drop, negative):
    """Signed ``±magnitude / 2**drop``, rounded half to even (``drop`` may be a signal or a constant)."""
    width = len(magnitude)
    kept = Signal(unsigned(width))
    rest = Signal(unsigned(width))
    half = Signal(unsigned(width))
    up = Signal()
    one = Const(1, width + 1)
    m.d.comb += [
        kept.eq(magnitude >> drop),
        rest.eq(magnitude & ((one << drop) - 1)),
        half.eq((one << drop) >> 1),
        up.eq((drop != 0) & ((rest > half) | ((rest == half) & kept[0]))),
    ]
    total = Signal(signed(width + 1))
    m.d.comb += total.eq(kept + up)
    return Mux(negative, -total, total)


#: Cycles from an operand pair entering a :class:`QAddLane` to its result.
QADD_LATENCY = 5


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
        valid = [self.valid] + [Signal(name=f"valid_{i}") for i in range(1, QADD_LATENCY + 1)]
        for i in range(QADD_LATENCY):
            m.d.sync += valid[i + 1].eq(valid[i])

        # 1: b's product
        a1, pb = Signal(signed(9)), Signal(signed(9 + SIGNIFICAND_BITS + 1))
        m.d.sync += [a1.eq(self.a), pb.eq(self.b * p.rb_mant)]
        # 2: plus the constant term, rounded to float32 (t)
        m.submodules.round_t = round_t = _RoundSignificand()
        a2, t = Signal(signed(9)), Signal(signed(_WIDTH))
        fixed = Signal(signed(17 + FRACTION_BITS + 1))
        m.d.comb += fixed.eq(Cat(p.fixed_lo, p.fixed_hi))
        m.d.comb += round_t.value.eq((pb << p.rb_shift) + fixed)
        m.d.sync += [a2.eq(a1), t.eq(round_t.rounded)]
        # 3: a's product
        pa, t3 = Signal(signed(9 + SIGNIFICAND_BITS + 1)), Signal(signed(_WIDTH))
        m.d.sync += [pa.eq(a2 * p.ra_mant), t3.eq(t)]
        # 4: the sum, rounded to float32
        m.submodules.round_s = round_s = _RoundSignificand()
        s = Signal(signed(_WIDTH))
        m.d.comb += round_s.value.eq((pa << p.ra_shift) + t3)
        m.d.sync += s.eq(round_s.rounded)
        # 5: to the nearest integer, ties to even, and saturate to the output type
        magnitude = Signal(unsigned(_WIDTH))
        m.d.comb += magnitude.eq(Mux(s[-1], -s, s))
        y = Signal(signed(_WIDTH - FRACTION_BITS + 2))
        m.d.comb += y.eq(_rne_shift(m, magnitude, FRACTION_BITS, s[-1]))
        low, high = Mux(p.uint8, 0, -128), Mux(p.uint8, 255, 127)
        m.d.sync += self.y.eq(Mux(y < low, low, Mux(y > high, high, y)))
        m.d.comb += self.out_valid.eq(valid[QADD_LATENCY])
        return m
