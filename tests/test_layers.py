"""The package's layers import one way (ARCHITECTURE.md): hw < gen < sw_driver < fpga < verif.

Read from the source (AST), so a lazy import inside a function counts as much as one at the top of a module.
"""

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["hw", "gen", "sw_driver", "fpga", "verif"]
#: What each layer may import from outside the standard library and the project.
THIRD_PARTY = {"hw": {"amaranth"}}
#: Development tools: only the verification layer and the tests may use them.
DEV_ONLY = {"pytest", "cocotb", "cocotb_tools"}


def _modules(folder):
    return sorted(p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def _imports(path):
    """``(line, module, names)`` of every import in ``path``, relative ones resolved to ``tessera.…`` names."""
    package = ["tessera", *path.relative_to(ROOT).parent.parts]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            yield node.lineno, module, [alias.name for alias in node.names]


def _layer_of(module):
    parts = module.split(".")
    return parts[1] if parts[0] == "tessera" and len(parts) > 1 and parts[1] in LAYERS else None


def _violations(folder):
    found = []
    own = folder if folder in LAYERS else None
    for path in _modules(folder):
        where = path.relative_to(ROOT)
        for line, module, names in _imports(path):
            top = module.split(".")[0]
            target = _layer_of(module)
            if top in LAYERS:
                found.append(f"{where}:{line}: imports {module!r} by its bare name; use 'tessera.{module}'")
            if own and target and LAYERS.index(target) > LAYERS.index(own):
                found.append(f"{where}:{line}: {own} imports {module} from the layer above it ({target})")
            if target and target != own:
                private = [n for n in names if n.startswith("_")]
                private += [p for p in module.split(".")[2:] if p.startswith("_")]
                if private:
                    found.append(f"{where}:{line}: imports private {private} from {module}")
            if own and top not in ("tessera", "") and top not in sys.stdlib_module_names:
                if own in THIRD_PARTY and top not in THIRD_PARTY[own]:
                    found.append(f"{where}:{line}: {own} imports {top}; it may import only {THIRD_PARTY[own]}")
                if own != "verif" and top in DEV_ONLY:
                    found.append(f"{where}:{line}: {own} imports the development tool {top}")
    return found


@pytest.mark.parametrize("folder", [*LAYERS, "tests"])
def test_imports_go_down_the_layers(folder):
    assert _violations(folder) == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a hw module importing the driver, a private name and a bare 'gen' are all caught."""
    (tmp_path / "hw").mkdir()
    (tmp_path / "hw" / "bad.py").write_text(
        "import numpy\nfrom tessera.sw_driver import golden\nfrom tessera.gen.lint import _x\nimport gen.config\n"
        "def f():\n    from ..verif import tb_core\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = "\n".join(_violations("hw"))
    for needle in ("imports numpy", "from the layer above it (sw_driver)", "private ['_x']", "by its bare name",
                   "imports tessera.verif from the layer above it (verif)"):
        assert needle in found


def test_development_tools_are_not_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {d.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
               for d in project["dependencies"]}
    assert runtime.isdisjoint({"pytest", "cocotb", "pytest-xdist", "ruff"})
    assert {"pytest", "cocotb"} <= {d.split(">")[0].split("<")[0].strip() for d in
                                    project["optional-dependencies"]["dev"]}
