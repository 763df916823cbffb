# skinlesion: `make app` starts the web app, `make test` runs the test suite.
# Both create .venv and install the package (with its dev extra) on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install isic-env test test-fast lint app bench bench-throughput bench-inference bench-robustness card clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# uv is ~5x faster than pip; it ignores pip's configuration, so tools/uv-env.sh
	@# hands it the local wheel folders and indexes pip is configured with.
	@if $(BIN)/python -m pip install -q uv >/dev/null 2>&1 && test -x $(BIN)/uv; then \
	    echo "installing with uv"; \
	    eval "$$(bash tools/uv-env.sh)"; \
	    $(BIN)/uv pip install --python $(BIN)/python -e '.[dev]' || exit 1; \
	else \
	    echo "installing with pip"; \
	    $(BIN)/python -m pip install -q -e '.[dev]' || exit 1; \
	fi
	@# the app serves with ONNX Runtime: build the shipped model's export (with its parity check) now, not at start-up
	@$(BIN)/skinlesion export default >/dev/null 2>&1 || echo "note: could not export the default model to ONNX; the app will serve with PyTorch"
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the official ISIC 2018 scorer needs pandas<3, so it gets its own environment; only
# tests/test_parity.py uses it (and skips, saying why, where it could not be installed)
ISIC := .venv-isic
isic-env: $(ISIC)/.installed

$(ISIC)/.installed:
	@test -x $(ISIC)/bin/python || $(PYTHON) -m venv $(ISIC)
	@if test -x $(BIN)/uv; then \
	    eval "$$(bash tools/uv-env.sh)"; \
	    $(BIN)/uv pip install -q --python $(ISIC)/bin/python 'isic-challenge-scoring==5.6.0' 'pandas<3'; \
	else \
	    $(ISIC)/bin/python -m pip install -q 'isic-challenge-scoring==5.6.0' 'pandas<3'; \
	fi && touch $@ || echo "note: could not install isic-challenge-scoring; its parity test will be skipped"

test: install lint isic-env
	@bash tools/ensure-chromium.sh
	$(BIN)/python -m pytest -q

# while iterating: no training, no shipped-model evaluation, no browser (under a minute)
test-fast: install isic-env
	$(BIN)/python -m pytest -q -m "not slow and not browser"

app: install
	$(BIN)/skinlesion app

bench: install
	$(BIN)/python benchmarks/dermamnist.py

bench-throughput: install
	$(BIN)/python benchmarks/throughput.py

bench-inference: install
	$(BIN)/python benchmarks/inference.py

bench-robustness: install
	$(BIN)/python benchmarks/robustness.py --model default

card: install
	$(BIN)/skinlesion card default --out MODEL_CARD.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
