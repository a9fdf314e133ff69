"""``tessera sweep``: design-space exploration on Ray, one task per point, resumable from a cache of points.

Ray runs the points: a local instance on this machine's cores by default, or an existing cluster with
``--address``, so the same command spreads over many machines (every node needs tessera installed, or a
``runtime_env``; see docs/sweep.md). Grid search submits every point of the space as a Ray task, keeping as many
in flight as the cluster has CPUs; ``--search optuna`` asks Ray Tune's OptunaSearch (TPE, multi-objective over
latency, energy and LUTs) for ``--budget`` points. Points already in the cache (keyed by configuration, workload,
tool versions and what is measured) are read, not run again.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .space import SpaceError, load_space
from .sweep_point import PointCache, Workload, evaluate_point, point_key
from .sweep_report import OBJECTIVES, label, write_outputs

__all__ = ["register", "run_sweep", "demo_workload", "model_workload"]

#: A failed point's objectives, for the searcher: far worse than any measured one, but finite (TPE needs numbers).
_PENALTY = 1e12
_INSTALL_HINT = "tessera sweep needs Ray and Optuna: pip install 'tessera[sweep]'"


def register(subparsers):
    """Add ``sweep`` to ``tessera``'s subparsers; return ``{"sweep": handler}``."""
    from tessera.sw_driver.cli import checked_argument, folder_argument, integer_argument
    from tessera.sw_driver.demo import check_images

    from .boards import BOARDS

    sweep = subparsers.add_parser("sweep", help="design-space exploration on Ray: simulate and synthesise every "
                                                "point of a space; points.json/csv, the Pareto front, plots")
    source = sweep.add_mutually_exclusive_group(required=True)
    source.add_argument("model", nargs="?", help="quantized ONNX model to run at every point")
    source.add_argument("--demo", action="store_true", help="the digits CNN of `tessera demo`")
    sweep.add_argument("--space", required=True, metavar="SPACE.toml", help="the space: [space], [base], board")
    sweep.add_argument("--inputs", metavar="FILE", help="the model's inputs (.npy/.npz; default: random, seed 0)")
    sweep.add_argument("--images", type=checked_argument(integer_argument, check_images),
                       help="demo: test digits per point (default: the space's images, else 8)")
    sweep.add_argument("--address", help="join this Ray cluster (e.g. ray://head:10001 or auto) instead of "
                                         "starting a local instance")
    sweep.add_argument("--cpus", type=_positive_int, help="CPUs of the local Ray instance (default: all)")
    sweep.add_argument("--serial", action="store_true", help="grid only: run the points one after another in "
                                                             "this process, without Ray (a baseline to time)")
    sweep.add_argument("--search", choices=("grid", "optuna"), default="grid",
                       help="grid: every point; optuna: --budget points chosen by Optuna through Ray Tune")
    sweep.add_argument("--budget", type=_positive_int, help="points to run (grid: the first N; optuna: trials)")
    sweep.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler and of random inputs")
    sweep.add_argument("--board", choices=sorted(BOARDS) + ["none"],
                       help="synthesise for this board (default: the space's board; none: no synthesis)")
    sweep.add_argument("--place-and-route", action="store_true", help="also place and route each point that fits "
                                                                      "(minutes to tens of minutes each)")
    sweep.add_argument("--synth-time-limit", type=_positive_int, metavar="SECONDS",
                       help="stop Yosys on a point after this long (default: 1200)")
    sweep.add_argument("-o", "--out", required=True, type=folder_argument, help="output folder (also the cache)")
    return {"sweep": _cmd_sweep}


def _positive_int(text):
    from tessera.sw_driver.cli import integer_argument
    value = integer_argument(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range; accepted: 1 or more")
    return value


def _cmd_sweep(args):
    if args.serial and args.search != "grid":
        print("tessera: --serial runs a grid only; leave out --search optuna", file=sys.stderr)
        return 1
    try:
        import ray  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        print(f"tessera: {_INSTALL_HINT}", file=sys.stderr)
        return 1
    try:
        space = load_space(args.space)
    except SpaceError as error:
        print(f"tessera: {error}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # a model the importer refuses is one line now, not a failure at every point
    from tessera.sw_driver.onnx_import import load_model
    if args.demo:
        workload = demo_workload(args.images or space.images or 8, out)
    else:
        load_model(args.model)
        workload = model_workload(args.model, args.inputs, seed=args.seed)
    board = None if args.board == "none" else args.board or space.board
    measure = {"board": board, "place_and_route": args.place_and_route}
    if args.synth_time_limit:
        measure["synth_time_limit_s"] = args.synth_time_limit
    try:
        summary = run_sweep(space, workload, measure, out, address=args.address, cpus=args.cpus,
                            search=args.search, budget=args.budget, seed=args.seed, serial=args.serial)
    except KeyboardInterrupt:
        done = len(list((out / "cache").glob("*.json")))
        print(f"\ntessera: sweep interrupted; {done} points are in the cache ({out / 'cache'}): the same command "
              f"resumes", file=sys.stderr)
        return 130
    _print_summary(summary, out)
    return 0


def demo_workload(images, folder):
    """The digits CNN of ``tessera demo``, quantized by onnxruntime, on its first ``images`` test digits."""
    from tessera.sw_driver.demo import FLOAT_MODEL
    from tessera.sw_driver.digits.data import load_digits_split
    from tessera.sw_driver.digits.quantize import quantize_digits
    from tessera.sw_driver.inputs import model_inputs

    quantized = quantize_digits(FLOAT_MODEL, Path(folder) / "digits_cnn_int8.onnx")
    _, _, x_test, y_test = load_digits_split()
    x_test, y_test = x_test[:images], y_test[:images]
    name = model_inputs(quantized)[0].name
    model = Path(quantized).read_bytes()
    return Workload("digits CNN", model, {name: x_test}, len(x_test), _onnxruntime_outputs(model, {name: x_test}),
                    labels=y_test)


def model_workload(model, inputs=None, *, seed=0):
    """A quantized ONNX model with its inputs from ``inputs`` (.npy/.npz), or random ones of its declared shape
    (symbolic sizes: 1)."""
    from tessera.sw_driver.inputs import model_inputs, read_inputs

    specs = model_inputs(model)
    if inputs:
        tensors = read_inputs(inputs, specs)
    else:
        rng = np.random.default_rng(seed)
        tensors = {}
        for spec in specs:
            shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in (spec.dims or (1,)))
            if np.issubdtype(spec.dtype, np.integer):
                info = np.iinfo(spec.dtype)
                tensors[spec.name] = rng.integers(info.min, info.max + 1, shape).astype(spec.dtype)
            else:
                tensors[spec.name] = rng.normal(0.0, 1.0, shape).astype(spec.dtype)
    batch = next(iter(tensors.values())).shape[0] if tensors and next(iter(tensors.values())).ndim else 1
    data = Path(model).read_bytes()
    return Workload(Path(model).name, data, tensors, max(1, batch), _onnxruntime_outputs(data, tensors))


def _onnxruntime_outputs(model, inputs):
    """onnxruntime's outputs for ``inputs`` (once, on the driver: cheap beside a simulation), or None if it cannot
    run the model."""
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))
    except Exception:     # noqa: BLE001 - the comparison is informative; the golden model is the check
        return None


def _check_reachable(address):
    """Fail in seconds on a cluster address nothing listens at: Ray itself retries it for minutes."""
    import socket
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
    except ValueError:
        raise ConnectionError(f"--address {address}: not HOST:PORT; accepted: the address `ray start --head` "
                              "printed (e.g. 10.0.0.5:6379), 'auto', or none") from None
    except OSError as error:
        raise ConnectionError(f"--address {address}: no Ray cluster answers there ({error.strerror or error}); "
                              "accepted: the address `ray start --head` printed, 'auto', or none") from None


def run_sweep(space, workload, measure, out, *, address=None, cpus=None, search="grid", budget=None, seed=0,
              progress=True, serial=False):
    """Run the sweep on Ray (``serial``: in this process, one point after another) and write its outputs into
    ``out``; return the summary (points run, cached, failed, wall time)."""
    out = Path(out)
    cache = PointCache(out / "cache")
    started = time.monotonic()
    if serial:
        points, computed = _run_grid(space, workload, measure, out, cache, None, budget, progress)
        return _finish(space, workload, measure, out, points, computed, "grid (serial, no Ray)", 1, started)
    if search == "grid" and address is None and _grid_cached(space, workload, measure, cache, budget):
        # nothing to measure: no Ray instance to start (seconds of its own) for a sweep run again
        points, computed = _run_grid(space, workload, measure, out, cache, None, budget, progress)
        return _finish(space, workload, measure, out, points, computed, "grid (all from the cache, no Ray)", 1,
                       started)
    import ray

    # workers inherit the build cache, so simulators built once are shared by the points and by later sweeps
    env = {k: os.environ[k] for k in ("TESSERA_CACHE",) if os.environ.get(k)}
    # "local": a Ray instance of the sweep's own, even where a cluster started by `ray start` runs (join that one
    # with --address auto)
    init = dict(address=address or "local", include_dashboard=False, log_to_driver=False, configure_logging=False,
                runtime_env={"env_vars": env} if env else None)
    if address is None:
        init["num_cpus"] = cpus or os.cpu_count()
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    try:
        ray.init(**init)
    except ConnectionError as error:    # Ray's own message hides why (its cause): name both, and what would work
        raise ConnectionError(f"--address {address}: cannot join that Ray cluster ({error.__cause__ or error}); "
                              "accepted: the address `ray start --head` printed, with that cluster's "
                              "RAY_AUTH_TOKEN, or no --address for a Ray instance of the sweep's own") from error
    try:
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if search == "grid":
            points, computed = _run_grid(space, workload, measure, out, cache, slots, budget, progress)
        else:
            points, computed = _run_optuna(space, workload, measure, out, cache, slots, budget or 20, seed,
                                           progress)
    finally:
        ray.shutdown()      # stops the local instance's workers, also after Ctrl-C
    return _finish(space, workload, measure, out, points, computed, search, slots, started)


def _finish(space, workload, measure, out, points, computed, search, slots, started):
    for point in points:
        point["label"] = label(point, space.fields)
    summary = {"workload": workload.name, "images": workload.images, "workload_digest": workload.digest,
               "measure": measure, "search": search, "points": len(points), "computed": computed,
               "cached": len(points) - computed,
               "ok": sum(p["status"] == "ok" for p in points),
               "failed": sum(p["status"] != "ok" for p in points),
               "cpus": slots, "wall_seconds": round(time.monotonic() - started, 1),
               "point_seconds": round(sum(p.get("seconds", 0.0) for p in points if not p.get("cached")), 1)}
    paths = write_outputs(points, out, summary)
    summary["outputs"] = {name: str(path) for name, path in paths.items()}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


class _Progress:
    """Points done / running / failed, on a tqdm bar (stderr)."""

    def __init__(self, total, enabled):
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc="sweep", unit="point", disable=not enabled, file=sys.stderr)
        self.running = self.failed = self.cached = 0
        self.show()

    def show(self):
        self.bar.set_postfix_str(f"running {self.running}, failed {self.failed}, cached {self.cached}")

    def start(self):
        self.running += 1
        self.show()

    def finish(self, point, *, was_running=True):
        self.running -= was_running
        self.failed += point["status"] != "ok"
        self.cached += bool(point.get("cached"))
        self.bar.update(1)
        self.show()

    def close(self):
        self.bar.close()


def _record(cache, key, point, cached):
    point = {**point, "key": key, "cached": cached}
    if not cached:
        cache.put(key, {k: v for k, v in point.items() if k != "cached"})
    return point


def _grid_keys(space, workload, measure, budget):
    """The grid's points (their configuration values) and their cache keys."""
    grid = [space.config_values(p) for p in space.grid()][:budget]
    return grid, [point_key(values, workload.digest, measure) for values in grid]


def _grid_cached(space, workload, measure, cache, budget):
    """Whether every point of the grid is in the cache."""
    return all(cache.get(key) is not None for key in _grid_keys(space, workload, measure, budget)[1])


def _run_grid(space, workload, measure, out, cache, slots, budget, progress):
    """The grid's points, from the cache or run as Ray tasks (``slots`` in flight; ``None``: in this process)."""
    grid, keys = _grid_keys(space, workload, measure, budget)
    results = {}
    bar = _Progress(len(grid), progress)
    todo = []
    for key, values in zip(keys, grid, strict=True):
        if key in results:
            continue
        hit = cache.get(key)
        if hit is not None:
            results[key] = _record(cache, key, hit, True)
            bar.finish(results[key], was_running=False)
        else:
            results[key] = None
            todo.append((key, values))
    work_dir = str(out.resolve() / "synth")
    if slots is None:
        try:
            for key, values in todo:
                bar.start()
                results[key] = _record(cache, key, evaluate_point(values, workload, measure, work_dir), False)
                bar.finish(results[key])
        finally:
            bar.close()
        return [results[key] for key in dict.fromkeys(keys)], len(todo)
    import ray

    task = ray.remote(num_cpus=1, max_retries=0)(evaluate_point)
    workload_ref = ray.put(workload)
    in_flight = {}
    computed = 0
    try:
        while todo or in_flight:
            # no more in flight than CPUs: "running" is true, and a Ctrl-C leaves little to cancel
            while todo and len(in_flight) < slots:
                key, values = todo.pop(0)
                in_flight[task.remote(values, workload_ref, measure, work_dir)] = key
                bar.start()
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                key = in_flight.pop(ref)
                try:
                    point = ray.get(ref)
                except ray.exceptions.RayError as error:     # the worker died (out of memory, node lost)
                    point = {"values": dict(next(v for k, v in zip(keys, grid, strict=True) if k == key)),
                             "status": "failed", "reason": f"Ray task failed: {error}".splitlines()[0]}
                results[key] = _record(cache, key, point, False)
                computed += 1
                bar.finish(results[key])
    except KeyboardInterrupt:
        # an interrupt, not a kill: the tasks' own cleanup stops the tools they started (Yosys, nextpnr)
        for ref in in_flight:
            ray.cancel(ref)
        ray.wait(list(in_flight), num_returns=len(in_flight), timeout=10)
        raise
    finally:
        bar.close()
    return [results[key] for key in dict.fromkeys(keys)], computed


def _run_optuna(space, workload, measure, out, cache, slots, budget, seed, progress):
    # Tune's own console tables would interleave with the progress bar; verbose=0 silences the legacy engine only
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    metrics = ["latency_us", "energy_uj"] + (["lut"] if measure.get("board") else [])
    searcher = OptunaSearch(metric=metrics, mode=["min"] * len(metrics), seed=seed)
    known = {}
    for path in cache.folder.glob("*.json"):
        hit = cache.get(path.stem)
        if hit is not None:
            known[path.stem] = hit
    trainable = tune.with_resources(
        tune.with_parameters(_trial, workload=workload, base=space.base, measure=measure, metrics=metrics,
                             known=known, cache_folder=str(cache.folder.resolve()),
                             work_dir=str(out.resolve() / "synth")),
        {"cpu": 1})
    budget = min(budget, len(space.grid()))     # more trials than points would only repeat points
    bar = _Progress(budget, progress)
    recorder = _tune_recorder(cache, bar)
    tuner = tune.Tuner(
        trainable,
        param_space={name: tune.choice(values) for name, values in space.fields.items()},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=budget, max_concurrent_trials=slots),
        run_config=tune.RunConfig(name="optuna", storage_path=str(out.resolve() / "tune"), verbose=0,
                                  callbacks=[recorder]))
    try:
        tuner.fit()
    finally:
        bar.close()
        _BARS.pop(id(bar), None)
    # Optuna may propose a point twice: it is one point, as first reported
    points = {}
    for point in recorder.points:
        points.setdefault(point["key"], point)
    return list(points.values()), len(recorder.measured)


def _trial(config, *, workload, base, measure, metrics, known, cache_folder, work_dir):
    """One Tune trial: the point from the cache if it is there, else measured; reported to the searcher."""
    from ray import tune

    values = {**base, **config}
    key = point_key(values, workload.digest, measure)
    point = known.get(key)
    if point is None and Path(cache_folder).is_dir():     # measured by another trial of this run, on this machine
        point = PointCache(cache_folder).get(key)
    cached = point is not None
    if not cached:
        point = evaluate_point(values, workload, measure, work_dir)
    scores = {m: float(point[m]) if point["status"] == "ok" else _PENALTY for m in metrics}
    tune.report({**scores, "key": key, "cached": cached, "point": json.dumps(point)})


#: Progress bars of the Tune runs in this process, by id: Tune pickles its callbacks (tuner.pkl, for restoring a
#: run), and a bar holds the terminal's stream, which does not pickle.
_BARS = {}


_Recorder = None


def _tune_recorder(cache, bar):
    """A Tune callback that writes each finished trial's point to the cache as it comes (a Ctrl-C loses only the
    running ones) and drives the progress bar. Its class is made on first use, so that importing this module does
    not import Ray, and kept at module level, so that it pickles by name."""
    global _Recorder
    if _Recorder is None:
        from ray.tune import Callback

        class Recorder(Callback):
            def __init__(self, cache, bar_id):
                self.cache, self.bar_id = cache, bar_id
                self.points, self.measured = [], set()

            def on_trial_start(self, iteration, trials, trial, **info):
                _BARS[self.bar_id].start()

            def on_trial_result(self, iteration, trials, trial, result, **info):
                point = json.loads(result["point"])
                cached = bool(result["cached"])
                self.points.append(_record(self.cache, result["key"], point, cached))
                if not cached:      # two trials of one point at once both measure it: it is still one point
                    self.measured.add(result["key"])
                _BARS[self.bar_id].finish(self.points[-1])

            def on_trial_error(self, iteration, trials, trial, **info):
                _BARS[self.bar_id].finish({"status": "failed"})

        Recorder.__qualname__ = Recorder.__name__ = "_Recorder"
        _Recorder = Recorder
    _BARS[id(bar)] = bar
    return _Recorder(cache, id(bar))


def _print_summary(summary, out):
    print(f"{summary['points']} points ({summary['computed']} run, {summary['cached']} from the cache), "
          f"{summary['ok']} measured, {summary['failed']} failed or did not fit; wall time "
          f"{summary['wall_seconds']:.1f} s on {summary['cpus']} CPUs (the points' own time: "
          f"{summary['point_seconds']:.1f} s)")
    pareto = json.loads((Path(out) / "pareto.json").read_text())
    print(f"Pareto front over {', '.join(pareto['objectives'])}: {len(pareto['front'])} points")
    for p in pareto["points"]:
        print("  " + p["label"] + ": " + ", ".join(f"{n} {p[n]:.4g}" for n in pareto["objectives"]))
    for name, win in pareto["winners"].items():
        print(f"best {OBJECTIVES[name]}: {win['label']} ({win['value']:.4g})")
    print("outputs: " + ", ".join(summary["outputs"][k] for k in ("points.json", "points.csv", "pareto.json",
                                                                  "pareto.png", "resources.png")))

