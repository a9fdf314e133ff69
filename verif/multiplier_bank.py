"""Every PE multiplier design on all 65,536 int8 operand pairs, under Verilator, for comparison with the model.

The designs are combinational (`tessera.hw.pe_multipliers`), so one Verilated module holding all of them is
evaluated once per operand pair by a C++ loop (`multiplier_harness.cpp`); Python only reads the tables back.
"""

from pathlib import Path

import numpy as np
from amaranth.back import verilog
from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from tessera.gen.toolchain import SIM_BUILD_ARGS, build_harness_binary
from tessera.hw.pe_multipliers import MULTIPLIERS, multiplier

__all__ = ["MultiplierBank", "rtl_product_tables"]

HARNESS_SOURCE = Path(__file__).with_name("multiplier_harness.cpp")
_TOPLEVEL = "multiplier_bank"


class MultiplierBank(wiring.Component):
    """All of ``names``' products of ``x`` and ``w`` side by side.

    Attributes
    ----------
    x, w : In(signed(8))
        Activation and weight.
    products : Out(ArrayLayout(signed(16), len(names)))
        Design ``names[i]``'s product in element ``i``.
    """

    def __init__(self, names):
        self.names = tuple(names)
        super().__init__({"x": In(signed(8)), "w": In(signed(8)),
                          "products": Out(data.ArrayLayout(signed(16), len(self.names)))})

    def elaborate(self, platform):
        m = Module()
        for i, name in enumerate(self.names):
            m.d.comb += self.products[i].eq(multiplier(name).product(self.x, self.w))
        return m


def rtl_product_tables(names=tuple(MULTIPLIERS), *, build_root=None):
    """``{name: (256, 256) int64}``: each design's RTL product of ``x`` (row ``x + 128``) and ``w`` (column)."""
    import subprocess
    bank = MultiplierBank(names)
    text = verilog.convert(bank, name=_TOPLEVEL, emit_src=False)
    count = len(bank.names)
    binary, _, _ = build_harness_binary(build_root, _TOPLEVEL, text.encode(), HARNESS_SOURCE, "multiplier_harness",
                                        flags=SIM_BUILD_ARGS, what="the multiplier bank",
                                        files={"bank.h": f"#define PRODUCTS {count}\n"})
    raw = subprocess.run([str(binary)], capture_output=True, check=True).stdout
    tables = np.frombuffer(raw, np.int16).astype(np.int64).reshape(256, 256, count)
    return {name: tables[:, :, i] for i, name in enumerate(bank.names)}
