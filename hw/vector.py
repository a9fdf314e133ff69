"""The vector unit: max pooling and element-wise add on int8 feature maps, beside the PE array.

It has its own buffer of 32-bit words (four int8 lanes, one link word each) that LOADs with
``BufferId.VEC`` fill, and answers each command with one VECTOR packet of result words on its own packet
stream. Both operations are bound by the link (pooling reads each input word about once, an add reads two
words per result word), so four lanes match it; nothing here needs the array.

* ``POOL``: a max over each window of a feature map stored pixel by pixel in raster order,
  ``channel_blocks`` words per pixel (the POOL_SETUP geometry, :func:`tessera.hw.layouts.conv_geometry_layout`).
  Taps in the padding are skipped, as onnxruntime never lets padding win a max.
* ``ADD``: onnxruntime's QLinearAdd on two runs of words, bit-exact (:mod:`tessera.hw.qadd`).
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .controller import link_beat_layout
from .isa import LINK_WIDTH, PacketKind, packet_header_layout
from .layouts import MAX_CONV_SIDE, conv_geometry_layout, vec_command_layout, vec_load_layout
from .qadd import QAddLane, add_params_layout

__all__ = ["VectorUnit", "VecOp", "LANES"]

#: int8 lanes per vector buffer word (one host link word).
LANES = LINK_WIDTH // 8
_OUT_QUEUE = 16
_COORD = signed(12)


class VecOp:
    """The ``op`` field of a vector command."""
    POOL = 0
    ADD = 1


class VectorUnit(wiring.Component):
    """Max pooling and quantized add over the vector buffer.

    Attributes
    ----------
    load : In(stream of vec_load_layout)
        Vector buffer writes; always ready.
    cmd : In(stream of vec_command_layout)
    geometry : In(conv_geometry_layout())
        Pooling geometry; must hold still while pool commands are queued or run.
    add_params : In(add_params_layout())
        Likewise for add commands.
    packet : Out(stream of link_beat_layout)
        One VECTOR packet per command: a header, then the result words.
    idle : Out(1)
    completed, busy, reads : Out(1)
        Event strobes for the performance counters.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "load": In(stream.Signature(vec_load_layout(cfg))),
            "cmd": In(stream.Signature(vec_command_layout(cfg))),
            "geometry": In(conv_geometry_layout()),
            "add_params": In(add_params_layout()),
            "packet": Out(stream.Signature(link_beat_layout())),
            "idle": Out(1),
            "completed": Out(1),
            "busy": Out(1),
            "reads": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.buffer = buffer = Memory(shape=data.ArrayLayout(signed(8), LANES),
                                              depth=max(2, cfg.vec_depth), init=[])
        write = buffer.write_port()
        read = buffer.read_port()
        m.d.comb += [self.load.ready.eq(1), write.addr.eq(self.load.payload.addr),
                     write.data.eq(self.load.payload.data), write.en.eq(self.load.valid)]

        m.submodules.out = out = fifo.SyncFIFOBuffered(width=link_beat_layout().size, depth=_OUT_QUEUE)
        m.d.comb += [self.packet.valid.eq(out.r_rdy), self.packet.payload.eq(out.r_data),
                     out.r_en.eq(self.packet.ready)]

        g = self.geometry
        cmd = Signal(vec_command_layout(cfg))
        total = Signal(24)      # result words of the command
        emitted = Signal(24)
        in_flight = Signal(range(_OUT_QUEUE + 1))
        # A read may start only if its result word will find room in the output queue.
        room = Signal()
        m.d.comb += room.eq(out.level + in_flight < _OUT_QUEUE - 1)

        # -- pooling: counters over pixel, channel block, tap; the address is computed a cycle later ---------
        oy, ox = Signal(range(MAX_CONV_SIDE + 1)), Signal(range(MAX_CONV_SIDE + 1))
        pixel = Signal(16)
        cb = Signal(8)
        kh, kw = Signal(3), Signal(3)
        tap_last_w, tap_last_h = kw == g.kernel_w - 1, kh == g.kernel_h - 1
        block_last, pixel_last = cb == g.channel_blocks - 1, pixel == cmd.count - 1
        # stage A: input coordinates of the tap
        a_valid, a_first, a_last = Signal(), Signal(), Signal()
        iy, ix, a_cb = Signal(_COORD), Signal(_COORD), Signal(8)
        # stage B: the read (or the padding) is under way
        b_valid, b_first, b_last, b_pad = Signal(), Signal(), Signal(), Signal()
        running = Signal(data.ArrayLayout(signed(8), LANES))
        pool_word, pool_word_valid = Signal(LINK_WIDTH), Signal()

        # -- add: read a's word, then b's; a's is kept while b's arrives, then both enter the lanes -----------
        word = Signal(16)
        phase_b = Signal()
        a_word = Signal(data.ArrayLayout(signed(8), LANES))
        a_arriving, b_arriving = Signal(), Signal()     # the read data of the previous cycle is a's / b's
        m.d.sync += [a_arriving.eq(0), b_arriving.eq(0)]
        with m.If(a_arriving):
            m.d.sync += a_word.eq(read.data)
        # uint8 values are held on the device as x - 128; the lanes work on raw values
        offset = Mux(self.add_params.uint8, 128, 0)
        lanes = []
        for lane in range(LANES):
            m.submodules[f"add_{lane}"] = unit = QAddLane()
            lanes.append(unit)
            m.d.comb += [unit.params.eq(self.add_params), unit.valid.eq(b_arriving),
                         unit.a.eq(a_word[lane] + offset), unit.b.eq(read.data[lane] + offset)]
        add_out = Signal(data.ArrayLayout(signed(8), LANES))
        for lane, unit in enumerate(lanes):
            m.d.comb += add_out[lane].eq(unit.y - offset)

        # -- results into the output queue: a header first, then words ----------------------------------------
        header = data.View(packet_header_layout(), Signal(LINK_WIDTH))
        m.d.comb += [header.kind.eq(PacketKind.VECTOR), header.length.eq(total)]
        beat = data.View(link_beat_layout(), Signal(link_beat_layout().size))
        result_valid = Signal()
        result_word = Signal(LINK_WIDTH)
        with m.If(cmd.op == VecOp.POOL):
            m.d.comb += [result_valid.eq(pool_word_valid), result_word.eq(pool_word)]
        with m.Else():
            m.d.comb += [result_valid.eq(lanes[0].out_valid), result_word.eq(add_out.as_value())]
        send_header = Signal()
        m.d.comb += [
            beat.data.eq(Mux(send_header, header.as_value(), result_word)),
            beat.last.eq(~send_header & (emitted == total - 1)),
            out.w_data.eq(beat.as_value()),
            out.w_en.eq(send_header | result_valid),
        ]
        started = Signal()     # a read whose result word is now counted in in_flight
        with m.If(result_valid):
            m.d.sync += emitted.eq(emitted + 1)
        m.d.sync += in_flight.eq(in_flight + started - result_valid)

        reading = Signal()
        m.d.comb += self.reads.eq(reading)

        # -- stage A -> B for pooling (runs every cycle; the FSM feeds stage A) -------------------------------
        row_words = Signal(24)
        m.d.comb += row_words.eq(g.in_w * g.channel_blocks)
        inside = (iy >= 0) & (iy < g.in_h) & (ix >= 0) & (ix < g.in_w)
        pool_addr = Signal(24)
        m.d.comb += pool_addr.eq(cmd.a_base + iy * row_words + ix * g.channel_blocks + a_cb)
        m.d.sync += [b_valid.eq(a_valid), b_first.eq(a_first), b_last.eq(a_last), b_pad.eq(~inside)]
        with m.If(cmd.op == VecOp.POOL):
            m.d.comb += [read.addr.eq(pool_addr), reading.eq(a_valid & inside)]
        # stage B: fold the word into the running max
        maxed = Signal(data.ArrayLayout(signed(8), LANES))
        for lane in range(LANES):
            start = Mux(b_first, -128, running[lane])
            tap = Mux(b_pad, -128, read.data[lane])
            m.d.comb += maxed[lane].eq(Mux(tap > start, tap, start))
        with m.If(b_valid):
            m.d.sync += running.eq(maxed)
        m.d.comb += [pool_word.eq(maxed.as_value()), pool_word_valid.eq(b_valid & b_last)]

        m.d.comb += [self.completed.eq(0), self.busy.eq(0), a_valid.eq(0)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.cmd.ready.eq(1), self.idle.eq(~out.r_rdy)]
                with m.If(self.cmd.valid):
                    c = self.cmd.payload
                    m.d.sync += [cmd.eq(c), emitted.eq(0), pixel.eq(0), cb.eq(0), kh.eq(0), kw.eq(0),
                                 oy.eq(c.out_y), ox.eq(c.out_x), word.eq(0), phase_b.eq(0)]
                    with m.If(c.op == VecOp.POOL):
                        m.d.sync += total.eq(c.count * self.geometry.channel_blocks)
                    with m.Else():
                        m.d.sync += total.eq(c.count)
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += self.busy.eq(1)
                with m.If(out.w_rdy):
                    m.d.comb += send_header.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(cmd.op == VecOp.POOL):
                    with m.If(room):
                        m.d.comb += [a_valid.eq(1), a_first.eq((kh == 0) & (kw == 0)),
                                     a_last.eq(tap_last_h & tap_last_w), started.eq(tap_last_h & tap_last_w)]
                        m.d.comb += [iy.eq(oy * g.stride + kh - g.pad_top), ix.eq(ox * g.stride + kw - g.pad_left),
                                     a_cb.eq(cb)]
                        # next tap, then block, then pixel (raster order, wrapping at out_w)
                        m.d.sync += kw.eq(kw + 1)
                        with m.If(tap_last_w):
                            m.d.sync += [kw.eq(0), kh.eq(kh + 1)]
                            with m.If(tap_last_h):
                                m.d.sync += [kh.eq(0), cb.eq(cb + 1)]
                                with m.If(block_last):
                                    m.d.sync += [cb.eq(0), pixel.eq(pixel + 1), ox.eq(ox + 1)]
                                    with m.If(ox == g.out_w - 1):
                                        m.d.sync += [ox.eq(0), oy.eq(oy + 1)]
                                    with m.If(pixel_last):
                                        m.next = "FINISH"
                with m.Else():
                    with m.If(~phase_b):
                        with m.If(room):
                            m.d.comb += [read.addr.eq(cmd.a_base + word), reading.eq(1)]
                            m.d.sync += [phase_b.eq(1), a_arriving.eq(1)]
                    with m.Else():
                        m.d.comb += [read.addr.eq(cmd.b_base + word), reading.eq(1), started.eq(1)]
                        m.d.sync += [phase_b.eq(0), word.eq(word + 1), b_arriving.eq(1)]
                        with m.If(word == cmd.count - 1):
                            m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += self.busy.eq(1)
                with m.If((emitted == total) & (in_flight == 0)):
                    m.d.comb += self.completed.eq(1)
                    m.next = "IDLE"
        return m
