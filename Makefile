# prefloop: `make demo` runs the app with demo data, `make test` runs the whole suite.
# Both create .venv and install everything; Python 3.11 and a C compiler are all they assume.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install chromium migrate bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: a wider range pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)

migrate: $(STAMP)
	$(BIN)/python manage.py migrate --noinput

demo: $(STAMP) migrate
	DEBUG=1 $(BIN)/python manage.py load_demo
	DEBUG=1 $(BIN)/python manage.py build_default_model --if-missing
	DEBUG=1 BIN=$(BIN) bash scripts/demo.sh

test: $(STAMP) chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@echo "Benchmarks (each prints a ratio against a peer in the same run; results in bench/RESULTS.md):"
	@echo "  $(BIN)/python bench/aggregation.py   # Dawid-Skene vs crowd-kit"
	@echo "  $(BIN)/python bench/queue.py         # queue latency on PostgreSQL, 1M comparisons"
	@echo "  $(BIN)/python bench/imports.py       # import vs per-line ORM"
	@echo "  $(BIN)/python bench/export.py        # export vs naive json.dumps"
	@echo "  $(BIN)/python bench/dpo.py           # DPO steps/s vs TRL DPOTrainer"

clean:
	rm -rf $(VENV) var staticfiles
