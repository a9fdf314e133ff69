"""Weight-stationary weight loader: each fold's weight tile into the array, one fold ahead of the issuer."""

from amaranth.hdl import C, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import MAX_KERNEL, OPERAND, command_layout, conv_geometry_layout, fold_header_layout
from .pipeline import delayed, timing_registers

__all__ = ["fold_layout", "WeightLoader"]


def fold_layout(command):
    """A fold as the loader hands it to the issuer: which activations it streams through which weight bank."""
    return data.StructLayout({
        "x_addr": command["x_base"].shape, "m": command["m"].shape,
        "bank": 1, "first": 1, "last": 1, "p_base": command["p_base"].shape, "y_zp": OPERAND,
        "raw": 1, "reduce": 1, "taps": command["taps"].shape, "lane_group": command["lane_group"].shape,
        # convolution folds: the filter tap and channel block, and the first output pixel
        "conv": 1, "kh": 3, "kw": 3, "cb": 8,
        "out_y": command["out_y"].shape, "out_x": command["out_x"].shape,
    })


class WeightLoader(wiring.Component):
    """Loads the ``rows x cols`` weight tile of each fold of a command into a
    :class:`~tessera.hw.array_ws.WeightStationaryArray`, into the weight bank the issuer is not using, and
    queues the fold for the issuer.

    A command is ``k`` folds of ``rows`` weight words each, from ``w_base`` on. A conv command's folds step
    through the filter taps (channel block fastest, then ``kw``, then ``kh``); a ``sparse`` command stores
    only the folds that are not all zero, each behind a header word naming its tap and channel block. A
    depthwise command's folds are the kernel's rows, ``taps`` words each: the array's rows past them load zero.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    cmd : In(stream of command_layout(cfg))
    conv_geometry : In(conv_geometry_layout())
    weight_addr, weight_data : Out, In
        Weight buffer read port (one cycle latency).
    weight_read : Out(1)
        A weight word (a row or a fold header) is read this cycle.
    w_data, w_row, w_bank, w_load : Out
        The array's weight port: the row addressed two cycles earlier (read latency, then a register).
    fold : Out(stream of fold_layout(command_layout(cfg)))
        The folds in order, each queued as its first row is addressed; the loader queues at most one.
    last_vector : In(1)
        Pulse: the issuer issues the last vector of a fold; the fold's bank may be rewritten once that vector
        has left the array.
    busy : Out(1)
        A command or a queued fold is in hand.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self._command = command_layout(cfg)
        self._fold = fold_layout(self._command)
        super().__init__({
            "cmd": In(stream.Signature(self._command)),
            "conv_geometry": In(conv_geometry_layout()),
            "weight_addr": Out(self._command["w_base"].shape),
            "weight_data": In(data.ArrayLayout(OPERAND, cfg.weight_lanes)),
            "weight_read": Out(1),
            "w_data": Out(data.ArrayLayout(OPERAND, cfg.cols)),
            "w_row": Out(range(cfg.rows)) if cfg.rows > 1 else Out(1),
            "w_bank": Out(1),
            "w_load": Out(1),
            "fold": Out(stream.Signature(self._fold)),
            "last_vector": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        # Depth 2 only because Amaranth's depth-1 FIFO emits zero-width wires; the loader never queues more than
        # one fold: it starts a fold only once the queue is empty (the issuer has taken the previous one).
        m.submodules.folds = folds = fifo.SyncFIFO(width=self._fold.size, depth=2)
        m.d.comb += [self.fold.valid.eq(folds.r_rdy), self.fold.payload.eq(folds.r_data),
                     folds.r_en.eq(self.fold.ready)]

        cmd = Signal(self._command)
        loading = Signal()          # holds a command
        fold = Signal(self._command["k"].shape)
        row = Signal(range(cfg.rows + 1))
        in_fold = Signal()          # streaming the rows of one fold
        in_header = Signal()        # reading a sparse command's fold header
        header_now = Signal()       # the cycle after: weight_data holds the header
        w_addr = Signal.like(self.weight_addr)
        x_addr = Signal.like(cmd.x_base)
        load_bank = Signal()
        w_load = Signal()
        # Filter tap and channel block of the fold being loaded (conv commands).
        kh, kw, cb = Signal(3, name="kh"), Signal(3, name="kw"), Signal(8, name="cb")

        m.d.comb += self.cmd.ready.eq(~loading)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [cmd.eq(self.cmd.payload), loading.eq(1), fold.eq(0), in_fold.eq(0), in_header.eq(0),
                         header_now.eq(0),
                         w_addr.eq(self.cmd.payload.w_base), x_addr.eq(self.cmd.payload.x_base),
                         kh.eq(0), kw.eq(0), cb.eq(0)]

        bank_free = self._bank_free(m)
        m.d.comb += self.weight_addr.eq(w_addr)
        with m.If(loading & ~in_fold & ~in_header & ~header_now & ~folds.r_rdy & bank_free):
            with m.If(cmd.sparse):
                m.d.sync += in_header.eq(1)
            with m.Else():
                m.d.sync += [in_fold.eq(1), row.eq(0)]
        with m.If(in_header):
            m.d.sync += [in_header.eq(0), header_now.eq(1), w_addr.eq(w_addr + 1)]
        self._read_header(m, header_now, kh, kw, cb)
        with m.If(header_now):
            m.d.sync += [header_now.eq(0), in_fold.eq(1), row.eq(0)]
        # a depthwise fold's rows past its taps load zero, read from nowhere (its weight tile has taps words a fold)
        depthwise = cmd.taps != 0
        read_row = Signal()
        m.d.comb += read_row.eq(in_fold & ~(depthwise & (row >= cmd.taps)))
        with m.If(read_row):
            m.d.sync += w_addr.eq(w_addr + 1)
        with m.If(in_fold):
            m.d.comb += w_load.eq(1)
            m.d.sync += row.eq(row + 1)
            with m.If(row == 0):
                # First row address this cycle: the fold is queued now, so that the window can prepare its
                # addresses while the rows load; the issuer starts it once the last row's address is out (the
                # rows land before the first vector reaches them, see the timing note in the class docstring
                # of the array).
                pushed = data.View(self._fold, folds.w_data)
                m.d.comb += [
                    folds.w_en.eq(1),
                    pushed.x_addr.eq(x_addr), pushed.bank.eq(load_bank), pushed.m.eq(cmd.m),
                    pushed.p_base.eq(cmd.p_base), pushed.y_zp.eq(cmd.y_zp), pushed.raw.eq(cmd.raw),
                    pushed.reduce.eq(cmd.reduce), pushed.taps.eq(cmd.taps), pushed.lane_group.eq(cmd.lane_group),
                    pushed.first.eq(fold == 0), pushed.last.eq(fold == cmd.k - 1),
                    pushed.conv.eq(cmd.conv), pushed.kh.eq(kh), pushed.kw.eq(kw), pushed.cb.eq(cb),
                    pushed.out_y.eq(cmd.out_y), pushed.out_x.eq(cmd.out_x),
                ]
            with m.If(row == cfg.rows - 1):
                # a conv command reads the same feature map in every fold; a GEMM moves on by m words
                m.d.sync += [in_fold.eq(0), fold.eq(fold + 1), x_addr.eq(Mux(cmd.conv, x_addr, x_addr + cmd.m)),
                             load_bank.eq(~load_bank)]
                with m.If(depthwise):       # a depthwise command's folds are the kernel's rows
                    m.d.sync += kh.eq(kh + 1)
                with m.Elif(~cmd.sparse):   # a sparse command's next fold names its tap in its header
                    self._next_tap(m, kh, kw, cb)
                with m.If(fold == cmd.k - 1):
                    m.d.sync += loading.eq(0)

        # Buffer read data is registered before it fans out into the array (a block RAM's output is slow): one
        # cycle of read latency and one of that register, as for the activations. On an FPGA a second register:
        # one beside the block RAM, one beside the PEs (the 4x16 ULX3S build's critical path was the block RAM's
        # output routed to the one register, 15.1 ns). The rows then land a cycle later, still before the first
        # vector reaches them (rows - 1 cycles of margin; see the activation issuer's _take).
        registers = 2 if timing_registers(platform) else 1
        zero_row = delayed(m, w_load & ~read_row, 1, name="zero_row")   # beside the read data
        read_data = Signal.like(self.weight_data)
        m.d.comb += read_data.eq(Mux(zero_row, 0, self.weight_data))
        m.d.comb += [
            self.w_data.eq(delayed(m, read_data, registers, name="w_data")),
            self.w_load.eq(delayed(m, w_load, 1 + registers, name="w_load")),
            self.w_row.eq(delayed(m, row[:len(self.w_row)], 1 + registers, name="w_row")),
            self.w_bank.eq(delayed(m, load_bank, 1 + registers, name="w_bank")),
            self.weight_read.eq(read_row | in_header),
            self.busy.eq(loading | folds.r_rdy),
        ]
        return m

    def _bank_free(self, m):
        """Whether the bank to load next may be rewritten: only once the last activation that used it has left
        the array's last column."""
        # The last vector (address at cycle L) meets PE (r, cols-1) at L+r+cols+1; a load starting at S
        # writes row r visibly from S+4+r. So S >= L+cols-2, i.e. cool counts cols-3 (and folds of
        # rows+cols-1 vectors or more follow each other without a bubble). A depthwise vector's gated multiplies
        # are counted from its bank's zero weights at L+1+tap_rows (hw.array_ws), which row r's load changes
        # from S+3+r: so S >= L+tap_rows-2 too.
        tap_rows = min(self.cfg.rows, MAX_KERNEL)
        cooling = max(self.cfg.cols, tap_rows, 3) - 3
        if cooling == 0:
            return C(1)  # small arrays: the bank is free as soon as its last vector has been issued
        cool = Signal(range(cooling + 1))
        with m.If(self.last_vector):
            m.d.sync += cool.eq(cooling)
        with m.Elif(cool != 0):
            m.d.sync += cool.eq(cool - 1)
        return cool == 0

    def _read_header(self, m, header_now, kh, kw, cb):
        """A sparse command's stored folds each start with a header word naming the fold's tap and channel
        block: it is read two cycles before the fold's rows, so that it is in ``kh``, ``kw``, ``cb`` when the
        fold is queued (straight from the buffer's read port into the fold queue was the ULX3S build's critical
        path)."""
        header = Signal(fold_header_layout())
        m.d.comb += header.eq(self.weight_data.as_value())    # its low lanes (cols >= 2, see the controller)
        with m.If(header_now):
            m.d.sync += [kh.eq(header.kh), kw.eq(header.kw), cb.eq(header.cb)]

    def _next_tap(self, m, kh, kw, cb):
        """The next fold's filter tap and channel block: ``cb`` fastest, then ``kw``, then ``kh``."""
        geometry = self.conv_geometry
        with m.If(cb == geometry.channel_blocks - 1):
            m.d.sync += cb.eq(0)
            with m.If(kw == geometry.kernel_w - 1):
                m.d.sync += [kw.eq(0), kh.eq(kh + 1)]
            with m.Else():
                m.d.sync += kw.eq(kw + 1)
        with m.Else():
            m.d.sync += cb.eq(cb + 1)
