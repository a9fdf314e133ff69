"""The device soak (``make soak`` runs it for a time budget): its cases, a tiny fixed-seed soak on the simulator, the
runner's failure report, and every failure the soak found, kept fixed."""

import numpy as np
import pytest

import tessera.verif.soak as soak_module
from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import TilingError, compile_conv, compile_gemm
from tessera.sw_driver.isa_encode import disassemble
from tessera.sw_driver.runtime import open_sim_device
from tessera.verif.soak import KINDS, make_case, random_config, soak, soak_config

#: A small configuration with a vector unit (ws 4x5, act 128, weight 64, vec 256, drum4 multipliers): every case
#: kind runs on it.
TINY_SEED = 6


class TestCases:
    def test_a_case_is_its_seed(self):
        """A failure's configuration seed and case number rerun it: the same seed gives the same case."""
        cfg = random_config(TINY_SEED)
        for index in range(12):
            first, again = make_case(cfg, TINY_SEED, index), make_case(cfg, TINY_SEED, index)
            assert (first.kind, first.label, first.in_stall, first.out_stall, first.stall_seed) == \
                (again.kind, again.label, again.in_stall, again.out_stall, again.stall_seed)
            np.testing.assert_array_equal(first.layer.expected, again.layer.expected)
            if first.program is not None:
                try:
                    np.testing.assert_array_equal(first.program(), again.program())
                except TilingError:
                    pass
        assert random_config(TINY_SEED) == cfg

    def test_configurations_cover_every_option(self):
        configs = [random_config(seed) for seed in range(48)]
        assert {c.dataflow for c in configs} == {"ws", "os", "rs"}
        assert {c.multiplier for c in configs} > {"exact", "drum4"}
        for has in (lambda c: c.rows != c.cols, lambda c: c.single_port_buffers, lambda c: c.requant_lanes,
                    lambda c: c.vec_depth, lambda c: not c.vec_depth, lambda c: c.dataflow == "rs" and c.rs_filters > 1,
                    lambda c: c.act_depth & (c.act_depth - 1)):
            assert any(map(has, configs))

    def test_the_compiler_takes_or_refuses_every_drawn_layer(self):
        """Compiling alone (no simulator) found two of the soak's failures; every layer drawn (and every program
        to damage) compiles, or is refused with a TilingError that names the limit."""
        kinds = set()
        for seed in range(9):
            cfg = random_config(seed)
            for index in range(20):
                case = make_case(cfg, seed, index)
                kinds.add(case.kind)
                try:
                    case.layer.compile()
                    if case.program is not None:
                        case.program()
                except TilingError as refused:
                    assert str(refused)
        assert kinds == set(KINDS)

    def test_an_all_zero_layer_can_be_damaged(self):
        """Soak seed 1006, case 1903 (the 25-minute run's one failure, in the soak itself): the layer to damage was
        a conv whose pruned weights are all zero, whose program is empty (every output is the requantised bias), and
        damaging nothing raised."""
        case = make_case(random_config(1006), 1006, 1903)
        assert case.kind == "program" and len(case.program()) == 0
        assert "all-zero layer's program is empty" in case.label


@pytest.mark.rtl
class TestSoak:
    @pytest.mark.slow
    def test_a_tiny_soak_runs_clean(self):
        lines = []
        result = soak(TINY_SEED, configs=1, cases=60, say=lines.append)
        assert not result.failures, "\n".join(map(str, result.failures))
        assert result.layers > 20 and result.ran["program"] > 3, result.summary()
        assert result.tried == 60
        assert "1 configurations (ws 1)" in result.summary() and lines[0].startswith(f"config {TINY_SEED}: ws 4x5")

    def test_a_failure_is_reported_with_the_line_that_reruns_it(self, monkeypatch):
        """A wrong golden answer stands in for a wrong device: the case fails as a mismatch, names its seed and case,
        and the soak goes on with the next."""
        real_gemm = soak_module._gemm

        def wrong_gemm(cfg, rng):
            layer = real_gemm(cfg, rng)
            layer.expected = layer.expected.copy()
            layer.expected.flat[0] ^= 1
            return layer
        monkeypatch.setitem(soak_module._LAYERS, "gemm", wrong_gemm)
        lines = []
        result = soak_config(TINY_SEED, cases=30, say=lines.append)
        assert result.failures and sum(result.ran.values()) > len(result.failures)
        assert {f.kind for f in result.failures} == {"mismatch"}
        failure = result.failures[0]
        assert "outputs differ from the golden model" in failure.detail and failure.label.startswith("gemm ")
        assert str(failure) in lines
        assert failure.command == (f"python -m tessera.verif.soak --seed {TINY_SEED} --configs 1 "
                                   f"--cases {failure.case + 1}")
        assert '"dataflow": "ws"' in str(failure)


# --- failures the soak found ---------------------------------------------------------------------------------------


def _conv_operands(rng, out_channels, channels, kh, kw, size):
    x = rng.integers(-128, 128, (1, channels, *size), dtype=np.int8)
    w = rng.integers(-128, 128, (out_channels, channels, kh, kw), dtype=np.int8)
    bias = rng.integers(-2**16, 2**16, out_channels, dtype=np.int32)
    scale = (rng.uniform(0.5, 2, out_channels) / (64 * np.sqrt(channels * kh * kw))).astype(np.float32)
    return x, w, bias, scale, int(rng.integers(-128, 128))


def _pruned(w, rows):
    """Weights of the first block of ``rows`` channels and first three taps only: a pruned layer whose weight tiles
    (sparse ws commands store the folds that are not all zero) fit a small weight buffer."""
    w[:, rows:] = 0
    w.reshape(*w.shape[:2], -1)[..., 3:] = 0
    return w


def _check_conv(device, rng, out_channels, channels, kh, kw, size, stride, pads, prune=False):
    x, w, bias, scale, y_zp = _conv_operands(rng, out_channels, channels, kh, kw, size)
    if prune:
        _pruned(w, device.cfg.rows)
    x_zp = int(rng.integers(-128, 128))
    y, _ = device.conv(x, w, bias, scale, y_zp, strides=(stride, stride), pads=pads, pad_value=x_zp)
    expected = golden.conv_hw(x, w, bias, scale, y_zp, strides=(stride, stride), pads=pads, pad_value=x_zp,
                              multiplier=device.cfg.multiplier)
    np.testing.assert_array_equal(y, expected, err_msg=f"{x.shape} * {w.shape} s{stride} p{pads}")


#: The soak's first configuration (seed 0 when it was found): 64 activation words hold two rows of a 10-wide,
#: 11-channel map, so the map goes in bands of output rows, each behind its own CONV_SETUP.
BANDED_WS = AcceleratorConfig(rows=5, cols=3, dataflow="ws", act_depth=64, weight_depth=20, acc_depth=10,
                              param_depth=1, vec_depth=0, link_timeout=1024, multiplier="drum4")
#: Row-stationary with bands of cols output rows, and an accumulator half (4 rows) shorter than rs_filters.
SHORT_RS = AcceleratorConfig(rows=2, cols=3, dataflow="rs", act_depth=128, weight_depth=256, acc_depth=8,
                             param_depth=4, vec_depth=0, link_timeout=1024, rs_filters=6)
#: Output-stationary with fewer activation than weight words.
SHALLOW_OS = AcceleratorConfig(rows=4, cols=3, dataflow="os", act_depth=32, weight_depth=256, acc_depth=16,
                               param_depth=4, vec_depth=0, link_timeout=1024)


class TestCompilerFailures:
    def test_a_band_wholly_in_the_padding_keeps_a_stored_row(self):
        """Soak seed 0, case 96 (conv 1x11x10x10 * 4x11x1x4, pads (0, 0, 1, 0)): the last output row reads only the
        bottom padding (ONNX allows pads as large as the kernel), and its band's CONV_SETUP had no input rows, which
        the device refuses (BAD_SHAPE)."""
        rng = np.random.default_rng(96)
        x, w, bias, scale, y_zp = _conv_operands(rng, 4, 11, 1, 4, (10, 10))
        _pruned(w, BANDED_WS.rows)
        program = compile_conv(BANDED_WS, x, w, bias, scale, y_zp, pads=(0, 0, 1, 0))
        setups = [ops for op, ops, _ in disassemble(BANDED_WS, program.words) if op.name == "CONV_SETUP"]
        assert len(setups) > 1 and all(s["in_h"] > 0 for s in setups)

    def test_a_row_stationary_gemm_with_a_short_accumulator_compiles(self):
        """Compiling the soak's layers alone (seed 14: rs 2x7, acc_depth 4, rs_filters 3): a GEMM's image width was
        an accumulator half // rs_filters = 0 columns, and the compiler divided by zero."""
        rng = np.random.default_rng(14)
        x = rng.integers(-128, 128, (9, 6), dtype=np.int8)
        w = rng.integers(-128, 128, (6, 5), dtype=np.int8)
        program = compile_gemm(SHORT_RS, x, w, np.zeros(5, np.int32), np.full(5, 1e-3, np.float32), 0)
        assert all(rows <= SHORT_RS.acc_half_depth for _, _, rows in program.outputs)

    def test_an_output_stationary_conv_may_take_more_steps_than_activation_words(self):
        """Compiling the soak's layers alone (seeds 19 and 40: os, act_depth 32 or 64): a conv command steps
        through taps x channel blocks x rows, which only the weight buffer bounds, but its k field was sized by
        the activation buffer too ("180 does not fit unsigned(7)")."""
        rng = np.random.default_rng(19)
        x, w, bias, scale, y_zp = _conv_operands(rng, 3, 4, 4, 5, (7, 6))
        program = compile_conv(SHALLOW_OS, x, w, bias, scale, y_zp)
        gemms = [ops for op, ops, _ in disassemble(SHALLOW_OS, program.words) if op.name == "GEMM"]
        assert gemms[0]["k"] == 4 * 5 * SHALLOW_OS.rows > 2 * SHALLOW_OS.act_depth


@pytest.mark.rtl
class TestDeviceFailures:
    def test_bands_wholly_in_the_padding_are_bit_exact(self):
        rng = np.random.default_rng(0)
        with open_sim_device(BANDED_WS) as device:
            _check_conv(device, rng, 4, 11, 1, 4, (10, 10), 1, (0, 0, 1, 0), prune=True)     # the soak's case
            _check_conv(device, rng, 3, 11, 1, 3, (9, 10), 1, (3, 0, 2, 1), prune=True)      # and the top padding
            _check_conv(device, rng, 2, 6, 2, 2, (12, 10), 3, (4, 1, 5, 2), prune=True)

    def test_row_stationary_padding_bands_and_a_short_accumulator_are_bit_exact(self):
        rng = np.random.default_rng(1)
        with open_sim_device(SHORT_RS) as device:
            _check_conv(device, rng, 2, 3, 1, 1, (12, 4), 1, (4, 0, 4, 0))
            _check_conv(device, rng, 3, 3, 2, 3, (12, 5), 2, (3, 1, 3, 2))
            x = rng.integers(-128, 128, (9, 6), dtype=np.int8)
            w = rng.integers(-128, 128, (6, 5), dtype=np.int8)
            bias, scale = rng.integers(-1000, 1000, 5, dtype=np.int32), np.full(5, 2e-3, np.float32)
            y, _ = device.gemm(x, w, bias, scale, 3)
            np.testing.assert_array_equal(y, golden.gemm_hw(x, w, bias, scale, 3))

    def test_an_output_stationary_conv_longer_than_the_activation_buffer_is_bit_exact(self):
        rng = np.random.default_rng(19)
        with open_sim_device(SHALLOW_OS) as device:
            _check_conv(device, rng, 3, 4, 4, 5, (7, 6), 1, (0, 0, 0, 0))
            _check_conv(device, rng, 5, 3, 5, 5, (7, 5), 2, (2, 2, 2, 2))
