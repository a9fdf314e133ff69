"""Row-stationary compute unit: runs conv commands on a :class:`~tessera.hw.array_rs.RowStationaryArray`.

A command is ``p = filters`` filters (output channels, 1 to ``cfg.rs_filters``) over a band of ``cols`` output
rows and the geometry's ``out_w`` output columns, reduced over passes: ``k`` blocks of ``rows`` input channels
(an activation word) times ``out_x`` chunks of filter rows (a filter taller than the array is folded: chunk
``c`` holds filter rows ``c*KH .. c*KH + KH - 1`` of the geometry's ``KH``, and reads input rows ``c*KH``
further down; 0 counts as 1). Each pass:

1. **filter load**: ``p * q * KW`` weight words from ``w_base + pass * p * q * KW``, filter by filter; lane
   ``r`` of word ``(i * q + n // KW) * KW + n % KW`` is PE row ``r``'s entry of filter ``i`` (its set's
   channel ``n // KW``, filter column ``n % KW``), while the ifmap loader already delivers the first step's
   input columns;
2. **steps**, one per output column ``ox``: every PE does ``p * q * KW`` MACs, for each of its channels and
   filter columns one per filter (so an ifmap value is read once for ``p`` MACs), while the ifmap loader reads
   the input columns of the next step (``KW`` columns for the first, ``stride`` after that) of each of the
   band's ``(cols - 1) * stride + KH`` input rows and multicasts them diagonally; the cycle after a filter's
   last MAC of the step its column sums go into accumulator row ``i * out_w + ox`` (added to the earlier
   passes').

So the command's ``m`` result rows are ``p * out_w`` (the controller checks it): row ``i * out_w + ox`` holds
output column ``ox`` of filter ``i``, lane ``j`` output row ``out_y + j``; parameter word ``p_base + i`` holds
filter ``i``'s bias and scale in every lane (the drain steps to the next word every ``out_w`` rows). Input
rows and columns outside the feature map (padding, or rows below the last output row) read ``pad_value``.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring

from .array_rs import SPAD_COLUMNS, RowStationaryArray
from .layouts import MAX_KERNEL
from .layouts import command_layout
from .tiles import ComputeUnit, compute_unit_ports, tile_layout

__all__ = ["RowStationaryCompute"]

_COORD = signed(14)


def filter_tile_layout(command):
    """The tiles a row-stationary command hands the drain: :func:`~tessera.hw.tiles.tile_layout` plus
    ``rows_per_param``, the rows of each filter (one parameter word each)."""
    return data.StructLayout({**dict(tile_layout(command).members), "rows_per_param": command["m"].shape})


class RowStationaryCompute(ComputeUnit):
    """Sequences the row-stationary array in lock step (see the module docstring for the command format)."""

    def __init__(self, cfg):
        # ComputeUnit's ports, with tiles that carry rows_per_param (the drain needs it to requantise each
        # filter's rows with its own parameter word)
        self.cfg = cfg
        self._command = command_layout(cfg)
        self._tile = filter_tile_layout(self._command)
        wiring.Component.__init__(self, compute_unit_ports(cfg, self._command, self._tile))

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.array = array = RowStationaryArray(rows=cfg.rows, cols=cfg.cols, filters=cfg.rs_filters)
        tracker = self._tile_tracker(m)
        g = self.conv_geometry
        cmd = Signal(self._command)
        half = Signal()
        m.d.comb += [array.kernel_h.eq(g.kernel_h), array.stride.eq(g.stride)]
        q = array.channels_per_pe
        kw_n = g.kernel_w
        steps = g.out_w                      # output columns: the rows of each filter in the result
        pass_entries = Signal(range(cfg.rows * MAX_KERNEL + 1))    # scratchpad entries of a filter in a pass
        m.d.comb += pass_entries.eq(q * kw_n)

        # -- command intake --------------------------------------------------------------------------------
        running = Signal()
        m.d.comb += [
            tracker.start.valid.eq(~running & self.cmd.valid),
            tracker.start.payload.m.eq(self.cmd.payload.m),
            tracker.start.payload.p_base.eq(self.cmd.payload.p_base),
            tracker.start.payload.y_zp.eq(self.cmd.payload.y_zp),
            tracker.start.payload.rows_per_param.eq(steps),
            self.cmd.ready.eq(~running & tracker.start.ready),
        ]
        accepted = self.cmd.valid & self.cmd.ready

        block = Signal.like(cmd.k)           # channel block of the current pass
        chunk = Signal.like(cmd.out_x)       # filter-row chunk of the current pass
        chunks = Signal.like(cmd.out_x)
        m.d.comb += chunks.eq(Mux(cmd.out_x == 0, 1, cmd.out_x))
        band_y = Signal(_COORD)              # out_y * stride - pad_top
        y_base = Signal(_COORD)              # input row of the band's first row for this pass's chunk
        band_rows = Signal(range((cfg.cols - 1) * 3 + MAX_KERNEL + 1))
        m.d.comb += band_rows.eq(Mux(g.stride == 1, cfg.cols - 1, Mux(g.stride == 2, 2 * (cfg.cols - 1),
                                                                       3 * (cfg.cols - 1))) + g.kernel_h)

        # -- filter load: the pass's filters one after the other, packed densely in the scratchpads ----------
        preloading = Signal()
        w_entry = Signal(range(cfg.rows * MAX_KERNEL + 1))     # entry of the filter being loaded
        w_filter = Signal(range(max(cfg.rs_filters, 2)))
        w_offset = Signal.like(cmd.w_base)
        write_filter = Signal()
        fill = Signal.like(array.w_addr)                        # entries loaded so far this pass
        filter_addr = Signal.like(array.w_addr)
        m.d.sync += [write_filter.eq(0)]
        m.d.comb += self.weight_addr.eq(cmd.w_base + w_offset)
        with m.If(preloading):
            m.d.sync += [write_filter.eq(1), filter_addr.eq(fill), fill.eq(fill + 1), w_offset.eq(w_offset + 1),
                         w_entry.eq(w_entry + 1)]
            with m.If(w_entry == pass_entries - 1):
                m.d.sync += [w_entry.eq(0), w_filter.eq(w_filter + 1)]
                with m.If(w_filter == cmd.filters - 1):
                    m.d.sync += preloading.eq(0)
        m.d.comb += [array.w_write.eq(write_filter), array.w_addr.eq(filter_addr), array.w_word.eq(self.weight_data),
                     self.weight_read.eq(preloading)]

        # -- ifmap loader: runs at most one step ahead of the MACs -------------------------------------------
        # the ifmap loader starts with the pass, alongside the filter load (the ifmap scratchpads are free
        # once the previous pass's MACs are done); the MACs wait for the filters
        pass_on = Signal()
        steps_on = Signal()                  # the pass's filters are in: the MACs may run
        load_step = Signal.like(cmd.m)
        load_row = Signal.like(band_rows)
        load_col = Signal(range(MAX_KERNEL + 1))
        load_x0 = Signal(_COORD)             # first input column of the step being loaded
        loaded = Signal.like(cmd.m)          # steps whose columns have all been delivered
        mac_step = Signal.like(cmd.m)
        loading = Signal()
        m.d.comb += loading.eq(pass_on & (load_step < steps) & (load_step <= mac_step + 1))
        columns = Mux(load_step == 0, kw_n, g.stride)
        y, x = Signal(_COORD), Signal(_COORD)
        m.d.comb += [y.eq(y_base + load_row), x.eq(load_x0 + load_col)]
        outside = (y < 0) | (y >= g.in_h) | (x < 0) | (x >= g.in_w)
        m.d.comb += self.act_addr.eq(cmd.x_base + (y * g.in_w + x) * g.channel_blocks + block)
        last_load = (load_row == band_rows - 1) & (load_col == columns - 1)
        delivery = data.StructLayout({"valid": 1, "row": len(load_row), "slot": range(SPAD_COLUMNS), "pad": 1,
                                      "last": 1})
        deliver = Signal(delivery)
        m.d.sync += deliver.eq(0)
        with m.If(loading):
            m.d.sync += [deliver.valid.eq(1), deliver.row.eq(load_row), deliver.slot.eq(x[:4]),
                         deliver.pad.eq(outside), deliver.last.eq(last_load)]
            m.d.sync += load_col.eq(load_col + 1)
            with m.If(load_col == columns - 1):
                m.d.sync += [load_col.eq(0), load_row.eq(load_row + 1)]
                with m.If(load_row == band_rows - 1):
                    m.d.sync += [load_row.eq(0), load_step.eq(load_step + 1), load_x0.eq(load_x0 + columns)]
        with m.If(deliver.valid & deliver.last):
            m.d.sync += loaded.eq(loaded + 1)
        padding = Signal.like(array.in_word)
        m.d.comb += [padding[r].eq(g.pad_value) for r in range(cfg.rows)]
        m.d.comb += [
            array.in_write.eq(deliver.valid), array.in_row.eq(deliver.row), array.in_slot.eq(deliver.slot),
            array.in_word.eq(Mux(deliver.pad, padding, self.act_data)),
            self.act_read.eq(loading & ~outside),
        ]

        # -- MACs: p * q * KW per step in every PE; the filter is the innermost loop, so the ifmap entry of
        # -- (channel, column) is read once and reused for every filter --------------------------------------
        mac_filter = Signal.like(w_filter)
        mac_entry = Signal(range(cfg.rows * MAX_KERNEL))     # channel * KW + column within a filter
        filter_base = Signal.like(array.w_addr)               # mac_filter * q * KW
        filter_row = Signal.like(cmd.m)                       # mac_filter * out_w: the filter's result rows
        mac_channel = Signal(range(max(cfg.rows, 2)))
        mac_column = Signal(range(MAX_KERNEL))
        mac_x0 = Signal(_COORD)
        macs_on = Signal()
        m.d.comb += macs_on.eq(steps_on & (mac_step < steps) & (loaded > mac_step))
        last_entry = (mac_channel == q - 1) & (mac_column == kw_n - 1)
        last_filter = mac_filter == cmd.filters - 1
        slot = Signal(_COORD)
        m.d.comb += slot.eq(mac_x0 + mac_column)
        m.d.comb += [
            array.mac.eq(macs_on), array.first.eq(mac_entry == 0), array.mac_filter.eq(mac_filter),
            array.mac_channel.eq(mac_channel), array.mac_weight.eq(filter_base + mac_entry),
            array.mac_slot.eq(slot[:4]),
            self.issued.eq(macs_on), self.macs_gated.eq(array.gated),
        ]
        with m.If(macs_on):
            m.d.sync += [mac_filter.eq(mac_filter + 1), filter_base.eq(filter_base + pass_entries),
                         filter_row.eq(filter_row + steps)]
            with m.If(last_filter):
                m.d.sync += [mac_filter.eq(0), filter_base.eq(0), filter_row.eq(0),
                             mac_entry.eq(mac_entry + 1), mac_column.eq(mac_column + 1)]
                with m.If(mac_column == kw_n - 1):
                    m.d.sync += [mac_column.eq(0), mac_channel.eq(mac_channel + 1)]
                with m.If(last_entry):
                    m.d.sync += [mac_entry.eq(0), mac_channel.eq(0), mac_step.eq(mac_step + 1),
                                 mac_x0.eq(mac_x0 + g.stride)]

        # -- accumulate: the cycle after a filter's last MAC of a step, its column sums into accumulator row
        # -- filter * out_w + ox (the step's last p MACs run back to back, so these are p cycles in a row) ---
        capture = Signal()
        capture_row = Signal.like(cmd.m)
        m.d.sync += capture.eq(macs_on & last_entry)
        with m.If(macs_on & last_entry):
            m.d.sync += capture_row.eq(filter_row + mac_step)
        sums = Signal.like(array.column_sums)
        write = Signal()
        row = Signal.like(cmd.m)
        first_pass = Signal()
        half_base = Mux(half, cfg.acc_half_depth, 0)
        first_pass_now = (block == 0) & (chunk == 0)
        m.d.sync += [write.eq(capture), sums.eq(array.column_sums)]
        with m.If(capture):
            m.d.sync += row.eq(capture_row)
        m.d.comb += [
            self.acc_rd_addr.eq(half_base + capture_row),
            self.acc_rmw_read.eq(capture & ~first_pass_now),
            self.acc_wr_addr.eq(half_base + row),
            self.acc_wr_en.eq(write),
        ]
        m.d.sync += first_pass.eq(first_pass_now)
        for j in range(cfg.cols):
            m.d.comb += self.acc_wr_data[j].eq(Mux(first_pass, sums[j], sums[j] + self.acc_rd_data[j]))

        # -- passes and commands -----------------------------------------------------------------------------
        # (the last row written in a pass is the last filter's last column: m - 1 = p * out_w - 1)
        pass_done = write & (row == cmd.m - 1)
        last_pass = (block == cmd.k - 1) & (chunk == chunks - 1)
        start_pass = Signal()
        with m.If(accepted):
            first_y = Signal(_COORD)
            m.d.comb += first_y.eq(Mux(g.stride == 1, self.cmd.payload.out_y,
                                       Mux(g.stride == 2, 2 * self.cmd.payload.out_y, 3 * self.cmd.payload.out_y))
                                   - g.pad_top)
            m.d.sync += [cmd.eq(self.cmd.payload), half.eq(tracker.half), running.eq(1), block.eq(0), chunk.eq(0),
                         band_y.eq(first_y), y_base.eq(first_y)]
            m.d.comb += start_pass.eq(1)
        with m.If(pass_done):
            m.d.sync += [chunk.eq(chunk + 1), y_base.eq(y_base + g.kernel_h), pass_on.eq(0), steps_on.eq(0)]
            with m.If(chunk == chunks - 1):
                m.d.sync += [chunk.eq(0), block.eq(block + 1), y_base.eq(band_y)]
            with m.If(last_pass):
                m.d.sync += running.eq(0)
            with m.Else():
                m.d.comb += start_pass.eq(1)
        with m.If(start_pass):
            m.d.sync += [pass_on.eq(1), preloading.eq(1), w_entry.eq(0), w_filter.eq(0), fill.eq(0),
                         w_offset.eq(Mux(accepted, 0, w_offset)),
                         load_step.eq(0), load_row.eq(0), load_col.eq(0), load_x0.eq(-g.pad_left), loaded.eq(0),
                         mac_step.eq(0), mac_filter.eq(0), filter_base.eq(0), filter_row.eq(0), mac_entry.eq(0),
                         mac_channel.eq(0), mac_column.eq(0), mac_x0.eq(-g.pad_left)]
        with m.If(~preloading & ~write_filter & running & ~steps_on & ~start_pass & ~pass_done):
            m.d.sync += steps_on.eq(1)

        used = array.used_rows * cfg.cols
        m.d.comb += [
            tracker.finished.eq(pass_done & last_pass),
            self.busy.eq(running | tracker.busy),
            # every MAC reads a filter entry and a partial sum; the ifmap entry only for the first filter
            self.rf_reads.eq(Mux(macs_on, Mux(mac_filter == 0, 3, 2) * used, 0)),
            self.rf_writes.eq(array.rf_writes + Mux(macs_on, used, 0)),
            self.noc_transfers.eq(Mux(capture, used - cfg.cols, 0)),
        ]
        return m
