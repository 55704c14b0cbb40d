"""A C program that tries, one way per mode, to get past ``cvmfs-client run``'s file-system policy.

Used by ``test_sandbox_escapes.py`` (each claim of the "Sandbox" section of docs/security.md).
It prints one line per attempt, ``NAME: RESULT``: ``read <first line>`` when a file was read,
``ok`` when a call succeeded, else the errno name (``EACCES``, ``EPERM``...). The races print
``NAME: tries=.. leaks=.. fine=.. refused=..``. Built non-PIE so that a static buffer lies below
4 GiB, where an i386 ``int $0x80`` call can point to it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from interposer import arch_x86_64 as arch

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void say(const char *name, const char *what) {
    char line[512];
    int n = snprintf(line, sizeof line, "%s: %s\n", name, what);
    if (write(1, line, n) < 0) _exit(3);
}

static void say_err(const char *name, long err) {
    say(name, err ? strerrorname_np((int)err) : "ok");
}

/* fd >= 0: read it, say "read <first line>"; fd < 0: say the errno -fd */
static void report_fd(const char *name, long fd) {
    if (fd < 0) {
        say_err(name, -fd);
        return;
    }
    char buf[256] = {0};
    ssize_t n = read((int)fd, buf, sizeof buf - 1);
    close((int)fd);
    if (n < 0) {
        say_err(name, errno);
        return;
    }
    buf[strcspn(buf, "\n")] = 0;
    char line[300];
    snprintf(line, sizeof line, "read %s", buf);
    say(name, line);
}

static long sys_ret(long r) { return r < 0 ? -errno : r; }

/* --- other ABIs, io_uring ---------------------------------------------------------------- */

static char low_path[4096];

static void abi(const char *path) {
    strncpy(low_path, path, sizeof low_path - 1);
    long ret;
    /* i386 open(2) is number 5; arguments in ebx, ecx, edx */
    asm volatile("int $0x80"
                 : "=a"(ret)
                 : "a"(5L), "b"((long)(uintptr_t)low_path), "c"(0L), "d"(0L)
                 : "memory");
    report_fd("int80-open", (int)ret);
    /* the x32 ABI shares open(2)'s 64-bit number, with __X32_SYSCALL_BIT */
    asm volatile("syscall" : "=a"(ret) : "a"(0x40000000L | 2), "D"(path), "S"(0L) : "rcx", "r11", "memory");
    report_fd("x32-open", ret);
    char params[120] = {0};
    long r = syscall(425 /* io_uring_setup */, 8, params);
    say_err("io_uring_setup", r < 0 ? errno : 0);
}

/* --- seccomp filters of the job's own ------------------------------------------------------ */

static void *supervise(void *arg) {
    int fd = *(int *)arg;
    for (;;) {
        struct seccomp_notif req;
        struct seccomp_notif_resp resp;
        memset(&req, 0, sizeof req);
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) return NULL;
        memset(&resp, 0, sizeof resp);
        resp.id = req.id;
        resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    }
}

static void filters(const char *path) {
    /* a filter that allows everything: the tracer's, installed first, still applies */
    struct sock_filter all[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog prog_all = {1, all};
    long r = prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog_all, 0, 0);
    say_err("allow-all-filter", r < 0 ? errno : 0);
    report_fd("allow-all-open", sys_ret(open(path, O_RDONLY)));
    /* SECCOMP_RET_USER_NOTIF takes precedence over SECCOMP_RET_TRACE: a supervisor thread of the
       job would let openat run without the tracer ever seeing it */
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    static int fd;
    fd = (int)syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (fd < 0) {
        say_err("user-notif-filter", errno);
        return;
    }
    say("user-notif-filter", "ok");
    pthread_t t;
    pthread_create(&t, NULL, supervise, &fd);
    report_fd("user-notif-open", sys_ret(open(path, O_RDONLY)));
}

/* --- ptrace, the tracer's memory, and children ---------------------------------------------- */

static void ptrace_tries(void) {
    say_err("traceme", ptrace(PTRACE_TRACEME, 0, 0, 0) < 0 ? errno : 0);
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    say_err("attach-child", ptrace(PTRACE_ATTACH, child, 0, 0) < 0 ? errno : 0);
    kill(child, SIGKILL);
    waitpid(child, NULL, __WALL);
    pid_t tracer = getppid();
    char buf[8];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    long r = syscall(SYS_process_vm_readv, tracer, &local, 1, &remote, 1, 0);
    say_err("vm-read-tracer", r < 0 ? errno : 0);
    r = syscall(SYS_process_vm_writev, tracer, &local, 1, &remote, 1, 0);
    say_err("vm-write-tracer", r < 0 ? errno : 0);
    r = syscall(SYS_pidfd_open, tracer, 0);
    say_err("pidfd-open-tracer", r < 0 ? errno : 0);
    /* last: a tracer traced by its own job would wait for it, and the job for the tracer, until
       the job exits; PTRACE_SEIZE does not stop it */
    say_err("seize-tracer", ptrace(PTRACE_SEIZE, tracer, 0, 0) < 0 ? errno : 0);
}

static void children(const char *path) {
    pid_t c = fork();
    if (c == 0) {
        report_fd("fork-child-open", sys_ret(open(path, O_RDONLY)));
        _exit(0);
    }
    waitpid(c, NULL, 0);
    c = vfork();
    if (c == 0) {
        report_fd("vfork-child-open", sys_ret(open(path, O_RDONLY)));
        _exit(0);
    }
    waitpid(c, NULL, 0);
    struct clone_args args = {0};
    args.exit_signal = SIGCHLD;
    long r = syscall(SYS_clone3, &args, sizeof args);
    if (r == 0) {
        report_fd("clone3-child-open", sys_ret(open(path, O_RDONLY)));
        _exit(0);
    }
    if (r > 0)
        waitpid((pid_t)r, NULL, 0);
    else
        say_err("clone3", errno);
    /* CLONE_UNTRACED: the tracer cannot follow the child; the job could then trace it itself
       and let its calls run */
    r = syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, 0, 0, 0);
    if (r == 0) {
        report_fd("untraced-child-open", sys_ret(open(path, O_RDONLY)));
        _exit(0);
    }
    if (r > 0)
        waitpid((pid_t)r, NULL, 0);
    else
        say_err("clone-untraced", errno);
}

/* --- another view of the tree -------------------------------------------------------------- */

static void namespaces(const char *dir, const char *name) {
    say_err("unshare-user-mount", unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0 ? errno : 0);
    int ns = open("/proc/self/ns/mnt", O_RDONLY);
    say_err("setns", setns(ns, 0) < 0 ? errno : 0);
    long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (r == 0) _exit(0);
    if (r > 0) waitpid((pid_t)r, NULL, 0);
    say_err("clone-newuser", r < 0 ? errno : 0);
    say_err("mount-bind", mount(dir, "/mnt", NULL, MS_BIND, NULL) < 0 ? errno : 0);
    r = chroot(dir);
    say_err("chroot", r < 0 ? errno : 0);
    if (r == 0) report_fd("chroot-open", sys_ret(open(name, O_RDONLY)));
}

static void handles(const char *path) {
    struct file_handle *h = malloc(sizeof *h + MAX_HANDLE_SZ);
    h->handle_bytes = MAX_HANDLE_SZ;
    int mount_id;
    long r = name_to_handle_at(AT_FDCWD, path, h, &mount_id, 0);
    say_err("name-to-handle", r < 0 ? errno : 0);
    int mfd = open("/", O_RDONLY | O_DIRECTORY);
    report_fd("open-by-handle", r < 0 ? -EBADF : sys_ret(open_by_handle_at(mfd, h, O_RDONLY)));
    r = syscall(SYS_open_tree, AT_FDCWD, path, 0);
    say_err("open-tree", r < 0 ? errno : 0);
}

static void openat2_modes(const char *dir, const char *rel) {
    int d = open(dir, O_RDONLY | O_DIRECTORY);
    struct open_how how = {.flags = O_RDONLY, .resolve = RESOLVE_BENEATH};
    report_fd("openat2-beneath", sys_ret(syscall(SYS_openat2, d, rel, &how, sizeof how)));
    how.resolve = RESOLVE_IN_ROOT;
    report_fd("openat2-in-root", sys_ret(syscall(SYS_openat2, d, rel, &how, sizeof how)));
}

/* --- keeping the tracer from reading the job's memory --------------------------------------- */

static void dumpable(const char *path) {
    say_err("set-not-dumpable", prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 ? errno : 0);
    report_fd("open", sys_ret(open(path, O_RDONLY)));
}

/* --- new names for a file -------------------------------------------------------------------- */

static void names(const char *outside, const char *inside, const char *other) {
    int fd = open(outside, O_RDONLY);
    say_err("link-fd", linkat(fd, "", AT_FDCWD, inside, AT_EMPTY_PATH) < 0 ? errno : 0);
    long r = syscall(SYS_renameat2, AT_FDCWD, other, AT_FDCWD, outside, 2 /* RENAME_EXCHANGE */);
    say_err("rename-exchange", r < 0 ? errno : 0);
}

static void exec_at(const char *dir, const char *name) {
    int d = open(dir, O_RDONLY | O_DIRECTORY);
    char *argv[] = {(char *)name, NULL};
    char *envp[] = {NULL};
    syscall(SYS_execveat, d, name, argv, envp, 0); /* returns only on failure */
    say("execveat", strerror(errno));
    _exit(1);
}

/* --- jumping into the stub ---------------------------------------------------------------- */

static unsigned long frame[0x200 / 8] __attribute__((aligned(16)));
static unsigned long depth;

/* The tracer's stub runs the syscall its frame names; the filter lets calls from the stub's
   page through. Any code can point r11 at a frame of its own and jump there. */
static long via_stub(long nr, long a0, long a1) {
    memset(frame, 0, sizeof frame);
    frame[F_NR / 8] = nr;
    frame[F_ARGS / 8] = a0;
    frame[F_ARGS / 8 + 1] = a1;
    depth = 1;
    frame[F_DEPTH_PTR / 8] = (unsigned long)&depth;
    register unsigned long r11 asm("r11") = (unsigned long)frame;
    unsigned long stub = STUB_ADDR;
    long ret;
    asm volatile(
        "lea 1f(%%rip), %%rcx\n\t"
        "mov %%rcx, %c[rip](%%r11)\n\t"
        "jmp *%[stub]\n"
        "1:\n\t"
        : "=a"(ret), "+r"(r11)
        : [stub] "r"(stub), [rip] "i"(F_RIP)
        : "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "memory", "cc");
    return ret;
}

static int stub_mapped(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512], want[32];
    snprintf(want, sizeof want, "%lx-", (unsigned long)STUB_ADDR);
    int found = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, want, strlen(want)) == 0) found = 1;
    if (f) fclose(f);
    return found;
}

static void stub_jump(const char *path) {
    /* a call the tracer rewrites at a ptrace stop (stat is served by notifications): it maps its
       stub into this process */
    if (chdir("/cvmfs") != 0 || chdir("/") != 0)
        say("chdir", "failed");
    say("stub-mapped", stub_mapped() ? "yes" : "no");
    report_fd("plain-open", sys_ret(open(path, O_RDONLY)));
    report_fd("stub-jump-open", via_stub(SYS_open, (long)path, O_RDONLY));
}

/* --- races: change what a path means between the tracer's check and the kernel's lookup ------- */

static char race_path[4096] __attribute__((aligned(8)));
static volatile int stop;
static uint64_t word_a, word_b;
static size_t word_off;
static int flip_fd, fd_a, fd_b;

static void *flip_word(void *arg) {
    volatile uint64_t *w = (volatile uint64_t *)(race_path + word_off);
    while (!stop) {
        *w = word_a;
        *w = word_b;
    }
    return arg;
}

static void *flip_dirfd(void *arg) {
    while (!stop) {
        dup2(fd_a, flip_fd);
        dup2(fd_b, flip_fd);
    }
    return arg;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void race(const char *name, int dirfd, const char *path, const char *secret, double budget,
                 void *(*flipper)(void *)) {
    pthread_t t;
    stop = 0;
    pthread_create(&t, NULL, flipper, NULL);
    long leaks = 0, fine = 0, refused = 0, tries = 0;
    /* At least `budget` seconds; on a loaded machine (the flipper starved of a CPU) up to ten
       times that, until both outcomes were seen often enough to call it a race. */
    double start = now(), end = start + budget, hard_end = start + 10 * budget;
    while (leaks < 3) {
        double t = now();
        if (t >= hard_end || (t >= end && fine >= 60 && refused >= 60)) break;
        tries++;
        int fd = openat(dirfd, path, O_RDONLY);
        if (fd < 0) {
            refused++;
            continue;
        }
        char buf[64] = {0};
        if (read(fd, buf, sizeof buf - 1) < 0) buf[0] = 0;
        close(fd);
        if (strncmp(buf, secret, strlen(secret)) == 0)
            leaks++;
        else
            fine++;
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("%s: tries=%ld leaks=%ld fine=%ld refused=%ld\n", name, tries, leaks, fine, refused);
    fflush(stdout);
}

/* Another thread flips the path buffer between two paths of the same length that differ in one
   aligned 8-byte word (one store each way). */
static void race_buffer(const char *allowed, const char *denied, const char *secret, double budget) {
    size_t n = strlen(allowed), i = 0;
    while (i < n && allowed[i] == denied[i]) i++;
    word_off = i & ~7UL;
    memcpy(race_path, allowed, n + 1);
    memcpy(&word_a, allowed + word_off, 8);
    memcpy(&word_b, denied + word_off, 8);
    race("race-buffer", AT_FDCWD, race_path, secret, budget, flip_word);
}

/* Another thread swaps what a directory fd refers to (dup2 is not a path call). */
static void race_dirfd(const char *decoy, const char *real, const char *rel, const char *secret,
                       double budget) {
    fd_a = open(decoy, O_RDONLY | O_DIRECTORY);
    fd_b = open(real, O_RDONLY | O_DIRECTORY);
    flip_fd = dup(fd_a);
    race("race-dirfd", flip_fd, rel, secret, budget, flip_dirfd);
}

int main(int argc, char **argv) {
    alarm(60);
    const char *mode = argc > 1 ? argv[1] : "";
    const char *a = argc > 2 ? argv[2] : "";
    const char *b = argc > 3 ? argv[3] : "";
    const char *c = argc > 4 ? argv[4] : "";
    const char *d = argc > 5 ? argv[5] : "";
    if (!strcmp(mode, "open"))
        report_fd("open", sys_ret(open(a, O_RDONLY)));
    else if (!strcmp(mode, "abi"))
        abi(a);
    else if (!strcmp(mode, "filters"))
        filters(a);
    else if (!strcmp(mode, "ptrace"))
        ptrace_tries();
    else if (!strcmp(mode, "children"))
        children(a);
    else if (!strcmp(mode, "namespaces"))
        namespaces(a, b);
    else if (!strcmp(mode, "handles"))
        handles(a);
    else if (!strcmp(mode, "openat2"))
        openat2_modes(a, b);
    else if (!strcmp(mode, "dumpable"))
        dumpable(a);
    else if (!strcmp(mode, "names"))
        names(a, b, c);
    else if (!strcmp(mode, "execveat"))
        exec_at(a, b);
    else if (!strcmp(mode, "stub"))
        stub_jump(a);
    else if (!strcmp(mode, "race-buffer"))
        race_buffer(a, b, c, atof(d));
    else if (!strcmp(mode, "race-dirfd"))
        race_dirfd(a, b, c, d, argc > 6 ? atof(argv[6]) : 2.0);
    else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    return 0;
}
"""


def build(dest: Path) -> Path:
    """Compile the program into ``dest`` (a directory); the stub's layout comes from arch_x86_64."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not found: install it with `apt-get install -y gcc`")
    source = dest / "escape.c"
    source.write_text(SOURCE)
    binary = dest / "escape"
    defines = {
        "STUB_ADDR": f"{arch.STUB_ADDR:#x}UL",
        "F_NR": arch.F_NR,
        "F_ARGS": arch.F_ARGS,
        "F_RIP": arch.F_RIP,
        "F_DEPTH_PTR": arch.F_DEPTH_PTR,
    }
    flags = [f"-D{k}={v}" for k, v in defines.items()]
    r = subprocess.run(
        [gcc, "-O1", "-no-pie", "-pthread", "-Wall", *flags, "-o", str(binary), str(source)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise RuntimeError(f"cannot compile {source}:\n{r.stderr}")
    return binary
