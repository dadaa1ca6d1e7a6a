# The two commands of the README's quick start. Both create .venv and install what they need.
# torch is installed first, pinned, so nothing can pull a CUDA build.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)  ## short decentralized training on a 3-agent ring, then a summary and its curve
	$(BIN)/p2pmarl launch launch/quickstart.yaml --out runs/demo
	@run=$$(ls -td runs/demo/*/ | head -1); run=$${run%/}; \
	$(BIN)/p2pmarl inspect "$$run" --plot "$$run/plots" > /dev/null && \
	echo "learning curve: $$run/plots/learning_curves.png" && \
	echo "next: $(BIN)/p2pmarl inspect $$run"

test: $(STAMP)  ## the test suite CI runs (slow checks skipped)
	$(BIN)/ruff check p2pmarl tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)  ## every test, including the ones marked slow
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
