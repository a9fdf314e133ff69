"""The boards Tessera builds for: their amaranth-boards platforms, clocks, UART rates and default arrays.

`BoardTop` is the whole FPGA: a PLL from the board's oscillator to the core clock, the board's FTDI UART pins,
and the `~tessera.fpga.top.LinkedDevice` (link + accelerator).
"""

import dataclasses

from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.lib import io

from tessera.gen.config import AcceleratorConfig

from .pll import ECP5PLL, ICE40PLL, plan_ecp5_pll, plan_ice40_pll
from .top import LinkedDevice, LinkSettings

__all__ = ["Board", "BOARDS", "BoardTop", "board_config"]


@dataclasses.dataclass(frozen=True)
class Board:
    """One board variant.

    Attributes
    ----------
    name : str
        As on the command line (``ulx3s``, ``ulx3s-45f``, ``icebreaker``).
    platform : str
        amaranth-boards class, ``module:Class``.
    family : str
        ``ecp5`` or ``ice40``.
    oscillator : str, oscillator_mhz : float
        Clock resource feeding the PLL.
    baud : int
        UART rate the FTDI chip is driven at (FT231X: 3 Mbaud; FT2232H: 12 MHz / n).
    defaults : dict
        Configuration fields for this board when the user names none.
    """

    name: str
    platform: str
    family: str
    oscillator: str
    oscillator_mhz: float
    baud: int
    defaults: dict

    def make_platform(self):
        import importlib
        module, cls = self.platform.split(":")
        return getattr(importlib.import_module(module), cls)()

    def plan_pll(self, mhz):
        """The PLL setting for the fastest core clock at or below ``mhz`` that is a whole number of UART bit
        times (within 0.5 %, so both ends of the link agree on the bit rate)."""
        plan = plan_ecp5_pll if self.family == "ecp5" else plan_ice40_pll
        step = self.baud / 1e6
        for multiple in range(int(mhz / step), 3, -1):
            try:
                candidate = plan(self.oscillator_mhz, multiple * step)
            except RuntimeError:    # icepll: outside the PLL's output range
                continue
            if abs(candidate.output_mhz / (multiple * step) - 1) < 0.005:
                return candidate
        raise ValueError(f"no PLL setting of the {self.name} gives a multiple of {step:g} MHz up to {mhz:g} MHz")

    def lowest_clock_mhz(self):
        """The slowest core clock :meth:`plan_pll` can set (the PLL's output range starts well above zero)."""
        step = self.baud / 1e6
        for multiple in range(4, 400):
            try:
                return self.plan_pll(multiple * step).output_mhz
            except ValueError:
                continue
        raise ValueError(f"no PLL setting of the {self.name} gives a core clock up to {400 * step:g} MHz")


# Buffers: ECP5 DP16KD blocks are 18 kbit (208 on the 85F); the UP5K has 30 4-kbit EBRs and 4 SPRAMs.
# The ULX3S default keeps whole models on chip (the MLPerf Tiny issue): 16x8 WS with the vector unit, program memory
# and buffers sized for ResNet-8, the DS-CNN and MobileNet (act 3,072 words for MobileNet's early maps, weight
# 28,672, param 512, vector 8,192, program 4,096; 193 of the 208 DP16KD). The autoencoder's weights would need 4,608
# more words (205 DP16KD with the smaller act, param and program buffers; that build missed 60 MHz). Its
# 128 PEs and 4 requantiser lanes (two blocks each) take 136 of the ECP5-85F's 156 MULT18X18D, so no PE row
# multiplies in LUTs; a 16x16 array with the same units needed 7 LUT rows (84% of the LUTs) and did not route. A
# global pool reads its map by block where cols divides rows (tessera.sw_driver.resident), so 16x8 holds them whole.
# Builds route because the accelerator's reset rides a global clock network and the DSP blocks are floorplanned
# (fpga/floorplan.py). See docs/fpga.md for the measured clock and resources.
_ULX3S_DEFAULTS = dict(rows=16, cols=8, requant_lanes=4, clock_mhz=60.0, act_depth=3072, weight_depth=28672,
                       acc_depth=512, param_depth=512, vec_depth=8192, program_depth=4096)
# `ulx3s-peak`: the ULX3S-85F's peak-throughput configuration (the FPGA issue's floor, VTA's 51.2 GOPS), the
# default before the MLPerf Tiny issue: 20x16 WS at 81.25 MHz, 52.0 GOPS, the last 11 PE rows multiplying in LUTs,
# no vector unit and no program memory, so no model stays on chip and every layer's weights cross the link.
_ULX3S_PEAK = dict(rows=20, cols=16, requant_lanes=4, clock_mhz=81.0, act_depth=1024, weight_depth=1024,
                   acc_depth=256, param_depth=32, vec_depth=0, program_depth=0)
_SMALL_ECP5 = dict(rows=4, cols=4, clock_mhz=75.0, act_depth=1024, weight_depth=1024, acc_depth=256,
                   param_depth=32, program_depth=0)
# The UP5K's 5,280 logic cells hold a 1x1 array without counters or the vector unit; iCE40 builds leave out the
# timing-only registers (hw.pipeline.timing_registers). Its activation and weight buffers are single-port, in two
# of the four SPRAMs (hw.buffer). Deeper buffers cost logic cells in their address arithmetic (the sliding
# window's above all), not RAM: 16 words each fit; with 32 (98-99% of the cells) nextpnr's placer had not finished
# after 12 minutes; 1,024 need 112% (measured; see docs/fpga.md).
_ICEBREAKER_DEFAULTS = dict(rows=1, cols=1, clock_mhz=24.0, act_depth=16, weight_depth=16, acc_depth=16,
                            param_depth=1, counters=False, vec_depth=0,
                            single_port_buffers=True, program_depth=0)

BOARDS = {b.name: b for b in [
    Board("ulx3s", "amaranth_boards.ulx3s:ULX3S_85F_Platform", "ecp5", "clk25", 25.0, 3_000_000, _ULX3S_DEFAULTS),
    Board("ulx3s-85f", "amaranth_boards.ulx3s:ULX3S_85F_Platform", "ecp5", "clk25", 25.0, 3_000_000,
          _ULX3S_DEFAULTS),
    Board("ulx3s-peak", "amaranth_boards.ulx3s:ULX3S_85F_Platform", "ecp5", "clk25", 25.0, 3_000_000, _ULX3S_PEAK),
    Board("ulx3s-45f", "amaranth_boards.ulx3s:ULX3S_45F_Platform", "ecp5", "clk25", 25.0, 3_000_000, _SMALL_ECP5),
    Board("ulx3s-25f", "amaranth_boards.ulx3s:ULX3S_25F_Platform", "ecp5", "clk25", 25.0, 3_000_000,
          dict(_SMALL_ECP5, rows=2, cols=2)),
    Board("ulx3s-12f", "amaranth_boards.ulx3s:ULX3S_12F_Platform", "ecp5", "clk25", 25.0, 3_000_000,
          dict(_SMALL_ECP5, rows=2, cols=2)),
    Board("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", "ice40", "clk12", 12.0, 3_000_000,
          _ICEBREAKER_DEFAULTS),
]}

#: The accelerator's own link time-out must outlast the host link's retries (USB latency, resends): ~0.3 s.
_BOARD_LINK_TIMEOUT = 1 << 24


def board_config(board, cfg=None, **overrides):
    """The configuration to build: the board's defaults, or ``cfg``, with ``overrides`` (``None`` ignored)."""
    base = cfg if cfg is not None else AcceleratorConfig(**board.defaults)
    return base.replace(link_timeout=_BOARD_LINK_TIMEOUT, **overrides)


def board_configs():
    """``{board name: configuration}``: each board's default configuration as ``tessera bitstream`` builds it, its
    clock the one that build meets. Registered for ``--board`` on the driver's commands (run, compile, demo), which
    sit below this layer (pyproject.toml, ``tessera.boards``)."""
    return {name: board_config(board) for name, board in BOARDS.items()}


class BoardTop(Elaboratable):
    """PLL, UART pins and the linked accelerator for ``board`` (see `Board`)."""

    def __init__(self, board, cfg, pll_plan):
        self.board, self.cfg, self.pll_plan = board, cfg, pll_plan
        self.link = LinkSettings(clock_hz=pll_plan.output_mhz * 1e6, baud=board.baud)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync")     # clocked and reset by the PLL
        oscillator = platform.request(self.board.oscillator, dir="-")
        if self.board.family == "ecp5":
            m.submodules.oscillator = clock_in = io.Buffer("i", oscillator)
            m.submodules.pll = ECP5PLL(self.pll_plan, clock_in.i)
        else:
            m.submodules.pll = ICE40PLL(self.pll_plan, oscillator.io)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.submodules.device = device = LinkedDevice(self.cfg, self.link)
        m.d.comb += [device.uart_rx.eq(rx.i), tx.o.eq(device.uart_tx)]
        return m
