# governor: `make demo` starts a local 3-node cluster, `make test` runs every test.
# Both install what is missing (Debian 12; run as root or with sudo).
PYTHON   ?= /usr/bin/python3
PYTEST   ?= $(PYTHON) -m pytest -p no:cacheprovider --timeout=600
DEMO_DIR ?= /tmp/governor-demo

.PHONY: all deps lint unit test test-system test-packages test-hosts simulate deb rpm demo demo-stop demo-status demo-clean clean

all: test

deps:
	@tools/install-deps --dev

lint: deps
	.venv/bin/ruff check .

unit: deps
	$(PYTEST) -q -m "not integration" tests

# governor as a systemd service in a booted Debian 12 container (also part of `make test`)
test-system: deps
	$(PYTEST) -q -m "system and not packages and not hosts" tests

# build the .deb, apt install it into a booted Debian 12, configure, enable, purge (also in `make test`)
test-packages: deps
	$(PYTEST) -q -m packages tests

# three Debian 12 hosts on a bridge (etcd cluster, governor from the .deb, haproxy on a client
# host), deployed as README's "Three hosts" says; then moved to Debian 13 and PostgreSQL 17 as
# README's "Upgrading" says (also in `make test`)
test-hosts: deps
	$(PYTEST) -q -s -m hosts tests

# Every test (the integration tests on the etcd v3 adapter) and the failover tests once more on
# the v2 adapter, in two processes side by side: tools/run-tests.
test: deps lint
	tools/run-tests

# The deterministic simulator on many more fault schedules than `make test` runs (5,000):
# make simulate SIM_SCHEDULES=1000000 SIM_FIRST_SEED=10001
SIM_SCHEDULES ?= 200000
SIM_FIRST_SEED ?= 10001
simulate: deps
	SIM_SCHEDULES=$(SIM_SCHEDULES) SIM_FIRST_SEED=$(SIM_FIRST_SEED) $(PYTEST) --timeout=0 -q -s tests/test_simulation.py -k random

demo: deps
	$(PYTHON) demo/demo.py start --dir $(DEMO_DIR)

demo-status:
	$(PYTHON) demo/demo.py status --dir $(DEMO_DIR)

demo-clean:
	$(PYTHON) demo/demo.py clean --dir $(DEMO_DIR)

demo-stop:
	$(PYTHON) demo/demo.py stop --dir $(DEMO_DIR)

# Debian package from the committed tree: build/deb/governor_<version>_all.deb, checked by lintian.
deb: deps
	rm -rf build/deb && mkdir -p build/deb/src
	git ls-files -z | xargs -0 tar -cf - | tar -C build/deb/src -xf -
	cp -r packaging/debian build/deb/src/debian
	cp systemd/governor.service systemd/governor@.service build/deb/src/debian/
	cd build/deb/src && dpkg-buildpackage -us -uc -b
	lintian --fail-on error,warning --suppress-tags-from-file packaging/lintian-suppressed build/deb/*.changes
	@ls build/deb/*.deb

# RPM for EL9-style systems from the committed tree: build/rpm/RPMS/noarch/governor-*.noarch.rpm.
rpm: deps
	rm -rf build/rpm && mkdir -p build/rpm/SOURCES
	git archive --format=tar.gz --prefix=governor-$$($(PYTHON) -c 'import governor; print(governor.__version__)')/ \
	    -o build/rpm/SOURCES/governor-$$($(PYTHON) -c 'import governor; print(governor.__version__)').tar.gz HEAD
	# --nodeps: on Debian the RPM database knows none of the build requirements that dpkg installed.
	rpmbuild --nodeps --define "_topdir $(CURDIR)/build/rpm" -bb packaging/rpm/governor.spec
	rpmlint -r packaging/rpmlintrc build/rpm/RPMS/noarch/*.rpm packaging/rpm/governor.spec
	@ls build/rpm/RPMS/noarch/*.rpm

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
