"""The vector unit: max pooling and element-wise add on int8 feature maps, beside the PE array.

It has its own buffer of 32-bit words (four int8 lanes, one link word each) that LOADs with
``BufferId.VEC`` fill, and answers each command with one VECTOR packet of result words on its own packet
stream. Both operations are bound by the link (pooling reads each input word about once, an add reads two
words per result word), so four lanes match it; nothing here needs the array.

* ``POOL``: a max over each window of a feature map stored pixel by pixel in raster order,
  ``channel_blocks`` words per pixel (the POOL_SETUP geometry, :func:`tessera.hw.layouts.conv_geometry_layout`).
  Taps in the padding are skipped, as onnxruntime never lets padding win a max.
* ``ADD``: onnxruntime's QLinearAdd on two runs of words, bit-exact (:mod:`tessera.hw.qadd`).

A command whose ``store`` is set writes its result words on chip instead of sending them: into its own buffer
(word ``j`` at ``d_base + j``), or a pool's into the activation buffer, output pixel by pixel as the STORE_SETUP
fields lay them out there (:func:`~tessera.hw.layouts.store_setup_layout`), where the next conv reads them. The
unit also takes the writes of GEMM rows stored into its buffer (``store_in``).
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .controller import link_beat_layout
from .isa import LINK_WIDTH, PacketKind, packet_header_layout
from .lane_writer import LaneWriter
from .layouts import (
    StoreTarget,
    act_write_layout,
    conv_geometry_layout,
    vec_command_layout,
    vec_load_layout,
    vec_write_layout,
)
from .qadd import add_params_layout
from .vector_add import VectorAdd
from .vector_pool import MaxPool

__all__ = ["VectorUnit", "VecOp", "LANES"]

#: int8 lanes per vector buffer word (one host link word).
LANES = LINK_WIDTH // 8
_OUT_QUEUE = 16


class VecOp:
    """The ``op`` field of a vector command."""
    POOL = 0
    ADD = 1


class VectorUnit(wiring.Component):
    """Max pooling (:class:`~tessera.hw.vector_pool.MaxPool`) and quantized add
    (:class:`~tessera.hw.vector_add.VectorAdd`) over the vector buffer, one command at a time.

    Attributes
    ----------
    load : In(stream of vec_load_layout)
        Vector buffer writes; always ready.
    store_in : In(stream of vec_write_layout)
        Stored GEMM rows' writes into the vector buffer (after the loads').
    act_store : Out(stream of act_write_layout(cfg))
        A stored pool's writes into the activation buffer.
    cmd : In(stream of vec_command_layout)
    geometry : In(conv_geometry_layout())
        Pooling geometry; must hold still while pool commands are queued or run.
    add_params : In(add_params_layout())
        Likewise for add commands.
    packet : Out(stream of link_beat_layout)
        One VECTOR packet per command: a header, then the result words.
    idle : Out(1)
    completed, busy, reads, writes : Out(1)
        Event strobes for the performance counters (``writes``: of the vector buffer).
    """

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "load": In(stream.Signature(vec_load_layout(cfg))),
            "store_in": In(stream.Signature(vec_write_layout(cfg))),
            "act_store": Out(stream.Signature(act_write_layout(cfg))),
            "cmd": In(stream.Signature(vec_command_layout(cfg))),
            "geometry": In(conv_geometry_layout()),
            "add_params": In(add_params_layout()),
            "packet": Out(stream.Signature(link_beat_layout())),
            "idle": Out(1),
            "completed": Out(1),
            "busy": Out(1),
            "reads": Out(1),
            "writes": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.buffer = buffer = Memory(shape=data.ArrayLayout(signed(8), LANES),
                                              depth=max(2, cfg.vec_depth), init=[])
        read = buffer.read_port()
        own_writes = stream.Signature(vec_write_layout(cfg)).create()
        self._buffer_writes(m, buffer.write_port(granularity=1), own_writes)

        m.submodules.out = out = fifo.SyncFIFOBuffered(width=link_beat_layout().size, depth=_OUT_QUEUE)
        cmd = Signal(vec_command_layout(cfg))
        accept = Signal()       # IDLE takes a command
        run = Signal()          # in RUN
        stored = self._route(m, out, cmd, accept, own_writes)
        pool, add = self._operations(m, read, cmd, accept, run)
        send_header, all_sent = self._emit(m, out, cmd, accept, pool, add)
        sends = cmd.store == StoreTarget.HOST

        m.d.comb += [self.completed.eq(0), self.busy.eq(0)]
        with m.FSM():
            with m.State("IDLE"):
                # a command that stores waits until the words the one before sent have left the queue: the queue's
                # words go where the running command says
                m.d.comb += [self.cmd.ready.eq((self.cmd.payload.store == StoreTarget.HOST) | ~out.r_rdy),
                             self.idle.eq(~out.r_rdy)]
                with m.If(self.cmd.valid & self.cmd.ready):
                    m.d.comb += accept.eq(1)
                    m.d.sync += cmd.eq(self.cmd.payload)
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += self.busy.eq(1)
                with m.If(~sends):
                    m.next = "RUN"
                with m.Elif(out.w_rdy):
                    m.d.comb += send_header.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), run.eq(1)]
                with m.If(pool.done | add.done):
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += self.busy.eq(1)
                # (a stored command is complete once its last word is written)
                with m.If(all_sent & (sends | (stored == cmd.words))):
                    m.d.comb += self.completed.eq(1)
                    m.next = "IDLE"
        return m

    def _buffer_writes(self, m, write, own_writes):
        """The vector buffer's one write port: LOADs first (always ready), then stored GEMM rows, then the unit's
        own stored results."""
        load, store_in = self.load, self.store_in
        m.d.comb += [load.ready.eq(1), store_in.ready.eq(~load.valid),
                     own_writes.ready.eq(~load.valid & ~store_in.valid)]
        with m.If(load.valid):
            m.d.comb += [write.addr.eq(load.payload.addr), write.data.eq(load.payload.data), write.en.eq(-1)]
        with m.Elif(store_in.valid):
            m.d.comb += [write.addr.eq(store_in.payload.addr), write.data.eq(store_in.payload.data),
                         write.en.eq(store_in.payload.mask)]
        with m.Elif(own_writes.valid):
            m.d.comb += [write.addr.eq(own_writes.payload.addr), write.data.eq(own_writes.payload.data),
                         write.en.eq(-1)]
        m.d.comb += self.writes.eq(load.valid | store_in.valid | own_writes.valid)

    def _route(self, m, out, cmd, accept, own_writes):
        """The output queue's words go where the running command's ``store`` says: to the host as a VECTOR
        packet, into the vector buffer from ``d_base`` on, or a pool's, pixel by pixel into the activation buffer
        (result word ``j`` is channel block ``j % blocks`` of pixel ``j // blocks``). Returns the count of the
        command's words written."""
        cfg = self.cfg
        m.submodules.act_writer = act_writer = LaneWriter(cfg, LANES, act_write_layout(cfg))
        wiring.connect(m, act_writer.writes, wiring.flipped(self.act_store))
        word = data.View(link_beat_layout(), out.r_data).data
        written = Signal(24)
        block = Signal(8)           # the next word's channel block
        pixel_base = Signal.like(cmd.d_base)   # where its pixel starts in the activation buffer
        lane = Signal(10)           # where its channels start among that pixel's
        m.d.comb += lane.eq(cmd.lane + block * LANES)
        m.d.comb += [
            own_writes.payload.addr.eq(cmd.d_base + written), own_writes.payload.data.eq(word),
            own_writes.payload.mask.eq(-1),
            act_writer.rows.payload.row.eq(word), act_writer.rows.payload.addr.eq(pixel_base + lane // cfg.rows),
            act_writer.rows.payload.lane.eq(lane % cfg.rows),
            act_writer.rows.payload.lanes.eq(Mux(cmd.lanes - block * LANES < LANES, cmd.lanes - block * LANES,
                                                 LANES)),
        ]
        with m.Switch(cmd.store):
            with m.Case(StoreTarget.HOST):
                m.d.comb += [self.packet.valid.eq(out.r_rdy), self.packet.payload.eq(out.r_data),
                             out.r_en.eq(self.packet.ready)]
            with m.Case(StoreTarget.VEC):
                m.d.comb += [own_writes.valid.eq(out.r_rdy), out.r_en.eq(own_writes.ready)]
                with m.If(own_writes.valid & own_writes.ready):
                    m.d.sync += written.eq(written + 1)
            with m.Case(StoreTarget.ACT):
                m.d.comb += [act_writer.rows.valid.eq(out.r_rdy), out.r_en.eq(act_writer.rows.ready)]
                with m.If(act_writer.rows.valid & act_writer.rows.ready):
                    m.d.sync += block.eq(block + 1)
                    with m.If(block == ((cmd.lanes + LANES - 1) >> 2) - 1):
                        m.d.sync += [block.eq(0), pixel_base.eq(pixel_base + cmd.stride)]
                with m.If(act_writer.done):
                    m.d.sync += written.eq(written + 1)
        with m.If(accept):
            m.d.sync += [written.eq(0), block.eq(0), pixel_base.eq(self.cmd.payload.d_base)]
        return written

    def _operations(self, m, read, cmd, accept, run):
        """The pool and the add, each on the buffer's read port while a command of its kind runs."""
        m.submodules.pool = pool = MaxPool(self.cfg)
        m.submodules.add = add = VectorAdd(self.cfg)
        pooling = cmd.op == VecOp.POOL
        m.d.comb += [
            pool.geometry.eq(self.geometry), pool.start.eq(accept),
            pool.out_y.eq(self.cmd.payload.out_y), pool.out_x.eq(self.cmd.payload.out_x),
            pool.a_base.eq(cmd.a_base), pool.count.eq(cmd.count), pool.run.eq(run & pooling),
            pool.read_data.eq(read.data),
            add.params.eq(self.add_params), add.start.eq(accept),
            add.a_base.eq(cmd.a_base), add.b_base.eq(cmd.b_base), add.count.eq(cmd.count),
            add.run.eq(run & ~pooling), add.read_data.eq(read.data),
            read.addr.eq(Mux(pooling, pool.read_addr, add.read_addr)),
            self.reads.eq(pool.reading | add.reading),
        ]
        return pool, add

    def _emit(self, m, out, cmd, accept, pool, add):
        """Results into the output queue: the packet header first, then the words. A read may start only if
        its result word will find room in the queue. Returns the strobe that sends the header, and whether
        every result word of the command is queued."""
        emitted = Signal(24)
        in_flight = Signal(range(_OUT_QUEUE + 1))
        room = Signal()
        m.d.comb += [room.eq(out.level + in_flight < _OUT_QUEUE - 1), pool.room.eq(room), add.room.eq(room)]

        header = data.View(packet_header_layout(), Signal(LINK_WIDTH))
        m.d.comb += [header.kind.eq(PacketKind.VECTOR), header.length.eq(cmd.words)]
        beat = data.View(link_beat_layout(), Signal(link_beat_layout().size))
        result_valid = Signal()
        result_word = Signal(LINK_WIDTH)
        with m.If(cmd.op == VecOp.POOL):
            m.d.comb += [result_valid.eq(pool.result_valid), result_word.eq(pool.result)]
        with m.Else():
            m.d.comb += [result_valid.eq(add.result_valid), result_word.eq(add.result)]
        send_header = Signal()
        m.d.comb += [
            beat.data.eq(Mux(send_header, header.as_value(), result_word)),
            beat.last.eq(~send_header & (emitted == cmd.words - 1)),
            out.w_data.eq(beat.as_value()),
            out.w_en.eq(send_header | result_valid),
        ]
        with m.If(result_valid):
            m.d.sync += emitted.eq(emitted + 1)
        with m.If(accept):
            m.d.sync += emitted.eq(0)
        # a read whose result word is on its way is counted in in_flight until the word is queued
        m.d.sync += in_flight.eq(in_flight + (pool.started | add.started) - result_valid)
        return send_header, (emitted == cmd.words) & (in_flight == 0)
