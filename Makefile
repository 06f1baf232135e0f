# The two commands: `make run` (dev server + Web UI + worker) and `make test`.
# Each creates .venv on first use and installs from PyPI only.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-fast lint lock replay-histories demo clean migrate report bench bench-short

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python scripts/run_local.py

# Every test, on both cores: pytest-xdist runs TEST_WORKERS pytest processes, each taking
# whole modules (--dist loadscope: a module's fixtures are set up once, and the fault
# drills, which one module starts together, stay in one process). A serial run:
# make test TEST_WORKERS=0 (or .venv/bin/python -m pytest). test-fast: the unit and
# workflow tests only (docs/testing.md: what each directory holds).
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)

test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) tests/unit tests/workflow $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The SLA ledger (SUPPORT_LEDGER_URL, default .data/sla-ledger.sqlite3): schema migrations
# and the compliance report, e.g. make report ARGS="--from 2026-11-01 --format html --output r.html"
migrate: $(STAMP)
	$(BIN)/python -m ledger migrate

report: $(STAMP)
	$(BIN)/python -m ledger report $(ARGS)

# Pin the Docker image's runtime dependencies to what this environment tested (docs/deploy.md).
lock: $(STAMP)
	$(BIN)/python scripts/lock_image_requirements.py

# Re-record the committed workflow histories that the replay test checks (docs/versioning.md).
replay-histories: $(STAMP)
	$(BIN)/python -m tests.record_histories

# Benchmarks (about 50 minutes on 2 cores): writes bench/results/latest.md and .json;
# smaller runs with e.g. make bench ARGS="--tickets 1000 --window 120".
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# The regression guard (about 5 minutes on 2 cores, at most 10): the burst (500 due at one
# instant) and throughput (300 tickets) phases with their floors, no steady phase and no
# Actions (python -m bench --short); writes bench/results/latest.md and .json like
# make bench. Compare two builds without overwriting latest: make bench-short ARGS="--out DIR".
bench-short: $(STAMP)
	$(BIN)/python -m bench --short $(ARGS)

# The contract gives example-bank its tier (Mission Critical): no --tier to claim.
demo: $(STAMP)
	$(BIN)/python starter.py open --ticket-id DEMO-$$(date +%s) --customer-id example-bank \
		--severity sev1 --subject "Production cluster unreachable"

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
