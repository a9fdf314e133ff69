"""The element-wise add: its fixed-point contract against onnxruntime's QLinearAdd (the golden model), and the
RTL lane against that contract."""

import zlib

import numpy as np
import pytest
from amaranth.sim import Simulator

from tessera.hw.qadd import QADD_LATENCY, QAddLane
from tessera.sw_driver import golden
from tessera.sw_driver.vector_compiler import qadd_params
from tessera.verif.qadd_model import qadd_reference

#: Scales that make ties (exact halves) frequent, and random ones.
_TIE_SCALES = [0.5, 0.25, 0.125, 0.1, 0.2, 0.05, 0.75, 1.0, 0.3, 0.015625, 0.0078125]


def _random_layer(rng, dtype, ties):
    lo, hi = (-128, 127) if dtype == np.int8 else (0, 255)
    if ties:
        scales = [np.float32(_TIE_SCALES[i]) for i in rng.integers(0, len(_TIE_SCALES), 3)]
    else:
        scales = [np.float32(10 ** rng.uniform(-3, -0.5)) for _ in range(3)]
    zps = [int(rng.integers(lo, hi + 1)) for _ in range(3)]
    return scales, zps, (lo, hi)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("ties", [False, True])
def test_fixed_point_contract_matches_onnxruntime(dtype, ties):
    """qadd_reference (what the RTL implements) equals golden.qlinear_add on random layers and operands."""
    rng = np.random.default_rng(zlib.crc32(f"{np.dtype(dtype)}{ties}".encode()))
    checked = 0
    for _ in range(300):
        (sa, sb, sy), (za, zb, zy), (lo, hi) = _random_layer(rng, dtype, ties)
        a, b = (rng.integers(lo, hi + 1, 48).astype(dtype) for _ in range(2))
        a[:2], b[:2] = (lo, hi), (hi, lo)   # the extremes
        try:
            params = qadd_params(sa, za, sb, zb, sy, zy, dtype)
        except ValueError:
            continue
        got = [qadd_reference(int(x), int(y), params) for x, y in zip(a, b, strict=True)]
        np.testing.assert_array_equal(got, golden.qlinear_add(a, sa, za, b, sb, zb, sy, zy).astype(int))
        checked += 1
    assert checked > 250


def test_params_refuse_what_is_not_exact():
    with pytest.raises(ValueError, match="a_scale / y_scale"):
        qadd_params(1.0, 0, 0.01, 0, 1e-4, 0, np.int8)       # ratio 1e4 is above 2**8
    with pytest.raises(ValueError, match="b_scale / y_scale"):
        qadd_params(0.01, 0, 1e-9, 0, 0.01, 0, np.int8)      # ratio 1e-7 is below 2**-17


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_lane_matches_contract(dtype):
    """The pipelined RTL lane, one operand pair per cycle with gaps, against qadd_reference."""
    rng = np.random.default_rng(7 if dtype == np.int8 else 8)
    layers = []
    while len(layers) < 6:
        (sa, sb, sy), (za, zb, zy), (lo, hi) = _random_layer(rng, dtype, ties=len(layers) % 2 == 1)
        try:
            params = qadd_params(sa, za, sb, zb, sy, zy, dtype)
        except ValueError:
            continue
        pairs = [(int(x), int(y)) for x, y in rng.integers(lo, hi + 1, (60, 2))] + [(lo, hi), (hi, lo), (hi, hi)]
        layers.append((params, pairs))

    dut = QAddLane()
    results = []

    async def testbench(ctx):
        for params, pairs in layers:
            ctx.set(dut.params, params)
            got = []
            queue = list(pairs)
            for _ in range(4 * len(pairs) + QADD_LATENCY + 2):
                send = bool(queue) and rng.random() < 0.7
                if send:
                    a, b = queue.pop(0)
                    ctx.set(dut.a, a)
                    ctx.set(dut.b, b)
                ctx.set(dut.valid, send)
                _, _, out_valid, y = await ctx.tick().sample(dut.out_valid, dut.y)
                if out_valid:
                    got.append(y)
            ctx.set(dut.valid, 0)
            for _ in range(QADD_LATENCY + 1):
                _, _, out_valid, y = await ctx.tick().sample(dut.out_valid, dut.y)
                if out_valid:
                    got.append(y)
            results.append((params, pairs, got))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    for params, pairs, got in results:
        assert got == [qadd_reference(a, b, params) for a, b in pairs]
