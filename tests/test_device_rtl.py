"""The whole device under Verilator (cocotb): compiled programs over the host link, and a fuzz test."""

import dataclasses
import json
import random
import zlib

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.gen.verilog import DEVICE_TOPLEVEL, cached_verilog
from tessera.hw.isa import Opcode
from tessera.sw_driver.isa_encode import disassemble
from tessera.verif.cocotb_sim import build_simulator, run_cocotb

pytestmark = pytest.mark.rtl

CONFIGS = [
    AcceleratorConfig(rows=2, cols=2, dataflow="ws", act_depth=64, weight_depth=32, acc_depth=32, param_depth=2,
                      link_timeout=64),
    AcceleratorConfig(rows=2, cols=3, dataflow="os", act_depth=64, weight_depth=48, acc_depth=8, param_depth=3,
                      link_timeout=64),
    # (these two with single-port operand buffers, the iCE40's SPRAM: loads overlapping compute wait for the
    # cycles in which it does not read)
    AcceleratorConfig(rows=4, cols=8, dataflow="ws", act_depth=256, weight_depth=64, acc_depth=128, param_depth=4,
                      link_timeout=64, single_port_buffers=True),
    AcceleratorConfig(rows=8, cols=4, dataflow="os", act_depth=64, weight_depth=64, acc_depth=16, param_depth=4,
                      link_timeout=64, single_port_buffers=True),
    # row-stationary, non-square both ways (the default filters per PE; an accumulator half of 32 rows often
    # holds fewer filters' rows, so commands carry fewer)
    AcceleratorConfig(rows=3, cols=4, dataflow="rs", act_depth=512, weight_depth=256, acc_depth=64, param_depth=8,
                      link_timeout=64),
    # (a small activation buffer: larger maps run in bands of output rows; one filter per PE, as before p;
    # single-port operand buffers)
    AcceleratorConfig(rows=4, cols=2, dataflow="rs", act_depth=128, weight_depth=256, acc_depth=64, param_depth=8,
                      link_timeout=64, rs_filters=1, single_port_buffers=True),
    # three filters per PE (not a power of two), few parameter words: the last group of filters is smaller; a
    # one-lane requantiser (each output row in three beats)
    AcceleratorConfig(rows=2, cols=3, dataflow="rs", act_depth=256, weight_depth=512, acc_depth=96, param_depth=5,
                      link_timeout=64, rs_filters=3, requant_lanes=1),
    # approximate PE multipliers (hw.pe_multipliers), one per dataflow: checked against the golden model with the
    # same design, so a wrong product anywhere in an array shows as a mismatch
    AcceleratorConfig(rows=2, cols=3, dataflow="ws", act_depth=64, weight_depth=48, acc_depth=32, param_depth=3,
                      link_timeout=64, multiplier="drum4"),
    AcceleratorConfig(rows=3, cols=2, dataflow="os", act_depth=64, weight_depth=48, acc_depth=12, param_depth=2,
                      link_timeout=64, multiplier="truncated8"),
    AcceleratorConfig(rows=3, cols=4, dataflow="rs", act_depth=512, weight_depth=256, acc_depth=64, param_depth=8,
                      link_timeout=64, multiplier="mitchell"),
]


# depthwise commands need cols <= rows: the small square one, one with two lane groups and fewer columns than
# a kernel's taps (the loader's cooling, hw.weight_loader), and one with an approximate multiplier
DEPTHWISE_CONFIGS = [
    CONFIGS[0],
    AcceleratorConfig(rows=8, cols=4, dataflow="ws", act_depth=256, weight_depth=256, acc_depth=64, param_depth=8,
                      link_timeout=64),
    AcceleratorConfig(rows=4, cols=2, dataflow="ws", act_depth=128, weight_depth=128, acc_depth=32, param_depth=6,
                      link_timeout=64, multiplier="drum4", single_port_buffers=True),
]


def _config_id(cfg):
    return (f"{cfg.dataflow}-{cfg.rows}x{cfg.cols}" + ("-sp" if cfg.single_port_buffers else "")
            + ("" if cfg.multiplier == "exact" else f"-{cfg.multiplier}"))


def _build(cfg):
    # the Verilog from the build cache: elaborating a configuration takes seconds, and a dozen tests share each one
    return build_simulator(cached_verilog(cfg, top=DEVICE_TOPLEVEL), DEVICE_TOPLEVEL)


def _seed(cfg, *salt):
    return zlib.crc32(f"{cfg.hash}{salt}".encode()) & 0xFFFF


@pytest.mark.parametrize("cfg", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["no_stall", "stall"])
def test_compiled_gemm_matches_golden(cfg, stall):
    rng = random.Random(_seed(cfg, stall))
    problems = [(1, 1, 1)] + [(rng.randint(1, 90), rng.randint(1, 20), rng.randint(1, 20)) for _ in range(4)]
    job = {"config": cfg.to_dict(), "seed": _seed(cfg, stall), "stall": stall, "backpressure": stall,
           "problems": problems}
    run_cocotb(_build(cfg), DEVICE_TOPLEVEL, "tessera.verif.tb_device", "device_gemm",
               env={"TESSERA_TB": json.dumps(job)}, results_name=f"gemm_{stall}")


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[4]], ids=_config_id)
def test_random_instruction_streams_never_hang(cfg):
    job = {"config": cfg.to_dict(), "seed": _seed(cfg, "fuzz"), "stall": 0.2, "backpressure": 0.2, "fuzz": 6}
    run_cocotb(_build(cfg), DEVICE_TOPLEVEL, "tessera.verif.tb_device", "device_fuzz",
               env={"TESSERA_TB": json.dumps(job)}, results_name="fuzz")


@pytest.mark.parametrize("cfg", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["no_stall", "stall"])
def test_conv_with_sliding_window_matches_golden(cfg, stall):
    rng = random.Random(_seed(cfg, "conv", stall))
    convs = []
    while len(convs) < 4:
        kernel = rng.randint(1, 5)
        shape = {"channels": rng.randint(1, 6), "out_channels": rng.randint(1, 9), "size": rng.randint(kernel, 10),
                 "kernel": kernel, "stride": rng.randint(1, 2), "pad": rng.randint(0, kernel - 1),
                 # pruned weights: the compiler skips all-zero tiles (ws: sparse commands; any: whole filters)
                 "zero_tiles": [cfg.rows, cfg.cols, rng.choice([0.0, 0.5, 0.9])]}
        blocks = -(-shape["channels"] // cfg.rows)
        # keep to layers whose weights fit this small configuration, and whose input fits at least in row bands
        # of a kernel's height (larger maps than the buffer are split into bands, each behind a CONV_SETUP)
        if cfg.dataflow == "rs":
            # the whole map, or a band of `cols` output rows, in half the activation buffer (filters taller
            # than the array fold into passes)
            band = min(shape["size"], (cfg.cols - 1) * shape["stride"] + kernel)
            fits = band * shape["size"] * blocks <= cfg.act_depth // 2
        else:
            fits = (kernel * kernel * blocks * cfg.rows <= cfg.weight_depth
                    and kernel * shape["size"] * blocks <= cfg.act_depth)
        if fits:
            convs.append(shape)
    job = {"config": cfg.to_dict(), "seed": _seed(cfg, "conv", stall), "stall": stall, "backpressure": stall,
           "convs": convs}
    run_cocotb(_build(cfg), DEVICE_TOPLEVEL, "tessera.verif.tb_device", "device_conv",
               env={"TESSERA_TB": json.dumps(job)}, results_name=f"conv_{stall}")


# (stalls on the two small ones, both ways on the one with lane groups)
@pytest.mark.parametrize("cfg, stall", [(DEPTHWISE_CONFIGS[0], 0.3), (DEPTHWISE_CONFIGS[1], 0.0),
                                        (DEPTHWISE_CONFIGS[1], 0.3), (DEPTHWISE_CONFIGS[2], 0.3)],
                         ids=lambda value: _config_id(value) if isinstance(value, AcceleratorConfig) else
                         ("stall" if value else "no_stall"))
def test_depthwise_commands_match_the_core_model(cfg, stall):
    job = {"config": cfg.to_dict(), "seed": _seed(cfg, "depthwise", stall), "stall": stall, "backpressure": stall,
           "cases": 3}
    run_cocotb(_build(cfg), DEVICE_TOPLEVEL, "tessera.verif.tb_device", "device_depthwise",
               env={"TESSERA_TB": json.dumps(job)}, results_name=f"depthwise_{stall}")


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3], CONFIGS[4]], ids=_config_id)
@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["no_stall", "stall"])
def test_resident_programs_run_again_from_program_memory(cfg, stall):
    rng = random.Random(_seed(cfg, "program", stall))
    layers = [[rng.randint(1, 12), rng.randint(1, 10), rng.randint(1, 8)] for _ in range(2)]
    layers += [{"channels": rng.randint(1, 2), "out_channels": rng.randint(1, 5), "size": rng.randint(3, 6),
                "kernel": 2, "stride": 1, "pad": rng.randint(0, 1)}]
    job = {"config": cfg.to_dict(), "seed": _seed(cfg, "program", stall), "stall": stall, "backpressure": stall,
           "layers": layers}
    run_cocotb(_build(cfg), DEVICE_TOPLEVEL, "tessera.verif.tb_device", "device_program",
               env={"TESSERA_TB": json.dumps(job)}, results_name=f"program_{stall}")


#: Resident models on arrays of every dataflow, with rows dividing cols, cols dividing rows and neither (a stored
#: row then starts and ends mid-word), one with single-port buffers (tests/test_resident.py runs whole models on
#: 4x4 arrays of each)
RESIDENT_CONFIGS = [
    dataclasses.replace(CONFIGS[3], act_depth=2048, weight_depth=2048, param_depth=64),
    AcceleratorConfig(rows=4, cols=8, dataflow="ws", act_depth=2048, weight_depth=2048, acc_depth=64, param_depth=64,
                      link_timeout=64),
    AcceleratorConfig(rows=3, cols=2, dataflow="ws", act_depth=2048, weight_depth=2048, acc_depth=32, param_depth=64,
                      link_timeout=64),
    # row-stationary: stored rows are output columns, written lane by lane; groups of three filters step over the
    # activation words' four lanes and the vector words' four into the next word mid-command
    AcceleratorConfig(rows=4, cols=3, dataflow="rs", act_depth=2048, weight_depth=4096, acc_depth=64, param_depth=128,
                      link_timeout=64, rs_filters=3),
]


def _random_cnn(rng, convs, cfg):
    """An input shape and ``convs`` conv layers of random kernels, strides and padding that fit it, then a 1x1 one;
    some of the weight tiles of ``cfg``'s array all zero (pruned: ws stores only the others, sparse commands)."""
    channels, size = rng.randint(1, 5), rng.randint(5, 8)
    shape, layers = [channels, size, size], []
    for _ in range(convs):
        kernel, pad = rng.choice([1, 2, 3]), rng.randint(0, 1)
        stride = rng.randint(1, 2) if size + 2 * pad - kernel >= 2 else 1
        layers.append({"out_channels": rng.randint(1, 7), "kernel": kernel, "stride": stride, "pad": pad,
                       "zero_tiles": [cfg.rows, cfg.cols, rng.choice([0.0, 0.5, 1.0])]})
        size = (size + 2 * pad - kernel) // stride + 1
    return shape, layers + [{"out_channels": rng.randint(2, 9), "kernel": 1}]


@pytest.mark.parametrize("cfg", RESIDENT_CONFIGS, ids=_config_id)
@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["no_stall", "stall"])
def test_resident_models_keep_feature_maps_on_chip(cfg, stall):
    rng = random.Random(_seed(cfg, "resident", stall))
    # a small CNN, then a fully connected chain (1x1 convs over a 1x1 map)
    shape, layers = _random_cnn(rng, 2, cfg)
    # and a residual block with a max pool: maps on chip in both units' buffers, copied between them, ending in
    # the pool's VECTOR packets or in a window over the whole map and a fully connected layer
    kernel = rng.randint(1, 3)
    pool = [kernel, rng.randint(1, min(kernel + 1, 3)), rng.randint(0, kernel - 1)]
    graph = {"input": [rng.randint(1, 5), rng.randint(5, 9), rng.randint(5, 9)],
             "graph": {"channels": rng.randint(1, 7), "pool": pool, "end": rng.choice(["pool", "head"])}}
    chains = [{"input": shape, "layers": layers},
              {"input": [rng.randint(4, 12), 1, 1],
               "layers": [{"out_channels": rng.randint(1, 12), "kernel": 1} for _ in range(3)]}, graph,
              # and with its largest layers' weights streamed, its maps still on chip
              {**graph, "stream": True}]
    job = {"config": cfg.to_dict(), "seed": _seed(cfg, "resident", stall), "stall": stall, "backpressure": stall,
           "chains": chains, "inferences": 2, "batch": 2}
    run_cocotb(_build(cfg), DEVICE_TOPLEVEL, "tessera.verif.tb_device", "device_resident",
               env={"TESSERA_TB": json.dumps(job)}, results_name=f"resident_{stall}")


@pytest.mark.parametrize("cfg, stride", [(DEPTHWISE_CONFIGS[1], 1), (DEPTHWISE_CONFIGS[2], 2)],
                         ids=lambda value: _config_id(value) if isinstance(value, AcceleratorConfig) else
                         f"stride{value}")
def test_depthwise_counters_are_the_programs_own(cfg, stride):
    """A compiled depthwise conv (stride 1 on one array, 2 on the other) on the device: its output equals the
    golden model's, and every counter the compiler predicts from the program equals the device's; zero-gated
    multiplies at least the zero weights' (zero activations gate too)."""
    from tessera.sw_driver import golden
    from tessera.sw_driver.compiler import compile_conv
    from tessera.sw_driver.program_counters import ESTIMATED_COUNTERS, ws_program_counters
    from tessera.sw_driver.runtime import open_sim_device

    rng = np.random.default_rng(_seed(cfg, "depthwise counters"))
    channels, size, kernel = cfg.rows + cfg.cols, 5 + stride, 3
    x = rng.integers(-128, 128, (channels, size, size), dtype=np.int8)
    x[rng.random(x.shape) < 0.2] = 0
    w = np.zeros((channels, channels, kernel, kernel), np.int8)
    for c in range(channels):
        w[c, c] = rng.integers(-128, 128, (kernel, kernel), dtype=np.int8)
    w[rng.random(w.shape) < 0.2] = 0
    bias = rng.integers(-2000, 2000, channels, dtype=np.int32)
    scale = np.full(channels, 1 / 512, np.float32)
    attrs = dict(strides=(stride, stride), pads=(1, 1, 1, 1), pad_value=int(rng.integers(-128, 128)))
    program = compile_conv(cfg, x, w, bias, scale, 3, **attrs)
    assert any(ops["taps"] for opcode, ops, _ in disassemble(cfg, program.words) if opcode == Opcode.GEMM)
    with open_sim_device(cfg) as device:
        y, run = device.run(program)
    expected = golden.conv_hw(x[None], w, bias, scale, 3, multiplier=cfg.multiplier, **attrs)[0]
    np.testing.assert_array_equal(y.T.reshape(expected.shape), expected)
    predicted = ws_program_counters(cfg, program)
    for counter in ESTIMATED_COUNTERS:
        if counter == "macs_gated":
            assert predicted[counter] <= run.counters[counter], counter
        else:
            assert predicted[counter] == run.counters[counter], counter
