# The README's two commands: `make demo` and `make test`. Everything else is what they call.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup services test demo bench lock

setup:
	VENV=$(VENV) scripts/bootstrap.sh

# redis-server comes from Debian's packages; the tests and the demo start their own on loopback.
services:
	@command -v redis-server >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

test: setup services
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup services
	$(PY) -m autolabel_worker.demo

# Speed and efficiency ratios, measured side by side; results in bench/results/.
bench: setup services
	$(PY) bench/run.py
	$(PY) bench/codetr_gpu.py || [ $$? -eq 2 ]  # Co-DETR Swin-L on CUDA; exit 2 means no GPU here

# Regenerate the lock file from the current environment after changing a dependency.
lock:
	{ echo "# Exact versions of the whole environment; regenerate with \`make lock\`."; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v '^-e ' | sed "s/^torch==\(.*\)+cpu$$/torch==\1/"; \
	} > requirements/lock.txt
