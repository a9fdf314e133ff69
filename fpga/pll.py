"""PLLs for the board tops, configured by the vendor-neutral calculators that ship with YoWASP (ecppll, icepll).

The calculators know each family's divider ranges and VCO limits; this module runs them, reads the dividers
and the frequency they reach, and instantiates the primitive with them.
"""

import dataclasses
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth.hdl import ClockSignal, Elaboratable, Instance, Module, Signal
from amaranth.lib.cdc import ResetSynchronizer

__all__ = ["PLLPlan", "plan_ecp5_pll", "plan_ice40_pll", "ECP5PLL", "ICE40PLL"]


@dataclasses.dataclass(frozen=True)
class PLLPlan:
    """Dividers for one PLL and the output frequency they give (``params``: primitive parameter -> value)."""
    input_mhz: float
    output_mhz: float
    params: dict


def _run(command, cwd):
    # The YoWASP entry points sit beside the interpreter in the virtual environment, which may not be on PATH.
    local = Path(sys.executable).parent / command[0]
    command = [str(local) if local.exists() else command[0], *command[1:]]
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {run.stdout[-1000:]}{run.stderr[-1000:]}")
    return run.stdout


def plan_ecp5_pll(input_mhz, output_mhz):
    """EHXPLLL dividers for ``output_mhz`` (or the nearest it can reach) from ``input_mhz``."""
    with tempfile.TemporaryDirectory() as folder:
        report = _run(["yowasp-ecppll", "-i", f"{input_mhz:g}", "-o", f"{output_mhz:g}", "-f", "pll.v"], folder)
        verilog = (Path(folder) / "pll.v").read_text()
    achieved = float(re.search(r"clkout0 frequency:\s*([\d.]+)", report).group(1))
    params = {name: (int(value) if value.isdigit() else value.strip('"'))
              for name, value in re.findall(r"\.(\w+)\(([^()]*)\)", verilog.split(") pll_i")[0])}
    return PLLPlan(input_mhz, achieved, params)


def plan_ice40_pll(input_mhz, output_mhz):
    """SB_PLL40 dividers for ``output_mhz`` (or the nearest it can reach) from ``input_mhz``."""
    with tempfile.TemporaryDirectory() as folder:
        report = _run(["yowasp-icepll", "-i", f"{input_mhz:g}", "-o", f"{output_mhz:g}"], folder)
    field = {name: int(value) for name, value in re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE):\s*(\d+)", report, re.M)}
    achieved = float(re.search(r"F_PLLOUT:\s*([\d.]+)", report).group(1))
    return PLLPlan(input_mhz, achieved, {"FEEDBACK_PATH": "SIMPLE", **field})


class ECP5PLL(Elaboratable):
    """An EHXPLLL from ``clk_in`` to the ``sync`` domain, held in reset until it locks."""

    def __init__(self, plan, clk_in):
        self.plan, self.clk_in = plan, clk_in

    def elaborate(self, platform):
        m = Module()
        clk_out, locked = Signal(name="core_clk"), Signal(name="pll_locked")
        params = {f"p_{name}": value for name, value in self.plan.params.items()}
        m.submodules.pll = Instance(
            "EHXPLLL", a_FREQUENCY_PIN_CLKI=f"{self.plan.input_mhz:g}",
            a_FREQUENCY_PIN_CLKOP=f"{self.plan.output_mhz:g}", a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
            a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2", **params,
            i_RST=0, i_STDBY=0, i_CLKI=self.clk_in, o_CLKOP=clk_out, i_CLKFB=clk_out, i_PHASESEL0=0,
            i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_LOCK=locked)
        _sync_domain(m, clk_out, locked)
        return m


class ICE40PLL(Elaboratable):
    """An SB_PLL40_PAD fed straight from the oscillator's pin ``clk_in`` (an I/O port: on the iCEBreaker the
    oscillator's pin is the PLL's own input, so no input buffer may sit in between), to the ``sync`` domain,
    held in reset until it locks."""

    def __init__(self, plan, clk_in):
        self.plan, self.clk_in = plan, clk_in

    def elaborate(self, platform):
        m = Module()
        clk_out, locked = Signal(name="core_clk"), Signal(name="pll_locked")
        params = {f"p_{name}": value for name, value in self.plan.params.items()}
        m.submodules.pll = Instance("SB_PLL40_PAD", **params, i_RESETB=1, i_BYPASS=0,
                                    i_PACKAGEPIN=self.clk_in, o_PLLOUTGLOBAL=clk_out, o_LOCK=locked)
        _sync_domain(m, clk_out, locked)
        return m


def _sync_domain(m, clk_out, locked):
    # drives the "sync" domain that the top defines (Amaranth 0.6 wants a domain defined above its users)
    m.d.comb += ClockSignal("sync").eq(clk_out)
    m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
