"""The program memory: instructions and their data kept on the device, and the RUN that feeds them to the
controller in place of the host's link words."""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .isa import LINK_WIDTH, Opcode, operands_layout

__all__ = ["ProgramMemory", "program_load_layout"]


def program_load_layout(cfg):
    """One program memory word (a link word) and its address."""
    return data.StructLayout({"addr": unsigned(max(1, (cfg.program_depth - 1).bit_length())),
                              "data": data.ArrayLayout(unsigned(LINK_WIDTH), 1)})


class ProgramMemory(wiring.Component):
    """``cfg.program_depth`` link words written by LOADs and read back in order by a RUN.

    A run reads words ``base`` to ``base + words - 1`` onto ``words_out`` at one word a cycle (the controller's
    ready permitting); the controller takes them as it would the link's, and ends the run (``stop``) once it has
    taken the last (``exhausted``) or finds the program ending mid-instruction.

    Attributes
    ----------
    load : In(stream of program_load_layout(cfg))
        Writes; always ready.
    request : In(operands_layout(cfg, Opcode.RUN))
    start : In(1)
        Begin running ``request``.
    stop : In(1)
        End the run: the controller reads the link again.
    running : Out(1)
        A run has begun and not been stopped.
    exhausted : Out(1)
        Running, and every word of the program has been taken.
    words_out : Out(stream of LINK_WIDTH-bit words)
    read : Out(1)
        A word is read from the memory this cycle (for the ``program_reads`` counter).
    """

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "load": In(stream.Signature(program_load_layout(cfg))),
            "request": In(operands_layout(cfg, Opcode.RUN)),
            "start": In(1),
            "stop": In(1),
            "running": Out(1),
            "exhausted": Out(1),
            "words_out": Out(stream.Signature(unsigned(LINK_WIDTH))),
            "read": Out(1),
        })
        # the run's state, named here for the formal invariants (verif.formal.liveness): the next word to read,
        # the word after the program's last, and whether the read port holds a word not yet taken
        self.pc = Signal(17)
        self.end = Signal(17)
        self.fetched = Signal()

    def elaborate(self, platform):
        m = Module()
        # (two words at least: a one-word memory has a zero-width address, which lint rejects)
        m.submodules.words = words = Memory(shape=unsigned(LINK_WIDTH), depth=max(2, self.cfg.program_depth),
                                            init=[])
        write = words.write_port()
        m.d.comb += [self.load.ready.eq(1), write.addr.eq(self.load.payload.addr),
                     write.data.eq(self.load.payload.data), write.en.eq(self.load.valid)]

        # the read port's data is the word at `pc - 1` once `fetched`: it holds while the controller is not ready
        read = words.read_port()
        pc, end, fetched = self.pc, self.end, self.fetched
        advance = Signal()
        m.d.comb += [
            advance.eq(self.running & (~fetched | self.words_out.ready)),
            read.addr.eq(pc), read.en.eq(advance),
            self.read.eq(advance & (pc != end)),
            self.words_out.valid.eq(fetched), self.words_out.payload.eq(read.data),
            self.exhausted.eq(self.running & ~fetched & (pc == end)),
        ]
        with m.If(advance):
            m.d.sync += fetched.eq(pc != end)
            with m.If(pc != end):
                m.d.sync += pc.eq(pc + 1)
        # a run starts only when none is, and stops only with no word offered (the controller asks for neither
        # otherwise; the guards keep the stream's rules whatever it asks)
        with m.If(self.start & ~self.running):
            m.d.sync += [self.running.eq(1), fetched.eq(0), pc.eq(self.request.base),
                         end.eq(self.request.base + self.request.words)]
        with m.Elif(self.stop & ~fetched):
            m.d.sync += [self.running.eq(0), fetched.eq(0)]   # (the read begun this cycle is dropped)
        return m
