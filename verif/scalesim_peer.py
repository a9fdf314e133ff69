"""SCALE-Sim 3.0 as a peer for the bench: compute cycles of the same layer on the same array and dataflow.

SCALE-Sim crashes under numpy 2.4 (see TOOLCHAIN.md), so it never shares the project's environment: it runs in
its own virtual environment under ``build/scalesim-venv`` (created on first use, from PyPI only) and is driven
through its Python API (``save_disk_space=True``: no per-cycle trace CSVs) in a subprocess that prints JSON.

Every layer is given to SCALE-Sim as the im2col GEMM the accelerator computes (M = output pixels x batch,
K = C x KH x KW, N = output channels), so padding needs no field of its own and batches fit the same way.
A depthwise layer is ``repeat`` identical single-channel GEMMs, as SCALE-Sim's own ``DP`` layers are (one
layer per channel): it is simulated once and multiplied.

SCALE-Sim runs at about 5,000 simulated cycles per second, so results are cached in
``build/bench/scalesim_cache.json`` keyed by (layer shape, array, dataflow, SRAM sizes). A layer whose closed-form
cycle count exceeds the caller's budget is not simulated: its cycles come from :func:`closed_form_cycles`, which
``tests/test_scalesim_peer.py`` checks against real SCALE-Sim runs, and the row says so.
"""

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["PeerLayer", "PeerResult", "closed_form_cycles", "ensure_venv", "scalesim_cycles", "peer_for",
           "SCALESIM_DATAFLOWS", "DEFAULT_VENV", "DEFAULT_CACHE", "ScaleSimError"]

#: Tessera dataflow -> SCALE-Sim dataflow; a dataflow missing here (row-stationary) has no SCALE-Sim peer.
SCALESIM_DATAFLOWS = {"ws": "ws", "os": "os"}

DEFAULT_VENV = Path("build/scalesim-venv")
DEFAULT_CACHE = Path("build/bench/scalesim_cache.json")
#: What goes into the peer's environment: SCALE-Sim 3.0, and the last numpy it runs under.
REQUIREMENTS = ["scalesim==3.0.0", "numpy==2.3.5"]
_CACHE_VERSION = 1


class ScaleSimError(RuntimeError):
    """SCALE-Sim could not be installed or did not run; the message carries its output."""


@dataclasses.dataclass(frozen=True)
class PeerLayer:
    """One layer for SCALE-Sim, as ``repeat`` identical GEMMs of M x K by K x N (int8 words)."""
    name: str
    m: int
    k: int
    n: int
    repeat: int = 1

    @property
    def key(self):
        return f"{self.name}:M{self.m}K{self.k}N{self.n}x{self.repeat}"


@dataclasses.dataclass(frozen=True)
class PeerResult:
    """SCALE-Sim's compute cycles for a layer, and where the number came from.

    ``source`` is ``"scalesim"`` (simulated now), ``"cache"`` (simulated earlier, same key) or ``"closed-form"``
    (too long to simulate in the budget; :func:`closed_form_cycles`, checked against SCALE-Sim by the tests).
    """
    cycles: int
    source: str
    seconds: float = 0.0


def closed_form_cycles(dataflow, rows, cols, m, k, n):
    """SCALE-Sim's stall-free compute cycles of an M x K x N GEMM on a ``rows`` x ``cols`` array.

    WS folds the K x N weights into R x C tiles and pays the preload, fill and drain on every fold; OS folds the
    M x N outputs and streams K through each. From TOOLCHAIN.md; ``tests/test_scalesim_peer.py`` checks both.
    """
    if dataflow == "ws":
        return math.ceil(k / rows) * math.ceil(n / cols) * (2 * rows + cols + m - 2) - 1
    if dataflow == "os":
        return math.ceil(m / rows) * math.ceil(n / cols) * (k + rows + cols - 2) - 1
    raise ValueError(f"dataflow {dataflow!r} has no SCALE-Sim closed form; accepted: 'ws', 'os'")


def peer_for(layer, rows, cols, dataflow):
    """Closed-form cycles of a whole :class:`PeerLayer` (all its repeats)."""
    return layer.repeat * closed_form_cycles(dataflow, rows, cols, layer.m, layer.k, layer.n)


# --- the peer's own environment --------------------------------------------------------------------------------


def _venv_python(venv):
    return Path(venv) / "bin" / "python"


def ensure_venv(venv=DEFAULT_VENV, *, quiet=True):
    """Create (once) a virtual environment holding SCALE-Sim and a numpy it runs under; return its python.

    Safe to call from several processes at once (a lock file serialises the build).
    """
    venv = Path(venv)
    python = _venv_python(venv)
    stamp = venv / ".scalesim-installed"
    if stamp.exists() and stamp.read_text() == " ".join(REQUIREMENTS):
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == " ".join(REQUIREMENTS):
            return python
        steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(python), "-m", "pip", "install", "--disable-pip-version-check",
                  *(["--quiet"] if quiet else []), *REQUIREMENTS]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode:
                raise ScaleSimError(f"building SCALE-Sim's environment failed at {' '.join(step)}:\n"
                                    f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        stamp.write_text(" ".join(REQUIREMENTS))
    return python


# --- running SCALE-Sim ------------------------------------------------------------------------------------------

# Runs inside the peer's environment: argv = folder holding scale.cfg, topology.csv and layout.csv.
_RUNNER = r"""
import contextlib, io, json, sys
from scalesim.scale_sim import scalesim
folder = sys.argv[1]
sim = scalesim(save_disk_space=True, verbose=False, config=folder + "/scale.cfg", topology=folder + "/topology.csv",
               layout=folder + "/layout.csv", input_type_gemm=True)
with contextlib.redirect_stdout(io.StringIO()):
    sim.run_scale(top_path=folder + "/out")
layers = []
for layer in sim.runner.single_layer_sim_object_list:
    overall, compute, stall, util, mapping, compute_util = layer.get_compute_report_items()
    layers.append({"compute_cycles": int(compute), "stall_cycles": int(stall), "overall_cycles": int(overall)})
print(json.dumps(layers))
"""


def _config_text(rows, cols, dataflow, sram_kb):
    # Every section must be present (TOOLCHAIN.md); CALC bandwidth mode is SCALE-Sim's stall-free mode.
    ifmap_kb, filter_kb, ofmap_kb = sram_kb
    return f"""[general]
run_name = tessera_peer

[architecture_presets]
ArrayHeight : {rows}
ArrayWidth : {cols}
IfmapSramSzkB : {ifmap_kb}
FilterSramSzkB : {filter_kb}
OfmapSramSzkB : {ofmap_kb}
IfmapOffset : 0
FilterOffset : 10000000
OfmapOffset : 20000000
Bandwidth : 10
Dataflow : {dataflow}
MemoryBanks : 1
ReadRequestBuffer : 32
WriteRequestBuffer : 32

[layout]
IfmapCustomLayout : False
IfmapSRAMBankBandwidth : 10
IfmapSRAMBankNum : 10
IfmapSRAMBankPort : 2
FilterCustomLayout : False
FilterSRAMBankBandwidth : 10
FilterSRAMBankNum : 10
FilterSRAMBankPort : 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth : CALC
UseRamulatorTrace : False
"""


def _run_scalesim(python, layers, rows, cols, dataflow, sram_kb, timeout):
    """Simulate ``layers`` (one repeat each) in one SCALE-Sim run; returns their compute cycles."""
    Path("build/bench").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scalesim_", dir="build/bench") as folder:
        Path(folder, "scale.cfg").write_text(_config_text(rows, cols, SCALESIM_DATAFLOWS[dataflow], sram_kb))
        # GEMM topology rows are "name, M, N, K," -- the trailing comma matters: SCALE-Sim drops the last field
        topology = ["Layer, M, N, K,"] + [f"{layer.name}, {layer.m}, {layer.n}, {layer.k}," for layer in layers]
        Path(folder, "topology.csv").write_text("\n".join(topology) + "\n")
        # A layout file must exist even when unused; a header alone is enough
        Path(folder, "layout.csv").write_text("Layer name, IFMAP height, IFMAP width,\n")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        try:
            done = subprocess.run([str(python), "-c", _RUNNER, folder], capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired as error:
            raise ScaleSimError(f"SCALE-Sim took longer than {timeout} s on {[lr.key for lr in layers]}") from error
        if done.returncode:
            raise ScaleSimError(f"SCALE-Sim failed (exit {done.returncode}) on {[lr.key for lr in layers]}:\n"
                                f"{done.stderr[-3000:]}")
        try:
            reports = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError) as error:
            raise ScaleSimError(f"SCALE-Sim printed no report: {done.stdout[-2000:]}{done.stderr[-2000:]}") \
                from error
    if len(reports) != len(layers):
        raise ScaleSimError(f"SCALE-Sim reported {len(reports)} layers for {len(layers)}")
    return [r["compute_cycles"] for r in reports]


def _cache_key(layer, rows, cols, dataflow, sram_kb):
    return f"v{_CACHE_VERSION}|{layer.key}|{rows}x{cols}|{dataflow}|sram_kb={','.join(map(str, sram_kb))}"


@contextlib.contextmanager
def _locked_cache(path):
    """The cache as a dict, read and written back under an exclusive lock (parallel benches share it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = json.loads(path.read_text()) if path.exists() else {}
        before = dict(cache)
        yield cache
        if cache != before:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            tmp.replace(path)


def scalesim_cycles(layers, rows, cols, dataflow, *, sram_kb=(64, 64, 64), budget_cycles=None,
                    cache=DEFAULT_CACHE, venv=DEFAULT_VENV, timeout=3600):
    """SCALE-Sim's compute cycles for each of ``layers`` (:class:`PeerLayer`) on an array and dataflow.

    Parameters
    ----------
    layers : list of PeerLayer
    rows, cols : int
        Array size (SCALE-Sim's ArrayHeight, ArrayWidth).
    dataflow : str
        A Tessera dataflow; ``None`` is returned for each layer of one SCALE-Sim lacks (see `SCALESIM_DATAFLOWS`).
    sram_kb : (int, int, int)
        Ifmap, filter and ofmap SRAM sizes in KiB (they do not change stall-free compute cycles, but key the cache).
    budget_cycles : int, optional
        Layers whose closed-form cycle count is above this are not simulated (SCALE-Sim: ~5,000 cycles/s);
        their result is the closed form, marked ``"closed-form"``. ``None``: simulate everything.
    cache : Path or None
        JSON cache file; ``None`` disables caching.

    Returns
    -------
    list of PeerResult or None
    """
    if dataflow not in SCALESIM_DATAFLOWS:
        return [None] * len(layers)
    sram_kb = tuple(max(1, int(s)) for s in sram_kb)
    results = {}
    todo = []
    stored = {}
    if cache is not None:
        with _locked_cache(cache) as entries:
            stored = dict(entries)
    for layer in layers:
        key = _cache_key(layer, rows, cols, dataflow, sram_kb)
        if key in stored:
            results[layer.key] = PeerResult(stored[key] * layer.repeat, "cache")
        elif budget_cycles is not None and closed_form_cycles(dataflow, rows, cols, layer.m, layer.k,
                                                              layer.n) > budget_cycles:
            results[layer.key] = PeerResult(peer_for(layer, rows, cols, dataflow), "closed-form")
        elif layer.key not in {t.key for t in todo}:
            todo.append(layer)
    if todo:
        python = ensure_venv(venv)
        start = time.perf_counter()
        cycles = _run_scalesim(python, todo, rows, cols, dataflow, sram_kb, timeout)
        seconds = time.perf_counter() - start
        for layer, one in zip(todo, cycles, strict=True):
            results[layer.key] = PeerResult(one * layer.repeat, "scalesim", seconds / len(todo))
        if cache is not None:
            with _locked_cache(cache) as entries:
                for layer, one in zip(todo, cycles, strict=True):
                    entries[_cache_key(layer, rows, cols, dataflow, sram_kb)] = one
    return [results[layer.key] for layer in layers]
