"""Text artefacts generated from the one ISA definition: the ISA document, the C header and the FuseSoC core.

Every number rendered here comes from :mod:`tessera.hw.isa`, :mod:`tessera.hw.layouts` or the configuration; bit
positions are read from the Amaranth layouts, never computed by hand. The prose that the definition does not carry (a
few words per opcode, operand field, buffer, packet kind and error code) lives in the tables below, and rendering fails
when an entry is missing or names something that no longer exists, so nothing reaches a document undescribed.
"""

import functools
import importlib.metadata
import inspect
import json
import os
import re
from pathlib import Path

import jinja2
from amaranth.hdl import Shape
from amaranth.lib import data

from tessera.gen.config import DATAFLOWS
from tessera.gen.lint import LINT_WAIVERS
from tessera.gen.verilog import DEVICE_TOPLEVEL, build_dir
from tessera.hw import layouts
from tessera.hw.controller_program import program_load_layout
from tessera.hw.isa import (
    COUNTERS,
    ERROR_DESCRIPTIONS,
    INSTRUCTION_WORDS,
    LINK_WIDTH,
    BufferId,
    ErrorCode,
    Opcode,
    PacketKind,
    WaitUnit,
    instruction_layout,
    operands_layout,
    packet_header_layout,
    words_per_buffer_word,
)
from tessera.hw.layouts import (
    MAX_CONV_SIDE,
    StoreTarget,
    act_load_layout,
    command_layout,
    conv_geometry_layout,
    max_command_k,
    param_load_layout,
    result_layout,
    vec_load_layout,
    weight_load_layout,
)

__all__ = ["ARTEFACTS", "ArtefactError", "render_artefacts", "write_artefacts", "OPCODE_DESCRIPTIONS",
           "FIELD_DESCRIPTIONS", "BUFFER_DESCRIPTIONS", "PACKET_DESCRIPTIONS", "HEADER_FIELD_DESCRIPTIONS",
           "ERROR_DESCRIPTIONS"]

#: Generated file name -> its template in ``gen/templates``.
ARTEFACTS = {"isa.md": "isa.md.j2", "tessera.h": "tessera.h.j2", "tessera.core": "tessera.core.j2"}

OPCODE_DESCRIPTIONS = {
    Opcode.NOP: "does nothing (zero padding on the link decodes as NOP, so it is harmless)",
    Opcode.LOAD: "write `words` buffer words from the stream into `buffer` at `addr`; the data words follow the "
                 "instruction (see LOAD data)",
    Opcode.GEMM: "run one compute command of the core",
    Opcode.WAIT: "block until at most `pending` of the commands issued so far are unfinished",
    Opcode.READ_COUNTERS: "once idle, send a COUNTERS packet",
    Opcode.CLEAR_COUNTERS: "zero every performance counter",
    Opcode.CONV_SETUP: "once idle, set the convolution geometry that later conv GEMMs use",
    Opcode.VEC_SETUP: "once the vector unit is idle, set the parameters of later ADDs",
    Opcode.POOL_SETUP: "once the vector unit is idle, set the geometry of later POOLs",
    Opcode.POOL: "max-pool `m` output pixels of the feature map at `x_base` of the vector buffer; answered by "
                 "one VECTOR packet",
    Opcode.STORE_SETUP: "set where the rows of `store` GEMMs issued from now on go in the activation buffer (each "
                        "command keeps the setting it was issued with, so no wait)",
    Opcode.RUN: "execute the `words` program memory words from `base` as if the link had sent them (instructions and "
                "their data, LOADs included); the link's words wait until the program's last is taken. A stored "
                "model runs as: LOAD its input, RUN",
    Opcode.ADD: "quantized add (onnxruntime's QLinearAdd, bit-exact) of `words` vector words at `a_base` and "
                "`b_base`; answered by one VECTOR packet",
}

#: ``(opcode, field)`` -> description; ``{max_m}``, ``{max_k}`` and ``{max_side}`` are filled in from the
#: configuration and the layouts.
FIELD_DESCRIPTIONS = {
    (Opcode.LOAD, "buffer"): "target buffer, a BufferId",
    (Opcode.LOAD, "addr"): "first buffer word written",
    (Opcode.LOAD, "words"): "buffer words that follow, each sent as the link words given under LOAD data",
    (Opcode.LOAD, "lanes"): "0: whole buffer words. 1 to `rows` (ACT only): each word's first `lanes` int8 lanes, "
                            "packed back to back four to a link word (ceil(words * lanes / 4) link words), its other "
                            "lanes zero",
    (Opcode.STORE_SETUP, "lane"): "lane of its first word at which a stored row starts: below `rows` in the "
                                  "activation buffer, below 4 in the vector buffer",
    (Opcode.STORE_SETUP, "lanes"): "lanes of a GEMM row to store, 1 to `cols` (its output channels that exist), or "
                                   "a stored POOL's channels; the row runs on over the next words' lanes, the others "
                                   "are left as they are",
    (Opcode.STORE_SETUP, "stride"): "words from one stored row's first word to the next's (a feature map's channel "
                                    "blocks per pixel)",
    (Opcode.STORE_SETUP, "lane_stride"): "rs arrays, whose rows are one filter's output column: words from one lane "
                                         "of a stored row to the next (a map's words per row of pixels); each lane is "
                                         "written alone, at the filter's lane, and every out_w rows the next filter "
                                         "takes the next lane",
    (Opcode.GEMM, "store"): "a StoreTarget: 0 the rows go to the host; 1 (ACT) or 2 (VEC) they are written into that "
                            "buffer as STORE_SETUP says, from word `s_base`, for later commands to read; no RESULT "
                            "packet. Not with `raw`, nor on rs arrays",
    (Opcode.GEMM, "s_base"): "store commands: the word of the target buffer where the first row starts",
    (Opcode.POOL, "store"): "a StoreTarget: 0 a VECTOR packet; 2 (VEC) result word j is written to vector word "
                            "`d_base + j`; 1 (ACT) output pixel i's channels are written as a stored GEMM row i, "
                            "from activation word `d_base` (STORE_SETUP's `lanes`: the channels)",
    (Opcode.POOL, "d_base"): "stored pools: the first word written",
    (Opcode.ADD, "store"): "a StoreTarget: 0 a VECTOR packet; 2 (VEC) result word j is written to vector word "
                           "`d_base + j` (ACT is refused)",
    (Opcode.ADD, "d_base"): "stored adds: the first vector word written",
    (Opcode.WAIT, "unit"): "a WaitUnit: 0 counts every command, 1 only GEMMs, 2 only POOLs and ADDs (each unit "
                           "finishes its commands in order)",
    (Opcode.RUN, "base"): "first program memory word of the program",
    (Opcode.RUN, "words"): "program memory words of the program, 1 to the program memory's depth less `base`",
    (Opcode.GEMM, "m"): "output rows, 1 to {max_m} (one accumulator half)",
    (Opcode.GEMM, "k"): "1 to {max_k}: folds of `rows` input channels (ws) or reduction steps (os)",
    (Opcode.GEMM, "x_base"): "first activation buffer word the command reads",
    (Opcode.GEMM, "w_base"): "first weight buffer word the command reads",
    (Opcode.GEMM, "p_base"): "parameter buffer word with the bias and scales of the `cols` output channels",
    (Opcode.GEMM, "y_zp"): "zero point of the requantised output",
    (Opcode.GEMM, "conv"): "1: a convolution command, its rows are output pixels gathered by sliding-window "
                           "addressing (os: `k` is the folds times `rows`); 0: a plain GEMM",
    (Opcode.GEMM, "out_y"): "conv commands: output row of the first pixel",
    (Opcode.GEMM, "out_x"): "conv commands: output column of the first pixel (rs: chunks of filter rows, a "
                            "filter taller than the array folded into passes; 0 counts as 1)",
    (Opcode.GEMM, "sparse"): "ws conv commands on arrays of 2 or more columns only: the weight tile at `w_base` "
                             "stores only the `k` folds that are not all zero, each as a header word (filter tap "
                             "`kh` in bits 0-2, `kw` in bits 3-5, channel block `cb` in bits 8-15) followed by its "
                             "`rows` weight words",
    (Opcode.GEMM, "reduce"): "ws plain GEMMs (not conv) only: every vector of every fold sums into one output "
                             "row (a global pool through one weight fold), so the command has one result row, not "
                             "`m`; os and rs refuse it (BAD_SHAPE)",
    (Opcode.GEMM, "taps"): "ws conv commands on arrays of no more columns than rows only, 0 for any other: a "
                          "depthwise command of this many taps across (the kernel width, at most `rows`). Column "
                          "`c` reads lane `lane_group * cols + c` of each word alone; the CONV_SETUP gives a "
                          "kernel `kernel_h` x 1 of stride 1 or 2 over `out_w` = (the layer's output width - 1) * "
                          "stride + `taps` positions, every one streamed; fold `f` is kernel row `f`, its weights "
                          "`taps` words from `w_base + f * taps`; the `m` result rows are the positions a whole "
                          "number of strides along their row with `taps` positions left in it, from (`out_y`, "
                          "`out_x`) on (`out_x` counts outputs); os and rs refuse it, and another stride "
                          "(BAD_SHAPE)",
    (Opcode.GEMM, "lane_group"): "depthwise commands: which `cols` lanes of each activation word the columns read "
                                 "(`lane_group * cols` on; below `rows / cols`)",
    (Opcode.GEMM, "filters"): "rs only: filters the command computes, 1 to the configuration's rs_filters; its "
                              "`m` rows are each filter's `out_w` output columns in turn, requantised with "
                              "parameter words `p_base` onward (ws, os: ignored)",
    (Opcode.GEMM, "raw"): "1: no requantisation; the RESULT packet carries the accumulators' int32 values (no bias), "
                          "each output row as four rows of bytes, least significant first (`4 m` rows; `p_base` and "
                          "`y_zp` ignored)",
    (Opcode.CONV_SETUP, "in_h"): "input feature map height, 1 to {max_side}",
    (Opcode.CONV_SETUP, "in_w"): "input feature map width, 1 to {max_side}",
    (Opcode.CONV_SETUP, "out_w"): "output feature map width, 1 to {max_side}",
    (Opcode.CONV_SETUP, "channel_blocks"): "activation words per input pixel (input channels in blocks of `rows`)",
    (Opcode.CONV_SETUP, "kernel_h"): "filter height",
    (Opcode.CONV_SETUP, "kernel_w"): "filter width",
    (Opcode.CONV_SETUP, "stride"): "window stride, both directions",
    (Opcode.CONV_SETUP, "pad_top"): "rows of padding above the input",
    (Opcode.CONV_SETUP, "pad_left"): "columns of padding left of the input",
    (Opcode.CONV_SETUP, "pad_value"): "value of taps outside the input (the input zero point)",
    (Opcode.POOL_SETUP, "in_h"): "input feature map height, 1 to {max_side}",
    (Opcode.POOL_SETUP, "in_w"): "input feature map width, 1 to {max_side}",
    (Opcode.POOL_SETUP, "out_w"): "output feature map width, 1 to {max_side}",
    (Opcode.POOL_SETUP, "channel_blocks"): "vector words per input pixel (channels in blocks of 4)",
    (Opcode.POOL_SETUP, "kernel_h"): "window height",
    (Opcode.POOL_SETUP, "kernel_w"): "window width",
    (Opcode.POOL_SETUP, "stride"): "window stride, both directions",
    (Opcode.POOL_SETUP, "pad_top"): "rows of padding above the input (never the maximum)",
    (Opcode.POOL_SETUP, "pad_left"): "columns of padding left of the input",
    (Opcode.POOL_SETUP, "pad_value"): "unused: padding never wins a max",
    (Opcode.POOL, "x_base"): "vector buffer word where the feature map starts",
    (Opcode.POOL, "m"): "output pixels, from (`out_y`, `out_x`) in raster order",
    (Opcode.POOL, "out_y"): "output row of the first pixel",
    (Opcode.POOL, "out_x"): "output column of the first pixel",
    (Opcode.ADD, "a_base"): "vector buffer word of the first operand's first word",
    (Opcode.ADD, "b_base"): "vector buffer word of the second operand's first word",
    (Opcode.ADD, "words"): "vector words to add (four int8 each)",
    (Opcode.VEC_SETUP, "ra_mant"): "a_scale / y_scale as `ra_mant * 2**(ra_shift - 40)`: significand",
    (Opcode.VEC_SETUP, "ra_shift"): "a_scale / y_scale: exponent, offset by 40",
    (Opcode.VEC_SETUP, "rb_mant"): "b_scale / y_scale: significand",
    (Opcode.VEC_SETUP, "rb_shift"): "b_scale / y_scale: exponent, offset by 40",
    (Opcode.VEC_SETUP, "fixed_lo"): "onnxruntime's constant term y_zp - a_zp*ra - b_zp*rb, times 2**40 (exact): "
                                     "low 32 bits",
    (Opcode.VEC_SETUP, "fixed_hi"): "the constant term: high bits, signed",
    (Opcode.VEC_SETUP, "uint8"): "1: operands and result are uint8 (held on the device as x - 128)",
    (Opcode.WAIT, "pending"): "commands (of `unit`) that may still be unfinished; relative, so that a program "
                              "means the same whatever ran before it",
}

BUFFER_DESCRIPTIONS = {
    BufferId.ACT: "activation vectors; a word is one vector of `rows` int8 operands",
    BufferId.WEIGHT: "weight rows; a word is one row of `cols` int8 weights",
    BufferId.PARAM: "requantisation parameters of `cols` output channels: int32 bias, then float32 scale "
                    "(IEEE-754 bit pattern)",
    BufferId.VEC: "the vector unit's feature maps and add operands; a word is four int8 values",
    BufferId.PROGRAM: "the program memory (configuration field program_depth): a word is one link word of a program "
                   "that RUN executes; a LOAD from inside a program may not write it",
}

#: The enumerations some instruction fields take: (C prefix, the enum, what each value means).
FIELD_ENUMS = [
    ("STORE", StoreTarget, {StoreTarget.HOST: "results go to the host (RESULT or VECTOR packets)",
                            StoreTarget.ACT: "results are written into the activation buffer",
                            StoreTarget.VEC: "results are written into the vector buffer"}),
    ("WAIT", WaitUnit, {WaitUnit.ALL: "WAIT counts every command", WaitUnit.ARRAY: "WAIT counts GEMMs only",
                        WaitUnit.VECTOR: "WAIT counts POOLs and ADDs only"}),
]

PACKET_DESCRIPTIONS = {
    PacketKind.RESULT: "the output rows of one GEMM command, `cols` int8 per row, rows padded to whole words",
    PacketKind.COUNTERS: "one 32-bit word per performance counter, in the order of the counter table",
    PacketKind.ERROR: "one word: ErrorCode in bits 0-7, the offending opcode in bits 8-15",
    PacketKind.VECTOR: "the result words of one POOL or ADD, four int8 per word",
}

HEADER_FIELD_DESCRIPTIONS = {
    "kind": "a PacketKind",
    "length": "payload words that follow the header",
}

# The layout functions whose docstrings explain an opcode's operands beyond their field table.
_OPERAND_DOCS = {Opcode.GEMM: command_layout, Opcode.CONV_SETUP: conv_geometry_layout,
                 Opcode.POOL_SETUP: conv_geometry_layout}

# What each LOAD target holds, as the loader's layouts define it.
_LOAD_LAYOUTS = {BufferId.ACT: act_load_layout, BufferId.WEIGHT: weight_load_layout,
                 BufferId.PARAM: param_load_layout, BufferId.VEC: vec_load_layout,
                 BufferId.PROGRAM: program_load_layout}


class ArtefactError(ValueError):
    """The ISA definition cannot be rendered: a description is missing or stale, or a field has a shape the
    artefacts do not support. The message names the thing and where to fix it."""


def render_artefacts(cfg, verilog_name=f"{DEVICE_TOPLEVEL}.v", top=DEVICE_TOPLEVEL):
    """Render every artefact for ``cfg``.

    Parameters
    ----------
    cfg : AcceleratorConfig
        The configuration the artefacts describe (its hash is recorded in each).
    verilog_name : str
        File name of the device Verilog, as the FuseSoC core names it (it sits beside the core file).
    top : str
        Top-level module of that Verilog.

    Returns
    -------
    dict
        Generated file name -> text, one entry per :data:`ARTEFACTS`.
    """
    context = _context(cfg, verilog_name, top)
    env = _environment()
    return {name: env.get_template(template).render(context) for name, template in ARTEFACTS.items()}


def write_artefacts(cfg, verilog_path, top=DEVICE_TOPLEVEL):
    """Write every artefact for ``cfg`` beside ``verilog_path`` (the device Verilog from ``write_verilog``).

    Everything is rendered before anything is written, so a failure leaves no partial set. Returns the paths.
    """
    verilog_path = Path(verilog_path)
    texts = render_artefacts(cfg, verilog_name=verilog_path.name, top=top)
    verilog_path.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        path = verilog_path.parent / name
        if not path.exists() or path.read_text() != text:
            # write-then-rename, as write_verilog does: a parallel reader never sees half a file
            partial = path.with_name(f"{name}.{os.getpid()}.tmp")
            partial.write_text(text)
            os.replace(partial, path)
        paths.append(path)
    return paths


# -- rendering ---------------------------------------------------------------------------------------------


@functools.cache
def _environment():
    env = jinja2.Environment(loader=jinja2.PackageLoader(__package__, "templates"), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    env.filters["c_comment"] = lambda text: str(text).replace("*/", "* /")
    env.filters["sentence"] = lambda text: str(text)[:1].upper() + str(text)[1:]
    return env


def _context(cfg, verilog_name, top):
    _check_described(OPCODE_DESCRIPTIONS, list(Opcode), "OPCODE_DESCRIPTIONS")
    _check_described(BUFFER_DESCRIPTIONS, list(BufferId), "BUFFER_DESCRIPTIONS")
    _check_described(PACKET_DESCRIPTIONS, list(PacketKind), "PACKET_DESCRIPTIONS")
    _check_described(ERROR_DESCRIPTIONS, list(ErrorCode), "ERROR_DESCRIPTIONS")
    _check_described(FIELD_DESCRIPTIONS, [(op, name) for op in Opcode for name, _ in operands_layout(cfg, op)],
                     "FIELD_DESCRIPTIONS")
    _check_described(HEADER_FIELD_DESCRIPTIONS, [name for name, _ in packet_header_layout()],
                     "HEADER_FIELD_DESCRIPTIONS")

    instruction = instruction_layout(cfg)
    operands_base = instruction["operands"].offset
    limits = {"max_m": cfg.acc_half_depth, "max_k": max_command_k(cfg), "max_side": MAX_CONV_SIDE}
    opcodes = []
    for opcode in Opcode:
        fields = [_field(f"TESSERA_{opcode.name}_{name.upper()}", name, field, operands_base,
                         FIELD_DESCRIPTIONS[opcode, name].format(**limits), where=f"{opcode.name}.{name}")
                  for name, field in operands_layout(cfg, opcode)]
        notes = _markdown(_OPERAND_DOCS[opcode].__doc__) if opcode in _OPERAND_DOCS else ""
        opcodes.append({"name": opcode.name, "value": int(opcode), "description": OPCODE_DESCRIPTIONS[opcode],
                        "fields": fields, "notes": notes, "c_function": f"tessera_encode_{opcode.name.lower()}"})

    return {
        "hash": cfg.hash,
        "cfg": cfg,
        "config_line": cfg.to_json(),
        "config_json": json.dumps(cfg.to_dict(), indent=2, sort_keys=True),
        "config_toml": cfg.to_toml(),
        "config_defines": [(f"TESSERA_CONFIG_{key.upper()}", _c_value(key, value))
                           for key, value in cfg.to_dict().items()],
        "dataflows": [{"name": name, "value": i, "description": text}
                      for i, (name, text) in enumerate(DATAFLOWS.items())],
        "limits": limits,
        "link": {"width": LINK_WIDTH, "instruction_words": INSTRUCTION_WORDS, "instruction_bits": instruction.size},
        "instruction_fields": [_field(f"TESSERA_INSTR_{name.upper()}", name, field, 0, "", f"instruction.{name}",
                                      encoded=False) for name, field in instruction],
        "opcode_doc": inspect.cleandoc(Opcode.__doc__),
        "opcodes": opcodes,
        "buffer_doc": inspect.cleandoc(BufferId.__doc__),
        "buffers": [_buffer(cfg, buffer) for buffer in BufferId],
        # the module docstring after its summary paragraph: the buffer layouts of each dataflow
        "buffer_layouts_doc": _markdown("\n\n".join(inspect.cleandoc(layouts.__doc__).split("\n\n")[1:])),
        "result_row": _packing(result_layout(cfg)),
        "packet_doc": inspect.cleandoc(PacketKind.__doc__),
        "packet_fields": [_field(f"TESSERA_PACKET_HEADER_{name.upper()}", name, field, 0,
                                 HEADER_FIELD_DESCRIPTIONS[name], where=f"packet header.{name}")
                          for name, field in packet_header_layout()],
        "packet_kinds": [{"name": k.name, "value": int(k), "description": PACKET_DESCRIPTIONS[k]} for k in PacketKind],
        "field_enums": [{"prefix": prefix, "name": enum.__name__, "doc": inspect.cleandoc(enum.__doc__),
                         "members": [{"name": v.name, "value": int(v), "description": text[v]} for v in enum]}
                        for prefix, enum, text in FIELD_ENUMS],
        "error_doc": inspect.cleandoc(ErrorCode.__doc__),
        "errors": [{"name": e.name, "value": int(e), "description": ERROR_DESCRIPTIONS[e]} for e in ErrorCode],
        "counters": [{"index": i, "name": name, "description": text, "c_name": f"TESSERA_COUNTER_{name.upper()}"}
                     for i, (name, text) in enumerate(COUNTERS)],
        "verilog_file": verilog_name,
        "toplevel": top,
        "core_name": f"tessera:accel:{build_dir(cfg).name}:{_version()}",
        "lint_waivers": LINT_WAIVERS,
    }


def _check_described(table, keys, table_name):
    def show(key):  # Opcode.GEMM -> "GEMM", (Opcode.GEMM, "m") -> "GEMM.m"
        return ".".join(getattr(part, "name", part) for part in (key if isinstance(key, tuple) else (key,)))
    missing = [show(k) for k in keys if k not in table]
    stale = [show(k) for k in table if k not in keys]
    if missing:
        raise ArtefactError(f"{', '.join(missing)} ha{'s' if len(missing) == 1 else 've'} no description; "
                            f"add {'it' if len(missing) == 1 else 'them'} to {table_name} in gen/artefacts.py")
    if stale:
        raise ArtefactError(f"{table_name} in gen/artefacts.py describes {', '.join(stale)}, which the ISA "
                            f"definition no longer has; remove the entry")


def _markdown(docstring):
    """A docstring as Markdown: Sphinx roles (:func:`x`) become code spans; ``x`` already is one."""
    return re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", inspect.cleandoc(docstring))


def _field(c_name, name, field, base, description, where, encoded=True):
    """One field of a layout at bit ``base`` of a word or instruction, with its position in link words;
    ``encoded`` fields are arguments of the C encoders, so they must fit a ``uint32_t``."""
    if isinstance(field.shape, data.Layout):
        raise ArtefactError(f"{where} is a {field.shape!r}; the generated encoders support plain integer fields")
    shape = Shape.cast(field.shape)
    if encoded and not 1 <= shape.width <= LINK_WIDTH:
        raise ArtefactError(f"{where} is {shape.width} bits wide; the generated encoders take 1 to {LINK_WIDTH}")
    lsb = base + field.offset
    msb = lsb + shape.width - 1
    spans = []
    for word in range(lsb // LINK_WIDTH, msb // LINK_WIDTH + 1):
        low, high = max(lsb, word * LINK_WIDTH), min(msb, (word + 1) * LINK_WIDTH - 1)
        spans.append(f"w{word}[{high - word * LINK_WIDTH}:{low - word * LINK_WIDTH}]")
    if shape.signed:
        low, high = -(1 << shape.width - 1), (1 << shape.width - 1) - 1
    else:
        low, high = 0, (1 << shape.width) - 1
    return {"name": name, "c_name": c_name, "shift": lsb, "msb": msb, "width": shape.width,
            "signed": shape.signed, "type": f"{'int' if shape.signed else 'uint'}{shape.width}",
            "c_type": "int32_t" if shape.signed else "uint32_t", "low": low, "high": high,
            "spans": ", ".join(spans), "description": description}


def _buffer(cfg, buffer):
    if buffer not in _LOAD_LAYOUTS:
        raise ArtefactError(f"BufferId.{buffer.name} has no load layout; add it to _LOAD_LAYOUTS in gen/artefacts.py")
    packing = _packing(_LOAD_LAYOUTS[buffer](cfg)["data"].shape)
    link_words = words_per_buffer_word(cfg, buffer)
    if packing["link_words"] != link_words:
        raise ArtefactError(f"the load layout of {buffer.name} packs into {packing['link_words']} link words but "
                            f"hw.isa.words_per_buffer_word says {link_words}")
    return {"name": buffer.name, "value": int(buffer), "description": BUFFER_DESCRIPTIONS[buffer],
            "depth": getattr(cfg, f"{buffer.name.lower()}_depth"), "link_words": link_words,
            "parts": packing["parts"]}


def _packing(layout, name="data"):
    """How a buffer word (or a result row) travels over the link: each array of the layout starts a new link
    word and packs as many elements per word as fit, element 0 in the low bits, the last word zero padded."""
    parts = []
    for part_name, array in _arrays(layout, name):
        elem = Shape.cast(array.elem_shape)
        if LINK_WIDTH % elem.width:
            raise ArtefactError(f"{part_name}: {elem.width}-bit elements do not pack into {LINK_WIDTH}-bit words")
        per_word = LINK_WIDTH // elem.width
        parts.append({"name": part_name, "length": array.length, "type": f"{'int' if elem.signed else 'uint'}"
                      f"{elem.width}", "per_word": per_word, "link_words": -(-array.length // per_word),
                      "padding": -array.length % per_word})
    return {"parts": parts, "link_words": sum(p["link_words"] for p in parts)}


def _arrays(layout, name):
    if isinstance(layout, data.ArrayLayout):
        return [(name, layout)]
    if isinstance(layout, data.StructLayout):
        return [leaf for member, field in layout for leaf in _arrays(field.shape, member)]
    raise ArtefactError(f"{name} is a {layout!r}; the link format is defined for arrays and structs of arrays")


def _c_value(key, value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        escaped = "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03o}" for b in value.encode())
        return f'"{escaped}"'
    raise ArtefactError(f"configuration key {key} holds a {type(value).__name__}; the C header renders bool, int, "
                        f"float and str")


def _version():
    try:
        return importlib.metadata.version("tessera")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"
