# Two commands for a new user: `make demo` and `make test`. Both install what is missing:
# the virtualenv at .venv/ (Python deps) and Elixir from Debian (when `mix` is absent).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# No test may reach the internet: keep litellm from fetching its cost map or phoning home.
export LITELLM_LOCAL_MODEL_COST_MAP := True
export LITELLM_TELEMETRY := False

.PHONY: venv elixir test test-python test-elixir lint demo bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
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

bench: venv
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) elixir_client/_build
