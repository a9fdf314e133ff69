"""cocotb testbench of the compute core (``tessera_core``): random requantised GEMMs against the golden model.

The core runs the device compiler's own programs (``compile_gemm``), cut into the core's load and command
transactions by :func:`~tessera.verif.core_model.core_passes`, so the core and the whole device are tested on the
same tiling. The pytest side (``tests/test_core_rtl.py``) passes the job in the environment variable ``TESSERA_TB``
as JSON::

    {"config": {...}, "seed": 1, "problems": [[M, K, N], ...], "stall": 0.3, "backpressure": 0.3}
"""

import random

import cocotb
import numpy as np

from tessera.gen.packing import pack, pack_array, unpack_array
from tessera.hw.layouts import act_load_layout, command_layout, param_load_layout, weight_load_layout
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import compile_gemm
from tessera.verif.cases import random_gemm
from tessera.verif.core_model import core_passes, result_row_count, run_passes
from tessera.verif.streams import StreamEngine, StreamSink, StreamSource
from tessera.verif.tb_common import clock_and_reset, read_job


class CoreTestbench:
    """Drives every stream of the core with random stalls; collects results under random backpressure."""

    def __init__(self, dut, cfg, rng, *, stall, backpressure):
        self.dut, self.cfg = dut, cfg
        self.act = StreamSource(dut, "act_load", rng, stall=stall)
        self.weight = StreamSource(dut, "weight_load", rng, stall=stall)
        self.param = StreamSource(dut, "param_load", rng, stall=stall)
        self.cmd = StreamSource(dut, "cmd", rng, stall=stall)
        self.result = StreamSink(dut, "result", rng, backpressure=backpressure)
        self.engine = StreamEngine(dut.clk, [self.act, self.weight, self.param, self.cmd, self.result])
        self.layouts = {name: f(cfg) for name, f in (("act", act_load_layout), ("weight", weight_load_layout),
                                                     ("param", param_load_layout), ("cmd", command_layout))}

    async def reset(self):
        await clock_and_reset(self.dut)

    def _load_beats(self, p):
        lay = self.layouts
        # Vectors are packed with pack_array: the per-element generic packer is too slow for wide words.
        self.act.send(pack(lay["act"], {"addr": a}) | pack_array(v, 8) << lay["act"]["data"].offset
                      for a, v in p.act_loads)
        self.weight.send(pack(lay["weight"], {"addr": a}) | pack_array(v, 8) << lay["weight"]["data"].offset
                         for a, v in p.weight_loads)
        data = lay["param"]["data"]
        bias_at = data.offset + data.shape["bias"].offset
        scale_at = data.offset + data.shape["scale"].offset
        self.param.send(pack(lay["param"], {"addr": a}) | pack_array(b, 32) << bias_at
                        | pack_array(s, 32) << scale_at for a, b, s in p.param_loads)

    async def run(self, passes, *, max_cycles=2_000_000):
        """Run ``passes`` (:func:`~tessera.verif.core_model.core_passes`) one after another; return each command's
        result rows (lists of ``cols`` ints)."""
        cols = self.cfg.cols
        first = expected = len(self.result.received)
        for i, p in enumerate(passes):
            self._load_beats(p)
            await self.engine.run_until(lambda: self.act.empty and self.weight.empty and self.param.empty,
                                        max_cycles=max_cycles, what=f"loads of pass {i}")
            self.cmd.send(pack(self.layouts["cmd"], c) for c in p.commands)
            expected += sum(map(result_row_count, p.commands))
            await self.engine.run_until(
                lambda n=expected: self.cmd.empty and len(self.result.received) >= n and self.dut.idle.value,
                max_cycles=max_cycles, what=f"commands of pass {i}")
        if len(self.result.received) != expected:
            raise AssertionError(f"{len(self.result.received)} result rows, expected {expected}")
        rows = iter(unpack_array(bits, 8, cols) for bits in self.result.received[first:])
        return [[next(rows) for _ in range(result_row_count(c))] for p in passes for c in p.commands]


def _report_mismatch(y, expected):
    bad = np.argwhere(y != expected)
    first = ", ".join(f"[{i},{j}] got {y[i, j]} want {expected[i, j]}" for i, j in bad[:5])
    return f"{len(bad)} of {y.size} outputs differ: {first}"


async def _random_problems(dut):
    """The job's configuration and a reset testbench (its stalls and backpressure), then each random problem's
    operands: ``(cfg, tb, [(m, k, n), (x, w, bias, scale, y_zp)], ...)``."""
    job, cfg = read_job()
    rng = np.random.default_rng(job["seed"])
    tb = CoreTestbench(dut, cfg, random.Random(job["seed"]), stall=job["stall"], backpressure=job["backpressure"])
    await tb.reset()
    return cfg, tb, [((m, k, n), random_gemm(rng, m, k, n)) for m, k, n in job["problems"]]


@cocotb.test()
async def gemm_random(dut):
    """Random GEMM shapes and operands, with random stalls and backpressure, bit-exact against the golden model."""
    cfg, tb, problems = await _random_problems(dut)
    for (m, k, n), (x, w, bias, scale, y_zp) in problems:
        program = compile_gemm(cfg, x, w, bias, scale, y_zp)
        passes = core_passes(cfg, program.words)
        y = program.assemble(await tb.run(passes), cfg.cols)
        expected = golden.gemm_hw(x, w, bias, scale, y_zp, cfg.multiplier)
        assert np.array_equal(y, expected), f"GEMM {m}x{k}x{n}: " + _report_mismatch(y, expected)
        dut._log.info("GEMM %dx%dx%d on %s %dx%d: %d passes, bit-exact", m, k, n, cfg.dataflow, cfg.rows,
                      cfg.cols, len(passes))


@cocotb.test()
async def gemm_reduce(dut):
    """The same random GEMMs with every command a ``reduce`` one (ws): each command's vectors sum into one row,
    bit-exact against the core's model, under the same stalls and backpressure."""
    cfg, tb, problems = await _random_problems(dut)
    for (m, k, n), operands in problems:
        passes = core_passes(cfg, compile_gemm(cfg, *operands).words)
        for p in passes:
            p.commands = [{**c, "reduce": 1} for c in p.commands]
        got, expected = await tb.run(passes), run_passes(cfg, passes)
        assert len(got) == len(expected)
        for i, (rows, want) in enumerate(zip(got, expected, strict=True)):
            assert np.array_equal(np.array(rows, np.int8).reshape(want.shape), want), \
                f"reduce GEMM {m}x{k}x{n}, command {i}: " + _report_mismatch(np.array(rows, np.int8), want)
        dut._log.info("reduce GEMM %dx%dx%d on %s %dx%d: %d commands, bit-exact", m, k, n, cfg.dataflow, cfg.rows,
                      cfg.cols, len(got))
