"""ONNX's own node test cases for the quantized operators, each run through ``tessera run`` on the simulated RTL.

The ``onnx`` wheel ships no test data folder, so the cases come from the generators in the installed package
(``onnx.backend.test.case.node.collect_testcases()``). A case is one node whose every input is a graph input;
``tessera run`` takes weights and quantization parameters only as initializers, so each input after the first becomes
one, and the first is given with ``--input``; the model is stamped with an IR version and opset the installed
onnxruntime reads (:func:`tessera_model`). Outcomes:

* passed: exit status 0 and every graph output equal to onnx's expected output (dtype, shape and every element,
  NaN equal to NaN);
* refused: a non-zero exit status and a one-line reason on stderr;
* failed: anything else: outputs that differ, a refusal without a one-line reason, or an exception out of ``main``.

A case is in scope when each of its tensors is int8, uint8, int32 or float32 (so its scales are float32): it must
pass. Any other case (float8, int4, int16, float16 scales, ...) must be refused with a reason naming one of its
other types, spelled as onnx (``FLOAT8E4M3FN``, ``tensor(float16)``) or numpy (``float8_e4m3fn``) spells it.

Usage: ``python -m tessera.verif.onnx_conformance [--write docs/conformance.md]`` prints (or writes) the table.
"""

import argparse
import contextlib
import io
import re
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tessera.sw_driver.cli import main as tessera_main

__all__ = ["QUANTIZED_OPS", "IN_SCOPE_TYPES", "TESSERA_RUN", "REGENERATE", "ConformanceCase", "Row",
           "quantized_cases", "tessera_model", "run_case", "conformance_rows", "names_type", "summary", "table_line",
           "parse_table_line", "markdown", "documented_rows", "main"]

#: The operators whose onnx node test cases are run (expanded-function variants included).
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatMulInteger")
#: Element types of an in-scope case: int8/uint8 data, int32 accumulators, float32 data and scales.
IN_SCOPE_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32, onnx.TensorProto.FLOAT)
#: The command line after the model and the files: the simulated RTL, a small array so the build is cheap.
TESSERA_RUN = ("--target", "sim", "--rows", "4", "--cols", "4")
REGENERATE = "python -m tessera.verif.onnx_conformance --write docs/conformance.md"
_EXPANDED = re.compile(r"^(?P<base>.+)_expanded(_ver\d+)?$")


@dataclass(frozen=True)
class ConformanceCase:
    """One onnx node test case: its model as onnx builds it, its inputs and expected outputs (graph order)."""

    name: str
    op: str
    model: onnx.ModelProto = field(repr=False)
    inputs: tuple = field(repr=False)
    outputs: tuple = field(repr=False)

    @property
    def unsupported(self):
        """onnx names of the element types outside :data:`IN_SCOPE_TYPES`, in graph order, each once."""
        graph = self.model.graph
        types = [vi.type.tensor_type.elem_type for vi in (*graph.input, *graph.output)]
        return tuple(dict.fromkeys(onnx.TensorProto.DataType.Name(t) for t in types if t not in IN_SCOPE_TYPES))

    @property
    def in_scope(self):
        return not self.unsupported


@dataclass(frozen=True)
class Row:
    """A case's outcome: ``passed``, ``refused`` or ``failed``, and the refusal reason or what went wrong."""

    case: str
    op: str
    unsupported: tuple
    outcome: str
    detail: str
    #: What the run printed (and the traceback, if one escaped): for test failure messages, not for the table.
    log: str = field(default="", compare=False, repr=False)

    @property
    def in_scope(self):
        return not self.unsupported

    @property
    def as_required(self):
        """In scope: passed. Out of scope: refused, the reason naming one of the unsupported types."""
        if self.in_scope:
            return self.outcome == "passed"
        return self.outcome == "refused" and names_type(self.detail, self.unsupported)


def quantized_cases():
    """The onnx node test cases of :data:`QUANTIZED_OPS`, in onnx's order."""
    from onnx.backend.test.case.node import collect_testcases

    # The generators of other ops (Cast, ReduceLogSum, ...) compute overflowing and NaN values on purpose; their
    # warnings say nothing about these cases and would be errors under pytest's filterwarnings.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        everything = collect_testcases()
    op_of = {}
    for test in everything:
        nodes = test.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in QUANTIZED_OPS and nodes[0].domain in ("", "ai.onnx"):
            op_of[test.name] = nodes[0].op_type
    cases = []
    for test in everything:
        expanded = _EXPANDED.match(test.name)
        op = op_of.get(test.name) or (op_of.get(expanded["base"]) if expanded else None)
        if op:
            inputs, outputs = test.data_sets[0]
            cases.append(ConformanceCase(test.name, op, test.model, tuple(inputs), tuple(outputs)))
    return cases


def _array(value):
    """A test tensor as numpy holds it: onnx gives float8/int4 tensors as TensorProto and 0-d ones as scalars."""
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _initializer(value, name):
    if isinstance(value, onnx.TensorProto):
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = name
        return tensor
    return numpy_helper.from_array(np.asarray(value), name)


#: The newest IR version and ai.onnx opset the supported onnxruntime (1.31) reads. onnx 1.23 writes its cases at
#: IR 14 and opset 28, which onnxruntime refuses to load; the quantized operators' cases mean the same at these.
ONNXRUNTIME_IR_VERSION = 13
ONNXRUNTIME_OPSET = 25


def tessera_model(case):
    """The case's model with every graph input after the first turned into an initializer holding its test value,
    stamped with an IR version and opset onnxruntime reads (:data:`ONNXRUNTIME_OPSET`)."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    model.ir_version = min(model.ir_version, ONNXRUNTIME_IR_VERSION)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = min(opset.version, ONNXRUNTIME_OPSET)
    graph_inputs = list(model.graph.input)
    model.graph.ClearField("input")
    model.graph.input.append(graph_inputs[0])
    model.graph.initializer.extend(_initializer(value, vi.name)
                                   for vi, value in zip(graph_inputs[1:], case.inputs[1:], strict=True))
    return model


def run_case(case, folder):
    """Run ``case`` through ``tessera run`` in ``folder`` (which must exist) and classify the outcome."""
    folder = Path(folder)
    model_path, x_path, y_path = folder / f"{case.name}.onnx", folder / "x.npy", folder / "y.npz"
    model_path.write_bytes(tessera_model(case).SerializeToString())
    np.save(x_path, _array(case.inputs[0]))   # float8/int4 come out as raw bytes (|V1): numpy has no such types
    argv = ["run", str(model_path), "--input", str(x_path), "--output", str(y_path), *TESSERA_RUN]
    stdout, stderr = io.StringIO(), io.StringIO()

    def row(outcome, detail, trace=""):
        # the temporary folder out of the reason, so that the table does not change from one run to the next
        detail = detail.replace(f"{folder}/", "").replace(str(folder), ".")
        log = f"$ tessera {' '.join(argv)}\n{stdout.getvalue()}{stderr.getvalue()}{trace}"
        return Row(case.name, case.op, case.unsupported, outcome, detail, log)

    # Warnings are recorded rather than raised (as pytest's filterwarnings would): the run goes on as a user's
    # would, the outcome is the same under pytest and under main(), and a warning still fails the case.
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"onnx(runtime)?(\.|$)")
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                status = tessera_main(argv)
        except (Exception, SystemExit) as error:
            return row("failed", f"{_escaped(error)} escaped tessera run", traceback.format_exc())
    if warned:
        return row("failed", f"exit status {status}, but warned: "
                             + "; ".join(f"{w.category.__name__}: {w.message}" for w in warned))
    if status != 0:
        said = [line for line in stderr.getvalue().splitlines() if line.strip() and not line.startswith(_CHATTER)]
        if len(said) != 1:
            return row("failed", f"exit status {status} with {len(said)} lines of error instead of one: "
                                 + " / ".join(said))
        return row("refused", said[0])
    problems = _compare(case, y_path)
    return row("failed" if problems else "passed", "; ".join(problems) if problems else "equal to onnx's output")


#: What ``tessera run`` writes on stderr besides its error: a refusal's reason is the one line left.
_CHATTER = ("tessera: warning:", "building the simulator for ")
#: Where Tessera's layers are (the repository, or site-packages/tessera): an escaped exception is placed at the last
#: of its frames in them.
_PROJECT = Path(tessera_main.__code__.co_filename).resolve().parents[1]
_LAYERS = ("hw", "gen", "sw_driver", "fpga", "verif")
_HERE = Path(__file__).resolve()
_ESCAPED_MESSAGE = 300


def _escaped(error):
    """``KeyError: 'x' (at sw_driver/golden.py:12, in requantize)``: the exception, its message's first line and
    Tessera's last line before it. A message over :data:`_ESCAPED_MESSAGE` characters keeps its start and its end:
    onnxruntime's put a C++ signature in the middle and what went wrong at the end."""
    message = str(error).splitlines()[0] if str(error) else ""
    if len(message) > _ESCAPED_MESSAGE:
        message = f"{message[:_ESCAPED_MESSAGE // 2]} ... {message[-_ESCAPED_MESSAGE // 2:]}"
    own = []
    for frame in traceback.extract_tb(error.__traceback__):
        path = Path(frame.filename).resolve()
        if _PROJECT in path.parents and path.relative_to(_PROJECT).parts[0] in _LAYERS and path != _HERE:
            own.append((path.relative_to(_PROJECT), frame))
    where = f" (at {own[-1][0]}:{own[-1][1].lineno}, in {own[-1][1].name})" if own else ""
    return f"{type(error).__name__}: {message}{where}"


def _compare(case, y_path):
    """What differs between the outputs ``tessera run`` wrote and onnx's, one phrase per output; empty if none."""
    if not y_path.is_file():
        return [f"exit status 0 but no {y_path.name} was written"]
    problems = []
    with np.load(y_path, allow_pickle=False) as written:
        for vi, expected in zip(case.model.graph.output, case.outputs, strict=True):
            expected = _array(expected)
            if vi.name not in written.files:
                problems.append(f"output {vi.name!r} not written (wrote {', '.join(written.files) or 'nothing'})")
                continue
            got = written[vi.name]
            if got.dtype != expected.dtype or got.shape != expected.shape:
                problems.append(f"{vi.name}: {got.dtype} {list(got.shape)}, expected {expected.dtype} "
                                f"{list(expected.shape)}")
                continue
            same = got == expected
            if expected.dtype.kind == "f":
                same |= np.isnan(got) & np.isnan(expected)
            if not same.all():
                first = tuple(int(i) for i in np.argwhere(~same)[0])
                problems.append(f"{vi.name}: {int(same.size - same.sum())} of {same.size} elements differ, first "
                                f"at {list(first)}: {got[first]!r}, expected {expected[first]!r}")
    return problems


def conformance_rows(cases=None):
    """One :class:`Row` per case (default: every case of :func:`quantized_cases`), each run in its own folder."""
    rows = []
    for case in quantized_cases() if cases is None else cases:
        with tempfile.TemporaryDirectory(prefix="tessera-conformance-") as folder:
            rows.append(run_case(case, folder))
    return rows


def _type_spellings(type_name):
    """How a message may name an onnx type: ``FLOAT8E4M3FN`` (any case, so also ``tensor(float8e4m3fn)``) or
    numpy's ``float8_e4m3fn``."""
    spellings = {type_name.lower()}
    with contextlib.suppress(KeyError, TypeError, ValueError):
        spellings.add(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(getattr(onnx.TensorProto, type_name))).name)
    return spellings


def names_type(reason, type_names):
    """Whether ``reason`` names one of ``type_names`` (onnx names) as a whole word: ``INT16`` is not in ``UINT16``."""
    return any(re.search(rf"(?<![a-z0-9_]){re.escape(spelling)}(?![a-z0-9_])", reason.lower())
               for name in type_names for spelling in _type_spellings(name))


def summary(outcomes):
    """The counts line for the outcomes (``passed``, ``refused``, ``failed``) of the cases."""
    outcomes = list(outcomes)
    return (f"{len(outcomes)} cases: {outcomes.count('passed')} passed, {outcomes.count('refused')} refused with a "
            f"reason, {outcomes.count('failed')} failed")


def _code(text):
    """``text`` as a table cell's code span: pipes escaped for the table, a fence longer than any backtick run."""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"{fence}{text}{fence}"


def table_line(row):
    """The row's line in the markdown table."""
    scope = "yes" if row.in_scope else "no: " + ", ".join(row.unsupported)
    required = "yes" if row.as_required else "**no**"
    return f"| {_code(row.case)} | {row.op} | {scope} | {row.outcome} | {required} | {_code(row.detail)} |"


_HEADER = ("| case | op | in scope (types outside int8/uint8/int32/float32) | outcome | as required | "
           "reason, or what differed |\n|---|---|---|---|---|---|")


def markdown(rows):
    """docs/conformance.md for ``rows``."""
    in_scope = [r for r in rows if r.in_scope]
    out_of_scope = [r for r in rows if not r.in_scope]
    counts = (f"**{summary(r.outcome for r in rows)}.** In scope: {sum(r.as_required for r in in_scope)} of "
              f"{len(in_scope)} passed. Out of scope: {sum(r.as_required for r in out_of_scope)} of "
              f"{len(out_of_scope)} refused with a reason naming the type. Not as required: "
              f"{sum(not r.as_required for r in rows)}.")
    lines = [
        "# Conformance: onnx's node tests of the quantized operators",
        "",
        f"Generated by `{REGENERATE}` (onnx {onnx.__version__});",
        "`tests/test_conformance.py` runs every case again and fails if a line below is not what the run gives.",
        "",
        "Every node test case the installed `onnx` package generates",
        "(`onnx.backend.test.case.node.collect_testcases()`, function-expanded variants included) for",
        ", ".join(QUANTIZED_OPS),
        f"runs through `tessera run MODEL --input x.npy --output y.npz {' '.join(TESSERA_RUN)}`.",
        "The case's inputs after the first become initializers; the first is the `--input`.",
        "",
        "- **passed**: exit status 0 and every output equal to onnx's expected output (dtype, shape, every element).",
        "- **refused**: non-zero exit status with a one-line reason on stderr (the reason column, verbatim).",
        "- **failed**: anything else: outputs differ, a refusal without a one-line reason, or an exception escaped.",
        "",
        "A case is in scope when each of its tensors is int8, uint8, int32 or float32 (so float32 scales); it must",
        "pass. A case with any other type (float8, int4, int16, float16 scales, ...) must be refused with a reason",
        "that names such a type.",
        "",
        counts,
        "",
        _HEADER,
        *(table_line(r) for r in rows),
        "",
    ]
    return "\n".join(lines)


def parse_table_line(line):
    """The :class:`Row` behind a line :func:`table_line` wrote (without its log)."""
    case, op, scope, outcome, _, detail = (cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1])
    unsupported = () if scope == "yes" else tuple(scope.removeprefix("no: ").split(", "))
    return Row(_uncode(case), op, unsupported, outcome, _uncode(detail))


def _uncode(cell):
    """The text of a code span :func:`_code` wrote."""
    text = cell[3:-3] if cell.startswith("`` ") else cell[1:-1]
    return text.replace("\\|", "|")


def documented_rows(text):
    """The rows of a conformance.md's table, in its order."""
    return [parse_table_line(line) for line in text.splitlines() if line.startswith("| `")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="write the markdown here (default: print it)")
    args = parser.parse_args(argv)
    rows = conformance_rows()
    text = markdown(rows)
    if args.write:
        Path(args.write).write_text(text)
        print(f"{summary(r.outcome for r in rows)}; wrote {args.write}")
    else:
        print(text, end="")
    return 1 if any(r.outcome == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
