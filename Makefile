# The two set-up commands of the README: `make study` and `make test`.
# Both create the venv and install everything on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv study test test-all lint format clean bench bench-memory

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first: it is on this machine's disk; letting the resolver pick pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The main job on built-in defaults: the study (collect, train, build agents, evaluate, report).
# --resume: an interrupted run picks up where it stopped; a finished one just rewrites its report.
# --workers 2: two cells at a time, one torch thread each (the cells are small models, so one
# thread each uses the two cores better than two threads on one cell: 12.7 min against 20.1,
# measured before the Connect Four cell; with it, 25.6 min, see README).
study: $(STAMP)
	$(VENV)/bin/simagents study --profile quick --out runs/quick --resume --workers 2

test: $(STAMP)
	$(PY) -m pytest -n auto --dist worksteal

# The slow "does it learn" tests as well.
test-all: $(STAMP)
	$(PY) -m pytest --runslow -n auto --dist worksteal

# ruff, then mypy --strict on the whole package (settings in pyproject.toml's [tool.mypy]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Speed against transformers' DecisionTransformerModel (benchmarks/bench.py): prints JSON and writes
# benchmarks/results/<date>.json. The reference libraries get their own venv (d3rlpy pins gymnasium).
BENCH_VENV := benchmarks/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	test -x $(BENCH_VENV)/bin/python || python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q torch==2.13.0
	$(BENCH_VENV)/bin/pip install -q -e . -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/bench.py $(BENCH_ARGS)

# Peak RSS of training on a 10-million-step dataset from the memory-mapped cache, beside the
# in-memory path (benchmarks/memory.py; 6 min on a quiet 2-core machine, ~3 GB of temporary disk).
bench-memory: $(STAMP)
	$(VENV)/bin/python benchmarks/memory.py $(BENCH_MEMORY_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs
