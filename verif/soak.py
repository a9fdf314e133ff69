"""Device soak: random layers and instruction programs on random configurations of the simulated device, under
random stalls on both link directions, each layer checked bit for bit against the golden model.

A run with ``--seed S`` draws configurations ``S, S+1, ...`` (:func:`random_config`: every dataflow in turn,
non-square arrays, buffers small enough that layers tile into many passes, single-port buffers, narrow requantisers,
row-stationary filter counts, approximate multipliers, with and without the vector unit). Each is built once (the
build cache keeps it) and then runs cases ``0, 1, ...`` for its share of the time, case ``i`` drawn from
``(configuration seed, i)`` alone (:func:`make_case`):

* **layers**: GEMMs, convolutions (random kernel, stride, padding, channels and batch; pruned all-zero weight
  tiles and filters), max pools and quantized adds where the vector unit exists; compiled, run with random stalls on
  ``host_in`` and backpressure on ``host_out``, and compared with the golden model. A layer the compiler refuses
  (`TilingError`: it does not fit this configuration) counts as *refused*, not as a failure;
* **programs**: random instruction streams (`tessera.verif.cases.random_instruction_stream`), or a compiled layer
  with words flipped, dropped, repeated, overwritten or cut off. The device must take every word and fall silent
  (a truncated tail times out), then answer a valid layer with packets that parse and the right numbers.

A failure is anything else: outputs that differ, an ERROR packet for a valid program, a hang (no word moves for a
million cycles), a crash of the simulator, an exception out of the compiler. Each prints its configuration seed,
case, the configuration as JSON and the command that replays it.

Usage: ``python -m tessera.verif.soak --minutes M [--seed S] [--configs N]``; ``--seed S --configs 1 --cases N``
replays cases ``0 .. N-1`` of configuration ``S`` on a fresh device (add ``--first-case I`` to start at case I).
"""

import argparse
import collections
import dataclasses
import random
import signal
import sys
import time
import traceback

import numpy as np

from tessera.gen.config import AcceleratorConfig
from tessera.hw.isa import COUNTERS, Opcode, PacketKind
from tessera.hw.layouts import MAX_PAD
from tessera.hw.pe_multipliers import MULTIPLIERS
from tessera.sw_driver import golden
from tessera.sw_driver.compiler import TilingError, compile_conv, compile_gemm, conv_output_shape
from tessera.sw_driver.isa_encode import DeviceError, instruction, parse_packets
from tessera.sw_driver.layers import QuantParams
from tessera.sw_driver.runtime import open_sim_device
from tessera.sw_driver.transport import LinkError
from tessera.sw_driver.vector_compiler import add_params_for, compile_add, compile_maxpool
from tessera.verif.cases import random_gemm, random_instruction_stream

__all__ = ["Case", "Failure", "SoakResult", "random_config", "make_case", "run_case", "soak_config", "soak", "main"]

#: Cycles in a row without a word moving, in a valid layer, after which the device counts as hung (a command of
#: these small configurations runs for well under this).
HANG_CYCLES = 1_000_000
#: Cycles a damaged program may take to be taken in and answered (a random row-stationary command may compute for
#: ~400k cycles; a stream holds a few).
PROGRAM_CYCLES = 20_000_000
#: Stall and backpressure probabilities a case draws from (per cycle, on host_in and host_out separately); at most
#: 0.5 so that a gap as long as a configuration's link_timeout (64 cycles at least) never happens by chance.
STALLS = (0.0, 0.0, 0.05, 0.2, 0.5)
#: Words a damaged program may have the device send before the case stops reading and resets the device.
FLOOD_WORDS = 1 << 18
#: Failures after which a configuration is left for the next (one bug tends to fail many cases).
MAX_FAILURES_PER_CONFIG = 5
#: Case kinds and their weights (vector layers only where the configuration has a vector unit).
KINDS = {"gemm": 3, "conv": 4, "maxpool": 1, "add": 1, "program": 2}
_APPROXIMATE = [name for name in MULTIPLIERS if name != "exact"]


# -- configurations --------------------------------------------------------------------------------------------


def random_config(seed):
    """The configuration of seed ``seed``: dataflow ``ws``, ``os``, ``rs`` as ``seed % 3``, the rest at random.

    Arrays stay at 32 PEs or fewer so a simulator builds in well under a minute; buffers are small, so layers tile
    into many passes, loads wait for slots, and some layers do not fit at all.
    """
    rng = np.random.default_rng([seed, 0])
    dataflow = ("ws", "os", "rs")[seed % 3]
    while True:
        rows, cols = (int(v) for v in rng.integers(1, 9, 2))
        if rows * cols <= 32:
            break

    def pick(options, low):
        return int(rng.choice([v for v in options if v >= low] or [low]))

    big = dataflow == "rs"      # a row-stationary band of cols output rows needs more activation words
    act_depth = pick([32, 48, 64, 128, 256, 512, 1024] if not big else [128, 256, 384, 512, 1024], rows)
    weight_depth = pick([4 * rows, 32, 64, 96, 128, 256, 512] if not big else [64, 128, 256, 512, 1024], rows)
    acc_depth = pick([2 * rows, 4 * rows, 16, 24, 32, 64, 128], 2 * rows)     # even, as the halves need
    lanes = [d for d in range(1, cols + 1) if cols % d == 0]
    return AcceleratorConfig(
        rows=rows, cols=cols, dataflow=dataflow, act_depth=act_depth, weight_depth=weight_depth,
        acc_depth=acc_depth, param_depth=int(rng.choice([1, 2, 3, 4, 8, 16])),
        vec_depth=int(rng.choice([0, 64, 256, 1024])),
        link_timeout=int(rng.choice([64, 200, 1024])),
        rs_filters=int(rng.integers(1, 7)) if dataflow == "rs" else 4,
        requant_lanes=int(rng.choice(lanes)) if rng.random() < 0.4 else 0,
        single_port_buffers=bool(rng.random() < 0.3),
        multiplier="exact" if rng.random() < 0.5 else str(rng.choice(_APPROXIMATE)))


def describe(cfg):
    """A short label: ``rs 3x5 act256 w128 acc32 p4 vec64 sp lanes1 f3 drum6``."""
    parts = [f"{cfg.dataflow} {cfg.rows}x{cfg.cols}", f"act{cfg.act_depth}", f"w{cfg.weight_depth}",
             f"acc{cfg.acc_depth}", f"p{cfg.param_depth}", f"vec{cfg.vec_depth}" if cfg.vec_depth else "novec"]
    parts += ["sp"] if cfg.single_port_buffers else []
    parts += [f"lanes{cfg.requant_lanes}"] if cfg.requant_lanes else []
    parts += [f"f{cfg.rs_filters}"] if cfg.dataflow == "rs" else []
    parts += [] if cfg.multiplier == "exact" else [cfg.multiplier]
    return " ".join(parts)


# -- cases ------------------------------------------------------------------------------------------------------


def _as_is(y):
    return y


@dataclasses.dataclass
class Layer:
    """A layer to run: ``compile()`` gives its program (or raises `TilingError`), ``shape(y)`` turns the device's
    assembled output into the golden model's shape, which must then equal ``expected``."""
    kind: str
    label: str
    compile: object
    expected: np.ndarray
    shape: object = _as_is


@dataclasses.dataclass
class Case:
    """One case: a layer, or a damaged program followed by a layer; with the stalls it runs under."""
    kind: str                    # a key of KINDS
    layer: Layer
    in_stall: float
    out_stall: float
    stall_seed: int
    program: object = None       # program cases: the words sent before the layer (a function of nothing)
    label: str = ""


def _gemm(cfg, rng):
    m, k, n = int(rng.integers(1, 97)), int(rng.integers(1, 65)), int(rng.integers(1, 41))
    x, w, bias, scale, y_zp = random_gemm(rng, m, k, n)
    if rng.random() < 0.25:     # pruned: whole output columns of zero weights
        w[:, rng.random(n) < 0.5] = 0
    return Layer("gemm", f"gemm {m}x{k}x{n}", lambda: compile_gemm(cfg, x, w, bias, scale, y_zp),
                 golden.gemm_hw(x, w, bias, scale, y_zp, cfg.multiplier))


def _conv(cfg, rng):
    kh, kw = (int(v) for v in rng.integers(1, 6, 2)) if rng.random() < 0.9 else (int(rng.integers(1, 8)),) * 2
    stride = int(rng.choice([1, 1, 2, 3]))
    # pads up to one more than the kernel (ONNX allows it): windows wholly in the padding
    pads = tuple(int(rng.integers(0, min(k + 1, MAX_PAD) + 1)) if rng.random() < 0.6 else 0 for k in (kh, kw, kh, kw))
    batch = 1 if rng.random() < 0.8 else 2
    channels, out_channels = int(rng.integers(1, 13)), int(rng.integers(1, 13))
    h, w_ = int(rng.integers(max(1, kh - pads[0] - pads[2]), 13)), int(rng.integers(max(1, kw - pads[1] - pads[3]), 13))
    x = rng.integers(-128, 128, (batch, channels, h, w_), dtype=np.int8)
    w = rng.integers(-128, 128, (out_channels, channels, kh, kw), dtype=np.int8)
    fraction = float(rng.choice([0.0, 0.0, 0.5, 0.9]))
    if fraction:
        # pruned: all-zero blocks of rows input channels x cols output channels per tap, as the compiler skips them
        blocks_o, blocks_c = -(-out_channels // cfg.cols), -(-channels // cfg.rows)
        keep = rng.random((blocks_o, blocks_c, kh, kw)) >= fraction
        w *= np.repeat(np.repeat(keep, cfg.cols, 0), cfg.rows, 1)[:out_channels, :channels].astype(np.int8)
    if rng.random() < 0.2:
        w[rng.random(out_channels) < 0.3] = 0        # whole filters: their outputs are the requantised bias
    x_zp, y_zp = int(rng.integers(-128, 128)), int(rng.integers(-128, 128))
    bias = golden.fold_input_zero_point(rng.integers(-2**16, 2**16, out_channels, dtype=np.int32), x_zp, w,
                                        output_axis=0)
    scale = (rng.uniform(0.5, 2, out_channels) / (64 * np.sqrt(channels * kh * kw))).astype(np.float32)
    skip = bool(rng.random() < 0.8)
    attrs = {"strides": (stride, stride), "pads": pads, "pad_value": x_zp}
    label = (f"conv {batch}x{channels}x{h}x{w_} * {out_channels}x{channels}x{kh}x{kw} s{stride} p{pads}"
             + (f" pruned {fraction}" if fraction else "") + ("" if skip else " dense"))
    out_h, out_w = conv_output_shape(h, w_, kh, kw, stride, pads)     # at least 1 x 1, by the sizes drawn
    expected = golden.conv_hw(x, w, bias, scale, y_zp, strides=(stride, stride), pads=pads, pad_value=x_zp,
                              multiplier=cfg.multiplier)
    return Layer("conv", label, lambda: compile_conv(cfg, x, w, bias, scale, y_zp, skip_zero_tiles=skip, **attrs),
                 expected, lambda y: y.reshape(batch, out_h, out_w, out_channels).transpose(0, 3, 1, 2))


def _maxpool(cfg, rng):
    kernel = tuple(int(k) for k in rng.integers(1, 6, 2))
    stride = int(rng.integers(1, 4))
    pads = tuple(int(rng.integers(0, k)) for k in (*kernel, *kernel))
    h, w = (int(rng.integers(k, 13)) for k in kernel)
    x = rng.integers(-128, 128, (int(rng.integers(1, 4)), int(rng.integers(1, 10)), h, w)).astype(np.int8)
    return Layer("maxpool", f"maxpool {'x'.join(map(str, x.shape))} k{kernel} s{stride} p{pads}",
                 lambda: compile_maxpool(cfg, x, kernel, (stride, stride), pads),
                 golden.maxpool(x, kernel, (stride, stride), pads))


def _add(cfg, rng):
    dtype = np.int8 if rng.random() < 0.5 else np.uint8
    lo, hi = (-128, 127) if dtype == np.int8 else (0, 255)
    while True:     # scales whose ratios the device's fixed point takes exactly
        params = [QuantParams(float(np.float32(10 ** rng.uniform(-2.5, -0.5))), int(rng.integers(lo, hi + 1)), dtype)
                  for _ in range(3)]
        try:
            fields = add_params_for(*params)
            break
        except ValueError:
            continue
    shape = tuple(int(v) for v in rng.integers(1, 12, int(rng.integers(1, 5))))
    a, b = (rng.integers(lo, hi + 1, shape).astype(dtype) for _ in range(2))
    (pa, pb, py), shift = params, 128 if dtype == np.uint8 else 0       # the device holds uint8 as x - 128
    device_a, device_b = ((v.astype(np.int16) - shift).astype(np.int8) for v in (a, b))
    expected = golden.qlinear_add(a, pa.scale, pa.zero_point, b, pb.scale, pb.zero_point, py.scale, py.zero_point)
    return Layer("add", f"add {np.dtype(dtype).name} {'x'.join(map(str, shape))}",
                 lambda: compile_add(cfg, device_a, device_b, fields), expected,
                 lambda y: (y.astype(np.int16) + shift).astype(dtype))


_LAYERS = {"gemm": _gemm, "conv": _conv, "maxpool": _maxpool, "add": _add}


def _random_layer(cfg, rng, kinds):
    return _LAYERS[str(rng.choice(kinds))](cfg, rng)


def _damaged(rng, words):
    """``words`` (a compiled program) with one or two of: bits flipped, a span dropped, a span repeated, words
    overwritten with random ones, the tail cut off."""
    words = np.array(words, np.uint32)
    if not len(words):
        return words, "nothing (an all-zero layer's program is empty)"
    done = []
    for _ in range(int(rng.integers(1, 3))):
        what = str(rng.choice(["flip", "drop", "repeat", "overwrite", "truncate"]))
        at = int(rng.integers(0, max(1, len(words))))
        span = int(rng.integers(1, 9))
        if what == "flip":
            for _ in range(int(rng.integers(1, 5))):
                words[int(rng.integers(0, len(words)))] ^= np.uint32(1 << int(rng.integers(0, 32)))
        elif what == "drop":
            words = np.delete(words, slice(at, at + span))
        elif what == "repeat":
            words = np.insert(words, at, words[at:at + span])
        elif what == "overwrite":
            words[at:at + span] = rng.integers(0, 2**32, len(words[at:at + span]), dtype=np.uint32)
        else:
            words = words[:at]
        done.append(what)
        if not len(words):
            break
    return words, "+".join(done)


def make_case(cfg, config_seed, index):
    """Case ``index`` of configuration ``config_seed`` (``cfg`` is ``random_config(config_seed)``)."""
    rng = np.random.default_rng([config_seed, 1, index])
    vector = ("maxpool", "add") if cfg.vec_depth else ()
    kinds = [k for k in KINDS if k not in ("maxpool", "add") or k in vector]
    weights = np.array([KINDS[k] for k in kinds], float)
    kind = str(rng.choice(kinds, p=weights / weights.sum()))
    in_stall, out_stall = (float(rng.choice(STALLS)) for _ in range(2))
    layer_kinds = ["gemm", "conv", *vector]
    case = Case(kind, None, in_stall, out_stall, int(rng.integers(1, 2**31)))
    if kind != "program":
        case.layer = _LAYERS[kind](cfg, rng)
        case.label = case.layer.label
        return case
    if rng.random() < 0.5:
        stream_seed = int(rng.integers(0, 2**31))
        count = int(rng.integers(1, 40))
        case.program = lambda: np.array(random_instruction_stream(cfg, random.Random(stream_seed), count), np.uint32)
        case.label = f"random stream of {count} instructions"
    else:
        victim, damage_seed = _random_layer(cfg, rng, layer_kinds), int(rng.integers(0, 2**31))

        def damaged():
            words, what = _damaged(np.random.default_rng(damage_seed), victim.compile().words)
            case.label = f"{victim.label}, damaged: {what}"
            return words
        case.program = damaged
        case.label = f"{victim.label}, damaged"
    case.layer = _random_layer(cfg, rng, layer_kinds)     # must run correctly afterwards
    return case


# -- running cases ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Failure:
    """A case that went wrong: what, where, and how to run it again."""
    config_seed: int
    case: int
    cfg: AcceleratorConfig
    kind: str            # mismatch, device-error, hang, crash, garbled, exception, build
    label: str
    detail: str

    @property
    def command(self):
        return (f"python -m tessera.verif.soak --seed {self.config_seed} --configs 1 --cases {self.case + 1}")

    def __str__(self):
        return (f"FAIL config seed {self.config_seed} case {self.case} ({self.label}): {self.kind}: {self.detail}\n"
                f"  config: {self.cfg.to_json()}\n  rerun:  {self.command}")


class _CaseFailed(Exception):
    def __init__(self, kind, detail):
        super().__init__(detail)
        self.kind = kind


class _Flood(Exception):
    """The device is still sending after `FLOOD_WORDS` words: a damaged program asked for a huge output (a POOL of
    65,535 pixels of 255 channel blocks is 16.7 M words), which is an answer, not a hang."""


def _drain(transport, idle):
    """The words the device sends until none moves for ``idle`` cycles (`receive` ends on that time-out)."""
    try:
        transport.receive(FLOOD_WORDS, timeout_cycles=idle)
    except LinkError as error:
        if transport.closed:
            raise _CaseFailed("crash", str(error).splitlines()[0]) from error
        return error.received
    raise _Flood()


def _packet_ends(cfg, words):
    """Where each whole packet of ``words`` ends, and whether a part of one follows; `_CaseFailed` on a header of
    no packet kind."""
    ends, i = [], 0
    while i < len(words):
        kind, length = int(words[i]) & 0xFF, int(words[i]) >> 8
        if kind not in PacketKind._value2member_map_:
            raise _CaseFailed("garbled", f"word {i} of the reply is no packet header: {int(words[i]):#010x}")
        if i + 1 + length > len(words):
            return ends, True
        i += 1 + length
        ends.append(i)
    return ends, False


def _run_program(device, words, layer_words, reply_words):
    """Send damaged ``words``; wait until the device has taken them all and fallen silent; send ``layer_words`` (a
    valid layer, ending in READ_COUNTERS) and return its reply: the last ``reply_words`` words, a whole number of
    packets ending in the COUNTERS packet, once they are in (what the damaged program still sent comes before)."""
    transport, cfg = device.transport, device.cfg
    start = transport.stats().cycles
    transport.send(words)
    answered = []
    while True:
        answered.append(_drain(transport, cfg.link_timeout + 256))
        stats = transport.stats()
        if stats.pending_in == 0:
            break
        if stats.cycles - start > PROGRAM_CYCLES:
            raise _CaseFailed("hang", f"{stats.pending_in} words of a damaged program still not taken after "
                                      f"{stats.cycles - start:,} cycles")
    transport.send(layer_words)
    quiet, step = 0, 20_000
    while True:
        got = _drain(transport, step)
        answered.append(got)
        quiet = 0 if len(got) else quiet + step
        reply = np.concatenate(answered)
        ends, partial = _packet_ends(cfg, reply)
        last = ends[-2] if len(ends) > 1 else 0
        if not partial and ends and int(reply[last]) & 0xFF == PacketKind.COUNTERS:
            first = len(reply) - reply_words
            if first in (0, *ends):
                try:
                    parse_packets(cfg, reply[:first])
                except DeviceError as error:
                    raise _CaseFailed("garbled", f"after a damaged program: {error}") from error
                return reply[first:]
            if quiet >= PROGRAM_CYCLES // 4:
                raise _CaseFailed("device-error", f"the valid layer after a damaged program was answered with "
                                                  f"{len(reply) - last} words, not {reply_words}: "
                                                  f"{parse_packets(cfg, reply[last:])}")
        if quiet >= PROGRAM_CYCLES // 4:
            raise _CaseFailed("hang", f"no answer to a valid layer after a damaged program: nothing moved for "
                                      f"{quiet:,} cycles ({len(reply)} words came)")


def run_case(device, case):
    """Run ``case`` on ``device``; return ``"refused"`` (the compiler refused its layer), ``"ran"`` or
    ``"flooded"`` (a damaged program asked for over `FLOOD_WORDS` words of output: the device was reset, then ran the
    layer), or raise `_CaseFailed`."""
    cfg, transport = device.cfg, device.transport
    transport.throttle(in_stall=case.in_stall, out_stall=case.out_stall, seed=case.stall_seed)
    try:
        program = case.layer.compile()
        damaged = case.program() if case.program is not None else None
    except TilingError:
        return "refused"
    except Exception as error:
        raise _CaseFailed("exception", f"compiling: {type(error).__name__}: {error}") from error
    words = np.concatenate([instruction(cfg, Opcode.CLEAR_COUNTERS), program.words,
                            instruction(cfg, Opcode.READ_COUNTERS)])
    outcome = "ran"
    try:
        if damaged is not None:
            try:
                reply = _run_program(device, damaged, words, program.reply_words(cfg) + 1 + len(COUNTERS))
            except _Flood:
                transport.reset()
                outcome, damaged = "flooded", None
        if damaged is None:
            y, _ = device.run(program)
        else:
            packets = parse_packets(cfg, reply)
            if packets.errors or len(packets.results) != program.commands or len(packets.counters) != 1:
                raise DeviceError(f"after a damaged program, a valid layer got {len(packets.results)} results of "
                                  f"{program.commands}, {len(packets.counters)} COUNTERS, errors {packets.errors}")
            y = program.assemble(packets.results, cfg.cols)
    except DeviceError as error:
        raise _CaseFailed("device-error", str(error)) from error
    except LinkError as error:
        kind = "crash" if transport.closed else "hang"
        raise _CaseFailed(kind, str(error).splitlines()[0]) from error
    y = case.layer.shape(y)
    bad = np.argwhere(y != case.layer.expected)
    if len(bad):
        first = tuple(int(v) for v in bad[0])
        raise _CaseFailed("mismatch", f"{len(bad)} of {y.size} outputs differ from the golden model, first at "
                                      f"{first}: {int(y[first])} instead of {int(case.layer.expected[first])}")
    return outcome


# -- the soak --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SoakResult:
    """What a soak did: configurations, cases by kind and outcome, failures, wall times."""
    configs: list = dataclasses.field(default_factory=list)         # (seed, label, build s, run s)
    ran: collections.Counter = dataclasses.field(default_factory=collections.Counter)      # by kind
    refused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    flooded: int = 0        # damaged programs whose huge output was cut short by a reset
    failures: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def tried(self):
        return sum(self.ran.values()) + sum(self.refused.values()) + len(self.failures)

    @property
    def layers(self):
        return sum(v for k, v in self.ran.items() if k != "program")

    def summary(self):
        dataflows = collections.Counter(label.split()[0] for _, label, _, _ in self.configs)
        builds = sum(build for _, _, build, _ in self.configs)
        kinds = ", ".join(f"{k} {self.ran[k]:,}" for k in KINDS if k != "program" and self.ran[k])
        per_dataflow = ", ".join(f"{k} {v}" for k, v in sorted(dataflows.items()))
        return (f"soak: {len(self.configs)} configurations ({per_dataflow}), "
                f"{self.layers:,} layers ({kinds}), {self.ran['program']:,} damaged programs"
                + (f" ({self.flooded} cut short by a reset)" if self.flooded else "") + ", "
                f"{self.tried:,} inputs tried ({sum(self.refused.values()):,} refused by the compiler), "
                f"{len(self.failures)} failures; {self.seconds / 60:.1f} min ({builds / 60:.1f} min building)")


def soak_config(seed, *, cases=None, first_case=0, seconds=None, result=None, say=print):
    """Run configuration ``seed``: cases ``first_case ..`` until ``cases`` ran or ``seconds`` (building included)
    are up. Adds to ``result`` (a `SoakResult`) and returns it."""
    result = SoakResult() if result is None else result
    cfg = random_config(seed)
    label = describe(cfg)
    started = time.monotonic()
    say(f"config {seed}: {label} (hash {cfg.hash})")
    try:
        device = open_sim_device(cfg, announce=lambda message: say(f"  {message}"), timeout_cycles=HANG_CYCLES)
    except Exception as error:      # a configuration the generator, Verilator or the harness cannot build
        failure = Failure(seed, 0, cfg, "build", "building the simulator", f"{type(error).__name__}: "
                          f"{str(error).splitlines()[0] if str(error) else ''}")
        result.failures.append(failure)
        say(str(failure))
        return result
    built = time.monotonic() - started
    failures_before, ran_before = len(result.failures), sum(result.ran.values()) + sum(result.refused.values())
    index = first_case
    try:
        while (cases is None or index < first_case + cases) and (seconds is None or
                                                                  time.monotonic() - started < seconds):
            case = None
            try:
                case = make_case(cfg, seed, index)
                outcome = run_case(device, case)
                (result.refused if outcome == "refused" else result.ran)[case.kind] += 1
                result.flooded += outcome == "flooded"
            except Exception as error:      # _CaseFailed, or a bug in the compiler, the golden model or the driver
                if isinstance(error, _CaseFailed):
                    kind, detail = error.kind, str(error)
                else:
                    frame = traceback.extract_tb(error.__traceback__)[-1]
                    kind = "exception"
                    detail = f"{type(error).__name__}: {error} (at {frame.filename}:{frame.lineno})"
                failure = Failure(seed, index, cfg, kind, case.label if case else "making the case", detail)
                result.failures.append(failure)
                say(str(failure))
                if len(result.failures) - failures_before >= MAX_FAILURES_PER_CONFIG:
                    say(f"  {MAX_FAILURES_PER_CONFIG} failures: on to the next configuration")
                    break
                if device.transport.closed:
                    device = open_sim_device(cfg, timeout_cycles=HANG_CYCLES)
                else:
                    device.transport.reset()
            index += 1
    finally:
        device.close()
    run = time.monotonic() - started - built
    result.configs.append((seed, label, built, run))
    done = sum(result.ran.values()) + sum(result.refused.values()) - ran_before
    say(f"  {done:,} cases in {run:.0f} s (built in {built:.0f} s), {len(result.failures) - failures_before} "
        f"failures")
    return result


def soak(seed, *, minutes=None, configs=None, cases=None, first_case=0, say=print, result=None):
    """Configurations ``seed, seed + 1, ...``: ``configs`` of them (default: until ``minutes`` are up), each for an
    equal share of the time left, or for ``cases`` cases. Adds to ``result`` (a `SoakResult`) and returns it."""
    if minutes is None and cases is None:
        raise ValueError("give a time budget (minutes) or a number of cases per configuration (cases)")
    result = SoakResult() if result is None else result
    started = time.monotonic()
    deadline = None if minutes is None else started + 60 * minutes
    k = 0
    while (configs is None or k < configs) and (deadline is None or time.monotonic() < deadline - 30):
        share = None
        if deadline is not None:
            left = deadline - time.monotonic()
            share = left / (configs - k) if configs is not None else min(left, 150.0)
        soak_config(seed + k, cases=cases, first_case=first_case, seconds=share, result=result, say=say)
        result.seconds = time.monotonic() - started
        k += 1
    result.seconds = time.monotonic() - started
    return result


def _interrupt_on_sigterm():
    """A soak stopped with SIGTERM (``kill``, a job's time limit) ends like one stopped with Ctrl-C: it closes its
    simulator and prints the figures so far."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tessera.verif.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, help="time budget, building included")
    parser.add_argument("--seed", type=int, help="first configuration's seed (default: from the clock)")
    parser.add_argument("--configs", type=int, help="configurations to run (default: as many as the time allows, "
                                                    "150 s each)")
    parser.add_argument("--cases", type=int, help="cases per configuration (default: as many as its time allows)")
    parser.add_argument("--first-case", type=int, default=0, help="first case of each configuration (default 0)")
    args = parser.parse_args(argv)
    if args.minutes is None and args.cases is None:
        parser.error("give --minutes (a time budget) or --cases (cases per configuration)")
    for name in ("minutes", "configs", "cases"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive, not {value}")
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    print(f"soak: seed {seed}" + (f", {args.minutes:g} min" if args.minutes else ""), flush=True)
    _interrupt_on_sigterm()
    result = SoakResult()
    started = time.monotonic()
    try:
        soak(seed, minutes=args.minutes, configs=args.configs, cases=args.cases, first_case=args.first_case,
             say=lambda line: print(line, flush=True), result=result)
    except KeyboardInterrupt:
        result.seconds = time.monotonic() - started
        print("soak: interrupted; the figures so far:")
    print(result.summary())
    for failure in result.failures:
        print(failure)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
