# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install demo test bench study study-nongap rare-looks

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
# then section 5 (models where Grad-CAM is not the CAM; trains three cheap models into ~/.cache/xich-study first),
# 6 (held-out halves) and 7 (attribution methods and randomized controls), each spliced into the page: measured
# 14, 17 and 8 min here, plus 6 + 9 + 10 min of training (docs/science.md, sections 5-8).
study: $(STAMP)
	$(VENV)/bin/python bench/study.py
	$(VENV)/bin/python bench/study.py --only nongap
	$(VENV)/bin/python bench/study.py --only heldout
	$(VENV)/bin/python bench/study.py --only methods

study-nongap: $(STAMP)
	$(VENV)/bin/python bench/study.py --only nongap

# The rare-look benchmark (docs/science.md section 9; needs ../shared/data): cheap tier (3 rarities x A/B x 3 seeds
# + the null) and end-to-end ResNet-20s at 5 %, every case audited by the package and by the peers. Models, data and
# the peers' venv (cleanlab, the `peers` extra) live in ~/.cache/xich-rare-looks, never in the repository.
PEERS_VENV := $(HOME)/.cache/xich-rare-looks/peers-venv
rare-looks: $(STAMP)
	test -x $(PEERS_VENV)/bin/python || ($(VENV)/bin/python -m venv --system-site-packages $(PEERS_VENV) && \
		$(PEERS_VENV)/bin/pip install --quiet 'cleanlab[datalab]==2.9.0')
	$(VENV)/bin/python bench/rare_looks.py
