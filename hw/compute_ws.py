"""Weight-stationary compute unit: weight preload, activation issue, and accumulation into the accumulator."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring

from .activation_issuer import ActivationIssuer
from .array_ws import WeightStationaryArray
from .pe_multipliers import multiplier
from .pipeline import delayed, timing_registers
from .tiles import ComputeUnit
from .weight_loader import WeightLoader

__all__ = ["WeightStationaryCompute"]


class WeightStationaryCompute(ComputeUnit):
    """Runs compute commands on a :class:`WeightStationaryArray`.

    A command is ``k`` folds; a fold loads one ``rows x cols`` weight tile and streams ``m`` activation
    vectors through it, accumulating into rows ``0..m-1`` of an accumulator half. The
    :class:`~tessera.hw.weight_loader.WeightLoader` runs one fold ahead of the
    :class:`~tessera.hw.activation_issuer.ActivationIssuer` into the other weight bank, so in steady state a
    vector enters the array every cycle, across folds and across commands. A ``sparse`` conv command runs only
    the folds its weight tile stores (each behind a header naming its tap): all-zero weight tiles cost no cycles.

    Attributes
    ----------
    The ports of :class:`~tessera.hw.tiles.ComputeUnit`.
    """

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.array = array = WeightStationaryArray(rows=cfg.rows, cols=cfg.cols,
                                                                       multiplier=multiplier(cfg.multiplier))
        tracker = self._tile_tracker(m)
        m.submodules.loader = loader = WeightLoader(cfg)
        m.submodules.issuer = issuer = ActivationIssuer(cfg)
        wiring.connect(m, wiring.flipped(self.cmd), loader.cmd)
        wiring.connect(m, loader.fold, issuer.fold)
        wiring.connect(m, issuer.start, tracker.start)
        m.d.comb += [
            loader.conv_geometry.eq(self.conv_geometry),
            self.weight_addr.eq(loader.weight_addr), loader.weight_data.eq(self.weight_data),
            array.w_data.eq(loader.w_data), array.w_row.eq(loader.w_row), array.w_bank.eq(loader.w_bank),
            array.w_load.eq(loader.w_load),
            loader.last_vector.eq(issuer.last_vector),
            issuer.conv_geometry.eq(self.conv_geometry),
            issuer.half.eq(tracker.half),
            self.act_addr.eq(issuer.act_addr), issuer.act_data.eq(self.act_data),
            array.x_in.eq(issuer.x_in), array.x_bank.eq(issuer.x_bank), array.x_valid.eq(issuer.tag.valid),
            array.x_column.eq(issuer.x_column), array.x_depthwise.eq(issuer.x_depthwise),
        ]
        if timing_registers(platform):
            at_psum, at_write = self._accumulate_registered(m, array, issuer.tag)
        else:
            at_psum, at_write = self._accumulate(m, array, issuer.tag)
        m.d.comb += [
            self.acc_wr_addr.eq(at_write.row),
            self.acc_wr_en.eq(at_write.valid & at_write.write),
            tracker.finished.eq(at_write.valid & at_write.tile_end),
            self.busy.eq(loader.busy | issuer.issued | tracker.busy),
        ]
        self._count_events(m, array, loader, issuer, at_psum)
        return m

    def _count_events(self, m, array, loader, issuer, at_psum):
        cfg = self.cfg
        m.d.comb += [
            self.issued.eq(issuer.issued),
            self.act_read.eq(issuer.issued),
            self.weight_read.eq(loader.weight_read),
            self.acc_rmw_read.eq(at_psum.valid & at_psum.write & ~at_psum.first),
            self.macs_gated.eq(array.macs_gated),
            # each vector: every PE reads its stationary weight; activations hop right, partial sums down
            self.rf_reads.eq(Mux(issuer.issued, cfg.pes, 0)),
            self.rf_writes.eq(0),
            self.noc_transfers.eq(Mux(issuer.issued, cfg.rows * (cfg.cols - 1) + (cfg.rows - 1) * cfg.cols, 0)),
        ]

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
        m.d.sync += missed.eq(at_psum.write & at_write.write & (at_psum.row == at_write.row))
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
