# Tessera: every target installs what it needs into .venv first (python3, g++, make and perl are all a
# fresh machine must have; everything else comes from PyPI).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2
# Test workers: one more than the cores, because a simulated test's Python and its simulator take turns over a pipe
# and a worker leaves its core idle part of the time (a fresh clone's suite on 2 cores: 1,275-1,433 s with 3 workers)
TEST_JOBS ?= $(shell echo $$(( $(JOBS) + 1 )))

# Configuration: CONFIG=file.toml, and/or ROWS, COLS, DATAFLOW on top of it.
CONFIG_ARGS := $(if $(CONFIG),--config $(CONFIG)) $(if $(ROWS),--rows $(ROWS)) $(if $(COLS),--cols $(COLS)) \
               $(if $(DATAFLOW),--dataflow $(DATAFLOW))

.PHONY: install verilog lint test test-fast formal demo bench clean bitstream deploy soak-fuzz sweep multipliers

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

verilog: $(STAMP)
	$(BIN)/tessera verilog $(CONFIG_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check hw gen verif sw_driver fpga tests
	$(BIN)/tessera lint $(CONFIG_ARGS)

test: $(STAMP)
	$(BIN)/ruff check hw gen verif sw_driver fpga tests
	$(BIN)/pytest -n $(TEST_JOBS) --dist loadgroup --durations=50

test-fast: $(STAMP)
	$(BIN)/pytest -n $(TEST_JOBS) -m "not rtl"

# Formal properties (docs/formal.md) with SymbiYosys and Yices from PyPI, at full depth: a table of each property's
# mode, depth, result and time; FORMAL_ARGS="-k NAME" for some. `make test` runs a quick subset (tests/test_formal.py).
formal: $(STAMP)
	$(BIN)/python -m tessera.verif.formal -j $(JOBS) $(FORMAL_ARGS)

demo: $(STAMP)
	$(BIN)/tessera demo $(CONFIG_ARGS)

# The layer suite on 8x8 and 16x16 arrays of every dataflow beside SCALE-Sim (its own venv under build/), with the
# bare-Verilator-loop speed comparison; BENCH_ARGS=--quick for the smoke subset. Then the four MLPerf Tiny models,
# layer by layer and resident, on a 16x16 array (verif/bench_residency.py). BOARD=NAME (given, not the bitstream's
# default) runs both on that board's default configuration at the clock its build meets. Then each model's round trip
# as a host sees it, input in and result out over the simulated ULX3S top's 3 Mbaud UART, resident on the ULX3S default
# (verif/bench_round_trip.py). Then whether a whole KWS or AD model fits the iCEBreaker: its RAM and, with Yosys
# (cached), its logic cells (verif/icebreaker_fit.py).
BOARD_ARG = $(if $(filter command line environment,$(origin BOARD)),--board $(BOARD))
bench: $(STAMP)
	$(BIN)/python -m tessera.verif.bench_suite $(BOARD_ARG) $(BENCH_ARGS)
	$(BIN)/python -m tessera.verif.bench_residency $(BOARD_ARG)
	$(BIN)/python -m tessera.verif.bench_round_trip
	$(BIN)/python -m tessera.verif.icebreaker_fit

# Importer fuzzing for FUZZ_SECONDS: mutated quantized models and inputs through `tessera run`, one case in ten on the
# 4x4 simulator; prints ran / refused / failed and each failure's seed with the command that reruns it. Each soak
# starts from a new FUZZ_SEED unless given one; `make test` runs a fixed-seed sample (tests/test_onnx_fuzz.py).
FUZZ_SECONDS ?= 600
FUZZ_SEED    ?= $(shell date +%s)

soak-fuzz: $(STAMP)
	$(BIN)/python -m tessera.verif.onnx_fuzz --target mixed --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED)

# The device soak for MINUTES: random layers and damaged programs on random configurations of the simulated device
# (every dataflow), with random stalls, against the golden model; prints each failure's seed, configuration and the
# command that reruns it (docs/soak.md). Then the importer fuzzer for FUZZ_SECONDS, as soak-fuzz. Link endurance:
# MEGABYTES of layer traffic through the simulated board per fault rate in RATES (flip, drop and duplicate per byte,
# both ways), with the throughput against the line rate.
MINUTES   ?= 20
SOAK_SEED ?= $(shell date +%s)
MEGABYTES ?= 10
RATES     ?= 0,1e-5,1e-4,1e-3

.PHONY: soak link-endurance

soak: $(STAMP)
	$(BIN)/python -m tessera.verif.soak --minutes $(MINUTES) --seed $(SOAK_SEED)
	$(BIN)/python -m tessera.verif.onnx_fuzz --target mixed --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED)

link-endurance: $(STAMP)
	$(BIN)/python -m tessera.verif.link_endurance --megabytes $(MEGABYTES) --rates $(RATES)

BOARD ?= ulx3s

# The report says which of the four MLPerf Tiny models the configuration keeps whole on chip.
# The report says which of the four MLPerf Tiny models the configuration holds whole on chip; the models are
# written first, in their own step, so that a failure there stops the build with its own message.
bitstream: $(STAMP)
	mkdir -p build && $(BIN)/python -m tessera.verif.mlperf_tiny --out build/mlperf > build/mlperf.models
	$(BIN)/tessera bitstream --board $(BOARD) $(CONFIG_ARGS) --models $$(cat build/mlperf.models)

deploy: $(STAMP)
	$(BIN)/tessera deploy --board $(BOARD) $(CONFIG_ARGS)

# The PE multiplier designs: error, ECP5 cost (Yosys), energy; then the largest array each fits on BOARD
# (docs/multipliers.md). Synthesis results are cached: the first run takes tens of minutes, later ones seconds.
multipliers: $(STAMP)
	$(BIN)/tessera multipliers
	$(BIN)/tessera multipliers --array-size $(BOARD)

# Design-space exploration of the digits CNN on a local Ray instance (docs/sweep.md); SPACE=file.toml for another.
SPACE ?= fpga/spaces/digits.toml

sweep: $(STAMP)
	$(BIN)/tessera sweep --demo --space $(SPACE) --cpus $(JOBS) -o build/sweep

clean:
	rm -rf build
