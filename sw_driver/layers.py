"""The layer IR a quantized ONNX model is imported into (see :mod:`tessera.sw_driver.onnx_import`).

A :class:`QuantizedGraph` is a list of layers in topological order over named tensors. Quantized tensors are
int8 or uint8 activations, each with one :class:`QuantParams` (``real = scale * (q - zero_point)``) kept in the
graph's tensor table; the float tensors are the graph's float inputs and outputs, and :class:`Quantize` and
:class:`Dequantize` layers are the only layers that touch them.

Every layer also carries the quantization of what it reads and writes, so one layer can run on its own (on the
accelerator or on the host, :mod:`tessera.sw_driver.host_exec`) without the rest of the graph. Weights are int8
arrays with a per-tensor (shape ``()``) or per-output-channel (shape ``(O,)``) scale and zero point; biases
are int32 in accumulator units (scale ``x_scale * w_scale``), as ONNX stores them.
"""

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Add", "AveragePool", "Clip", "Conv", "ConvInteger", "Dequantize", "Flatten", "Gemm", "GlobalAveragePool",
    "GraphIO", "HostPartition", "Layer", "MatMulInteger", "MaxPool", "QuantParams", "Quantize", "QuantizedGraph",
    "Reshape",
]


def _frozen_array(values, dtype):
    """A read-only copy, so a frozen layer really cannot change under its users."""
    array = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class QuantParams:
    """Per-tensor quantization of an activation: ``real = scale * (q - zero_point)``.

    Attributes
    ----------
    scale : np.float32
        As ONNX stores it (float32).
    zero_point : int
    dtype : np.dtype
        ``int8`` or ``uint8``.
    """

    scale: np.float32
    zero_point: int
    dtype: np.dtype

    def __post_init__(self):
        object.__setattr__(self, "scale", np.float32(self.scale))
        object.__setattr__(self, "zero_point", int(self.zero_point))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.dtype.type not in (np.int8, np.uint8):
            raise ValueError(f"QuantParams dtype must be int8 or uint8, got {self.dtype}")
        info = np.iinfo(self.dtype)
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"QuantParams scale must be finite and positive, got {self.scale}")
        if not info.min <= self.zero_point <= info.max:
            raise ValueError(f"QuantParams zero_point {self.zero_point} is outside {self.dtype} "
                             f"[{info.min}, {info.max}]")

    def __str__(self):
        return f"{self.dtype.name} s={self.scale:.6g} zp={self.zero_point}"


@dataclass(frozen=True)
class GraphIO:
    """A graph input or output: its name, shape (``None`` for a symbolic dimension) and element type."""

    name: str
    shape: tuple
    dtype: np.dtype

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def quantized(self):
        """True for an int8/uint8 tensor (False for float32, and for the int32/int64/bool a host partition takes)."""
        return self.dtype in (np.int8, np.uint8)


def _ints(values):
    return tuple(int(v) for v in values)


def _freeze_weights(layer):
    for name, dtype in (("w_q", None), ("w_scale", np.float32), ("w_zp", None), ("bias", np.int32)):
        value = np.asarray(getattr(layer, name))
        if name in ("w_scale", "w_zp"):  # shape () per tensor, (channels,) per channel
            value = value.reshape(()) if value.size == 1 else value.reshape(-1)
        object.__setattr__(layer, name, _frozen_array(value, dtype or value.dtype))


# ------------------------------------------------------------------------------------------------------------
# layers


@dataclass(frozen=True, eq=False, kw_only=True)
class Layer:
    """Base of every layer kind.

    Attributes
    ----------
    name : str
        The ONNX node name (of the float op for a QDQ group), or one generated as ``OpType_index``.
    inputs, outputs : tuple of str
        Tensor names, activations only (weights live in the layer).
    """

    name: str
    inputs: tuple
    outputs: tuple

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))

    @property
    def kind(self):
        """The layer kind, its class name (``"Conv"``, ``"Gemm"``, ...)."""
        return type(self).__name__

    def output_shape(self, *input_shapes):
        """Shape of the (first) output for the given input shapes; ``None`` entries stay unknown."""
        return tuple(input_shapes[0])

    def summary(self):
        """One short line of the layer's attributes for :meth:`QuantizedGraph.describe`."""
        return ""


def _window_size(size, kernel, stride, pad_begin, pad_end, dilation=1):
    if size is None:
        return None
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True, eq=False, kw_only=True)
class Conv(Layer):
    """Quantized 2-D convolution (plain, grouped or depthwise): QLinearConv, or DQ -> Conv -> Q.

    Attributes
    ----------
    w_q : ndarray (O, C / group, KH, KW) of int8
    w_scale : ndarray of float32, shape () or (O,)
    w_zp : ndarray of int8, shape () or (O,)
    bias : ndarray (O,) of int32
        Zeros when the model has none.
    strides, dilations : (int, int)
    pads : (top, left, bottom, right)
        ONNX order.
    group : int
    x_params, y_params : QuantParams
    """

    w_q: np.ndarray
    w_scale: np.ndarray
    w_zp: np.ndarray
    bias: np.ndarray
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    group: int = 1
    x_params: QuantParams
    y_params: QuantParams

    def __post_init__(self):
        super().__post_init__()
        _freeze_weights(self)
        for name in ("strides", "pads", "dilations"):
            object.__setattr__(self, name, _ints(getattr(self, name)))
        object.__setattr__(self, "group", int(self.group))

    @property
    def out_channels(self):
        return self.w_q.shape[0]

    @property
    def kernel(self):
        return tuple(self.w_q.shape[2:])

    @property
    def is_depthwise(self):
        """One input channel per group and one group per input channel (``group == C``, ``w_q.shape[1] == 1``)."""
        return self.group > 1 and self.w_q.shape[1] == 1

    @property
    def per_channel(self):
        return self.w_scale.size > 1

    def output_shape(self, x_shape):
        batch, _, height, width = x_shape
        top, left, bottom, right = self.pads
        return (batch, self.out_channels,
                _window_size(height, self.kernel[0], self.strides[0], top, bottom, self.dilations[0]),
                _window_size(width, self.kernel[1], self.strides[1], left, right, self.dilations[1]))

    def summary(self):
        kind = "depthwise " if self.is_depthwise else f"group={self.group} " if self.group > 1 else ""
        return (f"{kind}k={self.kernel[0]}x{self.kernel[1]} s={self.strides[0]},{self.strides[1]} "
                f"p={','.join(map(str, self.pads))}" + (" d=" + ",".join(map(str, self.dilations))
                                                         if self.dilations != (1, 1) else "")
                + (" per-channel" if self.per_channel else ""))


@dataclass(frozen=True, eq=False, kw_only=True)
class Gemm(Layer):
    """Quantized matrix product with constant weights: QLinearMatMul, QGemm, or DQ -> MatMul/Gemm -> Q.

    ``y[..., n] = requantize(sum_k (x[..., k] - x_zp) * (w_q[k, n] - w_zp[n]) + bias[n])``; a Gemm's
    ``transB`` is resolved at import, so ``w_q`` is always ``(K, N)``.

    Attributes
    ----------
    w_q : ndarray (K, N) of int8
    w_scale : ndarray of float32, shape () or (N,)
    w_zp : ndarray of int8, shape () or (N,)
    bias : ndarray (N,) of int32
    x_params, y_params : QuantParams
    """

    w_q: np.ndarray
    w_scale: np.ndarray
    w_zp: np.ndarray
    bias: np.ndarray
    x_params: QuantParams
    y_params: QuantParams

    def __post_init__(self):
        super().__post_init__()
        _freeze_weights(self)

    @property
    def per_channel(self):
        return self.w_scale.size > 1

    def output_shape(self, x_shape):
        return (*tuple(x_shape)[:-1], self.w_q.shape[1])

    def summary(self):
        return f"K={self.w_q.shape[0]} N={self.w_q.shape[1]}" + (" per-channel" if self.per_channel else "")


@dataclass(frozen=True, eq=False, kw_only=True)
class _Window(Layer):
    kernel: tuple
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)

    def __post_init__(self):
        super().__post_init__()
        for name in ("kernel", "strides", "pads"):
            object.__setattr__(self, name, _ints(getattr(self, name)))

    def output_shape(self, x_shape):
        batch, channels, height, width = x_shape
        top, left, bottom, right = self.pads
        return (batch, channels, _window_size(height, self.kernel[0], self.strides[0], top, bottom),
                _window_size(width, self.kernel[1], self.strides[1], left, right))

    def summary(self):
        return (f"k={self.kernel[0]}x{self.kernel[1]} s={self.strides[0]},{self.strides[1]} "
                f"p={','.join(map(str, self.pads))}")


@dataclass(frozen=True, eq=False, kw_only=True)
class MaxPool(_Window):
    """Max pooling on quantized values (exact; input and output share one QuantParams).

    Attributes
    ----------
    kernel, strides : (int, int)
    pads : (top, left, bottom, right)
    """



@dataclass(frozen=True, eq=False, kw_only=True)
class AveragePool(_Window):
    """onnxruntime's QLinearAveragePool (what DQ -> AveragePool -> Q is fused into).

    Attributes
    ----------
    kernel, strides : (int, int)
    pads : (top, left, bottom, right)
    count_include_pad : bool
    x_params, y_params : QuantParams
    """

    count_include_pad: bool = False
    x_params: QuantParams
    y_params: QuantParams

    def summary(self):
        return super().summary() + (" count_include_pad" if self.count_include_pad else "")


@dataclass(frozen=True, eq=False, kw_only=True)
class GlobalAveragePool(Layer):
    """onnxruntime's QLinearGlobalAveragePool: integer mean over H and W, output ``(N, C, 1, 1)``.

    Attributes
    ----------
    x_params, y_params : QuantParams
    """

    x_params: QuantParams
    y_params: QuantParams

    def output_shape(self, x_shape):
        return (*tuple(x_shape)[:2], 1, 1)


@dataclass(frozen=True, eq=False, kw_only=True)
class Add(Layer):
    """onnxruntime's QLinearAdd of two same-shape quantized activations (a residual connection).

    Attributes
    ----------
    a_params, b_params, y_params : QuantParams
    """

    a_params: QuantParams
    b_params: QuantParams
    y_params: QuantParams


@dataclass(frozen=True, eq=False, kw_only=True)
class Clip(Layer):
    """Element-wise ``y = quantize(clip(dequantize(x), low, high))``: a Relu or Clip left between a
    DequantizeLinear and a QuantizeLinear, or a bare requantisation (infinite bounds).

    onnxruntime computes exactly this (DQ, float Clip, Q are each exact; when the output range already does
    the clipping it removes the Clip, which gives the same values). Quantization is monotonic, so with equal
    ``x_params`` and ``y_params`` this is a clamp of the quantized values; see :mod:`tessera.sw_driver.onnx_import`
    for where the importer emits it.

    Attributes
    ----------
    low, high : float
        Clip bounds (``-inf`` / ``inf`` when absent); a Relu is ``(0, inf)``.
    x_params, y_params : QuantParams
    """

    low: float = -np.inf
    high: float = np.inf
    x_params: QuantParams
    y_params: QuantParams

    def summary(self):
        return f"[{self.low:g}, {self.high:g}]" + (" requantize" if self.x_params != self.y_params else "")


@dataclass(frozen=True, eq=False, kw_only=True)
class Flatten(Layer):
    """ONNX Flatten of a quantized tensor: shape only, the output keeps the input's QuantParams.

    Attributes
    ----------
    axis : int
    """

    axis: int = 1

    def output_shape(self, x_shape):
        axis = self.axis % len(x_shape) if self.axis < 0 else self.axis
        return tuple(None if None in dims else int(np.prod(dims, dtype=np.int64))
                     for dims in (x_shape[:axis], x_shape[axis:]))

    def summary(self):
        return f"axis={self.axis}"


@dataclass(frozen=True, eq=False, kw_only=True)
class Reshape(Layer):
    """ONNX Reshape of a quantized tensor to a constant shape: shape only, same QuantParams.

    Attributes
    ----------
    shape : tuple of int
        As ONNX states it: ``0`` copies the input dimension (unless ``allowzero``), ``-1`` is inferred.
    allowzero : bool
    """

    shape: tuple
    allowzero: bool = False

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def resolve(self, x_shape):
        """The concrete output shape for an input of ``x_shape`` (ONNX rules for ``0`` and ``-1``)."""
        dims = [x_shape[i] if d == 0 and not self.allowzero else d for i, d in enumerate(self.shape)]
        if -1 in dims:
            known = [d for d in dims if d != -1]
            if None in known or None in x_shape:
                return tuple(None if d == -1 else d for d in dims)
            dims[dims.index(-1)] = int(np.prod(x_shape, dtype=np.int64)) // max(1, int(np.prod(known)))
        return tuple(dims)

    def output_shape(self, x_shape):
        return self.resolve(tuple(x_shape))

    def summary(self):
        return f"shape={self.shape}"


@dataclass(frozen=True, eq=False, kw_only=True)
class Quantize(Layer):
    """QuantizeLinear of a float graph input. Attributes: ``y_params``."""

    y_params: QuantParams


@dataclass(frozen=True, eq=False, kw_only=True)
class Dequantize(Layer):
    """DequantizeLinear to a float graph output. Attributes: ``x_params``."""

    x_params: QuantParams


@dataclass(frozen=True, eq=False, kw_only=True)
class _Integer(Layer):
    """An integer product with an int32 output (ConvInteger, MatMulInteger): what ``quantize_dynamic`` writes,
    before the runtime scales it in float. Attributes: ``w_q`` (int8 or uint8), ``w_zp`` (shape () or one per
    output channel), ``x_zp`` (the input's zero point, an int; or, when the layer has a second input, that
    tensor's value at run time, as DynamicQuantizeLinear computes it)."""

    w_q: np.ndarray
    w_zp: np.ndarray
    x_zp: int = 0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "w_q", _frozen_array(self.w_q, np.asarray(self.w_q).dtype))
        zp = np.asarray(self.w_zp)
        object.__setattr__(self, "w_zp", _frozen_array(zp.reshape(()) if zp.size == 1 else zp.reshape(-1), zp.dtype))
        object.__setattr__(self, "x_zp", int(self.x_zp))

    def output_shape(self, *input_shapes):
        return None     # onnx shape inference has it


@dataclass(frozen=True, eq=False, kw_only=True)
class ConvInteger(_Integer):
    """ONNX ConvInteger: ``w_q`` (O, C / group, KH, KW); ``strides``, ``pads``, ``dilations``, ``group`` as in
    :class:`Conv`."""

    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    group: int = 1

    def __post_init__(self):
        super().__post_init__()
        for name in ("strides", "pads", "dilations"):
            object.__setattr__(self, name, _ints(getattr(self, name)))
        object.__setattr__(self, "group", int(self.group))


@dataclass(frozen=True, eq=False, kw_only=True)
class MatMulInteger(_Integer):
    """ONNX MatMulInteger with constant (K, N) weights ``w_q``."""


@dataclass(frozen=True, eq=False, kw_only=True)
class HostPartition(Layer):
    """Nodes of the user's model that onnxruntime runs on the host, as one subgraph cut from the model.

    Tessera has no layer for them (or not for this use of them), so onnxruntime computes them exactly as it does
    in the whole model: the subgraph keeps the DequantizeLinear nodes that feed them and the QuantizeLinear
    nodes that follow, so its inputs and outputs are the integer tensors Tessera's own layers exchange (or the
    model's float inputs and outputs), and onnxruntime fuses the same QDQ groups it fuses in the whole model.

    Attributes
    ----------
    nodes : tuple of onnx.NodeProto
        In the model's topological order.
    initializers : tuple of onnx.TensorProto
        The constants the nodes read.
    opsets : tuple of onnx.OperatorSetIdProto
        The model's opset imports.
    ir_version : int
        The model's IR version (what onnxruntime read the whole model in).
    functions : tuple of onnx.FunctionProto
        The model's local functions, which its nodes may call.
    uint8_inputs, uint8_outputs : tuple of str
        int8 tensors onnxruntime runs as uint8 in the whole model: the subgraph reads (writes) them as uint8
        copies named ``tensor + UINT8_SUFFIX`` (values and zero points + 128), so that it fuses as the whole
        model does.
    reason : str
        Why the partition's first node is not a Tessera layer (one short line for the run table).
    """

    nodes: tuple
    initializers: tuple
    opsets: tuple
    ir_version: int
    reason: str
    functions: tuple = ()
    uint8_inputs: tuple = ()
    uint8_outputs: tuple = ()

    #: Op types that only carry quantization in and out of the partition; the table names the others.
    CARRIERS = ("QuantizeLinear", "DequantizeLinear", "Constant")
    #: Suffix of the uint8 copy of a tensor in the subgraph (see ``uint8_inputs``).
    UINT8_SUFFIX = "/tessera_uint8"

    def __post_init__(self):
        super().__post_init__()
        for name in ("nodes", "initializers", "opsets", "functions", "uint8_inputs", "uint8_outputs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def ops(self):
        """The op types the partition computes, in order, each once (Q/DQ only when there is nothing else)."""
        types = list(dict.fromkeys(node.op_type for node in self.nodes))
        return tuple(t for t in types if t not in self.CARRIERS) or tuple(types)

    @property
    def kind(self):
        return "+".join(self.ops)

    def output_shape(self, *input_shapes):
        return None     # onnx shape inference knows, not the layer: see the importer

    def summary(self):
        return f"{len(self.nodes)} nodes on onnxruntime"


# ------------------------------------------------------------------------------------------------------------
# the graph


def _quant_fields(layer):
    """``{tensor name: QuantParams}`` a layer states for the tensors it reads and writes."""
    stated = {}
    if isinstance(layer, Add):
        stated.update(zip(layer.inputs, (layer.a_params, layer.b_params), strict=True))
    elif hasattr(layer, "x_params"):
        stated[layer.inputs[0]] = layer.x_params
    if hasattr(layer, "y_params"):
        stated[layer.outputs[0]] = layer.y_params
    return stated


@dataclass(frozen=True, eq=False)
class QuantizedGraph:
    """An imported model: layers in topological order over named tensors.

    Attributes
    ----------
    inputs, outputs : tuple of GraphIO
    layers : tuple of Layer
        Topological order; running them in this order computes the outputs.
    tensors : dict
        ``{name: QuantParams}`` of every quantized tensor.
    shapes : dict
        ``{name: shape}`` of every tensor the layers read or write (``None`` for an unknown dimension).
    float_in_onnxruntime : dict
        ``{layer name: why}`` for the layers onnxruntime's CPU provider runs as DQ -> float op -> Q instead of
        an integer kernel (see :mod:`~tessera.sw_driver.onnx_import`). :mod:`~tessera.sw_driver.host_exec`
        reproduces the float ones it can bit for bit and lists the rest with ``inexact_layers``.
    uint8_in_onnxruntime : frozenset
        Names of layers with int8 tensors that onnxruntime computes on uint8 copies of them (on x86 it rewrites
        int8 QDQ pairs to uint8 before fusing). Exact for the integer kernels, but the float-internal QLinearAdd and
        QLinearAveragePool round differently once every zero point moves by 128.
    """

    inputs: tuple
    outputs: tuple
    layers: tuple
    tensors: dict
    shapes: dict = field(default_factory=dict)
    float_in_onnxruntime: dict = field(default_factory=dict)
    uint8_in_onnxruntime: frozenset = frozenset()

    def __post_init__(self):
        names = [layer.name for layer in self.layers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"layer names must be unique, repeated: {duplicates}")
        for layer in self.layers:
            for tensor, params in _quant_fields(layer).items():
                if self.tensors.get(tensor) != params:
                    raise ValueError(f"layer {layer.name!r} states {tensor!r} as {params}, but the graph's "
                                     f"tensor table has {self.tensors.get(tensor)}")

    def layer(self, name):
        """The layer called ``name`` (KeyError naming the known layers otherwise)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r}; layers: {[layer.name for layer in self.layers]}")

    def onnxruntime_path(self, name):
        """How onnxruntime computes layer ``name``: ``"float"``, ``"uint8"`` or ``"integer"`` (as imported)."""
        if name in self.float_in_onnxruntime:
            return "float"
        return "uint8" if name in self.uint8_in_onnxruntime else "integer"

    def describe(self):
        """A short text table: one row per layer with its kind, name, tensor shapes and attributes."""
        def tensor(name):
            shape = self.shapes.get(name)
            text = "x".join("?" if d is None else str(d) for d in shape) if shape is not None else "?"
            return f"{name}[{text}]"

        rows = [("kind", "name", "inputs -> outputs", "attributes")]
        for layer in self.layers:
            flow = ", ".join(map(tensor, layer.inputs)) + " -> " + ", ".join(map(tensor, layer.outputs))
            path = self.onnxruntime_path(layer.name)
            note = f" (onnxruntime: {path})" if path != "integer" else ""
            rows.append((layer.kind, layer.name, flow, layer.summary() + note))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
                 for row in rows]
        return "\n".join(line.rstrip() for line in lines)
