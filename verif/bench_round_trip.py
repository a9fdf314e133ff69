"""``make bench`` (part): one MLPerf Tiny inference's round trip over the simulated ULX3S's 3 Mbaud UART.

Usage: ``python -m tessera.verif.bench_round_trip [--models a,b] [--width W] [--out build/bench]``

:mod:`~tessera.verif.bench_residency` times the device alone. Here the host reaches it as it would the board: the
whole FPGA top (:class:`~tessera.fpga.top.LinkedDevice`: UART, framed link with acknowledgements and retries,
accelerator) runs under Verilator with a bit-level UART on the host's side
(:class:`~tessera.fpga.sim_board.BoardSimTransport`), at the ULX3S's core clock (the PLL's setting for its default
configuration's clock) and 3,000,000 baud. The device is the ULX3S default (:func:`~tessera.fpga.boards.board_config`),
which keeps ResNet-8 and the DS-CNN whole on chip, with the board's link time-out. Each model is compiled resident
and loaded once (not timed); then one inference is timed in simulated time, from the host's first input byte on
the line to the host's having the last result byte (the harness notices that a burst has ended after two idle
character times, 6.6 us, which the figure includes). The host's own layers
(quantising the input, Softmax) take no simulated time; nor does a USB adapter's latency, which the simulation has
none of. The output must equal onnxruntime's bit for bit (a mismatch stops the bench).

Rows: the round trip; the device's cycles for the same inference from its counters, less the cycles it waited for
the line (``stall_input_cycles``, ``stall_output_cycles``; bench_residency's link brings a word a cycle, so its figure
differs by the input's few hundred cycles), and that time at the clock; every byte on each line (frames and
acknowledgements); the time the DATA frames (the inference's words: the input's cross before the device runs, the
results' after it starts) take at the real bit rate, and that time's share of the round trip. The results of the last
layer may leave while it still computes, so device and line times may overlap a little. Writes ``round_trip.json``
and ``round_trip.md`` under ``--out``.

Cost (measured 2026-12-07 on the ULX3S default, 16x8 at 60 MHz): the board harness for a configuration builds in
a few minutes once (the build cache keeps it), and every run spends about a minute generating the top's Verilog,
which keys that cache. The one-time loads cross the simulated UART at about 1.8 KB of wall time a second: 47 s for
ResNet-8's 87 KB, 42 s for DS-CNN's 77 KB. ``make bench`` runs those two (:data:`DEFAULT_MODELS`); the autoencoder
and MobileNet do not stay whole on the default (``--models ad_autoencoder,vww_mobilenet`` runs them, streaming what
does not fit). The timed inferences take seconds.
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tessera.fpga.boards import BOARDS, board_config
from tessera.fpga.sim_board import BoardSimTransport
from tessera.fpga.top import LinkSettings
from tessera.sw_driver.cli import OneLineParser, checked_argument, folder_argument, number_argument
from tessera.sw_driver.link_protocol import frame_bytes
from tessera.sw_driver.model_compiler import compile_model, load_segments, residency, run_model
from tessera.sw_driver.reports import markdown_table, write_json, write_markdown
from tessera.sw_driver.runtime import Device
from tessera.verif.bench_residency import BenchError, model_and_reference
from tessera.verif.mlperf_tiny import MODELS

__all__ = ["DEFAULT_MODELS", "board_setup", "round_trip", "round_trip_table", "main"]

#: The board whose clock and UART the bench simulates.
BOARD = BOARDS["ulx3s"]
#: What ``make bench`` runs by default (see the module docstring for why).
DEFAULT_MODELS = ("ic_resnet8", "kws_ds_cnn")
#: Bits on the line per byte: start, 8 data, stop.
_BITS_PER_BYTE = 10
#: Simulated time the line is left idle before the timed inference, so that the last acknowledgement of the load
#: has left the line (a few character times).
_SETTLE_SECONDS = 100e-6


def board_setup(board=BOARD, cfg=None):
    """``(configuration, link settings)`` of ``cfg`` (default: the board's own) on ``board``: the core clock its PLL
    sets for the board's default clock (a whole number of UART bit times), its UART rate, and the link time-out a
    board build gets."""
    mhz = board.plan_pll(board.defaults["clock_mhz"]).output_mhz
    return board_config(board, cfg, clock_mhz=mhz), LinkSettings(clock_hz=mhz * 1e6, baud=board.baud)


def _device_counters(reports):
    """The device's counters summed over the inference's device runs."""
    totals = {}
    for report in reports:
        if report.target == "device":
            for key, value in report.counters.items():
                totals[key] = totals.get(key, 0) + value
    return totals


def _idle(transport, seconds):
    """Let the simulated board run ``seconds`` with nothing sent, so the line is quiet before a timed run."""
    if transport.port.exchange(seconds):
        raise BenchError("the device sent bytes while the host expected silence")


def _line_figures(transport, run):
    """Run ``run()`` and return its result and what crossed the line meanwhile: every byte each way, and the bytes of
    the DATA frames (the inference's words; the acknowledgements of each direction's frames cross the other wire
    beside them), from the harness's and the host link's counts."""
    port, engine = transport.port, transport.engine
    line, stats = port.stats(), dict(vars(engine.stats))
    words = (engine.words_acknowledged, engine.words_received)
    result = run()
    after, frames = port.stats(), {key: value - stats[key] for key, value in vars(engine.stats).items()}
    empty = frame_bytes(0)
    return result, {"bytes_to_device": after.bytes_to_device - line.bytes_to_device,
                    "bytes_from_device": after.bytes_from_device - line.bytes_from_device,
                    "data_bytes_to_device": empty * frames["frames_sent"] + 4 * (engine.words_acknowledged - words[0]),
                    "data_bytes_from_device": empty * frames["frames_received"]
                    + 4 * (engine.words_received - words[1]), "link": frames}


def _timed_inference(transport, device, graph, inputs, segments):
    """Run one inference with ``segments`` already loaded; return its outputs, reports and the line's figures."""
    port = transport.port
    _idle(transport, _SETTLE_SECONDS)
    started, wall = port.elapsed, time.perf_counter()
    (outputs, reports, _), line = _line_figures(
        transport, lambda: run_model(graph, inputs, device, segments, load=False))
    return outputs, reports, {**line, "round_trip_s": port.elapsed - started, "sim_wall_s": time.perf_counter() - wall}


def round_trip(name, transport, folder, *, width=1.0, seed=0):
    """One inference of MLPerf Tiny model ``name``, resident on the simulated board behind ``transport``: its row."""
    cfg = transport.cfg
    graph, inputs, reference, io_bytes = model_and_reference(name, folder, width=width, seed=seed)
    transport.reset()       # a fresh accelerator: nothing of an earlier model resident
    device = Device(cfg, transport)
    segments = compile_model(graph, cfg)
    started = time.perf_counter()
    load = load_segments(device, segments)
    load_wall = time.perf_counter() - started
    outputs, reports, line = _timed_inference(transport, device, graph, inputs, segments)
    y = outputs[graph.outputs[0].name]
    if not np.array_equal(y, reference):
        raise BenchError(f"{name} (round trip): {int(np.count_nonzero(y != reference))} of {y.size} outputs differ "
                         f"from onnxruntime's")
    counters = _device_counters(reports)
    # the counters count from CLEAR_COUNTERS to READ_COUNTERS, the device's waits for the line's words included
    device_cycles = counters["cycles"] - counters["stall_input_cycles"] - counters["stall_output_cycles"]
    byte_time = _BITS_PER_BYTE * transport.port.bit_time
    line_to, line_from = line["data_bytes_to_device"] * byte_time, line["data_bytes_from_device"] * byte_time
    kept = residency(graph, segments)
    return {"model": name, "round_trip_ms": 1e3 * line["round_trip_s"], "device_cycles": device_cycles,
            "device_ms": device_cycles / (cfg.clock_mhz * 1e3), "counter_cycles": counters["cycles"],
            "bytes_to_device": line["bytes_to_device"], "bytes_from_device": line["bytes_from_device"],
            "data_bytes_to_device": line["data_bytes_to_device"],
            "data_bytes_from_device": line["data_bytes_from_device"], "line_to_device_ms": 1e3 * line_to,
            "line_from_device_ms": 1e3 * line_from, "line_ms": 1e3 * (line_to + line_from),
            "line_share": (line_to + line_from) / line["round_trip_s"], "io_bytes": io_bytes,
            "resident_layers": f"{kept['resident_layers']} of {kept['compute_layers']}", "whole": kept["whole"],
            "streamed_layers": kept["streamed_layers"], "load_bytes": 4 * load.counters["link_words_in"] if load else 0,
            "load_wall_s": load_wall, "sim_wall_s": line["sim_wall_s"], "link": line["link"]}


def round_trip_table(cfg, link, rows, width=1.0):
    """The rows as a Markdown table under a line saying what was simulated."""
    caveat = "" if width == 1.0 else f", models at width {width:g}"
    return (f"Round trip of one inference, resident, over the simulated board's UART ({link.baud:,} baud, "
            f"{cfg.clock_mhz:g} MHz, {cfg.dataflow} {cfg.rows}x{cfg.cols}{caveat}):\n\n"
            + markdown_table(rows, [("model", "model", ""), ("round_trip_ms", "round trip ms", ".3f"),
                                    ("device_cycles", "device cycles", ",d"), ("device_ms", "device ms", ".3f"),
                                    ("bytes_to_device", "line B to device", ",d"),
                                    ("bytes_from_device", "line B from device", ",d"),
                                    ("io_bytes", "input+output B", ",d"), ("line_ms", "line ms", ".3f"),
                                    ("line_share", "line share", ".0%")]))


def _progress(row):
    """One line per model as it finishes: the one-time load takes minutes of wall time over the simulated UART."""
    print(f"  {row['model']}: round trip {row['round_trip_ms']:.3f} ms, device {row['device_ms']:.3f} ms, line "
          f"{row['bytes_to_device']:,} B in / {row['bytes_from_device']:,} B out; wall: load of "
          f"{row['load_bytes']:,} B {row['load_wall_s']:.0f} s, inference {row['sim_wall_s']:.1f} s",
          file=sys.stderr, flush=True)


def _names(text):
    return text.split(",")


def _check_models(names):
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown {', '.join(unknown)}; accepted: a comma-separated list of {', '.join(MODELS)}")


def _check_width(value):
    if not 0 < value <= 1:
        raise ValueError(f"{value:g} is out of range; accepted: above 0, up to 1")


def _parser():
    parser = OneLineParser(prog="python -m tessera.verif.bench_round_trip", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=checked_argument(_names, _check_models), default=list(DEFAULT_MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)} (default: {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--width", type=checked_argument(number_argument, _check_width), default=1.0,
                        help="channel width factor, above 0 up to 1 (1.0: the reference models)")
    parser.add_argument("--out", default="build/bench", type=folder_argument,
                        help="output folder (default build/bench)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    cfg, link = board_setup()
    print(f"MLPerf Tiny round trip over the simulated {BOARD.name}'s UART ({link.baud:,} baud, {link.divisor} cycles a "
          f"bit at {cfg.clock_mhz:g} MHz), resident on {cfg.dataflow} {cfg.rows}x{cfg.cols} (config {cfg.hash}); "
          f"every output equal to onnxruntime's")
    started = time.perf_counter()
    transport = BoardSimTransport(cfg, link)
    print(f"  board simulator ready: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for name in args.models:
                rows.append(round_trip(name, transport, Path(folder), width=args.width))
                _progress(rows[-1])
    finally:
        transport.close()
    table = round_trip_table(cfg, link, rows, args.width)
    print(table)
    out = Path(args.out)
    write_json(out / "round_trip.json", {"config": cfg.to_dict(), "baud": link.baud, "divisor": link.divisor,
                                         "width": args.width, "rows": rows})
    write_markdown(out / "round_trip.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
