# The README's two commands: `make demo` and `make test`. Everything else is what they call.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup services test demo bench lock compose-test

setup:
	VENV=$(VENV) scripts/bootstrap.sh

# redis-server comes from Debian's packages; the tests and the demo start their own on loopback.
# docker-compose (Debian's, 1.29) only parses docker-compose.yml in tests/test_deploy.py; no engine.
services:
	@command -v redis-server >/dev/null && command -v docker-compose >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server docker-compose >/dev/null; }

test: setup services
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup services
	$(PY) -m autolabel_worker.demo

# Speed and efficiency ratios, measured side by side; results in bench/results/.
bench: setup services
	$(PY) bench/run.py
	$(PY) bench/codetr_gpu.py || [ $$? -eq 2 ]  # Co-DETR Swin-L on CUDA; exit 2 means no GPU here

# The compose stack built and run for real (docs/deploy.md): Debian's docker engine (dockerd is
# started by the script when none runs) and debootstrap for stand-in base images.
compose-test: setup services
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq docker.io debootstrap >/dev/null; }
	$(PY) scripts/compose_test.py

# Regenerate the lock file from the current environment after changing a dependency.
lock:
	{ echo "# Exact versions of the whole environment; regenerate with \`make lock\`."; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v '^-e ' | sed "s/^torch==\(.*\)+cpu$$/torch==\1/"; \
	} > requirements/lock.txt
