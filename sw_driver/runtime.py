"""The device runtime: runs compiled layers on a device over a transport and reads back results and counters."""

import dataclasses
import sys

import numpy as np

from tessera.gen.verilog import DEVICE_TOPLEVEL, cached_verilog
from tessera.hw.isa import COUNTERS, BufferId, Opcode
from tessera.sw_driver.compiler import compile_conv, compile_gemm, conv_output_shape, raw_results
from tessera.sw_driver.isa_encode import DeviceError, disassemble, instruction, parse_packets
from tessera.sw_driver.transport import DEFAULT_TIMEOUT_CYCLES, SimTransport
from tessera.sw_driver.vector_compiler import compile_add, compile_maxpool

__all__ = ["Device", "LayerRun", "ignored_requant", "open_sim_device"]


def ignored_requant(channels):
    """Bias, scale and output zero point for a raw program: the device ignores them (see raw_results)."""
    return np.zeros(channels, np.int32), np.ones(channels, np.float32), 0


@dataclasses.dataclass
class LayerRun:
    """What one layer cost on the device: its MACs, the hardware counters, and derived figures."""
    macs: int
    counters: dict
    pes: int
    macs_skipped: int = 0    # of ``macs``: in all-zero weight tiles the compiler did not run

    @property
    def macs_run(self):
        return self.macs - self.macs_skipped

    @property
    def cycles(self):
        return self.counters["cycles"]

    @property
    def utilization(self):
        """MACs run / (PEs x cycles), over the whole layer: first instruction to last result."""
        return self.macs_run / (self.pes * self.cycles) if self.cycles else 0.0

    @property
    def link_bytes_in(self):
        return 4 * self.counters["link_words_in"]

    @property
    def link_bytes_out(self):
        return 4 * self.counters["link_words_out"]


class Device:
    """A Tessera device of configuration ``cfg`` behind ``transport``.

    Each layer runs as one program: CLEAR_COUNTERS, the compiled loads and commands, READ_COUNTERS; so the
    counters describe that layer alone.
    """

    def __init__(self, cfg, transport, *, timeout_cycles=DEFAULT_TIMEOUT_CYCLES, skip_zero_tiles=True):
        self.cfg = cfg
        self.transport = transport
        self.timeout_cycles = timeout_cycles
        self.skip_zero_tiles = skip_zero_tiles      # see compile_conv
        # resident models loaded, by id: their weight and parameter words, and whether a program has written
        # over any of them since (then they are loaded again before their next run)
        self._resident = {}

    def gemm(self, x, w, bias, scale, y_zp):
        """``requantize(x @ w + bias, scale, y_zp)`` on the device; returns ``(y int8, LayerRun)``."""
        return self.run(compile_gemm(self.cfg, x, w, bias, scale, y_zp))

    def gemm_acc(self, x, w):
        """``x @ w`` (int8 operands) as the accumulators hold it, int32, with no bias nor requantisation (the
        commands' ``raw`` results); returns ``(acc int32, LayerRun)``."""
        return self.run(raw_results(self.cfg, compile_gemm(self.cfg, x, w, *ignored_requant(w.shape[1]))))

    def maxpool(self, x, kernel, strides=(1, 1), pads=(0, 0, 0, 0)):
        """Max pooling of int8 (N, C, H, W) on the vector unit; returns ``(y int8, LayerRun)``."""
        return self.run(compile_maxpool(self.cfg, x, kernel, strides, pads))

    def add(self, a, b, params):
        """Quantized element-wise add on the vector unit (see ``compile_add``); returns ``(y int8, LayerRun)``."""
        return self.run(compile_add(self.cfg, a, b, params))

    def conv(self, x, w, bias, scale, y_zp, **attrs):
        """A convolution of one image (C, H, W) or a batch (N, C, H, W) on the device (see ``compile_conv``);
        returns ``(y int8 (O, out_h, out_w) or (N, O, out_h, out_w), LayerRun)``."""
        program = compile_conv(self.cfg, x, w, bias, scale, y_zp, skip_zero_tiles=self.skip_zero_tiles, **attrs)
        return self._conv_output(x, w, attrs, *self.run(program))

    def conv_acc(self, x, w, **attrs):
        """A convolution's accumulators (as ``conv``, with no bias nor requantisation): int32 ``(O, out_h, out_w)``
        or ``(N, O, out_h, out_w)``, and the LayerRun."""
        program = raw_results(self.cfg, compile_conv(self.cfg, x, w, *ignored_requant(w.shape[0]),
                                                     skip_zero_tiles=self.skip_zero_tiles, **attrs))
        return self._conv_output(x, w, attrs, *self.run(program))

    def _conv_output(self, x, w, attrs, y, run):
        stride, pads = attrs.get("strides", (1, 1))[0], attrs.get("pads", (0, 0, 0, 0))
        out_h, out_w = conv_output_shape(x.shape[-2], x.shape[-1], w.shape[2], w.shape[3], stride, pads)
        y = y.reshape(-1, out_h, out_w, w.shape[0]).transpose(0, 3, 1, 2)
        return (y if x.ndim == 4 else y[0]), run

    def run(self, program):
        """Run a compiled :class:`~tessera.sw_driver.compiler.Program`; returns ``(assembled output, LayerRun)``."""
        self._note_writes(program.words)
        packets, run = self._exchange(program.words, program.reply_words(self.cfg), macs=program.macs,
                                      results=program.commands)
        run.macs_skipped = program.macs_skipped
        return program.assemble(packets.results, self.cfg.cols), run

    def load_resident(self, models):
        """Load resident models (:class:`~tessera.sw_driver.resident.ResidentModel`): their weights, parameters
        and programs, once. Returns the counters of the load (a LayerRun of no MACs).

        The layers run one by one in between (``run``) share the weight and parameter buffers: a model whose
        words one of them overwrites is loaded again before its next run, and that run's counters include it."""
        for model in models:
            self._resident[id(model)] = [_footprint(model), False]
        words = [model.load_words for model in models]
        return self._exchange(np.concatenate(words) if words else np.zeros(0, np.uint32), 0)[1]

    def infer(self, model, images):
        """Run a loaded resident model on int8 ``images`` (N, C, H, W): runs of ``model.batch`` images back to back,
        each sending its inputs and a RUN; only the last layer's rows come back. Returns ``(y int8 (N, O, out_h,
        out_w), LayerRun)``, the counters over all the runs (a last run of fewer images computes ``model.batch``
        all the same)."""
        images = np.asarray(images)
        runs = [images[i:i + model.batch] for i in range(0, len(images), model.batch)]
        words = [model.inference_words(run) for run in runs]
        footprint, overwritten = self._resident.setdefault(id(model), [_footprint(model), True])
        if overwritten:
            words.insert(0, model.load_words)
            self._resident[id(model)][1] = False
        words = np.concatenate(words)
        # a resident model computes its layers before the last in silence: allow the link that long
        silence = self.timeout_cycles + 4 * (model.plan["array_cycles"] + model.plan.get("vector_cycles", 0))
        packets, run = self._exchange(words, len(runs) * model.reply_words(), macs=len(runs) * model.macs,
                                      results=len(runs) * model.commands, timeout_cycles=silence)
        results = packets.results
        y = [model.assemble(results[i * model.commands:(i + 1) * model.commands])[:len(inputs)]
             for i, inputs in enumerate(runs)]
        return np.concatenate(y), run

    def _note_writes(self, words):
        """Mark the resident models whose weight or parameter words the LOADs of ``words`` overwrite."""
        if not self._resident:
            return
        for opcode, operands, _ in disassemble(self.cfg, words):
            if opcode != Opcode.LOAD:
                continue
            written = (operands["buffer"], operands["addr"], operands["addr"] + operands["words"])
            for entry in self._resident.values():
                if any(_overlap(written, region) for region in entry[0]):
                    entry[1] = True

    def _exchange(self, words, reply_words, *, macs=0, results=0, timeout_cycles=None):
        """Send ``words`` between CLEAR_COUNTERS and READ_COUNTERS; returns the parsed packets and the LayerRun."""
        words = np.concatenate([instruction(self.cfg, Opcode.CLEAR_COUNTERS), words,
                                instruction(self.cfg, Opcode.READ_COUNTERS)])
        self.transport.send(words)
        reply = self.transport.receive(reply_words + 1 + len(COUNTERS),
                                       timeout_cycles=timeout_cycles or self.timeout_cycles)
        packets = parse_packets(self.cfg, reply)
        if packets.errors:
            raise DeviceError(f"the device rejected instructions: {packets.errors}")
        if len(packets.counters) != 1 or len(packets.results) != results:
            raise DeviceError(f"expected {results} result packets and one COUNTERS packet, got "
                              f"{len(packets.results)} and {len(packets.counters)}")
        return packets, LayerRun(macs=macs, counters=packets.counters[0], pes=self.cfg.pes)

    def close(self):
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _footprint(model):
    """The (buffer, first word, end) regions a resident model keeps its weights and parameters in."""
    plan = model.plan
    return [(BufferId.WEIGHT, plan["bases"]["weight"], plan["bases"]["weight"] + plan["weight_words"]),
            (BufferId.PARAM, plan["bases"]["param"], plan["bases"]["param"] + plan["param_words"])]


def _overlap(a, b):
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


def open_sim_device(cfg, *, announce=None, **kwargs):
    """Generate (or reuse) the device's Verilog for ``cfg`` in the build cache and open it under Verilator.

    ``announce`` is called with a one-line message just before the simulator is built, which happens once per
    configuration (and tool versions); by default the message goes to stderr.
    """
    say = announce or (lambda message: print(message, file=sys.stderr, flush=True))

    def building():
        say(f"building the simulator for {cfg.dataflow} {cfg.rows}x{cfg.cols} (config {cfg.hash}; first time for "
            f"this configuration)")

    verilog = cached_verilog(cfg, top=DEVICE_TOPLEVEL)
    return Device(cfg, SimTransport(verilog, DEVICE_TOPLEVEL, announce=building), **kwargs)


def open_serial_device(cfg, port, clock_mhz=None):
    """A `Device` on a board at ``port`` running a bitstream built for ``cfg`` (the link is reset on opening)."""
    from tessera.sw_driver.serial_transport import SerialTransport
    return Device(cfg, SerialTransport(port, clock_hz=(clock_mhz or cfg.clock_mhz) * 1e6))
