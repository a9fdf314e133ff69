"""The digits CNN in NumPy, layer for layer as its ONNX graph (see ``export``), with its backward pass.

image -> Conv3x3+Relu -> Conv3x3+Relu -> Add(residual) -> MaxPool2x2 -> Conv3x3+Relu -> GlobalAveragePool
-> Flatten -> Gemm -> logits. Every convolution is 3x3, stride 1, padding 1, so it keeps the spatial size.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

IMAGE_SHAPE = (1, 8, 8)
CHANNELS = (16, 16, 32)  # output channels of conv1, conv2 (same as conv1: the residual adds them), conv3
NUM_CLASSES = 10
KERNEL = 3
POOL = 2


def init_params(rng, channels=CHANNELS):
    """He-normal weights and zero biases, float32, keyed by the ONNX initializer names ``export`` uses."""
    if channels[0] != channels[1]:
        raise ValueError(f"channels {channels}: conv1 and conv2 must have as many outputs for the residual Add")
    params = {}
    in_channels = IMAGE_SHAPE[0]
    for name, out_channels in zip(("conv1", "conv2", "conv3"), channels, strict=True):
        fan_in = in_channels * KERNEL * KERNEL
        params[f"{name}.weight"] = rng.normal(0.0, np.sqrt(2.0 / fan_in),
                                              (out_channels, in_channels, KERNEL, KERNEL)).astype(np.float32)
        params[f"{name}.bias"] = np.zeros(out_channels, np.float32)
        in_channels = out_channels
    # Gemm with transB=1, as PyTorch exports a Linear layer: weight is [classes, features].
    params["fc.weight"] = rng.normal(0.0, np.sqrt(1.0 / in_channels), (NUM_CLASSES, in_channels)).astype(np.float32)
    params["fc.bias"] = np.zeros(NUM_CLASSES, np.float32)
    return params


def _im2col(x):
    """(N, C, H, W) -> (N*H*W, C*9) patches, columns ordered as the weight's (C, kh, kw)."""
    n, c, h, w = x.shape
    pad = KERNEL // 2
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(padded, (KERNEL, KERNEL), axis=(2, 3))  # (N, C, H, W, kh, kw)
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * KERNEL * KERNEL)


def _conv(x, weight, bias):
    n, _, h, w = x.shape
    cols = _im2col(x)
    out = cols @ weight.reshape(len(weight), -1).T + bias
    return out.reshape(n, h, w, -1).transpose(0, 3, 1, 2), cols


def _conv_backward(d_out, cols, weight, x_shape, *, need_input_grad=True):
    n, c, h, w = x_shape
    d_flat = d_out.transpose(0, 2, 3, 1).reshape(-1, len(weight))
    d_weight = (d_flat.T @ cols).reshape(weight.shape)
    d_bias = d_flat.sum(axis=0)
    if not need_input_grad:
        return None, d_weight, d_bias
    d_cols = (d_flat @ weight.reshape(len(weight), -1)).reshape(n, h, w, c, KERNEL, KERNEL)
    pad = KERNEL // 2
    d_padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), d_out.dtype)
    for i in range(KERNEL):  # col2im: each patch position scatters back onto the pixels it read
        for j in range(KERNEL):
            d_padded[:, :, i:i + h, j:j + w] += d_cols[..., i, j].transpose(0, 3, 1, 2)
    return d_padded[:, :, pad:pad + h, pad:pad + w], d_weight, d_bias


def _pool_windows(x):
    """(N, C, H, W) -> (N, C, H/2, W/2, 4): the four pixels of each 2x2 pooling window."""
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // POOL, POOL, w // POOL, POOL).transpose(0, 1, 2, 4, 3, 5)
    return blocks.reshape(n, c, h // POOL, w // POOL, POOL * POOL)


def _maxpool_backward(d_out, argmax, x_shape):
    n, c, h, w = x_shape
    d_windows = np.zeros((*d_out.shape, POOL * POOL), d_out.dtype)
    np.put_along_axis(d_windows, argmax[..., np.newaxis], d_out[..., np.newaxis], axis=-1)
    d_windows = d_windows.reshape(n, c, h // POOL, w // POOL, POOL, POOL).transpose(0, 1, 2, 4, 3, 5)
    return d_windows.reshape(x_shape)


def forward(params, images, *, keep=False):
    """Logits of a float32 batch ``images`` (N, 1, 8, 8); with ``keep``, also what ``backward`` needs."""
    z1, cols1 = _conv(images, params["conv1.weight"], params["conv1.bias"])
    a1 = np.maximum(z1, 0)
    z2, cols2 = _conv(a1, params["conv2.weight"], params["conv2.bias"])
    a2 = np.maximum(z2, 0)
    residual = a2 + a1
    windows = _pool_windows(residual)
    argmax = windows.argmax(axis=-1)  # the first maximum, as onnxruntime's MaxPool, so ties route one gradient
    pooled = np.take_along_axis(windows, argmax[..., np.newaxis], axis=-1)[..., 0]
    z3, cols3 = _conv(pooled, params["conv3.weight"], params["conv3.bias"])
    a3 = np.maximum(z3, 0)
    features = a3.mean(axis=(2, 3))
    logits = features @ params["fc.weight"].T + params["fc.bias"]
    if not keep:
        return logits
    cache = {"images_shape": images.shape, "cols1": cols1, "z1": z1, "a1_shape": a1.shape, "cols2": cols2,
             "z2": z2, "residual_shape": residual.shape, "argmax": argmax, "pooled_shape": pooled.shape,
             "cols3": cols3, "z3": z3, "features": features}
    return logits, cache


def backward(params, cache, d_logits):
    """Gradients of the loss for every parameter, given ``d_logits`` = dLoss/dlogits of the kept ``forward``."""
    grads = {"fc.weight": d_logits.T @ cache["features"], "fc.bias": d_logits.sum(axis=0)}
    d_features = d_logits @ params["fc.weight"]
    z3 = cache["z3"]
    d_a3 = np.broadcast_to(d_features[:, :, np.newaxis, np.newaxis] / (z3.shape[2] * z3.shape[3]), z3.shape)
    d_pooled, grads["conv3.weight"], grads["conv3.bias"] = _conv_backward(
        d_a3 * (z3 > 0), cache["cols3"], params["conv3.weight"], cache["pooled_shape"])
    d_residual = _maxpool_backward(d_pooled, cache["argmax"], cache["residual_shape"])
    d_a1, grads["conv2.weight"], grads["conv2.bias"] = _conv_backward(
        d_residual * (cache["z2"] > 0), cache["cols2"], params["conv2.weight"], cache["a1_shape"])
    d_a1 = d_a1 + d_residual  # the residual branch adds conv1's activation straight to the sum
    _, grads["conv1.weight"], grads["conv1.bias"] = _conv_backward(
        d_a1 * (cache["z1"] > 0), cache["cols1"], params["conv1.weight"], cache["images_shape"],
        need_input_grad=False)
    return grads


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``logits`` against int ``labels``, and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = -log_probs[rows, labels].mean()
    d_logits = np.exp(log_probs)
    d_logits[rows, labels] -= 1
    return float(loss), (d_logits / len(labels)).astype(logits.dtype)


def macs_per_image(params):
    """Multiply-accumulates per image of each layer with weights: ``{"conv1": ..., "fc": ...}``."""
    height, width = IMAGE_SHAPE[1:]
    pooled = (height // POOL) * (width // POOL)
    pixels = {"conv1": height * width, "conv2": height * width, "conv3": pooled, "fc": 1}
    return {name: int(params[f"{name}.weight"].size * count) for name, count in pixels.items()}
