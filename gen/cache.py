"""The one build cache: Verilator models and harnesses built once per configuration, whatever the working directory.

Builds are keyed by what they were built from (the Verilog text, the harness, the flags and the tool versions), so
the CLI, the tests and the benchmarks share one folder and never build the same thing twice. It lives at
``$TESSERA_CACHE`` if set, else ``$XDG_CACHE_HOME/tessera`` (``~/.cache/tessera``); ``tessera --cache-dir DIR``
sets it for one run.
"""

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root", "cache_dir", "set_cache_root"]

#: Environment variable that overrides the cache folder.
CACHE_ENV = "TESSERA_CACHE"


def cache_root():
    """The cache folder (not created)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().resolve() / "tessera"


def cache_dir(kind):
    """The folder for one kind of build (e.g. ``sim_harness``, ``board_harness``, ``cocotb``), created."""
    folder = cache_root() / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def set_cache_root(path):
    """Use ``path`` as the cache for this process and the simulators and tools it starts."""
    os.environ[CACHE_ENV] = str(Path(path).expanduser().resolve())
