"""The row-stationary buffer layouts of :mod:`tessera.hw.layouts` against the compiler: what a program loads lies
where :func:`rs_filter_word` and :func:`fmap_word` say, its parameter words hold each filter's bias and scale, and
its results are read back through :func:`rs_result_row`."""

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.hw.array_rs import rs_mapping
from tessera.hw.layouts import fmap_word, rs_filter_entries, rs_filter_word, rs_result_row
from tessera.sw_driver.compiler import compile_conv
from tessera.verif.cases import random_conv
from tessera.verif.core_model import replay_program


def _rs(**fields):
    return AcceleratorConfig(**{"rows": 3, "cols": 4, "dataflow": "rs", "act_depth": 512, "weight_depth": 256,
                                "acc_depth": 64, "param_depth": 8, **fields})


#: (configuration fields, conv shape): two channel blocks; PE sets whose channels overrun the word (5 rows, a
#: 2-row kernel: 2 sets of 3 channels); a kernel taller than the array (3 chunks of 2 rows); bands of output rows.
CASES = [
    ({}, dict(channels=5, out_channels=7, size=6, kernel=3, stride=1, pad=1)),
    ({"rows": 5, "cols": 3, "weight_depth": 512, "rs_filters": 3},
     dict(channels=9, out_channels=5, size=7, kernel=2, stride=2, pad=0)),
    ({"rows": 2, "cols": 3, "weight_depth": 512}, dict(channels=3, out_channels=4, size=7, kernel=5, stride=1, pad=2)),
    ({"act_depth": 128}, dict(channels=3, out_channels=6, size=9, kernel=3, stride=1, pad=1)),
]


def test_rs_filter_word_by_hand():
    cfg = _rs(rows=5)
    # KH 2 on 5 rows: 2 sets of q = 3 channels. Channel 9 is channel 4 of block 1, channel 1 of set 1; filter row 3
    # is row 1 of chunk 1, so pass 1 * 2 + 1 = 3 of 2 filters, q * KW = 6 entries each
    assert rs_mapping(5, 2) == (2, 3)
    assert rs_filter_word(cfg, 2, 2, 3, 2, 2, 1, 9, 3, 1) == ((3 * 2 + 1) * 6 + 1 * 2 + 1, 1 * 2 + 1)
    assert rs_filter_entries(3, 2) == 6
    assert rs_result_row(5, 2, 3) == 13
    assert fmap_word(4, 3, 2, 1, 2) == (2 * 4 + 1) * 3 + 2


@pytest.mark.parametrize("rows, kernel_h, kernel_w, chunks, filters, channels",
                         [(3, 3, 3, 1, 4, 7), (5, 2, 1, 2, 3, 9), (4, 1, 7, 1, 2, 4), (2, 2, 5, 3, 1, 3)])
def test_rs_filter_word_gives_every_weight_its_own_entry(rows, kernel_h, kernel_w, chunks, filters, channels):
    """No two weights of a command share a word and lane, and all lie within its ``filters * passes * q * KW``
    words."""
    cfg = _rs(rows=rows)
    _, q = rs_mapping(rows, kernel_h)
    f, c, y, x = np.meshgrid(*map(np.arange, (filters, channels, kernel_h * chunks, kernel_w)), indexing="ij")
    word, lane = rs_filter_word(cfg, kernel_h, kernel_w, q, chunks, filters, f, c, y, x)
    blocks = -(-channels // rows)
    words = filters * blocks * chunks * rs_filter_entries(q, kernel_w)
    assert len(set(zip(word.ravel().tolist(), lane.ravel().tolist(), strict=True))) == word.size
    assert word.min() == 0 and word.max() < words and lane.max() < rows


@pytest.mark.parametrize("fields, shape", CASES, ids=["blocks", "sets", "chunks", "bands"])
def test_rs_program_buffers_follow_the_layouts(fields, shape):
    cfg = _rs(**fields)
    (x, w, bias, scale, y_zp), attrs, _ = random_conv(np.random.default_rng(1), **shape)
    program = compile_conv(cfg, x, w, bias, scale, y_zp, **attrs)
    R, C = cfg.rows, cfg.cols
    channels, kh, kw = w.shape[1:]
    stride, pad_top = attrs["strides"][0], attrs["pads"][0]
    commands = 0
    for (cmd, g, buffers), (_, oy0, filters) in zip(replay_program(cfg, program.words), program.placements,
                                                    strict=True):
        filters = list(filters)
        assert cmd["filters"] == len(filters)
        # weights: every weight of the command's filters where rs_filter_word puts it, zeros elsewhere
        _, q = rs_mapping(R, g["kernel_h"])
        chunks = max(1, cmd["out_x"])
        f, c, y, x_ = np.meshgrid(*map(np.arange, (len(filters), channels, kh, kw)), indexing="ij")
        word, lane = rs_filter_word(cfg, g["kernel_h"], g["kernel_w"], q, chunks, len(filters), f, c, y, x_)
        image = np.zeros((len(filters) * cmd["k"] * chunks * rs_filter_entries(q, kw), R), np.int8)
        image[word, lane] = w[filters]
        np.testing.assert_array_equal(buffers.weight[cmd["w_base"]:cmd["w_base"] + len(image)], image)
        # the feature map: the band of input rows the command's geometry covers, in the layout of fmap_word
        in_h, in_w, blocks = g["in_h"], g["in_w"], g["channel_blocks"]
        first_row = max(0, (oy0 - cmd["out_y"]) * stride - pad_top)     # out_y counts from the band's first row
        y, x_, b = np.meshgrid(np.arange(in_h), np.arange(in_w), np.arange(blocks), indexing="ij")
        stored = buffers.act[(cmd["x_base"] + fmap_word(in_w, blocks, y, x_, b)) % cfg.act_depth]
        padded = np.zeros((blocks * R, *x.shape[1:]), np.int8)
        padded[:channels] = x
        band = padded[:, first_row:first_row + in_h].reshape(blocks, R, in_h, in_w).transpose(2, 3, 0, 1)
        np.testing.assert_array_equal(stored, band)
        # parameter word p_base + i: filter i's bias and scale in every lane
        params = cmd["p_base"] + np.arange(len(filters))
        np.testing.assert_array_equal(buffers.bias[params], np.repeat(bias[filters, None], C, axis=1))
        np.testing.assert_array_equal(buffers.scale[params], np.repeat(scale[filters, None], C, axis=1).view(np.uint32))
        commands += 1
    assert commands == len(program.placements) > 1


def test_rs_results_are_read_through_rs_result_row():
    cfg = _rs(rs_filters=3)
    operands, attrs, expected = random_conv(np.random.default_rng(3), channels=3, out_channels=7, size=6, kernel=3,
                                            stride=1, pad=1)
    program = compile_conv(cfg, *operands, **attrs)
    results = []
    for _, oy0, filters in program.placements:
        block = np.zeros((len(filters) * program.out_w, cfg.cols), np.int8)
        for i, f in enumerate(filters):
            rows = expected[f, oy0:oy0 + cfg.cols]            # (output rows of the band, out_w)
            block[rs_result_row(program.out_w, i, np.arange(program.out_w)), :len(rows)] = rows.T
        results.append(block)
    np.testing.assert_array_equal(program.assemble(results, cfg.cols).T.reshape(expected.shape), expected)
