"""Shared test fixtures: where the real-publisher repositories live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def real_fixtures_dir() -> Path:
    """The repositories made by the real CernVM-FS 2.12 publisher (``shared/fixtures/real-cvmfs``).

    Looked up in ``$CVMFS_REAL_FIXTURES``, then beside the checkout, then at the workplace's
    shared folder. Missing fixtures fail the tests rather than skipping them.
    """
    candidates = [
        os.environ.get("CVMFS_REAL_FIXTURES", ""),
        str(_HERE.parent.parent / "shared" / "fixtures" / "real-cvmfs"),
        "/work/shared/fixtures/real-cvmfs",
    ]
    for c in candidates:
        if c and (Path(c) / "tools.example.org" / ".cvmfspublished").is_file():
            return Path(c)
    raise RuntimeError("real CVMFS fixtures not found: set CVMFS_REAL_FIXTURES to shared/fixtures/real-cvmfs")


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    return real_fixtures_dir()
