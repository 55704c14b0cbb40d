"""Loggers that import logging when they first have something to say (cvmfs_client/lazylog.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT, check=True
    )


def test_quiet_messages_import_nothing_and_warnings_configure_logging():
    r = _python(
        """
        import sys
        from cvmfs_client import lazylog
        log = lazylog.get("some.module")
        log.debug("hidden %s", 1)
        log.info("hidden too")
        log.log(lazylog.INFO, "and this")
        print("logging" in sys.modules, log.isEnabledFor(lazylog.INFO), log.isEnabledFor(lazylog.WARNING))
        log.warning("shown %s", 2)
        log.info("still below the level")
        print("logging" in sys.modules)
        """
    )
    assert r.stdout.split() == ["False", "False", "True", "True"]
    assert r.stderr == "WARNING some.module: shown 2\n"


def test_a_configured_level_and_the_callers_line():
    r = _python(
        """
        import logging
        from cvmfs_client import lazylog
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(filename)s:%(lineno)d %(message)s")
        log = lazylog.get("m")
        log.debug("here")
        log.log(lazylog.INFO, "there")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("boom")
        """
    )
    lines = r.stderr.splitlines()
    assert lines[:3] == ["DEBUG <string>:6 here", "INFO <string>:7 there", "ERROR <string>:11 boom"]
    assert "ZeroDivisionError" in r.stderr
