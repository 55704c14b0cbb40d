"""The real client's configuration model: layered ``KEY=value`` files, environment, overrides.

Layers, later wins (spec 8.1; our package data plays the part of the real client's
configuration repository, read just before the matching file of the configuration directory):

1. built-in defaults (``PARAMETERS``: the real client's values, spec 8.4 "file" column);
2. shipped ``etc/default.conf``;
3. ``<config dir>/default.conf``, ``default.d/*.conf`` (sorted), ``default.local``;
4. shipped ``etc/domain.d/<domain>.conf``, then ``<config dir>/domain.d/<domain>.conf`` and
   ``.local``;
5. shipped ``etc/config.d/<fqrn>.conf``, then ``<config dir>/config.d/<fqrn>.conf`` and ``.local``;
6. ``CVMFS_*`` environment variables;
7. overrides (the command line).

The configuration directory is ``/etc/cvmfs`` unless ``config_dir`` or ``$CVMFS_CLIENT_CONFIG_DIR``
says otherwise. Every parameter remembers where its value came from, so ``cvmfs-client config``
can answer "why is this set". ``@fqrn@``/``@org@`` are substituted last (spec 8.3).

While files are read, ``$NAME`` references see the values that will win in the end
(environment and overrides) first, then what earlier layers set, then the process environment:
a ``CVMFS_USE_CDN=yes`` given on the command line therefore reaches the ``if`` blocks of the
domain files as the user expects. Differences from the real client are listed in
docs/configuration.md.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from .config_basics import check_fqrn, default_cache_base, repository_domain
from .errors import ConfigError

if TYPE_CHECKING:
    from .fetcher import FetcherSettings

DEFAULT_CONFIG_DIR = Path("/etc/cvmfs")
CONFIG_DIR_ENV = "CVMFS_CLIENT_CONFIG_DIR"
# Our package data: default.conf, domain.d/, keys/ (the facts of the real cvmfs-config packages).
SHIPPED_DIR = Path(__file__).resolve().parent / "etc"
# Shipped files refer to their own key directories through this built-in parameter.
SHIPPED_DIR_PARAMETER = "CVMFS_CLIENT_ETC"
# Locators, not settings: never taken from the environment or overrides as parameters.
_NOT_OVERRIDABLE = frozenset({CONFIG_DIR_ENV, SHIPPED_DIR_PARAMETER})

BUILTIN = "built-in default"
ENVIRONMENT = "environment"
COMMAND_LINE = "command line"

SUPPORTED = "supported"  # read and honoured by this client
IGNORED = "ignored"  # only meaningful for a FUSE mount; accepted and has no effect here
UNSUPPORTED = "unsupported"  # would change behaviour, not implemented: accepted but has no effect

_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")


@dataclass(frozen=True)
class Parameter:
    """One configuration parameter: policy as data, shared by the loader, docs and ``config``.

    ``default`` is the built-in value (``None`` = unset); ``{config_dir}`` and ``{cache_base}``
    in it are filled in at load time.
    """

    name: str
    kind: str  # "string", "bool", "int", "float", "path", "list"
    default: str | None
    unit: str
    meaning: str
    status: str
    note: str = ""


def _p(
    name: str, kind: str, default: str | None, unit: str, meaning: str, status: str, note: str = ""
) -> Parameter:
    return Parameter(name, kind, default, unit, meaning, status, note)


# fmt: off
_TABLE = (
    # --- where the repository is and who signs it
    _p("CVMFS_SERVER_URL", "list", None, "';' list of URLs, @fqrn@/@org@",
       "Stratum 1 (or 0) base URLs, tried in order", SUPPORTED,
       "set by domain.d files; http:// and file:// URLs"),
    _p("CVMFS_KEYS_DIR", "path", "{config_dir}/keys", "directory",
       "every .pub file in it is a trusted master key", SUPPORTED,
       "shipped domain files point at the package's keys"),
    _p("CVMFS_PUBLIC_KEY", "list", None, "':' list of files",
       "trusted master public keys; wins over CVMFS_KEYS_DIR", SUPPORTED),
    _p("CVMFS_REPOSITORIES", "list", None, "',' list; short names get CVMFS_DEFAULT_DOMAIN",
       "repositories of this node", SUPPORTED, "used by CVMFS_STRICT_MOUNT and listings"),
    _p("CVMFS_DEFAULT_DOMAIN", "string", None, "domain",
       "completes short names in CVMFS_REPOSITORIES", SUPPORTED, "shipped default.conf: cern.ch"),
    _p("CVMFS_STRICT_MOUNT", "bool", "no", "bool",
       "refuse repositories not in CVMFS_REPOSITORIES", SUPPORTED),
    _p("CVMFS_USE_CDN", "bool", None, "yes/no",
       "shipped domain files: read through the openhtc.io CDN instead of the Stratum 1s", SUPPORTED,
       "unset = yes when CVMFS_HTTP_PROXY is DIRECT, as the config repository does"),
    # --- network
    _p("CVMFS_HTTP_PROXY", "list", "DIRECT", "groups ';', members '|', DIRECT, auto",
       "proxies, tried group by group", SUPPORTED,
       "real client: required, no default; 'auto' uses $http_proxy only (no PAC/WPAD)"),
    _p("CVMFS_FALLBACK_PROXY", "list", None, "same syntax, no DIRECT",
       "proxy groups appended after CVMFS_HTTP_PROXY", SUPPORTED),
    _p("CVMFS_TIMEOUT", "float", "5", "seconds", "HTTP timeout through a proxy", SUPPORTED),
    _p("CVMFS_TIMEOUT_DIRECT", "float", "10", "seconds", "HTTP timeout without a proxy", SUPPORTED),
    _p("CVMFS_LOW_SPEED_LIMIT", "int", "1024", "bytes/s",
       "slower transfers count as timeouts", SUPPORTED),
    _p("CVMFS_MAX_RETRIES", "int", "1", "count", "retries of a failed request per host/proxy", SUPPORTED),
    _p("CVMFS_BACKOFF_INIT", "float", "2", "seconds", "first retry back-off", SUPPORTED),
    _p("CVMFS_BACKOFF_MAX", "float", "10", "seconds", "back-off ceiling", SUPPORTED),
    _p("CVMFS_PROXY_RESET_AFTER", "int", "300", "seconds, 0 = never",
       "return to the first proxy group after this long", SUPPORTED),
    _p("CVMFS_HOST_RESET_AFTER", "int", "1800", "seconds, 0 = never",
       "return to the first server after this long", SUPPORTED),
    _p("CVMFS_USE_GEOAPI", "bool", "no", "bool",
       "order CVMFS_SERVER_URL by the Stratum 1 Geo API once", SUPPORTED,
       "the shipped domain files turn it on"),
    _p("CVMFS_MAX_SERVERS", "int", "0", "count, 0 = all",
       "keep only the first N servers (after Geo API ordering)", SUPPORTED),
    # --- revision
    _p("CVMFS_MAX_TTL", "int", "0", "minutes, 0 = manifest TTL",
       "upper bound of the manifest TTL", SUPPORTED),
    _p("CVMFS_REPOSITORY_TAG", "string", None, "tag name", "read this named revision", SUPPORTED),
    _p("CVMFS_ROOT_HASH", "string", None, "hex hash", "read this root catalog (pin)", SUPPORTED),
    # --- cache
    _p("CVMFS_CACHE_BASE", "path", "{cache_base}", "directory",
       "local cache root", SUPPORTED,
       "real default /var/lib/cvmfs (root's); ours $XDG_CACHE_HOME/cvmfs-client"),
    _p("CVMFS_CACHE_DIR", "path", None, "directory",
       "the whole cache path, replaces CVMFS_CACHE_BASE(/shared)", SUPPORTED),
    _p("CVMFS_SHARED_CACHE", "bool", "yes", "bool",
       "one cache for all repositories (CACHE_BASE/shared) instead of CACHE_BASE/FQRN", SUPPORTED),
    _p("CVMFS_QUOTA_LIMIT", "int", "4000", "MB, <= 0 = unlimited",
       "soft limit of the local cache; LRU cleanup to half", SUPPORTED),
    _p("CVMFS_ALIEN_CACHE", "path", None, "directory",
       "externally managed object directory (e.g. on a shared file system)", SUPPORTED),
    _p("CVMFS_ALIEN_CACHE_WRITABLE", "bool", "no", "bool",
       "cvmfs-client only: also store downloaded objects in CVMFS_ALIEN_CACHE", SUPPORTED,
       "our own; the real client always writes its alien cache"),
    # --- what a mounted repository tells about itself
    _p("CVMFS_MAGIC_XATTRS_VISIBILITY", "string", None, "rootonly/always/never",
       "where listxattr shows the magic xattrs (user.revision, user.hash...)", SUPPORTED,
       "unset = rootonly; cvmfs-client run; getxattr of them works everywhere"),
    _p("CVMFS_HIDE_MAGIC_XATTRS", "bool", None, "bool",
       "older switch: yes = never, no = always", SUPPORTED, "CVMFS_MAGIC_XATTRS_VISIBILITY wins"),
    # --- accepted, no effect without FUSE
    _p("CVMFS_MOUNT_DIR", "path", None, "directory", "where the real client mounts", IGNORED,
       "paths are given as /cvmfs/FQRN/... on the command line"),
    _p("CVMFS_USER", "string", None, "user", "account of the cvmfs2 process", IGNORED),
    _p("CVMFS_RELOAD_SOCKETS", "path", None, "directory", "cvmfs2 reload sockets", IGNORED),
    _p("CVMFS_NFILES", "int", None, "count", "open file limit of cvmfs2", IGNORED),
    _p("CVMFS_CLAIM_OWNERSHIP", "bool", None, "bool", "files owned by the mounting user", IGNORED,
       "no mount: ownership is reported as published"),
    _p("CVMFS_CHECK_PERMISSIONS", "bool", None, "bool", "kernel permission checks", IGNORED),
    _p("CVMFS_MEMCACHE_SIZE", "int", None, "MB", "in-memory metadata caches", IGNORED),
    _p("CVMFS_KCACHE_TIMEOUT", "int", None, "seconds", "kernel page/attribute cache lifetime", IGNORED),
    _p("CVMFS_CLIENT_PROFILE", "string", None, "single/custom",
       "proxy defaults of the config repository", IGNORED, "set CVMFS_HTTP_PROXY instead"),
    _p("CVMFS_SYSLOG_LEVEL", "int", None, "1-3", "syslog verbosity", IGNORED, "use -v/--debug"),
    _p("CVMFS_USYSLOG", "path", None, "file", "log file of cvmfs2", IGNORED, "use -v/--debug"),
    # --- would matter, not implemented
    _p("CVMFS_CONFIG_REPOSITORY", "string", None, "repository name",
       "repository holding more configuration", UNSUPPORTED,
       "needs a mount; the shipped etc/ directory holds the same facts for the main domains"),
    _p("CVMFS_PAC_URLS", "list", None, "';' list of URLs", "proxy auto-configuration files", UNSUPPORTED,
       "no JavaScript PAC evaluation; 'auto' falls back to $http_proxy"),
    _p("CVMFS_PROXY_SHARD", "bool", None, "bool", "hash objects onto proxies", UNSUPPORTED),
    _p("CVMFS_FOLLOW_REDIRECTS", "bool", None, "bool", "follow HTTP redirects", UNSUPPORTED),
    _p("CVMFS_SEND_INFO_HEADER", "bool", None, "bool", "send the path in an HTTP header", UNSUPPORTED),
    _p("CVMFS_DNS_TIMEOUT", "int", None, "seconds", "resolver timeout", UNSUPPORTED,
       "the system resolver is used"),
    _p("CVMFS_DNS_RETRIES", "int", None, "count", "resolver retries", UNSUPPORTED,
       "the system resolver is used"),
    _p("CVMFS_IPFAMILY_PREFER", "int", None, "4 or 6", "preferred IP family", UNSUPPORTED,
       "the system's address order is used"),
    _p("CVMFS_MAX_IPADDR_PER_PROXY", "int", None, "count", "addresses per proxy name", UNSUPPORTED),
    _p("CVMFS_REPOSITORY_DATE", "string", None, "timestamp", "revision valid at a date", UNSUPPORTED,
       "use CVMFS_REPOSITORY_TAG or CVMFS_ROOT_HASH"),
    _p("CVMFS_AUTO_UPDATE", "bool", None, "bool", "follow new revisions while mounted", UNSUPPORTED),
    _p("CVMFS_EXTERNAL_URL", "list", None, "';' list of URLs", "servers of external data", UNSUPPORTED),
    _p("CVMFS_EXTERNAL_HTTP_PROXY", "list", None, "proxy list", "proxies for external data", UNSUPPORTED),
    _p("CVMFS_BLACKLIST", "path", None, "file", "revoked certificate fingerprints", UNSUPPORTED),
    _p("CVMFS_UID_MAP", "path", None, "file", "uid translation", UNSUPPORTED),
    _p("CVMFS_GID_MAP", "path", None, "file", "gid translation", UNSUPPORTED),
    _p("CVMFS_WORKSPACE", "path", None, "directory", "cvmfs2 state directory", UNSUPPORTED,
       "there is no daemon state"),
)
# fmt: on

PARAMETERS: Mapping[str, Parameter] = MappingProxyType({p.name: p for p in _TABLE})


def expand_templates(value: str, fqrn: str) -> str:
    """``@fqrn@`` -> the repository name, ``@org@`` -> its first label; others left as they are."""
    return value.replace("@fqrn@", fqrn).replace("@org@", fqrn.split(".", 1)[0])


def parse_repository_list(value: str | None, default_domain: str | None = None) -> list[str]:
    """``CVMFS_REPOSITORIES``: ``,``-separated; names without a dot get ``.default_domain``.

    Order is kept and duplicates dropped (``mount.cvmfs``'s ``MkFqrn`` completes short names).
    """
    out: list[str] = []
    for item in (value or "").split(","):
        name = item.strip()
        if not name:
            continue
        if "." not in name:
            if not default_domain:
                raise ConfigError(
                    f"CVMFS_REPOSITORIES: {name!r} is not fully qualified and CVMFS_DEFAULT_DOMAIN is unset"
                )
            name = f"{name}.{default_domain}"
        check_fqrn(name)
        if name not in out:
            out.append(name)
    return out


def split_list(value: str | None, separator: str = ";") -> list[str]:
    """Non-empty, stripped members of a ``separator`` list (server URLs, key files)."""
    return [v.strip() for v in (value or "").split(separator) if v.strip()]


@dataclass(frozen=True)
class Configuration:
    """Effective parameters of one repository (or of the node when ``fqrn`` is ``None``)."""

    fqrn: str | None
    config_dir: Path
    values: dict[str, str]
    origins: dict[str, str] = field(repr=False)
    history: dict[str, tuple[tuple[str, str], ...]] = field(repr=False)  # (raw value, origin), oldest first
    files: tuple[str, ...] = ()  # configuration files read, in order

    def origin(self, key: str) -> str:
        """Where the effective value was set: built-in, ``<file>:<line>``, environment, command line."""
        return self.origins.get(key, "unset")

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value, or ``default`` when unset or empty (the real client treats both alike)."""
        value = self.values.get(key)
        return value if value else default

    def _bad(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{key}={self.values.get(key)!r} (from {self.origin(key)}): {what}")

    def get_bool(self, key: str, default: bool = False) -> bool:
        """Spec 8.2 boolean words; anything else is an error naming the value and its source."""
        from .config_parser import parse_bool  # start-up time: see load_configuration

        value = self.get(key)
        if value is None:
            return default
        result = parse_bool(value)
        if result is None:
            raise self._bad(key, "not a boolean; use yes/no, on/off, true/false or 1/0")
        return result

    def get_int(self, key: str, default: int, minimum: int | None = None) -> int:
        """An integer parameter; a bad value names the parameter and where it was set."""
        value = self.get(key)
        if value is None:
            return default
        try:
            result = int(value.strip())
        except ValueError:
            raise self._bad(key, "not an integer") from None
        if minimum is not None and result < minimum:
            raise self._bad(key, f"must be at least {minimum}")
        return result

    def get_float(self, key: str, default: float, minimum: float | None = None) -> float:
        """A finite number (timeouts, back-off); a bad value names the parameter and its source."""
        value = self.get(key)
        if value is None:
            return default
        try:
            result = float(value.strip())
        except ValueError:
            raise self._bad(key, "not a number") from None
        if result != result or result in (float("inf"), float("-inf")):
            raise self._bad(key, "not a finite number")
        if minimum is not None and result < minimum:
            raise self._bad(key, f"must be at least {minimum:g}")
        return result

    def repositories(self) -> list[str]:
        """``CVMFS_REPOSITORIES`` as fully qualified names."""
        try:
            return parse_repository_list(self.get("CVMFS_REPOSITORIES"), self.get("CVMFS_DEFAULT_DOMAIN"))
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {self.origin('CVMFS_REPOSITORIES')})") from None


def resolve_config_dir(config_dir: Path | str | None, environ: Mapping[str, str]) -> tuple[Path, str | None]:
    """The configuration directory and, if it was chosen explicitly, who chose it."""
    if config_dir is not None:
        return Path(config_dir), "argument"
    if environ.get(CONFIG_DIR_ENV):
        return Path(environ[CONFIG_DIR_ENV]), f"${CONFIG_DIR_ENV}"
    return DEFAULT_CONFIG_DIR, None


def configuration_files(
    config_dir: Path, fqrn: str | None, shipped_dir: Path = SHIPPED_DIR
) -> Iterator[Path]:
    """The candidate files in reading order (missing ones are skipped by the caller)."""
    yield shipped_dir / "default.conf"
    yield config_dir / "default.conf"
    default_d = config_dir / "default.d"
    if default_d.is_dir():
        try:
            names = sorted(p for p in default_d.iterdir() if p.name.endswith(".conf"))
        except OSError as exc:
            raise ConfigError(f"{default_d}: cannot list: {exc.strerror or exc}") from None
        yield from names
    yield config_dir / "default.local"
    if fqrn is None:
        return
    domain = repository_domain(fqrn)
    yield shipped_dir / "domain.d" / f"{domain}.conf"
    yield config_dir / "domain.d" / f"{domain}.conf"
    yield config_dir / "domain.d" / f"{domain}.local"
    yield shipped_dir / "config.d" / f"{fqrn}.conf"
    yield config_dir / "config.d" / f"{fqrn}.conf"
    yield config_dir / "config.d" / f"{fqrn}.local"


@dataclass
class _Layers:
    """Accumulates values with their provenance while the layers are applied in order."""

    values: dict[str, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def set(self, key: str, value: str, origin: str) -> None:
        self.values[key] = value
        self.origins[key] = origin
        self.history.setdefault(key, []).append((value, origin))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_configuration(
    fqrn: str | None,
    config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
    *,
    require_server: bool = True,
) -> Configuration:
    """Apply every layer (module docstring) and return the effective configuration.

    ``environ`` defaults to ``os.environ``; ``overrides`` are command-line ``KEY=value`` pairs.
    With ``fqrn`` and ``require_server``, a repository no layer gives a ``CVMFS_SERVER_URL`` is
    refused here, with a hint, rather than failing later with a vaguer network error.
    """
    # Imported here, not at the top: its AST dataclasses cost ~5 ms of start-up, to be paid only
    # when a file is read (importers such as the fetcher only need helpers of this module).
    from .config_parser import interpret

    env = os.environ if environ is None else environ
    if fqrn is not None:
        check_fqrn(fqrn)
    directory, chosen_by = resolve_config_dir(config_dir, env)
    if chosen_by is not None and not directory.is_dir():
        raise ConfigError(f"{directory}: configuration directory (from {chosen_by}) does not exist")

    pinned: dict[str, str] = {k: v for k, v in env.items() if _from_environment(k)}
    for key, value in (overrides or {}).items():
        if not _PARAMETER_NAME.fullmatch(key) or key in _NOT_OVERRIDABLE:
            raise ConfigError(f"{key}={value}: not a parameter that can be set on the command line")
        pinned[key] = value

    layers = _Layers()
    fill = {"config_dir": str(directory), "cache_base": str(default_cache_base(env))}
    for p in PARAMETERS.values():
        if p.default is not None:
            layers.set(p.name, p.default.format(**fill), BUILTIN)
    layers.set(SHIPPED_DIR_PARAMETER, str(SHIPPED_DIR), BUILTIN)

    def lookup(name: str) -> str | None:
        if name in pinned:
            return pinned[name]
        if name in layers.values:
            return layers.values[name]
        if name == "CVMFS_FQRN" and fqrn is not None:  # the real client exports it before parsing
            return fqrn
        return env.get(name)

    files: list[str] = []
    for path in configuration_files(directory, fqrn):
        if not path.is_file():
            continue
        files.append(str(path))
        for a in interpret(_read_text(path), str(path), lookup):
            layers.set(a.name, a.value, f"{path}:{a.line}")

    for key, value in env.items():
        if _from_environment(key):
            layers.set(key, value, ENVIRONMENT)
    for key, value in (overrides or {}).items():
        layers.set(key, value, COMMAND_LINE)

    values = dict(layers.values)
    if fqrn is not None:
        values = {k: expand_templates(v, fqrn) for k, v in values.items()}
    cfg = Configuration(
        fqrn=fqrn,
        config_dir=directory,
        values=values,
        origins=dict(layers.origins),
        history={k: tuple(v) for k, v in layers.history.items()},
        files=tuple(files),
    )
    if fqrn is not None and require_server and not split_list(cfg.get("CVMFS_SERVER_URL")):
        raise ConfigError(
            f"{fqrn}: unknown repository: no CVMFS_SERVER_URL for domain {repository_domain(fqrn)} "
            f"(shipped: {', '.join(shipped_domains())}); set it in {directory}/config.d/{fqrn}.conf "
            "or the environment, e.g. CVMFS_SERVER_URL=http://stratum1.example.org/cvmfs/@fqrn@"
        )
    return cfg


def _from_environment(key: str) -> bool:
    return key.startswith("CVMFS_") and key not in _NOT_OVERRIDABLE and bool(_PARAMETER_NAME.fullmatch(key))


def shipped_domains(shipped_dir: Path = SHIPPED_DIR) -> list[str]:
    """Domains with a shipped ``domain.d`` file (servers and keys known without site setup)."""
    return sorted(p.name[: -len(".conf")] for p in (shipped_dir / "domain.d").glob("*.conf"))


def _shell_quote(value: str) -> str:
    return value if _SHELL_SAFE.fullmatch(value) else shlex.quote(value)


def render_configuration(cfg: Configuration) -> list[str]:
    """``KEY=value    # from <origin>`` lines, sorted by name, re-readable as a configuration file.

    Parameters this client ignores or does not support are marked so that a user who set them
    is not misled into thinking they have an effect.
    """
    rows: list[tuple[str, str]] = []
    for key in sorted(cfg.values):
        note = f"from {cfg.origin(key)}"
        p = PARAMETERS.get(key)
        if p is not None and p.status != SUPPORTED:
            note += f"; {p.status} here"
        rows.append((f"{key}={_shell_quote(cfg.values[key])}", note))
    width = min(max((len(r[0]) for r in rows), default=0), 60)
    return [f"{assignment:<{width}}    # {note}" for assignment, note in rows]


def parameter_table_markdown() -> list[str]:
    """The ``PARAMETERS`` table as Markdown rows (docs/configuration.md holds them verbatim)."""
    lines = ["| parameter | unit / syntax | default here | status | meaning here |", "|---|---|---|---|---|"]
    for p in _TABLE:
        shown = (p.default or "").format(config_dir="<config dir>", cache_base="$XDG_CACHE_HOME/cvmfs-client")
        default = "–" if p.default is None else f"`{shown}`"
        meaning = p.meaning + (f" ({p.note})" if p.note else "")
        cells = [f"`{p.name}`", p.unit, default, p.status, meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


# --- settings of one repository (what client.py wires) ------------------------------------


@dataclass(frozen=True)
class CacheSettings:
    """Where the node cache lives and how big it may grow; independent of any one repository."""

    directory: Path
    quota_limit_mb: int
    alien_cache: Path | None
    alien_cache_writable: bool

    @property
    def quota_limit_bytes(self) -> int | None:
        return self.quota_limit_mb << 20 if self.quota_limit_mb > 0 else None


def cache_settings(cfg: Configuration, environ: Mapping[str, str] | None = None) -> CacheSettings:
    """``CVMFS_CACHE_DIR``, else ``CVMFS_CACHE_BASE``/shared (or /<fqrn> without a shared cache)."""
    env = os.environ if environ is None else environ
    explicit = cfg.get("CVMFS_CACHE_DIR")
    base = Path(cfg.get("CVMFS_CACHE_BASE") or default_cache_base(env))
    shared = cfg.get_bool("CVMFS_SHARED_CACHE", True) or cfg.fqrn is None
    alien = cfg.get("CVMFS_ALIEN_CACHE")
    return CacheSettings(
        directory=Path(explicit) if explicit else base / ("shared" if shared else str(cfg.fqrn)),
        quota_limit_mb=cfg.get_int("CVMFS_QUOTA_LIMIT", 4000),
        alien_cache=Path(alien) if alien else None,
        alien_cache_writable=cfg.get_bool("CVMFS_ALIEN_CACHE_WRITABLE"),
    )


@dataclass(frozen=True)
class RepositorySettings:
    """Typed, validated settings of one repository, the input of fetcher, cache and verifier.

    Network tuning (timeouts, retries, proxies' failover) is parsed once, by
    :meth:`fetcher_settings`, from ``parameters``; it is not duplicated here.
    """

    fqrn: str
    server_urls: list[str]
    http_proxy: str  # after 'auto' resolution; DIRECT when nothing is configured
    public_key: str | None
    keys_dir: str | None
    repository_tag: str | None
    root_hash: str | None
    parameters: dict[str, str]
    cache: CacheSettings
    max_ttl_minutes: int = 0
    configuration: Configuration | None = field(default=None, compare=False, repr=False)

    @property
    def cache_dir(self) -> Path:
        return self.cache.directory

    @property
    def quota_limit_bytes(self) -> int | None:
        return self.cache.quota_limit_bytes

    @property
    def alien_cache(self) -> Path | None:
        return self.cache.alien_cache

    @property
    def alien_cache_writable(self) -> bool:
        return self.cache.alien_cache_writable

    def fetcher_settings(self) -> FetcherSettings:
        from .fetcher import FetcherSettings  # fetcher imports this module (expand_templates)

        return FetcherSettings.from_parameters(
            {**self.parameters, "CVMFS_HTTP_PROXY": self.http_proxy}, self.fqrn
        )


def resolve_auto_proxy(value: str, environ: Mapping[str, str]) -> str:
    """Replace ``auto`` groups by ``$http_proxy`` (the real client's first choice) or drop them.

    PAC/WPAD discovery is not implemented (docs/configuration.md); a proxy list that is empty
    after this is a ``ConfigError``, as it is for the real client.
    """
    groups = []
    for group in value.split(";"):
        if group.strip().lower() == "auto":
            found = environ.get("http_proxy") or environ.get("HTTP_PROXY")
            if found:
                groups.append(found.strip())
            continue
        if group.strip():
            groups.append(group.strip())
    return ";".join(groups)


def settings_for(
    fqrn: str,
    params: Mapping[str, str] | None = None,
    *,
    config_dir: Path | None = None,
    overrides: Mapping[str, str] | None = None,
    configuration: Configuration | None = None,
) -> RepositorySettings:
    """Settings of ``fqrn``: configuration files + ``params`` (the environment, default
    ``os.environ``) + ``overrides``, or an already loaded ``configuration``."""
    env = os.environ if params is None else params
    cfg = configuration or load_configuration(fqrn, config_dir, env, overrides)
    if cfg.fqrn != fqrn:
        raise ConfigError(f"{fqrn}: configuration was loaded for {cfg.fqrn!r}")

    if cfg.get_bool("CVMFS_STRICT_MOUNT") and fqrn not in cfg.repositories():
        raise ConfigError(
            f"{fqrn}: not in CVMFS_REPOSITORIES (from {cfg.origin('CVMFS_REPOSITORIES')}) and "
            f"CVMFS_STRICT_MOUNT=yes (from {cfg.origin('CVMFS_STRICT_MOUNT')}); add it to the list"
        )
    servers = split_list(cfg.get("CVMFS_SERVER_URL"))
    if not servers:
        raise ConfigError(
            f"{fqrn}: no server configured; set CVMFS_SERVER_URL (e.g. http://host/cvmfs/@fqrn@)"
        )

    raw_proxy = cfg.get("CVMFS_HTTP_PROXY") or "DIRECT"  # ours: DIRECT when unset (real: required)
    http_proxy = resolve_auto_proxy(raw_proxy, env)
    if not http_proxy:
        raise ConfigError(
            f"CVMFS_HTTP_PROXY={raw_proxy!r} (from {cfg.origin('CVMFS_HTTP_PROXY')}): no proxy left after "
            "'auto' discovery ($http_proxy unset; PAC files are not supported); add ';DIRECT' or a proxy"
        )
    fallback = cfg.get("CVMFS_FALLBACK_PROXY")
    if fallback and any(m.strip().upper() == "DIRECT" for g in fallback.split(";") for m in g.split("|")):
        raise ConfigError(
            f"CVMFS_FALLBACK_PROXY={fallback!r} (from {cfg.origin('CVMFS_FALLBACK_PROXY')}): DIRECT is not "
            "allowed in the fallback list"
        )

    public_key, keys_dir = _master_key_settings(cfg)
    return RepositorySettings(
        fqrn=fqrn,
        server_urls=servers,
        http_proxy=http_proxy,
        public_key=public_key,
        keys_dir=keys_dir,
        repository_tag=cfg.get("CVMFS_REPOSITORY_TAG"),
        root_hash=cfg.get("CVMFS_ROOT_HASH"),
        parameters={k: v for k, v in cfg.values.items() if k.startswith("CVMFS_")},
        cache=cache_settings(cfg, env),
        max_ttl_minutes=cfg.get_int("CVMFS_MAX_TTL", 0, minimum=0),
        configuration=cfg,
    )


def _master_key_settings(cfg: Configuration) -> tuple[str | None, str | None]:
    """``(CVMFS_PUBLIC_KEY, CVMFS_KEYS_DIR)`` after checking the named files/directory exist.

    Checked here, with the parameter's origin, because "no such file" from deep inside the
    signature check does not tell the user which configuration file to fix.
    """
    public_key = cfg.get("CVMFS_PUBLIC_KEY")
    if public_key:
        paths = split_list(public_key, ":")
        if not paths:
            raise ConfigError(
                f"CVMFS_PUBLIC_KEY={public_key!r} (from {cfg.origin('CVMFS_PUBLIC_KEY')}): no file"
            )
        for path in paths:
            if not Path(path).is_file():
                raise ConfigError(
                    f"{path}: master public key not found "
                    f"(CVMFS_PUBLIC_KEY from {cfg.origin('CVMFS_PUBLIC_KEY')})"
                )
        return public_key, None
    keys_dir = cfg.get("CVMFS_KEYS_DIR") or str(cfg.config_dir / "keys")
    if not Path(keys_dir).is_dir():
        raise ConfigError(
            f"{keys_dir}: master key directory not found "
            f"(CVMFS_KEYS_DIR from {cfg.origin('CVMFS_KEYS_DIR')}); "
            "install the repository's .pub key there or set CVMFS_PUBLIC_KEY"
        )
    try:
        has_key = any(p.name.endswith(".pub") and p.is_file() for p in Path(keys_dir).iterdir())
    except OSError as exc:
        raise ConfigError(f"{keys_dir}: cannot list CVMFS_KEYS_DIR: {exc.strerror or exc}") from None
    if not has_key:
        raise ConfigError(
            f"{keys_dir}: no *.pub master public key in CVMFS_KEYS_DIR (from {cfg.origin('CVMFS_KEYS_DIR')})"
        )
    return None, keys_dir
