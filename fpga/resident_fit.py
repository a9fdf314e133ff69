"""Which models a board's configuration keeps whole on chip: the bitstream report's resident section.

`tessera bitstream --models A.onnx,B.onnx` compiles each model for the configuration it builds (before the build,
so a model it cannot read stops it at once) and reports, per model, the layers that stay resident, the layers whose
weights stream with every run (they do not all fit the weight buffer), and the words it takes of each memory beside
the configuration's depths; and the largest model, by its weights, that the configuration holds whole.
"""

from pathlib import Path

from tessera.sw_driver.model_compiler import compile_model, residency
from tessera.sw_driver.onnx_import import load_model

__all__ = ["resident_fit", "largest_whole", "render_resident"]

_MEMORIES = (("weight_words", "weight_depth"), ("act_words", "act_depth"), ("vec_words", "vec_depth"),
             ("param_words", "param_depth"), ("program_words", "program_depth"))


def resident_fit(cfg, paths):
    """One row per model file: its name, what :func:`~tessera.sw_driver.model_compiler.residency` says of it on
    ``cfg``, and its weights in bytes (a weight word holds ``cols`` of them). Raises ModelError for a file that is
    not a quantized ONNX model."""
    rows = []
    for path in paths:
        graph = load_model(path)
        kept = residency(graph, compile_model(graph, cfg))
        rows.append({"model": Path(path).stem, **kept, "weight_bytes": kept["weight_words"] * cfg.cols})
    return rows


def largest_whole(rows):
    """The row of the model with the most weight bytes among those whole on chip, or None."""
    whole = [row for row in rows if row["whole"]]
    return max(whole, key=lambda row: row["weight_bytes"]) if whole else None


def render_resident(config, rows):
    """The rows as Markdown, for a configuration of fields ``config`` (as ``AcceleratorConfig.to_dict`` gives
    them): a table, then the largest model held whole."""
    depths = ", ".join(f"{depth} {config[depth]:,}" for _, depth in _MEMORIES)
    lines = ["", f"## Models resident ({depths} words)", "",
             "| model | layers resident | whole on chip | weight buffer | "
             + " | ".join(words.replace("_", " ") for words, _ in _MEMORIES) + " |",
             "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in _MEMORIES) + " |"]
    for row in rows:
        why = ([f"{len(row['not_resident'])} layer(s) one by one"] if row["not_resident"] else []) + (
            [f"weights of {', '.join(row['streamed_layers'])} streamed"] if row["streamed_layers"] else [])
        whole = "yes" if row["whole"] else "no" + (f": {'; '.join(why)}" if why else "")
        lines.append(f"| {row['model']} | {row['resident_layers']} of {row['compute_layers']} | {whole} | "
                     f"{row['weight_bytes']:,} B | " + " | ".join(f"{row[w]:,}" for w, _ in _MEMORIES) + " |")
    largest = largest_whole(rows)
    lines += ["", f"Largest model whole on chip: {largest['model']} ({largest['weight_bytes']:,} B of weights)."
              if largest else "Largest model whole on chip: none of these."]
    return "\n".join(lines) + "\n"
