"""Shared pieces of the fuzz properties: settings, the "only typed errors" check, mutators.

Every ``test_fuzz_<module>.py`` exposes ``PROPERTIES``: name -> (strategy, check). The pytest tests
run each check with :data:`FUZZ` (bounded, about 200 inputs); ``bench/fuzz.py`` runs the very
same pairs with a budget in minutes and counts inputs and failures.

The property is always the same: feeding the parser hostile input may raise the module's own
typed errors (``CvmfsError`` subclasses, ``ProtocolError`` for the proxy), and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # regressions are kept as @example, not in a local .hypothesis directory
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

Property = tuple[st.SearchStrategy[Any], Callable[[Any], None]]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, max_edits: int = 8) -> bytes:
    """``seed`` with a few random byte flips, inserts, deletions and truncations."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, max_edits))):
        op = draw(st.sampled_from(("flip", "insert", "delete", "truncate")))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def digits(min_size: int = 1, max_size: int = 30) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=min_size, max_size=max_size)


# Numbers a hostile file likes: huge (beyond int64 and beyond Python's 4300-digit int() limit),
# signed, with Unicode digits, or not numbers at all.
hostile_number_text = st.one_of(
    digits(),
    digits(4301, 4400),
    st.sampled_from(
        ["", "-1", "+1", " 1", "1 ", "0x10", "1_0", "1e3", "nan", "inf", "\u00b2", "\u0663", "1.5"]
    ),
    st.integers(-(2**70), 2**70).map(str),
)
