"""Row-stationary filter loader: a pass's filters from the weight buffer into the PEs' filter scratchpads."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data
from amaranth.lib.wiring import In, Out

from .layouts import OPERAND, command_layout
from .rs_pass_unit import PassUnit, filter_entries_shape, filter_spad_depth

__all__ = ["FilterLoader"]


class FilterLoader(PassUnit):
    """Loads the ``filters`` filters of a pass one after the other, ``entries`` weight words each, packed
    densely into the filter scratchpads of a :class:`~tessera.hw.array_rs.RowStationaryArray`: scratchpad entry
    ``e`` takes word ``w_base + pass * filters * entries + e`` (:func:`~tessera.hw.layouts.rs_filter_word`). A
    command's passes read consecutive runs of words.

    Attributes
    ----------
    ``cfg`` and ``start`` (load the filters of a pass) as for :class:`~tessera.hw.rs_pass_unit.PassUnit`, and:

    first : In(1)
        With ``start``: the pass is its command's first, whose filters start at ``w_base``.
    w_base, filters, entries : In
        The command's first weight word and filter count, and the scratchpad entries of a filter in this pass
        (its channels per PE times the kernel width); they hold still while a load runs.
    weight_addr, weight_data : Out, In
        Weight buffer read port (one cycle latency).
    weight_read : Out(1)
        A weight word is read this cycle.
    w_write, w_addr, w_word : Out
        The array's filter scratchpad port.
    done : Out(1)
        No load is under way: the last entry of the pass is written.
    """

    def __init__(self, cfg):
        command = command_layout(cfg)
        super().__init__(cfg, {
            "first": In(1),
            "w_base": In(command["w_base"].shape),
            "filters": In(command["filters"].shape),
            "entries": In(filter_entries_shape(cfg)),
            "weight_addr": Out(command["w_base"].shape),
            "weight_data": In(data.ArrayLayout(OPERAND, cfg.weight_lanes)),
            "weight_read": Out(1),
            "w_write": Out(1),
            "w_addr": Out(range(filter_spad_depth(cfg))),
            "w_word": Out(data.ArrayLayout(OPERAND, cfg.rows)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        preloading = Signal()
        w_entry = Signal(filter_entries_shape(cfg))         # entry of the filter being loaded
        w_filter = Signal(range(max(cfg.rs_filters, 2)))
        w_offset = Signal.like(self.w_base)
        fill = Signal.like(self.w_addr)                     # entries loaded so far this pass
        m.d.sync += self.w_write.eq(0)
        m.d.comb += self.weight_addr.eq(self.w_base + w_offset)
        with m.If(preloading):
            # the word read this cycle is written into the scratchpads the next
            m.d.sync += [self.w_write.eq(1), self.w_addr.eq(fill), fill.eq(fill + 1), w_offset.eq(w_offset + 1),
                         w_entry.eq(w_entry + 1)]
            with m.If(w_entry == self.entries - 1):
                m.d.sync += [w_entry.eq(0), w_filter.eq(w_filter + 1)]
                with m.If(w_filter == self.filters - 1):
                    m.d.sync += preloading.eq(0)
        with m.If(self.start):
            m.d.sync += [preloading.eq(1), w_entry.eq(0), w_filter.eq(0), fill.eq(0),
                         w_offset.eq(Mux(self.first, 0, w_offset))]
        m.d.comb += [
            self.w_word.eq(self.weight_data),
            self.weight_read.eq(preloading),
            self.done.eq(~preloading & ~self.w_write),
        ]
        return m
