# governor: `make demo` starts a local 3-node cluster, `make test` runs every test.
# Both install what is missing (Debian 12; run as root or with sudo).
PYTHON   ?= /usr/bin/python3
PYTEST   ?= $(PYTHON) -m pytest -p no:cacheprovider --timeout=600
DEMO_DIR ?= /tmp/governor-demo

.PHONY: all deps lint unit test test-system demo demo-stop demo-status demo-clean clean

all: test

deps:
	@tools/install-deps --dev

lint: deps
	.venv/bin/ruff check .

unit: deps
	$(PYTEST) -q -m "not integration" tests

# governor as a systemd service in a booted Debian 12 container (also part of `make test`)
test-system: deps
	$(PYTEST) -q -m system tests

test: deps lint
	$(PYTEST) -q tests

demo: deps
	$(PYTHON) demo/demo.py start --dir $(DEMO_DIR)

demo-status:
	$(PYTHON) demo/demo.py status --dir $(DEMO_DIR)

demo-clean:
	$(PYTHON) demo/demo.py clean --dir $(DEMO_DIR)

demo-stop:
	$(PYTHON) demo/demo.py stop --dir $(DEMO_DIR)

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
