"""Pipelined multiplies that an FPGA's DSP blocks can hold whole, registers included.

On the ECP5 a multiply inferred by Yosys is a MULT18X18D without its registers: the route into the block, the
multiply and the route out then form one path, which held the 8x8 array and the requantiser to about 55 MHz.
`registered_product` registers both operands and the product (two cycles), and on the ECP5 places both
registers inside the block, which measured 211 MHz against 135 MHz for an inferred multiply followed by a
register (a chain of 8 int8 multiply-accumulates on the ULX3S-85F).
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Signal, signed, unsigned

from .pipeline import fpga_family

__all__ = ["registered_product", "PRODUCT_LATENCY", "LOGIC_SUFFIX", "lut_multiplier_row", "lut_requant"]

#: Cycles from the operands to their product.
PRODUCT_LATENCY = 2

_DSP_WIDTH = 18

#: Name ending of the submodules whose multiplies a board build maps to logic rather than DSP blocks.
LOGIC_SUFFIX = "_in_logic"


def registered_product(m, a, b, *, name, enable=1, platform=None):
    """``a * b``, :data:`PRODUCT_LATENCY` cycles later; the pipeline advances while ``enable``.

    Operands are at most 18 bits, except that an unsigned ``a`` of up to 36 bits is split in two: on an ECP5
    its low 18 bits multiply in a DSP block, the rest in logic (a submodule named ``*_in_logic``, which
    the board build maps to LUTs), the two products summed after the output registers. On an ECP5
    ``platform`` each block is a MULT18X18D with its input and output registers; elsewhere (or with
    ``platform=None``) the same two register stages are plain logic, whose multiply Yosys maps to a DSP block
    or, when a build asks, to LUTs.
    """
    a_shape, b_shape = a.shape(), b.shape()
    signed_product = a_shape.signed or b_shape.signed
    shape = (signed if signed_product else unsigned)(len(a) + len(b))
    if len(b) > _DSP_WIDTH or (len(a) > _DSP_WIDTH and (a_shape.signed or len(a) > 2 * _DSP_WIDTH)):
        raise ValueError(f"{name}: operands of {len(a)} and {len(b)} bits; accepted: b up to {_DSP_WIDTH} bits, "
                         f"a up to {_DSP_WIDTH} bits (or up to {2 * _DSP_WIDTH} bits unsigned)")
    product = Signal(shape, name=f"{name}_product")
    ecp5 = fpga_family(platform) == "ecp5"
    if ecp5 and len(a) > _DSP_WIDTH:
        # The low 18 bits in a DSP block, the rest (6 bits for the requantiser's 24-bit significands) in logic:
        # one block per product instead of two, so a 16-row array and its requantiser fit the ECP5-85F's 156.
        low = registered_product(m, a[:_DSP_WIDTH], b, name=f"{name}_low", enable=enable, platform=platform)
        logic = m.submodules[f"{name}_high{LOGIC_SUFFIX}"] = Module()
        high = registered_product(logic, a[_DSP_WIDTH:], b, name=f"{name}_high", enable=enable)
        m.d.comb += product.eq(low + (high << _DSP_WIDTH))
        return product
    if ecp5:
        _mult18x18d(m, a, b, product, name=name, enable=enable)
    else:
        operands = Signal(a_shape, name=f"{name}_a"), Signal(b_shape, name=f"{name}_b")
        with m.If(enable):
            m.d.sync += [operands[0].eq(a), operands[1].eq(b), product.eq(operands[0] * operands[1])]
    return product


# A board build sets platform.lut_multiplier_rows (the array's last rows) and platform.lut_requant when the device
# has fewer DSP blocks than the configuration multiplies in; those multiplies are then left to Yosys, in logic.

def lut_multiplier_row(platform, row, rows):
    """Whether the PEs of array row ``row`` (of ``rows``) multiply in logic instead of DSP blocks."""
    return row >= rows - getattr(platform, "lut_multiplier_rows", 0)


def lut_requant(platform):
    """Whether the requantiser multiplies in logic instead of DSP blocks."""
    return bool(getattr(platform, "lut_requant", False))


def _mult18x18d(m, a, b, product, *, name, enable):
    """One MULT18X18D with input registers A and B and the output register, all on CLK0 and CE0."""
    def extend(value):
        # sign- or zero-extend to the block's 18 bits
        return Cat(value, *([value[-1]] * (_DSP_WIDTH - len(value)))) if value.shape().signed else \
            Cat(value, Const(0, _DSP_WIDTH - len(value)))
    wide = Signal(2 * _DSP_WIDTH, name=f"{name}_p")
    a18, b18 = extend(a), extend(b)
    ports = {f"i_A{i}": a18[i] for i in range(_DSP_WIDTH)}
    ports.update({f"i_B{i}": b18[i] for i in range(_DSP_WIDTH)})
    ports.update({f"i_C{i}": 0 for i in range(_DSP_WIDTH)})
    ports.update({f"o_P{i}": wide[i] for i in range(2 * _DSP_WIDTH)})
    ports.update(i_SIGNEDA=int(a.shape().signed), i_SIGNEDB=int(b.shape().signed), i_SOURCEA=0, i_SOURCEB=0,
                 i_CLK0=ClockSignal(), i_CLK1=0, i_CLK2=0, i_CLK3=0, i_CE0=enable, i_CE1=0, i_CE2=0, i_CE3=0,
                 i_RST0=0, i_RST1=0, i_RST2=0, i_RST3=0)
    registers = {}
    for register in ("INPUTA", "INPUTB", "OUTPUT"):
        registers.update({f"p_REG_{register}_CLK": "CLK0", f"p_REG_{register}_CE": "CE0",
                          f"p_REG_{register}_RST": "RST0"})
    m.submodules[name] = Instance(
        "MULT18X18D", **registers, p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
        p_CLK0_DIV="ENABLED", p_CLK1_DIV="ENABLED", p_CLK2_DIV="ENABLED", p_CLK3_DIV="ENABLED",
        p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED", p_CAS_MATCH_REG="FALSE", p_SOURCEB_MODE="B_SHIFT",
        p_MULT_BYPASS="DISABLED", p_RESETMODE="SYNC", **ports)
    m.d.comb += product.eq(wide[:len(product)])
