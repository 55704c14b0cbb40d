"""cvmfs_client/records.py: what a dataclass would give, without importing dataclasses."""

from __future__ import annotations

import pytest

from cvmfs_client.records import FrozenRecord, Record


class Point(Record):
    __slots__ = ("x", "y")

    def __init__(self, x: int, y: list[int] | None = None) -> None:
        self.x = x
        self.y = [] if y is None else y


class Key(FrozenRecord):
    __slots__ = ("name", "n")

    def __init__(self, name: str, n: int = 0) -> None:
        self.name = name
        self.n = n


def test_repr_and_equality_by_fields():
    assert repr(Point(1, [2])) == "Point(x=1, y=[2])"
    assert Point(1) == Point(1, []) and Point(1) != Point(2)
    assert Point(1) != Key("a") and (Point(1) == 1) is False
    with pytest.raises(TypeError):
        hash(Point(1))  # mutable: unhashable, as a plain dataclass
    with pytest.raises(AttributeError):
        Point(1).z = 3  # type: ignore[attr-defined]  # slots: no stray attributes


def test_frozen_records_hash_by_fields():
    assert hash(Key("a", 1)) == hash(Key("a", 1)) and {Key("a"): 1}[Key("a")] == 1
    assert repr(Key("a")) == "Key(name='a', n=0)"
