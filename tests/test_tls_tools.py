"""TLS in the tools: haproxy/governor-check and governorctl verify the API's certificate (a
private CA given with --cacert, or governorctl's default: the configuration's restapi.cafile),
refuse one they cannot verify, and skip the check only when told (--insecure)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from governor import config as config_mod
from governor.api import ApiServer
from governor.status import NodeStatus
from tests import harness
from tests.harness import REPO

CHECK = os.path.join(REPO, "haproxy", "governor-check")


def tls_api(tmp_path, crt: str, key: str) -> ApiServer:
    cfg = config_mod.validate({"etcd": {"scope": "s"}, "postgresql": {
        "name": "node2", "data_dir": str(tmp_path / "data"), "bin_dir": "/usr/lib/postgresql/15/bin",
        "replication": {"password": "p"}}}, {}, "test")
    cfg = replace(cfg, restapi=replace(cfg.restapi, port=0, certfile=crt, keyfile=key))
    status = NodeStatus(name="node2", scope="s", role="replica", state="running", running=True, streaming=True,
                        loop_finished=time.monotonic())
    api = ApiServer(cfg, lambda: status)
    api.start()
    return api


def check(port: int, *args: str) -> int:
    return subprocess.run([sys.executable, CHECK, "--role", "replica", "--https", "--api-port", str(port), *args,
                           "127.0.0.1"], capture_output=True, timeout=10).returncode


@pytest.mark.parametrize("signed_by,args,expected", [
    ("ca", ["--cacert", "CA"], 0),            # verified against the private CA
    ("ca", [], 2),                            # the system's CAs do not know it: no answer believed
    ("rogue", ["--cacert", "CA"], 2),         # signed by another CA
    ("rogue", ["--insecure"], 0),             # told not to verify
])
def test_the_check_script_verifies_the_api_certificate(pki, tmp_path, signed_by, args, expected):
    ca_file, cert = pki
    crt, key = cert(f"check-{signed_by}", "IP:127.0.0.1", signed_by)
    api = tls_api(tmp_path, crt, key)
    try:
        port = api.httpd.server_address[1]
        assert check(port, *[ca_file if a == "CA" else a for a in args]) == expected
    finally:
        api.stop()


@pytest.mark.integration
def test_governorctl_trusts_the_configured_ca_refuses_another_and_skips_only_when_told(pki, make_cluster, base_dir):
    import shutil
    made_ca, cert = pki
    made = cert("members", "IP:127.0.0.1", "ca")
    shared = os.path.join(base_dir, "pki")      # where governor's user can read them
    os.makedirs(shared, exist_ok=True)
    ca_file, crt, key, rogue_ca = (shutil.copy(path, shared) for path in (
        made_ca, *made, os.path.join(os.path.dirname(made_ca), "rogue.crt")))
    for path in (shared, ca_file, crt, key):
        harness.chown_to_runner(path)
    tls = {"restapi": {"username": "admin", "password": "api-Secret-9", "certfile": crt, "keyfile": key,
                       "cafile": ca_file}}
    cluster = make_cluster("tlsctl")
    leader = cluster.add("node1", extra=tls)
    cluster.wait_for_primary(60)
    cluster.add("node2", extra=tls)
    cluster.wait_for_streaming(["node2"], 60)
    assert cluster.nodes["node2"].member()["api_url"].startswith("https://")

    done = harness.governorctl(leader, "restart", "node2", "--force")          # restapi.cafile from the config
    assert done.returncode == 0, done.stdout + done.stderr
    done = harness.governorctl(leader, "--cacert", rogue_ca, "restart", "node2", "--force")
    assert done.returncode != 0 and "TLS certificate is not trusted" in done.stderr, done.stderr
    assert "--insecure" in done.stderr
    done = harness.governorctl(leader, "--cacert", rogue_ca, "--insecure", "restart", "node2", "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    done = harness.governorctl(leader, "--cert", crt, "--key", key, "restart", "node2", "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    done = harness.governorctl(leader, "--cacert", "/nonexistent/ca.crt", "list")
    assert done.returncode == 2 and "TLS" in done.stderr
