"""Importer fuzzing: mutated quantized ONNX models and mutated inputs through ``tessera run``.

Each case is one integer seed. It picks a seed model (a small float model of :mod:`tessera.verif.onnx_models` or
:mod:`tessera.verif.onnx_multi`, quantized by onnxruntime in QOperator or QDQ with uint8 or int8 activations, or a
hand-made QLinear model), corrupts it (attributes, initializers' types, shapes and values, graph input and output
types and shapes, nodes removed, duplicated, reordered or given another op, edges renamed so they dangle, version
fields, then perhaps the serialized bytes truncated or flipped) and/or its input (type, shape, NaN and infinities,
empty, extra dimensions, the wrong file layout), and runs ``tessera.sw_driver.cli.main`` on it in a child process
with a time limit. The outcome is one of:

* **ran**: exit status 0; the outputs equal onnxruntime's on the same mutated model and input, bit for bit (NaN
  equal to NaN), where onnxruntime runs it at all;
* **refused**: a non-zero exit status and exactly one line on stderr, starting ``tessera: ``;
* **failed**: anything else: a traceback, several stderr lines, a hang, a crashed process, outputs that differ.

Usage: ``python -m tessera.verif.onnx_fuzz --seed S --count N [--target host|sim|mixed] [--keep DIR]`` reruns cases
``S .. S+N-1`` (``--keep`` leaves each case's model, input and command line in ``DIR/<seed>``); ``--seconds T`` runs
seeds from ``S`` on until ``T`` seconds are up.
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import platform
import re
import shlex
import signal
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# imported here, not in each case's child: a fork then starts with them loaded
from tessera.sw_driver import cli
from tessera.sw_driver.host_exec import inexact_layers
from tessera.sw_driver.onnx_import import load_model
from tessera.verif.onnx_models import (
    QuantFormat,
    QuantType,
    add_model,
    avgpool_model,
    conv_model,
    gemm_model,
    global_avgpool_model,
    matmul_model,
    maxpool_model,
    qlinear_model,
    quantize_model,
)
from tessera.verif.onnx_multi import (
    depthwise_separable,
    mixed_head,
    pooling_net,
    residual_block,
    sequential_cnn,
    softmax_head,
)
from tessera.verif.onnxruntime_ref import CPU_FLAGS

__all__ = ["BIT_EXACT_CPU", "SEED_MODELS", "TARGETS", "Case", "Failure", "FuzzResult", "make_case", "run_case",
           "fuzz", "seed_model", "main"]

#: Where the golden model is bit-exact against onnxruntime (see ``onnxruntime_ref``): elsewhere a host run may differ
#: from onnxruntime in the last bit, so outputs are compared only here.
BIT_EXACT_CPU = (platform.machine() in ("x86_64", "AMD64") and bool(CPU_FLAGS & {"avx512_vnni", "avx_vnni"})
                 and {"avx2", "fma"} <= CPU_FLAGS)
#: ``host``, ``sim`` (``--rows 4 --cols 4``: small, so its simulator builds once and is cached), or ``mixed``: each
#: case on the host, one in ``SIM_SHARE`` on the simulator.
TARGETS = ("host", "sim", "mixed")
SIM_SHARE = 10
SIM_ARGS = ("--rows", "4", "--cols", "4")
#: Per-case time limits (s): generous, as the machine is shared; a case still running then is a hang.
TIMEOUT = {"host": 60.0, "sim": 180.0}
#: Progress a run prints the first time it builds a simulator: not part of a case's message.
_BUILDING = "building the simulator for "
#: An input bigger than this (elements) is not written: a mutated shape that asks for one gets the seed's shape.
_MAX_INPUT_ELEMENTS = 1 << 20


# -- seed models --------------------------------------------------------------------------------------------------

def _qlinear_conv(rng):
    w = rng.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8)
    return qlinear_model(rng, w, np.uint8(0), np.float32(0.01), (1, 3, 6, 6))


def _qlinear_matmul(rng):
    w = rng.integers(-128, 128, (8, 5)).astype(np.int8)
    return qlinear_model(rng, w, np.int8(0), np.float32(0.02), (3, 8))


#: Small float models to quantize, by name; each takes an rng.
_FLOAT_MODELS = {
    "conv": lambda rng: conv_model(rng, batch=1, in_channels=3, out_channels=4, size=(6, 6), kernel=3, stride=1,
                                   pads=(1, 1, 1, 1), relu=True),
    "conv_stride": lambda rng: conv_model(rng, batch=2, in_channels=4, out_channels=3, size=(7, 5), kernel=2,
                                          stride=2, pads=(0, 1, 1, 0)),
    "gemm": lambda rng: gemm_model(rng, m=2, k=8, n=5, trans_b=True),
    "matmul": lambda rng: matmul_model(rng, m=3, k=8, n=5),
    "add": lambda rng: add_model((1, 4, 3, 3)),
    "maxpool": lambda rng: maxpool_model(rng, (1, 4, 6, 6), kernel=2, stride=2, pads=(0, 0, 0, 0)),
    "avgpool": lambda rng: avgpool_model(rng, (1, 4, 6, 6), kernel=3, stride=1, pads=(1, 1, 1, 1)),
    "global_avgpool": lambda rng: global_avgpool_model(rng, (1, 4, 5, 5)),
    "sequential_cnn": lambda rng: sequential_cnn(rng, size=6, width=3, classes=4),
    "residual_block": lambda rng: residual_block(rng, channels=3, size=5, tail=True),
    "mixed_head": lambda rng: mixed_head(rng, size=4, classes=3),
    "softmax_head": lambda rng: softmax_head(rng),
    "depthwise_separable": lambda rng: depthwise_separable(rng, channels=3, size=5, out_channels=4),
    "pooling_net": lambda rng: pooling_net(rng, channels=3, size=7),
}
_FORMATS = {"qop": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}
_ACTIVATIONS = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
#: Every seed model's key: ``name/format/activation`` for the quantized ones, then the hand-made QLinear ones.
SEED_MODELS = tuple(f"{name}/{fmt}/{act}" for name in _FLOAT_MODELS for fmt in _FORMATS for act in _ACTIVATIONS) + (
    "qlinear_conv", "qlinear_matmul")


@functools.cache
def _seed_bytes(key):
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key == "qlinear_conv":
        return _qlinear_conv(rng).SerializeToString()
    if key == "qlinear_matmul":
        return _qlinear_matmul(rng).SerializeToString()
    name, fmt, act = key.split("/")
    with tempfile.TemporaryDirectory() as folder:
        logging.disable(logging.WARNING)    # the quantizer's advice to pre-process the model: not ours to act on
        try:
            model = quantize_model(_FLOAT_MODELS[name](rng), Path(folder), rng, quant_format=_FORMATS[fmt],
                                   per_channel=bool(rng.integers(2)), activation_type=_ACTIVATIONS[act])
        finally:
            logging.disable(logging.NOTSET)
    return model.SerializeToString()


def seed_model(key):
    """A fresh copy of seed model ``key`` (one of :data:`SEED_MODELS`), quantized once per process."""
    return onnx.load_model_from_string(_seed_bytes(key))


# -- model mutators: each changes ``model`` in place and says what it did, or returns None if it does not apply ----

def _pick(rng, items):
    items = list(items)
    return items[int(rng.integers(len(items)))] if items else None


def _node_label(model, node):
    return f"node {node.name or list(model.graph.node).index(node)!r} ({node.op_type})"


_ATTRIBUTE_NAMES = ("kernel_shape", "strides", "pads", "dilations", "group", "axis", "transB", "alpha", "auto_pad",
                    "ceil_mode", "count_include_pad", "channels_last", "bogus")


def _random_attribute_value(rng):
    return _pick(rng, [int(rng.integers(-3, 5)), [int(v) for v in rng.integers(-2, 5, int(rng.integers(0, 5)))],
                       float(_pick(rng, [np.nan, np.inf, -1.0, 0.0, 0.5])), "SAME_UPPER", b"\xff\xfe",
                       2 ** 40, [0, 0]])


def _attribute(name, value):
    # an empty list has no element to tell its type by: make it INTS
    return helper.make_attribute(name, value, attr_type=onnx.AttributeProto.INTS if value == [] else None)


def _corrupt_ints(rng, values):
    values = list(values)
    how = _pick(rng, ["negate", "zero", "huge", "append", "drop", "empty"] if values else ["append", "empty"])
    if how in ("negate", "zero", "huge"):
        i = int(rng.integers(len(values)))
        values[i] = {"negate": -abs(values[i]) - 1, "zero": 0, "huge": 2 ** 31}[how]
    elif how == "append":
        values.append(int(rng.integers(-1, 4)))
    elif how == "drop":
        values.pop()
    else:
        values = []
    return how, values


def mutate_attribute(rng, model):
    """An attribute of a node gets a wrong value, a wrong type, is removed, or a node gets one it does not take."""
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes or rng.random() < 0.2:
        node = _pick(rng, model.graph.node)
        if node is None:
            return None
        name, value = _pick(rng, _ATTRIBUTE_NAMES), _random_attribute_value(rng)
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend([*kept, _attribute(name, value)])
        return f"{_node_label(model, node)}: attribute {name} set to {value!r}"
    node = _pick(rng, nodes)
    index = int(rng.integers(len(node.attribute)))
    attr = node.attribute[index]
    how = _pick(rng, ["value", "value", "type", "remove"])
    if how == "remove" or attr.type not in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS,
                                            onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING):
        del node.attribute[index]
        return f"{_node_label(model, node)}: attribute {attr.name} removed"
    if how == "type":
        value = _random_attribute_value(rng)
        node.attribute[index].CopyFrom(_attribute(attr.name, value))
        return f"{_node_label(model, node)}: attribute {attr.name} retyped to {value!r}"
    if attr.type == onnx.AttributeProto.INTS:
        what, values = _corrupt_ints(rng, attr.ints)
        del attr.ints[:]
        attr.ints.extend(values)
        return f"{_node_label(model, node)}: attribute {attr.name} {what} -> {values}"
    if attr.type == onnx.AttributeProto.INT:
        attr.i = int(_pick(rng, [-1, 0, 2, 7, 2 ** 31, -(2 ** 40)]))
        return f"{_node_label(model, node)}: attribute {attr.name} = {attr.i}"
    if attr.type == onnx.AttributeProto.FLOAT:
        attr.f = float(_pick(rng, [np.nan, np.inf, -np.inf, -1.0, 0.0, 1e30]))
        return f"{_node_label(model, node)}: attribute {attr.name} = {attr.f}"
    attr.s = _pick(rng, [b"", b"bogus", b"VALID", b"\xff"])
    return f"{_node_label(model, node)}: attribute {attr.name} = {attr.s!r}"


def _initializer(rng, model, kinds=None):
    """An initializer and its array, preferring ``kinds`` (numpy dtype kinds) if given."""
    inits = list(model.graph.initializer)
    if kinds:
        inits = [i for i in inits if helper.tensor_dtype_to_np_dtype(i.data_type).kind in kinds] or inits
    init = _pick(rng, inits)
    if init is None:
        return None, None
    try:
        return init, numpy_helper.to_array(init)
    except Exception:  # noqa: BLE001 - an initializer an earlier mutation damaged: leave it be
        return None, None


def _replace(init, array):
    init.CopyFrom(numpy_helper.from_array(np.asarray(array), init.name))


def mutate_initializer_value(rng, model):
    """Scales 0, NaN, infinite, negative or denormal; zero points at their range's end or beyond it (as int32);
    weights and biases random or extreme."""
    init, array = _initializer(rng, model)
    if init is None:
        return None
    flat = array.reshape(-1).copy()
    if flat.size == 0:
        return None
    i = int(rng.integers(flat.size))
    if array.dtype.kind == "f":
        flat[i] = _pick(rng, [0.0, np.nan, np.inf, -np.inf, -abs(float(flat[i])) - 1e-3, 1e-45, 1e30])
        what = f"[{i}] = {flat[i]}"
    elif array.dtype.kind in "iu" and rng.random() < 0.3 and array.dtype.itemsize < 4:
        flat = flat.astype(np.int32)
        flat[i] = _pick(rng, [300, -200, 256, -129])
        what = f"as int32, [{i}] = {flat[i]}"
    elif array.dtype.kind in "iu":
        info = np.iinfo(array.dtype)
        if rng.random() < 0.5:
            flat[i] = _pick(rng, [info.min, info.max, 0])
            what = f"[{i}] = {flat[i]}"
        else:
            flat = rng.integers(info.min, int(info.max) + 1, flat.size, dtype=np.int64).astype(array.dtype)
            what = "random values"
    else:
        return None
    _replace(init, flat.reshape(array.shape))
    return f"initializer {init.name!r} ({array.dtype} {list(array.shape)}): {what}"


_DTYPES = ("float32", "float64", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")


def mutate_initializer_dtype(rng, model):
    """An initializer stored as another element type (values cast, wrapping)."""
    init, array = _initializer(rng, model)
    if init is None:
        return None
    dtype = _pick(rng, [d for d in _DTYPES if d != array.dtype.name])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _replace(init, array.astype(dtype))
    return f"initializer {init.name!r}: {array.dtype} -> {dtype}"


def mutate_initializer_shape(rng, model):
    """An initializer reshaped (flattened, a dimension added, transposed), cut short, doubled, or its ``dims``
    changed without its data."""
    init, array = _initializer(rng, model)
    if init is None:
        return None
    flat = array.reshape(-1)
    options = {"leading dim": lambda: array[None], "doubled": lambda: np.tile(flat, 2)}
    # only the reshapes that change something
    if array.ndim != 1:
        options["flattened"] = lambda: flat
    if array.ndim:
        options["scalar"] = lambda: flat[:1].reshape(())
    if array.ndim > 1:
        options["transposed"] = lambda: array.T
    if flat.size > 1:
        options["one element short"] = lambda: flat[:-1]
    how = _pick(rng, [*options, "dims only"])
    if how == "dims only":      # the data no longer matches the shape the proto states
        if not init.dims:
            init.dims.append(2)
        else:
            j = int(rng.integers(len(init.dims)))
            init.dims[j] = int(_pick(rng, [0, init.dims[j] + 1, -1, 2 ** 20]))
        return f"initializer {init.name!r}: dims -> {list(init.dims)} (data unchanged)"
    new = options[how]()
    _replace(init, new)
    return f"initializer {init.name!r}: {how}, {list(array.shape)} -> {list(new.shape)}"


def mutate_initializer_removed(rng, model):
    """An initializer removed, so the tensor it was dangles."""
    init = _pick(rng, model.graph.initializer)
    if init is None:
        return None
    model.graph.initializer.remove(init)
    return f"initializer {init.name!r} removed"


_ELEM_TYPES = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT32, TensorProto.INT64, TensorProto.FLOAT16,
               TensorProto.DOUBLE, TensorProto.BOOL, TensorProto.FLOAT, TensorProto.FLOAT8E4M3FN, 0, 999)


def mutate_value_info(rng, model):
    """A graph input, output or value_info entry with another element type, a dimension changed, added or dropped,
    made symbolic or unknown, or no shape at all."""
    constants = {i.name for i in model.graph.initializer}
    infos = [("input", vi) for vi in model.graph.input if vi.name not in constants]
    infos += [("output", vi) for vi in model.graph.output] + [("value_info", vi) for vi in model.graph.value_info]
    infos = [(kind, vi) for kind, vi in infos if vi.type.HasField("tensor_type")]
    kind, vi = _pick(rng, infos) or (None, None)
    if vi is None:
        return None
    tensor = vi.type.tensor_type
    if rng.random() < 0.4:
        before, tensor.elem_type = tensor.elem_type, int(_pick(rng, [t for t in _ELEM_TYPES if t != tensor.elem_type]))
        return f"{kind} {vi.name!r}: element type {before} -> {tensor.elem_type}"
    dims = tensor.shape.dim
    how = _pick(rng, ["size", "size", "add", "drop", "symbolic", "unknown", "no shape"] if len(dims) else
                ["add", "no shape"])
    if how == "no shape":
        tensor.ClearField("shape")
    elif how == "add":
        dims.add().dim_value = int(rng.integers(1, 4))
    elif how == "drop":
        del dims[int(rng.integers(len(dims)))]
    else:
        dim = dims[int(rng.integers(len(dims)))]
        if how == "size":
            dim.dim_value = int(_pick(rng, [0, 1, 2, 3, 5, -1, 2 ** 31]))
        elif how == "symbolic":
            dim.dim_param = "N"
        else:
            dim.Clear()
    return f"{kind} {vi.name!r}: {how} -> {[d.dim_value or d.dim_param or '?' for d in dims]}"


def mutate_node_removed(rng, model):
    """A node removed: its consumers read a tensor nothing makes."""
    node = _pick(rng, model.graph.node)
    if node is None:
        return None
    label = _node_label(model, node)
    model.graph.node.remove(node)
    return f"{label} removed"


def mutate_node_duplicated(rng, model):
    """A node duplicated next to itself, writing the same outputs (twice-defined tensors) or renamed ones."""
    node = _pick(rng, model.graph.node)
    if node is None:
        return None
    index = list(model.graph.node).index(node)
    twin = onnx.NodeProto()
    twin.CopyFrom(node)
    renamed = rng.random() < 0.5
    if renamed:
        twin.name += "_twin"
        for i, name in enumerate(twin.output):
            twin.output[i] = f"{name}_twin"
    model.graph.node.insert(index + 1, twin)
    return f"{_node_label(model, node)} duplicated{' with renamed outputs' if renamed else ''}"


def mutate_edge_renamed(rng, model):
    """A node input, node output or graph output renamed, so that an edge dangles."""
    node = _pick(rng, model.graph.node)
    how = _pick(rng, ["input", "output", "graph output"])
    if how == "graph output" or node is None:
        out = _pick(rng, model.graph.output)
        if out is None:
            return None
        before, out.name = out.name, f"{out.name}_dangling"
        return f"graph output {before!r} renamed {out.name!r}"
    edges = node.input if how == "input" else node.output
    if not edges:
        return None
    i = int(rng.integers(len(edges)))
    before = edges[i]
    edges[i] = _pick(rng, [f"{before}_dangling", "", "x"])
    return f"{_node_label(model, node)}: {how} {i} {before!r} -> {edges[i]!r}"


_OP_TYPES = ("Conv", "MatMul", "Gemm", "Add", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
             "Flatten", "Reshape", "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm",
             "QLinearAdd", "QLinearAveragePool", "QLinearGlobalAveragePool", "ConvInteger", "MatMulInteger",
             "Identity", "Softmax", "Sigmoid", "Mul", "Concat", "NoSuchOp")


def mutate_op_swapped(rng, model):
    """A node given another op type (and perhaps another domain), its inputs and attributes unchanged."""
    node = _pick(rng, model.graph.node)
    if node is None:
        return None
    label = _node_label(model, node)
    node.op_type = _pick(rng, [op for op in _OP_TYPES if op != node.op_type])
    if rng.random() < 0.3:
        node.domain = _pick(rng, ["", "com.microsoft", "ai.bogus"])
    return f"{label} -> {node.op_type} (domain {node.domain!r})"


def mutate_nodes_reordered(rng, model):
    """The nodes out of topological order."""
    nodes = list(model.graph.node)
    if len(nodes) < 2:
        return None
    order = rng.permutation(len(nodes)) if rng.random() < 0.5 else np.arange(len(nodes))[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
    return f"nodes reordered {order.tolist()}"


def mutate_versions(rng, model):
    """The IR version, an opset version, the opset imports or a node's domain changed."""
    how = _pick(rng, ["ir", "opset", "no opsets", "node domain"])
    if how == "ir":
        model.ir_version = int(_pick(rng, [0, 1, 3, 6, 14, 99]))
        return f"ir_version = {model.ir_version}"
    if how == "opset" and model.opset_import:
        opset = _pick(rng, model.opset_import)
        opset.version = int(_pick(rng, [1, 7, 10, 13, 22, 999]))
        return f"opset {opset.domain!r} version = {opset.version}"
    if how == "no opsets":
        del model.opset_import[:]
        return "opset imports removed"
    node = _pick(rng, model.graph.node)
    if node is None:
        return None
    node.domain = _pick(rng, ["com.microsoft", "ai.onnx", "ai.bogus"])
    return f"{_node_label(model, node)}: domain = {node.domain!r}"


#: Model mutators with their weights.
MODEL_MUTATORS = (
    (mutate_attribute, 4), (mutate_initializer_value, 4), (mutate_initializer_dtype, 2),
    (mutate_initializer_shape, 2), (mutate_initializer_removed, 1), (mutate_value_info, 3),
    (mutate_node_removed, 1), (mutate_node_duplicated, 1), (mutate_edge_renamed, 1), (mutate_op_swapped, 2),
    (mutate_nodes_reordered, 1), (mutate_versions, 1),
)


def mutate_bytes(rng, data):
    """The serialized model truncated, or some of its bytes flipped."""
    if rng.random() < 0.4:
        cut = int(rng.integers(len(data)))
        return data[:cut], f"serialized model truncated to {cut} of {len(data)} bytes"
    data = bytearray(data)
    where = sorted(int(i) for i in rng.integers(len(data), size=int(rng.integers(1, 9))))
    for i in where:
        data[i] ^= int(rng.integers(1, 256))
    return bytes(data), f"serialized bytes flipped at {where}"


# -- inputs -----------------------------------------------------------------------------------------------------

def _graph_inputs(model):
    """``[(name, dtype, shape)]`` of a model's graph inputs, a feed onnxruntime would take if the model is sound."""
    constants = {i.name for i in model.graph.initializer}
    found = []
    for vi in model.graph.input:
        if vi.name in constants:
            continue
        tensor = vi.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except Exception:  # noqa: BLE001 - an element type numpy has no dtype for: give float32
            dtype = np.dtype(np.float32)
        shape = None
        if tensor.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim)
        found.append((vi.name, dtype, shape))
    return found


def _random_array(rng, dtype, shape):
    if dtype.kind == "f":
        return rng.normal(0.0, 1.0, shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000) + 1, shape).astype(dtype)
    return np.zeros(shape, np.float32)


def make_inputs(rng, model, fallback):
    """``{name: array}`` fitting ``model``'s graph inputs; ``fallback``'s shapes where ``model``'s are unusable."""
    fallback_shapes = {name: shape for name, _, shape in _graph_inputs(fallback)}
    feeds = {}
    for name, dtype, shape in _graph_inputs(model):
        if shape is None or any(s < 0 for s in shape) or np.prod(shape, dtype=np.float64) > _MAX_INPUT_ELEMENTS:
            shape = fallback_shapes.get(name) or (1, 3, 6, 6)
        feeds[name] = _random_array(rng, dtype, shape)
    return feeds


def mutate_inputs(rng, feeds):
    """One input given another type, shape, NaN or infinities, no elements or an extra dimension; or the feed's
    names or layout wrong. Returns ``(feeds, layout, description)``, ``layout`` ``"npy"``, ``"npz"`` or None
    (the right one)."""
    if not feeds:
        return feeds, None, None
    feeds = dict(feeds)
    name = _pick(rng, feeds)
    x = feeds[name]
    how = _pick(rng, ["dtype", "dtype", "nan", "inf", "empty", "extra dim", "drop dim", "size", "scalar",
                      "huge", "wrong name", "layout"])
    if how == "dtype":
        dtype = _pick(rng, [d for d in _DTYPES if d != x.dtype.name])
        with np.errstate(all="ignore"):
            feeds[name] = x.astype(dtype)
    elif how in ("nan", "inf", "huge"):
        if x.dtype.kind != "f" or x.size == 0:
            return feeds, None, None
        x = x.copy()
        x.reshape(-1)[int(rng.integers(x.size))] = {"nan": np.nan, "inf": -np.inf, "huge": 3e38}[how]
        feeds[name] = x
    elif how == "empty":
        feeds[name] = x[:0] if x.ndim else np.zeros((0,), x.dtype)
    elif how == "extra dim":
        feeds[name] = x[None]
    elif how == "drop dim":
        feeds[name] = np.zeros(x.shape[1:], x.dtype) if x.ndim and not len(x) else x[0] if x.ndim else x
    elif how == "size":
        if x.ndim == 0:
            return feeds, None, None
        feeds[name] = np.concatenate([x, x], axis=int(rng.integers(x.ndim)))
    elif how == "scalar":
        feeds[name] = x.reshape(-1)[:1].reshape(()) if x.size else np.zeros((), x.dtype)
    elif how == "wrong name":
        feeds[f"{name}_renamed"] = feeds.pop(name)
        return feeds, "npz", f"input {name!r} given as {name}_renamed"
    else:
        layout = "npz" if len(feeds) == 1 else "npy"
        return feeds, layout, f"inputs given as one .{layout}"
    return feeds, None, f"input {name!r}: {how} -> {feeds[name].dtype} {list(feeds[name].shape)}"


# -- cases ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    """One fuzz case: the model's bytes, the feed, how it was written and what was mutated."""

    seed: int
    target: str
    seed_model: str
    model: bytes
    feeds: dict
    layout: str
    mutations: tuple

    def write(self, folder):
        """Write the model and input into ``folder``; the ``tessera`` command line that runs them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model, y = folder / "model.onnx", folder / "y.npz"
        model.write_bytes(self.model)
        if self.layout == "npz":
            x = folder / "x.npz"
            # a damaged model can name its inputs in bytes that are not text: savez takes str keys only
            np.savez(x, **{k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v
                           for k, v in self.feeds.items()})
        else:
            x = folder / "x.npy"
            np.save(x, next(iter(self.feeds.values())) if self.feeds else np.zeros((1,), np.float32))
        argv = ["run", str(model), "--input", str(x), "--output", str(y), "--target", self.target]
        if self.target == "sim":
            argv += [*SIM_ARGS, "--check"]
        return argv


def make_case(seed, target="host"):
    """Case ``seed``: everything is drawn from ``seed``, so the same seed (and ``target``) gives the same case."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    rng = np.random.default_rng(seed)
    on_sim = rng.integers(SIM_SHARE) == 0      # drawn whatever the target, so a mixed run's case reruns as itself
    target = {"mixed": "sim" if on_sim else "host"}.get(target, target)
    key = _pick(rng, SEED_MODELS)
    original = seed_model(key)
    model = seed_model(key)
    mutations = []
    # some cases corrupt only the input; most corrupt the model once, as one fault a model can reach the importer
    # with passes onnx.checker more often than several
    wanted = int(rng.choice(4, p=[0.15, 0.5, 0.25, 0.1]))
    mutators, weights = zip(*MODEL_MUTATORS, strict=True)
    p = np.asarray(weights, float) / sum(weights)
    for _ in range(8 * wanted):
        if len(mutations) == wanted:
            break
        done = mutators[int(rng.choice(len(mutators), p=p))](rng, model)
        if done:
            mutations.append(done)
    data = model.SerializeToString()
    if rng.random() < 0.1:
        data, done = mutate_bytes(rng, data)
        mutations.append(done)
    try:
        readable = onnx.load_model_from_string(data)
    except Exception:  # noqa: BLE001 - bytes no longer a model: feed what the seed model takes
        readable = original
    feeds = make_inputs(rng, readable, original)
    layout = "npz" if len(feeds) != 1 else "npy"
    if not mutations or rng.random() < 0.3:
        feeds, wrong_layout, done = mutate_inputs(rng, feeds)
        if done:
            mutations.append(done)
            layout = wrong_layout or ("npz" if len(feeds) != 1 else "npy")
    return Case(seed, target, key, data, feeds, layout, tuple(mutations))


# -- running a case ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Failure:
    """A case that was neither run correctly nor refused in one line."""

    seed: int
    target: str
    seed_model: str
    kind: str
    detail: str
    mutations: tuple

    @property
    def signature(self):
        """What tells one bug from another: an exception's type and where it was raised; a warning's text; else the
        kind of failure."""
        where = re.search(r"\((\w+\.py):\d+ in (\w+)\)$", self.detail)
        if self.kind in ("traceback", "fuzzer error") and where:
            return f"{self.kind}: {self.detail.split(':')[0]} in {where.group(1)} {where.group(2)}"
        if self.kind == "noise":
            first = re.sub(r"[/\w.-]*/|:\d+", "", self.detail.split(": ", 1)[-1].split(" | ")[0])   # no paths, lines
            return f"noise: {first[:100]}"
        return self.kind

    def __str__(self):
        return (f"seed {self.seed} ({self.target}, {self.seed_model}): {self.kind}: {self.detail}\n"
                f"    mutations: {'; '.join(self.mutations) or 'none'}\n"
                f"    rerun: python -m tessera.verif.onnx_fuzz --seed {self.seed} --count 1 --target {self.target} "
                f"--keep /tmp/fuzz_repro")


def _python_warning_filters():
    """Python's default warning filters, as ``tessera`` runs with them (pytest turns warnings into errors)."""
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)


def _differences(expected, got):
    """Why ``got`` (``{name: array}``) is not ``expected`` bit for bit (NaN equal to NaN), or None."""
    if sorted(expected) != sorted(got):
        return f"outputs {sorted(got)}, onnxruntime's {sorted(expected)}"
    for name, reference in expected.items():
        y = got[name]
        if reference.dtype != y.dtype or reference.shape != y.shape:
            return (f"output {name!r}: {y.dtype} {list(y.shape)}, onnxruntime's {reference.dtype} "
                    f"{list(reference.shape)}")
        same = reference == y
        if reference.dtype.kind == "f":
            same |= np.isnan(reference) & np.isnan(y)
        if not same.all():
            first = tuple(int(i) for i in np.argwhere(~same)[0])
            return (f"output {name!r}: {int(same.size - same.sum())} of {same.size} elements differ (first at "
                    f"{list(first)}: {y[first]!r}, onnxruntime {reference[first]!r})")
    return None


def _reference(case, argv):
    """In the child, after ``main`` returned 0: ``"equal"``, ``"unreferenced: why"`` or ``"differs: why"``."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(case.model, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        expected = dict(zip(names, session.run(names, case.feeds), strict=True))
    except Exception as error:  # noqa: BLE001 - onnxruntime's exception types are not public
        return f"unreferenced: onnxruntime: {str(error).strip().splitlines()[0][:200] if str(error) else error!r}"
    y = Path(argv[argv.index("--output") + 1])
    with np.load(y) as outputs:
        got = {name: outputs[name] for name in outputs.files}
    why = _differences(expected, got)
    if why is None:
        return "equal"
    inexact = inexact_layers(load_model(case.model))
    return f"differs: {why}" + (f" (layers onnxruntime runs in float: {', '.join(inexact)})" if inexact else "")


def _child(case, argv, folder, compare):
    """Run ``main(argv)`` with fds 1 and 2 in files (onnxruntime's C++ log included); write ``result.json``."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        handle = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = open(1, "w", closefd=False, buffering=1)   # noqa: SIM115 - the process ends with this case
    sys.stderr = open(2, "w", closefd=False, buffering=1)   # noqa: SIM115
    _python_warning_filters()
    result = {"status": None, "traceback": "", "reference": None}
    try:
        result["status"] = cli.main(argv)
    except BaseException:  # noqa: BLE001 - an exception out of main is the finding
        result["traceback"] = traceback.format_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    if result["status"] == 0 and compare:
        try:
            result["reference"] = _reference(case, argv)
        except BaseException:  # noqa: BLE001 - the comparison itself failing is reported, not hidden
            result["reference"] = f"comparison failed: {traceback.format_exc().strip().splitlines()[-1]}"
    (folder / "result.json").write_text(json.dumps(result))


def _wait(pid, seconds):
    """The child's wait status, or None if it is still running after ``seconds`` (then it and its group are
    killed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)     # its own group: the simulator it started goes too
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _where(trace):
    """A traceback's exception and the frame that raised it: ``ZeroDivisionError: ... (layers.py:137 in f)``."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', trace)
    where = f" ({Path(frames[-1][0]).name}:{frames[-1][1]} in {frames[-1][2]})" if frames else ""
    lines = trace.strip().splitlines()
    # the exception's message: from the first unindented line after the last frame (it may span lines)
    last = max((i for i, line in enumerate(lines) if line.startswith("  File ")), default=-1)
    start = next((i for i in range(last + 1, len(lines)) if not lines[i].startswith(" ")), len(lines) - 1)
    return " ".join(line.strip() for line in lines[start:]) + where


def run_case(case, folder, *, compare=BIT_EXACT_CPU, timeout=None):
    """Run ``case`` in a child process with its files in ``folder``; ``("ran" | "refused" | "unreferenced", None)``
    or ``("failed", Failure)``. ``unreferenced``: ran, but onnxruntime cannot run it to compare."""
    folder = Path(folder)
    argv = case.write(folder)
    (folder / "command.txt").write_text(shlex.join(["tessera", *argv]) + "\n")
    (folder / "mutations.txt").write_text(f"{case.seed_model}\n" + "".join(f"{m}\n" for m in case.mutations))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:    # the child: never returns into the caller (pytest's or the fuzzer's loop)
        code = 0
        try:
            os.setpgid(0, 0)
            _child(case, argv, folder, compare)
        except BaseException:  # noqa: BLE001 - whatever happens, the child must end here; the fuzzer's own fault
            code = 70
            with contextlib.suppress(BaseException):
                (folder / "child_error.txt").write_text(traceback.format_exc())
        finally:
            os._exit(code)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    limit = timeout or TIMEOUT[case.target]
    status = _wait(pid, limit)

    def failed(kind, detail):
        return "failed", Failure(case.seed, case.target, case.seed_model, kind, detail, case.mutations)

    def lines(name):
        path = folder / name
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    stdout = lines("stdout")
    stderr = [line for line in lines("stderr") if line.strip() and not line.startswith(_BUILDING)]
    if status is None:
        return failed("hang", f"no answer in {limit:.0f} s; last stdout: {stdout[-1:]}")
    result_path = folder / "result.json"
    if not result_path.exists():
        signal_number = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        how = f"killed by signal {signal_number}" if signal_number else f"exit {os.WEXITSTATUS(status)}"
        own = folder / "child_error.txt"
        if own.exists():    # the child's own code failed, not tessera's: say where
            return failed("fuzzer error", _where(own.read_text()))
        return failed("crash", f"the process died ({how}); stderr: {' | '.join(stderr[-5:])}")
    result = json.loads(result_path.read_text())
    if result["traceback"]:
        return failed("traceback", _where(result["traceback"]))
    if any("Traceback (most recent call last)" in line for line in (*stdout, *stderr)):
        return failed("traceback", " | ".join(stderr[-3:]))
    if result["status"] != 0:
        if len(stderr) == 1 and stderr[0].startswith("tessera: "):
            return "refused", None
        check = [line for line in stdout if line.startswith("check:")]
        if check and not stderr:    # --check found the outputs differ (it says so on stdout, as designed)
            return failed("wrong output", check[0])
        if not stderr:
            return failed("silent", f"exit {result['status']} with nothing on stderr")
        return failed("message", f"exit {result['status']} with {len(stderr)} stderr lines: {' | '.join(stderr[:4])}")
    noise = [line for line in stderr if not line.startswith("tessera: warning: ")]
    if noise or len(stderr) > 1:
        return failed("noise", f"exit 0 with {len(stderr)} stderr lines: {' | '.join(stderr[:4])}")
    reference = result["reference"]
    if reference is None or reference == "equal":
        return "ran", None
    if reference.startswith("unreferenced"):
        return "unreferenced", None
    return failed("wrong output", reference)


# -- the fuzzer -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class FuzzResult:
    """Counts per outcome and the failures, each with its seed."""

    cases: int = 0
    ran: int = 0
    unreferenced: int = 0
    refused: int = 0
    failures: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def summary(self):
        return (f"{self.cases} cases in {self.seconds:.0f} s: ran {self.ran + self.unreferenced} ({self.unreferenced} "
                f"onnxruntime cannot run, so not compared), refused {self.refused}, failed {len(self.failures)}")


def _warm_simulator():
    """Build (or find cached) the simulator ``SIM_ARGS`` names before any case's time limit starts."""
    from tessera.gen.config import AcceleratorConfig
    from tessera.sw_driver.runtime import open_sim_device
    open_sim_device(AcceleratorConfig().replace(rows=int(SIM_ARGS[1]), cols=int(SIM_ARGS[3]))).close()


def fuzz(seed, count, target="host", *, seconds=None, keep=None, compare=BIT_EXACT_CPU, timeout=None,
         progress=None):
    """Run cases ``seed .. seed+count-1`` (or, with ``seconds``, from ``seed`` on until the time is up).

    Parameters
    ----------
    target : str
        ``host``, ``sim`` or ``mixed`` (one case in ``SIM_SHARE`` on the simulator).
    keep : path, optional
        Leave each case's files (model, input, command line, stdout, stderr) in ``keep / <seed>``.
    compare : bool
        Compare outputs with onnxruntime's (by default where the golden model is bit-exact against it).
    progress : callable, optional
        Called with ``(case, outcome, failure)`` after each case.
    """
    result = FuzzResult()
    start = time.monotonic()
    warm = False
    with tempfile.TemporaryDirectory(prefix="tessera_fuzz_") as scratch:
        root = Path(keep) if keep else Path(scratch)
        index = 0
        while (index < count) if seconds is None else (time.monotonic() - start < seconds):
            try:
                case = make_case(seed + index, target)
            except Exception:  # noqa: BLE001 - a fault of the fuzzer's own: reported, and the soak goes on
                result.cases += 1
                result.failures.append(Failure(seed + index, target, "?", "fuzzer error",
                                               _where(traceback.format_exc()), ()))
                index += 1
                continue
            if case.target == "sim" and not warm:
                _warm_simulator()
                warm = True
            outcome, failure = run_case(case, root / str(case.seed), compare=compare, timeout=timeout)
            result.cases += 1
            if failure:
                result.failures.append(failure)
            else:
                setattr(result, outcome, getattr(result, outcome) + 1)
            if progress:
                progress(case, outcome, failure)
            index += 1
    result.seconds = time.monotonic() - start
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="first case's seed (default 0)")
    parser.add_argument("--count", type=int, default=50, help="cases to run (default 50)")
    parser.add_argument("--seconds", type=float, help="run cases until this many seconds are up (not --count)")
    parser.add_argument("--target", choices=TARGETS, default="host", help="where cases run (default host)")
    parser.add_argument("--keep", metavar="DIR", help="leave each case's files in DIR/<seed>")
    parser.add_argument("--timeout", type=float, help="per-case time limit in s (default: 60 host, 180 sim)")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    args = parser.parse_args(argv)

    def progress(case, outcome, failure):
        if args.verbose or failure:
            print(f"seed {case.seed} {case.target} {case.seed_model}: {outcome}"
                  f"{f' ({failure.kind}: {failure.detail})' if failure else ''}", flush=True)

    result = fuzz(args.seed, args.count, args.target, seconds=args.seconds, keep=args.keep, timeout=args.timeout,
                  progress=progress)
    print(result.summary())
    if not BIT_EXACT_CPU:
        print("outputs not compared with onnxruntime: this CPU lacks what the golden model's bit-exactness needs")
    for failure in result.failures:
        print(failure)
    if result.failures:
        distinct = {}
        for failure in result.failures:
            distinct.setdefault(failure.signature, []).append(failure.seed)
        print(f"{len(distinct)} distinct failures:")
        for signature, seeds in distinct.items():
            print(f"  {signature}: seeds {' '.join(map(str, seeds))}")
        print(f"failing seeds: {' '.join(str(f.seed) for f in result.failures)}")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
