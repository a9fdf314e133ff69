"""The queues between the controller and the units it commands, and the count of commands in flight."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import (
    command_layout,
    conv_geometry_layout,
    result_descriptor_layout,
    result_rows,
    store_setup_layout,
    vec_command_layout,
)

__all__ = ["CommandQueues", "COMMAND_QUEUE"]

#: Compute commands the controller queues ahead of the one the core runs.
COMMAND_QUEUE = 4
#: Row counts of commands whose RESULT packet has not begun (a command leaves its own queue before that).
_RESULT_QUEUE = 16
_VEC_QUEUE = 3   # a buffered FIFO of depth 2 has a zero-width address, which fails the lint gate


class CommandQueues(wiring.Component):
    """Holds issued commands until the compute core or the vector unit takes them.

    While commands wait here, the controller goes on to the next instructions: loads of the next tile overlap
    compute of the current one.

    Attributes
    ----------
    gemm : In(stream of command_layout(cfg))
        A compute command; taken once both its queue and the row counts' have room.
    vector : In(stream of vec_command_layout(cfg))
        A command of the vector unit.
    cmd : Out(stream of command_layout(cfg))
        To the compute core.
    store_setup : In(store_setup_layout())
        Where a store command issued now writes its rows (each command's descriptor keeps a copy).
    filter_rows : In(out_w of conv_geometry_layout())
        Row-stationary arrays: the rows of each filter of a command issued now (the geometry's ``out_w``).
    result_rows : Out(stream of result_descriptor_layout(cfg))
        Each compute command's result rows and where they go, in order, for the result path.
    vec_cmd : Out(stream of vec_command_layout(cfg))
        To the vector unit.
    completed : In(32)
        Commands (GEMM, POOL, ADD) completed since reset.
    vec_completed : In(32)
        Of them, the vector unit's (POOL, ADD).
    outstanding : Out(8)
        Commands issued and not completed, a cycle old.
    outstanding_array, outstanding_vec : Out(8)
        Of them, the GEMMs and the vector commands.
    core_idle, vec_idle : In(1)
    core_done, vec_done : Out(1)
        Nothing queued for the core (the vector unit) nor running in it.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        command = command_layout(cfg)
        super().__init__({
            "gemm": In(stream.Signature(command)),
            "vector": In(stream.Signature(vec_command_layout(cfg))),
            "cmd": Out(stream.Signature(command)),
            "store_setup": In(store_setup_layout()),
            "filter_rows": In(conv_geometry_layout()["out_w"].shape),
            "result_rows": Out(stream.Signature(result_descriptor_layout(cfg))),
            "vec_cmd": Out(stream.Signature(vec_command_layout(cfg))),
            "completed": In(32),
            "vec_completed": In(32),
            "outstanding": Out(8),
            "outstanding_array": Out(8),
            "outstanding_vec": Out(8),
            "core_idle": In(1),
            "vec_idle": In(1),
            "core_done": Out(1),
            "vec_done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.commands = commands = fifo.SyncFIFOBuffered(width=len(self.gemm.payload.as_value()),
                                                                 depth=COMMAND_QUEUE)
        m.submodules.row_counts = row_counts = fifo.SyncFIFOBuffered(
            width=len(self.result_rows.payload.as_value()), depth=_RESULT_QUEUE)
        m.submodules.vec_commands = vec_commands = fifo.SyncFIFOBuffered(
            width=len(self.vector.payload.as_value()), depth=_VEC_QUEUE)

        # a compute command goes into two queues at once: its own, and its row count's
        gemm_issued = self.gemm.valid & self.gemm.ready
        m.d.comb += [
            self.gemm.ready.eq(commands.w_rdy & row_counts.w_rdy),
            commands.w_en.eq(gemm_issued), commands.w_data.eq(self.gemm.payload.as_value()),
            row_counts.w_en.eq(gemm_issued),
        ]
        descriptor = Signal(result_descriptor_layout(self.cfg))
        command = self.gemm.payload
        m.d.comb += [
            descriptor.rows.eq(Mux(command.raw, result_rows(command) << 2, result_rows(command))),
            descriptor.store.eq(command.store), descriptor.base.eq(command.s_base),
            descriptor.lane.eq(self.store_setup.lane), descriptor.lanes.eq(self.store_setup.lanes),
            descriptor.stride.eq(self.store_setup.stride), descriptor.lane_stride.eq(self.store_setup.lane_stride),
            row_counts.w_data.eq(descriptor),
        ]
        if self.cfg.dataflow == "rs":
            m.d.comb += descriptor.filter_rows.eq(self.filter_rows)
        wiring.connect(m, commands.r_stream, wiring.flipped(self.cmd))
        wiring.connect(m, row_counts.r_stream, wiring.flipped(self.result_rows))
        wiring.connect(m, wiring.flipped(self.vector), vec_commands.w_stream)
        wiring.connect(m, vec_commands.r_stream, wiring.flipped(self.vec_cmd))
        m.d.comb += [self.core_done.eq(~commands.r_rdy & self.core_idle),
                     self.vec_done.eq(~vec_commands.r_rdy & self.vec_idle)]

        issued, vec_issued = Signal(32), Signal(32)
        vec_issued_now = self.vector.valid & self.vector.ready
        with m.If(gemm_issued | vec_issued_now):
            m.d.sync += issued.eq(issued + 1)
        with m.If(vec_issued_now):
            m.d.sync += vec_issued.eq(vec_issued + 1)
        # fewer commands are in flight than the queues hold, so 8 bits of the difference are exact
        outstanding, outstanding_vec = issued - self.completed, vec_issued - self.vec_completed
        m.d.sync += [self.outstanding.eq(outstanding), self.outstanding_vec.eq(outstanding_vec),
                     self.outstanding_array.eq(outstanding - outstanding_vec)]
        return m
