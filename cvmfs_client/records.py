"""Small classes with named fields, for the modules ``cvmfs-client run`` imports at start.

Importing :mod:`dataclasses` imports :mod:`inspect` (and with it ``ast``, ``dis``,
``tokenize``...): ~9 ms of every job's start, measured in a plain venv, before any
``@dataclass`` is made. A class here names its fields in ``__slots__`` and writes its
``__init__``; :class:`Record` gives it the ``__repr__`` and ``__eq__`` a dataclass has.
"""

from __future__ import annotations


class Record:
    """Fields are the class's own ``__slots__``, in order."""

    __slots__ = ()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable, as a plain dataclass


class FrozenRecord(Record):
    """A record nobody changes after ``__init__`` (by convention): hashable by its fields."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, name) for name in self.__slots__))
