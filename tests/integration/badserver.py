"""A Stratum 1 that misbehaves on purpose: truncates object bodies or hangs without answering.

Real web servers do not do this on request, so this one is a small Python server; corrupted
objects and dead servers are covered with the real nginx instead.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class BadStratum:
    """Serves ``root/<fqrn>/...`` under ``/cvmfs/<fqrn>/``; ``mode`` is ``truncate`` or ``hang``."""

    def __init__(self, root: Path, mode: str) -> None:
        self.root = root
        self.mode = mode
        self.requests = 0
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.requests += 1
                if outer.mode == "hang":
                    outer._stop.wait(60)
                    return
                rel = self.path.removeprefix("/cvmfs/")
                path = outer.root / rel
                if ".." in rel.split("/") or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if "/data/" in self.path and len(body) > 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/cvmfs/@fqrn@"

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        time.sleep(0.01)
