"""The compiler's GEMM tiling against the golden model, through the transaction-level models (no RTL): the device's
instruction stream, and the same program cut into the compute core's passes as its cocotb testbench runs it."""

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import TilingError, compile_conv, compile_gemm
from tessera.verif.cases import random_conv
from tessera.verif.core_model import core_passes, run_passes, run_program

CONFIGS = [AcceleratorConfig(rows=r, cols=c, dataflow=df, act_depth=ad, weight_depth=wd, acc_depth=acc,
                             param_depth=pd)
           for r, c, ad, wd, acc, pd in [(1, 1, 8, 8, 2, 1), (4, 8, 64, 32, 16, 2), (8, 4, 40, 64, 16, 3),
                                         (16, 16, 4096, 4096, 1024, 256), (3, 5, 30, 21, 10, 2)]
           for df in ("ws", "os")]


def _operands(rng, m, k, n):
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    bias = rng.integers(-2**16, 2**16, n, dtype=np.int32)
    scale = (rng.uniform(0.5, 2, n) / (64 * np.sqrt(k))).astype(np.float32)
    return x, w, bias, scale, int(rng.integers(-128, 128))


class TestCorePasses:
    """A compiled program cut into the compute core's passes, as the core's cocotb testbench runs it."""

    @pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.dataflow}-{c.rows}x{c.cols}-a{c.act_depth}")
    def test_random_shapes_match_golden(self, cfg):
        rng = np.random.default_rng(cfg.rows * 100 + cfg.cols)
        max_k = min(cfg.act_depth, cfg.weight_depth) if cfg.dataflow == "os" else cfg.weight_depth
        for _ in range(8):
            m, k, n = (int(v) for v in rng.integers(1, [40, min(max_k, 40) + 1, 40]))
            operands = _operands(rng, m, k, n)
            program = compile_gemm(cfg, *operands)
            passes = core_passes(cfg, program.words)
            y = program.assemble(run_passes(cfg, passes), cfg.cols)
            np.testing.assert_array_equal(y, golden.gemm_hw(*operands))

    def test_small_buffers_need_several_passes(self):
        cfg = AcceleratorConfig(rows=4, cols=4, act_depth=8, weight_depth=8, acc_depth=8, param_depth=1)
        passes = core_passes(cfg, compile_gemm(cfg, *_operands(np.random.default_rng(0), 10, 8, 9)).words)
        assert len(passes) > 3
        assert all(len(p.act_loads) <= cfg.act_depth for p in passes)

    def test_commands_fit_their_fields(self):
        cfg = AcceleratorConfig(rows=16, cols=16)
        program = compile_gemm(cfg, *_operands(np.random.default_rng(1), 256, 256, 256))
        commands = [c for p in core_passes(cfg, program.words) for c in p.commands]
        assert len(commands) == program.commands >= 16
        assert all(1 <= c["m"] <= cfg.acc_half_depth and c["k"] == 16 for c in commands)
        assert sum(c["m"] for c in commands) == 256 * 16     # every output row of every 16-channel tile, once


class TestTilingErrors:
    cfg = AcceleratorConfig(rows=4, cols=4, act_depth=16, weight_depth=16, acc_depth=8)

    def test_k_too_large_for_weight_buffer(self):
        with pytest.raises(TilingError, match="weight_depth"):
            compile_gemm(self.cfg, *_operands(np.random.default_rng(0), 4, 20, 4))

    def test_mismatched_shapes(self):
        x, w, bias, scale, zp = _operands(np.random.default_rng(0), 4, 8, 4)
        with pytest.raises(TilingError, match="do not make a GEMM"):
            compile_gemm(self.cfg, x, w[:5], bias, scale, zp)

    def test_non_int8_operands(self):
        x, w, bias, scale, zp = _operands(np.random.default_rng(0), 4, 8, 4)
        with pytest.raises(TilingError, match="int8"):
            compile_gemm(self.cfg, x.astype(np.int16), w, bias, scale, zp)

    def test_bad_scale_and_zero_point(self):
        x, w, bias, scale, zp = _operands(np.random.default_rng(0), 4, 8, 4)
        with pytest.raises(TilingError, match="scale"):
            compile_gemm(self.cfg, x, w, bias, np.full(4, np.inf, np.float32), zp)
        with pytest.raises(TilingError, match="y_zp"):
            compile_gemm(self.cfg, x, w, bias, scale, 200)

    def test_accumulator_overflow_is_refused(self):
        cfg = AcceleratorConfig(rows=1, cols=1, act_depth=65536, weight_depth=65536, acc_depth=2, dataflow="os")
        x = np.full((1, 65536), -128, np.int8)
        w = np.full((65536, 1), -128, np.int8)
        with pytest.raises(TilingError, match="overflow"):
            compile_gemm(cfg, x, w, np.array([2**30], np.int32), np.ones(1, np.float32), 0)


class TestDeviceCompiler:
    """The instruction streams of the compiler, executed by the device's transaction-level model."""

    @pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.dataflow}-{c.rows}x{c.cols}-a{c.act_depth}")
    def test_random_shapes_match_golden(self, cfg):
        rng = np.random.default_rng(cfg.rows * 1000 + cfg.cols)
        max_k = min(cfg.act_depth, cfg.weight_depth) if cfg.dataflow == "os" else cfg.weight_depth
        for _ in range(10):
            m, k, n = (int(v) for v in rng.integers(1, [70, min(max_k, 40) + 1, 40]))
            operands = _operands(rng, m, k, n)
            program = compile_gemm(cfg, *operands)
            y = program.assemble(run_program(cfg, program.words), cfg.cols)
            np.testing.assert_array_equal(y, golden.gemm_hw(*operands))

    def test_reused_slots_are_guarded_by_wait(self):
        """Buffers too small for the layer: slots are reused, and only after a WAIT for their last reader."""
        from tessera.hw.isa import Opcode
        from tessera.sw_driver.isa_encode import disassemble
        cfg = AcceleratorConfig(rows=4, cols=4, act_depth=16, weight_depth=8, acc_depth=8, param_depth=2)
        program = compile_gemm(cfg, *_operands(np.random.default_rng(3), 40, 8, 20))
        issued, waited = 0, 0
        for opcode, operands, _ in disassemble(cfg, program.words):
            if opcode == Opcode.GEMM:
                issued += 1
            elif opcode == Opcode.WAIT:
                done = issued - operands["pending"]  # commands that must have completed
                assert waited < done <= issued
                waited = done
        assert waited > 0


class TestConvCompiler:
    @pytest.mark.parametrize("seed", range(8))
    def test_random_convs_match_golden(self, seed):
        rng = np.random.default_rng(seed)
        cfg = AcceleratorConfig(rows=int(rng.integers(1, 6)), cols=int(rng.integers(1, 6)), act_depth=2048,
                                weight_depth=512, acc_depth=64, param_depth=4)
        kernel = int(rng.integers(1, 6))
        operands, attrs, expected = random_conv(
            rng, channels=int(rng.integers(1, 9)), out_channels=int(rng.integers(1, 9)),
            size=int(rng.integers(kernel, 10)), kernel=kernel, stride=int(rng.integers(1, 3)),
            pad=int(rng.integers(0, kernel)))
        program = compile_conv(cfg, *operands, **attrs)
        y = program.assemble(run_program(cfg, program.words), cfg.cols)
        np.testing.assert_array_equal(y.T.reshape(expected.shape), expected)

    @pytest.mark.parametrize("seed", range(6))
    def test_maps_larger_than_the_activation_buffer_run_in_row_bands(self, seed):
        from tessera.hw.isa import Opcode
        from tessera.sw_driver.isa_encode import disassemble
        rng = np.random.default_rng(100 + seed)
        kernel = int(rng.integers(1, 6))
        stride = int(rng.integers(1, 3))
        size = int(rng.integers(kernel + 4, 16))
        cfg = AcceleratorConfig(rows=2, cols=3, act_depth=max(2, (kernel + 2) * size * 2), weight_depth=256,
                                acc_depth=32, param_depth=2)
        operands, attrs, expected = random_conv(rng, channels=3, out_channels=4, size=size, kernel=kernel,
                                                stride=stride, pad=int(rng.integers(0, kernel)))
        program = compile_conv(cfg, *operands, **attrs)
        setups = sum(op == Opcode.CONV_SETUP for op, _, _ in disassemble(cfg, program.words))
        assert setups > 1  # the map does not fit: several bands
        y = program.assemble(run_program(cfg, program.words), cfg.cols)
        np.testing.assert_array_equal(y.T.reshape(expected.shape), expected)


class TestRawResults:
    """Raw programs (MatMulInteger, ConvInteger): the same commands with their ``raw`` bit set, each result row as
    four rows of its int32 bytes (the device's side is tests/test_device_rtl.py)."""

    CFG = AcceleratorConfig(rows=4, cols=4, act_depth=64, weight_depth=64, acc_depth=16, param_depth=4)

    def test_only_the_commands_change_and_each_asks_for_four_times_the_rows(self):
        from tessera.sw_driver.compiler import raw_results
        from tessera.sw_driver.isa_encode import disassemble
        x, w, bias, scale, y_zp = _operands(np.random.default_rng(1), 9, 10, 6)
        program = compile_gemm(self.CFG, x, w, bias, scale, y_zp)
        raw = raw_results(self.CFG, program)
        plain, flagged = list(disassemble(self.CFG, program.words)), list(disassemble(self.CFG, raw.words))
        assert [op for op, _, _ in plain] == [op for op, _, _ in flagged]
        for (op, operands, data), (_, raw_operands, raw_data) in zip(plain, flagged, strict=True):
            np.testing.assert_array_equal(data, raw_data)
            assert raw_operands == ({**operands, "raw": 1} if op.name == "GEMM" else operands)
        assert raw.raw and not program.raw and raw.dtype == np.int32
        header_words = len(program.outputs)
        assert raw.reply_words(self.CFG) - header_words == 4 * (program.reply_words(self.CFG) - header_words)

    def test_byte_rows_assemble_into_the_int32_accumulators(self):
        """The device's answer, made by hand from the golden accumulators: four byte rows per row, least significant
        first; an output tile the program skips (all-zero weights) is 0 (no bias in a raw result)."""
        from tessera.sw_driver.compiler import raw_results
        rng = np.random.default_rng(2)
        x = rng.integers(-128, 128, (1, 6, 3, 3), dtype=np.int8)
        w = rng.integers(-128, 128, (10, 6, 1, 1), dtype=np.int8)
        w[4:8] = 0          # the second column tile of output channels: not run
        bias, scale = rng.integers(-999, 999, 10, dtype=np.int32), np.full(10, 1e-3, np.float32)
        raw = raw_results(self.CFG, compile_conv(self.CFG, x, w, bias, scale, 5))
        acc = golden.conv_acc_hw(x, w).transpose(0, 2, 3, 1).reshape(-1, 10)     # (pixels, channels)
        results = []
        for m0, n0, rows in raw.outputs:
            block = np.zeros((rows, self.CFG.cols), np.int32)
            width = min(self.CFG.cols, acc.shape[1] - n0)
            block[:, :width] = acc[m0:m0 + rows, n0:n0 + width]
            results.append(block.view(np.int8).reshape(rows, self.CFG.cols, 4).transpose(0, 2, 1)
                           .reshape(4 * rows, self.CFG.cols))
        y = raw.assemble(results, self.CFG.cols)
        assert y.dtype == np.int32 and [n0 for n0, _ in raw.constants] == [4]
        np.testing.assert_array_equal(y, acc)
        with pytest.raises(ValueError, match="a raw result of 3 rows is not whole int32 rows"):
            raw.assemble([np.zeros((3, 4), np.int8)] * len(raw.outputs), self.CFG.cols)

    def test_golden_accumulators_are_the_requantiser_s_input(self):
        x, w, bias, scale, y_zp = _operands(np.random.default_rng(3), 5, 9, 3)
        acc = golden.gemm_acc_hw(x, w)
        np.testing.assert_array_equal(acc, x.astype(np.int64) @ w.astype(np.int64))
        requantised = golden.requantize(acc + bias, scale, y_zp)
        np.testing.assert_array_equal(requantised, golden.gemm_hw(x, w, bias, scale, y_zp))
