"""Processing elements: one int8 x int8 multiply and an int32 accumulation per cycle."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .layouts import ACC, OPERAND
from .multiplier import registered_product
from .pe_multipliers import MULTIPLIERS

__all__ = ["WeightStationaryPE", "OutputStationaryPE", "gated_product", "psum_width"]


def psum_width(products, multiplier=MULTIPLIERS["exact"]):
    """Bits of a signed sum of ``products`` products of ``multiplier`` (each of magnitude at most its
    ``magnitude_bound``), at most the accumulator's 32: a weight-stationary column's partial sum after its first
    ``products`` rows."""
    return min(ACC.width, (products * multiplier.magnitude_bound).bit_length() + 1)


def gated_product(x, w, multiplier):
    """``multiplier``'s product of ``x`` and ``w``, gated off when either operand is zero (Eyeriss's zero gating:
    the arrays count these MACs as ``macs_gated`` and the energy model credits them)."""
    return Mux((x == 0) | (w == 0), 0, multiplier.product(x, w))


def _gated_operands(x, w):
    """The multiplier's operands, both held at zero when either is zero (zero gating by operand isolation,
    for a pipelined multiplier: its product is then zero without any of its inputs toggling)."""
    gate = (x == 0) | (w == 0)
    return Mux(gate, 0, x), Mux(gate, 0, w)


class WeightStationaryPE(wiring.Component):
    """PE of the weight-stationary systolic array.

    Holds two weights (banks) so that the next fold's weights load while the current fold computes; each
    activation carries the bank it must meet, so the switch to new weights travels with the wavefront and
    folds follow each other without a bubble.

    Attributes
    ----------
    x_in, bank_in, depthwise_in : In
        Activation from the left neighbour, the weight bank it uses and whether its vector is a depthwise one.
    x_out, bank_out, depthwise_out : Out
        The same, registered, for the right neighbour.
    x_column : In
        The column's own activation, which a depthwise vector multiplies instead of ``x_in`` (see
        :class:`~tessera.hw.array_ws.WeightStationaryArray`).
    psum_in, psum_out : In, Out
        Partial sum from above; ``psum_in`` plus the product ``x_in * weight[bank_in]`` of the activation
        that arrived `~tessera.hw.multiplier.PRODUCT_LATENCY` cycles before, registered, for the PE below.
        ``psum_width`` bits wide.
    w_data, w_bank, w_load : In
        Weight load: when ``w_load``, ``w_data`` is written into bank ``w_bank``.

    Parameters
    ----------
    multiplier : Multiplier
        The product the PE computes (`tessera.hw.pe_multipliers`); an approximate one is always logic.
    lut_multiplier : bool
        Multiply in logic rather than in a DSP block (for arrays with more PEs than the FPGA has blocks).
    psum_width : int
        Width of the partial sums: wide enough for the sum of the products above and this one (see
        `psum_width`), so the adder and its register are no wider than the values they can hold.
    """

    def __init__(self, *, multiplier=MULTIPLIERS["exact"], lut_multiplier=False, psum_width=ACC.width):
        self.multiplier = multiplier
        self.lut_multiplier = lut_multiplier
        super().__init__({
            "x_in": In(OPERAND),
            "bank_in": In(1),
            "depthwise_in": In(1),
            "x_column": In(OPERAND),
            "x_out": Out(OPERAND),
            "bank_out": Out(1),
            "depthwise_out": Out(1),
            "psum_in": In(signed(psum_width)),
            "psum_out": Out(signed(psum_width)),
            "w_data": In(OPERAND),
            "w_bank": In(1),
            "w_load": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        weight = [Signal(OPERAND, name=f"weight_{b}") for b in range(2)]
        for b in range(2):
            with m.If(self.w_load & (self.w_bank == b)):
                m.d.sync += weight[b].eq(self.w_data)
        # The operands and the product are registered (PRODUCT_LATENCY cycles for the whole array), so the
        # multiplier is a path of its own, inside a DSP block on an FPGA: what lets the array clock high.
        x, w = _gated_operands(Mux(self.depthwise_in, self.x_column, self.x_in),
                               Mux(self.bank_in, weight[1], weight[0]))
        if self.multiplier.exact:
            product = registered_product(m, x, w, name="multiplier",
                                         platform=None if self.lut_multiplier else platform)
        else:
            product = _registered_approximate_product(m, x, w, self.multiplier)
        m.d.sync += [
            self.x_out.eq(self.x_in),
            self.bank_out.eq(self.bank_in),
            self.depthwise_out.eq(self.depthwise_in),
            self.psum_out.eq(self.psum_in + product),
        ]
        return m


def _registered_approximate_product(m, x, w, multiplier):
    """``multiplier``'s product with the operands and the result registered, as the exact pipelined product
    (`~tessera.hw.multiplier.PRODUCT_LATENCY` cycles), in logic."""
    operands = Signal(OPERAND, name="multiplier_x"), Signal(OPERAND, name="multiplier_w")
    product = Signal(signed(16), name="multiplier_product")
    m.d.sync += [operands[0].eq(x), operands[1].eq(w), product.eq(multiplier.product(*operands))]
    return product


class OutputStationaryPE(wiring.Component):
    """PE of the output-stationary array: accumulates one output over the reduction steps of a tile.

    The activation carries ``valid``, ``first`` and ``last`` tags: ``first`` restarts the sum, ``last``
    captures it into ``result``, which holds while the next tile accumulates (so readout overlaps compute).

    Attributes
    ----------
    x_in, valid_in, first_in, last_in : In
        Activation and its tags from the left; passed on, registered, through the ``*_out`` ports.
    w_in : In
        Weight from above; passed on, registered, through ``w_out``.
    result : Out
        The captured sum of the last completed tile.

    Parameters
    ----------
    multiplier : Multiplier
        The product the PE computes (`tessera.hw.pe_multipliers`).
    """

    x_in: In(OPERAND)
    valid_in: In(1)
    first_in: In(1)
    last_in: In(1)
    x_out: Out(OPERAND)
    valid_out: Out(1)
    first_out: Out(1)
    last_out: Out(1)
    w_in: In(OPERAND)
    w_out: Out(OPERAND)
    result: Out(ACC)

    def __init__(self, *, multiplier=MULTIPLIERS["exact"]):
        self.multiplier = multiplier
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        acc = Signal(ACC)
        total = Signal(ACC)
        m.d.comb += total.eq(Mux(self.first_in, 0, acc) + gated_product(self.x_in, self.w_in, self.multiplier))
        with m.If(self.valid_in):
            m.d.sync += acc.eq(total)
            with m.If(self.last_in):
                m.d.sync += self.result.eq(total)
        m.d.sync += [
            self.x_out.eq(self.x_in),
            self.valid_out.eq(self.valid_in),
            self.first_out.eq(self.first_in),
            self.last_out.eq(self.last_in),
            self.w_out.eq(self.w_in),
        ]
        return m
