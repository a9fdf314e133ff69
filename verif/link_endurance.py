"""Link endurance: megabytes of real layer traffic through the simulated board with faults on both directions.

The whole FPGA top (UART, framed link, accelerator) runs under Verilator in ``fpga/board_harness.cpp``, whose host
side injects faults on the bytes of both directions (a flipped bit, a dropped byte, a duplicated byte, each at the
given rate per byte); the host runs the real driver (`tessera.sw_driver.link_protocol`) over it. For each rate,
random GEMMs and convolutions are compiled, run and compared with the golden model until the layers' payload (host
words the device acknowledged plus device words received, both directions together) reaches the asked size.

Each rate reports the payload carried, the layers, the wrong outputs (which must be 0), the faults injected, what the
link did about them (frames resent by the host and by the device, frames dropped by either end, window probes) and
the payload throughput of each direction as a fraction of its line rate (8 payload bits per 10-bit UART character).

The UART runs at ``--divisor`` clock cycles per bit (default 4, the least the receiver takes): a board's 3 Mbaud
at 75-100 MHz is 25-33 cycles a bit, and simulating that would take 6-8 times longer for the same bytes. The device
computes as fast per cycle either way, so at the board's rate the layers are link-bound all the more.

Usage: ``python -m tessera.verif.link_endurance --megabytes 10 --rates 0,1e-5,1e-4,1e-3 [--divisor 4] [--seed S]``.
"""

import argparse
import dataclasses
import signal
import sys
import time

import numpy as np

from tessera.fpga.sim_board import BoardSimTransport, sim_link_settings
from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import TilingError
from tessera.sw_driver.isa_encode import DeviceError
from tessera.sw_driver.runtime import Device
from tessera.sw_driver.transport import LinkError
from tessera.verif.cases import random_conv, random_gemm

__all__ = ["ENDURANCE_CFG", "RateResult", "endurance", "main"]

#: A 4x4 array: a 4-lane activation word and a 4-channel result row each fill a link word, so no payload is padding;
#: small buffers build fast. The device's own link time-out (2^22 cycles) outlasts the host's retries.
ENDURANCE_CFG = AcceleratorConfig(rows=4, cols=4, act_depth=512, weight_depth=256, acc_depth=128, param_depth=16,
                                  vec_depth=0, link_timeout=1 << 22)
_COUNTER_WRAP = 1 << 16     # the device's link counters are 16 bits wide


@dataclasses.dataclass
class RateResult:
    """What one fault rate did to the link (see the module docstring)."""
    rate: float
    layers: int = 0
    wrong_layers: int = 0          # layers whose outputs differ from the golden model
    wrong_outputs: int = 0         # values that differ
    broken_layers: int = 0         # layers whose reply did not parse or that the link gave up on
    payload_to_device: int = 0     # bytes of layer words the device acknowledged
    payload_from_device: int = 0   # bytes of device words received in order
    line_to_device: int = 0        # bytes on the wire, frames and resends included
    line_from_device: int = 0
    link_seconds: float = 0.0      # simulated link time
    wall_seconds: float = 0.0
    faults_to_device: tuple = (0, 0, 0)      # flips, drops, duplicates injected
    faults_from_device: tuple = (0, 0, 0)
    host_resent_frames: int = 0
    host_bad_frames: int = 0       # frames from the device the host dropped (bad CRC, cut short, out of order)
    device_bad_frames: int = 0     # frames from the host the device dropped
    device_resends: int = 0        # times the device went back to resend
    window_probes: int = 0
    errors: list = dataclasses.field(default_factory=list)

    @property
    def payload(self):
        return self.payload_to_device + self.payload_from_device

    def efficiency(self, bit_time):
        """Payload throughput of each direction as a fraction of its line rate (``bit_time`` seconds a bit)."""
        line = self.link_seconds / (10 * bit_time)      # characters the line could carry in the time
        return self.payload_to_device / line, self.payload_from_device / line

    def row(self, bit_time):
        to_device, from_device = self.efficiency(bit_time)
        return (f"| {self.rate:g} | {self.payload / 1e6:.2f} | {self.layers} | {self.wrong_outputs} | "
                f"{self.broken_layers} | {sum(self.faults_to_device)} / {sum(self.faults_from_device)} | "
                f"{self.host_resent_frames} / {self.device_resends} | {self.device_bad_frames} / "
                f"{self.host_bad_frames} | {self.window_probes} | {to_device:.1%} / {from_device:.1%} | "
                f"{self.wall_seconds / 60:.1f} |")


TABLE_HEADER = ("| fault rate per byte and kind | payload MB | layers | wrong outputs | broken layers | faults "
                "injected (to / from device) | frames resent (host / device goes back) | frames dropped (device / "
                "host) | window probes | payload / line rate (to / from device) | wall min |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def _random_layer(cfg, rng):
    """A link-bound layer with about as many bytes each way: a tall GEMM (activations in, as many result bytes
    out), or a convolution with more output than input channels."""
    if rng.random() < 0.6:
        m, k = int(rng.integers(128, 513)), int(rng.integers(8, 33))
        operands = random_gemm(rng, m, k, int(rng.integers(k, 2 * k + 1)))
        return "gemm", operands, {}, golden.gemm_hw(*operands, cfg.multiplier)
    channels = int(rng.integers(4, 13))
    operands, attrs, expected = random_conv(rng, channels=channels, out_channels=int(rng.integers(channels, 33)),
                                            size=int(rng.integers(8, 17)), kernel=int(rng.integers(1, 4)),
                                            stride=1, pad=int(rng.integers(0, 2)), multiplier=cfg.multiplier)
    return "conv", operands, attrs, expected


class _Counters:
    """The board's cumulative counters, read after every layer so that the device's 16-bit ones are unwrapped."""

    def __init__(self, board):
        self.board = board
        self.faults = board.fault_stats()
        self.host = dataclasses.replace(board.stats)
        self.delivered = board.words_delivered

    def add_to(self, result):
        faults, host, delivered = self.board.fault_stats(), self.board.stats, self.board.words_delivered
        result.faults_to_device = tuple(a + n - b for a, n, b in zip(result.faults_to_device, faults.to_device,
                                                                     self.faults.to_device, strict=True))
        result.faults_from_device = tuple(a + n - b for a, n, b in zip(result.faults_from_device, faults.from_device,
                                                                       self.faults.from_device, strict=True))
        result.device_bad_frames += (faults.device_bad_frames - self.faults.device_bad_frames) % _COUNTER_WRAP
        result.device_resends += (faults.device_resends - self.faults.device_resends) % _COUNTER_WRAP
        result.line_to_device += faults.bytes_to_device - self.faults.bytes_to_device
        result.line_from_device += faults.bytes_from_device - self.faults.bytes_from_device
        result.host_resent_frames += host.retransmitted_frames - self.host.retransmitted_frames
        result.host_bad_frames += (host.bad_frames + host.out_of_order_frames
                                   - self.host.bad_frames - self.host.out_of_order_frames)
        result.window_probes += host.window_probes - self.host.window_probes
        # words_delivered counts from the last link reset, which a broken layer does
        if delivered[0] >= self.delivered[0] and delivered[1] >= self.delivered[1]:
            result.payload_to_device += 4 * (delivered[0] - self.delivered[0])
            result.payload_from_device += 4 * (delivered[1] - self.delivered[1])
        self.faults, self.host, self.delivered = faults, dataclasses.replace(host), delivered


def run_rate(board, rate, megabytes, *, seed=1, say=print, cfg=ENDURANCE_CFG, result=None):
    """Layers through ``board`` with faults at ``rate`` (per byte, per kind, both directions) until their payload
    reaches ``megabytes`` (10^6 bytes); returns a `RateResult` (``result``, kept current layer by layer, if given)."""
    result = RateResult(rate) if result is None else result
    rng = np.random.default_rng([seed, int(rate * 1e9)])
    board.inject(to_device=(rate,) * 3, from_device=(rate,) * 3, seed=seed)
    device = Device(cfg, board, timeout_cycles=1 << 24)
    counters = _Counters(board)
    started, link_started = time.monotonic(), board.port.elapsed
    reported = 0
    while result.payload < megabytes * 1e6:
        kind, operands, attrs, expected = _random_layer(cfg, rng)
        try:
            y, _ = device.conv(*operands, **attrs) if kind == "conv" else device.gemm(*operands)
            wrong = int(np.count_nonzero(y != expected))
            result.wrong_outputs += wrong
            result.wrong_layers += wrong > 0
            if wrong:
                result.errors.append(f"layer {result.layers} ({kind}): {wrong} of {y.size} outputs wrong")
        except (LinkError, DeviceError, TilingError) as error:
            result.broken_layers += 1
            result.errors.append(f"layer {result.layers} ({kind}): {type(error).__name__}: "
                                 f"{str(error).splitlines()[0]}")
            board.inject()
            board.reset()       # a fresh session, so the next layer starts clean
            board.inject(to_device=(rate,) * 3, from_device=(rate,) * 3, seed=seed + result.layers)
        result.layers += 1
        counters.add_to(result)
        result.link_seconds = board.port.elapsed - link_started
        result.wall_seconds = time.monotonic() - started
        if result.payload >= reported + megabytes * 1e6 / 10:
            reported = result.payload
            to_device, from_device = result.efficiency(board.port.bit_time)
            say(f"  rate {rate:g}: {result.payload / 1e6:.2f} MB, {result.layers} layers, {result.wrong_outputs} "
                f"wrong outputs, {result.broken_layers} broken; payload at {to_device:.0%} / {from_device:.0%} of "
                f"the line rate; {result.wall_seconds:.0f} s")
    board.inject()
    return result


def endurance(megabytes, rates, *, divisor=4, seed=1, say=print, cfg=ENDURANCE_CFG, results=None):
    """`run_rate` for each of ``rates`` on one simulated board with a UART of ``divisor`` cycles a bit; returns the
    board's bit time (seconds of link time a bit) and the `RateResult` of each rate, appended to ``results`` (if
    given) as each rate starts, so that an interrupted run still has its figures."""
    board = BoardSimTransport(cfg, sim_link_settings(divisor))
    results = [] if results is None else results
    try:
        for rate in rates:
            results.append(RateResult(rate))
            run_rate(board, rate, megabytes, seed=seed, say=say, cfg=cfg, result=results[-1])
            say(TABLE_HEADER.splitlines()[0])
            say(results[-1].row(board.port.bit_time))
        return board.port.bit_time, results
    finally:
        board.close()


def _interrupt_on_sigterm():
    """A long run stopped with SIGTERM (``kill``, a job's time limit) ends like one stopped with Ctrl-C: it closes
    its simulator and prints what it has."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)


def _rates(text):
    try:
        rates = [float(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not rates or any(not 0 <= rate <= 1 for rate in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: every rate must be a probability in 0 .. 1")
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tessera.verif.link_endurance",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=10.0, help="payload per rate, both directions (10^6 "
                                                                     "bytes; default 10)")
    parser.add_argument("--rates", type=_rates, default=[0.0, 1e-5, 1e-4, 1e-3],
                        help="fault rates per byte for each of flip, drop and duplicate (default 0,1e-5,1e-4,1e-3)")
    parser.add_argument("--divisor", type=int, default=4, help="UART clock cycles per bit (default 4, at least 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the layers and the faults (default 1)")
    args = parser.parse_args(argv)
    if args.megabytes <= 0:
        parser.error(f"--megabytes must be positive, not {args.megabytes}")
    if args.divisor < 4:
        parser.error(f"--divisor must be at least 4 (the UART receiver samples mid-bit), not {args.divisor}")

    def say(line):
        print(line, flush=True)
    say(f"link endurance: {args.megabytes:g} MB per rate, rates {args.rates}, UART {args.divisor} cycles a bit, "
        f"seed {args.seed}; config {ENDURANCE_CFG.to_json()}")
    _interrupt_on_sigterm()
    results = []
    try:
        bit_time, _ = endurance(args.megabytes, args.rates, divisor=args.divisor, seed=args.seed, say=say,
                                results=results)
    except KeyboardInterrupt:
        print("link endurance: interrupted; the figures so far (the last rate's are partial):")
        link = sim_link_settings(args.divisor)
        bit_time = link.divisor / link.clock_hz
    print(TABLE_HEADER)
    for result in results:
        print(result.row(bit_time))
    failed = [r for r in results if r.wrong_outputs or r.broken_layers]
    for result in failed:
        print(f"rate {result.rate:g}: " + "; ".join(result.errors[:10]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
