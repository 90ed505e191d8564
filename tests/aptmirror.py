"""Debian's archive as the test hosts' LAN sees it: an HTTP server on the bridge that answers for
deb.debian.org, fetching each file from the real archive once and keeping it
(/var/cache/governor-test/apt-mirror), so an `apt update && apt full-upgrade` inside the hosts
runs apt's own path — signatures, hashes, maintainer scripts — against the same snapshot every
run, without a route from the hosts to the Internet.

The first run fetches what the hosts ask for; later runs answer from the cache. A release file
(InRelease) is kept as first fetched, so every later run sees the same package versions. Should
a run ask for a file the cache lacks after Debian's archive has moved on (a point release removes
the old versions), apt fails naming it: remove the cache directory and it is fetched afresh."""
from __future__ import annotations

import os
import shutil
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from tests import system

UPSTREAM = "http://deb.debian.org"
CACHE = os.path.join(system.CACHE, "apt-mirror")
NAME = "deb.debian.org"


def cached_path(url_path: str) -> Optional[str]:
    """Where the file at `url_path` is kept; None for a path that leaves the cache."""
    clean = url_path.split("?", 1)[0]
    parts = [p for p in clean.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        return None
    return os.path.join(CACHE, *parts)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:   # apt asks for hundreds of files
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = cached_path(self.path)
        if path is None or not self._fetched(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.end_headers()
        if body:
            with open(path, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile)

    def _fetched(self, path: str) -> bool:
        if os.path.isfile(path):
            return True
        try:
            with urllib.request.urlopen(UPSTREAM + self.path.split("?", 1)[0], timeout=60) as resp:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                partial = f"{path}.part{threading.get_ident()}"
                with open(partial, "wb") as fh:
                    shutil.copyfileobj(resp, fh)
                os.replace(partial, path)
            return True
        except (urllib.error.URLError, OSError):
            return False


class AptMirror:
    """Serves on `address`:80 until stopped; the hosts map deb.debian.org to `address`."""

    def __init__(self, address: str):
        self.address = address
        self.server = ThreadingHTTPServer((address, 80), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
