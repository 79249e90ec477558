# Two commands a new user needs: `make quickstart` and `make test`.
# Both create .venv when it is missing and install the project into it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/smartwatch

.PHONY: install quickstart test bench clean

$(BIN)/lightning-vlm: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q -e plugins/lightning-vlm-flow
	touch $@

install: $(BIN)/lightning-vlm

quickstart: install
	@if [ -f $(DATA)/manifest.json ]; then $(BIN)/lightning-vlm data summary $(DATA); \
	else $(BIN)/lightning-vlm data smartwatch --config configs/data/smartwatch.yaml --out $(DATA); fi

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/data_pipeline.py

clean:
	rm -rf $(VENV) *.egg-info lightning_logs
