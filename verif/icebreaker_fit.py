"""Can a whole MLPerf Tiny model stay resident on the iCEBreaker? Measured for the KWS DS-CNN and the AD autoencoder.

Usage: ``python -m tessera.verif.icebreaker_fit [--out build/icebreaker_fit] [--width W] [--quick]``

Each model (:mod:`tessera.verif.mlperf_tiny`, ``--width`` scaling its channels) is compiled for the iCEBreaker's
1x1 weight-stationary default (``tessera.fpga.boards``) with the largest memories the generator takes
(:data:`LARGEST`), and :func:`~tessera.sw_driver.model_compiler.residency` says whether it stays whole and what it
used of each memory, as :func:`~tessera.fpga.resident_fit.resident_fit` does. The weight words count every layer's,
streamed or left out too: what the weight buffer would hold to keep them all; the activation words the maps' apart
(with fewer, layers store their outputs over their own inputs: an upper bound). The words are then placed as an iCE40
build places them (the single-port activation and weight buffers in SPRAM, the others in block RAM) and counted in
the UP5K's 16K x 16 SPRAMs and 4-kbit EBRs. Where a model's memories do not fit, the same model with the most
channels whose memories do is searched for (fewer channels never need more).

Then Yosys (`tessera.fpga.synth.synth_resources`, cached in the build cache) counts the LUT4s of the smallest
configuration that holds a fitting model whole (the default with the depths it needs), of the default with its
program memory alone, and of the default, against the UP5K's 5,280 logic cells. ``--quick`` skips Yosys.

Prints Markdown tables and a one-line conclusion; writes ``icebreaker_fit.md`` and ``icebreaker_fit.json`` under
``--out``, and the quantized models there.
"""

import math
import sys
from pathlib import Path

from amaranth.hdl import Shape
from amaranth.lib import data

from tessera.fpga.array_size import board_synthesis
from tessera.fpga.boards import BOARDS, board_config
from tessera.fpga.synth import CAPACITY
from tessera.hw.controller_program import program_load_layout
from tessera.hw.isa import BufferId, Opcode
from tessera.hw.layouts import ACC, act_load_layout, param_load_layout, weight_load_layout
from tessera.sw_driver.cli import OneLineParser, checked_argument, folder_argument, number_argument
from tessera.sw_driver.isa_encode import disassemble
from tessera.sw_driver.model_compiler import compile_model, residency
from tessera.sw_driver.onnx_import import load_model
from tessera.sw_driver.reports import markdown_table, write_json, write_markdown
from tessera.verif.mlperf_tiny import quantized

__all__ = ["BOARD", "CHANNELS", "LARGEST", "MEMORIES", "blocks", "channels_at", "conclusion", "holds_whole", "main",
           "model_needs", "needs_at", "ram_use", "render", "smallest_config", "synthesise", "widest_fitting",
           "word_bits"]

BOARD = BOARDS["icebreaker"]
DEVICE = "iCE40UP5K"
#: The models measured, with the channel count that ``width`` scales in each (tessera.verif.mlperf_tiny).
CHANNELS = {"kws_ds_cnn": 64, "ad_autoencoder": 128}
#: The deepest memories the generator takes on the 1x1: 65,536 words each at most, and a GEMM instruction must still
#: address the activation, weight and parameter buffers together (43 address bits), which these share so that both
#: models' activations (KWS: 16,000 words) and parameters (AD: 1,672) fit.
LARGEST = {"act_depth": 32768, "weight_depth": 65536, "param_depth": 4096, "program_depth": 65536}
#: The memories a model fills, with their depth fields, and where an iCE40 build puts each: the single-port
#: activation and weight buffers in SPRAM (hw.buffer), the parameter and accumulator buffers and the program memory
#: (its reads and writes have addresses of their own) in block RAM.
MEMORIES = {"weight": ("weight_depth", "SPRAM"), "act": ("act_depth", "SPRAM"), "param": ("param_depth", "EBR"),
            "program": ("program_depth", "EBR"), "acc": ("acc_depth", "EBR")}
#: SB_SPRAM256KA: 16,384 words of 16 bits. SB_RAM40_4K (EBR): 4 kbit, as 256x16, 512x8, 1024x4 or 2048x2.
SPRAM_SHAPE = (16384, 16)
EBR_SHAPES = ((256, 16), (512, 8), (1024, 4), (2048, 2))
#: The shallowest program memory the generator builds (gen.config).
_PROGRAM_MIN = 16


def word_bits(cfg):
    """Bits of one word of each memory of ``cfg`` (tessera.hw.layouts; a program word is a link word)."""
    def bits(layout):
        return Shape.cast(layout.members["data"]).width
    return {"weight": bits(weight_load_layout(cfg)), "act": bits(act_load_layout(cfg)),
            "param": bits(param_load_layout(cfg)), "program": bits(program_load_layout(cfg)),
            "acc": Shape.cast(data.ArrayLayout(ACC, cfg.cols)).width}


def blocks(place, words, bits):
    """RAM blocks of kind ``place`` (``"SPRAM"``, ``"EBR"``) that ``words`` of ``bits`` take: the fewest over the
    block's shapes (an SPRAM holds one word of up to 16 bits per address, so an 8-bit buffer leaves half unused)."""
    shapes = (SPRAM_SHAPE,) if place == "SPRAM" else EBR_SHAPES
    return min(math.ceil(words / depth) * math.ceil(bits / width) for depth, width in shapes)


def ram_use(words, bits):
    """``{"SPRAM", "EBR": {"blocks", "bytes"}}``: the memories' ``words`` (of ``bits`` each) placed as an iCE40
    build places them (:data:`MEMORIES`); a memory of unknown words (None) counts none."""
    use = {place: {"blocks": 0, "bytes": 0} for place in ("SPRAM", "EBR")}
    for memory, (_, place) in MEMORIES.items():
        if words.get(memory):
            use[place]["blocks"] += blocks(place, words[memory], bits[memory])
            use[place]["bytes"] += words[memory] * bits[memory] // 8
    return use


def _stored_weight_words(segments):
    """Weight words the compiled segments LOAD, resident or streamed with every run."""
    loads = [(segment.model.cfg, words) for segment in segments if segment.model is not None
             for words in (segment.model.load_words, *(load for _, load in segment.model.stream_loads))]
    return sum(int(operands["words"]) for cfg, words in loads for opcode, operands, _ in disassemble(cfg, words)
               if opcode == Opcode.LOAD and operands["buffer"] == BufferId.WEIGHT)


def channels_at(name, width):
    """The channels of model ``name`` at channel ``width`` (as tessera.verif.mlperf_tiny rounds them)."""
    return max(1, round(CHANNELS[name] * width))


def model_needs(name, path, cfg, channels):
    """What model ``path`` (``name`` with ``channels`` channels) needs to stay whole on ``cfg``'s array, compiled
    with the :data:`LARGEST` memories: whether it is whole there and why not, the words of each memory (None: not
    known), the UP5K's RAM they take (:func:`ram_use`) and whether it holds them and the model is whole.

    ``at_least`` says that layers were left out: their weights are counted one a word (as a 1x1 stores a dense
    layer's), their parameters and program words not."""
    graph = load_model(path)
    largest = cfg.replace(**LARGEST)
    weights = {layer.name: int(layer.w_q.size) for layer in graph.layers if hasattr(layer, "w_q")}
    row = {"model": name, "channels": channels, "int8_weights": sum(weights.values())}
    segments = compile_model(graph, largest)
    kept = residency(graph, segments)
    left_out = [layer for segment in segments if segment.model is None for layer in segment.layers]
    words = {"weight": _stored_weight_words(segments) + sum(weights.get(layer, 0) for layer in left_out),
             "act": kept["act_words"], "param": kept["param_words"], "program": kept["program_words"],
             "acc": cfg.acc_depth}
    why = ([f"weights of {len(kept['streamed_layers'])} layer(s) streamed"] if kept["streamed_layers"] else []) + (
        [f"{len(left_out)} layer(s) not resident ({', '.join(left_out)})"] if left_out else [])
    return _placed(cfg, {**row, "whole": kept["whole"], "why": "; ".join(why), "reasons": kept["not_resident"],
                         "streamed": kept["streamed_layers"], "words": words, "at_least": bool(left_out)})


def _placed(cfg, row):
    """``row`` with the RAM its words take and whether the UP5K holds it whole."""
    ram = ram_use(row["words"], word_bits(cfg))
    capacity = CAPACITY[DEVICE]
    fits = row["whole"] and ram["SPRAM"]["blocks"] <= capacity["SPRAM"] and ram["EBR"]["blocks"] <= capacity["BRAM"]
    return {**row, "ram": ram, "fits_ram": fits}


def needs_at(name, folder, cfg, channels):
    """:func:`model_needs` of model ``name`` with ``channels`` channels, quantized into ``folder``."""
    path = quantized(name, Path(folder) / f"{name}_{channels}", width=channels / CHANNELS[name])
    return model_needs(name, path, cfg, channels)


def widest_fitting(name, folder, cfg, channels):
    """The row of model ``name`` with the most channels below ``channels`` whose needs the UP5K's RAM holds (by
    bisection: fewer channels never need more), or its row at one channel if not even that fits."""
    best = needs_at(name, folder, cfg, 1)
    if not best["fits_ram"]:
        return best
    low, high = 1, channels       # fits with low channels, not with high
    while high - low > 1:
        middle = (low + high) // 2
        row = needs_at(name, folder, cfg, middle)
        if row["fits_ram"]:
            best, low = row, middle
        else:
            high = middle
    return best


def smallest_config(cfg, words):
    """``cfg`` with each memory a model fills just deep enough for its ``words`` (none shallower than in ``cfg``)."""
    depths = {field: max(getattr(cfg, field), words[memory]) for memory, (field, _) in MEMORIES.items()}
    depths["program_depth"] = max(depths["program_depth"], _PROGRAM_MIN)
    return cfg.replace(**depths)


def holds_whole(path, cfg):
    """Whether ``cfg`` keeps model ``path`` whole on chip."""
    graph = load_model(path)
    return residency(graph, compile_model(graph, cfg))["whole"]


def synthesise(cfg, smallest, *, synth=board_synthesis, progress=None):
    """Yosys's counts, a row each, for the default ``cfg``, the default with ``smallest``'s program memory, and
    ``smallest``: what the program memory costs, and what the deeper buffers cost on top."""
    steps = [("default", cfg), ("+ program memory", cfg.replace(program_depth=smallest.program_depth)),
             ("+ deeper buffers", smallest)]
    rows = []
    for label, config in steps:
        result = synth(BOARD, config, progress)
        rows.append({"configuration": label, "depths": {field: getattr(config, field) for field, _ in
                                                        MEMORIES.values()},
                     **result["resources"], "fits": result["fits"], "over": result["over"],
                     "seconds": result["seconds"]})
    return rows


def _label(row):
    return f"{row['model']} ({row['channels']} of {CHANNELS[row['model']]} channels)"


def _words(row, memory):
    """A memory's words for the tables: ">= " where layers were left out, "-" where not known."""
    words = row["words"][memory]
    if words is None:
        return "-"
    return f"{'>= ' if row['at_least'] and memory != 'acc' else ''}{words:,}"


def memory_table(cfg, rows):
    """Markdown: a row per model, the words of each memory it needs whole and the UP5K's RAM they take."""
    capacity = CAPACITY[DEVICE]
    bits = word_bits(cfg)
    names = {"weight": "weight", "act": "activation", "param": "parameter", "program": "program"}
    columns = [("model", "model", ""), ("whole", "whole at the largest depths", "")] + [
        (memory, f"{name} words ({bits[memory]} b)", "") for memory, name in names.items()] + [
        ("spram", f"SPRAM blocks (of {capacity['SPRAM']})", ""), ("spram_bytes", "SPRAM bytes", ""),
        ("ebr", f"EBR blocks (of {capacity['BRAM']})", ""), ("ebr_bytes", "EBR bytes", ""),
        ("fits", "memories fit the UP5K's RAM", "")]
    shown = [{"model": _label(row), "whole": "yes" if row["whole"] else f"no: {row['why']}",
              **{memory: _words(row, memory) for memory in names},
              "spram": str(row["ram"]["SPRAM"]["blocks"]), "spram_bytes": f"{row['ram']['SPRAM']['bytes']:,}",
              "ebr": str(row["ram"]["EBR"]["blocks"]), "ebr_bytes": f"{row['ram']['EBR']['bytes']:,}",
              "fits": "yes" if row["fits_ram"] else "no"} for row in rows]
    return markdown_table(shown, columns)


def synth_table(rows):
    """Markdown: Yosys's counts for each configuration synthesised."""
    capacity = CAPACITY[DEVICE]
    shown = [{**row, "depths": " / ".join(f"{row['depths'][field]:,}" for field in
                                          ("act_depth", "weight_depth", "param_depth", "program_depth")),
              "share": row["LUT"] / capacity["LUT"], "fits": "yes" if row["fits"] else "no: " + "; ".join(row["over"])}
             for row in rows]
    return markdown_table(shown, [
        ("configuration", "configuration", ""), ("depths", "act / weight / param / program words", ""),
        ("LUT", "LUT4", ",d"), ("share", f"of {capacity['LUT']:,}", ".0%"), ("FF", "FF", ",d"),
        ("BRAM", f"EBR (of {capacity['BRAM']})", "d"), ("SPRAM", f"SPRAM (of {capacity['SPRAM']})", "d"),
        ("DSP", f"DSP (of {capacity['DSP']})", "d"), ("fits", "fits", ""), ("seconds", "Yosys s", ".0f")])


def _ram_stop(row):
    """What row's memories need beside the UP5K's, and any beyond the generator's deepest."""
    capacity = CAPACITY[DEVICE]
    deeper = [f"{_words(row, memory)} {memory} words (deepest: {LARGEST[field]:,})"
              for memory, (field, _) in MEMORIES.items()
              if field in LARGEST and row["words"][memory] and row["words"][memory] > LARGEST[field]]
    ram = row["ram"]
    return (f"{ram['SPRAM']['blocks']} SPRAMs of {capacity['SPRAM']} and {ram['EBR']['blocks']} EBRs of "
            f"{capacity['BRAM']}" + (f", and {', '.join(deeper)}" if deeper else ""))


def _logic(synth_rows):
    """The LUT4s of the last configuration synthesised, what the program memory and the deeper buffers add, and
    what else is over."""
    default, program, whole = synth_rows
    lut = CAPACITY[DEVICE]["LUT"]
    others = [over for over in whole["over"] if not over.startswith("LUT")]
    return (f"{whole['LUT']:,} LUT4s in Yosys, {whole['LUT'] / lut:.0%} of {lut:,} (the default {default['LUT']:,}; "
            f"its program memory adds {program['LUT'] - default['LUT']:,}, the deeper buffers "
            f"{whole['LUT'] - program['LUT']:,})" + (f", and {'; '.join(others)}" if others else ""))


def conclusion(rows, widest, candidate, synth_rows):
    """One line from the measured numbers: the model that fits whole (its RAM and, when measured, its logic), or
    what stops each and how far the widest that would fit is from the logic cells."""
    if candidate in rows:
        fits = bool(synth_rows) and synth_rows[-1]["fits"]
        ram = (f"{candidate['ram']['SPRAM']['blocks']} of {CAPACITY[DEVICE]['SPRAM']} SPRAMs, "
               f"{candidate['ram']['EBR']['blocks']} of {CAPACITY[DEVICE]['BRAM']} EBRs")
        logic = _logic(synth_rows) if synth_rows else "logic not measured (--quick)"
        verdict = ("fits the iCEBreaker whole" if fits else "fits the UP5K's RAM whole" if not synth_rows
                   else "fits the UP5K's RAM whole but not the rest of the device")
        return f"{_label(candidate)} {verdict}: {ram}; {logic}."
    stops = "; ".join(f"{_label(row)} needs {_ram_stop(row)}" for row in rows)
    reduced = []
    for row in widest:
        if row["fits_ram"]:
            logic = (f" and needs {_logic(synth_rows)}" if row is candidate and synth_rows else "")
            reduced.append(f"the widest {row['model']} whose memories fit the RAM has {row['channels']} of "
                           f"{CHANNELS[row['model']]} channels{logic}")
        else:
            reduced.append(f"no {row['model']} fits at any width (with {row['channels']} of {CHANNELS[row['model']]} "
                           f"channels: " + (row["why"] if not row["whole"] else f"needs {_ram_stop(row)}") + ")")
    reduced = "; ".join(reduced)
    return f"No whole model fits the iCEBreaker: {stops}. {reduced[:1].upper()}{reduced[1:]}."


def render(cfg, rows, widest, candidate, synth_rows, line):
    """The report as Markdown: the memory table, the synthesis table (if any), the conclusion."""
    capacity = CAPACITY[DEVICE]
    depths = ", ".join(f"{field.removesuffix('_depth')} {depth:,}" for field, depth in LARGEST.items())
    spram_bytes = capacity["SPRAM"] * SPRAM_SHAPE[0] * SPRAM_SHAPE[1] // 8
    ebr_bytes = capacity["BRAM"] * EBR_SHAPES[0][0] * EBR_SHAPES[0][1] // 8
    intro = (f"Whole models on the iCEBreaker's {cfg.dataflow} {cfg.rows}x{cfg.cols} (compiled with the deepest "
             f"memories the generator takes: {depths} words; accumulator {cfg.acc_depth} words). Activation and "
             f"weight words go to SPRAM ({capacity['SPRAM']} x 16,384 words of up to 16 bits, {spram_bytes:,} B), "
             f"the others to EBR ({capacity['BRAM']} x 4 kbit, {ebr_bytes:,} B); the blocks counted are the model's "
             f"memories' and the accumulator's (the device's queues take EBRs too: Yosys counts all). \">=\": layers "
             f"left out, counted by their weights only.")
    lines = [intro, "", memory_table(cfg, rows + [row for row in widest if row not in rows])]
    if synth_rows:
        title = (f"Yosys (synthesis only) for {_label(candidate)} whole, on the smallest configuration that holds "
                 f"it:")
        lines += ["", title, "", synth_table(synth_rows)]
    lines += ["", line]
    return "\n".join(lines) + "\n"


def _parser():
    def check_width(value):
        if not 0 < value <= 1:
            raise ValueError(f"{value:g} is out of range; accepted: above 0, up to 1 (1: the reference models)")

    parser = OneLineParser(prog="python -m tessera.verif.icebreaker_fit", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/icebreaker_fit", type=folder_argument,
                        help="folder for the models and the report (default build/icebreaker_fit)")
    parser.add_argument("--width", default=1.0, type=checked_argument(number_argument, check_width),
                        help="channel width factor of the models (default 1.0: the reference models)")
    parser.add_argument("--quick", action="store_true", help="skip Yosys")
    return parser


def main(argv=None, *, synth=board_synthesis):
    args = _parser().parse_args(argv)
    out = Path(args.out)
    cfg = board_config(BOARD)

    def measured(row):
        print(f"  {_label(row)}: whole {row['whole']}, fits the RAM {row['fits_ram']}", file=sys.stderr)
        return row

    rows = [measured(needs_at(name, out, cfg, channels_at(name, args.width))) for name in CHANNELS]
    widest = [measured(widest_fitting(row["model"], out, cfg, row["channels"])) for row in rows if not row["fits_ram"]]
    fitting = [row for row in rows if row["fits_ram"]] or [row for row in widest if row["fits_ram"]]
    candidate = max(fitting, key=lambda row: row["int8_weights"], default=None)
    synth_rows, smallest = [], None
    if candidate:
        smallest = smallest_config(cfg, candidate["words"])
        path = out / f"{candidate['model']}_{candidate['channels']}" / f"{candidate['model']}.onnx"
        if not holds_whole(path, smallest):
            raise RuntimeError(f"{_label(candidate)} is not whole at the depths it used: {smallest.to_dict()}")
        if not args.quick:
            synth_rows = synthesise(cfg, smallest, synth=synth, progress=lambda line: print(line, file=sys.stderr))
    line = conclusion(rows, widest, candidate, synth_rows)
    text = render(cfg, rows, widest, candidate, synth_rows, line)
    print(text, end="")
    write_markdown(out / "icebreaker_fit.md", text)
    write_json(out / "icebreaker_fit.json", {"config": cfg.to_dict(), "largest": LARGEST, "models": rows,
                                             "widest": widest, "smallest_config": smallest and smallest.to_dict(),
                                             "synthesis": synth_rows, "conclusion": line})
    return 0


if __name__ == "__main__":
    sys.exit(main())
