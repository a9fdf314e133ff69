"""How fast `SimTransport` moves words: a benchmark on the echo device (:mod:`tessera.verif.echo_device`).

Usage: ``python -m tessera.verif.bench_transport [--words N] [--chunk N] [--stall P]``

Prints the harness's build time, the bare clock rate (``run``: no Python per cycle, no words) and the rate of
bit-checked round trips, both as one bulk transfer and in chunks (which adds a request round trip per chunk).
"""

import argparse
import tempfile
import time

import numpy as np

from tessera.sw_driver.transport import DEFAULT_BUILD_ROOT, SimTransport
from tessera.verif import echo_device as echo


def _round_trip(link, echo, words, chunk):
    """Send and receive ``words`` in pieces of ``chunk``; return (seconds, cycles) spent."""
    start_cycles, start = link.cycles, time.perf_counter()
    answers = []
    for first in range(0, len(words), chunk):
        piece = words[first:first + chunk]
        link.send(piece)
        answers.append(link.receive(len(piece)))
    seconds = time.perf_counter() - start
    cycles = link.cycles - start_cycles
    if not np.array_equal(np.concatenate(answers), echo.echo_model(words)):
        raise RuntimeError("the echo device returned wrong words; run tests/test_sim_transport.py")
    return seconds, cycles


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=2_000_000, help="words per round-trip run")
    parser.add_argument("--chunk", type=int, default=1024, help="words per request in the chunked run")
    parser.add_argument("--stall", type=float, default=0.0, help="host-side stall probability on both streams")
    parser.add_argument("--build-root", default=DEFAULT_BUILD_ROOT)
    args = parser.parse_args(argv)

    words = np.random.default_rng(0).integers(0, 1 << 32, args.words, dtype=np.uint32)
    with tempfile.TemporaryDirectory() as folder:
        verilog = echo.write_echo_verilog(folder)
        with SimTransport(verilog, echo.TOPLEVEL, build_root=args.build_root) as link:
            how = "built" if link.build.rebuilt else "found in cache"
            print(f"harness {how} in {link.build.seconds:.2f} s: {link.build.build_dir}")
            link.throttle(in_stall=args.stall, out_stall=args.stall)

            idle_cycles = 10 * args.words
            start = time.perf_counter()
            link.run(idle_cycles)
            seconds = time.perf_counter() - start
            print(f"run (clock only):      {idle_cycles / seconds:>12,.0f} cycles/s")

            for label, chunk in (("bulk", args.words), (f"chunks of {args.chunk}", args.chunk)):
                seconds, cycles = _round_trip(link, echo, words, chunk)
                print(f"round trip, {label + ':':<14}{args.words / seconds:>10,.0f} words/s "
                      f"{cycles / seconds:>12,.0f} cycles/s  ({cycles / args.words:.2f} cycles/word, "
                      f"{seconds:.2f} s)")


if __name__ == "__main__":
    main()
