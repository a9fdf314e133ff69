"""What ``tessera run`` checks before it does any work: the files it reads and writes, and where layers will run.

A bad input must fail in one line before Verilog is generated or a simulator started, not as a traceback after
some layers already ran on the device. The tensors are checked against the ONNX model's own graph inputs
(``type.tensor_type``: element type and shape, a symbolic or unknown dimension accepting any size) as
onnxruntime would check them, with no silent cast: onnxruntime refuses an int64 tensor for a float32 input, so
Tessera does too.
"""

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import onnx

from tessera.sw_driver.model_runner import run_graph_on
from tessera.sw_driver.runtime import Device

__all__ = ["COMPUTE_OPS", "InputError", "InputSpec", "PlacementError", "check_output_path", "host_fallbacks",
           "is_compute", "model_inputs", "planned_placement", "read_inputs"]

#: Layer kinds that do the model's arithmetic: the ones a run on the device is for (Tessera's own, and the ONNX ops
#: a host partition may hold).
COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger")


def is_compute(op):
    """True if layer kind ``op`` (``"Conv"``, or a host partition's ``"Conv+Concat"``) does compute work."""
    return any(part in COMPUTE_OPS for part in op.split("+"))
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


class InputError(ValueError):
    """An input tensor or file does not fit the model, or an output cannot be written; the message says what fits."""


class PlacementError(ValueError):
    """``--strict``: a compute layer would run on the host; the message names the layers and why."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input as the ONNX model declares it.

    Parameters
    ----------
    name : str
    dtype : numpy.dtype
    dims : tuple
        One entry per dimension: an int for a fixed size, a str for a symbolic one (``"N"``), ``None`` for an
        unknown one; ``None`` for the whole tuple if the model gives no shape.
    """

    name: str
    dtype: np.dtype
    dims: tuple | None

    def describe(self):
        """``float32 [N,3,16,16]``."""
        if self.dims is None:
            return f"{self.dtype} of any shape"
        return f"{self.dtype} [{','.join('?' if d is None else str(d) for d in self.dims)}]"


def model_inputs(model_path):
    """The graph inputs (not initializers) of the ONNX model at ``model_path``, as :class:`InputSpec`."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    specs = []
    for vi in graph.input:
        if vi.name in constants:
            continue
        tensor = vi.type.tensor_type
        dims = None
        if tensor.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in tensor.shape.dim)
        specs.append(InputSpec(vi.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims))
    return tuple(specs)


def read_inputs(path, specs):
    """Read the input tensors of a run from ``path`` and check them against ``specs``.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.npy`` file (a model with one input) or an ``.npz`` archive with one array per graph input, named as
        the input is; the format is read from the file's first bytes, not its suffix.
    specs : sequence of InputSpec
        The model's graph inputs (:func:`model_inputs`).

    Returns
    -------
    dict
        ``{graph input name: ndarray}``, as ``run_graph_on`` and onnxruntime take them.

    Raises
    ------
    InputError
        The file is missing, not NumPy's, or holds a tensor that does not fit: one line naming it and what fits.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input file {path} does not exist; accepted: a .npy file, or an .npz with one array per "
                         f"input")
    if path.is_dir():
        raise InputError(f"input {path} is a folder; accepted: a .npy file, or an .npz with one array per input")
    with path.open("rb") as f:
        magic = f.read(len(_NPY_MAGIC))
    names = ", ".join(repr(s.name) for s in specs)
    if magic.startswith(_ZIP_MAGIC):
        arrays = _read_npz(path, specs)
    elif magic == _NPY_MAGIC:
        if len(specs) != 1:
            raise InputError(f"the model has {len(specs)} inputs ({names}); give them as an .npz with one array "
                             f"per input name (numpy.savez), not the one array of {path}")
        arrays = {specs[0].name: _load(path)}
    else:
        raise InputError(f"input file {path} is not a .npy file (nor an .npz of them); save the tensor with "
                         f"numpy.save")
    sizes = {}      # symbolic dimension -> (size, input) where first seen, so inputs that share "N" agree
    return {spec.name: _check_tensor(spec, arrays[spec.name], sizes) for spec in specs}


def _load(path):
    """The one array of a .npy file."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise _damaged(path, ".npy", error) from error


def _read_npz(path, specs):
    """``{name: array}`` from an .npz holding exactly one array per graph input."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            expected = [s.name for s in specs]
            missing = [n for n in expected if n not in archive.files]
            extra = [n for n in archive.files if n not in expected]
            if missing or extra:
                problems = [f"lacks {', '.join(map(repr, missing))}" if missing else "",
                            f"has {', '.join(map(repr, extra))}, which the model does not take" if extra else ""]
                raise InputError(f"input file {path} {' and '.join(p for p in problems if p)}; accepted: one "
                                 f"array per graph input, named {', '.join(map(repr, expected))}")
            return {name: archive[name] for name in expected}
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise _damaged(path, ".npz", error) from error


def _damaged(path, kind, error):
    if "pickle" in str(error):
        return InputError(f"input file {path} holds Python objects (a pickled array); accepted: numeric arrays only")
    return InputError(f"input file {path} is a damaged {kind} file: {error}")


def _check_tensor(spec, array, sizes):
    """``array`` if it fits ``spec`` (as onnxruntime would take it), else :class:`InputError`."""
    if not array.dtype.isnative and array.dtype.newbyteorder("=") == spec.dtype:
        array = array.astype(spec.dtype)     # the same values in this machine's byte order: not a cast
    got = f"{array.dtype} [{','.join(map(str, array.shape))}]"
    if array.dtype != spec.dtype or not _shape_fits(spec.dims, array.shape):
        raise InputError(f"input {spec.name!r} expects {spec.describe()}, got {got}")
    for dim, size in zip(spec.dims or (), array.shape, strict=False):
        if isinstance(dim, str):
            first = sizes.setdefault(dim, (size, spec.name))
            if first[0] != size:
                raise InputError(f"input {spec.name!r} has {dim} = {size} but input {first[1]!r} has {dim} = "
                                 f"{first[0]}; inputs that share a dimension name must agree")
    if array.size == 0:
        raise InputError(f"input {spec.name!r} is empty ({got}); it needs at least one element")
    if spec.dtype.kind == "f":
        nan, inf = int(np.count_nonzero(np.isnan(array))), int(np.count_nonzero(np.isinf(array)))
        if nan or inf:
            first = np.argwhere(~np.isfinite(array))[0]
            what = " and ".join(part for part in (f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else "")
                                if part)
            raise InputError(f"input {spec.name!r} holds {what} value{'s' if nan + inf > 1 else ''} (first at "
                             f"[{','.join(map(str, first))}]); accepted: finite {spec.dtype} values")
    return array


def _shape_fits(dims, shape):
    if dims is None:
        return True
    return len(dims) == len(shape) and all(not isinstance(d, int) or d == s for d, s in zip(dims, shape, strict=True))


def check_output_path(path, option):
    """Raise :class:`InputError` unless a file can be written at ``path`` (given as ``option``, e.g. ``--output``)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; accepted: a file name in an existing folder")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"{option} {path}: the folder {folder} {what}; create it first")


class _Rehearsal(Device):
    """A device that compiles every layer it is given and then declines it, so the host computes the layer.

    Compiling is where a layer that does not tile onto the configuration is found; declining (a ``ValueError``,
    which ``run_graph_on`` answers by running the layer on the host) lets the run go on without a device."""

    COMPILED = "compiled for the device"

    def __init__(self, cfg):
        super().__init__(cfg, transport=None)

    def run(self, program):
        raise ValueError(self.COMPILED)


def planned_placement(graph, inputs, cfg):
    """Where each layer of ``graph`` would run on a device of ``cfg`` for ``inputs``, decided without one.

    Every layer is placed as ``run_graph_on`` places it (``device_placement``, then compiled for the device, so a
    layer that does not tile is found too) while the golden model computes the tensors; nothing is simulated.

    Returns
    -------
    dict
        ``{layer name: (op, on_device, why not)}`` in the order of ``graph.layers``.
    """
    _, reports = run_graph_on(graph, inputs, _Rehearsal(cfg))
    return {r.name: (r.op, r.reason == _Rehearsal.COMPILED, "" if r.reason == _Rehearsal.COMPILED else r.reason)
            for r in reports}


def host_fallbacks(placement):
    """``{why: [layer, ...]}`` for the compute layers (:data:`COMPUTE_OPS`) in ``placement`` that run on the host.

    ``placement`` is ``{layer name: (op, on_device, why not)}`` (:func:`planned_placement`, or a run's reports)."""
    fallbacks = {}
    for name, (op, on_device, why) in placement.items():
        if is_compute(op) and not on_device:
            fallbacks.setdefault(why, []).append(f"{name!r} ({op})")
    return fallbacks
