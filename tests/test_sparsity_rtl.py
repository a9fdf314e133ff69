"""Zero gating: the device counts every MAC whose multiply a zero operand gates, exactly."""

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver import golden
from tessera.sw_driver.runtime import open_sim_device

pytestmark = pytest.mark.rtl


@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_gated_macs_are_counted_exactly(dataflow):
    cfg = AcceleratorConfig(rows=4, cols=4, dataflow=dataflow, act_depth=256, weight_depth=256, acc_depth=64,
                            param_depth=4, vec_depth=0)
    rng = np.random.default_rng(3)
    with open_sim_device(cfg) as device:
        for density_x, density_w in ((1.0, 1.0), (0.5, 0.8), (0.3, 0.2), (0.0, 0.5)):
            # whole tiles only (K and N multiples of the array, M of its rows), so that no padding lane of
            # the array is in the count: every counted MAC is one of the layer's
            m, k, n = 12, 8, 4
            x = (rng.integers(-128, 128, (m, k)) * (rng.random((m, k)) < density_x)).astype(np.int8)
            w = (rng.integers(-128, 128, (k, n)) * (rng.random((k, n)) < density_w)).astype(np.int8)
            bias = rng.integers(-1000, 1000, n).astype(np.int32)
            scale = np.full(n, 0.01, np.float32)
            y, run = device.gemm(x, w, bias, scale, 3)
            np.testing.assert_array_equal(y, golden.gemm_hw(x, w, bias, scale, 3))
            expected = int(np.sum((x[:, :, None] == 0) | (w[None, :, :] == 0)))
            assert run.counters["macs_gated"] == expected, (density_x, density_w)
            assert run.counters["array_cycles"] * cfg.pes == m * k * n   # so gated <= every MAC of the layer
