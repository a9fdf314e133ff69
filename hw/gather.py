"""Convolution operands for the output-stationary array, gathered on chip from the stored feature map.

An output-stationary step needs one input channel of one filter tap across the ``rows`` output pixels of a
tile, but the feature map is stored pixel by pixel, ``rows`` channels per word (as for weight-stationary
convs, so the host sends each input once). Per fold (a filter tap and a block of ``rows`` channels) this
block reads one word per output pixel through :class:`~tessera.hw.window.SlidingWindow`, into a ``rows x rows``
block (pixels x channels), and then hands the block out column by column: one step per channel. Reading a
block takes ``rows`` cycles and so does consuming it, so with two blocks the array steps every cycle once
the first block of a command is in.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import MAX_CONV_SIDE, OPERAND, conv_geometry_layout
from .window import SlidingWindow

__all__ = ["ConvGather"]


class ConvGather(wiring.Component):
    """Gathers the activation steps of one conv command at a time.

    Attributes
    ----------
    geometry : In(conv_geometry_layout())
    start : In(1)
        Begin a command: the tile's first output pixel (``out_y``, ``out_x``) and the map's ``x_base``.
        Anything left of the previous command is dropped.
    act_addr : Out, act_data : In
        The activation buffer's read port (data one cycle after the address).
    reading : Out(1)
        ``act_addr`` is a read this cycle (for the counters).
    ready : Out(1)
        A step's column is available this cycle.
    take : In(1)
        Consume it; its value is on ``column`` in the next cycle, as a buffer read would be.
    column : Out(ArrayLayout(OPERAND, rows))
    """

    def __init__(self, rows, addr_width):
        self.rows = rows
        side = MAX_CONV_SIDE.bit_length()
        super().__init__({
            "geometry": In(conv_geometry_layout()),
            "start": In(1),
            "out_y": In(side), "out_x": In(side), "x_base": In(addr_width),
            "act_addr": Out(addr_width),
            "act_data": In(data.ArrayLayout(OPERAND, rows)),
            "reading": Out(1),
            "ready": Out(1),
            "take": In(1),
            "column": Out(data.ArrayLayout(OPERAND, rows)),
        })

    def elaborate(self, platform):
        rows = self.rows
        m = Module()
        g = self.geometry
        word = data.ArrayLayout(OPERAND, rows)
        blocks = [[Signal(word, name=f"block{b}_pixel{i}") for i in range(rows)] for b in range(2)]
        full = Signal(2)
        m.submodules.window = window = SlidingWindow(len(self.act_addr))

        # -- fill: fold after fold, one word per output pixel of the tile -----------------------------------
        out_y, out_x, x_base = Signal.like(self.out_y), Signal.like(self.out_x), Signal.like(self.x_base)
        kh, kw, cb = Signal(3), Signal(3), Signal(8)
        filling = Signal()          # folds of the command remain to be read
        loaded = Signal()           # the window holds the fold (kh, kw, cb)
        fill_block = Signal()
        pixel = Signal(range(max(rows, 2)))
        last_fold = (cb == g.channel_blocks - 1) & (kw == g.kernel_w - 1) & (kh == g.kernel_h - 1)
        next_cb = Mux(cb == g.channel_blocks - 1, 0, cb + 1)
        next_kw = Mux(cb == g.channel_blocks - 1, Mux(kw == g.kernel_w - 1, 0, kw + 1), kw)
        next_kh = Mux((cb == g.channel_blocks - 1) & (kw == g.kernel_w - 1), kh + 1, kh)

        m.d.comb += [window.geometry.eq(g), window.out_y.eq(out_y), window.out_x.eq(out_x),
                     window.x_base.eq(x_base), window.kh.eq(kh), window.kw.eq(kw), window.cb.eq(cb)]
        fill_tag = data.StructLayout({"valid": 1, "block": 1, "pixel": range(max(rows, 2)), "pad": 1, "last": 1})
        tag = Signal(fill_tag)
        m.d.comb += self.act_addr.eq(window.addr)
        with m.If(filling & ~loaded):
            m.d.comb += window.start.eq(1)
            m.d.sync += [loaded.eq(1), pixel.eq(0)]
        with m.Elif(filling & ~full.bit_select(fill_block, 1)):
            last_pixel = pixel == rows - 1
            m.d.comb += [self.reading.eq(1), tag.valid.eq(1), tag.block.eq(fill_block), tag.pixel.eq(pixel),
                         tag.pad.eq(window.pad), tag.last.eq(last_pixel)]
            m.d.sync += pixel.eq(pixel + 1)
            with m.If(last_pixel):
                # the next fold's window loads while this pixel is read (its address is already out)
                m.d.sync += [pixel.eq(0), fill_block.eq(~fill_block), kh.eq(next_kh), kw.eq(next_kw),
                             cb.eq(next_cb), loaded.eq(0)]
                with m.If(last_fold):
                    m.d.sync += filling.eq(0)
            with m.Else():
                m.d.comb += window.step.eq(1)

        written = Signal(fill_tag)
        m.d.sync += written.eq(tag)
        padding = Signal(word)
        m.d.comb += [padding[i].eq(g.pad_value) for i in range(rows)]
        for b in range(2):
            for i in range(rows):
                with m.If(written.valid & (written.block == b) & (written.pixel == i)):
                    m.d.sync += blocks[b][i].eq(Mux(written.pad, padding, self.act_data))

        # -- drain: one column (a channel across the tile's pixels) per step ------------------------------
        drain_block = Signal()
        channel = Signal(range(max(rows, 2)))
        m.d.comb += self.ready.eq(full.bit_select(drain_block, 1))
        sets = Signal(2)
        clears = Signal(2)
        with m.If(written.valid & written.last):
            m.d.comb += sets.eq(Mux(written.block, 0b10, 0b01))
        with m.If(self.take):
            for i in range(rows):
                m.d.sync += self.column[i].eq(Mux(drain_block, blocks[1][i][channel], blocks[0][i][channel]))
            m.d.sync += channel.eq(channel + 1)
            with m.If(channel == rows - 1):
                m.d.comb += clears.eq(Mux(drain_block, 0b10, 0b01))
                m.d.sync += [channel.eq(0), drain_block.eq(~drain_block)]
        m.d.sync += full.eq((full & ~clears) | sets)

        with m.If(self.start):
            m.d.sync += [out_y.eq(self.out_y), out_x.eq(self.out_x), x_base.eq(self.x_base),
                         kh.eq(0), kw.eq(0), cb.eq(0), filling.eq(1), loaded.eq(0), pixel.eq(0),
                         fill_block.eq(0), drain_block.eq(0), channel.eq(0), full.eq(0), written.valid.eq(0)]
        return m
