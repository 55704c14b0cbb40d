"""Where bytes come from: ``http://`` or ``file://`` base URLs, tried in order.

This is the single place where network I/O happens. A download is handed to a consumer (which
verifies it while it streams); if the consumer rejects the bytes or the transfer fails, the next
server is tried, and the final error lists every attempt.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import requests

from . import __version__
from .errors import CvmfsError, FetchError, FormatError, IntegrityError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Manifests and whitelists are a few KiB; refuse anything absurd instead of buffering it.
MAX_SIGNED_FILE = 1 << 20
_PIECE = 1 << 16
USER_AGENT = f"cvmfs-client/{__version__}"


def parse_proxy_list(value: str | None) -> list[str | None]:
    """Flatten ``CVMFS_HTTP_PROXY`` into an ordered list (``None`` = DIRECT).

    Groups are ``;``-separated, load-balanced members ``|``-separated. This simple fetcher
    tries members in order; the production fetcher balances and keeps sticky choices.
    """
    if not value:
        return [None]
    out: list[str | None] = []
    for group in value.split(";"):
        for member in group.split("|"):
            member = member.strip()
            if not member:
                continue
            if member.upper() == "DIRECT":
                out.append(None)
            else:
                out.append(member if "://" in member else f"http://{member}")
    return out or [None]


class ObjectSource:
    """Ordered servers (and proxies) from which repository-relative names are fetched."""

    def __init__(
        self,
        base_urls: Sequence[str],
        proxies: Sequence[str | None] = (None,),
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        if not base_urls:
            raise FormatError("CVMFS_SERVER_URL", "no server URL configured")
        for url in base_urls:
            scheme = urllib.parse.urlsplit(url).scheme
            if scheme not in ("http", "file"):
                raise FormatError("CVMFS_SERVER_URL", f"unsupported URL {url!r} (use http:// or file://)")
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.proxies = list(proxies) or [None]
        self.timeout = timeout
        self._session = session or requests.Session()
        self._session.headers.update({"User-Agent": USER_AGENT, "Connection": "Keep-Alive"})

    def close(self) -> None:
        self._session.close()

    def routes(self) -> Iterator[tuple[str, str | None]]:
        for base in self.base_urls:
            if base.startswith("file:"):
                yield base, None
            else:
                for proxy in self.proxies:
                    yield base, proxy

    def fetch(self, name: str, consume: Callable[[Iterator[bytes], str], T]) -> T:
        """Stream ``name`` from the first route that works into ``consume(pieces, url)``.

        ``consume`` raises an :class:`IntegrityError` to reject the bytes (try the next route).
        When every route delivered bad bytes, the last integrity error is raised (it says what
        was wrong with the data); otherwise a :class:`FetchError` lists each attempt.
        """
        attempts: list[str] = []
        integrity: list[IntegrityError] = []
        for base, proxy in self.routes():
            url = f"{base}/{name}"
            via = f" via {proxy}" if proxy else ""
            try:
                if base.startswith("file:"):
                    return self._consume_file(url, consume)
                return self._consume_http(url, proxy, consume)
            except IntegrityError as exc:
                integrity.append(exc)
                attempts.append(f"{url}{via}: {exc}")
            except (OSError, requests.RequestException, _HttpStatus) as exc:
                attempts.append(f"{url}{via}: {_describe(exc)}")
            log.warning("fetch failed: %s", attempts[-1])
        if integrity and len(integrity) == len(attempts):
            raise integrity[-1]
        raise FetchError(name, attempts)

    def fetch_bytes(self, name: str, limit: int = MAX_SIGNED_FILE) -> bytes:
        """A small unverified file (manifest, whitelist): its signature is checked by the caller."""

        def collect(pieces: Iterator[bytes], url: str) -> bytes:
            buf = bytearray()
            for piece in pieces:
                buf += piece
                if len(buf) > limit:
                    raise _HttpStatus(f"larger than {limit} bytes")
            return bytes(buf)

        return self.fetch(name, collect)

    def _consume_file(self, url: str, consume: Callable[[Iterator[bytes], str], T]) -> T:
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        with open(path, "rb") as f:
            return consume(iter(lambda: f.read(_PIECE), b""), url)

    def _consume_http(self, url: str, proxy: str | None, consume: Callable[[Iterator[bytes], str], T]) -> T:
        proxies = {"http": proxy, "https": proxy} if proxy else {"http": "", "https": ""}
        with self._session.get(url, stream=True, timeout=self.timeout, proxies=proxies) as resp:
            if resp.status_code != 200:
                raise _HttpStatus(f"HTTP {resp.status_code}")
            expected = resp.headers.get("Content-Length")
            got = 0

            def pieces() -> Iterator[bytes]:
                nonlocal got
                for piece in resp.raw.stream(_PIECE, decode_content=False):
                    got += len(piece)
                    yield piece
                if expected is not None and got != int(expected):
                    raise _HttpStatus(f"truncated body ({got} of {expected} bytes)")

            return consume(pieces(), url)


class _HttpStatus(CvmfsError):
    """A transfer-level failure that is not an exception of requests (status, short body)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    return str(exc) or type(exc).__name__


def file_url(path: str | os.PathLike[str]) -> str:
    return Path(path).resolve().as_uri()
