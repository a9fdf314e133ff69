"""Row-stationary compute unit: runs conv commands on a :class:`~tessera.hw.array_rs.RowStationaryArray`.

A command is ``p = filters`` filters (output channels, 1 to ``cfg.rs_filters``) over a band of ``cols`` output
rows and the geometry's ``out_w`` output columns, reduced over passes: ``k`` blocks of ``rows`` input channels
(an activation word) times ``out_x`` chunks of filter rows (a filter taller than the array is folded: chunk
``c`` holds filter rows ``c*KH .. c*KH + KH - 1`` of the geometry's ``KH``, and reads input rows ``c*KH``
further down; 0 counts as 1). Each pass:

1. **filter load**: ``p * q * KW`` weight words from ``w_base + pass * p * q * KW``, filter by filter; lane
   ``r`` of word ``(i * q + n // KW) * KW + n % KW`` is PE row ``r``'s entry of filter ``i`` (its set's
   channel ``n // KW``, filter column ``n % KW``; :func:`~tessera.hw.layouts.rs_filter_word`), while the ifmap
   loader already delivers the first step's input columns;
2. **steps**, one per output column ``ox``: every PE does ``p * q * KW`` MACs, for each of its channels and
   filter columns one per filter (so an ifmap value is read once for ``p`` MACs), while the ifmap loader reads
   the input columns of the next step (``KW`` columns for the first, ``stride`` after that) of each of the
   band's ``(cols - 1) * stride + KH`` input rows and multicasts them diagonally; the cycle after a filter's
   last MAC of the step its column sums go into accumulator row ``i * out_w + ox`` (added to the earlier
   passes').

So the command's ``m`` result rows are ``p * out_w`` (the controller checks it): row ``i * out_w + ox``
(:func:`~tessera.hw.layouts.rs_result_row`) holds output column ``ox`` of filter ``i``, lane ``j`` output row
``out_y + j``; parameter word ``p_base + i`` holds filter ``i``'s bias and scale in every lane (the drain steps
to the next word every ``out_w`` rows). Input rows and columns outside the feature map (padding, or rows below
the last output row) read ``pad_value``.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data

from .array_rs import RowStationaryArray
from .layouts import command_layout, rs_filter_entries
from .pe_multipliers import multiplier
from .rs_filter_loader import FilterLoader
from .rs_ifmap_loader import COORD, IfmapLoader
from .rs_mac_sequencer import MacSequencer
from .rs_pass_unit import filter_entries_shape
from .tiles import ComputeUnit, tile_layout

__all__ = ["RowStationaryCompute"]


def filter_tile_layout(command):
    """The tiles a row-stationary command hands the drain: :func:`~tessera.hw.tiles.tile_layout` plus
    ``rows_per_param``, the rows of each filter (one parameter word each)."""
    return data.StructLayout({**dict(tile_layout(command).members), "rows_per_param": command["m"].shape})


class RowStationaryCompute(ComputeUnit):
    """Sequences the row-stationary array in lock step (see the module docstring for the command format).

    Each pass, a :class:`~tessera.hw.rs_filter_loader.FilterLoader` loads the filters while an
    :class:`~tessera.hw.rs_ifmap_loader.IfmapLoader` delivers the first step's input columns (the ifmap
    scratchpads are free once the previous pass's MACs are done); the
    :class:`~tessera.hw.rs_mac_sequencer.MacSequencer` starts once the filters are in.

    Attributes
    ----------
    The ports of :class:`~tessera.hw.tiles.ComputeUnit`; ``tile`` carries :func:`filter_tile_layout`.
    """

    def __init__(self, cfg):
        # tiles that carry rows_per_param: the drain requantises each filter's rows with its own parameter word
        super().__init__(cfg, tile=filter_tile_layout(command_layout(cfg)))

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.array = array = RowStationaryArray(rows=cfg.rows, cols=cfg.cols, filters=cfg.rs_filters,
                                                                     multiplier=multiplier(cfg.multiplier))
        tracker = self._tile_tracker(m)
        m.submodules.filter_loader = filters = FilterLoader(cfg)
        m.submodules.ifmap_loader = ifmap = IfmapLoader(cfg)
        m.submodules.mac_sequencer = macs = MacSequencer(cfg)
        g = self.conv_geometry
        m.d.comb += [array.kernel_h.eq(g.kernel_h), array.stride.eq(g.stride)]

        # -- command intake --------------------------------------------------------------------------------
        cmd = Signal(self._command)
        half = Signal()
        running = Signal()
        m.d.comb += [
            tracker.start.valid.eq(~running & self.cmd.valid),
            tracker.start.payload.m.eq(self.cmd.payload.m),
            tracker.start.payload.p_base.eq(self.cmd.payload.p_base),
            tracker.start.payload.y_zp.eq(self.cmd.payload.y_zp),
            tracker.start.payload.raw.eq(self.cmd.payload.raw),
            tracker.start.payload.rows_per_param.eq(g.out_w),
            self.cmd.ready.eq(~running & tracker.start.ready),
        ]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [cmd.eq(self.cmd.payload), half.eq(tracker.half), running.eq(1)]

        pass_written = Signal()              # a pass's last accumulator row is written this cycle
        first_pass, last_pass = self._passes(m, cmd, running, filters, ifmap, macs, pass_written)
        capture, write, row = self._accumulate(m, array, macs, half, first_pass)
        m.d.comb += [
            # the last row written in a pass is the last filter's last column: m - 1 = p * out_w - 1
            pass_written.eq(write & (row == cmd.m - 1)),
            tracker.finished.eq(pass_written & last_pass),
            self.busy.eq(running | tracker.busy),
        ]
        self._connect(m, array, filters, ifmap, macs, cmd)
        self._count_events(m, array, filters, ifmap, macs, capture)
        return m

    def _passes(self, m, cmd, running, filters, ifmap, macs, pass_written):
        """Steps through a command's passes, filter-row chunks fastest, then channel blocks (the order its weights
        are stored in, :func:`~tessera.hw.layouts.rs_filter_word`), and starts each pass's filter load, ifmap load
        and MACs. Returns whether the current pass is the command's first (there are no earlier sums to add to)
        and whether it is its last."""
        g = self.conv_geometry
        accepted = self.cmd.valid & self.cmd.ready
        block = Signal.like(cmd.k)           # channel block of the current pass
        chunk = Signal.like(cmd.out_x)       # filter-row chunk of the current pass
        chunks = Signal.like(cmd.out_x)
        m.d.comb += chunks.eq(Mux(cmd.out_x == 0, 1, cmd.out_x))
        band_y = Signal(COORD)               # out_y * stride - pad_top
        y_base = Signal(COORD)               # input row of the band's first row for this pass's chunk
        pass_on = Signal()
        steps_on = Signal()                  # the pass's filters are in: the MACs may run
        last_pass = (block == cmd.k - 1) & (chunk == chunks - 1)
        start_pass = Signal()
        with m.If(accepted):
            first_y = Signal(COORD)
            m.d.comb += first_y.eq(Mux(g.stride == 1, self.cmd.payload.out_y,
                                       Mux(g.stride == 2, 2 * self.cmd.payload.out_y, 3 * self.cmd.payload.out_y))
                                   - g.pad_top)
            m.d.sync += [block.eq(0), chunk.eq(0), band_y.eq(first_y), y_base.eq(first_y)]
            m.d.comb += start_pass.eq(1)
        with m.If(pass_written):
            m.d.sync += [chunk.eq(chunk + 1), y_base.eq(y_base + g.kernel_h), pass_on.eq(0), steps_on.eq(0)]
            with m.If(chunk == chunks - 1):
                m.d.sync += [chunk.eq(0), block.eq(block + 1), y_base.eq(band_y)]
            with m.If(last_pass):
                m.d.sync += running.eq(0)
            with m.Else():
                m.d.comb += start_pass.eq(1)
        with m.If(start_pass):
            m.d.sync += pass_on.eq(1)
        with m.If(filters.done & running & ~steps_on & ~start_pass & ~pass_written):
            m.d.sync += steps_on.eq(1)
        # the ifmap load starts with the pass, alongside the filter load (the ifmap scratchpads are free once
        # the previous pass's MACs are done); the MACs wait for the filters
        m.d.comb += [
            filters.start.eq(start_pass), filters.first.eq(accepted),
            ifmap.start.eq(start_pass), ifmap.active.eq(pass_on), ifmap.block.eq(block), ifmap.y_base.eq(y_base),
            macs.start.eq(start_pass), macs.enable.eq(steps_on),
        ]
        return (block == 0) & (chunk == 0), last_pass

    def _accumulate(self, m, array, macs, half, first_pass):
        """The cycle after a filter's last MAC of a step, its column sums go into accumulator row
        ``filter * out_w + ox``, added to the earlier passes' (the step's last p MACs run back to back, so these
        are p writes in a row). Returns the read strobe of those sums, and the write strobe and its row."""
        capture = Signal()
        capture_row = Signal.like(macs.result_row)
        m.d.sync += capture.eq(macs.filter_done)
        with m.If(macs.filter_done):
            m.d.sync += capture_row.eq(macs.result_row)
        sums = Signal.like(array.column_sums)
        write = Signal()
        row = Signal.like(capture_row)
        first_pass_write = Signal()
        half_base = Mux(half, self.cfg.acc_half_depth, 0)
        m.d.sync += [write.eq(capture), sums.eq(array.column_sums)]
        with m.If(capture):
            m.d.sync += row.eq(capture_row)
        m.d.comb += [
            self.acc_rd_addr.eq(half_base + capture_row),
            self.acc_rmw_read.eq(capture & ~first_pass),
            self.acc_wr_addr.eq(half_base + row),
            self.acc_wr_en.eq(write),
        ]
        m.d.sync += first_pass_write.eq(first_pass)
        for j in range(self.cfg.cols):
            m.d.comb += self.acc_wr_data[j].eq(Mux(first_pass_write, sums[j], sums[j] + self.acc_rd_data[j]))
        return capture, write, row

    def _connect(self, m, array, filters, ifmap, macs, cmd):
        """The data paths: buffers to loaders to the array, and the MACs' pace to the ifmap loader."""
        cfg = self.cfg
        g = self.conv_geometry
        pass_entries = Signal(filter_entries_shape(cfg))    # scratchpad entries of a filter in a pass
        m.d.comb += [
            pass_entries.eq(rs_filter_entries(array.channels_per_pe, g.kernel_w)),
            filters.w_base.eq(cmd.w_base), filters.filters.eq(cmd.filters), filters.entries.eq(pass_entries),
            self.weight_addr.eq(filters.weight_addr), filters.weight_data.eq(self.weight_data),
            array.w_write.eq(filters.w_write), array.w_addr.eq(filters.w_addr), array.w_word.eq(filters.w_word),

            ifmap.conv_geometry.eq(g), ifmap.x_base.eq(cmd.x_base), ifmap.mac_step.eq(macs.mac_step),
            self.act_addr.eq(ifmap.act_addr), ifmap.act_data.eq(self.act_data),
            array.in_write.eq(ifmap.in_write), array.in_row.eq(ifmap.in_row), array.in_slot.eq(ifmap.in_slot),
            array.in_word.eq(ifmap.in_word),

            macs.conv_geometry.eq(g), macs.filters.eq(cmd.filters), macs.channels.eq(array.channels_per_pe),
            macs.entries.eq(pass_entries), macs.loaded.eq(ifmap.loaded),
            array.mac.eq(macs.mac), array.first.eq(macs.first), array.mac_filter.eq(macs.mac_filter),
            array.mac_channel.eq(macs.mac_channel), array.mac_weight.eq(macs.mac_weight),
            array.mac_slot.eq(macs.mac_slot),
        ]

    def _count_events(self, m, array, filters, ifmap, macs, capture):
        cfg = self.cfg
        used = array.used_rows * cfg.cols
        m.d.comb += [
            self.issued.eq(macs.mac), self.macs_gated.eq(array.gated),
            self.act_read.eq(ifmap.act_read), self.weight_read.eq(filters.weight_read),
            # every MAC reads a filter entry and a partial sum; the ifmap entry only for the first filter
            self.rf_reads.eq(Mux(macs.mac, Mux(macs.mac_filter == 0, 3, 2) * used, 0)),
            self.rf_writes.eq(array.rf_writes + Mux(macs.mac, used, 0)),
            self.noc_transfers.eq(Mux(capture, used - cfg.cols, 0)),
        ]
