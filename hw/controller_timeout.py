"""The host link's time-out: a stalled instruction or LOAD must not hold the device forever."""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LinkTimeout"]


class LinkTimeout(wiring.Component):
    """Counts the cycles in which the host leaves a due word unsent.

    One counter serves the instruction fetch and the LOAD data, which never wait at the same time.

    Parameters
    ----------
    cycles : int
        Cycles of waiting allowed in a row (``cfg.link_timeout``).

    Attributes
    ----------
    restart : In(1)
        A word came in, or a LOAD starts: count afresh.
    waiting : In(1)
        A word is due this cycle.
    expired : Out(1)
        Waiting, no word, and ``cycles`` waiting cycles already passed: give up (the count starts afresh).
    """

    restart: In(1)
    waiting: In(1)
    expired: Out(1)

    def __init__(self, *, cycles):
        if not isinstance(cycles, int) or cycles < 1:
            raise ValueError(f"cycles: {cycles!r} is not supported; accepted: a positive integer")
        self.cycles = cycles
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        silent = Signal(range(self.cycles + 1))
        m.d.comb += self.expired.eq(self.waiting & ~self.restart & (silent == self.cycles))
        with m.If(self.restart | self.expired):
            m.d.sync += silent.eq(0)
        with m.Elif(self.waiting):
            m.d.sync += silent.eq(silent + 1)
        return m
