"""Depthwise convolutions on a weight-stationary array (:func:`tessera.hw.layouts.command_layout`, ``taps``).

A depthwise command computes output tile ``g`` (channels ``g * cols`` on) from the same channels of the input
alone: column ``c`` takes lane ``lane_group * cols + c`` of each activation word and holds the ``taps`` weights of
one kernel row down its rows, so a fold (a kernel row) streams the map's positions once and every column sums its
own channel's taps along the row. Its weights are ``KH * KW`` words a tile, where the dense (block-diagonal) form
of the same layer needs a ``rows x cols`` tile per tap, nearly all zeros, and a fold per tap.

These are the pieces both compilers (:func:`tessera.sw_driver.compiler.compile_conv` and the resident compiler) and
the counters predicted from a program (:mod:`tessera.sw_driver.program_counters`) share.
"""

import numpy as np

from tessera.hw.layouts import MAX_CONV_SIDE, MAX_DEPTHWISE_STRIDE, MAX_KERNEL, depthwise_positions, max_command_k

__all__ = ["depthwise_eligible", "depthwise_geometry", "depthwise_fields", "depthwise_weight_words",
           "fold_positions"]


def _channelwise(w):
    """Whether dense conv weights (O, C, KH, KW) make each output channel of its own input channel alone (O == C,
    zeros off the diagonal): a depthwise conv of channel multiplier 1, as :func:`~tessera.sw_driver.compiler.
    dense_group_weights` lays one out."""
    out_channels, channels = w.shape[:2]
    if out_channels != channels:
        return False
    off_diagonal = ~np.eye(channels, dtype=bool)
    return not np.any(w[off_diagonal])


def depthwise_eligible(cfg, w, strides, out_w):
    """Whether a conv of dense weights ``w`` (O, C, KH, KW), ``strides`` and ``out_w`` output columns runs as
    depthwise commands on ``cfg``: a ws array whose rows are a whole number of its columns (each output tile's
    channels then lie in one lane group of one channel block), stride 1 or 2, each output channel reading only its
    own input channel, a kernel the command's fields take and a streamed row of positions the geometry can
    address."""
    kh, kw = w.shape[2:]
    return (cfg.dataflow == "ws" and cfg.cols <= cfg.rows and cfg.rows % cfg.cols == 0
            and strides[0] == strides[1] <= MAX_DEPTHWISE_STRIDE and 1 <= kw <= min(cfg.rows, MAX_KERNEL)
            and 1 <= kh <= min(MAX_KERNEL, max_command_k(cfg))
            and depthwise_positions(out_w, kw, strides[1]) <= MAX_CONV_SIDE and _channelwise(w))


def depthwise_geometry(kernel, out_w, stride):
    """The CONV_SETUP fields that differ from a dense conv's: a ``KH x 1`` kernel over the virtual row of
    :func:`~tessera.hw.layouts.depthwise_positions` (the rest, the input map's and the stride, are as for any
    conv)."""
    kh, kw = kernel
    return dict(kernel_h=kh, kernel_w=1, out_w=depthwise_positions(out_w, kw, stride))


def depthwise_fields(cfg, kernel, tile):
    """The GEMM fields of output tile ``tile``'s depthwise commands besides the pixels and bases: a fold per kernel
    row, the kernel's width of taps, and the lane group of the tile's channels within their channel block."""
    kh, kw = kernel
    return dict(k=kh, taps=kw, lane_group=tile * cfg.cols % cfg.rows // cfg.cols)


def depthwise_block(cfg, tile):
    """The channel block (word of a pixel) that holds output tile ``tile``'s channels."""
    return tile * cfg.cols // cfg.rows


def depthwise_weight_words(cfg, w, tile):
    """Output tile ``tile``'s weight words, ``KH * KW`` of them: word ``f * KW + t`` holds tap (``f``, ``t``) of the
    tile's ``cols`` channels, one a lane (zero past the layer's channels); ``w`` is dense (O, C, KH, KW)."""
    C = cfg.cols
    channels = np.arange(tile * C, min(len(w), (tile + 1) * C))
    kh, kw = w.shape[2:]
    words = np.zeros((kh * kw, C), np.int8)
    words[:, :len(channels)] = w[channels, channels].reshape(len(channels), kh * kw).T
    return words


def fold_positions(m, taps, out_x, width, stride=1):
    """Positions one fold of a command streams (its array cycles): ``m`` for any but a depthwise command; a
    depthwise one (``taps``, over a geometry ``width`` positions wide at ``stride``) streams from its first
    output's position (``out_x * stride``) to the end of the row that holds its ``m``-th, whose positions past
    the last output stream too (not written)."""
    if not taps:
        return m
    outputs_per_row = (width - taps) // stride + 1
    rows = 1 + -(-max(0, m - (outputs_per_row - out_x)) // outputs_per_row)
    return rows * width - out_x * stride
