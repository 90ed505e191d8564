"""The etcd v3 key cache and its watch stream fed hostile messages: nothing raises, nothing that
does not parse is taken as a change it is not, and a cache that may have missed something is
never offered as current (the next read goes to etcd)."""
from __future__ import annotations

import base64
import threading

import pytest

from governor.dcs.keys import Entry
from governor.dcs.v3cache import Item, KeyCache, WatchStream

PREFIX = "/service/c/"


def b64(text) -> str:
    return base64.b64encode(text if isinstance(text, bytes) else text.encode()).decode()


def kv(key: str, value: str = "v", revision: int = 11, version: int = 2, lease: str = "0") -> dict:
    return {"key": b64(PREFIX + key), "value": b64(value), "mod_revision": str(revision),
            "version": str(version), "lease": lease}


def synced_cache(revision: int = 10) -> KeyCache:
    cache = KeyCache()
    cache.reset([Item(Entry("leader", "node1", 5), "77", False),
                 Item(Entry("members/node1", "{}", 6), "77", False)], [], revision)
    return cache


def stream(cache: KeyCache) -> WatchStream:
    def no_connection(timeout):
        raise OSError("not in this test")
    return WatchStream(cache, PREFIX, threading.Event(), no_connection)


def test_a_cache_is_current_only_up_to_what_it_has_applied():
    cache = KeyCache()
    assert cache.current(1) is None, "nothing read yet"
    cache = synced_cache(10)
    assert cache.current(10) is not None
    assert cache.current(11) is None, "etcd moved on: a read is needed"
    assert cache.current(0) is None, "a keepalive that did not say its revision proves nothing"
    assert cache.apply([{"kv": kv("members/node2", revision=11, version=1)}], PREFIX) is True
    items, _, revision = cache.current(11)
    assert revision == 11 and {i.entry.key for i in items} == {"leader", "members/node1", "members/node2"}


def test_events_a_read_already_brought_are_skipped_and_a_delete_removes():
    cache = synced_cache(10)
    assert cache.apply([{"type": "DELETE", "kv": kv("leader", revision=9)}], PREFIX) is False
    assert cache.item("leader") is not None, "revision 9 is already in the read at 10"
    assert cache.apply([{"type": "DELETE", "kv": kv("leader", "", revision=12)}], PREFIX) is True
    assert cache.item("leader") is None


def test_a_refresh_does_not_wake_but_a_new_member_does():
    cache = synced_cache(10)
    assert cache.apply([{"kv": kv("members/node1", "{\"lsn\": 2}", revision=11)}], PREFIX) is False
    assert cache.apply([{"kv": kv("members/node3", revision=12, version=1)}], PREFIX) is True


@pytest.mark.parametrize("event", [
    {"kv": {"key": "%%% not base64", "mod_revision": "11"}},
    {"kv": {"key": b64("/service/other/leader"), "mod_revision": "11"}},
    {"kv": {"key": b64(b"/service/c/\xff\xfe"), "mod_revision": "11"}},
    {"kv": {"mod_revision": "11"}},
])
def test_an_event_that_does_not_parse_invalidates_the_cache(event):
    cache = synced_cache(10)
    assert cache.apply([event], PREFIX) is None
    assert cache.current(10) is None and cache.current(11) is None, "a read must follow"


@pytest.mark.parametrize("events", [
    [None], ["text"], [[]], [{"kv": None}], [{"kv": "x"}], [{"kv": {"mod_revision": "-5"}}],
    [{"kv": {"mod_revision": "9" * 400}}], [{"type": 7, "kv": {"mod_revision": None}}],
])
def test_junk_events_never_raise_nor_advance_the_cache(events):
    cache = synced_cache(10)
    assert cache.apply(events, PREFIX) in (None, False)
    assert cache.current(11) is None


def test_a_revision_etcd_cannot_have_is_not_believed():
    cache = synced_cache(10)
    assert cache.apply([{"kv": kv("members/node2", revision=2**64)}], PREFIX) is None
    assert cache.current(2**63) is None
    cache = synced_cache(10)
    stream(cache)._apply({"result": {"header": {"revision": str(2**70)}}})
    assert cache.current(11) is None


def test_a_value_that_is_not_utf8_is_kept_as_unknown_with_a_problem():
    cache = synced_cache(10)
    event = {"kv": {"key": b64(PREFIX + "leader"), "value": b64(b"\xffnode"), "mod_revision": "11",
                    "version": "3"}}
    assert cache.apply([event], PREFIX) is True
    items, problems, _ = cache.current(11)
    assert any("leader" in p and "UTF-8" in p for p in problems)
    assert cache.item("leader").entry.value is not None, "the lock stays held by someone"


@pytest.mark.parametrize("message", [
    {}, {"result": None}, {"result": "x"}, {"result": {"events": "x"}}, {"result": {"events": [None]}},
    {"result": {"header": {"revision": "x"}}}, {"result": {"header": "x"}}, {"error": {"code": 1}},
    {"result": {"canceled": True, "cancel_reason": "x" * 10000}},
    {"result": {"compact_revision": "8"}},
])
def test_the_stream_handles_any_message_without_raising(message):
    cache = synced_cache(10)
    watch = stream(cache)
    watch._apply(message)
    assert cache.current(11) is None


def test_progress_advances_only_a_synced_cache_and_compaction_invalidates():
    cache = synced_cache(10)
    watch = stream(cache)
    assert watch._apply({"result": {"header": {"revision": "15"}}}) is True
    assert cache.current(15) is not None, "etcd said every change up to 15 was sent"
    assert watch._apply({"result": {"created": True, "header": {"revision": "20"}}}) is True
    assert cache.current(20) is None, "a watch's creation says nothing about events before it"
    assert watch._apply({"result": {"compact_revision": "12"}}) is False
    assert cache.current(15) is None and watch.wake.is_set()
    assert watch._apply({"result": {"header": {"revision": "30"}}}) is True
    assert cache.current(30) is None, "an invalid cache is not revived by progress"


def test_a_read_newer_than_the_cache_replaces_it_and_an_older_one_does_not():
    cache = synced_cache(10)
    assert cache.reset([Item(Entry("members/node1", "{}", 6), "77", False)], [], 12) == 0
    assert cache.item("leader") is None
    assert cache.reset([Item(Entry("leader", "x", 5), "1", False)], [], 11) == 0
    assert cache.item("leader") is None, "a read older than the cache is dropped"
    missed = cache.reset([Item(Entry("members/node1", "{\"a\":1}", 13), "77", False)], [], 13)
    assert missed == 13, "the read shows a change the watch had not brought"


@pytest.mark.parametrize("value", [
    "{", "[]", "null", "\ufffd\ufffd", "{\"role\": {\"x\": 1}}", "[" * 100000, "{\"timeline\": 1e999}",
    "{\"tags\": \"not a dict\"}", "x" * (2 * 1024 * 1024),
])
def test_a_hostile_member_value_is_compared_without_failing(value):
    """A member key's value that does not parse, nests deeply, is huge or has odd types: the watch
    compares what others act on without raising; a change to something unreadable wakes (the
    loop reads it and treats it as unknown), and the same unreadable value again does not."""
    cache = synced_cache(10)
    assert cache.apply([{"kv": kv("members/node2", "{\"role\": \"replica\", \"state\": \"running\"}",
                                  revision=11)}], PREFIX) is True     # new to this member
    assert cache.apply([{"kv": kv("members/node2", value, revision=12)}], PREFIX) is True
    assert cache.apply([{"kv": kv("members/node2", value, revision=13)}], PREFIX) is False
