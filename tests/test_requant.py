"""Simulation tests of hw.requant.Requantiser against a NumPy model of onnxruntime's rule."""

from fractions import Fraction
from math import isqrt

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from tessera.hw.requant import Requantiser
from tessera.hw.requant_serial import SerialRequantiser

# A local copy of the rule on purpose: the project golden model (verif/golden.py) is developed in
# parallel, and this block must be checked against the ONNX definition itself.


def _ref(acc, bias, scale_bits, zero_point):
    """onnxruntime's int8 requantisation, elementwise over NumPy arrays."""
    scale = np.asarray(scale_bits, dtype=np.uint32).view(np.float32)
    value = np.asarray(acc, dtype=np.int64) + np.asarray(bias, dtype=np.int64)
    value = ((value + 2**31) % 2**32 - 2**31).astype(np.int32)           # int32 wrap
    with np.errstate(over="ignore", invalid="ignore"):
        product = value.astype(np.float32) * scale                      # float32 RNE multiply
        return np.clip(np.rint(product) + zero_point, -128, 127).astype(np.int8)


def _f32_bits(x):
    return int(np.asarray(x, dtype=np.float32).view(np.uint32))


def _f32(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def _exact_rint(value, scale_bits):
    """round_half_even(value * scale) in exact rational arithmetic (``round`` ties to even)."""
    return round(Fraction(value) * Fraction(float(_f32(scale_bits))))


def _product_rounding_cases(rng, count):
    """(acc, scale_bits) whose float32 product rounds across a .5 boundary.

    For a random acc and a half-integer target h, scales next to h / acc put the exact product
    within a few float32 ulps of h; keep the ones where rounding the product to float32 first
    changes the integer. Targets near 2**8 have the coarsest ulp relative to 1/2, so hits are common.
    """
    cases = []
    while len(cases) < count:
        acc = int(rng.integers(-2**31, 2**31))
        target = (int(rng.integers(-400, 400)) + 0.5)
        center = np.float32(target / float(np.float32(acc))) if acc else np.float32(0)
        if not np.isfinite(center) or center == 0:
            continue
        for step in range(-4, 5):
            bits = _f32_bits(center) + step
            f32_product = np.float32(acc) * _f32(bits)
            if np.rint(f32_product) != _exact_rint(float(np.float32(acc)), bits):
                cases.append((acc, 0, bits))
    return cases[:count]


def _product_tie_cases(rng, count):
    """(acc, scale_bits) whose exact product lies exactly halfway between two float32 values.

    One of the two is the half-integer c/2, which the multiply's tie-to-even picks, so
    round_half_even then decides between floor and ceiling although the exact product is not a
    tie. Built from q = c * 2**(t+1) +/- 1 (25 bits, c odd) split into factors acc * b: the exact
    product acc * b * 2**-(t+2) = c/2 +/- 2**-(t+2) needs one bit more than float32 holds.
    """
    cases = []
    while len(cases) < count:
        t = int(rng.integers(14, 24))
        c = int(rng.integers(2**(23 - t), 2**(24 - t))) | 1
        q = c * 2**(t + 1) + int(rng.choice([-1, 1]))
        factor = next((a for a in range(3, isqrt(q) + 1, 2) if q % a == 0), None)
        if factor is None or q.bit_length() != 25:     # prime, or 2**24 - 1 (exact in float32)
            continue
        # Any power of two moved from the scale to acc keeps the product the same.
        j = int(rng.integers(0, 32 - factor.bit_length()))
        acc = (factor << j) * int(rng.choice([-1, 1]))
        scale = np.float32(q // factor) * np.float32(2.0 ** -(t + 2 + j)) * rng.choice([-1, 1])
        cases.append((acc, 0, _f32_bits(scale)))
    return cases


def _significand_carry_cases():
    """(acc, scale_bits) whose product rounds up to a power of two (significand carry-out).

    (2**23 + 1) * (2**24 - 2) = 2**47 - 2 rounds to 2**47; the exponent field puts the result at
    2**k for every k that reaches a different shift of the final rounding.
    """
    fraction = (2**24 - 2) & 0x7fffff
    return [(sign * (2**23 + 1), 0, ((103 + k) << 23) | fraction)
            for k in range(-2, 11) for sign in (1, -1)]


def _int_to_float_cases(rng, count):
    """(acc, scale_bits), acc > 2**24, where float32(acc) rounding changes the integer result."""
    cases = []
    while len(cases) < count:
        acc = int(rng.integers(2**24, 2**31)) * int(rng.choice([-1, 1]))
        target = int(rng.integers(-120, 120)) + 0.5
        bits = _f32_bits(target / acc)
        if _exact_rint(acc, bits) != _ref(acc, 0, bits, 0):
            cases.append((acc, 0, bits))
    return cases


def _directed_cases(rng):
    """(acc, bias, scale_bits) lane cases for every rule called out in the spec."""
    one, half = _f32_bits(1.0), _f32_bits(0.5)
    cases = []
    # Exact ties: odd/2 and odd/2**k land on .5, in both directions and either sign of scale.
    for acc in (1, 3, 5, 7, 253, 255, 257, -1, -3, -5, -255, -257):
        cases += [(acc, 0, half), (acc, 0, _f32_bits(-0.5))]
    for k in range(2, 8):
        cases += [(odd << (k - 1), 0, _f32_bits(2.0**-k)) for odd in (1, 3, 5, -1, -3)]
    # Zero scale (both zeros), zero accumulator, subnormal scales.
    cases += [(12345, 0, 0x00000000), (-7, 0, 0x80000000), (0, 0, one), (0, 0, 0x7f7fffff),
              (2**31 - 1, 0, 0x00000001), (-2**31, 0, 0x807fffff)]
    # int32 wrap of acc + bias.
    cases += [(2**31 - 1, 1, one), (-2**31, -1, one), (2**31 - 1, 2**31 - 1, one),
              (-2**31, -2**31, one), (2**31 - 1, 1, _f32_bits(-2.0**-30))]
    # Saturation both ways, overflow to inf, smallest normal scale (product underflow).
    cases += [(100, 0, _f32_bits(3.0)), (-100, 0, _f32_bits(3.0)), (100, 0, _f32_bits(-3.0)),
              (2**31 - 1, 0, 0x7f7fffff), (-2**31, 0, 0x7f7fffff), (3, 0, 0xff7fffff),
              (1, 0, 0x00800000), (-2**31, 0, 0x00800000), (2**31 - 1, 0, 0x0d7fffff)]
    # Infinite scale with a nonzero sum saturates (documented behaviour).
    cases += [(5, 0, 0x7f800000), (-5, 0, 0x7f800000), (5, 0, 0xff800000)]
    # Around the saturation and rounding thresholds, where the float-to-int shift is at its ends.
    for target in (0.5, 0.25, 0.75, 127.5, 128.5, 255.5, 256.5, 383.5, 384.5, 511.5, 512.0, 512.5):
        for acc in (3, 1000, -77777, 2**31 - 1):
            cases.append((acc, 0, _f32_bits(target / acc)))
    # Values above 2**24 that float32 cannot represent, with scales exposing the lost bits.
    cases += [(2**24 + 1, 0, _f32_bits(2.0**-17)), (2**24 + 3, 0, _f32_bits(2.0**-17)),
              (2**25 + 6, 0, _f32_bits(2.0**-18)), (2**31 - 65, 0, _f32_bits(2.0**-24)),
              (2**31 - 64, 0, _f32_bits(2.0**-24)), (-(2**24 + 1), -2, _f32_bits(2.0**-17))]
    # int32 -> float32 rounding carrying into the exponent.
    cases += [(2**25 - 1, 0, _f32_bits(2.0**-22)), (-(2**31 - 1), 0, _f32_bits(2.0**-24))]
    cases += _significand_carry_cases()
    cases += _int_to_float_cases(rng, 24)
    cases += _product_rounding_cases(rng, 48)
    cases += _product_tie_cases(rng, 48)
    return cases


def _random_cases(rng, count):
    """(acc, bias, scale_bits): int32 operands, scales of either sign, log-uniform in 2**-40..2**10.

    Half the sums are small (|acc| < 2**20); a third of the scales are drawn relative to the sum so
    the product lands in 2**-2..2**9, where rounding decides the result rather than saturation.
    """
    acc = rng.integers(-2**31, 2**31, count)
    bias = rng.integers(-2**31, 2**31, count)
    small = rng.random(count) < 0.5
    acc[small] = rng.integers(-2**20, 2**20, int(small.sum()))
    bias[small] = rng.integers(-2**10, 2**10, int(small.sum()))
    magnitude = 2.0 ** rng.uniform(-40, 10, count)
    aimed = rng.random(count) < 1 / 3
    total = np.abs(((acc + bias + 2**31) % 2**32 - 2**31).astype(np.float64)) + 1
    magnitude[aimed] = 2.0 ** rng.uniform(-2, 9, int(aimed.sum())) / total[aimed]
    scale = (magnitude * rng.choice([-1.0, 1.0], count)).astype(np.float32)
    scale[rng.random(count) < 0.03] = 0.0
    return list(zip(acc.tolist(), bias.tolist(), scale.view(np.uint32).tolist(), strict=True))


def _vectors(lane_cases, lanes, rng):
    """Pack lane cases into vectors; zero points cycle through the extremes and random values."""
    vectors = []
    for start in range(0, len(lane_cases), lanes):
        chunk = lane_cases[start:start + lanes]
        chunk += [(0, 0, 0)] * (lanes - len(chunk))
        acc, bias, scale = (list(column) for column in zip(*chunk, strict=True))
        zero_point = [-128, 127, 0, int(rng.integers(-128, 128))][(start // lanes) % 4]
        vectors.append({"acc": acc, "bias": bias, "scale": scale, "zero_point": zero_point})
    return vectors


def _expected(vector):
    return _ref(vector["acc"], vector["bias"], vector["scale"], vector["zero_point"]).tolist()


class TestRequantiser:
    @pytest.mark.parametrize("lanes", [0, 65, -1, 2.0, True, "4"])
    def test_rejects_bad_lanes(self, lanes):
        with pytest.raises(ValueError, match="`lanes`"):
            Requantiser(lanes=lanes)

    def test_directed_cases_exercise_both_float_roundings(self):
        rng = np.random.default_rng(1)
        changed = 0
        for acc, _, bits in _product_tie_cases(rng, 32):
            f32_product = np.float32(acc) * _f32(bits)
            exact = Fraction(acc) * Fraction(float(_f32(bits)))
            assert (f32_product * 2) % 2 == 1 and (exact * 2).denominator != 1
            changed += int(np.rint(f32_product) != round(exact))
        assert changed >= 8
        for acc, _, bits in _significand_carry_cases():
            f32_product = abs(np.float32(acc) * _f32(bits))
            assert f32_product == 2.0 ** np.round(np.log2(f32_product))
            assert Fraction(acc) * Fraction(float(_f32(bits))) != Fraction(float(f32_product))
        for acc, _, bits in _product_rounding_cases(rng, 8):
            assert np.rint(np.float32(acc) * _f32(bits)) != _exact_rint(float(np.float32(acc)), bits)
        for acc, _, bits in _int_to_float_cases(rng, 8):
            assert abs(acc) > 2**24
            assert _exact_rint(acc, bits) != _ref(acc, 0, bits, 0)

    @pytest.mark.parametrize("lanes", [1, 3, 8])
    @pytest.mark.parametrize("stalls", [False, True], ids=["no_stalls", "stalls"])
    def test_matches_reference(self, lanes, stalls):
        rng = np.random.default_rng([lanes, stalls])
        lane_cases = _directed_cases(rng) + _random_cases(rng, 2000 if stalls else 500)
        vectors = _vectors(lane_cases, lanes, rng)
        idle, backpressure = (0.3, 0.3) if stalls else (0.0, 0.0)
        received = self._run(Requantiser(lanes=lanes), vectors, rng, idle=idle, backpressure=backpressure)
        assert len(received) == len(vectors)
        for index, (vector, got) in enumerate(zip(vectors, received, strict=True)):
            assert got == _expected(vector), f"vector {index}: {vector}"

    @pytest.mark.parametrize("lanes", [1, 3])
    def test_latency_and_full_throughput(self, lanes):
        dut = Requantiser(lanes=lanes)
        rng = np.random.default_rng(7)
        vectors = _vectors(_random_cases(rng, 20 * lanes), lanes, rng)
        accepted, produced = self._run_unstalled(dut, vectors)
        # with the output always ready, a vector is taken every cycle
        assert accepted == list(range(len(vectors)))
        # o.valid observed in cycle c means it rose after the edge ending cycle c - 1.
        assert [cycle for cycle, _ in produced] == [c + dut.latency for c in accepted]
        assert [payload for _, payload in produced] == [_expected(v) for v in vectors]

    def test_converts_to_verilog(self):
        text = verilog.convert(Requantiser(lanes=4), emit_src=False)
        assert "module" in text

    @staticmethod
    def _run_unstalled(dut, vectors):
        """Offer ``vectors`` back to back with the output always ready: the cycles each was taken in, and the
        cycle and payload of each result."""
        accepted, produced = [], []

        async def testbench(ctx):
            ctx.set(dut.o.ready, 1)
            cycle, pending = 0, list(vectors)
            while len(produced) < len(vectors):
                ctx.set(dut.i.valid, bool(pending))
                if pending:
                    ctx.set(dut.i.payload, pending[0])
                _, _, i_valid, i_ready, o_valid, o_payload = \
                    await ctx.tick().sample(dut.i.valid, dut.i.ready, dut.o.valid, dut.o.payload)
                if i_valid and i_ready:
                    accepted.append(cycle)
                    pending.pop(0)
                if o_valid:
                    produced.append((cycle, [o_payload[n] for n in range(dut.lanes)]))
                cycle += 1
                assert cycle < 20 * len(vectors) * getattr(dut, "beats", 1) + 100, "pipeline stopped producing"

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(testbench)
        sim.run()
        return accepted, produced

    @staticmethod
    def _run(dut, vectors, rng, *, idle, backpressure):
        """Drive ``vectors`` with random idle cycles, collect outputs under random backpressure."""
        lanes = dut.lanes
        received = []
        # Decide the pause patterns up front so the run is reproducible from the seed.
        idle_cycles = rng.geometric(1 - idle, len(vectors)) - 1 if idle else [0] * len(vectors)
        beats = getattr(dut, "beats", 1)     # cycles a vector takes at best (a SerialRequantiser's beats)
        ready_pattern = (rng.random(16 * beats * len(vectors) + 64) >= backpressure).tolist()

        async def driver(ctx):
            for vector, pause in zip(vectors, idle_cycles, strict=True):
                ctx.set(dut.i.valid, 0)
                for _ in range(int(pause)):
                    await ctx.tick()
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, vector)
                await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

        async def monitor(ctx):
            held = None     # payload offered but not taken in the previous cycle
            for ready in ready_pattern:
                if len(received) == len(vectors):
                    break
                ctx.set(dut.o.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
                payload = [payload[n] for n in range(lanes)]
                if held is not None:
                    assert valid and payload == held, "o changed while valid and not ready"
                held = None if ready or not valid else payload
                if valid and ready:
                    received.append(payload)
            # A few more cycles with ready high catch any duplicated or spurious vector.
            ctx.set(dut.o.ready, 1)
            for _ in range(dut.latency + 2):
                _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
                if valid:
                    received.append([payload[n] for n in range(lanes)])

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(driver)
        sim.add_testbench(monitor)
        sim.run()
        return received


class TestSerialRequantiser:
    """`SerialRequantiser`: rows through fewer requantiser lanes, several beats each."""

    @pytest.mark.parametrize("units", [0, 8, 3, 16, 2.0, True])
    def test_rejects_units_that_do_not_divide_the_lanes(self, units):
        with pytest.raises(ValueError, match="`units` must be a divisor of lanes=8"):
            SerialRequantiser(lanes=8, units=units)

    @pytest.mark.parametrize(("lanes", "units"), [(4, 1), (6, 3), (8, 2)])
    @pytest.mark.parametrize("stalls", [False, True], ids=["no_stalls", "stalls"])
    def test_matches_reference(self, lanes, units, stalls):
        rng = np.random.default_rng([lanes, units, stalls])
        lane_cases = _directed_cases(rng) + _random_cases(rng, 1000 if stalls else 300)
        vectors = _vectors(lane_cases, lanes, rng)
        idle, backpressure = (0.3, 0.3) if stalls else (0.0, 0.0)
        dut = SerialRequantiser(lanes=lanes, units=units)
        received = TestRequantiser._run(dut, vectors, rng, idle=idle, backpressure=backpressure)
        assert len(received) == len(vectors)
        for index, (vector, got) in enumerate(zip(vectors, received, strict=True)):
            assert got == _expected(vector), f"vector {index}: {vector}"

    @pytest.mark.parametrize(("lanes", "units"), [(4, 1), (8, 2)])
    def test_takes_a_vector_every_beats_cycles(self, lanes, units):
        dut = SerialRequantiser(lanes=lanes, units=units)
        rng = np.random.default_rng(11)
        vectors = _vectors(_random_cases(rng, 12 * lanes), lanes, rng)
        accepted, produced = TestRequantiser._run_unstalled(dut, vectors)
        # each vector is taken with its last beat, one beat per cycle
        assert accepted == [dut.beats * (k + 1) - 1 for k in range(len(vectors))]
        assert [cycle for cycle, _ in produced] == [c + dut.latency for c in accepted]
        assert [payload for _, payload in produced] == [_expected(v) for v in vectors]
