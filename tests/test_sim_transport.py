"""The simulated link (`SimTransport` + ``sim_harness.cpp``) end to end, against a small echo device.

The echo device is built here rather than taken from ``hw/`` so that the transport is tested on its own: every
word ``x`` comes back as ``x * 3 + 1`` (mod 2**32) through a FIFO, and the device refuses input on a fixed
pattern of cycles, so the harness's handshakes are exercised under backpressure even without throttling.
"""

import time

import numpy as np
import pytest
from amaranth.back import verilog

from tessera.gen.toolchain import ToolMissing, verilator_bin
from tessera.sw_driver.transport import LinkError, SimTransport, Transport, build_harness
from tessera.verif.echo_device import TOPLEVEL, EchoDevice, echo_model, write_echo_verilog


@pytest.fixture(scope="session")
def verilator():
    try:
        return verilator_bin()
    except ToolMissing as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="session")
def echo_verilog(verilator, tmp_path_factory):
    return write_echo_verilog(tmp_path_factory.mktemp("echo"))


@pytest.fixture
def link(echo_verilog):
    with SimTransport(echo_verilog, TOPLEVEL) as transport:
        yield transport


def random_words(count, seed):
    return np.random.default_rng(seed).integers(0, 1 << 32, count, dtype=np.uint32)


@pytest.mark.rtl
class TestRoundTrip:
    def test_million_words_come_back_bit_exact(self, link):
        words = random_words(1_000_000, seed=1)
        words[:4] = [0, 1, 0x5555_5555, 0xFFFF_FFFF]  # wrap-around cases of x * 3 + 1
        link.send(words)
        np.testing.assert_array_equal(link.receive(len(words)), echo_model(words))
        stats = link.stats()
        assert (stats.words_in, stats.words_out, stats.pending_in, stats.buffered_out) == (10**6, 10**6, 0, 0)

    @pytest.mark.parametrize("stall", [0.0, 0.5], ids=["no_stall", "stall"])
    def test_uneven_chunks_interleaved(self, link, stall):
        rng = np.random.default_rng(2)
        link.throttle(in_stall=stall, out_stall=stall, seed=7)
        words = random_words(200_000, seed=3)
        sent = received = 0
        answers = []
        while received < len(words):
            if sent < len(words):
                step = int(rng.integers(1, 5000))
                link.send(words[sent:sent + step])
                sent = min(sent + step, len(words))
            step = int(rng.integers(0, sent - received + 1))
            answers.append(link.receive(step))
            received += step
        np.testing.assert_array_equal(np.concatenate(answers), echo_model(words))

    def test_words_from_run_are_kept_for_receive(self, link):
        link.send([10, 20, 30])
        link.run(100)
        assert link.stats().buffered_out == 3
        np.testing.assert_array_equal(link.receive(3, timeout_cycles=1), echo_model([10, 20, 30]))

    def test_accepts_python_ints_and_wider_dtypes(self, link):
        link.send([0, 2**32 - 1])
        link.send(np.array([5, 6], np.int64))
        np.testing.assert_array_equal(link.receive(4), echo_model([0, 2**32 - 1, 5, 6]))


@pytest.mark.rtl
class TestTimeout:
    def test_asking_for_more_words_than_sent_raises_quickly(self, link):
        words = random_words(12, seed=4)
        link.send(words)
        start = time.monotonic()
        with pytest.raises(LinkError, match=r"produced 12 of 40 words, then nothing for 100000 cycles") as error:
            link.receive(40)
        assert time.monotonic() - start < 5
        np.testing.assert_array_equal(error.value.received, echo_model(words))

    def test_silent_device_raises(self, link):
        with pytest.raises(LinkError, match=r"produced 0 of 1 words, then nothing for 50 cycles"):
            link.receive(1, timeout_cycles=50)
        assert 50 <= link.cycles <= 60  # reset cycles plus the idle window

    def test_blocked_input_is_reported(self, link):
        link.throttle(out_stall=1.0)  # the device fills up and stops accepting
        link.send(random_words(100, seed=5))
        with pytest.raises(LinkError, match=r"produced 0 of 100 words") as error:
            link.receive(100, timeout_cycles=1000)
        pending = link.stats().pending_in
        assert 0 < pending < 100
        assert f"({pending} sent words not yet accepted" in str(error.value)

    def test_link_still_works_after_a_timeout(self, link):
        with pytest.raises(LinkError):
            link.receive(1, timeout_cycles=10)
        link.send([1, 2])
        np.testing.assert_array_equal(link.receive(2), echo_model([1, 2]))

    def test_harness_exit_is_a_link_error(self, link):
        link._proc.kill()
        with pytest.raises(LinkError, match=r"harness exited .*exit code -9"):
            link.receive(1)
        assert link.closed
        with pytest.raises(LinkError, match="closed"):
            link.send([1])
        link.close()

    def test_unknown_request_ends_the_link(self, link):
        with pytest.raises(LinkError, match=r"(?s)rejected request 99 .*unknown opcode 99"):
            link._request(99)
        assert link.closed


@pytest.mark.rtl
class TestReset:
    def test_reset_empties_device_and_queues(self, link):
        link.throttle(out_stall=1.0)
        link.send(random_words(100, seed=6))
        link.run(200)
        before = link.stats()
        assert before.words_in > 0 and before.pending_in > 0 and before.words_out == 0
        link.reset()
        link.throttle()
        after = link.stats()
        assert (after.pending_in, after.buffered_out) == (0, 0)
        assert after.cycles == before.cycles + link.reset_cycles
        link.send([7])
        np.testing.assert_array_equal(link.receive(1), [22])
        with pytest.raises(LinkError, match="produced 0 of 1"):  # nothing left over from before the reset
            link.receive(1, timeout_cycles=200)

    def test_cycles_count_every_clock(self, link):
        start = link.cycles
        link.run(12345)
        assert link.cycles == start + 12345


@pytest.mark.rtl
class TestBuild:
    def test_second_construction_reuses_the_build(self, echo_verilog, tmp_path):
        with SimTransport(echo_verilog, TOPLEVEL, build_root=tmp_path) as first:
            assert first.build.rebuilt
            stamp = first.build.build_dir / "built.ok"
            built_at = (first.build.binary.stat().st_mtime_ns, stamp.stat().st_mtime_ns)
        # Same text from a different file: the cache is keyed by content, not path.
        copy = tmp_path / "copy.v"
        copy.write_bytes(echo_verilog.read_bytes())
        with SimTransport(copy, TOPLEVEL, build_root=tmp_path) as second:
            assert not second.build.rebuilt
            assert second.build.build_dir == first.build.build_dir
            assert (second.build.binary.stat().st_mtime_ns, stamp.stat().st_mtime_ns) == built_at
            second.send([1])
            np.testing.assert_array_equal(second.receive(1), [4])

    def test_the_cache_follows_tessera_cache_not_the_working_directory(self, echo_verilog, tmp_path, monkeypatch):
        monkeypatch.setenv("TESSERA_CACHE", str(tmp_path / "cache"))
        said = []
        for cwd in (tmp_path / "a", tmp_path / "b"):
            cwd.mkdir()
            monkeypatch.chdir(cwd)
            build = build_harness(echo_verilog, TOPLEVEL, announce=lambda: said.append("building"))
            assert build.build_dir.parent == tmp_path / "cache" / "sim_harness"
        assert said == ["building"]          # announced once, before the one build; the second run reused it
        assert not any((tmp_path / d / "build").exists() for d in ("a", "b"))

    def test_different_verilog_gets_its_own_build(self, echo_verilog, tmp_path):
        other = tmp_path / "other.v"
        other.write_text(verilog.convert(EchoDevice(depth=4), name=TOPLEVEL, emit_src=False))
        first = build_harness(echo_verilog, TOPLEVEL)
        second = build_harness(other, TOPLEVEL)
        assert first.build_dir != second.build_dir

    def test_broken_verilog_names_the_toplevel(self, verilator, tmp_path):
        broken = tmp_path / "broken.v"
        broken.write_text("module broken_device(input clk; endmodule\n")
        with pytest.raises(RuntimeError, match="could not build the simulation harness for 'broken_device'"):
            build_harness(broken, "broken_device", build_root=tmp_path)

    def test_trace_writes_a_waveform(self, echo_verilog, tmp_path):
        vcd = tmp_path / "echo.vcd"
        with SimTransport(echo_verilog, TOPLEVEL, trace=vcd) as traced:
            assert traced.build.trace
            traced.send([1, 2, 3])
            np.testing.assert_array_equal(traced.receive(3), echo_model([1, 2, 3]))
        assert "host_in__payload" in vcd.read_text()


class _Recorder(Transport):
    """A transport without a device: keeps what is sent, for checking the base class's argument handling."""

    def __init__(self):
        self.sent = []
        self._closed = False

    def _send(self, words):
        self.sent.append(words)

    def _receive(self, count, timeout_cycles):
        return np.zeros(count, np.uint32)

    def reset(self):
        pass

    @property
    def cycles(self):
        return 0

    @property
    def closed(self):
        return self._closed

    def close(self):
        self._closed = True


class TestTransportArguments:
    def test_words_are_sent_as_little_endian_uint32(self):
        recorder = _Recorder()
        recorder.send(np.array([1, 2], ">u4"))
        recorder.send(range(3))
        recorder.send([])
        assert [w.dtype.str for w in recorder.sent] == ["<u4"] * 3
        assert [w.tolist() for w in recorder.sent] == [[1, 2], [0, 1, 2], []]

    @pytest.mark.parametrize("words, error, message", [
        ([-1, 5], ValueError, r"0 \.\. 0xffffffff; got values from -1 to 5"),
        ([2**32], ValueError, r"got values from 4294967296"),
        ([1.5], TypeError, "integers"),
        ([[1, 2]], ValueError, "1-D"),
    ])
    def test_bad_words_are_refused(self, words, error, message):
        with pytest.raises(error, match=message):
            _Recorder().send(words)

    @pytest.mark.parametrize("kwargs, message", [
        ({"count": -1}, "count must be at least 0"),
        ({"count": 1, "timeout_cycles": 0}, r"timeout_cycles must be 1 \.\. 4294967295"),
        ({"count": 2.0}, "count must be an integer"),
    ])
    def test_bad_receive_arguments_are_refused(self, kwargs, message):
        with pytest.raises((ValueError, TypeError), match=message):
            _Recorder().receive(**kwargs)

    def test_context_manager_closes(self):
        with _Recorder() as recorder:
            pass
        with pytest.raises(LinkError, match="_Recorder is closed"):
            recorder.send([1])
