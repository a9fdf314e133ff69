"""Drain: reads finished output tiles from the accumulator, requantises them and streams them out."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import ACC, OPERAND, param_word_layout, result_layout
from .pipeline import timing_registers
from .requant import Requantiser
from .requant_serial import SerialRequantiser

__all__ = ["Drain", "RawRows"]

_RESULT_QUEUE = 3   # a buffered FIFO of depth 2 has a zero-width address, which fails the lint gate


class Drain(wiring.Component):
    """Requantises one accumulator row per cycle (or per ``cols / requant_lanes`` cycles, with a narrower
    requantiser) into the ``result`` stream, under backpressure.

    Attributes
    ----------
    tile : In(stream of tile_layout)
        A finished tile: its half, row count, parameter word and output zero point. A tile layout with a
        ``rows_per_param`` field (row-stationary: one filter's rows after another's) moves to the next
        parameter word every ``rows_per_param`` rows; otherwise one parameter word serves the whole tile.
    release : Out(1)
        Pulse once every row of the current tile has been read (the half may be reused).
    acc_addr, acc_en, acc_data : Out, Out, In
        Accumulator read port (one cycle latency; data holds while ``acc_en`` is low).
    param_addr, param_en, param_data : Out, Out, In
        Parameter buffer read port (one read per parameter word a tile uses).
    result : Out(stream of ArrayLayout(signed(8), cols))
        Requantised output rows, in order; a ``raw`` tile's rows are its accumulators' int32 values, each row as
        four rows of bytes, least significant first (no bias, no requantisation).
    busy : Out(1); acc_read : Out(1)
        Work in flight; an accumulator row is read this cycle.
    """

    def __init__(self, cfg, tile):
        self.cfg = cfg
        self._per_filter = "rows_per_param" in dict(tile.members)
        acc_addr_width = max(1, (cfg.acc_depth - 1).bit_length())
        super().__init__({
            "tile": In(stream.Signature(tile)),
            "release": Out(1),
            "acc_addr": Out(acc_addr_width),
            "acc_en": Out(1),
            "acc_data": In(data.ArrayLayout(ACC, cfg.cols)),
            "param_addr": Out(tile["p_base"].shape),
            "param_en": Out(1),
            "param_data": In(param_word_layout(cfg)),
            "result": Out(stream.Signature(result_layout(cfg))),
            "busy": Out(1),
            "acc_read": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.requant = requant = Requantiser(lanes=cfg.cols) if cfg.requant_width == cfg.cols else \
            SerialRequantiser(lanes=cfg.cols, units=cfg.requant_width)
        # The requantiser stalls as a whole on its output's ready; a small queue in front of the result stream
        # gives it a ready that comes from the queue's own level, not through the packetiser and the link. An
        # iCE40 (clocked at ~20 MHz by its other paths) leaves it out: its logic cells are what is short there.
        raw = RawRows(cfg.cols)     # a raw tile's rows take this path instead of the requantiser
        m.submodules.raw = raw
        # rows that leave the requantiser or the raw path, in the tile's mode (which changes only when both are
        # empty: see _read)
        current = Signal.like(self.tile.payload)
        out = stream.Signature(result_layout(cfg)).create()
        m.d.comb += [
            out.valid.eq(Mux(current.raw, raw.o.valid, requant.o.valid)),
            out.payload.eq(Mux(current.raw, raw.o.payload, requant.o.payload)),
            requant.o.ready.eq(out.ready & ~current.raw), raw.o.ready.eq(out.ready & current.raw),
        ]
        if not timing_registers(platform):
            wiring.connect(m, out, wiring.flipped(self.result))
            return self._read(m, current, requant, raw, platform)
        m.submodules.results = results = fifo.SyncFIFOBuffered(width=len(out.payload.as_value()),
                                                               depth=_RESULT_QUEUE)
        m.d.comb += [
            results.w_data.eq(out.payload), results.w_en.eq(out.valid), out.ready.eq(results.w_rdy),
            self.result.valid.eq(results.r_rdy), self.result.payload.eq(results.r_data),
            results.r_en.eq(self.result.ready),
        ]
        return self._read(m, current, requant, raw, platform, queued=_RESULT_QUEUE)

    def _read(self, m, current, requant, raw, platform, queued=0):
        """Read each finished tile's rows from the accumulator into the requantiser or the raw path (``current``:
        the tile being read; ``queued``: the rows a queue after them may hold)."""
        cfg = self.cfg
        reading = Signal()
        row = Signal.like(current.m)
        feeding = Signal()  # the read port's data is a row to requantise
        advance = Signal()     # the read port takes the next row (its data holds otherwise)

        # a tile of the other mode waits until every row of the last one has gone, so that the two paths never
        # hold rows at once and the rows leave in order
        m.d.comb += self.tile.ready.eq(~reading & ((self.tile.payload.raw == current.raw) | ~self.busy))
        with m.If(self.tile.valid & self.tile.ready):
            m.d.sync += [current.eq(self.tile.payload), reading.eq(1), row.eq(0)]
        if self._per_filter:
            self._read_param_per_filter(m, current, reading_row=advance & reading & (row != current.m))
        else:
            m.d.comb += [self.param_addr.eq(self.tile.payload.p_base),
                         self.param_en.eq(self.tile.valid & self.tile.ready)]

        m.d.comb += [
            self.acc_addr.eq(Mux(current.half, cfg.acc_half_depth, 0) + row),
            self.acc_en.eq(advance),
        ]
        m.d.comb += self.acc_read.eq(advance & reading & (row != current.m))
        with m.If(advance):
            m.d.sync += feeding.eq(reading & (row != current.m))
            with m.If(reading):
                with m.If(row == current.m):
                    m.d.sync += reading.eq(0)
                    m.d.comb += self.release.eq(1)
                with m.Else():
                    m.d.sync += row.eq(row + 1)

        row_in = Signal.like(requant.i.payload)
        m.d.comb += [
            row_in.acc.eq(self.acc_data),
            row_in.bias.eq(self.param_data.bias),
            row_in.scale.eq(self.param_data.scale),
            row_in.zero_point.eq(current.y_zp),
        ]
        # the row goes to the requantiser, or for a raw tile to the raw path
        sink_ready = Mux(current.raw, raw.i.ready, requant.i.ready)
        if timing_registers(platform):
            # The row is registered before the requantiser: a block RAM's read data arrives late in the cycle
            # (5.8 ns on the ECP5), and the requantiser's first stage adds the bias to it with a 32-bit carry chain
            # (the 16x8 ULX3S build's critical path at 86 MHz).
            staged = Signal.like(row_in)
            staged_valid = Signal()
            m.d.comb += advance.eq(~feeding | ~staged_valid | sink_ready)
            with m.If(~staged_valid | sink_ready):
                m.d.sync += [staged_valid.eq(feeding), staged.eq(row_in)]
            row_out, row_valid, waiting = staged, staged_valid, staged_valid
        else:
            m.d.comb += advance.eq(~feeding | sink_ready)
            row_out, row_valid, waiting = row_in, feeding, 0
        m.d.comb += [requant.i.valid.eq(row_valid & ~current.raw), requant.i.payload.eq(row_out),
                     raw.i.valid.eq(row_valid & current.raw), raw.i.payload.eq(row_out.acc)]

        in_flight = Signal(range(requant.latency + queued + 4))
        m.d.sync += in_flight.eq(in_flight + (requant.i.valid & requant.i.ready) + (raw.o.valid & raw.o.ready)
                                 - (self.result.valid & self.result.ready))
        m.d.comb += self.busy.eq(reading | feeding | waiting | raw.busy | (in_flight != 0))
        return m

    def _read_param_per_filter(self, m, current, reading_row):
        """Read parameter word ``p_base + i`` with the first accumulator row of filter ``i``: both reads land
        the next cycle, and the parameter word then holds (its port is not enabled) for the filter's other
        rows."""
        param = Signal.like(current.p_base)
        filter_row = Signal.like(current.m)
        with m.If(self.tile.valid & self.tile.ready):
            m.d.sync += [param.eq(self.tile.payload.p_base), filter_row.eq(0)]
        m.d.comb += [self.param_addr.eq(param), self.param_en.eq(reading_row & (filter_row == 0))]
        with m.If(reading_row):
            m.d.sync += filter_row.eq(filter_row + 1)
            with m.If(filter_row == current.rows_per_param - 1):
                m.d.sync += [filter_row.eq(0), param.eq(param + 1)]


class RawRows(wiring.Component):
    """An accumulator row out as four rows of bytes (the int32 lanes' bytes, least significant first).

    Attributes
    ----------
    i : In(stream of ArrayLayout(ACC, lanes))
    o : Out(stream of ArrayLayout(signed(8), lanes))
    busy : Out(1)
        A row is held.
    """

    def __init__(self, lanes):
        self.lanes = lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(ACC, lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(OPERAND, lanes))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        held = Signal.like(self.i.payload)
        byte = Signal(2)
        m.d.comb += [self.i.ready.eq(~self.busy), self.o.valid.eq(self.busy)]
        for lane in range(self.lanes):
            m.d.comb += self.o.payload[lane].eq(held[lane].word_select(byte, 8))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [held.eq(self.i.payload), byte.eq(0), self.busy.eq(1)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += byte.eq(byte + 1)
            with m.If(byte == 3):
                m.d.sync += self.busy.eq(0)
        return m
