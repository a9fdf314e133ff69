"""``reduce`` GEMMs on the whole simulated device: refused (BAD_SHAPE) where the core cannot run them, and the
device goes on. (Their sums: tests/test_core_rtl.py, random shapes under stalls; whole models with a global pool:
tests/test_resident.py.)"""

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.hw.isa import Opcode
from tessera.sw_driver import golden
from tessera.sw_driver.isa_encode import DeviceError, instruction
from tessera.sw_driver.runtime import open_sim_device
from tessera.verif.cases import ExpectErrors, random_gemm

pytestmark = pytest.mark.rtl

# (the vector unit's test configurations: their simulators are built once for both files)
WS = AcceleratorConfig(rows=4, cols=4, dataflow="ws", act_depth=64, weight_depth=32, acc_depth=32, param_depth=4,
                       vec_depth=256, link_timeout=256)
OS = AcceleratorConfig(rows=2, cols=3, dataflow="os", act_depth=64, weight_depth=48, acc_depth=8, param_depth=3,
                       vec_depth=512, link_timeout=256)


@pytest.mark.parametrize("cfg", [WS, OS], ids=["ws-conv", "os"])
def test_a_reduce_gemm_the_core_cannot_run_is_refused_and_the_device_goes_on(cfg):
    setup = instruction(cfg, Opcode.CONV_SETUP, in_h=2, in_w=2, out_w=2, channel_blocks=1, kernel_h=1, kernel_w=1,
                        stride=1)
    # ws: a conv command's vectors are output pixels, never summed into one; os: no reduce at all
    bad = instruction(cfg, Opcode.GEMM, m=2, k=1, reduce=1, conv=int(cfg.dataflow == "ws"))
    with open_sim_device(cfg) as device:
        device.transport.send(np.concatenate([setup, bad]))
        with pytest.raises(DeviceError, match="BAD_SHAPE"):
            device.run(ExpectErrors(1))
        x, w, bias, scale, y_zp = random_gemm(np.random.default_rng(4), 5, 6, 7)
        y, _ = device.gemm(x, w, bias, scale, y_zp)
        np.testing.assert_array_equal(y, golden.gemm_hw(x, w, bias, scale, y_zp))
