"""``cvmfs-client run``: start a job under the tracer and hand back its fate exactly.

Process layout. The tracer forks the job's first process and stays its parent, in the *same*
process group (like ``strace``): the terminal's foreground group therefore already includes the
job, an interactive shell started as the job finds itself in the foreground and sets up job
control as usual, and Ctrl-C/Ctrl-Z reach the job directly from the terminal. The tracer ignores
SIGINT/SIGQUIT (they are the job's to handle), forwards SIGTERM/SIGHUP/SIGUSR1/SIGUSR2 to the job,
and mirrors job-control stops: when the first process stops (Ctrl-Z), the tracer stops itself
with the same signal so the calling shell sees "Stopped", and on SIGCONT resumes the job. At the
end it gives the terminal back to its own process group if the job left it elsewhere.

Start-up order. The child waits on a pipe until the tracer has seized it (PTRACE_SEIZE with
EXITKILL: no tracee outlives the tracer), then installs the seccomp filter and executes the
command, so its very first ``execve`` is already translated.

Exit. The job's exit code is returned; if it was killed by a signal the tracer kills itself
with the same signal (core dumps of the tracer disabled), so the caller's ``$?``/``WIFSIGNALED``
look exactly as without the tracer; 128+signal if that is impossible.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import resource
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

from cvmfs_client import lazylog
from cvmfs_client.config_basics import foreign_directory
from cvmfs_client.errors import CvmfsError
from cvmfs_client.records import Record

from . import notify, seccomp
from . import ptrace_api as pt
from .tracer import Tracer
from .translate import Translator
from .vfs import Namespace

TYPE_CHECKING = False  # typing's, without importing typing at every job's start (test_startup.py)

if TYPE_CHECKING:  # policies and name lists are imported only by the jobs that ask for them
    from os import PathLike
    from pathlib import Path
    from typing import NoReturn

    from .mountlist import Line

log = lazylog.get(__name__)

OPTIONS = (
    pt.O_TRACESYSGOOD
    | pt.O_TRACEFORK
    | pt.O_TRACEVFORK
    | pt.O_TRACECLONE
    | pt.O_TRACEEXEC
    | pt.O_TRACESECCOMP
    | pt.O_EXITKILL
)
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)
JOB_CONTROL = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
EX_SOFTWARE = 70  # sysexits.h: an internal error of the tracer


class RunError(Exception):
    """The job could not be started under the tracer (no ptrace, no seccomp...)."""


class PrivateTmp(Record):
    """``--private-tmp``: the host directory that is the job's /tmp."""

    __slots__ = ("path", "created", "clean")

    def __init__(self, path: Path, created: bool, clean: bool = False) -> None:
        self.path = path
        self.created = created  # made by us (removed when empty or with --clean-tmp)
        self.clean = clean

    def count(self) -> int:
        n = 0
        for _root, dirs, files in os.walk(self.path):
            n += len(files) + sum(1 for d in dirs if os.path.islink(os.path.join(_root, d)))
        return n

    def finish(self) -> str | None:
        """Clean up as asked; a line for the user about what is left, or ``None``."""
        if not self.path.exists():
            return None
        n = self.count()
        empty = not any(self.path.iterdir())
        if self.clean or (empty and self.created):
            import shutil  # start-up time: its archive formats load bz2 and lzma

            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                for child in self.path.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            return f"removed the job's /tmp ({n} files)" if n else None
        return f"the job's /tmp is kept in {self.path} ({n} files)"


class RunOptions(Record):
    """What ``cvmfs-client run`` was told; ``params`` are the CVMFS_* settings (environment)."""

    __slots__ = (
        "params", "env", "shadow_dir", "repos", "listed", "per_repo", "debug", "stats", "mount_lines",
        "own_proc", "private_tmp", "allow_write", "name_list", "env_list", "cwd", "notify",
    )  # fmt: skip

    def __init__(
        self,
        params: Mapping[str, str],
        env: Mapping[str, str],
        shadow_dir: str,
        repos: Sequence[str] | None = None,
        listed: Callable[[], Sequence[str]] = lambda: (),
        per_repo: Callable[[str], Mapping[str, str] | None] | None = None,
        debug: bool = False,
        stats: dict | None = None,
        mount_lines: Sequence[Line] = (),
        own_proc: bool = False,
        private_tmp: PrivateTmp | None = None,
        allow_write: Sequence[str] | None = None,
        name_list: Path | None = None,
        env_list: Path | None = None,
        cwd: Path | None = None,
        notify: bool = True,
    ) -> None:
        self.params = params
        self.env = env
        self.shadow_dir = shadow_dir
        self.repos = repos  # --repo: mount only these
        self.listed = listed  # what `ls /cvmfs` shows before first access
        self.per_repo = per_repo  # Parrot: params per fqrn
        self.debug = debug
        self.stats: dict = {} if stats is None else stats  # filled with counters when the job ends
        self.mount_lines = mount_lines  # mount list, private /tmp, denials (policy.py); () = none
        self.own_proc = own_proc  # --sandbox: /proc DENY except the job's own /proc/PID
        self.private_tmp = private_tmp
        self.allow_write = allow_write  # --allow-write prefixes (logical); None: anywhere
        self.name_list = name_list  # -n: where the paths the job used are written at its end
        self.env_list = env_list  # -e: where the job's initial environment is written
        self.cwd = cwd  # the job's first working directory (a host path); None: ours
        self.notify = notify  # metadata calls through seccomp user notifications where possible


def _opener(options: RunOptions) -> Callable[[str, str | None], object]:
    def open_repo(fqrn: str, root_hash: str | None) -> object:
        from cvmfs_client.client import open_repository  # heavy import: only when really needed
        from cvmfs_client.errors import ConfigError

        params = dict(options.params)
        if options.per_repo is not None:
            extra = options.per_repo(fqrn)
            if extra is None:
                raise ConfigError(f"{fqrn}: not configured by the Parrot repository list")
            params.update(extra)
        if root_hash is not None:
            params["CVMFS_ROOT_HASH"] = root_hash  # the revision this job already uses
        return open_repository(fqrn, params)

    return open_repo


def _allowed(options: RunOptions) -> Callable[[str], bool]:
    repos = set(options.repos) if options.repos else None
    per_repo = options.per_repo

    def allowed(fqrn: str) -> bool:
        if repos is not None and fqrn not in repos:
            return False
        if per_repo is None:
            return True
        try:
            return per_repo(fqrn) is not None
        except CvmfsError:
            return True  # the mount itself reports the configuration error

    return allowed


def _check_shadow_dir(shadow_dir: str) -> None:
    """The shadow trees' directory, under the cache base: made now, before the job starts, so
    that an unwritable cache (a read-only home on compute nodes) is named as such rather than
    found half-way (:class:`RunError`). Programs and libraries from /cvmfs run from this file
    system: when it is mounted noexec (a node's /tmp or scratch often is), say so up front
    rather than leave the job with "Permission denied" for a file that is 0755 in the
    repository (reading files still works, so the job runs)."""
    try:
        os.makedirs(shadow_dir, exist_ok=True)
        noexec = os.statvfs(shadow_dir).f_flag & os.ST_NOEXEC
    except OSError as exc:
        raise RunError(
            f"cannot use the cache directory {shadow_dir}: {exc.strerror}; give --cache-dir "
            "(or CVMFS_CACHE_BASE) a writable directory"
        ) from None
    if not os.access(shadow_dir, os.W_OK | os.X_OK):
        raise RunError(
            f"cannot use the cache directory {shadow_dir}: not writable; give --cache-dir "
            "(or CVMFS_CACHE_BASE) a writable directory"
        )
    why = foreign_directory(shadow_dir)
    if why is not None:  # its programs (content links, patched copies) run as the job
        raise RunError(
            f"cannot use the cache directory {shadow_dir}: {why}, so another user could change the "
            "programs your job runs from it; give --cache-dir (or CVMFS_CACHE_BASE) a directory of your own"
        )
    if noexec:
        log.warning(
            "%s is on a file system mounted noexec: programs and libraries from /cvmfs cannot be "
            "run or loaded from it (EACCES); give --cache-dir (or CVMFS_CACHE_BASE) a directory "
            "on a file system that allows execution",
            shadow_dir,
        )


def run(argv: Sequence[str], options: RunOptions) -> int:
    """Run ``argv`` under the interposer; returns the first process's wait status.

    Pass it to :func:`exit_like` to leave the way the job left.
    """
    if not argv:
        raise RunError("no command given")
    _check_shadow_dir(options.shadow_dir)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    ranges = seccomp.FdRanges.for_limit(soft)
    policy = None
    if options.mount_lines or options.allow_write is not None:
        from .mountlist import MountTable
        from .policy import Policy

        policy = Policy(MountTable(options.mount_lines), options.own_proc, options.allow_write)
    # Under a policy the filter also refuses the calls that would escape it (seccomp.CONFINED_*).
    # Built in the child, and only when used (--ptrace-only, or no listener): ~0.5 ms of Python.
    program = functools.partial(seccomp.build_filter, ranges, os.getpid() if policy is not None else None)
    # Metadata calls and plain opens go to a supervisor thread rather than stopping the job
    # (notify.py); the child falls back to `program` if the kernel refuses the listener.
    channel = None
    notify_program = None
    if options.notify and notify.kernel_supports():
        opens = notify.kernel_supports(needed=notify.OPENS_NEED)
        tracer_pid = os.getpid() if policy is not None else None
        # what a container's seccomp profile may refuse the supervisor: then those calls stop
        changes = notify.kernel_supports(needed=notify.CHANGES_NEED)
        creates = opens and changes and notify.can_own_umask()
        takes = notify.can_take_fds()
        dups = opens and takes
        notify_program = seccomp.build_filter(
            ranges,
            tracer_pid,
            notify=True,
            notify_opens=opens,
            notify_creates=creates,
            notify_dups=dups,
            notify_changes=changes,
        )
        channel = notify.make_channel(takes)
    inherited = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGQUIT, *FORWARDED, *JOB_CONTROL)}
    if options.env_list is not None:
        from .namelist import env_bytes, write_atomic

        try:
            write_atomic(options.env_list, env_bytes(options.env))
        except OSError as exc:
            raise RunError(f"cannot write the environment list {options.env_list}: {exc.strerror}") from None
    try:
        env = dict(options.env)
        pid = _spawn(list(argv), env, program, inherited, options.cwd, notify_program, channel)
    except BaseException:
        if channel is not None:
            channel.close()
        raise
    finally:
        if channel is not None:
            channel.parent_side()

    forward_to = pid

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(forward_to, signum)

    for s in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(s, signal.SIG_IGN)
    for s in FORWARDED:
        if inherited[s] != signal.SIG_IGN:
            signal.signal(s, forward)
    for s in JOB_CONTROL:
        signal.signal(s, lambda *_: None)

    ns = Namespace(options.shadow_dir, _opener(options), options.listed, _allowed(options), options.params)  # type: ignore[arg-type]
    translator = Translator(ns, ranges, policy=policy)
    names = None
    if options.name_list is not None:
        from .namelist import FULL, NameList

        names = NameList(translator._logical_of)
        translator.on_content = lambda path: names.note(path, FULL)
    tracer = Tracer(
        translator,
        pid,
        on_main_stop=lambda sig: _suspend(sig, pid),
        debug=options.debug,
        names=names,
    )
    supervisor = notify.Supervisor(tracer, channel, tracer.lock) if channel is not None else None
    if supervisor is not None:
        supervisor.start()
    try:
        status = tracer.run()
    except BaseException:
        _kill_all(tracer)
        raise
    finally:
        if supervisor is not None:
            supervisor.stop()
        ns.close()
        _reclaim_terminal()
        options.stats.update(
            stops=dict(tracer.stats.stops),
            actions=dict(tracer.stats.actions),
            events=dict(tracer.stats.events),
            seconds=tracer.stats.seconds,
        )
        if names is not None and options.name_list is not None:
            try:
                names.write(options.name_list)
            except OSError as exc:
                log.error("cannot write the name list %s: %s", options.name_list, exc)
    if supervisor is not None and supervisor.failure is not None:
        failure = supervisor.failure
        raise RuntimeError(f"serving the job's metadata calls: {failure!r}") from failure
    return status


# What PTRACE_SEIZE fails with when policy forbids it: Yama/capabilities (EPERM), seccomp
# profiles (EPERM, or ENOSYS/EACCES for those that pretend the call does not exist).
PTRACE_DENIED = frozenset({errno.EPERM, errno.EACCES, errno.ENOSYS})
YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"


def tracer_of(pid: int | str = "self") -> tuple[int, list[bytes]] | None:
    """(pid, argv) of the process tracing ``pid``, if any (argv empty if unreadable)."""
    tracer = pt.status_field(pid, b"TracerPid:")
    if not tracer:
        return None
    try:
        with open(f"/proc/{tracer}/cmdline", "rb") as f:
            return tracer, f.read().split(b"\0")[:-1]
    except OSError:
        return tracer, []


_RUN_MODULES = (b"cvmfs_client", b"cvmfs_client.cli", b"cvmfs_client.entry")


def is_run_command(argv: Sequence[bytes]) -> bool:
    """Whether ``argv`` is a ``cvmfs-client run`` (or ``package run``): ``python [opts] -m
    cvmfs_client run``, ``python .../cvmfs-client run`` (the console script), ``.../cvmfs-client
    run`` (the one-file executable), global options allowed before ``run``. Not ``strace -f
    cvmfs-client run ...``: the program must be ours, not merely named."""
    words = list(argv)
    if words and os.path.basename(words[0]).startswith(b"python"):
        words.pop(0)
        while words and words[0].startswith(b"-") and words[0] != b"-m":
            option = words.pop(0)
            if option in (b"-X", b"-W") and words:
                words.pop(0)
        if words[:1] == [b"-m"]:
            if len(words) < 2 or words[1] not in _RUN_MODULES:
                return False
            words = words[2:]
        elif not words or os.path.basename(words.pop(0)) != b"cvmfs-client":
            return False
    elif not words or os.path.basename(words.pop(0)) != b"cvmfs-client":
        return False
    for word in words:  # global options (and their values) before the command
        if word == b"run":
            return True
        if word == b"--":
            return False
    return False


def outer_interposer() -> int | None:
    """The pid of the ``cvmfs-client run`` whose job we are, if we are one (a nested run)."""
    found = tracer_of()
    if found is None:
        return None
    pid, argv = found
    return pid if is_run_command(argv) else None


def ptrace_denied_message(yama: str | PathLike[str] = YAMA_SCOPE) -> str:
    """One line that says why jobs cannot run here, naming the Yama setting when it is the cause."""
    traced = tracer_of()
    if traced is not None:  # strace -f, a debugger, or a run that could not be recognised
        pid, argv = traced
        who = b" ".join(argv).decode(errors="replace")[:80] or "?"
        return (
            f"this process is itself traced by process {pid} ({who}), and a traced process's "
            "children cannot be traced again: run cvmfs-client run outside it"
        )
    try:
        with open(yama, encoding="utf-8") as f:
            scope = f.read().strip()
    except OSError:
        scope = ""
    if scope in ("2", "3"):
        why = f"kernel.yama.ptrace_scope={scope}"
    else:
        why = "a container seccomp policy or security module forbids it" + (
            f"; kernel.yama.ptrace_scope={scope}" if scope else ""
        )
    return f"ptrace is not permitted here ({why}): cannot run jobs under the interposer"


def _spawn(
    argv: list[str],
    env: dict[str, str],
    program: Callable[[], bytes],
    inherited: dict,
    cwd: Path | None = None,
    notify_program: bytes | None = None,
    channel: notify.Channel | None = None,
) -> int:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the job's first process
        _child(argv, env, program, inherited, ready_r, ready_w, cwd, notify_program, channel)
    os.close(ready_r)
    try:
        pt.seize(pid, OPTIONS)
    except OSError as exc:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if exc.errno in PTRACE_DENIED:
            raise RunError(ptrace_denied_message()) from None
        raise RunError(f"cannot trace the job: {exc.strerror}") from None
    finally:
        with contextlib.suppress(BrokenPipeError):  # the child is already gone if seizing failed
            os.write(ready_w, b"x")
        os.close(ready_w)
    return pid


def _child(
    argv: list[str],
    env: dict[str, str],
    program: Callable[[], bytes],
    inherited: dict,
    ready_r: int,
    ready_w: int,
    cwd: Path | None = None,
    notify_program: bytes | None = None,
    channel: notify.Channel | None = None,
) -> NoReturn:
    code = 127
    try:
        os.close(ready_w)
        if channel is not None:
            channel.child_side()
        if cwd is not None:
            os.chdir(cwd)
        for s, handler in inherited.items():
            signal.signal(s, signal.SIG_IGN if handler == signal.SIG_IGN else signal.SIG_DFL)
        for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.read(ready_r, 1)  # the tracer has seized us (or failed and is about to kill us)
        os.close(ready_r)
        if channel is None or notify_program is None:
            seccomp.install(program())
        else:
            try:
                killable = notify.kernel_supports(needed=notify.CHANGES_NEED)  # as the filter was built
                listener = seccomp.install(notify_program, listener=True, killable=killable)
            except OSError:  # EBUSY: a listener above us (a nested run); EINVAL: too old a kernel
                listener = None
                seccomp.install(program())  # everything through ptrace stops: slower, as correct
            channel.send_listener(listener)
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            code = 126 if exc.errno in (errno.EACCES, errno.ENOEXEC, errno.EISDIR) else 127
            os.write(2, f"cvmfs-client run: {argv[0]}: {exc.strerror}\n".encode())
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        with contextlib.suppress(Exception):
            os.write(2, f"cvmfs-client run: cannot start the job: {exc}\n".encode())
    os._exit(code)


def _suspend(sig: int, pid: int) -> None:
    """The job stopped (Ctrl-Z): stop ourselves the same way, resume it when we are resumed."""
    old = signal.signal(sig, signal.SIG_DFL)
    try:
        os.kill(os.getpid(), sig)  # returns once somebody sends SIGCONT
    finally:
        signal.signal(sig, old)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _reclaim_terminal() -> None:
    """If the job left another process group in the terminal's foreground, take it back."""
    for fd in (0, 1, 2):
        try:
            if not os.isatty(fd):
                continue
            if os.tcgetpgrp(fd) != os.getpgrp():
                old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
                try:
                    os.tcsetpgrp(fd, os.getpgrp())
                finally:
                    signal.signal(signal.SIGTTOU, old)
            return
        except OSError:
            continue


def _kill_all(tracer: Tracer) -> None:
    for tid in list(tracer.tasks):
        with contextlib.suppress(OSError):
            os.kill(tid, signal.SIGKILL)


def exit_code(status: int) -> int:
    """A shell's ``$?`` for a wait status: the exit code, or 128 + the killing signal."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return EX_SOFTWARE


def exit_like(status: int) -> NoReturn:
    """Leave as the job did: same exit code, or killed by the same signal (no core dump)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(exit_code(status))
