"""Energy per inference as electricity and carbon: kWh and gCO2e per million inferences.

The device's energy comes from its counters (:mod:`tessera.sw_driver.energy`); turning it into carbon takes two
figures the user knows best, both settable (``--carbon-intensity``, ``--pue``):

* the grid's carbon intensity, default 480 gCO2e/kWh: the world's electricity in 2023 (Ember, *Global Electricity
  Review 2024*);
* the power usage effectiveness of the place the device runs in, default 1.58: the average data centre (Uptime
  Institute, *Global Data Center Survey 2023*); 1.0 for a board on a desk, which needs no cooling plant.

Only the accelerator's own energy is counted (link, buffers, register files, MACs), not the host's or the board's
static power: the figure is what the design choices change.
"""

from dataclasses import dataclass

__all__ = ["DEFAULT_INTENSITY", "DEFAULT_PUE", "CarbonAssumptions", "per_million", "summary_line"]

#: gCO2e per kWh: world electricity, 2023 (Ember, Global Electricity Review 2024).
DEFAULT_INTENSITY = 480.0
#: Power usage effectiveness: average data centre, 2023 (Uptime Institute, Global Data Center Survey 2023).
DEFAULT_PUE = 1.58
_SOURCES = {"intensity": "Ember, Global Electricity Review 2024: world average 2023, 480 gCO2e/kWh",
            "pue": "Uptime Institute, Global Data Center Survey 2023: average PUE 1.58"}
_JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class CarbonAssumptions:
    """The grid's intensity (gCO2e/kWh) and the site's PUE, and where the defaults come from."""

    intensity_g_per_kwh: float = DEFAULT_INTENSITY
    pue: float = DEFAULT_PUE

    def __post_init__(self):
        if not self.intensity_g_per_kwh >= 0:
            raise ValueError(f"carbon intensity {self.intensity_g_per_kwh} is out of range; accepted: 0 or more "
                             f"gCO2e/kWh")
        if not self.pue >= 1:
            raise ValueError(f"PUE {self.pue} is out of range; accepted: 1 or more")

    def sources(self):
        """Where each figure comes from: the published source for a default, "given" for the user's own."""
        return {"intensity": _SOURCES["intensity"] if self.intensity_g_per_kwh == DEFAULT_INTENSITY else "given",
                "pue": _SOURCES["pue"] if self.pue == DEFAULT_PUE else "given"}


def per_million(energy_pj_per_inference, assumptions=CarbonAssumptions()):
    """``{"energy_uj_per_inference", "kwh_per_million", "gco2e_per_million", ...}`` for one inference's energy."""
    kwh = energy_pj_per_inference * 1e-12 * 1e6 * assumptions.pue / _JOULES_PER_KWH
    return {"energy_uj_per_inference": energy_pj_per_inference / 1e6, "kwh_per_million": kwh,
            "gco2e_per_million": kwh * assumptions.intensity_g_per_kwh,
            "intensity_g_per_kwh": assumptions.intensity_g_per_kwh, "pue": assumptions.pue,
            "sources": assumptions.sources()}


def summary_line(carbon):
    """One printed line of :func:`per_million`'s figures."""
    return (f"per inference {carbon['energy_uj_per_inference']:.3f} uJ; per million inferences "
            f"{carbon['kwh_per_million'] * 1e3:.4g} Wh, {carbon['gco2e_per_million']:.4g} gCO2e "
            f"({carbon['intensity_g_per_kwh']:g} gCO2e/kWh, PUE {carbon['pue']:g})")
