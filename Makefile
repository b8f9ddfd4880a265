# Two commands on a fresh clone: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TOY := data/toy

.PHONY: demo test test-fast bench venv clean figure

venv: $(STAMP)

# The exact pins first, then the package itself, editable (code/uniformface, the console commands
# uniformface-train, ...), built with the venv's own setuptools, so nothing is fetched for the build.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) code/demo.py

# UniformFace's hypersphere picture on the toy set, alpha = 0 beside the default uniform loss (a few minutes
# on a 2-core CPU): log/figure/hypersphere.png and log/figure/curves.png.
figure: $(STAMP)
	$(PY) code/figure.py

# TEST_WORKERS processes share the tests (pytest-xdist; an idle one takes tests queued for the other, so
# the long end-to-end runs do not all end up on one); TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# The unit tests alone (no end-to-end runs marked `slow`), for development.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; PYTHONPATH=code $(PY) $$b || exit 1; done

clean:
	rm -rf $(TOY) log/toy
