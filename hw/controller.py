"""The controller: decodes the host's instruction stream into buffer loads and compute commands.

Its state machine sequences blocks that each do one part of the work: :mod:`.controller_fetch` gathers
instructions from link words (the host's, or a running program's from :mod:`.controller_program`),
:mod:`.controller_decode` judges them, :mod:`.controller_load` carries out LOADs, :mod:`.controller_gemm` checks
GEMMs, :mod:`.controller_queues` holds the issued commands, and :mod:`.controller_packets` sends COUNTERS and ERROR
packets (with :mod:`.controller_timeout` watching the link).
"""

from typing import NamedTuple

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .controller_decode import Decoder, operands
from .controller_fetch import InstructionFetch
from .controller_gemm import gemm_error
from .controller_load import LoadAssembler
from .controller_packets import StatusPacketiser, link_beat_layout
from .controller_program import ProgramMemory
from .controller_queues import CommandQueues
from .controller_timeout import LinkTimeout
from .isa import COUNTERS, LINK_WIDTH, ErrorCode, Opcode, WaitUnit
from .layouts import (
    act_load_layout,
    command_layout,
    conv_geometry_layout,
    param_load_layout,
    result_descriptor_layout,
    store_setup_layout,
    vec_command_layout,
    vec_load_layout,
    weight_load_layout,
)
from .pipeline import timing_registers
from .qadd import add_params_layout

__all__ = ["Controller", "link_beat_layout"]


class _Blocks(NamedTuple):
    """What the controller's states share: its blocks, and the signals between them."""
    fetch: InstructionFetch
    timeout: LinkTimeout
    decoder: Decoder
    load: LoadAssembler
    queues: CommandQueues
    packets: StatusPacketiser
    program: ProgramMemory | None   # absent without program memory (cfg.program_depth == 0)
    source: stream.Interface   # the words the controller takes: the link's, or a running program's
    running: Signal      # a program is running: its words, not the link's, are the source
    error: Signal        # why the instruction is rejected: what the ERROR packet reports
    idle: Signal         # nothing queued or running anywhere: what READ_COUNTERS and the setups wait for
    gemm_error: Signal   # what the GEMM state finds wrong with a GEMM
    store_setup: data.View   # what STORE_SETUP set: where store GEMMs issued from now on write their rows


class Controller(wiring.Component):
    """Executes instructions from ``host_in`` in order.

    Loads write buffers at link rate while earlier compute commands wait in a queue or run, so loads of the
    next tile overlap compute of the current one; ``WAIT`` orders a load after the commands that still read
    the words it overwrites (the compiler places them). Anything malformed is reported as an ERROR packet and
    skipped: a bad LOAD still consumes its data words, a stalled instruction times out, so the device always
    returns to fetching instructions. A RUN takes the words of a stored program instead of the link's until its
    last; the link's words wait meanwhile.

    Attributes
    ----------
    host_in : In(stream of 32-bit words)
    act_load, weight_load, param_load, cmd : Out(stream)
        To the compute core.
    vec_load, vec_cmd : Out(stream)
        To the vector unit (never valid without one: ``cfg.vec_depth == 0``).
    conv_geometry, pool_geometry, add_params : Out
        Set by CONV_SETUP, POOL_SETUP and VEC_SETUP once the unit that reads them is idle.
    result_rows : Out(stream of result_descriptor_layout(cfg))
        What becomes of each dispatched command's rows (how many; sent, or stored where), in order, for the
        result path.
    packet : Out(stream of link_beat_layout)
        COUNTERS and ERROR packets.
    completed : In(32)
        Commands (GEMM, POOL, ADD) completed since reset.
    vec_completed : In(32)
        Of them, the vector unit's.
    core_idle, vec_idle : In(1)
    counters : In(ArrayLayout(unsigned(32), len(COUNTERS)))
    clear_counters : Out(1)
    starved : Out(1)
        The core is idle while the controller is still receiving instructions or data: time the link costs.
    program_read : Out(1)
        A program memory word is read this cycle.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        command = command_layout(cfg)
        super().__init__({
            "host_in": In(stream.Signature(unsigned(LINK_WIDTH))),
            "act_load": Out(stream.Signature(act_load_layout(cfg))),
            "weight_load": Out(stream.Signature(weight_load_layout(cfg))),
            "param_load": Out(stream.Signature(param_load_layout(cfg))),
            "cmd": Out(stream.Signature(command)),
            "conv_geometry": Out(conv_geometry_layout()),
            "vec_load": Out(stream.Signature(vec_load_layout(cfg))),
            "vec_cmd": Out(stream.Signature(vec_command_layout(cfg))),
            "pool_geometry": Out(conv_geometry_layout()),
            "add_params": Out(add_params_layout()),
            "result_rows": Out(stream.Signature(result_descriptor_layout(cfg))),
            "packet": Out(stream.Signature(link_beat_layout())),
            "completed": In(32),
            "vec_completed": In(32),
            "core_idle": In(1),
            "vec_idle": In(1),
            "counters": In(data.ArrayLayout(unsigned(32), len(COUNTERS))),
            "clear_counters": Out(1),
            "starved": Out(1),
            "program_read": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        blocks = self._blocks(m, platform)
        with m.FSM():
            self._fetch_and_decode(m, blocks, platform)
            self._load(m, blocks)
            self._issue(m, blocks, platform)
            self._setup(m, blocks)
            self._report(m, blocks)
        return m

    def _blocks(self, m, platform):
        # the blocks, wired to each other and to the controller's ports; the states drive the rest
        cfg = self.cfg
        m.submodules.fetch = fetch = InstructionFetch(cfg)
        m.submodules.timeout = timeout = LinkTimeout(cycles=cfg.link_timeout)
        m.submodules.decoder = decoder = Decoder(cfg)
        m.submodules.load = load = LoadAssembler(cfg)
        m.submodules.queues = queues = CommandQueues(cfg)
        m.submodules.packets = packets = StatusPacketiser()
        instruction = fetch.instruction
        gemm = operands(instruction, Opcode.GEMM, cfg)
        store_setup = Signal(store_setup_layout())
        error = Signal(8)
        idle = Signal()
        program, source, running = self._source(m, instruction)

        m.d.comb += [fetch.words.payload.eq(source.payload), load.words.payload.eq(source.payload),
                     timeout.restart.eq(self.host_in.valid & self.host_in.ready),
                     decoder.instruction.eq(instruction), decoder.pool_geometry.eq(self.pool_geometry),
                     decoder.store_setup.eq(store_setup),
                     decoder.in_program.eq(running), load.in_program.eq(running),
                     load.request.eq(operands(instruction, Opcode.LOAD, cfg))]
        for name in load.ports.values():
            if name == "prog_load":
                wiring.connect(m, load.prog_load, program.load)
            else:
                wiring.connect(m, getattr(load, name), wiring.flipped(getattr(self, name)))

        m.d.comb += [queues.gemm.payload.eq(gemm), queues.store_setup.eq(store_setup),
                     queues.filter_rows.eq(self.conv_geometry.out_w),
                     queues.vector.payload.eq(decoder.vec_command),
                     queues.completed.eq(self.completed), queues.vec_completed.eq(self.vec_completed),
                     queues.core_idle.eq(self.core_idle),
                     queues.vec_idle.eq(self.vec_idle), idle.eq(queues.core_done & queues.vec_done)]
        for name in ("cmd", "result_rows", "vec_cmd"):
            wiring.connect(m, getattr(queues, name), wiring.flipped(getattr(self, name)))

        m.d.comb += [packets.counters.eq(self.counters), packets.error.eq(error),
                     packets.opcode.eq(instruction.opcode)]
        wiring.connect(m, packets.packet, wiring.flipped(self.packet))

        checks = gemm_error(m, cfg, gemm, self.conv_geometry, store_setup, platform)
        return _Blocks(fetch, timeout, decoder, load, queues, packets, program, source, running, error, idle, checks,
                       store_setup)

    def _source(self, m, instruction):
        """The stream of words the controller takes: the link's, or while a program runs, the program memory's.
        Returns the program memory (None without one), that stream and the running flag."""
        source = stream.Signature(unsigned(LINK_WIDTH)).create()
        if self.cfg.program_depth == 0:
            m.d.comb += [source.valid.eq(self.host_in.valid), source.payload.eq(self.host_in.payload),
                         self.host_in.ready.eq(source.ready)]
            return None, source, Signal()
        m.submodules.program = program = ProgramMemory(self.cfg)
        running = program.running
        words = program.words_out
        m.d.comb += [
            program.request.eq(operands(instruction, Opcode.RUN, self.cfg)),
            source.valid.eq(Mux(running, words.valid, self.host_in.valid)),
            source.payload.eq(Mux(running, words.payload, self.host_in.payload)),
            self.host_in.ready.eq(source.ready & ~running), words.ready.eq(source.ready & running),
            self.program_read.eq(program.read),
        ]
        return program, source, running

    def _fetch_and_decode(self, m, blocks, platform):
        """FETCH gathers an instruction; DECODE rejects it or picks the state that carries it out."""
        fetch, timeout, decoder, load, error = blocks.fetch, blocks.timeout, blocks.decoder, blocks.load, blocks.error
        source, running = blocks.source, blocks.running
        with m.State("FETCH"):
            m.d.comb += [fetch.words.valid.eq(source.valid), source.ready.eq(fetch.words.ready),
                         timeout.waiting.eq(fetch.partial & ~running), self.starved.eq(blocks.idle & ~running)]
            with m.If(timeout.expired):
                m.d.comb += fetch.abandon.eq(1)
                m.d.sync += error.eq(ErrorCode.TRUNCATED)
                m.next = "ERROR"
            with m.Elif(fetch.complete):
                m.next = "DECODE"
            if blocks.program is not None:
                # the program's last word is taken: back to the link, unless it ended mid-instruction
                with m.If(blocks.program.exhausted):
                    m.d.comb += blocks.program.stop.eq(1)
                    with m.If(fetch.partial):
                        m.d.comb += fetch.abandon.eq(1)
                        m.d.sync += error.eq(ErrorCode.BAD_PROGRAM)
                        m.next = "ERROR"

        with m.State("DECODE"):
            m.d.comb += decoder.take.eq(1)
            with m.If(decoder.error != 0):
                m.d.sync += error.eq(decoder.error)
                m.next = "ERROR"
            with m.Else():
                with m.Switch(fetch.instruction.opcode):   # every other opcode is rejected above
                    with m.Case(Opcode.NOP):
                        m.next = "FETCH"
                    with m.Case(Opcode.CLEAR_COUNTERS):
                        m.d.comb += self.clear_counters.eq(1)
                        m.next = "FETCH"
                    with m.Case(Opcode.LOAD):
                        # a rejected LOAD still receives its data words: its error is reported after them.
                        # Its words are counted afresh, whatever the instruction's took.
                        m.d.comb += [load.start.eq(1), timeout.restart.eq(1)]
                        m.d.sync += error.eq(load.error)
                        m.next = "LOAD"
                    with m.Case(Opcode.GEMM):
                        m.next = "GEMM_PRODUCTS" if timing_registers(platform) else "GEMM"
                    with m.Case(Opcode.POOL, Opcode.ADD):
                        m.next = "VEC_PRODUCTS"
                    with m.Case(Opcode.WAIT):
                        m.next = "WAIT"
                    with m.Case(Opcode.READ_COUNTERS):
                        m.next = "DRAIN_FOR_COUNTERS"
                    with m.Case(Opcode.CONV_SETUP):
                        m.next = "CONV_SETUP"
                    with m.Case(Opcode.POOL_SETUP):
                        m.next = "POOL_SETUP"
                    with m.Case(Opcode.VEC_SETUP):
                        m.next = "VEC_SETUP"
                    with m.Case(Opcode.STORE_SETUP):   # taken at once: each command carries its own copy
                        m.d.sync += blocks.store_setup.eq(operands(fetch.instruction, Opcode.STORE_SETUP, self.cfg))
                        m.next = "FETCH"
                    with m.Case(Opcode.RUN):   # (only with program memory: the decoder rejects it otherwise)
                        if blocks.program is not None:
                            m.d.comb += blocks.program.start.eq(1)
                        m.next = "FETCH"

    def _load(self, m, blocks):
        """LOAD passes the link's words to the load assembler until the last is written."""
        load, timeout, error = blocks.load, blocks.timeout, blocks.error
        source, running = blocks.source, blocks.running
        with m.State("LOAD"):
            m.d.comb += [load.words.valid.eq(source.valid), source.ready.eq(load.words.ready),
                         timeout.waiting.eq(load.silent & ~running),
                         self.starved.eq(load.receiving & blocks.idle & ~running)]
            with m.If(timeout.expired):
                m.d.comb += load.abort.eq(1)
                m.d.sync += error.eq(ErrorCode.TRUNCATED)
            if blocks.program is not None:
                # a program that ends before the LOAD's data does
                with m.If(blocks.program.exhausted & load.receiving):
                    m.d.comb += [load.abort.eq(1), blocks.program.stop.eq(1)]
                    m.d.sync += error.eq(ErrorCode.BAD_PROGRAM)
            with m.If(load.done):
                m.next = "LOAD_DONE"

        with m.State("LOAD_DONE"):
            with m.If(error != 0):
                m.next = "ERROR"
            with m.Else():
                m.next = "FETCH"

    def _issue(self, m, blocks, platform):
        """Commands go into the queues (once the checks pass); WAIT lets the queues drain."""
        queues = blocks.queues
        if timing_registers(platform):
            with m.State("GEMM_PRODUCTS"):   # the checks' products, their sums, then the checks are registered
                m.next = "GEMM_CHECK"
            with m.State("GEMM_CHECK"):
                m.next = "GEMM"

        with m.State("GEMM"):
            with m.If(blocks.gemm_error != 0):
                m.d.sync += blocks.error.eq(blocks.gemm_error)
                m.next = "ERROR"
            with m.Else():
                m.d.comb += queues.gemm.valid.eq(1)
                with m.If(queues.gemm.ready):
                    m.next = "FETCH"

        with m.State("VEC_PRODUCTS"):   # where it stores is judged three cycles after DECODE (Decoder.store_error)
            m.next = "VEC_SUMS"

        with m.State("VEC_SUMS"):
            m.next = "VEC_CHECK"

        with m.State("VEC_CHECK"):
            with m.If(blocks.decoder.store_error != 0):
                m.d.sync += blocks.error.eq(blocks.decoder.store_error)
                m.next = "ERROR"
            with m.Else():
                m.next = "VEC_CMD"

        with m.State("VEC_CMD"):
            m.d.comb += queues.vector.valid.eq(1)
            with m.If(queues.vector.ready):
                m.next = "FETCH"

        with m.State("WAIT"):
            # issued - completed never exceeds the commands in flight, so any `pending` terminates; it is
            # a cycle old, which only ever overstates what is in flight (nothing is issued while waiting)
            wait = operands(blocks.fetch.instruction, Opcode.WAIT, self.cfg)
            outstanding = Signal.like(queues.outstanding)
            with m.Switch(wait.unit):
                for unit, count in ((WaitUnit.ALL, queues.outstanding), (WaitUnit.ARRAY, queues.outstanding_array),
                                    (WaitUnit.VECTOR, queues.outstanding_vec)):
                    with m.Case(unit):
                        m.d.comb += outstanding.eq(count)
            with m.If(outstanding <= wait.pending):
                m.next = "FETCH"

    def _setup(self, m, blocks):
        """The setups change what the units read, so each waits until its unit has nothing left to do."""
        instruction = blocks.fetch.instruction
        setup = operands(instruction, Opcode.CONV_SETUP, self.cfg)
        with m.State("CONV_SETUP"):
            # queued and running conv commands read the geometry: change it only once they are done
            with m.If(blocks.queues.core_done):
                m.d.sync += self.conv_geometry.eq(setup)
                m.next = "FETCH"

        with m.State("POOL_SETUP"):
            with m.If(blocks.queues.vec_done):
                m.d.sync += self.pool_geometry.eq(setup)
                m.next = "FETCH"

        with m.State("VEC_SETUP"):
            with m.If(blocks.queues.vec_done):
                m.d.sync += self.add_params.eq(operands(instruction, Opcode.VEC_SETUP, self.cfg))
                m.next = "FETCH"

    def _report(self, m, blocks):
        """COUNTERS and ERROR packets, after which the controller fetches again."""
        packets = blocks.packets
        with m.State("DRAIN_FOR_COUNTERS"):
            with m.If(blocks.idle):
                m.d.comb += packets.capture.eq(1)
                m.next = "COUNTERS"

        with m.State("COUNTERS"):
            m.d.comb += packets.send_counters.eq(1)
            with m.If(packets.sent):
                m.next = "FETCH"

        with m.State("ERROR"):
            m.d.comb += packets.send_error.eq(1)
            with m.If(packets.sent):
                m.d.sync += blocks.error.eq(0)
                m.next = "FETCH"
