"""Energy estimate of a layer from the device's hardware counters: counts x per-access costs, level by level.

A cost table says what one access at each level of the memory hierarchy costs. Two tables are built in:

``horowitz-45nm`` (the default), in pJ, from M. Horowitz, "Computing's energy problem (and what we can do about
it)", ISSCC 2014, 45 nm: int8 multiply 0.2, int8 add 0.03, int32 add 0.1; a 64-bit SRAM read 10 / 20 / 100 for
8 KB / 32 KB / 1 MB (interpolated in log(size) between those points, by each buffer's size); DRAM 1.3-2.6 nJ per
64 bits (the middle, 2 nJ, is used). Horowitz gives no figure for a register-file access or a PE-to-PE hop; the
table takes them from the Eyeriss ratios below (RF = 1 MAC, inter-PE = 2 MACs) times Horowitz's MAC.

``eyeriss``: the normalised costs of Y.-H. Chen, J. Emer, V. Sze, "Eyeriss: a spatial architecture for
energy-efficient dataflow for convolutional neural networks", ISCA 2016: DRAM : global buffer : inter-PE : RF :
MAC = 200 : 6 : 2 : 1 : 1 per 16-bit word, whatever the buffer's size. One unit is set to Horowitz's int8 MAC
(0.3 pJ), so both tables report pJ.

The host link stands in for DRAM (in a system the data would come from DRAM). Tables can be replaced by YAML
files (:func:`load_cost_table`) with the same keys as :data:`BUILTIN_TABLES`; ``base: horowitz-45nm`` (or
``eyeriss``) fills in keys a file leaves out.

Levels (:func:`energy_breakdown`): ``link`` (DRAM), ``buffer.<name>`` for each on-chip buffer, ``inter_pe``,
``rf``, ``mac``, ``vec_alu`` (the vector unit's int8 lanes) and ``mac_gated_credit`` (negative: multiplies that
zero gating switched off, when the device counts them in ``macs_gated``). :func:`layer_energy` folds them into
the report's ``link / buffers / rf / mac / total``.
"""

import copy
import math
from pathlib import Path

import numpy as np

from tessera.sw_driver.products import error_metrics

__all__ = ["BUILTIN_TABLES", "DEFAULT_COSTS", "EnergyTableError", "multiplier_energy_ratio", "sram_pj_per_64bit",
           "load_cost_table",
           "cost_table", "buffer_geometry", "energy_breakdown", "layer_energy", "LEVEL_GROUPS", "rf_accesses",
           "inter_pe_transfers"]

_HOROWITZ_MAC = 0.2 + 0.1   # int8 multiply + int32 accumulate, pJ

#: Power of 8x8 signed approximate multipliers against their exact one, by mean absolute error (% of 2**16):
#: EvoApproxLib's published designs (Mrazek et al., DATE 2017, 45 nm): MAE 0.05 % at -15 % power, 0.23 % at -53 %,
#: 0.52 % at -70 %. A design here is given the power interpolated at its own MAE (clamped past the last point).
EVOAPPROX_POWER_BY_MAE = ((0.0, 1.0), (0.05, 0.85), (0.23, 0.47), (0.52, 0.30))
MULTIPLIER_ENERGY_SOURCE = ("EvoApproxLib 8x8 signed multipliers (Mrazek et al., DATE 2017, 45 nm): power against "
                            "MAE, interpolated at the design's MAE; times Horowitz's int8 multiply")

BUILTIN_TABLES = {
    "horowitz-45nm": {
        "name": "horowitz-45nm",
        "unit_pj": 1.0,
        "mac": _HOROWITZ_MAC,
        "gated_mac_saving": 0.2,          # a gated MAC skips its multiply; the add still happens
        "vec_lane_op": 0.03,              # one int8 add / compare in a vector-unit lane
        "dram": {"cost": 2000.0, "bits": 64},
        "sram": {"bits": 64, "by_size_bytes": {8 * 1024: 10.0, 32 * 1024: 20.0, 1024 * 1024: 100.0}},
        "inter_pe": 2 * _HOROWITZ_MAC,    # per operand hop between neighbouring PEs
        "rf": 1 * _HOROWITZ_MAC,          # per register-file access
        "sources": {
            "mac": "Horowitz ISSCC 2014, 45 nm: int8 multiply 0.2 pJ + int32 add 0.1 pJ",
            "gated_mac_saving": "Horowitz: the int8 multiply (0.2 pJ) a zero operand gates off",
            "vec_lane_op": "Horowitz: int8 add 0.03 pJ",
            "dram": "Horowitz: DRAM 1.3-2.6 nJ per 64 bits; middle value",
            "sram": "Horowitz: 64-bit SRAM read 10 / 20 / 100 pJ at 8 KB / 32 KB / 1 MB, log-interpolated",
            "inter_pe": "Eyeriss ratio inter-PE : MAC = 2 : 1, times Horowitz's MAC (Horowitz has no figure)",
            "rf": "Eyeriss ratio RF : MAC = 1 : 1, times Horowitz's MAC (Horowitz has no figure)",
        },
    },
    "eyeriss": {
        "name": "eyeriss",
        "unit_pj": _HOROWITZ_MAC,
        "mac": 1.0,
        "gated_mac_saving": 0.2 / _HOROWITZ_MAC,
        "vec_lane_op": 0.03 / _HOROWITZ_MAC,
        "dram": {"cost": 200.0, "bits": 16},
        "sram": {"bits": 16, "by_size_bytes": {1: 6.0}},
        "inter_pe": 2.0,
        "rf": 1.0,
        "sources": {
            "all": "Chen, Emer, Sze, ISCA 2016: DRAM 200, global buffer 6, inter-PE 2, RF 1, MAC 1 per 16-bit "
                   "word, normalised to one MAC; unit_pj = Horowitz's int8 MAC (0.3 pJ)",
            "gated_mac_saving": "the multiply's share of a MAC, as in horowitz-45nm",
        },
    },
}

#: The table used when none is given.
DEFAULT_COSTS = BUILTIN_TABLES["horowitz-45nm"]

#: How :func:`layer_energy` folds the levels of :func:`energy_breakdown` into the report's keys.
LEVEL_GROUPS = {"link": ("link",), "buffers": ("buffer.",), "rf": ("rf", "inter_pe"),
                "mac": ("mac", "vec_alu", "mac_gated_credit")}

_REQUIRED = {"unit_pj", "mac", "gated_mac_saving", "vec_lane_op", "dram", "sram", "inter_pe", "rf"}
_OPTIONAL = {"name", "sources", "base"}


class EnergyTableError(ValueError):
    """A cost table is malformed; the message names the key and what is accepted."""


def multiplier_energy_ratio(name):
    """Energy of one multiply of the design ``name`` (`tessera.hw.pe_multipliers`) over the exact multiply's:
    1 for ``exact``, else EvoApproxLib's power at the design's MAE (:data:`EVOAPPROX_POWER_BY_MAE`)."""
    if name == "exact":
        return 1.0
    mae = error_metrics(name).mae_percent
    maes, powers = zip(*EVOAPPROX_POWER_BY_MAE, strict=True)
    return float(np.interp(mae, maes, powers))


def sram_pj_per_64bit(size_bytes, table=None):
    """Horowitz's cost of a 64-bit access to an SRAM of ``size_bytes``, interpolated in log(size) between the
    ``{size: pJ}`` points of ``table`` (default: the built-in 8 KB / 32 KB / 1 MB points), clamped at the ends."""
    table = DEFAULT_COSTS["sram"]["by_size_bytes"] if table is None else table
    return _interpolate(size_bytes, table)


def _interpolate(size_bytes, points):
    points = sorted((float(s), float(e)) for s, e in points.items())
    if size_bytes <= points[0][0]:
        return points[0][1]
    for (s0, e0), (s1, e1) in zip(points, points[1:], strict=False):
        if size_bytes <= s1:
            t = (math.log(size_bytes) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return e0 + t * (e1 - e0)
    return points[-1][1]


def _check_table(table, origin):
    unknown = set(table) - _REQUIRED - _OPTIONAL
    if unknown:
        raise EnergyTableError(f"{origin}: unknown key(s) {', '.join(sorted(unknown))}; accepted: "
                               + ", ".join(sorted(_REQUIRED | _OPTIONAL)))
    missing = _REQUIRED - set(table)
    if missing:
        raise EnergyTableError(f"{origin}: missing key(s) {', '.join(sorted(missing))} (or give 'base: "
                               f"horowitz-45nm' / 'base: eyeriss' to inherit them)")

    def number(path, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
            raise EnergyTableError(f"{origin}: {path} must be a non-negative number, not {value!r}")
        return float(value)

    for key in ("unit_pj", "mac", "gated_mac_saving", "vec_lane_op", "inter_pe", "rf"):
        number(key, table[key])
    for key in ("dram", "sram"):
        if not isinstance(table[key], dict):
            raise EnergyTableError(f"{origin}: {key} must be a mapping, not {table[key]!r}")
        bits = table[key].get("bits")
        if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0:
            raise EnergyTableError(f"{origin}: {key}.bits (the access width the cost is for) must be a positive "
                                   f"integer, not {bits!r}")
    number("dram.cost", table["dram"].get("cost"))
    sizes = table["sram"].get("by_size_bytes")
    if not isinstance(sizes, dict) or not sizes:
        raise EnergyTableError(f"{origin}: sram.by_size_bytes must map buffer sizes in bytes to costs, "
                               f"not {sizes!r}")
    for size, cost in sizes.items():
        if number(f"sram.by_size_bytes key {size!r}", size) <= 0:
            raise EnergyTableError(f"{origin}: sram.by_size_bytes sizes must be positive, not {size!r}")
        number(f"sram.by_size_bytes[{size}]", cost)
    return table


def cost_table(table=None):
    """A validated cost table: ``None`` (the default), a built-in name, a YAML path, or a mapping."""
    if table is None:
        return DEFAULT_COSTS
    if isinstance(table, str) and table in BUILTIN_TABLES:
        return BUILTIN_TABLES[table]
    if isinstance(table, (str, Path)):
        return load_cost_table(table)
    if isinstance(table, dict):
        return _check_table(_with_base(table, "a cost table"), "a cost table")
    raise EnergyTableError(f"cost table {table!r}: give a built-in name ({', '.join(BUILTIN_TABLES)}), a YAML "
                           f"file or a mapping")


def _with_base(table, origin):
    base = table.get("base")
    if base is None:
        return table
    if base not in BUILTIN_TABLES:
        raise EnergyTableError(f"{origin}: base {base!r} is not a built-in table; accepted: "
                               + ", ".join(BUILTIN_TABLES))
    merged = copy.deepcopy(BUILTIN_TABLES[base])
    for key, value in table.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "sources":
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    merged.setdefault("name", f"{base} (modified)")
    return merged


def load_cost_table(path):
    """Read a cost table from YAML; keys as in :data:`BUILTIN_TABLES` (``base:`` inherits from a built-in)."""
    import yaml

    path = Path(path)
    try:
        table = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise EnergyTableError(f"cannot read cost table {path}: {error}") from error
    if not isinstance(table, dict):
        raise EnergyTableError(f"{path}: a cost table is a mapping of keys to costs, not {type(table).__name__}")
    table = _with_base(table, str(path))
    table.setdefault("name", path.stem)
    return _check_table(table, str(path))


def buffer_geometry(cfg):
    """``{buffer: (word_bits, size_bytes)}`` of the device's on-chip buffers (a vector unit of depth 0 is
    absent). These are the counters' ``<buffer>_reads`` / ``<buffer>_writes`` prefixes."""
    geometry = {"act": (cfg.rows * 8, cfg.act_depth), "weight": (cfg.cols * 8, cfg.weight_depth),
                "acc": (cfg.cols * 32, cfg.acc_depth), "param": (cfg.cols * 64, cfg.param_depth),
                "vec": (32, cfg.vec_depth), "program": (32, cfg.program_depth)}
    return {name: (bits, depth * bits // 8) for name, (bits, depth) in geometry.items() if depth}


#: PE-to-PE operand hops per PE per array cycle, when the device does not count them (``inter_pe_transfers``):
#: WS passes an activation right and a partial sum down; OS passes an activation right and a weight down.
_HOPS_PER_PE = {"ws": 2, "os": 2}
_VEC_LANES = 4   # int8 lanes of a 32-bit vector-unit word


def rf_accesses(counters):
    """PE register-file accesses: the device's ``rf_reads + rf_writes`` counters, else ``rf_accesses``, else 0
    (a device without them keeps its operands in pipeline registers the table does not charge)."""
    if "rf_reads" in counters or "rf_writes" in counters:
        return counters.get("rf_reads", 0) + counters.get("rf_writes", 0)
    return counters.get("rf_accesses", 0)


def inter_pe_transfers(cfg, counters):
    """Operands and partial sums passed between PEs: the device's ``noc_transfers`` counter when it has one,
    else an estimate of two hops per PE per array cycle (WS: activation right, partial sum down; OS: activation
    right, weight down; none for a dataflow without a known pattern)."""
    for name in ("noc_transfers", "inter_pe_transfers"):
        if name in counters:
            return counters[name]
    return counters["array_cycles"] * cfg.pes * _HOPS_PER_PE.get(cfg.dataflow, 0)


def energy_breakdown(cfg, counters, costs=None):
    """Energy of one layer in pJ, level by level, from its hardware counters.

    Parameters
    ----------
    cfg : AcceleratorConfig
        The device the counters came from (array size, dataflow, buffer sizes).
    counters : dict
        Hardware counters (``tessera.hw.isa.COUNTERS`` names). Optional ones used when present: ``macs_gated``,
        ``rf_reads`` / ``rf_writes`` (or ``rf_accesses``), ``noc_transfers`` (see :func:`inter_pe_transfers`).
    costs : table, optional
        See :func:`cost_table`.

    Returns
    -------
    dict
        ``{level: pJ}`` in a fixed order, plus ``"total"`` (their sum).
    """
    table = cost_table(costs)
    unit = float(table["unit_pj"])

    def per_bits(level, bits, cost):
        return float(cost) * bits / table[level]["bits"] * unit

    energy = {"link": per_bits("dram", 32 * (counters["link_words_in"] + counters["link_words_out"]),
                               table["dram"]["cost"])}
    for name, (bits, size) in buffer_geometry(cfg).items():
        accesses = counters.get(f"{name}_reads", 0) + counters.get(f"{name}_writes", 0)
        energy[f"buffer.{name}"] = per_bits("sram", accesses * bits, _interpolate(size, table["sram"]["by_size_bytes"]))
    issued = counters["array_cycles"] * cfg.pes
    energy["inter_pe"] = inter_pe_transfers(cfg, counters) * table["inter_pe"] * unit
    energy["rf"] = rf_accesses(counters) * table["rf"] * unit
    # the multiply's share of a MAC (gated_mac_saving) scales with the PE multiplier's design
    multiply = table["gated_mac_saving"] * multiplier_energy_ratio(cfg.multiplier)
    energy["mac"] = issued * (table["mac"] - table["gated_mac_saving"] + multiply) * unit
    energy["vec_alu"] = counters.get("vec_cycles", 0) * _VEC_LANES * table["vec_lane_op"] * unit
    energy["mac_gated_credit"] = -counters.get("macs_gated", 0) * multiply * unit
    energy["total"] = sum(energy.values())
    return energy


def layer_energy(cfg, counters, costs=None):
    """``{"link", "buffers", "rf", "mac", "total"}`` in pJ for one layer's counters (the report's keys).

    ``buffers`` sums every ``buffer.*`` level of :func:`energy_breakdown`, ``rf`` adds the inter-PE hops to
    register-file accesses (operand movement inside the array), ``mac`` nets the gated-MAC credit and the
    vector unit's arithmetic.
    """
    levels = energy_breakdown(cfg, counters, costs)
    energy = {group: sum(v for k, v in levels.items() if k != "total" and
                         any(k == p or (p.endswith(".") and k.startswith(p)) for p in prefixes))
              for group, prefixes in LEVEL_GROUPS.items()}
    energy["total"] = levels["total"]
    return energy
