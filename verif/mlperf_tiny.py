"""The four MLPerf Tiny reference models as float ONNX graphs with seeded random weights, quantized by onnxruntime.

Shapes follow mlcommons/tiny (see ../shared/TOOLCHAIN.md): batch norm is folded into each convolution's weights
and bias (as an exported, inference-ready model has it), ReLU follows each folded conv, and the three classifiers
end in Softmax. No data sets are reachable offline, so weights are random (He-normal) and calibration data is
random: these models are for latency, data movement and bit-exactness, not accuracy.

``width`` scales every hidden channel count (1.0: the reference model; 0.25 and below: the reduced variants the
test suite runs). Each builder returns an ``onnx.ModelProto`` with input ``x`` and output ``y``.

``python -m tessera.verif.mlperf_tiny [--out build/mlperf] [--width W]`` writes the four quantized models there
and prints their paths, separated by commas (``make bitstream`` passes them to ``tessera bitstream --models``).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from onnx import helper

from tessera.verif.onnx_models import _model, conv_output_size, quantize_model

__all__ = ["MODELS", "ad_autoencoder", "ds_cnn", "resnet8", "mobilenet_v1", "quantized", "main"]


class _Graph:
    """Nodes and initializers of a float model under construction, with He-normal weights from ``rng``."""

    def __init__(self, rng):
        self.rng, self.nodes, self.weights = rng, [], []

    def _name(self, kind):
        return f"{kind}{len(self.nodes)}"

    def conv(self, x, channels, out_channels, kernel, *, stride=1, pads=None, group=1, relu=True):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        pads = list(pads) if pads is not None else [kh // 2, kw // 2, (kh - 1) // 2, (kw - 1) // 2]
        name = self._name("conv")
        fan_in = channels // group * kh * kw
        self.weights += [(f"{name}.w", self.rng.normal(0, np.sqrt(2 / fan_in), (out_channels, channels // group, kh,
                                                                                 kw))),
                         (f"{name}.b", self.rng.normal(0, 0.1, out_channels))]
        out = name if relu else f"{name}.y"
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"],
                                           kernel_shape=[kh, kw], strides=[stride, stride], pads=pads, group=group))
        if relu:
            self.nodes.append(helper.make_node("Relu", [f"{name}.y"], [out]))
        return out

    def gemm(self, x, features, out_features, *, relu=True, out=None):
        name = self._name("fc")
        self.weights += [(f"{name}.w", self.rng.normal(0, np.sqrt(2 / features), (out_features, features))),
                         (f"{name}.b", self.rng.normal(0, 0.1, out_features))]
        y = out if out and not relu else f"{name}.y"
        self.nodes.append(helper.make_node("Gemm", [x, f"{name}.w", f"{name}.b"], [y], transB=1))
        if relu:
            self.nodes.append(helper.make_node("Relu", [y], [out or name]))
            return out or name
        return y

    def op(self, op_type, inputs, **attrs):
        name = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attrs))
        return name

    def model(self, input_shape, output_shape):
        return _model(self.nodes, [("x", input_shape)], output_shape, self.weights)


def _width(channels, width):
    return max(1, int(round(channels * width)))


def ad_autoencoder(rng, width=1.0):
    """AD FC autoencoder: 640 -> 128 x4 -> 8 -> 128 x4 -> 640 (ReLU after every layer but the last)."""
    hidden = _width(128, width)
    sizes = [640, hidden, hidden, hidden, hidden, 8, hidden, hidden, hidden, hidden, 640]
    g, x = _Graph(rng), "x"
    for i, (features, out_features) in enumerate(zip(sizes, sizes[1:], strict=False)):
        last = i == len(sizes) - 2
        x = g.gemm(x, features, out_features, relu=not last, out="y" if last else None)
    return g.model((1, 640), (1, 640))


def ds_cnn(rng, width=1.0):
    """KWS DS-CNN on a 49x10 MFCC map: conv 10x4 stride 2 ("same" padding), 4 depthwise-separable blocks, average
    pool 25x5, FC 12, Softmax."""
    channels = _width(64, width)
    g = _Graph(rng)
    x = g.conv("x", 1, channels, (10, 4), stride=2, pads=[4, 1, 5, 1])      # TensorFlow's "same" for 49x10
    for _ in range(4):
        x = g.conv(x, channels, channels, 3, group=channels)
        x = g.conv(x, channels, channels, 1)
    x = g.op("AveragePool", [x], kernel_shape=[25, 5])
    x = g.op("Flatten", [x])
    x = g.gemm(x, channels, 12, relu=False)
    g.nodes.append(helper.make_node("Softmax", [x], ["y"], axis=1))
    return g.model((1, 1, 49, 10), (1, 12))


def resnet8(rng, width=1.0):
    """IC ResNet-8 on 3x32x32: conv 16, then stacks of 16, 32 and 64 filters (the last two stride 2 with a 1x1
    shortcut), average pool 8x8, FC 10, Softmax."""
    g = _Graph(rng)
    widths = [_width(c, width) for c in (16, 32, 64)]
    x = g.conv("x", 3, widths[0], 3)
    channels = widths[0]
    for i, out_channels in enumerate(widths):
        stride = 1 if i == 0 else 2
        y = g.conv(x, channels, out_channels, 3, stride=stride, pads=[1, 1, 1, 1])
        y = g.conv(y, out_channels, out_channels, 3, relu=False)
        shortcut = x if i == 0 else g.conv(x, channels, out_channels, 1, stride=2, pads=[0, 0, 0, 0], relu=False)
        x = g.op("Relu", [g.op("Add", [y, shortcut])])
        channels = out_channels
    x = g.op("AveragePool", [x], kernel_shape=[8, 8])
    x = g.op("Flatten", [x])
    x = g.gemm(x, channels, 10, relu=False)
    g.nodes.append(helper.make_node("Softmax", [x], ["y"], axis=1))
    return g.model((1, 3, 32, 32), (1, 10))


#: MobileNetV1's depthwise-separable blocks: (pointwise output channels at alpha 1, depthwise stride).
_MOBILENET_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
                     (512, 1), (512, 1), (1024, 2), (1024, 1)]


def mobilenet_v1(rng, width=1.0, size=96):
    """VWW MobileNetV1 alpha 0.25 on 3x96x96 (``width`` scales alpha's channels further): conv 3x3/2, 13
    depthwise-separable blocks, average pool, FC 2, Softmax."""
    g = _Graph(rng)
    channels = _width(32 * 0.25, width)
    x = g.conv("x", 3, channels, 3, stride=2, pads=[0, 0, 1, 1])           # TensorFlow's "same" for stride 2
    side = conv_output_size(size, 3, 2, 0, 1)
    for out_channels, stride in _MOBILENET_BLOCKS:
        pads = [1, 1, 1, 1] if stride == 1 else [0, 0, 1, 1]
        x = g.conv(x, channels, channels, 3, stride=stride, pads=pads, group=channels)
        side = conv_output_size(side, 3, stride, pads[0], pads[2])
        out_channels = _width(out_channels * 0.25, width)
        x = g.conv(x, channels, out_channels, 1)
        channels = out_channels
    x = g.op("AveragePool", [x], kernel_shape=[side, side])
    x = g.op("Flatten", [x])
    x = g.gemm(x, channels, 2, relu=False)
    g.nodes.append(helper.make_node("Softmax", [x], ["y"], axis=1))
    return g.model((1, 3, size, size), (1, 2))


#: name -> builder, in MLPerf Tiny's order.
MODELS = {"ic_resnet8": resnet8, "kws_ds_cnn": ds_cnn, "vww_mobilenet": mobilenet_v1, "ad_autoencoder": ad_autoencoder}


def quantized(name, folder, *, seed=0, width=1.0, per_channel=False):
    """Model ``name`` built with seeded random weights and quantized statically by onnxruntime (QOperator, uint8
    activations, int8 weights, random calibration); returns the path of the quantized model in ``folder``."""
    from onnxruntime.quantization import QuantFormat, QuantType

    rng = np.random.default_rng(seed)
    model = MODELS[name](rng, width=width)
    folder.mkdir(parents=True, exist_ok=True)
    quantize_model(model, folder, rng, quant_format=QuantFormat.QOperator, per_channel=per_channel,
                   activation_type=QuantType.QUInt8)
    path = folder / f"{name}.onnx"
    (folder / "quant.onnx").rename(path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="write the four MLPerf Tiny models, quantized")
    parser.add_argument("--out", default="build/mlperf", help="folder (default build/mlperf)")
    parser.add_argument("--width", type=float, default=1.0, help="channel width factor (default 1.0)")
    args = parser.parse_args(argv)
    if not 0 < args.width <= 1:
        parser.error(f"--width: {args.width:g} is out of range; accepted: above 0, up to 1")
    print(",".join(str(quantized(name, Path(args.out) / name, width=args.width)) for name in MODELS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
