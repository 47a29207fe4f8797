# Two commands for a fresh machine:
#   make book   -> installs what is missing, executes every notebook (offline profile), builds _build/html
#   make test   -> installs what is missing, runs the test suite
PYTHON ?= python3
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= offline
STAMP := .cache/install.stamp
# Threads: torch uses one per core by default (2 on CI: 1.8x faster than 1 for chapter 2's training, measured).
# On a machine shared with other jobs, `make book OMP_NUM_THREADS=1` avoids oversubscription.

.PHONY: install test book clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[all,test]"
	@mkdir -p $(dir $@) && touch $@

# Tests: one pytest-xdist worker per core; the tests that read the offline book share one worker (tests/conftest.py),
# which builds it (on every core) while the others run the rest of the suite (one thread per test) beside it.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PYTHON) -m pytest -q -p no:cacheprovider --durations=15 -n $(TEST_WORKERS) --dist loadgroup

book: $(STAMP)
	$(PYTHON) -m vlnb book --profile $(PROFILE)

clean:
	rm -rf _build .cache runs
