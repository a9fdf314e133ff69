"""``tessera sweep``: a 2-point grid on a local Ray instance (simulation, synthesis, outputs, the cache), and the
points that cannot be measured, recorded with their reason."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tessera.fpga.space import SpaceError, parse_space
from tessera.fpga.sweep_report import dominates, pareto_front
from tessera.fpga.synth import over_capacity, resources_from_stat
from tessera.sw_driver.cli import main
from tessera.verif.onnx_models import QuantFormat, QuantType, gemm_model, quantize_model, random_inputs

# Tiny arrays with the smallest buffers they accept: the simulator builds and Yosys runs take seconds, not minutes.
_TINY_BASE = """
[base]
act_depth = 16
weight_depth = 16
acc_depth = 16
param_depth = 4
vec_depth = 0
# no program memory: with one, YoWASP's ABC dies mapping this design for the 12F (exit 1, no message)
program_depth = 0
"""


@pytest.fixture(scope="module")
def gemm(tmp_path_factory):
    """A quantized fully connected layer (2x8 by 8x5) and its input."""
    folder = tmp_path_factory.mktemp("gemm")
    rng = np.random.default_rng(3)
    float_model = gemm_model(rng, m=2, k=8, n=5, trans_b=True)
    model = quantize_model(float_model, folder, rng, quant_format=QuantFormat.QOperator, per_channel=True,
                           activation_type=QuantType.QUInt8)
    onnx.save(model, folder / "q.onnx")
    np.save(folder / "x.npy", random_inputs(rng, float_model)["x"])
    return folder / "q.onnx", folder / "x.npy"


def _sweep(gemm, space, out, *extra):
    model, x = gemm
    return main(["sweep", str(model), "--inputs", str(x), "--space", str(space), "-o", str(out), *extra])


@pytest.mark.slow
@pytest.mark.rtl
def test_two_point_grid_on_ray_then_from_the_cache(gemm, tmp_path):
    space = tmp_path / "space.toml"
    space.write_text('board = "ulx3s-12f"\n' + _TINY_BASE + "[space]\nrows = [2]\ncols = [2, 4]\n")
    out = tmp_path / "out"
    assert _sweep(gemm, space, out, "--cpus", "2") == 0

    points = json.loads((out / "points.json").read_text())["points"]
    assert [p["values"]["cols"] for p in points] == [2, 4]
    for p in points:
        assert p["status"] == "ok", p.get("reason")
        assert p["bit_exact"] is True
        assert p["cycles"] > 0 and p["energy_uj"] > 0 and p["latency_us"] > 0
        assert set(p["energy_pj_by_level"]) == {"link", "buffers", "rf", "mac"}
        assert p["board"] == "ulx3s-12f" and p["device"] == "LFE5U-12F"
        assert p["lut"] > 0 and p["ff"] > 0 and p["dsp"] > 0 and "bram" in p
        assert p["cached"] is False
    with open(out / "points.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == [p["key"] for p in points]
    assert all(r["status"] == "ok" and int(r["cycles"]) > 0 and int(r["lut"]) > 0 for r in rows)

    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["objectives"] == ["latency_us", "energy_uj", "lut"]
    front = [p for p in points if p["key"] in pareto["front"]]
    assert front
    for f in front:
        assert not any(dominates(p, f, pareto["objectives"]) for p in points)
    assert set(pareto["winners"]) == set(pareto["objectives"])
    for picture in ("pareto.png", "resources.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cached = {path: path.stat().st_mtime_ns for path in (out / "cache").glob("*.json")}
    assert len(cached) == 2
    assert _sweep(gemm, space, out, "--cpus", "2") == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["computed"] == 0 and summary["cached"] == 2
    assert summary["search"] == "grid (all from the cache, no Ray)"     # nothing to run: no instance started
    again = json.loads((out / "points.json").read_text())["points"]
    assert all(p["cached"] for p in again)
    assert [p["cycles"] for p in again] == [p["cycles"] for p in points]
    assert {path: path.stat().st_mtime_ns for path in (out / "cache").glob("*.json")} == cached


@pytest.mark.rtl
def test_optuna_search_through_ray_tune(gemm, tmp_path):
    # the same two tiny arrays as above (their simulators are built once, in the build cache), no synthesis
    space = tmp_path / "space.toml"
    space.write_text(_TINY_BASE + "[space]\nrows = [2]\ncols = [2, 4]\n")
    out = tmp_path / "out"
    assert _sweep(gemm, space, out, "--cpus", "2", "--search", "optuna", "--budget", "2", "--seed", "1") == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["search"] == "optuna" and summary["computed"] == summary["points"] >= 1
    points = json.loads((out / "points.json").read_text())["points"]
    assert all(p["status"] == "ok" and p["bit_exact"] and p["cycles"] > 0 for p in points)
    assert json.loads((out / "pareto.json").read_text())["objectives"] == ["latency_us", "energy_uj"]
    assert _sweep(gemm, space, out, "--cpus", "2", "--search", "optuna", "--budget", "2", "--seed", "1") == 0
    assert json.loads((out / "sweep.json").read_text())["computed"] == 0


def test_invalid_points_are_recorded_with_their_reason(gemm, tmp_path):
    # acc_depth 2 is below two output tiles of 2 rows; requant_lanes = 2 does not divide cols = 3
    space = tmp_path / "space.toml"
    space.write_text("[base]\nrequant_lanes = 2\n[space]\nrows = [2]\ncols = [3]\nacc_depth = [2, 16]\n")
    out = tmp_path / "out"
    assert _sweep(gemm, space, out, "--serial") == 0
    points = json.loads((out / "points.json").read_text())["points"]
    assert [p["status"] for p in points] == ["failed", "failed"]
    assert points[0]["reason"].startswith("invalid configuration: acc_depth: 2 is out of range")
    assert points[1]["reason"].startswith("invalid configuration: requant_lanes: 2 does not divide cols=3")
    with open(out / "points.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["reason"] for r in rows] == [p["reason"] for p in points]
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["front"] == [] and pareto["winners"] == {}
    assert (out / "pareto.png").exists() and (out / "resources.png").exists()


def test_a_point_over_the_board_does_not_fit():
    # Yosys's statistics of a real synth_ecp5 run of a 2x2 device (tessera.fpga.synth), trimmed to the cells
    stat = {"design": {"num_cells_by_type": {"$scopeinfo": 62, "CCU2C": 968, "DCCA": 1, "DP16KD": 8, "EHXPLLL": 1,
                                             "L6MUX21": 2, "LUT4": 4139, "MULT18X18D": 22, "PFUMX": 863,
                                             "TRELLIS_DPR16X4": 91, "TRELLIS_FF": 5278, "TRELLIS_IO": 3}}}
    resources = resources_from_stat(json.dumps(stat), "ecp5")
    assert resources["LUT"] == 4139 + 2 * 968 + 4 * 91
    assert (resources["FF"], resources["DSP"], resources["BRAM"]) == (5278, 22, 8)
    assert "$scopeinfo" not in resources["cells"]
    assert over_capacity(resources, "LFE5U-25F") == []
    assert over_capacity({**resources, "DSP": 40}, "LFE5U-25F") == ["DSP: needs 40, the LFE5U-25F has 28"]


def test_space_ranges_and_errors():
    space = parse_space({"space": {"rows": {"from": 2, "to": 8, "times": 2}, "cols": {"from": 2, "to": 6, "step": 2},
                                   "dataflow": ["ws", "ws", "os"]}})
    assert space.fields == {"rows": [2, 4, 8], "cols": [2, 4, 6], "dataflow": ["ws", "os"]}
    assert len(space.grid()) == 18 and space.grid()[0] == {"rows": 2, "cols": 2, "dataflow": "ws"}
    with pytest.raises(SpaceError, match="'row' is not a configuration field"):
        parse_space({"space": {"row": [2]}})
    with pytest.raises(SpaceError, match="board 'nexys'"):
        parse_space({"board": "nexys", "space": {"rows": [2]}})


def test_front_keeps_only_undominated_points():
    points = [{"status": "ok", "latency_us": 1.0, "energy_uj": 3.0}, {"status": "ok", "latency_us": 2.0,
                                                                     "energy_uj": 2.0},
              {"status": "ok", "latency_us": 2.5, "energy_uj": 2.5}, {"status": "failed"}]
    assert pareto_front(points) == points[:2]


def test_without_ray_the_command_says_what_to_install(gemm, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)      # import ray raises ImportError
    space = tmp_path / "space.toml"
    space.write_text("[space]\nrows = [2]\n")
    assert _sweep(gemm, space, tmp_path / "out") == 1
    message = capsys.readouterr().err.strip()
    assert message == "tessera: tessera sweep needs Ray and Optuna: pip install 'tessera[sweep]'"


@pytest.fixture
def ray_cluster(tmp_path, monkeypatch):
    """A Ray cluster of its own (``ray start --head --block``, one CPU), as a user's would be; its address.

    Ray 2.59 and later start a cluster with token authentication; a client joins it with the same mode and
    token (here a token file of the test's own, for the head and for the sweep alike)."""
    import os
    import secrets
    import signal
    import socket
    import subprocess
    import time
    from pathlib import Path
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    with socket.socket() as probe:      # a free port for the head's GCS
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    log = tmp_path / "ray_head.log"
    with log.open("w") as sink:
        head = subprocess.Popen([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=1",
                                 "--include-dashboard=false", "--disable-usage-stats", "--block"],
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        # the GCS port opens before the raylet registers; a client that joins in between finds no node
        # (CI, under load: "Failed to connect"). `ray start` says it started once the raylet is up.
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, \
                f"the Ray head did not start:\n{log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)     # --block: the head takes its raylet and workers with it
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:       # Ray's orderly stop takes half a minute; nothing here needs it
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


@pytest.mark.rtl
def test_sweep_joins_an_existing_cluster_with_address(gemm, tmp_path, ray_cluster):
    """The sweep runs as a user's would, in a process of its own: Ray keeps the first auth token a process loads, and
    a pytest worker may have run a local Ray instance (with a token of its own) before."""
    import subprocess
    space = tmp_path / "space.toml"
    space.write_text(_TINY_BASE + "[space]\nrows = [2]\ncols = [2]\n")
    out = tmp_path / "out"
    model, x = gemm
    tessera = Path(sys.executable).with_name("tessera")
    done = subprocess.run([str(tessera), "sweep", str(model), "--inputs", str(x), "--space", str(space), "-o",
                           str(out), "--address", ray_cluster], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "sweep.json").read_text())
    # the cluster's one CPU, not this machine's count: the sweep ran on the cluster it joined
    assert summary["cpus"] == 1 and summary["computed"] == 1 and summary["ok"] == 1
    (point,) = json.loads((out / "points.json").read_text())["points"]
    assert point["status"] == "ok" and point["bit_exact"] is True and point["cycles"] > 0


@pytest.mark.parametrize("address, reason", [("127.0.0.1:1", "no Ray cluster answers there"),
                                             ("nonsense", "not HOST:PORT")])
def test_an_address_with_no_cluster_fails_in_seconds_with_the_reason(gemm, tmp_path, capsys, address, reason):
    """Ray retries an address nothing listens at for minutes; the sweep says so at once, naming what works."""
    import time
    space = tmp_path / "space.toml"
    space.write_text(_TINY_BASE + "[space]\nrows = [2]\n")
    started = time.monotonic()
    assert _sweep(gemm, space, tmp_path / "out", "--address", address) == 1
    assert time.monotonic() - started < 60
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"tessera: ConnectionError: --address {address}: {reason}")
    assert "accepted: the address `ray start --head` printed" in message


@pytest.mark.rtl
def test_a_multiplier_sweep_checks_each_point_against_its_own_golden_model(tmp_path):
    """``multiplier`` as a sweep field over the digits CNN: each point bit-exact against the golden model of its
    multiplier, with its test accuracy recorded and on the front as a maximised objective."""
    space = tmp_path / "space.toml"
    space.write_text("[base]\nrows = 4\ncols = 4\nact_depth = 512\nweight_depth = 512\nacc_depth = 64\n"
                     "param_depth = 16\nvec_depth = 512\n[space]\nmultiplier = [\"exact\", \"drum4\"]\n")
    out = tmp_path / "out"
    assert main(["sweep", "--demo", "--images", "12", "--space", str(space), "-o", str(out), "--serial"]) == 0
    points = json.loads((out / "points.json").read_text())["points"]
    assert [p["values"]["multiplier"] for p in points] == ["exact", "drum4"]
    assert all(p["status"] == "ok" and p["bit_exact"] is True for p in points)
    exact, drum4 = points
    assert exact["matches_onnxruntime"] is True and drum4["matches_onnxruntime"] is False
    assert 0 <= drum4["accuracy"] <= 1 and exact["accuracy"] >= 0.8
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["objectives"] == ["latency_us", "energy_uj", "accuracy"]
    assert pareto["winners"]["accuracy"]["value"] == max(p["accuracy"] for p in points)


def test_place_and_route_on_request_records_fmax_or_the_reason(gemm, tmp_path, monkeypatch):
    """--place-and-route hands each point that fits to the bitstream build and records its timing; a build that
    fails is a point that does not fit, with the reason. (Synthesis and the build are stubbed: a real build takes
    minutes, see docs/sweep.md for a measured run; test_two_point_grid_on_ray_then_from_the_cache synthesises.)"""
    from tessera.fpga import build, synth
    built = []
    monkeypatch.setattr(synth, "synth_resources", lambda board, cfg, folder, time_limit_s: {
        "resources": {"LUT": 7440, "FF": 5006, "DSP": 8, "BRAM": 2, "cells": {}}, "device": "LFE5U-12F",
        "seconds": 0.1, "lut_multiplier_rows": 0, "fits": True, "over": [],
        "available": {"LUT": 24288, "FF": 24288, "DSP": 28, "BRAM": 56}})

    def fake_build(board, cfg, *, root, progress):
        built.append((board.name, cfg.rows, cfg.cols))
        if cfg.cols == 4:
            raise build.BuildError("nextpnr: failed to route 3 nets")
        return {"fmax_mhz": {"core_clk": 99.2}, "clock_mhz": 95.8, "timing_met": True,
                "utilisation": {"LUT": {"used": 8146, "available": 24288, "percent": 33.5}}}
    monkeypatch.setattr(build, "build_bitstream", fake_build)
    space = tmp_path / "space.toml"
    space.write_text('board = "ulx3s-12f"\n' + _TINY_BASE + "[space]\nrows = [2]\ncols = [2, 4]\n")
    out = tmp_path / "out"
    assert _sweep(gemm, space, out, "--serial", "--place-and-route") == 0
    assert built == [("ulx3s-12f", 2, 2), ("ulx3s-12f", 2, 4)]
    routed, failed = json.loads((out / "points.json").read_text())["points"]
    assert routed["status"] == "ok" and routed["fmax_mhz"] == {"core_clk": 99.2} and routed["timing_met"] is True
    assert failed["status"] == "does not fit"
    assert failed["reason"] == "place and route: nextpnr: failed to route 3 nets"
