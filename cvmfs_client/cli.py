"""``cvmfs-client``: argument parsing and printing only; the work happens in the library."""

from __future__ import annotations

import logging
import stat
import sys
import time
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .errors import CvmfsError
from .run_job import LOG_FORMAT

F = TypeVar("F", bound=Callable[..., Any])


def _fail_cleanly(func: F) -> F:
    """Turn our typed errors into a one-line message and the error's exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CvmfsError as exc:
            click.echo(f"cvmfs-client: {exc}", err=True)
            sys.exit(exc.exit_code)
        except BrokenPipeError:
            sys.exit(141)
        except OSError as exc:  # the machine's answer (read-only, no space, permission): say which file
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"cvmfs-client: {where}{exc.strerror or exc}", err=True)
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                traceback.print_exc()
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cvmfs-client")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Log everything, including each download.")
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CVMFS_CLIENT_CONFIG_DIR",
    default=None,
    help="Configuration directory instead of /etc/cvmfs (also CVMFS_CLIENT_CONFIG_DIR).",
)
@click.pass_context
def main(ctx: click.Context, verbose: int, debug: bool, config_dir: Path | None) -> None:
    """Read CernVM-FS repositories without FUSE, setuid or root.

    Repositories are configured as for the real client: files in /etc/cvmfs (default.conf,
    default.local, domain.d/, config.d/), then CVMFS_* environment variables: CVMFS_SERVER_URL
    (';'-separated, @fqrn@ is replaced by the repository name), CVMFS_PUBLIC_KEY or
    CVMFS_KEYS_DIR (master public keys), CVMFS_HTTP_PROXY, CVMFS_CACHE_BASE,
    CVMFS_REPOSITORY_TAG and CVMFS_ROOT_HASH (pin a revision).

    Exit codes: 0 ok, 1 error (missing path...), 2 bad usage or configuration,
    3 integrity failure (bad signature, hash mismatch...), 4 network failure.
    """
    ctx.obj = {"config_dir": config_dir}
    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format=LOG_FORMAT)


def _config_dir() -> Path | None:
    ctx = click.get_current_context()
    return (ctx.find_root().obj or {}).get("config_dir")


def _mode_string(mode: int) -> str:
    return stat.filemode(mode)


@main.command("ls")
@click.option("-l", "long_format", is_flag=True, help="Long listing: mode, links, owner, size, mtime.")
@click.option("-a", "show_all", is_flag=True, help="Also show entries starting with '.'.")
@click.argument("path")
@_fail_cleanly
def ls_cmd(path: str, long_format: bool, show_all: bool) -> None:
    """List /cvmfs/REPOSITORY/PATH."""
    from .client import open_repository, split_cvmfs_path

    fqrn, inner = split_cvmfs_path(path)
    with open_repository(fqrn, config_dir=_config_dir()) as repo:
        entry = repo.lookup(inner)
        entries = repo.listdir(inner) if entry.is_dir or _is_dir_link(repo, entry) else [entry]
        for e in entries:
            if not show_all and e.name.startswith(".") and e is not entry:
                continue
            name = e.name or fqrn
            if not long_format:
                click.echo(name)
                continue
            target = f" -> {repo.readlink(e.path)}" if e.is_symlink else ""
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.mtime))
            size = len(repo.readlink(e.path).encode()) if e.is_symlink else e.size
            click.echo(
                f"{_mode_string(e.mode)} {e.nlink:>3} {e.uid:>5} {e.gid:>5} {size:>10} {when} {name}{target}"
            )


def _is_dir_link(repo: Any, entry: Any) -> bool:
    if not entry.is_symlink:
        return False
    try:
        return bool(repo.stat(entry.path).is_dir)
    except CvmfsError:
        return False


@main.command("cat")
@click.argument("paths", nargs=-1, required=True)
@_fail_cleanly
def cat_cmd(paths: tuple[str, ...]) -> None:
    """Print the content of files under /cvmfs/REPOSITORY/..."""
    from .client import open_repository, split_cvmfs_path

    out = sys.stdout.buffer
    for path in paths:
        fqrn, inner = split_cvmfs_path(path)
        with open_repository(fqrn, config_dir=_config_dir()) as repo, repo.open(inner) as f:
            while block := f.read(1 << 20):
                out.write(block)
    out.flush()


@main.command("info")
@click.argument("fqrn")
@_fail_cleanly
def info_cmd(fqrn: str) -> None:
    """Show the verified state of a repository: revision, root hash, certificate, whitelist."""
    from .client import open_repository

    with open_repository(fqrn, config_dir=_config_dir()) as repo:
        i = repo.info()
    published = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(i.published)) if i.published else "unknown"
    rows = [
        ("repository", i.fqrn),
        ("revision", str(i.revision)),
        ("root catalog", i.root_hash + (f" (pinned by {i.pinned_by})" if i.pinned_by else "")),
        ("published", published),
        ("TTL", f"{i.ttl} s"),
        ("hash algorithm", i.hash_algorithm),
        ("certificate", i.certificate_subject),
        ("fingerprint", i.certificate_fingerprint),
        ("whitelist expires", i.whitelist_expires.strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    for k, v in rows:
        click.echo(f"{k + ':':<19}{v}")


@main.command("config")
@click.argument("fqrn", required=False)
@click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a parameter.")
@_fail_cleanly
def config_cmd(fqrn: str | None, overrides: tuple[str, ...]) -> None:
    """Show every effective parameter for FQRN and which file or variable set it."""
    from .config import load_configuration, render_configuration
    from .errors import ConfigError

    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"-o {item!r}: expected KEY=VALUE")
        pairs[key] = value
    cfg = load_configuration(fqrn, _config_dir(), overrides=pairs, require_server=False)
    for line in render_configuration(cfg):
        click.echo(line)


@main.command("probe")
@click.argument("repositories", nargs=-1)
@_fail_cleanly
def probe_cmd(repositories: tuple[str, ...]) -> None:
    """Try every server through every proxy for each repository (default: CVMFS_REPOSITORIES).

    Prints OK or FAILED with the latency and the reason; exits 4 if a repository has no
    working route.
    """
    from .config import load_configuration, settings_for
    from .errors import ConfigError
    from .fetcher import Fetcher

    names = list(repositories) or load_configuration(None, _config_dir(), require_server=False).repositories()
    if not names:
        raise ConfigError("no repository given and CVMFS_REPOSITORIES is empty")
    unreachable = []
    for fqrn in names:
        s = settings_for(fqrn, config_dir=_config_dir())
        with Fetcher(s.fetcher_settings()) as f:
            results = f.probe()
        click.echo(f"{fqrn}:")
        for r in results:
            state = "OK    " if r.ok else "FAILED"
            click.echo(f"  {state} {r.latency_s * 1000:8.1f} ms  {r.server} via {r.proxy}  {r.reason}")
        if not any(r.ok for r in results):
            unreachable.append(fqrn)
    if unreachable:
        click.echo(f"cvmfs-client: no working route to {', '.join(unreachable)}", err=True)
        sys.exit(4)


@main.group("cache")
def cache_group() -> None:
    """Inspect and repair the node cache (CVMFS_CACHE_BASE/shared unless configured otherwise)."""


def _node_cache(cache_dir: Path | None):  # type: ignore[no-untyped-def]
    from .cache import NodeCache
    from .config import cache_settings, load_configuration

    cs = cache_settings(load_configuration(None, _config_dir(), require_server=False))
    # Looking at someone else's cache (an admin's fsck) is fine; only using its objects is not.
    return NodeCache(cache_dir or cs.directory, cs.quota_limit_bytes, check_owner=False)


_cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),  # a typo must not make a cache
    default=None,
    help="Cache directory to use (an existing one).",
)


@cache_group.command("stat")
@_cache_dir_option
@_fail_cleanly
def cache_stat_cmd(cache_dir: Path | None) -> None:
    """Size, quota, object count, pinned objects and hit/miss counters."""
    with _node_cache(cache_dir) as cache:
        st = cache.stat()
        click.echo(f"directory: {cache.directory}")
    quota = f"{st.quota_bytes / 2**20:.0f} MiB" if st.quota_bytes else "unlimited"
    click.echo(f"size:      {st.size_bytes / 2**20:.1f} MiB of {quota}")
    click.echo(f"objects:   {st.objects} ({st.pinned} pinned)")
    click.echo(f"hits:      {st.hits}  misses: {st.misses}  alien hits: {st.alien_hits}")
    if st.outside_bytes:
        click.echo(
            f"outside:   {st.outside_bytes / 2**20:.1f} MiB outside the quota, held by `cvmfs-client run`: "
            "files of running jobs that the cache evicted, executable copies"
        )


@cache_group.command("fsck")
@_cache_dir_option
@_fail_cleanly
def cache_fsck_cmd(cache_dir: Path | None) -> None:
    """Re-verify every object; remove bad ones. Exits 3 if anything was wrong."""
    with _node_cache(cache_dir) as cache:
        report = cache.fsck()
    for name, reason in report.removed:
        click.echo(f"removed {name}: {reason}")
    click.echo(
        f"checked {report.checked} objects: {len(report.removed)} bad, "
        f"{report.stray_txn_removed} stray temporary files removed"
    )
    if not report.clean:
        sys.exit(3)


@cache_group.command("wipe")
@_cache_dir_option
@_fail_cleanly
def cache_wipe_cmd(cache_dir: Path | None) -> None:
    """Remove every cached object, and what `cvmfs-client run` keeps of them (the files of
    running jobs when those jobs end)."""
    with _node_cache(cache_dir) as cache:
        report = cache.wipe()
    click.echo(f"removed {report.objects} objects")
    n = report.revisions_in_use
    if n:
        click.echo(
            f"{n} repository revision{'s are' if n > 1 else ' is'} in use by running `cvmfs-client run` "
            "jobs: the files they opened are removed when those jobs end"
        )


def _chunk_sizes(value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if value.lower() in ("off", "none", "no"):
        return None
    try:
        a, b, c = (_size(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter("expected MIN,AVG,MAX in bytes (K/M suffixes allowed), or 'off'") from None
    return a, b, c


def _size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text) * mult


@main.command("publish")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--fqrn", required=True, help="Repository name, e.g. sw.example.org.")
@click.option(
    "--stratum0",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory: the static tree an HTTP server serves as /cvmfs/FQRN.",
)
@click.option(
    "--keys",
    "keys_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Key directory; keys are created there if missing.",
)
@click.option(
    "--hash-algorithm", type=click.Choice(["sha1", "rmd160", "shake128"]), default="sha1", show_default=True
)
@click.option("--compression", type=click.Choice(["zlib", "none"]), default="zlib", show_default=True)
@click.option(
    "--chunk-size",
    default="4M,8M,16M",
    show_default=True,
    help="Content-defined chunking MIN,AVG,MAX (K/M suffixes) or 'off'.",
)
@click.option("--ttl", default=240, show_default=True, help="Catalog TTL in seconds.")
@click.option("--tag", default=None, help="Also name this revision with a tag.")
@click.option(
    "--include-xattrs",
    is_flag=True,
    help="Store each file's extended attributes in the catalogs (CVMFS_INCLUDE_XATTRS).",
)
@_fail_cleanly
def publish_cmd(
    src: Path,
    fqrn: str,
    stratum0: Path,
    keys_dir: Path,
    hash_algorithm: str,
    compression: str,
    chunk_size: str,
    ttl: int,
    tag: str | None,
    include_xattrs: bool,
) -> None:
    """Publish directory SRC as the next revision of FQRN, unprivileged, into a Stratum-0 tree."""
    from .hashing import HashAlgorithm
    from .objects import Compression
    from .publisher import publish

    result = publish(
        src,
        fqrn,
        stratum0,
        keys_dir,
        hash_algorithm=HashAlgorithm.from_option(hash_algorithm),
        compression=Compression.from_option(compression),
        chunk_sizes=_chunk_sizes(chunk_size),
        ttl=ttl,
        tag=tag,
        include_xattrs=include_xattrs,
    )
    click.echo(
        f"{fqrn}: revision {result.revision}, root catalog {result.root_hash}, "
        f"{result.objects_written} objects written, {result.objects_reused} reused"
    )


@main.command("serve")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--listen", default="127.0.0.1:8000", show_default=True, help="HOST:PORT to listen on.")
@_fail_cleanly
def serve_cmd(root: Path, listen: str) -> None:
    """Serve a Stratum-0/1 tree over HTTP with a real Stratum 1's cache headers.

    ROOT is either one repository (served as /cvmfs/<its name>/) or a directory of them.
    """
    from .server import StratumServer

    host, _, port = listen.rpartition(":")
    server = StratumServer(root, host or "127.0.0.1", int(port))
    click.echo(f"serving {root} at {server.url}  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@main.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to publish and cache (default: a temporary directory, removed after).",
)
@_fail_cleanly
def demo_cmd(workdir: Path | None) -> None:
    """Publish the bundled example tree, serve it on 127.0.0.1 and read it back through the client."""
    from .demo import run_demo

    sys.exit(run_demo(workdir, click.echo))


@main.command("prewarm")
@click.argument("paths", nargs=-1)
@click.option(
    "--name-list",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Fetch exactly the files of a name list (Parrot format: 'path|how' or 'path' per line).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Node cache to fill (default: the configured one).",
)
@click.option(
    "--alien-cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Fill this shared directory instead; nodes then set CVMFS_ALIEN_CACHE to it.",
)
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Parallel downloads (2/core).")
@click.option("--dry-run", is_flag=True, help="Show what would be fetched (catalogs are still downloaded).")
@_fail_cleanly
def prewarm_cmd(
    paths: tuple[str, ...],
    name_list: Path | None,
    cache_dir: Path | None,
    alien_cache: Path | None,
    jobs: int | None,
    dry_run: bool,
) -> None:
    """Fetch catalogs and every object of /cvmfs/REPOSITORY/PATH subtrees (or a name list) into
    a cache ahead of jobs, so that they run without the network.

    Resumable: objects already present are skipped. Exits non-zero and lists the objects that
    failed; 130 when interrupted (what was fetched stays, nothing is left half-written).
    """
    from . import prewarm

    if cache_dir is not None and alien_cache is not None:
        raise click.UsageError("--cache-dir and --alien-cache exclude each other")
    names = prewarm.parse_name_list(name_list.read_text(), str(name_list)) if name_list else []
    with prewarm.prepare(
        paths, names, config_dir=_config_dir(), cache_dir=cache_dir, alien_dir=alien_cache, dry_run=dry_run
    ) as prepared:
        if dry_run:
            for line in prewarm.plan_lines(prepared):
                click.echo(line)
            return
        err = click.get_text_stream("stderr")
        warning = prewarm.quota_warning(prepared)
        if warning:
            click.echo(warning, err=True)
        progress = prewarm.ProgressPrinter(err, err.isatty())
        settings = prewarm.ExecutionSettings(jobs=jobs or prewarm.default_jobs())
        report = prewarm.execute(
            prepared.jobs(), prepared.fetcher_settings, prepared.destination, settings, progress
        )
        prepared.report_skips(report)
    for line in prewarm.summary_lines(report):
        click.echo(line, err=line.startswith("failed:"))
    if alien_cache is not None and not report.failures:
        click.echo(f"nodes can now use CVMFS_ALIEN_CACHE={alien_cache}")
    sys.exit(report.exit_code)


@main.command("run", context_settings={"allow_interspersed_args": False})
@click.option(
    "--repo", "repos", multiple=True, metavar="FQRN", help="Mount only this repository (repeatable)."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache base directory (CVMFS_CACHE_BASE); shadow trees go to its interposer/ subdirectory.",
)
@click.option(
    "-r", "--cvmfs-repos", "parrot_repos", default=None, help="Repository list in Parrot's -r syntax."
)
@click.option(
    "-m",
    "--mount-list",
    "mount_lists",
    multiple=True,
    metavar="FILE",
    help="Parrot mount list: 'PREFIX TARGET [ACL]', 'PREFIX ACL', DENY/ENOENT/LOCAL (repeatable).",
)
@click.option("-M", "--mount", "mounts", multiple=True, metavar="/VIRTUAL=/REAL", help="One mount entry.")
@click.option(
    "--private-tmp",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[=DIR]",
    help="The job gets its own empty /tmp: a new directory, or DIR (missing or empty).",
)
@click.option("--clean-tmp", is_flag=True, help="Remove the private /tmp when the job ends.")
@click.option("--deny", multiple=True, metavar="PATH", help="PATH and below fail with EACCES (repeatable).")
@click.option("--sandbox", is_flag=True, help="Deny /home, /root, /sys, /proc and /dev but the basics.")
@click.option(
    "--allow-write",
    multiple=True,
    metavar="PATH",
    help="Writes only under PATH (repeatable) and the private /tmp; others fail with EACCES.",
)
@click.option(
    "-n",
    "--name-list",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every path the job used to FILE at its end, Parrot's 'path|fullcopy|metadatacopy'.",
)
@click.option(
    "-e",
    "--env-list",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the job's environment to FILE, NUL-terminated NAME=value entries (see README).",
)
@click.option("-v", "--verbose", count=True, help="Log mounts (-v) or every translated call (-vv).")
@click.option("--debug", is_flag=True, help="Log every translated call.")
@click.option("--stats", is_flag=True, hidden=True, help="Print stop counters to stderr at exit.")
@click.option(
    "--ptrace-only",
    is_flag=True,
    help="Stop the job for every trapped call, metadata calls included (no seccomp user "
    "notifications; slower, for comparison and debugging).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_cmd(
    repos: tuple[str, ...],
    cache_dir: Path | None,
    parrot_repos: str | None,
    mount_lists: tuple[str, ...],
    mounts: tuple[str, ...],
    private_tmp: str | None,
    clean_tmp: bool,
    deny: tuple[str, ...],
    sandbox: bool,
    allow_write: tuple[str, ...],
    name_list: Path | None,
    env_list: Path | None,
    verbose: int,
    debug: bool,
    stats: bool,
    ptrace_only: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with /cvmfs/REPOSITORY/... visible, as if the repositories were mounted.

    The job runs unmodified under ptrace with a seccomp filter: only path system calls stop,
    reads and mmap of verified content run natively. Writes into /cvmfs fail with EROFS. The
    exit status (or killing signal) of COMMAND is passed through. Exit codes of its own: 125
    cannot trace, 126/127 COMMAND not executable/not found, 70 internal error.

    Parrot users: -r/--cvmfs-repos, $PARROT_CVMFS_REPO, -m/-M mount lists and -n/-e name and
    environment lists are understood.
    --private-tmp, --deny and --sandbox are mount-list entries too (see interposer/README.md).
    """
    from .run_job import run_job

    run_job(
        command,
        repos,
        cache_dir,
        parrot_repos,
        mount_lists,
        mounts,
        private_tmp,
        clean_tmp,
        deny,
        sandbox,
        allow_write,
        name_list,
        env_list,
        verbose,
        debug,
        stats,
        ptrace_only,
    )


@main.group("package")
def package_group() -> None:
    """Portable applications: pack what a job used, run it anywhere without the host's files.

    \b
    1. cvmfs-client run -n names -e env -- COMMAND...   record what the job uses
    2. cvmfs-client package create -n names -e env -o DIR
    3. cvmfs-client package run DIR -- COMMAND...       on any node, the package as /

    Parrot's parrot_package_create/parrot_package_run, with this interposer (interposer/README.md).
    """


@package_group.command("create")
@click.option(
    "-n",
    "--name-list",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Paths the job used ('path|fullcopy|metadatacopy', from cvmfs-client run -n or Parrot).",
)
@click.option(
    "-e",
    "--env-list",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The job's environment (NUL-terminated NAME=value, from cvmfs-client run -e or Parrot).",
)
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The package directory to create (missing or empty).",
)
@click.option(
    "--cwd", default=None, metavar="PATH", help="The job's working directory (default: PWD of the env list)."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache base directory for /cvmfs paths (CVMFS_CACHE_BASE), as for run.",
)
@click.option(
    "-r", "--cvmfs-repos", "parrot_repos", default=None, help="Repository list in Parrot's -r syntax."
)
@_fail_cleanly
def package_create_cmd(
    name_list: Path,
    env_list: Path,
    out: Path,
    cwd: str | None,
    cache_dir: Path | None,
    parrot_repos: str | None,
) -> None:
    """Copy every file, directory and symlink of a name list into DIR/root, with modes and times:
    content for 'fullcopy' entries, size and metadata only for 'metadatacopy' ones (as Parrot).

    /cvmfs paths are read through the client (configured as for run), others from this host.
    ELF and #! interpreters of packaged programs are added. Exit codes: 0 ok, 1 a listed file
    vanished or cannot be read, 2 bad input, 3 integrity failure, 4 network failure.
    """
    from interposer import packer

    err = click.get_text_stream("stderr")
    progress = packer.ProgressPrinter(err, err.isatty())
    try:
        manifest = packer.create(
            name_list, env_list, out, packer.opener(cache_dir, parrot_repos), cwd, progress
        )
    finally:
        progress.finish()
    for line in packer.summary_lines(manifest, out.absolute()):
        click.echo(line)


@package_group.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("package_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--allow-host",
    multiple=True,
    metavar="PATH",
    help="Show the host's PATH (and below) inside the package (repeatable).",
)
@click.option(
    "--cwd", default=None, metavar="PATH", help="Start in PATH of the package (default: as recorded)."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache base directory (CVMFS_CACHE_BASE): where patched program copies go.",
)
@click.option("-v", "--verbose", count=True, help="Log (-v) or log every translated call (-vv).")
@click.option("--debug", is_flag=True, help="Log every translated call.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def package_run_cmd(
    package_dir: Path,
    allow_host: tuple[str, ...],
    cwd: str | None,
    cache_dir: Path | None,
    verbose: int,
    debug: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND under the interposer with the package DIR as /: DIR -- COMMAND [ARGS...].

    Only the recorded environment is set (as env -i). Host paths are invisible except /proc,
    /dev, /sys and --allow-host PATHs; writes land in DIR/root. The exit status of COMMAND is
    passed through; own exit codes as for run (2 not a package, 125 cannot trace, 127 not found).
    """
    import traceback

    from interposer.job import EX_SOFTWARE, RunError, exit_like, run
    from interposer.package import Package, run_options

    level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else None
    if level is not None:
        logging.getLogger().setLevel(level)
    try:
        package = Package.open(package_dir)
        status = run(list(command), run_options(package, allow_host, cwd, cache_dir, debug or verbose > 1))
    except RunError as exc:
        click.echo(f"cvmfs-client package run: {exc}", err=True)
        sys.exit(125)
    except CvmfsError as exc:
        click.echo(f"cvmfs-client package run: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - a tracer bug: say so, never hang or hide it
        click.echo(f"cvmfs-client package run: internal error: {exc!r} (the job was killed)", err=True)
        if level == logging.DEBUG:
            traceback.print_exc()
        sys.exit(EX_SOFTWARE)
    exit_like(status)


@main.command(
    "proxy",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def proxy_cmd(args: tuple[str, ...]) -> None:
    """The login-node caching proxy: the same as `cvmfs-proxy ARGS...` (`proxy --help` for its options).

    Mainly for the one-file executable, which has no separate cvmfs-proxy.
    """
    from proxy.cli import main as proxy_main

    proxy_main.main(args=list(args), prog_name="cvmfs-client proxy")


if __name__ == "__main__":  # pragma: no cover
    main()
