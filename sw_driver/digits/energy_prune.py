"""Energy-aware pruning of the digits CNN, after Yang, Chen and Sze (CVPR 2017): prune hardest the layers that the
energy model says cost most, the weights within a layer by magnitude.

Each layer's energy per image on the device comes from the energy model (:mod:`tessera.sw_driver.energy`) fed with
the counters its compiled program would produce (:mod:`tessera.sw_driver.program_counters`): no simulation, and
equal to a simulated run's counters except for zero activations the multipliers gate (a few pJ per layer).

The budget is the one magnitude pruning has: ``fraction`` of the weights of the pruned layers (all but
``DENSE_LAYERS``), so both methods are compared at equal sparsity. It is shared out in proportion to each layer's
energy per weight (:func:`allocate`): at a fixed number of weights removed, a weight of a layer that spends more
energy per weight saves more; a layer's whole energy, not only its arithmetic, counts because pruning a layer
whole would save all of it (no commands, no feature map sent). Within a layer whole ``rows x cols`` weight tiles go,
smallest mean magnitude first: on this device a skipped tile saves its array cycles, accumulator and weight
traffic, while a single zero weight saves only its gated multiply (about 1 % of a MAC's energy here).
"""

import dataclasses
import math
import numbers

import numpy as np

from tessera.sw_driver.compiler import compile_conv, compile_gemm
from tessera.sw_driver.energy import layer_energy
from tessera.sw_driver.program_counters import ws_program_counters

from .cnn import IMAGE_SHAPE, KERNEL, POOL
from .train import DENSE_LAYERS

__all__ = ["MAX_LAYER_FRACTION", "EnergyPlan", "allocate", "estimated_counters", "estimated_energy",
           "energy_plan"]

#: The most of one layer's weights energy-aware pruning takes (unless ``fraction`` is higher): a layer keeps a
#: tenth of its weights, so the fine-tuning has something to train and the network keeps its shape.
MAX_LAYER_FRACTION = 0.9

#: Side of each conv's input feature map as a divisor of the image's: conv3 reads the pooled map.
_CONV_INPUT_SCALE = {"conv1": 1, "conv2": 1, "conv3": POOL}


def _int8(weight):
    """``weight`` quantized per tensor, symmetric, as onnxruntime's QInt8 weights are: the zeros (and so the
    tiles the compiler skips) stay where they are."""
    peak = float(np.abs(weight).max())
    if peak == 0:
        return np.zeros(weight.shape, np.int8)
    return np.clip(np.round(weight / peak * 127), -127, 127).astype(np.int8)


def _programs(cfg, params, batch):
    """``{weight name: Program}`` of each layer with weights, for ``batch`` images (zeros: the program's shape
    does not depend on the pixels)."""
    height, width = IMAGE_SHAPE[1:]
    programs = {}
    for name, scale in _CONV_INPUT_SCALE.items():
        weight = _int8(params[f"{name}.weight"])
        out_channels, channels = weight.shape[:2]
        images = np.zeros((batch, channels, height // scale, width // scale), np.int8)
        programs[f"{name}.weight"] = compile_conv(
            cfg, images, weight, np.zeros(out_channels, np.int32), np.ones(out_channels, np.float32), 0,
            pads=(KERNEL // 2,) * 4)
    weight = _int8(params["fc.weight"])
    programs["fc.weight"] = compile_gemm(cfg, np.zeros((batch, weight.shape[1]), np.int8), weight.T.copy(),
                                         np.zeros(len(weight), np.int32), np.ones(len(weight), np.float32), 0)
    return programs


def estimated_counters(cfg, params, *, batch):
    """``{weight name: counters}`` of each layer with weights run on ``batch`` images on a ws device of ``cfg``,
    estimated from its compiled program (see :func:`tessera.sw_driver.program_counters.ws_program_counters`)."""
    if cfg.dataflow != "ws":
        raise ValueError(f"the energy estimate counts ws programs only, and this device is {cfg.dataflow!r}; "
                         f"accepted: a ws configuration")
    return {name: ws_program_counters(cfg, program) for name, program in _programs(cfg, params, batch).items()}


def estimated_energy(cfg, params, *, batch, costs=None):
    """``{weight name: pJ per image}`` of each layer with weights, from :func:`estimated_counters` and the energy
    model (``costs``: its cost table, see :func:`tessera.sw_driver.energy.cost_table`)."""
    return {name: layer_energy(cfg, counters, costs)["total"] / batch
            for name, counters in estimated_counters(cfg, params, batch=batch).items()}


def allocate(energy_per_weight, weights, fraction, *, cap=MAX_LAYER_FRACTION):
    """Per layer, the fraction of its weights to prune: ``fraction`` of all of them in total, each layer's share
    in proportion to its energy per weight, and none above ``cap`` (what a capped layer cannot take goes to the
    others, in the same proportion). With ``fraction`` above ``cap``, ``cap`` rises to it.

    Parameters
    ----------
    energy_per_weight : dict
        ``{layer: pJ per image per weight}``, each finite and at least 0.
    weights : dict
        ``{layer: number of weights}``, the same layers, each at least 1.
    fraction : float
        Of all their weights, 0 <= fraction < 1.

    Returns
    -------
    dict
        ``{layer: fraction}``; ``sum(fractions[l] * weights[l]) == fraction * sum(weights.values())``.
    """
    if not energy_per_weight or set(energy_per_weight) != set(weights):
        raise ValueError(f"energy per weight for {sorted(energy_per_weight)} and weights for {sorted(weights)}: "
                         f"accepted: the same layers, at least one")
    for layer, energy in energy_per_weight.items():
        if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not 0 <= energy < math.inf:
            raise ValueError(f"energy per weight of {layer}: {energy!r}; accepted: a finite number, at least 0")
    for layer, count in weights.items():
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise ValueError(f"weights of {layer}: {count!r}; accepted: an integer, at least 1")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction < 1:
        raise ValueError(f"fraction {fraction!r} is out of range; accepted: 0 <= fraction < 1")
    if isinstance(cap, bool) or not isinstance(cap, numbers.Real) or not 0 < cap <= 1:
        raise ValueError(f"cap {cap!r} is out of range; accepted: 0 < cap <= 1")
    cap = max(cap, fraction)        # every layer at ``fraction`` is always within it
    budget = fraction * sum(weights.values())
    free = sorted(weights, key=lambda layer: energy_per_weight[layer], reverse=True)
    fractions = {}
    # Water-filling: the costliest layer caps first; whatever it cannot take is shared out again among the rest.
    while free:
        demand = sum(energy_per_weight[layer] * weights[layer] for layer in free)
        if demand == 0:     # no energy left to rank by: the rest share the budget evenly
            share = budget / sum(weights[layer] for layer in free)
            fractions.update({layer: share for layer in free})
            break
        scale = budget / demand
        if scale * energy_per_weight[free[0]] <= cap:
            fractions.update({layer: scale * energy_per_weight[layer] for layer in free})
            break
        fractions[free[0]] = cap
        budget -= cap * weights[free.pop(0)]
    return {layer: float(fractions[layer]) for layer in weights}


@dataclasses.dataclass
class EnergyPlan:
    """What energy-aware pruning will do: per pruned layer, its estimated energy per image (pJ), its weights and
    the fraction of them to prune."""
    energy_pj: dict
    weights: dict
    fractions: dict

    def summary(self):
        """One line: each pruned layer's fraction and estimated energy per weight, costliest first."""
        order = sorted(self.fractions, key=lambda layer: self.energy_pj[layer] / self.weights[layer], reverse=True)
        return "energy-aware pruning: " + ", ".join(
            f"{layer.removesuffix('.weight')} {self.fractions[layer]:.0%} "
            f"({self.energy_pj[layer] / self.weights[layer]:.0f} pJ per weight per image)" for layer in order)


def energy_plan(cfg, params, fraction, *, batch, dense=DENSE_LAYERS, cap=MAX_LAYER_FRACTION, costs=None):
    """The :class:`EnergyPlan` for pruning ``fraction`` of the weights of every layer but ``dense`` of ``params``
    on a ws device of ``cfg`` running ``batch`` images per program; pass its ``fractions`` to
    :func:`tessera.sw_driver.digits.train.prune` with ``block=(cfg.rows, cfg.cols)``."""
    energy = {name: pj for name, pj in estimated_energy(cfg, params, batch=batch, costs=costs).items()
              if name not in dense}
    weights = {name: int(params[name].size) for name in energy}
    fractions = allocate({name: energy[name] / weights[name] for name in energy}, weights, fraction, cap=cap)
    return EnergyPlan(energy_pj=energy, weights=weights, fractions=fractions)
