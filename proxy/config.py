"""Settings of a ``cvmfs-proxy`` and the access policy, as data; parsing of sizes and addresses.

A config file is TOML (``tomllib`` is in the standard library, and TOML has real lists for the
repeatable options). Keys are the long option names, with ``-`` or ``_``::

    listen = "0.0.0.0:3128"
    cache-dir = "/scratch/cvmfs-proxy"
    cache-size = "50G"
    memory-cache = "1G"
    allow-client = ["10.0.0.0/8", "192.168.0.0/16"]
    allow-upstream = ["*.cern.ch", "*.opensciencegrid.org:8000"]
    parent = "http://site-squid.example.org:3128"
    access-log = "/var/tmp/cvmfs-proxy/access.log"

Options given on the command line win over the file.

Policy: not an open proxy. By default only loopback clients are served, any upstream host is
allowed but only for paths under ``/cvmfs/`` (where every Stratum 0/1 serves repositories and
the Geo API), so the proxy is useless as a general web proxy even when listening on a public
address with a wide client list.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .http import RemoteProtocolError, Target, split_authority

DEFAULT_LISTEN = "127.0.0.1:3128"  # Squid's port: CVMFS_HTTP_PROXY examples use it
DEFAULT_CACHE_SIZE = "10G"
DEFAULT_MEMORY_CACHE = "256M"
DEFAULT_ALLOW_CLIENTS = ("127.0.0.0/8", "::1/128")
DEFAULT_ALLOW_UPSTREAMS = ("*",)
DEFAULT_ALLOW_PATHS = ("/cvmfs/",)
# Timeouts (seconds).
HEADER_TIMEOUT = 10.0  # a request head must arrive within this (slowloris); nginx uses 60 s
IDLE_TIMEOUT = 120.0  # idle keep-alive connection; Squid's client_idle_pconn_timeout (2 min)
UPSTREAM_CONNECT_TIMEOUT = 10.0  # CVMFS_TIMEOUT of a client talking to a proxy is 5 s
UPSTREAM_READ_TIMEOUT = 60.0  # silence from an upstream mid-response; Squid's read_timeout is 15 min
CLIENT_WRITE_TIMEOUT = 120.0  # a client that stops reading for this long is dropped
SHUTDOWN_GRACE = 30.0  # SIGTERM: how long running transfers may finish
MAX_CLIENTS = 8192  # concurrent client connections; more are closed at once

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


def parse_size(text: str | int, what: str = "size") -> int:
    """``10G``, ``512M``, ``1.5T``, ``4096`` (bytes); binary units, as Squid's config uses."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"{what}: cannot read {text!r} as a size (e.g. 10G, 512M, 4096)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``PORT`` (then 127.0.0.1); port 0 picks a free one."""
    text = text.strip()
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen: {text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        split_authority(f"[{host}]" if ":" in host else host, default_port=1)
    except RemoteProtocolError as exc:
        raise ConfigError(f"listen: {exc.reason}") from None
    return host, int(port)


def parse_parent(text: str) -> tuple[str, int]:
    """``http://host:port`` (or ``host:port``) of a parent proxy such as a site Squid."""
    rest = text.strip()
    if "://" in rest:
        scheme, _, rest = rest.partition("://")
        if scheme.lower() != "http":
            raise ConfigError(f"parent: only http:// proxies are supported, not {text!r}")
    rest = rest.rstrip("/")
    try:
        return split_authority(rest, default_port=3128)
    except RemoteProtocolError as exc:
        raise ConfigError(f"parent: {exc.reason}") from None


def parse_networks(values: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"allow-client: {exc}") from None
    return tuple(out)


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "cvmfs-proxy"


@dataclass(frozen=True)
class Policy:
    """Who may use the proxy and for what. Answers are reasons (str) or None for allowed."""

    clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    upstreams: tuple[str, ...]  # fnmatch patterns on "host" or, when they contain ":", "host:port"
    paths: tuple[str, ...]  # allowed URL path prefixes

    def client_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.clients)

    def upstream_denied(self, target: Target) -> str | None:
        hostport = f"{target.host}:{target.port}"
        if not any(
            fnmatch.fnmatchcase(
                hostport if ":" in p.replace("[", "").split("]")[-1] else target.host, p.lower()
            )
            for p in self.upstreams
        ):
            return f"upstream {hostport} is not in the allowed upstream patterns"
        if not any(target.path.startswith(p) for p in self.paths):
            return f"path {target.path[:100]} is outside the allowed prefixes {list(self.paths)}"
        return None


@dataclass(frozen=True)
class ProxyConfig:
    """Everything a running proxy needs; built by the CLI, or directly by tests."""

    cache_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 3128
    cache_size: int = 10 << 30
    memory_cache: int = 256 << 20
    policy: Policy = field(
        default_factory=lambda: Policy(
            parse_networks(DEFAULT_ALLOW_CLIENTS), DEFAULT_ALLOW_UPSTREAMS, DEFAULT_ALLOW_PATHS
        )
    )
    parent: tuple[str, int] | None = None
    access_log: Path | None = None
    header_timeout: float = HEADER_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    upstream_connect_timeout: float = UPSTREAM_CONNECT_TIMEOUT
    upstream_read_timeout: float = UPSTREAM_READ_TIMEOUT
    client_write_timeout: float = CLIENT_WRITE_TIMEOUT
    shutdown_grace: float = SHUTDOWN_GRACE
    max_clients: int = MAX_CLIENTS
    name: str = "cvmfs-proxy"  # in Via, Proxy-Status and X-Cache; must be unique in a hierarchy


# Keys a config file may hold, with how to read each (policy as data, shared with the CLI).
FILE_KEYS: dict[str, type] = {
    "listen": str,
    "cache_dir": str,
    "cache_size": str,
    "memory_cache": str,
    "allow_client": list,
    "allow_upstream": list,
    "allow_path": list,
    "parent": str,
    "access_log": str,
    "header_timeout": float,
    "idle_timeout": float,
    "upstream_timeout": float,
    "name": str,
}


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file into option values (key spelling normalized to ``_``)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        kind = FILE_KEYS.get(name)
        if kind is None:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(FILE_KEYS))})")
        if kind is list:
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: {key} must be a string or a list of strings")
        elif kind is float:
            if not isinstance(value, int | float):
                raise ConfigError(f"{path}: {key} must be a number of seconds")
            value = float(value)
        elif kind is str and not isinstance(value, str | int):
            raise ConfigError(f"{path}: {key} must be a string")
        out[name] = str(value) if kind is str else value
    return out


def build_config(
    *,
    listen: str = DEFAULT_LISTEN,
    cache_dir: str | Path | None = None,
    cache_size: str | int = DEFAULT_CACHE_SIZE,
    memory_cache: str | int = DEFAULT_MEMORY_CACHE,
    allow_client: Iterable[str] = (),
    allow_upstream: Iterable[str] = (),
    allow_path: Iterable[str] = (),
    parent: str | None = None,
    access_log: str | Path | None = None,
    header_timeout: float = HEADER_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    upstream_timeout: float = UPSTREAM_READ_TIMEOUT,
    name: str = "cvmfs-proxy",
) -> ProxyConfig:
    """Validate option values (from the command line and/or a file) into a :class:`ProxyConfig`."""
    host, port = parse_listen(listen)
    size = parse_size(cache_size, "cache-size")
    memory = parse_size(memory_cache, "memory-cache")
    if size <= 0:
        raise ConfigError("cache-size must be positive")
    paths = tuple(allow_path) or DEFAULT_ALLOW_PATHS
    if not all(p.startswith("/") for p in paths):
        raise ConfigError("allow-path: prefixes must start with /")
    for t in (header_timeout, idle_timeout, upstream_timeout):
        if t <= 0:
            raise ConfigError("timeouts must be positive")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError("name: use letters, digits, '.', '_' and '-'")
    policy = Policy(
        parse_networks(tuple(allow_client) or DEFAULT_ALLOW_CLIENTS),
        tuple(p.lower() for p in allow_upstream) or DEFAULT_ALLOW_UPSTREAMS,
        paths,
    )
    return ProxyConfig(
        cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
        listen_host=host,
        listen_port=port,
        cache_size=size,
        memory_cache=memory,
        policy=policy,
        parent=parse_parent(parent) if parent else None,
        access_log=Path(access_log) if access_log else None,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        upstream_read_timeout=upstream_timeout,
        name=name,
    )
