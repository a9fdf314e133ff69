"""Folding a convolution's input on the host: space-to-depth for a strided window the device cannot take as it
is, and a row's kernel taps into channels for a first layer of few channels.

A convolution of stride ``s`` reads, for output pixel ``(i, j)``, input pixel ``(s*i + ky, s*j + kx)``. Folding the
(padded) input ``s x s`` pixels into one, their ``s*s*C`` values its channels, makes it a convolution of stride 1,
no padding and a kernel of ``ceil(KH/s) x ceil(KW/s)``, with the same products and the same sums: bit for bit the
same outputs. The DS-CNN's first conv (10x4, stride 2) becomes a 5x2 conv over 4 channels, within the device's
7x7 window and 4 times fuller rows.

Folding a kernel row's taps as well (im2col along the row, as SCALE-Sim maps a conv): folded pixel ``(i, j)``
holds, as channels ``dx*C' + c``, pixels ``(i, j + dx)`` of the (space-to-depth) input for each of the kernel's
``KW'`` columns, so the conv becomes ``KH' x 1`` over ``KW' * C'`` channels. A 3x3 conv over 3 channels fills 9 of
an array's rows instead of 3 and runs 3 folds instead of 9; the input crosses the link ``KW'`` times over.

Only an input the host sends can be folded (the host folds it on the way), so the device runs it where the layer
reads a model's input, or a layer the host feeds (layer by layer).
"""

import dataclasses
import math

import numpy as np

from tessera.hw.layouts import MAX_KERNEL

__all__ = ["InputFold", "foldable", "input_fold"]


@dataclasses.dataclass(frozen=True)
class InputFold:
    """How a convolution of ``kernel``, ``stride`` and ``pads`` (ONNX: top, left, bottom, right) over an input of
    ``in_hw`` runs folded: space-to-depth by ``stride`` (1: none), then, with ``row_taps``, each kernel row's taps
    into channels (see the module docstring)."""
    stride: int
    kernel: tuple
    pads: tuple
    in_hw: tuple
    pad_value: int = 0     # what the padding reads (the input's zero point), unless :meth:`input` is told
    row_taps: bool = False

    @property
    def out_hw(self):
        (h, w), (kh, kw), (top, left, bottom, right) = self.in_hw, self.kernel, self.pads
        return (h + top + bottom - kh) // self.stride + 1, (w + left + right - kw) // self.stride + 1

    @property
    def _depth_kernel(self):
        """The kernel after space-to-depth."""
        return tuple(math.ceil(k / self.stride) for k in self.kernel)

    @property
    def _depth_hw(self):
        """The space-to-depth input's height and width: what its windows read, no more."""
        return tuple(out - 1 + k for out, k in zip(self.out_hw, self._depth_kernel, strict=True))

    @property
    def folded_kernel(self):
        kh, kw = self._depth_kernel
        return (kh, 1) if self.row_taps else (kh, kw)

    @property
    def folded_hw(self):
        """The folded input's height and width: what the folded windows read, no more."""
        return tuple(out - 1 + k for out, k in zip(self.out_hw, self.folded_kernel, strict=True))

    def folded_shape(self, channels):
        return (self.folded_channels(channels), *self.folded_hw)

    def folded_channels(self, channels):
        return channels * self.stride ** 2 * (self._depth_kernel[1] if self.row_taps else 1)

    def input(self, x, pad_value=None):
        """``x`` (N, C, H, W) folded: (N, C', H', W'). Space-to-depth: channel ``(dy*s + dx)*C + c`` of pixel
        ``(i, j)`` is input pixel ``(s*i + dy, s*j + dx)`` of channel ``c`` of the padded input (padding reads
        ``pad_value``); with ``row_taps``, channel ``t*s*s*C + d`` is channel ``d`` of that map's pixel
        ``(i, j + t)``."""
        pad_value = self.pad_value if pad_value is None else pad_value
        s, (top, left) = self.stride, self.pads[:2]
        n, c, h, w = x.shape
        dh, dw = self._depth_hw
        padded = np.full((n, c, s * dh, s * dw), pad_value, x.dtype)
        rows, cols = min(h, s * dh - top), min(w, s * dw - left)    # (input a window never reads is left out)
        padded[:, :, top:top + rows, left:left + cols] = x[:, :, :rows, :cols]
        folded = padded.reshape(n, c, dh, s, dw, s).transpose(0, 3, 5, 1, 2, 4).reshape(n, s * s * c, dh, dw)
        if self.row_taps:
            out_w = self.out_hw[1]
            folded = np.concatenate([folded[..., t:t + out_w] for t in range(self._depth_kernel[1])], axis=1)
        return np.ascontiguousarray(folded)

    def weights(self, w):
        """``w`` (O, C, KH, KW) as the folded convolution's (O, C', KH', KW'): taps past the kernel are zero."""
        s, (dkh, dkw) = self.stride, self._depth_kernel
        o, c, kh, kw = w.shape
        padded = np.zeros((o, c, s * dkh, s * dkw), w.dtype)
        padded[:, :, :kh, :kw] = w
        folded = padded.reshape(o, c, dkh, s, dkw, s).transpose(0, 3, 5, 1, 2, 4).reshape(o, s * s * c, dkh, dkw)
        if self.row_taps:    # (o, t*C' + d, a, 0): tap (a, t) of channel d
            folded = folded.transpose(0, 3, 1, 2).reshape(o, dkw * s * s * c, dkh, 1)
        return np.ascontiguousarray(folded)


def input_fold(kernel, strides, pads, in_hw, *, row_taps=False):
    """The fold of a convolution of ``kernel``, ``strides`` and ``pads`` over an input of ``in_hw`` (see the module
    docstring): space-to-depth, and with ``row_taps`` each kernel row's taps into channels too. None if it does not
    fold within the device's window (:func:`foldable`; a row's taps fold at stride 1 as well)."""
    if not (foldable(kernel, strides) or row_taps and tuple(strides) == (1, 1) and max(kernel) <= MAX_KERNEL):
        return None
    fold = InputFold(int(strides[0]), tuple(kernel), tuple(pads), tuple(in_hw), row_taps=row_taps)
    return fold if min(fold.out_hw) >= 1 else None


def foldable(kernel, strides):
    """Whether a convolution of ``kernel`` and ``strides`` folds within the device's window (whatever its input)."""
    (stride_y, stride_x) = strides
    return stride_y == stride_x >= 2 and max(math.ceil(k / stride_y) for k in kernel) <= MAX_KERNEL
