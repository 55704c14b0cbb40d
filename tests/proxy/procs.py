"""Real processes for proxy tests and the benchmark: cvmfs-proxy, Squid, and a throttled nginx.

Each listens on 127.0.0.1 on a free port, keeps its files under a caller-given directory and is
stopped by the caller (the fixtures in conftest.py do it at teardown).

Squid as root: Debian's squid switches to ``cache_effective_user`` (``proxy``) after binding,
so its directories must belong to that user and be reachable by it; pytest's tmp dirs live
under a 0700 directory, so Squid gets a fresh 0755 directory under /tmp (removed at stop).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.nginx import NginxServer, find_nginx, free_port, render_config

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
SQUID = "/usr/sbin/squid"


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# ---- cvmfs-proxy --------------------------------------------------------------------------------


@dataclass
class ProxyProcess:
    """A running ``cvmfs-proxy``; ``url`` is what goes into CVMFS_HTTP_PROXY."""

    process: subprocess.Popen = field(repr=False)
    port: int
    workdir: Path
    cache_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "proxy.log"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access_lines(self, wait: float = 1.5) -> list[str]:
        """Access log lines; the proxy flushes twice a second, so wait for a flush first."""
        time.sleep(wait)
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stats(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.url}/cvmfs-proxy/stats", timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful) and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def start_proxy(workdir: Path, *args: str, cache_dir: Path | None = None) -> ProxyProcess:
    """Start ``python -m proxy`` on a free port (``--listen 127.0.0.1:0``, port read from its log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or workdir / "cache"
    log_path = workdir / "proxy.log"
    log_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--cache-dir",
        str(cache_dir),
        "--access-log",
        str(workdir / "access.log"),
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env, cwd=workdir
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
        if m:
            return ProxyProcess(process, int(m.group(1)), workdir, cache_dir)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"cvmfs-proxy did not start: {log_path.read_text(errors='replace')}")


# ---- Squid --------------------------------------------------------------------------------------


def squid_config(prefix: Path, port: int, parent: tuple[str, int] | None, user: str | None) -> str:
    """A Squid configured as a CVMFS site proxy (as frontier-squid / the CVMFS docs advise):
    large objects cached, collapsed forwarding on, small hot objects in memory, no ICP/HTCP,
    no negative caching. With ``parent``, every request goes through it (never direct)."""
    lines = [
        f"http_port 127.0.0.1:{port}",
        f"pid_filename {prefix}/squid.pid",
        f"cache_log {prefix}/cache.log",
        f"access_log stdio:{prefix}/access.log squid",
        "cache_store_log none",
        "netdb_filename none",
        f"coredump_dir {prefix}",
        f"cache_dir ufs {prefix}/cache 4000 4 16",
        "cache_mem 256 MB",
        "maximum_object_size 1 GB",
        "maximum_object_size_in_memory 128 KB",
        "collapsed_forwarding on",
        "negative_ttl 0 seconds",
        "icp_port 0",
        "htcp_port 0",
        "pinger_enable off",
        "shutdown_lifetime 0 seconds",
        "client_db off",
        "buffered_logs on",
        "acl localhost src 127.0.0.1/32",
        "http_access allow localhost",
        "http_access deny all",
    ]
    if user:
        lines.append(f"cache_effective_user {user}")
    if parent:
        host, pport = parent
        lines += [
            f"cache_peer {host} parent {pport} 0 no-query no-digest no-netdb-exchange name=cvmfsproxy",
            "never_direct allow all",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class SquidProcess:
    process: subprocess.Popen = field(repr=False)
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_lines(self) -> list[str]:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def wait_for_access_lines(self, count: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_lines()
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self.prefix, ignore_errors=True)


def start_squid(parent: tuple[str, int] | None = None, attempts: int = 3) -> SquidProcess:
    """Start Squid in the foreground (``-N``) with its own config and cache under /tmp."""
    if not os.access(SQUID, os.X_OK):
        raise RuntimeError("squid not found: apt-get install squid (or run bash .ci/run)")
    user = None
    if os.geteuid() == 0:
        user = "proxy"
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            user, pw = "nobody", pwd.getpwnam("nobody")
    last = ""
    for _ in range(attempts):
        prefix = Path(tempfile.mkdtemp(prefix="cvmfs-proxy-squid-"))
        prefix.chmod(0o755)
        (prefix / "cache").mkdir()
        port = free_port()
        conf = prefix / "squid.conf"
        conf.write_text(squid_config(prefix, port, parent, user))
        if user:
            for p in (prefix, prefix / "cache"):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        subprocess.run([SQUID, "-N", "-z", "-f", str(conf)], check=True, capture_output=True, timeout=60)
        with open(prefix / "stderr.log", "wb") as err:
            process = subprocess.Popen(
                [SQUID, "-N", "-f", str(conf)],
                stdout=err,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        squid = SquidProcess(process, port, prefix)
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if listening(port):
                return squid
            time.sleep(0.05)
        last = (prefix / "cache.log").read_text(errors="replace") if (prefix / "cache.log").exists() else ""
        squid.stop()
        if "Address already in use" not in last:
            break
    raise RuntimeError(f"squid did not start:\n{last[-3000:]}")


# ---- nginx with a bandwidth limit ---------------------------------------------------------------


def start_slow_nginx(root: Path, prefix: Path, rate: str = "50m") -> NginxServer:
    """nginx as in tests/integration/nginx.py, but each response limited to ``rate`` bytes/s,
    so that many clients certainly arrive while one download is still running."""
    nginx = find_nginx()
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "tmp").mkdir(exist_ok=True)
    for _ in range(5):
        port = free_port()
        conf = prefix / "nginx.conf"
        text = render_config(Path(root).resolve(), prefix, port)
        conf.write_text(text.replace("sendfile on;", f"sendfile on;\n    limit_rate {rate};", 1))
        process = subprocess.Popen(
            [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        server = NginxServer(root=Path(root).resolve(), prefix=prefix, port=port, process=process)
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if (prefix / "nginx.pid").exists() and listening(port):
                return server
            time.sleep(0.02)
        server.stop()
    raise RuntimeError("throttled nginx did not start")
