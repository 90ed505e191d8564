from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import harness  # noqa: E402

try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # pragma: no cover - python3-hypothesis is installed by tools/install-deps
    _hypothesis_settings = None
if _hypothesis_settings is not None:
    # The same examples on every run and no example database: a CI run never depends on what an
    # earlier run found.
    _hypothesis_settings.register_profile("governor", derandomize=True, database=None)
    _hypothesis_settings.load_profile("governor")

_scope_numbers = itertools.count(1)


def _live_processes_naming(path: str, settle: float = 10.0) -> list:
    """Processes whose command line names `path` and that are still alive after `settle` seconds.
    A process killed a moment ago may still show as a zombie (empty command line) until the
    reaper thread collects it: that one has exited, it is not left behind."""
    deadline = time.monotonic() + settle
    while True:
        found = subprocess.run(["pgrep", "-f", path], capture_output=True, text=True).stdout.split()
        alive = [p for p in found if not harness.process_gone(int(p))]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)


@pytest.fixture(scope="session")
def base_dir(request):
    harness.become_subreaper()
    path = harness.new_base_dir()
    yield path
    harness.stop_all_processes()
    leftovers = _live_processes_naming(path)
    if getattr(request.config, "_governor_failed", False):
        print(f"\nkept test files for inspection: {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"processes left behind: {[(p, harness.cmdline(int(p))) for p in leftovers]}"


@pytest.fixture(scope="session")
def src_dir(base_dir):
    return harness.make_source_copy(base_dir)


@pytest.fixture(scope="session")
def etcd(base_dir):
    server = harness.Etcd(base_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def etcd35(base_dir):
    """Debian 13's etcd 3.5, where the v2 API is deprecated (only the v3 adapter is used on it)."""
    try:
        binary = harness.debian13_etcd()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"etcd 3.5 from Debian 13 could not be fetched with apt: {exc}")
    server = harness.Etcd(os.path.join(base_dir, "etcd35"), binary=binary).start()
    yield server
    server.stop()


@pytest.fixture
def make_cluster(etcd, base_dir, src_dir, request):
    """Factory for clusters with a fresh scope; every node is stopped at the end of the test."""
    made = []

    def make(prefix: str = "c") -> harness.TestCluster:
        scope = f"{prefix}{next(_scope_numbers)}-{os.getpid()}"
        cluster = harness.TestCluster(etcd, base_dir, src_dir, scope)
        made.append(cluster)
        return cluster

    yield make
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    for cluster in made:
        if failed:
            for node in cluster.nodes.values():
                print(f"\n----- governor log of {node.name} -----\n{node.log_text()[-4000:]}")
        cluster.teardown()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so fixtures can print logs of a failed test."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    if report.when == "call" and report.failed:
        item.session.config._governor_failed = True


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A private CA (as README's three-hosts step 7 sets up), a rogue CA, and API certificates
    signed by them: `cert(name, san, ca)` -> (certificate, key)."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{ca}.key"),
                 "-out", str(d / f"{ca}.crt"), "-days", "2", "-subj", f"/CN=governor test {ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")

    def cert(name: str, san: str, ca: str = "ca") -> tuple:
        key, csr, crt, ext = (str(d / f"{name}.{x}") for x in ("key", "csr", "crt", "ext"))
        with open(ext, "w") as fh:
            fh.write(f"subjectAltName={san}\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", csr, "-CA", str(d / f"{ca}.crt"), "-CAkey", str(d / f"{ca}.key"),
                 "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext)
        return crt, key

    return str(d / "ca.crt"), cert
