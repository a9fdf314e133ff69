"""The project installs as one namespace, ``tessera.*``: a wheel holds no generic top-level ``hw`` or ``gen``, carries
its templates and C++ harnesses, and leaves the development tools out of its runtime requirements."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["hw", "gen", "sw_driver", "fpga", "verif"]


def _sources(into: Path) -> Path:
    """A copy of what the wheel is built from. setuptools builds in the tree's own ``build/``, and pytest-xdist runs
    this module's fixture once per worker: two builds in one checkout race on ``build/lib`` (seen in CI)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, into / name)
    for layer in LAYERS:
        shutil.copytree(ROOT / layer, into / layer, ignore=shutil.ignore_patterns("__pycache__", "build", "*.vcd"))
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    source = _sources(tmp_path_factory.mktemp("source"))
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                          "-w", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    (path,) = out.glob("tessera-*.whl")
    return path


def test_wheel_installs_only_under_tessera(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"tessera", next(t for t in tops if t.endswith(".dist-info"))}
    for layer in LAYERS:
        assert f"tessera/{layer}/__init__.py" in names
    assert "tessera/__init__.py" not in names    # a namespace package: the layers are its only content
    for data in ("tessera/gen/templates/isa.md.j2", "tessera/sw_driver/sim_harness.cpp",
                 "tessera/sw_driver/digits/digits_cnn.onnx", "tessera/fpga/board_harness.cpp"):
        assert data in names


def test_wheel_metadata(wheel):
    archive = zipfile.ZipFile(wheel)
    info = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    requires = [line for line in archive.read(info).decode().splitlines() if line.startswith("Requires-Dist:")]
    for tool in ("pytest", "cocotb"):
        (line,) = [r for r in requires if r.split()[1].startswith(tool + (">" if tool == "pytest" else ""))]
        assert "extra == \"dev\"" in line, line
    entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "tessera = tessera.sw_driver.cli:main" in entry_points
    assert "[tessera.commands]" in entry_points and "tessera.fpga.cli:register" in entry_points


def test_installed_package_imports_as_tessera_only(wheel, tmp_path):
    target = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                          str(wheel)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    probe = ("import sys; sys.path = [p for p in sys.path if p not in ('', %r)]; sys.path.insert(0, %r)\n"
             "import tessera.hw.accelerator, tessera.sw_driver.cli\n"
             "assert tessera.hw.accelerator.__file__.startswith(%r), tessera.hw.accelerator.__file__\n"
             "try:\n    import hw\nexcept ModuleNotFoundError:\n    print('no top-level hw')\n")
    run = subprocess.run([sys.executable, "-I", "-c", probe % (str(ROOT), str(target), str(target))],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "no top-level hw"
