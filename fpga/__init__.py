"""Tessera on FPGAs: board tops (ULX3S ECP5, iCEBreaker iCE40), the UART host link, builds and reports.

- `uart`, `link`: the device end of the framed link (protocol: :mod:`tessera.sw_driver.link_protocol`).
- `top`: the accelerator behind the link, as both the bitstream and the simulated board run it.
- `sim_board`: that top under Verilator with a bit-level UART and fault injection (``board_harness.cpp``).
- `boards`, `pll`, `build`, `cli`: ``tessera bitstream`` / ``tessera deploy``.
"""
