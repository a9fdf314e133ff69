"""Transaction-level model of the compute core: executes a tiling plan's loads and commands on NumPy buffers.

It reads the buffers exactly as :mod:`hw.layouts` documents, so the tiler can be checked against the golden
model quickly and without RTL; the RTL is checked against the golden model by the cocotb tests. Both
levels run the same plans (PyMTL3's idea: one set of vectors for every level).
"""

import numpy as np

from verif import golden

__all__ = ["run_plan"]


def run_plan(cfg, plan):
    """Execute ``plan`` and return its result rows (``int8`` array of shape ``(rows, cols)``)."""
    R, C = cfg.rows, cfg.cols
    act = np.zeros((cfg.act_depth, R), np.int8)
    weight = np.zeros((cfg.weight_depth, C), np.int8)
    bias = np.zeros((cfg.param_depth, C), np.int32)
    scale = np.zeros((cfg.param_depth, C), np.uint32)
    rows = []
    for p in plan.passes:
        for addr, vector in p.act_loads:
            act[addr] = vector
        for addr, vector in p.weight_loads:
            weight[addr] = vector
        for addr, b, s in p.param_loads:
            bias[addr], scale[addr] = b, s
        for cmd in p.commands:
            m, k = cmd["m"], cmd["k"]
            if cfg.dataflow == "ws":
                # fold f: activation words x_base + f*m + i, weight words w_base + f*R + r
                x = np.concatenate([act[cmd["x_base"] + f * m:cmd["x_base"] + (f + 1) * m] for f in range(k)],
                                   axis=1)
                w = weight[cmd["w_base"]:cmd["w_base"] + k * R]
            else:
                # step j: activation word x_base + j holds X[m0:m0+R, j]
                x = act[cmd["x_base"]:cmd["x_base"] + k].T[:m]
                w = weight[cmd["w_base"]:cmd["w_base"] + k]
            p_base = cmd["p_base"]
            rows.append(golden.gemm_hw(x, w, bias[p_base], scale[p_base].view(np.float32), cmd["y_zp"]))
    return np.concatenate(rows) if rows else np.zeros((0, C), np.int8)
