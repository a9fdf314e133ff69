"""A Tessera board over its USB UART (pyserial), speaking the framed link of :mod:`tessera.sw_driver.link_protocol`.

`SerialTransport` is the same `~tessera.sw_driver.link_protocol.FramedTransport` as the simulated board's; only the
byte port differs. Link time on a real port is wall time.
"""

import time

from tessera.sw_driver.link_protocol import FramedTransport
from tessera.sw_driver.transport import LinkError

__all__ = ["SerialPort", "SerialTransport", "DEFAULT_BAUD", "FTDI_VENDOR_ID", "find_board_port",
           "probe_port"]

#: The rate the board tops are built for (the ULX3S's FT231X tops out at 3 Mbaud).
DEFAULT_BAUD = 3_000_000



#: USB vendor of the FTDI UART bridges on the supported boards.
FTDI_VENDOR_ID = 0x0403


def probe_port(device):
    """LinkError, naming the port and why, unless ``device`` (a port name or pyserial URL) opens; it is closed
    again at once."""
    import serial
    try:
        serial.serial_for_url(device, timeout=0).close()
    except (serial.SerialException, OSError, ValueError) as error:
        raise LinkError(f"cannot open serial port {device!r}: {error}") from error


def find_board_port():
    """The first FTDI serial port attached, or None."""
    from serial.tools import list_ports
    for port in list_ports.comports():
        if port.vid == FTDI_VENDOR_ID:
            return port.device
    return None


class SerialPort:
    """Byte port over pyserial (see `~tessera.sw_driver.link_protocol.LinkEngine` for the interface).

    Parameters
    ----------
    device : str
        Port name, e.g. ``/dev/ttyUSB0``, or a pyserial URL.
    baud : int
    latency : float
        Seconds a USB round trip may add (FTDI chips hold small reads for their latency timer, 1-16 ms).
    """

    def __init__(self, device, baud=DEFAULT_BAUD, *, latency=0.02):
        import serial
        try:
            # serial_for_url takes port names and pyserial's URLs alike (``loop://`` for tests)
            self._serial = serial.serial_for_url(device, baudrate=baud, timeout=0, write_timeout=5)
        except (serial.SerialException, OSError) as error:
            raise LinkError(f"cannot open serial port {device!r} at {baud} baud: {error}") from error
        self.device = device
        self.bit_time = 1.0 / baud
        self.latency = latency
        self._opened = time.monotonic()
        self._serial.reset_input_buffer()

    @property
    def elapsed(self):
        return time.monotonic() - self._opened

    def write(self, data):
        try:
            self._serial.write(data)
        except Exception as error:  # pyserial raises SerialException / SerialTimeoutException / OSError
            raise LinkError(f"writing to {self.device} failed: {error}") from error

    def exchange(self, timeout):
        """Wait up to ``timeout`` s for bytes; once some came, keep reading until two byte times pass without more."""
        deadline = time.monotonic() + timeout
        data = bytearray()
        serial = self._serial
        try:
            while True:
                waiting = serial.in_waiting
                if waiting:
                    data += serial.read(waiting)
                    quiet_until = time.monotonic() + max(20 * self.bit_time, 0.001)
                    continue
                now = time.monotonic()
                if data and now >= quiet_until:
                    return bytes(data)
                if not data and now >= deadline:
                    return b""
                time.sleep(0.0002)
        except Exception as error:
            raise LinkError(f"reading from {self.device} failed: {error}") from error

    def close(self):
        self._serial.close()


class SerialTransport(FramedTransport):
    """A board running a Tessera bitstream, on a serial port; resets the device's link on opening.

    Parameters
    ----------
    device : str
        Serial port, e.g. ``/dev/ttyUSB0``.
    clock_hz : float
        The board's core clock (from its build report), to convert cycle time-outs into seconds.
    baud : int
    """

    def __init__(self, device, *, clock_hz, baud=DEFAULT_BAUD, latency=0.02):
        port = SerialPort(device, baud, latency=latency)
        super().__init__(port, clock_hz=clock_hz, name=f"board on {device}")
        try:
            self.reset()
        except LinkError:
            self.close()
            raise
