"""Instruction fetch: the host's link words, gathered into instructions."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .isa import INSTRUCTION_WORDS, LINK_WIDTH, instruction_layout

__all__ = ["InstructionFetch"]


class InstructionFetch(wiring.Component):
    """Gathers :data:`~tessera.hw.isa.INSTRUCTION_WORDS` link words into an instruction, least significant first.

    Attributes
    ----------
    words : In(stream of LINK_WIDTH-bit words)
        Always ready: the controller offers the link's words only while it fetches.
    instruction : Out(instruction_layout(cfg))
        The instruction fetched last: steady until the next one's first word.
    partial : Out(1)
        Part of an instruction came in: its next word is due.
    complete : Out(1)
        The instruction's last word comes in this cycle.
    abandon : In(1)
        Drop the part that came in (the host went silent); the instruction then reads all zero, opcode NOP.
    """

    def __init__(self, cfg):
        super().__init__({
            "words": In(stream.Signature(unsigned(LINK_WIDTH))),
            "instruction": Out(instruction_layout(cfg)),
            "partial": Out(1),
            "complete": Out(1),
            "abandon": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        bits = self.instruction.as_value()
        fetched = Signal(range(INSTRUCTION_WORDS + 1))
        m.d.comb += [self.words.ready.eq(1), self.partial.eq(fetched != 0),
                     self.complete.eq(self.words.valid & (fetched == INSTRUCTION_WORDS - 1))]
        with m.If(self.abandon):
            m.d.sync += [bits.eq(0), fetched.eq(0)]
        with m.Elif(self.words.valid):
            m.d.sync += [bits.eq(Cat(bits[LINK_WIDTH:], self.words.payload)),
                         fetched.eq(Mux(self.complete, 0, fetched + 1))]
        return m
