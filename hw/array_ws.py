"""Weight-stationary systolic array (TPU-like)."""

from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import ACC, OPERAND
from .pe import WeightStationaryPE
from .pipeline import delayed

__all__ = ["WeightStationaryArray"]


class WeightStationaryArray(wiring.Component):
    """``rows x cols`` weight-stationary array with its input skew and output de-skew.

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
    w_data : In(ArrayLayout(signed(8), cols))
        A row of weights, written into PE row ``w_row``, bank ``w_bank``, when ``w_load``.
    psum_out : Out(ArrayLayout(signed(32), cols))
        ``x @ W`` for the vector that entered :attr:`latency` cycles earlier.
    """

    def __init__(self, *, rows, cols):
        self.rows, self.cols = rows, cols
        self.latency = rows + cols - 1
        super().__init__({
            "x_in": In(data.ArrayLayout(OPERAND, rows)),
            "x_bank": In(1),
            "w_data": In(data.ArrayLayout(OPERAND, cols)),
            "w_row": In(range(rows)) if rows > 1 else In(1),
            "w_bank": In(1),
            "w_load": In(1),
            "psum_out": Out(data.ArrayLayout(ACC, cols)),
        })

    def elaborate(self, platform):
        m = Module()
        grid = [[WeightStationaryPE() for _ in range(self.cols)] for _ in range(self.rows)]
        for r, row in enumerate(grid):
            x = delayed(m, self.x_in[r], r, name=f"x_skew_{r}")
            bank = delayed(m, self.x_bank, r, name=f"bank_skew_{r}")
            for c, pe in enumerate(row):
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += [
                    pe.x_in.eq(x),
                    pe.bank_in.eq(bank),
                    pe.psum_in.eq(grid[r - 1][c].psum_out if r else 0),
                    pe.w_data.eq(self.w_data[c]),
                    pe.w_bank.eq(self.w_bank),
                    pe.w_load.eq(self.w_load & (self.w_row == r)),
                ]
                x, bank = pe.x_out, pe.bank_out
        for c in range(self.cols):
            m.d.comb += self.psum_out[c].eq(
                delayed(m, grid[-1][c].psum_out, self.cols - 1 - c, name=f"psum_deskew_{c}"))
        return m
