"""Weight-stationary activation issuer: the activation vectors of each fold into the array, one per cycle."""

from typing import NamedTuple

from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import OPERAND, command_layout, conv_geometry_layout, result_rows
from .pipeline import delayed
from .tiles import acc_addr_width, tile_layout
from .weight_loader import fold_layout
from .window import SlidingWindow

__all__ = ["vector_tag_layout", "ActivationIssuer"]


def vector_tag_layout(cfg):
    """What travels beside a vector through the array: where its partial sums go in the accumulator (``write``:
    whether they go there at all; a depthwise fold's positions past its row's last output do not)."""
    return data.StructLayout({"valid": 1, "write": 1, "pad": 1, "row": acc_addr_width(cfg), "first": 1,
                              "tile_end": 1})


class ActivationIssuer(wiring.Component):
    """Streams the ``m`` activation vectors of each fold through the weight bank the fold was loaded into: a
    GEMM fold's ``m`` consecutive words, a conv fold's words from a :class:`~tessera.hw.window.SlidingWindow`
    (or the padding value). Folds follow each other without a bubble, across commands too.

    Parameters
    ----------
    cfg : AcceleratorConfig

    Attributes
    ----------
    fold : In(stream of fold_layout(command_layout(cfg)))
        Folds from the :class:`~tessera.hw.weight_loader.WeightLoader`, each queued as its first weight row is
        addressed.
    conv_geometry : In(conv_geometry_layout())
    start : Out(stream of tile_layout(command_layout(cfg)))
        A command's first fold starts a tile (``half`` of the payload is not driven).
    half : In(1)
        The accumulator half the next started tile will use.
    act_addr, act_data : Out, In
        Activation buffer read port (one cycle latency).
    issued : Out(1)
        A vector is addressed this cycle.
    last_vector : Out(1)
        The vector addressed this cycle is its fold's last.
    x_in, x_bank : Out
        The array's activation port: the vector addressed two cycles earlier (read latency, then a register),
        zero when there is none.
    x_column, x_depthwise : Out
        Beside ``x_in``: a depthwise vector's lanes, one a column (zero for other vectors), and that it is one.
    tag : Out(vector_tag_layout(cfg))
        The tag of the vector on ``x_in``.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        command = command_layout(cfg)
        self._fold = fold_layout(command)
        super().__init__({
            "fold": In(stream.Signature(self._fold)),
            "conv_geometry": In(conv_geometry_layout()),
            "start": Out(stream.Signature(tile_layout(command))),
            "half": In(1),
            "act_addr": Out(command["x_base"].shape),
            "act_data": In(data.ArrayLayout(OPERAND, cfg.rows)),
            "issued": Out(1),
            "last_vector": Out(1),
            "x_in": Out(data.ArrayLayout(OPERAND, cfg.rows)),
            "x_bank": Out(1),
            "x_column": Out(data.ArrayLayout(OPERAND, cfg.cols)),
            "x_depthwise": Out(1),
            "tag": Out(vector_tag_layout(self.cfg)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        current = Signal(self._fold)
        active = Signal()
        vector = Signal.like(current.m)
        half = Signal()
        next_fold = self.fold.payload
        m.submodules.window = window = SlidingWindow(len(self.act_addr), pipelined=True)
        take = self._take(m, active, window)
        depthwise = current.taps != 0
        outputs = self._depthwise_outputs(m, take, active, window)
        m.d.comb += self.last_vector.eq(active & Mux(depthwise, outputs.fold_end, vector == current.m - 1))
        with m.If(self.last_vector):
            m.d.sync += active.eq(0)
        with m.If(active):
            m.d.sync += vector.eq(vector + 1)
        with m.If(take):
            m.d.sync += [current.eq(next_fold), active.eq(1), vector.eq(0)]
            with m.If(next_fold.first):
                m.d.sync += half.eq(self.half)

        m.d.comb += [
            window.geometry.eq(self.conv_geometry),
            window.start.eq(take), window.step.eq(active),
            window.out_y.eq(next_fold.out_y), window.out_x.eq(next_fold.out_x),
            window.kh.eq(next_fold.kh), window.kw.eq(next_fold.kw), window.cb.eq(next_fold.cb),
            window.x_base.eq(next_fold.x_addr), window.taps.eq(next_fold.taps),
            self.act_addr.eq(Mux(current.conv, window.addr, current.x_addr + vector)),
            self.issued.eq(active),
        ]

        # A reduce command's vectors all sum into the tile's row 0: its first vector writes it, the others add to
        # it (back to back, as the read-modify-write's forwarding allows). A depthwise fold's outputs take the
        # tile's rows in turn; its other positions write nothing.
        tag = Signal.like(self.tag)
        half_base = Mux(half, cfg.acc_half_depth, 0)
        row = Mux(depthwise, outputs.count, Mux(current.reduce, 0, vector))
        m.d.comb += [
            tag.valid.eq(active), tag.write.eq(active & (~depthwise | outputs.now)),
            tag.pad.eq(current.conv & window.pad),
            tag.row.eq(half_base + row),
            tag.first.eq(current.first & (~current.reduce | (vector == 0))),
            tag.tile_end.eq(self.last_vector & current.last),
        ]
        self._feed(m, tag, current)
        return m

    def _depthwise_outputs(self, m, take, active, window):
        """A depthwise fold's outputs as its positions stream: whether the current position is one of its ``m``
        outputs (``now``), how many came before it in the fold (``count``), and whether the current position ends
        the fold (the end of the row that holds the last output: the taps past it must stream too)."""
        m_field = self._fold["m"].shape
        count, left = Signal(m_field), Signal(m_field)     # outputs so far; outputs still to come
        now, fold_end = Signal(), Signal()
        m.d.comb += [now.eq(window.output & (left != 0)),
                     fold_end.eq(window.row_end & ((left == 0) | ((left == 1) & window.output)))]
        with m.If(take):
            m.d.sync += [count.eq(0), left.eq(self.fold.payload.m)]
        with m.Elif(active & now):
            m.d.sync += [count.eq(count + 1), left.eq(left - 1)]
        return _Outputs(now, count, fold_end)

    def _take(self, m, active, window):
        """Whether the queued fold starts this cycle (its first vector is addressed the next), and the tile
        it starts if it is its command's first. A fold may start once its last weight row's address is out
        (``rows - 1`` cycles after it was queued) and the window has prepared its first addresses
        (``window.settle`` cycles)."""
        next_fold = self.fold.payload
        fold_ready = max(self.cfg.rows - 1, window.settle)
        settled = Signal(range(fold_ready + 1))
        ready_fold = Signal()
        m.d.comb += ready_fold.eq(self.fold.valid & (settled == fold_ready))
        take = Signal()
        with m.If(~self.fold.valid | take):
            m.d.sync += settled.eq(0)
        with m.Elif(~ready_fold):
            m.d.sync += settled.eq(settled + 1)
        free = ~active | self.last_vector
        m.d.comb += [
            take.eq(free & ready_fold & (~next_fold.first | self.start.ready)),
            self.fold.ready.eq(take),
            self.start.valid.eq(free & ready_fold & next_fold.first),
            self.start.payload.m.eq(result_rows(next_fold)),
            self.start.payload.p_base.eq(next_fold.p_base),
            self.start.payload.y_zp.eq(next_fold.y_zp),
            self.start.payload.raw.eq(next_fold.raw),
        ]
        return take

    def _feed(self, m, tag, current):
        """The addressed vectors (or the padding) into the array, their tags beside them: buffer read data is
        registered before it fans out into the array (a block RAM's output is slow), so one cycle of read
        latency and one of that register. A depthwise vector's lane group goes to the columns, one lane each."""
        cfg = self.cfg
        at_read = delayed(m, tag, 1, name="tag_read")
        padding = Signal.like(self.act_data)
        m.d.comb += [padding[r].eq(self.conv_geometry.pad_value) for r in range(cfg.rows)]
        word = Signal.like(self.act_data)
        m.d.comb += word.eq(Mux(at_read.pad, padding, self.act_data))
        depthwise = delayed(m, current.taps != 0, 1, name="depthwise_read")
        m.d.sync += self.x_in.eq(Mux(at_read.valid & ~depthwise, word, 0))   # (a depthwise vector's go by column)
        group = delayed(m, current.lane_group, 1, name="lane_group_read")
        for c in range(cfg.cols):
            # the lanes a column may take: lane_group * cols + c, for every group that fits the word
            lanes = [word[g * cfg.cols + c] for g in range(max(1, cfg.rows // cfg.cols)) if g * cfg.cols + c < cfg.rows]
            lane = Signal(OPERAND, name=f"column_lane_{c}")
            with m.Switch(group):
                for g, value in enumerate(lanes):
                    with m.Case(g):
                        m.d.comb += lane.eq(value)
            m.d.sync += self.x_column[c].eq(Mux(at_read.valid & depthwise, lane, 0))
        m.d.comb += [
            self.x_bank.eq(delayed(m, current.bank, 2, name="x_bank")),
            # (idle cycles are not depthwise: the PEs then take x_in, zero, and their multipliers stay still)
            self.x_depthwise.eq(delayed(m, at_read.valid & depthwise, 1, name="x_depthwise")),
            self.tag.eq(delayed(m, at_read, 1, name="tag_x")),
        ]


class _Outputs(NamedTuple):
    now: Value
    count: Value
    fold_end: Value
