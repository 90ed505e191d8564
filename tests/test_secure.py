"""Secure by default, on a running cluster (real etcd and PostgreSQL): nothing that arrives through
the API or etcd makes a member run a program (issue 32)."""
from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request

import pytest

from tests import harness
from tests.harness import wait_until

pytestmark = pytest.mark.integration

RUNS_A_PROGRAM = ("archive_command", "restore_command", "archive_cleanup_command", "recovery_end_command",
                  "ssl_passphrase_command", "archive_library", "shared_preload_libraries",
                  "session_preload_libraries", "local_preload_libraries", "dynamic_library_path", "jit_provider",
                  "log_directory", "log_filename", "external_pid_file")


def patch_config(node: harness.Node, body: dict):
    req = urllib.request.Request(f"http://127.0.0.1:{node.api_port}/config", data=json.dumps(body).encode(),
                                 method="PATCH", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def metric(node: harness.Node, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


def test_settings_that_run_a_program_come_neither_from_the_api_nor_from_etcd(make_cluster):
    """With WAL archiving on (the files' archive command is `true`): PATCH /config with each such
    setting is refused; the same values written straight into the `config` key are ignored (no
    program runs when the archiver archives), while a harmless setting beside them applies."""
    cluster = make_cluster("sec")
    leader = cluster.add("node1", extra={"postgresql": {"archive": {"mode": "on", "command": "true"}}})
    wait_until(lambda: leader.role() == "primary", 90, "the leader")
    marker = os.path.join(leader.dir, "ran-a-program-from-etcd")
    config_key = f"/service/{cluster.scope}/config"
    before = cluster.etcd.get(config_key)
    for name in RUNS_A_PROGRAM:
        code, answer = patch_config(leader, {"postgresql": {"parameters": {name: f"touch {marker}"}}})
        assert code == 400, (name, code, answer)
        assert f"postgresql.parameters.{name}" in json.dumps(answer) and "files" in json.dumps(answer), answer
    code, answer = patch_config(leader, {"standby_cluster": {"host": "site-a", "restore_command": f"touch {marker}"}})
    assert code == 400 and "standby_cluster.restore_command" in json.dumps(answer), answer
    assert cluster.etcd.get(config_key) == before, "a refused PATCH wrote something"

    # Straight into etcd, as anyone with write access to a shared etcd could.
    cluster.etcd.put(config_key, json.dumps({"postgresql": {"parameters": {
        "archive_command": f"touch {marker}", "shared_preload_libraries": "/tmp/evil.so", "work_mem": "7MB"}}}))
    wait_until(lambda: leader.sql("SHOW work_mem")[0][0] == "7MB", 20, "the harmless setting to apply")
    assert leader.sql("SHOW archive_command")[0][0] == "true"
    conf = open(os.path.join(leader.data_dir, "postgresql.conf")).read()
    assert marker not in conf and "evil" not in conf
    leader.sql("SELECT pg_switch_wal()")
    leader.sql("CREATE TABLE t AS SELECT 1")
    leader.sql("SELECT pg_switch_wal()")
    wait_until(lambda: leader.sql("SELECT archived_count FROM pg_stat_archiver")[0][0] >= 1, 20, "the archiver")
    time.sleep(1)
    assert not os.path.exists(marker), "a command from etcd ran"
    assert metric(leader, "governor_dynamic_settings_ignored") == 2
    assert "postgresql.parameters.archive_command, postgresql.parameters.shared_preload_libraries: only each " \
           "member's files may set these" in leader.log_text()


def test_who_did_what_is_answered_by_history_actions(make_cluster):
    """A switchover and a restart through the API (governorctl with the configuration's API
    credentials), a pause and an edit-config written by governorctl itself: each in the journal
    and in `governorctl history --actions`, with who and from where; a request without the
    credentials is refused and leaves no record."""
    cluster = make_cluster("audit")
    api = {"restapi": {"username": "ops", "password": "api-Secret-7"}}
    for name in ("node1", "node2"):
        cluster.add(name, extra=api)
    leader = cluster.wait_for_primary(90)
    replica = next(n for n in cluster.nodes.values() if n is not leader)
    cluster.wait_for_streaming([replica.name], 90)
    done = harness.governorctl(leader, "switchover", "--candidate", replica.name, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(lambda: cluster.leader_name() == replica.name and replica.role() == "primary", 60, "the switchover")
    assert harness.governorctl(replica, "restart", leader.name, "--force").returncode == 0
    assert harness.governorctl(leader, "pause").returncode == 0
    assert harness.governorctl(leader, "edit-config", "--set", "loop_wait=2", "--force").returncode == 0
    code, _ = patch_anonymous(replica)
    assert code == 401
    shown = harness.governorctl(leader, "history", "--actions")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    print(text)
    switchover = next(line for line in text.splitlines() if "POST /switchover" in line)
    assert leader.name in switchover and f'"candidate":"{replica.name}"' in switchover, switchover
    assert "user ops from 127.0.0.1" in switchover and "-> 202" in switchover, switchover
    for expected in ("POST /restart", "governorctl pause", "governorctl edit-config", '{"loop_wait":2}',
                     "os user ", "promotion"):
        assert expected in text, (expected, text)
    assert "PATCH /config" not in text, "a refused request is no action"
    lines = text.splitlines()
    assert lines.index(next(line for line in lines if "POST /switchover" in line)) < \
        lines.index(next(line for line in lines if "governorctl pause" in line)), "in time order"
    assert "audit: POST /switchover" in leader.log_text() + replica.log_text()
    assert "api: PATCH /config from 127.0.0.1 refused: no valid credentials" in replica.log_text()


def patch_anonymous(node: harness.Node):
    return patch_config(node, {"loop_wait": 3})


def _pki_copy(node: harness.Node, *paths: str) -> list:
    """Copies of certificate files where the postgres user can read them (keys 0600)."""
    import shutil
    out = []
    for path in paths:
        target = os.path.join(node.dir, os.path.basename(path))
        shutil.copy(path, target)
        os.chmod(target, 0o600 if path.endswith(".key") else 0o644)
        harness.chown_to_runner(target)
        out.append(target)
    return out


def test_a_verify_full_replica_refuses_a_primary_whose_certificate_the_ca_did_not_sign(make_cluster, pki):
    """postgresql.replication.sslmode verify-full with sslrootcert: the replica clones and streams
    only once the primary presents a certificate from that CA, for the address it connects to."""
    ca, cert = pki
    cluster = make_cluster("tls")
    primary = cluster.add("node1", start=False)
    rogue_crt, rogue_key = _pki_copy(primary, *cert("rogue-pg", "IP:127.0.0.1", ca="rogue"))
    primary.config["postgresql"]["parameters"].update(ssl="on", ssl_cert_file=rogue_crt, ssl_key_file=rogue_key)
    primary.write_config()
    primary.start()
    wait_until(lambda: primary.role() == "primary", 90, "the primary")
    replica = cluster.add("node2", start=False)
    (root,) = _pki_copy(replica, ca)
    replica.config["postgresql"]["replication"].update(sslmode="verify-full", sslrootcert=root)
    replica.write_config()
    replica.start()
    wait_until(lambda: "certificate verify failed" in replica.log_text(), 60, "the clone to be refused")
    assert not replica.is_streaming()
    good_crt, good_key = cert("good-pg", "IP:127.0.0.1")
    for source, target in ((good_crt, rogue_crt), (good_key, rogue_key)):    # the same paths, new contents
        with open(source, "rb") as fh, open(target, "wb") as out:
            out.write(fh.read())
    primary.sql("SELECT pg_reload_conf()")
    cluster.wait_for_streaming(["node2"], 90)
    rows = primary.sql("SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)")
    assert rows == [(True,)], rows
    conf = open(os.path.join(replica.data_dir, "postgresql.conf")).read()
    assert "sslmode=''verify-full''" in conf and f"sslrootcert=''{root}''" in conf
