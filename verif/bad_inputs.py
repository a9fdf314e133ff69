"""Bad inputs to the ``tessera`` command, each with the one-line message it gets.

Each case (:data:`CASES`) prepares its files in a folder and returns a command line; :func:`run_case` calls
``tessera.sw_driver.cli.main`` on it in this process, with stdout and stderr captured and every way of starting work
watched: a simulator (``open_sim_device``, ``SimTransport``, the harness build), the demo, a bitstream build. A bad
input must be refused before any of them, in one line on stderr that names what is wrong and what is accepted, with
a non-zero exit status and no traceback. The one case that is not refused (buffers too small for any layer) runs to
the end and warns, in one line, that the device did none of the work.

Usage: ``python -m tessera.verif.bad_inputs [--write docs/bad_inputs.md]`` prints (or writes) the table.
"""

import argparse
import contextlib
import functools
import importlib
import io
import logging
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
from onnx import TensorProto, helper

from tessera.sw_driver.cli import main as tessera_main
from tessera.verif.onnx_models import (
    IR_VERSION,
    OPSET,
    QuantFormat,
    QuantType,
    add_model,
    conv_model,
    gemm_model,
    quantize_model,
)

__all__ = ["CASES", "REGENERATE", "SIMULATION", "BadInput", "Outcome", "Workspace", "run_case", "source_locations",
           "table_line", "markdown", "documented_lines", "main"]

REGENERATE = "python -m tessera.verif.bad_inputs --write docs/bad_inputs.md"
#: The work a refusal must come before: where it starts, and what the table calls it. Every way into the simulator
#: is one entry of the table ("simulation"), so a cached simulator build and a fresh one read the same.
SIMULATION = "simulation"
_WORK = {
    "tessera.sw_driver.runtime.open_sim_device": SIMULATION,
    "tessera.sw_driver.runtime.SimTransport": SIMULATION,
    "tessera.sw_driver.transport.build_harness": SIMULATION,
    "tessera.sw_driver.demo.run_demo": "demo",
    "tessera.fpga.build.build_bitstream": "bitstream build",
}
#: Progress a run prints before it builds a simulator the first time: not part of a case's message.
_BUILDING = "building the simulator for "
#: A source location (``cli.py:431``, ``model.cc:256``): internals, not something a user can act on.
_SOURCE_LOCATION = re.compile(r"\b[\w-]+\.(py|cc|cpp|c|h|hpp):\d+")
#: A configuration whose buffers hold no tile of the small models: every compute layer falls back to the host.
_TINY_BUFFERS = "rows = 4\ncols = 4\nact_depth = 4\nweight_depth = 4\nacc_depth = 8\n"
_CONV_SHAPE = (1, 3, 16, 16)


class _WorkStarted(BaseException):
    """Raised where refused work would start; a BaseException, so that no ``except Exception`` on the way (``main``'s
    included) turns it into a message."""


@dataclass(frozen=True)
class BadInput:
    """One bad input.

    ``prepare(workspace)`` writes the case's files and returns the argv for ``main``; ``names`` are substrings the
    stderr line must hold: what is wrong and what is accepted. ``status`` is the exit status expected; a case that
    ``warns`` is not refused but runs to the end (a simulation included) with one warning line on stderr.
    """

    name: str
    prepare: Callable
    names: tuple
    status: int = 1
    warns: bool = False


@dataclass(frozen=True)
class Outcome:
    """What ``main`` did with a case, run in ``folder``: exit status (None if an exception escaped or the command
    was stopped), stdout and stderr lines, the work started (``_WORK``'s names, once each, in order) and the
    traceback of an exception that escaped ``main``."""

    folder: Path
    argv: tuple
    status: int | None
    stdout: tuple
    stderr: tuple
    started: tuple
    traceback: str = ""

    @property
    def tracebacks(self):
        """True if a traceback reached the user or escaped ``main``."""
        return bool(self.traceback) or any("Traceback (most recent call last)" in line
                                           for line in (*self.stdout, *self.stderr))

    def short(self, text):
        """``text`` with the case's folder and the shared root taken out of its paths, so that the table reads the
        same on every run."""
        for folder in (self.folder, self.folder.parent):
            text = text.replace(f"{folder}/", "").replace(str(folder), ".")
        return text


class Workspace:
    """The files of one case, in ``root / folder``, and the models all cases share, in ``root / "models"``."""

    def __init__(self, root, folder):
        self.root = Path(root)
        self.folder = self.root / folder
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, name):
        return str(self.folder / name)

    def subfolder(self, name):
        (self.folder / name).mkdir(exist_ok=True)
        return self.path(name)

    def model(self, name):
        """The path of shared model ``name`` (:func:`_models`), built the first time a case in ``root`` asks."""
        return str(_models(self.root)[name])

    def npy(self, name, array):
        np.save(self.folder / name, array)
        return self.path(name)

    def npz(self, name, **arrays):
        np.savez(self.folder / name, **arrays)
        return self.path(name)

    def text(self, name, content):
        (self.folder / name).write_text(content)
        return self.path(name)

    def data(self, name, content):
        (self.folder / name).write_bytes(content)
        return self.path(name)

    def run(self, model, x, *options):
        """``run MODEL --input X OPTIONS``, ``model`` a shared model's name."""
        return ["run", self.model(model), "--input", x, *options]

    def conv_x(self):
        return self.npy("x.npy", np.zeros(_CONV_SHAPE, np.float32))

    def gemm_x(self):
        return self.npy("x.npy", np.zeros((2, 8), np.float32))


@functools.cache
def _models(root):
    """Quantized models (onnxruntime's quantize_static, QOperator) and hand-made bad ones, in ``root / "models"``."""
    folder = root / "models"
    paths = {}

    def quantized(name, float_model, seed):
        (folder / name).mkdir(parents=True)
        logging.disable(logging.WARNING)    # the quantizer's advice to pre-process: not about the case
        try:
            model = quantize_model(float_model, folder / name, np.random.default_rng(seed),
                                   quant_format=QuantFormat.QOperator, per_channel=True,
                                   activation_type=QuantType.QUInt8)
        finally:
            logging.disable(logging.NOTSET)
        paths[name] = folder / f"{name}.onnx"
        onnx.save(model, paths[name])

    quantized("gemm", gemm_model(np.random.default_rng(1), m=2, k=8, n=5, trans_b=True), 1)
    quantized("conv", conv_model(np.random.default_rng(2), batch=1, in_channels=3, out_channels=4, size=(16, 16),
                                 kernel=3, stride=1, pads=(1, 1, 1, 1)), 2)
    quantized("add", add_model((1, 4, 4, 4)), 3)
    paths["float"] = folder / "gemm" / "float.onnx"     # the gemm before quantization (quantize_model keeps it)

    def variant(name, base, change):
        model = onnx.load(paths[base])
        change(model)
        paths[name] = folder / f"{name}.onnx"
        onnx.save(model, paths[name])

    def symbolic_batch(model):      # "N": a 0-size batch gets as far as the emptiness check
        for vi in (*model.graph.input, *model.graph.output):
            vi.type.tensor_type.shape.dim[0].dim_param = "N"
        del model.graph.value_info[:]

    def without_weight_scale(model):
        (conv,) = [node for node in model.graph.node if node.op_type == "QLinearConv"]
        (scale,) = [init for init in model.graph.initializer if init.name == conv.input[4]]
        model.graph.initializer.remove(scale)

    def new_ir_version(model):      # what onnx 1.23 stamps by default; the onnxruntime installed reads up to 13
        model.ir_version = 14

    variant("gemm_n", "gemm", symbolic_batch)
    variant("no_scale", "conv", without_weight_scale)
    variant("ir14", "gemm", new_ir_version)
    for name, elem in (("float16", TensorProto.FLOAT16), ("float8", TensorProto.FLOAT8E4M3FN)):
        paths[name] = folder / f"{name}.onnx"
        onnx.save(_identity(elem), paths[name])
    data = paths["conv"].read_bytes()
    paths["truncated"] = folder / "truncated.onnx"
    paths["truncated"].write_bytes(data[:len(data) // 2])
    return paths


def _identity(elem):
    """``y = Identity(x)`` on tensors of ``elem`` (float16, float8: types Tessera refuses by name)."""
    x, y = (helper.make_tensor_value_info(name, elem, [2, 8]) for name in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "tessera_bad_type", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(OPSET, 19))])
    model.ir_version = IR_VERSION
    return model


def _conv_x_with_nan(w):
    x = np.random.default_rng(2).normal(size=_CONV_SHAPE).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    return w.npy("x.npy", x)


def _truncated_npy(w):
    data = Path(w.gemm_x()).read_bytes()
    return w.data("x.npy", data[:-8])


def _pickled_npy(w):
    np.save(w.folder / "x.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    return w.path("x.npy")


def _config(w, name, text, *command):
    """``command --config NAME`` with ``text`` in NAME (``verilog`` writing into the case's folder by default)."""
    return [*(command or ("verilog", "--out", w.path("out"))), "--config", w.text(name, text)]


_ADD = np.zeros((1, 4, 4, 4), np.float32)
_SIDE = "accepted: an integer from 1 to 32"

#: The table, in the order of the document: tensors, input and output files, models, placement, configurations,
#: options, boards.
CASES = (
    # -- input tensors: checked against the model's graph inputs, as onnxruntime checks them
    BadInput("int64 input", lambda w: w.run("conv", w.npy("x.npy", np.zeros(_CONV_SHAPE, np.int64))),
             ("got int64", "expects float32 [1,3,16,16]")),
    BadInput("wrong shape", lambda w: w.run("conv", w.npy("x.npy", np.zeros((1, 3, 8, 8), np.float32))),
             ("got float32 [1,3,8,8]", "expects float32 [1,3,16,16]")),
    BadInput("NaN in the input", lambda w: w.run("conv", _conv_x_with_nan(w)),
             ("1 NaN", "[0,1,2,3]", "accepted: finite float32 values")),
    BadInput("0-size array", lambda w: w.run("gemm_n", w.npy("x.npy", np.zeros((0, 8), np.float32))),
             ("is empty", "float32 [0,8]", "at least one element")),
    # -- input files
    BadInput("text file as input", lambda w: w.run("gemm", w.text("x.txt", "1.0 2.0 3.0\n")),
             ("is not a .npy file", "numpy.save")),
    BadInput("ONNX model as input", lambda w: w.run("gemm", w.model("gemm")), ("is not a .npy file", "numpy.save")),
    BadInput("truncated .npy", lambda w: w.run("gemm", _truncated_npy(w)),
             ("is a damaged .npy file", "could only read 14 elements")),
    BadInput("damaged .npz", lambda w: w.run("gemm", w.data("x.npz", b"PK\x03\x04 and then not a zip")),
             ("is a damaged .npz file", "not a zip file")),
    BadInput("pickled .npy", lambda w: w.run("gemm", _pickled_npy(w)),
             ("holds Python objects", "accepted: numeric arrays only")),
    BadInput("missing input file", lambda w: w.run("gemm", w.path("none.npy")),
             ("none.npy does not exist", "accepted: a .npy file")),
    BadInput("input is a folder", lambda w: w.run("gemm", w.subfolder("inputs")),
             ("inputs is a folder", "accepted: a .npy file")),
    BadInput(".npz lacking an input", lambda w: w.run("add", w.npz("x.npz", a=_ADD)),
             ("lacks 'b'", "named 'a', 'b'")),
    BadInput(".npz with a wrong name", lambda w: w.run("add", w.npz("x.npz", a=_ADD, c=_ADD)),
             ("lacks 'b'", "has 'c', which the model does not take", "named 'a', 'b'")),
    BadInput(".npz for a one-input model, wrong name",
             lambda w: w.run("gemm", w.npz("x.npz", input=np.zeros((2, 8), np.float32))),
             ("lacks 'x'", "has 'input'", "named 'x'")),
    BadInput(".npy for a two-input model", lambda w: w.run("add", w.npy("x.npy", _ADD)),
             ("the model has 2 inputs", "give them as an .npz")),
    # -- output files: checked before the run, not after it
    BadInput("--output folder missing", lambda w: w.run("gemm", w.gemm_x(), "--output", w.path("no/y.npy")),
             ("--output no/y.npy", "the folder no does not exist; create it first")),
    BadInput("--report folder missing", lambda w: w.run("gemm", w.gemm_x(), "--report", w.path("no/r.json")),
             ("--report no/r.json", "the folder no does not exist; create it first")),
    BadInput("--output is a folder", lambda w: w.run("gemm", w.gemm_x(), "--output", w.subfolder("out")),
             ("--output out is a folder", "accepted: a file name in an existing folder")),
    BadInput("demo --report folder missing", lambda w: ["demo", "--report", w.path("no/r.json")],
             ("--report no/r.json", "does not exist; create it first")),
    # -- models
    BadInput("missing model file", lambda w: ["run", w.path("none.onnx"), "--input", w.gemm_x()],
             ("none.onnx does not exist", "accepted: a quantized .onnx model")),
    BadInput("model path is a folder", lambda w: ["run", w.subfolder("model.onnx"), "--input", w.gemm_x()],
             ("is a folder", "accepted: a quantized .onnx model")),
    BadInput("truncated model", lambda w: w.run("truncated", w.conv_x()),
             ("models/truncated.onnx is not a readable ONNX model", "truncated or corrupt")),
    BadInput("text file as model", lambda w: ["run", w.text("m.onnx", "not a model\n"), "--input", w.gemm_x()],
             ("m.onnx is not a readable ONNX model",)),
    BadInput("model missing an initializer", lambda w: w.run("no_scale", w.conv_x()),
             ("input 'W_scale' is not a graph input", "a missing initializer?")),
    BadInput("float16 model", lambda w: w.run("float16", w.npy("x.npy", np.zeros((2, 8), np.float16))),
             ("FLOAT16", "Tessera accepts FLOAT, INT8, UINT8")),
    BadInput("float8 model", lambda w: w.run("float8", w.gemm_x()), ("FLOAT8E4M3FN", "Tessera accepts FLOAT")),
    BadInput("IR version onnxruntime cannot read, --check", lambda w: w.run("ir14", w.gemm_x(), "--check"),
             ("onnxruntime cannot load", "Unsupported model IR version: 14, max supported IR version: 13")),
    # -- where layers run
    BadInput("--strict, buffers too small", lambda w: w.run("gemm", w.gemm_x(), "--strict", "--config",
                                                            w.text("tiny.toml", _TINY_BUFFERS)),
             ("--strict: 1 compute layer would run on the host", "does not tile onto this configuration",
              "accepted: weight_depth >= 8")),
    BadInput("--strict, float model", lambda w: w.run("float", w.gemm_x(), "--strict"),
             ("--strict: 1 compute layer would run on the host", "is a float graph input, not a DequantizeLinear")),
    BadInput("--strict --target host", lambda w: w.run("gemm", w.gemm_x(), "--strict", "--target", "host"),
             ("--target host runs none there", "accepted with --strict: sim, serial:PORT")),
    BadInput("buffers too small (a warning)", lambda w: w.run("gemm", w.gemm_x(), "--config",
                                                              w.text("tiny.toml", _TINY_BUFFERS)),
             ("warning", "'QGemm_1' (Gemm), ran on the host", "the table says why"), status=0, warns=True),
    # -- configuration files
    BadInput("config: bad JSON", lambda w: _config(w, "x.json", '{"rows": 8,', "demo"),
             ("cannot read configuration x.json", "line 1 column 12"), status=2),
    BadInput("config: not a table", lambda w: _config(w, "x.json", "[8, 8]", "demo"),
             ("not list [8, 8]", "accepted keys: acc_depth"), status=2),
    BadInput('config: rows = "8"', lambda w: _config(w, "c.toml", 'rows = "8"\n'),
             ("type error", "rows: must be an integer, not str '8'"), status=2),
    BadInput("config: rows = 0", lambda w: _config(w, "c.toml", "rows = 0\n"), ("rows: 0 is out of range", _SIDE),
             status=2),
    BadInput("config: unknown key", lambda w: _config(w, "c.toml", "row = 8\n", *w.run("gemm", w.gemm_x())),
             ("unknown configuration key(s) row", "accepted: acc_depth"), status=2),
    BadInput("config: missing file", lambda w: w.run("gemm", w.gemm_x(), "--config", w.path("none.toml")),
             ("cannot read configuration none.toml", "No such file"), status=2),
    BadInput("config: .yaml", lambda w: ["verilog", "--config", "c.yaml"],
             ("unknown suffix .yaml", "accepted: .toml, .json"), status=2),
    BadInput('config: multiplier = "booth"', lambda w: _config(w, "c.toml", 'multiplier = "booth"\n'),
             ("multiplier: 'booth' is not a design", "accepted: 'exact'", "'mitchell'"), status=2),
    BadInput("run --multiplier booth", lambda w: w.run("gemm", w.gemm_x(), "--multiplier", "booth"),
             ("'booth' is not a PE multiplier", "accepted: exact, truncated4, drum6, mitchell"), status=2),
    BadInput("run --multiplier with --target host", lambda w: w.run("gemm", w.gemm_x(), "--multiplier", "drum6",
                                                                   "--target", "host"),
             ("--target host computes onnxruntime's arithmetic", "accepted with an approximate multiplier")),
    BadInput("run --fold-row-taps with --per-layer", lambda w: w.run("gemm", w.gemm_x(), "--fold-row-taps",
                                                                     "--per-layer"),
             ("--fold-row-taps folds the input of a model the device keeps resident", "without --per-layer")),
    BadInput("demo --prune-by energy on os", lambda w: ["demo", "--dataflow", "os", "--prune", "0.5", "--prune-by",
                                                        "energy"],
             ("'energy' needs a ws device", "accepted with os: tile, weight")),
    # -- options
    BadInput("run --rows 0", lambda w: w.run("gemm", w.gemm_x(), "--rows", "0"), ("--rows: 0", _SIDE), status=2),
    BadInput("run --cols 8.0", lambda w: w.run("gemm", w.gemm_x(), "--cols", "8.0"),
             ("--cols", "'8.0' is not an integer"), status=2),
    BadInput("verilog --dataflow xx", lambda w: ["verilog", "--dataflow", "xx"],
             ("'xx' is not a dataflow", "accepted: ws, os, rs"), status=2),
    BadInput("run --target bogus", lambda w: w.run("gemm", w.gemm_x(), "--target", "bogus"),
             ("'bogus' is not a target", "accepted: sim, host, serial:PORT"), status=2),
    BadInput("run without --input", lambda w: ["run", w.model("gemm")], ("required", "--input"), status=2),
    BadInput("verilog --out is a file", lambda w: ["verilog", "--out", w.text("f", "")],
             ("--out: f is a file", "accepted: a folder"), status=2),
    BadInput("--cache-dir is a file", lambda w: ["--cache-dir", w.text("f", ""), "verilog"],
             ("--cache-dir: f is a file", "accepted: a folder"), status=2),
    BadInput("unknown command", lambda w: ["simulate"], ("invalid choice: 'simulate'", "'verilog'"), status=2),
    BadInput("demo --images -5", lambda w: ["demo", "--images", "-5"],
             ("-5 is out of range", "accepted: an integer from 1 to 360"), status=2),
    BadInput("demo --batch 0", lambda w: ["demo", "--batch", "0"],
             ("0 is out of range", "accepted: an integer of at least 1"), status=2),
    BadInput("demo --prune 1.5", lambda w: ["demo", "--prune", "1.5"],
             ("1.5 is out of range", "accepted: a fraction from 0 up to, not including, 1"), status=2),
    BadInput("demo --format QInt8", lambda w: ["demo", "--format", "QInt8"],
             ("'QInt8' is not a quantization format", "accepted: QOperator, QDQ"), status=2),
    # -- boards
    BadInput("bitstream --board bogus", lambda w: ["bitstream", "--board", "bogus"],
             ("invalid choice: 'bogus'", "'icebreaker'"), status=2),
    BadInput("bitstream --clock-mhz 0", lambda w: ["bitstream", "--board", "icebreaker", "--clock-mhz", "0"],
             ("0.0 is out of range", "accepted: a clock above 0 MHz"), status=2),
    BadInput("bitstream --clock-mhz 10", lambda w: ["bitstream", "--board", "ulx3s", "--clock-mhz", "10", "--out",
                                                    w.path("fpga")],
             ("--clock-mhz 10", "accepted on the ulx3s: 15 MHz or more"), status=1),
    BadInput("bitstream --time-limit 0", lambda w: ["bitstream", "--board", "ulx3s", "--time-limit", "0"],
             ("0.0 is out of range", "accepted: minutes above 0"), status=2),
    BadInput("bitstream --lut-multiplier-rows -1",
             lambda w: ["bitstream", "--board", "ulx3s", "--lut-multiplier-rows", "-1"],
             ("-1 is out of range", "accepted: 0 or more PE rows"), status=2),
    BadInput("bitstream --lut-multiplier-rows 99",
             lambda w: ["bitstream", "--board", "ulx3s", "--rows", "4", "--cols", "4", "--lut-multiplier-rows", "99",
                        "--out", w.path("fpga")],
             ("99 is out of range for a 4-row array", "accepted: 0 to 4"), status=1),
    BadInput("deploy --port /dev/nonexistent",
             lambda w: ["deploy", "--board", "icebreaker", "--port", "/dev/nonexistent", "--out", w.path("fpga")],
             ("cannot open serial port '/dev/nonexistent'", "is the icebreaker connected")),
    BadInput("run --target serial:/dev/nonexistent",
             lambda w: w.run("gemm", w.gemm_x(), "--target", "serial:/dev/nonexistent"),
             ("cannot open serial port '/dev/nonexistent'",)),
)


def _folder_name(case_name):
    return re.sub(r"[^a-z0-9]+", "_", case_name.lower()).strip("_")


def run_case(case, root):
    """Run ``case`` with its files under ``root`` (the shared models in ``root / "models"``); its :class:`Outcome`.

    Every entry of ``_WORK`` is watched: for a refused case, reaching one is recorded and stops the command at once
    (nothing is built or simulated); a case that ``warns`` runs to the end, its work recorded on the way.
    """
    workspace = Workspace(root, _folder_name(case.name))
    argv = case.prepare(workspace)
    started = []
    out, err = io.StringIO(), io.StringIO()
    status, trace = None, ""
    with contextlib.ExitStack() as stack:
        for target, label in _WORK.items():
            stack.enter_context(mock.patch(target, _watch(target, label, started, run=case.warns)))
        stack.enter_context(_command_line_warnings())
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            status = tessera_main(argv)
        except _WorkStarted:
            pass
        except BaseException:  # noqa: BLE001 - an exception out of main is a finding, kept with its traceback
            trace = traceback.format_exc()
    stderr = [line for line in err.getvalue().splitlines() if not line.startswith(_BUILDING)]
    return Outcome(workspace.folder, tuple(argv), status, tuple(out.getvalue().splitlines()), tuple(stderr),
                   tuple(dict.fromkeys(started)), trace)


@contextlib.contextmanager
def _command_line_warnings():
    """Python's default warning filters, as ``tessera`` runs with them (pytest turns warnings into errors)."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        yield


def _watch(target, label, started, *, run):
    """A stand-in for ``target`` that records ``label``, then calls it (``run``) or stops the command."""
    module, _, name = target.rpartition(".")
    real = getattr(importlib.import_module(module), name)

    def watched(*args, **kwargs):
        started.append(label)
        if not run:
            raise _WorkStarted(label)
        return real(*args, **kwargs)
    return watched


def source_locations(lines):
    """The source locations (``cli.py:431``) in ``lines``: a message that shows one shows internals."""
    return [match.group(0) for line in lines for match in _SOURCE_LOCATION.finditer(line)]


def _code(text):
    """``text`` as code in a markdown table cell."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def table_line(case, outcome):
    """The case's line in the table: case, command, exit status, stderr (each line), work started."""
    command = outcome.short(" ".join(("tessera", *outcome.argv)))
    message = "<br>".join(_code(outcome.short(line)) for line in outcome.stderr) or "(nothing)"
    if outcome.traceback:
        message = f"(exception out of main) {message}"
    status = "-" if outcome.status is None else str(outcome.status)
    return f"| {case.name} | {_code(command)} | {status} | {message} | {', '.join(outcome.started) or 'no'} |"


_HEADER = f"""# Bad inputs

What `tessera` answers to each bad input: one line on stderr naming what is wrong and what is accepted, a non-zero
exit status, no traceback, and nothing simulated or built before it. The one input that is not refused, buffers too
small for any layer, runs to the end on the simulator and warns on stderr that the device did none of the work; the
run's table on stdout says why. The last column names the work that started before the message: a simulation, the
demo, a bitstream build (a refused command is stopped there, so its status reads `-`).

Paths are relative to the case's folder; `models/` holds small models quantized by onnxruntime and hand-made bad ones
(`tessera.verif.bad_inputs`). `tests/test_bad_inputs.py` checks each line against a run; to regenerate:
`{REGENERATE}`.

| case | command | exit status | stderr | work started |
|---|---|---|---|---|
"""


def markdown(lines):
    """The document: the header, then one table line per case."""
    return _HEADER + "".join(f"{line}\n" for line in lines)


def documented_lines(text):
    """``{case name: table line}`` from a document :func:`markdown` wrote (empty if its header is not ours)."""
    if not text.startswith(_HEADER):
        return {}
    return {line.split(" | ")[0].removeprefix("| "): line for line in text[len(_HEADER):].splitlines()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="write the markdown here (default: print it)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        text = markdown(table_line(case, run_case(case, Path(folder))) for case in CASES)
    if args.write:
        Path(args.write).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
