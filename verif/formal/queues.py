"""The queue contract: what goes in comes out once, in order, unchanged; nothing is taken out of an empty queue nor
put into a full one.

:func:`queue_contract` states it for any queue given its write and read beats: a count of the entries inside
(never above the capacity, never taken below zero) and one tracked entry, chosen freely, whose place in line is
counted down as entries leave before it and whose payload is compared when it leaves. Tracking any one entry
covers them all: the solver may pick each. :class:`CommandQueuesSpec` applies it to the controller's queues.
"""

from amaranth.asserts import AnySeq
from amaranth.hdl import Assert, Cover, Mux, Signal

from tessera.hw.controller_queues import CommandQueues
from tessera.hw.layouts import result_descriptor_layout

from .handshake import assert_stream, assume_stream
from .spec import FormalSpec, free, open_block

__all__ = ["queue_contract", "CommandQueuesSpec"]


def queue_contract(m, name, *, write, read, capacity, level=None, order=True):
    """Add the contract of one queue to ``m``.

    Parameters
    ----------
    write, read : (Value, Value)
        ``(beat, payload)`` of the queue's input and output: ``beat`` is high in a cycle an entry goes in (out).
    capacity : int
        Entries the queue holds; a write when it is full would be lost.
    level : Value, optional
        The queue's own count of its entries: asserted equal to the contract's, which lets k-induction close.
    order : bool
        Also track an entry to its exit (a bounded check: the entries' storage is not modelled in the induction).
    """
    write_beat, write_payload = write
    read_beat, read_payload = read
    inside = Signal(range(capacity + 2), name=f"{name}_inside")
    m.d.sync += inside.eq(inside + write_beat - read_beat)
    m.d.comb += Assert(~read_beat | (inside != 0), f"{name}: read from empty")
    m.d.comb += Assert(inside <= capacity, f"{name}: more entries than the capacity")
    with m.If(inside == capacity):
        m.d.comb += Assert(~write_beat | read_beat, f"{name}: written when full")
    if level is not None:
        m.d.comb += Assert(level == inside, f"{name}: its level differs from the entries inside")
    m.d.comb += Cover((inside == capacity) & read_beat, f"{name}: full, and read")
    if not order:
        return

    pick = Signal(name=f"{name}_pick")
    m.d.comb += pick.eq(AnySeq(1))
    tracking = Signal(name=f"{name}_tracking")
    done = Signal(name=f"{name}_done")
    ahead = Signal(range(capacity + 1), name=f"{name}_ahead")   # entries that leave before the tracked one
    tracked = Signal(len(write_payload), name=f"{name}_tracked")
    # the tracked entry: any one write, once
    with m.If(write_beat & pick & ~tracking & ~done):
        m.d.sync += [tracking.eq(1), tracked.eq(write_payload), ahead.eq(inside - read_beat)]
    with m.If(tracking & read_beat):
        with m.If(ahead == 0):
            m.d.comb += Assert(read_payload == tracked, f"{name}: an entry left changed or out of order")
            m.d.sync += [tracking.eq(0), done.eq(1)]
        with m.Else():
            m.d.sync += ahead.eq(ahead - 1)
    with m.If(tracking):
        m.d.comb += Assert(ahead < inside, f"{name}: an entry was lost")
    m.d.comb += Cover(done & (inside == 0), f"{name}: an entry tracked from write to read")


class CommandQueuesSpec(FormalSpec):
    """The controller's three queues (:class:`~tessera.hw.controller_queues.CommandQueues`): compute commands, their
    result descriptors (written together with the command) and vector commands, under any producer and consumer.

    Parameters
    ----------
    cfg : AcceleratorConfig
    order : bool
        Check order and payloads too (bounded), not only the counts (k-induction).
    """

    def __init__(self, cfg, *, order):
        self.cfg = cfg
        self.order = order

    def build(self, m, platform):
        queues = CommandQueues(self.cfg)
        body = open_block(m, "dut", queues, platform)   # so that the spec can read each FIFO's level
        for name in ("gemm", "vector"):
            assume_stream(m, getattr(queues, name), name)
        for name in ("cmd", "result_rows", "vec_cmd"):
            assert_stream(m, getattr(queues, name), name)
        for name in ("completed", "vec_completed", "core_idle", "vec_idle", "store_setup", "filter_rows"):
            free(m, getattr(queues, name))

        gemm, vector = queues.gemm, queues.vector
        gemm_beat = gemm.valid & gemm.ready
        # a command's result descriptor: its rows (m, one for a reduce command, or four byte rows per row for a raw
        # command), and whether and where they are stored, as STORE_SETUP said when it was issued
        descriptor = Signal(result_descriptor_layout(self.cfg))
        setup = queues.store_setup
        rows = Mux(gemm.payload.reduce, 1, gemm.payload.m)
        m.d.comb += [descriptor.rows.eq(Mux(gemm.payload.raw, rows << 2, rows)),
                     descriptor.store.eq(gemm.payload.store), descriptor.base.eq(gemm.payload.s_base),
                     descriptor.lane.eq(setup.lane), descriptor.lanes.eq(setup.lanes),
                     descriptor.stride.eq(setup.stride), descriptor.lane_stride.eq(setup.lane_stride)]
        if self.cfg.dataflow == "rs":
            m.d.comb += descriptor.filter_rows.eq(queues.filter_rows)
        result_rows = descriptor.as_value()
        vector_beat = vector.valid & vector.ready
        for name, write, read in (("commands", (gemm_beat, gemm.payload.as_value()), queues.cmd),
                                  ("row_counts", (gemm_beat, result_rows), queues.result_rows),
                                  ("vec_commands", (vector_beat, vector.payload.as_value()), queues.vec_cmd)):
            fifo = body.find_subfragment(name).origins[0]
            out = read.payload.as_value() if hasattr(read.payload, "as_value") else read.payload
            queue_contract(m, name, write=write, read=(read.valid & read.ready, out), capacity=fifo.depth,
                           level=fifo.level, order=self.order)
