# Two commands for a fresh machine:
#   make book   -> installs what is missing, executes every notebook (offline profile), builds _build/html
#   make test   -> installs what is missing, runs the test suite
PYTHON ?= python3
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= offline
STAMP := .cache/install.stamp
# 2-core CI machines: one BLAS/OpenMP thread per process avoids oversubscription (10-300x slowdowns measured).
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: install test book clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[all,test]"
	@mkdir -p $(dir $@) && touch $@

test: $(STAMP)
	$(PYTHON) -m pytest -q -p no:cacheprovider

book: $(STAMP)
	$(PYTHON) -m vlnb book --profile $(PROFILE)

clean:
	rm -rf _build .cache runs
