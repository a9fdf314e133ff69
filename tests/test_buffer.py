"""The single-port buffer (hw.buffer): reads win the port, loads wait for a free cycle, nothing is lost."""

import random

from amaranth.lib import data
from amaranth.sim import Simulator

from tessera.hw.buffer import SinglePortBuffer
from tessera.hw.layouts import OPERAND


def _run(depth, lanes, cycles, read_rate, load_rate, seed):
    """Random reads and loads against a dictionary model; returns the reads checked, the loads accepted and the
    cycles a load waited (``reads``, ``loads``, ``waited``)."""
    layout = data.StructLayout({"addr": range(depth), "data": data.ArrayLayout(OPERAND, lanes)})
    dut = SinglePortBuffer(layout, depth)
    rng = random.Random(seed)
    model = {}
    counts = {"reads": 0, "loads": 0, "waited": 0}

    async def testbench(ctx):
        load = None
        for _ in range(cycles):
            if load is None and rng.random() < load_rate:
                load = (rng.randrange(depth), [rng.randrange(-128, 128) for _ in range(lanes)])
            read = rng.random() < read_rate
            # compute reads only words it loaded (the controller's rule), so a read of a word never written does
            # not compare against power-up contents
            read_addr = rng.choice(sorted(model)) if read and model else None
            ctx.set(dut.read_en, read_addr is not None)
            ctx.set(dut.read_addr, read_addr or 0)
            ctx.set(dut.load.valid, load is not None)
            if load is not None:
                ctx.set(dut.load.payload, {"addr": load[0], "data": load[1]})
            # a load is refused exactly in the cycles with a read
            assert ctx.get(dut.load.ready) == (read_addr is None)
            accepted = load is not None and read_addr is None
            await ctx.tick()
            if read_addr is not None:    # one cycle of read latency, as from a block RAM
                assert list(ctx.get(dut.read_data)) == model[read_addr]
                counts["reads"] += 1
            if accepted:
                model[load[0]] = load[1]
                counts["loads"] += 1
                load = None
            elif load is not None:
                counts["waited"] += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return counts


def test_reads_return_the_last_load_of_their_word_while_loads_wait_for_free_cycles():
    counts = _run(depth=16, lanes=3, cycles=2000, read_rate=0.6, load_rate=0.5, seed=1)
    assert counts["reads"] > 800 and counts["loads"] > 300 and counts["waited"] > 100


def test_read_data_holds_between_reads():
    """Compute takes the word the cycle after its read; a load in that cycle must not disturb it (an SPRAM's
    output is undefined after a write, so the port's read enable stays low while it writes)."""
    layout = data.StructLayout({"addr": range(4), "data": data.ArrayLayout(OPERAND, 1)})
    dut = SinglePortBuffer(layout, 4)

    async def testbench(ctx):
        ctx.set(dut.load.valid, 1)
        ctx.set(dut.load.payload, {"addr": 2, "data": [7]})
        await ctx.tick()
        ctx.set(dut.load.valid, 0)
        ctx.set(dut.read_en, 1)
        ctx.set(dut.read_addr, 2)
        await ctx.tick()
        ctx.set(dut.read_en, 0)
        ctx.set(dut.load.valid, 1)
        ctx.set(dut.load.payload, {"addr": 2, "data": [-5]})
        for _ in range(3):
            assert list(ctx.get(dut.read_data)) == [7]
            await ctx.tick()
        ctx.set(dut.load.valid, 0)
        ctx.set(dut.read_en, 1)
        await ctx.tick()
        assert list(ctx.get(dut.read_data)) == [-5]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
