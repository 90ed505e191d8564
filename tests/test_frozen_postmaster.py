"""A frozen postmaster (SIGSTOP): governor's open session still answers, every new client hangs.
governor notices it in its next pass (it starts a new session each pass) and says so, and says so
again when new sessions start (issue 38)."""
from __future__ import annotations

import os
import signal

import pytest

from tests.harness import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_a_frozen_postmaster_is_noticed_and_logged(make_cluster):
    cluster = make_cluster("frozenpm")
    node = cluster.add("solo", extra={"loop_wait": 1, "retry_timeout": 2, "etcd": {"ttl": 6}})
    cluster.wait_for_primary(90)
    conn = node.connect()          # a client's session opened before the freeze
    pm = node.postmaster_pid()
    os.kill(pm, signal.SIGSTOP)
    try:
        wait_until(lambda: "starts no new one" in node.log_text(), 15, "governor to notice the frozen postmaster")
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,), "an existing session answers meanwhile"
    finally:
        os.kill(pm, signal.SIGCONT)
    wait_until(lambda: "PostgreSQL starts new sessions again" in node.log_text(), 15, "governor to see it recover")
    text = node.log_text()
    assert f"its postmaster (PID {pm}) may be frozen" in text
    assert text.count("starts no new one") == 1, "said once, not every pass"
    conn.close()
