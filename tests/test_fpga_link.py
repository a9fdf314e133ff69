"""The framed UART link: the frame format (Python), the gateware (Amaranth simulator), and the whole FPGA top with
its UART under Verilator, driven by the real host driver, with and without injected faults."""

import struct
import zlib

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.sim import Simulator

from tessera.fpga.link import LinkReceiver
from tessera.fpga.uart import UARTReceiver, UARTTransmitter
from tessera.gen.config import AcceleratorConfig
from tessera.hw.isa import BufferId
from tessera.sw_driver import golden
from tessera.sw_driver.link_protocol import (
    CRC_BYTES,
    MAX_PAYLOAD_WORDS,
    FrameKind,
    FrameParser,
    crc_parameters,
    encode_frame,
    frame_bytes,
)
from tessera.sw_driver.transport import LinkError
from tessera.verif.cases import random_gemm


def _data_frame(rng, seq=0, words=MAX_PAYLOAD_WORDS):
    payload = rng.integers(0, 2**32, size=words, dtype=np.uint32)
    return payload, encode_frame(FrameKind.DATA, seq, words, payload.astype("<u4").tobytes())


class TestFrameFormat:
    def test_crc_is_the_gateware_crc(self):
        data = bytes(range(256)) + b"tessera"
        assert crc_parameters().compute(data) == zlib.crc32(data)

    def test_round_trip_across_split_reads(self):
        rng = np.random.default_rng(1)
        payload, frame = _data_frame(rng, seq=0xFFF0, words=5)
        stream = b"\x00\x13" + frame + encode_frame(FrameKind.ACK, 7, 99)
        parser = FrameParser()
        frames = [f for i in range(0, len(stream), 7) for f in parser.feed(stream[i:i + 7])]
        assert [f.kind for f in frames] == [FrameKind.DATA, FrameKind.ACK]
        assert frames[0].seq == 0xFFF0 and np.array_equal(np.frombuffer(frames[0].payload, "<u4"), payload)
        assert (frames[1].seq, frames[1].arg) == (7, 99)
        assert parser.errors == 0

    @pytest.mark.parametrize("fault", ["flip", "drop", "duplicate"])
    def test_every_single_fault_in_a_frame_is_detected(self, fault):
        """A one-byte fault, at any position of a frame, never yields a wrong frame: the frame is rejected, or
        (a doubled first or last byte) it is recovered intact."""
        rng = np.random.default_rng(2)
        _, frame = _data_frame(rng, words=8)
        follower = encode_frame(FrameKind.ACK, 1, 2)
        rejected = 0
        for position in range(len(frame)):
            damaged = bytearray(frame)
            if fault == "flip":
                damaged[position] ^= 1 << int(rng.integers(8))
            elif fault == "drop":
                del damaged[position]
            else:
                damaged.insert(position, damaged[position])
            parser = FrameParser()
            data_frames = [f for f in parser.feed(bytes(damaged) + follower) if f.kind == FrameKind.DATA]
            assert all(encode_frame(f.kind, f.seq, f.arg, f.payload) == frame for f in data_frames), (fault, position)
            rejected += not data_frames
            parser.abandon()
            assert parser.feed(follower)[0].kind == FrameKind.ACK
        # a doubled SOF or a doubled last byte (it trails a complete frame) leaves the frame intact
        harmless = 2 if fault == "duplicate" else 0
        assert rejected == len(frame) - harmless

    def test_oversized_length_is_rejected_before_its_payload(self):
        frame = bytearray(encode_frame(FrameKind.DATA, 0, 0))
        frame[4:6] = struct.pack("<H", MAX_PAYLOAD_WORDS + 1)
        parser = FrameParser()
        assert parser.feed(bytes(frame)) == [] and parser.errors == 1

    def test_frame_length(self):
        assert len(encode_frame(FrameKind.DATA, 0, 3, bytes(12))) == frame_bytes(3) == 6 + 12 + CRC_BYTES


async def _send_bytes(ctx, port, data):
    for byte in data:
        ctx.set(port.payload, byte)
        ctx.set(port.valid, 1)
        await ctx.tick()
    ctx.set(port.valid, 0)


class TestGateware:
    def test_uart_loopback(self):
        divisor = 5
        tx, rx = UARTTransmitter(divisor=divisor), UARTReceiver(divisor=divisor)
        sent = [0x00, 0xFF, 0xA5, 0x3C, 0x81]
        received = []
        sim = Simulator(_Loopback(tx, rx))
        sim.add_clock(1e-6)

        async def sender(ctx):
            for byte in sent:
                ctx.set(tx.data.payload, byte)
                ctx.set(tx.data.valid, 1)
                await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)

        async def receiver(ctx):
            while len(received) < len(sent):
                await ctx.tick()
                if ctx.get(rx.data.valid):
                    received.append(ctx.get(rx.data.payload))

        sim.add_testbench(sender, background=True)
        sim.add_testbench(receiver)
        sim.run()
        assert received == sent

    def test_receiver_commits_good_frames_only(self):
        """A frame with one flipped bit is dropped (and NAKed); the resent frame is committed and ACKed."""
        rng = np.random.default_rng(3)
        payload, frame = _data_frame(rng, words=3)
        damaged = bytearray(frame)
        damaged[9] ^= 0x10
        dut = LinkReceiver(depth=64, byte_timeout=40)
        words, requests, expected = [], [], []
        sim = Simulator(dut)
        sim.add_clock(1e-6)

        async def host(ctx):
            for data in (bytes(damaged), frame):
                for byte in data:
                    ctx.set(dut.rx_byte.payload, byte)
                    ctx.set(dut.rx_byte.valid, 1)
                    await ctx.tick()
                    ctx.set(dut.rx_byte.valid, 0)
                    await ctx.tick().repeat(2)
                await ctx.tick().repeat(4)

        async def monitor(ctx):
            ctx.set(dut.host_in.ready, 1)
            while True:
                await ctx.tick()
                if ctx.get(dut.host_in.valid):
                    words.append(ctx.get(dut.host_in.payload))
                if ctx.get(dut.control.ack_request):
                    requests.append("ack")
                if ctx.get(dut.control.nak_request):
                    requests.append("nak")
                expected.append(ctx.get(dut.control.expected))

        sim.add_testbench(host)
        sim.add_testbench(monitor, background=True)
        sim.run()
        assert words == payload.tolist()
        assert requests == ["nak", "ack"]
        assert expected[-1] == 3


class _Loopback(Elaboratable):
    def __init__(self, tx, rx):
        self.tx, self.rx = tx, rx

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx, m.submodules.rx = self.tx, self.rx
        m.d.comb += self.rx.rx.eq(self.tx.tx)
        return m


# --- the simulated board (Verilator) ------------------------------------------------------------------------------

# Small buffers keep the Verilator build short; the device's own link time-out must outlast the link's retries.
BOARD_CFG = AcceleratorConfig(rows=2, cols=2, act_depth=256, weight_depth=256, acc_depth=64, param_depth=16,
                              link_timeout=1 << 22)


@pytest.fixture(scope="module")
def board():
    from tessera.fpga.sim_board import BoardSimTransport
    from tessera.gen.toolchain import ToolMissing
    try:
        transport = BoardSimTransport(BOARD_CFG)
    except ToolMissing as missing:
        pytest.skip(str(missing))
    yield transport
    transport.close()


def _settle(board):
    """Pump the link until the device has acknowledged every word the host sent."""
    for _ in range(100):
        if not board.engine.unacknowledged:
            break
        board.engine.pump(0.001)


def _run_gemm(board, seed, shape=(32, 32, 8)):
    """Run a random layer; return (bit-exact, host-to-device and device-to-host payload as fractions of the
    line rate)."""
    from tessera.sw_driver.runtime import Device
    rng = np.random.default_rng(seed)
    operands = random_gemm(rng, *shape)
    device = Device(board.cfg, board, timeout_cycles=1 << 24)
    start, before = board.port.elapsed, board.words_delivered
    y, _ = device.gemm(*operands)
    elapsed = board.port.elapsed - start
    words_in, words_out = (after - earlier for after, earlier in zip(board.words_delivered, before, strict=True))
    word_time = 40 * board.port.bit_time  # 4 bytes of 10 bits on the line
    return (np.array_equal(y, golden.gemm_hw(*operands)), words_in * word_time / elapsed,
            words_out * word_time / elapsed)


@pytest.mark.rtl
class TestSimulatedBoard:
    @pytest.mark.parametrize(("shape", "direction"), [((64, 64, 16), 1), ((32, 2, 64), 2)])
    def test_gemm_is_bit_exact_and_link_runs_near_line_rate(self, board, shape, direction):
        """An input-heavy layer keeps the host-to-device line busy, an output-heavy one the other line."""
        board.inject()
        exact, *efficiency = _run_gemm(board, seed=1, shape=shape)
        print(f"{shape}: payload at {efficiency[0]:.1%} (to device) / {efficiency[1]:.1%} (from device) of the "
              f"line rate, no faults")
        assert exact
        # 256 payload bytes in 266-byte frames, acks on the other line, the device's own pauses
        assert efficiency[direction - 1] > 0.8

    def test_faults_both_ways_are_detected_and_retried(self, board):
        p = 2e-4  # per byte and per kind: roughly one frame in six is hit
        board.inject(to_device=(p, p, p), from_device=(p, p, p), seed=7)
        faults_before, stats_before = board.fault_stats(), dict(vars(board.stats))
        results = [_run_gemm(board, seed) for seed in range(2, 6)]
        board.inject()
        faults = board.fault_stats()
        injected = faults.injected - faults_before.injected
        stats = {k: v - stats_before[k] for k, v in vars(board.stats).items()}
        device_dropped = faults.device_bad_frames - faults_before.device_bad_frames
        device_resends = faults.device_resends - faults_before.device_resends
        print(f"faults injected {injected} (to device {faults.to_device}, from device {faults.from_device}); "
              f"device dropped {device_dropped} frames and went back {device_resends} times; host saw {stats}; "
              f"to-device efficiency {[f'{r[1]:.1%}' for r in results]}")
        assert all(exact for exact, *_ in results)
        assert injected >= 10
        # each direction noticed its faults and resent
        assert sum(faults.to_device) > sum(faults_before.to_device) and device_dropped > 0
        assert stats["retransmitted_frames"] > 0
        assert sum(faults.from_device) > sum(faults_before.from_device)
        assert stats["bad_frames"] + stats["out_of_order_frames"] > 0 and device_resends > 0

    def test_ice40_variant_is_bit_exact_under_faults(self):
        """The top as an iCE40 build elaborates it: no queues between link and accelerator, the link's control
        signals unregistered, a one-step accumulate and no queue after the requantiser; single-port operand
        buffers (its SPRAM)."""
        from tessera.fpga.sim_board import BoardSimTransport
        small = BoardSimTransport(BOARD_CFG.replace(single_port_buffers=True), family="ice40")
        try:
            small.inject(to_device=(2e-4,) * 3, from_device=(2e-4,) * 3, seed=3)
            assert all(_run_gemm(small, seed)[0] for seed in (8, 9, 10))
            assert small.fault_stats().device_bad_frames > 0 or small.stats.retransmitted_frames > 0
        finally:
            small.close()

    def test_ecp5_variant_is_bit_exact(self):
        """The top as an ECP5 build elaborates it: every PE and requantiser multiply a MULT18X18D instance (run on
        a model of the primitive), the requantiser's top significand bits in logic."""
        from tessera.fpga.sim_board import BoardSimTransport
        ecp5 = BoardSimTransport(BOARD_CFG, family="ecp5")
        try:
            assert all(_run_gemm(ecp5, seed)[0] for seed in (12, 13, 14))
        finally:
            ecp5.close()

    def test_a_reset_frame_abandons_a_half_sent_command(self, board):
        """The session reset reaches the accelerator: after a LOAD whose data stopped 60 words short, a RESET frame
        starts the next layer cleanly (if the accelerator missed it, it would take that layer's words as the rest
        of the LOAD's data)."""
        from tessera.sw_driver.isa_encode import load
        board.inject()
        program = load(BOARD_CFG, BufferId.ACT, 0, np.ones((64, BOARD_CFG.rows), dtype=np.int8))
        _settle(board)      # the acknowledgements of the layers before may still be on their way
        before = board.words_delivered[0]
        board.send(program[:-60])
        _settle(board)      # until the device has them all (acknowledged), not just queued on the host
        assert board.words_delivered[0] - before == len(program) - 60
        board.reset()
        exact, *_ = _run_gemm(board, seed=15, shape=(4, 4, 2))
        assert exact

    def test_a_dead_line_raises_link_error(self, board):
        board.inject(to_device=(0.0, 1.0, 0.0), seed=9)  # every byte to the device is lost
        try:
            board.send(np.arange(8, dtype=np.uint32))
            with pytest.raises(LinkError, match="nothing moved"):
                board.receive(1, timeout_cycles=10_000)
        finally:
            board.inject()
            board.reset()
        exact, *_ = _run_gemm(board, seed=11, shape=(4, 4, 2))
        assert exact


class TestSerialTransport:
    def test_port_moves_bytes(self):
        from tessera.sw_driver.serial_transport import SerialPort
        port = SerialPort("loop://", 3_000_000)
        try:
            port.write(b"tessera")
            assert port.exchange(0.5) == b"tessera"
            assert port.exchange(0.01) == b""
        finally:
            port.close()

    def test_a_port_without_a_device_behind_it_gives_a_clear_error(self):
        from tessera.sw_driver.serial_transport import SerialTransport
        # a loopback answers RESET with RESET, never with the ACK a device sends
        with pytest.raises(LinkError, match="did not answer 8 RESET frames"):
            SerialTransport("loop://", clock_hz=50e6, latency=0.001)

    def test_a_missing_port_is_named(self):
        from tessera.sw_driver.serial_transport import SerialTransport
        with pytest.raises(LinkError, match="cannot open serial port '/dev/tessera-none'"):
            SerialTransport("/dev/tessera-none", clock_hz=50e6)
