"""VCD switching activity of a traced layer run, cross-checked against the device's own counters."""

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver import golden
from tessera.verif.activity import activity, trace_gemm

pytestmark = pytest.mark.rtl


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_multiplier_activity_matches_the_mac_counters(dataflow, tmp_path):
    cfg = AcceleratorConfig(rows=2, cols=2, dataflow=dataflow, act_depth=64, weight_depth=32, acc_depth=32,
                            param_depth=2, vec_depth=0)
    rng = np.random.default_rng(11)
    # whole tiles (K and N multiples of the array, M of its rows): no padding lane feeds the array
    m, k, n = 6, 4, 4
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    x[rng.random((m, k)) < 0.3] = 0
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w[:, 1::cfg.cols] = 0             # the output channels of PE column 1 (1 and 3) have zero weights
    bias = rng.integers(-1000, 1000, n).astype(np.int32)
    scale = np.full(n, 0.01, np.float32)
    vcd = tmp_path / f"gemm_{dataflow}.vcd"
    y, run = trace_gemm(cfg, x, w, bias, scale, 5, vcd)
    np.testing.assert_array_equal(y, golden.gemm_hw(x, w, bias, scale, 5))
    c = run.counters
    found = activity(vcd, dataflow)

    assert sorted(found.effective_macs) == [(r, col) for r in range(2) for col in range(2)]
    # Every MAC the array issued either multiplied two non-zero operands in some PE in some cycle, or was gated:
    # the waveform and the counters agree exactly.
    assert sum(found.effective_macs.values()) == c["array_cycles"] * cfg.pes - c["macs_gated"]
    assert sum(found.effective_macs.values()) == int(np.sum((x[:, :, None] != 0) & (w[None] != 0)))
    # Output channel c lands in PE column c % cols in both arrays: column 1 only ever multiplied zeros.
    assert found.effective_macs[(0, 1)] == found.effective_macs[(1, 1)] == 0
    assert all(found.multiplier_input_toggles[pe] > 0 for pe in found.effective_macs)
    assert all(t > 0 for t in found.pe_toggles.values())
    # The buffers the layer used toggled; their ports are named after them.
    ports = found.buffer_port_toggles()
    for port in ("act_read", "weight_read", "param_read"):
        assert ports[port] > 0, (port, ports)
    assert found.cycles >= c["cycles"]


def test_pe_heatmaps_are_drawn(tmp_path):
    """`python -m tessera.verif.activity` draws the PE heat maps of a traced sparse GEMM."""
    from tessera.verif.activity import main
    main(["--rows", "2", "--cols", "2", "--out", str(tmp_path)])
    for name in ("effective_macs", "toggles"):
        png = tmp_path / f"pe_ws_2x2_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
