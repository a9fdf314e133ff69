"""The device's side of the host link: result packets and the arbiter in front of ``host_out``."""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .controller import link_beat_layout
from .isa import LINK_WIDTH, PacketKind, packet_header_layout, result_row_words
from .layouts import result_layout

__all__ = ["ResultPacketiser", "PacketArbiter"]


class ResultPacketiser(wiring.Component):
    """Frames the core's output rows as RESULT packets, one per compute command.

    A row of ``cols`` int8 goes out as ``ceil(cols / 4)`` words, lane 0 in the low byte of the first word.

    Attributes
    ----------
    rows : In(stream of row counts)
        How many rows the next command produces (from the controller, in command order).
    result : In(stream of result_layout)
        The core's requantised rows.
    packet : Out(stream of link_beat_layout)
    """

    def __init__(self, cfg, row_count_shape):
        self.cfg = cfg
        self.words_per_row = result_row_words(cfg)
        super().__init__({
            "rows": In(stream.Signature(row_count_shape)),
            "result": In(stream.Signature(result_layout(cfg))),
            "packet": Out(stream.Signature(link_beat_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        wpr = self.words_per_row
        rows_left = Signal.like(self.rows.payload)
        word = Signal(range(max(wpr, 2)))  # one bit at least: a zero-width signal fails the lint gate
        header = data.View(packet_header_layout(), Signal(LINK_WIDTH))
        row_bits = Signal(wpr * LINK_WIDTH)
        m.d.comb += row_bits.eq(self.result.payload.as_value())

        with m.FSM():
            with m.State("HEADER"):
                m.d.comb += [
                    header.kind.eq(PacketKind.RESULT), header.length.eq(self.rows.payload * wpr),
                    self.packet.valid.eq(self.rows.valid),
                    self.packet.payload.data.eq(header.as_value()),
                    self.packet.payload.last.eq(0),
                    self.rows.ready.eq(self.packet.ready),
                ]
                with m.If(self.rows.valid & self.packet.ready):
                    m.d.sync += [rows_left.eq(self.rows.payload), word.eq(0)]
                    m.next = "ROWS"
            with m.State("ROWS"):
                last_word = word == wpr - 1
                m.d.comb += [
                    self.packet.valid.eq(self.result.valid),
                    self.packet.payload.data.eq(row_bits.word_select(word, LINK_WIDTH)),
                    self.packet.payload.last.eq(last_word & (rows_left == 1)),
                    self.result.ready.eq(self.packet.ready & last_word),
                ]
                with m.If(self.result.valid & self.packet.ready):
                    m.d.sync += word.eq(word + 1)
                    with m.If(last_word):
                        m.d.sync += [word.eq(0), rows_left.eq(rows_left - 1)]
                        with m.If(rows_left == 1):
                            m.next = "HEADER"
        return m


class PacketArbiter(wiring.Component):
    """Merges packet streams onto ``host_out`` without interleaving packets (lower index wins ties). A source holds
    ``host_out`` from the first word it offers, so an offered word stays until it is taken.

    Attributes
    ----------
    sources : In(array of streams of link_beat_layout)
    host_out : Out(stream of 32-bit words)
    """

    def __init__(self, count):
        self.count = count
        super().__init__({
            "sources": In(stream.Signature(link_beat_layout())).array(count),
            "host_out": Out(stream.Signature(unsigned(LINK_WIDTH))),
        })

    def elaborate(self, platform):
        m = Module()
        owner = Signal(range(self.count + 1))   # 0: none, else 1 + the source that holds the link
        chosen = Signal(range(self.count + 1))
        with m.If(owner != 0):
            m.d.comb += chosen.eq(owner)
        with m.Else():
            for index in reversed(range(self.count)):   # the last assignment wins: the lowest valid index
                with m.If(self.sources[index].valid):
                    m.d.comb += chosen.eq(index + 1)
        for index, source in enumerate(self.sources):
            with m.If(chosen == index + 1):
                m.d.comb += [
                    self.host_out.valid.eq(source.valid),
                    self.host_out.payload.eq(source.payload.data),
                    source.ready.eq(self.host_out.ready),
                ]
                with m.If(source.valid):
                    # hold the link from the first word offered (not taken) until the packet's last word has gone:
                    # a word on host_out must stay there until it is taken, even if a source of lower index
                    # becomes valid meanwhile (the stream rules; the formal handshake property found this)
                    m.d.sync += owner.eq(Mux(self.host_out.ready & source.payload.last, 0, index + 1))
        return m
