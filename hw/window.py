"""Sliding-window addressing: the activation words a convolution's output pixels read, generated on chip.

The host sends each input activation once; the weight-stationary issuer asks this block, pixel by pixel,
which word of the stored input feature map a filter tap reads (or that it falls into the padding).
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .layouts import KERNEL_BITS, MAX_CONV_SIDE, conv_geometry_layout

__all__ = ["SlidingWindow"]

_COORD = signed(12)      # input coordinates run from -pad to side + kernel


class SlidingWindow(wiring.Component):
    """Address generator for one fold (filter tap ``kh``, ``kw`` and channel block ``cb``) of a conv command.

    Output pixels advance in raster order over ``out_w`` columns; each step adds the stride to the input
    column, and at the end of an output row moves the input row on by the stride. Only additions happen per
    pixel, each into a register; the multiplications happen once per fold, before its start.

    With ``settle`` > 0 the fold-start arithmetic is pipelined over that many registered steps: the fold's
    inputs (``out_y`` ... ``x_base``) must then be steady for :attr:`settle` cycles before ``start``. A
    weight-stationary issuer has the next fold waiting long before it starts it, and the multiplies would
    otherwise sit on one path from the fold queue into the address registers.

    Attributes
    ----------
    geometry : In(conv_geometry_layout())
    start : In(1)
        Load a fold: first output pixel (``out_y``, ``out_x``), tap (``kh``, ``kw``), block ``cb``, map base
        ``x_base``.
    taps : In(KERNEL_BITS)
        A depthwise fold's taps (see :func:`~tessera.hw.layouts.command_layout`), taken with ``start``.
    step : In(1)
        Advance to the next output pixel.
    addr : Out(unsigned)
        Activation word of the current pixel (a register).
    pad : Out(1)
        The current pixel's tap lies outside the input: use the padding value instead of ``addr``.
    output : Out(1)
        A depthwise fold's current position is an output: it has its ``taps`` positions in its row and is a
        whole number of strides along it.
    row_end : Out(1)
        The current pixel is the last of its row.
    """

    #: Registered steps of the fold-start arithmetic when pipelined.
    PIPELINED = 3

    def __init__(self, addr_width, *, pipelined=False):
        self.settle = self.PIPELINED if pipelined else 0
        side = unsigned(MAX_CONV_SIDE.bit_length())
        super().__init__({
            "geometry": In(conv_geometry_layout()),
            "start": In(1),
            "out_y": In(side), "out_x": In(side),
            "kh": In(3), "kw": In(3), "cb": In(8),
            "x_base": In(addr_width),
            "taps": In(KERNEL_BITS),
            "step": In(1),
            "addr": Out(addr_width),
            "pad": Out(1),
            "output": Out(1),
            "row_end": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        addr_width = len(self.addr)

        def step(name, shape, value):
            """One step of the fold-start arithmetic: a register when pipelined, else a wire."""
            result = Signal(shape, name=name)
            domain = m.d.sync if self.settle else m.d.comb
            domain += result.eq(value)
            return result

        # Unsigned sums go through signed signals before the padding is subtracted, so that a tap above or
        # left of the map becomes a negative coordinate rather than a wrapped unsigned one.
        tap_y, tap_x = Signal(_COORD), Signal(_COORD)
        m.d.comb += [tap_y.eq(self.out_y * g.stride + self.kh), tap_x.eq(self.out_x * g.stride + self.kw)]
        tap_kw = Signal(_COORD)
        m.d.comb += tap_kw.eq(self.kw)
        # A depthwise fold streams every position of its rows (its outputs are every stride-th of them): its
        # columns step by one, its rows by the stride, and its position counts from its first output's
        # (out_x * stride: a depthwise fold's kw is 0).
        depthwise = self.taps != 0
        column_stride = Signal.like(g.stride)
        m.d.comb += column_stride.eq(Mux(depthwise, 1, g.stride))
        # 1: coordinates of the first tap, and the geometry's products
        first_iy = step("first_iy", _COORD, tap_y - g.pad_top)
        first_ix = step("first_ix", _COORD, tap_x - g.pad_left)
        first_ox = step("first_ox", self.out_x.shape(), Mux(depthwise, tap_x, self.out_x))
        row_start_ix = step("row_start_ix", _COORD, tap_kw - g.pad_left)
        # Word offsets only ever reach the address modulo 2**addr_width, so they are computed in that width
        # (a tap in the padding above or left of the map wraps around; its word is never read).
        offset = unsigned(addr_width)
        row_words = step("row_words", offset, g.in_w * g.channel_blocks)       # words of one input row
        col_step = step("col_step", offset, column_stride * g.channel_blocks)
        base = step("base", unsigned(addr_width), self.x_base + self.cb)
        # 2: word offsets
        row_offset = step("row_offset", offset, first_iy * row_words)
        col_offset = step("col_offset", offset, first_ix * g.channel_blocks)
        row_start_col = step("row_start_col", offset, row_start_ix * g.channel_blocks)
        row_step = step("row_step", offset, g.stride * row_words)
        # the positions after the first in its row, and in a whole row: a count down to the row's end keeps the
        # geometry's out_w off the per-position path (its compare into the issuer's fold end was the critical path
        # of a 16x8 ULX3S build, 17.4 ns)
        first_left = step("first_left", self.out_x.shape(), g.out_w - 1 - first_ox)
        row_last = step("row_last", self.out_x.shape(), g.out_w - 1)
        # 3: the fold's first address and the first address of its next output row
        first_addr = step("first_addr", unsigned(addr_width), base + row_offset + col_offset)
        second_row = step("second_row", unsigned(addr_width), base + row_offset + row_step + row_start_col)

        # the fold's own state: the inputs (and the steps above) move on to the next fold once it has started
        iy, ix, fold_row_start_ix = Signal(_COORD), Signal(_COORD), Signal(_COORD)
        # the positions left in the current row after this one: a position is an output if its last tap, taps - 1
        # on, is still in the row, and, at stride 2, it does not lie between two outputs
        row_left, tap_reach = Signal.like(self.out_x), Signal.like(self.taps)
        # (a fold's column step is its own: the inputs, and the steps above, already describe the next fold)
        ix_step, addr_step = Signal.like(g.stride), Signal(addr_width)
        between, skips = Signal(), Signal()
        next_row = Signal(addr_width)   # address of the first pixel of the next output row
        with m.If(self.start):
            m.d.sync += [iy.eq(first_iy), ix.eq(first_ix), row_left.eq(first_left), self.addr.eq(first_addr),
                         next_row.eq(second_row), fold_row_start_ix.eq(row_start_ix),
                         tap_reach.eq(self.taps - 1), ix_step.eq(column_stride),
                         addr_step.eq(col_step), between.eq(0), skips.eq(depthwise & (g.stride == 2))]
        with m.Elif(self.step):
            with m.If(self.row_end):
                m.d.sync += [row_left.eq(row_last), ix.eq(fold_row_start_ix), iy.eq(iy + g.stride),
                             self.addr.eq(next_row), next_row.eq(next_row + row_step), between.eq(0)]
            with m.Else():
                m.d.sync += [row_left.eq(row_left - 1), ix.eq(ix + ix_step), self.addr.eq(self.addr + addr_step),
                             between.eq(skips & ~between)]
        m.d.comb += [self.pad.eq((iy < 0) | (iy >= g.in_h) | (ix < 0) | (ix >= g.in_w)),
                     self.row_end.eq(row_left == 0), self.output.eq((row_left >= tap_reach) & ~between)]
        return m
