"""Run a real nginx as a throw-away Stratum 1 for integration tests.

Tests talk to the same web server sites use, with the same cache headers, rather than to a Python
stand-in whose HTTP quirks differ. Each server gets its own prefix (config, pid, logs, temp dirs)
under a caller-given directory, listens on 127.0.0.1 on a free port and serves ``root`` so that
``root/<fqrn>/`` appears as ``/cvmfs/<fqrn>/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NGINX_CANDIDATES = ("/usr/sbin/nginx",)
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# Like a Stratum 1: signed entry files expire quickly, content-addressed data is immutable.
MANIFEST_MAX_AGE = 61
DATA_MAX_AGE = 3 * 24 * 3600


class NginxError(RuntimeError):
    """nginx is missing or did not start; the message says why (never a silent skip)."""


def find_nginx() -> str:
    """Path of the nginx binary: ``$CVMFS_TEST_NGINX``, Debian's /usr/sbin/nginx, then PATH."""
    override = os.environ.get("CVMFS_TEST_NGINX")
    candidates = [override] if override else [*NGINX_CANDIDATES, shutil.which("nginx")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise NginxError(
        "nginx not found (looked for /usr/sbin/nginx and nginx on PATH): "
        "install it with `apt-get install -y nginx-light`, or run `bash .ci/run` which does"
    )


def free_port() -> int:
    """A port that was free a moment ago (start() retries if another process takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quote(value: str | Path) -> str:
    """Quote a path for nginx.conf so spaces, ';' and quotes in tmp paths cannot break the config."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(root: Path, prefix: Path, port: int, workers: int = 1) -> str:
    """nginx.conf for one test server; every writable path lives under ``prefix``."""
    user = "user root root;\n" if os.geteuid() == 0 else ""  # as root, workers would become nobody
    tmp = prefix / "tmp"
    return f"""{user}worker_processes {workers};
daemon off;
pid {_quote(prefix / "nginx.pid")};
error_log {_quote(prefix / "error.log")} warn;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server_tokens off;
    log_format cvmfs '$remote_addr "$request" $status $body_bytes_sent "$http_user_agent"';
    access_log {_quote(prefix / "access.log")} cvmfs;
    client_body_temp_path {_quote(tmp / "body")};
    proxy_temp_path {_quote(tmp / "proxy")};
    fastcgi_temp_path {_quote(tmp / "fastcgi")};
    uwsgi_temp_path {_quote(tmp / "uwsgi")};
    scgi_temp_path {_quote(tmp / "scgi")};
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location /cvmfs/ {{
            alias {_quote(str(root).rstrip("/") + "/")};
            expires {DATA_MAX_AGE}s;
            location ~ /\\.cvmfs[^/]*$ {{
                expires {MANIFEST_MAX_AGE}s;
            }}
        }}
    }}
}}
"""


@dataclass
class NginxServer:
    """A running nginx: ``url`` is ``http://127.0.0.1:PORT``; repositories live under ``/cvmfs/``."""

    root: Path
    prefix: Path
    port: int
    process: subprocess.Popen = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_url(self) -> str:
        """A ``CVMFS_SERVER_URL`` value for this server."""
        return f"{self.url}/cvmfs/@fqrn@"

    def repo_url(self, fqrn: str) -> str:
        return f"{self.url}/cvmfs/{fqrn}"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def access_lines(self) -> list[str]:
        """One line per finished request: ``addr "METHOD URI PROTO" status bytes "agent"``."""
        try:
            return self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[str]:
        """Access log lines once there are at least ``count``.

        nginx logs a request after the response went out, so a client can see the response a moment
        before the line exists; waiting avoids a flaky count.
        """
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_lines()
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.01)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop nginx and its workers; safe to call twice."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # fast shutdown: master stops workers, then exits
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Hung: kill the whole session (master and workers) so no worker outlives the test.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_nginx(root: Path, prefix: Path, *, workers: int = 1, attempts: int = 5) -> NginxServer:
    """Start nginx serving ``root`` under ``/cvmfs/``, with its files in ``prefix``; wait until ready."""
    nginx = find_nginx()
    root = Path(root).resolve()
    if not root.is_dir():
        raise NginxError(f"cannot serve {root}: not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise NginxError(f"cannot serve {root}: not readable by uid {os.geteuid()}")
    prefix = Path(prefix)
    last_error = ""
    for attempt in range(attempts):
        run_dir = prefix / f"nginx-{attempt}" if attempt else prefix
        (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = run_dir / "nginx.conf"
        conf.write_text(render_config(root, run_dir, port, workers))
        error_log = run_dir / "error.log"
        with open(run_dir / "stderr.log", "wb") as stderr:
            process = subprocess.Popen(
                [nginx, "-p", str(run_dir), "-c", str(conf), "-e", str(error_log)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        server = NginxServer(root=root, prefix=run_dir, port=port, process=process)
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if (run_dir / "nginx.pid").exists() and _listening(port):
                return server
            time.sleep(0.02)
        server.stop()
        last_error = _tail(error_log) + _tail(run_dir / "stderr.log")
        if "Address already in use" not in last_error:
            break
    raise NginxError(f"nginx did not start (config {conf}):\n{last_error}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    except FileNotFoundError:
        return ""
