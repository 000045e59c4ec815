# The two commands of the README: `make demo` and `make test`. Both create .venv first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
AUDIT   := $(BIN)/audit
PYTEST_ARGS ?=
# test processes (pytest-xdist, one module per process: a module's fixtures stay in one
# process). Most tests wait on subprocesses, docker and servers, so 2 halve CI on 2 cores.
TEST_JOBS ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-fast lint bench clean

$(BIN)/activate: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned: the CPU wheel comes from $$PIP_FIND_LINKS where set
	# torch first and alone: resolved with everything else, pip has taken PyPI's CUDA build
	$(BIN)/pip install -q 'torch==2.13.0'
	$(BIN)/pip install -q -e '.[dev,torch,test]'
	touch $(BIN)/activate

venv: $(BIN)/activate

demo: venv
	$(BIN)/python -m auditor.cli.demo

test: venv
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile -m "not slow and not docker" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check auditor tests bench
	$(BIN)/mypy --strict auditor

bench: venv
	# mlflow only for the log_metric comparison; never a dependency of auditor
	$(BIN)/pip install -q mlflow-skinny alembic
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .auditor demo-out .demo-env
