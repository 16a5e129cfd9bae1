# dgm_edu task runner. The README's two commands:
#   make book   execute every chapter on the shipped reference weights and build the site
#               -> book/_build/html/index.html
#   make test   the whole test suite (what CI runs, via .ci/run)
# Also: make weights (retrain every reference model in full mode and ship it), make book-full
# (the same site, every model retrained from scratch), make book-fast (the tiny CI budgets).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MATHJAX := book/_vendor/mathjax
JOBS ?= 2
TORCH ?= 2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONHASHSEED := 0

.PHONY: setup book book-student book-full book-fast weights verify-weights benchmark-shipped readme test lint sync check-sync unit chapters browser assignments \
        test-assignments benchmark clean chromium mutation formgrader

## setup: the virtual environment (torch pinned to the CPU build), MathJax from npm, Chromium.
setup: $(STAMP) $(MATHJAX)/tex-chtml.js

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==$(TORCH)  # the exact pin of the test machines (a CPU build here)
	$(BIN)/pip install -q -e '.[dev,book,assign]' 2>&1 | grep -v 'is ignored: it is neither' || true
	$(BIN)/python -c "import torch, dgm_edu, jupyter_book, nbgrader"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" >/dev/null
	touch $@

$(MATHJAX)/tex-chtml.js: package.json
	npm install --no-audit --no-fund --silent
	rm -rf $(MATHJAX) && mkdir -p $(MATHJAX)
	cp -r node_modules/mathjax/es5/. $(MATHJAX)/
	touch $@

chromium:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

## sync: pair every chapter (edit the .md, this writes the .ipynb)
sync: setup
	$(BIN)/jupytext --sync --quiet chapters/*.md

## check-sync: fail when a chapter pair is out of sync
check-sync: setup
	$(BIN)/jupytext --sync --quiet chapters/*.md
	git diff --exit-code -- chapters/ || { echo "Chapter pairs are out of sync: run 'make sync' and commit both files."; exit 1; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two test workers on two cores: one torch thread each (oversubscribed threads run ~10x slower)
unit chapters test-assignments: export OMP_NUM_THREADS := 1

## unit: the library's unit tests
unit: setup
	$(BIN)/pytest tests -q -n $(JOBS) --ignore=tests/browser --ignore=tests/assignments

## chapters: execute every chapter under nbval in fast mode
chapters: setup
	DGM_EDU_FAST=1 $(BIN)/pytest --nbval-lax chapters -q -n $(JOBS) --dist loadfile -p no:cacheprovider

## book: execute every chapter in reference mode (the shipped weights) and build the site.
## Its execution cache is dropped whenever the shipped weights change.
MANIFEST := dgm_edu/assets/weights/manifest.json
book: setup
	@mkdir -p book/_build
	@cmp -s $(MANIFEST) book/_build/.weights-manifest || rm -rf book/_build/.jupyter_cache
	DGM_EDU_MODE=reference $(BIN)/jupyter-book build book --warningiserror --keep-going
	cp $(MANIFEST) book/_build/.weights-manifest
	@echo "The site is at $(CURDIR)/book/_build/html/index.html"

## book-student: the student edition of the site: no solution bodies, no hidden tests. Nothing is
## executed again: the chapters are the reference build's executed notebooks (make book) passed
## through nbgrader's ClearSolutions/ClearHiddenTests. The student notebooks (the same, without
## outputs) are copied to build/student/notebooks/.
book-student: setup
	DGM_EDU_EDITION=student $(BIN)/jupyter-book build book --warningiserror --keep-going --path-output build/student
	rm -rf build/student/notebooks && mkdir -p build/student/notebooks
	cp build/student/_build/html/_sources/chapters/*.ipynb build/student/notebooks/
	@echo "The student edition is at $(CURDIR)/build/student/_build/html/index.html"

## book-full: the same site with every model retrained from scratch at the full budget
book-full: setup
	DGM_EDU_MODE=full $(BIN)/jupyter-book build book --warningiserror --keep-going --path-output build/full
	@echo "The full-mode site is at $(CURDIR)/build/full/_build/html/index.html"

## weights: retrain every reference model in full mode (one torch thread, recorded) and write
## dgm_edu/assets/weights/ (safetensors + manifest.json). Resumes from .checkpoints/full/.
## Then it re-scores the shipped weights (benchmarks/results/table.json) and regenerates the
## README's results table from the manifest and that table.
weights: setup
	DGM_EDU_MODE=full OMP_NUM_THREADS=1 $(BIN)/python -m dgm_edu.weights build --threads 1 --jobs $(JOBS) $(NAMES)
	$(MAKE) benchmark-shipped readme

## benchmark-shipped: score every shipped model (NLL from the manifest; FID/KID/P/R at 1000 samples)
benchmark-shipped: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/run.py --shipped

## readme: regenerate the README's results table (from the manifest and the shipped-weights table)
## and the chapter map (README, book/index.md, book/_toc.yml: from the chapters' front matter)
readme: setup
	$(BIN)/python scripts/readme_results.py
	$(BIN)/python scripts/chapter_map.py

verify-weights: setup
	$(BIN)/python -m dgm_edu.weights verify

## book-fast: the same site with fast-mode training
book-fast: setup
	DGM_EDU_FAST=1 $(BIN)/jupyter-book build book --warningiserror --keep-going --path-output build/fast
	@echo "The fast-mode site is at $(CURDIR)/build/fast/_build/html/index.html"

## browser: load every page of the reference site (make book) in headless Chromium, and check
## both editions (tests/browser/test_editions.py: needs make book-student too)
browser: setup chromium
	$(BIN)/pytest tests/browser -q -p no:cacheprovider

## assignments: build the nbgrader course (source + released student versions) in $(COURSE);
## EXCHANGE=/srv/nbgrader/exchange records the exchange folder (book/teachers.md)
COURSE ?= course
EXCHANGE ?=
assignments: setup
	$(BIN)/python scripts/build_course.py build $(COURSE) $(if $(EXCHANGE),--exchange $(EXCHANGE))

## formgrader: Jupyter Lab started in the course folder (the formgrader finds the course there)
formgrader: setup
	cd $(COURSE) && PATH="$(CURDIR)/$(BIN):$$PATH" jupyter lab --no-browser $$([ "$$(id -u)" = 0 ] && echo --allow-root)

test-assignments: setup
	$(BIN)/pytest tests/assignments -q -p no:cacheprovider

## test: everything CI runs
test: setup lint check-sync unit chapters book book-student browser test-assignments
	@echo "All checks passed."

benchmark: setup
	$(BIN)/python benchmarks/run.py

## mutation: plant small bugs (mutmut) in the math modules and print, per module, the share that
## its own tests catch, leaving out the mutants that change nothing (tests/mutation_equivalents.txt).
## One module at a time, each in .mutation/<module>/ (long: tens of minutes on 2 cores);
## MODULES="vae gan" for some. mutmut is not in the dev extra (it brings textual and libcst): the
## target installs it (pip install mutmut).
mutation: setup
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install -q mutmut
	OMP_NUM_THREADS=1 $(BIN)/python scripts/mutation_report.py $(MODULES)

clean:
	rm -rf book/_build build chapters/.checkpoints course
