"""Row-stationary ifmap loader: the input columns of each step into the PEs' ifmap scratchpads."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data
from amaranth.lib.wiring import In, Out

from .array_rs import SPAD_COLUMNS
from .layouts import MAX_KERNEL, MAX_STRIDE, OPERAND, command_layout, conv_geometry_layout
from .rs_pass_unit import PassUnit

__all__ = ["IfmapLoader", "COORD"]

#: Input coordinates, from minus the padding to past the feature map's far side.
COORD = signed(14)


class IfmapLoader(PassUnit):
    """Delivers, step by step, the input columns a pass's MACs read: ``KW`` columns for the first step and
    ``stride`` more for each later one, of each of the band's ``(cols - 1) * stride + KH`` input rows, at
    most one step ahead of the MACs. Input rows and columns outside the feature map deliver ``pad_value``.

    Attributes
    ----------
    ``cfg`` and ``start`` as for :class:`~tessera.hw.rs_pass_unit.PassUnit`, and:

    active : In(1)
        A pass is under way (from ``start`` until its last accumulator write).
    conv_geometry : In(conv_geometry_layout())
    x_base, block, y_base : In
        The command's feature map, the pass's channel block, and the input row of the band's first row for
        the pass's filter-row chunk.
    mac_step : In
        The step the MACs are on.
    act_addr, act_data : Out, In
        Activation buffer read port (one cycle latency).
    act_read : Out(1)
        An activation word is read this cycle (not one in the padding).
    in_write, in_row, in_slot, in_word : Out
        The array's ifmap port.
    loaded : Out
        Steps whose columns have all been delivered this pass.
    """

    def __init__(self, cfg):
        command = command_layout(cfg)
        super().__init__(cfg, {
            "active": In(1),
            "conv_geometry": In(conv_geometry_layout()),
            "x_base": In(command["x_base"].shape),
            "block": In(command["k"].shape),
            "y_base": In(COORD),
            "mac_step": In(command["m"].shape),
            "act_addr": Out(command["x_base"].shape),
            "act_data": In(data.ArrayLayout(OPERAND, cfg.rows)),
            "act_read": Out(1),
            "in_write": Out(1),
            "in_row": Out(range((cfg.cols - 1) * MAX_STRIDE + MAX_KERNEL + 1)),
            "in_slot": Out(range(SPAD_COLUMNS)),
            "in_word": Out(data.ArrayLayout(OPERAND, cfg.rows)),
            "loaded": Out(command["m"].shape),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        g = self.conv_geometry
        steps = g.out_w                      # one per output column
        band_rows = Signal.like(self.in_row)
        m.d.comb += band_rows.eq(Mux(g.stride == 1, cfg.cols - 1, Mux(g.stride == 2, 2 * (cfg.cols - 1),
                                                                       3 * (cfg.cols - 1))) + g.kernel_h)
        load_step = Signal.like(self.mac_step)
        load_row = Signal.like(band_rows)
        load_col = Signal(range(MAX_KERNEL + 1))
        load_x0 = Signal(COORD)              # first input column of the step being loaded
        loading = Signal()
        m.d.comb += loading.eq(self.active & (load_step < steps) & (load_step <= self.mac_step + 1))
        columns = Mux(load_step == 0, g.kernel_w, g.stride)
        y, x = Signal(COORD, name="y"), Signal(COORD, name="x")
        m.d.comb += [y.eq(self.y_base + load_row), x.eq(load_x0 + load_col)]
        outside = (y < 0) | (y >= g.in_h) | (x < 0) | (x >= g.in_w)
        m.d.comb += [
            # x_base + layouts.fmap_word(in_w, channel_blocks, y, x, block)
            self.act_addr.eq(self.x_base + (y * g.in_w + x) * g.channel_blocks + self.block),
            self.act_read.eq(loading & ~outside),
        ]

        # the word arrives from the buffer the next cycle, and goes with this delivery
        delivery = data.StructLayout({"valid": 1, "row": len(load_row), "slot": range(SPAD_COLUMNS), "pad": 1,
                                      "last": 1})
        deliver = Signal(delivery)
        m.d.sync += deliver.eq(0)
        with m.If(loading):
            m.d.sync += [deliver.valid.eq(1), deliver.row.eq(load_row), deliver.slot.eq(x[:4]),
                         deliver.pad.eq(outside),
                         deliver.last.eq((load_row == band_rows - 1) & (load_col == columns - 1))]
            m.d.sync += load_col.eq(load_col + 1)
            with m.If(load_col == columns - 1):
                m.d.sync += [load_col.eq(0), load_row.eq(load_row + 1)]
                with m.If(load_row == band_rows - 1):
                    m.d.sync += [load_row.eq(0), load_step.eq(load_step + 1), load_x0.eq(load_x0 + columns)]
        with m.If(deliver.valid & deliver.last):
            m.d.sync += self.loaded.eq(self.loaded + 1)
        with m.If(self.start):
            m.d.sync += [load_step.eq(0), load_row.eq(0), load_col.eq(0), load_x0.eq(-g.pad_left),
                         self.loaded.eq(0)]

        padding = Signal.like(self.in_word)
        m.d.comb += [padding[r].eq(g.pad_value) for r in range(cfg.rows)]
        m.d.comb += [
            self.in_write.eq(deliver.valid), self.in_row.eq(deliver.row), self.in_slot.eq(deliver.slot),
            self.in_word.eq(Mux(deliver.pad, padding, self.act_data)),
        ]
        return m
