"""A buffer with one port that loads and compute reads share, for single-port RAMs (the iCE40UP5K's SPRAM)."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .pipeline import fpga_family

__all__ = ["SinglePortBuffer"]


class SinglePortBuffer(wiring.Component):
    """``depth`` words of ``shape`` behind one address: a compute read wins the cycle, a load waits for it.

    Compute raises ``read_en`` in the cycle it presents ``read_addr`` and takes ``read_data`` the next cycle, as
    from a block RAM's read port; ``read_data`` holds until the next read. A load is accepted (``load.ready``)
    in any cycle without a read, so loads still overlap compute, in the cycles the array does not read this
    buffer. Both ports drive one address, which lets Yosys map the memory onto a single-port RAM: on an iCE40
    it is marked for the UP5K's 16K x 16 SPRAM blocks (``synth_ice40 -spram``; the build drops the memory's
    all-zero initial value, which an SPRAM cannot have).

    Attributes
    ----------
    load : In(stream of {addr, data} or {addr, data, mask})
        Buffer writes (of the lanes ``mask`` marks, where the layout has one).
    read_addr : In(unsigned); read_en : In(1); read_data : Out(shape)
        Compute reads, one cycle of latency.
    """

    #: Name of the memory, which the iCE40 build selects to drop its initial value (see fpga.build).
    MEMORY_NAME = "spram"

    def __init__(self, load_layout, depth):
        self.depth = depth
        self._shape = load_layout.members["data"]
        super().__init__({
            "load": In(stream.Signature(load_layout)),
            "read_addr": In(load_layout.members["addr"]),
            "read_en": In(1),
            "read_data": Out(self._shape),
        })

    def elaborate(self, platform):
        m = Module()
        attrs = {"ram_style": "huge"} if fpga_family(platform) == "ice40" else {}
        memory = Memory(shape=self._shape, depth=self.depth, init=[], attrs=attrs)
        m.submodules[self.MEMORY_NAME] = memory
        # a load with a mask writes only the lanes it marks (stored result rows, hw.writeback)
        masked = "mask" in dict(self.load.payload.shape().members)
        write, read = memory.write_port(granularity=1 if masked else None), memory.read_port()
        addr = Signal.like(write.addr)
        m.d.comb += [
            addr.eq(Mux(self.read_en, self.read_addr, self.load.payload.addr)),
            write.addr.eq(addr), read.addr.eq(addr),
            read.en.eq(self.read_en), self.read_data.eq(read.data),
            self.load.ready.eq(~self.read_en),
            write.en.eq(Mux(self.load.valid & ~self.read_en, self.load.payload.mask if masked else 1, 0)),
            write.data.eq(self.load.payload.data),
        ]
        return m
