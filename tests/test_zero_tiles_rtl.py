"""Skipping all-zero weight tiles (pruned models): fewer cycles and link words, the same answer."""

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import compile_conv
from tessera.sw_driver.runtime import open_sim_device
from tessera.verif.cases import random_conv

pytestmark = pytest.mark.rtl


def device_constants(operands, attrs):
    """What the outputs of channels with all-zero weights are: the requantised bias (golden model)."""
    _, _, bias, scale, y_zp = operands
    return golden.requantize(bias, scale, y_zp)[:, None, None]


def _run(device, operands, attrs, skip):
    device.skip_zero_tiles = skip
    return device.conv(*operands, **attrs)


@pytest.mark.parametrize("rows, cols, dataflow", [(4, 4, "ws"), (4, 4, "os"), (1, 2, "ws")],
                         ids=["ws-4x4", "os-4x4", "ws-1x2"])
def test_zero_tiles_are_skipped_bit_exact(rows, cols, dataflow):
    # the zero-gating test's configuration, so the simulator build is shared; 1x2: a fold of one row, whose
    # header arrives in the cycle its only row is read
    cfg = AcceleratorConfig(rows=rows, cols=cols, dataflow=dataflow, act_depth=256, weight_depth=256, acc_depth=64,
                            param_depth=4, vec_depth=0)
    rng = np.random.default_rng(11)
    out_tiles, blocks, pixels = 12 // cols, 8 // rows, 36
    with open_sim_device(cfg) as device:
        for fraction in (0.3, 0.6, 0.9):
            operands, attrs, expected = random_conv(rng, channels=8, out_channels=12, size=6, kernel=3, stride=1,
                                                    pad=1, zero_tiles=(cfg.rows, cfg.cols, fraction))
            w = operands[1]
            w[4:8] = 0      # whole column tiles too: every dataflow skips them
            expected[4:8] = device_constants(operands, attrs)[4:8]
            y_dense, dense = _run(device, operands, attrs, skip=False)
            y_sparse, sparse = _run(device, operands, attrs, skip=True)
            np.testing.assert_array_equal(y_dense, expected)
            np.testing.assert_array_equal(y_sparse, expected)

            tiles = (w.reshape(out_tiles, cols, blocks, rows, 9) != 0).any(axis=(1, 3))    # (out tile, block, tap)
            if dataflow == "ws":
                # only the stored folds enter the array: a vector per pixel per fold
                assert dense.counters["array_cycles"] == pixels * 9 * blocks * out_tiles
                assert sparse.counters["array_cycles"] == pixels * int(tiles.sum())
            else:
                # os skips whole output tiles only: a reduction step per channel per tap per row block
                steps = pixels // rows * 9 * blocks * rows
                assert dense.counters["array_cycles"] == steps * out_tiles
                assert sparse.counters["array_cycles"] == steps * int(tiles.any(axis=(1, 2)).sum())
            assert sparse.macs_skipped > 0 and sparse.macs == dense.macs
            assert sparse.counters["link_words_in"] < dense.counters["link_words_in"]
            assert sparse.cycles < dense.cycles, (fraction, sparse.cycles, dense.cycles)


def test_sparse_commands_only_where_they_pay():
    cfg = AcceleratorConfig(rows=4, cols=4, dataflow="ws", act_depth=256, weight_depth=256, acc_depth=64,
                            param_depth=4, vec_depth=0)
    rng = np.random.default_rng(5)
    operands, attrs, _ = random_conv(rng, channels=8, out_channels=8, size=5, kernel=3, stride=1, pad=1)
    dense = compile_conv(cfg, *operands, **attrs)
    assert dense.macs_skipped == 0 and not dense.constants
    w = operands[1].copy()
    w[4:] = 0                     # the second column tile is all zero: not run, its outputs are constants
    w[:4, :4, 0, 0] = 0           # one fold of the first tile is all zero: a sparse command skips it
    program = compile_conv(cfg, operands[0], w, *operands[2:], **attrs)
    assert [n0 for n0, _ in program.constants] == [4]
    assert program.macs_skipped == 25 * (4 * 8 * 9 + 4 * 4)
    assert len(program.words) < len(dense.words)
    one_col = AcceleratorConfig(rows=4, cols=1, dataflow="ws", act_depth=256, weight_depth=256, acc_depth=64,
                                param_depth=8, vec_depth=0)
    # one column has no room for a fold header: whole zero tiles are still skipped, folds are not
    program = compile_conv(one_col, operands[0], w, *operands[2:], **attrs)
    assert len(program.constants) == 4 and program.macs_skipped == 25 * 4 * 8 * 9
