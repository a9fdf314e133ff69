"""Sliding-window addressing: the activation words a convolution's output pixels read, generated on chip.

The host sends each input activation once; the weight-stationary issuer asks this block, pixel by pixel,
which word of the stored input feature map a filter tap reads (or that it falls into the padding).
"""

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .layouts import MAX_CONV_SIDE, conv_geometry_layout

__all__ = ["SlidingWindow"]

_COORD = signed(12)      # input coordinates run from -pad to side + kernel
_OFFSET = signed(32)     # word offsets, signed because padding rows lie before the map


class SlidingWindow(wiring.Component):
    """Address generator for one fold (filter tap ``kh``, ``kw`` and channel block ``cb``) of a conv command.

    Output pixels advance in raster order over ``out_w`` columns; each step adds the stride to the input
    column, and at the end of an output row moves the input row on by the stride. Only additions happen per
    pixel; the two multiplications are at fold start.

    Attributes
    ----------
    geometry : In(conv_geometry_layout())
    start : In(1)
        Load a fold: first output pixel (``out_y``, ``out_x``), tap (``kh``, ``kw``), block ``cb``, map base
        ``x_base``.
    step : In(1)
        Advance to the next output pixel.
    addr : Out(unsigned)
        Activation word of the current pixel.
    pad : Out(1)
        The current pixel's tap lies outside the input: use the padding value instead of ``addr``.
    """

    def __init__(self, addr_width):
        side = unsigned(MAX_CONV_SIDE.bit_length())
        super().__init__({
            "geometry": In(conv_geometry_layout()),
            "start": In(1),
            "out_y": In(side), "out_x": In(side),
            "kh": In(3), "kw": In(3), "cb": In(8),
            "x_base": In(addr_width),
            "step": In(1),
            "addr": Out(addr_width),
            "pad": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        row_words = Signal(_OFFSET)     # words of one input row
        m.d.comb += row_words.eq(g.in_w * g.channel_blocks)

        iy, ix = Signal(_COORD), Signal(_COORD)
        ox = Signal.like(self.out_x)
        row_offset, col_offset = Signal(_OFFSET), Signal(_OFFSET)
        kw, cb, x_base = Signal.like(self.kw), Signal.like(self.cb), Signal.like(self.x_base)

        # Unsigned sums go through signed signals before the padding is subtracted, so that a tap above or
        # left of the map becomes a negative coordinate rather than a wrapped unsigned one.
        tap_y, tap_x, tap_kw = Signal(_COORD), Signal(_COORD), Signal(_COORD)
        first_iy, first_ix, row_start_ix = Signal(_COORD), Signal(_COORD), Signal(_COORD)
        m.d.comb += [
            tap_y.eq(self.out_y * g.stride + self.kh),
            tap_x.eq(self.out_x * g.stride + self.kw),
            tap_kw.eq(kw),
            first_iy.eq(tap_y - g.pad_top),
            first_ix.eq(tap_x - g.pad_left),
            row_start_ix.eq(tap_kw - g.pad_left),
        ]
        with m.If(self.start):
            m.d.sync += [
                iy.eq(first_iy), ix.eq(first_ix), ox.eq(self.out_x),
                row_offset.eq(first_iy * row_words), col_offset.eq(first_ix * g.channel_blocks),
                kw.eq(self.kw), cb.eq(self.cb), x_base.eq(self.x_base),
            ]
        with m.Elif(self.step):
            with m.If(ox == g.out_w - 1):
                m.d.sync += [
                    ox.eq(0), ix.eq(row_start_ix), col_offset.eq(row_start_ix * g.channel_blocks),
                    iy.eq(iy + g.stride), row_offset.eq(row_offset + g.stride * row_words),
                ]
            with m.Else():
                m.d.sync += [ox.eq(ox + 1), ix.eq(ix + g.stride),
                             col_offset.eq(col_offset + g.stride * g.channel_blocks)]

        m.d.comb += [
            self.addr.eq(x_base + row_offset + col_offset + cb),
            self.pad.eq((iy < 0) | (iy >= g.in_h) | (ix < 0) | (ix >= g.in_w)),
        ]
        return m
