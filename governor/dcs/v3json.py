"""The etcd v3 JSON gateway's encodings: keys and values in base64, 64-bit integers as strings,
a prefix as a key range. Lenient where etcd's answer may hold what governor did not write."""
from __future__ import annotations

import base64
from typing import Any, Optional, Tuple


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _unb64(text: Optional[str]) -> str:
    return base64.b64decode(text or "").decode("utf-8")


def _unb64_lenient(text: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(text, None), or (text with U+FFFD for each undecodable byte, reason) for bytes that are not
    UTF-8, or (None, reason) when it is not even base64."""
    try:
        raw = base64.b64decode(text or "", validate=True)
    except (ValueError, TypeError):
        return None, "not base64"
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), "not UTF-8"


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    """etcd's 64-bit integers arrive as strings; anything unreadable is 0."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _prefix_end(prefix: str) -> str:
    """range_end covering every key that starts with `prefix` (last byte + 1)."""
    raw = bytearray(prefix.encode("utf-8"))
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode("ascii")


# Transaction operations and comparisons, as the gateway's /kv/txn takes them.

def put_op(key: str, value: str, lease: Optional[str] = None) -> dict:
    request = {"key": _b64(key), "value": _b64(value)}
    if lease:
        request["lease"] = lease
    return {"request_put": request}


def delete_op(key: str) -> dict:
    return {"request_delete_range": {"key": _b64(key)}}


def created_cmp(key: str) -> dict:
    """The key does not exist."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def value_cmp(key: str, value: str) -> dict:
    return {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}


def revision_cmp(key: str, revision: int) -> dict:
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}
