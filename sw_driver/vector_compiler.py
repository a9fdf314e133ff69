"""Compiling max pooling and element-wise add for the device's vector unit (:mod:`tessera.hw.vector`).

Feature maps sit in the vector buffer pixel by pixel, ``ceil(C / 4)`` words per pixel (four int8 channels
per word). The buffer is split into two halves used in turn, so the next images load while the unit works
on the previous ones; a WAIT holds a load back until the commands reading that half are done.
"""

import dataclasses

import numpy as np

from tessera.hw.isa import LANES_PER_WORD, BufferId, Opcode, words_for_lanes
from tessera.hw.qadd import FRACTION_BITS, MAX_FIXED, MAX_SHIFT, SIGNIFICAND_BITS
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import TilingError, conv_output_shape
from tessera.sw_driver.isa_encode import instruction, load

__all__ = ["VectorProgram", "compile_maxpool", "compile_add", "add_params_for", "qadd_params"]



@dataclasses.dataclass
class VectorProgram:
    """An instruction stream for the vector unit and how to put its VECTOR packets back together."""
    words: np.ndarray          # uint32 link words
    result_words: list         # words of each command's VECTOR packet, in command order
    assemble_results: object   # list of int8 byte arrays -> output array
    macs: int = 0
    macs_skipped: int = 0      # none: the vector unit skips nothing

    def reply_words(self, cfg):
        return sum(1 + n for n in self.result_words)

    @property
    def commands(self):
        return len(self.result_words)

    def assemble(self, results, cols):
        if len(results) != len(self.result_words):
            raise ValueError(f"expected results of {len(self.result_words)} commands, got {len(results)}")
        return self.assemble_results(results)


def _require_vector_unit(cfg):
    if cfg.vec_depth == 0:
        raise TilingError("this configuration has no vector unit (vec_depth = 0)")


class _Halves:
    """The two halves of the vector buffer, used in turn; a WAIT before reusing one still being read."""

    def __init__(self, cfg, parts=1):
        self.size = cfg.vec_depth // (2 * parts)
        self.parts = parts
        self.next = 0
        self.last_reader = [None, None]
        self.waited = 0

    def take(self, cfg, commands_so_far):
        """Base address of the next half and the WAIT it needs (a list of words, maybe empty)."""
        half = self.next
        self.next ^= 1
        wait = []
        reader = self.last_reader[half]
        if reader is not None and reader + 1 > self.waited:
            self.waited = reader + 1
            wait = [instruction(cfg, Opcode.WAIT, pending=commands_so_far - self.waited)]
        return half * self.size * self.parts, half, wait


def _pixel_words(fmap):
    """(H, W, C) int8 as vector buffer words, pixel by pixel, ``ceil(C / 4)`` words per pixel."""
    h, w, c = fmap.shape
    blocks = words_for_lanes(c)
    padded = np.zeros((h, w, blocks * LANES_PER_WORD), np.int8)
    padded[..., :c] = fmap
    return padded.reshape(-1, LANES_PER_WORD)


def compile_maxpool(cfg, x, kernel, strides, pads):
    """Max pooling of int8 ``x`` (N, C, H, W) on the vector unit; ``assemble`` gives (N, C, out_h, out_w).

    Whole images go into one half of the buffer (as many as fit); an image larger than a half is split into
    bands of output rows, each behind its own POOL_SETUP.
    """
    _require_vector_unit(cfg)
    x = np.asarray(x)
    if x.dtype != np.int8 or x.ndim != 4:
        raise TilingError(f"max pooling needs int8 x (N, C, H, W); got {x.dtype}{x.shape}")
    (kh, kw), (sy, sx) = kernel, strides
    if sy != sx or not 1 <= sy <= 3 or not (1 <= kh <= 7 and 1 <= kw <= 7) or max(pads) > 7:
        raise TilingError(f"max pool kernel {kh}x{kw}, strides {strides}, pads {pads}: the vector unit takes "
                          f"kernels up to 7x7, equal strides 1-3 and pads up to 7")
    n, channels, in_h, in_w = x.shape
    out_h, out_w = conv_output_shape(in_h, in_w, kh, kw, sy, pads)
    blocks = words_for_lanes(channels)
    halves = _Halves(cfg)
    row_words = in_w * blocks
    words, result_words, pieces = [], [], []

    def setup(rows, pad_top):
        return instruction(cfg, Opcode.POOL_SETUP, in_h=rows, in_w=in_w, out_w=out_w, channel_blocks=blocks,
                           kernel_h=kh, kernel_w=kw, stride=sy, pad_top=pad_top, pad_left=pads[1], pad_value=0)

    image_words = in_h * row_words
    if image_words <= halves.size:
        words.append(setup(in_h, pads[0]))
        per_half = halves.size // image_words
        for first in range(0, n, per_half):
            batch = x[first:first + per_half]
            base, half, wait = halves.take(cfg, len(result_words))
            words += wait
            words.append(load(cfg, BufferId.VEC, base, _pixel_words(
                batch.transpose(0, 2, 3, 1).reshape(-1, in_w, channels))))
            for i in range(len(batch)):
                words.append(instruction(cfg, Opcode.POOL, x_base=base + i * image_words, m=out_h * out_w,
                                         out_y=0, out_x=0))
                result_words.append(out_h * out_w * blocks)
                pieces.append((first + i, 0, out_h))
            halves.last_reader[half] = len(result_words) - 1
    else:
        rows_fit = halves.size // row_words
        per_band = (rows_fit - kh) // sy + 1 if rows_fit >= kh else 0
        if per_band < 1:
            raise TilingError(f"a {kh}-row pooling window needs {kh} input rows of {row_words} words; half the "
                              f"vector buffer holds {halves.size}")
        for image in range(n):
            fmap = x[image].transpose(1, 2, 0)
            for oy0 in range(0, out_h, per_band):
                oy1 = min(out_h, oy0 + per_band)
                first_row = max(0, oy0 * sy - pads[0])
                last_row = min(in_h, (oy1 - 1) * sy - pads[0] + kh)
                base, half, wait = halves.take(cfg, len(result_words))
                words += wait
                words += [setup(last_row - first_row, max(0, pads[0] - oy0 * sy)),
                          load(cfg, BufferId.VEC, base, _pixel_words(fmap[first_row:last_row])),
                          instruction(cfg, Opcode.POOL, x_base=base, m=(oy1 - oy0) * out_w, out_y=0, out_x=0)]
                result_words.append((oy1 - oy0) * out_w * blocks)
                pieces.append((image, oy0, oy1 - oy0))
                halves.last_reader[half] = len(result_words) - 1

    def assemble(results):
        y = np.zeros((n, channels, out_h, out_w), np.int8)
        for (image, oy0, rows), body in zip(pieces, results, strict=True):
            block = np.asarray(body, np.int8).reshape(rows, out_w, blocks * LANES_PER_WORD)[..., :channels]
            y[image, :, oy0:oy0 + rows] = block.transpose(2, 0, 1)
        return y

    return VectorProgram(np.concatenate(words), result_words, assemble)


def add_params_for(a_params, b_params, y_params, *, on_uint8=False):
    """VEC_SETUP fields for a quantized add with these QuantParams; ``on_uint8`` when onnxruntime runs int8
    tensors through its uint8 kernel (values and zero points + 128; uint8 tensors as they are). ValueError if not
    exact on the device."""
    def zero_point(params):
        return int(params.zero_point) + (128 if on_uint8 and params.dtype == np.int8 else 0)

    dtype = np.uint8 if on_uint8 or y_params.dtype == np.uint8 else np.int8
    return qadd_params(a_params.scale, zero_point(a_params), b_params.scale, zero_point(b_params), y_params.scale,
                       zero_point(y_params), dtype)


def compile_add(cfg, a, b, params):
    """Element-wise quantized add of int8 ``a`` and ``b`` (same shape; device form, uint8 held as x - 128)
    with VEC_SETUP ``params`` (:func:`add_params_for`); ``assemble`` gives the int8 result, shaped like ``a``.
    """
    _require_vector_unit(cfg)
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != np.int8 or b.dtype != np.int8:
        raise TilingError(f"add needs two int8 tensors of one shape; got {a.dtype}{a.shape} and {b.dtype}{b.shape}")
    flat_words = words_for_lanes(a.size)
    padded = np.zeros((2, flat_words * LANES_PER_WORD), np.int8)
    padded[0, :a.size], padded[1, :b.size] = a.reshape(-1), b.reshape(-1)
    halves = _Halves(cfg, parts=2)      # each half holds a chunk of a, then the same chunk of b
    chunk = min(halves.size, (1 << 16) - 1)
    words = [instruction(cfg, Opcode.VEC_SETUP, **params)]
    result_words = []
    for start in range(0, flat_words, chunk):
        count = min(chunk, flat_words - start)
        base, half, wait = halves.take(cfg, len(result_words))
        words += wait
        for i, part in enumerate(padded.reshape(2, -1, LANES_PER_WORD)):
            words.append(load(cfg, BufferId.VEC, base + i * halves.size, part[start:start + count]))
        words.append(instruction(cfg, Opcode.ADD, a_base=base, b_base=base + halves.size, words=count))
        result_words.append(count)
        halves.last_reader[half] = len(result_words) - 1

    def assemble(results):
        flat = np.concatenate([np.asarray(r, np.int8) for r in results])
        return flat[:a.size].reshape(a.shape)

    return VectorProgram(np.concatenate(words), result_words, assemble)


def _as_fixed_ratio(value, name):
    """``(mant, shift)`` with ``value == mant * 2**(shift - FRACTION_BITS)`` exactly, or ValueError."""
    value = np.float32(value)
    mant, exponent = np.frexp(np.float64(value))         # value = mant * 2**exponent, 0.5 <= mant < 1
    mant, exponent = int(mant * (1 << SIGNIFICAND_BITS)), int(exponent) - SIGNIFICAND_BITS
    while mant and mant % 2 == 0 and exponent + FRACTION_BITS < 0:
        mant, exponent = mant // 2, exponent + 1
    shift = exponent + FRACTION_BITS
    if not value > 0 or not 0 <= shift <= MAX_SHIFT or value >= 256:
        raise ValueError(f"scale ratio {name} = {float(value):.6g} is outside what the device's add takes "
                         f"(2**-17 to 2**8)")
    return mant, shift


def qadd_params(a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, dtype):
    """The VEC_SETUP fields for ``QLinearAdd`` with these quantization parameters (as onnxruntime derives
    ``ra``, ``rb`` and ``fixed``); ValueError if the device cannot reproduce it exactly."""
    ra = np.float32(a_scale) / np.float32(y_scale)
    rb = np.float32(b_scale) / np.float32(y_scale)
    fixed = np.float32(y_zp) - golden.fma_f32(   # the same float32 FMA the golden model uses
        ra, np.float32(a_zp), rb * np.float32(b_zp))
    ra_mant, ra_shift = _as_fixed_ratio(ra, "a_scale / y_scale")
    rb_mant, rb_shift = _as_fixed_ratio(rb, "b_scale / y_scale")
    scaled = float(fixed) * (1 << FRACTION_BITS)
    if scaled != int(scaled) or abs(scaled) >= MAX_FIXED:
        raise ValueError(f"the add's constant term {float(fixed)!r} is not exact in the device's fixed point")
    fixed = int(scaled)
    return {"ra_mant": ra_mant, "ra_shift": ra_shift, "rb_mant": rb_mant, "rb_shift": rb_shift,
            "fixed_lo": fixed & 0xFFFFFFFF, "fixed_hi": fixed >> 32, "uint8": int(np.dtype(dtype) == np.uint8)}
