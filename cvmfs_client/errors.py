"""Typed errors: every failure names the file/URL/object and the reason, so a user can act.

Callers catch at the level they care about: ``CvmfsError`` for everything, ``IntegrityError``
for anything that means "the bytes are not what the signer published", ``FetchError`` for
network trouble, ``LookupFailure`` subclasses for errno-style answers about paths.
"""

from __future__ import annotations

import errno as _errno


class CvmfsError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class FormatError(CvmfsError):
    """A file does not follow the CernVM-FS format (malformed field, missing key...)."""

    def __init__(self, source: str, reason: str, line: int | None = None) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.reason = reason
        self.line = line


class UnknownHashAlgorithm(FormatError):
    """A hash string or flag names an algorithm CernVM-FS does not define."""


class IntegrityError(CvmfsError):
    """Data is not what the repository's signer published: never use it."""

    exit_code = 3


class HashMismatch(IntegrityError):
    def __init__(self, source: str, expected: str, actual: str) -> None:
        super().__init__(f"{source}: content hash mismatch (expected {expected}, got {actual})")
        self.source = source
        self.expected = expected
        self.actual = actual


class CorruptObject(IntegrityError):
    """An object whose hash is fine but cannot be decoded (bad zlib stream, wrong size)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: corrupt object: {reason}")
        self.source = source
        self.reason = reason


class SignatureError(IntegrityError):
    """A signature does not verify with the trusted key(s)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: bad signature: {reason}")
        self.source = source
        self.reason = reason


class WhitelistExpired(IntegrityError):
    def __init__(self, source: str, expiry: str) -> None:
        super().__init__(f"{source}: whitelist expired at {expiry} UTC; the repository owner must re-sign it")
        self.source = source
        self.expiry = expiry


class CertificateNotWhitelisted(IntegrityError):
    def __init__(self, source: str, fingerprint: str) -> None:
        super().__init__(f"{source}: certificate {fingerprint} is not listed in the whitelist")
        self.source = source
        self.fingerprint = fingerprint


class RepositoryNameMismatch(IntegrityError):
    def __init__(self, source: str, expected: str, actual: str) -> None:
        super().__init__(f"{source}: names repository {actual!r}, expected {expected!r}")
        self.source = source
        self.expected = expected
        self.actual = actual


class HostileCatalog(IntegrityError):
    """A catalog entry that could escape the repository or loop (bad names, nested cycles)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: refused hostile catalog: {reason}")
        self.source = source
        self.reason = reason


class CatalogError(CvmfsError):
    """A catalog that cannot be used (unsupported schema, missing table)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class FetchError(CvmfsError):
    """An object could not be downloaded from any source; ``attempts`` lists what was tried.

    ``not_found``: every server answered that it has no such file (HTTP 404), rather than
    failing; for a repository's manifest that means there is no such repository.
    """

    exit_code = 4

    def __init__(self, what: str, attempts: list[str], *, not_found: bool = False) -> None:
        tried = "; ".join(attempts) if attempts else "no source configured"
        super().__init__(f"cannot fetch {what}: {tried}")
        self.what = what
        self.attempts = attempts
        self.not_found = not_found and bool(attempts)


class ConfigError(CvmfsError):
    """Bad configuration: a malformed line, a missing key, an unknown repository."""

    exit_code = 2


class TagNotFound(CvmfsError):
    def __init__(self, fqrn: str, tag: str) -> None:
        super().__init__(f"{fqrn}: no tag {tag!r} in the repository history")
        self.fqrn = fqrn
        self.tag = tag


class LookupFailure(CvmfsError):
    """A path question answered with an errno, as a mounted file system would."""

    errno = _errno.EIO

    def __init__(self, path: str, reason: str | None = None) -> None:
        super().__init__(f"{path}: {reason or _errno.errorcode.get(self.errno, 'error')}")
        self.path = path


class PathNotFound(LookupFailure):
    errno = _errno.ENOENT

    def __init__(self, path: str) -> None:
        super().__init__(path, "no such file or directory")


class NotADirectory(LookupFailure):
    errno = _errno.ENOTDIR

    def __init__(self, path: str) -> None:
        super().__init__(path, "not a directory")


class IsADirectory(LookupFailure):
    errno = _errno.EISDIR

    def __init__(self, path: str) -> None:
        super().__init__(path, "is a directory")


class SymlinkLoop(LookupFailure):
    errno = _errno.ELOOP

    def __init__(self, path: str) -> None:
        super().__init__(path, "too many levels of symbolic links")


class NotASymlink(LookupFailure):
    errno = _errno.EINVAL

    def __init__(self, path: str) -> None:
        super().__init__(path, "not a symbolic link")
