"""The compute core: buffers, PE array, accumulator, requantiser, behind stream interfaces."""

from amaranth.hdl import Module, Mux
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .buffer import SinglePortBuffer
from .compute_os import OutputStationaryCompute
from .compute_rs import RowStationaryCompute
from .compute_ws import WeightStationaryCompute
from .counters import pe_event_limits
from .drain import Drain
from .layouts import (
    ACC,
    OPERAND,
    act_load_layout,
    act_write_layout,
    command_layout,
    conv_geometry_layout,
    param_load_layout,
    param_word_layout,
    result_layout,
    weight_load_layout,
)

__all__ = ["GemmCore", "core_events_layout"]

def _depth(words):
    # A one-word memory has a zero-width address in Amaranth's Verilog ("[-1:0]"), which lint rejects;
    # the spare word is never addressed.
    return max(2, words)


def core_events_layout(cfg):
    """Event strobes of :class:`GemmCore` (``acc_read`` counts up to two reads in one cycle, ``macs_gated``
    the PEs whose multiply a zero operand gated)."""
    return data.StructLayout({"busy": 1, "array": 1, "act_read": 1, "act_write": 1, "weight_read": 1, "acc_read": 2,
                              "acc_write": 1, "param_read": 1, "stall_output": 1,
                              **{event: range(limit + 1) for event, limit in pe_event_limits(cfg).items()}})


_COMPUTE = {"ws": WeightStationaryCompute, "os": OutputStationaryCompute, "rs": RowStationaryCompute}


class GemmCore(wiring.Component):
    """Requantised int8 GEMM tiles on a ``rows x cols`` PE array with on-chip buffers.

    Buffers are :class:`~amaranth.lib.memory.Memory` whose words are whole vectors (one bank per lane), so
    the array reads a full activation vector and a full weight row every cycle. Loads write buffer words
    at the address they carry; compute commands (see :mod:`tessera.hw.layouts`) read them, accumulate into one of two
    accumulator halves, and the drain requantises finished tiles into ``result`` while the next tile
    computes. Keeping loads and commands apart (no overwrite of words a queued command still reads) is the
    controller's job.

    Attributes
    ----------
    act_load, weight_load, param_load : In(stream)
        Buffer writes: ``{addr, data}``; always ready, except with ``single_port_buffers``, where the activation
        and weight loads wait in the cycles compute reads their buffer (:class:`~tessera.hw.buffer.SinglePortBuffer`),
        and an activation load waits for stored result rows.
    act_store : In(stream of act_write_layout(cfg))
        Stored result rows' writes (:class:`~tessera.hw.writeback.ResultRouter`): the lanes of ``mask`` only.
        They go before loads (the array's output waits for them).
    cmd : In(stream of command_layout)
        Compute commands.
    conv_geometry : In(conv_geometry_layout())
        Geometry for ``conv`` commands (weight-stationary only); must not change while they run.
    result : Out(stream of ArrayLayout(signed(8), cols))
        One requantised output row per beat, in command order.
    idle : Out(1)
        No command queued or in flight and every result delivered.
    perf_cycles, perf_issued : Out(32)
        Cycles spent not idle, and cycles in which a vector (ws) or reduction step (os) entered the array.
    events : Out(core_events_layout(cfg))
        One strobe per countable event this cycle, for the device's performance counters.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "act_load": In(stream.Signature(act_load_layout(cfg))),
            "act_store": In(stream.Signature(act_write_layout(cfg))),
            "weight_load": In(stream.Signature(weight_load_layout(cfg))),
            "param_load": In(stream.Signature(param_load_layout(cfg))),
            "cmd": In(stream.Signature(command_layout(cfg))),
            "conv_geometry": In(conv_geometry_layout()),
            "result": Out(stream.Signature(result_layout(cfg))),
            "idle": Out(1),
            "perf_cycles": Out(32),
            "perf_issued": Out(32),
            "events": Out(core_events_layout(cfg)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        single_port = cfg.single_port_buffers
        if not single_port:
            m.submodules.act_buffer = act_buffer = Memory(
                shape=data.ArrayLayout(OPERAND, cfg.rows), depth=_depth(cfg.act_depth), init=[])
            m.submodules.weight_buffer = weight_buffer = Memory(
                shape=data.ArrayLayout(OPERAND, cfg.weight_lanes), depth=_depth(cfg.weight_depth), init=[])
        m.submodules.param_buffer = param_buffer = Memory(
            shape=param_word_layout(cfg), depth=_depth(cfg.param_depth), init=[])
        m.submodules.acc_buffer = acc_buffer = Memory(
            shape=data.ArrayLayout(ACC, cfg.cols), depth=_depth(cfg.acc_depth), init=[])

        # Each load writes its own port and is always ready, except into a single-port buffer (below), and the
        # activation buffer's, which stored rows share
        act_write = self._act_writes(m)
        loads = [(self.param_load, param_buffer)]
        if not single_port:
            loads = [(self.weight_load, weight_buffer)] + loads
            port = act_buffer.write_port(granularity=1)
            m.d.comb += [act_write.ready.eq(1), port.addr.eq(act_write.payload.addr),
                         port.data.eq(act_write.payload.data),
                         port.en.eq(Mux(act_write.valid, act_write.payload.mask, 0))]
        for load, buffer in loads:
            port = buffer.write_port()
            m.d.comb += [
                load.ready.eq(1),
                port.addr.eq(load.payload.addr), port.data.eq(load.payload.data), port.en.eq(load.valid),
            ]

        m.submodules.compute = compute = _COMPUTE[cfg.dataflow](cfg)
        m.submodules.drain = drain = Drain(cfg, compute.tile.payload.shape())
        wiring.connect(m, wiring.flipped(self.cmd), compute.cmd)
        m.d.comb += compute.conv_geometry.eq(self.conv_geometry)
        wiring.connect(m, compute.tile, drain.tile)
        wiring.connect(m, drain.result, wiring.flipped(self.result))
        m.d.comb += compute.release.eq(drain.release)

        operand_reads = []
        if single_port:
            # one port each: a compute read takes the cycle, a load waits for the next free one
            for name, load, depth in (("act", act_write, cfg.act_depth),
                                      ("weight", self.weight_load, cfg.weight_depth)):
                m.submodules[f"{name}_buffer"] = buffer = SinglePortBuffer(load.payload.shape(), _depth(depth))
                wiring.connect(m, load if name == "act" else wiring.flipped(load), buffer.load)
                m.d.comb += [buffer.read_addr.eq(getattr(compute, f"{name}_addr")),
                             buffer.read_en.eq(getattr(compute, f"{name}_read")),
                             getattr(compute, f"{name}_data").eq(buffer.read_data)]
        else:
            # (the ports' names, act_read and weight_read, are what verif.activity finds in a waveform)
            act_read = act_buffer.read_port()
            weight_read = weight_buffer.read_port()
            operand_reads = [
                act_read.addr.eq(compute.act_addr), compute.act_data.eq(act_read.data),
                weight_read.addr.eq(compute.weight_addr), compute.weight_data.eq(weight_read.data),
            ]
        acc_write = acc_buffer.write_port()
        acc_rmw_read = acc_buffer.read_port(transparent_for=(acc_write,))
        acc_drain_read = acc_buffer.read_port()
        param_read = param_buffer.read_port()
        m.d.comb += operand_reads + [
            acc_rmw_read.addr.eq(compute.acc_rd_addr), compute.acc_rd_data.eq(acc_rmw_read.data),
            acc_write.addr.eq(compute.acc_wr_addr), acc_write.data.eq(compute.acc_wr_data),
            acc_write.en.eq(compute.acc_wr_en),
            acc_drain_read.addr.eq(drain.acc_addr), acc_drain_read.en.eq(drain.acc_en),
            drain.acc_data.eq(acc_drain_read.data),
            param_read.addr.eq(drain.param_addr), param_read.en.eq(drain.param_en),
            drain.param_data.eq(param_read.data),
        ]

        m.d.comb += self.idle.eq(~self.cmd.valid & ~compute.busy & ~drain.busy)
        m.d.comb += [
            self.events.busy.eq(~self.idle),
            self.events.array.eq(compute.issued),
            self.events.act_read.eq(compute.act_read),
            self.events.act_write.eq(act_write.valid & act_write.ready),
            self.events.macs_gated.eq(compute.macs_gated),
            self.events.rf_reads.eq(compute.rf_reads),
            self.events.rf_writes.eq(compute.rf_writes),
            self.events.noc_transfers.eq(compute.noc_transfers),
            self.events.weight_read.eq(compute.weight_read),
            self.events.acc_read.eq(compute.acc_rmw_read + drain.acc_read),
            self.events.acc_write.eq(compute.acc_wr_en),
            self.events.param_read.eq(drain.param_en),
            self.events.stall_output.eq(self.result.valid & ~self.result.ready),
        ]
        with m.If(~self.idle):
            m.d.sync += self.perf_cycles.eq(self.perf_cycles + 1)
        with m.If(compute.issued):
            m.d.sync += self.perf_issued.eq(self.perf_issued + 1)
        return m

    def _act_writes(self, m):
        """The activation buffer's writes: stored rows first, then LOADs (all lanes). Returns their stream."""
        writes = stream.Signature(act_write_layout(self.cfg)).create()
        store, load = self.act_store, self.act_load
        with m.If(store.valid):
            m.d.comb += writes.payload.eq(store.payload)
        with m.Else():
            m.d.comb += [writes.payload.addr.eq(load.payload.addr), writes.payload.data.eq(load.payload.data),
                         writes.payload.mask.eq(-1)]
        m.d.comb += [writes.valid.eq(store.valid | load.valid), store.ready.eq(writes.ready),
                     load.ready.eq(writes.ready & ~store.valid)]
        return writes
