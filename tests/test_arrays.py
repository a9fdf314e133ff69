"""PE arrays alone, in Amaranth's simulator: latency, bank switching between folds, tile capture."""

from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Fragment, Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from hw.array_os import OutputStationaryArray
from hw.array_ws import WeightStationaryArray
from hw.multiplier import PRODUCT_LATENCY, logic_product


def _run(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


class _BuiltFor(Elaboratable):
    """``dut`` elaborated as a board build would (``platform`` attributes such as ``lut_multiplier_rows``)."""

    def __init__(self, dut, **platform):
        self.dut, self.platform = dut, SimpleNamespace(**platform)

    def elaborate(self, platform):
        return Fragment.get(self.dut, self.platform)


class TestLogicProduct:
    @pytest.mark.parametrize("a_shape", [signed(8), unsigned(8)], ids=["signed", "unsigned"])
    def test_every_int8_pair_after_the_dsp_latency(self, a_shape):
        """All 65,536 operand pairs, one per cycle, each product PRODUCT_LATENCY cycles later."""
        m = Module()
        a, b = Signal(a_shape), Signal(signed(8))
        product = logic_product(m, a, b, name="multiplier")
        low = -128 if a_shape.signed else 0
        pairs = [(x, y) for x in range(low, low + 256) for y in range(-128, 128)]
        got = []

        async def testbench(ctx):
            for cycle in range(len(pairs) + PRODUCT_LATENCY):
                if cycle < len(pairs):
                    ctx.set(a, pairs[cycle][0])
                    ctx.set(b, pairs[cycle][1])
                if cycle >= PRODUCT_LATENCY:
                    got.append(ctx.get(product))
                await ctx.tick()

        _run(m, testbench)
        assert got == [x * y for x, y in pairs]

    def test_refuses_other_widths(self):
        m = Module()
        with pytest.raises(ValueError, match="accepted: 8"):
            logic_product(m, Signal(signed(8)), Signal(signed(9)), name="multiplier")
        Fragment.get(m, None)   # elaborated, so Amaranth does not warn of an unused module


class TestWeightStationaryArray:
    @pytest.mark.parametrize("rows, cols, lut_rows", [(1, 1, 0), (3, 4, 0), (4, 2, 0), (3, 4, 2), (2, 3, 2)])
    def test_back_to_back_folds_switch_weights_without_bubble(self, rows, cols, lut_rows):
        """Fold 0 uses bank 0 while bank 1 is loaded; fold 1 follows on the very next cycle with bank 1. Rows
        that multiply in logic (``lut_rows``, as an FPGA build makes them) keep the same timing."""
        rng = np.random.default_rng(rows * 10 + cols)
        w = rng.integers(-128, 128, (2, rows, cols), dtype=np.int8)
        x = rng.integers(-128, 128, (2, 6, rows), dtype=np.int8)
        dut = WeightStationaryArray(rows=rows, cols=cols)
        top = _BuiltFor(dut, lut_multiplier_rows=lut_rows) if lut_rows else dut
        outputs = []

        async def testbench(ctx):
            for r in range(rows):  # bank 0 before anything streams
                ctx.set(dut.w_data, [int(v) for v in w[0, r]])
                ctx.set(dut.w_row, r)
                ctx.set(dut.w_bank, 0)
                ctx.set(dut.w_load, 1)
                await ctx.tick()
            ctx.set(dut.w_load, 0)
            schedule = [(0, i) for i in range(6)] + [(1, i) for i in range(6)]
            for cycle in range(len(schedule) + dut.latency):
                if cycle < len(schedule):
                    fold, i = schedule[cycle]
                    ctx.set(dut.x_in, [int(v) for v in x[fold, i]])
                    ctx.set(dut.x_bank, fold)
                else:
                    ctx.set(dut.x_in, [0] * rows)
                # bank 1 loads while fold 0 streams (rows 0.. at cycles 0..)
                if cycle < rows:
                    ctx.set(dut.w_data, [int(v) for v in w[1, cycle]])
                    ctx.set(dut.w_row, cycle)
                    ctx.set(dut.w_bank, 1)
                    ctx.set(dut.w_load, 1)
                else:
                    ctx.set(dut.w_load, 0)
                if cycle >= dut.latency:
                    outputs.append([int(v) for v in ctx.get(dut.psum_out)])
                await ctx.tick()

        _run(top, testbench)
        expected = np.concatenate([x[f].astype(np.int64) @ w[f].astype(np.int64) for f in range(2)])
        np.testing.assert_array_equal(np.array(outputs), expected)

    def test_extreme_operands_accumulate_in_int32(self):
        rows, cols = 32, 1
        dut = WeightStationaryArray(rows=rows, cols=cols)
        result = []

        async def testbench(ctx):
            for r in range(rows):
                ctx.set(dut.w_data, [-128])
                ctx.set(dut.w_row, r)
                ctx.set(dut.w_load, 1)
                await ctx.tick()
            ctx.set(dut.w_load, 0)
            ctx.set(dut.x_in, [-128] * rows)
            await ctx.tick()
            ctx.set(dut.x_in, [0] * rows)
            await ctx.tick().repeat(dut.latency - 1)
            result.append(int(ctx.get(dut.psum_out)[0]))

        _run(dut, testbench)
        assert result == [32 * 128 * 128]


class TestOutputStationaryArray:
    @pytest.mark.parametrize("rows, cols, k", [(1, 1, 1), (3, 2, 5), (2, 4, 1)])
    def test_back_to_back_tiles_are_captured_and_read_out(self, rows, cols, k):
        rng = np.random.default_rng(rows + cols + k)
        x = rng.integers(-128, 128, (2, rows, k), dtype=np.int8)
        w = rng.integers(-128, 128, (2, k, cols), dtype=np.int8)
        dut = OutputStationaryArray(rows=rows, cols=cols)
        captured = []

        async def testbench(ctx):
            for tile in range(2):
                for j in range(k):
                    ctx.set(dut.x_in, [int(v) for v in x[tile, :, j]])
                    ctx.set(dut.w_in, [int(v) for v in w[tile, j]])
                    ctx.set(dut.x_valid, 1)
                    ctx.set(dut.x_first, j == 0)
                    ctx.set(dut.x_last, j == k - 1)
                    await ctx.tick()
                ctx.set(dut.x_valid, 0)
                await ctx.tick().repeat(dut.capture_latency)
                tile_rows = []
                for r in range(rows):
                    ctx.set(dut.read_row, r)
                    tile_rows.append([int(v) for v in ctx.get(dut.result_row)])
                captured.append(tile_rows)

        _run(dut, testbench)
        for tile in range(2):
            np.testing.assert_array_equal(np.array(captured[tile]),
                                          x[tile].astype(np.int64) @ w[tile].astype(np.int64))
