"""A requantiser narrower than the rows it requantises: each row goes through it in several beats.

One requantiser lane costs about 1,140 LUTs and two DSP blocks on the ECP5 (the 16x8 ULX3S build, summed by
module). A drain that emits one row per cycle needs a lane per column, but the array produces a row only once per
reduction (K cycles for K input channels), so fewer lanes, each serving several columns in turn, keep up with it
in all but the shallowest layers, and leave their LUTs and DSP blocks to the PE array.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .requant import Requantiser, requant_input_layout

__all__ = ["SerialRequantiser"]


class SerialRequantiser(wiring.Component):
    """Requantises vectors of ``lanes`` values on a `~tessera.hw.requant.Requantiser` of ``units`` lanes.

    Same streams as a ``Requantiser(lanes=lanes)``: a vector is accepted, and one produced, every
    ``lanes // units`` cycles at best. Beat ``k`` of a vector carries its lanes ``k * units`` to
    ``(k + 1) * units - 1``; the results are gathered back into a whole vector, in input order.

    Parameters
    ----------
    lanes : int
        Values per vector.
    units : int
        Requantiser lanes, a divisor of ``lanes`` smaller than it.
    """

    def __init__(self, *, lanes, units):
        if not isinstance(units, int) or isinstance(units, bool) or not 1 <= units < lanes or lanes % units:
            self._MustUse__used = True
            raise ValueError(f"`units` must be a divisor of lanes={lanes} smaller than it, not {units!r}")
        self._lanes, self._units = lanes, units
        self._requant = Requantiser(lanes=units)
        super().__init__({
            "i": In(stream.Signature(requant_input_layout(lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
        })

    @property
    def lanes(self):
        return self._lanes

    @property
    def beats(self):
        """Beats per vector."""
        return self._lanes // self._units

    @property
    def latency(self):
        """Cycles from a vector's transfer (its last beat) to its result, when nothing stalls."""
        return self._requant.latency + 1

    def elaborate(self, platform):
        m = Module()
        units, beats = self._units, self.beats
        m.submodules.requant = requant = self._requant

        # Serialise: offer beat `sent` of the input vector; the vector is taken with its last beat.
        sent = Signal(range(beats))
        beat = requant.i.payload
        m.d.comb += [beat.zero_point.eq(self.i.payload.zero_point), requant.i.valid.eq(self.i.valid)]
        for lane in range(units):
            with m.Switch(sent):
                for k in range(beats):
                    with m.Case(k):
                        m.d.comb += [beat.acc[lane].eq(self.i.payload.acc[k * units + lane]),
                                     beat.bias[lane].eq(self.i.payload.bias[k * units + lane]),
                                     beat.scale[lane].eq(self.i.payload.scale[k * units + lane])]
        m.d.comb += self.i.ready.eq(requant.i.ready & (sent == beats - 1))
        with m.If(requant.i.valid & requant.i.ready):
            m.d.sync += sent.eq(sent + 1)
            with m.If(sent == beats - 1):
                m.d.sync += sent.eq(0)

        # Gather: write each result beat into its place; the vector is offered once its last beat is in. A beat
        # may arrive in the cycle the previous vector leaves (it is then the next vector's first).
        gathered = Signal(range(beats))
        full = Signal()
        m.d.comb += [self.o.valid.eq(full), requant.o.ready.eq(~full | self.o.ready)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += full.eq(0)
        with m.If(requant.o.valid & requant.o.ready):
            with m.Switch(gathered):
                for k in range(beats):
                    with m.Case(k):
                        m.d.sync += [self.o.payload[k * units + lane].eq(requant.o.payload[lane])
                                     for lane in range(units)]
            m.d.sync += gathered.eq(gathered + 1)
            with m.If(gathered == beats - 1):
                m.d.sync += [gathered.eq(0), full.eq(1)]
        return m
