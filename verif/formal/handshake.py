"""The stream handshake, checked on every stream port of a block under any behaviour of the other side.

The rules (:mod:`amaranth.lib.stream`): once ``valid`` is high it stays high until ``ready`` takes the beat, and
the payload holds meanwhile. On a port the block drives they are asserted, with ``ready`` free; on a port it
receives they are assumed of a free producer. Every other input is free (``AnySeq``) unless the spec says what
it holds. Amaranth 0.5 has no ``Past``: one register per port remembers the last cycle.
"""

from amaranth.hdl import Assert, Assume, Cover, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import Flow

from .spec import FormalSpec, bits, free, open_block

__all__ = ["stream_ports", "assert_stream", "assume_stream", "HandshakeSpec"]


def stream_ports(component):
    """``(name, interface, flow)`` of each stream port of ``component`` (arrays of streams as ``name[i]``), where
    ``flow`` is ``Out`` for a stream the component produces."""
    ports = []

    def walk(prefix, signature, obj, flip):
        for name, member in signature.members.items():
            value = getattr(obj, name)
            flow = member.flow.flip() if flip else member.flow
            items = [(f"{prefix}{name}", value)]
            for _ in member.dimensions:
                items = [(f"{n}[{i}]", v) for n, vs in items for i, v in enumerate(vs)]
            if member.is_signature and isinstance(member.signature, stream.Signature):
                ports.extend((n, v, flow) for n, v in items)
            elif member.is_signature:
                for n, v in items:
                    walk(f"{n}.", member.signature, v, flow == Flow.In)
    walk("", component.signature, component, False)
    return ports


def _hold_registers(m, port, name):
    # last cycle's offer that was not taken, and its payload
    value = bits(port.payload)
    held = Signal(name=f"{name}_held")
    last = Signal(len(value), name=f"{name}_last_payload")
    m.d.sync += [held.eq(port.valid & ~port.ready), last.eq(value)]
    return held, last, value


def assert_stream(m, port, name, *, cover=True):
    """The block produces ``port``: assert the rules with ``ready`` free, and cover a beat that waited a cycle and
    was then taken (so the assertion is not vacuous)."""
    if not port.signature.always_ready:
        free(m, port.ready)
    held, last, value = _hold_registers(m, port, name)
    with m.If(held):
        m.d.comb += Assert(port.valid, f"{name}: valid fell before ready")
        m.d.comb += Assert(value == last, f"{name}: payload changed before ready")
    if cover and not port.signature.always_ready:
        m.d.comb += Cover(held & port.valid & port.ready, f"{name}: a stalled beat is taken")
    elif cover:
        m.d.comb += Cover(port.valid, f"{name}: a beat")


def assume_stream(m, port, name, *, cover=True, payload=None):
    """The block receives ``port``: a free producer that keeps the rules (``payload``: drive it from this value
    instead of a free one). Covers a beat taken."""
    free(m, port.valid)
    if payload is None:
        free(m, bits(port.payload))
    else:
        m.d.comb += bits(port.payload).eq(payload)
    held, last, value = _hold_registers(m, port, name)
    with m.If(held):
        m.d.comb += [Assume(port.valid), Assume(value == last)]
    if cover:
        m.d.comb += Cover(port.valid & port.ready, f"{name}: a beat is taken")


class HandshakeSpec(FormalSpec):
    """Every stream port of a block keeps the handshake; every other input is free.

    Parameters
    ----------
    make : callable
        ``make()`` returns the block (a fresh one per elaboration).
    hold : callable, optional
        ``hold(m, block)`` drives inputs that must not be free (a configuration a block requires to hold still);
        return the names of the ports it drove.
    invariants : callable, optional
        ``invariants(m, fragment)`` asserts facts of the block's reachable states (see
        :func:`~tessera.verif.formal.spec.open_block`), so that k-induction need not start from others.
    """

    def __init__(self, make, *, hold=None, invariants=None):
        self.make = make
        self.hold = hold
        self.invariants = invariants

    def build(self, m, platform):
        dut = self.make()
        fragment = open_block(m, "dut", dut, platform)
        if self.invariants:
            self.invariants(m, fragment)
        driven = set(self.hold(m, dut) if self.hold else ())
        streams = stream_ports(dut)
        for name, port, flow in streams:
            if name in driven:
                continue
            if flow == Flow.Out:
                assert_stream(m, port, name)
            else:
                assume_stream(m, port, name)
        inside = tuple(f"{name}." for name, _, _ in streams)
        for path, member, value in dut.signature.flatten(dut):
            name = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
            if member.flow == Flow.In and not name.startswith(inside) and name.split(".")[0] not in driven:
                free(m, value)
