"""The checks of a GEMM instruction: whether the core can run its command, and whether the command reads only
words inside the buffers.

These add logic to the controller's own module rather than being a component of their own: the FPGA flows map
the multiplies of ``*.controller`` to logic, not to DSP blocks (:func:`tessera.fpga.build.lut_multiplier_script`).
"""

from typing import NamedTuple

from amaranth.hdl import Mux, Signal, Value

from .array_rs import rs_mapping
from .isa import ErrorCode
from .layouts import MAX_DEPTHWISE_STRIDE, MAX_KERNEL, StoreTarget, result_rows, rs_filter_entries, store_words
from .pipeline import delayed, timing_registers

__all__ = ["gemm_error"]


class _Reads(NamedTuple):
    """What one dataflow's command reads, and whether that dataflow runs it at all. A conv command reads no
    ``act_words``: it reads a feature map whose extent the geometry gives, and its reads wrap, never hang."""
    act_words: Value | int
    weight_words: Value | int
    unsupported: Value | int
    params_out_of_range: Value | int = 0   # a command reads one parameter word (rs: one per filter)


def gemm_error(m, cfg, command, geometry, store_setup, platform):
    """Add the checks of a GEMM to ``m``; return its ErrorCode (0: the core may run it).

    Parameters
    ----------
    m : Module
        The controller's module.
    cfg : AcceleratorConfig
    command : View of command_layout(cfg)
        The GEMM's operands, steady from DECODE on.
    geometry : View of conv_geometry_layout()
        The convolution geometry CONV_SETUP set: zero before the first.
    store_setup : View of store_setup_layout()
        Where STORE_SETUP said stored rows go: zero before the first.
    platform
        The result is valid one cycle after DECODE on an iCE40, three cycles after it everywhere else.
    """
    dataflow_reads = {"ws": _weight_stationary, "os": _output_stationary, "rs": _row_stationary}[cfg.dataflow]
    reads = dataflow_reads(m, cfg, command, geometry)
    max_rows = cfg.rows if cfg.dataflow == "os" else cfg.acc_half_depth
    # compared only where the field can exceed the limit (a constant comparison fails the lint gate)
    too_many_rows = command.m > max_rows if max_rows < (1 << len(command.m)) - 1 else 0
    # a conv command before any CONV_SETUP would run on an all-zero geometry
    no_geometry = command.conv & (geometry.kernel_h == 0)

    # a stored command's rows: the last starts `stride` words on per row and covers `store_words` words of its
    # target (rows lanes each in the activation buffer, 4 in the vector buffer). On rs, the rows are the filters'
    # output columns, `stride` words apart, each lane a word `lane_stride` on, and the filters step through lanes.
    # Its products are registered a cycle before the sums (a 16 x 16-bit multiply in logic took 20.6 ns on the
    # ECP5 alone; see hw.controller_decode), except on an iCE40.
    def product(name, value):
        return _registered(m, name, value) if timing_registers(platform) else value
    # The base and a row's words are summed beside the products, so one adder is left after them: from the
    # instruction through three adders into the end was the 16x8 ULX3S build's critical path at 68.75 MHz.
    if cfg.dataflow == "rs":
        spread = (product("column_spread", (geometry.out_w - 1) * store_setup.stride)
                  + product("lane_spread", (store_setup.lanes - 1) * store_setup.lane_stride))
        row_lanes = command.filters
    else:
        spread = product("row_spread", (result_rows(command) - 1) * store_setup.stride)
        row_lanes = store_setup.lanes
    to_act, to_vec = command.store == StoreTarget.ACT, command.store == StoreTarget.VEC
    act_reach = product("act_reach", command.s_base + store_words(cfg.rows, store_setup.lane, row_lanes))
    vec_reach = product("vec_reach", command.s_base + store_words(4, store_setup.lane, row_lanes))
    act_end = _registered(m, "act_store_end", spread + act_reach)
    vec_end = _registered(m, "vec_store_end", spread + vec_reach)
    bad_target = ((command.store > StoreTarget.VEC) | (to_act & (store_setup.lane >= cfg.rows))
                  | (to_vec & ((store_setup.lane >= 4) | int(cfg.vec_depth == 0))))
    bad_store = (command.store != StoreTarget.HOST) & (command.raw | (store_setup.lanes == 0) | bad_target
                                                        | (store_setup.lanes > cfg.cols))

    error = Signal(8)
    with m.If((command.m == 0) | (command.k == 0) | too_many_rows | reads.unsupported | no_geometry | bad_store):
        m.d.comb += error.eq(ErrorCode.BAD_SHAPE)
    with m.Elif((command.x_base + reads.act_words > cfg.act_depth)
                | (command.w_base + reads.weight_words > cfg.weight_depth)
                | (command.p_base >= cfg.param_depth) | reads.params_out_of_range
                | (to_act & (act_end > cfg.act_depth)) | (to_vec & (vec_end > cfg.vec_depth))):
        m.d.comb += error.eq(ErrorCode.OUT_OF_RANGE)
    # registered too, so it is valid three cycles after DECODE (GEMM_PRODUCTS and GEMM_CHECK wait): from the
    # instruction through the checks into the command queues was the 16x8 ULX3S build's critical path at 86.7 MHz.
    # Not on an iCE40 (no waiting states either), whose logic cells are what runs short there.
    return _registered(m, "gemm_error", error) if timing_registers(platform) else error


def _registered(m, name, value):
    # The words a command reads are products of its fields: registered every cycle (the instruction is steady
    # from DECODE on), so the multiplies stay off the path into the state machine. At the product's full width:
    # a wrapped count would pass the range check.
    return delayed(m, value, 1, name=name)


def _weight_stationary(m, cfg, command, geometry):
    # a sparse command stores a header word before each fold (in its two low lanes, so cols >= 2), and exists
    # for conv commands only; a reduce command for the others. A depthwise command's folds are `taps` words each.
    sparse_unsupported = command.sparse & ~command.conv if cfg.cols >= 2 else command.sparse
    depthwise = command.taps != 0
    fold_words = Mux(depthwise, command.taps, cfg.rows + command.sparse)
    return _Reads(act_words=_registered(m, "act_words", Mux(command.conv, 0, command.k * command.m)),
                  weight_words=_registered(m, "weight_words", command.k * fold_words),
                  unsupported=(sparse_unsupported | (command.reduce & command.conv)
                               | (depthwise & _depthwise_unsupported(m, cfg, command, geometry))))


def _depthwise_unsupported(m, cfg, command, geometry):
    """Whether a depthwise command cannot run: it needs a conv command of its own kind (not sparse or reduce), a
    lane group inside the word, taps that fit the rows, and a geometry of stride 1 or 2 and a kernel one wide
    whose rows hold at least one output each (so a fold always ends), its first position (``out_x`` strides
    along) inside a row."""
    groups = cfg.rows // cfg.cols
    # compared only where the field can exceed the limit (a constant comparison fails the lint gate)
    bad_group = command.lane_group >= groups if groups < (1 << len(command.lane_group)) else 0
    too_many_taps = command.taps > cfg.rows if cfg.rows < MAX_KERNEL else 0
    # registered: the geometry is set long before the GEMM that reads it
    not_one_wide, stride_2 = Signal(), Signal()
    m.d.sync += [not_one_wide.eq((geometry.kernel_w != 1) | (geometry.stride == 0)
                                   | (geometry.stride > MAX_DEPTHWISE_STRIDE)),
                 stride_2.eq(geometry.stride == 2)]
    first_position = Mux(stride_2, command.out_x << 1, command.out_x)
    return (~command.conv | command.sparse | command.reduce | bad_group | too_many_taps | not_one_wide
            | (geometry.out_w < command.taps) | (first_position >= geometry.out_w))


def _output_stationary(m, cfg, command, geometry):
    # os steps through gathered folds one channel at a time: k must be exactly the folds' channels, or the
    # gather and the steps would disagree (and a missing fold would never arrive)
    folds = Signal(16)   # registered: the geometry is set long before the GEMM that reads it
    m.d.sync += folds.eq(geometry.kernel_h * geometry.kernel_w * geometry.channel_blocks)
    return _Reads(act_words=Mux(command.conv, 0, command.k), weight_words=command.k,
                  unsupported=((command.conv & (command.k != folds * cfg.rows)) | command.sparse | command.reduce
                               | (command.taps != 0)))


def _row_stationary(m, cfg, command, geometry):
    # rs runs conv commands only (a fully connected layer is a 1x1 conv), with filter chunks no taller than the
    # array, and 1 to rs_filters filters whose output columns are its m result rows. out_x counts the chunks, each
    # of one filter row at least, so at most MAX_KERNEL of them. Each pass reads q * KW weight words per filter
    # (q: channels per PE).
    channels_per_pe = Signal(range(cfg.rows + 1))
    with m.Switch(geometry.kernel_h):
        for kh in range(1, min(cfg.rows, MAX_KERNEL) + 1):
            with m.Case(kh):
                m.d.comb += channels_per_pe.eq(rs_mapping(cfg.rows, kh)[1])
    # the geometry is set by CONV_SETUP, long before the GEMM that reads it: its product is registered
    per_filter = _registered(m, "per_filter", rs_filter_entries(channels_per_pe, geometry.kernel_w))
    chunks = Mux(command.out_x == 0, 1, command.out_x)
    # left out where they would compare with a constant (the lint gate): any kernel fits an array of MAX_KERNEL
    # rows or more, and a filters field whose largest value is rs_filters cannot hold too many
    too_tall = geometry.kernel_h > cfg.rows if cfg.rows < MAX_KERNEL else 0
    filters_limit = (1 << len(command.filters)) - 1
    too_many_filters = command.filters > cfg.rs_filters if cfg.rs_filters < filters_limit else 0
    return _Reads(act_words=0,
                  weight_words=_registered(m, "weight_words", command.k * chunks * command.filters * per_filter),
                  unsupported=(~command.conv | too_tall | (command.out_x > MAX_KERNEL) | command.sparse
                               | command.reduce | (command.taps != 0) | (command.filters == 0) | too_many_filters
                               | (command.m != command.filters * geometry.out_w)),
                  params_out_of_range=command.p_base + command.filters > cfg.param_depth)
