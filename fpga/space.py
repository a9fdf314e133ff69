"""A sweep's design space: the ``space.toml`` that ``tessera sweep`` reads, and the points of its grid.

::

    board = "ulx3s-25f"     # optional: synthesise every point for this board
    images = 8              # optional: digits the demo runs per point

    [base]                  # fields every point shares (defaults: AcceleratorConfig's)
    vec_depth = 0

    [space]                 # fields that vary: a list of values, or a range
    rows = [2, 4]
    dataflow = ["ws", "os", "rs"]
    act_depth = {from = 256, to = 1024, times = 2}      # 256, 512, 1024
    requant_lanes = {from = 1, to = 2, step = 1}        # 1, 2
"""

import dataclasses
import itertools
import tomllib
from pathlib import Path

from tessera.gen.config import AcceleratorConfig

__all__ = ["Space", "SpaceError", "load_space", "parse_space"]

_FIELDS = tuple(f.name for f in dataclasses.fields(AcceleratorConfig))
_TOP_KEYS = ("board", "images", "base", "space")


class SpaceError(ValueError):
    """The space file is unreadable or names something the sweep does not know; the message says what is accepted."""


@dataclasses.dataclass(frozen=True)
class Space:
    """The values each varying field takes (``fields``), the fixed ones (``base``), the board and the images."""

    fields: dict
    base: dict = dataclasses.field(default_factory=dict)
    board: str | None = None
    images: int | None = None

    def grid(self):
        """Every combination of the fields' values, as ``{field: value}``, the first field varying slowest."""
        names = list(self.fields)
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*self.fields.values())]

    def config_values(self, point):
        """The whole configuration table of ``point``: ``base`` with the point's fields over it."""
        return {**self.base, **point}


def load_space(path):
    """Read ``path`` (TOML) as a :class:`Space`."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SpaceError(f"cannot read the space {path}: {error}") from error
    return parse_space(table, source=str(path))


def parse_space(table, *, source="space"):
    """A :class:`Space` from the parsed TOML ``table``."""
    unknown = sorted(set(table) - set(_TOP_KEYS))
    if unknown:
        raise SpaceError(f"{source}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(_TOP_KEYS)}")
    fields = table.get("space")
    if not isinstance(fields, dict) or not fields:
        raise SpaceError(f"{source}: a [space] table with at least one field is needed; fields: {', '.join(_FIELDS)}")
    base = table.get("base", {})
    if not isinstance(base, dict):
        raise SpaceError(f"{source}: [base] must be a table of configuration fields")
    for name in list(fields) + list(base):
        if name not in _FIELDS:
            raise SpaceError(f"{source}: {name!r} is not a configuration field; accepted: {', '.join(_FIELDS)}")
    board = table.get("board")
    if board is not None:
        from .boards import BOARDS
        if board not in BOARDS:
            raise SpaceError(f"{source}: board {board!r}; accepted: {', '.join(sorted(BOARDS))}")
    images = table.get("images")
    if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
        raise SpaceError(f"{source}: images must be an integer of at least 1, not {images!r}")
    return Space({name: _values(name, spec, source) for name, spec in fields.items()}, dict(base), board, images)


def _values(name, spec, source):
    """The values of one field: a list as given, or a range table expanded."""
    if isinstance(spec, list):
        if not spec:
            raise SpaceError(f"{source}: {name} has no values")
        return list(dict.fromkeys(spec))        # a value listed twice is one point
    if not isinstance(spec, dict):
        return [spec]
    keys = set(spec)
    if not ({"from", "to"} <= keys and keys <= {"from", "to", "step", "times"}) or {"step", "times"} <= keys:
        raise SpaceError(f"{source}: {name} = {spec!r}; accepted: a list, or {{from, to, step}} or "
                         f"{{from, to, times}} (a geometric range)")
    low, high = spec["from"], spec["to"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in spec.values()) or low > high:
        raise SpaceError(f"{source}: {name} = {spec!r}: integer bounds with from <= to")
    if "times" in spec:
        if spec["times"] < 2 or low < 1:
            raise SpaceError(f"{source}: {name}: times must be 2 or more and from at least 1")
        values = []
        while low <= high:
            values.append(low)
            low *= spec["times"]
        return values
    step = spec.get("step", 1)
    if step < 1:
        raise SpaceError(f"{source}: {name}: step must be 1 or more")
    return list(range(low, high + 1, step))
