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

.PHONY: install verilog lint test test-fast demo bench clean bitstream deploy

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

BOARD ?= ulx3s

bitstream: $(STAMP)
	$(BIN)/tessera bitstream --board $(BOARD) $(CONFIG_ARGS)

deploy: $(STAMP)
	$(BIN)/tessera deploy --board $(BOARD) $(CONFIG_ARGS)

clean:
	rm -rf build
