# make demo: set up, then run the whole pipeline on the built-in scene and print the results table.
# make test: set up, then run the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.moegs-installed

.PHONY: install demo test bench bench-step bench-scale clean

install: $(STAMP)

# torch first and alone, so the CPU wheel is in place before anything could pull a CUDA build.
# pip byte-compiles one file at a time (about a minute on 2 cores); compileall then uses every core
# and, like pip, leaves a file it cannot compile (torch ships Python 3.12-only test helpers) to the interpreter.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_path('purelib'), quiet=2, workers=0)"
	$(BIN)/python -m pip check
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__)"
	touch $(STAMP)

demo: install
	$(BIN)/moegs demo

# Two workers (pytest-xdist); the tests of the tiny demo share one worker, which builds the demo once.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

bench: install
	$(BIN)/python -m moegs.raster.bench

bench-step: install
	$(BIN)/python -m moegs.bench_step

bench-scale: install
	$(BIN)/python -m moegs.bench_scale

clean:
	rm -rf $(VENV) runs .pytest_cache
