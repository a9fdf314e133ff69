"""Tessera's verification and measurement: cocotb testbenches, reference models and benchmarks.

Layer rule: ``tessera.verif`` may import every other ``tessera`` package, and no package imports it: only the tests
and ``python -m tessera.verif.<module>`` use it. pytest, cocotb and the benchmark peers are development extras.

- `tb_core`, `tb_device`, `tb_common`, `streams`, `cocotb_sim`: cocotb testbenches of the core and the whole device
  under Verilator, every stream with random stalls and backpressure.
- `core_model`, `qadd_model`, `cases`, `gemm_run`: transaction-level models and the shared test cases.
- `onnx_models`, `onnx_multi`, `onnxruntime_ref`: random quantized ONNX models and onnxruntime as the reference.
- `bench_suite`, `scalesim_peer`: ``make bench``, the layer suite beside SCALE-Sim.
- `compare_dataflows`, `activity`: data movement per MAC on WS, OS and RS; PE activity maps from a waveform.
- `soak`, `link_endurance`: ``make soak`` (random layers and damaged programs on random configurations) and
  ``make link-endurance`` (megabytes through the simulated board with link faults); `onnx_fuzz`: importer fuzzing.
- `formal`: ``make formal``, properties of the RTL proved or bounded with SymbiYosys (docs/formal.md).
"""
