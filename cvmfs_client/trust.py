"""The trust chain of a repository, and which verified manifest a new reader should use.

``verify_chain`` is pure: raw manifest + raw whitelist + certificate + master keys in, a verified
``TrustedManifest`` or a typed error out (spec 2.4, 2.5, 3). ``load_manifest`` adds the real
client's revision policy (spec 7.7, 7.9): a verified copy kept in the cache (the breadcrumb) is
reused while its TTL lasts, a newer one is taken from the network after that, an older one from
the network is refused (rollback protection), and when the network is gone the cached revision
keeps working with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from .errors import CorruptObject, FetchError, FormatError, IntegrityError
from .keys import load_certificate
from .manifest import Manifest, check_manifest, parse_manifest, verify_manifest_signature
from .signing import check_letter_hash, split_signed
from .whitelist import Whitelist, check_certificate, verify_whitelist

log = logging.getLogger(__name__)


class ManifestRollback(IntegrityError):
    """The network offers an older revision than one already verified here (a replay)."""


@dataclass(frozen=True)
class TrustedManifest:
    manifest: Manifest
    certificate: x509.Certificate
    whitelist: Whitelist
    raw_manifest: bytes
    raw_whitelist: bytes
    fetched_at: float  # when the manifest came from the network (Unix seconds)
    offline: bool = False  # True when the network failed and a cached copy is used


def verify_chain(
    fqrn: str,
    raw_manifest: bytes,
    raw_whitelist: bytes,
    cert_bytes: Callable[[Manifest], bytes],
    master_keys: list[RSAPublicKey],
    now: datetime,
) -> tuple[Manifest, x509.Certificate, Whitelist]:
    """Manifest -> certificate -> signature -> whitelist -> fingerprint, as the real client.

    ``cert_bytes`` returns the verified certificate object named by the manifest (fetching it
    is the caller's business; it must already be hash-checked).
    """
    src = f"{fqrn}/.cvmfspublished"
    # The hash line is checked before anything is parsed: an altered body is an integrity
    # failure, not a format error (the signature over that hash line is checked below).
    check_letter_hash(split_signed(raw_manifest, src), src)
    manifest = parse_manifest(raw_manifest, src)
    check_manifest(manifest, fqrn, src)
    if manifest.certificate is None:
        raise FormatError(src, "manifest names no certificate (X)")
    certificate = load_certificate(cert_bytes(manifest), f"{fqrn} certificate {manifest.certificate.hex}")
    verify_manifest_signature(raw_manifest, certificate, src)
    wl_src = f"{fqrn}/.cvmfswhitelist"
    whitelist = verify_whitelist(raw_whitelist, master_keys, fqrn, now, wl_src)
    check_certificate(whitelist, certificate, wl_src)
    return manifest, certificate, whitelist


def check_signed_file(
    fqrn: str,
    name: str,
    raw: bytes,
    cert_bytes: Callable[[Manifest], bytes],
    master_keys: list[RSAPublicKey],
    now: datetime,
    source: str,
) -> None:
    """Reject one downloaded ``.cvmfspublished`` / ``.cvmfswhitelist`` that does not verify alone.

    Run by the fetcher on each answer (``fetch_bytes(check=...)``), so that a server or proxy
    sending a damaged or stale signed file is treated like one sending a bad object: retried
    without caches, then the next server, instead of failing the mount after the download. The
    manifest's letter hash and signature (its certificate, content-addressed, is fetched and
    hash-checked through ``cert_bytes``) and the whitelist's signature and expiry are checked;
    the link between them is left to :func:`verify_chain`. A file too malformed to check is a
    :class:`CorruptObject` here, an integrity error, so that it also fails over.
    """
    try:
        if name == ".cvmfswhitelist":
            verify_whitelist(raw, master_keys, fqrn, now, source)
        elif name == ".cvmfspublished":
            check_letter_hash(split_signed(raw, source), source)
            manifest = parse_manifest(raw, source)
            check_manifest(manifest, fqrn, source)
            if manifest.certificate is None:
                raise FormatError(source, "manifest names no certificate (X)")
            cert_source = f"{fqrn} certificate {manifest.certificate.hex}"
            certificate = load_certificate(cert_bytes(manifest), cert_source)
            verify_manifest_signature(raw, certificate, source)
    except FormatError as exc:
        if exc.source != source:  # the certificate: hash-checked, the same from every server
            raise
        raise CorruptObject(source, exc.reason) from exc


def effective_ttl(manifest: Manifest, max_ttl_minutes: int = 0) -> int:
    """Manifest TTL (``D``, copied from the root catalog's TTL) capped by ``CVMFS_MAX_TTL``."""
    ttl = manifest.ttl if manifest.ttl > 0 else 240
    return min(ttl, max_ttl_minutes * 60) if max_ttl_minutes > 0 else ttl


def check_not_older(new: Manifest, known: Manifest, fqrn: str) -> None:
    """Rollback protection (spec 2.5 step 3): never step back to an older publication."""
    if (new.timestamp or 0) < (known.timestamp or 0) or new.revision < known.revision:
        raise ManifestRollback(
            f"{fqrn}/.cvmfspublished: server offers revision {new.revision} (published {new.timestamp}), "
            f"older than revision {known.revision} (published {known.timestamp}) already verified here"
        )


class Breadcrumbs:
    """Verified manifests and whitelists kept per repository in a cache directory.

    Files are replaced atomically (temp name + rename), so concurrent readers see either the old
    or the new copy, never a mix. They are only hints: everything is verified again on use.
    """

    def __init__(self, directory: Path, fallbacks: Sequence[Path] = ()) -> None:
        self.directory = Path(directory) / "manifests"
        # Read-only extra places, e.g. the alien cache a login node pre-warmed: a node whose own
        # cache is empty must still find a verified manifest there when the network is gone.
        self._fallbacks = [Path(d) / "manifests" for d in fallbacks]

    def load(self, fqrn: str) -> tuple[bytes, bytes, float] | None:
        """The most recently fetched copy among the cache directory and the fallbacks."""
        best: tuple[bytes, bytes, float] | None = None
        for directory in (self.directory, *self._fallbacks):
            crumb = self._load_from(directory, fqrn)
            if crumb is not None and (best is None or crumb[2] > best[2]):
                best = crumb
        return best

    @staticmethod
    def _load_from(directory: Path, fqrn: str) -> tuple[bytes, bytes, float] | None:
        try:
            raw_m = (directory / f"{fqrn}.cvmfspublished").read_bytes()
            raw_w = (directory / f"{fqrn}.cvmfswhitelist").read_bytes()
            meta = json.loads((directory / f"{fqrn}.json").read_text())
            return raw_m, raw_w, float(meta["fetched_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, fqrn: str, raw_manifest: bytes, raw_whitelist: bytes, fetched_at: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Written in this order, the json (read last) decides: a crash in between leaves at worst
        # a newer manifest with an older timestamp, which only shortens its reuse.
        self._write(f"{fqrn}.cvmfspublished", raw_manifest)
        self._write(f"{fqrn}.cvmfswhitelist", raw_whitelist)
        self._write(f"{fqrn}.json", json.dumps({"fetched_at": fetched_at}).encode())

    def _write(self, name: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_manifest(
    fqrn: str,
    fetch_signed: Callable[[str], bytes],
    cert_bytes: Callable[[Manifest], bytes],
    master_keys: list[RSAPublicKey],
    breadcrumbs: Breadcrumbs | None,
    *,
    now: datetime | None = None,
    max_ttl_minutes: int = 0,
    clock: Callable[[], float] | None = None,
) -> TrustedManifest:
    """The manifest a new reader of ``fqrn`` should mount, verified.

    ``fetch_signed(name)`` downloads ``.cvmfspublished`` / ``.cvmfswhitelist`` so that caches
    on the way revalidate them.
    """
    now = now or datetime.now(UTC)
    t = clock() if clock else now.timestamp()
    cached: TrustedManifest | None = None
    crumb = breadcrumbs.load(fqrn) if breadcrumbs else None
    if crumb is not None:
        raw_m, raw_w, fetched_at = crumb
        try:
            m, c, w = verify_chain(fqrn, raw_m, raw_w, cert_bytes, master_keys, now)
            cached = TrustedManifest(m, c, w, raw_m, raw_w, fetched_at)
        except IntegrityError as exc:
            log.warning("%s: ignoring cached manifest: %s", fqrn, exc)
        except FetchError:
            cached = None  # its certificate is gone from the cache and the network is down
    if cached is not None and t - cached.fetched_at < effective_ttl(cached.manifest, max_ttl_minutes):
        return cached
    try:
        raw_m = fetch_signed(".cvmfspublished")
        raw_w = fetch_signed(".cvmfswhitelist")
    except FetchError as exc:
        if cached is None:
            raise
        log.warning(
            "%s: cannot reach any server (%s); continuing offline on cached revision %d",
            fqrn,
            exc,
            cached.manifest.revision,
        )
        return dataclasses.replace(cached, offline=True)
    m, c, w = verify_chain(fqrn, raw_m, raw_w, cert_bytes, master_keys, now)
    if cached is not None:
        check_not_older(m, cached.manifest, fqrn)
    if breadcrumbs is not None:
        breadcrumbs.save(fqrn, raw_m, raw_w, t)
    return TrustedManifest(m, c, w, raw_m, raw_w, t)
