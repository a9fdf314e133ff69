"""The controller's own packets to the host: COUNTERS and ERROR."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .isa import COUNTERS, LINK_WIDTH, PacketKind, packet_header_layout

__all__ = ["StatusPacketiser", "link_beat_layout"]


def link_beat_layout():
    """A word for the host, and whether it ends its packet."""
    return data.StructLayout({"data": unsigned(LINK_WIDTH), "last": 1})


class StatusPacketiser(wiring.Component):
    """Frames a COUNTERS packet (a snapshot of the performance counters) or an ERROR packet.

    Attributes
    ----------
    counters : In(ArrayLayout(unsigned(32), len(COUNTERS)))
    capture : In(1)
        Take a snapshot of ``counters``: the payload of the next COUNTERS packet.
    send_counters, send_error : In(1)
        Send that packet; held until ``sent``, one at a time.
    error, opcode : In(8)
        The ERROR packet's payload: the ErrorCode and the opcode of the instruction it rejects.
    packet : Out(stream of link_beat_layout)
    sent : Out(1)
        The packet's last word leaves this cycle.
    """

    counters: In(data.ArrayLayout(unsigned(32), len(COUNTERS)))
    capture: In(1)
    send_counters: In(1)
    send_error: In(1)
    error: In(8)
    opcode: In(8)
    packet: Out(stream.Signature(link_beat_layout()))
    sent: Out(1)

    def elaborate(self, platform):
        m = Module()
        header = data.View(packet_header_layout(), Signal(LINK_WIDTH))
        # sent out from the front, shifting forward after each word: no mux over all the counters on the way to
        # the link (it was the ULX3S build's critical path)
        snapshot = [Signal(32, name=f"snapshot_{name}") for name, _ in COUNTERS]
        sent = Signal(range(len(COUNTERS) + 2))   # words of the packet sent so far
        beat = self.packet.valid & self.packet.ready

        with m.If(self.capture):
            m.d.sync += [now.eq(counter) for now, counter in zip(snapshot, self.counters, strict=True)]
            m.d.sync += sent.eq(0)

        with m.If(self.send_counters):
            m.d.comb += [header.kind.eq(PacketKind.COUNTERS), header.length.eq(len(COUNTERS)),
                         self.packet.payload.data.eq(Mux(sent == 0, header.as_value(), snapshot[0])),
                         self.packet.payload.last.eq(sent == len(COUNTERS))]
            with m.If(beat & (sent != 0)):
                m.d.sync += [now.eq(later) for now, later in zip(snapshot[:-1], snapshot[1:], strict=True)]
        with m.Elif(self.send_error):
            m.d.comb += [header.kind.eq(PacketKind.ERROR), header.length.eq(1),
                         self.packet.payload.data.eq(Mux(sent == 0, header.as_value(), Cat(self.error, self.opcode))),
                         self.packet.payload.last.eq(sent == 1)]

        m.d.comb += [self.packet.valid.eq(self.send_counters | self.send_error),
                     self.sent.eq(beat & self.packet.payload.last)]
        with m.If(beat):
            m.d.sync += sent.eq(Mux(self.packet.payload.last, 0, sent + 1))
        return m
