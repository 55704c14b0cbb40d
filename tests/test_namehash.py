"""cvmfs_client/namehash.py: the names it gives are hashlib's, byte for byte (shadow-tree
markers and mount state files made by earlier versions keep their names)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from cvmfs_client import namehash


@given(st.binary(max_size=5000))
def test_digests_are_hashlibs(data):
    assert namehash.sha1_hex(data) == hashlib.sha1(data).hexdigest()
    assert namehash.md5_hex(data) == hashlib.md5(data).hexdigest()


def test_naming_loads_no_openssl():
    code = "import sys; from cvmfs_client import namehash; namehash.sha1_hex(b'x'); namehash.md5_hex(b'x');"
    code += "print('_hashlib' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
