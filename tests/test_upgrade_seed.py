"""A replica of an upgraded leader makes its new data directory from its own files (hard links) and
the leader's seed (upgrade_seed.py), fetched over the API with the control credentials. These
tests use plain directories shaped like a cluster after pg_upgrade --link; the booted Debian
test (tests/test_upgrade_debian.py) runs it with PostgreSQL."""
from __future__ import annotations

import io
import json
import os
import shutil
import urllib.error
from dataclasses import replace

import pytest

from governor import peers, upgrade_seed
from governor.api import ApiServer
from governor.upgrade_seed import SeedError
from tests.test_api_auth import request
from tests.test_api_hostile import auth, make_config, primary_status


def write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


@pytest.fixture
def leader(tmp_path):
    """The leader's old directory and pg_upgrade --link's new one beside it (not started)."""
    old, new = str(tmp_path / "data"), str(tmp_path / "data.upgrading")
    for rel, data in {"PG_VERSION": b"15\n", "global/pg_control": b"old control",
                      "base/5/16384": b"H" * 8192 * 3, "base/5/16384_fsm": b"F" * 8192 * 3,
                      "base/5/16384_vm": b"V" * 8192, "base/5/16390": b"U" * 8192 * 2,
                      "base/5/16390_init": b"", "base/5/16400.1": b"S" * 8192}.items():
        write(os.path.join(old, rel), data)
    for rel, data in {"PG_VERSION": b"17\n", "global/pg_control": b"new control",
                      "base/5/1259": b"C" * 8192 * 2, "pg_wal/000000010000000000000003": b"W" * 65536}.items():
        write(os.path.join(new, rel), data)
    os.makedirs(os.path.join(new, "pg_tblspc"))
    for rel in ("base/5/16384", "base/5/16384_fsm", "base/5/16384_vm", "base/5/16390", "base/5/16390_init",
                "base/5/16400.1"):
        os.link(os.path.join(old, rel), os.path.join(new, rel))
    return old, new


@pytest.fixture
def replica(tmp_path, leader):
    """A replica's own old directory: its own copies (other inodes), as a standby has them: the
    heap one page shorter (the leader extended it without WAL), no free space map, no unlogged
    data."""
    mine = str(tmp_path / "replica")
    shutil.copytree(leader[0], mine)
    with open(os.path.join(mine, "base/5/16384"), "r+b") as fh:
        fh.truncate(8192 * 2)
    os.remove(os.path.join(mine, "base/5/16384_fsm"))
    os.remove(os.path.join(mine, "base/5/16390"))
    return mine


def seed_of(leader, tmp_path) -> upgrade_seed.Manifest:
    return upgrade_seed.build(leader[0], leader[1], str(tmp_path / "data.upgrade-seed"))


def stream_of(seed: str, m: upgrade_seed.Manifest) -> io.BytesIO:
    out = io.BytesIO()
    upgrade_seed.send_copies(seed, m, out.write)
    out.seek(0)
    return out


def test_a_replica_links_its_own_data_and_receives_only_the_new_catalogs(tmp_path, leader, replica):
    m = seed_of(leader, tmp_path)
    assert {p for p, *_ in m.copies} == {"PG_VERSION", "global/pg_control", "base/5/1259",
                                         "pg_wal/000000010000000000000003"}
    assert {p: (o, opt) for p, o, _s, opt in m.links} == {
        "base/5/16384": ("base/5/16384", False), "base/5/16384_fsm": ("base/5/16384_fsm", True),
        "base/5/16384_vm": ("base/5/16384_vm", False), "base/5/16390_init": ("base/5/16390_init", False),
        "base/5/16400.1": ("base/5/16400.1", False)}, "the unlogged relation's data is left out"
    seed = str(tmp_path / "data.upgrade-seed")
    parsed = upgrade_seed.parse_manifest(upgrade_seed.read_manifest(seed))
    assert parsed == m
    new = str(tmp_path / "replica.upgrading")
    built = upgrade_seed.apply(parsed, replica, new, stream_of(seed, parsed).read)

    for rel in ("base/5/16384", "base/5/16384_vm", "base/5/16390_init", "base/5/16400.1"):
        assert os.path.samefile(os.path.join(new, rel), os.path.join(replica, rel)), f"{rel} is linked, not copied"
    assert os.path.getsize(os.path.join(new, "base/5/16384")) == 8192 * 2, "the replica's own, shorter heap"
    assert not os.path.exists(os.path.join(new, "base/5/16384_fsm")), "no free space map here: none linked"
    assert not os.path.exists(os.path.join(new, "base/5/16390")), "no unlogged data"
    for rel in ("PG_VERSION", "global/pg_control", "base/5/1259", "pg_wal/000000010000000000000003"):
        with open(os.path.join(new, rel), "rb") as a, open(os.path.join(leader[1], rel), "rb") as b:
            assert a.read() == b.read(), rel
        assert not os.path.samefile(os.path.join(new, rel), os.path.join(leader[1], rel))
    assert os.path.isdir(os.path.join(new, "pg_tblspc"))
    assert (built.linked, built.fetched) == (4, 4)
    assert built.fetched_bytes == upgrade_seed.copies_size(m) == 3 + 11 + 8192 * 2 + 65536
    # the seed is a snapshot: the leader's new cluster may change its catalogs after it starts
    write(os.path.join(leader[1], "base/5/1259"), b"changed by the running leader")
    again = str(tmp_path / "again")
    upgrade_seed.apply(parsed, replica, again, stream_of(seed, parsed).read)
    with open(os.path.join(again, "base/5/1259"), "rb") as fh:
        assert fh.read() == b"C" * 8192 * 2


@pytest.mark.parametrize("change,why", [
    (lambda mine: write(os.path.join(mine, "base/5/16384"), b"H" * 8192 * 4), "longer here"),
    (lambda mine: os.remove(os.path.join(mine, "base/5/16400.1")), "missing here"),
    (lambda mine: (os.remove(os.path.join(mine, "base/5/16400.1")),
                   os.symlink("/etc/passwd", os.path.join(mine, "base/5/16400.1"))), "not a regular file"),
])
def test_a_replica_whose_files_do_not_match_refuses_to_link(tmp_path, leader, replica, change, why):
    m = seed_of(leader, tmp_path)
    change(replica)
    with pytest.raises(SeedError, match=why):
        upgrade_seed.apply(m, replica, str(tmp_path / "new"), stream_of(str(tmp_path / "data.upgrade-seed"), m).read)


def test_a_visibility_map_the_replica_never_had_is_left_out(tmp_path, leader, replica):
    """VACUUM on the leader creates a relation's visibility map when it first looks at it, without
    WAL; only the bits it sets are WAL-logged (and make the standby's map). A replica without the
    file has seen no bit set: no map means nothing all-visible, which is what it holds. Seen on
    three hosts: the replica was re-cloned for a map the leader's autovacuum had made empty."""
    os.remove(os.path.join(replica, "base/5/16384_vm"))
    m = seed_of(leader, tmp_path)
    new = str(tmp_path / "replica.upgrading")
    built = upgrade_seed.apply(m, replica, new, stream_of(str(tmp_path / "data.upgrade-seed"), m).read)
    assert not os.path.exists(os.path.join(new, "base/5/16384_vm"))
    assert os.path.samefile(os.path.join(new, "base/5/16384"), os.path.join(replica, "base/5/16384"))
    assert built.linked == 3


def test_what_arrives_short_or_altered_is_refused(tmp_path, leader, replica):
    m = seed_of(leader, tmp_path)
    data = stream_of(str(tmp_path / "data.upgrade-seed"), m).getvalue()
    with pytest.raises(SeedError, match="bytes short"):
        upgrade_seed.apply(m, replica, str(tmp_path / "a"), io.BytesIO(data[:-10]).read)
    altered = bytearray(data)
    altered[5] ^= 1
    with pytest.raises(SeedError, match="checksum"):
        upgrade_seed.apply(m, replica, str(tmp_path / "b"), io.BytesIO(bytes(altered)).read)


def test_a_tablespace_means_no_seed(tmp_path, leader):
    os.symlink(str(tmp_path), os.path.join(leader[1], "pg_tblspc", "16500"))
    assert upgrade_seed.make(leader[0], leader[1]) is False
    assert not os.path.exists(upgrade_seed.seed_dir(leader[0])), "no half-made seed left"


GOOD = {"version": 1, "dirs": [["base", 0o700], ["base/5", 0o700]],
        "links": [{"path": "base/5/1", "from": "base/5/1", "size": 8192, "optional": False}],
        "copies": [{"path": "PG_VERSION", "size": 3, "sha256": "0" * 64}]}


@pytest.mark.parametrize("manifest", [
    b"", b"not json", b"[]", b"[" * 100000, json.dumps({**GOOD, "version": 2}).encode(),
    json.dumps({**GOOD, "dirs": [["..", 0o700]]}).encode(),
    json.dumps({**GOOD, "dirs": [["/etc", 0o700]]}).encode(),
    json.dumps({**GOOD, "dirs": [["base/5", 0o700], ["base", 0o700]]}).encode(),     # child before parent
    json.dumps({**GOOD, "dirs": [["base", 0o700], ["base", 0o700]]}).encode(),
    json.dumps({**GOOD, "dirs": [["base", 4096]]}).encode(),
    json.dumps({**GOOD, "links": [{"path": "base/5/../../../x", "from": "a", "size": 1}]}).encode(),
    json.dumps({**GOOD, "links": [{"path": "base/5/1", "from": "../../etc/shadow", "size": 1}]}).encode(),
    json.dumps({**GOOD, "links": [{"path": "base/5/1", "from": "/etc/shadow", "size": 1}]}).encode(),
    json.dumps({**GOOD, "links": [{"path": "nodir/1", "from": "a", "size": 1}]}).encode(),
    json.dumps({**GOOD, "links": [{"path": "base/5/1", "from": "a", "size": True}]}).encode(),
    json.dumps({**GOOD, "links": [{"path": "base/5/1", "from": "a", "size": 2**60}]}).encode(),
    json.dumps({**GOOD, "copies": [{"path": "base/5/1", "size": 1, "sha256": "0" * 64}]}).encode(),  # twice
    json.dumps({**GOOD, "copies": [{"path": "PG_VERSION", "size": 3}]}).encode(),
    json.dumps({**GOOD, "copies": [{"path": "PG_VERSION", "size": 3, "sha256": "x" * 64}]}).encode(),
    json.dumps({**GOOD, "copies": [{"path": "a\x00b", "size": 3, "sha256": "0" * 64}]}).encode(),
    json.dumps({**GOOD, "copies": "PG_VERSION"}).encode(),
], ids=range(21))
def test_a_hostile_manifest_is_refused_whole(manifest):
    assert upgrade_seed.parse_manifest(json.dumps(GOOD).encode()).links
    with pytest.raises(SeedError):
        upgrade_seed.parse_manifest(manifest)


def test_the_api_serves_the_seed_only_with_the_control_credentials(tmp_path, leader):
    cfg = make_config(tmp_path, username="admin", password="s3cret")
    cfg = replace(cfg, postgresql=replace(cfg.postgresql, data_dir=leader[0]))
    api = ApiServer(cfg, primary_status)
    api.start()
    try:
        assert request(api, "GET", "/upgrade/seed")[0] == 401
        assert request(api, "GET", "/upgrade/seed/files")[0] == 401
        creds = {"Authorization": auth("admin", "s3cret")}
        assert request(api, "GET", "/upgrade/seed", headers=creds)[0] == 404, "no seed yet"
        assert upgrade_seed.make(leader[0], leader[1]) is True
        code, body = request(api, "GET", "/upgrade/seed", headers=creds)
        assert code == 200
        m = upgrade_seed.parse_manifest(body)
        code, files = request(api, "GET", "/upgrade/seed/files", headers=creds)
        assert code == 200 and len(files) == upgrade_seed.copies_size(m)
        assert request(api, "GET", "/upgrade/seed/other", headers=creds)[0] == 404

        # the replica's client: the same credentials from its own files
        url = f"http://127.0.0.1:{api.httpd.server_address[1]}"
        with peers.open_control(url, "/upgrade/seed/files", cfg.restapi, 5) as answer:
            new = str(tmp_path / "replica.upgrading")
            upgrade_seed.apply(m, leader[0], new, answer.read)
        with open(os.path.join(new, "base/5/1259"), "rb") as fh:
            assert fh.read() == b"C" * 8192 * 2
        with pytest.raises(urllib.error.HTTPError):
            peers.open_control(url, "/upgrade/seed", replace(cfg.restapi, password="guess"), 5)
    finally:
        api.stop()


def test_over_tls_with_client_certificates_a_replica_presents_its_own(tmp_path, leader, pki):
    """README's three hosts: the API over TLS, control by a certificate from restapi.cafile. A
    replica fetches the seed with its own certificate, checking the leader's against the CA."""
    ca, cert = pki
    server_crt, server_key = cert("db1", "IP:127.0.0.1")
    cfg = make_config(tmp_path, certfile=server_crt, keyfile=server_key, cafile=ca, verify_client="required")
    cfg = replace(cfg, postgresql=replace(cfg.postgresql, data_dir=leader[0]))
    api = ApiServer(cfg, primary_status)
    api.start()
    try:
        assert upgrade_seed.make(leader[0], leader[1]) is True
        url = f"https://127.0.0.1:{api.httpd.server_address[1]}"
        replica_crt, replica_key = cert("db2", "IP:127.0.0.1")
        mine = replace(cfg.restapi, certfile=replica_crt, keyfile=replica_key)
        with peers.open_control(url, "/upgrade/seed", mine, 5) as answer:
            assert upgrade_seed.parse_manifest(answer.read()).copies
        with pytest.raises(urllib.error.HTTPError) as refused:       # the CA's, but no certificate: no seed
            peers.open_control(url, "/upgrade/seed", replace(mine, certfile=None, keyfile=None), 5)
        assert refused.value.code == 401
        rogue_ca = replace(mine, cafile=cert("rogue-ca-user", "IP:127.0.0.1", ca="rogue")[0])
        with pytest.raises(urllib.error.URLError):                 # a leader the replica's CA did not sign
            peers.open_control(url, "/upgrade/seed", rogue_ca, 5)
    finally:
        api.stop()
