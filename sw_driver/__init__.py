"""Tessera's host software: the int8 arithmetic, ONNX import, the compiler, the runtime and the ``tessera`` CLI.

Layer rule: ``tessera.sw_driver`` imports ``tessera.hw`` and ``tessera.gen``, never ``tessera.fpga`` or
``tessera.verif``; the FPGA commands reach the CLI through the ``tessera.commands`` entry point.

- `golden`: the one definition of the arithmetic, bit-exact with onnxruntime's int8 kernels.
- `onnx_import`, `layers`, `host_exec`: quantized ONNX (QDQ and QOperator) into a layer IR, and that IR run on the
  host with onnxruntime's semantics.
- `tiling`, `compiler`, `vector_compiler`, `isa_encode`: layers tiled onto a configuration and encoded as the
  device's instruction stream.
- `runtime`, `model_runner`: a device over a transport; a whole model, layer by layer, on the device or the host.
- `transport` (the RTL under Verilator, ``sim_harness.cpp``), `link_protocol`, `serial_transport`: the host link.
- `energy`, `reports`: energy estimates from the hardware counters; JSON, Markdown and pictures.
- `cli`, `demo`, `digits`: ``tessera`` and ``make demo`` with its digits CNN.
"""
