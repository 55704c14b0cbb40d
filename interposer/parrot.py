"""Parrot's CVMFS repository list (``parrot_run -r`` / ``PARROT_CVMFS_REPO``) as CVMFS_* settings.

Syntax, as cctools' ``parrot/src/pfs_service_cvmfs.cc`` reads it: whitespace-separated entries
``NAME[/SUBPATH][:OPTIONS]``; a leading ``*`` in NAME matches one or more characters and every
``*`` in OPTIONS is replaced by what it matched; a backslash makes the next character literal
(spaces, ``*``); OPTIONS are libcvmfs ``key=value`` pairs separated by commas. Entries defined
later are tried first. The name ``<default-repositories>`` stands for Parrot's built-in list
(cern.ch and opensciencegrid.org); options after it apply to each of those entries.

Translation (``LIBCVMFS_OPTIONS``): ``url`` -> CVMFS_SERVER_URL, ``proxies`` -> CVMFS_HTTP_PROXY,
``pubkey`` -> CVMFS_PUBLIC_KEY, and so on. Without ``proxies``, Parrot uses ``$HTTP_PROXY``; so do
we. ``<default-repositories>`` is mapped to this client's own configuration for those domains
(the shipped ``domain.d`` files know current servers and keys; Parrot's built-in URLs are
outdated), plus any options given after it. A repository no entry matches cannot be mounted,
as under Parrot. Options that would weaken verification (``ignore_signature``) are refused;
options with no meaning here are ignored with a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cvmfs_client import lazylog
from cvmfs_client.errors import ConfigError

log = lazylog.get(__name__)

DEFAULT_MARKER = "<default-repositories>"
# Parrot's built-in list, by name pattern only: servers and keys come from our configuration.
DEFAULT_PATTERNS = ("*", "*.cern.ch", "*.opensciencegrid.org")

LIBCVMFS_OPTIONS: Mapping[str, str] = {
    "url": "CVMFS_SERVER_URL",
    "proxies": "CVMFS_HTTP_PROXY",
    "pubkey": "CVMFS_PUBLIC_KEY",
    "timeout": "CVMFS_TIMEOUT",
    "timeout_direct": "CVMFS_TIMEOUT_DIRECT",
    "cachedir": "CVMFS_CACHE_DIR",
    "alien_cachedir": "CVMFS_ALIEN_CACHE",
    "quota_limit": "CVMFS_QUOTA_LIMIT",
    "max_ttl": "CVMFS_MAX_TTL",
    "blacklist": "CVMFS_BLACKLIST",
}
IGNORED = frozenset(
    {"force_signing", "try_local_filesystem", "repo_name", "mountpoint", "deep_mount", "syslog_level",
     "nofiles", "rebuild_cachedb", "tracefile", "quota_threshold", "diskless", "log_prefix",
     "change_to_cache_directory", "max_open_files", "log_file", "syslog_facility"}
)  # fmt: skip
REFUSED = frozenset({"ignore_signature"})
_SUBST = "\0"  # stands for an unescaped '*' in options until a match fills it in


@dataclass(frozen=True)
class Entry:
    """One repository pattern and its options (``*`` positions marked with ``_SUBST``)."""

    name: str  # without the leading '*'
    wildcard: bool
    subpath: str
    options: str
    default: bool = False  # from <default-repositories>: our configuration supplies servers/keys

    def matches(self, fqrn: str) -> bool:
        if self.wildcard:
            return len(fqrn) > len(self.name) and fqrn.endswith(self.name)
        return fqrn == self.name


def _take(text: str, pos: int, stop: str, keep_star: bool = False) -> tuple[str, int]:
    """Read up to a character in ``stop`` or whitespace, resolving backslash escapes."""
    out = []
    while pos < len(text):
        ch = text[pos]
        if ch in stop or ch.isspace():
            break
        if keep_star and ch == "*":
            out.append(_SUBST)
            pos += 1
            continue
        if ch == "\\":
            pos += 1
            if pos >= len(text):
                break
            ch = text[pos]
        out.append(ch)
        pos += 1
    return "".join(out), pos


def parse(spec: str) -> list[Entry]:
    """Entries in matching order (the last defined first), ``<default-repositories>`` expanded."""
    entries: list[Entry] = []
    pos = 0
    text = spec
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        wildcard = text[pos] == "*"
        if wildcard:
            pos += 1
        name, pos = _take(text, pos, "/:")
        subpath = ""
        if pos < len(text) and text[pos] == "/":
            subpath, pos = _take(text, pos, ":")
        options = ""
        if pos < len(text) and text[pos] == ":":
            options, pos = _take(text, pos + 1, "", keep_star=True)
        if not wildcard and name == DEFAULT_MARKER:
            for pattern in DEFAULT_PATTERNS:
                entries.append(Entry(pattern.lstrip("*"), pattern.startswith("*"), "", options, default=True))
            continue
        if not name and not wildcard:
            raise ConfigError(f"Parrot repository list: empty repository name near {text[:pos]!r}")
        entries.append(Entry(name, wildcard, subpath, options))
    entries.reverse()
    return entries


class ParrotConfig:
    """Answers "which CVMFS_* settings does repository X get" for a Parrot repository list."""

    def __init__(self, spec: str, environ: Mapping[str, str]) -> None:
        self.entries = parse(spec)
        self._environ = environ

    def names(self) -> list[str]:
        """Repositories named without wildcards (what ``ls /cvmfs`` shows)."""
        out: list[str] = []
        for e in reversed(self.entries):
            if not e.wildcard and not e.default and e.name not in out:
                out.append(e.name)
        return out

    def params_for(self, fqrn: str) -> dict[str, str] | None:
        """CVMFS_* settings for ``fqrn``, or ``None`` if no entry matches (it cannot be mounted)."""
        for e in self.entries:
            if not e.matches(fqrn):
                continue
            if e.subpath:
                log.warning(
                    "Parrot repository %s%s: sub-paths are not supported; entry ignored", e.name, e.subpath
                )
                continue
            prefix = fqrn[: len(fqrn) - len(e.name)] if e.wildcard else ""
            return self._translate(fqrn, e.options.replace(_SUBST, prefix), e.default)
        return None

    def _translate(self, fqrn: str, options: str, default: bool) -> dict[str, str]:
        params: dict[str, str] = {}
        for item in options.split(","):
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip()
            if key in LIBCVMFS_OPTIONS:
                params[LIBCVMFS_OPTIONS[key]] = value
            elif key in REFUSED:
                raise ConfigError(f"Parrot option {key} for {fqrn}: refused, every object is verified")
            elif key in IGNORED:
                log.debug("Parrot option %s for %s has no effect here", key, fqrn)
            else:
                log.warning("Parrot option %r for %s is unknown; ignored", item, fqrn)
        proxy = self._environ.get("HTTP_PROXY")
        if "CVMFS_HTTP_PROXY" not in params and proxy:
            params["CVMFS_HTTP_PROXY"] = proxy
        if not default and "CVMFS_SERVER_URL" not in params:
            raise ConfigError(f"Parrot repository list gives no url= for {fqrn}")
        if "CVMFS_PUBLIC_KEY" in params and "<BUILTIN-" in params["CVMFS_PUBLIC_KEY"]:
            del params["CVMFS_PUBLIC_KEY"]  # Parrot's built-in keys: our shipped keys are the same
        return params
