"""Writing rows of int8 lanes into a buffer whose words hold another number of lanes, from any lane, or (the
row-stationary array's rows, which are output columns) one lane of a word per element: how stored results reach
the activation and vector buffers (:func:`~tessera.hw.layouts.store_setup_layout`)."""

from amaranth.hdl import Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import store_addr_shape, store_words

__all__ = ["ColumnWriter", "LaneWriter", "column_row_layout", "lane_row_layout"]


def lane_row_layout(cfg, row_lanes):
    """A row to write: ``row_lanes`` int8, its first ``lanes`` of them from lane ``lane`` of word ``addr`` on."""
    return data.StructLayout({"row": data.ArrayLayout(signed(8), row_lanes), "addr": store_addr_shape(cfg),
                              "lane": unsigned(8), "lanes": unsigned(8)})


def column_row_layout(cfg, row_lanes):
    """A row to write element by element: its first ``lanes`` int8 into lane ``lane`` of words ``addr``,
    ``addr + lane_stride``, ..."""
    return data.StructLayout({**dict(lane_row_layout(cfg, row_lanes).members), "lane_stride": unsigned(16)})


class _RowWriter(wiring.Component):
    """What both writers share: a row taken and held while its writes go out, one a cycle under the buffer's
    backpressure; the next row taken in the cycle the last write of the one before goes."""

    def __init__(self, row_layout, row_lanes, write_layout):
        self.row_lanes = row_lanes
        self.word_lanes = write_layout["data"].shape.length
        super().__init__({
            "rows": In(stream.Signature(row_layout)),
            "writes": Out(stream.Signature(write_layout)),
            "done": Out(1),
        })

    def _sequence(self, m, row, last_write, step, restart):
        """Hold ``row`` until its ``last_write`` goes; ``step`` after each other write, ``restart`` with a row
        taken (both lists of sync statements)."""
        held = Signal()
        written = self.writes.valid & self.writes.ready
        finishing = written & last_write
        m.d.comb += [self.writes.valid.eq(held), self.rows.ready.eq(~held | finishing), self.done.eq(finishing)]
        with m.If(finishing):
            m.d.sync += held.eq(0)
        with m.Elif(written):
            m.d.sync += step
        with m.If(self.rows.valid & self.rows.ready):
            m.d.sync += [row.eq(self.rows.payload), held.eq(1), *restart]


class LaneWriter(_RowWriter):
    """Turns rows of ``row_lanes`` int8 into the word writes of a buffer whose words hold ``word_lanes`` lanes,
    one word a cycle: a row's element ``e`` goes to lane ``(lane + e) % word_lanes`` of word
    ``addr + (lane + e) // word_lanes``; the other lanes of each word are left alone (clear in ``mask``).

    Parameters
    ----------
    cfg : AcceleratorConfig
    row_lanes : int
    write_layout : Layout with ``addr``, ``data`` (an array of int8) and ``mask``
        The buffer's write (``act_write_layout`` or ``vec_write_layout``).

    Attributes
    ----------
    rows : In(stream of lane_row_layout(cfg, row_lanes))
        Taken in the cycle the last word of the row before is written, so rows of one word go at one a cycle.
    writes : Out(stream of write_layout)
    done : Out(1)
        A row's last word is written this cycle.
    """

    def __init__(self, cfg, row_lanes, write_layout):
        super().__init__(lane_row_layout(cfg, row_lanes), row_lanes, write_layout)

    def elaborate(self, platform):
        m = Module()
        lanes_in, lanes_out = self.row_lanes, self.word_lanes
        row = Signal.like(self.rows.payload)
        word = Signal(range(store_words(lanes_out, lanes_out - 1, lanes_in) + 1))
        # element e is lane (e + lane) % lanes_out of word (e + lane) // lanes_out: the row, behind `lanes_out`
        # empty lanes, shifted right by whole lanes so that word `word`'s lanes land at lane 0
        shift = (word * lanes_out + lanes_out - row.lane).as_unsigned()    # (never negative: lane < lanes_out)
        padded = Cat(Const(0, 8 * lanes_out), row.row.as_value())
        present = Cat(Const(0, lanes_out), ((Const(1, lanes_in + 1) << row.lanes) - 1)[:lanes_in])
        m.d.comb += [
            self.writes.payload.addr.eq(row.addr + word),
            self.writes.payload.data.eq((padded >> (shift * 8))[:8 * lanes_out]),
            self.writes.payload.mask.eq((present >> shift)[:lanes_out]),
        ]
        self._sequence(m, row, last_write=word == store_words(lanes_out, row.lane, row.lanes) - 1,
                       step=[word.eq(word + 1)], restart=[word.eq(0)])
        return m


class ColumnWriter(_RowWriter):
    """Turns rows of ``row_lanes`` int8 into one-lane word writes, one a cycle: a row's element ``e`` (``e <
    lanes``) goes to lane ``lane`` of word ``addr + e * lane_stride``, the word's other lanes left alone. A
    row-stationary array's result row is one channel of a column of output pixels; the next layer reads pixels
    whose words hold channels, so each element is a word of its own.

    Parameters and attributes as :class:`LaneWriter`, with rows of :func:`column_row_layout`.
    """

    def __init__(self, cfg, row_lanes, write_layout):
        super().__init__(column_row_layout(cfg, row_lanes), row_lanes, write_layout)

    def elaborate(self, platform):
        m = Module()
        row = Signal.like(self.rows.payload)
        element = Signal(range(self.row_lanes + 1))
        addr = Signal.like(row.addr)
        value = row.row[element]
        m.d.comb += [
            self.writes.payload.addr.eq(addr),
            # the element in every lane: the mask picks the one written
            self.writes.payload.data.eq(Cat(*[value] * self.word_lanes)),
            self.writes.payload.mask.eq(Const(1, self.word_lanes) << row.lane),
        ]
        self._sequence(m, row, last_write=element == row.lanes - 1,
                       step=[element.eq(element + 1), addr.eq(addr + row.lane_stride)],
                       restart=[element.eq(0), addr.eq(self.rows.payload.addr)])
        return m
