"""Row-stationary PE array (Eyeriss: Chen, Emer, Sze, ISCA 2016).

PE ``(r, j)`` of an ``R x C`` grid works on output row ``j`` of a band of ``C`` output rows. For a filter of
height ``KH`` the grid's rows form ``T = R // KH`` PE sets of ``KH`` rows; PE row ``r = t*KH + i`` holds
filter row ``i`` of the channels of set ``t`` (``q = ceil(R / T)`` channels per PE) in its filter
scratchpad, and runs a 1-D convolution of it over input row ``j*stride + i`` of those channels, kept in a
sliding-window ifmap scratchpad. So:

* filter rows are multicast horizontally (every PE of a row holds the same one, loaded once per pass);
* an input row is multicast diagonally: the PEs with ``j*stride + i`` equal to it all take the same word;
* partial sums accumulate vertically: a column's sum over its PE rows (filter rows and channel sets) is
  the output pixel, produced once per output column after ``q*KW`` MACs in every PE.

A PE interleaves up to ``filters`` filters (Eyeriss's ``p``): its filter scratchpad holds the same rows of
``p`` filters and it keeps ``p`` partial sums, so each ifmap value it reads from its scratchpad serves ``p``
MACs, one per filter in consecutive cycles.

The grid runs in lock step under :class:`~tessera.hw.compute_rs.RowStationaryCompute`, which sequences scratchpad
loads, MACs and the accumulation.
"""

import math

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .layouts import ACC, MAX_KERNEL, MAX_STRIDE, OPERAND
from .pe import gated_product
from .pe_multipliers import MULTIPLIERS

__all__ = ["RowStationaryArray", "SPAD_COLUMNS", "rs_mapping"]

#: Input columns an ifmap scratchpad holds per channel (a window of the kernel width plus the columns of
#: the next step or two, addressed modulo this power of two).
SPAD_COLUMNS = 16


def rs_mapping(rows, kernel_h):
    """``(sets, channels_per_pe)`` for a filter of height ``kernel_h`` on ``rows`` PE rows (the compiler and
    the RTL both use this)."""
    sets = rows // kernel_h
    return sets, math.ceil(rows / sets)


class _RowStationaryPE(wiring.Component):
    """One PE: filter and ifmap scratchpads, one int8 MAC per cycle into one of ``filters`` 32-bit partial
    sums.

    ``psum`` is the partial sum the last MAC wrote: the cycle after a filter's last MAC of an output column it
    is that filter's finished sum, which the column adds up.
    """

    def __init__(self, channels, filters, multiplier):
        self.channels, self.filters, self.multiplier = channels, filters, multiplier
        depth = filters * channels * MAX_KERNEL
        super().__init__({
            "w_write": In(1), "w_addr": In(range(depth)), "w_value": In(OPERAND),
            "in_write": In(1), "in_slot": In(range(SPAD_COLUMNS)),
            "in_values": In(data.ArrayLayout(OPERAND, channels)),
            "mac": In(1), "first": In(1), "mac_filter": In(range(max(filters, 2))),
            "mac_channel": In(range(max(channels, 2))), "mac_weight": In(range(depth)),
            "mac_slot": In(range(SPAD_COLUMNS)),
            "psum": Out(ACC),
            "gated": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        q, p = self.channels, self.filters
        # scratchpads as small memories: one write and one combinational read each
        m.submodules.filters = filters = Memory(shape=OPERAND, depth=p * q * MAX_KERNEL, init=[])
        w_port = filters.write_port()
        w_read = filters.read_port(domain="comb")
        m.d.comb += [w_port.addr.eq(self.w_addr), w_port.data.eq(self.w_value), w_port.en.eq(self.w_write),
                     w_read.addr.eq(self.mac_weight)]
        ifmap_reads = []
        for c in range(q):
            m.submodules[f"ifmap_{c}"] = ifmap = Memory(shape=OPERAND, depth=SPAD_COLUMNS, init=[])
            port = ifmap.write_port()
            read = ifmap.read_port(domain="comb")
            m.d.comb += [port.addr.eq(self.in_slot), port.data.eq(self.in_values[c]), port.en.eq(self.in_write),
                         read.addr.eq(self.mac_slot)]
            ifmap_reads.append(read.data)
        w = Signal(OPERAND)
        x = Signal(OPERAND)
        read_x = Array(ifmap_reads)[self.mac_channel]
        m.d.comb += w.eq(w_read.data)
        if p > 1:
            # the ifmap value is read for the first filter and held for the others (the reuse p buys)
            held_x = Signal(OPERAND)
            reuse = self.mac_filter != 0
            m.d.comb += x.eq(Mux(reuse, held_x, read_x))
            with m.If(self.mac & ~reuse):
                m.d.sync += held_x.eq(read_x)
            psums = [Signal(ACC, name=f"psum_{i}") for i in range(p)]
            current = Array(psums)[self.mac_filter]
        else:
            m.d.comb += x.eq(read_x)
            psums, current = [], self.psum
        zero = (w == 0) | (x == 0)
        total = Signal(ACC)
        m.d.comb += total.eq(Mux(self.first, 0, current) + gated_product(x, w, self.multiplier))
        with m.If(self.mac):
            m.d.sync += self.psum.eq(total)
            for i, psum in enumerate(psums):   # one write enable per partial sum, no indexed write
                with m.If(self.mac_filter == i):
                    m.d.sync += psum.eq(total)
        m.d.comb += self.gated.eq(self.mac & zero)
        return m


class RowStationaryArray(wiring.Component):
    """``rows x cols`` row-stationary PEs with the multicast networks and the column sums.

    Parameters
    ----------
    rows, cols : int
        The PE grid.
    filters : int
        Filters a PE interleaves (Eyeriss's ``p``): each PE's filter scratchpad holds ``filters * rows * 7``
        entries and it keeps as many partial sums.

    Attributes
    ----------
    kernel_h, stride : In
        The layer's filter height (1 to ``min(rows, 7)``) and stride (1 to 3).
    w_write, w_addr, w_word : In
        Filter scratchpad load: PE row ``r`` writes lane ``r`` of ``w_word`` at entry ``w_addr``, all PEs of
        the row alike (the compute unit packs a pass's filters densely: ``(filter * q + channel) * KW +
        column``).
    in_write, in_row, in_slot, in_word : In
        Ifmap delivery: the word of input row ``in_row`` (counted from the band's first input row) at
        scratchpad column ``in_slot``; PE ``(t*KH + i, j)`` takes it if ``j*stride + i == in_row``, lanes
        ``t*q .. t*q + q - 1`` (its channels).
    mac, first, mac_filter, mac_channel, mac_weight, mac_slot : In
        One MAC in every PE: filter scratchpad entry ``mac_weight`` times ifmap entry (channel, slot), into
        partial sum ``mac_filter``; ``first`` restarts that partial sum. The ifmap entry is read when
        ``mac_filter`` is 0 and reused for the other filters.
    column_sums : Out(ArrayLayout(signed(32), cols))
        Each column's partial sums (the ones the last MAC wrote) added up its PE rows.
    used_rows : Out
        PE rows of whole sets (the rest hold zeros).
    gated, rf_writes : Out
        Event counts this cycle: MACs gated by a zero operand; scratchpad entries written.
    """

    def __init__(self, *, rows, cols, filters=1, multiplier=MULTIPLIERS["exact"]):
        self.rows, self.cols, self.filters, self.multiplier = rows, cols, filters, multiplier
        self.channels = rows   # at most one set: a PE then holds every channel of the word
        side = (cols - 1) * MAX_STRIDE + MAX_KERNEL
        depth = filters * self.channels * MAX_KERNEL
        super().__init__({
            "kernel_h": In(range(MAX_KERNEL + 1)), "stride": In(range(MAX_STRIDE + 1)),
            "w_write": In(1), "w_addr": In(range(depth)),
            "w_word": In(data.ArrayLayout(OPERAND, rows)),
            "in_write": In(1), "in_row": In(range(side + 1)), "in_slot": In(range(SPAD_COLUMNS)),
            "in_word": In(data.ArrayLayout(OPERAND, rows)),
            "mac": In(1), "first": In(1), "mac_filter": In(range(max(filters, 2))),
            "mac_channel": In(range(max(self.channels, 2))), "mac_weight": In(range(depth)),
            "mac_slot": In(range(SPAD_COLUMNS)),
            "column_sums": Out(data.ArrayLayout(ACC, cols)),
            "channels_per_pe": Out(range(self.channels + 1)),
            "used_rows": Out(range(rows + 1)),
            "gated": Out(range(rows * cols + 1)),
            "rf_writes": Out(range(rows * cols * self.channels + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        rows, cols, q_max = self.rows, self.cols, self.channels
        # -- the mapping of PE rows to (set, filter row) for the layer's filter height ----------------------
        filter_row = [Signal(range(MAX_KERNEL), name=f"filter_row_{r}") for r in range(rows)]
        lane_base = [Signal(range(rows + 1), name=f"lane_base_{r}") for r in range(rows)]
        row_used = [Signal(name=f"row_used_{r}") for r in range(rows)]
        with m.Switch(self.kernel_h):
            for kh in range(1, min(rows, MAX_KERNEL) + 1):
                with m.Case(kh):
                    sets, q = rs_mapping(rows, kh)
                    m.d.comb += [self.channels_per_pe.eq(q), self.used_rows.eq(sets * kh)]
                    for r in range(rows):
                        m.d.comb += [filter_row[r].eq(r % kh), lane_base[r].eq((r // kh) * q),
                                     row_used[r].eq(r < sets * kh)]

        grid = [[_RowStationaryPE(q_max, self.filters, self.multiplier) for _ in range(cols)] for _ in range(rows)]
        gated_bits, write_bits = [], []
        for r, row in enumerate(grid):
            # this row's channels of the delivered word: lanes lane_base .. lane_base + q - 1, zero past the end
            shifted = Signal(data.ArrayLayout(OPERAND, rows), name=f"lanes_{r}")
            m.d.comb += shifted.eq(self.in_word.as_value() >> (lane_base[r] * 8))
            values = Signal(data.ArrayLayout(OPERAND, q_max), name=f"values_{r}")
            for c in range(q_max):
                m.d.comb += values[c].eq(Mux(c < self.channels_per_pe, shifted[c], 0))
            for j, pe in enumerate(row):
                m.submodules[f"pe_{r}_{j}"] = pe
                diagonal = Mux(self.stride == 1, j, Mux(self.stride == 2, 2 * j, 3 * j)) + filter_row[r]
                takes = Signal(name=f"takes_{r}_{j}")
                m.d.comb += [
                    takes.eq(self.in_write & row_used[r] & (diagonal == self.in_row)),
                    pe.w_write.eq(self.w_write & row_used[r]), pe.w_addr.eq(self.w_addr),
                    pe.w_value.eq(self.w_word[r]),
                    pe.in_write.eq(takes), pe.in_slot.eq(self.in_slot), pe.in_values.eq(values),
                    pe.mac.eq(self.mac & row_used[r]), pe.first.eq(self.first),
                    pe.mac_filter.eq(self.mac_filter), pe.mac_channel.eq(self.mac_channel),
                    pe.mac_weight.eq(self.mac_weight), pe.mac_slot.eq(self.mac_slot),
                ]
                gated_bits.append(pe.gated)
                write_bits.append(takes)
        for j in range(cols):
            # psums accumulate up the column (a set's filter rows, then the sets' channel groups)
            # (rows outside every set may hold stale sums from another layer: they do not count)
            m.d.comb += self.column_sums[j].eq(sum(Mux(row_used[r], grid[r][j].psum, 0) for r in range(rows)))
        written = Signal(range(rows * cols + 1))
        m.d.comb += [
            self.gated.eq(sum(gated_bits)),
            written.eq(sum(write_bits)),
            self.rf_writes.eq(written * self.channels_per_pe + Mux(self.w_write, self.used_rows * cols, 0)),
        ]
        return m

