"""Output-stationary compute unit: streams activations and weights, reads captured tiles into the accumulator."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data

from .array_os import OutputStationaryArray
from .gather import ConvGather
from .pe_multipliers import multiplier
from .pipeline import delayed
from .tiles import ComputeUnit

__all__ = ["OutputStationaryCompute"]


class OutputStationaryCompute(ComputeUnit):
    """Runs compute commands on an :class:`OutputStationaryArray`.

    A command is one ``rows x cols`` output tile (``m <= rows`` rows are kept) reduced over ``k`` steps; each
    cycle one activation word (a column of ``X``) and one weight word (a row of ``W``) enter the array. A
    conv command's activation columns come from :class:`~tessera.hw.gather.ConvGather` instead (``k`` is then the
    folds times ``rows``, one step per channel of each fold). Tiles
    follow each other without a gap: a finished tile is captured inside the PEs and read out, one row per
    cycle, into an accumulator half while the next tile accumulates.

    Attributes
    ----------
    Same as :class:`~tessera.hw.compute_ws.WeightStationaryCompute` (the accumulator read port is unused here).
    """

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.array = array = OutputStationaryArray(rows=cfg.rows, cols=cfg.cols,
                                                                        multiplier=multiplier(cfg.multiplier))
        tracker = self._tile_tracker(m)

        # -- issuer ----------------------------------------------------------------------------------------
        cmd = Signal(self._command)
        active = Signal()
        step = Signal.like(cmd.k)
        half = Signal()
        # A tile's sums are captured over the cycles after its last step; the next tile's last step must
        # not overwrite them before they are read out, which takes rows + cols cycles at most.
        spacing = cfg.rows + cfg.cols
        since_last = Signal(range(spacing + 1), init=spacing)
        at_last = Signal()
        stall = Signal()
        m.d.comb += [
            at_last.eq(active & (step == cmd.k - 1)),
            stall.eq(at_last & (since_last != spacing)),
        ]
        # conv commands step through the gathered blocks (hw.gather) instead of reading activation words
        m.submodules.gather = gather = ConvGather(cfg.rows, len(self.act_addr))
        issue = Signal()
        m.d.comb += issue.eq(active & ~stall & (~cmd.conv | gather.ready))
        can_take = (~active | (at_last & issue))
        m.d.comb += [
            tracker.start.valid.eq(can_take & self.cmd.valid),
            tracker.start.payload.m.eq(self.cmd.payload.m),
            tracker.start.payload.p_base.eq(self.cmd.payload.p_base),
            tracker.start.payload.y_zp.eq(self.cmd.payload.y_zp),
            tracker.start.payload.raw.eq(self.cmd.payload.raw),
            self.cmd.ready.eq(can_take & tracker.start.ready),
        ]
        with m.If(issue):
            m.d.sync += step.eq(step + 1)
        with m.If(issue & at_last):
            m.d.sync += [active.eq(0), since_last.eq(0)]
        with m.Elif(since_last != spacing):
            m.d.sync += since_last.eq(since_last + 1)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [cmd.eq(self.cmd.payload), active.eq(1), step.eq(0), half.eq(tracker.half)]
        m.d.comb += [
            gather.geometry.eq(self.conv_geometry),
            gather.start.eq(self.cmd.valid & self.cmd.ready & self.cmd.payload.conv),
            gather.out_y.eq(self.cmd.payload.out_y), gather.out_x.eq(self.cmd.payload.out_x),
            gather.x_base.eq(self.cmd.payload.x_base),
            gather.take.eq(issue & cmd.conv),
            gather.act_data.eq(self.act_data),
            self.act_addr.eq(Mux(cmd.conv, gather.act_addr, cmd.x_base + step)),
            self.act_read.eq(Mux(cmd.conv, gather.reading, issue)),
            # each step: every PE reads and writes its stationary sum; activations hop right, weights down
            self.rf_reads.eq(Mux(issue, cfg.pes, 0)),
            self.rf_writes.eq(Mux(issue, cfg.pes, 0)),
            self.noc_transfers.eq(Mux(issue, cfg.rows * (cfg.cols - 1) + (cfg.rows - 1) * cfg.cols, 0)),
            self.weight_addr.eq(cmd.w_base + step),
            self.issued.eq(issue),
            self.weight_read.eq(issue),
            self.acc_rmw_read.eq(0),
        ]

        tag_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1, "conv": 1})
        tag = Signal(tag_layout)
        m.d.comb += [tag.valid.eq(issue), tag.first.eq(step == 0), tag.last.eq(at_last), tag.conv.eq(cmd.conv)]
        at_array = delayed(m, tag, 1, name="tag_read")  # buffer read latency (and the gather's, alike)
        m.d.comb += [
            array.x_in.eq(Mux(at_array.valid, Mux(at_array.conv, gather.column, self.act_data), 0)),
            array.w_in.eq(Mux(at_array.valid, self.weight_data, 0)),
            array.x_valid.eq(at_array.valid), array.x_first.eq(at_array.first), array.x_last.eq(at_array.last),
            self.macs_gated.eq(array.macs_gated),
        ]

        # -- readout: once the whole tile is captured, copy its m rows into the accumulator half --------------
        request_layout = data.StructLayout({"valid": 1, "half": 1, "m": cmd.m.shape()})
        request = Signal(request_layout)
        m.d.comb += [request.valid.eq(issue & at_last), request.half.eq(half), request.m.eq(cmd.m)]
        ready_tile = delayed(m, request, 1 + array.capture_latency, name="readout_request")
        reading = Signal()
        out_row = Signal(range(cfg.rows + 1))
        out_half = Signal()
        out_m = Signal.like(cmd.m)
        with m.If(ready_tile.valid):
            m.d.sync += [reading.eq(1), out_row.eq(0), out_half.eq(ready_tile.half), out_m.eq(ready_tile.m)]
        with m.Elif(reading):
            m.d.sync += out_row.eq(out_row + 1)
            with m.If(out_row == out_m - 1):
                m.d.sync += reading.eq(0)
        m.d.comb += [
            array.read_row.eq(out_row[:len(array.read_row)]),
            self.acc_wr_addr.eq(Mux(out_half, cfg.acc_half_depth, 0) + out_row),
            self.acc_wr_data.eq(array.result_row),
            self.acc_wr_en.eq(reading),
            tracker.finished.eq(reading & (out_row == out_m - 1)),
            self.acc_rd_addr.eq(0),
            self.busy.eq(active | tracker.busy),
        ]
        return m
