"""GET /upgrade/seed and GET /upgrade/seed/files: an upgraded leader's seed (upgrade_seed.py) for
its replicas, behind the API's control credentials (the catalogs hold password hashes)."""
from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler
from typing import Tuple

from governor import upgrade_seed

log = logging.getLogger(__name__)


def answer(handler: BaseHTTPRequestHandler, data_dir: str, path: str, head_only: bool) -> Tuple[int, dict]:
    """Send the manifest or the copied files and return (200, {}); or return the error to send."""
    seed = upgrade_seed.seed_dir(data_dir)
    raw = upgrade_seed.read_manifest(seed)
    if raw is None:
        return 404, {"error": "no upgrade seed on this member (it is not an upgraded leader, or the seed was removed)"}
    if path == "/upgrade/seed":
        _head(handler, "application/json", 0 if head_only else len(raw))
        if not head_only:
            handler.wfile.write(raw)
        return 200, {}
    if path != "/upgrade/seed/files":
        return 404, {"error": f"no such endpoint: {path}"}
    try:
        manifest = upgrade_seed.parse_manifest(raw)
    except upgrade_seed.SeedError as exc:
        return 500, {"error": f"this member's seed is broken: {exc}"}
    _head(handler, "application/octet-stream", 0 if head_only else upgrade_seed.copies_size(manifest))
    if not head_only:
        try:
            upgrade_seed.send_copies(seed, manifest, handler.wfile.write)
        except (OSError, upgrade_seed.SeedError) as exc:
            log.error("api: sending the upgrade seed failed: %s", exc)
            handler.close_connection = True
    return 200, {}


def _head(handler: BaseHTTPRequestHandler, content_type: str, length: int) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(length))
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
