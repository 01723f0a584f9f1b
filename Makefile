# The study's entry points. `make reproduce` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Offline machines: point HYBRIDLIB_MIRROR at a folder laid out like ../shared/data.
export HYBRIDLIB_MIRROR ?= $(abspath ../shared/data)

.PHONY: setup reproduce smoke test lint check-params clean

setup: $(STAMP)

# torch is installed first and pinned, so pip never resolves a multi-GB CUDA build on a CPU machine.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name hybridlib --display-name "hybridlib (.venv)"
	touch $(STAMP)

## The main job: the default study (params/default.yaml) into runs/default/.
reproduce: setup
	$(BIN)/hybridlib run params/default.yaml --publish

## The whole study on tiny settings (minutes).
smoke: setup
	$(BIN)/hybridlib run params/smoke.yaml

## Every test: the linter, unit tests, the notebooks under nbval, the smoke pipeline end to end.
test: lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

check-params: setup
	for f in params/*.yaml; do $(BIN)/hybridlib check $$f || exit 1; done

clean:
	rm -rf runs .pytest_cache
