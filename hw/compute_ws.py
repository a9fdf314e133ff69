"""Weight-stationary compute unit: weight preload, activation issue, and accumulation into the accumulator."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, fifo

from .array_ws import WeightStationaryArray
from .layouts import OPERAND, fold_header_layout
from .pipeline import delayed, timing_registers
from .tiles import ComputeUnit
from .window import SlidingWindow

__all__ = ["WeightStationaryCompute"]


class WeightStationaryCompute(ComputeUnit):
    """Runs compute commands on a :class:`WeightStationaryArray`.

    A command is ``k`` folds; a fold loads one ``rows x cols`` weight tile and streams ``m`` activation
    vectors through it, accumulating into rows ``0..m-1`` of an accumulator half. The weight loader runs one
    fold ahead of the activation issuer into the other weight bank, so in steady state a vector enters the
    array every cycle, across folds and across commands. A ``sparse`` conv command runs only the folds its
    weight tile stores (each behind a header naming its tap): all-zero weight tiles cost no cycles.

    Attributes
    ----------
    cmd : In(stream of command_layout)
    act_addr, act_data : Out, In
        Activation buffer read port (one cycle latency).
    weight_addr, weight_data : Out, In
        Weight buffer read port (one cycle latency).
    acc_rd_addr, acc_rd_data : Out, In
        Accumulator read port for read-modify-write (transparent to ``acc_wr``).
    acc_wr_addr, acc_wr_data, acc_wr_en : Out
        Accumulator write port.
    tile : Out(stream of tile_layout); release : In(1)
        Finished tiles for the drain, and the drain's release of their halves.
    busy : Out(1); issued : Out(1); weight_read : Out(1); acc_rmw_read : Out(1)
        Work in flight; event strobes for the performance counters (a vector enters the array, a weight
        word is read, an accumulator word is read for accumulation).
    """

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.array = array = WeightStationaryArray(rows=cfg.rows, cols=cfg.cols)
        tracker = self._tile_tracker(m)

        fold_layout = data.StructLayout({
            "x_addr": self._command["x_base"].shape, "m": self._command["m"].shape,
            "bank": 1, "first": 1, "last": 1, "p_base": self._command["p_base"].shape, "y_zp": OPERAND,
            # convolution folds: the filter tap and channel block, and the first output pixel
            "conv": 1, "kh": 3, "kw": 3, "cb": 8,
            "out_y": self._command["out_y"].shape, "out_x": self._command["out_x"].shape,
        })
        # Depth 2 only because Amaranth's depth-1 FIFO emits zero-width wires; the loader never queues more than
        # one fold: it starts a fold only once the queue is empty (the issuer has taken the previous one).
        m.submodules.folds = folds = fifo.SyncFIFO(width=fold_layout.size, depth=2)

        # -- weight loader: one fold ahead of the issuer, into the bank the issuer is not using --------------
        cmd = Signal(self._command)
        loading = Signal()          # holds a command
        fold = Signal(self._command["k"].shape)
        row = Signal(range(cfg.rows + 1))
        in_fold = Signal()          # streaming the rows of one fold
        in_header = Signal()        # reading a sparse command's fold header
        header_now = Signal()       # the cycle after: weight_data holds the header
        w_addr = Signal.like(self.weight_addr)
        x_addr = Signal.like(self.act_addr)
        load_bank = Signal()
        # A bank may be rewritten only once the last activation that used it has left the array's last column.
        cool = Signal(range(cfg.cols + 1))

        # Filter tap and channel block of the fold being loaded (conv commands): cb fastest, then kw, then kh.
        kh, kw, cb = Signal(3), Signal(3), Signal(8)
        geometry = self.conv_geometry

        m.d.comb += self.cmd.ready.eq(~loading)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [cmd.eq(self.cmd.payload), loading.eq(1), fold.eq(0), in_fold.eq(0), in_header.eq(0),
                         header_now.eq(0),
                         w_addr.eq(self.cmd.payload.w_base), x_addr.eq(self.cmd.payload.x_base),
                         kh.eq(0), kw.eq(0), cb.eq(0)]

        # A sparse command's stored folds each start with a header word naming the fold's tap and channel
        # block (the all-zero folds are not stored): read it two cycles before the fold's rows, so that it is
        # in kh, kw, cb when the fold is queued (straight from the buffer's read port into the fold queue was the
        # ULX3S build's critical path).
        header = Signal(fold_header_layout())
        m.d.comb += header.eq(self.weight_data.as_value())    # its low lanes (cols >= 2, see the controller)
        with m.If(header_now):
            m.d.sync += [kh.eq(header.kh), kw.eq(header.kw), cb.eq(header.cb)]

        w_load = Signal()
        m.d.comb += self.weight_addr.eq(w_addr)
        with m.If(loading & ~in_fold & ~in_header & ~header_now & ~folds.r_rdy & (cool == 0)):
            with m.If(cmd.sparse):
                m.d.sync += in_header.eq(1)
            with m.Else():
                m.d.sync += [in_fold.eq(1), row.eq(0)]
        with m.If(in_header):
            m.d.sync += [in_header.eq(0), header_now.eq(1), w_addr.eq(w_addr + 1)]
        with m.If(header_now):
            m.d.sync += [header_now.eq(0), in_fold.eq(1), row.eq(0)]
        with m.If(in_fold):
            m.d.comb += w_load.eq(1)
            m.d.sync += [row.eq(row + 1), w_addr.eq(w_addr + 1)]
            with m.If(row == 0):
                # First row address this cycle: the fold is queued now, so that the window can prepare its
                # addresses while the rows load; the issuer starts it `fold_ready` cycles later, once the last
                # row's address is out (the rows land before the first vector reaches them, see the timing note
                # in the class docstring of the array).
                pushed = data.View(fold_layout, folds.w_data)
                m.d.comb += [
                    folds.w_en.eq(1),
                    pushed.x_addr.eq(x_addr), pushed.bank.eq(load_bank), pushed.m.eq(cmd.m),
                    pushed.p_base.eq(cmd.p_base), pushed.y_zp.eq(cmd.y_zp),
                    pushed.first.eq(fold == 0), pushed.last.eq(fold == cmd.k - 1),
                    pushed.conv.eq(cmd.conv), pushed.kh.eq(kh), pushed.kw.eq(kw), pushed.cb.eq(cb),
                    pushed.out_y.eq(cmd.out_y), pushed.out_x.eq(cmd.out_x),
                ]
            with m.If(row == cfg.rows - 1):
                # a conv command reads the same feature map in every fold; a GEMM moves on by m words
                m.d.sync += [in_fold.eq(0), fold.eq(fold + 1), x_addr.eq(Mux(cmd.conv, x_addr, x_addr + cmd.m)),
                             load_bank.eq(~load_bank)]
                with m.If(~cmd.sparse):     # a sparse command's next fold names its tap in its header
                    with m.If(cb == geometry.channel_blocks - 1):
                        m.d.sync += cb.eq(0)
                        with m.If(kw == geometry.kernel_w - 1):
                            m.d.sync += [kw.eq(0), kh.eq(kh + 1)]
                        with m.Else():
                            m.d.sync += kw.eq(kw + 1)
                    with m.Else():
                        m.d.sync += cb.eq(cb + 1)
                with m.If(fold == cmd.k - 1):
                    m.d.sync += loading.eq(0)
        # Buffer read data is registered before it fans out into the array (a block RAM's output is slow): one
        # cycle of read latency and one of that register, for the weights and for the activations alike.
        m.d.comb += [
            array.w_data.eq(delayed(m, self.weight_data, 1, name="w_data")),
            array.w_load.eq(delayed(m, w_load, 2, name="w_load")),
            array.w_row.eq(delayed(m, row[:len(array.w_row)], 2, name="w_row")),
            array.w_bank.eq(delayed(m, load_bank, 2, name="w_bank")),
        ]

        # -- activation issuer --------------------------------------------------------------------------------
        current = Signal(fold_layout)
        active = Signal()
        vector = Signal.like(current.m)
        half = Signal()
        last_vector = Signal()
        m.d.comb += last_vector.eq(active & (vector == current.m - 1))
        next_fold = data.View(fold_layout, folds.r_data)
        m.submodules.window = window = SlidingWindow(len(self.act_addr), pipelined=True)
        # A fold may start once its last weight row's address is out (rows - 1 cycles after it was queued) and
        # the window has prepared its first addresses (window.settle cycles).
        fold_ready = max(cfg.rows - 1, window.settle)
        settled = Signal(range(fold_ready + 1))
        ready_fold = Signal()
        m.d.comb += ready_fold.eq(folds.r_rdy & (settled == fold_ready))
        take = Signal()
        with m.If(~folds.r_rdy | take):
            m.d.sync += settled.eq(0)
        with m.Elif(~ready_fold):
            m.d.sync += settled.eq(settled + 1)
        m.d.comb += [
            take.eq((~active | last_vector) & ready_fold & (~next_fold.first | tracker.start.ready)),
            folds.r_en.eq(take),
            tracker.start.valid.eq((~active | last_vector) & ready_fold & next_fold.first),
            tracker.start.payload.m.eq(next_fold.m),
            tracker.start.payload.p_base.eq(next_fold.p_base),
            tracker.start.payload.y_zp.eq(next_fold.y_zp),
        ]
        with m.If(last_vector):
            m.d.sync += active.eq(0)
            # The last vector (address at cycle L) meets PE (r, cols-1) at L+r+cols+1; a load starting at S
            # writes row r visibly from S+4+r. So S >= L+cols-2, i.e. cool counts cols-3 (and folds of
            # rows+cols-1 vectors or more follow each other without a bubble).
            m.d.sync += cool.eq(max(cfg.cols - 3, 0))
        with m.Elif(cool != 0):
            m.d.sync += cool.eq(cool - 1)
        with m.If(active):
            m.d.sync += vector.eq(vector + 1)
        with m.If(take):
            m.d.sync += [current.eq(next_fold), active.eq(1), vector.eq(0)]
            with m.If(next_fold.first):
                m.d.sync += half.eq(tracker.half)

        m.d.comb += [
            window.geometry.eq(geometry),
            window.start.eq(take), window.step.eq(active),
            window.out_y.eq(next_fold.out_y), window.out_x.eq(next_fold.out_x),
            window.kh.eq(next_fold.kh), window.kw.eq(next_fold.kw), window.cb.eq(next_fold.cb),
            window.x_base.eq(next_fold.x_addr),
            self.act_addr.eq(Mux(current.conv, window.addr, current.x_addr + vector)),
            self.issued.eq(active),
            self.act_read.eq(active),
            # each vector: every PE reads its stationary weight; activations hop right, partial sums down
            self.rf_reads.eq(Mux(active, cfg.pes, 0)),
            self.rf_writes.eq(0),
            self.noc_transfers.eq(Mux(active, cfg.rows * (cfg.cols - 1) + (cfg.rows - 1) * cfg.cols, 0)),
        ]

        # Tags travel beside the data: one cycle of buffer read latency, one of the register after it, then the
        # array's latency.
        tag_layout = data.StructLayout({"valid": 1, "pad": 1, "row": len(self.acc_rd_addr), "first": 1,
                                        "tile_end": 1})
        tag = Signal(tag_layout)
        half_base = Mux(half, cfg.acc_half_depth, 0)
        m.d.comb += [
            tag.valid.eq(active), tag.pad.eq(current.conv & window.pad),
            tag.row.eq(half_base + vector), tag.first.eq(current.first),
            tag.tile_end.eq(last_vector & current.last),
        ]
        at_read = delayed(m, tag, 1, name="tag_read")
        padding = Signal.like(self.act_data)
        m.d.comb += [padding[r].eq(geometry.pad_value) for r in range(cfg.rows)]
        x = Signal.like(self.act_data)
        m.d.sync += x.eq(Mux(at_read.valid, Mux(at_read.pad, padding, self.act_data), 0))
        at_array = delayed(m, at_read, 1, name="tag_x")
        m.d.comb += [
            array.x_in.eq(x),
            array.x_bank.eq(delayed(m, current.bank, 2, name="x_bank")),
            array.x_valid.eq(at_array.valid),
            self.macs_gated.eq(array.macs_gated),
        ]
        if timing_registers(platform):
            at_psum, at_write = self._accumulate_registered(m, array, at_array)
        else:
            at_psum, at_write = self._accumulate(m, array, at_array)
        m.d.comb += [
            self.acc_wr_addr.eq(at_write.row),
            self.acc_wr_en.eq(at_write.valid),
            self.weight_read.eq(w_load | in_header),
            self.acc_rmw_read.eq(at_psum.valid & ~at_psum.first),
            tracker.finished.eq(at_write.valid & at_write.tile_end),
            self.busy.eq(loading | folds.r_rdy | active | tracker.busy),
        ]
        return m

    def _accumulate_registered(self, m, array, at_array):
        """Read-modify-write over two registered steps; returns the tags at the read data and at the write.

        The read is issued a cycle before the array's row comes out; the read data is registered (a block RAM's
        output is slow) beside the row, and their sum is written a cycle later. A read issued one cycle before a
        write to its row misses that write: the sum then takes the value written last cycle instead. A read in
        the same cycle as the write sees it (the read port is transparent)."""
        at_read_acc = delayed(m, at_array, array.latency - 1, name="tag_array")
        at_psum = delayed(m, at_read_acc, 1, name="tag_psum")
        at_write = delayed(m, at_psum, 1, name="tag_write")
        psum = delayed(m, array.psum_out, 1, name="psum")
        acc = Signal.like(self.acc_rd_data)
        m.d.sync += acc.eq(self.acc_rd_data)
        written = Signal.like(self.acc_wr_data)
        m.d.sync += written.eq(self.acc_wr_data)
        missed = Signal()   # registered: it selects between two operands of every lane's adder
        m.d.sync += missed.eq(at_psum.valid & at_write.valid & (at_psum.row == at_write.row))
        m.d.comb += self.acc_rd_addr.eq(at_read_acc.row)
        for c in range(self.cfg.cols):
            m.d.comb += self.acc_wr_data[c].eq(
                Mux(at_write.first, psum[c], psum[c] + Mux(missed, written[c], acc[c])))
        return at_psum, at_write

    def _accumulate(self, m, array, at_array):
        """Read-modify-write in one step (a small FPGA's version, see `timing_registers`): the read is issued as
        the array's row comes out and the sum written the next cycle; the read port is transparent, so
        back-to-back rows see the write."""
        at_psum = delayed(m, at_array, array.latency, name="tag_array")
        at_write = delayed(m, at_psum, 1, name="tag_write")
        psum = delayed(m, array.psum_out, 1, name="psum")
        m.d.comb += self.acc_rd_addr.eq(at_psum.row)
        for c in range(self.cfg.cols):
            m.d.comb += self.acc_wr_data[c].eq(Mux(at_write.first, psum[c], psum[c] + self.acc_rd_data[c]))
        return at_psum, at_write
