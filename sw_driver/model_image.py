"""Deployable model images (``.tsr``): a quantized model compiled for one device configuration.

An image is a NumPy ``.npz`` archive (a zip file) holding:

``header``
    UTF-8 JSON: ``format`` ("tessera-model-image"), ``version``, the ``config`` it was compiled for and its
    ``config_hash``, the model's ``model_sha256``, and one entry per resident segment: its ``layers``, the tensors
    it reads and writes (``input``, ``output``), why it is not resident (``reason``, if so) and, if it is, its
    ``batch`` (images a run computes), ``images_as_pixels`` (a fully connected chain computing them as the pixels
    of one map), ``vector_out`` (its last step is on the vector unit: one VECTOR packet per image), ``in_shape``,
    ``out_shape``, ``input_base``, ``outputs`` (per RESULT packet its image, first pixel, first channel and rows;
    per VECTOR packet its image; on row-stationary arrays its image, first output row, first filter and rows, the
    filters' ``result_columns`` each, their lanes images where ``images_as_rows``), ``input_fold`` (the host folds
    each input space-to-depth: :mod:`tessera.sw_driver.space_to_depth`) and memory ``plan`` (each tensor's words
    in the activation and vector buffers).
``model``
    The quantized ONNX model's bytes: the layers outside segments run from it, as ``tessera run`` runs them.
``segment<i>_load``, ``segment<i>_run``
    uint32 link words: what loads segment ``i`` once (its weights, parameters and program), and its RUNs (one per
    program section).
``segment<i>_stream<k>``
    uint32 link words: the LOAD of a streamed layer's weights (those that do not fit resident), sent with every
    run before program section ``stream_sections[k]`` of the segment's entry.

An image loads only on the configuration it was compiled for (:func:`read_image` refuses any other by name).
"""

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from tessera.gen.config import AcceleratorConfig
from tessera.sw_driver.model_compiler import Segment, compile_model
from tessera.sw_driver.onnx_import import load_model
from tessera.sw_driver.resident import ResidentModel
from tessera.sw_driver.space_to_depth import InputFold

__all__ = ["IMAGE_FORMAT", "IMAGE_VERSION", "ImageError", "ModelImage", "compile_image", "compiler_digest",
           "image_model", "read_image", "write_image"]

IMAGE_FORMAT = "tessera-model-image"
IMAGE_VERSION = 2


class ImageError(ValueError):
    """A model image that cannot be used: not an image, another version, or another configuration's."""


class ModelImage:
    """A compiled model: its graph, the configuration it is for, and its segments (see the module docstring)."""

    def __init__(self, cfg, model_bytes, segments):
        self.cfg = cfg
        self.model_bytes = model_bytes
        self.segments = segments
        self.graph = load_model(model_bytes) if model_bytes else None

    @property
    def model_sha256(self):
        return hashlib.sha256(self.model_bytes).hexdigest()

    def resident_layers(self):
        return sum(len(s.layers) for s in self.segments if s.model is not None)


def compiler_digest():
    """A digest of the code that decides what an image holds (the compilers, the encoding, the layouts): a cached
    image made by other code is not reused."""
    from tessera.hw import isa, layouts
    from tessera.sw_driver import compiler, isa_encode, model_compiler, resident
    digest = hashlib.sha256()
    for module in (isa, layouts, compiler, isa_encode, model_compiler, resident):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def compile_image(model_path, cfg, batch=1, *, fold_row_taps=False):
    """Compile the quantized ONNX model at ``model_path`` for ``cfg`` into a :class:`ModelImage` whose segments
    run up to ``batch`` images each (see :func:`~tessera.sw_driver.model_compiler.compile_model`)."""
    model_bytes = Path(model_path).read_bytes()
    graph = load_model(model_path)
    image = ModelImage(cfg, model_bytes, compile_model(graph, cfg, batch, fold_row_taps=fold_row_taps))
    image.graph = graph
    return image


def cached_image(model_path, cfg, batch=1, *, fold_row_taps=False):
    """:func:`compile_image`, once per model, configuration, batch, fold and compiler: the image is kept in the build
    cache (``images/``) and read back from there after."""
    from tessera.gen.cache import cache_dir

    digest = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()[:16]
    folded = "_folded" if fold_row_taps else ""
    cached = cache_dir("images") / f"{digest}_{cfg.hash}_{batch}{folded}_{compiler_digest()}.tsr"
    if cached.is_file():
        return read_image(cached, cfg)
    image = compile_image(model_path, cfg, batch, fold_row_taps=fold_row_taps)
    write_image(image, cached)
    return image


def write_image(image, path):
    """Write ``image`` to ``path`` (see the module docstring for the format)."""
    header = {"format": IMAGE_FORMAT, "version": IMAGE_VERSION, "config": image.cfg.to_dict(),
              "config_hash": image.cfg.hash, "model_sha256": image.model_sha256, "segments": []}
    arrays = {"model": np.frombuffer(image.model_bytes, np.uint8)}
    for i, segment in enumerate(image.segments):
        entry = {"layers": segment.layers, "input": segment.input, "output": segment.output,
                 "reason": segment.reason}
        model = segment.model
        if model is not None:
            entry.update(batch=model.batch, images_as_pixels=model.images_as_pixels, vector_out=model.vector_out,
                         in_shape=list(model.in_shape), out_shape=list(model.out_shape), input_base=model.input_base,
                         outputs=[o if isinstance(o, int) else list(o) for o in model.outputs], macs=model.macs,
                         plan=model.plan, result_columns=model.result_columns, images_as_rows=model.images_as_rows,
                         input_fold=model.input_fold and dataclasses.asdict(model.input_fold))
            arrays[f"segment{i}_load"] = model.load_words
            arrays[f"segment{i}_run"] = model.run_words
            entry["stream_sections"] = [section for section, _ in model.stream_loads]
            for k, (_, words) in enumerate(model.stream_loads):
                arrays[f"segment{i}_stream{k}"] = words
        header["segments"].append(entry)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def image_model(path):
    """The ONNX model bytes inside the image at ``path`` (ImageError if it is not an image)."""
    return _open(path)[0]["model"].tobytes()


def _open(path):
    """``(arrays, header)`` of the image at ``path``, its format and version checked."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        header = json.loads(bytes(arrays["header"]).decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        raise ImageError(f"{path} is not a Tessera model image ({type(error).__name__}: {error}); accepted: a .tsr "
                         f"file written by tessera compile") from None
    if header.get("format") != IMAGE_FORMAT or header.get("version") != IMAGE_VERSION:
        raise ImageError(f"{path}: format {header.get('format')!r} version {header.get('version')!r}; accepted: "
                         f"{IMAGE_FORMAT!r} version {IMAGE_VERSION}")
    return arrays, header


def read_image(path, cfg):
    """Read the image at ``path`` for a device of ``cfg``; ImageError if it is not an image of this format and
    version, or was compiled for another configuration (both named)."""
    archive, header = _open(path)
    if header["config_hash"] != cfg.hash:
        theirs = AcceleratorConfig.from_dict(header["config"])
        raise ImageError(f"{path} was compiled for configuration {header['config_hash']}, this device is {cfg.hash}"
                         f" ({_difference(theirs, cfg)}); accepted: an image compiled for this configuration "
                         f"(tessera compile with the same configuration options)")
    segments = []
    for i, entry in enumerate(header["segments"]):
        segment = Segment(entry["layers"], entry["input"], entry["output"], reason=entry["reason"])
        if f"segment{i}_load" in archive:
            segment.model = ResidentModel(
                cfg=cfg, batch=entry["batch"], images_as_pixels=entry["images_as_pixels"],
                vector_out=entry["vector_out"],
                in_shape=tuple(entry["in_shape"]),
                out_shape=tuple(entry["out_shape"]),
                load_words=archive[f"segment{i}_load"], run_words=archive[f"segment{i}_run"],
                input_base=entry["input_base"], macs=entry["macs"],
                outputs=[o if isinstance(o, int) else tuple(o) for o in entry["outputs"]],
                stream_loads=[(section, archive[f"segment{i}_stream{k}"])
                              for k, section in enumerate(entry["stream_sections"])],
                plan=entry["plan"], result_columns=entry.get("result_columns", 0),
                images_as_rows=entry.get("images_as_rows", False),
                input_fold=_input_fold(entry.get("input_fold")))
        segments.append(segment)
    return ModelImage(cfg, archive["model"].tobytes(), segments)


def _input_fold(fields):
    """The space-to-depth fold of a segment's input, from its entry (lists back to tuples), or None."""
    if not fields:
        return None
    return InputFold(**{name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()})


def _difference(theirs, ours):
    """The configuration fields that differ, as ``field: image's value, device's value``."""
    a, b = theirs.to_dict(), ours.to_dict()
    return "; ".join(f"{k}: image {a.get(k)!r}, device {b.get(k)!r}" for k in sorted(set(a) | set(b))
                     if a.get(k) != b.get(k))
