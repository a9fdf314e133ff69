"""Resident models (tessera.sw_driver.resident, model_compiler, model_image): the static memory plan, what fits and
what is refused, images and their configuration check, and whole models run resident on the simulated RTL, bit for
bit against onnxruntime."""

import json
import zlib

import numpy as np
import onnxruntime as ort
import pytest

from tessera.gen.config import AcceleratorConfig
from tessera.hw.isa import Opcode
from tessera.hw.layouts import StoreTarget
from tessera.sw_driver.cli import main
from tessera.sw_driver.compiler import TilingError
from tessera.sw_driver.isa_encode import disassemble
from tessera.sw_driver.model_compiler import compile_model
from tessera.sw_driver.model_image import ImageError, compile_image, read_image, write_image
from tessera.sw_driver.onnx_import import load_model
from tessera.sw_driver.resident import compile_resident, plan_groups, plan_memory
from tessera.verif.cases import random_chain
from tessera.verif.mlperf_tiny import quantized
from tessera.verif.onnx_models import QuantFormat, QuantType, qlinear_model, quantize_model, random_inputs
from tessera.verif.onnx_multi import depthwise_separable, pooling_net, residual_block, sequential_cnn

_NETS = {"sequential": sequential_cnn, "residual": lambda rng: residual_block(rng, tail=True),
         "pooling": pooling_net, "depthwise": depthwise_separable}


class TestMemoryPlan:
    def test_tensors_live_at_once_never_share_words(self):
        rng = np.random.default_rng(3)
        for _ in range(200):
            count = int(rng.integers(1, 9))
            sizes = [int(s) for s in rng.integers(1, 50, count)]
            firsts = rng.integers(0, 6, count)
            lifetimes = [(int(f), int(f + rng.integers(0, 4))) for f in firsts]
            offsets = plan_memory(sizes, lifetimes, 10_000)
            for i in range(count):
                assert offsets[i] >= 0
                for j in range(i):
                    overlap_in_time = lifetimes[i][0] <= lifetimes[j][1] and lifetimes[j][0] <= lifetimes[i][1]
                    overlap_in_words = offsets[i] < offsets[j] + sizes[j] and offsets[j] < offsets[i] + sizes[i]
                    assert not (overlap_in_time and overlap_in_words), (sizes, lifetimes, offsets)

    def test_groups_keep_their_tensors_offsets_and_share_no_live_words(self):
        # a layer's output over its own input: a group's tensors placed together, each taking words only while live
        rng = np.random.default_rng(4)
        for _ in range(100):
            groups = [[(int(rng.integers(0, 40)), int(rng.integers(1, 50)), (int(f), int(f + rng.integers(0, 3))))
                       for f in rng.integers(0, 6, int(rng.integers(1, 4)))] for _ in range(int(rng.integers(1, 6)))]
            bases = plan_groups(groups, 10_000)
            placed = [(g, base + offset, base + offset + size, life)
                      for g, (base, group) in enumerate(zip(bases, groups, strict=True))
                      for offset, size, life in group]
            for i, (g, start, end, life) in enumerate(placed):
                assert start >= 0
                for other_g, other_start, other_end, other in placed[:i]:
                    # (within a group, words overlap as the group says: a layer reads them before it stores)
                    live_together = life[0] <= other[1] and other[0] <= life[1]
                    assert g == other_g or not (live_together and start < other_end and other_start < end), groups

    def test_freed_words_are_reused(self):
        # a chain: each map lives while written and read, so three maps need the room of two
        offsets = plan_memory([100, 100, 100], [(0, 0), (0, 1), (1, 2)], 200)
        assert sorted(offsets) == [0, 0, 100]

    def test_too_little_room_is_refused_with_what_it_needs(self):
        with pytest.raises(TilingError, match=r"need 200 act buffer words; act_depth is 150 \(accepted: act_depth "
                                              r">= 200"):
            plan_memory([100, 100], [(0, 1), (1, 1)], 150)


class TestCompileResident:
    CFG = AcceleratorConfig(rows=4, cols=4, act_depth=256, weight_depth=256, acc_depth=64, param_depth=16,
                            program_depth=256)

    def _chain(self, specs, shape=(3, 6, 6)):
        return random_chain(np.random.default_rng(1), shape, specs)[1]

    def test_a_chain_stores_every_map_but_the_last(self):
        layers = self._chain([{"out_channels": 5, "kernel": 3, "pad": 1}, {"out_channels": 3, "kernel": 1}])
        model = compile_resident(self.CFG, layers, (3, 6, 6))
        assert [t["shape"] for t in model.plan["tensors"]] == [[3, 6, 6], [5, 6, 6]]
        assert model.out_shape == (3, 6, 6)
        # the last layer's rows are the only ones that leave: 36 pixels, one output tile, in blocks of rows
        assert sum(rows for _, _, _, rows in model.outputs) == 36

    @pytest.mark.parametrize("what, cfg, match", [
        ("weights", dict(weight_depth=64), (r"weight words do not fit weight_depth=64 even streamed layer by layer: "
                                            r"its largest layer has \d+, 64 are free")),
        ("program", dict(program_depth=16), r"program words \(at least \d+\) do not fit program_depth=16"),
        ("maps", dict(act_depth=32), r"act buffer words; act_depth is 32"),
    ])
    def test_what_does_not_fit_is_named(self, what, cfg, match):
        layers = self._chain([{"out_channels": 8, "kernel": 3, "pad": 1}, {"out_channels": 8, "kernel": 3}])
        with pytest.raises(TilingError, match=match):
            compile_resident(AcceleratorConfig(**{**self.CFG.to_dict(), **cfg}), layers, (3, 6, 6))

    def test_row_stationary_rows_are_stored_channel_by_channel(self):
        # rs rows are one filter's output column: each lane (an output row) a word of its own, out_w words on
        layers = self._chain([{"out_channels": 6, "kernel": 3, "pad": 1}, {"out_channels": 2, "kernel": 1}])
        cfg = AcceleratorConfig(**{**self.CFG.to_dict(), "dataflow": "rs", "param_depth": 64})
        model = compile_resident(cfg, layers, (3, 6, 6))
        (_, _, program), *_ = disassemble(cfg, model.load_words)    # its first LOAD stores the program
        setups = [operands for opcode, operands, _ in disassemble(cfg, program) if opcode == Opcode.STORE_SETUP]
        # 6 channels in words of 4 lanes: 2 words a pixel, 6 pixels a map row; 4 output rows a band, then 2
        assert {(s["lane_stride"], s["stride"]) for s in setups} == {(2 * 6, 2)}
        assert {s["lanes"] for s in setups} == {4, 2}
        # the last layer's rows leave: its 2 filters' 6 output columns, in two bands
        assert [rows for _, _, _, rows in model.outputs] == [12, 12]
        assert model.result_columns == 6 and not model.images_as_rows

    def test_a_layer_stores_over_its_own_input_only_where_no_later_command_reads(self):
        # maps that do not fit apart: a ws layer stores its output over its own input (several output tiles: band
        # by band), yet no GEMM's stored words are any that a later GEMM of its layer reads (its output pixels'
        # exact windows, from the program's own fields)
        rng = np.random.default_rng(7)
        overwritten = 0
        for _ in range(40):
            size = int(rng.integers(8, 20))
            specs = []
            for _ in range(int(rng.integers(1, 4))):
                kernel, stride = int(rng.integers(1, 4)), int(rng.integers(1, 3))
                specs.append({"out_channels": int(rng.integers(1, 9)), "kernel": kernel, "stride": stride,
                              "pad": int(rng.integers(0, kernel))})
                size = (size + 2 * specs[-1]["pad"] - kernel) // stride + 1
            shape = (int(rng.integers(1, 9)), *(int(s) for s in rng.integers(8, 20, 2)))
            layers = random_chain(rng, shape, specs)[1]
            roomy = AcceleratorConfig(rows=4, cols=4, act_depth=8192, weight_depth=4096, acc_depth=64,
                                      param_depth=64, program_depth=4096)
            try:
                need = max(end for t in compile_resident(roomy, layers, shape).plan["tensors"]
                           for end in t["act_words"][1:])
                model = compile_resident(roomy.replace(act_depth=need - 1), layers, shape)
            except TilingError:     # (a map too small for its kernel, or a layer whose maps overlap nowhere)
                continue
            words = [range(*t["act_words"]) for t in model.plan["tensors"]]
            overwritten += any(set(a) & set(b) for a, b in zip(words, words[1:], strict=False))
            assert not _stored_words_read_later(model.cfg, model), specs

        assert overwritten >= 10

    def test_batches_halve_until_the_maps_fit(self, tmp_path):
        graph = load_model(_quantized(tmp_path, "sequential"))
        cfg = AcceleratorConfig(rows=4, cols=4, act_depth=512)
        segments = compile_model(graph, cfg, batch=64)
        convs = [s for s in segments if s.model is not None and s.model.in_shape[1:] != (1, 1)]
        assert convs and all(1 <= s.model.batch < 64 for s in convs)
        assert all(max(t["act_words"][1] for t in s.model.plan["tensors"]) <= 512 for s in convs)


def _quantized(tmp_path, net, *, activation=QuantType.QUInt8, quant_format=QuantFormat.QOperator):
    rng = np.random.default_rng(zlib.crc32(net.encode()))
    model = quantize_model(_NETS[net](rng), tmp_path, rng, quant_format=quant_format, per_channel=True,
                           activation_type=activation)
    path = tmp_path / f"{net}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


class TestSegments:
    def test_a_fully_connected_model_is_one_segment(self, tmp_path):
        graph = load_model(quantized("ad_autoencoder", tmp_path, width=0.125))
        cfg = AcceleratorConfig(weight_depth=8192)
        (segment,) = compile_model(graph, cfg)
        assert len(segment.layers) == 10 and segment.model is not None
        assert segment.model.images_as_pixels is False     # batch 1

    @pytest.mark.parametrize("dataflow, rows, cols", [("ws", 4, 4), ("ws", 8, 4), ("os", 4, 4)])
    def test_a_global_pool_sums_each_block_through_one_fold_on_ws(self, tmp_path, dataflow, rows, cols):
        # ResNet-8's 8x8 average pool reads its map block by block (where cols divides rows, each output tile's
        # channels lie in one block); on ws each output tile sums its block's 64 pixels with one reduce GEMM
        # through one identity fold (os: a fold a pixel, as before)
        graph = load_model(quantized("ic_resnet8", tmp_path, width=0.25))
        cfg = AcceleratorConfig(rows=rows, cols=cols, dataflow=dataflow, program_depth=8192, param_depth=256,
                                weight_depth=8192)
        (segment,) = [s for s in compile_model(graph, cfg) if s.model is not None]
        (_, _, program), *_ = disassemble(cfg, segment.model.load_words)
        gemms = [ops for opcode, ops, _ in disassemble(cfg, program) if opcode == Opcode.GEMM]
        reduced = [g for g in gemms if g["reduce"]]
        if dataflow == "os":
            assert not reduced
            return
        # 16 channels at quarter width: 16 / cols output tiles, one image, each reading its block's 64 words
        assert [(g["m"], g["k"], g["conv"]) for g in reduced] == [(64, 1, 0)] * (16 // cols)
        bases = sorted({g["x_base"] for g in reduced})
        assert len(bases) == 16 // rows and np.all(np.diff(bases) == 64)

    def test_a_residual_block_stays_on_chip_until_its_add(self, tmp_path):
        # the stem's map feeds a conv and the Add: it stays in the vector buffer (and a copy in the activation
        # buffer) until the Add, all one segment
        graph = load_model(_quantized(tmp_path, "residual"))
        (segment,) = compile_model(graph, AcceleratorConfig(rows=4, cols=4))
        assert [graph.layer(name).kind for name in segment.layers] == ["Conv", "Conv", "Conv", "Add", "Conv"]
        stem = segment.model.plan["tensors"][1]
        assert stem["act_words"][1] > 0 and stem["vec_words"][1] > 0

    def test_a_tensor_read_outside_ends_its_segment(self, tmp_path):
        # without a vector unit the Add runs on the host: the stem's map must leave the device for it, so the stem
        # is a segment of its own
        graph = load_model(_quantized(tmp_path, "residual"))
        segments = compile_model(graph, AcceleratorConfig(rows=4, cols=4, vec_depth=0))
        stem = [s for s in segments if any("stem" in name for name in s.layers)]
        assert stem and len(stem[0].layers) == 1

    def test_weights_far_from_their_zero_point_stay_per_layer_with_the_reason(self):
        # uint8 weights 0 to 255 with zero point 0: the array splits them into parts, each reading the input again
        rng = np.random.default_rng(6)
        w = rng.integers(0, 256, (5, 3, 3, 3)).astype(np.uint8)
        w[..., 0] = 255
        graph = load_model(qlinear_model(rng, w, np.uint8(0), np.float32(0.01), (2, 3, 6, 5)))
        segments = compile_model(graph, AcceleratorConfig(rows=4, cols=4))
        assert segments and all(s.model is None and "zero point" in s.reason for s in segments)


class TestImages:
    CFG = AcceleratorConfig(rows=4, cols=4)

    @pytest.mark.parametrize("model", ["sequential", "resnet8", "kws"])
    def test_an_image_reads_back_as_written(self, tmp_path, model):
        # (ResNet-8 at a quarter width on a 4x8 array, which cannot read its pool's map block by block: its segment
        # ends at its last Add, on the vector unit, VECTOR packets out; the DS-CNN's first conv reads its input
        # folded space-to-depth)
        mlperf = {"resnet8": "ic_resnet8", "kws": "kws_ds_cnn"}
        path = quantized(mlperf[model], tmp_path, width=0.25) if model in mlperf else _quantized(tmp_path, model)
        cfg = self.CFG.replace(cols=8) if model == "resnet8" else self.CFG
        image = compile_image(path, cfg, batch=4)
        write_image(image, tmp_path / "m.tsr")
        back = read_image(tmp_path / "m.tsr", cfg)
        assert back.model_bytes == image.model_bytes
        for ours, theirs in zip(image.segments, back.segments, strict=True):
            assert ours.layers == theirs.layers and (ours.model is None) == (theirs.model is None)
            if ours.model is not None:
                np.testing.assert_array_equal(ours.model.load_words, theirs.model.load_words)
                np.testing.assert_array_equal(ours.model.run_words, theirs.model.run_words)
                assert ours.model.outputs == theirs.model.outputs and ours.model.batch == theirs.model.batch
                assert ours.model.vector_out == theirs.model.vector_out
                assert ours.model.input_fold == theirs.model.input_fold
        assert any(s.model is not None and s.model.vector_out for s in back.segments) == (model == "resnet8")
        assert any(s.model is not None and s.model.input_fold for s in back.segments) == (model == "kws")

    def test_an_image_folds_its_row_taps_only_where_asked(self, tmp_path, capsys):
        # ResNet-8's first conv (3 channels) on 16 rows: with --fold-row-taps the image's input is folded
        path = quantized("ic_resnet8", tmp_path, width=0.25)
        folds = {}
        for option in ([], ["--fold-row-taps"]):
            image = tmp_path / f"{len(option)}.tsr"
            assert main(["compile", str(path), "-o", str(image), *option, "--rows", "16", "--cols", "4"]) == 0
            (first, *_) = [s for s in read_image(image, self.CFG.replace(rows=16)).segments if s.model is not None]
            folds[bool(option)] = first.model.input_fold
        assert folds[True].row_taps and folds[False] is None

    def test_another_configuration_is_refused_naming_what_differs(self, tmp_path):
        write_image(compile_image(_quantized(tmp_path, "sequential"), self.CFG), tmp_path / "m.tsr")
        other = AcceleratorConfig(rows=4, cols=4, weight_depth=2048)
        with pytest.raises(ImageError, match=r"compiled for configuration \w+, this device is \w+ \(weight_depth: "
                                             r"image 4096, device 2048\)"):
            read_image(tmp_path / "m.tsr", other)

    def test_a_file_that_is_not_an_image_is_refused(self, tmp_path):
        (tmp_path / "x.tsr").write_bytes(b"PK\x03\x04 not really a zip")
        with pytest.raises(ImageError, match="is not a Tessera model image"):
            read_image(tmp_path / "x.tsr", self.CFG)


def _stored_words_read_later(cfg, model):
    """The words a conv GEMM of ``model``'s program stores into the activation buffer that a later GEMM of the same
    layer (the same map read, the same geometry) reads: its output pixels' windows, every channel block."""
    (_, _, program), *_ = disassemble(cfg, model.load_words)
    conv, store, stored = None, None, []    # stored: (layer, words)
    for opcode, operands, _ in disassemble(cfg, program):
        if opcode == Opcode.CONV_SETUP:
            conv = operands
        elif opcode == Opcode.STORE_SETUP:
            store = operands
        elif opcode == Opcode.GEMM and operands["conv"]:
            layer = (operands["x_base"], tuple(sorted(conv.items())))
            first = operands["out_y"] * conv["out_w"] + operands["out_x"]
            reads = set()
            for pixel in range(first, first + operands["m"]):
                oy, ox = divmod(pixel, conv["out_w"])
                for ky in range(conv["kernel_h"]):
                    for kx in range(conv["kernel_w"]):
                        iy, ix = oy * conv["stride"] + ky - conv["pad_top"], ox * conv["stride"] + kx - conv["pad_left"]
                        if 0 <= iy < conv["in_h"] and 0 <= ix < conv["in_w"]:
                            word = operands["x_base"] + (iy * conv["in_w"] + ix) * conv["channel_blocks"]
                            reads |= set(range(word, word + conv["channel_blocks"]))
            clash = set().union(*[words & reads for earlier, words in stored if earlier == layer])
            if clash:
                return sorted(clash)
            if operands["store"] == StoreTarget.ACT:
                spans = (store["lane"] + store["lanes"] - 1) // cfg.rows + 1
                stored.append((layer, {operands["s_base"] + k * store["stride"] + w
                                       for k in range(operands["m"]) for w in range(spans)}))
    return []


class TestInputFold:
    """Where the host folds the model's input (tessera.sw_driver.space_to_depth) and where not: by the first
    layer's array cycles and the word stream's for its input; a row's taps only where asked."""
    CFG = AcceleratorConfig(rows=16, cols=8, act_depth=8192, weight_depth=4096, acc_depth=512, param_depth=64,
                            program_depth=4096)

    def _fold(self, shape, spec, fold_row_taps=True, cfg=CFG):
        layers = random_chain(np.random.default_rng(1), shape, [spec, {"out_channels": 8, "kernel": 1}])[1]
        return compile_resident(cfg, layers, shape, fold_row_taps=fold_row_taps).input_fold

    def test_a_first_conv_of_three_channels_folds_its_row_taps_into_the_rows(self):
        # ResNet-8's first conv: 3x3 over 3 channels, 9 folds filling 3 of 16 rows; a row's taps folded, a 3x1
        # conv over 9 channels: 3 folds, for an input 3 times the bytes (its padding columns included)
        fold = self._fold((3, 32, 32), {"out_channels": 16, "kernel": 3, "pad": 1})
        assert fold.row_taps and fold.stride == 1 and fold.folded_kernel == (3, 1)
        assert fold.folded_shape(3) == (9, 34, 32)

    def test_unasked_the_input_is_sent_as_it_is(self):
        # (the on-chip issue's link: 1.5 x the model's own input and output bytes at most)
        assert self._fold((3, 32, 32), {"out_channels": 16, "kernel": 3, "pad": 1}, fold_row_taps=False) is None
        # a strided window past the device's still folds space-to-depth, but not its row's taps
        fold = self._fold((1, 49, 10), {"out_channels": 16, "kernel": (10, 4), "stride": 2, "pad": 2},
                          fold_row_taps=False)
        assert fold.stride == 2 and not fold.row_taps and fold.folded_kernel == (5, 2)

    def test_the_ds_cnn_first_conv_folds_space_to_depth_then_its_row_taps(self):
        fold = self._fold((1, 49, 10), {"out_channels": 16, "kernel": (10, 4), "stride": 2, "pad": 2})
        assert fold.stride == 2 and fold.row_taps and fold.folded_kernel == (5, 1) and fold.folded_shape(1)[0] == 8

    def test_a_fold_that_fills_no_more_rows_is_left_out(self):
        # MobileNet's first conv: space-to-depth gives 12 channels, 2x2 (4 folds); its row taps 24 channels, 2
        # words a pixel (4 folds again, twice the bytes)
        fold = self._fold((3, 96, 96), {"out_channels": 8, "kernel": 3, "stride": 2, "pad": 1})
        assert fold.stride == 2 and not fold.row_taps
        # 16 channels already fill the rows
        assert self._fold((16, 12, 12), {"out_channels": 8, "kernel": 3, "pad": 1}) is None

    def test_row_stationary_arrays_fold_only_a_window_they_cannot_take(self):
        cfg = self.CFG.replace(dataflow="rs")
        assert self._fold((3, 16, 16), {"out_channels": 8, "kernel": 3, "pad": 1}, cfg=cfg) is None
        fold = self._fold((1, 49, 10), {"out_channels": 8, "kernel": (10, 4), "stride": 2, "pad": 2}, cfg=cfg)
        assert fold.stride == 2 and not fold.row_taps


def _onnxruntime(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _run(tmp_path, model_path, x, *extra):
    x_path, y_path, report = tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "r.json"
    np.save(x_path, x)
    status = main(["run", str(model_path), "--input", str(x_path), "--output", str(y_path), "--report",
                   str(report), "--check", *extra])
    return status, np.load(y_path), json.loads(report.read_text())


#: The inputs of the MLPerf Tiny models (tessera.verif.mlperf_tiny).
_INPUTS = {"ic_resnet8": (1, 3, 32, 32), "kws_ds_cnn": (1, 1, 49, 10), "vww_mobilenet": (1, 3, 96, 96)}


def _run_quarter_width(tmp_path, model, seed, dataflow, *options, rows=4, cols=4):
    """MLPerf Tiny ``model`` at a quarter of its width run by ``tessera run OPTIONS`` on a simulated ``rows x
    cols`` array (buffers these runs share: one Verilator build an array and dataflow), its output equal to
    onnxruntime's. The run's report."""
    path = quantized(model, tmp_path, width=0.25)
    x = np.random.default_rng(seed).normal(0, 1, _INPUTS[model]).astype(np.float32)
    config = tmp_path / "cfg.toml"
    config.write_text(f'rows = {rows}\ncols = {cols}\ndataflow = "{dataflow}"\nprogram_depth = 8192\n'
                      f'param_depth = 256\nweight_depth = 8192\n')
    status, y, report = _run(tmp_path, path, x, "--config", str(config), *options)
    assert status == 0
    np.testing.assert_array_equal(y, _onnxruntime(path, x))
    return report


@pytest.mark.rtl
class TestResidentRuns:
    @pytest.mark.parametrize("net", sorted(_NETS))
    @pytest.mark.parametrize("dataflow", ["ws", "os", "rs"])
    def test_small_models_run_resident_bit_exact(self, tmp_path, net, dataflow):
        path = _quantized(tmp_path, net, activation=QuantType.QInt8 if dataflow == "os" else QuantType.QUInt8)
        x = random_inputs(np.random.default_rng(2), load_model_proto(path))["x"]
        status, y, report = _run(tmp_path, path, x, "--rows", "4", "--cols", "4", "--dataflow", dataflow)
        assert status == 0
        np.testing.assert_array_equal(y, _onnxruntime(path, x))
        assert report["mode"] == "resident" and any(s["resident"] for s in report["segments"])
        resident = [layer for layer in report["layers"] if layer["resident"]]
        assert resident and all(layer["target"] == "device" and layer["cycles"] > 0 for layer in resident)
        # the weights crossed the link once, before the inferences: not in the inference's bytes
        weight_bytes = sum(s["plan"]["weight_words"] for s in report["segments"] if s["resident"]) * 4
        assert report["one_time"]["link_bytes_in"] >= weight_bytes > 0
        assert report["per_inference"]["cycles"] > 0 and report["per_inference"]["latency_us"] > 0

    @pytest.mark.parametrize("dataflow", ["ws", "os", "rs"])
    def test_resnet8_runs_whole_on_the_device_bit_exact(self, tmp_path, dataflow):
        # a quarter-width ResNet-8: three residual blocks (two with a strided 1x1 shortcut), its average pool and
        # its classifier, one segment; the last Add's map is copied into the activation buffer block by block, so
        # that the pool reads each block's 64 pixels (a map of 256 words a pixel is past CONV_SETUP's 255)
        report = _run_quarter_width(tmp_path, "ic_resnet8", 3, dataflow)
        (segment,) = [s for s in report["segments"] if s["resident"]]
        assert segment["layers"][0] == "QLinearConv_1" and segment["layers"][-1] == "QGemm_15"
        on_host = [layer["op"] for layer in report["layers"] if layer["target"] == "host"]
        assert on_host == ["Quantize", "QLinearSoftmax", "Dequantize"], on_host
        # in: the image (3 channels packed) and a few instructions; out: the 10 logits' packets
        assert report["per_inference"]["link_bytes_in"] <= 3 * 32 * 32 + 4 * 16
        assert report["per_inference"]["link_bytes_out"] <= 64

    @pytest.mark.parametrize("dataflow", ["ws", "os", "rs"])
    def test_kws_runs_whole_on_the_device_bit_exact(self, tmp_path, dataflow):
        # a quarter-width DS-CNN: its first conv (10x4, stride 2) exceeds the device's 7x7 window, so the host
        # folds the input space-to-depth (a 5x2 conv over 4 channels); from there to the classifier one segment,
        # only the Softmax (and the input's quantisation) on the host
        report = _run_quarter_width(tmp_path, "kws_ds_cnn", 3, dataflow)
        on_host = [layer["op"] for layer in report["layers"] if layer["target"] == "host"]
        assert on_host == ["Quantize", "QLinearSoftmax", "Dequantize"], on_host
        (segment,) = [s for s in report["segments"] if s["resident"]]
        assert segment["layers"][0] == "QLinearConv_1" and segment["layers"][-1] == "QGemm_12"
        # in: the folded input (4 channels of 29 x 6: the 49 x 10 map and the padding its windows read, packed)
        # and a few instructions (its LOAD, the RUNs)
        assert report["per_inference"]["link_bytes_in"] <= 4 * 29 * 6 + 4 * 16

    @pytest.mark.parametrize("kernel", [1, 3])
    def test_a_layer_storing_over_its_own_input_band_by_band_is_bit_exact(self, kernel):
        # a 40 x 40 map of 4 channels into 8 (two output tiles, two words a pixel): 4,800 words at once, past the
        # 4,096 of the configuration the runs above use; the conv stores its output over its own input, band by
        # band (both tiles of a band, then the next band), below the words later bands still read
        from tessera.sw_driver.runtime import open_sim_device
        cfg = AcceleratorConfig(rows=4, cols=4, dataflow="ws", program_depth=8192, param_depth=256, weight_depth=8192)
        x, layers, expected = random_chain(np.random.default_rng(kernel), (4, 40, 40), [
            {"out_channels": 8, "kernel": kernel, "pad": kernel // 2}, {"out_channels": 4, "kernel": 1}])
        model = compile_resident(cfg, layers, x.shape)
        read, written = (range(*t["act_words"]) for t in model.plan["tensors"][:2])
        assert set(read) & set(written) and len(read) + len(written) > cfg.act_depth
        assert not _stored_words_read_later(cfg, model)
        with open_sim_device(cfg) as device:
            device.load_resident([model])
            y, _ = device.infer(model, x[None])
        np.testing.assert_array_equal(y[0], expected)

    @pytest.mark.parametrize("dataflow", ["ws", "os", "rs"])
    def test_mobilenet_runs_on_the_device_bit_exact(self, tmp_path, dataflow):
        # a quarter-width MobileNetV1 (VWW, 96x96): its first conv's input (96 x 96 words) does not fit 4,096
        # activation words, so that conv runs layer by layer; from its first depthwise conv to its classifier one
        # segment on ws, where that conv stores its 48x48 map over its own input (the two do not fit apart)
        report = _run_quarter_width(tmp_path, "vww_mobilenet", 6, dataflow)
        on_device = [layer["name"] for layer in report["layers"] if layer["target"] == "device"]
        assert on_device[0] == "QLinearConv_1" and on_device[-1].endswith("QGemm_30"), on_device
        if dataflow == "ws":
            (segment,) = [s for s in report["segments"] if s["resident"]]
            assert segment["layers"][0] == "QLinearConv_2" and segment["layers"][-1] == "QGemm_30"
            first, second = (range(*t["act_words"]) for t in segment["plan"]["tensors"][:2])
            assert set(first) & set(second) and len(first) + len(second) > 4096

    @pytest.mark.parametrize("model", sorted(_INPUTS))
    def test_a_tall_array_keeps_the_global_pool_on_chip_bit_exact(self, tmp_path, model):
        # an array twice as tall as wide (the ULX3S default's shape): each output tile's channels lie in half a
        # block, and the global pool still reads by block, with reduce GEMMs; the model is one segment
        # (MobileNet's after its first conv, whose input alone is past the activation buffer: layer by layer)
        report = _run_quarter_width(tmp_path, model, 4, "ws", rows=8)
        (segment,) = [s for s in report["segments"] if s["resident"]]
        on_host = [layer["op"] for layer in report["layers"] if layer["target"] == "host"]
        assert on_host == ["Quantize", "QLinearSoftmax", "Dequantize"], on_host

    def test_a_first_conv_with_its_row_taps_folded_into_the_rows_is_bit_exact(self, tmp_path):
        # the quarter-width DS-CNN on 8 rows: its first conv folded space-to-depth (5x2 over 4 channels), then
        # each kernel row's 2 taps into channels: a 5x1 conv over 8 channels, 5 folds instead of 10 (the device
        # runs a plain conv, as on any dataflow: the tall array's ws build serves)
        report = _run_quarter_width(tmp_path, "kws_ds_cnn", 5, "ws", "--fold-row-taps", rows=8)
        # in: 8 channels of 29 x 5 (a word of 8 lanes a pixel), and a few instructions
        assert 8 * 29 * 5 <= report["per_inference"]["link_bytes_in"] <= 8 * 29 * 5 + 4 * 16

    def test_weights_that_do_not_fit_are_streamed_and_the_report_says_which(self, tmp_path, capsys):
        # 128 weight words: the pooling net's tail (conv3, global pool, classifier) keeps its maps on chip, but
        # conv3's and the classifier's weights cross the link with every run, into the buffer's bottom words (the
        # pool's one identity fold a tile stays)
        path = _quantized(tmp_path, "pooling")
        x = random_inputs(np.random.default_rng(2), load_model_proto(path))["x"]
        config = tmp_path / "cfg.toml"
        config.write_text("rows = 4\ncols = 4\nweight_depth = 128\n")
        status, y, report = _run(tmp_path, path, x, "--config", str(config))
        assert status == 0
        np.testing.assert_array_equal(y, _onnxruntime(path, x))
        streamed = [s for s in report["segments"] if s["resident"] and s["plan"]["streamed_layers"]]
        assert [s["plan"]["streamed_layers"] for s in streamed] == [["conv3_quant", "fc_quant"]]
        printed = capsys.readouterr().out
        assert "weights streamed with every run (they do not all fit): conv3_quant, fc_quant" in printed
        # the streamed weights are in every inference's link bytes, the others only in the one-time load
        plan = streamed[0]["plan"]
        assert report["per_inference"]["link_bytes_in"] > 4 * plan["stream_words"]

    def test_a_compiled_image_runs_and_another_configuration_is_refused(self, tmp_path, capsys):
        path = _quantized(tmp_path, "sequential")
        image = tmp_path / "seq.tsr"
        assert main(["compile", str(path), "-o", str(image), "--rows", "4", "--cols", "4"]) == 0
        assert "layers resident" in capsys.readouterr().out
        x = random_inputs(np.random.default_rng(2), load_model_proto(path))["x"]
        status, y, report = _run(tmp_path, image, x, "--rows", "4", "--cols", "4")
        assert status == 0
        np.testing.assert_array_equal(y, _onnxruntime(path, x))
        capsys.readouterr()
        status = main(["run", str(image), "--input", str(tmp_path / "x.npy"), "--rows", "8", "--cols", "8"])
        err = capsys.readouterr().err.strip()
        assert status == 1 and err.count("\n") == 0
        assert "ImageError" in err and "rows: image 4, device 8" in err
        assert main(["run", str(image), "--input", str(tmp_path / "x.npy"), "--per-layer"]) == 1
        assert "is a compiled image" in capsys.readouterr().err

    def test_a_fully_connected_model_sends_only_its_input_per_inference(self, tmp_path):
        path = quantized("ad_autoencoder", tmp_path, width=0.125)
        config = tmp_path / "cfg.toml"
        config.write_text("weight_depth = 8192\n")
        x = np.random.default_rng(4).normal(0, 1, (1, 640)).astype(np.float32)
        status, y, report = _run(tmp_path, path, x, "--config", str(config))
        assert status == 0
        np.testing.assert_array_equal(y, _onnxruntime(path, x))
        (segment,) = report["segments"]
        assert segment["resident"] and len(segment["layers"]) == 10
        # in: the 640 input bytes, their LOAD, the RUNs and the counters' read; out: the 640 outputs and the
        # RESULT packets' headers
        per_inference = report["per_inference"]
        assert 640 < per_inference["link_bytes_in"] <= 640 + 64
        assert 640 < per_inference["link_bytes_out"] <= 1.5 * 640 + 32


def load_model_proto(path):
    import onnx
    return onnx.load(str(path))


@pytest.mark.rtl
def test_the_residency_bench_compares_both_ways_bit_exact(tmp_path):
    from tessera.verif.bench_residency import latency_table, run_model_both_ways
    per_layer, resident = run_model_both_ways("ad_autoencoder", AcceleratorConfig(weight_depth=8192), tmp_path,
                                              width=0.125)
    assert (per_layer["mode"], resident["mode"]) == ("per-layer", "resident")
    assert resident["resident_layers"] == "10 of 10" and not resident["not_resident"]
    # layer by layer the weights cross the link each inference; resident, only once before
    assert per_layer["link_bytes_in"] > resident["one_time_bytes"] > resident["link_bytes_in"]
    assert resident["cycles"] < per_layer["cycles"]
    assert resident["energy_pj"]["link"] < per_layer["energy_pj"]["link"]
    # latency beside the target and the published results, at the configuration's clock
    assert 0 < resident["utilization"] <= 1
    table = latency_table(AcceleratorConfig(weight_depth=8192), [per_layer, resident]).splitlines()
    (row,) = [line for line in table if line.startswith("| ad_autoencoder")]
    latency_ms = resident["cycles"] / 100.0 / 1000
    assert f"| {latency_ms:.3f} |" in row and "| 0.15 |" in row and "hls4ml, Pynq-Z2 0.0187 ms" in row
    assert ("| yes |" in row) == (latency_ms <= 0.15)
    # at a reduced width the full models' targets are not called met
    reduced = latency_table(AcceleratorConfig(weight_depth=8192), [per_layer, resident], width=0.125)
    assert "width 0.125: the targets are the full models'" in reduced and "| n/a |" in reduced
    # where each layer's cycles go, from its counters: the parts add up to its cycles; a picture of them
    from tessera.verif.layer_profile import PARTS, plot_layers
    layers = per_layer["layers"]
    assert [layer["kind"] for layer in layers] == ["Gemm"] * 10
    assert sum(layer["cycles"] for layer in layers) == per_layer["cycles"]
    for layer in layers:
        assert sum(layer[part] for part in PARTS) == layer["cycles"] and layer["array"] > 0
        assert layer["utilization"] == pytest.approx(layer["macs"] / (64 * layer["cycles"]))    # (8x8)
    plot_layers(layers, tmp_path / "layers.png", "ad_autoencoder")
    assert (tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
