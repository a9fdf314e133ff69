"""The ``tessera`` command line."""

import argparse
import sys

from gen.config import DATAFLOWS, AcceleratorConfig, ConfigError

__all__ = ["main", "config_from_args"]


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
    from gen.verilog import write_verilog
    cfg = config_from_args(args)
    path = write_verilog(cfg, root=args.out)
    print(f"{path}  ({cfg.dataflow} {cfg.rows}x{cfg.cols}, config {cfg.hash})")


def _cmd_lint(args):
    from gen.lint import lint_verilog
    from gen.verilog import TOPLEVEL, write_verilog
    cfg = config_from_args(args)
    path = write_verilog(cfg, root=args.out)
    lint_verilog(path, TOPLEVEL)
    print(f"lint clean: {path}")


def _cmd_demo(args):
    from verif.gemm_run import run_gemm_on_rtl
    cfg = config_from_args(args)
    run_gemm_on_rtl(cfg, args.m, args.k, args.n, seed=args.seed, verbose=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    verilog = commands.add_parser("verilog", help="generate Verilog for a configuration under build/")
    lint = commands.add_parser("lint", help="generate Verilog and run the Verilator lint gate on it")
    for p in (verilog, lint):
        add_config_arguments(p)
        p.add_argument("--out", default="build", help="output root (default: build)")

    demo = commands.add_parser("demo", help="run a random requantised GEMM layer on the simulated RTL and check it "
                                            "against the golden model")
    add_config_arguments(demo)
    demo.add_argument("-m", type=int, default=64)
    demo.add_argument("-k", type=int, default=96)
    demo.add_argument("-n", type=int, default=48)
    demo.add_argument("--seed", type=int, default=1)

    args = parser.parse_args(argv)
    handlers = {"verilog": _cmd_verilog, "lint": _cmd_lint, "demo": _cmd_demo}
    try:
        handlers[args.command](args)
    except ConfigError as error:
        print(f"tessera: configuration error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - every failure reaches the user as one line, with its kind
        from gen.lint import LintError
        from sw_driver.tiling import TilingError
        if isinstance(error, (LintError, TilingError)):
            print(f"tessera: {error}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
