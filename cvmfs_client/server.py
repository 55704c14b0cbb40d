"""A static Stratum-0/1 web server with the cache headers a real Stratum 1 sends (spec 1.2).

Why not ``python -m http.server``: clients and proxies behave differently depending on the
headers. The Apache configuration written by ``cvmfs_server`` (``cvmfs_server_apache.sh``) gives

- names starting with ``.cvmfs``: ``Content-Type: application/x-cvmfs``, expiry 61 s (60 s and
  below are not cached at all by Squid's defaults);
- ``*.json``: ``application/json``, 61 s;
- names without a dot (all content-addressed objects): ``application/octet-stream``, 3 days;
- no ``Last-Modified``, no ``ETag`` (Squid bugs), keep-alive on, no directory listings.

The tree is either one repository (``root/.cvmfspublished``) or a directory of repositories
(``root/<fqrn>/.cvmfspublished``); both are reachable under ``/cvmfs/<fqrn>/`` like a real
server, and the plain relative path works too.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from .errors import ConfigError

log = logging.getLogger(__name__)

# Expiry times of the cvmfs_server Apache configuration, in seconds.
SHORT_MAX_AGE = 61
LONG_MAX_AGE = 3 * 24 * 3600  # "access plus 3 days" = 259200
# An idle keep-alive connection is closed after this many seconds (Apache KeepAliveTimeout-like).
IDLE_TIMEOUT = 30.0
_COPY_PIECE = 1 << 16
# How often serve_forever looks for a shutdown request: bounds how long stop() takes.
_POLL_INTERVAL = 0.05
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def cache_headers(name: str) -> tuple[str, int]:
    """``(content type, max-age)`` for a file ``name`` (basename), as the real Apache config."""
    if name.startswith(".cvmfs"):
        return "application/x-cvmfs", SHORT_MAX_AGE
    if name.endswith(".json"):
        return "application/json", SHORT_MAX_AGE
    if "." not in name:
        return "application/octet-stream", LONG_MAX_AGE
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream", LONG_MAX_AGE


def resolve_request_path(root: Path, url_path: str) -> Path | None:
    """Map a URL path to a file under ``root``; ``None`` if it must not be served.

    Refuses ``..``/``.`` segments, NUL bytes, backslashes and anything whose real path (after
    symlinks, e.g. ``.cvmfsalt-*`` links into ``data/``) leaves ``root``.
    """
    raw = unquote(urlsplit(url_path).path)
    if "\x00" in raw or "\\" in raw:
        return None
    parts = [p for p in raw.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return None
    root = root.resolve()
    candidates: list[list[str]] = []
    if len(parts) >= 2 and parts[0] == "cvmfs":
        if (root / parts[1]).is_dir():
            candidates.append(parts[1:])  # directory of repositories
        if (root / ".cvmfspublished").exists():
            candidates.append(parts[2:])  # a single repository, any name
    candidates.append(parts)
    for rel in candidates:
        if not rel:
            continue
        target = root.joinpath(*rel)
        try:
            real = target.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real != root and root not in real.parents:
            return None
        if real.is_file():
            return real
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Idle keep-alive connections must not make stop() wait for their threads.
    block_on_close = False

    def __init__(self, address: tuple[str, int], root: Path) -> None:
        self.stratum_root = root
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Apache with KeepAlive On
    server_version = "cvmfs-client-stratum"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = resolve_request_path(self.server.stratum_root, self.path)
        if path is None:
            self._plain(404, "Not Found", body)
            return
        try:
            f = path.open("rb")
        except OSError:
            self._plain(404, "Not Found", body)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            ctype, max_age = cache_headers(path.name)
            start, end = 0, size
            status = 200
            span = self._range(size)
            if span == "invalid":
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if span is not None:
                start, end = span
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Cache-Control", f"max-age={max_age}")
            self.send_header("Expires", self.date_time_string(time.time() + max_age))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if not body:
                return
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                piece = f.read(min(_COPY_PIECE, remaining))
                if not piece:  # file shrank under us: drop the connection, never send short data
                    self.close_connection = True
                    return
                self.wfile.write(piece)
                remaining -= len(piece)

    def _range(self, size: int) -> tuple[int, int] | str | None:
        """One ``bytes=a-b`` range (used by clients only for external data), else whole file."""
        header = self.headers.get("Range")
        if not header:
            return None
        m = _RANGE.match(header.strip())
        if not m or (not m.group(1) and not m.group(2)):
            return None  # unsupported forms (multiple ranges): send the whole file
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, size) if m.group(2) else size
        else:
            start, end = max(size - int(m.group(2)), 0), size
        if start >= size or start >= end:
            return "invalid"
        return start, end

    def _plain(self, code: int, text: str, body: bool) -> None:
        data = f"{code} {text}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests: a short plain answer with Content-Length, then close."""
        self.close_connection = True
        self._plain(code, message or "Error", body=self.command != "HEAD")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class name
        log.debug("%s %s", self.address_string(), format % args)


class StratumServer:
    """Serve a Stratum-0/1 tree over HTTP/1.1 on ``host:port`` (port 0 = pick a free one).

    Use as a context manager or call :meth:`start` / :meth:`stop`. ``url`` is the server base;
    :meth:`repository_url` gives the ``CVMFS_SERVER_URL`` of one repository.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"{root}: not a directory to serve")
        self.root = root.resolve()
        self._httpd = _Server((host, port), self.root)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def repository_url(self, fqrn: str) -> str:
        return f"{self.url}/cvmfs/{fqrn}"

    def start(self) -> StratumServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"stratum-server:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI's ``serve``); then call stop()."""
        self._httpd.serve_forever(poll_interval=_POLL_INTERVAL)

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> StratumServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
