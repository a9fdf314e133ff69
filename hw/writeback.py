"""The result path's router: each compute command's rows go to the host as a RESULT packet, or into the activation
buffer, where the next layer reads them (a ``store`` command; :func:`~tessera.hw.layouts.store_setup_layout`)."""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import act_write_layout, result_descriptor_layout, result_layout, result_rows_shape, store_words

__all__ = ["ResultRouter"]


class ResultRouter(wiring.Component):
    """Routes the core's result rows command by command, as each command's descriptor says.

    A sent command's row count goes to the packetiser, then its rows. A stored command's row ``i`` becomes the
    writes of the activation words it covers: lanes ``lane`` onward of word ``base + i * stride``, then the next
    words' lanes, its first ``lanes`` lanes in all (one word per cycle, the other lanes of each word untouched).

    Attributes
    ----------
    descriptors : In(stream of result_descriptor_layout(cfg))
    result : In(stream of result_layout(cfg))
        The core's rows, in command order.
    packet_rows : Out(stream of row counts); packet_result : Out(stream of result_layout(cfg))
        To the result packetiser.
    act_store : Out(stream of act_write_layout(cfg))
        Writes of stored rows into the activation buffer.
    completed : Out(1)
        A command's last row has gone (into a packet, or written).
    """

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "descriptors": In(stream.Signature(result_descriptor_layout(cfg))),
            "result": In(stream.Signature(result_layout(cfg))),
            "packet_rows": Out(stream.Signature(result_rows_shape(cfg))),
            "packet_result": Out(stream.Signature(result_layout(cfg))),
            "act_store": Out(stream.Signature(act_write_layout(cfg))),
            "completed": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        current = Signal.like(self.descriptors.payload)
        rows_left = Signal.like(current.rows)
        addr = Signal.like(current.base)   # a stored command's next row's first word
        with m.FSM():
            with m.State("NEXT"):
                m.d.comb += self.descriptors.ready.eq(1)
                with m.If(self.descriptors.valid):
                    m.d.sync += [current.eq(self.descriptors.payload), rows_left.eq(self.descriptors.payload.rows),
                                 addr.eq(self.descriptors.payload.base)]
                    with m.If(self.descriptors.payload.store):
                        m.next = "STORE"
                    with m.Else():
                        m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [self.packet_rows.valid.eq(1), self.packet_rows.payload.eq(current.rows)]
                with m.If(self.packet_rows.ready):
                    m.next = "SEND"
            with m.State("SEND"):
                wiring.connect(m, wiring.flipped(self.result), wiring.flipped(self.packet_result))
                with m.If(self.result.valid & self.result.ready):
                    m.d.sync += rows_left.eq(rows_left - 1)
                    with m.If(rows_left == 1):
                        m.d.comb += self.completed.eq(1)
                        m.next = "NEXT"
            with m.State("STORE"):
                with m.If(self._store(m, current, rows_left, addr)):
                    m.d.comb += self.completed.eq(1)
                    m.next = "NEXT"
        return m

    def _store(self, m, current, rows_left, addr):
        """Write the stored command's rows one activation word a cycle; returns the strobe of its last write."""
        cfg = self.cfg
        rows, cols = cfg.rows, cfg.cols
        row = Signal.like(self.result.payload)
        held = Signal()     # `row` holds a row whose words are being written
        word = Signal(range(store_words(rows, rows - 1, cols) + 1))
        words = store_words(rows, current.lane, current.lanes)
        # element e of the row is lane (e + lane) % rows of word (e + lane) // rows: the row, behind `rows` empty
        # lanes, shifted right by whole lanes so that word `word`'s lanes land at lane 0
        shift = (word * rows + rows - current.lane).as_unsigned()   # (never negative: lane < rows)
        padded = Cat(Const(0, 8 * rows), row.as_value())
        present = Cat(Const(0, rows), ((Const(1, cols + 1) << current.lanes) - 1)[:cols])
        last_word = word == words - 1
        m.d.comb += [
            self.result.ready.eq(~held),
            self.act_store.valid.eq(held),
            self.act_store.payload.addr.eq(addr + word),
            self.act_store.payload.data.eq((padded >> (shift * 8))[:8 * rows]),
            self.act_store.payload.mask.eq((present >> shift)[:rows]),
        ]
        with m.If(self.result.valid & self.result.ready):
            m.d.sync += [row.eq(self.result.payload), held.eq(1), word.eq(0)]
        finished = Signal()
        with m.If(self.act_store.valid & self.act_store.ready):
            m.d.sync += word.eq(word + 1)
            with m.If(last_word):
                m.d.sync += [held.eq(0), rows_left.eq(rows_left - 1), addr.eq(addr + current.stride)]
                m.d.comb += finished.eq(rows_left == 1)
        return finished
