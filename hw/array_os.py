"""Output-stationary array: every PE owns one output of a ``rows x cols`` tile."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import ACC, OPERAND
from .pe import OutputStationaryPE
from .pe_multipliers import MULTIPLIERS
from .pipeline import delayed

__all__ = ["OutputStationaryArray"]


class OutputStationaryArray(wiring.Component):
    """``rows x cols`` output-stationary array with input skews and a row readout.

    Each step ``j`` of a tile, row ``r`` receives ``X[m0 + r, j]`` from the left and column ``c`` receives
    ``W[j, n0 + c]`` from the top; both are skewed (row ``r`` by ``r``, column ``c`` by ``c`` cycles) so the
    pair meets in PE ``(r, c)``. A tile's sums are captured when its ``last`` step passes, PE ``(r, c)``
    ``r + c`` cycles after the step entered, and stay readable through ``result_row`` while the next tile
    accumulates.

    Attributes
    ----------
    x_in : In(ArrayLayout(signed(8), rows)); x_valid, x_first, x_last : In(1)
        One reduction step of activations and its tags.
    w_in : In(ArrayLayout(signed(8), cols))
        The same step's weights.
    read_row : In(range(rows)); result_row : Out(ArrayLayout(signed(32), cols))
        Captured results of one PE row (combinational readout).
    macs_gated : Out
        PEs that the step which entered last cycle reaches with a zero activation or a zero weight (their
        multiply is gated): zero activations times ``cols`` plus zero weights times ``rows``, less the
        pairs counted twice.
    """

    def __init__(self, *, rows, cols, multiplier=MULTIPLIERS["exact"]):
        self.rows, self.cols = rows, cols
        self.multiplier = multiplier
        #: cycles from the last step at the inputs until the whole tile is captured and readable
        self.capture_latency = rows + cols - 1
        super().__init__({
            "x_in": In(data.ArrayLayout(OPERAND, rows)),
            "x_valid": In(1),
            "x_first": In(1),
            "x_last": In(1),
            "w_in": In(data.ArrayLayout(OPERAND, cols)),
            "read_row": In(range(rows)) if rows > 1 else In(1),
            "result_row": Out(data.ArrayLayout(ACC, cols)),
            "macs_gated": Out(range(rows * cols + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        grid = [[OutputStationaryPE(multiplier=self.multiplier) for _ in range(self.cols)] for _ in range(self.rows)]
        for r, row in enumerate(grid):
            x = delayed(m, self.x_in[r], r, name=f"x_skew_{r}")
            valid, first, last = (delayed(m, tag, r, name=f"{name}_skew_{r}") for tag, name in
                                  ((self.x_valid, "valid"), (self.x_first, "first"), (self.x_last, "last")))
            for c, pe in enumerate(row):
                m.submodules[f"pe_{r}_{c}"] = pe
                w = grid[r - 1][c].w_out if r else delayed(m, self.w_in[c], c, name=f"w_skew_{c}")
                m.d.comb += [
                    pe.x_in.eq(x), pe.valid_in.eq(valid), pe.first_in.eq(first), pe.last_in.eq(last),
                    pe.w_in.eq(w),
                ]
                x, valid, first, last = pe.x_out, pe.valid_out, pe.first_out, pe.last_out
        zero_x = Signal(range(self.rows + 1))
        zero_w = Signal(range(self.cols + 1))
        m.d.comb += [zero_x.eq(sum(self.x_in[r] == 0 for r in range(self.rows))),
                     zero_w.eq(sum(self.w_in[c] == 0 for c in range(self.cols)))]
        m.d.sync += self.macs_gated.eq(
            Mux(self.x_valid, zero_x * self.cols + zero_w * self.rows - zero_x * zero_w, 0))
        with m.Switch(self.read_row):
            for r, row in enumerate(grid):
                # the last row is the default so the switch is complete whatever the select width
                with (m.Case(r) if r < self.rows - 1 else m.Default()):
                    m.d.comb += [self.result_row[c].eq(pe.result) for c, pe in enumerate(row)]
        return m
