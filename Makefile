# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install demo test bench study study-nongap

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xich demo --out xich-demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile -m 'not docker' --durations=30; a=$$?; \
	$(VENV)/bin/python -m pytest -q -m docker --durations=10; b=$$?; \
	exit $$(( a || b ))

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_gradcam.py
	$(VENV)/bin/python bench/bench_full_audit.py

# The evidence for the defaults (docs/science.md); needs ../shared/data, 26-29 min on 2 cores (one torch thread),
# then section 5 (models where Grad-CAM is not the CAM; trains two cheap models into ~/.cache/xich-study first).
study: $(STAMP)
	$(VENV)/bin/python bench/study.py
	$(VENV)/bin/python bench/study.py --only nongap

study-nongap: $(STAMP)
	$(VENV)/bin/python bench/study.py --only nongap
