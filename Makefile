# Two commands on a fresh machine with Python 3.11+ and make: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint typecheck unit integration bench constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: the pinned CPU build (deploy/install-torch.sh, as in the Dockerfile).
	sh deploy/install-torch.sh $(BIN)/python --quiet
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/sessionrec demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

test: lint typecheck
	$(BIN)/pytest

bench: install
	$(BIN)/sessionrec bench all --out bench-out

# After a change of dependencies in pyproject.toml: pin what the virtual environment now holds.
constraints: install
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	{ sed -n '1,3p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable --all \
	  | grep -vE '^(pip|setuptools|wheel)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) var bench-out .mypy_cache .ruff_cache .pytest_cache
