"""Space-to-depth folding of a strided convolution whose window the device cannot take as it is.

A convolution of stride ``s`` reads, for output pixel ``(i, j)``, input pixel ``(s*i + ky, s*j + kx)``. Folding the
(padded) input ``s x s`` pixels into one, their ``s*s*C`` values its channels, makes it a convolution of stride 1,
no padding and a kernel of ``ceil(KH/s) x ceil(KW/s)``, with the same products and the same sums: bit for bit the
same outputs. The DS-CNN's first conv (10x4, stride 2) becomes a 5x2 conv over 4 channels, within the device's
7x7 window and 4 times fuller rows. Only an input the host sends can be folded (the host folds it on the way), so
the device runs it where the layer reads a model's input, or a layer the host feeds (layer by layer).
"""

import dataclasses
import math

import numpy as np

from tessera.hw.layouts import MAX_KERNEL

__all__ = ["InputFold", "foldable", "input_fold"]


@dataclasses.dataclass(frozen=True)
class InputFold:
    """How a convolution of ``kernel``, ``stride`` and ``pads`` (ONNX: top, left, bottom, right) over an input of
    ``in_hw`` runs folded: see the module docstring."""
    stride: int
    kernel: tuple
    pads: tuple
    in_hw: tuple
    pad_value: int = 0     # what the padding reads (the input's zero point), unless :meth:`input` is told

    @property
    def out_hw(self):
        (h, w), (kh, kw), (top, left, bottom, right) = self.in_hw, self.kernel, self.pads
        return (h + top + bottom - kh) // self.stride + 1, (w + left + right - kw) // self.stride + 1

    @property
    def folded_kernel(self):
        return tuple(math.ceil(k / self.stride) for k in self.kernel)

    @property
    def folded_hw(self):
        """The folded input's height and width: what the folded windows read, no more."""
        return tuple(out - 1 + k for out, k in zip(self.out_hw, self.folded_kernel, strict=True))

    def folded_shape(self, channels):
        return (channels * self.stride ** 2, *self.folded_hw)

    def input(self, x, pad_value=None):
        """``x`` (N, C, H, W) folded: (N, C*s*s, H', W'), channel ``(dy*s + dx)*C + c`` of pixel ``(i, j)`` input
        pixel ``(s*i + dy, s*j + dx)`` of channel ``c`` of the padded input (padding reads ``pad_value``)."""
        pad_value = self.pad_value if pad_value is None else pad_value
        s, (top, left) = self.stride, self.pads[:2]
        n, c, h, w = x.shape
        fh, fw = self.folded_hw
        padded = np.full((n, c, s * fh, s * fw), pad_value, x.dtype)
        rows, cols = min(h, s * fh - top), min(w, s * fw - left)    # (input a window never reads is left out)
        padded[:, :, top:top + rows, left:left + cols] = x[:, :, :rows, :cols]
        folded = padded.reshape(n, c, fh, s, fw, s).transpose(0, 3, 5, 1, 2, 4)    # (n, dy, dx, c, i, j)
        return np.ascontiguousarray(folded.reshape(n, s * s * c, fh, fw))

    def weights(self, w):
        """``w`` (O, C, KH, KW) as the folded convolution's (O, C*s*s, KH', KW'): taps past the kernel are zero."""
        s, (fkh, fkw) = self.stride, self.folded_kernel
        o, c, kh, kw = w.shape
        padded = np.zeros((o, c, s * fkh, s * fkw), w.dtype)
        padded[:, :, :kh, :kw] = w
        folded = padded.reshape(o, c, fkh, s, fkw, s).transpose(0, 3, 5, 1, 2, 4)    # (o, dy, dx, c, a, b)
        return np.ascontiguousarray(folded.reshape(o, s * s * c, fkh, fkw))


def input_fold(kernel, strides, pads, in_hw):
    """The fold of a convolution of ``kernel``, ``strides`` and ``pads`` over an input of ``in_hw`` (see the module
    docstring), or None if it does not fold within the device's window (:func:`foldable`)."""
    if not foldable(kernel, strides):
        return None
    fold = InputFold(int(strides[0]), tuple(kernel), tuple(pads), tuple(in_hw))
    return fold if min(fold.out_hw) >= 1 else None


def foldable(kernel, strides):
    """Whether a convolution of ``kernel`` and ``strides`` folds within the device's window (whatever its input)."""
    (stride_y, stride_x) = strides
    return stride_y == stride_x >= 2 and max(math.ceil(k / stride_y) for k in kernel) <= MAX_KERNEL
