"""The device end of the framed host link (the protocol is defined in :mod:`tessera.sw_driver.link_protocol`).

`LinkReceiver` parses frames from the UART, checks their CRC, and commits the payload of in-order DATA frames
to a ring buffer that feeds the accelerator's ``host_in``; it asks the transmitter to ACK or NAK. Payload is
written into the ring as it arrives and only committed once the CRC is good, so the accelerator never sees a
word of a damaged frame. `LinkTransmitter` keeps every word of ``host_out`` in a second ring until the host
acknowledges it, so a lost frame is resent from the ring (go-back-N) rather than recomputed.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.crc import Processor
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tessera.hw.isa import LINK_WIDTH
from tessera.hw.pipeline import timing_registers
from tessera.sw_driver.link_protocol import MAX_PAYLOAD_WORDS, SEQ_MODULUS, SOF, FrameKind, crc_parameters

from .uart import UARTReceiver, UARTTransmitter

__all__ = ["LinkReceiver", "LinkTransmitter", "HostLink"]

_SEQ_BITS = SEQ_MODULUS.bit_length() - 1


def _check_depth(depth):
    if not isinstance(depth, int) or depth & (depth - 1) or not MAX_PAYLOAD_WORDS <= depth <= SEQ_MODULUS // 2:
        raise ValueError(f"depth: {depth!r} is out of range; accepted: a power of two from {MAX_PAYLOAD_WORDS} "
                         f"(one full frame) to {SEQ_MODULUS // 2} (half the sequence space)")
    return depth


def _control_signature():
    """What the receiver tells the transmitter: acks to send, and acks the host sent."""
    return wiring.Signature({
        "expected": Out(_SEQ_BITS),      # next host word offset the device wants
        "window": Out(_SEQ_BITS),        # host may send words before this offset
        "ack_request": Out(1),
        "nak_request": Out(1),
        "peer_ack": Out(1),              # an ACK or NAK frame from the host arrived ...
        "peer_nak": Out(1),              # ... and it was a NAK
        "peer_seq": Out(_SEQ_BITS),
        "session_reset": Out(1),
    })


def _ring_and_crc(m, depth):
    """Both link ends keep frame payloads in a ring of ``depth`` link words and check or make their CRC:
    the ring's write and read ports, and the CRC processor."""
    m.submodules.ring = ring = Memory(shape=LINK_WIDTH, depth=depth, init=[])
    m.submodules.crc = crc = Processor(crc_parameters())
    return ring.write_port(), ring.read_port(), crc


class LinkReceiver(wiring.Component):
    """Frames in, words out.

    Attributes
    ----------
    rx_byte : In(stream of bytes, always ready)
        From the UART receiver.
    host_in : Out(stream of 32-bit words)
        Committed payload words, in order, for the accelerator.
    control : Out(control signature)
        Requests to the transmitter and acknowledgements from the host.
    bad_frames : Out(16)
        Frames dropped for a bad CRC, a bad header or a gap (wraps).
    """

    def __init__(self, *, depth=512, byte_timeout):
        self.depth = _check_depth(depth)
        self.byte_timeout = byte_timeout
        super().__init__({
            "rx_byte": In(stream.Signature(8, always_ready=True)),
            "host_in": Out(stream.Signature(LINK_WIDTH)),
            "control": Out(_control_signature()),
            "bad_frames": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        ctl = self.control
        abits = self.depth.bit_length() - 1
        write, read, crc = _ring_and_crc(m, self.depth)

        written = Signal(_SEQ_BITS)    # tentative: payload of the frame being received goes here
        expected = Signal(_SEQ_BITS)   # committed: everything before it is good
        fetched = Signal(_SEQ_BITS)    # taken from the ring for host_in
        kind = Signal(8)
        seq = Signal(_SEQ_BITS)
        arg = Signal(_SEQ_BITS)
        count = Signal(range(4 * MAX_PAYLOAD_WORDS + 1))
        word = Signal(24)
        accept = Signal()
        nak_sent = Signal()
        quiet = Signal(range(self.byte_timeout + 1))
        byte = self.rx_byte.payload
        got = self.rx_byte.valid

        m.d.comb += [ctl.expected.eq(expected), ctl.window.eq(fetched + self.depth), crc.data.eq(byte)]

        # host_in: one registered word ahead of the ring, refilled as it is taken.
        out_valid = Signal()
        fetch = (fetched != expected) & (~out_valid | self.host_in.ready)
        m.d.comb += [read.addr.eq(fetched[:abits]), read.en.eq(fetch),
                     self.host_in.valid.eq(out_valid), self.host_in.payload.eq(read.data)]
        with m.If(fetch):
            m.d.sync += [fetched.eq(fetched + 1), out_valid.eq(1)]
        with m.Elif(self.host_in.ready):
            m.d.sync += out_valid.eq(0)

        def reject(nak):
            m.d.sync += [written.eq(expected), self.bad_frames.eq(self.bad_frames + 1)]
            if nak:
                with m.If(~nak_sent):
                    m.d.comb += ctl.nak_request.eq(1)
                    m.d.sync += nak_sent.eq(1)
            m.next = "HUNT"

        with m.FSM():
            with m.State("HUNT"):
                with m.If(got & (byte == SOF)):
                    m.d.comb += crc.start.eq(1)
                    m.d.sync += [count.eq(0), quiet.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                with m.If(got):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += count.eq(count + 1)
                    with m.Switch(count):
                        with m.Case(0):
                            m.d.sync += kind.eq(byte)
                        with m.Case(1):
                            m.d.sync += seq[:8].eq(byte)
                        with m.Case(2):
                            m.d.sync += seq[8:].eq(byte)
                        with m.Case(3):
                            m.d.sync += arg[:8].eq(byte)
                        with m.Default():
                            full_arg = Cat(arg[:8], byte)
                            room = self.depth - (expected - fetched)[:abits + 1]
                            m.d.sync += [arg[8:].eq(byte), count.eq(0),
                                         accept.eq((kind == FrameKind.DATA) & (seq == expected)
                                                   & (full_arg <= room))]
                            with m.If((kind == FrameKind.DATA) & (full_arg != 0)
                                      & (full_arg <= MAX_PAYLOAD_WORDS)):
                                m.next = "PAYLOAD"
                            with m.Elif((kind == FrameKind.DATA) & (full_arg > MAX_PAYLOAD_WORDS)):
                                reject(nak=True)
                            with m.Elif((kind >= FrameKind.DATA) & (kind <= FrameKind.RESET)):
                                m.next = "CRC"
                            with m.Else():
                                reject(nak=True)
                with m.Elif(quiet == self.byte_timeout):
                    reject(nak=True)
            with m.State("PAYLOAD"):
                with m.If(got):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += [count.eq(count + 1), word.eq(Cat(word[8:], byte))]
                    with m.If(count[:2] == 3):
                        m.d.comb += [write.addr.eq(written[:abits]), write.data.eq(Cat(word, byte)),
                                     write.en.eq(accept)]
                        m.d.sync += written.eq(written + accept)
                    with m.If(count == (arg << 2) - 1):
                        m.d.sync += count.eq(0)
                        m.next = "CRC"
                with m.Elif(quiet == self.byte_timeout):
                    reject(nak=True)
            with m.State("CRC"):
                with m.If(got):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == 3):
                        m.next = "CHECK"
                with m.Elif(quiet == self.byte_timeout):
                    reject(nak=True)
            with m.State("CHECK"):
                behind = (seq - expected)[_SEQ_BITS - 1]   # an old frame again: the host missed our ACK
                with m.If(~crc.match_detected):
                    reject(nak=True)
                with m.Elif(kind == FrameKind.DATA):
                    m.next = "HUNT"
                    with m.If(accept):
                        m.d.comb += ctl.ack_request.eq(1)
                        m.d.sync += [expected.eq(written), nak_sent.eq(0)]
                    with m.Elif(behind):
                        m.d.comb += ctl.ack_request.eq(1)
                        m.d.sync += written.eq(expected)
                    with m.Else():
                        reject(nak=True)
                with m.Elif(kind == FrameKind.RESET):
                    m.d.comb += [ctl.session_reset.eq(1), ctl.ack_request.eq(1)]
                    m.d.sync += [written.eq(0), expected.eq(0), fetched.eq(0), out_valid.eq(0), nak_sent.eq(0)]
                    m.next = "HUNT"
                with m.Else():
                    m.d.comb += [ctl.peer_ack.eq(1), ctl.peer_nak.eq(kind == FrameKind.NAK)]
                    m.next = "HUNT"
        # A frame that stops mid-way (its bytes were dropped) must not swallow the start of the next one.
        with m.If(got):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet != self.byte_timeout):
            m.d.sync += quiet.eq(quiet + 1)
        m.d.comb += ctl.peer_seq.eq(seq)
        return m


class LinkTransmitter(wiring.Component):
    """Words in, frames out, kept until acknowledged.

    Attributes
    ----------
    host_out : In(stream of 32-bit words)
        From the accelerator; ``ready`` falls when the ring holds ``depth`` unacknowledged words.
    tx_byte : Out(stream of bytes)
        To the UART transmitter.
    control : In(control signature)
        From the `LinkReceiver`.
    resent_frames : Out(16)
        Times the transmitter went back to resend (wraps).
    """

    def __init__(self, *, depth=512, retransmit_timeout):
        self.depth = _check_depth(depth)
        self.retransmit_timeout = retransmit_timeout
        super().__init__({
            "host_out": In(stream.Signature(LINK_WIDTH)),
            "tx_byte": Out(stream.Signature(8)),
            "control": In(_control_signature()),
            "resent_frames": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        ctl = self.control
        abits = self.depth.bit_length() - 1
        write, read, crc = _ring_and_crc(m, self.depth)

        filled = Signal(_SEQ_BITS)   # next offset to store from host_out
        acked = Signal(_SEQ_BITS)    # the host has everything before it
        sent = Signal(_SEQ_BITS)     # next offset to put in a frame
        sent_high = Signal(_SEQ_BITS)  # one past the last word ever put in a frame
        kind = Signal(8)
        seq = Signal(_SEQ_BITS)
        arg = Signal(_SEQ_BITS)
        count = Signal(range(4 * MAX_PAYLOAD_WORDS + 1))
        ack_pending = Signal()
        nak_pending = Signal()
        rewind = Signal()
        timer = Signal(range(self.retransmit_timeout + 1))
        # the payload word being sent: a block RAM's read data arrives late in the cycle (5.8 ns on the ECP5), so
        # it is registered before the CRC sees it, except on an iCE40 (see hw.pipeline.timing_registers)
        latch = timing_registers(platform)
        word = Signal(LINK_WIDTH) if latch else read.data

        # host_out -> ring
        take = self.host_out.valid & self.host_out.ready
        m.d.comb += [self.host_out.ready.eq((filled - acked)[:abits + 1] != self.depth),
                     write.addr.eq(filled[:abits]), write.data.eq(self.host_out.payload), write.en.eq(take)]
        m.d.sync += filled.eq(filled + take)

        # Acknowledgements from the host: cumulative, and only ever for words already sent. "Sent" means sent
        # at some time (sent_high): after a resend the host may acknowledge words beyond the current `sent`,
        # and refusing that would resend the same frames for ever.
        progress = (ctl.peer_seq - acked)[:_SEQ_BITS]
        with m.If(ctl.peer_ack & (progress <= (sent_high - acked)[:_SEQ_BITS])):
            m.d.sync += acked.eq(ctl.peer_seq)
        with m.If(ctl.peer_ack & ctl.peer_nak):
            m.d.sync += rewind.eq(1)
        # With words out and no progress for a while, an ACK or the frame itself was lost: send again.
        with m.If((acked == sent_high) | (ctl.peer_ack & (progress != 0))):
            m.d.sync += timer.eq(0)
        with m.Elif(timer == self.retransmit_timeout):
            m.d.sync += [timer.eq(0), rewind.eq(1)]
        with m.Else():
            m.d.sync += timer.eq(timer + 1)
        with m.If(ctl.ack_request | ctl.nak_request):
            m.d.sync += ack_pending.eq(1)
        with m.If(ctl.nak_request):
            m.d.sync += nak_pending.eq(1)

        m.d.comb += [read.addr.eq(sent[:abits]), crc.data.eq(self.tx_byte.payload)]
        sending = self.tx_byte.valid & self.tx_byte.ready
        backlog = (filled - sent)[:_SEQ_BITS]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(ack_pending):
                    m.d.sync += [kind.eq(Mux(nak_pending, FrameKind.NAK, FrameKind.ACK)), seq.eq(ctl.expected),
                                 arg.eq(ctl.window), ack_pending.eq(ctl.ack_request | ctl.nak_request),
                                 nak_pending.eq(ctl.nak_request)]
                    m.next = "SOF"
                with m.Elif(rewind):
                    m.d.sync += [sent.eq(acked), rewind.eq(0), self.resent_frames.eq(self.resent_frames + 1)]
                with m.Elif((sent - acked)[_SEQ_BITS - 1]):  # the host has more than we are resending: skip it
                    m.d.sync += sent.eq(acked)
                with m.Elif(backlog != 0):
                    m.d.sync += [kind.eq(FrameKind.DATA), seq.eq(sent),
                                 arg.eq(Mux(backlog > MAX_PAYLOAD_WORDS, MAX_PAYLOAD_WORDS, backlog))]
                    m.next = "SOF"
            with m.State("SOF"):
                m.d.comb += [self.tx_byte.valid.eq(1), self.tx_byte.payload.eq(SOF), crc.start.eq(1)]
                with m.If(sending):
                    m.d.sync += count.eq(0)
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [self.tx_byte.valid.eq(1), crc.valid.eq(sending),
                             self.tx_byte.payload.eq(Cat(kind, seq, arg).word_select(count, 8))]
                with m.If(sending):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == 4):
                        m.d.sync += count.eq(0)
                        m.next = "FETCH"
            with m.State("FETCH"):
                # one cycle for the ring's read port; frames without payload go straight to their CRC
                with m.If((kind == FrameKind.DATA) & (count != arg << 2)):
                    m.next = "LATCH" if latch else "PAYLOAD"
                with m.Else():
                    m.d.sync += count.eq(0)
                    m.next = "CRC"
            if latch:
                with m.State("LATCH"):
                    # a cycle per word, against the 40 bit times it takes to send
                    m.d.sync += word.eq(read.data)
                    m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += [self.tx_byte.valid.eq(1), crc.valid.eq(sending),
                             self.tx_byte.payload.eq(word.word_select(count[:2], 8))]
                with m.If(sending):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count[:2] == 3):
                        m.d.sync += sent.eq(sent + 1)
                        with m.If(sent == sent_high):
                            m.d.sync += sent_high.eq(sent + 1)
                        m.next = "FETCH"
            with m.State("CRC"):
                m.d.comb += [self.tx_byte.valid.eq(1), self.tx_byte.payload.eq(crc.crc.word_select(count[:2], 8))]
                with m.If(sending):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == 3):
                        m.next = "IDLE"

        with m.If(ctl.session_reset):
            m.d.sync += [filled.eq(0), acked.eq(0), sent.eq(0), sent_high.eq(0), rewind.eq(0), timer.eq(0)]
        return m


class HostLink(wiring.Component):
    """UART, receiver and transmitter: a board's serial pins on one side, the accelerator's streams on the other.

    Parameters
    ----------
    divisor : int
        Core clock cycles per UART bit.
    depth : int
        Words in each ring buffer (power of two, at least one frame).
    retransmit_timeout : int
        Cycles without progress before the transmitter resends unacknowledged frames; it must cover the
        host's reaction time (on a board: USB latency, milliseconds).

    Attributes
    ----------
    rx : In(1)
    tx : Out(1)
    host_in : Out(stream of 32-bit words)
        To the accelerator.
    host_out : In(stream of 32-bit words)
        From the accelerator.
    session_reset : Out(1)
        Pulses on a RESET frame: reset the accelerator.
    bad_frames, resent_frames : Out(16)
        The receiver's and the transmitter's counters (wrapping): frames dropped, and times it went back.
    """

    def __init__(self, *, divisor, depth=512, retransmit_timeout):
        self.divisor = divisor
        self.depth = depth
        self.retransmit_timeout = retransmit_timeout
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "host_in": Out(stream.Signature(LINK_WIDTH)),
            "host_out": In(stream.Signature(LINK_WIDTH)),
            "session_reset": Out(1),
            "bad_frames": Out(16),
            "resent_frames": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UARTReceiver(divisor=self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTransmitter(divisor=self.divisor)
        # two byte times of silence inside a frame mean its remaining bytes are not coming
        m.submodules.receiver = receiver = LinkReceiver(depth=self.depth, byte_timeout=20 * self.divisor)
        m.submodules.transmitter = transmitter = LinkTransmitter(depth=self.depth,
                                                                 retransmit_timeout=self.retransmit_timeout)
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx),
                     self.session_reset.eq(receiver.control.session_reset),
                     self.bad_frames.eq(receiver.bad_frames), self.resent_frames.eq(transmitter.resent_frames)]
        wiring.connect(m, uart_rx.data, receiver.rx_byte)
        wiring.connect(m, transmitter.tx_byte, uart_tx.data)
        # What the receiver tells the transmitter arrives a cycle later, all of it together: a frame's checks and
        # the transmitter's timers are then paths of their own (a cycle is nothing beside a UART bit time).
        if timing_registers(platform):
            for name in _control_signature().members:
                m.d.sync += getattr(transmitter.control, name).eq(getattr(receiver.control, name))
        else:
            wiring.connect(m, receiver.control, transmitter.control)
        wiring.connect(m, receiver.host_in, wiring.flipped(self.host_in))
        wiring.connect(m, wiring.flipped(self.host_out), transmitter.host_out)
        return m
