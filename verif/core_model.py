"""Transaction-level models of the compute core and of the whole device.

They read the buffers exactly as :mod:`hw.layouts` documents and decode instructions as :mod:`hw.isa`
defines them, so the tiler and the compiler can be checked against the golden model quickly and without
RTL; the RTL is checked against the golden model by the cocotb tests. Both levels run the same programs
(PyMTL3's idea: one set of vectors for every level).
"""

import dataclasses

import numpy as np

from hw.isa import BufferId, Opcode
from sw_driver.isa_encode import disassemble
from verif import golden

__all__ = ["Buffers", "execute_command", "run_plan", "run_program"]


@dataclasses.dataclass
class Buffers:
    act: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    scale: np.ndarray   # float32 bit patterns

    @classmethod
    def empty(cls, cfg):
        return cls(np.zeros((cfg.act_depth, cfg.rows), np.int8), np.zeros((cfg.weight_depth, cfg.cols), np.int8),
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
                row.append(buffers.act[(cmd["x_base"] + (iy * g["in_w"] + ix) * blocks + cb) % len(buffers.act)])
            else:
                row.append(np.full(R, g["pad_value"], np.int8))
        rows.append(np.concatenate(row))
    return np.array(rows, np.int8)


def execute_command(cfg, buffers, cmd, geometry=None):
    """Result rows (``m x cols`` int8) of one compute command (``geometry``: the last CONV_SETUP's)."""
    R = cfg.rows
    m, k, x_base, w_base = cmd["m"], cmd["k"], cmd["x_base"], cmd["w_base"]
    if cmd.get("conv"):
        x = _conv_activations(cfg, buffers, cmd, geometry)
        w = buffers.weight[w_base:w_base + k * R]
    elif cfg.dataflow == "ws":
        # fold f: activation words x_base + f*m + i, weight words w_base + f*R + r
        x = np.concatenate([buffers.act[x_base + f * m:x_base + (f + 1) * m] for f in range(k)], axis=1)
        w = buffers.weight[w_base:w_base + k * R]
    else:
        # step j: activation word x_base + j holds X[m0:m0+R, j]
        x = buffers.act[x_base:x_base + k].T[:m]
        w = buffers.weight[w_base:w_base + k]
    p = cmd["p_base"]
    return golden.gemm_hw(x, w, buffers.bias[p], buffers.scale[p].view(np.float32), cmd["y_zp"])


def run_plan(cfg, plan):
    """Execute a :class:`~sw_driver.tiling.GemmPlan` on the core; return its result rows."""
    buffers = Buffers.empty(cfg)
    rows = []
    for p in plan.passes:
        for addr, vector in p.act_loads:
            buffers.act[addr] = vector
        for addr, vector in p.weight_loads:
            buffers.weight[addr] = vector
        for addr, b, s in p.param_loads:
            buffers.bias[addr], buffers.scale[addr] = b, s
        rows += [execute_command(cfg, buffers, cmd) for cmd in p.commands]
    return np.concatenate(rows) if rows else np.zeros((0, cfg.cols), np.int8)


def run_program(cfg, words):
    """Execute a well-formed instruction stream (no error handling); return each command's result rows."""
    buffers = Buffers.empty(cfg)
    results = []
    geometry = None
    for opcode, ops, payload in disassemble(cfg, words):
        if opcode == Opcode.CONV_SETUP:
            geometry = ops
        if opcode == Opcode.LOAD:
            buffer = BufferId(ops["buffer"])
            payload = payload.reshape(ops["words"], -1)
            span = slice(ops["addr"], ops["addr"] + ops["words"])
            if buffer == BufferId.PARAM:
                buffers.bias[span] = payload[:, :cfg.cols].view(np.int32)
                buffers.scale[span] = payload[:, cfg.cols:]
            else:
                lanes = cfg.rows if buffer == BufferId.ACT else cfg.cols
                target = buffers.act if buffer == BufferId.ACT else buffers.weight
                target[span] = payload.view(np.int8).reshape(ops["words"], -1)[:, :lanes]
        elif opcode == Opcode.GEMM:
            results.append(execute_command(cfg, buffers, ops, geometry))
    return results
