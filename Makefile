# seqlens: one-command setup, main job and tests.
#
#   make app     set everything up and run the main job
#   make test    set everything up and run the test suite (PYTEST_ARGS="..." to narrow it)
#
# Setup installs the CPU torch pin FIRST: on these machines `torch==2.13.0` is a local CPU wheel,
# whereas resolving pyproject's open `torch>=2.4` from scratch would fetch a multi-GB CUDA build.
# pyproject keeps the range open for real users; only this Makefile pins.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup app test bench clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-run the installs only when the dependencies (pyproject.toml) change.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install "$(TORCH_PIN)"
	$(PIP) install -e ".[dev]"
	touch $@

# The main job: the Streamlit dashboard (`seqlens app` = `streamlit run app/main.py`), opening on
# the induction-attn2 organism. APP_ARGS go to `streamlit run` (e.g. APP_ARGS="--server.port 8502").
APP_ARGS ?=
app: setup
	$(VENV)/bin/seqlens app $(APP_ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# CPU benchmark: our Mamba forward vs transformers' MambaForCausalLM fallback (README table).
bench: setup
	$(VENV)/bin/seqlens bench mamba-cpu

clean:
	rm -rf build dist .pytest_cache
