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

    The tap's buffer address, :func:`~tessera.hw.layouts.fmap_word` of its coordinates, is kept in a register
    and stepped by additions: multiplying the coordinates out every cycle was the longest path of the ECP5
    build. The steps and the first window's address are products of the geometry, which a few cycles after
    ``start`` form by shift and add (:meth:`_setup`), before the first read.

    A tap is read in the cycle the counters name it (stage A); its word arrives the next cycle (stage B), and is
    registered and folded into the running max the cycle after (stage C): the block RAM's read, a compare and the
    output queue's write in one cycle were the 4x16 ULX3S build's critical path (18.6 ns).

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
        # stage A: the tap's coordinates and address
        a_valid, a_first, a_last = Signal(name="a_valid"), Signal(name="a_first"), Signal(name="a_last")
        iy, ix = Signal(_COORD, name="iy"), Signal(_COORD, name="ix")
        tap_addr = Signal.like(self.read_addr)
        self._taps(m, a_valid, a_first, a_last, iy, ix, tap_addr)

        # stage B: the read (or the padding) is under way
        b_valid, b_first, b_last, b_pad = (Signal(name=name) for name in ("b_valid", "b_first", "b_last", "b_pad"))
        inside = (iy >= 0) & (iy < g.in_h) & (ix >= 0) & (ix < g.in_w)
        m.d.comb += [self.read_addr.eq(tap_addr), self.reading.eq(a_valid & inside)]
        m.d.sync += [b_valid.eq(a_valid), b_first.eq(a_first), b_last.eq(a_last), b_pad.eq(~inside)]

        # stage C: the word registered (the padding as -128: it never wins), then folded into the running max
        c_valid, c_first, c_last = Signal(name="c_valid"), Signal(name="c_first"), Signal(name="c_last")
        tap = Signal.like(self.read_data)
        m.d.sync += [c_valid.eq(b_valid), c_first.eq(b_first), c_last.eq(b_last)]
        for lane in range(self.read_data.shape().length):
            m.d.sync += tap[lane].eq(Mux(b_pad, -128, self.read_data[lane]))
        running = Signal.like(self.read_data)
        maxed = Signal.like(self.read_data)
        for lane in range(self.read_data.shape().length):
            start = Mux(c_first, -128, running[lane])
            m.d.comb += maxed[lane].eq(Mux(tap[lane] > start, tap[lane], start))
        with m.If(c_valid):
            m.d.sync += running.eq(maxed)
        m.d.comb += [self.result.eq(maxed.as_value()), self.result_valid.eq(c_valid & c_last)]
        return m

    def _setup(self, m, first_y, window_x):
        """The address arithmetic's products, formed after ``start`` by shift and add, one multiplier bit a
        cycle, from the first window's top row (``first_y``, with ``start``) and left column (``window_x``,
        after it).

        Returns ``ready`` (they are formed), ``formed`` (the cycle before), and in words: the steps to the next
        pixel's window (``stride * channel_blocks``), to the next output row's (``stride * row``) and to the next
        tap row (``row``, ``in_w * channel_blocks``); the addresses of the first window and of its output row's
        first window, relative to ``a_base``."""
        g = self.geometry
        address = self.read_addr.shape()
        ready, formed = Signal(), Signal()
        # phase 1: window_y * in_w, the first window row's pixel offset; phase 2: everything times channel_blocks
        second = Signal()
        multiplier = Signal(max(len(g.in_w), len(g.channel_blocks)))
        row_pixels, row = Signal(address), Signal(address)
        window_pixel, window = Signal(address), Signal(address)
        line_pixel, line = Signal(address), Signal(address)
        with m.If(self.start):
            m.d.sync += [ready.eq(0), second.eq(0), multiplier.eq(g.in_w), row_pixels.eq(first_y),
                         window_pixel.eq(0)]
        with m.Elif(~ready & ~second):
            with m.If(multiplier[0]):
                m.d.sync += window_pixel.eq(window_pixel + row_pixels)
            m.d.sync += [multiplier.eq(multiplier >> 1), row_pixels.eq(row_pixels << 1)]
            with m.If(multiplier == 0):
                m.d.sync += [second.eq(1), multiplier.eq(g.channel_blocks), row_pixels.eq(g.in_w),
                             line_pixel.eq(window_pixel - g.pad_left), window_pixel.eq(window_pixel + window_x),
                             row.eq(0), window.eq(0), line.eq(0)]
        with m.Elif(~ready):
            with m.If(multiplier[0]):
                m.d.sync += [row.eq(row + row_pixels), window.eq(window + window_pixel), line.eq(line + line_pixel)]
            m.d.sync += [multiplier.eq(multiplier >> 1), row_pixels.eq(row_pixels << 1),
                         window_pixel.eq(window_pixel << 1), line_pixel.eq(line_pixel << 1)]
            with m.If(multiplier == 0):
                m.d.comb += formed.eq(1)
                m.d.sync += ready.eq(1)
        # stride is at most 3: a shift and an add
        pixel_step, line_step = Signal(address), Signal(address)
        m.d.sync += [pixel_step.eq(g.stride * g.channel_blocks), line_step.eq(g.stride * row)]
        return ready, formed, pixel_step, line_step, row, window, line

    def _taps(self, m, a_valid, a_first, a_last, iy, ix, tap_addr):
        """Counters over output pixel, channel block and tap: the next tap's coordinates and address into
        stage A."""
        g = self.geometry
        ox = Signal(range(MAX_CONV_SIDE + 1), name="ox")
        window_y, window_x = Signal(_COORD, name="window_y"), Signal(_COORD, name="window_x")  # its top left tap
        pixel = Signal(16)
        cb = Signal(8)
        kh, kw = Signal(3, name="kh"), Signal(3, name="kw")
        first_y = Signal(_COORD)
        m.d.comb += first_y.eq(self.out_y * g.stride - g.pad_top)
        ready, formed, pixel_step, line_step, row, window, line = self._setup(m, first_y, window_x)
        # the addresses of the tap, of its row's first tap, of its window and block, of its output row's window
        row_addr, block_addr = Signal.like(tap_addr), Signal.like(tap_addr)
        window_addr, line_addr = Signal.like(tap_addr), Signal.like(tap_addr)
        tap_last_w, tap_last_h = kw == g.kernel_w - 1, kh == g.kernel_h - 1
        block_last, pixel_last = cb == g.channel_blocks - 1, pixel == self.count - 1
        with m.If(self.start):
            m.d.sync += [pixel.eq(0), cb.eq(0), kh.eq(0), kw.eq(0), ox.eq(self.out_x), window_y.eq(first_y),
                         window_x.eq(self.out_x * g.stride - g.pad_left)]
        with m.If(formed):
            first = self.a_base + window
            m.d.sync += [tap_addr.eq(first), row_addr.eq(first), block_addr.eq(first), window_addr.eq(first),
                         line_addr.eq(self.a_base + line)]
        m.d.comb += [iy.eq(window_y + kh), ix.eq(window_x + kw)]
        with m.If(self.run & ready & self.room):
            m.d.comb += [a_valid.eq(1), a_first.eq((kh == 0) & (kw == 0)),
                         a_last.eq(tap_last_h & tap_last_w), self.started.eq(tap_last_h & tap_last_w)]
            # next tap, then block, then pixel (raster order, wrapping at out_w)
            m.d.sync += [kw.eq(kw + 1), tap_addr.eq(tap_addr + g.channel_blocks)]
            with m.If(tap_last_w):
                m.d.sync += [kw.eq(0), kh.eq(kh + 1), row_addr.eq(row_addr + row), tap_addr.eq(row_addr + row)]
                with m.If(tap_last_h):
                    m.d.sync += [kh.eq(0), cb.eq(cb + 1), block_addr.eq(block_addr + 1),
                                 row_addr.eq(block_addr + 1), tap_addr.eq(block_addr + 1)]
                    with m.If(block_last):
                        next_window = Signal.like(tap_addr)
                        m.d.comb += next_window.eq(window_addr + pixel_step)
                        m.d.sync += [cb.eq(0), pixel.eq(pixel + 1), ox.eq(ox + 1), window_x.eq(window_x + g.stride)]
                        with m.If(ox == g.out_w - 1):
                            m.d.sync += [ox.eq(0), window_x.eq(-g.pad_left), window_y.eq(window_y + g.stride)]
                            m.d.comb += next_window.eq(line_addr + line_step)
                            m.d.sync += line_addr.eq(line_addr + line_step)
                        m.d.sync += [window_addr.eq(next_window), block_addr.eq(next_window),
                                     row_addr.eq(next_window), tap_addr.eq(next_window)]
                        with m.If(pixel_last):
                            m.d.comb += self.done.eq(1)
