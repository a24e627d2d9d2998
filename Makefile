# headroom: `make serve` and `make test` are all a fresh machine needs.
# Each step reuses what earlier runs built; see README "Configuration" for the variables.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Which encoder variant the server uses: int8-static (default, see docs/benchmarks.md, "Choosing the encoder"),
# fp32 or int8.
HEADROOM_ENCODER_VARIANT ?= int8-static
export HEADROOM_ENCODER_VARIANT
export HF_HUB_OFFLINE = 1
export PYTHONDONTWRITEBYTECODE = 1

# Load test (make loadtest): seconds, simulated users, users started per second.
LOADTEST_DURATION ?= 60
LOADTEST_USERS ?= 16
LOADTEST_SPAWN_RATE ?= 8
export LOADTEST_DURATION LOADTEST_USERS LOADTEST_SPAWN_RATE
# The bench-only environment of the infinity-emb peer benchmark (never mixed into $(VENV)).
INFINITY_VENV ?= $(CURDIR)/.venv-infinity
export INFINITY_VENV

.PHONY: install export heads serve test lint loadtest bench bench-env haproxy clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@echo "==> creating virtualenv $(VENV) and installing dependencies (first run: a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

export: $(STAMP)
	@echo "==> encoder: export to ONNX (reused when built) and install the $(HEADROOM_ENCODER_VARIANT) variant"
	$(BIN)/headroom export --variant $(HEADROOM_ENCODER_VARIANT)

heads: export
	@echo "==> demo heads: train the ones that are missing or stale"
	$(BIN)/headroom heads

serve: heads
	@echo "==> starting Triton (Ctrl-C to stop)"
	$(BIN)/headroom serve

bench-env:
	@bash bench/setup_infinity_env.sh

loadtest: heads
	@echo "==> load test: $(LOADTEST_USERS) locust users for $(LOADTEST_DURATION) s, against the running server or one it starts"
	$(BIN)/python bench/loadtest.py --duration $(LOADTEST_DURATION) --users $(LOADTEST_USERS) --spawn-rate $(LOADTEST_SPAWN_RATE)

bench: heads bench-env
	@echo "==> all benchmarks (about an hour on 2 cores); reports in bench/results/, summary table into docs/benchmarks.md"
	$(BIN)/python -m bench.run_all

# HAProxy, the router of the cluster tests (Debian package; docs/cluster.md). Installed when
# missing and this is a root shell with apt-get; otherwise say how.
haproxy:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "==> installing haproxy (the cluster tests' router)"; \
	    apt-get install -y --no-install-recommends haproxy >/dev/null 2>&1 \
	      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends haproxy >/dev/null; }; \
	  else echo "error: the cluster tests need haproxy: sudo apt-get install haproxy" >&2; exit 1; fi; }

test: heads bench-env haproxy
	@echo "==> lint"
	$(BIN)/ruff check .
	@echo "==> tests (unit, then integration against a real tritonserver)"
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .

# Removes build outputs only: onboarded heads in model_repository/ are tenants' data and stay.
clean:
	rm -rf build .headroom/backends model_repository/encoder/1 model_repository/embed/1/tokenizer.json \
		model_repository/pipeline/1/tokenizer.json model_repository/executor/1/encoder.json
