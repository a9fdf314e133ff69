"""Quantized add for the vector unit: two runs of words, one :class:`~tessera.hw.qadd.QAddLane` per lane."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib.wiring import In

from .layouts import vec_command_layout
from .qadd import QAddLane, add_params_layout
from .vector_operation import VectorOperation

__all__ = ["VectorAdd"]


class VectorAdd(VectorOperation):
    """The ``ADD`` command of :class:`~tessera.hw.vector.VectorUnit`: onnxruntime's QLinearAdd of ``count`` words
    at ``a_base`` and as many at ``b_base``, bit-exact. Each result word reads a's word, then b's: a's is kept
    while b's arrives, then both enter the lanes.

    Attributes
    ----------
    The ports of :class:`~tessera.hw.vector_operation.VectorOperation` (``started``: a word of b is read), and:

    params : In(add_params_layout())
        Holds still while a command runs.
    a_base, b_base, count : In
        The running command's operands and word count.
    """

    def __init__(self, cfg):
        command = vec_command_layout(cfg)
        super().__init__(cfg, {"params": In(add_params_layout())}, {
            "a_base": In(command["a_base"].shape), "b_base": In(command["b_base"].shape),
            "count": In(command["count"].shape),
        })

    def elaborate(self, platform):
        m = Module()
        word = Signal(16)
        phase_b = Signal()
        a_word = Signal.like(self.read_data)
        # the read data is a's / b's word (read the cycle before)
        a_arriving, b_arriving = Signal(name="a_arriving"), Signal(name="b_arriving")
        m.d.sync += [a_arriving.eq(0), b_arriving.eq(0)]
        with m.If(a_arriving):
            m.d.sync += a_word.eq(self.read_data)
        with m.If(self.start):
            m.d.sync += [word.eq(0), phase_b.eq(0)]
        with m.If(self.run):
            with m.If(~phase_b):
                with m.If(self.room):
                    m.d.comb += [self.read_addr.eq(self.a_base + word), self.reading.eq(1)]
                    m.d.sync += [phase_b.eq(1), a_arriving.eq(1)]
            with m.Else():
                m.d.comb += [self.read_addr.eq(self.b_base + word), self.reading.eq(1), self.started.eq(1)]
                m.d.sync += [phase_b.eq(0), word.eq(word + 1), b_arriving.eq(1)]
                with m.If(word == self.count - 1):
                    m.d.comb += self.done.eq(1)

        # uint8 values are held on the device as x - 128; the lanes work on raw values
        offset = Mux(self.params.uint8, 128, 0)
        result = Signal.like(self.read_data)
        lanes = []
        for lane in range(self.read_data.shape().length):
            m.submodules[f"lane_{lane}"] = unit = QAddLane()
            lanes.append(unit)
            m.d.comb += [unit.params.eq(self.params), unit.valid.eq(b_arriving),
                         unit.a.eq(a_word[lane] + offset), unit.b.eq(self.read_data[lane] + offset),
                         result[lane].eq(unit.y - offset)]
        # the lanes run in lock step: any lane's valid is every lane's
        m.d.comb += [self.result.eq(result.as_value()), self.result_valid.eq(lanes[0].out_valid)]
        return m
