"""The generated core under Verilator (cocotb), bit-exact against the golden model.

Each configuration is built once (the build is cached by a hash of its Verilog) and then runs random GEMM
shapes, none of them chosen to be multiples of the array, with random stalls on every input stream and
random backpressure on the output.
"""

import json
import os
import random
import zlib

import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.gen.verilog import TOPLEVEL, cached_verilog
from tessera.verif.cocotb_sim import build_simulator, run_cocotb

pytestmark = pytest.mark.rtl

# Small buffers on purpose: the larger problems then need several passes and several folds per command.
_SP = {"single_port_buffers": True}     # single-port operand buffers (the iCE40's SPRAM): a load waits on compute
CONFIGS = [
    AcceleratorConfig(rows=r, cols=c, dataflow=df, act_depth=ad, weight_depth=wd, acc_depth=acc, param_depth=4,
                      **variant)
    for (r, c, df, ad, wd, acc, variant) in [
        (1, 1, "ws", 32, 32, 16, _SP), (1, 1, "os", 32, 32, 16, {}),
        (2, 2, "ws", 48, 32, 16, {}), (2, 2, "os", 48, 32, 16, {}),
        # requantisers narrower than the array (a row in several beats): the FPGA builds' way to spare logic
        (4, 8, "ws", 96, 64, 32, {"requant_lanes": 2}), (4, 8, "os", 96, 64, 32, {}),
        (8, 4, "ws", 96, 64, 32, {}), (8, 4, "os", 96, 64, 32, {"requant_lanes": 1}),
        (8, 8, "ws", 128, 128, 64, {}), (8, 8, "os", 128, 128, 64, {}),
        (3, 5, "ws", 40, 36, 12, _SP), (3, 5, "os", 40, 36, 12, {}), (5, 3, "os", 40, 36, 12, _SP),
        # the largest array once (its Verilator build is the suite's longest; os shares its datapath at 8x8)
        (16, 16, "ws", 256, 256, 64, {}),
    ]
]


def _config_id(cfg):
    return (f"{cfg.dataflow}-{cfg.rows}x{cfg.cols}" + (f"-rq{cfg.requant_lanes}" if cfg.requant_lanes else "")
            + ("-sp" if cfg.single_port_buffers else ""))


def _problems(cfg, rng, count):
    """Random shapes around the array size: smaller, larger and not multiples of it."""
    shapes = [(1, 1, 1)]
    for _ in range(count - 1):
        shapes.append((rng.randint(1, 3 * cfg.rows + 3), rng.randint(1, 3 * cfg.rows + 5),
                       rng.randint(1, 3 * cfg.cols + 3)))
    return shapes


@pytest.fixture(scope="session")
def simulators(tmp_path_factory):
    """Build each configuration's simulator at most once per session (and across sessions via the cache)."""
    built = {}

    def get(cfg):
        if cfg not in built:
            verilog = cached_verilog(cfg)
            built[cfg] = build_simulator(verilog, TOPLEVEL)
        return built[cfg]
    return get


@pytest.mark.parametrize("cfg", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("stall", [0.0, 0.4], ids=["no_stall", "stall"])
def test_random_gemm_matches_golden(cfg, stall, simulators):
    seed = zlib.crc32(f"{cfg.hash}{stall}".encode()) & 0xFFFF
    rng = random.Random(seed)
    job = {"config": cfg.to_dict(), "seed": seed, "stall": stall, "backpressure": stall,
           "problems": _problems(cfg, rng, 6)}
    run_cocotb(simulators(cfg), TOPLEVEL, "tessera.verif.tb_core", "gemm_random",
               env={"TESSERA_TB": json.dumps(job), "PYTHONHASHSEED": "0"},
               results_name=f"random_{stall}_{os.getpid()}")


# ws only (os and rs refuse it); the square, the odd (both single-port) and the serial requantiser's datapaths
REDUCE_CONFIGS = [cfg for cfg in CONFIGS if cfg.dataflow == "ws" and (cfg.rows, cfg.cols) in ((1, 1), (3, 5), (8, 8),
                                                                                             (4, 8))]


@pytest.mark.parametrize("cfg", REDUCE_CONFIGS, ids=_config_id)
def test_reduce_gemm_sums_its_vectors_into_one_row(cfg, simulators):
    """``reduce`` commands (a pool over a map's pixels with one weight tile): random shapes, random stalls and
    backpressure, against the core's model."""
    seed = zlib.crc32(f"{cfg.hash}reduce".encode()) & 0xFFFF
    rng = random.Random(seed)
    job = {"config": cfg.to_dict(), "seed": seed, "stall": 0.4, "backpressure": 0.4, "problems": _problems(cfg, rng, 4)}
    run_cocotb(simulators(cfg), TOPLEVEL, "tessera.verif.tb_core", "gemm_reduce",
               env={"TESSERA_TB": json.dumps(job), "PYTHONHASHSEED": "0"}, results_name=f"reduce_{os.getpid()}")
