"""A plain 8N1 UART: one transmitter and one receiver, each a byte stream, clocked by the core clock.

The bit time is a whole number of core cycles (``divisor``); the board tops pick a core clock that is a
multiple of the baud rate, so there is no fractional error to budget for.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTTransmitter", "UARTReceiver", "check_divisor"]


def check_divisor(divisor):
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"divisor: {divisor!r} is out of range; accepted: an integer of at least 4 "
                         f"(clock cycles per bit; the receiver samples mid-bit)")
    return divisor


class UARTTransmitter(wiring.Component):
    """Sends each byte of ``data`` as start bit, 8 data bits (LSB first), stop bit.

    Attributes
    ----------
    data : In(stream of 8-bit bytes)
        Taken when the line is idle; ``ready`` stays low for the 10 bit times of a character.
    tx : Out(1)
        The serial line, idle high.
    """

    data: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, *, divisor):
        self.divisor = check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        shift = Signal(10, init=0x3FF)  # stop bit, data, start bit (sent LSB first)
        bits_left = Signal(range(11))
        m.d.comb += [self.tx.eq(shift[0]), self.data.ready.eq(bits_left == 0)]
        with m.If(bits_left == 0):
            with m.If(self.data.valid):
                m.d.sync += [shift.eq(self.data.payload << 1 | 1 << 9), bits_left.eq(10),
                             timer.eq(self.divisor - 1)]
        with m.Elif(timer == 0):
            m.d.sync += [shift.eq(shift >> 1 | 1 << 9), bits_left.eq(bits_left - 1), timer.eq(self.divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class UARTReceiver(wiring.Component):
    """Receives 8N1 characters; a character whose stop bit is low is dropped and counted.

    Attributes
    ----------
    rx : In(1)
        The serial line (synchronised here).
    data : Out(stream of 8-bit bytes, always ready)
        One beat per received byte; there is no backpressure on a UART.
    framing_error : Out(1)
        Pulses when a character is dropped for a bad stop bit.
    """

    rx: In(1, init=1)
    data: Out(stream.Signature(8, always_ready=True))
    framing_error: Out(1)

    def __init__(self, *, divisor):
        self.divisor = check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(self.divisor))
        bits_left = Signal(range(10))
        shift = Signal(8)
        m.d.sync += [self.data.valid.eq(0), self.framing_error.eq(0)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    # look again in the middle of the start bit: a glitch shorter than half a bit is ignored
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(self.divisor - 1), bits_left.eq(9)]
                    m.next = "BITS"
            with m.State("BITS"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(bits_left != 1):
                    m.d.sync += [shift.eq(line << 7 | shift >> 1), bits_left.eq(bits_left - 1),
                                 timer.eq(self.divisor - 1)]
                with m.Else():  # the stop bit
                    m.d.sync += [self.data.payload.eq(shift), self.data.valid.eq(line),
                                 self.framing_error.eq(~line)]
                    m.next = "IDLE"
        return m
