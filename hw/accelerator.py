"""The Tessera device: controller, compute core, counters and host link behind two 32-bit streams."""

from amaranth.hdl import Module, Signal, Value, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .controller import Controller
from .core import GemmCore
from .counters import PerfCounters
from .host_link import PacketArbiter, ResultPacketiser
from .isa import COUNTERS, LINK_WIDTH
from .layouts import result_rows_shape
from .pipeline import delayed
from .vector import VectorUnit
from .writeback import ResultRouter

__all__ = ["Accelerator"]


class Accelerator(wiring.Component):
    """A complete accelerator for one configuration.

    The host sends instructions and data on ``host_in`` and receives RESULT, VECTOR, COUNTERS and ERROR packets on
    ``host_out`` (:mod:`tessera.hw.isa`); the same two streams are what the FPGA's UART link carries.

    Attributes
    ----------
    host_in : In(stream of 32-bit words)
    host_out : Out(stream of 32-bit words)
    """

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "host_in": In(stream.Signature(unsigned(LINK_WIDTH))),
            "host_out": Out(stream.Signature(unsigned(LINK_WIDTH))),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.controller = controller = Controller(cfg)
        m.submodules.core = core = GemmCore(cfg)
        m.submodules.router = router = ResultRouter(cfg)
        m.submodules.packetiser = packetiser = ResultPacketiser(cfg, result_rows_shape(cfg))
        has_vector = cfg.vec_depth > 0
        m.submodules.arbiter = arbiter = PacketArbiter(3 if has_vector else 2)

        wiring.connect(m, wiring.flipped(self.host_in), controller.host_in)
        for name in ("act_load", "weight_load", "param_load", "cmd"):
            wiring.connect(m, getattr(controller, name), getattr(core, name))
        m.d.comb += core.conv_geometry.eq(controller.conv_geometry)
        # each command's rows go to the host, or stay on chip in the activation buffer
        wiring.connect(m, controller.result_rows, router.descriptors)
        wiring.connect(m, core.result, router.result)
        wiring.connect(m, router.packet_rows, packetiser.rows)
        wiring.connect(m, router.packet_result, packetiser.result)
        # Results first: they free accumulator halves, and the core's progress depends on them.
        wiring.connect(m, packetiser.packet, arbiter.sources[0])
        wiring.connect(m, controller.packet, arbiter.sources[1])
        wiring.connect(m, arbiter.host_out, wiring.flipped(self.host_out))

        vec_completed = vec_busy = vec_reads = vec_writes = 0
        if has_vector:
            m.submodules.vector = vector = VectorUnit(cfg)
            wiring.connect(m, controller.vec_load, vector.load)
            wiring.connect(m, router.vec_store, vector.store_in)
            self._merge_act_stores(m, router.act_store, vector.act_store, core.act_store)
            wiring.connect(m, controller.vec_cmd, vector.cmd)
            wiring.connect(m, vector.packet, arbiter.sources[2])
            m.d.comb += [vector.geometry.eq(controller.pool_geometry), vector.add_params.eq(controller.add_params),
                         controller.vec_idle.eq(vector.idle)]
            vec_completed, vec_busy, vec_reads = vector.completed, vector.busy, vector.reads
            vec_writes = vector.writes
        else:
            wiring.connect(m, router.act_store, core.act_store)
            m.d.comb += [controller.vec_idle.eq(1), router.vec_store.ready.eq(1)]

        completed, vector_completed = Signal(32), Signal(32)
        # a compute command is complete once its last row (result word) has gone, to the host or into a buffer;
        # the completions are registered before the counts (a stored row's last write into the 32-bit count was
        # the 16x8 ULX3S build's critical path, 16.1 ns): a WAIT sees them a cycle later
        core_done = delayed(m, router.completed, 1, name="core_done")
        vec_done = delayed(m, Value.cast(vec_completed), 1, name="vec_done")
        m.d.sync += [completed.eq(completed + core_done + vec_done), vector_completed.eq(vector_completed + vec_done)]
        m.d.comb += [controller.completed.eq(completed), controller.vec_completed.eq(vector_completed),
                     controller.core_idle.eq(core.idle)]

        if cfg.counters:
            widths = {"acc_reads": 2, "commands": 2,
                      **{name: len(core.events[name]) for name in ("macs_gated", "rf_reads", "rf_writes",
                                                                   "noc_transfers")}}
            m.submodules.counters = counters = PerfCounters({name: widths.get(name, 1) for name, _ in COUNTERS})
            events = core.events
            inc = counters.increment
            m.d.comb += [
                inc.cycles.eq(1),
                inc.busy_cycles.eq(events.busy),
                inc.stall_input_cycles.eq(controller.starved),
                inc.stall_output_cycles.eq(self.host_out.valid & ~self.host_out.ready),
                inc.array_cycles.eq(events.array),
                inc.commands.eq(router.completed + vec_completed),
                inc.act_reads.eq(events.act_read),
                inc.act_writes.eq(events.act_write),
                inc.weight_reads.eq(events.weight_read),
                inc.weight_writes.eq(core.weight_load.valid & core.weight_load.ready),
                inc.acc_reads.eq(events.acc_read),
                inc.acc_writes.eq(events.acc_write),
                inc.param_reads.eq(events.param_read),
                inc.param_writes.eq(core.param_load.valid & core.param_load.ready),
                inc.link_words_in.eq(self.host_in.valid & self.host_in.ready),
                inc.link_words_out.eq(self.host_out.valid & self.host_out.ready),
                inc.macs_gated.eq(events.macs_gated),
                inc.rf_reads.eq(events.rf_reads),
                inc.rf_writes.eq(events.rf_writes),
                inc.noc_transfers.eq(events.noc_transfers),
                inc.vec_cycles.eq(vec_busy),
                inc.vec_reads.eq(vec_reads),
                inc.vec_writes.eq(vec_writes),
                inc.program_reads.eq(controller.program_read),
                counters.clear.eq(controller.clear_counters),
                controller.counters.eq(counters.values),
            ]
        return m

    @staticmethod
    def _merge_act_stores(m, first, second, sink):
        """Stored writes into the activation buffer: ``first``'s, else ``second``'s. (A stream keeps its write
        valid until taken, so ``second``'s waits, never lost, while ``first`` cuts in.)"""
        with m.If(first.valid):
            wiring.connect(m, first, sink)
        with m.Else():
            wiring.connect(m, second, sink)
