"""The controller: decodes the host's instruction stream into buffer loads and compute commands."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .array_rs import rs_mapping
from .layouts import MAX_KERNEL
from .isa import (COUNTERS, INSTRUCTION_WORDS, LINK_WIDTH, BufferId, ErrorCode, Opcode, PacketKind,
                  instruction_layout, operands_layout, packet_header_layout, words_per_buffer_word)
from .layouts import (act_load_layout, command_layout, conv_geometry_layout, param_load_layout, vec_command_layout,
                      vec_load_layout, weight_load_layout)
from .pipeline import timing_registers
from .qadd import add_params_layout

__all__ = ["Controller", "link_beat_layout"]

_COMMAND_QUEUE = 4
_RESULT_QUEUE = 16
_VEC_QUEUE = 3   # a buffered FIFO of depth 2 has a zero-width address, which fails the lint gate


def link_beat_layout():
    """A word for the host, and whether it ends its packet."""
    return data.StructLayout({"data": unsigned(LINK_WIDTH), "last": 1})


class Controller(wiring.Component):
    """Executes instructions from ``host_in`` in order.

    Loads write buffers at link rate while earlier compute commands wait in a queue or run, so loads of the
    next tile overlap compute of the current one; ``WAIT`` orders a load after the commands that still read
    the words it overwrites (the compiler places them). Anything malformed is reported as an ERROR packet and
    skipped: a bad LOAD still consumes its data words, a stalled instruction times out, so the device always
    returns to fetching instructions.

    Attributes
    ----------
    host_in : In(stream of 32-bit words)
    act_load, weight_load, param_load, cmd : Out(stream)
        To the compute core.
    vec_load, vec_cmd : Out(stream)
        To the vector unit (absent without one: ``cfg.vec_depth == 0``).
    conv_geometry, pool_geometry, add_params : Out
        Set by CONV_SETUP, POOL_SETUP and VEC_SETUP once the unit that reads them is idle.
    result_rows : Out(stream of row counts)
        Rows of each dispatched command, in order, for the result packetiser.
    packet : Out(stream of link_beat_layout)
        COUNTERS and ERROR packets.
    completed : In(32)
        Commands (GEMM, POOL, ADD) completed since reset.
    core_idle, vec_idle : In(1)
    counters : In(ArrayLayout(unsigned(32), len(COUNTERS)))
    clear_counters : Out(1)
    starved : Out(1)
        The core is idle while the controller is still receiving instructions or data: time the link costs.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self._command = command_layout(cfg)
        super().__init__({
            "host_in": In(stream.Signature(unsigned(LINK_WIDTH))),
            "act_load": Out(stream.Signature(act_load_layout(cfg))),
            "weight_load": Out(stream.Signature(weight_load_layout(cfg))),
            "param_load": Out(stream.Signature(param_load_layout(cfg))),
            "cmd": Out(stream.Signature(self._command)),
            "conv_geometry": Out(conv_geometry_layout()),
            "vec_load": Out(stream.Signature(vec_load_layout(cfg))),
            "vec_cmd": Out(stream.Signature(vec_command_layout(cfg))),
            "pool_geometry": Out(conv_geometry_layout()),
            "add_params": Out(add_params_layout()),
            "result_rows": Out(stream.Signature(self._command["m"].shape)),
            "packet": Out(stream.Signature(link_beat_layout())),
            "completed": In(32),
            "core_idle": In(1),
            "vec_idle": In(1),
            "counters": In(data.ArrayLayout(unsigned(32), len(COUNTERS))),
            "clear_counters": Out(1),
            "starved": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()

        m.submodules.commands = commands = fifo.SyncFIFOBuffered(width=self._command.size, depth=_COMMAND_QUEUE)
        m.submodules.row_counts = row_counts = fifo.SyncFIFOBuffered(
            width=self._command["m"].shape.width, depth=_RESULT_QUEUE)
        m.d.comb += [
            self.cmd.valid.eq(commands.r_rdy), self.cmd.payload.eq(commands.r_data),
            commands.r_en.eq(self.cmd.ready),
            self.result_rows.valid.eq(row_counts.r_rdy), self.result_rows.payload.eq(row_counts.r_data),
            row_counts.r_en.eq(self.result_rows.ready),
        ]
        vec_command = vec_command_layout(cfg)
        m.submodules.vec_commands = vec_commands = fifo.SyncFIFOBuffered(width=vec_command.size, depth=_VEC_QUEUE)
        m.d.comb += [
            self.vec_cmd.valid.eq(vec_commands.r_rdy), self.vec_cmd.payload.eq(vec_commands.r_data),
            vec_commands.r_en.eq(self.vec_cmd.ready),
        ]
        has_vector = cfg.vec_depth > 0
        no_vector = int(not has_vector)
        # nothing queued or running anywhere: what READ_COUNTERS and the setups wait for
        core_done = Signal()
        vec_done = Signal()
        m.d.comb += [core_done.eq(~commands.r_rdy & self.core_idle), vec_done.eq(~vec_commands.r_rdy & self.vec_idle)]

        # -- fetch: instruction words arrive least significant first ----------------------------------------
        layout = instruction_layout(cfg)
        bits = Signal(INSTRUCTION_WORDS * LINK_WIDTH)
        instr = data.View(layout, bits)
        fetched = Signal(range(INSTRUCTION_WORDS + 1))
        def operands(layout):
            return data.View(layout, instr.operands[:layout.size])
        load = operands(operands_layout(cfg, Opcode.LOAD))
        gemm = operands(self._command)
        wait = operands(operands_layout(cfg, Opcode.WAIT))
        setup = operands(conv_geometry_layout())
        pool = operands(operands_layout(cfg, Opcode.POOL))
        add = operands(operands_layout(cfg, Opcode.ADD))
        vec_params = operands(add_params_layout())
        vec_entry = Signal(vec_command)
        # a constant comparison fails the lint gate: compare only where x_base can be out of range
        pool_out_of_range = pool.x_base >= cfg.vec_depth if 0 < cfg.vec_depth < (1 << 16) else 0

        # -- a word of the host link -------------------------------------------------------------------------
        word = self.host_in.payload
        got_word = Signal()
        m.d.comb += got_word.eq(self.host_in.valid & self.host_in.ready)

        # A stalled instruction or LOAD must not hold the device forever.
        silent = Signal(range(cfg.link_timeout + 1))
        timed_out = Signal()
        m.d.comb += timed_out.eq(silent == cfg.link_timeout)

        error = Signal(8)
        issued = Signal(32)
        # commands in flight: fewer than the queues hold, so 8 bits of the difference are exact
        outstanding = Signal(8)
        m.d.sync += outstanding.eq(issued - self.completed)

        # -- LOAD state: assemble buffer words from link words --------------------------------------------
        beats = {b: words_per_buffer_word(cfg, b) for b in BufferId}
        max_beats = max(beats.values())
        assembly = Signal(max_beats * LINK_WIDTH)
        beat = Signal(range(max_beats + 1))
        remaining = Signal(17)
        load_addr = Signal(16)
        load_buffer = Signal(2)
        discard = Signal()
        beats_needed = Signal(range(max_beats + 1))
        targets = {BufferId.ACT: self.act_load, BufferId.WEIGHT: self.weight_load, BufferId.PARAM: self.param_load}
        depths = {BufferId.ACT: cfg.act_depth, BufferId.WEIGHT: cfg.weight_depth, BufferId.PARAM: cfg.param_depth}
        if has_vector:
            targets[BufferId.VEC], depths[BufferId.VEC] = self.vec_load, cfg.vec_depth
        write_pending = Signal()
        target_ready = Signal()
        for b, target in targets.items():
            # The assembled word sits in the top `beats[b]` link words of the shift register.
            low = (max_beats - beats[b]) * LINK_WIDTH
            m.d.comb += [
                target.payload.addr.eq(load_addr),
                target.payload.data.eq(assembly[low:low + target.payload.data.shape().size]),
                target.valid.eq(write_pending & (load_buffer == b)),
            ]
            with m.If(load_buffer == b):
                m.d.comb += target_ready.eq(target.ready)
        with m.If(write_pending & target_ready):
            m.d.sync += [write_pending.eq(0), load_addr.eq(load_addr + 1)]

        # -- GEMM checks --------------------------------------------------------------------------------
        max_rows = cfg.rows if cfg.dataflow == "os" else cfg.acc_half_depth
        # The words a command reads are products of its fields: registered every cycle (the instruction is
        # steady from DECODE on), so the multiplies stay off the path into the state machine and the range
        # checks are made in the GEMM state.
        def registered(name, value):
            # at the product's full width: a wrapped count would pass the range check
            result = Signal(value.shape(), name=name)
            m.d.sync += result.eq(value)
            return result

        params_out_of_range = 0      # a command reads one parameter word (rs: one per filter)
        # a conv command reads a feature map whose extent the geometry gives; its reads wrap, never hang
        if cfg.dataflow == "ws":
            # a sparse command stores a header word before each fold, and exists for conv commands only
            act_words = registered("act_words", Mux(gemm.conv, 0, gemm.k * gemm.m))
            weight_words = registered("weight_words", gemm.k * (cfg.rows + gemm.sparse))
            conv_unsupported = gemm.sparse & ~gemm.conv if cfg.cols >= 2 else gemm.sparse
        elif cfg.dataflow == "rs":
            # rs runs conv commands only (a fully connected layer is a 1x1 conv), with filter chunks no taller
            # than the array and at most 7 of them (out_x), and 1 to rs_filters filters whose output columns
            # are its m result rows; each pass reads q * KW weight words per filter (q: channels per PE)
            geometry = self.conv_geometry
            chunks = Mux(gemm.out_x == 0, 1, gemm.out_x)
            channels_per_pe = Signal(range(cfg.rows + 1))
            with m.Switch(geometry.kernel_h):
                for kh in range(1, min(cfg.rows, MAX_KERNEL) + 1):
                    with m.Case(kh):
                        m.d.comb += channels_per_pe.eq(rs_mapping(cfg.rows, kh)[1])
            # the geometry is set by CONV_SETUP, long before the GEMM that reads it: its product is registered
            per_filter = registered("per_filter", geometry.kernel_w * channels_per_pe)
            act_words = 0
            weight_words = registered("weight_words", gemm.k * chunks * gemm.filters * per_filter)
            too_tall = geometry.kernel_h > cfg.rows if cfg.rows < 7 else 0   # no constant compare
            filters_limit = (1 << len(gemm.filters)) - 1
            too_many_filters = gemm.filters > cfg.rs_filters if cfg.rs_filters < filters_limit else 0
            conv_unsupported = (~gemm.conv | too_tall | (gemm.out_x > 7) | gemm.sparse | (gemm.filters == 0)
                                | too_many_filters | (gemm.m != gemm.filters * geometry.out_w))
            params_out_of_range = gemm.p_base + gemm.filters > cfg.param_depth
        else:
            act_words, weight_words = Mux(gemm.conv, 0, gemm.k), gemm.k
            # os steps through gathered folds one channel at a time: k must be exactly the folds' channels,
            # or the gather and the steps would disagree (and a missing fold would never arrive)
            geometry = self.conv_geometry
            folds = Signal(16)   # registered: the geometry is set long before the GEMM that reads it
            m.d.sync += folds.eq(geometry.kernel_h * geometry.kernel_w * geometry.channel_blocks)
            conv_unsupported = (gemm.conv & (gemm.k != folds * cfg.rows)) | gemm.sparse
        gemm_error_now = Signal(8)
        # compared only where the field can exceed the limit (a constant comparison fails the lint gate)
        too_many_rows = gemm.m > max_rows if max_rows < (1 << len(gemm.m)) - 1 else 0
        # a conv command before any CONV_SETUP would run on an all-zero geometry
        no_geometry = gemm.conv & (self.conv_geometry.kernel_h == 0)
        with m.If((gemm.m == 0) | (gemm.k == 0) | too_many_rows | conv_unsupported | no_geometry):
            m.d.comb += gemm_error_now.eq(ErrorCode.BAD_SHAPE)
        with m.Elif((gemm.x_base + act_words > cfg.act_depth) | (gemm.w_base + weight_words > cfg.weight_depth)
                    | (gemm.p_base >= cfg.param_depth) | params_out_of_range):
            m.d.comb += gemm_error_now.eq(ErrorCode.OUT_OF_RANGE)
        # registered too, so they are valid two cycles after DECODE (GEMM_CHECK waits one): from the instruction
        # through the checks into the command queues was the 16x8 ULX3S build's critical path at 86.7 MHz. Not on
        # an iCE40 (no GEMM_CHECK either), whose logic cells are what runs short there.
        gemm_error = registered("gemm_error", gemm_error_now) if timing_registers(platform) else gemm_error_now

        # -- packets: COUNTERS and ERROR --------------------------------------------------------------------
        header = data.View(packet_header_layout(), Signal(LINK_WIDTH))
        # sent out from the front, shifting forward after each word: no mux over all the counters on the way to
        # the link (it was the ULX3S build's critical path)
        snapshot = [Signal(32, name=f"snapshot_{name}") for name, _ in COUNTERS]
        sent = Signal(range(len(COUNTERS) + 2))

        m.d.comb += self.starved.eq(0)
        with m.FSM():
            with m.State("FETCH"):
                m.d.comb += [self.host_in.ready.eq(1), self.starved.eq(core_done & vec_done)]
                with m.If(got_word):
                    m.d.sync += [bits.eq(Cat(bits[LINK_WIDTH:], word)), fetched.eq(fetched + 1), silent.eq(0)]
                    with m.If(fetched == INSTRUCTION_WORDS - 1):
                        m.d.sync += fetched.eq(0)
                        m.next = "DECODE"
                with m.Elif(fetched != 0):
                    m.d.sync += silent.eq(silent + 1)
                    with m.If(timed_out):
                        m.d.sync += [fetched.eq(0), silent.eq(0), error.eq(ErrorCode.TRUNCATED), bits.eq(0)]
                        m.next = "ERROR"

            with m.State("DECODE"):
                with m.Switch(instr.opcode):
                    with m.Case(Opcode.NOP):
                        m.next = "FETCH"
                    with m.Case(Opcode.LOAD):
                        m.d.sync += [remaining.eq(load.words), load_addr.eq(load.addr), load_buffer.eq(load.buffer),
                                     beat.eq(0), discard.eq(0), error.eq(0), silent.eq(0)]
                        with m.Switch(load.buffer):
                            for b in targets:
                                with m.Case(b):
                                    m.d.sync += beats_needed.eq(beats[b])
                                    with m.If(load.addr + load.words > depths[b]):
                                        m.d.sync += [discard.eq(1), error.eq(ErrorCode.OUT_OF_RANGE)]
                            with m.Default():
                                # Unknown buffer: still swallow the data, one link word per buffer word.
                                m.d.sync += [beats_needed.eq(1), discard.eq(1), error.eq(ErrorCode.BAD_BUFFER)]
                        m.next = "LOAD"
                    with m.Case(Opcode.GEMM):
                        m.next = "GEMM_CHECK" if timing_registers(platform) else "GEMM"
                    with m.Case(Opcode.WAIT):
                        m.next = "WAIT"
                    with m.Case(Opcode.READ_COUNTERS):
                        m.next = "DRAIN_FOR_COUNTERS"
                    with m.Case(Opcode.CONV_SETUP):
                        with m.If((setup.in_h == 0) | (setup.in_w == 0) | (setup.out_w == 0) | (setup.stride == 0)
                                  | (setup.channel_blocks == 0) | (setup.kernel_h == 0) | (setup.kernel_w == 0)):
                            m.d.sync += error.eq(ErrorCode.BAD_SHAPE)
                            m.next = "ERROR"
                        with m.Else():
                            m.next = "CONV_SETUP"
                    with m.Case(Opcode.POOL_SETUP):
                        with m.If(no_vector | (setup.in_h == 0) | (setup.in_w == 0) | (setup.out_w == 0)
                                  | (setup.stride == 0) | (setup.channel_blocks == 0) | (setup.kernel_h == 0)
                                  | (setup.kernel_w == 0)):
                            m.d.sync += error.eq(ErrorCode.BAD_SHAPE)
                            m.next = "ERROR"
                        with m.Else():
                            m.next = "POOL_SETUP"
                    with m.Case(Opcode.VEC_SETUP):
                        if has_vector:
                            m.next = "VEC_SETUP"
                        else:
                            m.d.sync += error.eq(ErrorCode.BAD_SHAPE)
                            m.next = "ERROR"
                    with m.Case(Opcode.POOL):
                        m.d.sync += [vec_entry.op.eq(0), vec_entry.a_base.eq(pool.x_base), vec_entry.count.eq(pool.m),
                                     vec_entry.out_y.eq(pool.out_y), vec_entry.out_x.eq(pool.out_x)]
                        # before any POOL_SETUP the geometry is all zero: its loops would never end
                        with m.If(no_vector | (pool.m == 0) | (self.pool_geometry.kernel_h == 0)):
                            m.d.sync += error.eq(ErrorCode.BAD_SHAPE)
                            m.next = "ERROR"
                        with m.Elif(pool_out_of_range):
                            m.d.sync += error.eq(ErrorCode.OUT_OF_RANGE)
                            m.next = "ERROR"
                        with m.Else():
                            m.next = "VEC_CMD"
                    with m.Case(Opcode.ADD):
                        m.d.sync += [vec_entry.op.eq(1), vec_entry.a_base.eq(add.a_base),
                                     vec_entry.b_base.eq(add.b_base), vec_entry.count.eq(add.words)]
                        with m.If(no_vector | (add.words == 0)):
                            m.d.sync += error.eq(ErrorCode.BAD_SHAPE)
                            m.next = "ERROR"
                        with m.Elif((add.a_base + add.words > cfg.vec_depth)
                                    | (add.b_base + add.words > cfg.vec_depth)):
                            m.d.sync += error.eq(ErrorCode.OUT_OF_RANGE)
                            m.next = "ERROR"
                        with m.Else():
                            m.next = "VEC_CMD"
                    with m.Case(Opcode.CLEAR_COUNTERS):
                        m.d.comb += self.clear_counters.eq(1)
                        m.next = "FETCH"
                    with m.Default():
                        m.d.sync += error.eq(ErrorCode.ILLEGAL_OPCODE)
                        m.next = "ERROR"

            with m.State("LOAD"):
                with m.If(remaining == 0):
                    with m.If(~write_pending):
                        m.next = "LOAD_DONE"
                with m.Else():
                    # The next word may arrive while the assembled one is written: the write leaves this cycle.
                    m.d.comb += [self.host_in.ready.eq(~write_pending | target_ready),
                                 self.starved.eq(core_done & vec_done)]
                    with m.If(got_word):
                        m.d.sync += [assembly.eq(Cat(assembly[LINK_WIDTH:], word)), silent.eq(0)]
                        with m.If(beat == beats_needed - 1):
                            m.d.sync += [beat.eq(0), remaining.eq(remaining - 1), write_pending.eq(~discard)]
                        with m.Else():
                            m.d.sync += beat.eq(beat + 1)
                    # Only the host's silence counts: a word waiting for a single-port buffer that compute is
                    # reading (hw.buffer) waits at most until the running fold ends. (Other buffers are always
                    # ready, so there no word waits; their netlist stays as it was, which the ULX3S routes.)
                    with m.Elif(~self.host_in.valid) if cfg.single_port_buffers else m.Else():
                        m.d.sync += silent.eq(silent + 1)
                        with m.If(timed_out):
                            m.d.sync += [silent.eq(0), error.eq(ErrorCode.TRUNCATED), remaining.eq(0)]

            with m.State("LOAD_DONE"):
                with m.If(error != 0):
                    m.next = "ERROR"
                with m.Else():
                    m.next = "FETCH"

            if timing_registers(platform):
                with m.State("GEMM_CHECK"):
                    m.next = "GEMM"

            with m.State("GEMM"):
                with m.If(gemm_error != 0):
                    m.d.sync += error.eq(gemm_error)
                    m.next = "ERROR"
                with m.Elif(commands.w_rdy & row_counts.w_rdy):
                    m.d.comb += [commands.w_en.eq(1), commands.w_data.eq(gemm.as_value()),
                                 row_counts.w_en.eq(1), row_counts.w_data.eq(gemm.m)]
                    m.d.sync += issued.eq(issued + 1)
                    m.next = "FETCH"

            with m.State("VEC_CMD"):
                with m.If(vec_commands.w_rdy):
                    m.d.comb += [vec_commands.w_en.eq(1), vec_commands.w_data.eq(vec_entry)]
                    m.d.sync += issued.eq(issued + 1)
                    m.next = "FETCH"

            with m.State("POOL_SETUP"):
                with m.If(vec_done):
                    m.d.sync += self.pool_geometry.eq(setup)
                    m.next = "FETCH"

            with m.State("VEC_SETUP"):
                with m.If(vec_done):
                    m.d.sync += self.add_params.eq(vec_params)
                    m.next = "FETCH"

            with m.State("CONV_SETUP"):
                # queued and running conv commands read the geometry: change it only once they are done
                with m.If(core_done):
                    m.d.sync += self.conv_geometry.eq(setup)
                    m.next = "FETCH"

            with m.State("WAIT"):
                # issued - completed never exceeds the commands in flight, so any `pending` terminates; it is
                # a cycle old, which only ever overstates what is in flight (nothing is issued while waiting)
                with m.If(outstanding <= wait.pending):
                    m.next = "FETCH"

            with m.State("DRAIN_FOR_COUNTERS"):
                with m.If(core_done & vec_done):
                    m.d.sync += [snapshot[i].eq(self.counters[i]) for i in range(len(COUNTERS))]
                    m.d.sync += sent.eq(0)
                    m.next = "COUNTERS"

            with m.State("COUNTERS"):
                m.d.comb += [header.kind.eq(PacketKind.COUNTERS), header.length.eq(len(COUNTERS)),
                             self.packet.valid.eq(1),
                             self.packet.payload.data.eq(Mux(sent == 0, header.as_value(), snapshot[0])),
                             self.packet.payload.last.eq(sent == len(COUNTERS))]
                with m.If(self.packet.ready):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent != 0):
                        m.d.sync += [now.eq(later) for now, later in zip(snapshot[:-1], snapshot[1:], strict=True)]
                    with m.If(sent == len(COUNTERS)):
                        m.d.sync += sent.eq(0)
                        m.next = "FETCH"

            with m.State("ERROR"):
                m.d.comb += [header.kind.eq(PacketKind.ERROR), header.length.eq(1),
                             self.packet.valid.eq(1),
                             self.packet.payload.data.eq(Mux(sent == 0, header.as_value(),
                                                             Cat(error, instr.opcode))),
                             self.packet.payload.last.eq(sent == 1)]
                with m.If(self.packet.ready):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == 1):
                        m.d.sync += [sent.eq(0), error.eq(0)]
                        m.next = "FETCH"
        return m
