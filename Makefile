# Two commands for a new user: `make demo` and `make test`. Both install what is missing:
# the virtualenv at .venv/ (Python deps) and Elixir from Debian (when `mix` is absent).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEPS := $(VENV)/.deps
# The editable install maps bridge/ and protocol/ to the import name dspy_bridge by a tree
# of links (setuptools' strict mode, which mypy can read); a file added or removed needs a
# relink, so the list of package files is one of the install's inputs.
PACKAGE_FILES := $(VENV)/.package-files
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# No test may reach the internet: keep litellm from fetching its cost map or phoning home.
export LITELLM_LOCAL_MODEL_COST_MAP := True
export LITELLM_TELEMETRY := False

.PHONY: FORCE venv elixir test test-python test-elixir lint demo bench clean

# .ci/constraints.txt pins every dependency for this project's own runs (reproducible, and
# dspy at pyproject's lower bound); a user's install takes the ranges in pyproject.toml.
$(DEPS): pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77' wheel
	$(PY) -m pip install -q -c .ci/constraints.txt -e '.[dev,mipro]' --config-settings editable_mode=strict
	touch $(DEPS)

$(PACKAGE_FILES): FORCE
	@mkdir -p $(VENV)
	@find bridge protocol -type f \( -name '*.py' -o -name '*.md' -o -name '*.json' -o -name py.typed \) \
		-not -path '*/__pycache__/*' | sort > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

$(INSTALLED): $(DEPS) $(PACKAGE_FILES)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . \
		--config-settings editable_mode=strict
	touch $(INSTALLED)

venv: $(INSTALLED)

elixir:
	@command -v mix >/dev/null 2>&1 || { \
		echo "Installing Elixir from Debian's packages..."; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq elixir erlang-dev >/dev/null; }

test: test-python lint test-elixir

test-python: venv
	$(PY) -m pytest

lint: venv
	$(PY) -m ruff check protocol bridge tests scripts
	$(PY) -m mypy

test-elixir: venv elixir
	@if [ -f elixir_client/mix.exs ]; then \
		cd elixir_client && MIX_ENV=test mix test; \
	fi

demo: venv elixir
	cd elixir_client && mix run scripts/demo.exs

# matplotlib (the `bench` extra) draws the plots; installed here, on first use only, so the
# editable install stays strict and `make test` never needs it. BENCH_ARGS=--quick: fewer rounds.
# The Elixir side (through the pool, beside a bare worker and a port echo) writes
# bench/elixir.md. The cluster figure (3 nodes x 2 workers against 1 x 2, on :peer
# nodes) is an ExUnit test tagged :bench, which `make test` excludes; it writes
# _build/test/cluster_bench.txt.
bench: venv elixir
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q 'matplotlib>=3.8'
	@# The worker's bytecode, as an installed wheel has it: start-up is measured without
	@# compiling every module (PYTHONDONTWRITEBYTECODE, if set, would keep it from caching).
	@$(PY) -c 'import compileall, os, dspy_bridge; compileall.compile_dir(os.path.dirname(dspy_bridge.__file__), quiet=1)'
	$(PY) scripts/bench.py $(BENCH_ARGS)
	cd elixir_client && mix run scripts/bench.exs $(filter --quick,$(BENCH_ARGS))
	cd elixir_client && MIX_ENV=test mix test --only bench test/cluster_test.exs

clean:
	rm -rf $(VENV) elixir_client/_build
