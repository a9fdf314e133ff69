"""LOAD: buffer words assembled from the host's link words and written where the instruction says."""

from amaranth.hdl import Cat, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .controller_program import program_load_layout
from .isa import LINK_WIDTH, BufferId, ErrorCode, Opcode, operands_layout, words_per_buffer_word
from .layouts import act_load_layout, param_load_layout, vec_load_layout, weight_load_layout

__all__ = ["LoadAssembler"]

#: The buffers a LOAD can write: the port that writes each, its layout and the configuration field of its depth.
_BUFFERS = {
    BufferId.ACT: ("act_load", act_load_layout, "act_depth"),
    BufferId.WEIGHT: ("weight_load", weight_load_layout, "weight_depth"),
    BufferId.PARAM: ("param_load", param_load_layout, "param_depth"),
    BufferId.VEC: ("vec_load", vec_load_layout, "vec_depth"),
    BufferId.PROGRAM: ("prog_load", program_load_layout, "program_depth"),
}


class LoadAssembler(wiring.Component):
    """Carries out a LOAD: gathers each buffer word from its link words and writes it to the buffer named.

    A LOAD beyond its buffer's depth, or to a buffer that does not exist, still receives its words (the host
    sends them all the same) and drops them, one link word per buffer word for an unknown buffer.

    A packed LOAD (``lanes`` set; the activation buffer) takes its words' first ``lanes`` lanes from the link's
    bytes, one word after another, and writes the other lanes zero: a map of few channels crosses the link
    without the padding of its words.

    Attributes
    ----------
    request : In(operands_layout(cfg, Opcode.LOAD))
        The LOAD being decoded.
    in_program : In(1)
        The LOAD comes from a running program, which must not write the program memory.
    error : Out(8)
        Why ``request`` is rejected: an ErrorCode, 0 if it is not.
    start : In(1)
        Take ``request``: its words are the next ones on ``words``.
    words : In(stream of LINK_WIDTH-bit words)
    receiving : Out(1)
        Words of the LOAD are still to come.
    silent : Out(1)
        Receiving, and the host sent no word this cycle: what the link time-out counts.
    abort : In(1)
        Expect no more words (the host went silent).
    done : Out(1)
        Every word received and every buffer word written.
    act_load, weight_load, param_load : Out(stream)
        Buffer writes: ``{addr, data}``.
    vec_load, prog_load : Out(stream)
        The vector unit's buffer and the program memory (each absent when its depth is 0).
    """

    def __init__(self, cfg):
        self.cfg = cfg
        #: buffer id: the port that writes it, for each buffer this device has
        self.ports = {b: port for b, (port, _, depth) in _BUFFERS.items() if getattr(cfg, depth) > 0}
        super().__init__({
            "request": In(operands_layout(cfg, Opcode.LOAD)),
            "in_program": In(1),
            "error": Out(8),
            "start": In(1),
            "words": In(stream.Signature(unsigned(LINK_WIDTH))),
            "receiving": Out(1),
            "silent": Out(1),
            "abort": In(1),
            "done": Out(1),
            **{port: Out(stream.Signature(_BUFFERS[b][1](cfg))) for b, port in self.ports.items()},
        })

    def elaborate(self, platform):
        m = Module()
        beats = {b: words_per_buffer_word(self.cfg, b) for b in BufferId}   # link words per buffer word
        max_beats = max(beats.values())
        assembly = Signal(max_beats * LINK_WIDTH)
        beat = Signal(range(max_beats + 1))
        beats_needed = Signal(range(max_beats + 1))
        remaining = Signal(17)
        addr = Signal(16)
        buffer = Signal.like(self.request.buffer)
        discard = Signal()
        write_pending = Signal()
        # (a buffer id without a port never has a write pending: its words are discarded; ready regardless, so
        # that no state, reachable or not, waits on it)
        target_ready = Signal(init=1)
        request_beats = self._check_request(m, beats)
        packed, packed_write, taking = self._packed(m, write_pending, discard, remaining)

        for b, port in self.ports.items():
            target = getattr(self, port)
            # The assembled word sits in the top `beats[b]` link words of the shift register.
            low = (max_beats - beats[b]) * LINK_WIDTH
            data_bits = Shape.cast(_BUFFERS[b][1](self.cfg)["data"].shape).width
            m.d.comb += [target.payload.addr.eq(addr),
                         target.payload.data.eq(assembly[low:low + data_bits]),
                         target.valid.eq(write_pending & (buffer == b))]
            if b == BufferId.ACT:
                with m.If(packed):
                    m.d.comb += target.payload.data.eq(packed_write)
            with m.If(buffer == b):
                m.d.comb += target_ready.eq(target.ready)

        accepted = self.words.valid & self.words.ready
        # The next word may arrive while the assembled one is written: the write leaves this cycle.
        m.d.comb += [self.receiving.eq(Mux(packed, taking, remaining != 0)),
                     self.done.eq((remaining == 0) & ~write_pending & ~taking),
                     self.words.ready.eq(Mux(packed, self._packed_ready,
                                             self.receiving & (~write_pending | target_ready)))]
        # Only the host's silence counts: a word waits while a single-port buffer that compute is reading (hw.buffer)
        # is busy until the running fold ends, while stored result rows take the activation buffer's write port,
        # and while a packed LOAD writes the words of the bytes it holds; none of that is the host going silent.
        m.d.comb += self.silent.eq(self.receiving & ~self.words.valid)

        # a write leaving and the next word completing the next buffer word: the statement below wins
        with m.If(write_pending & target_ready):
            m.d.sync += [write_pending.eq(0), addr.eq(addr + 1)]
        with m.If(self.start):
            m.d.sync += [remaining.eq(self.request.words), addr.eq(self.request.addr), buffer.eq(self.request.buffer),
                         beat.eq(0), beats_needed.eq(request_beats), discard.eq(self.error != 0)]
        with m.Elif(self.abort):
            m.d.sync += remaining.eq(0)
        with m.Elif(accepted & ~packed):
            m.d.sync += assembly.eq(Cat(assembly[LINK_WIDTH:], self.words.payload))
            with m.If(beat == beats_needed - 1):
                m.d.sync += [beat.eq(0), remaining.eq(remaining - 1), write_pending.eq(~discard)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
        return m

    def _packed(self, m, write_pending, discard, remaining):
        """A packed LOAD's byte queue: link words in, each buffer word's ``lanes`` bytes out. Returns whether the
        LOAD is packed, the word to write and whether link words are still to come; sets ``_packed_ready``."""
        cfg, request = self.cfg, self.request
        rows = cfg.rows
        packed = Signal()
        lanes = Signal.like(request.lanes)
        held = Signal(8 * (rows + 4))        # bytes received and not yet written, the next word's first
        held_bytes = Signal(range(rows + 5))
        link_left = Signal(25)               # link words still to come
        word = Signal(8 * rows)
        self._packed_ready = Signal()
        accepted = self.words.valid & self.words.ready
        # a rejected LOAD takes its link words and drops them; a taken one while the next word lacks bytes
        m.d.comb += self._packed_ready.eq((link_left != 0) & (discard | (held_bytes < lanes)))
        emit = packed & ~discard & (remaining != 0) & (held_bytes >= lanes) & ~write_pending
        lane_mask = Signal(8 * rows)
        # (per lane, not (1 << 8 * lanes) - 1: that shift is 4,096 bits wide, and Amaranth's cycle check of its
        # subtraction took 8 of the 11 s a small device's Verilog took)
        m.d.comb += lane_mask.eq(Cat(*((lanes > lane).replicate(8) for lane in range(rows))))
        with m.If(self.start):
            m.d.sync += [packed.eq(request.lanes != 0), lanes.eq(request.lanes), held_bytes.eq(0), held.eq(0),
                         link_left.eq((request.words * request.lanes + 3) >> 2)]
        with m.Elif(self.abort):
            m.d.sync += link_left.eq(0)
        with m.Elif(packed & accepted):
            m.d.sync += link_left.eq(link_left - 1)
            with m.If(~discard):
                m.d.sync += [held.eq(held | (self.words.payload << (held_bytes * 8))), held_bytes.eq(held_bytes + 4)]
        with m.Elif(emit):
            m.d.sync += [word.eq(held[:8 * rows] & lane_mask), held.eq(held >> (lanes * 8)),
                         held_bytes.eq(held_bytes - lanes), remaining.eq(remaining - 1), write_pending.eq(1)]
        with m.If(packed & discard & (link_left == 0)):
            m.d.sync += remaining.eq(0)
        return packed, word, packed & (link_left != 0)

    def _check_request(self, m, beats):
        # drives `error`; returns the link words per buffer word of the buffer the request names
        request = self.request
        request_beats = Signal(range(max(beats.values()) + 1))
        with m.Switch(request.buffer):
            for b in self.ports:
                with m.Case(b):
                    m.d.comb += request_beats.eq(beats[b])
                    with m.If(request.addr + request.words > getattr(self.cfg, _BUFFERS[b][2])):
                        m.d.comb += self.error.eq(ErrorCode.OUT_OF_RANGE)
                    if b == BufferId.PROGRAM:
                        with m.If(self.in_program):   # (this one wins: the statement comes later)
                            m.d.comb += self.error.eq(ErrorCode.BAD_PROGRAM)
            with m.Default():
                m.d.comb += [request_beats.eq(1), self.error.eq(ErrorCode.BAD_BUFFER)]
        # packed lanes: into the activation buffer only, no more than its words hold
        with m.If((request.lanes != 0) & ((request.buffer != BufferId.ACT) | (request.lanes > self.cfg.rows))):
            m.d.comb += self.error.eq(ErrorCode.BAD_BUFFER)
        return request_beats
