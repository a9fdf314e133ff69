"""Pipelined int8 requantiser, bit-exact with onnxruntime.

Each lane computes::

    y = saturate_int8(round_half_even(float32(acc + bias) * scale) + zero_point)

with ``acc + bias`` wrapping modulo 2**32, ``float32()`` the IEEE-754 round-to-nearest-even
int32 -> float32 conversion, and ``*`` an IEEE-754 float32 multiply (its 48-bit significand product
rounded to nearest even at 24 bits). Both float roundings are reproduced exactly; nothing here is
"close enough" fixed point.

The float emulation only ever carries what the int8 result can depend on: any product whose
magnitude reaches 2**9 saturates whatever the zero point is, and any product below 2**-1 rounds to
zero, so float32's exponent limits (subnormals, overflow to infinity) never need their own paths.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .multiplier import lut_requant, registered_product

__all__ = ["Requantiser", "requant_input_layout"]


#: Largest number of lanes a :class:`Requantiser` may be built with.
MAX_LANES = 64

# float32 significand width, hidden bit included.
_SIGNIFICAND_BITS = 24
# Offset between a float32's biased exponent field and the exponent of its *integer* significand:
# value = significand * 2**(exponent_field - 127 - 23).
_SIGNIFICAND_EXPONENT_BIAS = 127 + _SIGNIFICAND_BITS - 1
# |round(product)| >= 2**9 = 512 saturates for every zero point (512 - 128 > 127), so the final
# rounding only needs a 9-bit integer part and everything larger is a saturation flag.
_RINT_BITS = 9
# The float32 product is significand * 2**-shift with significand in [2**23, 2**24]. Shifts below
# 15 leave at least 2**9 (saturation); from 25 on the value is at most one half and rounds to 0.
# Only shifts in between reach the rounding shifter.
_MIN_RINT_SHIFT = _SIGNIFICAND_BITS - _RINT_BITS
_MAX_RINT_SHIFT = _SIGNIFICAND_BITS + 1
_RINT_SHIFT = range(_MAX_RINT_SHIFT - _MIN_RINT_SHIFT + 1)

_FLOAT32 = data.StructLayout({
    "fraction": unsigned(_SIGNIFICAND_BITS - 1),
    "exponent": unsigned(8),
    "sign":     unsigned(1),
})


def requant_input_layout(lanes: int) -> data.StructLayout:
    """Payload layout of :attr:`Requantiser.i`: one vector of ``lanes`` accumulators.

    ``scale`` holds raw IEEE-754 float32 bit patterns; ``zero_point`` is shared by all lanes.
    """
    return data.StructLayout({
        "acc":        data.ArrayLayout(signed(32), lanes),
        "bias":       data.ArrayLayout(signed(32), lanes),
        "scale":      data.ArrayLayout(unsigned(32), lanes),
        "zero_point": signed(8),
    })


# Per-lane contents of each internal pipeline register, in pipeline order. The output register
# (``o.payload``) follows the last one. Field widths are the exact ranges noted beside them.
_PIPELINE = {
    # acc + bias, wrapped to int32.
    "sum": data.StructLayout({
        "value": signed(32),
        "scale": _FLOAT32,
    }),
    # Sign/magnitude form, as IEEE floats are.
    "magnitude": data.StructLayout({
        "magnitude": unsigned(32),      # |int32| <= 2**31
        "negative":  unsigned(1),       # sign of the final product
        "zero":      unsigned(1),       # acc + bias == 0
        "scale":     _FLOAT32,
    }),
    # magnitude << leading_zeros, found in two halves (see _normalise); bit 31 set unless zero.
    "coarse_normalised": data.StructLayout({
        "normalised":    unsigned(32),
        "leading_zeros": unsigned(5),   # multiple of 8 so far
        "negative":      unsigned(1),
        "zero":          unsigned(1),
        "scale":         _FLOAT32,
    }),
    "normalised": data.StructLayout({
        "normalised":    unsigned(32),
        "leading_zeros": unsigned(5),
        "negative":      unsigned(1),
        "zero":          unsigned(1),
        "scale":         _FLOAT32,
    }),
    # float32(acc + bias) = significand * 2**exponent.
    "float": data.StructLayout({
        "significand": unsigned(_SIGNIFICAND_BITS),
        "exponent":    signed(7),       # -23..8
        "negative":    unsigned(1),
        "zero":        unsigned(1),
        "scale":       _FLOAT32,
    }),
    # While the two partial products (see _split_significand) are in their pipelined multipliers
    # (hw.multiplier: operands, then products, registered). From here on the exponent is carried as
    # the shift round_half_even will need (see _rint_shift).
    "multiplying": data.StructLayout({
        "shift":    signed(10),         # -151..135
        "negative": unsigned(1),
        "zero":     unsigned(1),
    }),
    "multiplied": data.StructLayout({
        "shift":    signed(10),
        "negative": unsigned(1),
        "zero":     unsigned(1),
    }),
    # Significand product split in two partial products.
    "partial_products": data.StructLayout({
        "low":      unsigned(_SIGNIFICAND_BITS + _SIGNIFICAND_BITS // 2),
        "high":     unsigned(_SIGNIFICAND_BITS + _SIGNIFICAND_BITS // 2),
        "shift":    signed(10),         # -151..135
        "negative": unsigned(1),
        "zero":     unsigned(1),
    }),
    # Exact product, in [2**46, 2**48). The final rounding's shift depends on where the product's
    # MSB is, so it is prepared for both cases (index: bit 47) while the product is summed.
    "product": data.StructLayout({
        "product":  unsigned(2 * _SIGNIFICAND_BITS),
        "shift":    data.ArrayLayout(_RINT_SHIFT, 2),
        "saturate": data.ArrayLayout(unsigned(1), 2),
        "negative": unsigned(1),
        "zero":     unsigned(1),
    }),
    # float32 product = significand * 2**-(_MIN_RINT_SHIFT + shift), significand in [2**23, 2**24].
    "product_rounded": data.StructLayout({
        "significand": unsigned(_SIGNIFICAND_BITS + 1),
        "shift":       _RINT_SHIFT,
        "saturate":    unsigned(1),     # |product| >= 2**9
        "negative":    unsigned(1),
        "zero":        unsigned(1),
    }),
    # |product| split for round_half_even: integer part, first fraction bit, any later bit.
    # Zero and saturating products have already been forced to 0 and 2**9.
    "aligned": data.StructLayout({
        "integer":  unsigned(_RINT_BITS + 1),
        "half":     unsigned(1),
        "sticky":   unsigned(1),
        "negative": unsigned(1),
    }),
}


def _round_shift_rne(value, shift: int):
    """``round(value / 2**shift)``, ties to even, one bit wider than ``value``.

    Both float32 roundings (int -> float conversion, multiply) are IEEE-754 roundTiesToEven at a
    fixed bit position: keep the high bits and add one when the first dropped bit (half) is set
    and either a later dropped bit (sticky) or the kept LSB (odd) is set.
    """
    quotient = value[shift:]
    half = value[shift - 1]
    sticky = value[:shift - 1].any()
    return quotient + (half & (sticky | quotient[0]))


def _split_shift_rne(value, shift, *, min_shift):
    """Split ``value / 2**(min_shift + shift)`` into ``(integer, half, sticky)``.

    The parts round_half_even needs (ONNX rounds float -> int ties to even), for a variable
    ``shift``. The increment itself is left to the next stage, where it becomes the carry-in of the
    zero-point adder. ``sticky`` compares every bit position with the shift in parallel instead
    of OR-ing the output of a second shifter.
    """
    integer = value[min_shift:] >> shift
    half = value.bit_select(min_shift - 1 + shift, 1)
    always_below = value[:min_shift - 1].any()
    maybe_below = [bit & (shift > offset) for offset, bit in enumerate(value[min_shift - 1:])]
    return integer, half, always_below | Cat(*maybe_below).any()


def _normalise(value, steps):
    """Shift ``value`` left by each of ``steps`` (powers of two, largest first) whose top ``step``
    bits are all zero; return ``(shifted, shift_amount)``.

    First half of IEEE int -> float conversion: the significand is the top bits of the magnitude,
    so it must start at the MSB. Steps 16, 8, 4, 2, 1 form a binary search that finds the leading
    zero count and applies it at once; the pipeline splits them over two stages. A zero value
    stays zero (callers carry a separate zero flag).
    """
    width = len(value)
    amount = Const(0, (width - 1).bit_length())
    for step in steps:
        taken = value[width - step:] == 0
        value = Mux(taken, value << step, value)[:width]
        amount = amount | (taken << (step.bit_length() - 1))
    return value, amount


def _round_significand(normalised):
    """Round a normalised value (MSB set) to float32's 24-bit significand.

    IEEE-754 roundTiesToEven of an exact value to the destination precision. The result is
    ``round(normalised / 2**(len(normalised) - 24))`` and is 25 bits wide: it is exactly 2**24 when
    all kept bits are ones and the rounding carries out (the value is then a power of two).
    """
    return _round_shift_rne(normalised, len(normalised) - _SIGNIFICAND_BITS)


def _int_to_float(normalised, leading_zeros):
    """Finish IEEE int32 -> float32 conversion: ``(significand, exponent)``, 24-bit significand.

    ``float32(magnitude) = significand * 2**exponent``. A rounding carry-out (2**24) is
    renormalised to 2**23 with the exponent one higher, so the multiplier stays 24x24.
    """
    rounded = _round_significand(normalised)
    carry = rounded[_SIGNIFICAND_BITS]
    significand = Mux(carry, 1 << (_SIGNIFICAND_BITS - 1), rounded[:_SIGNIFICAND_BITS])
    exponent = (len(normalised) - _SIGNIFICAND_BITS) - leading_zeros + carry
    return significand, exponent


def _scale_significand(scale):
    """``(significand, exponent)`` of a normal float32: ``1.fraction`` with the hidden bit made
    explicit, so ``scale = significand * 2**exponent``.

    Zero and subnormal scales (exponent field 0) need no special case: read this way they become
    a value below 2**-126, and any int32 times that is below 2**-95 and rounds to 0, as the true
    product does.
    """
    return Cat(scale.fraction, Const(1, 1)), scale.exponent - _SIGNIFICAND_EXPONENT_BIAS


def _split_significand(b):
    """``b`` in halves ``(low, high)``: the partial products ``a * low`` and ``a * high`` give
    ``a * b = a * low + (a * high << len(b) // 2)``.

    The exact 48-bit product is what IEEE multiply rounds from. Splitting ``b`` in halves lets the
    two 24x12 multiplies and the 48-bit sum that joins them sit in different pipeline stages.
    """
    half = len(b) // 2
    return b[:half], b[half:]


def _round_product(product):
    """Round an exact significand product to float32: ``(significand, top)``.

    ``product * 2**e`` becomes ``significand * 2**(e + 23 + top)``, ``significand`` in
    [2**23, 2**24]. The product of two 24-bit significands has its MSB at bit 47 (``top``) or 46;
    moving it to bit 47 first makes the IEEE roundTiesToEven to 24 bits a fixed-position rounding.
    A carry out to 2**24 is kept as such (the integer rounding that follows accepts 25 bits).
    """
    top = product[-1]
    normalised = Mux(top, product, product << 1)[:len(product)]
    return _round_significand(normalised), top


def _rint_shift(excess, top: int):
    """Clamp the cut position of round_half_even: ``(shift, saturate)``.

    The float32 product is ``significand * 2**-(_MIN_RINT_SHIFT + excess - top)``. Below zero
    that is at least 2**9: saturate. ``shift`` is clamped at the point beyond which the value is
    below one half and rounds to 0 anyway. So float32's own exponent limits change nothing: an
    overflowing product saturates, as onnxruntime's clamp does with +/-inf, and a subnormal one
    rounds to 0. ``top`` is folded into the comparisons' constants so that they do not wait for
    the subtraction.
    """
    limit = _RINT_SHIFT.stop - 1
    return Mux(excess > limit + top, limit, excess - top), excess < top


def _add_with_carry(a, b, carry_in):
    """``a + b + carry_in`` as a single adder (Amaranth has no carry-in operator).

    Both operands get an extra LSB, 1 and ``carry_in``: their sum carries into the real bits
    exactly when ``carry_in`` is set, and the extra bit is then dropped.
    """
    return (((a << 1) | 1) + ((b << 1) | carry_in)) >> 1


def _saturate_int8(value):
    """Clamp a signed value to [-128, 127].

    A value is in range exactly when its bits from 7 up are all equal; testing that is shallower
    than two magnitude comparators after the adder that produces ``value``.
    """
    upper = value[7:]
    in_range = (upper == 0) | (upper == (1 << len(upper)) - 1)
    return Mux(in_range, value[:8], Mux(value[-1], -128, 127))


class Requantiser(wiring.Component):
    """Pipelined int32 -> int8 requantiser, bit-exact with onnxruntime's QLinear output rule.

    Each lane computes ``saturate_int8(round_half_even(float32(acc + bias) * scale) + zero_point)``
    with float32 arithmetic emulated exactly (see the module docstring). One vector of ``lanes``
    values is accepted per cycle while the output is ready.

    Supported scales are +/-0.0 and finite normal float32 values of either sign. Subnormal scales
    are also exact (every such product rounds to 0). NaN and infinite scales are outside the
    contract and rejected by the compiler: an all-ones exponent is treated as a huge finite value
    (so an infinite scale saturates like onnxruntime whenever ``acc + bias != 0``).

    The pipeline stalls as a whole while ``o`` holds a vector that is not accepted:
    ``i.ready = ~o.valid | o.ready``.

    Parameters
    ----------
    lanes : int
        Number of independent lanes per vector, 1 to 64.

    Attributes
    ----------
    i : In(stream.Signature(requant_input_layout(lanes)))
        Input vectors: ``acc``, ``bias`` (int32 per lane), ``scale`` (float32 bits per lane) and a
        shared ``zero_point`` (int8).
    o : Out(stream.Signature(data.ArrayLayout(signed(8), lanes)))
        Requantised int8 vectors, in input order.
    lanes : int
        Number of lanes.
    latency : int
        Cycles from an ``i`` transfer to the matching ``o.valid`` when the pipeline is not stalled.
    """

    def __init__(self, *, lanes: int):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or not 1 <= lanes <= MAX_LANES:
            # Amaranth warns about any elaboratable that is never elaborated, rejected ones too; this one
            # already failed loudly, so mark it used.
            self._MustUse__used = True
            raise ValueError(f"`lanes` must be an integer from 1 to {MAX_LANES}, not {lanes!r}")
        self._lanes = lanes
        super().__init__({
            "i": In(stream.Signature(requant_input_layout(lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
        })

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def latency(self) -> int:
        # Every internal stage plus the output register.
        return len(_PIPELINE) + 1

    def elaborate(self, platform):
        m = Module()

        # The whole pipeline moves together: simplest scheme that keeps every stream rule
        # (o.payload held while o.valid & ~o.ready; valid never looks at ready).
        advance = Signal()
        m.d.comb += [
            advance.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(advance),
        ]

        valid = Signal(self.latency)
        with m.If(advance):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))
        m.d.comb += self.o.valid.eq(valid[-1])

        # Datapath registers need no reset: the valid bits say which of them hold vectors.
        reg = {
            name: Signal(data.StructLayout({
                "lanes":      data.ArrayLayout(lane_layout, self._lanes),
                "zero_point": signed(8),
            }), name=f"{name}_reg", reset_less=True)
            for name, lane_layout in _PIPELINE.items()
        }
        stages = list(reg.values())
        # the significand multipliers advance with the pipeline: their operands come from the float stage
        dsp = None if lut_requant(platform) else platform
        products = [self._multiply_lane(m, n, reg["float"].lanes[n], advance, dsp) for n in range(self._lanes)]
        with m.If(advance):
            # The zero point is per vector, so it travels once beside the lanes.
            for src, dst in zip([self.i.payload, *stages[:-1]], stages, strict=True):
                m.d.sync += dst.zero_point.eq(src.zero_point)
            for n in range(self._lanes):
                self._elaborate_lane(m, n, reg, products[n])
        return m

    @staticmethod
    def _multiply_lane(m, n, src, advance, platform):
        """Lane ``n``'s partial products of the float stage ``src``, `PRODUCT_LATENCY` advances later."""
        scale_significand, _ = _scale_significand(src.scale)
        return tuple(registered_product(m, src.significand, part, name=f"lane{n}_{which}", enable=advance,
                                        platform=platform)
                     for which, part in zip(("low", "high"), _split_significand(scale_significand), strict=True))

    def _elaborate_lane(self, m, n, reg, products):
        """Add lane ``n``'s synchronous assignments (already under ``advance``); ``products`` are its
        significand multipliers' outputs (see `_multiply_lane`)."""
        i = self.i.payload

        # acc + bias wraps like int32 addition: assigning to the 32-bit field drops the carry.
        stage = reg["sum"].lanes[n]
        m.d.sync += [
            stage.value.eq(i.acc[n] + i.bias[n]),
            stage.scale.eq(i.scale[n]),
        ]

        src, stage = stage, reg["magnitude"].lanes[n]
        m.d.sync += [
            stage.magnitude.eq(abs(src.value)),   # abs(-2**31) = 2**31 still fits unsigned(32)
            stage.negative.eq(src.value[-1] ^ src.scale.sign),
            stage.zero.eq(src.value == 0),
            stage.scale.eq(src.scale),
        ]

        src, stage = stage, reg["coarse_normalised"].lanes[n]
        normalised, leading_zeros = _normalise(src.magnitude, (16, 8))
        m.d.sync += [
            stage.normalised.eq(normalised),
            stage.leading_zeros.eq(leading_zeros),
            stage.negative.eq(src.negative),
            stage.zero.eq(src.zero),
            stage.scale.eq(src.scale),
        ]

        src, stage = stage, reg["normalised"].lanes[n]
        normalised, leading_zeros = _normalise(src.normalised, (4, 2, 1))
        m.d.sync += [
            stage.normalised.eq(normalised),
            stage.leading_zeros.eq(src.leading_zeros | leading_zeros),
            stage.negative.eq(src.negative),
            stage.zero.eq(src.zero),
            stage.scale.eq(src.scale),
        ]

        src, stage = stage, reg["float"].lanes[n]
        significand, exponent = _int_to_float(src.normalised, src.leading_zeros)
        m.d.sync += [
            stage.significand.eq(significand),
            stage.exponent.eq(exponent),
            stage.negative.eq(src.negative),
            stage.zero.eq(src.zero),
            stage.scale.eq(src.scale),
        ]

        src, stage = stage, reg["multiplying"].lanes[n]
        _, scale_exponent = _scale_significand(src.scale)
        # The exact product is (low + high * 2**12) * 2**exponent; after rounding it has
        # 2**(exponent + 23 + top) (see _round_product), so round_half_even cuts it
        # -(exponent + 23) - top bits below the LSB. Carried as the excess over _MIN_RINT_SHIFT.
        exponent = src.exponent + scale_exponent
        m.d.sync += [
            stage.shift.eq(-exponent - (_SIGNIFICAND_BITS - 1) - _MIN_RINT_SHIFT),
            stage.negative.eq(src.negative),
            stage.zero.eq(src.zero),
        ]

        src, stage = stage, reg["multiplied"].lanes[n]
        m.d.sync += [stage.shift.eq(src.shift), stage.negative.eq(src.negative), stage.zero.eq(src.zero)]

        src, stage = stage, reg["partial_products"].lanes[n]
        low, high = products
        m.d.sync += [
            stage.low.eq(low),
            stage.high.eq(high),
            stage.shift.eq(src.shift),
            stage.negative.eq(src.negative),
            stage.zero.eq(src.zero),
        ]

        src, stage = stage, reg["product"].lanes[n]
        m.d.sync += [
            stage.product.eq(src.low + (src.high << _SIGNIFICAND_BITS // 2)),
            stage.negative.eq(src.negative),
            stage.zero.eq(src.zero),
        ]
        for top in (0, 1):
            shift, saturate = _rint_shift(src.shift, top)
            m.d.sync += [stage.shift[top].eq(shift), stage.saturate[top].eq(saturate)]

        src, stage = stage, reg["product_rounded"].lanes[n]
        significand, top = _round_product(src.product)
        m.d.sync += [
            stage.significand.eq(significand),
            stage.shift.eq(src.shift[top]),
            stage.saturate.eq(src.saturate[top]),
            stage.negative.eq(src.negative),
            stage.zero.eq(src.zero),
        ]

        src, stage = stage, reg["aligned"].lanes[n]
        integer, half, sticky = _split_shift_rne(src.significand, src.shift, min_shift=_MIN_RINT_SHIFT)
        # A zero significand has no half or sticky bits; a saturating 2**9 may still be rounded
        # up to 2**9 + 1, which saturates just the same.
        m.d.sync += [
            stage.integer.eq(Mux(src.zero, 0, Mux(src.saturate, 1 << _RINT_BITS, integer))),
            stage.half.eq(half),
            stage.sticky.eq(sticky),
            stage.negative.eq(src.negative),
        ]

        src = stage
        round_up = src.half & (src.sticky | src.integer[0])
        # -(integer + round_up) = ~integer + (1 - round_up): with the sign applied as a ones'
        # complement, rounding, negation and zero point are one addition with a carry-in.
        integer = Cat(src.integer, Const(0, 1)).as_signed()
        result = _add_with_carry(reg["aligned"].zero_point, Mux(src.negative, ~integer, integer),
                                 src.negative ^ round_up)
        m.d.sync += self.o.payload[n].eq(_saturate_int8(result))
