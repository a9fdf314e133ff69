"""Decode: the checks an instruction's own fields settle, and the vector unit's command a POOL or ADD describes."""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .isa import ErrorCode, Opcode, WaitUnit, instruction_layout, operands_layout
from .layouts import StoreTarget, conv_geometry_layout, store_setup_layout, store_words, vec_command_layout
from .pipeline import delayed

__all__ = ["Decoder", "operands"]


def operands(instruction, opcode, cfg):
    """The operand fields of ``opcode`` in ``instruction`` (a view of instruction_layout(cfg))."""
    layout = operands_layout(cfg, opcode)
    return data.View(layout, instruction.operands[:layout.size])


class Decoder(wiring.Component):
    """Judges an instruction by its fields alone, and builds the vector unit's command of a POOL or ADD.

    A LOAD is judged by :class:`~tessera.hw.controller_load.LoadAssembler` (and reported after its data words),
    a GEMM by :func:`~tessera.hw.controller_gemm.gemm_error` (its checks take a cycle or two).

    Attributes
    ----------
    instruction : In(instruction_layout(cfg))
    pool_geometry : In(conv_geometry_layout())
        The geometry POOL_SETUP set: zero before the first.
    store_setup : In(store_setup_layout())
        What STORE_SETUP set: zero before the first (a POOL stored into the activation buffer keeps a copy).
    in_program : In(1)
        The instruction comes from a running program (a RUN there is rejected: programs do not nest).
    error : Out(8)
        Why the instruction is rejected: an ErrorCode, 0 if it is not (or is a LOAD or GEMM), save for where a
        POOL or ADD stores its result.
    store_error : Out(8)
        What is wrong with where a POOL or ADD stores its result (0 for any other instruction), three cycles
        after ``take``: its products, then its sums, then its comparisons are registered, as they are a long path
        in an ECP5's logic (the ULX3S build's critical one, from the instruction through the decode into the state
        machine, then through the products alone, then through the sums and comparisons).
    take : In(1)
        The instruction is being decoded: take its vector command if it is a POOL or ADD, even a rejected one
        (the controller queues only the others).
    vec_command : Out(vec_command_layout(cfg))
        The vector command taken last; the fields one kind of command does not use keep their earlier value.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "instruction": In(instruction_layout(cfg)),
            "pool_geometry": In(conv_geometry_layout()),
            "store_setup": In(store_setup_layout()),
            "in_program": In(1),
            "error": Out(8),
            "store_error": Out(8),
            "take": In(1),
            "vec_command": Out(vec_command_layout(cfg)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        opcode = self.instruction.opcode
        setup = operands(self.instruction, Opcode.CONV_SETUP, cfg)
        pool = operands(self.instruction, Opcode.POOL, cfg)
        add = operands(self.instruction, Opcode.ADD, cfg)
        run = operands(self.instruction, Opcode.RUN, cfg)
        store = operands(self.instruction, Opcode.STORE_SETUP, cfg)
        no_vector = int(cfg.vec_depth == 0)
        empty_geometry = ((setup.in_h == 0) | (setup.in_w == 0) | (setup.out_w == 0) | (setup.stride == 0)
                          | (setup.channel_blocks == 0) | (setup.kernel_h == 0) | (setup.kernel_w == 0))
        # a constant comparison fails the lint gate: compare only where x_base can be out of range
        pool_out_of_range = pool.x_base >= cfg.vec_depth if 0 < cfg.vec_depth < (1 << 16) else 0

        pool_words = self._pool_words(m, pool)
        pool_store_error, add_store_error = self._store_errors(m, pool, add, pool_words)
        m.d.sync += self.store_error.eq(0)

        with m.Switch(opcode):
            with m.Case(Opcode.NOP, Opcode.LOAD, Opcode.GEMM, Opcode.READ_COUNTERS, Opcode.CLEAR_COUNTERS):
                pass   # nothing to judge here
            with m.Case(Opcode.WAIT):
                with m.If(operands(self.instruction, Opcode.WAIT, cfg).unit > WaitUnit.VECTOR):
                    m.d.comb += self.error.eq(ErrorCode.BAD_SHAPE)
            with m.Case(Opcode.CONV_SETUP):
                with m.If(empty_geometry):
                    m.d.comb += self.error.eq(ErrorCode.BAD_SHAPE)
            with m.Case(Opcode.POOL_SETUP):
                with m.If(no_vector | empty_geometry):
                    m.d.comb += self.error.eq(ErrorCode.BAD_SHAPE)
            with m.Case(Opcode.VEC_SETUP):
                if no_vector:
                    m.d.comb += self.error.eq(ErrorCode.BAD_SHAPE)
            with m.Case(Opcode.POOL):
                # before any POOL_SETUP the geometry is all zero: its loops would never end
                with m.If(no_vector | (pool.m == 0) | (self.pool_geometry.kernel_h == 0)):
                    m.d.comb += self.error.eq(ErrorCode.BAD_SHAPE)
                with m.Elif(pool_out_of_range):
                    m.d.comb += self.error.eq(ErrorCode.OUT_OF_RANGE)
                with m.Else():   # (so that without a vector unit the checks are not built at all)
                    m.d.sync += self.store_error.eq(pool_store_error)
            with m.Case(Opcode.ADD):
                with m.If(no_vector | (add.words == 0)):
                    m.d.comb += self.error.eq(ErrorCode.BAD_SHAPE)
                with m.Elif((add.a_base + add.words > cfg.vec_depth) | (add.b_base + add.words > cfg.vec_depth)):
                    m.d.comb += self.error.eq(ErrorCode.OUT_OF_RANGE)
                with m.Else():
                    m.d.sync += self.store_error.eq(add_store_error)
            with m.Case(Opcode.STORE_SETUP):
                # the lanes a GEMM's row or a POOL's pixel may write are judged with the command
                with m.If((store.lanes == 0) | (store.lane >= max(cfg.rows, 4))):
                    m.d.comb += self.error.eq(ErrorCode.BAD_SHAPE)
            with m.Case(Opcode.RUN):
                if cfg.program_depth == 0:
                    m.d.comb += self.error.eq(ErrorCode.BAD_PROGRAM)
                else:
                    with m.If(self.in_program | (run.words == 0) | (run.base + run.words > cfg.program_depth)):
                        m.d.comb += self.error.eq(ErrorCode.BAD_PROGRAM)
            with m.Default():
                m.d.comb += self.error.eq(ErrorCode.ILLEGAL_OPCODE)

        entry = self.vec_command
        with m.If(opcode == Opcode.POOL):   # (its product is a cycle old: kept from DECODE on, as the instruction)
            m.d.sync += entry.words.eq(pool_words)
        with m.If(self.take & (opcode == Opcode.POOL)):
            m.d.sync += [entry.op.eq(0), entry.a_base.eq(pool.x_base), entry.count.eq(pool.m),
                         entry.out_y.eq(pool.out_y), entry.out_x.eq(pool.out_x), entry.store.eq(pool.store),
                         entry.d_base.eq(pool.d_base), entry.lane.eq(self.store_setup.lane),
                         entry.lanes.eq(self.store_setup.lanes), entry.stride.eq(self.store_setup.stride)]
        with m.If(self.take & (opcode == Opcode.ADD)):
            m.d.sync += [entry.op.eq(1), entry.a_base.eq(add.a_base), entry.b_base.eq(add.b_base),
                         entry.count.eq(add.words), entry.words.eq(add.words), entry.store.eq(add.store),
                         entry.d_base.eq(add.d_base)]
        return m

    def _pool_words(self, m, pool):
        """A POOL's result words, ``m`` pixels of ``channel_blocks`` words each, a cycle after DECODE: registered,
        as are all products here (the instruction is steady from DECODE on; see ``_store_errors``)."""
        return delayed(m, pool.m * self.pool_geometry.channel_blocks, 1, name="pool_words")

    def _store_errors(self, m, pool, add, pool_words):
        """The errors of a POOL's and an ADD's ``store``: a pool stores into the vector buffer one word per result
        word, or into the activation buffer pixel by pixel as STORE_SETUP lays them out; an add only into the
        vector buffer (its words are no pixels)."""
        cfg = self.cfg
        pool_error, add_error = Signal(8), Signal(8)
        setup, blocks = self.store_setup, self.pool_geometry.channel_blocks
        # the products are registered and the sums and comparisons after them registered a cycle later
        # (store_error): all in one cycle, 16 x 16-bit multiplies in logic, they measured 20.6 ns on the ECP5. At
        # full width: a wrapped product would pass the range check.
        spread = delayed(m, (pool.m - 1) * setup.stride, 1, name="pool_spread")
        # and the sum a cycle after its product: the sum and the comparison in one cycle were the 16x8 ULX3S
        # build's critical path at 71.9 MHz (15.5 ns, 45 logic levels)
        pool_act_end = delayed(m, pool.d_base + spread + store_words(cfg.rows, setup.lane, setup.lanes), 1,
                               name="pool_act_end")
        with m.Switch(pool.store):
            with m.Case(StoreTarget.ACT):
                with m.If((setup.lanes == 0) | (setup.lane >= cfg.rows) | (((setup.lanes + 3) >> 2) != blocks)):
                    m.d.comb += pool_error.eq(ErrorCode.BAD_SHAPE)
                with m.Elif(pool_act_end > cfg.act_depth):
                    m.d.comb += pool_error.eq(ErrorCode.OUT_OF_RANGE)
            with m.Case(StoreTarget.VEC):
                with m.If(pool.d_base + pool_words > cfg.vec_depth):
                    m.d.comb += pool_error.eq(ErrorCode.OUT_OF_RANGE)
            with m.Case(3):
                m.d.comb += pool_error.eq(ErrorCode.BAD_SHAPE)
        with m.Switch(add.store):
            with m.Case(StoreTarget.ACT, 3):
                m.d.comb += add_error.eq(ErrorCode.BAD_SHAPE)
            with m.Case(StoreTarget.VEC):
                with m.If(add.d_base + add.words > cfg.vec_depth):
                    m.d.comb += add_error.eq(ErrorCode.OUT_OF_RANGE)
        return pool_error, add_error
