# Two commands do everything: `make book` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Figures must reach the book: never let a headless backend setting drop them.
unexport MPLBACKEND

.PHONY: help venv export lint book test test-fast translations clean

help:
	@echo "make book   build the HTML book, English and Chinese (sets up .venv, exports ddpm_lib,"
	@echo "            runs every chapter once)"
	@echo "make test   every test: library, notebooks, export, book build, real browser"
	@echo "make export re-export ddpm_lib from notebooks/ after editing a chapter"
	@echo "make lint   ruff on the library, notebooks, tests and scripts; actionlint on the workflows"
	@echo "make translations  update the Chinese edition's catalogues (locales/) from the English"

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

venv: $(STAMP)

export: $(STAMP)
	$(BIN)/python scripts/sync_repo_url.py
	$(BIN)/python scripts/clean_notebooks.py
	$(BIN)/python scripts/export_library.py

lint: $(STAMP)
	$(BIN)/ruff check ddpm_lib notebooks tests scripts
	$(BIN)/ruff format --check ddpm_lib notebooks tests scripts
	$(BIN)/actionlint

book: $(STAMP)
	$(BIN)/python scripts/export_library.py --check || $(MAKE) export
	$(BIN)/python scripts/build_book.py
	@echo "Open file://$(CURDIR)/_build/html/index.html (中文版: file://$(CURDIR)/_build/html/zh/index.html)"

# The Chinese edition's message catalogues, locales/zh_CN/LC_MESSAGES/<page>.po, brought up to
# date with the English pages (new messages empty, changed ones fuzzy); then what is left to
# translate. The book build reports the same list; with TRANSLATIONS_STRICT on (see
# scripts/build_book.py) it fails on it.
translations: $(STAMP)
	$(BIN)/python scripts/update_translations.py

# Every test. The book is built first (the browser tests read it).
test: $(STAMP)
	$(BIN)/python scripts/clean_notebooks.py --check
	$(BIN)/python scripts/export_library.py --check
	$(BIN)/ruff check ddpm_lib notebooks tests scripts
	$(BIN)/actionlint
	$(BIN)/python scripts/build_book.py
	# Two test processes on two cores: one thread each (tiny models are far slower with more).
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile --nbval-lax tests notebooks

# Library unit tests only: seconds, for the edit-test loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow and not browser and not book" -x -q

clean:
	rm -rf _build book/_static/vendor
