"""Performance counters: one 32-bit counter per named event, cleared together."""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PerfCounters", "pe_event_limits"]


def pe_event_limits(cfg):
    """The most events of each array-wide kind one cycle can bring, which sizes the strobes that carry them from the
    compute units (:class:`~tessera.hw.tiles.ComputeUnit`) through the core to the counters: a gated multiply per
    PE for each of two vectors (ws: a depthwise vector is counted late, beside a later one), three register-file
    reads per PE (rs: filter, ifmap and sum), ``rows + 1`` register-file writes per PE, two transfers between PEs
    per PE."""
    return {"macs_gated": 2 * cfg.pes, "rf_reads": 3 * cfg.pes, "rf_writes": cfg.pes * (cfg.rows + 1),
            "noc_transfers": 2 * cfg.pes}


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
        # The strobes come from all over the die: they are registered here, so that their routes and a counter's
        # 32-bit adder are paths of their own (event logic into a counter was the 16x8 ULX3S build's critical
        # path at 87.5 MHz). `values` adds the registered increment back: a counter reads exactly as if it had
        # counted this cycle's events at once.
        pending = Signal.like(self.increment)
        m.d.sync += pending.eq(Mux(self.clear, 0, self.increment))
        for i, name in enumerate(self._events):
            counter = Signal(32, name=f"count_{name}")
            with m.If(self.clear):
                m.d.sync += counter.eq(0)
            with m.Else():
                m.d.sync += counter.eq(counter + pending[name])
            m.d.comb += self.values[i].eq(counter + pending[name])
        return m
