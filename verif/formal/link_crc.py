"""The link receiver (:class:`tessera.fpga.link.LinkReceiver`) delivers only frames whose CRC is right, each once, in
order, and its ring never overflows.

The host's bytes are free: any byte in any cycle (or none). Beside the receiver the spec parses them itself by the
frame format of :mod:`tessera.sw_driver.link_protocol` (its own count of a frame's fields, its own choice of the bytes
the CRC covers, the same gap rule), and asserts that:

- the receiver's CRC unit starts at each frame's SOF and takes exactly the bytes the frame's CRC covers, so its
  residue check after the last byte says whether the frame's CRC is right;

- the receiver commits words (``control.expected`` moves) only right after a DATA frame whose CRC is right and
  whose ``seq`` is the offset expected, and by that frame's word count: a damaged, duplicated or skipped
  frame is never committed;
- a session reset follows only a RESET frame with a right CRC;
- the ring never holds more than its depth, ``host_in`` delivers only committed words, and the word it delivers as
  the n-th of the session is the payload word at offset n of the frame that carried it (a tracked word, chosen
  freely);
- ``host_in`` keeps the stream handshake, except across a session reset (the accelerator is reset with it).
"""

from amaranth.asserts import AnySeq
from amaranth.hdl import Assert, Assume, Cat, Cover, Signal

from tessera.fpga.link import LinkReceiver
from tessera.sw_driver.link_protocol import MAX_PAYLOAD_WORDS, SEQ_MODULUS, SOF, FrameKind

from .spec import FormalSpec, free, open_block

__all__ = ["LinkReceiverSpec"]

_SEQ_BITS = SEQ_MODULUS.bit_length() - 1


class LinkReceiverSpec(FormalSpec):
    """The receiver's delivery contract against the spec's own parse of the byte stream.

    Parameters
    ----------
    depth : int
        The ring's depth (the receiver's smallest: one frame).
    part : str
        ``"commits"``: what the receiver commits, and the ring's bounds. ``"delivery"``: the committed words come out
        on ``host_in`` in order, each once, and ``host_in`` keeps the handshake. Run it with the CRC unit cut
        (:attr:`CRC_UNIT`): whether a frame is right does not change where its words go, and the CRC's XOR network
        is what makes the solver slow.
    resend_cover : bool
        Also cover a frame sent again after its words were committed (two whole frames: a deeper cover).
    byte_timeout : int
        Quiet cycles after which the receiver drops a frame; the spec's parse applies the same rule.
    """

    #: The CRC unit's module, which the delivery part leaves out (a cut point: its residue check becomes free).
    CRC_UNIT = "top.dut.crc"

    def __init__(self, part, *, resend_cover=True, depth=MAX_PAYLOAD_WORDS, byte_timeout=3):
        if part not in ("commits", "delivery"):
            raise ValueError(f"part: {part!r} is not one; accepted: 'commits', 'delivery'")
        self.part = part
        self.resend_cover = resend_cover
        self.depth = depth
        self.byte_timeout = byte_timeout

    def build(self, m, platform):
        dut = LinkReceiver(depth=self.depth, byte_timeout=self.byte_timeout)
        body = open_block(m, "dut", dut, platform)
        free(m, dut.rx_byte.valid)
        free(m, dut.rx_byte.payload)
        free(m, dut.host_in.ready)
        frame = self._parse(m, dut.rx_byte.valid, dut.rx_byte.payload)
        # the receiver checks a frame's CRC in the cycle after its last byte and takes no byte then; a UART's bytes
        # are ten bit times apart, so none ever comes in that cycle
        m.d.comb += Assume(~(frame["ended"] & dut.rx_byte.valid))
        crc = body.find_subfragment("crc").origins[0]
        frame["good"] = crc.match_detected
        if self.part == "commits":
            self._crc_input(m, body, frame)
        moved, ended = self._commits(m, dut, frame)
        delivered = self._ring(m, dut)
        if self.part == "delivery":
            self._delivery(m, dut, frame, moved, ended, delivered)

    def _parse(self, m, got, byte):
        """The spec's parse: returns the frame that ended in the last cycle and whether its CRC was right."""
        timeout = self.byte_timeout
        in_frame = Signal()
        count = Signal(range(5 + 4 * MAX_PAYLOAD_WORDS + 4 + 1))   # bytes after SOF
        kind, seq, arg = Signal(8), Signal(_SEQ_BITS), Signal(_SEQ_BITS)
        quiet = Signal(range(timeout + 1))
        ended = Signal()     # a whole frame (with its CRC) ended in the last cycle
        payload_bytes = Signal(range(4 * MAX_PAYLOAD_WORDS + 1))
        word_bytes = Signal(24)
        word = Signal(32)    # a payload word completed this cycle ...
        word_done = Signal()
        word_index = Signal(range(MAX_PAYLOAD_WORDS))
        m.d.sync += ended.eq(0)

        with m.If(got):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet != timeout):
            m.d.sync += quiet.eq(quiet + 1)

        header_end = count == 4
        body = 5 + payload_bytes
        starts = Signal()    # the byte of this cycle starts a frame ...
        covered = Signal()   # ... is one the frame's CRC covers (kind to the CRC's last byte)
        with m.If(~in_frame):
            with m.If(got & (byte == SOF)):
                m.d.sync += [in_frame.eq(1), count.eq(0)]
                m.d.comb += starts.eq(1)
        with m.Elif(got):
            m.d.sync += count.eq(count + 1)
            m.d.comb += covered.eq(1)
            with m.Switch(count):
                with m.Case(0):
                    m.d.sync += kind.eq(byte)
                with m.Case(1):
                    m.d.sync += seq[:8].eq(byte)
                with m.Case(2):
                    m.d.sync += seq[8:].eq(byte)
                with m.Case(3):
                    m.d.sync += arg[:8].eq(byte)
            full_arg = Cat(arg[:8], byte)
            with m.If(header_end):
                m.d.sync += arg[8:].eq(byte)
                # the protocol's rules: a DATA frame of 1 to MAX_PAYLOAD_WORDS words has a payload, one of 0 words
                # and ACK, NAK and RESET frames have none, anything else is dropped
                with m.If(kind == FrameKind.DATA):
                    with m.If(full_arg > MAX_PAYLOAD_WORDS):
                        m.d.sync += in_frame.eq(0)
                    m.d.sync += payload_bytes.eq(full_arg << 2)
                with m.Elif((kind > FrameKind.DATA) & (kind <= FrameKind.RESET)):
                    m.d.sync += payload_bytes.eq(0)
                with m.Else():
                    m.d.sync += in_frame.eq(0)
            with m.If((count >= 5) & (count < body)):
                m.d.sync += word_bytes.eq(Cat(word_bytes[8:], byte))
                with m.If((count - 5)[:2] == 3):
                    m.d.comb += [word.eq(Cat(word_bytes, byte)), word_done.eq(1),
                                 word_index.eq((count - 5) >> 2)]
            with m.If(count == body + 3):
                m.d.sync += [in_frame.eq(0), ended.eq(1)]
        with m.Elif(quiet == timeout):
            m.d.sync += in_frame.eq(0)   # the frame's remaining bytes are not coming: dropped

        return {"ended": ended, "starts": starts, "covered": covered, "kind": kind, "seq": seq, "arg": arg,
                "word": word, "word_done": word_done, "word_offset": (seq + word_index)[:_SEQ_BITS],
                "in_frame": in_frame, "count": count}

    def _crc_input(self, m, body, frame):
        """The receiver's CRC unit starts at each frame's SOF and takes exactly the bytes the frame's CRC covers, by
        the spec's parse: then its residue check (``match_detected``, after the last byte) says whether the frame's
        CRC is right. Returns that check. (The unit itself is Amaranth's; tests/test_fpga_link.py checks its
        parameters against zlib. Comparing it with a second CRC of the same bytes would ask the solver to prove two
        XOR networks equal, which SAT solvers do badly.)"""
        crc = body.find_subfragment("crc").origins[0]
        fsm = body.find_generated("fsm")
        receiving = fsm.ongoing("HEADER") | fsm.ongoing("PAYLOAD") | fsm.ongoing("CRC")
        m.d.comb += Assert(receiving == frame["in_frame"], "the receiver and the spec disagree on a frame's bytes")
        m.d.comb += Assert(crc.start == frame["starts"], "the receiver's CRC starts elsewhere than at a frame's SOF")
        m.d.comb += Assert(crc.valid == frame["covered"], "the receiver's CRC takes bytes other than the frame's")

    def _commits(self, m, dut, frame):
        """Words are committed, and a session reset, only for the frames that allow it; returns whether words were
        committed in the last cycle's CHECK (``control.expected`` moved)."""
        ctl = dut.control
        # CHECK is the cycle after a frame's last byte (`ended`); what it commits shows in `expected` a cycle later
        ended = Signal()
        checked = Signal()   # the CRC check as the receiver saw it in CHECK
        last_expected = Signal(_SEQ_BITS)
        after_reset = Signal()
        m.d.sync += [ended.eq(frame["ended"]), checked.eq(frame["good"]), last_expected.eq(ctl.expected),
                     after_reset.eq(ctl.session_reset)]
        moved = Signal()
        m.d.comb += moved.eq((ctl.expected != last_expected) & ~after_reset)
        good_data = checked & (frame["kind"] == FrameKind.DATA)
        with m.If(moved):
            m.d.comb += Assert(ended & good_data, "words committed without a DATA frame with a right CRC")
            m.d.comb += Assert(frame["seq"] == last_expected, "a frame committed at an offset not expected")
            m.d.comb += Assert(ctl.expected == (last_expected + frame["arg"])[:_SEQ_BITS],
                               "a frame committed with a word count not its own")
        with m.If(ctl.session_reset):
            m.d.comb += Assert(frame["ended"] & frame["good"] & (frame["kind"] == FrameKind.RESET),
                               "a session reset without a RESET frame with a right CRC")
        m.d.comb += Cover(moved, "a DATA frame is committed")
        m.d.comb += Cover(ended & ~checked & (frame["kind"] == FrameKind.DATA) & (frame["arg"] != 0),
                          "a DATA frame with a wrong CRC ends")
        if not self.resend_cover:
            return moved, ended
        seen = Signal()
        with m.If(moved):
            m.d.sync += seen.eq(1)
        m.d.comb += Cover(seen & ended & good_data & (frame["arg"] != 0) & ~moved,
                          "a right frame arrives again after its words were committed, and is not committed")
        return moved, ended

    def _ring(self, m, dut):
        """The ring never holds more words than its depth, and ``host_in`` delivers only words fetched from it.
        Returns the count of words delivered this session."""
        ctl, host_in = dut.control, dut.host_in
        fetched = (ctl.window - self.depth)[:_SEQ_BITS]
        delivered = Signal(_SEQ_BITS)   # words host_in delivered this session
        with m.If(ctl.session_reset):
            m.d.sync += delivered.eq(0)
        with m.Elif(host_in.valid & host_in.ready):
            m.d.sync += delivered.eq(delivered + 1)
        m.d.comb += Assert((ctl.expected - fetched)[:_SEQ_BITS] <= self.depth, "the ring holds more than its depth")
        m.d.comb += Assert((fetched - delivered)[:_SEQ_BITS] == host_in.valid,
                           "host_in delivered a word not fetched from the ring, or lost one")
        return delivered

    def _delivery(self, m, dut, frame, moved, ended, delivered):
        """One payload word, chosen freely, followed from its frame to ``host_in``; and the handshake."""
        ctl, host_in = dut.control, dut.host_in
        beat = host_in.valid & host_in.ready
        pick = Signal()
        m.d.comb += pick.eq(AnySeq(1))
        candidate = Signal()   # picked in the frame being received
        tracking = Signal()    # its frame was committed: it must come out as the session's word `offset`
        offset, value = Signal(_SEQ_BITS), Signal(32)
        with m.If(frame["word_done"] & pick & ~candidate & ~tracking):
            m.d.sync += [candidate.eq(1), offset.eq(frame["word_offset"]), value.eq(frame["word"])]
        with m.If(candidate & ~frame["in_frame"] & ~frame["ended"] & ~ended):
            m.d.sync += candidate.eq(0)   # its frame was dropped
        with m.If(candidate & ended):
            m.d.sync += [candidate.eq(0), tracking.eq(moved)]
        with m.If(tracking & beat & (delivered == offset)):
            m.d.comb += Assert(host_in.payload == value, "host_in delivered a word other than the frame's")
            m.d.sync += tracking.eq(0)
        with m.If(ctl.session_reset):
            m.d.sync += [tracking.eq(0), candidate.eq(0)]
        m.d.comb += Cover(tracking & beat & (delivered == offset), "a tracked word is delivered")

        held = Signal()
        last = Signal(32)
        m.d.sync += [held.eq(host_in.valid & ~host_in.ready & ~ctl.session_reset), last.eq(host_in.payload)]
        with m.If(held):
            m.d.comb += Assert(host_in.valid, "host_in: valid fell before ready")
            m.d.comb += Assert(host_in.payload == last, "host_in: payload changed before ready")
