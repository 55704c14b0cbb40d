"""Loggers that import :mod:`logging` only when they have something to say.

A job under ``cvmfs-client run`` starts after the tracer's own start-up, and importing
``logging`` costs ~7 ms of it (``traceback``, ``linecache``, ``tokenize``, ``string``...) while
most jobs log nothing. The modules on that path take ``log = lazylog.get(__name__)``:

- ``debug``/``info`` are dropped while nothing has imported ``logging``: nobody asked for
  them (``-v``/``--debug`` configure logging before the job starts; a library that imports
  it, requests in a cold job, gets the standard handling from then on);
- ``warning`` and above import it and, if nothing configured the root logger yet, configure
  it as ``cvmfs-client`` does (:data:`FORMAT`, level WARNING), then log.

Records name the caller's line, not this module's (``stacklevel``).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)
if TYPE_CHECKING:
    from typing import Any

FORMAT = "%(levelname)s %(name)s: %(message)s"
DEBUG, INFO, WARNING = 10, 20, 30  # logging's levels


def configure(level: int | None = None) -> None:
    """The root logger as ``cvmfs-client`` sets it up (``level`` default WARNING)."""
    import logging

    logging.basicConfig(level=WARNING, format=FORMAT)
    if level is not None:
        logging.getLogger().setLevel(level)


class LazyLogger:
    """The ``logging.Logger`` methods a module calls, fetching the logger on first need."""

    __slots__ = ("name", "_logger")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: Any = None

    def _real(self) -> Any:
        logger = self._logger
        if logger is None:
            import logging

            if not logging.getLogger().handlers:
                configure()
            logger = self._logger = logging.getLogger(self.name)
        return logger

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        if "logging" not in sys.modules:
            return level >= WARNING
        return bool(self._real().isEnabledFor(level))

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level >= WARNING or "logging" in sys.modules:
            self._real().log(level, msg, *args, stacklevel=2, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        if "logging" in sys.modules:
            self._real().debug(msg, *args, stacklevel=2, **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if "logging" in sys.modules:
            self._real().info(msg, *args, stacklevel=2, **kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._real().warning(msg, *args, stacklevel=2, **kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._real().error(msg, *args, stacklevel=2, **kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._real().exception(msg, *args, stacklevel=2, **kwargs)

    def critical(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._real().critical(msg, *args, stacklevel=2, **kwargs)


def get(name: str) -> LazyLogger:
    return LazyLogger(name)
