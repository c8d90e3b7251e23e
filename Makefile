# Two commands on a fresh machine (each creates the venv, installs torch and the requirements,
# and builds the extension when needed):
#   make demo    the main job: synthetic COCO-format set, train TOOD, COCO AP table, prediction PNGs
#   make test    the test suite
# and further:
#   make bench   benchmarks of every op, kernel vs reference vs peers (benchmarks/results/)
# CUDA kernels are compiled whenever torch is a CUDA build and nvcc is found (CUDA_HOME, else
# /usr/local/cuda); FORCE_CUDA=1 makes that mandatory, TOOD_EXT_CPU_ONLY=1 skips it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: demo test bench build gpu-check clean

$(VENV)/.deps: requirements.txt requirements-extras.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -r requirements-extras.txt \
	  || echo "NOTE: optional extras (requirements-extras.txt) not installed; their tests skip"
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	$(PY) -c "import tood_ext; print('tood_ext build:', tood_ext.build_info())"
	touch $@

build: $(VENV)/.built

demo: build
	$(PY) -m tood_ext demo

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m benchmarks

# On a GPU machine with torch installed system-wide (see README).
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build *.egg-info tood_ext/_C*.so $(VENV)/.built
