"""Weight-stationary activation issuer: the activation vectors of each fold into the array, one per cycle."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import OPERAND, command_layout, conv_geometry_layout, result_rows
from .pipeline import delayed
from .tiles import acc_addr_width, tile_layout
from .weight_loader import fold_layout
from .window import SlidingWindow

__all__ = ["vector_tag_layout", "ActivationIssuer"]


def vector_tag_layout(cfg):
    """What travels beside a vector through the array: where its partial sums go in the accumulator."""
    return data.StructLayout({"valid": 1, "pad": 1, "row": acc_addr_width(cfg), "first": 1, "tile_end": 1})


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
            "tag": Out(vector_tag_layout(self.cfg)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        current = Signal(self._fold)
        active = Signal()
        vector = Signal.like(current.m)
        half = Signal()
        m.d.comb += self.last_vector.eq(active & (vector == current.m - 1))
        next_fold = self.fold.payload
        m.submodules.window = window = SlidingWindow(len(self.act_addr), pipelined=True)
        take = self._take(m, active, window)
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
            window.x_base.eq(next_fold.x_addr),
            self.act_addr.eq(Mux(current.conv, window.addr, current.x_addr + vector)),
            self.issued.eq(active),
        ]

        # A reduce command's vectors all sum into the tile's row 0: its first vector writes it, the others add to
        # it (back to back, as the read-modify-write's forwarding allows).
        tag = Signal.like(self.tag)
        half_base = Mux(half, cfg.acc_half_depth, 0)
        m.d.comb += [
            tag.valid.eq(active), tag.pad.eq(current.conv & window.pad),
            tag.row.eq(half_base + Mux(current.reduce, 0, vector)),
            tag.first.eq(current.first & (~current.reduce | (vector == 0))),
            tag.tile_end.eq(self.last_vector & current.last),
        ]
        self._feed(m, tag, current.bank)
        return m

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

    def _feed(self, m, tag, bank):
        """The addressed vectors (or the padding) into the array, their tags beside them: buffer read data is
        registered before it fans out into the array (a block RAM's output is slow), so one cycle of read
        latency and one of that register."""
        at_read = delayed(m, tag, 1, name="tag_read")
        padding = Signal.like(self.act_data)
        m.d.comb += [padding[r].eq(self.conv_geometry.pad_value) for r in range(self.cfg.rows)]
        m.d.sync += self.x_in.eq(Mux(at_read.valid, Mux(at_read.pad, padding, self.act_data), 0))
        m.d.comb += [
            self.x_bank.eq(delayed(m, bank, 2, name="x_bank")),
            self.tag.eq(delayed(m, at_read, 1, name="tag_x")),
        ]
