"""What the row-stationary compute unit's filter loader, ifmap loader and MAC sequencer share: each does its part
of one pass at a time (:mod:`tessera.hw.compute_rs`), on the filter scratchpads of the same array."""

from amaranth.lib import wiring
from amaranth.lib.wiring import In

from .layouts import MAX_KERNEL

__all__ = ["PassUnit", "filter_entries_shape", "filter_spad_depth"]


def filter_entries_shape(cfg):
    """Shape of a count of one filter's scratchpad entries in a pass (:func:`~tessera.hw.layouts.rs_filter_entries`:
    up to ``rows`` channels per PE times the widest kernel)."""
    return range(cfg.rows * MAX_KERNEL + 1)


def filter_spad_depth(cfg):
    """Entries of a PE's filter scratchpad: ``rs_filters`` filters of the widest pass each."""
    return cfg.rs_filters * cfg.rows * MAX_KERNEL


class PassUnit(wiring.Component):
    """A unit of :class:`~tessera.hw.compute_rs.RowStationaryCompute` that runs pass by pass.

    Parameters
    ----------
    cfg : AcceleratorConfig
    ports : dict
        The unit's own ports, after ``start``.

    Attributes
    ----------
    start : In(1)
        Pulse: start a pass (the unit's part of it: its filter load, or its first step).
    """

    def __init__(self, cfg, ports):
        self.cfg = cfg
        super().__init__({"start": In(1), **ports})
