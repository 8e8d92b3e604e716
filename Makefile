# The README's two commands: `make demo` and `make test`. Everything else is what they call.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup services test demo bench lock compose-test

setup:
	VENV=$(VENV) scripts/bootstrap.sh

# Debian's packages: redis-server (the tests and the demo start their own on loopback);
# docker-compose (1.29) parses docker-compose.yml in tests/test_deploy.py; prometheus and promtool
# scrape a real job and check the alert rules (tests/test_metrics.py); docker.io and debootstrap
# build and run the compose stack for real (tests/test_compose.py).
SERVICES := redis-server docker-compose prometheus docker.io debootstrap
services:
	@for tool in redis-server docker-compose prometheus promtool dockerd debootstrap; do \
		command -v $$tool >/dev/null || [ -x /usr/sbin/$$tool ] || missing=1; done; \
	[ -z "$$missing" ] || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(SERVICES) >/dev/null; }

test: setup services
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup services
	$(PY) -m autolabel_worker.demo $(if $(TRACK),--track)

# The simulated device's and the CPU figures (bench/run.py), then Co-DINO Swin-L on CUDA; results in
# bench/results/ (docs/performance.md).
bench: setup services
	$(PY) bench/run.py
	$(PY) bench/codetr_gpu.py || [ $$? -eq 2 ]  # Co-DETR Swin-L on CUDA; exit 2 means no GPU here

# The compose stack built and run for real, alone (make test runs it too; docs/deploy.md):
# Debian's docker engine (the test starts dockerd when none answers) and debootstrap for stand-ins.
compose-test: setup services
	$(PY) -m pytest tests/test_compose.py $(PYTEST_ARGS)

# Regenerate the lock file from the current environment after changing a dependency.
lock:
	{ echo "# Exact versions of the whole environment; regenerate with \`make lock\`."; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v '^-e ' | sed "s/^torch==\(.*\)+cpu$$/torch==\1/"; \
	} > requirements/lock.txt
