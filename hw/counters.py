"""Performance counters: one 32-bit counter per named event, cleared together."""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PerfCounters"]


class PerfCounters(wiring.Component):
    """Counts event strobes.

    Parameters
    ----------
    events : dict of name -> increment width
        The counters, in the order of ``values``.

    Attributes
    ----------
    increment : In(StructLayout of the events)
        How much each counter advances this cycle.
    clear : In(1)
        Zero every counter (this cycle's increments are dropped).
    values : Out(ArrayLayout(unsigned(32), len(events)))
    """

    def __init__(self, events):
        self._events = dict(events)
        super().__init__({
            "increment": In(data.StructLayout(self._events)),
            "clear": In(1),
            "values": Out(data.ArrayLayout(unsigned(32), len(self._events))),
        })

    def elaborate(self, platform):
        m = Module()
        for i, name in enumerate(self._events):
            counter = Signal(32, name=f"count_{name}")
            with m.If(self.clear):
                m.d.sync += counter.eq(0)
            with m.Else():
                m.d.sync += counter.eq(counter + self.increment[name])
            m.d.comb += self.values[i].eq(counter)
        return m
