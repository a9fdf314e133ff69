"""The vector unit on the whole simulated device: max pooling and quantized add against the golden model, on
random shapes and layers, with and without random stalls on both link directions; and its error paths."""

import functools
import zlib

import numpy as np
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.hw.isa import BufferId, Opcode
from tessera.hw.layouts import StoreTarget
from tessera.sw_driver import golden
from tessera.sw_driver.isa_encode import DeviceError, instruction, load
from tessera.sw_driver.layers import QuantParams
from tessera.sw_driver.runtime import open_sim_device
from tessera.sw_driver.vector_compiler import VectorProgram, add_params_for
from tessera.verif.cases import ExpectErrors

pytestmark = pytest.mark.rtl

CONFIGS = [
    # a small vector buffer: pooled maps split into bands, adds into several chunks
    AcceleratorConfig(rows=4, cols=4, dataflow="ws", act_depth=64, weight_depth=32, acc_depth=32, param_depth=4,
                      vec_depth=256, link_timeout=256),
    AcceleratorConfig(rows=2, cols=3, dataflow="os", act_depth=64, weight_depth=48, acc_depth=8, param_depth=3,
                      vec_depth=512, link_timeout=256),
]
_IDS = [f"{c.dataflow}-{c.rows}x{c.cols}-vec{c.vec_depth}" for c in CONFIGS]


@pytest.fixture(scope="module", params=CONFIGS, ids=_IDS)
def device(request):
    with open_sim_device(request.param) as device:
        yield device


def _rng(device, *salt):
    return np.random.default_rng(zlib.crc32(f"{device.cfg.hash}{salt}".encode()))


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_maxpool_matches_golden(device, stall):
    rng = _rng(device, "pool", stall)
    device.transport.throttle(in_stall=stall, out_stall=stall, seed=int(rng.integers(1, 1000)))
    for _ in range(6):
        kernel = tuple(int(k) for k in rng.integers(1, 5, 2))
        stride = int(rng.integers(1, 4))
        pads = tuple(int(rng.integers(0, k)) for k in (*kernel, *kernel))
        pads = (pads[0], pads[1], pads[2], pads[3])
        h, w = (int(rng.integers(k, 12)) for k in kernel)
        x = rng.integers(-128, 128, (int(rng.integers(1, 4)), int(rng.integers(1, 9)), h, w)).astype(np.int8)
        y, run = device.maxpool(x, kernel, (stride, stride), pads)
        np.testing.assert_array_equal(y, golden.maxpool(x, kernel, (stride, stride), pads),
                                      err_msg=f"{x.shape} k={kernel} s={stride} p={pads}")
        # every result word was read from the vector buffer tap by tap, and the link moved every word
        assert run.counters["vec_reads"] > 0 and run.counters["vec_writes"] > 0
        assert run.counters["array_cycles"] == 0
    device.transport.throttle()


def _random_params(rng, dtype):
    lo, hi = (-128, 127) if dtype == np.int8 else (0, 255)
    while True:
        scales = [float(np.float32(10 ** rng.uniform(-2.5, -0.5))) for _ in range(3)]
        params = [QuantParams(s, int(rng.integers(lo, hi + 1)), dtype) for s in scales]
        try:
            return params, add_params_for(*params)
        except ValueError:
            continue


@pytest.mark.parametrize("stall", [0.0, 0.3])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8], ids=["int8", "uint8"])
def test_add_matches_golden(device, stall, dtype):
    rng = _rng(device, "add", stall, np.dtype(dtype).name)
    device.transport.throttle(in_stall=stall, out_stall=stall, seed=int(rng.integers(1, 1000)))
    lo, hi = (-128, 127) if dtype == np.int8 else (0, 255)
    for size in (1, 5, int(rng.integers(20, 90)), int(rng.integers(200, 700))):
        (pa, pb, py), params = _random_params(rng, dtype)
        a, b = (rng.integers(lo, hi + 1, size).astype(dtype) for _ in range(2))
        shift = 128 if dtype == np.uint8 else 0   # the device holds uint8 as x - 128
        y, run = device.add((a.astype(np.int16) - shift).astype(np.int8), (b.astype(np.int16) - shift).astype(np.int8),
                            params)
        want = golden.qlinear_add(a, pa.scale, pa.zero_point, b, pb.scale, pb.zero_point, py.scale, py.zero_point)
        np.testing.assert_array_equal((y.astype(np.int16) + shift).astype(dtype), want, err_msg=f"size {size}")
        assert run.counters["vec_reads"] == 2 * -(-size // 4)
    device.transport.throttle()


def test_bad_vector_instructions_are_reported_and_skipped(device):
    cfg = device.cfg
    bad = np.concatenate([
        instruction(cfg, Opcode.POOL, x_base=0, m=0),                                      # nothing to pool
        instruction(cfg, Opcode.ADD, a_base=cfg.vec_depth - 1, b_base=0, words=2),         # past the buffer
        instruction(cfg, Opcode.POOL_SETUP, in_h=0, in_w=1, out_w=1, channel_blocks=1, kernel_h=1, kernel_w=1,
                    stride=1),
    ])
    device.transport.send(bad)
    with pytest.raises(DeviceError, match="BAD_SHAPE.*OUT_OF_RANGE.*BAD_SHAPE"):
        device.run(ExpectErrors(3))
    _still_pools(device)


def _still_pools(device):
    """After the refused instructions the device goes on working."""
    x = np.arange(-64, 64, dtype=np.int8).reshape(1, 2, 8, 8)
    y, _ = device.maxpool(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(y, golden.maxpool(x, (2, 2), (2, 2), (0, 0, 0, 0)))


def _pixel_words(fmap):
    """(C, H, W) int8 as vector words: pixel by pixel, four channels a word."""
    channels, h, w = fmap.shape
    padded = np.zeros((h, w, -(-channels // 4) * 4), np.int8)
    padded[..., :channels] = fmap.transpose(1, 2, 0)
    return padded.reshape(-1, 4)


def test_a_pool_stored_in_the_vector_buffer_is_pooled_again(device):
    # a POOL with store=VEC writes its result words from d_base on, where a second POOL reads them
    cfg, rng = device.cfg, _rng(device, "stored pool")
    x = rng.integers(-128, 128, (int(rng.integers(1, 9)), 6, 6), dtype=np.int8)
    blocks, stored_at = -(-len(x) // 4), 100

    def setup(size, kernel):
        return instruction(cfg, Opcode.POOL_SETUP, in_h=size, in_w=size, out_w=size // kernel,
                           channel_blocks=blocks, kernel_h=kernel, kernel_w=kernel, stride=kernel)
    words = np.concatenate([
        load(cfg, BufferId.VEC, 0, _pixel_words(x)),
        setup(6, 2), instruction(cfg, Opcode.POOL, x_base=0, m=9, store=StoreTarget.VEC, d_base=stored_at),
        setup(3, 1), instruction(cfg, Opcode.POOL, x_base=stored_at, m=9),
    ])
    program = VectorProgram(words, [9 * blocks], lambda results: np.asarray(results[0], np.int8))
    y, run = device.run(program)
    want = _pixel_words(golden.maxpool(x[None], (2, 2), (2, 2), (0, 0, 0, 0))[0]).reshape(-1)
    np.testing.assert_array_equal(y, want)
    # one VECTOR packet (the stored pool sends none); the buffer took the loaded words and the stored ones
    assert run.counters["commands"] == 2 and run.counters["vec_writes"] == 36 * blocks + 9 * blocks
    assert run.counters["link_words_out"] == 1 + 9 * blocks


def test_bad_vector_stores_are_reported_and_skipped(device):
    cfg = device.cfg
    add = functools.partial(instruction, cfg, Opcode.ADD, a_base=0, b_base=4, words=2)
    bad = np.concatenate([
        add(store=StoreTarget.ACT, d_base=0),                                   # an add's words are no pixels
        add(store=3, d_base=0),                                                 # no such target
        add(store=StoreTarget.VEC, d_base=cfg.vec_depth - 1),                   # past the vector buffer
        instruction(cfg, Opcode.POOL_SETUP, in_h=2, in_w=2, out_w=1, channel_blocks=2, kernel_h=2, kernel_w=2,
                    stride=2),
        instruction(cfg, Opcode.POOL, x_base=0, m=1, store=StoreTarget.VEC, d_base=cfg.vec_depth - 1),  # past it
        instruction(cfg, Opcode.STORE_SETUP, lane=0, lanes=4, stride=1),
        instruction(cfg, Opcode.POOL, x_base=0, m=1, store=StoreTarget.ACT, d_base=0),   # 4 lanes, 2 blocks
        instruction(cfg, Opcode.STORE_SETUP, lane=0, lanes=8, stride=2),
        instruction(cfg, Opcode.POOL, x_base=0, m=2, store=StoreTarget.ACT, d_base=cfg.act_depth - 1),  # past it
    ])
    device.transport.send(bad)
    with pytest.raises(DeviceError, match="BAD_SHAPE.*BAD_SHAPE.*OUT_OF_RANGE.*OUT_OF_RANGE.*BAD_SHAPE.*OUT_OF_RANGE"):
        device.run(ExpectErrors(6))
    _still_pools(device)


def test_pool_and_conv_before_their_setup_are_refused(device):
    """After reset every geometry is zero: a POOL or conv GEMM then would loop forever, so both are refused."""
    cfg = device.cfg
    device.transport.reset()
    device.transport.send(np.concatenate([
        instruction(cfg, Opcode.POOL, x_base=0, m=1),
        instruction(cfg, Opcode.GEMM, m=1, k=cfg.rows if cfg.dataflow == "os" else 1, conv=1),
    ]))
    with pytest.raises(DeviceError, match="BAD_SHAPE.*BAD_SHAPE"):
        device.run(ExpectErrors(2))
    x = np.arange(-64, 64, dtype=np.int8).reshape(1, 2, 8, 8)
    y, _ = device.maxpool(x, (3, 3), (1, 1), (1, 1, 1, 1))
    np.testing.assert_array_equal(y, golden.maxpool(x, (3, 3), (1, 1), (1, 1, 1, 1)))



def test_device_without_vector_unit_refuses_vector_work():
    cfg = AcceleratorConfig(rows=1, cols=1, act_depth=8, weight_depth=8, acc_depth=4, param_depth=1, vec_depth=0,
                            link_timeout=64)
    with open_sim_device(cfg) as device:
        device.transport.send(np.concatenate([instruction(cfg, Opcode.POOL, x_base=0, m=1),
                                              load(cfg, BufferId.VEC, 0, np.zeros((1, 4), np.int8))]))
        with pytest.raises(DeviceError, match="BAD_SHAPE.*BAD_BUFFER"):
            device.run(ExpectErrors(2))
