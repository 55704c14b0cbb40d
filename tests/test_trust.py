"""Which verified manifest a new reader mounts: TTL reuse, newer revisions, rollback, offline."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cvmfs_client.errors import FetchError
from cvmfs_client.hashing import ObjectType
from cvmfs_client.keys import load_public_key
from cvmfs_client.manifest import Manifest
from cvmfs_client.objects import Compression, decode_bytes
from cvmfs_client.publisher import publish
from cvmfs_client.trust import Breadcrumbs, ManifestRollback, effective_ttl, load_manifest

FQRN = "trust.example.org"


class Network:
    """Serves whichever published revision it was given; counts and can fail requests."""

    def __init__(self, s0: Path) -> None:
        self.s0 = s0
        self.files: dict[str, bytes] = {}
        self.up = True
        self.requests = 0

    def snapshot(self) -> None:
        for name in (".cvmfspublished", ".cvmfswhitelist"):
            self.files[name] = (self.s0 / name).read_bytes()

    def fetch(self, name: str) -> bytes:
        self.requests += 1
        if not self.up:
            raise FetchError(name, [f"http://stratum1/{name}: connection failed"])
        return self.files[name]

    def cert(self, m: Manifest) -> bytes:
        assert m.certificate is not None
        stored = (self.s0 / m.certificate.object_path(ObjectType.CERTIFICATE)).read_bytes()
        return decode_bytes(stored, m.certificate, Compression.ZLIB, "cert")


@pytest.fixture
def world(tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("one")
    s0 = tmp_path / "s0"
    publish(src, FQRN, s0, tmp_path / "keys")
    net = Network(s0)
    net.snapshot()
    keys = [load_public_key(tmp_path / "keys" / f"{FQRN}.pub")]
    crumbs = Breadcrumbs(tmp_path / "cache")

    def republish() -> None:
        (src / "f").write_text("two")
        publish(src, FQRN, s0, tmp_path / "keys")

    return net, keys, crumbs, republish


def load(world, at: float):  # type: ignore[no-untyped-def]
    net, keys, crumbs, _ = world
    return load_manifest(FQRN, net.fetch, net.cert, keys, crumbs, now=datetime.now(UTC), clock=lambda: at)


def test_cached_manifest_is_reused_within_ttl(world):
    net = world[0]
    first = load(world, 1000.0)
    assert net.requests == 2
    again = load(world, 1000.0 + effective_ttl(first.manifest) - 1)
    assert net.requests == 2, "no network use within the TTL"
    assert again.manifest == first.manifest


def test_newer_revision_is_taken_after_ttl(world):
    net, _, _, republish = world
    first = load(world, 1000.0)
    republish()
    net.snapshot()
    assert load(world, 1010.0).manifest.revision == first.manifest.revision  # still within TTL
    later = load(world, 1000.0 + 241)
    assert later.manifest.revision == first.manifest.revision + 1


def test_older_revision_from_network_is_refused(world):
    net, _, _, republish = world
    old = dict(net.files)
    republish()
    net.snapshot()
    load(world, 1000.0)
    net.files = old  # a replayed, correctly signed but older manifest
    with pytest.raises(ManifestRollback, match="older"):
        load(world, 5000.0)


def test_offline_continues_on_cached_revision_with_warning(world, caplog):
    net = world[0]
    first = load(world, 1000.0)
    net.up = False
    with caplog.at_level(logging.WARNING):
        offline = load(world, 9000.0)
    assert offline.offline and offline.manifest == first.manifest
    assert "continuing offline" in caplog.text


def test_offline_without_cached_revision_fails(world):
    world[0].up = False
    with pytest.raises(FetchError):
        load(world, 1000.0)


def test_tampered_breadcrumb_is_ignored(world, tmp_path):
    net = world[0]
    load(world, 1000.0)
    crumb = tmp_path / "cache" / "manifests" / f"{FQRN}.cvmfspublished"
    data = bytearray(crumb.read_bytes())
    data[5] ^= 1
    crumb.write_bytes(bytes(data))
    load(world, 1001.0)
    assert net.requests == 4, "a bad cached copy must send the reader back to the network"


def test_max_ttl_caps_the_manifest_ttl(world):
    m = load(world, 1000.0).manifest
    assert effective_ttl(m) == 240
    assert effective_ttl(m, max_ttl_minutes=1) == 60
