"""A stand-in device for link tests and benchmarks: answers each word ``x`` with ``x * 3 + 1``, refusing words on a
fixed pattern of cycles, so a transport is exercised under backpressure without the accelerator behind it."""

from pathlib import Path

import numpy as np
from amaranth import Const, Module, Mux, Signal
from amaranth.back import verilog
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TOPLEVEL", "EchoDevice", "echo_model", "write_echo_verilog"]

TOPLEVEL = "echo_device"


class EchoDevice(wiring.Component):
    """Answers each word ``x`` with ``x * 3 + 1`` (mod 2**32), in order.

    Ports
    -----
    host_in : In(stream.Signature(32))
        Words to transform; ``ready`` is low on the cycles where ``refuse_pattern`` has a 0 bit.
    host_out : Out(stream.Signature(32))
        Transformed words.
    """

    host_in: In(stream.Signature(32))
    host_out: Out(stream.Signature(32))

    def __init__(self, *, depth=8, refuse_pattern=0b10110111011, pattern_length=11):
        self.depth = depth
        self.refuse_pattern = refuse_pattern
        self.pattern_length = pattern_length
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=32, depth=self.depth)
        phase = Signal(range(self.pattern_length))
        m.d.sync += phase.eq(Mux(phase == self.pattern_length - 1, 0, phase + 1))
        accepting = Const(self.refuse_pattern, self.pattern_length).bit_select(phase, 1)
        m.d.comb += [
            self.host_in.ready.eq(queue.w_rdy & accepting),
            queue.w_en.eq(self.host_in.valid & self.host_in.ready),
            queue.w_data.eq(self.host_in.payload * 3 + 1),
            self.host_out.valid.eq(queue.r_rdy),
            self.host_out.payload.eq(queue.r_data),
            queue.r_en.eq(self.host_out.ready),
        ]
        return m


def echo_model(words):
    return (np.asarray(words, np.uint64) * 3 + 1).astype(np.uint32)


def write_echo_verilog(folder):
    """Write the echo device's Verilog into ``folder``; return its path."""
    path = Path(folder) / f"{TOPLEVEL}.v"
    path.write_text(verilog.convert(EchoDevice(), name=TOPLEVEL, emit_src=False))
    return path
