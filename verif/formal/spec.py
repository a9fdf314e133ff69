"""What every spec shares: one clock domain that never resets, free inputs, and a look inside the block."""

from amaranth.asserts import AnySeq
from amaranth.hdl import Assume, ClockDomain, Elaboratable, Fragment, Module, Mux, Signal

__all__ = ["FormalSpec", "bits", "free", "fair", "open_block"]


class FormalSpec(Elaboratable):
    """A spec: one ``sync`` domain whose reset stays low (the initial state is the reset state), and
    :meth:`build`, which adds the block and its properties."""

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain()
        m.d.comb += sync.rst.eq(0)
        self.build(m, platform)
        return m

    def build(self, m, platform):
        raise NotImplementedError


def bits(value):
    """The plain value of a view (a stream payload of a layout) or of a value."""
    return value.as_value() if hasattr(value, "as_value") else value


def free(m, value):
    """Drive ``value`` with a new free value every cycle."""
    value = bits(value)
    m.d.comb += value.eq(AnySeq(len(value)))


def fair(m, event, patience, *, name):
    """Assume ``event`` is high at least once in every ``patience + 1`` cycles (the other side is slow, not dead):
    what a bounded liveness property needs of its environment."""
    waited = Signal(range(patience + 1), name=f"{name}_waited")
    m.d.sync += waited.eq(Mux(event, 0, waited + 1))
    with m.If(waited == patience):
        m.d.comb += Assume(event)
    return waited


def open_block(m, name, block, platform):
    """Add ``block`` to ``m`` as submodule ``name`` elaborated here, and return its fragment: a spec can then read
    what the block keeps inside (``fragment.find_subfragment("queue").origins[0].level``, or the state of an FSM
    with ``fragment.find_generated("fsm")``) to state the invariants that let k-induction close."""
    fragment = Fragment.get(block, platform)
    m.submodules[name] = fragment
    return fragment
