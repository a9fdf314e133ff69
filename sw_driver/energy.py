"""Energy estimate of a layer from the device's hardware counters.

Energy = counts x per-access costs. The default table follows ARCHITECTURE.md's sources: Horowitz, ISSCC 2014
(45 nm: int8 multiply 0.2 pJ, int32 add 0.1 pJ, 64-bit SRAM read 10 / 20 / 100 pJ for 8 KB / 32 KB / 1 MB,
DRAM 1.3-2.6 nJ per 64 bits). The host link stands in for DRAM (the data would come from DRAM in a system).
"""

import math

__all__ = ["DEFAULT_COSTS", "sram_pj_per_64bit", "layer_energy"]

DEFAULT_COSTS = {
    "mac_pj": 0.2 + 0.1,            # int8 multiply + int32 accumulate
    "link_pj_per_64bit": 2000.0,    # DRAM access, middle of Horowitz's 1.3-2.6 nJ
    "sram_pj_per_64bit": {8 * 1024: 10.0, 32 * 1024: 20.0, 1024 * 1024: 100.0},
}


def sram_pj_per_64bit(size_bytes, table=DEFAULT_COSTS["sram_pj_per_64bit"]):
    """Cost of a 64-bit access to an SRAM of ``size_bytes``, interpolated in log(size) between table points."""
    points = sorted(table.items())
    if size_bytes <= points[0][0]:
        return points[0][1]
    for (s0, e0), (s1, e1) in zip(points, points[1:], strict=False):
        if size_bytes <= s1:
            t = (math.log(size_bytes) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return e0 + t * (e1 - e0)
    return points[-1][1]


def layer_energy(cfg, counters, costs=DEFAULT_COSTS):
    """``{"link", "buffers", "rf", "mac", "total"}`` in pJ for one layer's counters."""
    word_bits = {"act": cfg.rows * 8, "weight": cfg.cols * 8, "acc": cfg.cols * 32, "param": cfg.cols * 64,
                 "vec": 32}
    depth = {"act": cfg.act_depth, "weight": cfg.weight_depth, "acc": cfg.acc_depth, "param": cfg.param_depth,
             "vec": cfg.vec_depth}
    buffers = 0.0
    for name, bits in word_bits.items():
        per_access = sram_pj_per_64bit(depth[name] * bits // 8, costs["sram_pj_per_64bit"]) * bits / 64
        buffers += per_access * (counters[f"{name}_reads"] + counters[f"{name}_writes"])
    link_words = counters["link_words_in"] + counters["link_words_out"]
    energy = {
        "link": link_words * 32 / 64 * costs["link_pj_per_64bit"],
        "buffers": buffers,
        "rf": 0.0,   # WS and OS keep operands in PE registers, not counted as register-file accesses
        "mac": counters["array_cycles"] * cfg.pes * costs["mac_pj"],
    }
    energy["total"] = sum(energy.values())
    return energy
