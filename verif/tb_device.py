"""cocotb testbench of the whole device (``tessera_accel``): programs from the compiler over the host link.

Jobs come in ``TESSERA_TB`` as JSON, like :mod:`tessera.verif.tb_core`'s, plus ``"fuzz": N`` for the robustness test
and ``"layers"`` (GEMM ``[m, k, n]`` or conv shapes) for resident programs.
"""

import collections
import functools
import json
import random

import cocotb
import numpy as np

from tessera.hw.array_rs import rs_mapping
from tessera.hw.isa import COUNTERS, INSTRUCTION_WORDS, BufferId, ErrorCode, Opcode, result_row_words
from tessera.hw.layouts import StoreTarget, command_layout, rs_filter_entries, store_words
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import compile_conv, compile_gemm, raw_results
from tessera.sw_driver.isa_encode import disassemble, instruction, load, parse_packets, stored_program
from tessera.sw_driver.resident import compile_resident
from tessera.verif.cases import (
    random_chain,
    random_conv,
    random_depthwise_program,
    random_gemm,
    random_graph,
    random_instruction_stream,
)
from tessera.verif.core_model import run_program
from tessera.verif.streams import StreamEngine, StreamSink, StreamSource
from tessera.verif.tb_common import clock_and_reset, read_job


class DeviceTestbench:
    """The host link with random stalls on ``host_in`` and random backpressure on ``host_out``."""

    def __init__(self, dut, cfg, rng, *, stall, backpressure):
        self.dut, self.cfg = dut, cfg
        self.host_in = StreamSource(dut, "host_in", rng, stall=stall)
        self.host_out = StreamSink(dut, "host_out", rng, backpressure=backpressure)
        self.engine = StreamEngine(dut.clk, [self.host_in, self.host_out])

    async def reset(self):
        await clock_and_reset(self.dut)

    async def exchange(self, words, reply_words, *, max_cycles=3_000_000, what="program"):
        """Send ``words``; return the next ``reply_words`` words the device sends back."""
        first = len(self.host_out.received)
        self.host_in.send(int(w) for w in words)
        await self.engine.run_until(lambda: self.host_in.empty and len(self.host_out.received) >= first + reply_words,
                                    max_cycles=max_cycles, what=what)
        reply = self.host_out.received[first:]
        if len(reply) != reply_words:
            raise AssertionError(f"{what}: {len(reply)} reply words, expected {reply_words}")
        return np.array(reply, dtype=np.uint32)

    async def quiesce(self, quiet_cycles, *, max_cycles=3_000_000):
        """Run until every word is sent and nothing has come back for ``quiet_cycles``."""
        state = {"seen": len(self.host_out.received), "quiet": 0}

        def settled():
            if len(self.host_out.received) != state["seen"] or not self.host_in.empty:
                state["seen"], state["quiet"] = len(self.host_out.received), 0
            else:
                state["quiet"] += 1
            return state["quiet"] >= quiet_cycles
        await self.engine.run_until(settled, max_cycles=max_cycles, what="quiesce")

    async def run_gemm(self, x, w, bias, scale, y_zp, raw=False):
        """Compile, run, check bit-exact; return (program, counters). ``raw``: the commands return their int32
        accumulators (`raw_results`), checked against the golden model's."""
        cfg = self.cfg
        program = compile_gemm(cfg, x, w, bias, scale, y_zp)
        program = raw_results(cfg, program) if raw else program
        words = np.concatenate([program.words, instruction(cfg, Opcode.READ_COUNTERS)])
        packets = parse_packets(cfg, await self.exchange(words, program.reply_words(cfg) + 1 + len(COUNTERS)))
        assert not packets.errors, f"device reported errors: {packets.errors}"
        y = program.assemble(packets.results, cfg.cols)
        expected = (golden.gemm_acc_hw(x, w, cfg.multiplier) if raw else
                    golden.gemm_hw(x, w, bias, scale, y_zp, cfg.multiplier))
        bad = np.argwhere(y != expected)
        if len(bad):
            wrong = sorted({i for i, (m0, n0, rows) in enumerate(program.outputs)
                            for r, c in bad if m0 <= r < m0 + rows and n0 <= c < n0 + cfg.cols})
            raise AssertionError(f"{len(bad)} of {y.size} outputs differ, first at {bad[0]}; "
                                 f"commands {wrong} of {len(program.outputs)} ({program.outputs[wrong[0]]}); "
                                 f"got {packets.results[wrong[0]].tolist()}, want "
                                 f"{expected[program.outputs[wrong[0]][0]:][:program.outputs[wrong[0]][2]].tolist()}")
        return program, packets.counters[0]


def rs_expected_counters(cfg, words):
    """The data-movement counters a program must give on a row-stationary device, from its CONV_SETUP and GEMM
    instructions (see :mod:`tessera.hw.compute_rs`): per pass, ``p * q * KW`` filter entries load into every used PE;
    per output column every used PE does ``p * q * KW`` MACs (a filter entry and a psum read and a psum written
    each, the ifmap entry read once for the ``p`` filters) and takes ``q`` ifmap entries per input column, and
    each filter's column sums pass up the column's PEs; the activation buffer is read for input pixels inside
    the map."""
    counts, geometry = collections.Counter(), None
    for opcode, operands, _ in disassemble(cfg, words):
        if opcode == Opcode.CONV_SETUP:
            geometry = operands
        if opcode != Opcode.GEMM:
            continue
        g, p = geometry, operands["filters"]
        kh, kw, stride, steps = g["kernel_h"], g["kernel_w"], g["stride"], g["out_w"]
        sets, q = rs_mapping(cfg.rows, kh)
        used = sets * kh * cfg.cols                       # PEs of whole sets
        chunks = max(1, operands["out_x"])
        passes = operands["k"] * chunks
        entries = rs_filter_entries(q, kw)                # filter entries per filter and pass
        columns = kw + (steps - 1) * stride               # input columns a pass delivers
        counts["array_cycles"] += passes * steps * p * entries
        counts["weight_reads"] += passes * p * entries
        counts["rf_reads"] += passes * steps * entries * (2 * p + 1) * used
        counts["rf_writes"] += passes * (p * entries + columns * q + steps * p * entries) * used
        counts["noc_transfers"] += passes * steps * p * (used - cfg.cols)
        xs = np.arange(columns) - g["pad_left"]
        inside_x = np.count_nonzero((xs >= 0) & (xs < g["in_w"]))
        for chunk in range(chunks):
            ys = operands["out_y"] * stride - g["pad_top"] + chunk * kh + np.arange((cfg.cols - 1) * stride + kh)
            counts["act_reads"] += operands["k"] * inside_x * np.count_nonzero((ys >= 0) & (ys < g["in_h"]))
    return counts


def check_rs_counters(cfg, counters, expected):
    for name, value in expected.items():
        assert counters[name] == value, f"{name}: counted {counters[name]}, expected {value}; {counters}"


@cocotb.test()
async def device_gemm(dut):
    """Compiled GEMM programs over the host link, bit-exact, with counters that add up."""
    job, cfg = read_job()
    rng = np.random.default_rng(job["seed"])
    tb = DeviceTestbench(dut, cfg, random.Random(job["seed"]), stall=job["stall"], backpressure=job["backpressure"])
    await tb.reset()
    sent = commands = array_cycles = act_reads = 0
    rs_expected = collections.Counter()
    for index, (m, k, n) in enumerate(job["problems"]):
        # every other problem returns its int32 accumulators instead (raw commands: MatMulInteger)
        program, counters = await tb.run_gemm(*random_gemm(rng, m, k, n), raw=index % 2 == 1)
        sent += len(program.words) + INSTRUCTION_WORDS
        commands += len(program.outputs)
        folds = -(-k // cfg.rows)
        if cfg.dataflow == "rs":
            rs_expected.update(rs_expected_counters(cfg, program.words))
            array_cycles, act_reads = rs_expected["array_cycles"], rs_expected["act_reads"]
            check_rs_counters(cfg, counters, rs_expected)
        else:
            array_cycles += sum(rows * folds if cfg.dataflow == "ws" else k for _, _, rows in program.outputs)
            act_reads = array_cycles
        assert counters["link_words_in"] == sent, counters
        assert counters["commands"] == commands, counters
        assert counters["array_cycles"] == array_cycles, counters
        assert counters["act_reads"] == act_reads, counters
        dut._log.info("GEMM %dx%dx%d: %d commands, bit-exact; counters %s", m, k, n, len(program.outputs), counters)


@cocotb.test()
async def device_conv(dut):
    """Convolutions with on-chip sliding-window addressing: the input crosses the link once, bit-exact."""
    job, cfg = read_job()
    rng = np.random.default_rng(job["seed"])
    tb = DeviceTestbench(dut, cfg, random.Random(job["seed"]), stall=job["stall"], backpressure=job["backpressure"])
    await tb.reset()
    rs_expected = collections.Counter()
    for index, shape in enumerate(job["convs"]):
        operands, attrs, expected = random_conv(rng, **shape, multiplier=cfg.multiplier)
        program = compile_conv(cfg, *operands, **attrs)
        if index % 2:   # every other conv returns its int32 accumulators (raw commands: ConvInteger)
            program = raw_results(cfg, program)
            expected = golden.conv_acc_hw(operands[0][None], operands[1], **attrs, multiplier=cfg.multiplier)[0]
        words = np.concatenate([program.words, instruction(cfg, Opcode.READ_COUNTERS)])
        reply_words = program.reply_words(cfg) + 1 + len(COUNTERS)
        packets = parse_packets(cfg, await tb.exchange(words, reply_words, what=f"conv {shape}"))
        assert not packets.errors, f"device reported errors: {packets.errors}"
        y = program.assemble(packets.results, cfg.cols).T.reshape(expected.shape)
        bad = np.argwhere(y != expected)
        assert not len(bad), f"conv {shape}: {len(bad)} of {y.size} outputs differ, first at {bad[0]}"
        if cfg.dataflow == "rs":
            rs_expected.update(rs_expected_counters(cfg, program.words))
            check_rs_counters(cfg, packets.counters[0], rs_expected)
        dut._log.info("conv %s: %d commands, bit-exact", shape, len(program.outputs))


@cocotb.test()
async def device_depthwise(dut):
    """Random depthwise commands (and plain GEMMs among them) against the core's model, bit-exact: lane groups,
    taps, padding and spans of outputs that start and end part way along a row."""
    job, cfg = read_job()
    rng = np.random.default_rng(job["seed"])
    tb = DeviceTestbench(dut, cfg, random.Random(job["seed"]), stall=job["stall"], backpressure=job["backpressure"])
    await tb.reset()
    for case in range(job["cases"]):
        words, ms = random_depthwise_program(cfg, rng)
        reply = await tb.exchange(words, sum(1 + m * result_row_words(cfg) for m in ms), max_cycles=200_000,
                                 what=f"depthwise {case}")
        packets = parse_packets(cfg, reply)
        assert not packets.errors, f"depthwise {case}: device reported errors {packets.errors}"
        for i, (got, want) in enumerate(zip(packets.results, run_program(cfg, words), strict=True)):
            bad = np.argwhere(np.asarray(got) != want)
            assert not len(bad), f"depthwise {case}, command {i}: {len(bad)} of {want.size} differ, first {bad[0]}"
        dut._log.info("depthwise case %d: %d commands, bit-exact", case, len(ms))


@cocotb.test()
async def device_bench(dut):
    """One GEMM without stalls; writes the counters of the layer alone to ``report``."""
    job, cfg = read_job()
    rng = np.random.default_rng(job["seed"])
    tb = DeviceTestbench(dut, cfg, random.Random(job["seed"]), stall=0.0, backpressure=0.0)
    await tb.reset()
    (m, k, n), = job["problems"]
    program, counters = await tb.run_gemm(*random_gemm(rng, m, k, n))
    with open(job["report"], "w") as f:
        json.dump({"config": cfg.to_dict(), "m": m, "k": k, "n": n, "macs": program.macs,
                   "program_words": len(program.words), "counters": counters}, f)


@cocotb.test()
async def device_fuzz(dut):
    """Random instruction streams never hang the device: it keeps answering, its packets parse, and a correct
    program afterwards still computes the right answer."""
    job, cfg = read_job()
    rng = random.Random(job["seed"])
    tb = DeviceTestbench(dut, cfg, rng, stall=job["stall"], backpressure=job["backpressure"])
    await tb.reset()
    errors = 0
    for round_ in range(job["fuzz"]):
        first = len(tb.host_out.received)
        tb.host_in.send(random_instruction_stream(cfg, rng, 30))
        # Every word must be accepted and the device must fall silent: a truncated tail times out.
        # (a random rs command may run up to ~400k cycles: weight_depth bounds its passes, not its steps)
        await tb.quiesce(cfg.link_timeout + 200, max_cycles=3_000_000 if cfg.dataflow == "rs" else 400_000)
        packets = parse_packets(cfg, tb.host_out.received[first:])
        errors += len(packets.errors)
        # Recovered: a real program still runs bit-exact afterwards.
        await tb.run_gemm(*random_gemm(np.random.default_rng(round_), 5, 7, 6))
    assert errors > 0, "the random streams provoked no ERROR packet: the fuzzer is not reaching the checks"
    dut._log.info("fuzz: %d rounds, %d ERROR packets, device recovered every time", job["fuzz"], errors)


@cocotb.test()
async def device_program(dut):
    """Resident programs: a compiled layer stored once in the program memory and RUN again and again, bit-exact,
    with only the RUN crossing the link; then programs and stores the device must refuse (one ERROR each), after
    which it still computes."""
    job, cfg = read_job()
    rng = np.random.default_rng(job["seed"])
    tb = DeviceTestbench(dut, cfg, random.Random(job["seed"]), stall=job["stall"], backpressure=job["backpressure"])
    await tb.reset()
    for index, shape in enumerate(job["layers"]):
        if "kernel" in shape:
            operands, attrs, expected = random_conv(rng, **shape, multiplier=cfg.multiplier)
            program = compile_conv(cfg, *operands, **attrs)
        else:
            operands, attrs = random_gemm(rng, *shape), {}
            expected = golden.gemm_hw(*operands, cfg.multiplier)
            program = compile_gemm(cfg, *operands)
        base = index % 3   # not only at 0
        store, run = stored_program(cfg, program.words, base)
        await tb.exchange(store, 0, what=f"storing {shape}")
        # a layer's whole program, weights and activations included, from the program memory: twice, untouched
        for _ in range(2):
            words = np.concatenate([instruction(cfg, Opcode.CLEAR_COUNTERS), run,
                                    instruction(cfg, Opcode.READ_COUNTERS)])
            packets = parse_packets(cfg, await tb.exchange(words, program.reply_words(cfg) + 1 + len(COUNTERS),
                                                           what=f"running {shape}"))
            assert not packets.errors, f"{shape}: device reported errors: {packets.errors}"
            y = program.assemble(packets.results, cfg.cols)
            y = y if "kernel" not in shape else y.T.reshape(expected.shape)
            bad = np.argwhere(y != expected)
            assert not len(bad), f"{shape}: {len(bad)} of {y.size} outputs differ, first at {bad[0]}"
            counters = packets.counters[0]
            assert counters["link_words_in"] == 2 * INSTRUCTION_WORDS, counters   # the RUN and READ_COUNTERS
            assert counters["program_reads"] == len(program.words), counters
            assert counters["commands"] == len(program.outputs), counters
        dut._log.info("%s: %d program words, run twice from program memory, bit-exact", shape, len(program.words))

    # refused, one ERROR each, and the device goes on: a RUN of nothing, beyond the memory, a nested RUN, a
    # program ending mid-instruction, one ending mid-LOAD, a program that writes the program memory
    nop = instruction(cfg, Opcode.NOP)
    ahead = cfg.program_depth - 2 * INSTRUCTION_WORDS   # where the bad programs are stored
    bad_programs = [
        [instruction(cfg, Opcode.RUN, base=0, words=0)],
        [instruction(cfg, Opcode.RUN, base=cfg.program_depth - 1, words=2)],
        [*stored_program(cfg, instruction(cfg, Opcode.RUN, base=0, words=1), ahead)],
        [*stored_program(cfg, np.concatenate([nop, nop[:2]]), ahead)],
        [*stored_program(cfg, instruction(cfg, Opcode.LOAD, buffer=0, addr=0, words=1), ahead)],
        [*stored_program(cfg, load(cfg, BufferId.PROGRAM, 0, np.zeros(1, np.uint32)), ahead)],
    ]
    for words in bad_programs:
        words = np.concatenate([*words, instruction(cfg, Opcode.READ_COUNTERS)])
        packets = parse_packets(cfg, await tb.exchange(words, 2 + 1 + len(COUNTERS), what="a bad program"))
        assert [code for code, _ in packets.errors] == [ErrorCode.BAD_PROGRAM], packets.errors

    # stores the device must refuse: before any STORE_SETUP, a setup of no lanes, past the activation buffer, of
    # raw rows (on a row-stationary array, which runs only conv commands, these GEMMs are refused as such); and the
    # other new fields' bad values
    def gemm(**fields):
        return instruction(cfg, Opcode.GEMM, m=2, k=1, x_base=0, w_base=0, p_base=0, **fields)
    rs = cfg.dataflow == "rs"
    bad_stores = [
        ([gemm(store=1, s_base=0)], ErrorCode.BAD_SHAPE),
        ([instruction(cfg, Opcode.STORE_SETUP, lane=0, lanes=0, stride=1)], ErrorCode.BAD_SHAPE),
        ([instruction(cfg, Opcode.STORE_SETUP, lane=0, lanes=cfg.cols, stride=1),
          gemm(store=1, s_base=cfg.act_depth - 1)], ErrorCode.BAD_SHAPE if rs else ErrorCode.OUT_OF_RANGE),
        ([gemm(store=1, s_base=0, raw=1)], ErrorCode.BAD_SHAPE),
        # a lane beyond both buffers' words; more lanes than a row has; a store field naming no buffer; rows
        # past the vector buffer
        ([instruction(cfg, Opcode.STORE_SETUP, lane=max(cfg.rows, 4), lanes=1, stride=1)], ErrorCode.BAD_SHAPE),
        ([instruction(cfg, Opcode.STORE_SETUP, lane=0, lanes=cfg.cols + 1, stride=1),
          gemm(store=StoreTarget.ACT, s_base=0)], ErrorCode.BAD_SHAPE),
        ([instruction(cfg, Opcode.STORE_SETUP, lane=0, lanes=1, stride=1), gemm(store=3, s_base=0)],
         ErrorCode.BAD_SHAPE),
        ([gemm(store=StoreTarget.VEC, s_base=cfg.vec_depth - 1)],
         ErrorCode.BAD_SHAPE if rs else ErrorCode.OUT_OF_RANGE),
        # a WAIT on no unit; packed LOADs into the weight buffer, or of more lanes than the activation words hold
        ([instruction(cfg, Opcode.WAIT, pending=0, unit=3)], ErrorCode.BAD_SHAPE),
        ([load(cfg, BufferId.WEIGHT, 0, np.zeros((1, cfg.weight_lanes), np.int8), lanes=1)], ErrorCode.BAD_BUFFER),
        ([load(cfg, BufferId.ACT, 0, np.zeros((2, cfg.rows + 1), np.int8), lanes=cfg.rows + 1)],
         ErrorCode.BAD_BUFFER),
    ]
    if rs:  # conv commands whose stored columns would reach past the buffer: a row's last lane, or a filter's
        # channel in the word after the last
        setup = instruction(cfg, Opcode.CONV_SETUP, in_h=1, in_w=1, out_w=1, channel_blocks=1, kernel_h=1, kernel_w=1,
                            stride=1)

        def conv(filters, s_base):
            return instruction(cfg, Opcode.GEMM, m=filters, k=1, filters=filters, x_base=0, w_base=0, p_base=0,
                               conv=1, store=StoreTarget.ACT, s_base=s_base)
        bad_stores += [
            ([setup, instruction(cfg, Opcode.STORE_SETUP, lane=0, lanes=min(2, cfg.cols), stride=1,
                                 lane_stride=cfg.act_depth - 1), conv(1, 1)], ErrorCode.OUT_OF_RANGE),
            ([setup, instruction(cfg, Opcode.STORE_SETUP, lane=cfg.rows - 1, lanes=1, stride=1),
              conv(min(2, cfg.rs_filters), cfg.act_depth - 1)],
             ErrorCode.OUT_OF_RANGE if min(2, cfg.rs_filters) == 2 else None),
        ]
        bad_stores = [(words, code) for words, code in bad_stores if code is not None]
    # depthwise commands that could not run or would never end: not a conv command, a kernel more than one wide,
    # a stride past 2, a row too short for the taps, a first position past the row (at stride 1 and, out_x
    # strides along, at 2), a lane group past the word (os and rs refuse any depthwise command)
    def depthwise_setup(out_w, kernel_w=1, stride=1):
        return instruction(cfg, Opcode.CONV_SETUP, in_h=2, in_w=2, out_w=out_w, channel_blocks=1, kernel_h=1,
                           kernel_w=kernel_w, stride=stride)
    taps = min(2, cfg.rows)
    bad_stores += [
        ([gemm(taps=taps)], ErrorCode.BAD_SHAPE),
        ([depthwise_setup(3, kernel_w=2), gemm(conv=1, taps=taps)], ErrorCode.BAD_SHAPE),
        ([depthwise_setup(taps - 1 or 1), gemm(conv=1, taps=taps + (taps == 1))], ErrorCode.BAD_SHAPE),
        ([depthwise_setup(3), gemm(conv=1, taps=taps, out_x=3)], ErrorCode.BAD_SHAPE),
        ([depthwise_setup(3, stride=3), gemm(conv=1, taps=taps)], ErrorCode.BAD_SHAPE),
        ([depthwise_setup(5, stride=2), gemm(conv=1, taps=taps, out_x=3)], ErrorCode.BAD_SHAPE),
    ]
    past_the_word = (1 << command_layout(cfg)["lane_group"].shape.width) - 1     # the field's largest value
    if past_the_word >= cfg.rows // cfg.cols:
        bad_stores.append(([depthwise_setup(3), gemm(conv=1, taps=taps, lane_group=past_the_word)],
                           ErrorCode.BAD_SHAPE))
    for words, code in bad_stores:
        words = np.concatenate([*words, instruction(cfg, Opcode.READ_COUNTERS)])
        packets = parse_packets(cfg, await tb.exchange(words, 2 + 1 + len(COUNTERS), what="a bad store"))
        assert [c for c, _ in packets.errors] == [code], (code, packets.errors)
    await tb.run_gemm(*random_gemm(rng, 5, 7, 6))


@cocotb.test()
async def device_resident(dut):
    """Resident models: chains of layers whose feature maps stay in the activation buffer (store commands), with
    the weights, parameters and program loaded once; several inferences each send only their input and a RUN,
    and each equals the golden model's chain bit for bit."""
    job, cfg = read_job()
    rng = np.random.default_rng(job["seed"])
    tb = DeviceTestbench(dut, cfg, random.Random(job["seed"]), stall=job["stall"], backpressure=job["backpressure"])
    await tb.reset()
    for chain in job["chains"]:
        if "graph" in chain:    # a residual block and a pool: both units, their maps on chip
            x, layers, golden_of = random_graph(rng, chain["input"], chain["graph"], cfg.multiplier)
        else:
            x, layers, _ = random_chain(rng, chain["input"], chain["layers"], cfg.multiplier)
            golden_of = functools.partial(_chain_golden, layers=layers, multiplier=cfg.multiplier)
        model = compile_resident(cfg, layers, x.shape, batch=job["batch"])
        if chain.get("stream"):    # a word short of its weights: the largest layers' are sent with every run
            room = {"weight_top": model.plan["weight_words"] - 1}
            model = compile_resident(cfg, layers, x.shape, batch=job["batch"], bases=room)
            assert model.plan["streamed_steps"], model.plan
        await tb.exchange(model.load_words, 0, what="loading a resident model")
        for inference in range(job["inferences"]):
            if inference:   # new inputs, a batch of them, through the same resident model
                x = rng.integers(-128, 128, (job["batch"], *x.shape[-3:]), dtype=np.int8)
            x = x.reshape(-1, *x.shape[-3:])
            expected = np.stack([golden_of(image) for image in x])
            words = np.concatenate([instruction(cfg, Opcode.CLEAR_COUNTERS), model.inference_words(x),
                                    instruction(cfg, Opcode.READ_COUNTERS)])
            packets = parse_packets(cfg, await tb.exchange(words, model.reply_words() + 1 + len(COUNTERS),
                                                           what=f"inference {inference} of {chain}"))
            assert not packets.errors, f"{chain}: device reported errors: {packets.errors}"
            y = model.assemble(packets.results)[:len(x)]
            bad = np.argwhere(y != expected)
            assert not len(bad), f"{chain}: {len(bad)} of {y.size} outputs differ, first at {bad[0]}"
            counters = packets.counters[0]
            # over the link: the input's LOAD, the RUN and READ_COUNTERS in; the last layer's results out
            assert counters["link_words_in"] == len(model.inference_words(x)) + INSTRUCTION_WORDS, counters
            assert counters["link_words_out"] == model.reply_words(), counters
            if "graph" not in chain:
                assert counters["act_writes"] == _resident_act_writes(cfg, model, len(x)), counters
            else:   # the vector unit's work: each map it reads, written into its buffer once per image
                assert counters["vec_writes"] > 0 and counters["vec_reads"] > 0, counters
            assert counters["program_reads"] == model.plan["program_words"], counters
        dut._log.info("resident chain %s: %d inferences bit-exact; plan %s", chain, job["inferences"], model.plan)


def _chain_golden(x, layers, multiplier):
    for layer in layers:
        x = golden.conv_hw(x[None], layer.w, layer.bias, layer.scale, layer.y_zp, strides=layer.strides,
                           pads=layer.pads, pad_value=layer.pad_value, multiplier=multiplier)[0]
    return x


def _resident_act_writes(cfg, model, images):
    """Activation words one run writes: the ``images`` inputs', and each stored row's words (hw.writeback) for
    every image of the model's batch."""
    tensors = model.plan["tensors"]
    channels, in_h, in_w = tensors[0]["shape"]
    # (a fully connected chain's images are the pixels of one map: its plan is of that map)
    words = images * (1 if model.images_as_pixels else in_h * in_w) * -(-channels // cfg.rows)
    if cfg.dataflow == "rs":    # each stored element a write of its own
        return words + model.plan["batch"] * sum(int(np.prod(t["shape"])) for t in tensors[1:])
    for out_channels, out_h, out_w in (t["shape"] for t in tensors[1:]):
        words += model.plan["batch"] * sum(out_h * out_w * store_words(cfg.rows, first % cfg.rows,
                                                               min(cfg.cols, out_channels - first))
                                   for first in range(0, out_channels, cfg.cols))
    return words
