"""PE arrays alone, in Amaranth's simulator: latency, bank switching between folds, tile capture."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from tessera.hw.array_os import OutputStationaryArray
from tessera.hw.array_ws import WeightStationaryArray


def _run(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


class TestWeightStationaryArray:
    @pytest.mark.parametrize("rows, cols", [(1, 1), (3, 4), (4, 2)])
    def test_back_to_back_folds_switch_weights_without_bubble(self, rows, cols):
        """Fold 0 uses bank 0 while bank 1 is loaded; fold 1 follows on the very next cycle with bank 1."""
        rng = np.random.default_rng(rows * 10 + cols)
        w = rng.integers(-128, 128, (2, rows, cols), dtype=np.int8)
        x = rng.integers(-128, 128, (2, 6, rows), dtype=np.int8)
        dut = WeightStationaryArray(rows=rows, cols=cols)
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

        _run(dut, testbench)
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
