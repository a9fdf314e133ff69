"""Tessera on FPGAs: board tops (ULX3S ECP5, iCEBreaker iCE40), the UART host link, builds and reports.

- `fpga.uart`, `fpga.link`: the device end of the framed link (protocol: :mod:`sw_driver.link_protocol`).
- `fpga.top`: the accelerator behind the link, as both the bitstream and the simulated board run it.
- `fpga.sim_board`: that top under Verilator with a bit-level UART and fault injection (``board_harness.cpp``).
- `fpga.boards`, `fpga.pll`, `fpga.build`, `fpga.cli`: ``tessera bitstream`` / ``tessera deploy``.
"""
