# skinlesion: `make app` starts the web app, `make test` runs the test suite.
# Both create .venv and install the package (with its dev extra) on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast lint app bench bench-throughput bench-inference bench-robustness card clean

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

test: install lint
	@bash tools/ensure-chromium.sh
	$(BIN)/python -m pytest -q

# while iterating: no training, no shipped-model evaluation, no browser (under a minute)
test-fast: install
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
