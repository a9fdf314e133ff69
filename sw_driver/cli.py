"""The ``tessera`` command line."""

import argparse
import functools
import hashlib
import importlib.metadata
import sys
from pathlib import Path

from tessera.gen.config import (
    CONFIG_SUFFIXES,
    DATAFLOWS,
    MAX_ARRAY_DIM,
    AcceleratorConfig,
    ConfigError,
    ConfigTypeError,
    config_format,
)
from tessera.hw.pe_multipliers import MULTIPLIERS
from tessera.sw_driver.demo import PRUNE_BY, QUANT_FORMATS, check_batch, check_images, check_prune

__all__ = ["main", "OneLineParser", "config_from_args", "add_config_arguments", "COMMAND_PLUGINS", "checked_argument",
           "integer_argument", "number_argument", "folder_argument"]

#: Entry-point group through which higher layers (tessera.fpga: bitstream, deploy) add subcommands: each entry is
#: a function that adds its parsers to the subparsers and returns ``{command: handler}``.
COMMAND_PLUGINS = "tessera.commands"
#: ... and through which tessera.fpga names its boards' default configurations (``--board``): each entry is a
#: function returning ``{board name: AcceleratorConfig}``.
BOARD_PLUGINS = "tessera.boards"


@functools.cache
def board_configs():
    """``{board name: AcceleratorConfig}``: every registered board's default configuration, at the clock its
    bitstream meets."""
    boards = {}
    for plugin in importlib.metadata.entry_points(group=BOARD_PLUGINS):
        boards.update(plugin.load()())
    return boards


# -- argument types: each turns one option's text into its value or says, in one line, what is accepted ----------

def integer_argument(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def number_argument(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def checked_argument(parse, check):
    """An argument type: ``parse`` the text, then ``check`` the value (a ``ValueError`` saying what is accepted)."""
    def convert(text):
        value = parse(text)
        try:
            check(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value
    return convert


def _array_side(text):
    value = integer_argument(text)
    if not 1 <= value <= MAX_ARRAY_DIM:
        raise argparse.ArgumentTypeError(f"{value} is out of range; accepted: an integer from 1 to {MAX_ARRAY_DIM}")
    return value


def _one_of(options, what):
    """An argument type accepting one of ``options`` in any letter case, returned as ``options`` spells it."""
    by_case = {option.lower(): option for option in options}

    def convert(text):
        if text.lower() not in by_case:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; accepted: {', '.join(options)}")
        return by_case[text.lower()]
    return convert


def _config_file(text):
    try:
        config_format(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def folder_argument(text):
    """A folder that may not exist yet (it is created), but must not be a file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; accepted: a folder (created if missing)")
    return text


def _target(text):
    if text in ("sim", "host") or (text.startswith("serial:") and text != "serial:"):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a target; accepted: sim, host, serial:PORT")


def _board(text):
    boards = board_configs()
    if text not in boards:
        raise argparse.ArgumentTypeError(f"{text!r} is not a board; accepted: {', '.join(sorted(boards))}")
    return text


def add_config_arguments(parser, title="accelerator configuration", board=False):
    """``--config``, ``--rows``, ``--cols``, ``--dataflow``, each checked as it is parsed; with ``board``,
    ``--board`` too."""
    group = parser.add_argument_group(title)
    group.add_argument("--config", metavar="FILE", type=_config_file,
                       help="configuration file, " + " or ".join(CONFIG_SUFFIXES))
    if board:
        group.add_argument("--board", metavar="NAME", type=_board,
                           help="a board's default configuration, at the clock its bitstream meets (latency is "
                                "quoted at it): " + ", ".join(sorted(board_configs())))
    group.add_argument("--rows", type=_array_side, help=f"PE array rows (1-{MAX_ARRAY_DIM})")
    group.add_argument("--cols", type=_array_side, help=f"PE array columns (1-{MAX_ARRAY_DIM})")
    group.add_argument("--dataflow", type=_one_of(tuple(DATAFLOWS), "a dataflow"),
                       help="one of: " + ", ".join(DATAFLOWS))
    group.add_argument("--multiplier", type=_one_of(tuple(MULTIPLIERS), "a PE multiplier"), metavar="NAME",
                       help="the PE multiplier: " + ", ".join(MULTIPLIERS) + " (default exact; their error and "
                            "energy: docs/multipliers.md)")
    return group


def add_carbon_arguments(parser):
    """``--carbon-intensity`` and ``--pue``: what turns the device's energy into carbon (see :mod:`.carbon`)."""
    from tessera.sw_driver.carbon import DEFAULT_INTENSITY, DEFAULT_PUE

    def at_least(low, what):
        def check(value):
            if not value >= low:
                raise ValueError(f"{value} is out of range; accepted: {what}")
        return check

    group = parser.add_argument_group("carbon (energy per inference as kWh and gCO2e per million inferences)")
    group.add_argument("--carbon-intensity", type=checked_argument(number_argument, at_least(0, "0 or more gCO2e/kWh")),
                       default=DEFAULT_INTENSITY, metavar="G",
                       help=f"grid carbon intensity, gCO2e/kWh (default {DEFAULT_INTENSITY:g}: world average 2023, "
                            f"Ember)")
    group.add_argument("--pue", type=checked_argument(number_argument, at_least(1, "1 or more")), default=DEFAULT_PUE,
                       help=f"power usage effectiveness of the site (default {DEFAULT_PUE:g}: average data centre "
                            f"2023, Uptime Institute; 1 for a board on a desk)")


def carbon_from_args(args):
    from tessera.sw_driver.carbon import CarbonAssumptions
    return CarbonAssumptions(args.carbon_intensity, args.pue)


def config_from_args(args):
    """The configuration a command line names: the file, the board's (``--board``) or the defaults, then single
    overrides."""
    board = getattr(args, "board", None)
    if board and args.config:
        raise UsageError(f"--board {board} and --config {args.config} both name a configuration; accepted: one of "
                         f"them")
    if board:
        cfg = board_configs()[board]
    else:
        cfg = AcceleratorConfig.from_file(args.config) if args.config else AcceleratorConfig()
    return cfg.replace(rows=args.rows, cols=args.cols, dataflow=args.dataflow, multiplier=args.multiplier)


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
    from tessera.sw_driver.demo import check_prune_by, run_demo
    from tessera.sw_driver.inputs import check_output_path
    cfg = config_from_args(args)
    if args.prune:
        try:
            check_prune_by(args.prune_by, cfg)
        except ValueError as error:
            raise UsageError(f"--prune-by: {error}") from None
    if args.report:
        check_output_path(args.report, "--report")
    return run_demo(cfg, batch=args.batch, images=args.images, quant_format=args.format, prune=args.prune,
                    prune_by=args.prune_by, skip_zero_tiles=not args.no_skip, report=args.report,
                    carbon=carbon_from_args(args), per_layer=args.per_layer)


def _cmd_run(args):
    import json

    import numpy as np

    from tessera.sw_driver.carbon import per_million, summary_line
    from tessera.sw_driver.inputs import (
        InputError,
        PlacementError,
        check_output_path,
        host_fallbacks,
        model_inputs,
        planned_placement,
        read_inputs,
    )
    from tessera.sw_driver.layers import HostPartition
    from tessera.sw_driver.model_compiler import run_model
    from tessera.sw_driver.model_runner import run_graph_on
    from tessera.sw_driver.onnx_import import load_model

    # Everything that can be wrong with the command is found here, before Verilog is generated or a simulator runs.
    cfg = config_from_args(args)
    on_device = args.target != "host"
    if args.strict and not on_device:
        raise UsageError("--strict asks that every compute layer run on the device; --target host runs none "
                         "there (accepted with --strict: sim, serial:PORT)")
    if not on_device and cfg.multiplier != "exact":
        raise UsageError(f"--target host computes onnxruntime's arithmetic, not the {cfg.multiplier!r} multiplier's; "
                         f"accepted with an approximate multiplier: --target sim or serial:PORT")
    for option, path in (("--output", args.output), ("--report", args.report)):
        if path:
            check_output_path(path, option)
    if not Path(args.model).is_file():
        raise InputError(f"model file {args.model} {'is a folder' if Path(args.model).is_dir() else 'does not exist'}"
                         f"; accepted: a quantized .onnx model, or a .tsr image from tessera compile")
    if args.per_layer and not on_device:
        raise UsageError("--per-layer chooses how the device runs the model; --target host runs none of it there "
                         "(accepted with --per-layer: sim, serial:PORT)")
    if _is_image(args.model) and (args.per_layer or not on_device):
        raise UsageError(f"{args.model} is a compiled image: it runs resident on a device (accepted: --target sim "
                         f"or serial:PORT without --per-layer, or the .onnx model it came from)")
    if args.fold_row_taps and (args.per_layer or not on_device or _is_image(args.model)):
        raise UsageError("--fold-row-taps folds the input of a model the device keeps resident, as it compiles it; "
                         "accepted with an .onnx model and --target sim or serial:PORT, without --per-layer (a "
                         ".tsr image is folded or not as tessera compile made it)")
    model_path = _onnx_model(args.model)
    graph = load_model(model_path)
    inputs = read_inputs(args.input, model_inputs(model_path))
    first = np.asarray(next(iter(inputs.values())))
    batch = first.shape[0] if first.ndim > 1 else 1     # the inputs a resident run takes at once
    image = _image_for_run(args, cfg, model_path, batch) if on_device and not args.per_layer else None
    # Host partitions are onnxruntime's: where the model has any, a model or input onnxruntime cannot run is refused
    # here, before any simulation (and --check compares with these outputs).
    needs_onnxruntime = args.check or any(isinstance(layer, HostPartition) for layer in graph.layers)
    reference = _onnxruntime_outputs(model_path, inputs) if needs_onnxruntime else None
    if args.strict:
        fallbacks = host_fallbacks(planned_placement(graph, inputs, cfg))
        if fallbacks:
            raise PlacementError(_fallback_message(fallbacks, "would run"))

    if not on_device:
        device = None
    elif args.target == "sim":
        from tessera.sw_driver.runtime import open_sim_device
        print(f"device: {cfg.dataflow} {cfg.rows}x{cfg.cols} (config {cfg.hash}), simulated from its RTL")
        device = open_sim_device(cfg)
    else:
        device = _open_serial(cfg, args.target.removeprefix("serial:"))
    one_time = None
    try:
        if image is not None:
            outputs, reports, one_time = run_model(graph, inputs, device, image.segments)
        else:
            outputs, reports = run_graph_on(graph, inputs, device)
    finally:
        if device is not None:
            device.close()
    if args.output and args.output.endswith(".npz"):
        np.savez(args.output, **outputs)
    elif args.output:
        np.save(args.output, outputs[graph.outputs[0].name])

    _print_layers(reports, verbose=args.verbose)
    if on_device:
        fallbacks = host_fallbacks({r.name: (r.op, r.target == "device", r.reason) for r in reports})
        if args.strict and fallbacks:   # placed on the device beforehand, yet it fell back: still not silent
            raise PlacementError(_fallback_message(fallbacks, "ran"))
        _warn_if_nothing_on_device(reports)
    check = _check(graph, inputs, outputs, reference, cfg) if args.check else None
    if reference is not None and not args.check:
        _warn_if_not_onnxruntimes(outputs, reference)

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
    # the first input's first dimension counts the inferences of the run (a batch of images, say)
    first = np.asarray(inputs[graph.inputs[0].name])
    inferences = max(1, first.shape[0] if first.ndim > 1 else 1)
    carbon = per_million(totals["energy_pj"]["total"] / inferences, carbon_from_args(args))
    totals["inferences"] = inferences
    per_inference, one_time = _per_inference(cfg, totals, device_layers, one_time)
    if image is not None:
        _print_residency(image, per_inference, one_time)
    if device_layers:
        print(f"energy on the device: {summary_line(carbon)}")
    if args.report:
        layers = [{
            "name": r.name, "op": r.op, "target": r.target, "reason": r.reason, "resident": r.resident,
            "macs": r.macs,
            "macs_skipped": r.macs_skipped, "cycles": r.cycles, "utilization": r.utilization,
            "counters": _report_counters(r.counters) if r.counters else {},
            "energy_pj": r.energy_pj,
        } for r in reports]
        report = {"config": cfg.to_dict(), "config_hash": cfg.hash, "model": str(args.model),
                  "target": args.target, "mode": "resident" if image is not None else "per-layer",
                  "segments": _segments_report(image), "layers": layers, "per_inference": per_inference,
                  "one_time": one_time, "totals": totals, "carbon": carbon, "check": check}
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2)
        print(f"report: {args.report}")
    # an approximate multiplier differs from onnxruntime by design: then only the golden model must agree
    if check and (check["golden_mismatches"] or (check["onnxruntime_mismatches"] and cfg.multiplier == "exact")):
        return 1
    return 0


def _onnx_model(path):
    """The ONNX model a run reads: ``path``, or a .tsr image's own model, extracted into the cache."""
    from tessera.gen.cache import cache_dir
    from tessera.sw_driver.model_image import image_model

    if not _is_image(path):
        return Path(path)
    model_bytes = image_model(path)
    path = cache_dir("images") / f"{hashlib.sha256(model_bytes).hexdigest()[:16]}.onnx"
    path.write_bytes(model_bytes)
    return path


def _image_for_run(args, cfg, model_path, batch):
    """The ModelImage ``tessera run`` keeps resident: a .tsr image given (on its own configuration only), or the
    ONNX model compiled for runs of ``batch`` inputs, once per model, configuration and batch (cached)."""
    from tessera.sw_driver.model_image import cached_image, read_image

    if _is_image(args.model):
        return read_image(args.model, cfg)
    return cached_image(model_path, cfg, batch, fold_row_taps=args.fold_row_taps)


def _is_image(path):
    with open(path, "rb") as f:
        return f.read(2) == b"PK"      # a zip archive (an ONNX model is a protobuf)


def _per_inference(cfg, totals, device_layers, one_time):
    """The report's ``per_inference`` (the run's device figures over its inferences, latency at the
    configuration's clock) and ``one_time`` (what loading the resident segments took) sections."""
    from tessera.sw_driver.energy import layer_energy

    n = totals["inferences"]
    cycles = totals["cycles"] / n
    macs = sum(r.macs - r.macs_skipped for r in device_layers) / n
    per_inference = {"cycles": cycles, "latency_us": cycles / cfg.clock_mhz,
                     "utilization": macs / (cfg.pes * cycles) if cycles else 0.0,
                     "link_bytes_in": totals["link_bytes_in"] / n, "link_bytes_out": totals["link_bytes_out"] / n,
                     "energy_pj": {k: v / n for k, v in totals["energy_pj"].items()}}
    if one_time is None:
        return per_inference, {"link_bytes_in": 0, "cycles": 0, "energy_pj": {}}
    return per_inference, {"link_bytes_in": 4 * one_time.counters["link_words_in"], "cycles": one_time.cycles,
                           "energy_pj": layer_energy(cfg, one_time.counters)}


def _print_residency(image, per_inference, one_time):
    resident = [s for s in image.segments if s.model is not None]
    print(f"resident: {image.resident_layers()} layers in {len(resident)} segments; one-time load "
          f"{one_time['link_bytes_in']:,} link bytes, {one_time['cycles']:,} cycles")
    for segment in image.segments:
        if segment.model is None:
            print(f"  not resident: {segment.layers[0]}..{segment.layers[-1]}: {segment.reason}")
        elif segment.model.plan.get("streamed_layers"):
            print(f"  {segment.layers[0]}..{segment.layers[-1]}: weights streamed with every run (they do not all "
                  f"fit): {', '.join(segment.model.plan['streamed_layers'])}")
    print(f"per inference: {per_inference['cycles']:,.0f} cycles ({per_inference['latency_us']:,.1f} us), link "
          f"{per_inference['link_bytes_in']:,.0f} B in, {per_inference['link_bytes_out']:,.0f} B out")


def _segments_report(image):
    if image is None:
        return []
    return [{"layers": s.layers, "resident": s.model is not None, "reason": s.reason,
             **({"plan": s.model.plan} if s.model is not None else {})} for s in image.segments]


def _cmd_compile(args):
    from tessera.sw_driver.inputs import InputError, check_output_path
    from tessera.sw_driver.model_image import compile_image, write_image

    cfg = config_from_args(args)
    check_output_path(args.output, "-o")
    if not Path(args.model).is_file():
        raise InputError(f"model file {args.model} {'is a folder' if Path(args.model).is_dir() else 'does not exist'}"
                         f"; accepted: a quantized .onnx model")
    image = compile_image(args.model, cfg, args.batch, fold_row_taps=args.fold_row_taps)
    write_image(image, args.output)
    layers = len(image.graph.layers)
    print(f"{args.output}: {args.model} for {cfg.dataflow} {cfg.rows}x{cfg.cols} (config {cfg.hash}): "
          f"{image.resident_layers()} of {layers} layers resident")
    for segment in image.segments:
        span = f"{segment.layers[0]}..{segment.layers[-1]}" if len(segment.layers) > 1 else segment.layers[0]
        if segment.model is None:
            print(f"  {span}: not resident: {segment.reason}")
            continue
        plan = segment.model.plan
        act = max(t["act_words"][1] for t in plan["tensors"])
        vec = max(t.get("vec_words", [0, 0])[1] for t in plan["tensors"])
        print(f"  {span}: {len(segment.layers)} layers, runs of {plan['batch']}; weight words "
              f"{plan['weight_words']}, parameter words {plan['param_words']}, program words "
              f"{plan['program_words']}, activation words {act}, vector words {vec}")
        if plan.get("streamed_layers"):
            print(f"    weights streamed with every run (they do not all fit): {', '.join(plan['streamed_layers'])}")
    return 0


#: Host reasons longer than this are cut in the table's notes unless -v.
_NOTE_WIDTH = 110


def _print_layers(reports, verbose=False):
    """The run table: one row per layer; a host row points to a note saying why, each reason written once."""
    notes = {}
    print(f"{'layer':24} {'op':18} {'ran on':9} {'MACs':>11} {'cycles':>9} {'util':>6}")
    for r in reports:
        where, util, cycles = r.target, "", ""
        if r.target == "device":
            util, cycles = f"{r.utilization:6.1%}", f"{r.cycles:9,}"
        else:
            where = f"host [{notes.setdefault(r.reason, len(notes) + 1)}]"
        print(f"{r.name[:24]:24} {r.op[:18]:18} {where:9} {r.macs:11,} {cycles:>9} {util:>6}")
    for reason, number in notes.items():
        note = f"[{number}] {reason or 'no reason given'}"
        print(note if verbose or len(note) <= _NOTE_WIDTH else note[:_NOTE_WIDTH - 9] + " ... (-v)")


def _fallback_message(fallbacks, verb):
    layers = sum(len(names) for names in fallbacks.values())
    return (f"--strict: {layers} compute layer{'s' if layers > 1 else ''} {verb} on the host: "
            + "; ".join(f"{', '.join(names)}: {why}" for why, names in fallbacks.items()))


def _warn_if_not_onnxruntimes(outputs, reference):
    """A model with host partitions was run whole on onnxruntime first (the reference): say if the outputs differ.

    They can: onnxruntime's optimizer may rewrite across the boundary of a partition (e.g. fold a requantisation
    that straddles it), which a subgraph cannot follow. Not silent, then."""
    size = sum(int(y.size) for y in outputs.values())
    differing = sum(_differing(reference[name], y) for name, y in outputs.items())
    if differing:
        print(f"tessera: warning: {differing} of {size} outputs differ from onnxruntime's run of the whole model "
              f"(--check says more)", file=sys.stderr)


def _warn_if_nothing_on_device(reports):
    from tessera.sw_driver.inputs import is_compute
    compute = [r for r in reports if is_compute(r.op)]
    if any(r.target == "device" for r in compute) or any(r.resident for r in reports):
        return
    if not compute:
        what = "the model has no compute layer (Conv, Gemm, MatMul) for the device"
    elif len(compute) == 1:
        what = (f"the model's one compute layer, {compute[0].name!r} ({compute[0].op}), ran on the host; the table "
                f"says why")
    else:
        what = f"none of the model's {len(compute)} compute layers ran on the device; the table says why"
    print(f"tessera: warning: {what}", file=sys.stderr)


def _check(graph, inputs, outputs, runtime, cfg):
    """Compare a run's outputs with the golden model (of ``cfg``'s multiplier) and with onnxruntime's
    (``runtime``); print one line; return the report's "check" block."""
    from tessera.sw_driver.device_model import device_model_outputs
    from tessera.sw_driver.host_exec import inexact_layers, run_graph
    approximate = cfg.multiplier != "exact"
    golden = device_model_outputs(graph, inputs, cfg) if approximate else run_graph(graph, inputs)
    size = sum(int(y.size) for y in outputs.values())
    golden_mismatches = sum(_differing(golden[name], y) for name, y in outputs.items())
    runtime_mismatches = sum(_differing(runtime[name], y) for name, y in outputs.items())
    inexact = inexact_layers(graph)
    why = (f" (onnxruntime computes {len(inexact)} layer{'s' if len(inexact) > 1 else ''} in float, which the host "
           f"does not reproduce bit for bit: see the report)") if runtime_mismatches and inexact else ""
    if approximate:
        why = f" (expected: the {cfg.multiplier} multiplier approximates every product)" if runtime_mismatches else ""
    model = f"golden model with the {cfg.multiplier} multiplier" if approximate else "golden model"
    print(f"check: {model}: {golden_mismatches} of {size} outputs differ; onnxruntime: {runtime_mismatches} of "
          f"{size} outputs differ{why}")
    return {"golden_mismatches": golden_mismatches, "onnxruntime_mismatches": runtime_mismatches, "outputs": size,
            "multiplier": cfg.multiplier, "layers_where_onnxruntime_runs_float": inexact}


def _onnxruntime_outputs(model, inputs):
    """``{output name: array}`` from onnxruntime's CPU provider running the model file itself."""
    import onnxruntime as ort

    from tessera.sw_driver.host_partition import OnnxRuntimeError, onnxruntime_reason
    options = ort.SessionOptions()
    options.log_severity_level = 4      # its failures reach the user as our one line, not its log as well
    try:
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's own exception types are not public
        raise OnnxRuntimeError(f"onnxruntime cannot load {model}: {onnxruntime_reason(error)}") from error
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, inputs), strict=True))
    except Exception as error:  # noqa: BLE001 - as above
        raise OnnxRuntimeError(f"onnxruntime fails on {model} with this input: {onnxruntime_reason(error)}") \
            from error


def _differing(reference, y):
    """Elements of ``y`` not equal to ``reference`` (NaN equal to NaN; every element if the shapes differ)."""
    import numpy as np
    if reference.shape != y.shape:
        return int(y.size)
    same = reference == y
    if reference.dtype.kind == "f":
        same |= np.isnan(reference) & np.isnan(y)
    return int(y.size - np.count_nonzero(same))


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


class OneLineParser(argparse.ArgumentParser):
    """Errors in one line, what is wrong and what is accepted, without the usage block above it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _build_parser():
    parser = OneLineParser(prog="tessera", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tessera {importlib.metadata.version('tessera')}")
    parser.add_argument("--cache-dir", metavar="DIR", type=folder_argument,
                        help="build cache for Verilator models and harnesses (default: $TESSERA_CACHE, else "
                             "~/.cache/tessera)")
    commands = parser.add_subparsers(dest="command", required=True)

    verilog = commands.add_parser("verilog", help="generate Verilog for a configuration under build/")
    lint = commands.add_parser("lint", help="generate Verilog and run the Verilator lint gate on it")
    for p in (verilog, lint):
        add_config_arguments(p)
        p.add_argument("--out", default="build", type=folder_argument, help="output root (default: build)")

    demo = commands.add_parser("demo", help="the digits CNN, quantized by onnxruntime, on the simulated RTL: accuracy, "
                                            "cycles, utilisation, link bytes and energy")
    add_config_arguments(demo, board=True)
    demo.add_argument("--batch", type=checked_argument(integer_argument, check_batch), default=60,
                      help="test images per device program, at least 1 (default 60)")
    demo.add_argument("--format", default="QOperator", type=_one_of(QUANT_FORMATS, "a quantization format"),
                      metavar="|".join(QUANT_FORMATS), help="onnxruntime quantization format (default QOperator)")
    demo.add_argument("--images", type=checked_argument(integer_argument, check_images),
                      help="run only the first N test images (default: all 360)")
    demo.add_argument("--prune", type=checked_argument(number_argument, check_prune), default=0.0,
                      help="zero this fraction (0 <= F < 1) of the weights of every layer but the first conv and the "
                           "classifier by gradual magnitude pruning with fine-tuning first (default 0)")
    demo.add_argument("--prune-by", default="tile", type=_one_of(PRUNE_BY, "a pruning granularity"),
                      metavar="|".join(PRUNE_BY),
                      help="prune whole rows x cols weight tiles, which the compiler skips (default), single "
                           "weights, or tiles shared out by each layer's energy per weight (ws only; docs/pruning.md)")
    demo.add_argument("--no-skip", action="store_true",
                      help="run all-zero weight tiles anyway (to measure what skipping them saves)")
    demo.add_argument("--per-layer", action="store_true",
                      help="run each device layer as its own program, its weights and activations sent over the link "
                           "per batch (the default keeps runs of Conv and Gemm layers resident on the device)")
    demo.add_argument("--report", help="write the JSON report here")
    add_carbon_arguments(demo)

    run = commands.add_parser("run", help="run a quantized ONNX model on the accelerator (or the host)")
    run.add_argument("model", help="quantized ONNX model (QDQ or QOperator, from onnxruntime's quantize_static), or "
                                   "a .tsr image from tessera compile")
    run.add_argument("--input", required=True,
                     help="input tensor, .npy; or .npz with one array per graph input, named as the input is")
    run.add_argument("--output", help="where to write the outputs: .npz, one array per graph output, named as the "
                                      "output is; any other name, the first output as .npy (its folder must exist)")
    run.add_argument("--target", default="sim", type=_target,
                     help="sim (the RTL under Verilator), host (golden model only) or serial:PORT (a board "
                          "programmed by tessera deploy)")
    run.add_argument("--report", help="write the JSON report here (its folder must exist)")
    add_carbon_arguments(run)
    run.add_argument("--check", action="store_true",
                     help="also run the golden model and onnxruntime and compare; exit status 1 if either differs")
    run.add_argument("--strict", action="store_true",
                     help="fail, before running anything, if a compute layer (Conv, Gemm/MatMul) would run on the "
                          "host")
    run.add_argument("--per-layer", action="store_true",
                     help="run each device layer as its own program, its weights and activations sent over the link "
                          "each time (the default keeps runs of Conv and Gemm layers resident on the device)")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="write each reason a layer ran on the host in full (default: cut to one line)")
    _add_fold_argument(run)
    add_config_arguments(run, board=True)

    compile_ = commands.add_parser("compile", help="compile a quantized ONNX model into a deployable image (.tsr) "
                                                   "for a configuration: its resident segments' weights, parameters "
                                                   "and programs, with a static memory plan")
    compile_.add_argument("model", help="quantized ONNX model (QDQ or QOperator)")
    compile_.add_argument("-o", "--output", required=True, help="the image to write (.tsr; its folder must exist)")
    compile_.add_argument("--batch", type=checked_argument(integer_argument, check_batch), default=1,
                          help="inputs a run of each resident segment computes, at most (fewer where its feature "
                               "maps would not fit; default 1)")
    _add_fold_argument(compile_)
    add_config_arguments(compile_, board=True)
    return parser, commands


def _add_fold_argument(parser):
    parser.add_argument("--fold-row-taps", action="store_true",
                        help="let the host fold a resident first layer's kernel row taps into channels where that "
                             "is faster (im2col along the row: a 3x3 conv over 3 channels runs 3 folds instead of "
                             "9), its input crossing the link as many times over (default: the input as it is)")


def main(argv=None):
    parser, commands = _build_parser()
    handlers = {"verilog": _cmd_verilog, "lint": _cmd_lint, "demo": _cmd_demo, "run": _cmd_run,
                "compile": _cmd_compile}
    for plugin in importlib.metadata.entry_points(group=COMMAND_PLUGINS):
        handlers.update(plugin.load()(commands))

    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:      # --help, --version, or a bad argument (already said, in one line)
        return stop.code or 0
    if args.cache_dir:
        from tessera.gen.cache import set_cache_root
        set_cache_root(args.cache_dir)
    try:
        status = handlers[args.command](args)
    except ConfigError as error:
        kind = "type error" if isinstance(error, ConfigTypeError) else "error"
        print(f"tessera: configuration {kind}: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - every failure reaches the user as one line, with its kind
        from tessera.gen.lint import LintError
        from tessera.sw_driver.compiler import TilingError
        from tessera.sw_driver.host_exec import HostLayerError
        from tessera.sw_driver.host_partition import OnnxRuntimeError
        from tessera.sw_driver.inputs import InputError, PlacementError
        from tessera.sw_driver.isa_encode import DeviceError
        from tessera.sw_driver.model_image import ImageError
        from tessera.sw_driver.onnx_import import ModelError
        from tessera.sw_driver.transport import LinkError
        if isinstance(error, (LintError, TilingError, ModelError, DeviceError, LinkError, UsageError, InputError,
                              PlacementError, OnnxRuntimeError, HostLayerError, ImageError, OSError)):
            print(f"tessera: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        raise
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
