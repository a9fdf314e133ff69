"""Stream payload layouts of the compute core: the one definition that the RTL, the testbenches and the
host-side code all import (nothing here is written twice).

Buffer layouts (what the loader writes where) for a GEMM ``Y[M, N] = X[M, K] @ W[K, N]``:

* weight-stationary (``ws``): the array holds an ``rows x cols`` slice of ``W``; a command runs ``k`` folds
  of ``rows`` input channels each. Activation word ``x_base + f*m + i`` holds ``X[i, f*rows:(f+1)*rows]``;
  weight word ``w_base + f*rows + r`` holds ``W[f*rows + r, n0:n0+cols]`` (zero padded).
* output-stationary (``os``): each PE accumulates one output of an ``rows x cols`` output tile over ``k`` steps.
  Activation word ``x_base + j`` holds ``X[m0:m0+rows, j]``; weight word ``w_base + j`` holds
  ``W[j, n0:n0+cols]``.

:func:`act_word` and :func:`weight_word` are these addresses as code, for the compiler that writes the buffers
and the models that read them.

Either way a command produces ``m`` output rows of ``cols`` channels, requantised with the bias and scales
of parameter word ``p_base`` and the output zero point ``y_zp``.

Convolution commands (``conv``) read a feature map stored pixel by pixel in raster order, ``channel_blocks``
words per pixel (:func:`fmap_word`); the vector unit's pooling reads its buffer the same way.

Row-stationary (``rs``) commands are all convolutions (a GEMM runs as a 1x1 one) of ``filters`` filters
(:mod:`tessera.hw.compute_rs`). With ``q`` channels per PE for the geometry's ``kernel_h`` (``KH``, the filter
rows of one chunk; :func:`~tessera.hw.array_rs.rs_mapping`):

* weights (:func:`rs_filter_word`): pass by pass (channel block ``b`` of ``rows`` input channels, then
  filter-row chunk ``c``, chunks fastest), within a pass filter by filter, ``q * KW`` words a filter (its
  scratchpad entries in that pass, in order: :func:`rs_filter_entries`). Lane ``t*KH + y`` of filter ``i``'s
  word ``n*KW + x`` in pass ``(b, c)`` holds its weight for input channel ``b*rows + t*q + n``, filter row
  ``c*KH + y`` and column ``x`` (PE row ``t*KH + y`` is filter row ``y`` of PE set ``t``).
* parameters: word ``p_base + i`` holds filter ``i``'s bias and scale in every lane.
* results: accumulator row ``i * out_w + ox`` (:func:`rs_result_row`) holds output column ``ox`` of filter
  ``i``, lane ``j`` output row ``out_y + j``.
"""

import enum

from amaranth.hdl import Mux, signed, unsigned
from amaranth.lib import data
from amaranth.utils import ceil_log2

__all__ = ["command_layout", "conv_geometry_layout", "fold_header_layout", "MAX_CONV_SIDE", "MAX_KERNEL", "MAX_STRIDE",
           "MAX_PAD", "KERNEL_BITS", "STRIDE_BITS", "PAD_BITS", "act_word", "weight_word", "fmap_word",
           "rs_filter_entries", "rs_filter_word", "rs_result_row", "act_load_layout",
           "weight_load_layout", "param_load_layout",
           "result_layout", "max_command_k", "vec_load_layout", "vec_command_layout", "store_setup_layout",
           "store_words", "result_descriptor_layout", "act_write_layout", "StoreTarget", "vec_write_layout",
           "store_addr_shape", "result_rows", "depthwise_positions", "MAX_DEPTHWISE_STRIDE"]

OPERAND = signed(8)
ACC = signed(32)
SCALE = unsigned(32)  # IEEE-754 float32 bit pattern


def _addr(depth):
    return unsigned(max(1, ceil_log2(depth)))


def max_command_k(cfg):
    """Largest ``k`` field of a command: folds (ws), reduction steps (os) or channel blocks (rs).

    An os step reads one weight word, and one activation word only outside a conv (a conv gathers its taps from the
    stored feature map), so the weight buffer bounds ``k``; the range check bounds a GEMM's by the activations too.
    """
    if cfg.dataflow == "os":
        return cfg.weight_depth
    return cfg.weight_depth // cfg.rows


def act_word(cfg, m, step, row):
    """Offset from ``x_base`` of the activation word that a GEMM command of ``m`` rows reads at ``step`` (ws: a
    fold, for its output row ``row``; os: a reduction step, whose word holds every row). Takes ints or NumPy index
    arrays alike."""
    return step * m + row if cfg.dataflow == "ws" else step


def weight_word(cfg, step, row):
    """Offset from ``w_base`` of the weight word that a GEMM command reads at ``step`` (ws: a fold, for PE row
    ``row``; os: a reduction step). Takes ints or NumPy index arrays alike."""
    return step * cfg.rows + row if cfg.dataflow == "ws" else step


def fmap_word(in_w, channel_blocks, y, x, block):
    """Offset from the map's base of the word that holds channel block ``block`` of pixel (``y``, ``x``) of a
    feature map ``in_w`` pixels wide, ``channel_blocks`` words a pixel (:func:`conv_geometry_layout`). Takes
    ints, NumPy index arrays or Amaranth values alike."""
    return (y * in_w + x) * channel_blocks + block


def rs_filter_entries(channels_per_pe, kernel_w):
    """Filter scratchpad entries of one filter in one row-stationary pass, which are also its weight words in
    that pass: each PE's channels times the kernel width."""
    return channels_per_pe * kernel_w


def rs_filter_word(cfg, kernel_h, kernel_w, channels_per_pe, chunks, filters, f, channel, filter_row, column):
    """Where a row-stationary command keeps weight (``channel``, ``filter_row``, ``column``) of its filter ``f``
    (0 to ``filters - 1``): ``(word, lane)``, the word's offset from ``w_base`` and its lane.

    ``kernel_h`` and ``kernel_w`` are the geometry's (``kernel_h`` the rows of one filter-row chunk),
    ``channels_per_pe`` is ``rs_mapping(cfg.rows, kernel_h)[1]`` and ``chunks`` the command's chunk count
    (its ``out_x``); ``channel`` counts the layer's input channels and ``filter_row`` the whole filter's rows.
    Takes ints or NumPy index arrays alike.
    """
    block, lane_channel = divmod(channel, cfg.rows)
    pe_set, pe_channel = divmod(lane_channel, channels_per_pe)
    chunk, row = divmod(filter_row, kernel_h)
    pass_ = block * chunks + chunk           # chunks fastest, the order hw.compute_rs runs the passes in
    entry = pe_channel * kernel_w + column   # the filter's scratchpad entry in the pass
    return (pass_ * filters + f) * rs_filter_entries(channels_per_pe, kernel_w) + entry, pe_set * kernel_h + row


def rs_result_row(out_w, f, column):
    """Accumulator row (within its half) of output column ``column`` of a row-stationary command's filter ``f``.
    Takes ints, NumPy index arrays or Amaranth values alike."""
    return f * out_w + column


#: Largest input or output feature map side a convolution command can address.
MAX_CONV_SIDE = 1023
#: Widths of the CONV_SETUP fields that bound a convolution; the limits below follow from them.
KERNEL_BITS, STRIDE_BITS, PAD_BITS = 3, 2, 3
#: Largest kernel height and width (also the row-stationary filter scratchpad's entries per channel).
MAX_KERNEL = (1 << KERNEL_BITS) - 1
#: Strides run from 1 to this, equal in both directions.
MAX_STRIDE = (1 << STRIDE_BITS) - 1
#: Largest padding on any side.
MAX_PAD = (1 << PAD_BITS) - 1
#: Largest stride of a depthwise command: the sliding window flags every position (1) or every second one (2) an
#: output (hw.window).
MAX_DEPTHWISE_STRIDE = 2


def command_layout(cfg):
    """One compute command: produce ``m`` output rows of ``cols`` channels.

    With ``conv`` set (weight-stationary only), the rows are output pixels starting at (``out_y``,
    ``out_x``) in raster order, and activations are gathered from an input feature map by sliding-window
    addressing (:func:`conv_geometry_layout`) instead of being read as ``m`` consecutive vectors per fold.

    With ``taps`` set too, a depthwise command: the CONV_SETUP before it describes a kernel ``kernel_h x 1``
    of stride 1 or 2 over positions :func:`depthwise_positions` wide, and fold ``f`` (``f < k``) streams the
    words of kernel row ``f`` at every one of those positions, from ``x_base`` (the channel block's first word,
    ``cb`` 0); the stride steps the rows. Column ``c`` takes lane ``lane_group * cols + c`` of each word alone
    and holds ``taps`` weights down its rows (rows ``taps`` on hold zero): it sums the products of the ``taps``
    consecutive positions from each one. A fold's weights are ``taps`` words, not ``rows``: word
    ``w_base + f * taps + t`` holds tap ``t``. A position a whole number of strides along its row from which
    ``taps`` fit in the row is an output; the ``m`` result rows are the outputs from (``out_y``, ``out_x``) on
    (``out_x`` counts outputs: the position ``out_x * stride``), in raster order (the other positions stream,
    but are not written).
    """
    side = unsigned(ceil_log2(MAX_CONV_SIDE + 1))
    return data.StructLayout({
        "m": unsigned(ceil_log2(cfg.acc_half_depth + 1)),
        "k": unsigned(ceil_log2(max_command_k(cfg) + 1)),
        "x_base": _addr(cfg.act_depth),
        "w_base": _addr(cfg.weight_depth),
        "p_base": _addr(cfg.param_depth),
        "y_zp": signed(8),
        "conv": 1,
        "out_y": side,
        "out_x": side,
        # weight-stationary conv commands only: the weight tile stores only the folds that are not all zero,
        # each behind a fold header word (fold_header_layout), and k counts the stored folds
        "sparse": 1,
        # weight-stationary GEMMs (not conv) only: every vector of every fold sums into one output row, as a pool
        # over a map's pixels does (one weight tile for all of them, not a fold per pixel); the command has one
        # result row (result_rows)
        "reduce": 1,
        # weight-stationary conv commands only, 0 for any other: a depthwise command of this many taps across
        # (the kernel width). Column c reads lane lane_group * cols + c of each word, alone, down the whole column,
        # so the column's rows are taps along the output row (see depthwise_geometry); k folds are the kernel's rows
        "taps": unsigned(KERNEL_BITS),
        "lane_group": unsigned(max(1, ceil_log2(max(1, cfg.rows // cfg.cols)))),
        # row-stationary only: the filters (output channels) the command computes, 1 to cfg.rs_filters; its
        # ``m`` result rows are each filter's output columns in turn (see hw.compute_rs)
        "filters": unsigned(ceil_log2(cfg.rs_filters + 1)),
        # the rows go out as the accumulators' int32 values (no bias, no requantisation), each row as four rows
        # of bytes, least significant first: for integer products with an int32 output (MatMulInteger)
        "raw": 1,
        # the rows are written into the activation or vector buffer from word ``s_base`` (a StoreTarget; as
        # STORE_SETUP lays them out), not sent to the host: a layer's output stays on chip for the next layer
        "store": unsigned(2),
        "s_base": store_addr_shape(cfg),
    })


def depthwise_positions(out_w, taps, stride=1):
    """Positions a depthwise command streams per output row (the CONV_SETUP's ``out_w`` for a depthwise layer):
    up to the layer's last of ``out_w`` outputs, ``stride`` positions apart, then the ``taps - 1`` positions its
    taps reach past it."""
    return (out_w - 1) * stride + taps


def result_rows(command):
    """The rows a compute command (a View of command_layout) produces: ``m``, or one for a ``reduce`` command."""
    return Mux(command.reduce, 1, command.m)


class StoreTarget(enum.IntEnum):
    """Where a command's results go: the ``store`` field of GEMM, POOL and ADD."""
    HOST = 0   # RESULT or VECTOR packets
    ACT = 1    # the activation buffer, where conv and GEMM commands read
    VEC = 2    # the vector buffer, where POOL and ADD read


def store_addr_shape(cfg):
    """A stored command's first word, in whichever buffer it stores into."""
    return _addr(max(2, cfg.act_depth, cfg.vec_depth))


def store_setup_layout():
    """Where a ``store`` command's rows go (set by STORE_SETUP): row ``i`` of the command starts at lane ``lane``
    of word ``s_base + i * stride`` of the target buffer and runs on over the following words' lanes; only its
    first ``lanes`` lanes are written (the output channels that exist), so a row may end, or start, inside a word
    whose other lanes hold other channels (:func:`store_words`). A POOL stored into the activation buffer writes
    output pixel ``i`` the same way, its ``lanes`` channels four at a time from its result words.

    A row-stationary command's rows are output columns (:func:`rs_result_row`), each written lane by lane: row
    ``f * out_w + ox`` (filter ``f``, output column ``ox``) is the one channel ``lane + f`` of the pixels it
    covers, so its lane ``j`` (output row ``out_y + j``, ``j < lanes``) goes into lane ``(lane + f) % W`` of word
    ``s_base + (lane + f) // W + ox * stride + j * lane_stride`` (``W``: the target's lanes per word)."""
    return data.StructLayout({"lane": unsigned(8), "lanes": unsigned(8), "stride": unsigned(16),
                              "lane_stride": unsigned(16)})


def store_words(rows, lane, lanes):
    """Activation words one stored result row touches: its ``lanes`` lanes from lane ``lane`` of the first, in
    words of ``rows`` lanes. Takes ints or Amaranth values alike."""
    return (lane + lanes + rows - 1) // rows


def result_descriptor_layout(cfg):
    """What the result path needs of each compute command, in command order: its result row count
    (:func:`result_rows_shape`), and whether and where the rows are stored on chip (``store``; the other fields
    as :func:`store_setup_layout` and ``s_base``)."""
    # row-stationary: the rows of each filter (the geometry's out_w), after which a stored row's channel steps on
    filter_rows = {"filter_rows": conv_geometry_layout()["out_w"].shape} if cfg.dataflow == "rs" else {}
    return data.StructLayout({"rows": result_rows_shape(cfg), "store": unsigned(2), "base": store_addr_shape(cfg),
                              **dict(store_setup_layout().members), **filter_rows})


def act_write_layout(cfg):
    """One write of the activation buffer: a word, its address and which of its ``rows`` lanes to write (a LOAD
    writes them all; a stored result row the lanes it covers)."""
    return data.StructLayout({"addr": _addr(cfg.act_depth), "data": data.ArrayLayout(OPERAND, cfg.rows),
                              "mask": unsigned(cfg.rows)})


def fold_header_layout():
    """The header word in front of each stored fold of a ``sparse`` command's weight tile: which filter tap
    and channel block the fold's weights belong to. It fills the word's two low lanes, so sparse commands
    need ``cols >= 2``."""
    return data.StructLayout({"kh": unsigned(KERNEL_BITS), "kw": unsigned(KERNEL_BITS),
                              "reserved": unsigned(8 - 2 * KERNEL_BITS), "cb": unsigned(8)})


def conv_geometry_layout():
    """Geometry of the convolution that ``conv`` commands compute (set by the CONV_SETUP instruction).

    The input feature map is stored pixel by pixel in raster order, ``channel_blocks`` words per pixel
    (word ``b`` holds channels ``b*rows .. b*rows+rows-1``). Fold ``f`` of a conv command is filter tap
    (``kh``, ``kw``) and channel block ``cb`` with ``f = (kh * kernel_w + kw) * channel_blocks + cb``. Taps
    outside the input read ``pad_value`` (the input zero point, folded into the bias by the compiler).
    """
    side = unsigned(ceil_log2(MAX_CONV_SIDE + 1))
    return data.StructLayout({
        "in_h": side, "in_w": side, "out_w": side,
        "channel_blocks": unsigned(8),
        "kernel_h": unsigned(KERNEL_BITS), "kernel_w": unsigned(KERNEL_BITS),
        "stride": unsigned(STRIDE_BITS),
        "pad_top": unsigned(PAD_BITS), "pad_left": unsigned(PAD_BITS),
        "pad_value": signed(8),
    })


def act_load_layout(cfg):
    """One activation buffer word and its address."""
    return data.StructLayout({"addr": _addr(cfg.act_depth), "data": data.ArrayLayout(OPERAND, cfg.rows)})


def weight_load_layout(cfg):
    """One weight buffer word (a row of ``cols`` weights) and its address."""
    return data.StructLayout({"addr": _addr(cfg.weight_depth), "data": data.ArrayLayout(OPERAND, cfg.weight_lanes)})


def param_word_layout(cfg):
    """Per-output-channel requantisation parameters for ``cols`` channels."""
    return data.StructLayout({"bias": data.ArrayLayout(ACC, cfg.cols), "scale": data.ArrayLayout(SCALE, cfg.cols)})


def param_load_layout(cfg):
    return data.StructLayout({"addr": _addr(cfg.param_depth), "data": param_word_layout(cfg)})


def result_rows_shape(cfg):
    """A command's count of result rows: ``m``, or ``4 * m`` for a ``raw`` command (four byte rows per row)."""
    return unsigned(ceil_log2(4 * cfg.acc_half_depth + 1))


def result_layout(cfg):
    """One requantised output row: ``cols`` int8 channels."""
    return data.ArrayLayout(OPERAND, cfg.cols)


def vec_load_layout(cfg):
    """One vector buffer word (four int8 lanes, one host link word) and its address."""
    return data.StructLayout({"addr": _addr(max(2, cfg.vec_depth)), "data": data.ArrayLayout(OPERAND, 4)})


def vec_write_layout(cfg):
    """One write of the vector buffer: a word, its address and which of its four lanes to write (a LOAD and the
    vector unit's own results write them all; a GEMM's stored row the lanes it covers)."""
    return data.StructLayout({"addr": _addr(max(2, cfg.vec_depth)), "data": data.ArrayLayout(OPERAND, 4),
                              "mask": unsigned(4)})


def vec_command_layout(cfg):
    """A command of the vector unit (:mod:`tessera.hw.vector`).

    ``op`` 0 (pool): ``count`` output pixels from (``out_y``, ``out_x``) in raster order, over the feature map
    at ``a_base``. ``op`` 1 (add): ``count`` words of ``a_base`` plus as many of ``b_base``. ``words`` is the
    command's result words, formed by the decoder (a pool's ``count`` times the geometry's ``channel_blocks``: no
    multiply in the vector unit's path from its queue). The result words go where ``store`` says (a
    StoreTarget): to the host, into the vector buffer from word ``d_base`` on, or (a pool) into the activation
    buffer as the STORE_SETUP fields lay them out from word ``d_base``.
    """
    addr = _addr(max(2, cfg.vec_depth))
    side = unsigned(ceil_log2(MAX_CONV_SIDE + 1))
    return data.StructLayout({"op": 1, "a_base": addr, "b_base": addr, "count": unsigned(16),
                              "words": unsigned(24), "out_y": side, "out_x": side, "store": unsigned(2),
                              "d_base": store_addr_shape(cfg), **dict(store_setup_layout().members)})
