"""The ONNX importer and the host executor against onnxruntime, on models quantized by ``quantize_static``.

Each test quantizes a small random float model (QOperator and QDQ, per-tensor and per-channel weights, uint8
and int8 activations), imports it with ``tessera.sw_driver.onnx_import.load_model``, runs it with
``tessera.sw_driver.host_exec.run_graph`` (golden model only) and with onnxruntime, and requires identical float
outputs. The one allowance: outputs downstream of a layer onnxruntime runs in float where the host cannot
follow its float arithmetic (``inexact_layers``) may differ by one output step, and the assertion names those
layers. Each test also checks the importer's prediction of which layers onnxruntime leaves in float against
the graph onnxruntime really optimizes.
"""


import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tessera.sw_driver import golden, layers
from tessera.sw_driver.host_exec import inexact_layers, run_graph, run_layer
from tessera.sw_driver.onnx_import import ModelError, load_model
from tessera.verif import onnx_multi
from tessera.verif.onnx_models import (
    IR_VERSION,
    OPSET,
    QuantFormat,
    QuantType,
    add_model,
    avgpool_model,
    conv_model,
    gemm_model,
    global_avgpool_model,
    matmul_model,
    maxpool_model,
    quantize_dynamic_model,
    quantize_model,
    random_inputs,
)
from tessera.verif.onnx_multi import (
    depthwise_separable,
    fan_out,
    input_relu,
    mixed_head,
    pooling_net,
    qdq_add,
    relu_branch,
    residual_block,
    sequential_cnn,
    shared_fc,
    softmax_head,
)
from tessera.verif.onnxruntime_ref import bit_exact_cpu, random_conv, run_onnxruntime

FORMATS = [QuantFormat.QOperator, QuantFormat.QDQ]
ACTIVATIONS = [QuantType.QUInt8, QuantType.QInt8]
FLAVOURS = [pytest.param(f, pc, a, id=f"{f.name}-{'perchannel' if pc else 'pertensor'}-{a.name}")
            for f in FORMATS for pc in (False, True) for a in ACTIVATIONS]
WEIGHTLESS_FLAVOURS = [pytest.param(f, False, a, id=f"{f.name}-{a.name}") for f in FORMATS for a in ACTIVATIONS]
# Ops that only exist in float in onnxruntime's optimized graph (the integer kernels have QLinear* names; a float
# Conv followed by a Clip becomes FusedConv), and their IR kinds.
FLOAT_OPS = {"Conv", "MatMul", "Gemm", "Add", "AveragePool", "GlobalAveragePool", "FusedConv", "FusedGemm",
             "FusedMatMul"}
KINDS = {"MatMul": "Gemm", "FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "Gemm"}
# These keep their names on integers too, so they count as float only when they read a DequantizeLinear.
SHAPE_OPS = {"MaxPool", "Flatten", "Reshape"}


# ------------------------------------------------------------------------------------------------------------
# helpers


def onnxruntime_float_nodes(optimized):
    """The nodes of onnxruntime's optimized graph that still compute in float: ``[(name, op_type)]``."""
    producers = {name: node for node in optimized.graph.node for name in node.output}
    found = []
    for node in optimized.graph.node:
        reads_float = node.input and getattr(producers.get(node.input[0]), "op_type", "") == "DequantizeLinear"
        if node.op_type in FLOAT_OPS or (node.op_type in SHAPE_OPS and reads_float):
            found.append((node.name, node.op_type))
    return found


def downstream(graph, names):
    """Tensor names computed (directly or not) from the outputs of the layers called ``names``."""
    tainted = set()
    for layer in graph.layers:
        if layer.name in names or tainted & set(layer.inputs):
            tainted.update(layer.outputs)
    return tainted


def output_step(graph, output):
    """The float value of one quantization step of graph output ``output`` (the scale it is dequantized with)."""
    (producer,) = [layer for layer in graph.layers if output in layer.outputs]
    return graph.tensors[producer.inputs[0]].scale


def check_against_onnxruntime(float_model, tmp_path, rng, quant_format, per_channel, activation_type,
                              input_scale=1.5):
    """Quantize ``float_model`` and ``check_quantized`` it on random inputs. Returns the imported graph.

    ``input_scale`` above the calibration data's 1.0 drives some inputs past the calibrated range, so
    saturation is exercised too.
    """
    quantized = quantize_model(float_model, tmp_path, rng, quant_format=quant_format, per_channel=per_channel,
                               activation_type=activation_type)
    return check_quantized(quantized, random_inputs(rng, float_model, input_scale), tmp_path)


def check_quantized(quantized, feeds, tmp_path):
    """Import and run ``quantized`` both ways; require equal outputs and the predicted float nodes."""
    graph = load_model(quantized)
    expected = dict(zip([o.name for o in quantized.graph.output],
                        run_onnxruntime(quantized, feeds, tmp_path / "optimized.onnx"), strict=True))
    actual = run_graph(graph, feeds)

    float_nodes = onnxruntime_float_nodes(onnx.load(tmp_path / "optimized.onnx"))
    assert sorted(KINDS.get(op, op) for _, op in float_nodes) == \
        sorted(graph.layer(name).kind for name in graph.float_in_onnxruntime), \
        f"onnxruntime left {float_nodes} in float, the importer predicted {graph.float_in_onnxruntime}"
    if all(name for name, _ in float_nodes):  # named models: the very same nodes
        assert sorted(name for name, _ in float_nodes) == sorted(graph.float_in_onnxruntime)

    inexact = inexact_layers(graph)
    loose = downstream(graph, inexact)
    assert set(actual) == set(expected)
    for name, y in expected.items():
        assert actual[name].dtype == y.dtype and actual[name].shape == y.shape
        if name in loose:
            steps = np.abs(actual[name].astype(np.float64) - y) / output_step(graph, name)
            assert steps.max() <= 1.0 + 1e-3, \
                f"output {name!r} is {steps.max()} steps off; onnxruntime runs these in float: {inexact}"
        else:
            np.testing.assert_array_equal(actual[name], y, err_msg=f"output {name!r}")
    return graph


# ------------------------------------------------------------------------------------------------------------
# single layers


@bit_exact_cpu
class TestSingleLayers:
    @pytest.mark.parametrize("seed", range(6))
    @pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
    def test_conv(self, tmp_path, seed, quant_format, per_channel, activation_type):
        # kernel 1..5, stride 1..2, random pads, groups 1..3, some dilation
        rng = np.random.default_rng(11000 + seed)
        graph = check_against_onnxruntime(random_conv(rng), tmp_path, rng, quant_format, per_channel,
                                          activation_type)
        (conv,) = [layer for layer in graph.layers if isinstance(layer, layers.Conv)]
        assert conv.w_q.dtype == np.int8 and conv.bias.dtype == np.int32
        assert conv.w_scale.shape == ((conv.out_channels,) if per_channel and conv.out_channels > 1 else ())

    @pytest.mark.parametrize("seed", range(3))
    @pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
    def test_depthwise_conv(self, tmp_path, seed, quant_format, per_channel, activation_type):
        rng = np.random.default_rng(12000 + seed)
        model = random_conv(rng, depthwise=True)
        graph = check_against_onnxruntime(model, tmp_path, rng, quant_format, per_channel, activation_type)
        (conv,) = [layer for layer in graph.layers if isinstance(layer, layers.Conv)]
        assert conv.is_depthwise == (conv.group > 1)

    @pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
    def test_conv_relu_folds_into_the_output_range(self, tmp_path, quant_format, per_channel, activation_type):
        rng = np.random.default_rng(12500)
        graph = check_against_onnxruntime(random_conv(rng, relu=True), tmp_path, rng, quant_format, per_channel,
                                          activation_type)
        assert [layer.kind for layer in graph.layers] == ["Quantize", "Conv", "Dequantize"]

    @pytest.mark.parametrize("seed", range(2))
    @pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
    def test_matmul(self, tmp_path, seed, quant_format, per_channel, activation_type):
        rng = np.random.default_rng(13000 + seed)
        m, k, n = (int(v) for v in rng.integers(1, 40, 3))
        graph = check_against_onnxruntime(matmul_model(rng, m=m, k=k, n=n), tmp_path, rng, quant_format,
                                          per_channel, activation_type)
        (gemm,) = [layer for layer in graph.layers if isinstance(layer, layers.Gemm)]
        assert gemm.w_q.shape == (k, n) and not gemm.bias.any()

    @pytest.mark.parametrize("trans_b", [False, True])
    @pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
    def test_gemm(self, tmp_path, trans_b, quant_format, per_channel, activation_type):
        rng = np.random.default_rng(14000 + trans_b)
        m, k, n = (int(v) for v in rng.integers(1, 40, 3))
        graph = check_against_onnxruntime(gemm_model(rng, m=m, k=k, n=n, trans_b=trans_b), tmp_path, rng,
                                          quant_format, per_channel, activation_type)
        (gemm,) = [layer for layer in graph.layers if isinstance(layer, layers.Gemm)]
        assert gemm.w_q.shape == (k, n)  # transB resolved

    @pytest.mark.parametrize("seed", range(3))
    @pytest.mark.parametrize("quant_format, per_channel, activation_type", WEIGHTLESS_FLAVOURS)
    def test_add(self, tmp_path, seed, quant_format, per_channel, activation_type):
        rng = np.random.default_rng(15000 + seed)
        shape = (1, int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 40)))
        check_against_onnxruntime(add_model(shape), tmp_path, rng, quant_format, per_channel, activation_type)

    @pytest.mark.parametrize("seed", range(3))
    @pytest.mark.parametrize("quant_format, per_channel, activation_type", WEIGHTLESS_FLAVOURS)
    def test_pools(self, tmp_path, seed, quant_format, per_channel, activation_type):
        rng = np.random.default_rng(16000 + seed)
        kernel = int(rng.integers(1, 4))
        pads = tuple(int(p) for p in rng.integers(0, kernel, 4))
        shape = (1, int(rng.integers(1, 5)), *(int(s) for s in rng.integers(kernel + 1, 10, 2)))
        geometry = {"kernel": kernel, "stride": int(rng.integers(1, 3)), "pads": pads}
        for model in (avgpool_model(rng, shape, count_include_pad=bool(seed % 2), **geometry),
                      maxpool_model(rng, shape, **geometry), global_avgpool_model(rng, shape)):
            graph = check_against_onnxruntime(model, tmp_path, rng, quant_format, per_channel, activation_type)
            (conv,) = [layer for layer in graph.layers if isinstance(layer, layers.Conv)]
            assert not conv.bias.any()  # the pool models' 1x1 conv has no bias: zeros


# ------------------------------------------------------------------------------------------------------------
# networks


NETWORKS = {
    "sequential_cnn": sequential_cnn,
    "sequential_cnn_reshape": lambda rng: sequential_cnn(rng, reshape=True),
    "depthwise_separable": depthwise_separable,
    "depthwise_separable_stride2": lambda rng: depthwise_separable(rng, stride=2),
    "residual_block": residual_block,
    "residual_block_tail": lambda rng: residual_block(rng, tail=True),
    "pooling_net": pooling_net,
    "relu_branch": relu_branch,
    "input_relu": input_relu,
}


@bit_exact_cpu
class TestNetworks:
    @pytest.mark.parametrize("seed", range(3))
    @pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
    @pytest.mark.parametrize("network", sorted(NETWORKS))
    def test_network(self, tmp_path, network, seed, quant_format, per_channel, activation_type):
        rng = np.random.default_rng(20000 + 10 * seed + sorted(NETWORKS).index(network))
        check_against_onnxruntime(NETWORKS[network](rng), tmp_path, rng, quant_format, per_channel,
                                  activation_type)

    @pytest.mark.parametrize("seed", range(2))
    @pytest.mark.parametrize("op_type", ["Gemm", "AveragePool", "MaxPool", "GlobalAveragePool"])
    @pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
    def test_branch_point_feeding_each_op(self, tmp_path, op_type, seed, quant_format, per_channel,
                                          activation_type):
        # The stem's int8 output feeds two nodes: in int8 QDQ onnxruntime keeps it int8 and runs the stem, the
        # 1x1 side conv and (except for the Gemm, which reads the Flatten's own Q) the op in float.
        rng = np.random.default_rng(21000 + seed)
        graph = check_against_onnxruntime(fan_out(rng, op_type), tmp_path, rng, quant_format, per_channel,
                                          activation_type)
        if quant_format == QuantFormat.QDQ and activation_type == QuantType.QInt8:
            expected = {"stem", "side", "flatten" if op_type == "Gemm" else "pool"}
            assert set(graph.float_in_onnxruntime) == expected
            assert all("stem" in why for why in graph.float_in_onnxruntime.values())  # the reason names it
        else:
            assert not graph.float_in_onnxruntime

    @pytest.mark.parametrize("seed", range(2))
    @pytest.mark.parametrize("op_type", ["Gemm", "MatMul"])
    @pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
    def test_int8_gemm_fuses_where_matmul_does_not(self, tmp_path, op_type, seed, quant_format, per_channel,
                                                   activation_type):
        rng = np.random.default_rng(21500 + seed)
        graph = check_against_onnxruntime(shared_fc(rng, op_type), tmp_path, rng, quant_format, per_channel,
                                          activation_type)
        if quant_format == QuantFormat.QDQ and activation_type == QuantType.QInt8:
            # fc1 reads and writes tensors onnxruntime keeps int8: QGemm takes them, QLinearMatMul (x86) not
            expected = {"flatten", "fc2", "fc3", "fc4"} | ({"fc1"} if op_type == "MatMul" else set())
            assert set(graph.float_in_onnxruntime) == expected
            assert graph.onnxruntime_path("fc1") == ("integer" if op_type == "Gemm" else "float")

    @pytest.mark.parametrize("seed", range(3))
    @pytest.mark.parametrize("activation_type", ACTIVATIONS)
    def test_quantized_graph_output(self, tmp_path, seed, activation_type):
        # The integer tensor itself as the graph output: onnxruntime cannot rewrite its int8 Q to uint8, so an
        # int8 QDQ Conv writing it runs in float (uint8 fuses as usual).
        rng = np.random.default_rng(24000 + seed)
        model = random_conv(rng)
        quantized = quantize_model(model, tmp_path, rng, quant_format=QuantFormat.QDQ, per_channel=bool(seed % 2),
                                   activation_type=activation_type)
        (dq,) = [n for n in quantized.graph.node if n.output[0] == quantized.graph.output[0].name]
        quantized.graph.node.remove(dq)
        shape = [d.dim_value for d in quantized.graph.output.pop().type.tensor_type.shape.dim]
        elem = TensorProto.INT8 if activation_type == QuantType.QInt8 else TensorProto.UINT8
        quantized.graph.output.append(helper.make_tensor_value_info(dq.input[0], elem, shape))
        graph = load_model(quantized)
        assert graph.outputs[0].quantized and [layer.kind for layer in graph.layers] == ["Quantize", "Conv"]
        feeds = random_inputs(rng, model, 1.5)
        (expected,) = run_onnxruntime(quantized, feeds)
        actual = run_graph(graph, feeds)[dq.input[0]]
        assert actual.dtype == expected.dtype
        if activation_type == QuantType.QInt8:
            assert list(inexact_layers(graph)) == [graph.layers[1].name]
            assert np.abs(actual.astype(np.int16) - expected).max() <= 1
        else:
            assert not graph.float_in_onnxruntime
            np.testing.assert_array_equal(actual, expected)

    @pytest.mark.parametrize("quant_format", FORMATS)
    def test_symbolic_batch(self, tmp_path, quant_format):
        rng = np.random.default_rng(25000)
        quantized = quantize_model(sequential_cnn(rng), tmp_path, rng, quant_format=quant_format, per_channel=True,
                                   activation_type=QuantType.QUInt8)
        for value_info in (quantized.graph.input[0], quantized.graph.output[0]):
            value_info.type.tensor_type.shape.dim[0].dim_param = "batch"
        del quantized.graph.value_info[:]  # the quantizer's, inferred for batch 1
        graph = load_model(quantized)
        assert graph.inputs[0].shape == (None, 3, 10, 10)
        assert graph.shapes[graph.layers[-2].outputs[0]] == (None, 10)
        feeds = {"x": rng.normal(size=(3, 3, 10, 10)).astype(np.float32)}
        (expected,) = run_onnxruntime(quantized, feeds)
        np.testing.assert_array_equal(run_graph(graph, feeds)["fc"], expected)

    def test_residual_block_reports_the_float_nodes(self, tmp_path):
        rng = np.random.default_rng(22000)
        graph = check_against_onnxruntime(residual_block(rng), tmp_path, rng, QuantFormat.QDQ, True,
                                          QuantType.QInt8)
        assert set(graph.float_in_onnxruntime) == {"stem", "conv1", "add"}
        assert set(inexact_layers(graph)) == {"stem", "conv1"}  # the float Add is reproduced exactly
        assert graph.onnxruntime_path("conv2") == "uint8"
        assert "onnxruntime: float" in graph.describe()

    def test_int8_qdq_avgpool_runs_on_uint8_copies(self, tmp_path):
        # onnxruntime rewrites this int8 QDQ AveragePool to uint8 before fusing it, and QLinearAveragePool adds
        # the zero point in float before rounding: moved by 128 it rounds differently (a large tensor makes it
        # certain to show).
        rng = np.random.default_rng(23000)
        float_model = avgpool_model(rng, (1, 16, 64, 64), kernel=3, stride=1, pads=(1, 1, 1, 1))
        graph = check_against_onnxruntime(float_model, tmp_path, rng, QuantFormat.QDQ, False, QuantType.QInt8)
        (pool,) = [layer for layer in graph.layers if isinstance(layer, layers.AveragePool)]
        assert graph.onnxruntime_path(pool.name) == "uint8"
        tensors = random_inputs(np.random.default_rng(23001), float_model, 1.5)
        for layer in graph.layers[:graph.layers.index(pool)]:
            tensors.update(run_layer(layer, tensors, path=graph.onnxruntime_path(layer.name)))
        on_uint8 = run_layer(pool, tensors, path="uint8")[pool.outputs[0]]
        on_int8 = run_layer(pool, tensors)[pool.outputs[0]]
        assert (on_uint8 != on_int8).any(), "test data no longer tells the uint8 path from the int8 one"

    def test_int8_qdq_add_runs_on_uint8_copies(self):
        # The same for QLinearAdd, whose FMAs round differently with every zero point moved by 128; random
        # calibrated models rarely show it, so: every pair of int8 inputs, parameters where the paths differ.
        rng = np.random.default_rng(23100)
        grid = np.arange(-128, 128, dtype=np.int8)
        quantized = {"a": np.repeat(grid, 256).reshape(1, 1, 256, 256), "b": np.tile(grid, 256).reshape(1, 1, 256, 256)}
        for _ in range(100):
            params = [layers.QuantParams(rng.uniform(0.001, 0.1), rng.integers(-128, 128), np.int8) for _ in "aby"]
            add = layers.Add(name="add", inputs=("a", "b"), outputs=("y",), a_params=params[0], b_params=params[1],
                             y_params=params[2])
            if (run_layer(add, quantized, path="uint8")["y"] != run_layer(add, quantized)["y"]).any():
                break
        else:
            pytest.fail("no parameters found for which the uint8 and int8 paths of QLinearAdd differ")
        model = qdq_add(*((p.scale, p.zero_point) for p in params), shape=(1, 1, 256, 256))
        graph = load_model(model)
        assert graph.onnxruntime_path("add") == "uint8"
        feeds = {name: golden.dequantize(q, p.scale, p.zero_point)
                 for (name, q), p in zip(quantized.items(), params[:2], strict=True)}
        (expected,) = run_onnxruntime(model, feeds)
        np.testing.assert_array_equal(run_graph(graph, feeds)["y"], expected)


def insert_clip(model, tensor, low, high):
    """Put ``Clip(low, high)`` between ``tensor`` and the QuantizeLinear that reads it (a Relu/Clip the
    quantizer would have removed)."""
    (quantize,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
    model.graph.initializer.extend([numpy_helper.from_array(np.float32(low), "clip_low"),
                                    numpy_helper.from_array(np.float32(high), "clip_high")])
    clip = helper.make_node("Clip", [tensor, "clip_low", "clip_high"], ["clipped"], name="clip")
    quantize.input[0] = "clipped"
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes[:nodes.index(quantize)] + [clip] + nodes[nodes.index(quantize):])
    return model


@bit_exact_cpu
class TestClips:
    @pytest.mark.parametrize("seed", range(2))
    @pytest.mark.parametrize("quant_format, per_channel, activation_type", FLAVOURS)
    def test_clip_on_the_float_input(self, tmp_path, seed, quant_format, per_channel, activation_type):
        # onnxruntime clips in float and quantizes; the IR quantizes and clamps the integers, which is the same
        rng = np.random.default_rng(26000 + seed)
        model = random_conv(rng)
        quantized = insert_clip(quantize_model(model, tmp_path, rng, quant_format=quant_format,
                                               per_channel=per_channel, activation_type=activation_type),
                                "x", -0.7, 0.4)
        graph = check_quantized(quantized, random_inputs(rng, model, 1.5), tmp_path)
        assert [layer.kind for layer in graph.layers] == ["Quantize", "Clip", "Conv", "Dequantize"]

    @pytest.mark.parametrize("seed", range(3))
    @pytest.mark.parametrize("per_channel", [False, True])
    @pytest.mark.parametrize("activation_type", ACTIVATIONS)
    def test_clip_between_conv_and_its_quantize(self, tmp_path, seed, per_channel, activation_type):
        # A clip the output range does not make redundant: onnxruntime cannot fuse the group and runs the Conv
        # in float; the IR has the Conv quantize to the Q's parameters and a clamp after it.
        rng = np.random.default_rng(27000 + seed)
        model = random_conv(rng)
        quantized = quantize_model(model, tmp_path, rng, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                                   activation_type=activation_type)
        (conv,) = [n for n in quantized.graph.node if n.op_type == "Conv"]
        graph = check_quantized(insert_clip(quantized, conv.output[0], -0.3, 0.2), random_inputs(rng, model, 1.5),
                                tmp_path)
        assert [layer.kind for layer in graph.layers] == ["Quantize", "Conv", "Clip", "Dequantize"]
        assert list(graph.float_in_onnxruntime) == [graph.layers[1].name]
        assert "not made redundant" in graph.float_in_onnxruntime[graph.layers[1].name]

    @pytest.mark.parametrize("activation_type", ACTIVATIONS)
    def test_redundant_relu_between_conv_and_its_quantize(self, tmp_path, activation_type):
        # A Relu whose Q's zero point is already the bottom of the range: folded away, as onnxruntime does.
        rng = np.random.default_rng(27500)
        model = random_conv(rng, relu=True)
        quantized = quantize_model(model, tmp_path, rng, quant_format=QuantFormat.QDQ, per_channel=False,
                                   activation_type=activation_type)
        (conv,) = [n for n in quantized.graph.node if n.op_type == "Conv"]
        lowest = float(np.iinfo(np.int8 if activation_type == QuantType.QInt8 else np.uint8).min)
        graph = check_quantized(insert_clip(quantized, conv.output[0], 0.0, np.inf), random_inputs(rng, model, 1.5),
                                tmp_path)
        assert [layer.kind for layer in graph.layers] == ["Quantize", "Conv", "Dequantize"]
        assert graph.tensors[graph.layers[1].outputs[0]].zero_point == lowest
        assert not graph.float_in_onnxruntime


# ------------------------------------------------------------------------------------------------------------
# the IR itself


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    rng = np.random.default_rng(30000)
    quantized = quantize_model(sequential_cnn(rng), tmp_path_factory.mktemp("cnn"), rng,
                               quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8)
    return load_model(quantized)


class TestGraph:
    def test_layers_in_order(self, cnn):
        assert [layer.kind for layer in cnn.layers] == \
            ["Quantize", "Conv", "MaxPool", "Conv", "Flatten", "Gemm", "Dequantize"]
        assert [layer.name for layer in cnn.layers[1:-1]] == ["conv1", "pool1", "conv2", "flatten", "fc"]

    def test_tensors_and_shapes(self, cnn):
        conv1, pool1 = cnn.layer("conv1"), cnn.layer("pool1")
        assert cnn.tensors[conv1.outputs[0]] == conv1.y_params == cnn.tensors[pool1.outputs[0]]
        assert cnn.tensors[conv1.outputs[0]].zero_point == 0  # the folded Relu: zero point at the bottom
        assert cnn.shapes[conv1.outputs[0]] == (1, 4, 10, 10)
        assert cnn.shapes[cnn.layer("fc").outputs[0]] == (1, 10)
        assert cnn.inputs[0].shape == (1, 3, 10, 10) and not cnn.inputs[0].quantized

    def test_describe(self, cnn):
        text = cnn.describe()
        for layer in cnn.layers:
            assert layer.name in text and layer.kind in text
        assert "1x4x10x10" in text and "k=3x3" in text

    def test_layers_are_frozen(self, cnn):
        conv = cnn.layer("conv1")
        with pytest.raises(AttributeError):
            conv.group = 2
        with pytest.raises(ValueError):
            conv.w_q[0, 0, 0, 0] = 1

    def test_run_layer_one_by_one_equals_run_graph(self, cnn):
        feeds = {"x": np.random.default_rng(30001).normal(size=(1, 3, 10, 10)).astype(np.float32)}
        tensors = dict(feeds)
        for layer in cnn.layers:
            tensors.update(run_layer(layer, tensors))
        np.testing.assert_array_equal(tensors["fc"], run_graph(cnn, feeds)["fc"])

    def test_run_graph_checks_its_inputs(self, cnn):
        with pytest.raises(ValueError, match="missing \\['x'\\]"):
            run_graph(cnn, {})
        with pytest.raises(ValueError, match="shape"):
            run_graph(cnn, {"x": np.zeros((1, 3, 9, 10), np.float32)})

    def test_model_loads_from_a_file(self, tmp_path):
        rng = np.random.default_rng(30002)
        quantized = quantize_model(sequential_cnn(rng), tmp_path, rng, quant_format=QuantFormat.QOperator,
                                   per_channel=False, activation_type=QuantType.QInt8)
        onnx.save(quantized, tmp_path / "model.onnx")
        graph = load_model(tmp_path / "model.onnx")
        assert [layer.kind for layer in graph.layers] == \
            ["Quantize", "Conv", "MaxPool", "Conv", "Flatten", "Gemm", "Dequantize"]
        assert graph.layers[5].w_q.shape == (72, 10)  # 8 channels x 3 x 3 features, transB resolved


# ------------------------------------------------------------------------------------------------------------
# errors


def _quantized_conv(tmp_path, quant_format=QuantFormat.QOperator):
    rng = np.random.default_rng(40000)
    model = conv_model(rng, batch=1, in_channels=3, out_channels=4, size=(6, 6), kernel=3, stride=1,
                       pads=(1, 1, 1, 1))
    return quantize_model(model, tmp_path, rng, quant_format=quant_format, per_channel=False,
                          activation_type=QuantType.QUInt8)


def _same_as_onnxruntime(model, feeds):
    """Import ``model``, run it on the host (Tessera's layers on the golden model, the rest on onnxruntime) and
    require onnxruntime's outputs for the whole model bit for bit. Returns the imported graph."""
    graph = load_model(model)
    expected = run_onnxruntime(model, feeds)
    actual = run_graph(graph, feeds)
    for io, y in zip(graph.outputs, expected, strict=True):
        assert actual[io.name].dtype == y.dtype and actual[io.name].shape == y.shape
        np.testing.assert_array_equal(actual[io.name], y, err_msg=f"output {io.name!r}")
    return graph


def _partitions(graph):
    return [layer for layer in graph.layers if isinstance(layer, layers.HostPartition)]


class TestHostPartitions:
    """Nodes Tessera has no layer for run on onnxruntime, on subgraphs cut from the model, exchanging integer
    tensors with Tessera's layers: the whole model equals onnxruntime bit for bit."""

    @pytest.mark.parametrize("quant_format, op_type", [(QuantFormat.QOperator, "QLinearSoftmax"),
                                                       (QuantFormat.QDQ, "Softmax")])
    def test_softmax_on_quantized_data(self, tmp_path, quant_format, op_type):
        rng = np.random.default_rng(40001)
        quantized = quantize_model(softmax_head(rng), tmp_path, rng, quant_format=quant_format, per_channel=False,
                                   activation_type=QuantType.QUInt8)
        graph = _same_as_onnxruntime(quantized, random_inputs(rng, softmax_head(np.random.default_rng(0)), 2.0))
        (softmax,) = _partitions(graph)
        assert softmax.kind == op_type and softmax.reason == f"no Tessera layer for {op_type}"
        assert [layer.kind for layer in graph.layers if layer.kind == "Conv"] == ["Conv"]   # Tessera keeps the conv
        # integer tensors in and out: the quantized conv output, and a quantized tensor or the float graph output
        assert all(graph.tensors.get(name) is not None for name in softmax.inputs)

    @pytest.mark.parametrize("quant_format", FORMATS, ids=lambda f: f.name)
    @pytest.mark.parametrize("activation, weight", [(QuantType.QUInt8, QuantType.QInt8),
                                                    (QuantType.QInt8, QuantType.QInt8),
                                                    (QuantType.QUInt8, QuantType.QUInt8)], ids=["u8s8", "s8s8", "u8u8"])
    def test_concat_resize_sigmoid_softmax(self, tmp_path, quant_format, activation, weight):
        for seed in range(3):
            rng = np.random.default_rng(40010 + seed)
            model = mixed_head(rng)
            quantized = quantize_model(model, tmp_path, rng, quant_format=quant_format, per_channel=True,
                                       activation_type=activation, weight_type=weight)
            graph = _same_as_onnxruntime(quantized, random_inputs(rng, model, 1.5))
            ops = {op for layer in _partitions(graph) for op in layer.ops}
            assert {"Sigmoid", "Softmax"} <= {op.removeprefix("QLinear") for op in ops}
            assert any(layer.kind == "GlobalAveragePool" for layer in graph.layers)

    def test_lstm_on_float_data(self):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 3])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 1, 1, 2])
        rng = np.random.default_rng(40003)
        weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
                   for name, shape in (("W", (1, 8, 3)), ("R", (1, 8, 2)))]
        lstm = helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="encoder", hidden_size=2)
        model = helper.make_model(helper.make_graph([lstm], "lstm", [x], [y], initializer=weights),
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        graph = _same_as_onnxruntime(model, {"x": rng.normal(size=(5, 1, 3)).astype(np.float32)})
        (encoder,) = graph.layers
        assert encoder.kind == "LSTM" and encoder.name == "encoder" and encoder.inputs == ("x",)

    def test_integer_graph_input(self):
        """An int64 graph input (token ids) feeds onnxruntime as int64, not cast to float."""
        table = numpy_helper.from_array(np.random.default_rng(40006).normal(size=(10, 4)).astype(np.float32), "W")
        gather = helper.make_node("Gather", ["W", "ids"], ["y"], name="embed")
        model = helper.make_model(helper.make_graph(
            [gather], "embedding", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], initializer=[table]),
            opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        graph = _same_as_onnxruntime(model, {"ids": np.array([1, 3, 9, 3], np.int64)})
        assert graph.inputs[0].dtype == np.int64 and not graph.inputs[0].quantized

    def test_model_local_function(self):
        """A node calling one of the model's own functions: its partition carries the function along."""
        twice = helper.make_function("custom", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                     [helper.make_opsetid("", OPSET)])
        model = helper.make_model(helper.make_graph(
            [helper.make_node("Twice", ["x"], ["y"], domain="custom", name="twice")], "function",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])]),
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("custom", 1)], functions=[twice])
        model.ir_version = IR_VERSION
        graph = _same_as_onnxruntime(model, {"x": np.array([1.5, -2.0, 0.25], np.float32)})
        assert graph.layers[0].kind == "Twice"

    def test_float_matmul_on_float_data(self):
        model = matmul_model(np.random.default_rng(40002), m=2, k=3, n=4)
        graph = _same_as_onnxruntime(model, random_inputs(np.random.default_rng(1), model))
        assert [layer.kind for layer in graph.layers] == ["MatMul"]

    def test_unquantized_output_of_a_qdq_conv(self, tmp_path):
        """A QDQ Conv whose output is not quantized: onnxruntime runs DQ -> Conv in float, so does the host."""
        model = _quantized_conv(tmp_path, QuantFormat.QDQ)
        (conv,) = [n for n in model.graph.node if n.op_type == "Conv"]
        for node in [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                     and n.input[0] in (conv.output[0], "y_QuantizeLinear_Output")]:
            model.graph.node.remove(node)
        conv.output[0] = "y"
        graph = _same_as_onnxruntime(model, random_inputs(np.random.default_rng(2), model))
        (partition,) = _partitions(graph)
        assert partition.kind == "Conv" and "not quantized by exactly one QuantizeLinear" in partition.reason
        assert {n.op_type for n in partition.nodes} == {"Conv", "DequantizeLinear"}   # the DQs come along

    def test_branch_point_feeds_device_and_host(self, tmp_path):
        """A tensor read by a Tessera layer and by onnxruntime: both get it, and each partition's subgraph reads
        only what a run holds."""
        rng = np.random.default_rng(40004)
        b = onnx_multi._Builder(rng)
        t = b.conv("x", "conv", 3, 4, 3, pad=1)
        model = b.model((1, 3, 6, 6), [b.node("Sigmoid", [t], "sigmoid"), b.node("Relu", [t], "relu")])
        quantized = quantize_model(model, tmp_path, rng, quant_format=QuantFormat.QDQ, per_channel=False,
                                   activation_type=QuantType.QUInt8)
        graph = _same_as_onnxruntime(quantized, random_inputs(rng, model))
        held = {io.name for io in graph.inputs} | {name for layer in graph.layers for name in layer.outputs}
        for partition in _partitions(graph):
            assert set(partition.inputs) <= held

    @pytest.mark.parametrize("weight", [QuantType.QInt8, QuantType.QUInt8], ids=["s8", "u8"])
    @pytest.mark.parametrize("op", ["gemm", "conv"])
    def test_dynamic_quantization(self, tmp_path, op, weight):
        """``quantize_dynamic``'s MatMulInteger / ConvInteger are Tessera layers (int32 outputs, the golden model's
        integer products, with the input zero point DynamicQuantizeLinear computes at run time); the float code
        around them is onnxruntime's."""
        rng = np.random.default_rng(40005)
        model = (gemm_model(rng, m=5, k=16, n=7, trans_b=False) if op == "gemm" else
                 conv_model(rng, batch=2, in_channels=3, out_channels=4, size=(6, 5), kernel=3, stride=1,
                            pads=(1, 1, 1, 1)))
        dynamic = quantize_dynamic_model(model, tmp_path, weight_type=weight)
        for seed in range(3):
            graph = _same_as_onnxruntime(dynamic, random_inputs(np.random.default_rng(seed), model, 2.0))
        integer = [layer for layer in graph.layers if layer.kind in ("MatMulInteger", "ConvInteger")]
        assert len(integer) == 1 and len(integer[0].inputs) == 2    # the run-time zero point is its second input

    @pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.INT4,
                                      TensorProto.DOUBLE])
    def test_types_outside_the_quantized_world_are_refused_by_name(self, elem):
        name = TensorProto.DataType.Name(elem)
        x = helper.make_tensor_value_info("x", elem, [2])
        y = helper.make_tensor_value_info("y", elem, [2])
        model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                                  opset_imports=[helper.make_opsetid("", 21)])
        with pytest.raises(ModelError, match=f"graph input 'x' has element type {name}; Tessera accepts FLOAT, "
                                             f"INT8, UINT8, INT32, INT64, BOOL tensors"):
            load_model(model)


class TestErrors:
    def test_truncated_file(self, tmp_path):
        data = _quantized_conv(tmp_path).SerializeToString()
        path = tmp_path / "truncated.onnx"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ModelError, match="truncated.onnx"):
            load_model(path)

    def test_missing_initializer(self, tmp_path):
        model = _quantized_conv(tmp_path)
        (conv,) = [n for n in model.graph.node if n.op_type == "QLinearConv"]
        (scale,) = [i for i in model.graph.initializer if i.name == conv.input[4]]  # the weight scale
        model.graph.initializer.remove(scale)
        with pytest.raises(ModelError, match=f"node 'QLinearConv_1' \\(QLinearConv\\): input '{conv.input[4]}' "
                                             f"is not a graph input.*a missing initializer"):
            load_model(model)

    def test_dequantize_without_scale(self, tmp_path):
        model = _quantized_conv(tmp_path, QuantFormat.QDQ)
        (dq,) = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "y"]
        del dq.input[1:]
        with pytest.raises(ModelError, match=f"node '{dq.name}' \\(DequantizeLinear\\) fails onnx.checker"):
            load_model(model)

    def test_checker_failure_names_the_node(self, tmp_path):
        model = _quantized_conv(tmp_path)
        (conv,) = [n for n in model.graph.node if n.op_type == "QLinearConv"]
        conv.name = "broken"
        conv.attribute.append(helper.make_attribute("kernel_shape", [3, 3]))  # a second kernel_shape
        with pytest.raises(ModelError, match="node 'broken' \\(QLinearConv\\)"):
            load_model(model)

