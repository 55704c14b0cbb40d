"""Run a real Squid (Debian's /usr/sbin/squid) as a throw-away site proxy for integration tests.

Configured the way CVMFS sites run frontier-squid in front of Stratum 1s: memory cache large
enough for test objects, collapsed forwarding on, only localhost clients. No ``cache_dir`` is
used, so no ``squid -z`` run is needed and the proxy starts in a fraction of a second. When the
tests run as root, Squid drops to the ``proxy`` user, so its work directory is handed to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.integration.nginx import _listening, free_port

START_TIMEOUT = 15.0


class SquidError(RuntimeError):
    """Squid is missing or did not start; the message says why."""


def render_config(prefix: Path, port: int, parent: str | None = None) -> str:
    lines = [
        f"http_port 127.0.0.1:{port}",
        f"pid_filename {prefix}/squid.pid",
        f"access_log stdio:{prefix}/access.log squid",
        f"cache_log {prefix}/cache.log",
        f"coredump_dir {prefix}",
        "cache_mem 256 MB",
        "maximum_object_size 1 GB",
        "maximum_object_size_in_memory 128 MB",
        "collapsed_forwarding on",
        "acl localnet src 127.0.0.0/8",
        "http_access allow localnet",
        "http_access deny all",
        "shutdown_lifetime 0 seconds",
    ]
    if parent:
        host, _, pport = parent.removeprefix("http://").rstrip("/").partition(":")
        lines += [
            f"cache_peer {host} parent {pport or 3128} 0 no-query no-digest default",
            "never_direct allow all",
        ]
    if os.geteuid() == 0:
        lines.append("cache_effective_user proxy")
    return "\n".join(line for line in lines if line) + "\n"


@dataclass
class SquidServer:
    port: int
    prefix: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def access_lines(self) -> list[str]:
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_squid(prefix: Path, *, parent: str | None = None) -> SquidServer:
    binary = shutil.which("squid") or "/usr/sbin/squid"
    if not os.access(binary, os.X_OK):
        raise SquidError("squid not found: install it with `apt-get install -y squid`, or run `bash .ci/run`")
    prefix.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("proxy")
        os.chown(prefix, pw.pw_uid, pw.pw_gid)
        for parent_dir in prefix.parents:  # the proxy user must be able to reach its directory
            if str(parent_dir) in ("/", "/tmp"):
                break
            with contextlib.suppress(OSError):
                os.chmod(parent_dir, os.stat(parent_dir).st_mode | 0o011)
    port = free_port()
    conf = prefix / "squid.conf"
    conf.write_text(render_config(prefix, port, parent))
    proc = subprocess.Popen(
        [binary, "-N", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            log = (prefix / "cache.log").read_text() if (prefix / "cache.log").exists() else ""
            raise SquidError(f"squid exited with {proc.returncode}: {err}\n{log[-2000:]}")
        if _listening(port):
            return SquidServer(port, prefix, proc)
        time.sleep(0.05)
    proc.kill()
    raise SquidError(f"squid did not listen on port {port} within {START_TIMEOUT} s")
