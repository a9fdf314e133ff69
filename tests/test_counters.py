"""The performance counters read as plain counters, although their increments are registered."""

import numpy as np
from amaranth.sim import Simulator

from tessera.hw.counters import PerfCounters


def test_values_count_every_increment_at_once_and_clear_drops_the_cycles_increments():
    counters = PerfCounters({"a": 1, "b": 3})
    rng = np.random.default_rng(4)
    steps = [(int(rng.integers(2)), int(rng.integers(8)), bool(rng.random() < 0.05)) for _ in range(400)]
    seen = []

    async def bench(ctx):
        expected = [0, 0]
        for a, b, clear in steps:
            values = [ctx.get(counters.values[i]) for i in range(2)]
            seen.append(values == expected)
            ctx.set(counters.increment.a, a)
            ctx.set(counters.increment.b, b)
            ctx.set(counters.clear, clear)
            await ctx.tick()
            expected = [0, 0] if clear else [expected[0] + a, expected[1] + b]

    sim = Simulator(counters)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(seen) == len(steps) and all(seen)
    assert sum(clear for *_, clear in steps) >= 5
