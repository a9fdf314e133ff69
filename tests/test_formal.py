"""Formal properties (tessera.verif.formal): the quick subset of ``make formal`` at its reduced depths, each
property's cover beside it, the runner's own behaviour, and the regression test that a property's counterexample
became."""

import pytest
from amaranth.hdl import Assert, Fragment, Signal
from amaranth.sim import Simulator

from tessera.hw.host_link import PacketArbiter
from tessera.verif.formal import FormalError, FormalToolMissing, run, tool_paths
from tessera.verif.formal.catalog import select
from tessera.verif.formal.spec import FormalSpec

QUICK = select(quick=True)


@pytest.fixture(scope="module")
def formal_tools():
    try:
        return tool_paths()
    except FormalToolMissing as missing:
        pytest.skip(str(missing))


@pytest.mark.parametrize("check", QUICK, ids=[c.name for c in QUICK])
def test_property_holds_in_the_quick_subset(check, formal_tools, tmp_path):
    result = run(check.spec(), name=check.name, mode=check.mode, depth=check.depth, script=check.script,
                 root=tmp_path, timeout=300)
    assert result.status in ("proved", "bounded", "reached"), result


def test_every_property_has_its_cover_in_the_quick_subset():
    # a family is a property and its cover: "handshake.core", "queues.controller", "link.receiver", ...
    family = {c.name: ".".join(c.name.split(".")[:2]) for c in QUICK}
    covered = {family[c.name] for c in QUICK if c.mode == "cover"}
    assert {family[c.name] for c in QUICK if c.mode != "cover"} <= covered


class _CountsToThree(FormalSpec):
    """A counter that passes 3: the assertion that it stays below fails at step 3."""

    def build(self, m, platform):
        count = Signal(4)
        m.d.sync += count.eq(count + 1)
        m.d.comb += Assert(count < 3, "the count reached three")


class TestRunner:
    def test_a_failure_names_the_assertion_and_the_counterexample(self, formal_tools, tmp_path):
        with pytest.raises(FormalError, match=r"counts: bmc to depth 5: failed assertion at step 3: the count "
                                              r"reached three .*; counterexample: .*trace\.vcd"):
            run(_CountsToThree(), name="counts", mode="bmc", depth=5, root=tmp_path)

    def test_a_shallow_bmc_is_bounded(self, formal_tools, tmp_path):
        result = run(_CountsToThree(), name="counts", mode="bmc", depth=3, root=tmp_path)
        assert (result.status, result.outcome) == ("bounded", "bounded to 3 cycles")

    def test_an_unknown_mode_is_refused_by_name(self):
        spec = _CountsToThree()
        with pytest.raises(ValueError, match="mode: 'equiv' is not supported; accepted: prove, bmc, cover"):
            run(spec, name="counts", mode="equiv", depth=3)
        Fragment.get(spec, "formal")   # used after all: no warning that it never was


class TestPacketArbiterRegression:
    """The handshake property's counterexample on PacketArbiter: source 1 offers a word that host_out does not take,
    then source 0 becomes valid. The arbiter used to switch to source 0 (the lower index wins) while host_out's word
    was still waiting: a payload changed before ready."""

    def test_an_offered_word_stays_until_taken(self):
        dut = PacketArbiter(3)
        seen = []

        async def testbench(ctx):
            ctx.set(dut.sources[1].payload, {"data": 0x11, "last": 1})
            ctx.set(dut.sources[1].valid, 1)
            seen.append(ctx.get(dut.host_out.payload))
            await ctx.tick()
            ctx.set(dut.sources[0].payload, {"data": 0x22, "last": 1})
            ctx.set(dut.sources[0].valid, 1)
            seen.append(ctx.get(dut.host_out.payload))   # was 0x22: source 0 had taken host_out over
            ctx.set(dut.host_out.ready, 1)
            await ctx.tick()
            ctx.set(dut.sources[1].valid, 0)
            seen.append(ctx.get(dut.host_out.payload))

        sim = Simulator(dut)
        sim.add_clock(1e-6)
        sim.add_testbench(testbench)
        sim.run()
        assert seen == [0x11, 0x11, 0x22]


def test_quick_subset_checks_are_named_once():
    names = [c.name for c in select()]
    assert len(names) == len(set(names))


def test_select_keeps_only_the_quick_checks():
    assert all(c.quick is not None and c.depth == c.quick for c in QUICK)
    assert not any(c.name == "liveness.controller" for c in QUICK)

