"""The ports every dataflow's compute unit shares, and the hand-off of its output tiles to the drain through the
two accumulator halves."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .counters import pe_event_limits
from .layouts import ACC, OPERAND, command_layout, conv_geometry_layout

__all__ = ["tile_layout", "acc_addr_width", "TileTracker", "ComputeUnit"]


def tile_layout(command):
    """What the drain needs of a tile: its accumulator half, row count and requantisation parameters (or
    ``raw``: none, the accumulators' values go out as they are)."""
    return data.StructLayout({
        "half": 1,
        "m": command["m"].shape,
        "p_base": command["p_base"].shape,
        "y_zp": command["y_zp"].shape,
        "raw": 1,
    })


def acc_addr_width(cfg):
    """Address bits of the accumulator, both halves."""
    return max(1, (cfg.acc_depth - 1).bit_length())


class TileTracker(wiring.Component):
    """Assigns accumulator halves to tiles and releases each tile to the drain once it is complete.

    The accumulator is double-buffered: a tile accumulates in one half while the previous tile is
    requantised out of the other. A tile may start only when its half has been released by the drain.

    Attributes
    ----------
    start : In(stream of tile_layout)
        The compute side starts a tile (``half`` of the payload is ignored); ready when a half is free.
    half : Out(1)
        The half the next started tile will use.
    finished : In(1)
        Pulse: the last partial sum of the oldest started tile has been written.
    tile : Out(stream of tile_layout)
        Finished tiles, in order, for the drain.
    release : In(1)
        Pulse: the drain has read every row of the tile it took last; its half is free again.
    busy : Out(1)
        Some tile is in flight.
    """

    def __init__(self, layout):
        self._layout = layout
        super().__init__({
            "start": In(stream.Signature(layout)),
            "half": Out(1),
            "finished": In(1),
            "tile": Out(stream.Signature(layout)),
            "release": In(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = fifo.SyncFIFO(width=self._layout.size, depth=2)
        half_busy = Signal(2)
        release_half = Signal()
        finished_count = Signal(2)  # at most two tiles exist at once

        m.d.comb += [
            self.start.ready.eq(~half_busy.bit_select(self.half, 1) & queue.w_rdy),
            queue.w_en.eq(self.start.valid & self.start.ready),
        ]
        started = data.View(self._layout, queue.w_data)
        m.d.comb += [started.eq(self.start.payload), started.half.eq(self.half)]

        m.d.comb += [
            self.tile.valid.eq(queue.r_rdy & (finished_count != 0)),
            self.tile.payload.eq(queue.r_data),
            queue.r_en.eq(self.tile.valid & self.tile.ready),
        ]
        m.d.sync += finished_count.eq(finished_count + self.finished - (self.tile.valid & self.tile.ready))

        set_mask = Signal(2)
        clear_mask = Signal(2)
        with m.If(queue.w_en):
            m.d.sync += self.half.eq(~self.half)
            m.d.comb += set_mask.eq(Mux(self.half, 0b10, 0b01))
        with m.If(self.release):
            m.d.sync += release_half.eq(~release_half)
            m.d.comb += clear_mask.eq(Mux(release_half, 0b10, 0b01))
        m.d.sync += half_busy.eq((half_busy | set_mask) & ~clear_mask)
        m.d.comb += self.busy.eq(half_busy != 0)
        return m


class ComputeUnit(wiring.Component):
    """What the dataflows' compute units share: the ports of :class:`ComputeUnit.Signature`, so that the core
    wires any of them to the same buffers, drain and counters, and a :class:`TileTracker` between them and the
    drain.

    Parameters
    ----------
    cfg : AcceleratorConfig
    tile : StructLayout, keyword-only
        Payload of the ``tile`` stream: :func:`tile_layout` of the command layout (the default), or a
        dataflow's extension of it.
    """

    class Signature(wiring.Signature):
        """The ports of a compute unit.

        Parameters
        ----------
        cfg : AcceleratorConfig
        tile : StructLayout, keyword-only
            Payload of ``tile``; it has at least the fields of :func:`tile_layout`.

        Members
        -------
        cmd : In(stream of command_layout)
        conv_geometry : In(conv_geometry_layout())
            Geometry of ``conv`` commands; holds still while they run.
        act_addr, act_data : Out, In
            Activation buffer read port (one cycle latency).
        weight_addr, weight_data : Out, In
            Weight buffer read port (one cycle latency).
        acc_rd_addr, acc_rd_data : Out, In
            Accumulator read port for read-modify-write (transparent to ``acc_wr``).
        acc_wr_addr, acc_wr_data, acc_wr_en : Out
            Accumulator write port.
        tile : Out(stream of ``tile``); release : In(1)
            Finished tiles for the drain, and the drain's release of their halves.
        busy : Out(1)
            Work in flight.
        act_read, weight_read : Out(1)
            An activation / weight word is read this cycle (a single-port buffer gives the cycle to it; also
            performance counter events).
        issued, acc_rmw_read : Out(1)
            Event strobes for the performance counters: a vector (or reduction step) enters the array; an
            accumulator word is read to be added to.
        macs_gated, rf_reads, rf_writes, noc_transfers : Out
            Event counts for the performance counters, this cycle: PEs whose multiply a zero operand gated;
            register-file (scratchpad) reads and writes; transfers between PEs.
        """

        def __init__(self, cfg, *, tile):
            command = command_layout(cfg)
            required = tile_layout(command).members.keys()
            if not isinstance(tile, data.StructLayout) or not required <= tile.members.keys():
                raise TypeError(f"`tile` must be a StructLayout with at least the fields of tile_layout(), "
                                f"not {tile!r}")
            self.cfg, self.tile = cfg, tile
            super().__init__({
                "cmd": In(stream.Signature(command)),
                "conv_geometry": In(conv_geometry_layout()),
                "act_addr": Out(command["x_base"].shape),
                "act_data": In(data.ArrayLayout(OPERAND, cfg.rows)),
                "weight_addr": Out(command["w_base"].shape),
                "weight_data": In(data.ArrayLayout(OPERAND, cfg.weight_lanes)),
                "acc_rd_addr": Out(acc_addr_width(cfg)),
                "acc_rd_data": In(data.ArrayLayout(ACC, cfg.cols)),
                "acc_wr_addr": Out(acc_addr_width(cfg)),
                "acc_wr_data": Out(data.ArrayLayout(ACC, cfg.cols)),
                "acc_wr_en": Out(1),
                "tile": Out(stream.Signature(tile)),
                "release": In(1),
                "busy": Out(1),
                "issued": Out(1),
                "act_read": Out(1),
                **{event: Out(range(limit + 1)) for event, limit in pe_event_limits(cfg).items()},
                "weight_read": Out(1),
                "acc_rmw_read": Out(1),
            })

        def __eq__(self, other):
            return type(self) is type(other) and self.cfg == other.cfg and self.tile == other.tile

        def __repr__(self):
            return f"ComputeUnit.Signature({self.cfg!r}, tile={self.tile!r})"

    def __init__(self, cfg, *, tile=None):
        self.cfg = cfg
        self._command = command_layout(cfg)
        self._tile = tile_layout(self._command) if tile is None else tile
        super().__init__(self.Signature(cfg, tile=self._tile))

    def _tile_tracker(self, m):
        m.submodules.tracker = tracker = TileTracker(self._tile)
        wiring.connect(m, wiring.flipped(self.tile), tracker.tile)
        m.d.comb += tracker.release.eq(self.release)
        return tracker
