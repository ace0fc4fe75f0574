# fedcity — the two commands of the README live here.
#   make demo   run the main federated job (creates .venv on first use)
#   make test   lint, type-check, proto drift check and the full test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck protos check-protos bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# the dashboard's browser test drives Debian's chromium; install it once when we can
	@if [ -f /etc/debian_version ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	    && ! { command -v chromium && command -v chromedriver; } >/dev/null; then \
	  echo "installing chromium and chromium-driver (apt-get) for the dashboard's browser test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver; } >/dev/null 2>&1 \
	    || echo "could not install chromium; the browser test will be skipped"; \
	fi
	@touch $(STAMP)

demo: $(STAMP)
	@# Ctrl-C: the demo stops its processes and says so in one line (no make error after it)
	@trap '' INT; $(PY) -m fedcity.demo || test $$? -eq 130

test: $(STAMP)
	$(PY) -m ruff check fedcity tests benchmarks examples
	$(PY) -m mypy
	$(PY) tools/gen_protos.py --check
	$(PY) -m pytest -n 2 -q

protos: $(STAMP)
	$(PY) tools/gen_protos.py

bench: $(STAMP)
	$(PY) benchmarks/bench_crypto.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
