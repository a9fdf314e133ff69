"""Weight-stationary systolic array (TPU-like)."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import ACC, MAX_KERNEL, OPERAND
from .multiplier import PRODUCT_LATENCY, lut_multiplier_row
from .pe import WeightStationaryPE, psum_width
from .pe_multipliers import MULTIPLIERS
from .pipeline import delayed

__all__ = ["WeightStationaryArray"]


class WeightStationaryArray(wiring.Component):
    """``rows x cols`` weight-stationary array with its input skew and output de-skew, of ``multiplier`` PEs.

    Row ``r`` of the PE grid holds input channel ``r`` of the weight tile, column ``c`` output channel ``c``.
    An activation vector enters unskewed on ``x_in``; row ``r`` is delayed ``r`` cycles so that partial sums
    meet the right activations as they flow down the columns, and column ``c`` of the result is delayed
    ``cols - 1 - c`` cycles so that ``psum_out`` is one aligned vector, :attr:`latency` cycles after ``x_in``.

    Attributes
    ----------
    x_in : In(ArrayLayout(signed(8), rows))
        One activation vector per cycle (zero when idle, so idle PEs do not toggle).
    x_bank : In(1)
        Weight bank this vector multiplies with.
    x_column : In(ArrayLayout(signed(8), cols))
        A depthwise vector's activations, one a column (zero otherwise).
    x_depthwise : In(1)
        The vector is a depthwise one: each column multiplies its own ``x_column`` lane, not ``x_in``'s, in
        every row. The lane reaches column ``c`` ``c`` cycles on, as ``x_in`` does, but every row at once: row
        ``r``'s multiply for this vector's wavefront (which enters row ``r`` ``r`` cycles later) meets the lane
        ``r`` vectors on. So a column sums its rows' weights times consecutive vectors: a 1-D convolution along
        the stream, whose taps are the rows (``hw.layouts.command_layout``: depthwise commands).
    w_data : In(ArrayLayout(signed(8), cols))
        A row of weights, written into PE row ``w_row``, bank ``w_bank``, when ``w_load``.
    psum_out : Out(ArrayLayout(signed(32), cols))
        ``x @ W`` for the vector that entered :attr:`latency` cycles earlier.
    x_valid : In(1)
        ``x_in`` is a real vector (not an idle cycle), for the gated-MAC count.
    macs_gated : Out
        PEs that the vector which entered last cycle reaches with a zero activation or a zero weight: their
        multiply is gated (:class:`~tessera.hw.pe.WeightStationaryPE`). Counted at the edge of the array from the
        zeros of each weight row, so no per-PE counter is needed; a depthwise vector's once its wavefront's
        lanes have all entered (see `_depthwise_gated`), so in a cycle two vectors' counts may add up.
    """

    def __init__(self, *, rows, cols, multiplier=MULTIPLIERS["exact"]):
        self.rows, self.cols = rows, cols
        self.multiplier = multiplier
        self.latency = rows + cols - 1 + PRODUCT_LATENCY   # skew, each PE's pipelined multiply, de-skew
        super().__init__({
            "x_in": In(data.ArrayLayout(OPERAND, rows)),
            "x_bank": In(1),
            "w_data": In(data.ArrayLayout(OPERAND, cols)),
            "w_row": In(range(rows)) if rows > 1 else In(1),
            "w_bank": In(1),
            "w_load": In(1),
            "psum_out": Out(data.ArrayLayout(ACC, cols)),
            "x_column": In(data.ArrayLayout(OPERAND, cols)),
            "x_depthwise": In(1),
            "x_valid": In(1),
            "macs_gated": Out(range(2 * rows * cols + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        # Row r's partial sums hold at most r + 1 products: 16 bits in row 0, 20 after 16 rows, instead of 32
        # everywhere (adders, their registers and the de-skew are the array's logic beside the multipliers).
        grid = [[WeightStationaryPE(multiplier=self.multiplier,
                                    lut_multiplier=lut_multiplier_row(platform, r, self.rows),
                                    psum_width=psum_width(r + 1, self.multiplier))
                 for _ in range(self.cols)] for r in range(self.rows)]
        columns = [delayed(m, self.x_column[c], c, name=f"column_skew_{c}") for c in range(self.cols)]
        for r, row in enumerate(grid):
            x = delayed(m, self.x_in[r], r, name=f"x_skew_{r}")
            bank = delayed(m, self.x_bank, r, name=f"bank_skew_{r}")
            depthwise = delayed(m, self.x_depthwise, r, name=f"depthwise_skew_{r}")
            for c, pe in enumerate(row):
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += [
                    pe.x_in.eq(x),
                    pe.bank_in.eq(bank),
                    pe.depthwise_in.eq(depthwise),
                    pe.x_column.eq(columns[c]),
                    pe.psum_in.eq(grid[r - 1][c].psum_out if r else 0),
                    pe.w_data.eq(self.w_data[c]),
                    pe.w_bank.eq(self.w_bank),
                    pe.w_load.eq(self.w_load & (self.w_row == r)),
                ]
                x, bank, depthwise = pe.x_out, pe.bank_out, pe.depthwise_out
        for c in range(self.cols):
            m.d.comb += self.psum_out[c].eq(
                delayed(m, grid[-1][c].psum_out, self.cols - 1 - c, name=f"psum_deskew_{c}"))
        # Counted in two registered steps (each row's gated PEs, then their sum): x_in comes straight from a
        # buffer's read port, and the count must not lengthen that path.
        zeros = self._zero_weights(m)
        gated_rows = [Signal(range(self.cols + 1), name=f"gated_row_{r}") for r in range(self.rows)]
        plain = self.x_valid & ~self.x_depthwise
        for r in range(self.rows):
            m.d.sync += gated_rows[r].eq(Mux(plain, Mux(self.x_in[r] == 0, self.cols,
                                                        Mux(self.x_bank, zeros[1][r], zeros[0][r])), 0))
        plain_gated = Signal(range(self.rows * self.cols + 1))
        m.d.sync += plain_gated.eq(sum(gated_rows))
        m.d.comb += self.macs_gated.eq(plain_gated + self._depthwise_gated(m))
        return m

    def _depthwise_gated(self, m):
        """The gated multiplies of each depthwise vector's wavefront: row ``r`` of column ``c`` meets the column's
        lane ``r`` vectors on, so the count waits until the lanes of the rows that can hold a tap have entered.
        The rows below those hold zero weights (the loader writes them so), gated whatever they meet."""
        tap_rows = min(self.rows, MAX_KERNEL)
        lag = tap_rows - 1
        # each column's zero lanes, the newest first; and the zero weights of the tap rows, per bank
        zero_lanes = [[delayed(m, self.x_column[c] == 0, j, name=f"zero_lane_{c}") for j in range(tap_rows)]
                      for c in range(self.cols)]
        zero_taps = [[[Signal(name=f"zero_tap_{b}_{r}_{c}") for c in range(self.cols)] for r in range(tap_rows)]
                     for b in range(2)]
        for b in range(2):
            for r in range(tap_rows):
                with m.If(self.w_load & (self.w_bank == b) & (self.w_row == r)):
                    m.d.sync += [zero_taps[b][r][c].eq(self.w_data[c] == 0) for c in range(self.cols)]
        counted = delayed(m, self.x_valid & self.x_depthwise, lag, name="depthwise_counted")
        bank = delayed(m, self.x_bank, lag, name="depthwise_bank")
        per_column = [Signal(range(tap_rows + 1), name=f"gated_column_{c}") for c in range(self.cols)]
        for c in range(self.cols):
            gated = [zero_lanes[c][lag - r] | Mux(bank, zero_taps[1][r][c], zero_taps[0][r][c])
                     for r in range(tap_rows)]
            m.d.sync += per_column[c].eq(Mux(counted, sum(gated), 0))
        total = Signal(range(self.rows * self.cols + 1))
        below = (self.rows - tap_rows) * self.cols
        m.d.sync += total.eq(sum(per_column) + Mux(delayed(m, counted, 1, name="depthwise_counted_sum"), below, 0))
        return total

    def _zero_weights(self, m):
        """Zero weights in each row of each bank, counted as the rows load."""
        zeros = [[Signal(range(self.cols + 1), name=f"zero_weights_{b}_{r}") for r in range(self.rows)]
                 for b in range(2)]
        loaded = sum((self.w_data[c] == 0) for c in range(self.cols))
        for b in range(2):
            for r in range(self.rows):
                with m.If(self.w_load & (self.w_bank == b) & (self.w_row == r)):
                    m.d.sync += zeros[b][r].eq(loaded)
        return zeros

