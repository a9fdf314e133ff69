"""Switching activity of a layer run, from a VCD waveform of the simulated device (parsed with vcdvcd).

:func:`trace_gemm` runs one GEMM on a device whose harness was built with Verilator's ``--trace`` and writes the
whole session as a VCD; :func:`activity` reads it back and counts

- bit toggles per PE (every distinct net named in a ``pe_<row>_<col>`` scope; a net shared by two PEs, such as
  one PE's ``x_out`` that is its neighbour's ``x_in``, counts in both);
- bit toggles per memory port (nets named ``<port>__addr`` / ``__data`` / ``__en``, grouped by scope and port,
  e.g. ``core.act_read``);
- per PE, the toggles of its multiplier's two inputs (activation and the weight it multiplies with) and the clock
  cycles in which both were non-zero: the multiplies zero gating lets through.

The last count ties the waveform to the hardware counters: summed over the PEs it equals
``array_cycles x PEs - macs_gated`` for a GEMM of whole tiles (no padding lanes), because an idle PE's
activation input is held at zero and every gated MAC is one with a zero operand (``tests/test_activity.py``).

Samples are taken with the clock low (even VCD times in the harness's trace: it dumps once per clock phase),
which is the value every register samples at the next rising edge.
"""

import dataclasses
import re
import signal as _signals
from pathlib import Path

import numpy as np

__all__ = ["Activity", "trace_gemm", "activity", "DEFAULT_TRACE_DIR"]

DEFAULT_TRACE_DIR = Path("build/activity")

_PE_SCOPE = re.compile(r"\.pe_(\d+)_(\d+)\.")
_PORT = re.compile(r"^(?P<scope>.*)\.(?P<port>[A-Za-z_][\w$]*?)__(?:addr|data|en)(?:\[[^\]]*\])?$")


@dataclasses.dataclass
class Activity:
    """What a traced run switched.

    Attributes
    ----------
    cycles : int
        Clock cycles in the trace.
    pe_toggles : dict
        ``{(row, col): bit toggles}`` of every net in the PE's scope.
    multiplier_input_toggles : dict
        ``{(row, col): bit toggles}`` of the PE multiplier's activation and weight inputs.
    effective_macs : dict
        ``{(row, col): cycles in which the PE multiplied two non-zero operands}`` (``None`` for a dataflow whose
        PE ports this module does not know).
    port_toggles : dict
        ``{"scope.port": bit toggles}`` of every memory port (addr, data and enable together).
    """
    cycles: int
    pe_toggles: dict
    multiplier_input_toggles: dict
    effective_macs: dict
    port_toggles: dict

    def buffer_port_toggles(self, scope="core"):
        """Port toggles of the ports directly in ``scope`` (the accelerator core's buffer ports by default)."""
        return {name.rsplit(".", 1)[1]: n for name, n in self.port_toggles.items()
                if name.rsplit(".", 1)[0].endswith(f".{scope}") or name.rsplit(".", 1)[0] == scope}


def trace_gemm(cfg, x, w, bias, scale, y_zp, vcd_path):
    """Run one GEMM on a tracing build of ``cfg``'s device, writing the session to ``vcd_path``.

    Returns ``(y, LayerRun)`` like :meth:`tessera.sw_driver.runtime.Device.gemm`; the VCD is complete once this returns.
    """
    from tessera.gen.verilog import DEVICE_TOPLEVEL, cached_verilog
    from tessera.sw_driver.runtime import Device
    from tessera.sw_driver.transport import SimTransport

    verilog = cached_verilog(cfg, top=DEVICE_TOPLEVEL)
    with Device(cfg, SimTransport(verilog, DEVICE_TOPLEVEL, trace=vcd_path)) as device:
        return device.gemm(x, w, bias, scale, y_zp)


def _bits(value):
    """A VCD value string as an int (x and z read as 0)."""
    return int(value.translate(_XZ), 2) if value else 0


_XZ = str.maketrans("xzXZ", "0000")


def _toggles(tv):
    total, previous = 0, None
    for _, value in tv:
        now = _bits(value)
        if previous is not None:
            total += (previous ^ now).bit_count()
        previous = now
    return total


def _per_cycle(tv, cycles):
    """Value of a signal at each clock-low sample (times 0, 2, 4, ...)."""
    times = np.array([t for t, _ in tv], dtype=np.int64)
    values = np.array([_bits(v) for _, v in tv], dtype=np.int64)
    index = np.searchsorted(times, 2 * np.arange(cycles), side="right") - 1
    return np.where(index >= 0, values[np.maximum(index, 0)], 0)


def _popcount_changes(series):
    changes = series[1:] ^ series[:-1]
    return int(sum(int(v).bit_count() for v in changes))


def _base_name(reference):
    return re.sub(r"\[[^\]]*\]$", "", reference)


def _import_vcdvcd():
    """vcdvcd, imported without its side effect: on import it resets SIGPIPE to the default action, so a later
    write to a harness that has exited would kill this whole process instead of raising BrokenPipeError."""
    previous = _signals.getsignal(_signals.SIGPIPE)
    import vcdvcd
    _signals.signal(_signals.SIGPIPE, previous)
    return vcdvcd


def activity(vcd_path, dataflow):
    """Count the switching activity in ``vcd_path`` (see the module's docstring); returns an :class:`Activity`.

    ``dataflow`` says which PE ports feed the multiplier: ``"ws"`` (``x_in``, or ``x_column`` for a depthwise
    vector, times ``weight_0``/``weight_1`` chosen by ``bank_in``) or ``"os"`` (``x_in`` times ``w_in`` when
    ``valid_in``).
    """
    vcdvcd = _import_vcdvcd()

    vcd = vcdvcd.VCDVCD(str(vcd_path), store_scopes=False)
    clock = vcd["TOP.clk"]
    cycles = vcd.endtime // 2 + 1
    pe_nets, port_nets = {}, {}
    pe_ports = {}
    for code, signal in vcd.data.items():
        for reference in signal.references:
            found = _PE_SCOPE.search(reference)
            if found:
                pe = (int(found.group(1)), int(found.group(2)))
                pe_nets.setdefault(pe, {})[code] = signal
                pe_ports.setdefault(pe, {})[_base_name(reference).rsplit(".", 1)[1]] = signal
            port = _PORT.match(reference)
            if port:
                name = f"{port['scope'].removeprefix('TOP.')}.{port['port']}"
                port_nets.setdefault(name, {})[code] = signal
    if not clock.tv:
        raise ValueError(f"{vcd_path}: TOP.clk never changes; not a trace of the harness")

    pe_toggles = {pe: sum(_toggles(s.tv) for s in nets.values()) for pe, nets in sorted(pe_nets.items())}
    port_toggles = {name: sum(_toggles(s.tv) for s in nets.values()) for name, nets in sorted(port_nets.items())}
    multiplier, effective = {}, {}
    for pe, ports in sorted(pe_ports.items()):
        x = _per_cycle(ports["x_in"].tv, cycles)
        if dataflow == "ws" and {"x_column", "depthwise_in"} <= set(ports):   # a depthwise vector's own lane
            x = np.where(_per_cycle(ports["depthwise_in"].tv, cycles) == 1, _per_cycle(ports["x_column"].tv, cycles),
                         x)
        if dataflow == "ws" and {"weight_0", "weight_1", "bank_in"} <= set(ports):
            bank = _per_cycle(ports["bank_in"].tv, cycles)
            w = np.where(bank == 1, _per_cycle(ports["weight_1"].tv, cycles), _per_cycle(ports["weight_0"].tv,
                                                                                          cycles))
            valid = np.ones(cycles, bool)
        elif dataflow == "os" and {"w_in", "valid_in"} <= set(ports):
            w = _per_cycle(ports["w_in"].tv, cycles)
            valid = _per_cycle(ports["valid_in"].tv, cycles) == 1
        else:
            multiplier[pe] = _toggles(ports["x_in"].tv)
            effective[pe] = None
            continue
        multiplier[pe] = _popcount_changes(x) + _popcount_changes(w)
        effective[pe] = int(np.count_nonzero(valid & (x != 0) & (w != 0)))
    return Activity(cycles=cycles, pe_toggles=pe_toggles, multiplier_input_toggles=multiplier,
                    effective_macs=effective, port_toggles=port_toggles)


def main(argv=None):
    """Trace one sparse GEMM and draw the PE activity heat maps (effective MACs, PE toggles) from its VCD."""
    import argparse

    from tessera.gen.config import AcceleratorConfig
    from tessera.sw_driver.reports import plot_pe_heatmap

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--dataflow", default="ws", choices=["ws", "os"])
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of zero weights (default 0.5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_TRACE_DIR)
    args = parser.parse_args(argv)
    cfg = AcceleratorConfig(rows=args.rows, cols=args.cols, dataflow=args.dataflow, vec_depth=0)
    rng = np.random.default_rng(1)
    m, k, n = 4 * args.rows, 2 * args.rows, 2 * args.cols
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    w = (rng.integers(-128, 128, (k, n)) * (rng.random((k, n)) >= args.sparsity)).astype(np.int8)
    args.out.mkdir(parents=True, exist_ok=True)
    vcd = args.out / f"gemm_{args.dataflow}_{args.rows}x{args.cols}.vcd"
    _, run = trace_gemm(cfg, x, w, np.zeros(n, np.int32), np.full(n, 0.01, np.float32), 0, vcd)
    found = activity(vcd, args.dataflow)
    stem = args.out / f"pe_{args.dataflow}_{args.rows}x{args.cols}"
    for name, values, label in (("effective_macs", found.effective_macs, "multiplies not gated"),
                                ("toggles", found.pe_toggles, "bit toggles")):
        path = plot_pe_heatmap(values, args.rows, args.cols, f"{stem}_{name}.png",
                               title=f"{args.dataflow} {args.rows}x{args.cols}, {m}x{k}x{n} GEMM,\n"
                                     f"{args.sparsity:.0%} zero weights: {label}", label=label)
        print(path)
    print(f"counters: array_cycles x PEs = {run.counters['array_cycles'] * cfg.pes:,}, "
          f"gated {run.counters['macs_gated']:,}; effective MACs in the VCD {sum(found.effective_macs.values()):,}")


if __name__ == "__main__":
    main()
