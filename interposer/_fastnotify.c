/*
 * The seccomp supervisor's fast path (see notify.py, "Fast path").
 *
 * Most notifications a job sends are host paths that the translator leaves to the kernel:
 * stat("/etc/localtime") before every localtime() of a job without TZ, the dynamic loader's
 * probes of /lib and /usr/lib, terminfo lookups.  Answering each of them from Python costs
 * ~6 us beyond the kernel's own round trip (~7 us).  serve() receives notifications with the
 * GIL released, lets through ("continue") every one whose path argument is an absolute path
 * under one of the prefixes Python gave, and returns to Python with the first one it cannot
 * decide.  It decides nothing Python would decide otherwise: the calls, arguments, prefixes
 * and exceptions all come from notify.py, which uses it only where the translator's first
 * check (Translator._plain_host) is the whole decision (no policy, no name list, no --debug).
 *
 * The kernel reads a continued call's path again after us (seccomp_unotify(2)), exactly as
 * it does after Python's check: no answer here depends on the job's memory staying put.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/types.h>
#include <sys/uio.h>

/* linux/seccomp.h, kept here so that building needs no kernel headers */
struct notif_data {
    int32_t nr;
    uint32_t arch;
    uint64_t instruction_pointer;
    uint64_t args[6];
};
struct notif {
    uint64_t id;
    uint32_t pid;
    uint32_t flags;
    struct notif_data data;
};
struct notif_resp {
    uint64_t id;
    int64_t val;
    int32_t error;
    uint32_t flags;
};
#define IOCTL_RECV 0xC0502100UL
#define IOCTL_SEND 0xC0182101UL
#define FLAG_CONTINUE 1U

#define TABLE_NRS 1024   /* syscall numbers the table covers: 2 bytes each */
#define PATH_LIMIT 4096  /* PATH_MAX: longer paths go to Python, which answers ENAMETOOLONG */
#define PAGE 4096UL

/* serve() results besides 0 ("a notification for Python is in the buffer") */
#define MEMORY_REFUSED (-1)  /* the job's memory cannot be read from here: do it in Python */

/* Read the NUL-terminated string at addr in process pid, page by page (a string may end just
 * before an unmapped page).  0 and its length, or a negative errno. */
static int read_path(pid_t pid, uint64_t addr, char *buf, size_t *len)
{
    size_t got = 0;
    while (got < PATH_LIMIT) {
        size_t want = PAGE - ((addr + got) & (PAGE - 1));
        if (want > PATH_LIMIT - got)
            want = PATH_LIMIT - got;
        struct iovec local = {buf + got, want};
        struct iovec remote = {(void *)(uintptr_t)(addr + got), want};
        ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EFAULT;
        char *end = memchr(buf + got, 0, (size_t)n);
        if (end != NULL) {
            *len = (size_t)(end - buf);
            return 0;
        }
        got += (size_t)n;
    }
    return -ENAMETOOLONG;
}

/* Whether s (length n) starts with one of the NUL-separated prefixes in list. */
static int has_prefix(const char *s, size_t n, const char *list, size_t list_len)
{
    const char *p = list, *end = list + list_len;
    while (p < end) {
        size_t k = strnlen(p, (size_t)(end - p));
        if (k > 0 && k <= n && memcmp(s, p, k) == 0)
            return 1;
        p += k + 1;
    }
    return 0;
}

/* Whether s (length n) is one of the NUL-separated names in list. */
static int is_one_of(const char *s, size_t n, const char *list, size_t list_len)
{
    const char *p = list, *end = list + list_len;
    while (p < end) {
        size_t k = strnlen(p, (size_t)(end - p));
        if (k == n && memcmp(s, p, k) == 0)
            return 1;
        p += k + 1;
    }
    return 0;
}

struct config {
    uint32_t arch;
    const unsigned char *table; /* per syscall number: path argument + 1, open flags argument + 1 */
    const char *prefixes;
    size_t prefixes_len;
    const char *never;          /* exact paths an open must not pass (/etc/mtab) */
    size_t never_len;
    unsigned long directory_flag; /* opens with this flag go to Python (0: none do) */
};

/* 1: let it through; 0: Python decides; MEMORY_REFUSED: as 0, and stop using this path. */
static int passes(const struct config *c, const struct notif *n, char *path)
{
    const struct notif_data *d = &n->data;
    if (d->arch != c->arch || d->nr < 0 || d->nr >= TABLE_NRS)
        return 0;
    unsigned path_arg = c->table[2 * d->nr], flags_arg = c->table[2 * d->nr + 1];
    if (path_arg == 0 || path_arg > 6 || flags_arg > 6)
        return 0;
    int is_open = flags_arg != 0;
    if (is_open && (d->args[flags_arg - 1] & c->directory_flag))
        return 0;
    size_t len = 0;
    int err = read_path((pid_t)n->pid, d->args[path_arg - 1], path, &len);
    if (err == -EPERM || err == -ENOSYS)
        return MEMORY_REFUSED;
    if (err != 0 || len == 0 || path[0] != '/')
        return 0;
    if (memmem(path, len, "cvmfs", 5) != NULL)
        return 0;
    if (!has_prefix(path, len, c->prefixes, c->prefixes_len))
        return 0;
    if (is_open && is_one_of(path, len, c->never, c->never_len))
        return 0;
    return 1;
}

PyDoc_STRVAR(serve_doc,
"serve(listener, request, table, prefixes, never, directory_flag, arch, counts) -> int\n\n"
"Receive notifications on listener and continue every one the configuration lets through,\n"
"counting them per syscall number in counts (unsigned 64-bit, one per number of table).\n"
"Returns 0 with the first other notification in request (struct seccomp_notif), -1 the\n"
"same when the job's memory could not be read from this process, or the errno RECV\n"
"failed with.  Raises OSError when SEND fails other than with ENOENT (call interrupted).");

static PyObject *serve(PyObject *self, PyObject *args)
{
    int listener;
    unsigned long directory_flag, arch;
    Py_buffer request, table, prefixes, never, counts;
    (void)self;
    if (!PyArg_ParseTuple(args, "iw*y*y*y*kkw*", &listener, &request, &table, &prefixes, &never,
                          &directory_flag, &arch, &counts))
        return NULL;
    PyObject *result = NULL;
    if (request.len < (Py_ssize_t)sizeof(struct notif) || table.len != 2 * TABLE_NRS ||
        counts.len != (Py_ssize_t)(8 * TABLE_NRS)) {
        PyErr_SetString(PyExc_ValueError, "serve: buffer sizes do not match");
        goto out;
    }
    struct config c = {
        (uint32_t)arch, table.buf, prefixes.buf, (size_t)prefixes.len, never.buf, (size_t)never.len,
        directory_flag,
    };
    struct notif *n = request.buf;
    uint64_t *count = counts.buf;
    int code = 0, send_errno = 0;
    char path[PATH_LIMIT];
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        memset(n, 0, sizeof(*n)); /* RECV wants a zeroed struct */
        if (ioctl(listener, IOCTL_RECV, n) < 0) {
            code = errno;
            break;
        }
        int verdict = passes(&c, n, path);
        if (verdict != 1) {
            code = verdict == MEMORY_REFUSED ? MEMORY_REFUSED : 0;
            break;
        }
        struct notif_resp resp = {n->id, 0, 0, FLAG_CONTINUE};
        if (ioctl(listener, IOCTL_SEND, &resp) < 0 && errno != ENOENT) {
            send_errno = errno; /* ENOENT: interrupted by a signal meanwhile, it restarts */
            break;
        }
        count[n->data.nr] += 1;
    }
    Py_END_ALLOW_THREADS
    if (send_errno != 0) {
        errno = send_errno;
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    result = PyLong_FromLong(code);
out:
    PyBuffer_Release(&request);
    PyBuffer_Release(&table);
    PyBuffer_Release(&prefixes);
    PyBuffer_Release(&never);
    PyBuffer_Release(&counts);
    return result;
}

PyDoc_STRVAR(path_passes_doc,
"path_passes(path, prefixes, never, is_open) -> bool\n\n"
"The path rule of serve() on its own, for tests: whether serve() would continue a call\n"
"with this path argument.");

static PyObject *path_passes(PyObject *self, PyObject *args)
{
    Py_buffer path, prefixes, never;
    int is_open;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*p", &path, &prefixes, &never, &is_open))
        return NULL;
    const char *s = path.buf;
    size_t n = (size_t)path.len;
    int ok = n > 0 && n < PATH_LIMIT && memchr(s, 0, n) == NULL && s[0] == '/' &&
             memmem(s, n, "cvmfs", 5) == NULL &&
             has_prefix(s, n, prefixes.buf, (size_t)prefixes.len) &&
             !(is_open && is_one_of(s, n, never.buf, (size_t)never.len));
    PyBuffer_Release(&path);
    PyBuffer_Release(&prefixes);
    PyBuffer_Release(&never);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS, serve_doc},
    {"path_passes", path_passes, METH_VARARGS, path_passes_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastnotify",
    "The seccomp supervisor's fast path for host paths (see notify.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastnotify(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "TABLE_NRS", TABLE_NRS) < 0 ||
        PyModule_AddIntConstant(m, "MEMORY_REFUSED", MEMORY_REFUSED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
