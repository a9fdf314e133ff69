"""The result path's router: each compute command's rows go to the host as a RESULT packet, or into the activation
or vector buffer, where the next layer reads them (a ``store`` command;
:func:`~tessera.hw.layouts.store_setup_layout`)."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .lane_writer import ColumnWriter, LaneWriter
from .layouts import (
    StoreTarget,
    act_write_layout,
    result_descriptor_layout,
    result_layout,
    result_rows_shape,
    vec_write_layout,
)

__all__ = ["ResultRouter"]


class ResultRouter(wiring.Component):
    """Routes the core's result rows command by command, as each command's descriptor says.

    A sent command's row count goes to the packetiser, then its rows. A stored command's row ``i`` becomes the
    writes of the words it covers in its target buffer: lanes ``lane`` onward of word ``base + i * stride``, then
    the next words' lanes, its first ``lanes`` lanes in all (:class:`~tessera.hw.lane_writer.LaneWriter`).

    Attributes
    ----------
    descriptors : In(stream of result_descriptor_layout(cfg))
    result : In(stream of result_layout(cfg))
        The core's rows, in command order.
    packet_rows : Out(stream of row counts); packet_result : Out(stream of result_layout(cfg))
        To the result packetiser.
    act_store : Out(stream of act_write_layout(cfg))
        Writes of stored rows into the activation buffer.
    vec_store : Out(stream of vec_write_layout(cfg))
        Writes of stored rows into the vector buffer (never valid without a vector unit).
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
            "vec_store": Out(stream.Signature(vec_write_layout(cfg))),
            "completed": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        current = Signal.like(self.descriptors.payload)
        rows_left = Signal.like(current.rows)
        storing = Signal()
        stored = self._store(m, current, rows_left, storing)
        with m.FSM():
            with m.State("NEXT"):
                m.d.comb += self.descriptors.ready.eq(1)
                with m.If(self.descriptors.valid):
                    m.d.sync += [current.eq(self.descriptors.payload), rows_left.eq(self.descriptors.payload.rows)]
                    with m.If(self.descriptors.payload.store != StoreTarget.HOST):
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
                m.d.comb += storing.eq(1)
                with m.If(stored):
                    m.d.comb += self.completed.eq(1)
                    m.next = "NEXT"
        return m

    def _store(self, m, current, rows_left, storing):
        """While ``storing``, pass the stored command's rows to its target's writer; returns the strobe of its
        last write."""
        cfg = self.cfg
        # a row-stationary row is one channel of a column of pixels: written element by element
        writer_class = ColumnWriter if cfg.dataflow == "rs" else LaneWriter
        writers = {StoreTarget.ACT: (writer_class(cfg, cfg.cols, act_write_layout(cfg)), self.act_store)}
        if cfg.vec_depth:
            writers[StoreTarget.VEC] = (writer_class(cfg, cfg.cols, vec_write_layout(cfg)), self.vec_store)
        to_pass = Signal.like(rows_left)   # rows not yet passed to the writer
        addr, lane = self._row_places(m, current, storing)
        with m.If(self.descriptors.valid & self.descriptors.ready):
            m.d.sync += to_pass.eq(self.descriptors.payload.rows)
        finished = Signal()
        for target, (writer, port) in writers.items():
            m.submodules[f"{target.name.lower()}_writer"] = writer
            wiring.connect(m, writer.writes, wiring.flipped(port))
            chosen = current.store == target
            m.d.comb += [writer.rows.payload.row.eq(self.result.payload), writer.rows.payload.addr.eq(addr),
                         writer.rows.payload.lane.eq(lane), writer.rows.payload.lanes.eq(current.lanes),
                         writer.rows.valid.eq(storing & chosen & (to_pass != 0) & self.result.valid)]
            if writer_class is ColumnWriter:
                m.d.comb += writer.rows.payload.lane_stride.eq(current.lane_stride)
            with m.If(storing & chosen & (to_pass != 0)):
                m.d.comb += self.result.ready.eq(writer.rows.ready)
            with m.If(chosen & writer.done):
                m.d.sync += rows_left.eq(rows_left - 1)
                m.d.comb += finished.eq(rows_left == 1)
        with m.If(storing & self.result.valid & self.result.ready):
            m.d.sync += to_pass.eq(to_pass - 1)
        return finished

    def _row_places(self, m, current, storing):
        """The first word and lane of each stored row, stepping as rows pass to the writer: ``stride`` words a
        row; on a row-stationary array, ``stride`` words an output column, and every ``filter_rows`` rows the
        next filter's channel, one lane on (the next word's lane 0 past the target's last lane)."""
        addr = Signal.like(current.base)
        passed = self.descriptors.valid & self.descriptors.ready
        row_passed = storing & self.result.valid & self.result.ready
        if self.cfg.dataflow != "rs":
            with m.If(passed):
                m.d.sync += addr.eq(self.descriptors.payload.base)
            with m.If(row_passed):
                m.d.sync += addr.eq(addr + current.stride)
            return addr, current.lane
        lane = Signal.like(current.lane)
        filter_base = Signal.like(current.base)     # the first word of the current filter's channel
        column = Signal.like(current.filter_rows)
        vec_lanes = vec_write_layout(self.cfg)["data"].shape.length
        word_lanes = Mux(current.store == StoreTarget.VEC, vec_lanes, self.cfg.rows)
        with m.If(passed):
            payload = self.descriptors.payload
            m.d.sync += [addr.eq(payload.base), filter_base.eq(payload.base), lane.eq(payload.lane), column.eq(0)]
        with m.If(row_passed):
            with m.If(column == current.filter_rows - 1):
                next_word = lane == word_lanes - 1
                m.d.sync += [column.eq(0), lane.eq(Mux(next_word, 0, lane + 1)),
                             filter_base.eq(filter_base + next_word), addr.eq(filter_base + next_word)]
            with m.Else():
                m.d.sync += [column.eq(column + 1), addr.eq(addr + current.stride)]
        return addr, lane
