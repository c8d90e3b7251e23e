# Two commands on a fresh machine (each creates the venv, installs torch and the requirements,
# and builds the extension when needed):
#   make demo    the main job: synthetic COCO-format set, train TOOD, COCO AP table, prediction PNGs
#   make test    the test suite
# and further:
#   make bench   benchmarks of every op, kernel vs reference vs peers (benchmarks/results/)
# CUDA kernels are compiled whenever torch is a CUDA build and nvcc is found (CUDA_HOME, else
# /usr/local/cuda); FORCE_CUDA=1 makes that mandatory, TOOD_EXT_CPU_ONLY=1 skips it.
#
# TORCH_SPEC: what `pip install` gets for torch (default: the pinned CUDA build below), e.g.
#   make test TORCH_SPEC="torch==2.15.0 torchvision"
#   make test TORCH_SPEC=system       use the torch of $(PYTHON)'s environment, installing none:
#                                     .venv sees that environment's packages (as
#                                     --system-site-packages would, venvs included), and torch is
#                                     pinned to the version found there for every later install
# .venv/.deps records the spec it was made with: another TORCH_SPEC recreates .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEFAULT_TORCH_SPEC := torch==2.14.1 torchvision==0.29.1
TORCH_SPEC ?= $(DEFAULT_TORCH_SPEC)
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)
# written by each build next to tood_ext/_C: another venv's build (another torch) remakes this one's
STAMP := $(wildcard tood_ext/_build_stamp.py)

VENV_SPEC := $(strip $(shell cat $(VENV)/.deps 2>/dev/null))
ifeq ($(VENV_SPEC)$(wildcard $(VENV)/.deps),$(VENV)/.deps)
VENV_SPEC := $(DEFAULT_TORCH_SPEC)# an empty .deps: made by the Makefile before it recorded specs
endif
ifneq ($(VENV_SPEC),$(strip $(TORCH_SPEC)))
.PHONY: $(VENV)/.deps
SPEC_CHANGED := $(wildcard $(VENV)/bin/python)
REMAKE_NOTE := TORCH_SPEC is now '$(strip $(TORCH_SPEC))' but $(VENV) was made with '$(VENV_SPEC)': recreating $(VENV)
endif
ifeq ($(strip $(TORCH_SPEC)),system)
PIN := -c $(VENV)/torch-constraint.txt
endif

.PHONY: demo test bench build gpu-check clean

$(VENV)/.deps: requirements.txt requirements-extras.txt
	$(if $(SPEC_CHANGED),@echo "$(REMAKE_NOTE)")
	$(if $(SPEC_CHANGED),rm -rf $(VENV))
	$(PYTHON) -m venv $(VENV)
ifeq ($(strip $(TORCH_SPEC)),system)
	@$(PYTHON) -c "import torch" || { echo "TORCH_SPEC=system: torch is not importable by $(PYTHON) (PYTHON=/path/to/python names another)"; exit 1; }
	$(PYTHON) -c "import site; print('import site; ' + '; '.join(f'site.addsitedir({p!r})' for p in site.getsitepackages()))" \
	  > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_tood_parent_env.pth"
	$(PY) -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > $(VENV)/torch-constraint.txt
	@echo "TORCH_SPEC=system: $(VENV) uses $$(cat $(VENV)/torch-constraint.txt) from $(PYTHON)'s environment"
else
	$(PY) -m pip install -q $(TORCH_SPEC)
endif
	$(PY) -m pip install -q $(PIN) -r requirements.txt
	$(PY) -m pip install -q $(PIN) -r requirements-extras.txt \
	  || echo "NOTE: optional extras (requirements-extras.txt) not installed; their tests skip"
	echo "$(strip $(TORCH_SPEC))" > $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES) $(STAMP)
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
	rm -rf build *.egg-info tood_ext/_C*.so tood_ext/_build_stamp.py $(VENV)/.built
