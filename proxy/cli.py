"""``cvmfs-proxy``: command-line parsing only; everything else is in config.py and server.py."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from .cache import CacheLocked
from .config import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_LISTEN,
    DEFAULT_MEMORY_CACHE,
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    UPSTREAM_READ_TIMEOUT,
    ConfigError,
    build_config,
    default_cache_dir,
    load_config_file,
)
from .server import run


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Eager ``--config``: the file's values become the defaults that other options override."""
    if value:
        try:
            ctx.default_map = {**(ctx.default_map or {}), **load_config_file(Path(value))}
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help="TOML file with any of the options below (keys as the long option names).",
)
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, help="HOST:PORT to listen on.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help=f"Disk cache directory, kept across restarts [default: {default_cache_dir()}].",
)
@click.option("--cache-size", default=DEFAULT_CACHE_SIZE, show_default=True, help="Disk cache limit (LRU).")
@click.option(
    "--memory-cache",
    default=DEFAULT_MEMORY_CACHE,
    show_default=True,
    help="Memory tier for small hot objects.",
)
@click.option(
    "--allow-client",
    multiple=True,
    metavar="CIDR",
    help="Client network allowed to use the proxy; repeatable [default: 127.0.0.0/8 and ::1].",
)
@click.option(
    "--allow-upstream",
    multiple=True,
    metavar="HOST_PATTERN",
    help="Upstream host pattern (fnmatch, e.g. '*.cern.ch' or 'host:8000'); repeatable [default: *].",
)
@click.option(
    "--allow-path",
    multiple=True,
    metavar="PREFIX",
    help="URL path prefix that may be proxied; repeatable [default: /cvmfs/].",
)
@click.option("--parent", default=None, metavar="URL", help="Parent proxy, e.g. http://site-squid:3128.")
@click.option(
    "--access-log", type=click.Path(dir_okay=False), default=None, help="Squid-format access log file."
)
@click.option(
    "--header-timeout",
    type=float,
    default=HEADER_TIMEOUT,
    show_default=True,
    help="Seconds for a request head.",
)
@click.option(
    "--idle-timeout",
    type=float,
    default=IDLE_TIMEOUT,
    show_default=True,
    help="Seconds an idle client is kept.",
)
@click.option(
    "--upstream-timeout",
    type=float,
    default=UPSTREAM_READ_TIMEOUT,
    show_default=True,
    help="Seconds of upstream silence (or of a body slower than 1 KiB/s) before 504.",
)
@click.option(
    "--name",
    default="cvmfs-proxy",
    show_default=True,
    help="Name in Via/X-Cache; unique in a proxy hierarchy.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool, **options: Any) -> None:
    """Caching HTTP forward proxy for CernVM-FS clients (a site Squid for one login node).

    Verifies content-addressed objects against the hash in their URL before storing or
    serving them, collapses concurrent misses into one upstream request, and keeps its disk
    cache across restarts. SIGTERM: graceful stop; SIGUSR1: counters to the log; SIGHUP:
    reopen the access log. Counters: GET /cvmfs-proxy/stats on the proxy port.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s cvmfs-proxy[%(process)d] %(levelname)s %(message)s",
    )
    try:
        config = build_config(**options)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        run(config)
    except CacheLocked as exc:
        click.echo(f"cvmfs-proxy: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"cvmfs-proxy: cannot start: {exc}", err=True)
        sys.exit(1)
