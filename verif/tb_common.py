"""What every Tessera cocotb testbench does the same way: read its job, start the clock, reset."""

import json
import os

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from tessera.gen.config import AcceleratorConfig

__all__ = ["read_job", "clock_and_reset"]


def read_job():
    """The job the pytest side put in ``TESSERA_TB`` (JSON) and the configuration it names."""
    job = json.loads(os.environ["TESSERA_TB"])
    return job, AcceleratorConfig.from_dict(job["config"])


async def clock_and_reset(dut, cycles=3):
    """Start a 100 MHz clock on ``dut.clk`` and hold ``dut.rst`` (synchronous, active high) for ``cycles``."""
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
