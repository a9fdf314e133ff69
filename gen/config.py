"""The one configuration object that every Tessera block, build and report is derived from.

An :class:`AcceleratorConfig` is validated once, on construction, and can be written to and read back from
TOML and JSON, so a build can be reproduced from the file that generated artefacts record beside their hash.
"""

import dataclasses
import hashlib
import json
import tomllib
from pathlib import Path

from tessera.hw.isa import INSTRUCTION_WORDS, LINK_WIDTH
from tessera.hw.layouts import command_layout
from tessera.hw.pe_multipliers import MULTIPLIERS

__all__ = ["AcceleratorConfig", "CONFIG_SUFFIXES", "ConfigError", "ConfigTypeError", "DATAFLOWS", "MAX_ARRAY_DIM",
           "config_format"]

#: Dataflows the hardware implements today, with a one-line description for messages and docs.
DATAFLOWS = {
    "ws": "weight-stationary systolic: weights held in PEs, activations stream across rows",
    "os": "output-stationary: each PE accumulates one output, activations and weights stream",
    "rs": "row-stationary (Eyeriss): filter rows stay in PE scratchpads, input rows are reused diagonally, "
          "partial sums accumulate up the columns",
}

#: The largest PE array side (rows or columns).
MAX_ARRAY_DIM = 32
#: Configuration file suffixes and the format each names.
CONFIG_SUFFIXES = {".toml": "toml", ".json": "json"}
_MAX_DEPTH = 1 << 16
_MAX_RS_FILTERS = 16


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the parameter and what is accepted."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value has the wrong type (``rows = "8"``); the message names the parameter and the type."""


@dataclasses.dataclass(frozen=True)
class AcceleratorConfig:
    """Parameters of one generated accelerator.

    Parameters
    ----------
    rows, cols : int
        PE array size, 1 to 32 each, square or not.
    dataflow : str
        One of :data:`DATAFLOWS`.
    operand_width : int
        Width of activations and weights in bits (int8 only, for now).
    acc_width : int
        Width of the accumulators in bits (int32).
    act_depth : int
        Activation buffer depth in words; a word is one vector of ``rows`` operands.
    weight_depth : int
        Weight buffer depth in words; a word is one row of ``cols`` weights.
    acc_depth : int
        Accumulator buffer depth in words of ``cols`` int32; it is split into two halves so that one output
        tile is requantised and drained while the next one accumulates.
    param_depth : int
        Depth of the per-output-channel parameter buffer (bias and scale) in words of ``cols`` channels.
    vec_depth : int
        Depth of the vector unit's buffer in 32-bit words (max pooling and element-wise add); 0 builds
        the device without a vector unit (those layers then run on the host).
    program_depth : int
        Depth of the program memory in 32-bit link words: instructions and their data that the device keeps and
        runs on a RUN instruction, so that a resident model's program is not sent again per inference; 0 builds
        the device without one.
    counters : bool
        Build the performance counters.
    clock_mhz : float
        Target clock frequency, used by FPGA builds and by reports.
    link_timeout : int
        Cycles without a host word, in the middle of an instruction or its data, after which the device
        reports the instruction as truncated and returns to idle.
    rs_filters : int
        Row-stationary only: filters a PE interleaves (Eyeriss's ``p``), 1 to 16. A PE holds rows of up to this
        many filters in its filter scratchpad (``rs_filters * rows * 7`` entries) and keeps as many partial
        sums, so each ifmap value it reads is used for that many MACs; 1 runs one filter per command.
    requant_lanes : int
        Lanes of the requantiser, a divisor of ``cols``; 0 (the default) for one per column. With fewer, an
        output row takes ``cols / requant_lanes`` cycles to requantise (one row per reduction is what the
        array produces), and the lanes' logic and DSP blocks go to the PE array instead (FPGA builds).
    multiplier : str
        The int8 x int8 product every PE computes: ``"exact"``, or one of the approximate designs of
        :data:`tessera.hw.pe_multipliers.MULTIPLIERS` (less logic and energy for a known error; the golden model
        then uses the same design, so the device is still checked bit for bit against it).
    single_port_buffers : bool
        Give the activation and weight buffers one port each, shared by loads and compute reads (a read wins the
        cycle; the load waits for one without), so that they fit single-port RAMs: the iCE40UP5K's SPRAM.
    """

    rows: int = 8
    cols: int = 8
    dataflow: str = "ws"
    operand_width: int = 8
    acc_width: int = 32
    act_depth: int = 4096
    weight_depth: int = 4096
    acc_depth: int = 1024
    param_depth: int = 256
    vec_depth: int = 4096
    program_depth: int = 1024
    counters: bool = True
    clock_mhz: float = 100.0
    link_timeout: int = 1 << 16
    rs_filters: int = 4
    requant_lanes: int = 0
    single_port_buffers: bool = False
    multiplier: str = "exact"

    def __post_init__(self):
        _check_int("rows", self.rows, 1, MAX_ARRAY_DIM)
        _check_int("cols", self.cols, 1, MAX_ARRAY_DIM)
        if not isinstance(self.dataflow, str):
            raise ConfigTypeError(f"dataflow: must be a string, not {_typed(self.dataflow)}; accepted: "
                                  + ", ".join(map(repr, DATAFLOWS)))
        if self.dataflow not in DATAFLOWS:
            raise ConfigError(f"dataflow: {self.dataflow!r} is not supported; accepted: "
                              + ", ".join(f"{k!r} ({v})" for k, v in DATAFLOWS.items()))
        if not isinstance(self.multiplier, str):
            raise ConfigTypeError(f"multiplier: must be a string, not {_typed(self.multiplier)}; accepted: "
                                  + ", ".join(map(repr, MULTIPLIERS)))
        if self.multiplier not in MULTIPLIERS:
            raise ConfigError(f"multiplier: {self.multiplier!r} is not a design; accepted: "
                              + ", ".join(f"{k!r} ({v.description})" for k, v in MULTIPLIERS.items()))
        _check_type("operand_width", self.operand_width, int)
        _check_type("acc_width", self.acc_width, int)
        if self.operand_width != 8:
            raise ConfigError(f"operand_width: {self.operand_width!r} is not supported; accepted: 8 (int8)")
        if self.acc_width != 32:
            raise ConfigError(f"acc_width: {self.acc_width!r} is not supported; accepted: 32 (int32, the "
                              f"accumulator width of onnxruntime's int8 kernels)")
        # One tile must fit: a full R x C weight tile, R activation vectors, and two output tiles of R rows
        # (the accumulator is double-buffered so that draining never stalls the array).
        _check_int("act_depth", self.act_depth, self.rows, _MAX_DEPTH,
                   why=f"one tile needs rows={self.rows} activation vectors")
        _check_int("weight_depth", self.weight_depth, self.rows, _MAX_DEPTH,
                   why=f"one {self.rows}x{self.cols} weight tile needs rows={self.rows} words")
        _check_int("acc_depth", self.acc_depth, 2 * self.rows, _MAX_DEPTH,
                   why=f"two output tiles of rows={self.rows} rows (double-buffered)")
        if self.acc_depth % 2:
            raise ConfigError(f"acc_depth: {self.acc_depth} must be even (it is split into two halves)")
        _check_int("param_depth", self.param_depth, 1, _MAX_DEPTH)
        if self.vec_depth != 0:
            _check_int("vec_depth", self.vec_depth, 16, _MAX_DEPTH, why="0 for no vector unit")
        if self.program_depth != 0:
            _check_int("program_depth", self.program_depth, 16, _MAX_DEPTH, why="0 for no program memory")
        for flag in ("counters", "single_port_buffers"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigTypeError(f"{flag}: must be true or false, not {_typed(getattr(self, flag))}")
        _check_type("clock_mhz", self.clock_mhz, float)
        if not 1 <= self.clock_mhz <= 1000:
            raise ConfigError(f"clock_mhz: {self.clock_mhz!r} is out of range; accepted: 1 to 1000")
        _check_int("link_timeout", self.link_timeout, 16, 1 << 24)
        _check_int("rs_filters", self.rs_filters, 1, _MAX_RS_FILTERS,
                   why="filters interleaved in a row-stationary PE; 1 for one filter at a time")
        _check_int("requant_lanes", self.requant_lanes, 0, self.cols, why="0 for one lane per column")
        if self.requant_lanes and self.cols % self.requant_lanes:
            divisors = ", ".join(str(d) for d in range(1, self.cols + 1) if self.cols % d == 0)
            raise ConfigError(f"requant_lanes: {self.requant_lanes} does not divide cols={self.cols}; accepted: "
                              f"0 (one lane per column) or one of {divisors}")
        self._check_instruction_fits()

    def _check_instruction_fits(self):
        # the GEMM instruction's fields grow with the buffers they address; all of them must fit one instruction
        width = INSTRUCTION_WORDS * LINK_WIDTH - 8
        size = command_layout(self).size
        if size > width:
            raise ConfigError(f"act_depth, weight_depth, acc_depth, param_depth: a GEMM instruction addressing "
                              f"these buffers needs {size} operand bits, an instruction has {width}; accepted: "
                              f"smaller depths (each halving saves a bit)")

    # -- derived quantities --------------------------------------------------------------------------------

    @property
    def pes(self):
        """Number of processing elements."""
        return self.rows * self.cols

    @property
    def weight_lanes(self):
        """int8 weights per weight buffer word: a row of ``cols`` output channels (ws, os), or one value per
        PE row (rs: every PE row holds its own filter row)."""
        return self.rows if self.dataflow == "rs" else self.cols

    @property
    def requant_width(self):
        """Lanes the requantiser is built with."""
        return self.requant_lanes or self.cols

    @property
    def acc_half_depth(self):
        """Rows of one accumulator half: the largest output tile a command may produce."""
        return self.acc_depth // 2

    # -- serialisation ---------------------------------------------------------------------------------

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self):
        lines = ["# Tessera accelerator configuration", "[accelerator]"]
        for key, value in self.to_dict().items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = json.dumps(value)
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n"

    @property
    def hash(self):
        """Short content hash: names build folders and is recorded in every generated artefact."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, values):
        """Build a configuration from a mapping, refusing unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict):
            raise ConfigTypeError(f"a configuration must be a table of keys, not {_typed(values)}; accepted keys: "
                                  + ", ".join(sorted(known)))
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown configuration key(s) {', '.join(unknown)}; accepted: "
                              + ", ".join(sorted(known)))
        return cls(**values)

    @classmethod
    def from_toml(cls, path):
        """Read a configuration from a TOML file (keys at top level or under ``[accelerator]``)."""
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"cannot read configuration {path}: {error}") from error
        return cls.from_dict(values.get("accelerator", values))

    @classmethod
    def from_json(cls, text, *, source="from JSON text"):
        """Read a configuration from JSON text (keys at top level or under ``"accelerator"``, as in TOML)."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"cannot read configuration {source}: {error}") from error
        return cls.from_dict(values.get("accelerator", values) if isinstance(values, dict) else values)

    @classmethod
    def from_file(cls, path):
        """Read a configuration from a ``.toml`` or ``.json`` file (:data:`CONFIG_SUFFIXES`), chosen by suffix."""
        path = Path(path)
        if config_format(path) == "toml":
            return cls.from_toml(path)
        try:
            text = path.read_text()
        except OSError as error:
            raise ConfigError(f"cannot read configuration {path}: {error}") from error
        return cls.from_json(text, source=str(path))

    def replace(self, **changes):
        """A copy with some fields changed (``None`` values are ignored, as from unset make variables)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def config_format(path):
    """``"toml"`` or ``"json"``: the format of a configuration file, by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ConfigError(f"configuration file {str(path)!r}: unknown suffix {suffix or '(none)'}; accepted: "
                          + ", ".join(CONFIG_SUFFIXES))
    return CONFIG_SUFFIXES[suffix]


def _typed(value):
    """``str '8'``: a value with its type, for messages."""
    return f"{type(value).__name__} {value!r}"


def _check_type(name, value, kind):
    """A wrong type is a type error, distinct from a value out of range; an int is a number where a float is asked."""
    accepted = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) or not isinstance(value, accepted):
        noun = "a number" if kind is float else "an integer"
        raise ConfigTypeError(f"{name}: must be {noun}, not {_typed(value)}")


def _check_int(name, value, low, high, why=None):
    _check_type(name, value, int)
    if not low <= value <= high:
        reason = f" ({why})" if why else ""
        raise ConfigError(f"{name}: {value!r} is out of range; accepted: an integer from {low} to {high}{reason}")
