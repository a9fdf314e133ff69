# Tessera: every target installs what it needs into .venv first (python3, g++, make and perl are all a
# fresh machine must have; everything else comes from PyPI).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2

# Configuration: CONFIG=file.toml, and/or ROWS, COLS, DATAFLOW on top of it.
CONFIG_ARGS := $(if $(CONFIG),--config $(CONFIG)) $(if $(ROWS),--rows $(ROWS)) $(if $(COLS),--cols $(COLS)) \
               $(if $(DATAFLOW),--dataflow $(DATAFLOW))

.PHONY: install verilog lint test test-fast demo bench clean bitstream deploy soak-fuzz sweep

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
	$(BIN)/pytest -n $(JOBS) --dist loadgroup

test-fast: $(STAMP)
	$(BIN)/pytest -n $(JOBS) -m "not rtl"

demo: $(STAMP)
	$(BIN)/tessera demo $(CONFIG_ARGS)

# The layer suite on 8x8 and 16x16 arrays of every dataflow beside SCALE-Sim (its own venv under build/), with the
# bare-Verilator-loop speed comparison; BENCH_ARGS=--quick for the smoke subset.
bench: $(STAMP)
	$(BIN)/python -m tessera.verif.bench_suite $(BENCH_ARGS)

# Importer fuzzing for FUZZ_SECONDS: mutated quantized models and inputs through `tessera run`, one case in ten on the
# 4x4 simulator; prints ran / refused / failed and each failure's seed with the command that reruns it. Each soak
# starts from a new FUZZ_SEED unless given one; `make test` runs a fixed-seed sample (tests/test_onnx_fuzz.py).
FUZZ_SECONDS ?= 600
FUZZ_SEED    ?= $(shell date +%s)

soak-fuzz: $(STAMP)
	$(BIN)/python -m tessera.verif.onnx_fuzz --target mixed --seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED)

BOARD ?= ulx3s

bitstream: $(STAMP)
	$(BIN)/tessera bitstream --board $(BOARD) $(CONFIG_ARGS)

deploy: $(STAMP)
	$(BIN)/tessera deploy --board $(BOARD) $(CONFIG_ARGS)

# Design-space exploration of the digits CNN on a local Ray instance (docs/sweep.md); SPACE=file.toml for another.
SPACE ?= fpga/spaces/digits.toml

sweep: $(STAMP)
	$(BIN)/tessera sweep --demo --space $(SPACE) --cpus $(JOBS) -o build/sweep

clean:
	rm -rf build
