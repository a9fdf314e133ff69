"""The ``tessera`` command line."""

import argparse
import importlib.metadata
import sys

from tessera.gen.config import DATAFLOWS, AcceleratorConfig, ConfigError

__all__ = ["main", "config_from_args", "COMMAND_PLUGINS"]

#: Entry-point group through which higher layers (tessera.fpga: bitstream, deploy) add subcommands: each entry is
#: a function that adds its parsers to the subparsers and returns ``{command: handler}``.
COMMAND_PLUGINS = "tessera.commands"


def add_config_arguments(parser):
    group = parser.add_argument_group("accelerator configuration")
    group.add_argument("--config", metavar="FILE", help="TOML configuration file")
    group.add_argument("--rows", type=int, help="PE array rows (1-32)")
    group.add_argument("--cols", type=int, help="PE array columns (1-32)")
    group.add_argument("--dataflow", help="one of: " + ", ".join(DATAFLOWS))


def config_from_args(args):
    """The configuration a command line names: the file (or the defaults), then single overrides."""
    cfg = AcceleratorConfig.from_toml(args.config) if args.config else AcceleratorConfig()
    return cfg.replace(rows=args.rows, cols=args.cols, dataflow=args.dataflow)


def _cmd_verilog(args):
    from tessera.gen.artefacts import write_artefacts
    from tessera.gen.verilog import DEVICE_TOPLEVEL, write_verilog
    cfg = config_from_args(args)
    path = write_verilog(cfg, root=args.out, top=DEVICE_TOPLEVEL)
    # the compute core on its own as well: its cocotb tests use it, and it is the block to reuse elsewhere
    write_verilog(cfg, root=args.out)
    print(f"{path}  ({cfg.dataflow} {cfg.rows}x{cfg.cols}, config {cfg.hash})")
    for artefact in write_artefacts(cfg, path):
        print(artefact)


def _cmd_lint(args):
    from tessera.gen.lint import lint_verilog
    from tessera.gen.verilog import DEVICE_TOPLEVEL, TOPLEVEL, write_verilog
    cfg = config_from_args(args)
    for top in (DEVICE_TOPLEVEL, TOPLEVEL):
        path = write_verilog(cfg, root=args.out, top=top)
        lint_verilog(path, top)
        print(f"lint clean: {path}")


def _cmd_demo(args):
    from tessera.sw_driver.demo import run_demo
    return run_demo(config_from_args(args), batch=args.batch, images=args.images, quant_format=args.format,
                    prune=args.prune, prune_by=args.prune_by, skip_zero_tiles=not args.no_skip, report=args.report)


def _cmd_run(args):
    import json

    import numpy as np

    from tessera.sw_driver.host_exec import inexact_layers, run_graph
    from tessera.sw_driver.model_runner import run_graph_on
    from tessera.sw_driver.onnx_import import load_model

    graph = load_model(args.model)
    if len(graph.inputs) != 1:
        raise UsageError(f"the model has inputs {[io.name for io in graph.inputs]}; tessera run takes one")
    x = np.load(args.input)
    inputs = {graph.inputs[0].name: x}
    cfg = config_from_args(args)
    if args.target == "host":
        device = None
    elif args.target == "sim":
        from tessera.sw_driver.runtime import open_sim_device
        print(f"device: {cfg.dataflow} {cfg.rows}x{cfg.cols} (config {cfg.hash}), simulated from its RTL")
        device = open_sim_device(cfg)
    elif args.target.startswith("serial:"):
        device = _open_serial(cfg, args.target.removeprefix("serial:"))
    else:
        raise UsageError(f"--target {args.target!r} is not available; accepted: sim, host, serial:PORT")
    try:
        outputs, reports = run_graph_on(graph, inputs, device)
    finally:
        if device is not None:
            device.close()
    y = outputs[graph.outputs[0].name]
    if args.output:
        np.save(args.output, y)

    print(f"{'layer':24} {'op':18} {'ran on':7} {'MACs':>11} {'cycles':>9} {'util':>6}")
    for r in reports:
        util = f"{r.utilization:6.1%}" if r.target == "device" else ""
        cycles = f"{r.cycles:9,}" if r.target == "device" else ""
        print(f"{r.name[:24]:24} {r.op[:18]:18} {r.target:7} {r.macs:11,} {cycles:>9} {util:>6}"
              + (f"  ({r.reason})" if r.reason and r.target == "host" and args.verbose else ""))

    check = None
    if args.check:
        reference = run_graph(graph, inputs)[graph.outputs[0].name]
        mismatches = int(np.count_nonzero(reference != y))
        check = {"golden_mismatches": mismatches, "outputs": int(y.size),
                 "layers_where_onnxruntime_runs_float": inexact_layers(graph)}
        print(f"check against the golden model: {mismatches} of {y.size} outputs differ")

    device_layers = [r for r in reports if r.target == "device"]
    totals = {
        "macs_on_device": sum(r.macs for r in device_layers),
        "macs_skipped": sum(r.macs_skipped for r in device_layers),   # in all-zero weight tiles
        "cycles": sum(r.cycles for r in device_layers),
        "link_bytes_in": sum(4 * r.counters["link_words_in"] for r in device_layers),
        "link_bytes_out": sum(4 * r.counters["link_words_out"] for r in device_layers),
        "energy_pj": {k: sum(r.energy_pj[k] for r in device_layers)
                      for k in ("link", "buffers", "rf", "mac", "total")},
    }
    if args.report:
        layers = [{
            "name": r.name, "op": r.op, "target": r.target, "reason": r.reason, "macs": r.macs,
            "macs_skipped": r.macs_skipped, "cycles": r.cycles, "utilization": r.utilization,
            "counters": _report_counters(r.counters) if r.counters else {},
            "energy_pj": r.energy_pj,
        } for r in reports]
        report = {"config": cfg.to_dict(), "config_hash": cfg.hash, "model": str(args.model),
                  "target": args.target, "layers": layers, "totals": totals, "check": check}
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)
        print(f"report: {args.report}")
    if check and check["golden_mismatches"]:
        return 1
    return 0


def _open_serial(cfg, port):
    """A device on a board at ``port`` running a bitstream built for ``cfg`` (``tessera bitstream``)."""
    from tessera.sw_driver.runtime import open_serial_device
    print(f"device: {cfg.dataflow} {cfg.rows}x{cfg.cols} (config {cfg.hash}) on the board at {port}")
    return open_serial_device(cfg, port)


def _report_counters(c):
    """The report's counter block (ARCHITECTURE.md) plus the raw hardware counters."""
    return {
        "link_bytes_in": 4 * c["link_words_in"], "link_bytes_out": 4 * c["link_words_out"],
        "buffer_reads": {b: c[f"{b}_reads"] for b in ("act", "weight", "acc", "param", "vec")},
        "buffer_writes": {b: c[f"{b}_writes"] for b in ("act", "weight", "acc", "param", "vec")},
        "rf_accesses": c.get("rf_reads", 0) + c.get("rf_writes", 0), "macs_gated": c.get("macs_gated", 0),
        "noc_transfers": c.get("noc_transfers", 0), "hardware": c,
    }


class UsageError(ValueError):
    """The command line asks for something that is not there; the message says what is accepted."""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tessera {importlib.metadata.version('tessera')}")
    commands = parser.add_subparsers(dest="command", required=True)

    verilog = commands.add_parser("verilog", help="generate Verilog for a configuration under build/")
    lint = commands.add_parser("lint", help="generate Verilog and run the Verilator lint gate on it")
    for p in (verilog, lint):
        add_config_arguments(p)
        p.add_argument("--out", default="build", help="output root (default: build)")

    demo = commands.add_parser("demo", help="the digits CNN, quantized by onnxruntime, on the simulated RTL: accuracy, "
                                            "cycles, utilisation, link bytes and energy")
    add_config_arguments(demo)
    demo.add_argument("--batch", type=int, default=60, help="test images per device program (default 60)")
    demo.add_argument("--format", default="QOperator", choices=["QOperator", "QDQ"],
                      help="onnxruntime quantization format (default QOperator)")
    demo.add_argument("--images", type=int, help="run only the first N test images (default: all 360)")
    demo.add_argument("--prune", type=float, default=0.0,
                      help="zero this fraction of the weights of every layer but the first conv and the "
                           "classifier by gradual magnitude pruning with fine-tuning first (default 0)")
    demo.add_argument("--prune-by", default="tile", choices=["tile", "weight"],
                      help="prune whole rows x cols weight tiles, which the compiler skips (default), or single "
                           "weights")
    demo.add_argument("--no-skip", action="store_true",
                      help="run all-zero weight tiles anyway (to measure what skipping them saves)")
    demo.add_argument("--report", help="write the JSON report here")

    run = commands.add_parser("run", help="run a quantized ONNX model on the accelerator (or the host)")
    run.add_argument("model", help="quantized ONNX model (QDQ or QOperator, from onnxruntime's quantize_static)")
    run.add_argument("--input", required=True, help="input tensor, .npy")
    run.add_argument("--output", help="where to write the first output, .npy")
    run.add_argument("--target", default="sim", help="sim (the RTL under Verilator), host (golden model only) or "
                                                     "serial:PORT (a board programmed by tessera deploy)")
    run.add_argument("--report", help="write the JSON report here")
    run.add_argument("--check", action="store_true", help="also run the golden model and compare")
    run.add_argument("-v", "--verbose", action="store_true", help="say why layers ran on the host")
    add_config_arguments(run)

    handlers = {"verilog": _cmd_verilog, "lint": _cmd_lint, "demo": _cmd_demo, "run": _cmd_run}
    for plugin in importlib.metadata.entry_points(group=COMMAND_PLUGINS):
        handlers.update(plugin.load()(commands))

    args = parser.parse_args(argv)
    try:
        status = handlers[args.command](args)
    except ConfigError as error:
        print(f"tessera: configuration error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - every failure reaches the user as one line, with its kind
        from tessera.gen.lint import LintError
        from tessera.sw_driver.compiler import TilingError
        from tessera.sw_driver.isa_encode import DeviceError
        from tessera.sw_driver.onnx_import import ModelError
        from tessera.sw_driver.transport import LinkError
        if isinstance(error, (LintError, TilingError, ModelError, DeviceError, LinkError, UsageError, OSError)):
            print(f"tessera: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        raise
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
