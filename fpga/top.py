"""The FPGA's logic without board specifics: the accelerator behind the UART host link.

`LinkedDevice` is what both a bitstream and the simulated board run; the board tops in :mod:`tessera.fpga.boards` add
only clocking and pins around it.
"""

import dataclasses

from amaranth.hdl import ClockDomain, ClockSignal, Const, DomainRenamer, Instance, Module, ResetSignal, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from tessera.hw.accelerator import Accelerator
from tessera.hw.pipeline import fpga_family, timing_registers

from .link import HostLink

__all__ = ["LinkSettings", "LinkedDevice", "BOARD_TOPLEVEL"]

_QUEUE = 3   # a buffered FIFO of depth 2 has a zero-width address, which fails the lint gate

#: Verilog name of `LinkedDevice` in simulation builds.
BOARD_TOPLEVEL = "tessera_board"


@dataclasses.dataclass(frozen=True)
class LinkSettings:
    """How the link is clocked and buffered.

    Attributes
    ----------
    clock_hz : float
        Core clock.
    baud : int
        UART bit rate; ``clock_hz / baud`` must be (close to) a whole number of cycles, at least 4.
    depth : int
        Words in each of the link's two ring buffers.
    retransmit_ms : float
        Silence after which the device resends unacknowledged frames (covers the host's USB latency).
    """

    clock_hz: float
    baud: int
    depth: int = 512
    retransmit_ms: float = 20.0

    @property
    def divisor(self):
        return round(self.clock_hz / self.baud)

    @property
    def baud_error(self):
        """Relative error of the real bit rate (``clock_hz / divisor``) against ``baud``."""
        return self.clock_hz / self.divisor / self.baud - 1

    @property
    def retransmit_cycles(self):
        return max(1, round(self.retransmit_ms * 1e-3 * self.clock_hz))


class LinkedDevice(wiring.Component):
    """An `~tessera.hw.accelerator.Accelerator` reached over a UART through the framed link.

    A RESET frame resets the accelerator (not the UART), so a host can start a session on a board in any state.

    Attributes
    ----------
    uart_rx : In(1)
        Serial data from the host.
    uart_tx : Out(1)
        Serial data to the host.
    link_bad_frames, link_resent_frames : Out(16)
        The link's counters of frames it dropped and of resends (observed by the simulated board's harness;
        a board leaves them unconnected).
    """

    uart_rx: In(1, init=1)
    uart_tx: Out(1, init=1)
    link_bad_frames: Out(16)
    link_resent_frames: Out(16)

    def __init__(self, cfg, link):
        self.cfg = cfg
        self.link = link
        if abs(link.baud_error) > 0.02:
            raise ValueError(f"baud: {link.baud} is {link.baud_error:+.1%} off at a {link.clock_hz / 1e6:g} MHz "
                             f"clock; accepted: a rate within 2 % of clock / an integer")
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        link = self.link
        m.submodules.link = host_link = HostLink(divisor=link.divisor, depth=link.depth,
                                                 retransmit_timeout=link.retransmit_cycles)
        # The accelerator (and the queues beside it) run in a domain of their own, on the same clock, whose only
        # reset is the session reset: a RESET frame, or the board's own reset, which holds this register at its
        # init value. It leaves the link's frame checks through that register (the host waits for the RESET
        # frame's acknowledgement before it sends more).
        session_reset = Signal(init=1)
        m.d.sync += session_reset.eq(host_link.session_reset)
        m.domains.core = ClockDomain("core", local=True)
        m.d.comb += [ClockSignal("core").eq(ClockSignal("sync")),
                     ResetSignal("core").eq(_distributed(m, session_reset, platform))]
        accelerator = m.submodules.accelerator = DomainRenamer("core")(Accelerator(self.cfg))
        m.d.comb += [host_link.rx.eq(self.uart_rx), self.uart_tx.eq(host_link.tx),
                     self.link_bad_frames.eq(host_link.bad_frames),
                     self.link_resent_frames.eq(host_link.resent_frames)]
        if not timing_registers(platform):
            wiring.connect(m, host_link.host_in, accelerator.host_in)
            wiring.connect(m, accelerator.host_out, host_link.host_out)
            return m
        # A register stage each way between the link and the accelerator (small queues, emptied by a session
        # reset like the accelerator): the link's frame checks and the controller's decode are paths of their own.
        to_device = fifo.SyncFIFOBuffered(width=len(host_link.host_in.payload), depth=_QUEUE)
        to_host = fifo.SyncFIFOBuffered(width=len(host_link.host_out.payload), depth=_QUEUE)
        m.submodules.to_device = DomainRenamer("core")(to_device)
        m.submodules.to_host = DomainRenamer("core")(to_host)
        wiring.connect(m, host_link.host_in, to_device.w_stream)
        wiring.connect(m, to_device.r_stream, accelerator.host_in)
        wiring.connect(m, accelerator.host_out, to_host.w_stream)
        wiring.connect(m, to_host.r_stream, host_link.host_out)
        return m


def _distributed(m, reset, platform):
    """``reset`` as it reaches the accelerator's flip-flops: on an ECP5 through a global clock buffer (DCCA) onto
    one of the device's clock networks. It goes to about 10,500 flip-flops (16x8 array); through the fabric's
    general routing it was, with the scattered DSP blocks (`tessera.fpga.floorplan`), what kept a 16x8 array from
    routing at all (nextpnr's router1 stalled with ~15,000 arcs left after 50 minutes)."""
    if fpga_family(platform) != "ecp5":
        return reset
    distributed = Signal(name="session_reset_global")
    m.submodules.session_reset_buffer = Instance("DCCA", i_CLKI=reset, i_CE=Const(1), o_CLKO=distributed)
    return distributed
