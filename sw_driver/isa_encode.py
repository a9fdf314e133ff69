"""Encoding instructions and buffer data into host-link words, and decoding the device's packets.

Everything here is derived from :mod:`tessera.hw.isa` and :mod:`tessera.hw.layouts` through :mod:`tessera.gen.packing`.
"""

import dataclasses
import functools

import numpy as np

from tessera.gen.packing import pack, unpack
from tessera.hw import isa
from tessera.hw.isa import (
    COUNTERS,
    INSTRUCTION_WORDS,
    LANES_PER_WORD,
    LINK_WIDTH,
    BufferId,
    ErrorCode,
    Opcode,
    PacketKind,
    load_link_words,
    packet_header_layout,
    result_row_words,
)

__all__ = ["instruction", "load", "stored_program", "disassemble", "Packets", "DeviceError", "parse_packets"]


# A configuration's layouts, made once: building them (and checking every opcode's operands fit an instruction) was
# most of a resident model's compile time, an instruction at a time.
_operands_layout = functools.cache(isa.operands_layout)
_instruction_layout = functools.cache(isa.instruction_layout)


class DeviceError(RuntimeError):
    """The device reported an ERROR packet, or its answer does not parse."""


def instruction(cfg, opcode, **operands):
    """The link words of one instruction."""
    opcode = Opcode(opcode)
    fields = pack(_operands_layout(cfg, opcode), operands)
    bits = pack(_instruction_layout(cfg), {"opcode": int(opcode), "operands": fields})
    mask = (1 << LINK_WIDTH) - 1
    return np.array([(bits >> (LINK_WIDTH * i)) & mask for i in range(INSTRUCTION_WORDS)], dtype=np.uint32)


def _vector_words(vectors):
    """int8 vectors (one per buffer word) as link words: lane 0 in the low byte, rows padded to whole words."""
    vectors = np.ascontiguousarray(vectors, dtype=np.int8)
    pad = -vectors.shape[1] % 4
    if pad:
        vectors = np.pad(vectors, ((0, 0), (0, pad)))
    return vectors.view(np.uint32).astype(np.uint32).reshape(-1)


def load(cfg, buffer, addr, payload, lanes=0):
    """A LOAD instruction and its data words.

    ``payload`` is an int8 array of shape (words, lanes) for ACT and WEIGHT, a pair (bias int32
    (words, cols), scale float32 (words, cols)) for PARAM, and link words (uint32) for PROGRAM. ``lanes`` (ACT
    only) packs each word's first ``lanes`` lanes back to back, four to a link word (the others load as zero).
    """
    buffer = BufferId(buffer)
    if lanes:
        vectors = np.ascontiguousarray(np.asarray(payload, dtype=np.int8)[:, :lanes]).reshape(-1)
        data = np.pad(vectors, (0, -len(vectors) % LANES_PER_WORD)).view(np.uint32).astype(np.uint32)
        return np.concatenate([instruction(cfg, Opcode.LOAD, buffer=int(buffer), addr=addr, words=len(payload),
                                           lanes=lanes), data])
    if buffer == BufferId.PROGRAM:
        words = np.asarray(payload, dtype=np.uint32).reshape(-1)
        count = len(words)
    elif buffer == BufferId.PARAM:
        bias, scale = payload
        bias = np.ascontiguousarray(bias, dtype=np.int32)
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        words = np.concatenate([bias.view(np.uint32), scale.view(np.uint32)], axis=1).reshape(-1)
        count = len(bias)
    else:
        words = _vector_words(payload)
        count = len(payload)
    return np.concatenate([instruction(cfg, Opcode.LOAD, buffer=int(buffer), addr=addr, words=count), words])


def stored_program(cfg, words, base=0):
    """``words`` (a program's link words) kept in the program memory at ``base``: ``(store, run)``, the link words
    that store it once and the RUN that executes it each time after."""
    words = np.asarray(words, dtype=np.uint32)
    if not 0 < len(words) <= cfg.program_depth - base:
        raise ValueError(f"a program of {len(words)} words does not fit the program memory at {base} "
                         f"(program_depth={cfg.program_depth}); accepted: 1 to {max(0, cfg.program_depth - base)} "
                         f"words")
    return load(cfg, BufferId.PROGRAM, base, words), instruction(cfg, Opcode.RUN, base=base, words=len(words))


def disassemble(cfg, words):
    """Yield ``(opcode, operands, data_words)`` for each instruction of a well-formed stream."""
    words = np.asarray(words, dtype=np.uint32)
    layout = _instruction_layout(cfg)
    i = 0
    while i < len(words):
        bits = sum(int(v) << (LINK_WIDTH * j) for j, v in enumerate(words[i:i + INSTRUCTION_WORDS]))
        i += INSTRUCTION_WORDS
        instr = unpack(layout, bits)
        opcode = Opcode(instr["opcode"])
        operands = unpack(_operands_layout(cfg, opcode), instr["operands"])
        count = 0
        if opcode == Opcode.LOAD:
            count = load_link_words(cfg, operands["buffer"], operands["words"], operands["lanes"])
        yield opcode, operands, words[i:i + count]
        i += count


@dataclasses.dataclass
class Packets:
    """What came back from the device, in order of arrival."""
    results: list      # per command: int8 (rows, cols) for a GEMM, the int8 bytes of a POOL or ADD
    counters: list     # one dict per COUNTERS packet
    errors: list       # (ErrorCode, opcode) per ERROR packet


def parse_packets(cfg, words):
    """Split the device's words into packets; raise :class:`DeviceError` if they do not parse."""
    words = np.asarray(words, dtype=np.uint32)
    header_layout = packet_header_layout()
    wpr = result_row_words(cfg)
    out = Packets([], [], [])
    i = 0
    while i < len(words):
        header = unpack(header_layout, int(words[i]))
        body = words[i + 1:i + 1 + header["length"]]
        if len(body) != header["length"]:
            raise DeviceError(f"packet at word {i} announces {header['length']} words, {len(body)} arrived")
        if header["kind"] == PacketKind.RESULT:
            if header["length"] % wpr:
                raise DeviceError(f"RESULT packet of {header['length']} words is not whole rows of {wpr} words")
            rows = body.view(np.int8).reshape(-1, wpr * LANES_PER_WORD)[:, :cfg.cols]
            out.results.append(rows.copy())
        elif header["kind"] == PacketKind.VECTOR:
            out.results.append(body.view(np.int8).copy())
        elif header["kind"] == PacketKind.COUNTERS:
            if header["length"] != len(COUNTERS):
                raise DeviceError(f"COUNTERS packet of {header['length']} words, expected {len(COUNTERS)}")
            out.counters.append({name: int(v) for (name, _), v in zip(COUNTERS, body, strict=True)})
        elif header["kind"] == PacketKind.ERROR:
            code, opcode = int(body[0]) & 0xFF, (int(body[0]) >> 8) & 0xFF
            out.errors.append((_name(ErrorCode, code), _name(Opcode, opcode)))
        else:
            raise DeviceError(f"unknown packet kind {header['kind']} at word {i}")
        i += 1 + header["length"]
    return out


def _name(enum, value):
    try:
        return enum(value)
    except ValueError:
        return value
