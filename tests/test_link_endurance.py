"""Link endurance (``python -m tessera.verif.link_endurance`` carries megabytes per fault rate): a small sample at the
highest rate, the window deadlock the endurance run found, and the host's window probe on a model of the device."""

import numpy as np
import pytest

from tessera.sw_driver import golden
from tessera.sw_driver.link_protocol import FramedTransport, FrameKind, FrameParser, encode_frame
from tessera.verif.cases import random_gemm
from tessera.verif.link_endurance import ENDURANCE_CFG, RateResult, run_rate


class _FullRingDevice:
    """A byte port that answers like the device's link (`tessera.fpga.link`) in front of an accelerator that takes
    the words of its ``depth``-word ring only while the host is silent: it ACKs each DATA frame with its window,
    and never answers an ACK or a NAK."""

    bit_time, latency = 1e-6, 0.0

    def __init__(self, depth=64):
        self.depth, self.expected, self.fetched = depth, 0, 0
        self.parser, self.replies, self.elapsed = FrameParser(), b"", 0.0

    def write(self, data):
        self.elapsed += len(data) * 10 * self.bit_time
        for frame in self.parser.feed(data):
            if frame.kind == FrameKind.RESET:
                self.expected = self.fetched = 0
            elif frame.kind == FrameKind.DATA:
                if frame.seq == self.expected and frame.arg <= self.depth - (self.expected - self.fetched):
                    self.expected += frame.arg
            else:
                continue
            self.replies += encode_frame(FrameKind.ACK, self.expected, self.fetched + self.depth)

    def exchange(self, timeout):
        replies, self.replies = self.replies, b""
        if not replies:
            self.fetched = self.expected    # the accelerator empties the ring, and the link says nothing
            self.elapsed += timeout
        return replies

    def close(self):
        pass


class TestWindowProbe:
    def test_a_closed_window_reopens(self):
        """The device's ACK of a frame that fills its ring closes the host's window; the ring empties later, but only
        an answer to a DATA frame says so. The host sends an empty one after a silence (before, it sent NAKs for
        ever, which the device does not answer, and the layer stopped mid-LOAD)."""
        port = _FullRingDevice(depth=64)
        link = FramedTransport(port, clock_hz=1e6)
        link.reset()
        link.send(np.arange(300, dtype=np.uint32))
        for _ in range(100):
            if not link.engine.unacknowledged:
                break
            link.engine.pump(link.engine.retransmit_timeout)
        assert port.expected == 300
        assert link.stats.window_probes >= 300 // 64


@pytest.fixture(scope="module")
def board():
    """The endurance run's board: ENDURANCE_CFG behind a UART of 4 cycles a bit."""
    from tessera.fpga.sim_board import BoardSimTransport, sim_link_settings
    from tessera.gen.toolchain import ToolMissing
    try:
        board = BoardSimTransport(ENDURANCE_CFG, sim_link_settings(4))
    except ToolMissing as missing:
        pytest.skip(str(missing))
    yield board
    board.close()


@pytest.mark.rtl
class TestFaultyBoard:
    def test_50_kb_at_the_highest_rate_arrive_intact(self, board):
        """Flips, drops and duplicates at 1e-3 per byte each, both ways: every layer bit-exact, and the link resent
        in both directions."""
        result = run_rate(board, 1e-3, 0.05, seed=2, say=lambda line: None)
        assert isinstance(result, RateResult)
        assert result.payload >= 50_000
        assert (result.wrong_outputs, result.broken_layers) == (0, 0), result.errors
        assert sum(result.faults_to_device) > 0 and sum(result.faults_from_device) > 0
        assert result.host_resent_frames > 0 and result.device_resends > 0

    def test_the_window_deadlock_stays_fixed(self, board):
        """The endurance run's first failure: faults at 3.3e-4 per byte and kind (seed 3) on this tall GEMM made the
        device's ring fill, its last ACK closed the host's window, and the link waited until the device's 2^22-cycle
        link time-out cut the LOAD short (an ERROR packet and a garbled layer). Now the host probes the window."""
        from tessera.sw_driver.runtime import Device
        p = 3.3e-4
        board.inject()
        board.reset()       # a new session, as the run had: the same bytes meet the same faults
        board.inject(to_device=(p,) * 3, from_device=(p,) * 3, seed=3)
        try:
            operands = random_gemm(np.random.default_rng(1), 512, 16, 32)
            y, _ = Device(ENDURANCE_CFG, board, timeout_cycles=1 << 24).gemm(*operands)
        finally:
            board.inject()
        np.testing.assert_array_equal(y, golden.gemm_hw(*operands))
