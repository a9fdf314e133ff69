"""The instruction set of the Tessera device: the one definition that the decoder, the compiler, the
driver and the generated ISA document and C header all use.

The host sends one stream of 32-bit words. An instruction is :data:`INSTRUCTION_WORDS` words (least
significant word first); a ``LOAD`` is followed by its data words. The device answers with packets on its
own 32-bit stream: a header word (:func:`packet_header_layout`) followed by ``length`` payload words.
"""

import enum

from amaranth.hdl import unsigned
from amaranth.lib import data
from amaranth.utils import ceil_log2

from .layouts import (
    MAX_CONV_SIDE,
    MAX_KERNEL,
    command_layout,
    conv_geometry_layout,
    store_addr_shape,
    store_setup_layout,
)
from .qadd import add_params_layout

__all__ = ["Opcode", "WaitUnit", "BufferId", "PacketKind", "ErrorCode", "ERROR_DESCRIPTIONS", "COUNTERS",
           "INSTRUCTION_WORDS", "LINK_WIDTH", "instruction_layout", "operands_layout", "packet_header_layout",
           "words_per_buffer_word", "load_link_words", "LANES_PER_WORD", "words_for_lanes", "result_row_words"]

#: Width of the host link in bits (both directions).
LINK_WIDTH = 32
#: Every instruction is this many link words long.
INSTRUCTION_WORDS = 4
_OPCODE_BITS = 8


class Opcode(enum.IntEnum):
    """What an instruction does. Values are the encoding; 0 is a no-op so that zero padding is harmless."""
    NOP = 0x00
    LOAD = 0x01             # write `words` buffer words from the stream into `buffer` at `addr` (`lanes`: packed)
    GEMM = 0x02             # run one compute command of the core (see hw.layouts)
    WAIT = 0x03             # block until at most `pending` of the commands issued so far (to `unit`) are unfinished
    READ_COUNTERS = 0x04    # once idle, send a COUNTERS packet
    CLEAR_COUNTERS = 0x05   # zero every performance counter
    CONV_SETUP = 0x06       # once idle, set the convolution geometry that later conv GEMMs use
    VEC_SETUP = 0x07        # once the vector unit is idle, set the parameters of later ADDs
    POOL_SETUP = 0x08       # once the vector unit is idle, set the geometry of later POOLs
    POOL = 0x09             # max-pool `m` output pixels of the feature map at `x_base` of the vector buffer
    ADD = 0x0A              # quantized add of `words` vector words at `a_base` and `b_base`
    # (POOL and ADD send their result words to the host, or with `store` write them from word `d_base` on)
    RUN = 0x0B              # execute the `words` program memory words at `base` as if they came from the link
    STORE_SETUP = 0x0C      # set how later `store` GEMMs and POOLs lay out their results in the target buffer


class WaitUnit(enum.IntEnum):
    """Whose commands a ``WAIT`` counts. Each unit completes its commands in order, so waiting on one unit's count
    waits for one command of it while the other unit goes on."""
    ALL = 0
    ARRAY = 1    # GEMM commands (the PE array and the result path)
    VECTOR = 2   # POOL and ADD commands


class BufferId(enum.IntEnum):
    """Target of a ``LOAD``."""
    ACT = 0
    WEIGHT = 1
    PARAM = 2
    VEC = 3
    PROGRAM = 4   # the program memory: link words, one per buffer word, that RUN executes


class PacketKind(enum.IntEnum):
    """Kind of a device-to-host packet."""
    RESULT = 1     # the output rows of one GEMM command, `cols` int8 per row, rows padded to whole words
    COUNTERS = 2   # one 32-bit word per entry of COUNTERS, in order
    ERROR = 3      # one word: ErrorCode in bits 0-7, the offending opcode in bits 8-15
    VECTOR = 4     # the result words of one POOL or ADD, four int8 per word


class ErrorCode(enum.IntEnum):
    """Why an instruction was rejected. The device reports it and goes on with the next instruction; what each
    code means is in :data:`ERROR_DESCRIPTIONS`."""
    ILLEGAL_OPCODE = 1
    BAD_BUFFER = 2
    OUT_OF_RANGE = 3
    BAD_SHAPE = 4
    TRUNCATED = 5
    BAD_PROGRAM = 6


#: What each error code means: the one statement of the rules the controller enforces, which the generated ISA
#: document and C header render.
ERROR_DESCRIPTIONS = {
    ErrorCode.ILLEGAL_OPCODE: "the opcode byte names no instruction",
    ErrorCode.BAD_BUFFER: "LOAD names no buffer, or packs lanes into a buffer other than the activation buffer or "
                          "more lanes than it has rows",
    ErrorCode.OUT_OF_RANGE: "a LOAD, GEMM, POOL or ADD would touch words beyond a buffer's depth (a stored one: its "
                            "results' words in the target buffer too)",
    ErrorCode.BAD_SHAPE: "GEMM with m or k of 0, m larger than one output tile, an os conv GEMM whose k is not "
                         "its folds times rows, an rs GEMM that is not a conv, has a filter chunk taller than "
                         f"the array or more than {MAX_KERNEL} chunks, filters of 0 or more than rs_filters, or m "
                         "other than filters times out_w, a sparse GEMM that is not a ws conv on an array of 2 or more "
                         "columns, a reduce GEMM that is not a ws GEMM without conv, a store GEMM that is raw, before "
                         "any STORE_SETUP, of more lanes "
                         "than columns, or from a lane beyond its target's word (rows lanes in the activation buffer, "
                         "4 in the vector buffer), a store into the vector buffer without a vector unit, a store "
                         "field of 3, an ADD stored into the activation buffer, a POOL stored there before any "
                         "STORE_SETUP, from a lane beyond the rows or whose lanes are not its channel blocks' "
                         "channels, a STORE_SETUP of 0 lanes or from a lane beyond both word widths, a conv GEMM or a "
                         "POOL before any CONV_SETUP or POOL_SETUP, a CONV_SETUP or POOL_SETUP with a zero size, a "
                         "POOL or ADD of nothing, a vector instruction on a device without a vector unit, or a WAIT "
                         "whose unit is 3",
    ErrorCode.TRUNCATED: "an instruction or its data stopped arriving mid-way",
    ErrorCode.BAD_PROGRAM: "RUN on a device without program memory, of 0 words, beyond the program memory or from "
                           "inside a program; a LOAD into the program memory from inside a program; a program that "
                           "ends in the middle of an instruction or of a LOAD's data (the device then reads the "
                           "link again)",
}


#: Performance counters, in the order of a COUNTERS packet: (name, what it counts).
COUNTERS = [
    ("cycles", "cycles since the counters were cleared"),
    ("busy_cycles", "cycles in which the compute core had work"),
    ("stall_input_cycles", "cycles in which the core was idle while instructions or data were still arriving"),
    ("stall_output_cycles", "cycles in which a result was ready but the host link did not accept it"),
    ("array_cycles", "cycles in which a vector (ws) or reduction step (os) entered the PE array"),
    ("commands", "compute commands completed"),
    ("act_reads", "activation buffer words read"),
    ("act_writes", "activation buffer words written"),
    ("weight_reads", "weight buffer words read"),
    ("weight_writes", "weight buffer words written"),
    ("acc_reads", "accumulator words read (read-modify-write and drain)"),
    ("acc_writes", "accumulator words written"),
    ("param_reads", "parameter words read"),
    ("param_writes", "parameter words written"),
    ("link_words_in", "32-bit words received from the host"),
    ("link_words_out", "32-bit words sent to the host"),
    ("macs_gated", "MACs whose multiply a zero activation or weight gated (of array_cycles x PEs)"),
    ("rf_reads", "PE register-file (scratchpad) reads: stationary weights (ws), sums (os), filter/ifmap/sum (rs)"),
    ("rf_writes", "PE register-file writes: sums (os, rs) and scratchpad loads (rs)"),
    ("noc_transfers", "operands and partial sums passed from PE to PE"),
    ("vec_cycles", "cycles in which the vector unit had work"),
    ("vec_reads", "vector buffer words read"),
    ("vec_writes", "vector buffer words written"),
    ("program_reads", "program memory words read (instructions and data a RUN executes)"),
]


def operands_layout(cfg, opcode):
    """Operand fields of ``opcode`` for configuration ``cfg`` (they follow the opcode byte)."""
    opcode = Opcode(opcode)
    if opcode == Opcode.LOAD:
        # lanes 0: whole buffer words; 1 to rows (the activation buffer only): each word's first `lanes` lanes,
        # packed back to back four to a link word (load_link_words), its other lanes zero
        return data.StructLayout({"buffer": unsigned(3), "addr": unsigned(16), "words": unsigned(16),
                                  "lanes": unsigned(8)})
    if opcode == Opcode.GEMM:
        return command_layout(cfg)
    if opcode in (Opcode.CONV_SETUP, Opcode.POOL_SETUP):
        return conv_geometry_layout()
    if opcode == Opcode.VEC_SETUP:
        return add_params_layout()
    if opcode == Opcode.POOL:
        side = unsigned(ceil_log2(MAX_CONV_SIDE + 1))
        return data.StructLayout({"x_base": unsigned(16), "m": unsigned(16), "out_y": side, "out_x": side,
                                  "store": unsigned(2), "d_base": store_addr_shape(cfg)})
    if opcode == Opcode.ADD:
        return data.StructLayout({"a_base": unsigned(16), "b_base": unsigned(16), "words": unsigned(16),
                                  "store": unsigned(2), "d_base": store_addr_shape(cfg)})
    if opcode == Opcode.STORE_SETUP:
        return store_setup_layout()
    if opcode == Opcode.RUN:
        return data.StructLayout({"base": unsigned(16), "words": unsigned(16)})
    if opcode == Opcode.WAIT:
        # Relative, so that a program means the same whatever ran before it.
        return data.StructLayout({"pending": unsigned(32), "unit": unsigned(2)})
    return data.StructLayout({})


def instruction_layout(cfg):
    """An instruction: the opcode byte, then the operands of that opcode (a union over all opcodes)."""
    width = INSTRUCTION_WORDS * LINK_WIDTH - _OPCODE_BITS
    for opcode in Opcode:
        size = operands_layout(cfg, opcode).size
        if size > width:
            raise ValueError(f"operands of {opcode.name} need {size} bits; an instruction has {width}")
    return data.StructLayout({"opcode": unsigned(_OPCODE_BITS), "operands": unsigned(width)})


def packet_header_layout():
    """Header word of a device-to-host packet."""
    return data.StructLayout({"kind": unsigned(8), "length": unsigned(24)})


#: int8 lanes packed into one link word (lane 0 in the low byte).
LANES_PER_WORD = LINK_WIDTH // 8


def words_for_lanes(lanes):
    """Link words that carry ``lanes`` int8 values."""
    return -(-lanes // LANES_PER_WORD)


def result_row_words(cfg):
    """Link words of one row of a RESULT packet: ``cols`` int8 channels."""
    return words_for_lanes(cfg.cols)


def load_link_words(cfg, buffer, words, lanes=0):
    """Link words of the data of a LOAD of ``words`` buffer words (``lanes`` as the LOAD's field)."""
    if lanes:
        return -(-words * lanes // LANES_PER_WORD)
    return words * words_per_buffer_word(cfg, buffer)


def words_per_buffer_word(cfg, buffer):
    """Link words that carry one word of ``buffer`` (operand vectors are packed 4 int8 per word; a parameter
    word is each channel's int32 bias, then each channel's float32 scale; a program word is one link word)."""
    buffer = BufferId(buffer)
    if buffer == BufferId.ACT:
        return words_for_lanes(cfg.rows)
    if buffer == BufferId.WEIGHT:
        return words_for_lanes(cfg.weight_lanes)
    if buffer in (BufferId.VEC, BufferId.PROGRAM):
        return 1
    return 2 * cfg.cols
