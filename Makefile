# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Everything is installed from the one pinned constraints file (the Docker image uses the same file).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/impressions demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/partition_vs_duckdb.py

clean:
	rm -rf $(VENV) warehouse demo-data .pytest_cache
