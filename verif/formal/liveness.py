"""Bounded liveness of the controller: from any instruction word sequence it keeps exchanging words with the host.

The host side is unconstrained: any words, at any time (within the stream rules), or none. The core, the vector
unit, the result packetiser and the host's packet sink are each slow but not dead: they act at least once in every
``patience + 1`` cycles (:func:`~tessera.verif.formal.spec.fair`). The core is modelled by what the controller sees
of it: it takes a command when fewer than :data:`CORE_SLOTS` are in flight, finishes the oldest one within
``patience + 1`` cycles, and reports idle and a count of completions as :class:`~tessera.hw.accelerator.Accelerator`
wires them.

The property: the controller is *waiting* while it is anywhere but FETCH with no partial instruction (idle), and
it neither takes a host word or a running program's word nor sends a packet word; ``waiting`` counts such cycles
in a row and never exceeds :func:`bound`. (A RUN's words are taken as the host's would be, so a program's
instructions each complete within the bound too, and its end hands the link back.) So every instruction but a
LOAD completes, or is reported as an ERROR, within the bound of its last word (a COUNTERS packet's words each
within the bound of the one before); a LOAD takes each of its words within the bound; a host that goes quiet
mid-instruction gets an ERROR packet within the bound; and the controller never deadlocks with the core, which
would hold ``waiting`` rising for ever.
"""

from amaranth.asserts import AnySeq
from amaranth.hdl import Assert, Assume, Cover, Signal

from tessera.hw.controller import Controller
from tessera.hw.controller_queues import COMMAND_QUEUE

from .handshake import assert_stream, assume_stream
from .spec import FormalSpec, fair, free, open_block

__all__ = ["CORE_SLOTS", "ControllerLivenessSpec", "bound", "controller_invariants", "program_memory_invariants"]

#: Commands the modelled core holds at once (the real one: one accumulating, one draining).
CORE_SLOTS = 2


def bound(cfg, patience):
    """The stated bound, in cycles, on the controller's waiting (see the module docstring).

    Two waits are the longest: a host quiet mid-instruction or mid-LOAD (the link time-out, then the ERROR
    packet's first word within ``patience + 1`` cycles), and READ_COUNTERS or a setup behind full queues (every
    queued and running command finishes, each within ``patience + 1`` cycles of the one before, a cycle to move
    each from its queue into the unit, and then the COUNTERS packet's first word).
    """
    step = patience + 1
    quiet_host = cfg.link_timeout + step + 3
    drain = (COMMAND_QUEUE + CORE_SLOTS) * (step + 1) + step + 4
    return max(quiet_host, drain)


def controller_invariants(m, body):
    """Facts of the controller's reachable states, asserted: a state its FSM encodes, a partial instruction only in
    FETCH, a LOAD's words only in LOAD, a running program's reads within it. ``body`` is the controller's fragment
    (:func:`.spec.open_block`)."""
    fsm = body.find_generated("fsm")
    fetch = body.find_subfragment("fetch").origins[0]
    load = body.find_subfragment("load").origins[0]
    m.d.comb += Assert(fsm.state < len(fsm.encoding), "the FSM is in a state it encodes")
    m.d.comb += Assert(fsm.ongoing("FETCH") | ~fetch.partial, "a partial instruction outside FETCH")
    m.d.comb += Assert(fsm.ongoing("LOAD") | load.done, "a LOAD's words outside LOAD")
    if body.origins[0].cfg.program_depth:
        program_memory_invariants(m, body.find_subfragment("program"))


def program_memory_invariants(m, body):
    """Facts of a :class:`~tessera.hw.controller_program.ProgramMemory`'s reachable states, asserted: a word is
    held only in a run, and a run reads within its program. ``body`` is its fragment."""
    program = body.origins[0]
    m.d.comb += Assert(program.running | ~program.fetched, "a program word held with no program running")
    m.d.comb += Assert(~program.running | (program.pc <= program.end), "a program read past its end")


class ControllerLivenessSpec(FormalSpec):
    """:class:`~tessera.hw.controller.Controller` between a free host and fair, modelled units.

    Parameters
    ----------
    cfg : AcceleratorConfig
    patience : int
        Cycles a unit or the host's sink may stall in a row.
    limit : int, optional
        The bound to assert (default :func:`bound`); a cover also reaches ``limit - slack`` waiting cycles, which
        shows how tight the bound is.
    """

    def __init__(self, cfg, *, patience=1, limit=None, slack=None):
        self.cfg = cfg
        self.patience = patience
        self.limit = bound(cfg, patience) if limit is None else limit
        self.slack = slack

    def build(self, m, platform):
        cfg, patience = self.cfg, self.patience
        self._running = {}
        controller = Controller(cfg)
        body = open_block(m, "dut", controller, platform)
        fsm = body.find_generated("fsm")
        fetch = body.find_subfragment("fetch").origins[0]

        assume_stream(m, controller.host_in, "host_in")
        for name in ("act_load", "weight_load", "param_load", "vec_load", "result_rows", "packet"):
            port = getattr(controller, name)
            assert_stream(m, port, name, cover=False)
            fair(m, port.ready, patience, name=name)
        free(m, controller.counters)
        core_completed = self._unit(m, controller.cmd, "core", CORE_SLOTS, controller.core_idle)
        vec_completed = self._unit(m, controller.vec_cmd, "vector", 1, controller.vec_idle)
        completed, vector_completed = Signal(32), Signal(32)
        m.d.sync += [completed.eq(completed + core_completed + vec_completed),
                     vector_completed.eq(vector_completed + vec_completed)]
        m.d.comb += [controller.completed.eq(completed), controller.vec_completed.eq(vector_completed)]

        self._invariants(m, body, fsm, fetch, completed, vector_completed)

        host_word = controller.host_in.valid & controller.host_in.ready
        packet_word = controller.packet.valid & controller.packet.ready
        program_word = 0
        if cfg.program_depth:
            words = body.find_subfragment("program").origins[0].words_out
            program_word = words.valid & words.ready
        idle = fsm.ongoing("FETCH") & ~fetch.partial
        waiting = Signal(range(self.limit + 2))
        with m.If(idle | host_word | packet_word | program_word):
            m.d.sync += waiting.eq(0)
        with m.Elif(waiting <= self.limit):
            m.d.sync += waiting.eq(waiting + 1)
        m.d.comb += Assert(waiting <= self.limit, "the controller waited longer than the bound")
        for name, running in self._running.items():
            m.d.comb += Assert(running <= (CORE_SLOTS if name == "core" else 1), f"the {name} model holds too many")
        m.d.comb += Cover(fsm.ongoing("ERROR") & controller.packet.valid & controller.packet.ready
                          & controller.packet.payload.last, "an ERROR packet is sent")
        m.d.comb += Cover(fsm.ongoing("COUNTERS") & controller.packet.valid & controller.packet.ready
                          & controller.packet.payload.last, "a COUNTERS packet is sent")
        m.d.comb += Cover(controller.cmd.valid & controller.cmd.ready, "a command reaches the core")
        if self.slack is not None:
            m.d.comb += Cover(waiting == self.limit - self.slack, "the controller waits nearly the bound")

    def _invariants(self, m, body, fsm, fetch, completed, vector_completed):
        """Facts of every reachable state, asserted (so proved too) so that k-induction need not start from
        states that reset never leads to: a state the FSM encodes, and the controller's count of commands in flight
        equal to the commands in its queues and in the units."""
        controller_invariants(m, body)
        queues = body.find_subfragment("queues")
        levels = sum(queues.find_subfragment(name).origins[0].level for name in ("commands", "vec_commands"))
        issued = Signal(32)
        beats = [port.valid & port.ready for port in (queues.origins[0].gemm, queues.origins[0].vector)]
        m.d.sync += issued.eq(issued + beats[0] + beats[1])
        in_flight = levels + self._running["core"] + self._running["vector"]
        difference = (issued - completed)[:32]   # modulo 2**32, as the counters wrap
        m.d.comb += Assert(difference == in_flight, "commands issued less completed are not those in flight")
        last = Signal(32)
        m.d.sync += last.eq(difference)
        m.d.comb += Assert(queues.origins[0].outstanding == last[:8], "outstanding is not those in flight")
        # and the vector unit's share of them (a WAIT may count only its commands)
        vec_issued = Signal(32)
        m.d.sync += vec_issued.eq(vec_issued + beats[1])
        vec_in_flight = queues.find_subfragment("vec_commands").origins[0].level + self._running["vector"]
        vec_difference = (vec_issued - vector_completed)[:32]
        m.d.comb += Assert(vec_difference == vec_in_flight, "vector commands issued less completed are not those "
                                                            "in flight")
        vec_last = Signal(32)
        m.d.sync += vec_last.eq(vec_difference)
        m.d.comb += Assert(queues.origins[0].outstanding_vec == vec_last[:8], "outstanding_vec is not those in flight")

    def _unit(self, m, cmd, name, slots, idle):
        """A unit that takes commands from ``cmd`` while it has fewer than ``slots`` in flight and finishes the
        oldest within ``patience + 1`` cycles; drives ``idle`` and returns its completion strobe."""
        running = Signal(range(slots + 1), name=f"{name}_running")
        self._running[name] = running
        take = Signal(name=f"{name}_take")
        finish = Signal(name=f"{name}_finish")
        m.d.comb += [take.eq(AnySeq(1)), finish.eq(AnySeq(1))]
        m.d.comb += cmd.ready.eq(take & (running < slots))
        m.d.comb += Assume(~finish | (running != 0))
        fair(m, finish | (running == 0), self.patience, name=f"{name}_finish")
        fair(m, take | (running == slots), self.patience, name=f"{name}_take")
        m.d.sync += running.eq(running + (cmd.valid & cmd.ready) - finish)
        # what the accelerator wires: the core is idle with nothing in flight and no command offered
        m.d.comb += idle.eq((running == 0) & ~cmd.valid)
        return finish
