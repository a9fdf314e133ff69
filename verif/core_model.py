"""Transaction-level models of the compute core and of the whole device.

They read the buffers exactly as :mod:`tessera.hw.layouts` documents and decode instructions as :mod:`tessera.hw.isa`
defines them, so the tiler and the compiler can be checked against the golden model quickly and without
RTL; the RTL is checked against the golden model by the cocotb tests. Both levels run the same programs
(PyMTL3's idea: one set of vectors for every level).
"""

import dataclasses
import itertools

import numpy as np

from tessera.hw.isa import BufferId, Opcode
from tessera.hw.layouts import act_word, fmap_word, weight_word
from tessera.sw_driver import golden
from tessera.sw_driver.isa_encode import disassemble

__all__ = ["Buffers", "Pass", "execute_command", "core_passes", "run_passes", "replay_program", "run_program",
           "result_row_count"]


@dataclasses.dataclass
class Pass:
    """What the core does between two waits: loads that land before ``commands`` run."""
    act_loads: list = dataclasses.field(default_factory=list)     # (addr, int8 vector of rows)
    weight_loads: list = dataclasses.field(default_factory=list)  # (addr, int8 vector of cols)
    param_loads: list = dataclasses.field(default_factory=list)   # (addr, int32 bias[cols], uint32 scale bits[cols])
    commands: list = dataclasses.field(default_factory=list)      # dicts of command_layout fields


@dataclasses.dataclass
class Buffers:
    act: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    scale: np.ndarray   # float32 bit patterns

    @classmethod
    def empty(cls, cfg):
        return cls(np.zeros((cfg.act_depth, cfg.rows), np.int8),
                   np.zeros((cfg.weight_depth, cfg.weight_lanes), np.int8),
                   np.zeros((cfg.param_depth, cfg.cols), np.int32), np.zeros((cfg.param_depth, cfg.cols), np.uint32))


def _conv_activations(cfg, buffers, cmd, g):
    """The activation vectors a conv command gathers: (m, folds * rows), taps outside the map read the
    padding value (see hw.layouts.conv_geometry_layout)."""
    R, blocks = cfg.rows, g["channel_blocks"]
    rows = []
    for p in range(cmd["out_y"] * g["out_w"] + cmd["out_x"], cmd["out_y"] * g["out_w"] + cmd["out_x"] + cmd["m"]):
        oy, ox = divmod(p, g["out_w"])
        row = []
        for f in range(cmd["k"]):
            tap, cb = divmod(f, blocks)
            kh, kw = divmod(tap, g["kernel_w"])
            iy, ix = oy * g["stride"] + kh - g["pad_top"], ox * g["stride"] + kw - g["pad_left"]
            if 0 <= iy < g["in_h"] and 0 <= ix < g["in_w"]:
                row.append(buffers.act[(cmd["x_base"] + fmap_word(g["in_w"], blocks, iy, ix, cb)) % len(buffers.act)])
            else:
                row.append(np.full(R, g["pad_value"], np.int8))
        rows.append(np.concatenate(row))
    return np.array(rows, np.int8)


def _depthwise(cfg, buffers, cmd, g):
    """A depthwise command's result rows (hw.layouts.command_layout): column c sums ``taps`` positions of its own
    lane, down the rows of each kernel row's fold."""
    R, taps, lanes = cfg.rows, cmd["taps"], cmd["lane_group"] * cfg.cols + np.arange(cfg.cols)
    # positions per output row; the outputs are every stride-th, those with taps to their right
    width, stride = g["out_w"], g["stride"]
    first = cmd["out_y"] * width + cmd["out_x"] * stride
    outputs = [(p // width, p % width) for p in itertools.islice(
        (p for p in itertools.count(first) if p % width % stride == 0 and p % width + taps <= width), cmd["m"])]
    x = np.empty((len(outputs), cmd["k"], taps, cfg.cols), np.int8)    # each output's taps, per column
    for i, (oy, ox) in enumerate(outputs):
        for f in range(cmd["k"]):
            iy = oy * g["stride"] + f - g["pad_top"]
            for t in range(taps):
                ix = ox + t - g["pad_left"]
                inside = 0 <= iy < g["in_h"] and 0 <= ix < g["in_w"]
                word = buffers.act[(cmd["x_base"] + fmap_word(g["in_w"], g["channel_blocks"], iy, ix, 0))
                                   % len(buffers.act)] if inside else np.full(R, g["pad_value"], np.int8)
                x[i, f, t] = word[lanes]
    w = buffers.weight[cmd["w_base"]:cmd["w_base"] + cmd["k"] * taps].reshape(cmd["k"], taps, -1)[..., :cfg.cols]
    p = cmd["p_base"]
    columns = [golden.gemm_hw(x[..., c].reshape(len(outputs), -1), w[..., c].reshape(-1, 1), buffers.bias[p][c:c + 1],
                              buffers.scale[p][c:c + 1].view(np.float32), cmd["y_zp"], cfg.multiplier)
               for c in range(cfg.cols)]
    return np.concatenate(columns, axis=1)


def result_row_count(cmd):
    """The rows a compute command (a dict of command_layout fields) produces, as hw.layouts.result_rows says."""
    return 1 if cmd.get("reduce") else cmd["m"]


def execute_command(cfg, buffers, cmd, geometry=None):
    """Result rows (``m x cols`` int8) of one compute command (``geometry``: the last CONV_SETUP's)."""
    R = cfg.rows
    m, k, x_base, w_base = cmd["m"], cmd["k"], cmd["x_base"], cmd["w_base"]
    if cmd.get("taps"):
        return _depthwise(cfg, buffers, cmd, geometry)
    if cmd.get("conv"):
        x = _conv_activations(cfg, buffers, cmd, geometry)
        w = buffers.weight[w_base:w_base + k * R]
    elif cfg.dataflow == "ws":
        fold, row = np.meshgrid(np.arange(k), np.arange(m), indexing="ij")
        x = buffers.act[x_base + act_word(cfg, m, fold, row)].transpose(1, 0, 2).reshape(m, k * R)
        fold, pe_row = np.divmod(np.arange(k * R), R)
        w = buffers.weight[w_base + weight_word(cfg, fold, pe_row)]
    else:
        x = buffers.act[x_base + act_word(cfg, m, np.arange(k), 0)].T[:m]
        w = buffers.weight[w_base + weight_word(cfg, np.arange(k), 0)]
    if cmd.get("reduce"):   # every vector sums into one row: x's rows side by side, times w once per row
        x, w = x.reshape(1, -1), np.tile(w, (m, 1))
    p = cmd["p_base"]
    return golden.gemm_hw(x, w, buffers.bias[p], buffers.scale[p].view(np.float32), cmd["y_zp"], cfg.multiplier)


def _load_beats(cfg, ops, payload):
    """The buffer writes of one LOAD: ``(buffer, [(addr, value), ...])``, values as the core's load streams take
    them (int8 vectors; for PARAM an ``(int32 bias, uint32 scale bits)`` pair)."""
    buffer = BufferId(ops["buffer"])
    payload = payload.reshape(ops["words"], -1)
    addrs = range(ops["addr"], ops["addr"] + ops["words"])
    if buffer == BufferId.PARAM:
        values = [(word[:cfg.cols].view(np.int32), word[cfg.cols:]) for word in payload]
    else:
        lanes = cfg.rows if buffer == BufferId.ACT else cfg.weight_lanes
        values = list(payload.view(np.int8).reshape(ops["words"], -1)[:, :lanes])
    return buffer, list(zip(addrs, values, strict=True))


def core_passes(cfg, words):
    """The compute core's view of a compiled GEMM program (``Program.words``): passes of buffer loads, each followed
    by the commands that read them. A load after a command starts a new pass, so a testbench that runs the passes
    one after another (loads, then commands until idle) keeps the program's order without the controller."""
    passes = [Pass()]
    for opcode, ops, payload in disassemble(cfg, words):
        if opcode == Opcode.LOAD:
            if passes[-1].commands:
                passes.append(Pass())
            buffer, beats = _load_beats(cfg, ops, payload)
            target = {BufferId.ACT: passes[-1].act_loads, BufferId.WEIGHT: passes[-1].weight_loads,
                      BufferId.PARAM: passes[-1].param_loads}[buffer]
            target += [(addr, *value) if buffer == BufferId.PARAM else (addr, value) for addr, value in beats]
        elif opcode == Opcode.GEMM:
            passes[-1].commands.append(ops)
        elif opcode != Opcode.WAIT:   # a WAIT only orders loads after commands, which the passes do anyway
            raise ValueError(f"{opcode.name} has no meaning for the compute core alone")
    return passes


def run_passes(cfg, passes):
    """Execute :func:`core_passes` on the core's model, as the core testbench drives the RTL; return each command's
    result rows."""
    buffers = Buffers.empty(cfg)
    results = []
    for p in passes:
        for addr, vector in p.act_loads:
            buffers.act[addr] = vector
        for addr, vector in p.weight_loads:
            buffers.weight[addr] = vector
        for addr, bias, scale in p.param_loads:
            buffers.bias[addr], buffers.scale[addr] = bias, scale
        results += [execute_command(cfg, buffers, cmd) for cmd in p.commands]
    return results


def replay_program(cfg, words):
    """Replay the loads of a well-formed instruction stream; at each compute command yield ``(command, geometry,
    buffers)``: its fields, the last CONV_SETUP's and the buffers as the command reads them (the same object
    throughout, updated by the loads after it)."""
    buffers = Buffers.empty(cfg)
    geometry = None
    for opcode, ops, payload in disassemble(cfg, words):
        if opcode == Opcode.CONV_SETUP:
            geometry = ops
        if opcode == Opcode.LOAD:
            buffer, beats = _load_beats(cfg, ops, payload)
            for addr, value in beats:
                if buffer == BufferId.PARAM:
                    buffers.bias[addr], buffers.scale[addr] = value
                else:
                    (buffers.act if buffer == BufferId.ACT else buffers.weight)[addr] = value
        elif opcode == Opcode.GEMM:
            yield ops, geometry, buffers


def run_program(cfg, words):
    """Execute a well-formed instruction stream (no error handling); return each command's result rows."""
    return [execute_command(cfg, buffers, ops, geometry) for ops, geometry, buffers in replay_program(cfg, words)]
