"""Filter interleaving (Eyeriss's ``p``) on the row-stationary array: how the compiler groups filters into
commands, and how the device checks a command's filter count."""

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.hw.isa import Opcode
from tessera.sw_driver.compiler import compile_conv, compile_gemm
from tessera.sw_driver.isa_encode import DeviceError, disassemble, instruction
from tessera.verif.cases import ExpectErrors, random_conv, random_gemm


def _rs(**fields):
    return AcceleratorConfig(**{"rows": 3, "cols": 4, "dataflow": "rs", "act_depth": 512, "weight_depth": 256,
                                "acc_depth": 64, "param_depth": 8, "link_timeout": 64, **fields})


def _gemms(cfg, words):
    return [operands for opcode, operands, _ in disassemble(cfg, words) if opcode == Opcode.GEMM]


class TestFilterGroups:
    @pytest.mark.parametrize("rs_filters", [1, 3, 4, 16])
    def test_commands_carry_at_most_rs_filters_whose_rows_fit_a_half(self, rs_filters):
        cfg = _rs(rs_filters=rs_filters)
        operands, attrs, _ = random_conv(np.random.default_rng(rs_filters), channels=5, out_channels=11, size=9,
                                         kernel=3, stride=1, pad=1)
        program = compile_conv(cfg, *operands, **attrs)
        for gemm, (_, _, filters) in zip(_gemms(cfg, program.words), program.placements, strict=True):
            assert 1 <= gemm["filters"] == len(filters) <= rs_filters
            assert gemm["m"] == len(filters) * 9 <= cfg.acc_half_depth
            assert gemm["p_base"] + gemm["filters"] <= cfg.param_depth
        # every filter once per band, in groups as large as allowed (32 // 9 = 3 filters' rows fit a half)
        bands = {}
        for image, oy0, filters in program.placements:
            bands.setdefault((image, oy0), []).append(len(filters))
        p = min(rs_filters, cfg.acc_half_depth // 9)
        for sizes in bands.values():
            assert sum(sizes) == 11 and max(sizes) == p and all(size == p for size in sizes[:-1])

    def test_all_zero_filters_are_left_out_of_the_groups(self):
        cfg = _rs(rs_filters=4)
        (x, w, bias, scale, y_zp), attrs, _ = random_conv(np.random.default_rng(7), channels=2, out_channels=6,
                                                          size=5, kernel=1, stride=1, pad=0)
        w[[1, 4]] = 0
        program = compile_conv(cfg, x, w, bias, scale, y_zp, **attrs)
        for band in (0, cfg.cols):     # 5 output rows: two bands of cols=4 rows
            run = [f for _, oy0, filters in program.placements if oy0 == band for f in filters]
            assert run == [0, 2, 3, 5]
        assert [f for f, _ in program.constants] == [1, 4]

    def test_assemble_reads_each_filters_rows_in_turn(self):
        """Results laid out as hw.compute_rs writes them (filter i's output column ox at row i*out_w + ox) come
        back as the output."""
        cfg = _rs(rs_filters=3)
        operands, attrs, expected = random_conv(np.random.default_rng(3), channels=3, out_channels=7, size=6,
                                                kernel=3, stride=1, pad=1)
        program = compile_conv(cfg, *operands, **attrs)
        out_w = program.out_w
        results = []
        for _, oy0, filters in program.placements:
            block = np.zeros((len(filters) * out_w, cfg.cols), np.int8)
            for i, f in enumerate(filters):
                rows = expected[f, oy0:oy0 + cfg.cols]            # (rows of the band, out_w)
                block[i * out_w:(i + 1) * out_w, :len(rows)] = rows.T
            results.append(block)
        np.testing.assert_array_equal(program.assemble(results, cfg.cols).T.reshape(expected.shape), expected)

    def test_gemm_images_are_narrow_enough_for_every_filter(self):
        cfg = _rs(rs_filters=4)
        program = compile_gemm(cfg, *random_gemm(np.random.default_rng(0), 300, 5, 9))
        assert max(len(filters) for _, _, filters in program.placements) == 4


@pytest.mark.rtl
def test_bad_filter_counts_are_refused_and_the_device_goes_on():
    from tessera.sw_driver.runtime import open_sim_device
    cfg = _rs(rs_filters=4)
    setup = instruction(cfg, Opcode.CONV_SETUP, in_h=4, in_w=4, out_w=4, channel_blocks=1, kernel_h=1, kernel_w=1,
                        stride=1)

    def gemm(**fields):
        return instruction(cfg, Opcode.GEMM, **{"m": 8, "k": 1, "filters": 2, "conv": 1, **fields})
    # no filters; more than a PE holds; m not the filters' output columns; a reduce command (ws only); parameter
    # words or weight words (2 filters of one 1x1 entry each) past the end of their buffers
    bad = [gemm(filters=0, m=4), gemm(filters=5, m=20), gemm(m=7), gemm(reduce=1), gemm(p_base=cfg.param_depth - 1),
           gemm(w_base=cfg.weight_depth - 1)]
    with open_sim_device(cfg) as device:
        device.transport.send(np.concatenate([setup, *bad]))
        with pytest.raises(DeviceError, match="BAD_SHAPE.*BAD_SHAPE.*BAD_SHAPE.*BAD_SHAPE.*OUT_OF_RANGE.*OUT_OF_RANGE"):
            device.run(ExpectErrors(len(bad)))
        operands, attrs, expected = random_conv(np.random.default_rng(5), channels=4, out_channels=5, size=6,
                                                kernel=3, stride=1, pad=1)
        y, _ = device.conv(*operands, **attrs)
        np.testing.assert_array_equal(y, expected)
