"""The SCALE-Sim peer: real SCALE-Sim 3.0 runs (in its own environment, built here once and cached under build/)
agree with the closed forms the bench falls back on for layers too long to simulate, and its cache works."""

import json

import pytest

from tessera.verif.scalesim_peer import (
    PeerLayer,
    ScaleSimError,
    closed_form_cycles,
    ensure_venv,
    peer_for,
    scalesim_cycles,
)

# Small layers that still cover partial folds in every dimension (M, K, N not multiples of the array), a K and N
# below one fold, a single row, and non-square arrays.
LAYERS = [PeerLayer("tile", 8, 8, 8), PeerLayer("ragged", 21, 13, 11), PeerLayer("row", 1, 20, 3),
          PeerLayer("tall", 40, 5, 2), PeerLayer("im2col_3x3", 36, 27, 6)]
ARRAYS = [(4, 4), (3, 5), (8, 2)]


class TestClosedForm:
    def test_formulas_by_hand(self):
        # one fold: WS preloads R rows, fills R + C - 2, streams M; OS streams K through R + C - 2 of skew
        assert closed_form_cycles("ws", 4, 4, 8, 4, 4) == 2 * 4 + 4 + 8 - 2 - 1
        assert closed_form_cycles("os", 4, 4, 4, 8, 4) == 8 + 4 + 4 - 2 - 1
        assert closed_form_cycles("ws", 4, 4, 8, 9, 5) == 3 * 2 * (8 + 4 + 8 - 2) - 1

    def test_rejects_a_dataflow_without_one(self):
        with pytest.raises(ValueError, match="'rs'"):
            closed_form_cycles("rs", 4, 4, 1, 1, 1)

    def test_repeats_multiply(self):
        layer = PeerLayer("dw", 49, 9, 1, repeat=32)
        assert peer_for(layer, 4, 4, "ws") == 32 * closed_form_cycles("ws", 4, 4, 49, 9, 1)


@pytest.fixture(scope="module")
def scalesim_python():
    try:
        return ensure_venv()
    except ScaleSimError as error:   # no PyPI: say so, never pass silently
        pytest.skip(f"SCALE-Sim's environment could not be built: {error}")


@pytest.mark.xdist_group("scalesim")
@pytest.mark.parametrize("dataflow", ["ws", "os"])
def test_scalesim_matches_closed_form(scalesim_python, dataflow, tmp_path):
    for rows, cols in ARRAYS:
        results = scalesim_cycles(LAYERS, rows, cols, dataflow, cache=tmp_path / "cache.json")
        for layer, result in zip(LAYERS, results, strict=True):
            assert result.source == "scalesim"
            assert result.cycles == closed_form_cycles(dataflow, rows, cols, layer.m, layer.k, layer.n), \
                (layer, rows, cols)


@pytest.mark.xdist_group("scalesim")
def test_cache_and_budget(scalesim_python, tmp_path):
    cache = tmp_path / "cache.json"
    layers = [PeerLayer("dw", 12, 9, 1, repeat=5), PeerLayer("big", 4096, 4096, 4096)]
    first = scalesim_cycles(layers, 4, 4, "ws", sram_kb=(8, 8, 4), budget_cycles=10_000, cache=cache)
    assert [r.source for r in first] == ["scalesim", "closed-form"]
    assert first[0].cycles == 5 * closed_form_cycles("ws", 4, 4, 12, 9, 1)
    assert first[1].cycles == closed_form_cycles("ws", 4, 4, 4096, 4096, 4096)
    stored = json.loads(cache.read_text())
    assert len(stored) == 1 and "sram_kb=8,8,4" in next(iter(stored))   # closed-form results are not cached
    again = scalesim_cycles(layers[:1], 4, 4, "ws", sram_kb=(8, 8, 4), cache=cache)
    assert again[0].source == "cache" and again[0].cycles == first[0].cycles
    # another SRAM size is another key
    other = scalesim_cycles(layers[:1], 4, 4, "ws", sram_kb=(16, 8, 4), cache=cache)
    assert other[0].source == "scalesim"
    assert scalesim_cycles(layers, 4, 4, "rs", cache=cache) == [None, None]
