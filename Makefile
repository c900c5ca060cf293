# Two entry points a new user needs: `make demo` (the main job) and `make test`.
# Both create .venv on first use and install dimplicit into it (editable, with test extras).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.installed            ## generate traffic, train, score, evaluate, plot
	$(BIN)/dimplicit demo --workers 2

test: $(BIN)/.installed            ## lint + the whole test suite
	$(BIN)/ruff check dimplicit tests scripts
	$(BIN)/pytest -q

bench: $(BIN)/.installed           ## the benchmark figures quoted in the README
	$(BIN)/dimplicit bench core --hidden 1024 --batch-size 4096 --dtype float32
	$(BIN)/dimplicit bench distributed --hidden 512 --block-rows 8192

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
