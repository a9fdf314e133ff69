"""Energy per inference as kWh and gCO2e per million inferences (``tessera.sw_driver.carbon``)."""

import pytest

from tessera.sw_driver.carbon import DEFAULT_INTENSITY, DEFAULT_PUE, CarbonAssumptions, per_million, summary_line
from tessera.sw_driver.cli import main


def test_one_joule_per_inference():
    """1 J an inference is 1 MJ a million: 0.2778 kWh at the meter of a site with PUE 1, times the intensity."""
    carbon = per_million(1e12, CarbonAssumptions(intensity_g_per_kwh=100.0, pue=1.0))
    assert carbon["kwh_per_million"] == pytest.approx(1e6 / 3.6e6)
    assert carbon["gco2e_per_million"] == pytest.approx(100.0 * 1e6 / 3.6e6)
    assert carbon["sources"] == {"intensity": "given", "pue": "given"}


def test_defaults_name_their_sources_and_scale_with_the_pue():
    default = per_million(5e6)
    assert (default["intensity_g_per_kwh"], default["pue"]) == (DEFAULT_INTENSITY, DEFAULT_PUE) == (480.0, 1.58)
    assert "2023" in default["sources"]["intensity"] and "2023" in default["sources"]["pue"]
    desk = per_million(5e6, CarbonAssumptions(pue=1.0))
    assert default["kwh_per_million"] == pytest.approx(1.58 * desk["kwh_per_million"])
    assert summary_line(default).startswith("per inference 5.000 uJ; per million inferences")


@pytest.mark.parametrize("field, value", [("intensity_g_per_kwh", -1.0), ("pue", 0.9), ("pue", float("nan"))])
def test_out_of_range_assumptions(field, value):
    with pytest.raises(ValueError, match="out of range; accepted"):
        CarbonAssumptions(**{field: value})


@pytest.mark.parametrize("option, value, accepted", [("--pue", "0.5", "1 or more"),
                                                     ("--carbon-intensity", "-3.0", "0 or more gCO2e/kWh")])
def test_cli_options_are_checked(capsys, option, value, accepted):
    assert main(["demo", f"{option}={value}"]) == 2
    assert f"{value} is out of range; accepted: {accepted}" in capsys.readouterr().err
