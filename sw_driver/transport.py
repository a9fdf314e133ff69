"""Links between the host driver and a Tessera device: the `Transport` interface and its simulated form.

A device is reached through two 32-bit word streams, ``host_in`` (host to device) and ``host_out`` (device to
host). A `Transport` moves NumPy arrays of ``uint32`` words over them; the driver above it knows nothing about
whether the other end is a board or a simulation.

`SimTransport` runs the device's Verilog under Verilator inside ``sim_harness.cpp``, a small C++ program that
this module builds (once per Verilog, harness and flags) and talks to over its stdin/stdout. Python never ticks
a clock edge: each request runs the clock in C++ until it is done.

Wire protocol
-------------
Every field is a little-endian ``uint32`` word. On start the harness writes `PROTOCOL_MAGIC`,
`PROTOCOL_VERSION`. Then each request ``opcode, arguments...`` except ``SEND`` gets exactly one response
``status, n, data[n]``. ``SEND`` has none, so that a send followed by a receive costs one round trip through
the pipes, not two (that round trip, ~25-80 us, is what small transfers pay); nothing about it can fail
short of the harness dying, which the next request notices.

==============  ==============================  ==========================================================
opcode          arguments                       effect and response data
==============  ==============================  ==========================================================
``RESET``       cycles                          ``rst`` high for that many cycles; both queues emptied
``SEND``        count, words[count]             queue words for ``host_in``; no clock runs; no response
``RECV``        count, max_idle                 clock until ``count`` words came out of ``host_out``;
                                                data: those words. ``TIMEOUT`` (with the words so far)
                                                after ``max_idle`` cycles in a row in which no word moved
``RUN``         cycles                          just clock (words still move both ways)
``STATS``                                       data: cycles, words in, words out (each lo, hi), words
                                                queued for ``host_in``, words collected but not returned
``THROTTLE``    in_stall, out_stall, seed       per-cycle probability (1/65536) of holding back
                                                ``host_in.valid`` / dropping ``host_out.ready``
``QUIT``                                        respond, then exit
==============  ==============================  ==========================================================

The numbers below are the only definition of the protocol's constants; the build writes them into the
harness's ``sim_protocol.h``.
"""

import abc
import contextlib
import dataclasses
import enum
import struct
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

from tessera.gen.toolchain import SIM_BUILD_ARGS, build_harness_binary

__all__ = ["Transport", "LinkError", "SimTransport", "SimStats", "HarnessBuild", "build_harness", "stop_process",
           "DEFAULT_TIMEOUT_CYCLES"]

PROTOCOL_MAGIC = 0x54534831  # "TSH1" when read as ASCII, big end first
PROTOCOL_VERSION = 1

#: How many cycles in a row without a word moving either way before `Transport.receive` gives up.
DEFAULT_TIMEOUT_CYCLES = 100_000

HARNESS_SOURCE = Path(__file__).with_name("sim_harness.cpp")
DEFAULT_BUILD_ROOT = None   # the build cache (tessera.gen.cache)

# Requests carry 32-bit counts; bulk transfers are also split so that neither side holds more than this at once.
_CHUNK_WORDS = 1 << 20
_MAX_U32 = 0xFFFF_FFFF
_WORD = np.dtype("<u4")


class Op(enum.IntEnum):
    RESET = 1
    SEND = 2
    RECV = 3
    RUN = 4
    STATS = 5
    THROTTLE = 6
    QUIT = 7


class Status(enum.IntEnum):
    OK = 0
    TIMEOUT = 1
    BAD_REQUEST = 2


class LinkError(RuntimeError):
    """The link to the device failed: it stopped producing words, or the other end went away.

    Attributes
    ----------
    received : numpy.ndarray of uint32
        The words that did arrive before the failure (empty if none did).
    """

    def __init__(self, message, *, received=None):
        super().__init__(message)
        self.received = np.zeros(0, np.uint32) if received is None else received


class Transport(abc.ABC):
    """Moves 32-bit words to (``host_in``) and from (``host_out``) a device.

    Subclasses implement `_send`, `_receive`, `reset`, `cycles` and `close`; this class checks the arguments
    and gives every transport the same context-manager behaviour.
    """

    def send(self, words):
        """Queue words for the device's ``host_in`` stream.

        Parameters
        ----------
        words : array_like of int
            A 1-D sequence of words, each in ``0 .. 2**32 - 1``. ``numpy.uint32`` arrays are sent without a copy.
        """
        self._check_open()
        self._send(_as_words(words))

    def receive(self, count, *, timeout_cycles=DEFAULT_TIMEOUT_CYCLES):
        """Collect exactly ``count`` words from the device's ``host_out`` stream.

        Parameters
        ----------
        count : int
            Number of words to wait for.
        timeout_cycles : int
            Give up after this many device clock cycles in a row in which no word went in or came out.

        Returns
        -------
        numpy.ndarray of uint32, shape ``(count,)``

        Raises
        ------
        LinkError
            If the device went quiet before producing ``count`` words; ``error.received`` holds what came.
        """
        self._check_open()
        count = _check_count("count", count, upper=None)
        timeout_cycles = _check_count("timeout_cycles", timeout_cycles, lower=1)
        return self._receive(count, timeout_cycles)

    @abc.abstractmethod
    def reset(self):
        """Reset the device and forget any words queued in either direction."""

    @property
    @abc.abstractmethod
    def cycles(self):
        """Device clock cycles run since the transport was opened."""

    @abc.abstractmethod
    def close(self):
        """Release the link; calling it again does nothing."""

    @property
    @abc.abstractmethod
    def closed(self):
        """Whether `close` has been called (or the link has failed for good)."""

    @abc.abstractmethod
    def _send(self, words):
        """Send a contiguous little-endian ``uint32`` array."""

    @abc.abstractmethod
    def _receive(self, count, timeout_cycles):
        """Return ``count`` words or raise `LinkError`."""

    def _check_open(self):
        if self.closed:
            raise LinkError(f"{type(self).__name__} is closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _check_count(name, value, *, lower=0, upper=_MAX_U32):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if value < lower or (upper is not None and value > upper):
        bound = f"{lower} .. {upper}" if upper is not None else f"at least {lower}"
        raise ValueError(f"{name} must be {bound}, not {value}")
    return int(value)


def _as_words(words):
    array = np.asarray(words)
    if array.ndim != 1:
        raise ValueError(f"words must be a 1-D array, not one of shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, _WORD)
    if array.dtype.kind not in "iu":
        raise TypeError(f"words must be integers (ideally numpy.uint32), not {array.dtype}")
    if array.dtype.kind == "i" or array.dtype.itemsize > 4:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > _MAX_U32:
            raise ValueError(f"words must be in 0 .. {_MAX_U32:#x}; got values from {low} to {high}")
    return np.ascontiguousarray(array, dtype=_WORD)


# --- building the harness ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HarnessBuild:
    """Where a built harness lives and what building it cost.

    Attributes
    ----------
    binary : Path
        The harness executable.
    build_dir : Path
        ``<build_root>/<toplevel>_<hash>``; also holds the Verilog it was built from and ``built.ok``.
    rebuilt : bool
        Whether this call built it (False: it came from the cache).
    seconds : float
        Wall time this call spent (building or looking up).
    trace : bool
        Whether it was built with waveform support (``--trace``).
    """

    binary: Path
    build_dir: Path
    rebuilt: bool
    seconds: float
    trace: bool


def protocol_header():
    """The C++ header that gives the harness this module's protocol constants."""
    lines = ["// Generated by sw_driver/transport.py, the one definition of these numbers.", "#pragma once",
             "#include <cstdint>", "namespace proto {",
             f"constexpr uint32_t PROTOCOL_MAGIC = {PROTOCOL_MAGIC:#x};",
             f"constexpr uint32_t PROTOCOL_VERSION = {PROTOCOL_VERSION};"]
    lines += [f"constexpr uint32_t OP_{op.name} = {op.value};" for op in Op]
    lines += [f"constexpr uint32_t STATUS_{status.name} = {status.value};" for status in Status]
    lines.append("}  // namespace proto")
    return "\n".join(lines) + "\n"


def build_harness(verilog_path, toplevel, *, build_root=DEFAULT_BUILD_ROOT, trace=False, announce=None):
    """Build the simulation harness around ``toplevel`` from ``verilog_path``, unless it is already built.

    The build folder is keyed by a hash of the Verilog text, the harness source, the protocol header, the
    Verilator flags and version, so a configuration is built once, across processes too; concurrent callers
    (pytest-xdist workers) wait on a lock rather than build the same thing twice. A build that did not finish
    (no ``built.ok``) is redone.

    Parameters
    ----------
    verilog_path : str or Path
        Verilog of the device; its ports must be ``clk``, ``rst``, ``host_in__{valid,ready,payload}`` and
        ``host_out__{valid,ready,payload}``.
    toplevel : str
        Name of the top module.
    build_root : str or Path, optional
        Folder under which build folders are made; by default the build cache (:mod:`tessera.gen.cache`).
    trace : bool
        Build with Verilator's ``--trace`` so that the harness can write VCD waveforms.
    announce : callable, optional
        Called just before a build starts (not when the harness is cached).

    Returns
    -------
    HarnessBuild
    """
    start = time.monotonic()
    flags = [*SIM_BUILD_ARGS, *(["--trace"] if trace else [])]
    binary, build_dir, rebuilt = build_harness_binary(
        build_root, toplevel, Path(verilog_path).read_bytes(), HARNESS_SOURCE, "sim_harness",
        files={"sim_protocol.h": protocol_header()}, flags=flags, what="the simulation harness", announce=announce)
    return HarnessBuild(binary=binary, build_dir=build_dir, rebuilt=rebuilt, seconds=time.monotonic() - start,
                        trace=trace)


# --- the simulated link --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimStats:
    """Counters of a simulated link since it was opened.

    Attributes
    ----------
    cycles : int
        Clock cycles run, reset cycles included.
    words_in, words_out : int
        Words the device accepted on ``host_in`` / produced on ``host_out``.
    pending_in : int
        Words sent but not yet accepted by the device.
    buffered_out : int
        Words the device produced that no `receive` has returned yet.
    """

    cycles: int
    words_in: int
    words_out: int
    pending_in: int
    buffered_out: int


class SimTransport(Transport):
    """A device simulated by Verilator in a C++ harness process (see the module's docstring for the protocol).

    Outside reset the harness accepts every word the device produces (unless throttled) and keeps it for the
    next `receive`, like a host's receive buffer; words sent are offered to the device whenever the clock
    runs, which is during `receive` and `run`.

    Parameters
    ----------
    verilog_path : str or Path
        The device's Verilog (see `build_harness` for the ports it must have).
    toplevel : str
        Its top module.
    build_root : str or Path, optional
        Where harness builds are cached (default: the build cache).
    trace : str or Path, optional
        Write a VCD waveform of the whole session to this file (builds a tracing variant of the harness).
    reset_cycles : int
        How long `reset` holds ``rst``; the device is reset once on opening.
    announce : callable, optional
        Called just before the harness is built (see `build_harness`).
    """

    def __init__(self, verilog_path, toplevel, *, build_root=DEFAULT_BUILD_ROOT, trace=None, reset_cycles=4,
                 announce=None):
        self.toplevel = toplevel
        self.reset_cycles = _check_count("reset_cycles", reset_cycles, lower=1)
        self.build = build_harness(verilog_path, toplevel, build_root=build_root, trace=trace is not None,
                                   announce=announce)
        command = [str(self.build.binary)]
        if trace is not None:
            Path(trace).parent.mkdir(parents=True, exist_ok=True)
            command += ["--trace", str(trace)]
        # The harness's stderr goes to a file, not a pipe: nobody drains a pipe while the clock runs, and the
        # tail of the file explains a crash.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._finalizer = weakref.finalize(self, stop_process, self._proc, self._stderr)
        self._closed = False
        magic, version = struct.unpack("<2I", self._read_exact(8))
        if (magic, version) != (PROTOCOL_MAGIC, PROTOCOL_VERSION):
            self.close()
            raise LinkError(f"{self.build.binary} does not speak this protocol: hello {magic:#x} v{version}, "
                            f"expected {PROTOCOL_MAGIC:#x} v{PROTOCOL_VERSION}")
        self.reset()

    # -- the Transport interface

    def _send(self, words):
        for start in range(0, len(words), _CHUNK_WORDS):
            chunk = words[start:start + _CHUNK_WORDS]
            self._post(Op.SEND, len(chunk), payload=chunk)

    def _receive(self, count, timeout_cycles):
        received = np.empty(count, np.uint32)
        done = 0
        while done < count:
            want = min(count - done, _CHUNK_WORDS)
            status, data = self._request(Op.RECV, want, timeout_cycles)
            received[done:done + len(data)] = data
            done += len(data)
            if status == Status.TIMEOUT:
                stats = self.stats()
                raise LinkError(f"device {self.toplevel!r} produced {done} of {count} words, then nothing for "
                                f"{timeout_cycles} cycles ({stats.pending_in} sent words not yet accepted; "
                                f"cycle {stats.cycles})", received=received[:done].copy())
        return received

    def reset(self, cycles=None):
        """Hold ``rst`` for ``cycles`` (default: ``reset_cycles``) and drop every queued word, both ways."""
        cycles = self.reset_cycles if cycles is None else _check_count("cycles", cycles, lower=1)
        self._request(Op.RESET, cycles)

    @property
    def cycles(self):
        return self.stats().cycles

    @property
    def closed(self):
        return self._closed

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._proc.poll() is None:
            with contextlib.suppress(LinkError):
                self._request(Op.QUIT, check_open=False)
        self._finalizer()

    # -- simulation-only controls

    def run(self, cycles):
        """Run the clock for ``cycles`` cycles (words keep moving both ways)."""
        cycles = _check_count("cycles", cycles, upper=None)
        while cycles:
            step = min(cycles, 1 << 31)
            self._request(Op.RUN, step)
            cycles -= step

    def stats(self):
        """The link's counters, as a `SimStats`."""
        _, data = self._request(Op.STATS)
        data = data.astype(np.uint64)
        return SimStats(cycles=int(data[0] | data[1] << 32), words_in=int(data[2] | data[3] << 32),
                        words_out=int(data[4] | data[5] << 32), pending_in=int(data[6]),
                        buffered_out=int(data[7]))

    def throttle(self, *, in_stall=0.0, out_stall=0.0, seed=1):
        """Make the host side stall at random, so the device sees gaps and backpressure (kept across `reset`).

        Parameters
        ----------
        in_stall : float
            Probability, each cycle, that the next queued word is held back from ``host_in``.
        out_stall : float
            Probability, each cycle, that ``host_out.ready`` is low.
        seed : int
            Seed of the harness's pseudo-random stall pattern (runs are repeatable).
        """
        def q16(name, value):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in 0 .. 1, not {value}")
            return round(value * 65536)
        self._request(Op.THROTTLE, q16("in_stall", in_stall), q16("out_stall", out_stall),
                      _check_count("seed", seed))

    # -- the wire

    def _post(self, *words, payload=None):
        """Write a request without waiting for anything; the next `_request` flushes it."""
        if self._proc.poll() is not None:
            # a harness known to have exited: say so rather than write into its closed pipe (where a process
            # whose SIGPIPE is not ignored would die)
            raise self._died()
        try:
            self._proc.stdin.write(struct.pack(f"<{len(words)}I", *words))
            if payload is not None and len(payload):
                self._proc.stdin.write(memoryview(payload).cast("B"))
        except (BrokenPipeError, ConnectionError, ValueError) as error:  # ValueError: a pipe already closed
            raise self._died() from error

    def _request(self, *words, check_open=True):
        """Write a request, then wait for its response; return (status, data)."""
        if check_open:
            self._check_open()
        self._post(*words)
        try:
            self._proc.stdin.flush()
            status, count = struct.unpack("<2I", self._read_exact(8))
            data = np.frombuffer(self._read_exact(4 * count), _WORD) if count else np.zeros(0, _WORD)
        except (BrokenPipeError, ConnectionError, ValueError) as error:  # ValueError: a pipe already closed
            raise self._died() from error
        if status == Status.BAD_REQUEST:
            name = Op(words[0]).name if words[0] in Op._value2member_map_ else words[0]
            raise self._died(f"the harness rejected request {name}")
        return Status(status), data

    def _read_exact(self, size):
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            got = self._proc.stdout.readinto(view[filled:])
            if not got:
                raise self._died()
            filled += got
        return buffer

    def _died(self, reason="the simulation harness exited"):
        """The error for a harness that has gone away; the link is unusable from here on."""
        self._closed = True
        return harness_exit_error(self._proc, self._stderr, self._finalizer, f"{reason} (device {self.toplevel!r}")


def harness_exit_error(proc, stderr, finalizer, reason):
    """A LinkError for a harness process that has exited (or is made to): ``reason``, its exit code and the tail
    of its stderr. ``finalizer`` releases the process's resources."""
    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    stderr.seek(0)
    tail = stderr.read().decode(errors="replace")[-2000:].strip()
    finalizer()
    return LinkError(f"{reason}, exit code {code})" + (f":\n{tail}" if tail else ""))


def stop_process(proc, stderr):
    """Finalizer: make sure the harness is gone and its pipes are closed, however the transport ended."""
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            stream.close()  # EOF on stdin ends a harness that did not get QUIT
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    stderr.close()
