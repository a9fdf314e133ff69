"""Import a statically quantized ONNX model into the layer IR of :mod:`tessera.sw_driver.layers`.

``load_model`` accepts both formats ``onnxruntime.quantization.quantize_static`` writes:

* **QOperator**: ``QuantizeLinear`` of each float input, then QLinearConv, QLinearMatMul, QGemm
  (com.microsoft), QLinearAdd, QLinearAveragePool and QLinearGlobalAveragePool (com.microsoft), and
  MaxPool, Flatten and Reshape directly on the quantized tensors, then ``DequantizeLinear`` of each output.
* **QDQ**: float ops between ``DequantizeLinear`` (of activations and of int8/int32 initializers) and one
  ``QuantizeLinear``, the groups onnxruntime fuses: DQ -> Conv | MatMul | Gemm | Add | AveragePool |
  GlobalAveragePool | MaxPool | Flatten | Reshape -> Q, with a Relu or Clip allowed between the op and its Q.

Per-tensor and per-output-channel int8 or uint8 weights with any zero point, uint8 and int8 activations.

Everything else runs on onnxruntime
-----------------------------------
A node the importer cannot map to a Tessera layer (Softmax, Concat, Resize, Sigmoid, LSTM, a float op, a pattern
outside the ones above) goes into a :class:`~tessera.sw_driver.layers.HostPartition`: a subgraph cut from the
model with the DequantizeLinear nodes that feed it and the QuantizeLinear nodes that follow it, which
onnxruntime runs on the host. Neighbouring such nodes share one partition. Partitions and Tessera's layers
exchange the integer tensors (or the model's float inputs and outputs), and onnxruntime fuses the same QDQ groups
in the subgraph as in the whole model, so the model stays bit-exact with onnxruntime. Each partition says why it
is not Tessera's (one short reason for the run table). :class:`ModelError` is left for models that cannot be
read, fail ``onnx.checker``, or hold tensor types outside ``ACCEPTED_TYPES`` (float16, float8, int4, ...: the
message names the type).

Relu and Clip
-------------
The quantizer removes a Relu/Clip that follows a quantized op and calibrates that op's output to the
Relu's range, so the clipping falls out of saturation. Where one survives, onnxruntime computes
``Q(clip(DQ(x)))`` (every step exact), removing the clip when the Q's range already does it; quantization
is monotonic, so that equals clamping the quantized value, which is what the IR records:

* op -> Relu/Clip -> Q: dropped when the Q's range makes it redundant (onnxruntime fuses it into the op's
  group the same way), else the op is followed by a :class:`~tessera.sw_driver.layers.Clip` on its quantized output;
* DQ -> Relu/Clip -> Q (the quantizer leaves this where the Relu's input also feeds another node): a ``Clip``
  layer, a requantisation to the Q's parameters plus the clamp;
* Relu/Clip on a float graph input -> Q: a ``Quantize`` (plus a ``Clip`` if the range does not do it).

A DQ -> MaxPool/Flatten/Reshape -> Q whose Q has other parameters than its DQ (the quantizer does this for a
MaxPool followed by a Relu) becomes the shape op followed by a requantising ``Clip`` with infinite bounds:
max and reshape commute with the monotonic requantisation, so this is exact.

What onnxruntime really runs for int8 QDQ graphs (x86, onnxruntime 1.31)
-----------------------------------------------------------------------
On x86 onnxruntime fuses a QDQ Conv or MatMul only for uint8 activations (``QDQIsInt8Allowed()`` is true on
ARM only). It first rewrites each int8 Q -> DQ pair to uint8 (both zero points + 128, exact), but only a pair
whose Q feeds exactly one DQ that feeds one node, and is not a graph output (it gives every consumer of a
DQ its own copy first). So an int8 tensor that feeds two nodes (a residual branch point) or is itself a graph
output stays int8, and then:

* a Conv or MatMul reading or writing it runs as DQ -> float op -> Q;
* a Gemm runs in float if its input and output no longer share a type (QGemm itself takes int8);
* an Add, AveragePool or GlobalAveragePool runs in float if its inputs and output no longer share a type;
* a MaxPool, Flatten or Reshape then runs in float too, which is exact.

The importer predicts this and lists those layers, with the reason, in
``QuantizedGraph.float_in_onnxruntime``; ``tests/test_onnx_import.py`` checks the prediction against the
graph onnxruntime really optimizes. A float Conv/Gemm/pool sums float products in MLAS's order, so its result
can differ from the integer kernel in the last bit (``host_exec.inexact_layers``).

The fused groups whose tensors were all rewritten run on uint8 copies. The integer kernels do not care, but
QLinearAdd and QLinearAveragePool compute in float, and with every zero point 128 higher they round some
values differently from the same kernel on the int8 tensors; ``QuantizedGraph.uint8_in_onnxruntime`` lists
these layers so that :mod:`tessera.sw_driver.host_exec` can follow.
"""

from collections import defaultdict
from copy import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from tessera.sw_driver import golden

from .layers import (
    Add,
    AveragePool,
    Clip,
    Conv,
    ConvInteger,
    Dequantize,
    Flatten,
    Gemm,
    GlobalAveragePool,
    GraphIO,
    HostPartition,
    MatMulInteger,
    MaxPool,
    Quantize,
    QuantizedGraph,
    QuantParams,
    Reshape,
)

__all__ = ["ModelError", "SUPPORTED", "load_model"]

MS_DOMAIN = "com.microsoft"
QDQ_OPS = ("Conv", "MatMul", "Gemm", "Add", "AveragePool", "GlobalAveragePool", "MaxPool", "Flatten", "Reshape",
           "Relu", "Clip")
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearAveragePool",
                 "QLinearGlobalAveragePool", "MaxPool", "Flatten", "Reshape")
SUPPORTED = ("QOperator ops QuantizeLinear, DequantizeLinear, " + ", ".join(QOPERATOR_OPS)
             + "; QDQ groups DequantizeLinear -> " + " | ".join(QDQ_OPS) + " -> QuantizeLinear")
_WEIGHT_TYPES = (np.int8, np.uint8)
_TENSOR_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT8: np.int8,
                 onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT32: np.int32,
                 onnx.TensorProto.INT64: np.int64, onnx.TensorProto.BOOL: np.bool_}


class ModelError(ValueError):
    """The model is malformed or uses a type Tessera does not take; the message names the node or tensor."""


class _NotTessera(ModelError):
    """A node Tessera has no layer for, as it is used here: onnxruntime runs it on the host instead.

    ``detail`` is the reason without the node's label, for the run table."""

    def __init__(self, message, detail):
        super().__init__(message)
        self.detail = detail


class _Rehearsal(Exception):
    """Some of Tessera's layers fail on zeros: ``failed`` is ``{node name: why}``, for the importer's next round."""

    def __init__(self, failed):
        super().__init__(failed)
        self.failed = failed


def _one_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if isinstance(error, (KeyError, IndexError, ZeroDivisionError)) else text


#: Element types a model's tensors may have: the quantized world Tessera computes in, and the int64/bool of shapes
#: and indices that host partitions pass along.
ACCEPTED_TYPES = ("FLOAT", "INT8", "UINT8", "INT32", "INT64", "BOOL")


@dataclass(frozen=True)
class _QConst:
    """A quantized initializer read through a DequantizeLinear (a weight or a bias)."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


def load_model(model):
    """Import a quantized ONNX model.

    Parameters
    ----------
    model : str, pathlib.Path, bytes or onnx.ModelProto
        A file, its contents, or a loaded model, as ``quantize_static`` writes it (QOperator or QDQ).

    Returns
    -------
    QuantizedGraph

    Raises
    ------
    ModelError
        The model cannot be parsed, fails ``onnx.checker``, reads a tensor nothing defines, or uses an op or
        pattern outside ``SUPPORTED``; the message names the node (name and op type; ``OpType_index`` for an
        unnamed node).
    OSError
        The file cannot be read.
    """
    proto = _read(model)
    _check(proto)
    proto = onnx.shape_inference.infer_shapes(_without_dead_nodes(proto))
    _check_types(proto)
    forced = {}
    for _ in range(len(proto.graph.node) + 1):     # each round sends at least one more node to onnxruntime
        try:
            return _Importer(proto, forced).build()
        except _Rehearsal as rehearsal:
            forced.update(rehearsal.failed)
    raise AssertionError("unreachable: every node is onnxruntime's by now")


# ------------------------------------------------------------------------------------------------------------
# reading and checking


def _read(model):
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        source, data = "the given bytes", model
    else:
        source = str(model)
        data = Path(model).read_bytes()
    try:
        return onnx.load_model_from_string(data)
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise ModelError(f"{source} is not a readable ONNX model (truncated or corrupt?): {error}") from error


def _without_dead_nodes(model):
    """``model`` without the nodes whose outputs nothing reads (no node, no graph output), as onnxruntime drops them
    when it loads a model: a dead reader of a tensor would otherwise change how Tessera cuts and fuses the graph
    (a Q -> DQ group whose output seems to feed two nodes), and so its answer, but not onnxruntime's."""
    graph = model.graph
    nodes = list(graph.node)
    while True:
        read = {name for node in nodes for name in node.input} | {output.name for output in graph.output}
        live = [node for node in nodes if any(name in read for name in node.output if name)]
        if len(live) == len(nodes):
            break
        nodes = live
    if len(nodes) == len(graph.node):
        return model
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    del pruned.graph.node[:]
    pruned.graph.node.extend(nodes)
    return pruned


def _label(node, index):
    return f"node {_text(node.name) or f'{_text(node.op_type)}_{index}'!r} ({_text(node.op_type)})"


def _check(model):
    """Name the node behind a malformed model: undefined inputs first, then ``onnx.checker``."""
    graph = model.graph
    defined = {vi.name for vi in graph.input} | {init.name for init in graph.initializer}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in defined:
                raise ModelError(f"{_label(node, index)}: input {name!r} is not a graph input, an initializer or "
                                 f"the output of an earlier node (a missing initializer?)")
        defined.update(node.output)
    try:
        onnx.checker.check_model(model)
    except UnicodeDecodeError as error:
        raise ModelError(f"model has text that is not UTF-8 (damaged?): {error}") from error
    except onnx.checker.ValidationError as error:
        context = onnx.checker.C.CheckerContext()
        context.ir_version = model.ir_version
        context.opset_imports = {opset.domain: opset.version for opset in model.opset_import}
        for index, node in enumerate(graph.node):
            try:
                onnx.checker.check_node(node, context)
            except onnx.checker.ValidationError as node_error:
                raise ModelError(f"{_label(node, index)} fails onnx.checker: {node_error}") from error
            except UnicodeDecodeError as text_error:    # the checker's message quotes the damaged text
                raise ModelError(f"{_label(node, index)} has text that is not UTF-8 (damaged?): "
                                 f"{text_error}") from error
        raise ModelError(f"model fails onnx.checker (every node passes on its own, so the graph's inputs, "
                         f"outputs or metadata): {error}") from error


def _typed_tensors(model):
    """``(what, name, element type)`` of every tensor whose type the model states, constants included."""
    graph = model.graph
    for what, infos in (("graph input", graph.input), ("graph output", graph.output), ("tensor", graph.value_info)):
        for info in infos:
            if info.type.HasField("tensor_type"):
                yield what, info.name, info.type.tensor_type.elem_type
    for init in graph.initializer:
        yield "initializer", init.name, init.data_type
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield f"constant of {node.op_type}", node.output[0] if node.output else node.name, attr.t.data_type


def _check_types(model):
    """Refuse, naming it, a tensor type outside ``ACCEPTED_TYPES`` (float8, int4, float16 scales, ...)."""
    for what, name, elem in _typed_tensors(model):
        type_name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(elem)
        if elem == onnx.TensorProto.UNDEFINED and what == "graph input":
            raise ModelError(f"graph input {name!r} has no element type; Tessera accepts {', '.join(ACCEPTED_TYPES)} "
                             f"tensors")
        if elem != onnx.TensorProto.UNDEFINED and type_name not in ACCEPTED_TYPES:
            raise ModelError(f"{what} {name!r} has element type {type_name}; Tessera accepts "
                             f"{', '.join(ACCEPTED_TYPES)} tensors")


def _reads(node):
    """Every tensor ``node`` reads: its inputs, and the outer-scope names its subgraphs (If, Loop, Scan) use."""
    names = [name for name in node.input if name]
    for attr in node.attribute:
        for graph in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                      list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
            defined = {vi.name for vi in graph.input} | {init.name for init in graph.initializer}
            for inner in graph.node:
                names += [name for name in _reads(inner) if name not in defined]
                defined.update(inner.output)
    return list(dict.fromkeys(names))


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(value):
    """A name as text, whatever bytes a damaged model holds (protobuf hands undecodable strings over as bytes)."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _as_text(value):
    return value.decode() if isinstance(value, bytes) else value


# ------------------------------------------------------------------------------------------------------------
# the importer

#: The importer's state one node's import changes; restored when a node turns out to be onnxruntime's.
_IMPORT_STATE = ("params", "aliases", "weights", "prequant", "quantized_by", "layers", "absorbed", "qdq_groups",
                 "materialized")


@dataclass
class _Partition:
    """A host partition while the importer fills it: nodes by id, the ids given to it (not pulled in), and why
    (ordered sets as dicts: op types without a Tessera layer, other reasons, reasons given for its Q/DQ)."""

    name: str
    nodes: dict = field(default_factory=dict)
    own: set = field(default_factory=set)
    unmapped: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)
    carrier_reasons: dict = field(default_factory=dict)


_NO_LAYER = "has no Tessera layer"


class _Importer:
    """One pass over the nodes in topological order, emitting layers and absorbing the Q/DQ around them."""

    def __init__(self, model, forced=None):
        graph = model.graph
        self.model = model
        self.forced = forced or {}  # node name -> why it goes to onnxruntime whatever its op
        self.origin = {}            # layer name -> the node it was imported from
        self.node = None            # the node being imported
        self.graph = graph
        # One list of node objects: protobuf hands out a new wrapper on every iteration, so ids only stay
        # meaningful for the objects held here.
        self.nodes = list(graph.node)
        self.names = {id(node): _text(node.name) or f"{_text(node.op_type)}_{i}" for i, node in enumerate(self.nodes)}
        self.consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and "value" in _attrs(node):
                self.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.graph_outputs = {vi.name for vi in graph.output}
        self.value_info = {}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            self.value_info[vi.name] = vi.type.tensor_type

        self.params = {}        # quantized tensor -> QuantParams
        self.aliases = {}       # float tensor a DequantizeLinear defines -> the quantized tensor it reads
        self.weights = {}       # float tensor a DequantizeLinear of an initializer defines -> _QConst
        self.prequant = {}      # float tensor = Relu/Clip of a float graph input -> (input, low, high)
        self.quantized_by = {}  # quantized tensor -> the QuantizeLinear node that wrote it
        self.float_inputs = set()
        self.quantized_inputs = set()
        for vi in graph.input:
            if vi.name in self.consts:
                continue
            elem = vi.type.tensor_type.elem_type
            if elem == onnx.TensorProto.FLOAT:
                self.float_inputs.add(vi.name)
            elif elem in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
                self.quantized_inputs.add(vi.name)
            # other accepted types (int32, int64, bool: indices, shapes) only ever feed host partitions
        self.layers = []
        self.absorbed = set()   # ids of nodes folded into an earlier layer
        self.qdq_groups = []    # (layer name, op type, activation inputs, output, why not fused or None)

        # Host partitions: what onnxruntime runs (see _to_host).
        self.initializer_names = {init.name for init in graph.initializer}
        self.producer = {name: node for node in self.nodes for name in node.output if name}
        self.order = {id(node): i for i, node in enumerate(self.nodes)}
        self.materialized = {vi.name for vi in graph.input if vi.name not in self.consts}  # tensors a run holds
        self.host_tensors = {}  # tensor a host partition computes -> its _Partition

    # -- entry point -----------------------------------------------------------------------------------

    def build(self):
        for node in self.nodes:
            if id(node) in self.absorbed or node.op_type == "Constant":
                continue
            name = self.names[id(node)]
            if name in self.forced:     # Tessera's layer for it failed its rehearsal (load_model)
                self._to_host(node, self.forced[name])
                continue
            state, self.node = self._state(), node
            try:
                self._import(node)
            except _NotTessera as error:
                self._restore(state)    # a half-imported pattern leaves nothing behind
                self._to_host(node, error.detail)
            except ModelError:
                raise
            except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError) as error:
                # attributes or constants Tessera's layers do not take (onnxruntime decides what they mean)
                self._restore(state)
                self._to_host(node, f"Tessera cannot take it: {_one_line(error)}")
        self.layers = [self._host_partition(layer) if isinstance(layer, _Partition) else layer
                       for layer in self.layers]
        outputs = []
        produced = {name for layer in self.layers for name in layer.outputs}
        for vi in self.graph.output:
            if vi.name not in produced and vi.name not in self.materialized:
                raise ModelError(f"graph output {vi.name!r} is not computed by any node")
            outputs.append(GraphIO(vi.name, self._shape(vi.name), self._dtype(vi.name)))
        inputs = [GraphIO(name, self._shape(name), self._dtype(name))
                  for name in (vi.name for vi in self.graph.input) if name not in self.consts]
        floats, uint8 = self._onnxruntime_paths()
        shapes = self._shapes()
        failed = self._rehearse(shapes, floats, uint8)
        if failed:
            raise _Rehearsal(failed)
        try:
            return QuantizedGraph(inputs=tuple(inputs), outputs=tuple(outputs), layers=tuple(self.layers),
                                  tensors=dict(self.params), shapes=shapes, float_in_onnxruntime=floats,
                                  uint8_in_onnxruntime=uint8)
        except ValueError as error:
            raise ModelError(f"the model's quantization does not hold together: {error}") from error

    def _rehearse(self, shapes, floats, uint8):
        """``{node name: why}`` for the Tessera layers the host cannot compute on zeros of their inputs' shapes
        (a zero scale, a group that does not divide, a broadcast the integer kernels do not take, ...): their
        nodes go to onnxruntime, which decides what such a model means."""
        from .host_exec import HostLayerError, run_layer

        failed = {}
        for layer in self.layers:
            in_shapes = [shapes.get(name) for name in layer.inputs]
            if isinstance(layer, HostPartition) or any(s is None or None in s for s in in_shapes):
                continue
            path = "float" if layer.name in floats else "uint8" if layer.name in uint8 else "integer"
            try:
                # a quantized tensor's type is its parameters' (a QDQ op's float output name can hold the
                # quantized values of a layer that a clamp follows)
                zeros = {name: np.zeros(shape, self.params[name].dtype if name in self.params else self._dtype(name))
                         for name, shape in zip(layer.inputs, in_shapes, strict=True)}
                with np.errstate(all="ignore"):
                    run_layer(layer, zeros, path=path)
            except (HostLayerError, ValueError, TypeError, IndexError, KeyError, ZeroDivisionError,
                    MemoryError) as error:
                failed[self.origin[layer.name]] = f"Tessera cannot compute it: {_one_line(error.__cause__ or error)}"
        return failed

    def _import(self, node):
        op, domain = node.op_type, node.domain or ""
        if domain in ("", "ai.onnx") and op == "DequantizeLinear":
            return self._dequantize_linear(node)
        if domain in ("", "ai.onnx") and op == "QuantizeLinear":
            return self._quantize_linear(node)
        qoperator = {"QLinearConv": self._qlinear_conv, "QLinearMatMul": self._qlinear_matmul,
                     "QGemm": self._qgemm, "QLinearAdd": self._qlinear_add,
                     "QLinearAveragePool": self._qlinear_pool, "QLinearGlobalAveragePool": self._qlinear_pool}
        if op in qoperator and domain == (MS_DOMAIN if op not in ("QLinearConv", "QLinearMatMul") else ""):
            return qoperator[op](node)
        if domain in ("", "ai.onnx") and op in ("ConvInteger", "MatMulInteger"):
            return self._integer(node)
        if domain in ("", "ai.onnx") and op in QDQ_OPS:
            data = node.input[0]
            if data in self.params:  # QOperator leaves shape ops and MaxPool on the quantized tensor itself
                if op in ("MaxPool", "Flatten", "Reshape"):
                    return self._emit(self._shape_op(node, data, node.output[0]))
                raise self._error(node, f"reads the quantized tensor {data!r} directly; supported on quantized "
                                        f"tensors: MaxPool, Flatten, Reshape")
            if op in ("Relu", "Clip") and (data in self.float_inputs or data in self.prequant):
                return self._float_clip(node)
            return self._qdq_group(node)
        raise self._error(node, _NO_LAYER, supported=False)

    # -- host partitions -------------------------------------------------------------------------------

    def _state(self):
        return {name: copy(getattr(self, name)) for name in _IMPORT_STATE}

    def _restore(self, state):
        for name, value in state.items():
            setattr(self, name, value)

    def _to_host(self, node, reason):
        """Give ``node`` to onnxruntime: add it to a host partition with every node it needs that no run holds
        (the DequantizeLinear of its inputs, Constants), so the partition reads only integer tensors Tessera's
        layers hold, graph inputs and initializers."""
        partition = self._partition_for(node)
        partition.own.add(id(node))
        if reason == _NO_LAYER:
            partition.unmapped.setdefault(_text(node.op_type))
        else:   # the Q/DQ that carry a partition's tensors in and out matter only when they are all it has
            carrier = node.op_type in HostPartition.CARRIERS
            (partition.carrier_reasons if carrier else partition.reasons).setdefault(reason)
        pending = [node]
        while pending:
            needed = pending.pop()
            if id(needed) in partition.nodes:
                continue
            partition.nodes[id(needed)] = needed
            for name in _reads(needed):
                if name not in self.materialized and name not in self.initializer_names:
                    if name not in self.producer:
                        raise ModelError(f"{_label(needed, self.order[id(needed)])} reads {name!r}, which nothing "
                                         f"defines")
                    pending.append(self.producer[name])
        for name in node.output:
            if name:
                self.host_tensors[name] = partition
                self.materialized.add(name)
        if node.op_type == "QuantizeLinear" and (node.domain or "") == "":
            self.quantized_by[node.output[0]] = node
            try:    # a per-tensor Q: Tessera's layers may read its output, with these parameters
                self.params[node.output[0]] = self._quant_params(
                    node, node.input[1], node.input[2] if len(node.input) > 2 else "", "output")
            except ModelError:
                pass    # per axis: only onnxruntime reads it

    def _partition_for(self, node):
        """The partition ``node`` joins: the last layer if that is a partition (everything a run holds by then is
        ready for it), the partition whose float output a QuantizeLinear quantizes, else a new one."""
        if self.layers and isinstance(self.layers[-1], _Partition):
            return self.layers[-1]
        if node.op_type == "QuantizeLinear" and node.input[0] in self.host_tensors:
            return self.host_tensors[node.input[0]]
        partition = _Partition(name=self.names[id(node)])
        self.layers.append(partition)
        return partition

    def _host_partition(self, partition):
        """The finished :class:`HostPartition`: its nodes in model order, the tensors it reads from the run and
        the ones anything outside it reads."""
        nodes = sorted(partition.nodes.values(), key=lambda n: self.order[id(n)])
        inside = {name for n in nodes for name in n.output if name}
        reads = list(dict.fromkeys(name for n in nodes for name in _reads(n)))
        inputs = [name for name in reads if name not in inside and name not in self.initializer_names]
        own_outputs = [name for n in nodes if id(n) in partition.own for name in n.output if name]
        # read outside: by a graph output, or by a node the partition does not own (a DequantizeLinear it only
        # copies is still imported on its own: a Tessera layer may read its input through it)
        outputs = [name for name in own_outputs if name in self.graph_outputs
                   or any(id(user) not in partition.own for user in self.consumers[name])]
        initializers = [init for init in self.graph.initializer if init.name in set(reads)]
        reasons = ([f"no Tessera layer for {', '.join(partition.unmapped)}"] if partition.unmapped else []) + \
            list(partition.reasons)
        reason = "; ".join(reasons or partition.carrier_reasons)
        # onnxruntime runs these int8 tensors as uint8 in the whole model (its Q -> DQ rewrite): so must the
        # subgraph, or it fuses its QDQ groups differently at the boundary (a float op for an integer kernel)
        uint8_inputs = [t for t in inputs if self._uint8_in_onnxruntime(t)]
        uint8_outputs = [t for t in outputs if self._uint8_in_onnxruntime(t)
                         and self.producer[t].op_type == "QuantizeLinear"]
        nodes, shifted_zero_points = self._on_uint8(nodes, uint8_inputs, uint8_outputs)
        return HostPartition(name=partition.name, inputs=inputs, outputs=outputs, nodes=nodes,
                             initializers=initializers + shifted_zero_points, opsets=tuple(self.model.opset_import),
                             ir_version=self.model.ir_version, functions=tuple(self.model.functions), reason=reason,
                             uint8_inputs=uint8_inputs, uint8_outputs=uint8_outputs)

    def _uint8_in_onnxruntime(self, tensor):
        params = self.params.get(tensor)
        return params is not None and params.dtype == np.int8 and self._runtime_type(tensor) == "uint8"

    def _on_uint8(self, nodes, uint8_inputs, uint8_outputs):
        """``nodes`` with the DequantizeLinear of each of ``uint8_inputs`` and the QuantizeLinear of each of
        ``uint8_outputs`` on uint8 copies (zero points + 128, as onnxruntime's rewrite does), and the new zero
        points as initializers."""
        shifted, zero_points = [], []
        for node in nodes:
            tensor = node.input[0] if node.op_type == "DequantizeLinear" else node.output[0]
            # the DequantizeLinear of an output too, where the partition reads it again itself
            if (node.op_type, tensor) not in {("DequantizeLinear", t) for t in (*uint8_inputs, *uint8_outputs)} | \
                    {("QuantizeLinear", t) for t in uint8_outputs}:
                shifted.append(node)
                continue
            copy_ = onnx.NodeProto()
            copy_.CopyFrom(node)
            zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
            if zp_name and zp_name not in self.consts:
                raise ModelError(f"node {_text(node.name)!r} ({node.op_type}): its zero point {_text(zp_name)!r} is "
                                 f"not a constant; accepted: an initializer (or Constant) of the tensor's type")
            zero_point = np.asarray(self.consts[zp_name]) if zp_name else np.zeros((), np.int8)
            name = f"{tensor}{HostPartition.UINT8_SUFFIX}/zero_point/{len(zero_points)}"
            zero_points.append(numpy_helper.from_array((zero_point.astype(np.int16) + 128).astype(np.uint8), name))
            while len(copy_.input) < 3:
                copy_.input.append("")
            copy_.input[2] = name
            if node.op_type == "DequantizeLinear":
                copy_.input[0] = tensor + HostPartition.UINT8_SUFFIX
            else:
                copy_.output[0] = tensor + HostPartition.UINT8_SUFFIX
            shifted.append(copy_)
        return shifted, zero_points

    # -- errors and constants --------------------------------------------------------------------------

    def _error(self, node, message, supported=True):
        label = f"node {self.names[id(node)]!r} ({node.op_type})"
        return _NotTessera(f"{label} {message}" + (f"; supported: {SUPPORTED}" if supported else ""), message)

    def _const(self, node, name, what):
        if not name:
            raise self._error(node, f"has no {what}", supported=False)
        if name not in self.consts:
            raise self._error(node, f"needs its {what} {name!r} to be a constant initializer", supported=False)
        return self.consts[name]

    def _quant_params(self, node, scale_name, zp_name, what):
        """Per-tensor QuantParams from a scale and an optional zero point (default uint8 0, as in ONNX)."""
        scale = np.asarray(self._const(node, scale_name, f"{what} scale"))
        zero_point = (np.asarray(self._const(node, zp_name, f"{what} zero point")) if zp_name
                      else np.zeros((), np.uint8))
        if scale.size != 1 or zero_point.size != 1:
            raise self._error(node, f"quantizes {what} per axis (scale shape {scale.shape}); activations must be "
                                    f"quantized per tensor", supported=False)
        if scale.dtype != np.float32 or zero_point.dtype.type not in (np.int8, np.uint8):
            raise self._error(node, f"{what}: scale must be float32 and zero point int8 or uint8, got "
                                    f"{scale.dtype} and {zero_point.dtype}", supported=False)
        try:
            return QuantParams(scale.reshape(()), zero_point.reshape(()), zero_point.dtype)
        except ValueError as error:
            raise self._error(node, f"{what}: {error}", supported=False) from error

    def _activation(self, node, name, params=None):
        """The QuantParams of quantized tensor ``name``, checked against what ``node`` states (if given)."""
        if (name in self.quantized_inputs or name in self.host_tensors) and name not in self.params \
                and params is not None:
            self.params[name] = params  # a quantized graph input or host output takes what its readers state
        if name not in self.params:
            raise self._error(node, f"reads {name!r}, which is not a quantized activation")
        if params is not None and params != self.params[name]:
            raise self._error(node, f"reads {name!r} as {params}, but it was quantized as {self.params[name]}",
                              supported=False)
        return self.params[name]

    # -- Q / DQ ----------------------------------------------------------------------------------------

    def _dequantize_linear(self, node):
        data, scale_name = node.input[0], node.input[1] if len(node.input) > 1 else ""
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if not scale_name:
            raise self._error(node, "has no scale input", supported=False)
        if data in self.consts:  # a weight or bias
            values = np.asarray(self.consts[data])
            scale = np.asarray(self._const(node, scale_name, "scale"))
            zero_point = (np.asarray(self._const(node, zp_name, "zero point")) if zp_name
                          else np.zeros((), values.dtype))
            axis = int(_attrs(node).get("axis", 1))
            self.weights[node.output[0]] = _QConst(values, scale, zero_point, axis % max(values.ndim, 1))
            return
        params = self._quant_params(node, scale_name, zp_name, "input")
        if data not in self.params and data not in self.quantized_inputs and data not in self.host_tensors:
            raise self._error(node, f"dequantizes {data!r}, which is neither an initializer nor a quantized "
                                    f"activation")
        self._activation(node, data, params)
        self.aliases[node.output[0]] = data
        if node.output[0] in self.graph_outputs:
            self._emit(Dequantize(name=self.names[id(node)], inputs=(data,), outputs=(node.output[0],),
                                  x_params=params))

    def _quantize_linear(self, node):
        source = node.input[0]
        params = self._quant_params(node, node.input[1], node.input[2] if len(node.input) > 2 else "", "output")
        name, output = self.names[id(node)], node.output[0]
        self.quantized_by[output] = node
        if source in self.float_inputs:
            return self._emit(Quantize(name=name, inputs=(source,), outputs=(output,), y_params=params))
        if source in self.prequant:
            # Relu/Clip of a float input: quantize, then clamp (quantization is monotonic, so this is exact)
            source, low, high = self.prequant[source]
            if _clip_is_redundant(low, high, params):
                return self._emit(Quantize(name=name, inputs=(source,), outputs=(output,), y_params=params))
            unclipped = f"{output}/unclipped"
            self._emit(Quantize(name=name, inputs=(source,), outputs=(unclipped,), y_params=params))
            return self._emit(Clip(name=f"{name}/clip", inputs=(unclipped,), outputs=(output,), low=low, high=high,
                                   x_params=params, y_params=params))
        if source in self.aliases:  # DQ -> Q: a float requantisation in onnxruntime, exact
            quantized = self.aliases[source]
            layer = Clip(name=name, inputs=(quantized,), outputs=(output,), x_params=self.params[quantized],
                         y_params=params)
            self.qdq_groups.append((name, "QuantizeLinear", (quantized,), output, None))
            return self._emit(layer)
        raise self._error(node, f"quantizes {source!r}, which is not a float graph input or a supported pattern")

    def _float_clip(self, node):
        """Relu/Clip on a float graph input: remembered until the QuantizeLinear that must follow it."""
        source, low, high = self.prequant.get(node.input[0], (node.input[0], -np.inf, np.inf))
        own_low, own_high = self._clip_bounds(node)
        self.prequant[node.output[0]] = (source, max(low, own_low), min(high, own_high))
        if node.output[0] in self.graph_outputs:
            raise self._error(node, "computes a float graph output")

    def _clip_bounds(self, node):
        if node.op_type == "Relu":
            return 0.0, np.inf
        attrs = _attrs(node)
        bounds = [attrs.get("min", -np.inf), attrs.get("max", np.inf)]
        for i, name in enumerate(node.input[1:3]):
            if name:
                value = self.weights[name] if name in self.weights else None
                if value is not None:
                    bounds[i] = float(golden.dequantize(value.values, value.scale, value.zero_point))
                else:
                    bounds[i] = float(np.asarray(self._const(node, name, ("min", "max")[i])).reshape(()))
        return float(bounds[0]), float(bounds[1])

    # -- QDQ groups ------------------------------------------------------------------------------------

    def _qdq_group(self, node):
        """A float op between DequantizeLinear inputs and its QuantizeLinear: the pattern onnxruntime fuses."""
        op = node.op_type
        act_inputs = node.input[:2] if op == "Add" else node.input[:1]
        quantized = []
        for name in act_inputs:
            if name not in self.aliases:
                why = "a float graph input" if name in self.float_inputs else \
                    "a constant" if name in self.weights or name in self.consts else "not dequantized"
                raise self._error(node, f"reads {name!r}, which is {why}, not a DequantizeLinear of a quantized "
                                        f"activation")
            quantized.append(self.aliases[name])
        clip, quantize = self._output_quantize(node)
        y_params = self._quant_params(quantize, quantize.input[1],
                                      quantize.input[2] if len(quantize.input) > 2 else "", "output")
        output = quantize.output[0]
        self.absorbed.update({id(quantize)} | ({id(clip)} if clip is not None else set()))
        self.quantized_by[output] = quantize
        name = self.names[id(node)]
        x_params = [self.params[q] for q in quantized]
        not_fused = None

        if op in ("Relu", "Clip"):
            low, high = self._clip_bounds(node)
            layer = Clip(name=name, inputs=tuple(quantized), outputs=(output,), low=low, high=high,
                         x_params=x_params[0], y_params=y_params)
            self.qdq_groups.append((name, op, tuple(quantized), output, None))
            return self._emit(layer)

        low, high = self._clip_bounds(clip) if clip is not None else (-np.inf, np.inf)
        needs_clip = not _clip_is_redundant(low, high, y_params)
        same_params = op in ("MaxPool", "Flatten", "Reshape") and x_params[0] == y_params
        # The op writes the Q's output directly unless a clamp or requantisation has to follow it.
        direct = not needs_clip and (op not in ("MaxPool", "Flatten", "Reshape") or same_params)
        op_output = output if direct else node.output[0]
        if op == "Conv":
            layer = self._conv(node, quantized[0], x_params[0], y_params, op_output)
        elif op in ("MatMul", "Gemm"):
            layer = self._gemm(node, quantized[0], x_params[0], y_params, op_output)
        elif op == "Add":
            layer = Add(name=name, inputs=tuple(quantized), outputs=(op_output,), a_params=x_params[0],
                        b_params=x_params[1], y_params=y_params)
        elif op == "AveragePool":
            layer = AveragePool(name=name, inputs=tuple(quantized), outputs=(op_output,),
                                x_params=x_params[0], y_params=y_params, **self._window(node, pool=True))
        elif op == "GlobalAveragePool":
            layer = GlobalAveragePool(name=name, inputs=tuple(quantized), outputs=(op_output,),
                                      x_params=x_params[0], y_params=y_params)
        else:  # MaxPool, Flatten, Reshape
            layer = self._shape_op(node, quantized[0], op_output)
        self._emit(layer)
        if needs_clip:
            not_fused = "a Relu/Clip between it and its QuantizeLinear is not made redundant by the output range"
        if not direct:
            self._emit(Clip(name=f"{name}/{'clip' if needs_clip else 'requantize'}", inputs=(op_output,),
                            outputs=(output,), low=low, high=high, x_params=self.params[op_output],
                            y_params=y_params))
        self.qdq_groups.append((name, op, tuple(quantized), output, not_fused))

    def _output_quantize(self, node):
        """``(clip, quantize)``: the QuantizeLinear of ``node``'s output, and a Relu/Clip between them."""
        output, clip = node.output[0], None
        users = self.consumers[output]
        if (node.op_type not in ("Relu", "Clip") and output not in self.graph_outputs and len(users) == 1
                and users[0].op_type in ("Relu", "Clip") and (users[0].domain or "") == ""):
            clip, output = users[0], users[0].output[0]
            users = self.consumers[output]
        if (len(node.output) > 1 and any(node.output[1:])) or output in self.graph_outputs or len(users) != 1 \
                or users[0].op_type != "QuantizeLinear":
            raise self._error(node, f"has output {output!r} that is not quantized by exactly one QuantizeLinear "
                                    f"(it feeds {[u.op_type for u in users]})")
        return clip, users[0]

    # -- layer builders ----------------------------------------------------------------------------------

    def _emit(self, layer):
        self.layers.append(layer)
        self.materialized.update(layer.outputs)
        self.origin[layer.name] = self.names[id(self.node)]
        if hasattr(layer, "y_params"):
            self.params[layer.outputs[0]] = layer.y_params
        elif isinstance(layer, (MaxPool, Flatten, Reshape)):
            self.params[layer.outputs[0]] = self.params[layer.inputs[0]]

    def _weight(self, node, name, what, axis):
        """A constant int8 or uint8 weight ``(values, scale, zero_point)``, per-channel only along ``axis``."""
        if name not in self.weights:
            raise self._error(node, f"needs its {what} {name!r} to be a DequantizeLinear of an int8 or uint8 "
                                    f"initializer")
        w = self.weights[name]
        if w.values.dtype.type not in _WEIGHT_TYPES:
            raise self._error(node, f"has {what} of type {w.values.dtype}; supported: int8 and uint8 weights",
                              supported=False)
        if w.scale.size > 1 and w.axis != axis % w.values.ndim:
            raise self._error(node, f"quantizes its {what} per channel along axis {w.axis}; supported: axis "
                                    f"{axis % w.values.ndim} (output channels)", supported=False)
        return w.values, self._weight_scale(node, w.scale), w.zero_point.astype(w.values.dtype)

    def _weight_scale(self, node, scale):
        """A weight scale the integer kernels take: finite and positive in float32 (else onnxruntime decides)."""
        scale = np.asarray(scale, np.float32)
        bad = scale.reshape(-1)[~(np.isfinite(scale.reshape(-1)) & (scale.reshape(-1) > 0))]
        if bad.size:
            raise self._error(node, f"has a weight scale of {bad[0]}; supported: finite and positive", supported=False)
        return scale

    def _bias(self, node, name, channels, qdq, x_scale=None, w_scale=None):
        """Bias as int32 in accumulator units: onnxruntime's QDQ fusions take the int32 initializer behind the
        bias's DequantizeLinear as it is (the quantizer rounds its scale, ``x_scale * w_scale``, in float64, so it
        can differ from the float32 product in the last bit)."""
        if not name:
            return np.zeros(channels, np.int32)
        if qdq and name in self.weights:
            values = self.weights[name].values
            self._check_bias_quantization(node, name, x_scale, w_scale)
        elif not qdq and name in self.consts:  # QOperator: the int32 initializer itself
            values = self.consts[name]
        else:
            raise self._error(node, f"needs its bias {name!r} to be a DequantizeLinear of an int32 initializer")
        if values.dtype != np.int32 or values.shape != (channels,):
            raise self._error(node, f"has bias {name!r} of {values.dtype} {values.shape}; supported: int32 "
                                    f"({channels},)", supported=False)
        return values

    def _check_bias_quantization(self, node, name, x_scale, w_scale):
        """A QDQ bias Tessera adds as it is: zero point 0 and scale ``x_scale * w_scale`` (to rounding); any other
        is onnxruntime's to interpret."""
        bias = self.weights[name]
        expected = np.float64(x_scale) * np.asarray(w_scale, np.float64)
        scale = np.asarray(bias.scale, np.float64)
        if np.any(bias.zero_point != 0) or scale.size not in (1, expected.size) or \
                not np.allclose(scale.reshape(-1), expected.reshape(-1), rtol=1e-6, atol=0):
            raise self._error(node, f"has a bias {name!r} not quantized as x_scale * w_scale with zero point 0",
                              supported=False)

    def _conv_attrs(self, node, w_shape):
        attrs = _attrs(node)
        if _as_text(attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
            raise self._error(node, f"uses auto_pad={_as_text(attrs['auto_pad'])}; supported: explicit pads",
                              supported=False)
        if len(w_shape) != 4:
            raise self._error(node, f"has weights of shape {w_shape}; supported: 2-D convolutions (OIHW)",
                              supported=False)
        return self._geometry(node, {"strides": attrs.get("strides", (1, 1)), "pads": attrs.get("pads", (0, 0, 0, 0)),
                                     "dilations": attrs.get("dilations", (1, 1)), "group": attrs.get("group", 1)})

    def _geometry(self, node, window):
        """``window`` as it is, if its fields are what a 2-D conv or pool takes: 2 kernel sides, strides and
        dilations from 1, 4 pads from 0, all below 2**16 (a larger one is a damaged model, not a layer)."""
        arity = {"kernel": 2, "strides": 2, "dilations": 2, "pads": 4}
        for field_name, count in arity.items():
            values = window.get(field_name)
            lowest = 0 if field_name == "pads" else 1
            if values is not None and (not isinstance(values, (list, tuple)) or len(values) != count or not all(
                    isinstance(v, int) and lowest <= v < 2 ** 16 for v in values)):
                raise self._error(node, f"has {field_name} {values!r}; supported: {count} integers from {lowest} "
                                        f"below 65536", supported=False)
        group = window.get("group", 1)
        if not isinstance(group, int) or group < 1:
            raise self._error(node, f"has group {group!r}; supported: an integer from 1", supported=False)
        return window

    def _conv(self, node, x, x_params, y_params, output):
        w_q, w_scale, w_zp = self._weight(node, node.input[1], "weight", 0)
        bias = self._bias(node, node.input[2] if len(node.input) > 2 else "", w_q.shape[0], qdq=True,
                          x_scale=x_params.scale, w_scale=w_scale)
        return Conv(name=self.names[id(node)], inputs=(x,), outputs=(output,), w_q=w_q, w_scale=w_scale,
                    w_zp=w_zp, bias=bias, x_params=x_params, y_params=y_params,
                    **self._conv_attrs(node, w_q.shape))

    def _gemm(self, node, x, x_params, y_params, output):
        attrs = _attrs(node)
        trans_b = node.op_type == "Gemm" and attrs.get("transB", 0)
        if node.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                       or (len(node.input) > 2 and node.input[2] and attrs.get("beta", 1.0) != 1.0)):
            raise self._error(node, "uses transA, alpha or beta; supported: Gemm with transA=0, alpha=beta=1",
                              supported=False)
        w_q, w_scale, w_zp = self._weight(node, node.input[1], "weight", 0 if trans_b else 1)
        if w_q.ndim != 2:
            raise self._error(node, f"has weights of shape {w_q.shape}; supported: (K, N)", supported=False)
        w_q = w_q.T if trans_b else w_q
        bias = self._bias(node, node.input[2] if len(node.input) > 2 else "", w_q.shape[1], qdq=True,
                          x_scale=x_params.scale, w_scale=w_scale)
        return Gemm(name=self.names[id(node)], inputs=(x,), outputs=(output,), w_q=w_q, w_scale=w_scale,
                    w_zp=w_zp, bias=bias, x_params=x_params, y_params=y_params)

    def _window(self, node, pool):
        attrs = _attrs(node)
        if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", (1, 1))):
            raise self._error(node, "uses ceil_mode or dilations; supported: ceil_mode=0, dilations 1",
                              supported=False)
        if _as_text(attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
            raise self._error(node, "uses auto_pad; supported: explicit pads", supported=False)
        if attrs.get("channels_last", 0):
            raise self._error(node, "is channels_last; supported: NCHW", supported=False)
        kernel = attrs.get("kernel_shape", ())
        if len(kernel) != 2:
            raise self._error(node, f"has kernel_shape {kernel}; supported: 2-D pools", supported=False)
        window = self._geometry(node, {"kernel": kernel, "strides": attrs.get("strides", (1, 1)),
                                       "pads": attrs.get("pads", (0, 0, 0, 0))})
        if pool:
            window["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
        return window

    def _shape_op(self, node, x, output):
        """MaxPool, Flatten or Reshape on quantized tensor ``x``: exact, no requantisation."""
        name = self.names[id(node)]
        if node.op_type == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                raise self._error(node, "also outputs Indices; supported: MaxPool with one output", supported=False)
            return MaxPool(name=name, inputs=(x,), outputs=(output,), **self._window(node, pool=False))
        if node.op_type == "Flatten":
            return Flatten(name=name, inputs=(x,), outputs=(output,), axis=_attrs(node).get("axis", 1))
        shape = np.asarray(self._const(node, node.input[1], "target shape"))
        return Reshape(name=name, inputs=(x,), outputs=(output,), shape=tuple(shape.reshape(-1)),
                       allowzero=bool(_attrs(node).get("allowzero", 0)))

    # -- QOperator -------------------------------------------------------------------------------------

    def _qoperand(self, node, first):
        """QuantParams of a QOperator operand given as (tensor, scale, zero point) from input ``first``."""
        names = list(node.input[first:first + 3]) + [""] * 3
        return self._quant_params(node, names[1], names[2], f"input {names[0]!r}")

    def _qlinear_conv(self, node):
        x = node.input[0]
        x_params = self._activation(node, x, self._qoperand(node, 0))
        y_params = self._quant_params(node, node.input[6], node.input[7], "output")
        w_q = np.asarray(self._const(node, node.input[3], "weight"))
        if w_q.dtype.type not in _WEIGHT_TYPES:
            raise self._error(node, f"has weights of type {w_q.dtype}; supported: int8, uint8", supported=False)
        w_scale = self._weight_scale(node, self._const(node, node.input[4], "weight scale"))
        w_zp = np.asarray(self._const(node, node.input[5], "weight zero point"))
        bias = self._bias(node, node.input[8] if len(node.input) > 8 else "", w_q.shape[0], qdq=False)
        self._emit(Conv(name=self.names[id(node)], inputs=(x,), outputs=(node.output[0],), w_q=w_q,
                        w_scale=w_scale, w_zp=w_zp.astype(w_q.dtype), bias=bias, x_params=x_params,
                        y_params=y_params, **self._conv_attrs(node, w_q.shape)))

    def _qlinear_matmul(self, node):
        self._qgemm_common(node, b_index=3, bias_name="", y_index=6, trans_b=False)

    def _qgemm(self, node):
        attrs = _attrs(node)
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            raise self._error(node, "uses transA or alpha; supported: QGemm with transA=0, alpha=1", supported=False)
        if len(node.input) < 9 or not node.input[7]:
            raise self._error(node, "has no output scale (float output); supported: quantized outputs",
                              supported=False)
        self._qgemm_common(node, b_index=3, bias_name=node.input[6], y_index=7, trans_b=attrs.get("transB", 0))

    def _qgemm_common(self, node, b_index, bias_name, y_index, trans_b):
        x = node.input[0]
        x_params = self._activation(node, x, self._qoperand(node, 0))
        y_params = self._quant_params(node, node.input[y_index], node.input[y_index + 1], "output")
        if node.input[b_index] not in self.consts:
            raise self._error(node, f"multiplies by {node.input[b_index]!r}, which is not a constant; supported: "
                                    f"constant (K, N) weights", supported=False)
        w_q = np.asarray(self.consts[node.input[b_index]])
        if w_q.dtype.type not in _WEIGHT_TYPES or w_q.ndim != 2:
            raise self._error(node, f"has weights {w_q.dtype} {w_q.shape}; supported: int8 or uint8 (K, N)",
                              supported=False)
        w_q = w_q.T if trans_b else w_q
        w_scale = self._weight_scale(node, self._const(node, node.input[b_index + 1], "weight scale"))
        w_zp = np.asarray(self._const(node, node.input[b_index + 2], "weight zero point"))
        bias = self._bias(node, bias_name, w_q.shape[1], qdq=False)
        self._emit(Gemm(name=self.names[id(node)], inputs=(x,), outputs=(node.output[0],), w_q=w_q,
                        w_scale=w_scale.reshape(-1) if w_scale.size > 1 else w_scale.reshape(()),
                        w_zp=(w_zp.reshape(-1) if w_zp.size > 1 else w_zp.reshape(())).astype(w_q.dtype),
                        bias=bias, x_params=x_params, y_params=y_params))

    def _integer(self, node):
        """ConvInteger or MatMulInteger with constant weights, on a tensor a run holds: an int32 output."""
        names = list(node.input) + [""] * 4
        x, x_zp_name = names[0], names[2]
        # the input zero point may be a constant or, after DynamicQuantizeLinear, a tensor computed at run time
        runtime_zp = bool(x_zp_name) and x_zp_name not in self.consts
        for name in (x, x_zp_name) if runtime_zp else (x,):
            if name not in self.materialized:
                raise self._error(node, f"reads {name!r}, which no Tessera layer holds", supported=False)
        w_q = np.asarray(self._const(node, names[1], "weight"))
        x_zp = np.zeros((), np.uint8) if runtime_zp or not x_zp_name else np.asarray(self.consts[x_zp_name])
        w_zp = np.asarray(self._const(node, names[3], "weight zero point")) if names[3] else np.zeros((), w_q.dtype)
        if x_zp.size != 1:
            raise self._error(node, f"has an input zero point per row (shape {x_zp.shape}); supported: one",
                              supported=False)
        common = {"name": self.names[id(node)], "inputs": (x, x_zp_name) if runtime_zp else (x,),
                  "outputs": (node.output[0],), "w_q": w_q, "w_zp": w_zp, "x_zp": int(x_zp.reshape(()))}
        if node.op_type == "MatMulInteger":
            if w_q.ndim != 2:
                raise self._error(node, f"has weights of shape {w_q.shape}; supported: (K, N)", supported=False)
            return self._emit(MatMulInteger(**common))
        return self._emit(ConvInteger(**common, **self._conv_attrs(node, w_q.shape)))

    def _qlinear_add(self, node):
        a, b = node.input[0], node.input[3]
        for name in (a, b):
            if name in self.consts:
                raise self._error(node, f"adds the constant {name!r}; supported: two quantized activations",
                                  supported=False)
        a_params = self._activation(node, a, self._qoperand(node, 0))
        b_params = self._activation(node, b, self._qoperand(node, 3))
        y_params = self._quant_params(node, node.input[6], node.input[7] if len(node.input) > 7 else "", "output")
        self._emit(Add(name=self.names[id(node)], inputs=(a, b), outputs=(node.output[0],), a_params=a_params,
                       b_params=b_params, y_params=y_params))

    def _qlinear_pool(self, node):
        x = node.input[0]
        x_params = self._activation(node, x, self._qoperand(node, 0))
        y_params = self._quant_params(node, node.input[3], node.input[4] if len(node.input) > 4 else "", "output")
        name, outputs = self.names[id(node)], (node.output[0],)
        if node.op_type == "QLinearGlobalAveragePool":
            if _attrs(node).get("channels_last", 0):
                raise self._error(node, "is channels_last; supported: NCHW", supported=False)
            return self._emit(GlobalAveragePool(name=name, inputs=(x,), outputs=outputs, x_params=x_params,
                                                y_params=y_params))
        self._emit(AveragePool(name=name, inputs=(x,), outputs=outputs, x_params=x_params, y_params=y_params,
                               **self._window(node, pool=True)))

    # -- shapes and onnxruntime's float fallbacks ----------------------------------------------------------

    def _shape(self, name):
        info = self.value_info.get(name)
        if info is None or not info.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in info.shape.dim)

    def _dtype(self, name):
        info = self.value_info.get(name)
        if info is not None and info.elem_type in _TENSOR_TYPES:
            return _TENSOR_TYPES[info.elem_type]
        return self.params[name].dtype if name in self.params else np.float32

    def _shapes(self):
        """Shapes from onnx shape inference, filled in (and cross-checked) layer by layer: onnx cannot infer
        through the com.microsoft ops of the QOperator format."""
        shapes = {}
        for layer in self.layers:
            for name in layer.inputs:
                if name not in shapes:
                    shapes[name] = self._shape(name)
            if isinstance(layer, HostPartition):
                shapes.update((name, self._shape(name)) for name in layer.outputs)
                continue
            in_shapes = [shapes[name] for name in layer.inputs]
            computed = None
            if all(s is not None for s in in_shapes):
                try:
                    out = layer.output_shape(*in_shapes)
                    computed = None if out is None else tuple(out)
                except (ValueError, TypeError, IndexError, ZeroDivisionError) as error:
                    # onnxruntime decides what such a node means (it mostly refuses it)
                    raise _Rehearsal({self.origin[layer.name]: f"Tessera cannot take its input shapes {in_shapes}: "
                                                               f"{_one_line(error)}"}) from error
            inferred = self._shape(layer.outputs[0])
            if computed is not None and inferred is not None and any(
                    a is not None and b is not None and a != b for a, b in zip(computed, inferred, strict=False)):
                raise _Rehearsal({self.origin[layer.name]: f"Tessera's output shape {computed} is not onnx's "
                                                           f"{inferred}"})
            shapes[layer.outputs[0]] = computed if computed is not None and None not in computed else \
                inferred if inferred is not None else computed
        return shapes

    def _runtime_type(self, tensor):
        """The type onnxruntime's x86 QDQ passes leave a quantized tensor in (see the module docstring)."""
        dtype = self.params[tensor].dtype
        if dtype == np.uint8:
            return "uint8"
        quantize = self.quantized_by.get(tensor)
        if quantize is None or tensor in self.graph_outputs:
            return "int8"
        users = self.consumers[tensor]
        if len(users) != 1 or users[0].op_type != "DequantizeLinear":
            return "int8"
        dq_output = users[0].output[0]
        # onnxruntime first gives every consumer of a DQ its own copy, so a shared DQ means several Q edges
        readers = len(self.consumers[dq_output]) + (dq_output in self.graph_outputs)
        return "uint8" if readers <= 1 else "int8"

    def _onnxruntime_paths(self):
        """``(float_in_onnxruntime, uint8_in_onnxruntime)``: how onnxruntime's x86 passes run each QDQ group."""
        floats, uint8 = {}, set()
        for name, op, inputs, output, not_fused in self.qdq_groups:
            if op in ("QuantizeLinear", "Relu", "Clip"):
                continue  # a Clip layer: DQ -> clip -> Q in float, always, and always exact
            tensors = (*inputs, output)
            types = {t: self._runtime_type(t) for t in tensors}
            stuck = [t for t in tensors if types[t] == "int8" and self.params[t].dtype == np.int8]
            why_int8 = (f"{', '.join(map(repr, stuck))} stay{'s' if len(stuck) == 1 else ''} int8 (onnxruntime "
                        f"rewrites an int8 Q -> DQ pair to uint8 only when the Q feeds one DQ that feeds one node "
                        f"and is not a graph output)") if stuck else ""
            in_type, out_type = types[inputs[0]], types[output]
            if not_fused:
                floats[name] = not_fused
            elif op in ("Conv", "MatMul") and "int8" in types.values():
                floats[name] = f"{why_int8}; onnxruntime fuses int8 QDQ {op} only on ARM"
            elif op == "Gemm" and in_type != out_type:
                floats[name] = f"{why_int8}; QGemm needs its input and output of one type"
            elif op in ("MaxPool", "Flatten", "Reshape") and (
                    in_type != out_type or self.params[inputs[0]] != self.params[output]):
                floats[name] = f"{why_int8 or 'its input and output quantization differ'}; float is exact here"
            elif len(set(types.values())) > 1:  # Add, AveragePool, GlobalAveragePool
                floats[name] = f"{why_int8}; QLinear{op} needs its inputs and output of one type"
            elif out_type == "uint8" and any(self.params[t].dtype == np.int8 for t in tensors):
                # every tensor uint8 in onnxruntime (the checks above), some of them int8 in the model: rewritten
                uint8.add(name)
        return floats, frozenset(uint8)


def _clip_is_redundant(low, high, params):
    """True if quantizing to ``params`` already saturates at least as tightly as ``clip(low, high)``."""
    lo, hi = golden.qrange(params.dtype)
    q_low = lo if low == -np.inf else int(golden.quantize(np.float32(low), params.scale, params.zero_point,
                                                          params.dtype))
    q_high = hi if high == np.inf else int(golden.quantize(np.float32(high), params.scale, params.zero_point,
                                                           params.dtype))
    return q_low <= lo and q_high >= hi
