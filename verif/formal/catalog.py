"""Every formal property of the RTL: its block, mode and depth, at full depth (``make formal``) and in a quick form
(``make test``, tests/test_formal.py). Each property has a cover check beside its proof, so that it is not vacuous.

The blocks are built for :data:`FORMAL_CONFIG`, a 2x2 weight-stationary array with small buffers (a program
memory of 16 words) and a link time-out of 16 cycles: the properties are about control, which the array's size
does not change, and small buffers keep the solver's state small.
"""

import dataclasses
from typing import Callable

from amaranth.asserts import AnyConst

from tessera.fpga.link import LinkTransmitter
from tessera.gen.config import AcceleratorConfig
from tessera.hw.accelerator import Accelerator
from tessera.hw.controller import Controller
from tessera.hw.controller_program import ProgramMemory
from tessera.hw.controller_queues import CommandQueues
from tessera.hw.core import GemmCore
from tessera.hw.drain import Drain
from tessera.hw.host_link import PacketArbiter, ResultPacketiser
from tessera.hw.layouts import command_layout
from tessera.hw.tiles import tile_layout
from tessera.hw.vector import VectorUnit
from tessera.hw.writeback import ResultRouter

from .handshake import HandshakeSpec
from .link_crc import LinkReceiverSpec
from .liveness import ControllerLivenessSpec, controller_invariants, program_memory_invariants
from .queues import CommandQueuesSpec
from .spec import bits

__all__ = ["FORMAL_CONFIG", "Check", "CHECKS", "select"]

#: The configuration the properties are checked on.
FORMAL_CONFIG = AcceleratorConfig(rows=2, cols=2, act_depth=4, weight_depth=4, acc_depth=4, param_depth=2,
                                  vec_depth=16, program_depth=16, link_timeout=16)
#: Cycles a unit or the host's sink may stall in a row, in the liveness property.
PATIENCE = 1
#: How close to its bound the liveness property's tightness cover gets.
LIVENESS_SLACK = 3


@dataclasses.dataclass(frozen=True)
class Check:
    """One run of SymbiYosys on one spec.

    Attributes
    ----------
    name : str
        ``property`` or ``property.cover``; unique.
    block : str
        The RTL block, as a dotted path under ``tessera``.
    spec : callable
        Returns a fresh spec.
    mode : str
        ``prove``, ``bmc`` or ``cover``.
    depth : int
        Full depth (``make formal``).
    quick : int or None
        Depth in the quick subset (``make test``); None leaves the check to ``make formal``.
    script : tuple of str
        Yosys commands after ``prep``.
    """
    name: str
    block: str
    spec: Callable
    mode: str
    depth: int
    quick: int | None
    script: tuple = ()


# the queues' storage as registers rather than SMT arrays: the solver follows an entry through them much faster
_MEMORY_AS_REGISTERS = ("memory_map", "opt -fast")


def _hold(*names):
    """Inputs a block requires to hold still while it works (a geometry): any value, held for the whole run."""
    def hold(m, block):
        for name in names:
            port = bits(getattr(block, name))
            m.d.comb += port.eq(AnyConst(len(port)))
        return names
    return hold


def _handshake(name, block, make, *, depth=8, quick=8, cover, cover_quick=None, hold=None, invariants=None):
    spec = lambda: HandshakeSpec(make, hold=hold, invariants=invariants)   # noqa: E731
    return [Check(f"handshake.{name}", block, spec, "prove", depth, quick),
            Check(f"handshake.{name}.cover", block, spec, "cover", cover, cover_quick)]


def _checks():
    cfg = FORMAL_CONFIG
    rows = command_layout(cfg)["m"].shape
    tile = tile_layout(command_layout(cfg))
    cut_crc = (f"cutpoint {LinkReceiverSpec.CRC_UNIT}",)
    return [
        *_handshake("accelerator", "hw.accelerator.Accelerator", lambda: Accelerator(cfg), quick=None, cover=20),
        *_handshake("controller", "hw.controller.Controller", lambda: Controller(cfg), cover=30, cover_quick=30,
                    invariants=controller_invariants),
        *_handshake("core", "hw.core.GemmCore", lambda: GemmCore(cfg), cover=40, cover_quick=40,
                    hold=_hold("conv_geometry")),
        *_handshake("drain", "hw.drain.Drain", lambda: Drain(cfg, tile), cover=20, cover_quick=20),
        *_handshake("vector_unit", "hw.vector.VectorUnit", lambda: VectorUnit(cfg), cover=20, cover_quick=20,
                    hold=_hold("geometry", "add_params")),
        *_handshake("command_queues", "hw.controller_queues.CommandQueues", lambda: CommandQueues(cfg),
                    cover=12, cover_quick=12),
        *_handshake("result_packetiser", "hw.host_link.ResultPacketiser", lambda: ResultPacketiser(cfg, rows),
                    cover=12, cover_quick=12),
        *_handshake("result_router", "hw.writeback.ResultRouter", lambda: ResultRouter(cfg), cover=12,
                    cover_quick=12),
        *_handshake("program_memory", "hw.controller_program.ProgramMemory", lambda: ProgramMemory(cfg), cover=12,
                    cover_quick=12, invariants=program_memory_invariants),
        *_handshake("packet_arbiter", "hw.host_link.PacketArbiter", lambda: PacketArbiter(3), cover=12,
                    cover_quick=12),
        *_handshake("link_transmitter", "fpga.link.LinkTransmitter",
                    lambda: LinkTransmitter(depth=64, retransmit_timeout=8), cover=30, cover_quick=30),
        Check("queues.controller.counts", "hw.controller_queues.CommandQueues",
              lambda: CommandQueuesSpec(cfg, order=False), "prove", 4, 4),
        Check("queues.controller.order", "hw.controller_queues.CommandQueues",
              lambda: CommandQueuesSpec(cfg, order=True), "bmc", 14, 8, _MEMORY_AS_REGISTERS),
        Check("queues.controller.order.cover", "hw.controller_queues.CommandQueues",
              lambda: CommandQueuesSpec(cfg, order=True), "cover", 40, 40),
        Check("liveness.controller", "hw.controller.Controller",
              lambda: ControllerLivenessSpec(cfg, patience=PATIENCE), "prove", 28, None),
        Check("liveness.controller.quick", "hw.controller.Controller",
              lambda: ControllerLivenessSpec(cfg, patience=PATIENCE), "bmc", 16, 16),
        Check("liveness.controller.cover", "hw.controller.Controller",
              lambda: ControllerLivenessSpec(cfg, patience=PATIENCE), "cover", 32, 32),
        Check("liveness.controller.tight", "hw.controller.Controller",
              lambda: ControllerLivenessSpec(cfg, patience=PATIENCE, slack=LIVENESS_SLACK), "cover", 40, None),
        Check("link.receiver.commits", "fpga.link.LinkReceiver", lambda: LinkReceiverSpec("commits"), "bmc",
              22, 16),
        Check("link.receiver.commits.cover", "fpga.link.LinkReceiver",
              lambda: LinkReceiverSpec("commits", resend_cover=False), "cover", 18, 18),
        Check("link.receiver.resend.cover", "fpga.link.LinkReceiver", lambda: LinkReceiverSpec("commits"),
              "cover", 34, None),
        Check("link.receiver.delivery", "fpga.link.LinkReceiver", lambda: LinkReceiverSpec("delivery"), "bmc",
              22, 16, cut_crc),
        Check("link.receiver.delivery.cover", "fpga.link.LinkReceiver",
              lambda: LinkReceiverSpec("delivery", resend_cover=False), "cover", 24, 24, cut_crc),
    ]


#: Every check, in the order ``make formal`` runs them.
CHECKS = _checks()


def select(pattern=None, *, quick=False):
    """The checks whose name contains ``pattern`` (all if None), at full depth or, with ``quick``, those of the
    quick subset at its depth."""
    chosen = [c for c in CHECKS if pattern is None or pattern in c.name]
    if quick:
        chosen = [dataclasses.replace(c, depth=c.quick) for c in chosen if c.quick is not None]
    return chosen
