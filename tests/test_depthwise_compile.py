"""Depthwise convolutions compiled as depthwise commands (``taps``), per layer and resident, checked bit for bit
against the golden model (and onnxruntime) through the transaction-level model of the core, without RTL."""

import dataclasses
import math
import zlib

import numpy as np
import onnxruntime as ort
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.hw.isa import COUNTERS, BufferId, Opcode
from tessera.hw.layouts import StoreTarget
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import (
    TilingError,
    compile_conv,
    conv_output_shape,
    dense_group_weights,
)
from tessera.sw_driver.device_model import DeviceModel
from tessera.sw_driver.isa_encode import disassemble
from tessera.sw_driver.model_compiler import compile_model, run_model
from tessera.sw_driver.onnx_import import load_model
from tessera.sw_driver.program_counters import ws_program_counters
from tessera.sw_driver.resident import DeviceLayer, compile_resident
from tessera.sw_driver.runtime import LayerRun
from tessera.verif.core_model import Buffers, execute_command, replay_program, run_program
from tessera.verif.mlperf_tiny import quantized
from tessera.verif.onnx_models import QuantFormat, QuantType, quantize_model, random_inputs
from tessera.verif.onnx_multi import depthwise_separable


def _ws(rows, cols, act, weight, acc, param=8):
    return AcceleratorConfig(rows=rows, cols=cols, dataflow="ws", act_depth=act, weight_depth=weight,
                             acc_depth=acc, param_depth=param)


# small buffers force bands of output rows (in the halves where act_depth is a power of two, behind a setup each
# where it is not), weight slots reused, and commands of fewer rows than a band
CONFIGS = [_ws(16, 8, 512, 256, 64), _ws(8, 8, 96, 64, 32, 2), _ws(8, 4, 128, 48, 16, 3), _ws(4, 4, 60, 32, 8, 2),
           _ws(4, 4, 4096, 4096, 1024, 64)]


def _depthwise_layer(rng, channels, size, kernel, pads, batch):
    """Random int8 operands of a depthwise conv (channel multiplier 1) as the model runner hands them to the
    compiler: dense block-diagonal weights, the input zero point folded into the bias and read as padding."""
    (h, w), (kh, kw) = size, kernel
    x = rng.integers(-128, 128, (batch, channels, h, w), dtype=np.int8)
    weights = dense_group_weights(rng.integers(-128, 128, (channels, 1, kh, kw), dtype=np.int8), channels)
    x_zp = int(rng.integers(-128, 128))
    bias = golden.fold_input_zero_point(rng.integers(-2**14, 2**14, channels, dtype=np.int32), x_zp, weights,
                                        output_axis=0)
    scale = (rng.uniform(0.5, 2, channels) / (8 * 128 * kh * kw)).astype(np.float32)
    return x, weights, bias, scale, int(rng.integers(-128, 128)), x_zp


def _gemms(cfg, words):
    return [ops for ops, _, _ in replay_program(cfg, words)]


def _check_layer(cfg, x, w, bias, scale, y_zp, pad_value, strides=(1, 1), pads=(0, 0, 0, 0), **kwargs):
    """Compile and run the layer on the core's model; assert it equals the golden model; return the program."""
    program = compile_conv(cfg, x, w, bias, scale, y_zp, strides=strides, pads=pads, pad_value=pad_value, **kwargs)
    y = program.assemble(run_program(cfg, program.words), cfg.cols)
    expected = golden.conv_hw(x, w, bias, scale, y_zp, strides=strides, pads=pads, pad_value=pad_value)
    np.testing.assert_array_equal(y, expected.transpose(0, 2, 3, 1).reshape(-1, len(w)))
    return program


class TestPerLayer:
    @pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.rows}x{c.cols}-a{c.act_depth}")
    def test_random_depthwise_layers_match_golden(self, cfg):
        rng = np.random.default_rng(cfg.rows * 1000 + cfg.cols * 10 + cfg.act_depth)
        ran = strided = 0
        for _ in range(80):
            if ran == 6:
                break
            channels = int(rng.integers(1, 3 * cfg.rows + 3))
            kernel = tuple(int(v) for v in rng.integers(1, 6, 2))
            size = tuple(int(v) for v in rng.integers(1, 14, 2))
            pads = tuple(int(v) for v in rng.integers(0, 3, 4))
            stride = int(rng.integers(1, 3))
            if size[0] + pads[0] + pads[2] < kernel[0] or size[1] + pads[1] + pads[3] < kernel[1]:
                continue
            x, w, bias, scale, y_zp, x_zp = _depthwise_layer(rng, channels, size, kernel, pads,
                                                             int(rng.integers(1, 4)))
            counted = np.eye(channels, dtype=bool)
            try:    # (the dense path's sparse commands are not the core model's: it runs every fold instead)
                program = _check_layer(cfg, x, w, bias, scale, y_zp, x_zp, strides=(stride, stride), pads=pads,
                                       counted=counted, skip_zero_tiles=kernel[1] <= cfg.rows)
            except TilingError:     # a map too wide for these buffers' rows (a dense conv's limit as well)
                continue
            ran += 1
            strided += stride == 2
            gemms = _gemms(cfg, program.words)
            if kernel[1] > cfg.rows:    # taps past the array's rows: the dense path
                assert gemms and not any(g["taps"] for g in gemms)
                continue
            assert gemms and all(g["taps"] == kernel[1] and g["k"] == kernel[0] for g in gemms)
            # a tile's channels lie in one lane group of one channel block
            assert {g["lane_group"] for g in gemms} <= set(range(cfg.rows // cfg.cols))
            out_h, out_w = conv_output_shape(*size, *kernel, stride, pads)
            # the layer's own MACs, not the dense weights' zeros (nor the streamed positions)
            assert program.macs == len(x) * out_h * out_w * channels * math.prod(kernel)
            assert program.macs_skipped == 0
        assert ran == 6 and strided

    def test_bands_run_in_the_halves_and_behind_a_setup_each(self):
        rng = np.random.default_rng(1)
        x, w, bias, scale, y_zp, x_zp = _depthwise_layer(rng, 20, (23, 11), (3, 5), (1, 2, 1, 2), 2)
        for act_depth, ring in ((256, True), (200, False)):
            cfg = _ws(8, 4, act_depth, 64, 32, 4)
            program = _check_layer(cfg, x, w, bias, scale, y_zp, x_zp, pads=(1, 2, 1, 2))
            setups = [ops for opcode, ops, _ in disassemble(cfg, program.words) if opcode == Opcode.CONV_SETUP]
            # the virtual geometry: a 3 x 1 kernel over the 11 outputs and the 4 positions the last one's taps reach
            assert all(s["kernel_h"] == 3 and s["kernel_w"] == 1 and s["out_w"] == 11 + 4 for s in setups)
            assert (len(setups) == 1) == ring and all(g["taps"] == 5 for g in _gemms(cfg, program.words))

    @pytest.mark.parametrize("case", ["os", "rs", "stride3", "cols_above_rows", "rows_not_whole_cols", "dense",
                                      "wide_kernel"])
    def test_where_it_is_not_eligible_the_dense_path_runs(self, case):
        rng = np.random.default_rng(zlib.crc32(case.encode()))
        cfg = {"os": AcceleratorConfig(rows=4, cols=4, dataflow="os"),
               "rs": AcceleratorConfig(rows=4, cols=4, dataflow="rs"),
               "cols_above_rows": _ws(4, 8, 1024, 1024, 64),
               "rows_not_whole_cols": _ws(6, 4, 1024, 1024, 64)}.get(case, _ws(8, 4, 1024, 1024, 64))
        kernel = (3, 6) if case == "wide_kernel" else (3, 3)
        x, w, bias, scale, y_zp, x_zp = _depthwise_layer(rng, 10, (9, 8), kernel, (1,) * 4, 1)
        if case == "dense":     # one weight off the diagonal: a channel reads another's input
            w[0, 1, 0, 0] = 1
        if case == "wide_kernel":   # taps past the 4 rows of this array
            cfg = _ws(4, 4, 1024, 1024, 64)
        strides = (3, 3) if case == "stride3" else (1, 1)
        if cfg.dataflow == "ws":    # (the core's model runs ws commands, not sparse ones: every fold instead)
            program = _check_layer(cfg, x, w, bias, scale, y_zp, x_zp, strides=strides, pads=(1,) * 4,
                                   skip_zero_tiles=False)
        else:
            program = compile_conv(cfg, x, w, bias, scale, y_zp, strides=strides, pads=(1,) * 4, pad_value=x_zp)
        gemms = [ops for opcode, ops, _ in disassemble(cfg, program.words) if opcode == Opcode.GEMM]
        assert gemms and not any(g["taps"] for g in gemms)

    def test_a_tile_of_zero_weights_is_not_run(self):
        cfg = _ws(8, 4, 1024, 256, 64)
        rng = np.random.default_rng(2)
        x, w, bias, scale, y_zp, x_zp = _depthwise_layer(rng, 11, (6, 7), (3, 3), (1,) * 4, 2)
        w[4:8] = 0      # output tile 1
        program = _check_layer(cfg, x, w, bias, scale, y_zp, x_zp, pads=(1,) * 4, counted=np.eye(11, dtype=bool))
        assert {g["p_base"] for g in _gemms(cfg, program.words)} and len(program.constants) == 1
        assert program.macs_skipped == 2 * 6 * 7 * 4 * 9

    def test_weight_words_are_taps_per_tile(self):
        # a tile's weights are its KH * KW words, where the block-diagonal weights took a rows x cols tile a tap
        cfg = _ws(16, 8, 4096, 4096, 256, 64)
        rng = np.random.default_rng(3)
        x, w, bias, scale, y_zp, x_zp = _depthwise_layer(rng, 40, (10, 10), (3, 3), (1,) * 4, 1)
        program = _check_layer(cfg, x, w, bias, scale, y_zp, x_zp, pads=(1,) * 4)
        loaded = sum(ops["words"] for opcode, ops, _ in disassemble(cfg, program.words)
                     if opcode == Opcode.LOAD and ops["buffer"] == BufferId.WEIGHT)
        assert loaded == 5 * 9      # five tiles of eight channels
        # the dense path (the same layer at stride 3, which depthwise commands do not take): sparse tiles, each
        # tile's nine taps of its own channel block, a header and 16 rows each
        strided = compile_conv(cfg, x, w, bias, scale, y_zp, strides=(3, 3), pads=(1,) * 4, pad_value=x_zp)
        dense = sum(ops["words"] for opcode, ops, _ in disassemble(cfg, strided.words)
                    if opcode == Opcode.LOAD and ops["buffer"] == BufferId.WEIGHT)
        assert dense == 5 * 9 * (cfg.rows + 1)


class TestCounters:
    @pytest.mark.parametrize("stride", [1, 2])
    @pytest.mark.parametrize("cfg", CONFIGS[:4], ids=lambda c: f"{c.rows}x{c.cols}-a{c.act_depth}")
    def test_counters_of_depthwise_commands(self, cfg, stride):
        rng = np.random.default_rng(cfg.rows + cfg.act_depth + stride)
        x, w, bias, scale, y_zp, x_zp = _depthwise_layer(rng, cfg.cols + 1, (7, 9), (3, 4), (1, 1, 1, 2), 2)
        w[w == 3] = 0
        program = compile_conv(cfg, x, w, bias, scale, y_zp, strides=(stride, stride), pads=(1, 1, 1, 2),
                               pad_value=x_zp)
        counters = ws_program_counters(cfg, program)
        expected = dict.fromkeys(("array_cycles", "weight_reads", "acc_writes", "macs_gated"), 0)
        for cmd, geometry, buffers in replay_program(cfg, program.words):
            assert cmd["taps"] and geometry["stride"] == stride
            streamed = _streamed_positions(cmd, geometry["out_w"], stride)
            expected["array_cycles"] += cmd["k"] * streamed
            expected["weight_reads"] += cmd["k"] * cmd["taps"]
            expected["acc_writes"] += cmd["k"] * cmd["m"]
            taps = buffers.weight[cmd["w_base"]:cmd["w_base"] + cmd["k"] * cmd["taps"], :cfg.cols]
            zero_rows = cmd["k"] * (cfg.rows - cmd["taps"]) * cfg.cols
            expected["macs_gated"] += streamed * (int(np.count_nonzero(taps == 0)) + zero_rows)
        assert {name: counters[name] for name in expected} == expected
        assert counters["act_reads"] == counters["array_cycles"] and counters["acc_reads"] == counters["acc_writes"]
        assert counters["rf_reads"] == counters["array_cycles"] * cfg.pes


def _streamed_positions(cmd, width, stride):
    """Positions one fold of depthwise command ``cmd`` streams, counted one by one: from its first output's on,
    until its m-th output's row ends."""
    position, outputs = cmd["out_y"] * width + cmd["out_x"] * stride, 0
    start = position
    while True:
        if position % width % stride == 0 and position % width + cmd["taps"] <= width:
            outputs += 1
        if outputs >= cmd["m"] and position % width == width - 1:
            return position - start + 1
        position += 1


class _ResidentCore:
    """A resident model run on the core's model: the program memory, the RUNs of its sections, CONV_SETUP and
    STORE_SETUP, and commands whose rows go to the host or into the activation buffer (array-only models)."""

    def __init__(self, cfg):
        self.cfg, self.buffers = cfg, Buffers.empty(cfg)
        self.program = np.zeros(cfg.program_depth, np.uint32)
        self.geometry = self.store_setup = None
        self.results = []

    def send(self, words):
        for opcode, ops, payload in disassemble(self.cfg, words):
            if opcode == Opcode.LOAD:
                self._load(ops, payload)
            elif opcode == Opcode.RUN:
                self.send(self.program[ops["base"]:ops["base"] + ops["words"]])
            elif opcode == Opcode.CONV_SETUP:
                self.geometry = ops
            elif opcode == Opcode.STORE_SETUP:
                self.store_setup = ops
            elif opcode == Opcode.GEMM:
                rows = execute_command(self.cfg, self.buffers, ops, self.geometry)
                if ops["store"] == StoreTarget.ACT:
                    self._store(rows, ops["s_base"])
                else:
                    assert ops["store"] == StoreTarget.HOST
                    self.results.append(rows)
            else:
                assert opcode == Opcode.WAIT, opcode

    def _load(self, ops, payload):
        cfg, words, addr = self.cfg, ops["words"], ops["addr"]
        buffer = BufferId(ops["buffer"])
        if buffer == BufferId.PROGRAM:
            self.program[addr:addr + len(payload)] = payload
        elif buffer == BufferId.PARAM:
            values = payload.reshape(words, 2, cfg.cols)
            self.buffers.bias[addr:addr + words] = values[:, 0].view(np.int32)
            self.buffers.scale[addr:addr + words] = values[:, 1]
        elif buffer == BufferId.ACT and ops["lanes"]:     # packed: each word's first lanes back to back
            lanes = payload.view(np.int8)[:words * ops["lanes"]].reshape(words, ops["lanes"])
            self.buffers.act[addr:addr + words] = 0
            self.buffers.act[addr:addr + words, :ops["lanes"]] = lanes
        else:
            target = self.buffers.act if buffer == BufferId.ACT else self.buffers.weight
            vectors = payload.view(np.int8).reshape(words, -1)[:, :target.shape[1]]
            target[addr:addr + words] = vectors

    def _store(self, rows, s_base):
        """Row i from lane ``lane`` of word ``s_base + i * stride`` on, its first ``lanes`` lanes (hw.layouts)."""
        setup, width = self.store_setup, self.cfg.rows
        for i, row in enumerate(rows):
            for j in range(setup["lanes"]):
                word, lane = divmod(setup["lane"] + j, width)
                self.buffers.act[s_base + i * setup["stride"] + word, lane] = row[j]


def _run_resident(cfg, model, x):
    core = _ResidentCore(cfg)
    core.send(model.load_words)
    core.send(model.inference_words(x))
    return model.assemble(core.results)[:len(x)]


def _resident_gemms(cfg, model):
    (_, _, program), *_ = disassemble(cfg, model.load_words)
    return [ops for opcode, ops, _ in disassemble(cfg, program) if opcode == Opcode.GEMM]


class TestResident:
    @pytest.mark.parametrize("cfg", [_ws(8, 4, 2048, 2048, 128, 32), _ws(4, 4, 2048, 2048, 64, 32),
                                     _ws(16, 8, 2048, 2048, 256, 32)], ids=lambda c: f"{c.rows}x{c.cols}")
    def test_a_chain_with_depthwise_layers_matches_golden(self, cfg):
        rng = np.random.default_rng(cfg.rows * 7 + cfg.cols)
        batch, channels = 2, 13
        x = rng.integers(-128, 128, (batch, 3, 9, 10), dtype=np.int8)
        x_zp = int(rng.integers(-128, 128))
        layers, y = [], x
        for kind, kernel, pads, out_channels in (("dense", (3, 3), (1,) * 4, channels),
                                                 ("depthwise", (3, 3), (1,) * 4, channels),
                                                 ("depthwise", (5, 2), (2, 0, 2, 1), channels),
                                                 ("dense", (1, 1), (0,) * 4, 5)):
            w = rng.integers(-128, 128, (out_channels, 1 if kind == "depthwise" else y.shape[1], *kernel),
                             dtype=np.int8)
            group = out_channels if kind == "depthwise" else 1
            dense = dense_group_weights(w, group)
            bias = golden.fold_input_zero_point(rng.integers(-2**14, 2**14, out_channels, dtype=np.int32), x_zp,
                                                dense, output_axis=0)
            scale = (rng.uniform(0.5, 2, out_channels) / (4 * 128 * w[0].size)).astype(np.float32)
            y_zp = int(rng.integers(-64, 64))
            layers.append(DeviceLayer(w=dense, bias=bias, scale=scale, y_zp=y_zp, pads=pads, pad_value=x_zp,
                                      macs_per_pixel=w.size))
            y = golden.conv_hw(y, dense, bias, scale, y_zp, pads=pads, pad_value=x_zp)
            x_zp = y_zp
        model = compile_resident(cfg, layers, x.shape[1:], batch=batch)
        np.testing.assert_array_equal(_run_resident(cfg, model, x), y)
        gemms = _resident_gemms(cfg, model)
        tiles = math.ceil(channels / cfg.cols)
        # each image's depthwise layers: a command or more per tile, none of the dense layers'
        assert {g["taps"] for g in gemms} == {0, 3, 2}
        assert {(g["k"], g["lane_group"]) for g in gemms if g["taps"] == 2} <= {(5, lg) for lg in range(2)}
        # (the first conv's row taps folded into channels where that is faster: its weights regrouped)
        fold = model.input_fold
        first = layers[0] if fold is None else dataclasses.replace(layers[0], w=fold.weights(layers[0].w))
        assert model.plan["weight_words"] == (_dense_words(cfg, first) + _dense_words(cfg, layers[3])
                                              + tiles * (9 + 10))
        assert model.macs == batch * (9 * 10 * (27 * channels + 9 * channels + 10 * channels + 5 * channels))

    def test_a_depthwise_separable_model_runs_resident_equal_to_onnxruntime(self, tmp_path):
        rng = np.random.default_rng(5)
        model = quantize_model(depthwise_separable(rng), tmp_path, rng, quant_format=QuantFormat.QOperator,
                               per_channel=True, activation_type=QuantType.QUInt8)
        path = tmp_path / "dws.onnx"
        path.write_bytes(model.SerializeToString())
        x = random_inputs(np.random.default_rng(6), model)["x"]
        self._check_model(path, {"x": x}, _ws(8, 4, 2048, 2048, 128, 32))

    def test_kws_at_quarter_width_runs_resident_equal_to_onnxruntime(self, tmp_path):
        # a DS-CNN: its depthwise 3x3 layers as depthwise commands, its first conv folded, its pool by block
        path = quantized("kws_ds_cnn", tmp_path, width=0.25)
        x = np.random.default_rng(3).normal(0, 1, (1, 1, 49, 10)).astype(np.float32)
        cfg = AcceleratorConfig(rows=8, cols=4, program_depth=8192, param_depth=256, weight_depth=8192)
        self._check_model(path, {"input": x}, cfg)

    def _check_model(self, path, inputs, cfg):
        graph = load_model(path)
        segments = compile_model(graph, cfg)
        (segment,) = [s for s in segments if s.model is not None]
        assert any(g["taps"] for g in _resident_gemms(cfg, segment.model))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        (expected,) = session.run(None, {name: next(iter(inputs.values()))})
        outputs, _, _ = run_model(graph, {name: next(iter(inputs.values()))}, _ResidentModelDevice(cfg), segments)
        (y,) = outputs.values()
        np.testing.assert_array_equal(y, expected)


class _ResidentModelDevice(DeviceModel):
    """The golden model's device (layers one by one), whose resident models run on the core's model."""

    def load_resident(self, models):
        return None

    def infer(self, model, images):
        y = np.concatenate([_run_resident(self.cfg, model, images[i:i + model.batch])
                            for i in range(0, len(images), model.batch)])
        return y, LayerRun(macs=model.macs, counters={name: 0 for name, _ in COUNTERS}, pes=self.cfg.pes)


def _dense_words(cfg, layer):
    """Weight words of a dense layer: a rows x cols tile per fold, per output tile."""
    folds = math.prod(layer.kernel) * math.ceil(layer.w.shape[1] / cfg.rows)
    return math.ceil(layer.w.shape[0] / cfg.cols) * folds * cfg.rows
