# Each target builds its own virtualenv from scratch when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean messages

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dispatcher demo

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check dispatcher tests bench
	$(BIN)/mypy dispatcher

# The console's translations: extract the marked text, merge it into each language's
# catalogue (translate the new entries in the .po files), compile the .mo files (committed).
LOCALE_DIR := dispatcher/web/locale
messages: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg --no-location --sort-output --omit-header -o $(LOCALE_DIR)/messages.pot dispatcher/web
	$(BIN)/pybabel update -i $(LOCALE_DIR)/messages.pot -d $(LOCALE_DIR) -D messages --no-fuzzy-matching --ignore-obsolete
	$(BIN)/pybabel compile -d $(LOCALE_DIR) -D messages --statistics

bench: $(STAMP)
	$(BIN)/python bench/plan_bench.py

clean:
	rm -rf $(VENV) var
