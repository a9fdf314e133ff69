"""Tessera's hardware: the contract every other layer builds on, and the Amaranth components of the device.

Layer rule: ``tessera.hw`` imports Amaranth (and the standard library) only; nothing in it imports another
``tessera`` package. The configuration a component takes is the `tessera.gen.config.AcceleratorConfig` object, passed
in, never imported.

- `isa`, `layouts`: the contract: opcodes, packets, error codes, the performance counters, stream and buffer layouts,
  and the limits (``MAX_KERNEL``, ``MAX_STRIDE``, ``MAX_PAD``, ``MAX_CONV_SIDE``) the compiler and the docs read.
- `pe`, `multiplier`, `array_ws`, `array_os`, `array_rs`: processing elements and the three dataflows' arrays.
- `compute_ws`, `compute_os`, `compute_rs`, `window`, `gather`: the sequencers that feed them, with on-chip
  sliding-window addressing for convolutions.
- `buffer`, `tiles`, `drain`, `requant`, `requant_serial`: buffers, the double-buffered accumulator and the
  requantiser that matches onnxruntime bit for bit.
- `vector`, `qadd`: the vector unit (max pooling, onnxruntime's QLinearAdd).
- `core`, `controller`, `counters`, `host_link`, `accelerator`: the compute core and the whole device behind its two
  32-bit host streams.
"""
