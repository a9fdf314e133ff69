"""The framed host link: one byte protocol for every byte-serial transport (a board's UART, the simulated board).

The device's two 32-bit word streams travel in frames with a header, a sequence number and a CRC; the receiver
of data acknowledges it, and whatever is lost or damaged is sent again (go-back-N), so that a flipped, dropped
or duplicated byte costs time, never a wrong word. This module is the one definition of the frame format: the
gateware (``fpga/link.py``) imports its constants, and the host side (`LinkEngine`, `FramedTransport`) is the
code that the serial and the simulated-board transports share.

Frame format (both directions; multi-byte fields little-endian)
--------------------------------------------------------------
``SOF, kind, seq[2], arg[2], payload[4 * words], crc[4]``

- ``SOF`` (`SOF`) starts a frame; the receiver hunts for it after any error.
- ``kind`` is a `FrameKind`.
- ``DATA``: ``seq`` is the stream offset (in words, mod 2**16) of the first payload word, ``arg`` the number of
  payload words (0 .. `MAX_PAYLOAD_WORDS`). Offsets rather than frame numbers make acknowledgement cumulative
  and let the device keep its retransmission state as two pointers into a ring buffer.
- ``ACK`` / ``NAK``: ``seq`` is the next offset the sender of the ACK expects; ``arg`` is the offset up to which
  the peer may send (its receive window: a device has a finite buffer; the host advertises ``seq + 0x8000``).
  A ``NAK`` also asks the peer to resend from ``seq``; a receiver sends at most one NAK per gap.
- A ``DATA`` frame without payload is a window probe: the device answers every DATA frame with an ACK (or a NAK),
  and only those carry its window, so a host whose window has closed sends one after a silence to learn that the
  device has made room (without it, an ACK that closed the window would be the last word the host ever heard).
- ``RESET`` (host to device only): reset the accelerator and both directions of the link; answered by
  ``ACK(0, window)``.
- ``crc`` is CRC-32 (ISO-HDLC, the one of Ethernet and zlib) over ``kind`` up to the end of the payload.

A frame with a bad CRC, a kind it does not know, a length over the limit, or a gap of more than a few byte
times in the middle is dropped; the sequence numbers then tell both ends what to resend.
"""

import dataclasses
import enum
import struct
import zlib

import numpy as np

from tessera.sw_driver.transport import LinkError, Transport

__all__ = ["SOF", "FrameKind", "MAX_PAYLOAD_WORDS", "HEADER_BYTES", "CRC_BYTES", "SEQ_MODULUS", "crc_parameters",
           "encode_frame", "Frame", "FrameParser", "LinkStats", "LinkEngine", "FramedTransport", "frame_bytes"]

SOF = 0xA5
#: Payload limit per frame: 256 bytes, so the fixed 11 bytes of a frame cost ~4 % of the line.
MAX_PAYLOAD_WORDS = 64
HEADER_BYTES = 6   # SOF, kind, seq, arg
CRC_BYTES = 4
SEQ_MODULUS = 1 << 16
_HOST_WINDOW = SEQ_MODULUS // 2
_LINE_AHEAD = 2  # frames written ahead of the line


class FrameKind(enum.IntEnum):
    DATA = 0x01
    ACK = 0x02
    NAK = 0x03
    RESET = 0x04


def crc_parameters():
    """The link's CRC as `amaranth.lib.crc` parameters (the gateware builds its CRC units from this)."""
    from amaranth.lib.crc import catalog
    return catalog.CRC32_ISO_HDLC(data_width=8)


def _crc(data):
    # zlib's CRC-32 is the same function as crc_parameters() (a unit test checks it), and runs in C.
    return zlib.crc32(data)


def frame_bytes(words):
    """Length on the wire of a DATA frame carrying ``words`` words."""
    return HEADER_BYTES + 4 * words + CRC_BYTES


def encode_frame(kind, seq, arg, payload=b""):
    """The bytes of one frame (see the module docstring); ``payload`` is bytes (DATA frames only)."""
    body = struct.pack("<BHH", int(kind), seq % SEQ_MODULUS, arg % SEQ_MODULUS) + bytes(payload)
    return bytes([SOF]) + body + struct.pack("<I", _crc(body))


@dataclasses.dataclass(frozen=True)
class Frame:
    kind: FrameKind
    seq: int
    arg: int
    payload: bytes = b""


class FrameParser:
    """Turns a byte stream into frames, hunting for `SOF` after any damaged frame.

    `feed` returns the good frames; ``errors`` counts rejected frames (bad CRC, unknown kind, oversized).
    Dropped bytes surface as a bad CRC once the following bytes complete the frame, or via `abandon` when the
    line has gone quiet in the middle of one.
    """

    def __init__(self):
        self._buffer = bytearray()
        self.errors = 0

    def feed(self, data):
        self._buffer += data
        frames = []
        buffer = self._buffer
        while True:
            start = buffer.find(SOF)
            if start < 0:
                buffer.clear()
                break
            del buffer[:start]
            if len(buffer) < HEADER_BYTES:
                break
            kind, seq, arg = struct.unpack_from("<BHH", buffer, 1)
            if kind not in FrameKind._value2member_map_ or (kind == FrameKind.DATA and arg > MAX_PAYLOAD_WORDS):
                self.errors += 1
                del buffer[:1]  # a false start: hunt from the next byte
                continue
            words = arg if kind == FrameKind.DATA else 0
            size = frame_bytes(words)
            if len(buffer) < size:
                break
            body = bytes(buffer[1:size - CRC_BYTES])
            (crc,) = struct.unpack_from("<I", buffer, size - CRC_BYTES)
            if crc != _crc(body):
                self.errors += 1
                del buffer[:1]
                continue
            frames.append(Frame(FrameKind(kind), seq, arg, body[5:]))
            del buffer[:size]
        return frames

    @property
    def partial(self):
        """Whether part of a frame is waiting for more bytes."""
        return bool(self._buffer)

    def abandon(self):
        """Drop a half-received frame (the line went quiet in its middle): count it and hunt again."""
        if self._buffer:
            self.errors += 1
            self._buffer.clear()


@dataclasses.dataclass
class LinkStats:
    """What the host side of a link has seen since it was opened.

    Attributes
    ----------
    frames_sent, frames_received : int
        DATA frames written (retransmissions included) / accepted in order.
    retransmitted_frames : int
        DATA frames written again after a NAK or a time-out.
    bad_frames : int
        Frames from the device rejected by the parser (bad CRC, bad header, cut short).
    duplicate_frames, out_of_order_frames : int
        Good DATA frames from the device that were not the next ones expected.
    naks_sent, naks_received, timeouts : int
    window_probes : int
        Empty DATA frames sent after a silence with the device's window closed, to learn its new window.
    bytes_written, bytes_read : int
    """

    frames_sent: int = 0
    frames_received: int = 0
    retransmitted_frames: int = 0
    bad_frames: int = 0
    duplicate_frames: int = 0
    out_of_order_frames: int = 0
    naks_sent: int = 0
    naks_received: int = 0
    timeouts: int = 0
    window_probes: int = 0
    bytes_written: int = 0
    bytes_read: int = 0


def _forward(base, wire):
    """The absolute offset at or after ``base`` whose low 16 bits are ``wire``."""
    return base + ((wire - base) % SEQ_MODULUS)


class LinkEngine:
    """The host end of the link: go-back-N sender of host words, in-order receiver of device words.

    Parameters
    ----------
    port : object
        Moves bytes: ``write(data)``; ``exchange(timeout)`` waits up to ``timeout`` seconds of link time for
        bytes from the device and returns them (``b""`` when none came), returning early once a burst has
        ended; ``bit_time`` is the duration of one bit in those seconds.
    retransmit_timeout : float
        Seconds of silence after which unacknowledged frames are sent again.
    """

    def __init__(self, port, *, retransmit_timeout):
        self.port = port
        self.retransmit_timeout = retransmit_timeout
        self._frame_time = frame_bytes(MAX_PAYLOAD_WORDS) * 10 * port.bit_time
        self._line_free_at = 0.0
        self.stats = LinkStats()
        self._clear()

    def _clear(self):
        self._parser = FrameParser()
        self._out = np.zeros(0, np.uint32)  # words queued; _out[0] is at absolute offset _out_base
        self._out_base = 0
        self._acked = 0      # device has every word before this offset
        self._sent = 0       # next offset to send
        self._sent_high = 0  # one past the last word ever sent
        self._limit = 0      # device's window: may send words before this offset
        self._expected = 0   # next device word offset
        self._received = []  # arrays of words not yet returned by `take`
        self._received_count = 0
        self._nak_sent = False

    # -- the host's view

    def queue(self, words):
        self._out = np.concatenate([self._out, words])

    @property
    def available(self):
        return self._received_count

    def take(self, count):
        words = np.concatenate(self._received) if self._received else np.zeros(0, np.uint32)
        self._received = [words[count:]] if len(words) > count else []
        self._received_count = len(words) - count
        return words[:count]

    @property
    def words_acknowledged(self):
        return self._acked

    @property
    def words_received(self):
        return self._expected

    @property
    def unacknowledged(self):
        return self._out_base + len(self._out) - self._acked

    def reset(self, attempts=8):
        """Resynchronise with the device: RESET it and wait for its ``ACK(0)``."""
        self._clear()
        for _ in range(attempts):
            self._write(encode_frame(FrameKind.RESET, 0, 0))
            deadline = self.retransmit_timeout
            while deadline > 0:
                started = self.port.elapsed
                data = self.port.exchange(deadline)
                deadline -= self.port.elapsed - started
                for frame in self._parser.feed(data):
                    if frame.kind == FrameKind.ACK and frame.seq == 0:
                        self._parser = FrameParser()
                        self._limit = _forward(0, frame.arg)
                        return
                if not data:
                    break
            self.stats.timeouts += 1
        raise LinkError(f"the device did not answer {attempts} RESET frames (waited "
                        f"{attempts * self.retransmit_timeout:.3g} s of link time): is the board programmed "
                        f"with a Tessera bitstream, at this baud rate?")

    def pump(self, timeout):
        """Send what the window allows, then wait up to ``timeout`` for the device; return whether anything moved.

        Nothing moving means: no new word from the device and no acknowledgement of ours. Frames are written
        only a little ahead of the line (`_LINE_AHEAD` frames), so that an ACK never waits behind a long queue
        of data in the port and resent frames do not pile up behind stale ones.
        """
        self._send_window()
        before = (self._expected, self._acked)
        backlog = self._line_free_at - self.port.elapsed
        more = self._sent < min(self._out_base + len(self._out), self._limit)
        if more:  # wake up in time to keep the line busy
            wait = max(backlog - self._frame_time, self._frame_time / 4)
        else:
            wait = max(backlog, 0.0) + timeout
        data = self.port.exchange(wait)
        self.stats.bytes_read += len(data)
        if not data:
            if not more:
                self._parser.abandon()
                self._on_silence()
            return False
        errors = self._parser.errors
        need_ack = False
        for frame in self._parser.feed(data):
            need_ack |= self._on_frame(frame)
        if self._parser.errors != errors:
            self.stats.bad_frames += self._parser.errors - errors
            self._nak()
        elif need_ack:
            self._write(encode_frame(FrameKind.ACK, self._expected, self._expected + _HOST_WINDOW))
        self._send_window()
        return (self._expected, self._acked) != before

    # -- internals

    def _on_frame(self, frame):
        """Handle one good frame; return whether it calls for an ACK."""
        if frame.kind == FrameKind.DATA:
            offset = (frame.seq - self._expected) % SEQ_MODULUS
            if offset == 0:
                if frame.arg:
                    self._received.append(np.frombuffer(frame.payload, "<u4").astype(np.uint32))
                    self._received_count += frame.arg
                    self._expected += frame.arg
                self.stats.frames_received += 1
                self._nak_sent = False
                return True
            if offset >= SEQ_MODULUS // 2:  # already have it: our ACK was lost
                self.stats.duplicate_frames += 1
                return True
            self.stats.out_of_order_frames += 1  # a frame before it went missing
            self._nak()
            return False
        if frame.kind in (FrameKind.ACK, FrameKind.NAK):
            acked = _forward(self._acked, frame.seq)
            # words sent before a go-back count: the device may have them although we are resending
            if acked <= self._sent_high:
                self._acked = acked
                self._sent = max(self._sent, acked)
                self._limit = _forward(acked, frame.arg)
                if acked > self._out_base + _HOST_WINDOW:
                    self._trim()
            if frame.kind == FrameKind.NAK:
                self.stats.naks_received += 1
                self._go_back()
        return False

    def _on_silence(self):
        self.stats.timeouts += 1
        if self._sent > self._acked:
            self._go_back()
        # The device may be waiting for an ACK we sent and it lost; a NAK gets it to resend what we lack.
        self._write(encode_frame(FrameKind.NAK, self._expected, self._expected + _HOST_WINDOW))
        self.stats.naks_sent += 1
        if self._limit <= self._sent < self._out_base + len(self._out):
            # Words wait for a window that closed. The device opens it as its accelerator takes words but says so
            # only in answer to a DATA frame: ask with an empty one (else both ends wait for ever).
            self._write(encode_frame(FrameKind.DATA, self._sent, 0))
            self.stats.window_probes += 1

    def _nak(self):
        if not self._nak_sent:
            self._nak_sent = True
            self.stats.naks_sent += 1
            self._write(encode_frame(FrameKind.NAK, self._expected, self._expected + _HOST_WINDOW))

    def _go_back(self):
        self.stats.retransmitted_frames += -(-(self._sent - self._acked) // MAX_PAYLOAD_WORDS)
        self._sent = self._acked

    def _trim(self):
        drop = self._acked - self._out_base
        self._out = self._out[drop:]
        self._out_base = self._acked

    def _send_window(self):
        end = min(self._out_base + len(self._out), self._limit)
        while self._sent < end and self._line_free_at - self.port.elapsed < _LINE_AHEAD * self._frame_time:
            count = min(MAX_PAYLOAD_WORDS, end - self._sent)
            start = self._sent - self._out_base
            payload = self._out[start:start + count].astype("<u4").tobytes()
            self._write(encode_frame(FrameKind.DATA, self._sent, count, payload))
            self._sent += count
            self._sent_high = max(self._sent_high, self._sent)
            self.stats.frames_sent += 1

    def _write(self, data):
        self.stats.bytes_written += len(data)
        now = self.port.elapsed
        self._line_free_at = max(now, self._line_free_at) + len(data) * 10 * self.port.bit_time
        self.port.write(data)


class FramedTransport(Transport):
    """A `Transport` over a byte port that speaks the framed link (see the module docstring).

    Subclasses open the port; this class does the rest. Time-outs are counted in device clock cycles, as for
    `~tessera.sw_driver.transport.SimTransport`, and converted with ``clock_hz``.

    Parameters
    ----------
    port : object
        See `LinkEngine`; it also has ``elapsed`` (seconds of link time so far) and ``close()``.
    clock_hz : float
        The device's core clock, to turn cycle counts into link time.
    retransmit_timeout : float, optional
        Seconds of silence before resending; by default the time of 2 full frames (the device may finish one
        of its own before it acks) plus ``port.latency``.
    retries : int
        Retransmission intervals in a row without progress before `receive` gives up (if that is longer than
        its ``timeout_cycles``).
    """

    def __init__(self, port, *, clock_hz, retransmit_timeout=None, retries=16, name="device"):
        self.port = port
        self.retries = retries
        self.clock_hz = float(clock_hz)
        self.name = name
        if retransmit_timeout is None:
            retransmit_timeout = 2 * frame_bytes(MAX_PAYLOAD_WORDS) * 10 * port.bit_time + port.latency
        self.engine = LinkEngine(port, retransmit_timeout=retransmit_timeout)
        self._closed = False

    @property
    def stats(self):
        return self.engine.stats

    def _send(self, words):
        if len(words):
            self.engine.queue(words)

    def _receive(self, count, timeout_cycles):
        engine = self.engine
        # Under faults silence is normal for a few retransmission intervals; the caller's limit counts on top.
        timeout = max(timeout_cycles / self.clock_hz, self.retries * engine.retransmit_timeout)
        quiet = 0.0
        while engine.available < count or engine.unacknowledged:
            started = self.port.elapsed
            moved = engine.pump(engine.retransmit_timeout)
            quiet = 0.0 if moved else quiet + (self.port.elapsed - started)
            if engine.available >= count and not moved:
                break  # all asked for is here; words still unacknowledged go out with the next call
            if quiet > timeout:
                received = engine.take(engine.available)
                raise LinkError(f"{self.name}: {len(received)} of {count} words came back, then nothing moved for "
                                f"{quiet:.3g} s of link time ({quiet * self.clock_hz:,.0f} cycles; limit "
                                f"{timeout_cycles:,} cycles) with {engine.unacknowledged} words sent but not "
                                f"acknowledged, after {engine.stats.timeouts} time-outs and "
                                f"{engine.stats.retransmitted_frames} resent frames", received=received)
        return engine.take(count)

    def reset(self):
        """Reset the device over the link (a RESET frame) and forget every queued word."""
        self._check_open()
        self.engine.reset()

    @property
    def cycles(self):
        """Device cycles of link time since opening (an estimate on a real board: wall time x clock)."""
        return int(self.port.elapsed * self.clock_hz)

    @property
    def closed(self):
        return self._closed

    def close(self):
        if not self._closed:
            self._closed = True
            self.port.close()

    @property
    def words_delivered(self):
        """``(host words the device acknowledged, device words received in order)`` since the last reset."""
        return self.engine.words_acknowledged, self.engine.words_received
