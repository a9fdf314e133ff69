"""Row-stationary MAC sequencer: the MACs of each step of a pass, in lock step in every PE."""

from amaranth.hdl import Module, Signal
from amaranth.lib.wiring import In, Out

from .array_rs import SPAD_COLUMNS
from .layouts import MAX_KERNEL, command_layout, conv_geometry_layout
from .rs_ifmap_loader import COORD
from .rs_pass_unit import PassUnit, filter_entries_shape, filter_spad_depth

__all__ = ["MacSequencer"]


class MacSequencer(PassUnit):
    """Runs the ``filters * channels * KW`` MACs of each step (output column) of a pass in every PE of a
    :class:`~tessera.hw.array_rs.RowStationaryArray`. The filter is the innermost loop, so the ifmap entry of
    a (channel, column) is read once and reused for every filter; a step's last ``filters`` MACs each finish
    one filter's column sums.

    Attributes
    ----------
    ``cfg`` and ``start`` as for :class:`~tessera.hw.rs_pass_unit.PassUnit`, and:

    enable : In(1)
        The pass's filters are in the scratchpads: the MACs may run.
    conv_geometry : In(conv_geometry_layout())
    filters, channels, entries : In
        The command's filter count, the channels per PE, and the scratchpad entries of a filter
        (``channels * KW``).
    loaded : In
        Steps whose input columns have all been delivered.
    mac_step : Out
        The step the MACs are on.
    mac, first, mac_filter, mac_channel, mac_weight, mac_slot : Out
        The array's MAC port.
    filter_done : Out(1)
        This cycle's MAC is a filter's last of the step: the column sums hold its outputs the next cycle.
    result_row : Out
        The accumulator row (within the half) of those outputs:
        ``rs_result_row(out_w, filter, step)`` (:func:`~tessera.hw.layouts.rs_result_row`).
    """

    def __init__(self, cfg):
        command = command_layout(cfg)
        depth = filter_spad_depth(cfg)
        super().__init__(cfg, {
            "enable": In(1),
            "conv_geometry": In(conv_geometry_layout()),
            "filters": In(command["filters"].shape),
            "channels": In(range(cfg.rows + 1)),
            "entries": In(filter_entries_shape(cfg)),
            "loaded": In(command["m"].shape),
            "mac_step": Out(command["m"].shape),
            "mac": Out(1), "first": Out(1),
            "mac_filter": Out(range(max(cfg.rs_filters, 2))),
            "mac_channel": Out(range(max(cfg.rows, 2))),
            "mac_weight": Out(range(depth)),
            "mac_slot": Out(range(SPAD_COLUMNS)),
            "filter_done": Out(1),
            "result_row": Out(command["m"].shape),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        g = self.conv_geometry
        steps = g.out_w                      # one per output column
        # the entry mac_weight = filter_base + mac_entry holds the pass's weight word of that offset
        # (layouts.rs_filter_word); filter_base and filter_row are running sums, not products
        mac_entry = Signal(range(cfg.rows * MAX_KERNEL))     # channel * KW + column within a filter
        filter_base = Signal.like(self.mac_weight)          # mac_filter * entries
        filter_row = Signal.like(self.mac_step)             # rs_result_row(out_w, mac_filter, 0)
        mac_column = Signal(range(MAX_KERNEL))
        mac_x0 = Signal(COORD)
        macs_on = self.mac
        m.d.comb += macs_on.eq(self.enable & (self.mac_step < steps) & (self.loaded > self.mac_step))
        last_entry = (self.mac_channel == self.channels - 1) & (mac_column == g.kernel_w - 1)
        last_filter = self.mac_filter == self.filters - 1
        slot = Signal(COORD)
        m.d.comb += [
            slot.eq(mac_x0 + mac_column),
            self.first.eq(mac_entry == 0), self.mac_weight.eq(filter_base + mac_entry), self.mac_slot.eq(slot[:4]),
            self.filter_done.eq(macs_on & last_entry), self.result_row.eq(filter_row + self.mac_step),
        ]
        with m.If(macs_on):
            m.d.sync += [self.mac_filter.eq(self.mac_filter + 1), filter_base.eq(filter_base + self.entries),
                         filter_row.eq(filter_row + steps)]
            with m.If(last_filter):
                m.d.sync += [self.mac_filter.eq(0), filter_base.eq(0), filter_row.eq(0),
                             mac_entry.eq(mac_entry + 1), mac_column.eq(mac_column + 1)]
                with m.If(mac_column == g.kernel_w - 1):
                    m.d.sync += [mac_column.eq(0), self.mac_channel.eq(self.mac_channel + 1)]
                with m.If(last_entry):
                    m.d.sync += [mac_entry.eq(0), self.mac_channel.eq(0), self.mac_step.eq(self.mac_step + 1),
                                 mac_x0.eq(mac_x0 + g.stride)]
        with m.If(self.start):
            m.d.sync += [self.mac_step.eq(0), self.mac_filter.eq(0), filter_base.eq(0), filter_row.eq(0),
                         mac_entry.eq(0), self.mac_channel.eq(0), mac_column.eq(0), mac_x0.eq(-g.pad_left)]
        return m
