"""Max pooling for the vector unit: a window's taps read tap by tap and folded into a running max."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib.wiring import In

from .layouts import MAX_CONV_SIDE, conv_geometry_layout, vec_command_layout
from .vector_operation import VectorOperation

__all__ = ["MaxPool"]

_COORD = signed(12)


class MaxPool(VectorOperation):
    """The ``POOL`` command of :class:`~tessera.hw.vector.VectorUnit`: for each of ``count`` output pixels
    (raster order from ``out_y``, ``out_x``) and each of its channel blocks, reads the window's taps one per
    cycle and emits their lane-wise max. Taps in the padding are not read and never win (onnxruntime's rule).

    A tap is read in the cycle the counters name it (stage A); the next cycle (stage B) its word, or the
    padding, is folded into the running max.

    Attributes
    ----------
    The ports of :class:`~tessera.hw.vector_operation.VectorOperation` (a read is a tap, ``started`` a window's
    last tap, a result word a window's max), and:

    geometry : In(conv_geometry_layout())
    out_y, out_x : In
        With ``start``: the command's first output pixel.
    a_base, count : In
        The running command's feature map and output pixel count.
    """

    def __init__(self, cfg):
        command = vec_command_layout(cfg)
        super().__init__(cfg, {"geometry": In(conv_geometry_layout())}, {
            "out_y": In(command["out_y"].shape), "out_x": In(command["out_x"].shape),
            "a_base": In(command["a_base"].shape), "count": In(command["count"].shape),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        # stage A: input coordinates of the tap
        a_valid, a_first, a_last = Signal(name="a_valid"), Signal(name="a_first"), Signal(name="a_last")
        iy, ix, a_cb = Signal(_COORD, name="iy"), Signal(_COORD, name="ix"), Signal(8, name="a_cb")
        self._taps(m, a_valid, a_first, a_last, iy, ix, a_cb)

        # stage B: the read (or the padding) is under way
        b_valid, b_first, b_last, b_pad = (Signal(name=name) for name in ("b_valid", "b_first", "b_last", "b_pad"))
        row_words = Signal(24)
        m.d.comb += row_words.eq(g.in_w * g.channel_blocks)
        inside = (iy >= 0) & (iy < g.in_h) & (ix >= 0) & (ix < g.in_w)
        pool_addr = Signal(24)       # layouts.fmap_word(in_w, channel_blocks, iy, ix, a_cb), row stride precomputed
        m.d.comb += [
            pool_addr.eq(self.a_base + iy * row_words + ix * g.channel_blocks + a_cb),
            self.read_addr.eq(pool_addr),
            self.reading.eq(a_valid & inside),
        ]
        m.d.sync += [b_valid.eq(a_valid), b_first.eq(a_first), b_last.eq(a_last), b_pad.eq(~inside)]

        # then fold the word into the running max
        running = Signal.like(self.read_data)
        maxed = Signal.like(self.read_data)
        for lane in range(self.read_data.shape().length):
            start = Mux(b_first, -128, running[lane])
            tap = Mux(b_pad, -128, self.read_data[lane])
            m.d.comb += maxed[lane].eq(Mux(tap > start, tap, start))
        with m.If(b_valid):
            m.d.sync += running.eq(maxed)
        m.d.comb += [self.result.eq(maxed.as_value()), self.result_valid.eq(b_valid & b_last)]
        return m

    def _taps(self, m, a_valid, a_first, a_last, iy, ix, a_cb):
        """Counters over output pixel, channel block and tap: the next tap's coordinates into stage A."""
        g = self.geometry
        oy, ox = Signal(range(MAX_CONV_SIDE + 1), name="oy"), Signal(range(MAX_CONV_SIDE + 1), name="ox")
        pixel = Signal(16)
        cb = Signal(8)
        kh, kw = Signal(3, name="kh"), Signal(3, name="kw")
        tap_last_w, tap_last_h = kw == g.kernel_w - 1, kh == g.kernel_h - 1
        block_last, pixel_last = cb == g.channel_blocks - 1, pixel == self.count - 1
        with m.If(self.start):
            m.d.sync += [pixel.eq(0), cb.eq(0), kh.eq(0), kw.eq(0), oy.eq(self.out_y), ox.eq(self.out_x)]
        with m.If(self.run & self.room):
            m.d.comb += [a_valid.eq(1), a_first.eq((kh == 0) & (kw == 0)),
                         a_last.eq(tap_last_h & tap_last_w), self.started.eq(tap_last_h & tap_last_w)]
            m.d.comb += [iy.eq(oy * g.stride + kh - g.pad_top), ix.eq(ox * g.stride + kw - g.pad_left), a_cb.eq(cb)]
            # next tap, then block, then pixel (raster order, wrapping at out_w)
            m.d.sync += kw.eq(kw + 1)
            with m.If(tap_last_w):
                m.d.sync += [kw.eq(0), kh.eq(kh + 1)]
                with m.If(tap_last_h):
                    m.d.sync += [kh.eq(0), cb.eq(cb + 1)]
                    with m.If(block_last):
                        m.d.sync += [cb.eq(0), pixel.eq(pixel + 1), ox.eq(ox + 1)]
                        with m.If(ox == g.out_w - 1):
                            m.d.sync += [ox.eq(0), oy.eq(oy + 1)]
                        with m.If(pixel_last):
                            m.d.comb += self.done.eq(1)
