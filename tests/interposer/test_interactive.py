"""An interactive shell under the interposer, driven through a real terminal (tmux): prompt,
/cvmfs paths, job control inside the shell (Ctrl-Z, fg, Ctrl-C), and Ctrl-Z of the whole run
from the calling shell (the tracer stops with its job and resumes it)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.interposer.trees import MOUNT


class Tmux:
    def __init__(self, session: str) -> None:
        self.session = session

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.session, *keys], check=True)

    def line(self, text: str) -> None:
        self.keys("-l", text)
        self.keys("Enter")

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.session], check=True, capture_output=True, text=True
        ).stdout

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.05)
        raise AssertionError(f"terminal never showed the expected text; screen:\n{self.screen()}")


@pytest.fixture
def tmux(job_env) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux not found: install it with `apt-get install -y tmux`", pytrace=False)
    session = f"cvmfs-{uuid.uuid4().hex[:8]}"
    env = [f"{k}={v}" for k, v in job_env.items()]
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50", "env", "-i", *env,
         "bash", "--norc", "--noprofile", "-i"],
        check=True,
    )  # fmt: skip
    t = Tmux(session)
    t.line("PS1='outer$ '")
    t.wait_for(lambda s: "outer$ " in s)
    yield t
    subprocess.run(["tmux", "kill-session", "-t", session], check=False)


RUN = f"{shlex.quote(sys.executable)} -m cvmfs_client run --"


def test_interactive_shell_with_job_control(tmux):
    tmux.line(f"{RUN} bash --norc --noprofile -i; echo outer-status=$?")
    tmux.line("PS1='inner$ '")
    tmux.wait_for(lambda s: "inner$ " in s)
    tmux.line(f"cd {MOUNT}/cases && pwd && ls | head -2")
    tmux.wait_for(lambda s: f"\n{MOUNT}/cases\n" in s and "abs-link" in s)
    tmux.line("sleep 50")
    time.sleep(0.5)
    tmux.keys("C-z")
    tmux.wait_for(lambda s: "Stopped" in s and "sleep 50" in s)
    tmux.line("jobs -l | grep -c Stopped")
    tmux.line("fg")
    time.sleep(0.5)
    tmux.keys("C-c")
    tmux.line("echo after=$?")
    tmux.wait_for(lambda s: "after=130" in s)
    tmux.line("exit 7")
    tmux.wait_for(lambda s: "outer-status=7" in s)


def test_ctrl_z_stops_and_fg_resumes_the_whole_run(tmux, tmp_path):
    out = tmp_path / "ticks"
    loop = f"for i in 1 2 3 4 5 6 7 8; do echo $i >> {out}; sleep 0.3; done"
    tmux.line(f"{RUN} sh -c 'cat {MOUNT}/README.txt >/dev/null; {loop}'")
    tmux.wait_for(lambda s: out.exists())
    tmux.keys("C-z")
    screen = tmux.wait_for(lambda s: "Stopped" in s)
    assert "outer$ " in screen
    ticks = out.read_text()
    time.sleep(1.0)
    assert out.read_text() == ticks, "the job kept running while stopped"
    tmux.line("fg; echo fg-status=$?")
    tmux.wait_for(lambda s: "fg-status=0" in s)
    assert out.read_text().split() == [str(i) for i in range(1, 9)]
