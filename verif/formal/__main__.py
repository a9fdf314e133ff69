"""``python -m tessera.verif.formal``: run the formal properties and print a table of their results.

Exit status 1 if any check fails (its line names the assertion and the counterexample's waveform).
"""

import argparse
import concurrent.futures
import signal
import sys
import time

from . import DEFAULT_ROOT, FormalError, run, stop_all
from .catalog import select


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tessera.verif.formal", description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--only", metavar="TEXT", help="only the checks whose name contains TEXT")
    parser.add_argument("--quick", action="store_true", help="the quick subset at its depths (as make test)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="checks run at once (default 2)")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help=f"build folder (default {DEFAULT_ROOT})")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per check (default 1800)")
    args = parser.parse_args(argv)
    checks = select(args.only, quick=args.quick)
    if not checks:
        parser.error(f"--only {args.only!r} matches no check")

    def one(check):
        try:
            result = run(check.spec(), name=check.name, mode=check.mode, depth=check.depth, timeout=args.timeout,
                         root=args.root, script=check.script)
            return check, result.outcome, result.seconds, None
        except FormalError as error:
            return check, "FAILED", None, str(error)

    started = time.monotonic()
    header = f"{'property':34} {'block':36} {'mode':6} {'depth':>5}  {'result':34} {'seconds':>8}"
    print(header, "-" * len(header), sep="\n", flush=True)
    failures = []
    # the checks run in threads: an interrupt or a SIGTERM stops every sby run (and its solvers) from here
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        for check, outcome, seconds, error in pool.map(one, checks):
            shown = f"{seconds:8.1f}" if seconds is not None else f"{'-':>8}"
            print(f"{check.name:34} {check.block:36} {check.mode:6} {check.depth:5}  {outcome:34} {shown}",
                  flush=True)
            if error:
                failures.append(error)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        raise
    pool.shutdown()
    total = time.monotonic() - started
    print(f"{len(checks) - len(failures)} of {len(checks)} checks passed in {total:.0f} s")
    for error in failures:
        print(f"FAILED {error}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
