"""Sliding-window addressing in Amaranth's simulator, against a direct NumPy enumeration of the taps."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from tessera.hw.window import SlidingWindow


def _expected(geometry, out_y, out_x, kh, kw, cb, x_base, count):
    g = geometry
    out = []
    y, x = out_y, out_x
    for _ in range(count):
        iy, ix = y * g["stride"] + kh - g["pad_top"], x * g["stride"] + kw - g["pad_left"]
        pad = not (0 <= iy < g["in_h"] and 0 <= ix < g["in_w"])
        out.append((None if pad else (x_base + (iy * g["in_w"] + ix) * g["channel_blocks"] + cb) % 4096, pad))
        x += 1
        if x == g["out_w"]:
            x, y = 0, y + 1
    return out


def _stream_folds(dut, geometry, folds, next_fold, count, outputs):
    """Run ``folds`` (dicts of input port names to values) on the window one after another, each for ``count``
    steps, the inputs set to ``next_fold`` once it has started (the issuer's fold queue moves on to the next fold
    then); per fold, per step, ``(address or None in the padding, pad, *outputs)``."""
    got = []

    async def testbench(ctx):
        ctx.set(dut.geometry, geometry)
        for fold in folds:
            for name, value in fold.items():
                ctx.set(getattr(dut, name), value)
            # a pipelined window needs its inputs steady for `settle` cycles before the start
            if dut.settle:
                await ctx.tick().repeat(dut.settle)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for name, value in next_fold.items():
                ctx.set(getattr(dut, name), value)
            ctx.set(dut.step, 1)
            steps = []
            for _ in range(count):
                pad = bool(ctx.get(dut.pad))
                steps.append((None if pad else ctx.get(dut.addr), pad,
                              *(bool(ctx.get(getattr(dut, name))) for name in outputs)))
                await ctx.tick()
            ctx.set(dut.step, 0)
            got.append(steps)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return got


@pytest.mark.parametrize("pipelined", [False, True], ids=["comb", "pipelined"])
@pytest.mark.parametrize("seed", range(6))
def test_addresses_and_padding_match_enumeration(seed, pipelined):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 8))
    stride = int(rng.integers(1, 3))
    pad = int(rng.integers(0, k))
    in_h, in_w = (int(v) for v in rng.integers(k, 12, 2))
    out_h, out_w = (in_h + 2 * pad - k) // stride + 1, (in_w + 2 * pad - k) // stride + 1
    geometry = {"in_h": in_h, "in_w": in_w, "out_w": out_w, "channel_blocks": int(rng.integers(1, 4)),
                "kernel_h": k, "kernel_w": k, "stride": stride, "pad_top": pad, "pad_left": pad, "pad_value": -3}
    dut = SlidingWindow(12, pipelined=pipelined)
    folds = [(int(rng.integers(0, k)), int(rng.integers(0, k)), int(rng.integers(0, geometry["channel_blocks"])),
              int(rng.integers(0, out_h)), int(rng.integers(0, out_w))) for _ in range(5)]
    got = _stream_folds(dut, geometry, [dict(kh=kh, kw=kw, cb=cb, out_y=oy, out_x=ox, x_base=100)
                                        for kh, kw, cb, oy, ox in folds],
                        dict(kh=0, kw=0, cb=0, out_y=0, out_x=0, x_base=0), 2 * out_w + 3, ())
    for (kh, kw, cb, oy, ox), fold in zip(folds, got, strict=True):
        assert fold == _expected(geometry, oy, ox, kh, kw, cb, 100, len(fold))


def _expected_depthwise(geometry, out_y, out_x, kh, taps, count):
    """A depthwise fold's positions (hw.layouts.command_layout): every position of its rows, one column apart,
    its rows ``stride`` apart; an output every stride-th position with ``taps`` to its right."""
    g, stride, width = geometry, geometry["stride"], geometry["out_w"]
    out = []
    y, x = out_y, out_x * stride
    for _ in range(count):
        iy, ix = y * stride + kh - g["pad_top"], x - g["pad_left"]
        pad = not (0 <= iy < g["in_h"] and 0 <= ix < g["in_w"])
        address = None if pad else (100 + (iy * g["in_w"] + ix) * g["channel_blocks"]) % 4096
        out.append((address, pad, x % stride == 0 and x + taps <= width, x == width - 1))
        x += 1
        if x == width:
            x, y = 0, y + 1
    return out


@pytest.mark.parametrize("pipelined", [False, True], ids=["comb", "pipelined"])
@pytest.mark.parametrize("seed", range(6))
def test_depthwise_positions_match_enumeration(seed, pipelined):
    """A depthwise fold streams every position at stride 1 or 2, flags its outputs and row ends, and keeps its own
    column step while the inputs already describe a next fold of another kind."""
    rng = np.random.default_rng(100 + seed)
    stride, kernel_h, taps = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 6))
    pad_top, pad_left = int(rng.integers(0, kernel_h)), int(rng.integers(0, taps))
    in_h, in_w = int(rng.integers(kernel_h, 9)), int(rng.integers(taps, 12))
    out_w = (in_w + 2 * pad_left - taps) // stride + 1
    out_h = (in_h + pad_top - kernel_h) // stride + 1
    geometry = {"in_h": in_h, "in_w": in_w, "out_w": (out_w - 1) * stride + taps, "channel_blocks": 2,
                "kernel_h": kernel_h, "kernel_w": 1, "stride": stride, "pad_top": pad_top, "pad_left": pad_left,
                "pad_value": 0}
    dut = SlidingWindow(12, pipelined=pipelined)
    folds = [(int(rng.integers(0, kernel_h)), int(rng.integers(0, out_h)), int(rng.integers(0, out_w)))
             for _ in range(5)]
    count = 2 * geometry["out_w"] + 3
    # the next fold a plain one: its column step (the stride's) must not leak into this fold's
    got = _stream_folds(dut, geometry, [dict(kh=kh, kw=0, cb=0, out_y=oy, out_x=ox, x_base=100, taps=taps)
                                        for kh, oy, ox in folds],
                        dict(kh=1, kw=1, out_y=0, out_x=1, taps=0), count, ("output", "row_end"))
    for (kh, oy, ox), fold in zip(folds, got, strict=True):
        assert fold == _expected_depthwise(geometry, oy, ox, kh, taps, count)
