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
 * It also gives again the answers Python marked as depending on nothing but what the C loop
 * can see (an Answers table): errnos keyed by the call, its value arguments and its path (the
 * dynamic loader's ENOENT probes of a /cvmfs LD_LIBRARY_PATH, the same ~20 in every process a
 * job starts), and the struct stat of /cvmfs content keyed by what an fd of it links to in
 * /proc (glibc's fstat of every file a job opens, twice per file for tar).
 *
 * The kernel reads a continued call's path again after us (seccomp_unotify(2)), exactly as
 * it does after Python's check: no answer here depends on the job's memory staying put.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sched.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

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
#define IOCTL_ID_VALID 0x40082102UL
#define FLAG_CONTINUE 1U

#define TABLE_NRS 1024   /* syscall numbers the table covers: TABLE_STRIDE bytes each */
#define TABLE_STRIDE 7   /* see struct config */
#define FD_KEY TABLE_NRS /* the "syscall number" of a struct stat answer keyed by an fd's target */
#define STAT_SIZE_MAX 256
#define PATH_LIMIT 4096  /* PATH_MAX: longer paths go to Python, which answers ENAMETOOLONG */
#define PAGE 4096UL

/* serve() results besides 0 ("a notification for Python is in the buffer") */
#define MEMORY_REFUSED (-1)  /* the job's memory cannot be read or written from here: Python's way */

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

/* ---- Answers: errnos keyed by (syscall, value arguments, path); struct stats keyed by the
 * /proc link target of a content fd (nr FD_KEY) ------------------------------------------- */

#define ANSWER_SLOTS 8192 /* open addressing, at most half full: then emptied and refilled */

struct answer {
    uint64_t hash; /* 0: empty */
    uint64_t args[6]; /* the key's value arguments, the others zero */
    int32_t nr;
    int32_t kind;     /* ANSWER_* */
    int32_t err;      /* ANSWER_ERRNO: the errno */
    uint32_t len;
    uint32_t data_len;
    char *path;       /* path and data, in one allocation */
    const char *data;
};

#define CURSORS 64 /* where the next free fd is looked for, per (thread, range): see _free_fd */

struct cursor {
    int tid;
    int base;
    int next;
};

#define PIDFDS 64 /* pidfds of the job's processes, for pidfd_getfd (a copy made by a dup) */

struct pidfd {
    int pid;
    int fd; /* 0: none */
};

/* What a remembered answer is: an errno; an open (data: struct open_answer); bytes to write
 * into the call's buffer (data); the same call made here on another path (data: struct restat) */
enum { ANSWER_ERRNO = 0, ANSWER_OPEN = 1, ANSWER_WRITE = 2, ANSWER_RESTAT = 3 };

struct restat {
    uint32_t out_size; /* what the call writes into its buffer */
    char path[];       /* NUL-terminated */
};

typedef struct {
    PyObject_HEAD
    struct answer *slots;
    size_t used;
    struct cursor cursors[CURSORS];
    struct pidfd pidfds[PIDFDS];
} Answers;

/* An open answered here (err 0, data): the rewritten path's open, its fd handed over. */
struct open_answer {
    int32_t base;    /* the reserved range's first number, or 0: the lowest free one */
    int32_t end;     /* the range's end */
    int32_t content; /* content (never made blocking), else a shadow directory */
    char path[];     /* NUL-terminated */
};

static uint64_t answer_hash(int nr, const uint64_t *args, const char *path, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    const unsigned char *p = (const unsigned char *)args;
    h = (h ^ (uint64_t)(uint32_t)nr) * 1099511628211ULL;
    for (size_t i = 0; i < 6 * sizeof(uint64_t); i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)path[i]) * 1099511628211ULL;
    return h ? h : 1;
}

/* The key's arguments: those whose bit is set in mask. */
static void key_args(const uint64_t *args, unsigned mask, uint64_t *out)
{
    for (int i = 0; i < 6; i++)
        out[i] = (mask >> i) & 1 ? args[i] : 0;
}

static struct answer *answer_find(Answers *a, int nr, const uint64_t *args, const char *path,
                                  size_t len, uint64_t h)
{
    for (size_t i = h & (ANSWER_SLOTS - 1);; i = (i + 1) & (ANSWER_SLOTS - 1)) {
        struct answer *s = &a->slots[i];
        if (s->hash == 0 || (s->hash == h && s->nr == nr && s->len == len &&
                             memcmp(s->args, args, sizeof(s->args)) == 0 &&
                             memcmp(s->path, path, len) == 0))
            return s;
    }
}

static void answers_clear(Answers *a)
{
    for (size_t i = 0; i < ANSWER_SLOTS; i++) {
        free(a->slots[i].path);
        memset(&a->slots[i], 0, sizeof(a->slots[i]));
    }
    a->used = 0;
}

static PyObject *answers_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Answers *a = (Answers *)type->tp_alloc(type, 0);
    if (a == NULL)
        return NULL;
    a->slots = calloc(ANSWER_SLOTS, sizeof(struct answer));
    if (a->slots == NULL) {
        Py_DECREF(a);
        return PyErr_NoMemory();
    }
    return (PyObject *)a;
}

static void answers_dealloc(Answers *a)
{
    for (int i = 0; i < PIDFDS; i++)
        if (a->pidfds[i].fd > 0)
            close(a->pidfds[i].fd);
    if (a->slots != NULL) {
        answers_clear(a);
        free(a->slots);
    }
    Py_TYPE(a)->tp_free((PyObject *)a);
}

/* Parse (nr, args tuple of 6, mask, path) shared by remember() and get(). */
/* The key's value arguments of call nr from a tuple of its 6 arguments (mask: which count), with
 * the sizes checked: 0, or -1 with ValueError set. */
static int key_of(PyObject *values, unsigned mask, int nr, Py_ssize_t key_len, uint64_t *key)
{
    uint64_t raw[6] = {0};
    if (PyTuple_GET_SIZE(values) != 6 || nr < 0 || nr >= TABLE_NRS || key_len == 0 ||
        key_len >= 2 * PATH_LIMIT) {
        PyErr_SetString(PyExc_ValueError, "Answers: a syscall number, its 6 arguments and a key");
        return -1;
    }
    for (int i = 0; i < 6; i++) {
        raw[i] = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(values, i));
        if (PyErr_Occurred())
            return -1;
    }
    key_args(raw, mask, key);
    return 0;
}

static int answer_key(PyObject *args, int *nr, uint64_t *key, Py_buffer *path, int *err)
{
    PyObject *values;
    unsigned mask;
    int ok = err != NULL ? PyArg_ParseTuple(args, "iO!Iy*i", nr, &PyTuple_Type, &values, &mask, path, err)
                         : PyArg_ParseTuple(args, "iO!Iy*", nr, &PyTuple_Type, &values, &mask, path);
    if (!ok)
        return -1;
    if (key_of(values, mask, *nr, path->len, key) < 0) {
        PyBuffer_Release(path);
        return -1;
    }
    return 0;
}

/* Store (or replace) an answer: an errno, or data. 0, or -1 with MemoryError set. */
static int answer_store(Answers *a, int nr, const uint64_t *key, const char *path, size_t len,
                        int kind, int err, const char *data, size_t data_len)
{
    if (2 * (a->used + 1) > ANSWER_SLOTS)
        answers_clear(a);
    uint64_t h = answer_hash(nr, key, path, len);
    struct answer *s = answer_find(a, nr, key, path, len, h);
    char *copy = malloc(len + data_len);
    if (copy == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, path, len);
    if (data_len > 0)
        memcpy(copy + len, data, data_len);
    if (s->hash == 0)
        a->used++;
    free(s->path);
    s->hash = h;
    s->nr = nr;
    memcpy(s->args, key, sizeof(s->args));
    s->len = (uint32_t)len;
    s->path = copy;
    s->kind = kind;
    s->err = err;
    s->data = copy + len;
    s->data_len = (uint32_t)data_len;
    return 0;
}

static PyObject *answers_remember(Answers *a, PyObject *args)
{
    int nr, err;
    uint64_t key[6];
    Py_buffer path;
    if (answer_key(args, &nr, key, &path, &err) < 0)
        return NULL;
    if (err <= 0 || path.len == 0) {
        PyBuffer_Release(&path);
        PyErr_SetString(PyExc_ValueError, "Answers.remember: an errno (positive) and a path");
        return NULL;
    }
    int failed = answer_store(a, nr, key, path.buf, (size_t)path.len, ANSWER_ERRNO, err, NULL, 0);
    PyBuffer_Release(&path);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

/* remember_open, remember_write, remember_restat: (nr, args, mask, key, blob, extras...) stored
 * as kind; blob is a path for an open or a restat, the bytes to write for a write. */
static PyObject *remember_blob(Answers *a, PyObject *args, int kind)
{
    PyObject *values;
    unsigned mask, out_size = 0;
    int nr, base = 0, end = 0, content = 0, ok;
    Py_buffer key_path, blob;
    if (kind == ANSWER_OPEN)
        ok = PyArg_ParseTuple(args, "iO!Iy*y*iip", &nr, &PyTuple_Type, &values, &mask, &key_path, &blob,
                              &base, &end, &content);
    else if (kind == ANSWER_RESTAT)
        ok = PyArg_ParseTuple(args, "iO!Iy*y*I", &nr, &PyTuple_Type, &values, &mask, &key_path, &blob,
                              &out_size);
    else
        ok = PyArg_ParseTuple(args, "iO!Iy*y*", &nr, &PyTuple_Type, &values, &mask, &key_path, &blob);
    if (!ok)
        return NULL;
    PyObject *result = NULL;
    uint64_t key[6];
    const char *b = blob.buf;
    size_t n = (size_t)blob.len;
    int bad = n == 0 || (kind == ANSWER_WRITE ? n > STAT_SIZE_MAX
                                              : n >= PATH_LIMIT || memchr(b, 0, n) != NULL || b[0] != '/');
    if (bad || (kind == ANSWER_RESTAT && (out_size == 0 || out_size > STAT_SIZE_MAX))) {
        PyErr_SetString(PyExc_ValueError, "Answers: what to answer is not a stat's bytes or an absolute path");
        goto out;
    }
    if (key_of(values, mask, nr, key_path.len, key) < 0)
        goto out;
    size_t size = kind == ANSWER_WRITE ? n
                  : kind == ANSWER_OPEN ? sizeof(struct open_answer) + n + 1
                                        : sizeof(struct restat) + n + 1;
    char *data = kind == ANSWER_WRITE ? NULL : calloc(1, size);
    if (kind != ANSWER_WRITE && data == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    if (kind == ANSWER_OPEN) {
        struct open_answer *o = (struct open_answer *)data;
        o->base = base;
        o->end = end;
        o->content = content;
        memcpy(o->path, b, n);
    } else if (kind == ANSWER_RESTAT) {
        struct restat *r = (struct restat *)data;
        r->out_size = out_size;
        memcpy(r->path, b, n);
    }
    int failed = answer_store(a, nr, key, key_path.buf, (size_t)key_path.len, kind, 0,
                              data != NULL ? data : b, size);
    free(data);
    if (!failed) {
        result = Py_None;
        Py_INCREF(result);
    }
out:
    PyBuffer_Release(&key_path);
    PyBuffer_Release(&blob);
    return result;
}

static PyObject *answers_remember_open(Answers *a, PyObject *args)
{
    return remember_blob(a, args, ANSWER_OPEN);
}

static PyObject *answers_remember_write(Answers *a, PyObject *args)
{
    return remember_blob(a, args, ANSWER_WRITE);
}

static PyObject *answers_remember_restat(Answers *a, PyObject *args)
{
    return remember_blob(a, args, ANSWER_RESTAT);
}

static PyObject *answers_remember_stat(Answers *a, PyObject *args)
{
    Py_buffer target, data;
    uint64_t key[6] = {0};
    if (!PyArg_ParseTuple(args, "y*y*", &target, &data))
        return NULL;
    PyObject *result = NULL;
    if (target.len == 0 || target.len >= PATH_LIMIT || data.len == 0 || data.len > STAT_SIZE_MAX) {
        PyErr_SetString(PyExc_ValueError, "Answers.remember_stat: a target and a struct stat");
    } else if (answer_store(a, FD_KEY, key, target.buf, (size_t)target.len, ANSWER_WRITE, 0, data.buf,
                            (size_t)data.len) == 0) {
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&target);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *answers_get_stat(Answers *a, PyObject *args)
{
    Py_buffer target;
    uint64_t key[6] = {0};
    if (!PyArg_ParseTuple(args, "y*", &target))
        return NULL;
    struct answer *s = answer_find(a, FD_KEY, key, target.buf, (size_t)target.len,
                                   answer_hash(FD_KEY, key, target.buf, (size_t)target.len));
    PyBuffer_Release(&target);
    if (s->hash == 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(s->data, s->data_len);
}

static PyObject *answers_get(Answers *a, PyObject *args)
{
    int nr;
    uint64_t key[6];
    Py_buffer path;
    if (answer_key(args, &nr, key, &path, NULL) < 0)
        return NULL;
    uint64_t h = answer_hash(nr, key, path.buf, (size_t)path.len);
    struct answer *s = answer_find(a, nr, key, path.buf, (size_t)path.len, h);
    PyBuffer_Release(&path);
    return PyLong_FromLong(s->hash && s->kind == ANSWER_ERRNO ? s->err : 0);
}

static PyObject *answers_len(Answers *a, PyObject *unused)
{
    (void)unused;
    return PyLong_FromSize_t(a->used);
}

static PyMethodDef answers_methods[] = {
    {"remember", (PyCFunction)answers_remember, METH_VARARGS,
     "remember(nr, args, mask, path, errno): answer -errno to this call from now on (args: its 6\n"
     "arguments; mask: which of them are part of the key).  Only from the thread that runs serve()."},
    {"get", (PyCFunction)answers_get, METH_VARARGS, "get(nr, args, mask, path) -> the errno remembered, or 0."},
    {"remember_open", (PyCFunction)answers_remember_open, METH_VARARGS,
     "remember_open(nr, args, mask, key, path, base, end, content): open path for this call from\n"
     "now on and hand the fd over (at a free number from base below end; base 0: the lowest).\n"
     "key: the absolute path, or a shadow directory fd's target, NUL, the relative path (the\n"
     "dirfd then not in mask).  Only from the thread that runs serve()."},
    {"remember_write", (PyCFunction)answers_remember_write, METH_VARARGS,
     "remember_write(nr, args, mask, key, data): write data into the call's buffer and answer 0\n"
     "for this call with this key from now on (a struct stat).  Only from serve()'s thread."},
    {"remember_restat", (PyCFunction)answers_remember_restat, METH_VARARGS,
     "remember_restat(nr, args, mask, key, path, out_size): make the call here on path instead\n"
     "(a shadow directory's stat) and copy its out_size bytes of answer over, from now on."},
    {"remember_stat", (PyCFunction)answers_remember_stat, METH_VARARGS,
     "remember_stat(target, data): write data (a struct stat) for an fstat of an fd that links to\n"
     "target in /proc, and answer 0.  Only from the thread that runs serve()."},
    {"get_stat", (PyCFunction)answers_get_stat, METH_VARARGS,
     "get_stat(target) -> the struct stat remembered for it, or None."},
    {"size", (PyCFunction)answers_len, METH_NOARGS, "size() -> how many answers are remembered."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AnswersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "interposer._fastnotify.Answers",
    .tp_basicsize = sizeof(Answers),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Errno answers serve() gives again without Python (see remember()).",
    .tp_new = answers_new,
    .tp_dealloc = (destructor)answers_dealloc,
    .tp_methods = answers_methods,
};

/* ---- fds handed over: the mechanics of notify.Supervisor._hand_over and _free_fd -------------- */

#define IOCTL_ADDFD 0x40182103UL
#define ADDFD_FLAG_SETFD 1U
#define ADDFD_FLAG_SEND 2U
#define KCMP_FILE 0
#define MASK_BYTES 1024 /* 8192 CPUs, as cpu_pin.MASK_BYTES */

struct addfd {
    uint64_t id;
    uint32_t flags;
    uint32_t srcfd;
    uint32_t newfd;
    uint32_t newfd_flags;
};

/* Whether the job's fd n is open: 1, 0, or -1 when the job is gone. *kcmp says whether kcmp
 * can be used (cleared, for good, when the kernel refuses it: then /proc/TID/fd/N is asked). */
static int fd_used(pid_t tid, int n, int ours, int *kcmp)
{
    if (*kcmp) {
        if (syscall(SYS_kcmp, tid, getpid(), KCMP_FILE, n, ours) >= 0)
            return 1;
        if (errno == EBADF)
            return 0;
        if (errno == ESRCH)
            return -1;
        *kcmp = 0;
    }
    char link[64];
    struct stat st;
    snprintf(link, sizeof(link), "/proc/%d/fd/%d", (int)tid, n);
    if (lstat(link, &st) == 0)
        return 1;
    return errno == ENOENT ? 0 : -1;
}

PyDoc_STRVAR(first_free_doc,
"first_free(tid, ours, start, base, end, kcmp) -> (number or -1, kcmp)\n\n"
"notify._first_free with the job's fds probed here (kcmp against our fd ours, else\n"
"/proc/TID/fd/N): from start to end, then from base to start, then 1024 above end.  -1: none\n"
"free, or the job is gone.  kcmp comes back False once the kernel refused it.");

/* The search of first_free() (no GIL needed): a free number, or -1. */
static int search_free(pid_t tid, int ours, int start, int base, int end, int *kcmp)
{
    if (end < start)
        end = start;
    int ranges[3][2] = {{start, end}, {base, start}, {end, end + 1024}};
    for (int r = 0; r < 3; r++) {
        for (int n = ranges[r][0]; n < ranges[r][1]; n++) {
            int state = fd_used(tid, n, ours, kcmp);
            if (state != 1)
                return state == 0 ? n : -1;
        }
    }
    return -1;
}

static PyObject *first_free(PyObject *self, PyObject *args)
{
    int tid, ours, start, base, end, kcmp, found;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiiiip", &tid, &ours, &start, &base, &end, &kcmp))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    found = search_free((pid_t)tid, ours, start, base, end, &kcmp);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("iO", found, kcmp ? Py_True : Py_False);
}

/* Move tid (waiting in a notified call) to this thread's CPU; saved gets its mask. 1 if done. */
static int pin(pid_t tid, unsigned char *saved)
{
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= MASK_BYTES * 8)
        return 0;
    if (syscall(SYS_sched_getaffinity, tid, MASK_BYTES, saved) < 0)
        return 0;
    if (!(saved[cpu / 8] >> (cpu % 8) & 1))
        return 0; /* the job may not run here: it chose its CPUs, leave them */
    unsigned char one[MASK_BYTES] = {0};
    one[cpu / 8] = (unsigned char)(1U << (cpu % 8));
    return syscall(SYS_sched_setaffinity, tid, MASK_BYTES, one) == 0;
}

PyDoc_STRVAR(hand_over_doc,
"hand_over(listener, notif_id, tid, fd, target, cloexec, pin) -> (value, error, flags, unpin_errno)\n\n"
"notify.Supervisor._hand_over: give our fd to the waiting call notif_id, at target (-1: the\n"
"lowest free number), the job thread moved to this CPU meanwhile when pin (cpu_pin.py).\n"
"(value, error, flags) as _answer returns them (flags -1: answered with the fd already);\n"
"unpin_errno: why the thread's own CPU mask could not be put back, or 0.");

/* The hand-over itself (no GIL needed): *value and *error as the call's answer, or 1 returned
 * when the answer went with the fd already (or the call is gone); *unpin_errno as documented. */
static int give_fd(int listener, uint64_t notif_id, pid_t tid, int fd, int target, int cloexec,
                   int want_pin, long long *value, int *error, int *unpin_errno)
{
    unsigned char saved[MASK_BYTES] = {0}; /* the kernel fills only its own mask's bytes */
    int pinned = want_pin && pin(tid, saved), responded = 0;
    *value = 0;
    *error = 0;
    *unpin_errno = 0;
    for (;;) {
        struct addfd a = {
            notif_id, (pinned ? 0 : ADDFD_FLAG_SEND) | (target >= 0 ? ADDFD_FLAG_SETFD : 0),
            (uint32_t)fd, target >= 0 ? (uint32_t)target : 0, cloexec ? O_CLOEXEC : 0,
        };
        int installed = ioctl(listener, IOCTL_ADDFD, &a);
        if (installed >= 0) {
            if (pinned)
                *value = installed;
            else
                responded = 1;
            break;
        }
        int err = errno;
        if (err == ENOENT) { /* the call was interrupted meanwhile: nothing to answer */
            responded = 1;
            break;
        }
        if (target < 0 || (err != EBADF && err != EMFILE && err != EINVAL)) {
            *error = -err; /* EMFILE and the like: the job's call fails with it */
            break;
        }
        target = -1; /* a number the job cannot have (its RLIMIT_NOFILE): the lowest free one */
    }
    if (pinned && syscall(SYS_sched_setaffinity, tid, MASK_BYTES, saved) < 0 && errno != ESRCH)
        *unpin_errno = errno;
    return responded;
}

static PyObject *hand_over(PyObject *self, PyObject *args)
{
    int listener, tid, fd, target, cloexec, want_pin;
    unsigned long long notif_id;
    (void)self;
    if (!PyArg_ParseTuple(args, "iKiiipp", &listener, &notif_id, &tid, &fd, &target, &cloexec, &want_pin))
        return NULL;
    long long value;
    int error, unpin_errno, responded;
    Py_BEGIN_ALLOW_THREADS
    responded = give_fd(listener, notif_id, (pid_t)tid, fd, target, cloexec, want_pin, &value, &error,
                        &unpin_errno);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("Liii", value, error, responded ? -1 : 0, unpin_errno);
}


/* Supervisor._free_fd for a reserved range [base, end): after the number handed last in it to
 * this thread (per process in Python: only where the search starts differs), wrapping, then
 * above the range.  -1: none, or the job is gone. */
static int free_in_range(Answers *a, pid_t tid, int listener, int base, int end, int *kcmp)
{
    struct cursor *cur = &a->cursors[((unsigned)tid * 31u + (unsigned)base) % CURSORS];
    int start = cur->tid == (int)tid && cur->base == base ? cur->next : base;
    int found = search_free(tid, listener, start, base, end, kcmp);
    if (found >= 0 && found < end) {
        cur->tid = (int)tid;
        cur->base = base;
        cur->next = found + 1 < end ? found + 1 : base;
    }
    return found;
}

/* Hand our fd over as the answer to n (at target, or the lowest free number when -1), then
 * close it. 1: answered already; else the answer is in resp. */
static int hand_back(int listener, const struct notif *n, int fd, int target, int cloexec,
                     struct notif_resp *resp)
{
    long long value;
    int error, unpin_errno;
    int responded = give_fd(listener, n->id, (pid_t)n->pid, fd, target, cloexec, 1, &value, &error,
                            &unpin_errno);
    close(fd);
    resp->val = value;
    resp->error = error;
    return responded;
}

/* A remembered open (notify.Supervisor._open_here for a shadow path): open o->path here, hand
 * the fd over at a free number of its range, as Python would. 1: answered already; else resp. */
static int open_here(int listener, const struct notif *n, const unsigned char *table,
                     const struct open_answer *o, Answers *answers, int *kcmp, struct notif_resp *resp)
{
    const struct notif_data *d = &n->data;
    unsigned flags_arg = table[TABLE_STRIDE * d->nr + 1];
    int flags = (int)(uint32_t)d->args[flags_arg - 1];
    int blocking = !(flags & (O_NONBLOCK | O_PATH)) && !o->content;
    int local = (flags & ~O_CLOEXEC) | O_CLOEXEC | O_NOCTTY | (blocking ? O_NONBLOCK : 0);
    int fd = open(o->path, local, 0);
    if (fd < 0) {
        resp->error = -errno;
        return 0;
    }
    if (blocking)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    int target = o->base > 0 ? free_in_range(answers, (pid_t)n->pid, listener, o->base, o->end, kcmp) : -1;
    return hand_back(listener, n, fd, target, flags & O_CLOEXEC, resp);
}

/* ---- serve ---------------------------------------------------------------------------------- */

struct config {
    uint32_t arch;
    /* per syscall number, TABLE_STRIDE bytes: its path argument + 1; for an open its flags
     * argument + 1; the arguments (bits) keying a remembered errno; for an fstat-like call its
     * fd argument + 1, its buffer argument + 1 and its AT_* flags argument + 1; its dirfd
     * argument + 1 (a path relative to it is keyed by what the dirfd links to) */
    const unsigned char *table;
    Answers *answers;
    const char *prefixes;
    size_t prefixes_len;
    const char *never;          /* exact paths an open must not pass (/etc/mtab) */
    size_t never_len;
    unsigned long directory_flag; /* opens with this flag go to Python (0: none do) */
    unsigned long empty_path;     /* AT_EMPTY_PATH: with an empty path, a call is an fstat */
    unsigned long stat_flags;     /* the AT_* flags an fstat-like call may have (else: Python) */
    int dup_nr, fcntl_nr;         /* copies of reserved fds stay in their range */
    int content, dirs, top;       /* the reserved fd ranges (seccomp.FdRanges; top 0: none) */
};

enum { PYTHON = 0, CONTINUE = 1, ERRNO = 2, WRITE = 3, OPEN = 4, DUP = 5, RESTAT = 6 };

struct verdict {
    int kind;         /* PYTHON, CONTINUE, ERRNO, WRITE, OPEN, DUP, RESTAT; or MEMORY_REFUSED */
    int err;          /* ERRNO: the errno */
    int fd, minimum, cloexec; /* DUP: the job's fd, the copy's least number, its FD_CLOEXEC */
    const char *data; /* WRITE: what to write, where; OPEN: a struct open_answer */
    uint32_t len;
    uint64_t buf;
};

/* An fstat of a content fd whose struct stat is remembered: WRITE; else PYTHON. */
static int fd_stat(const struct config *c, const struct notif *n, const unsigned char *t,
                   char *target, struct verdict *v)
{
    const struct notif_data *d = &n->data;
    if (t[4] == 0 || t[4] > 6 || t[3] > 6 || c->answers == NULL || c->answers->used == 0)
        return PYTHON;
    if (t[5] != 0 && (t[5] > 6 || d->args[t[5] - 1] & ~c->stat_flags))
        return PYTHON;
    char link[64];
    snprintf(link, sizeof(link), "/proc/%u/fd/%d", n->pid, (int)(uint32_t)d->args[t[3] - 1]);
    ssize_t len = readlink(link, target, PATH_LIMIT);
    if (len <= 0 || len >= PATH_LIMIT)
        return PYTHON;
    uint64_t key[6] = {0};
    struct answer *s = answer_find(c->answers, FD_KEY, key, target, (size_t)len,
                                   answer_hash(FD_KEY, key, target, (size_t)len));
    if (s->hash == 0)
        return PYTHON;
    v->data = s->data;
    v->len = s->data_len;
    v->buf = d->args[t[4] - 1];
    return WRITE;
}

/* A remembered answer for this call and key path (drop: an argument bit left out of the key). */
static int remembered(const struct config *c, const struct notif_data *d, const unsigned char *t,
                      const char *key_path, size_t len, unsigned drop, struct verdict *v)
{
    if (c->answers == NULL || c->answers->used == 0)
        return PYTHON;
    uint64_t key[6];
    key_args(d->args, t[2] & ~drop, key);
    struct answer *s = answer_find(c->answers, d->nr, key, key_path, len,
                                   answer_hash(d->nr, key, key_path, len));
    if (s->hash == 0)
        return PYTHON;
    v->data = s->data;
    v->len = s->data_len;
    switch (s->kind) {
    case ANSWER_ERRNO:
        v->err = s->err;
        return v->kind = ERRNO;
    case ANSWER_OPEN:
        return v->kind = t[1] != 0 && s->data_len >= sizeof(struct open_answer) ? OPEN : PYTHON;
    case ANSWER_WRITE:
    case ANSWER_RESTAT:
        if (t[4] == 0 || t[4] > 6)
            return PYTHON;
        v->buf = d->args[t[4] - 1];
        return v->kind = s->kind == ANSWER_WRITE ? WRITE : RESTAT;
    }
    return PYTHON;
}

/* Supervisor._run_here for a remembered stat: the call made here on the shadow path, its
 * answer copied into the job's buffer. 0, or MEMORY_REFUSED (the copy is Python's). */
static int restat_here(const struct notif *n, const unsigned char *t, const struct verdict *v,
                       struct notif_resp *resp)
{
    const struct restat *r = (const struct restat *)v->data;
    char out[STAT_SIZE_MAX];
    uint64_t a[6];
    memcpy(a, n->data.args, sizeof(a));
    a[t[0] - 1] = (uint64_t)(uintptr_t)r->path;
    a[t[4] - 1] = (uint64_t)(uintptr_t)out;
    long res = syscall(n->data.nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (res < 0) {
        resp->error = -errno;
        return 0;
    }
    struct iovec local = {out, r->out_size};
    struct iovec remote = {(void *)(uintptr_t)v->buf, r->out_size};
    ssize_t wrote = process_vm_writev((pid_t)n->pid, &local, 1, &remote, 1, 0);
    if (wrote < 0 && (errno == EPERM || errno == ENOSYS))
        return MEMORY_REFUSED;
    if (wrote != (ssize_t)r->out_size)
        resp->error = -EFAULT;
    else
        resp->val = res;
    return 0;
}

/* What to do with notification n (path: room for 3 paths); v->kind, also returned. */
static int decide(const struct config *c, const struct notif *n, char *path, struct verdict *v)
{
    const struct notif_data *d = &n->data;
    v->kind = PYTHON;
    if (d->arch != c->arch || d->nr < 0 || d->nr >= TABLE_NRS)
        return PYTHON;
    if ((d->nr == c->dup_nr || d->nr == c->fcntl_nr) && c->top > 0) {
        /* Translator._dup: a copy of a reserved fd stays in its range */
        int fd = (int)(uint32_t)d->args[0];
        if (fd < c->content || fd >= c->top)
            return PYTHON;
        int base = fd < c->dirs ? c->content : c->dirs, cmd = F_DUPFD, minimum = base;
        if (d->nr == c->fcntl_nr) {
            cmd = (int)(uint32_t)d->args[1];
            if (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC)
                return PYTHON;
            minimum = (int)(uint32_t)d->args[2] > base ? (int)(uint32_t)d->args[2] : base;
        }
        v->fd = fd;
        v->minimum = minimum;
        v->cloexec = cmd == F_DUPFD_CLOEXEC;
        return v->kind = DUP;
    }
    const unsigned char *t = &c->table[TABLE_STRIDE * d->nr];
    unsigned path_arg = t[0], flags_arg = t[1];
    if (path_arg > 6 || flags_arg > 6)
        return PYTHON;
    if (path_arg == 0) /* fstat */
        return v->kind = t[3] ? fd_stat(c, n, t, path, v) : PYTHON;
    int is_open = flags_arg != 0;
    size_t len = 0;
    int err = read_path((pid_t)n->pid, d->args[path_arg - 1], path, &len);
    if (err == -EPERM || err == -ENOSYS)
        return v->kind = MEMORY_REFUSED;
    if (err != 0)
        return PYTHON;
    if (len == 0) { /* newfstatat(fd, "", buf, AT_EMPTY_PATH): an fstat */
        if (t[3] == 0 || t[5] == 0 || !(d->args[t[5] - 1] & c->empty_path))
            return PYTHON;
        return v->kind = fd_stat(c, n, t, path, v);
    }
    if (path[0] != '/') { /* relative to a dirfd: keyed by its target, NUL, the path */
        if (t[6] == 0 || t[6] > 6 || (int32_t)d->args[t[6] - 1] == -100 /* AT_FDCWD */)
            return PYTHON;
        if (c->answers == NULL || c->answers->used == 0)
            return PYTHON;
        char link[64];
        snprintf(link, sizeof(link), "/proc/%u/fd/%d", n->pid, (int)(uint32_t)d->args[t[6] - 1]);
        char *key_path = path + len + 1; /* "target", NUL, the relative path */
        ssize_t k = readlink(link, key_path, PATH_LIMIT - 1);
        if (k <= 0 || k >= PATH_LIMIT - 1)
            return PYTHON;
        key_path[k] = 0;
        memcpy(key_path + k + 1, path, len);
        return remembered(c, d, t, key_path, (size_t)k + 1 + len, 1u << (t[6] - 1), v);
    }
    if (memmem(path, len, "cvmfs", 5) != NULL)
        return remembered(c, d, t, path, len, 0, v);
    if (is_open && (d->args[flags_arg - 1] & c->directory_flag))
        return PYTHON; /* a host directory: Python moves its fd into the reserved range */
    if (!has_prefix(path, len, c->prefixes, c->prefixes_len))
        return PYTHON;
    if (is_open && is_one_of(path, len, c->never, c->never_len))
        return PYTHON;
    return v->kind = CONTINUE;
}

#define NO_PIDFD (-100000) /* take_fd: no pidfd for this thread here (Python knows its process) */

/* A copy, in this process, of the job's fd (pidfd_getfd through a pidfd kept per process), or a
 * negative errno; NO_PIDFD when tid leads no thread group (pidfd_open refuses a thread's id). */
static int take_fd(Answers *a, pid_t tid, int fd)
{
    struct pidfd *p = &a->pidfds[(unsigned)tid % PIDFDS];
    for (int attempt = 0; attempt < 2; attempt++) {
        if (p->fd <= 0 || p->pid != tid) {
            if (p->fd > 0)
                close(p->fd);
            p->fd = 0;
            int pidfd = (int)syscall(SYS_pidfd_open, tid, 0);
            if (pidfd < 0)
                return NO_PIDFD;
            p->pid = tid;
            p->fd = pidfd;
        }
        int mine = (int)syscall(SYS_pidfd_getfd, p->fd, fd, 0);
        if (mine >= 0)
            return mine;
        if (errno != ESRCH)
            return -errno;
        close(p->fd); /* a process of that pid that is gone: open it again, once */
        p->fd = 0;
    }
    return -ESRCH;
}

/* Supervisor._dup_here: the copy at a free number at or above the minimum, handed over with the
 * answer. 1: answered already; -1: Python's (no pidfd for this thread here); else resp. */
static int dup_here(int listener, const struct notif *n, const struct config *c, const struct verdict *v,
                    int *kcmp, struct notif_resp *resp)
{
    int mine = take_fd(c->answers, (pid_t)n->pid, v->fd);
    if (mine == NO_PIDFD)
        return -1;
    if (mine < 0) {
        resp->error = mine;
        return 0;
    }
    int end = v->minimum == c->content ? c->dirs : v->minimum == c->dirs ? c->top : 0;
    int target = end ? free_in_range(c->answers, (pid_t)n->pid, listener, v->minimum, end, kcmp)
                     : search_free((pid_t)n->pid, listener, v->minimum, v->minimum, v->minimum, kcmp);
    return hand_back(listener, n, mine, target, v->cloexec, resp);
}

PyDoc_STRVAR(serve_doc,
"serve(listener, request, table, prefixes, never, directory_flag, empty_path, stat_flags, arch,\n"
"      (dup_nr, fcntl_nr), (content, dirs, top), answers, counts) -> int\n\n"
"Receive notifications on listener and continue every one the configuration lets through,\n"
"or answer it from answers (an Answers, or None), counting them per syscall number in counts\n"
"(unsigned 64-bit, one per number of table: continued, then answered with an errno, with a\n"
"struct stat, with an fd).\n"
"Returns 0 with the first other notification in request (struct seccomp_notif), -1 the\n"
"same when the job's memory could not be read from this process, or the errno RECV\n"
"failed with.  Raises OSError when SEND fails other than with ENOENT (call interrupted).");

static PyObject *serve(PyObject *self, PyObject *args)
{
    int listener, dup_nr, fcntl_nr, content, dirs, top;
    unsigned long directory_flag, empty_path, stat_flags, arch;
    PyObject *answers;
    Py_buffer request, table, prefixes, never, counts;
    (void)self;
    if (!PyArg_ParseTuple(args, "iw*y*y*y*kkkk(ii)(iii)Ow*", &listener, &request, &table, &prefixes,
                          &never, &directory_flag, &empty_path, &stat_flags, &arch, &dup_nr, &fcntl_nr,
                          &content, &dirs, &top, &answers, &counts))
        return NULL;
    PyObject *result = NULL;
    if (request.len < (Py_ssize_t)sizeof(struct notif) || table.len != TABLE_STRIDE * TABLE_NRS ||
        counts.len != (Py_ssize_t)(4 * 8 * TABLE_NRS)) {
        PyErr_SetString(PyExc_ValueError, "serve: buffer sizes do not match");
        goto out;
    }
    if (answers != Py_None && !PyObject_TypeCheck(answers, &AnswersType)) {
        PyErr_SetString(PyExc_TypeError, "serve: answers must be an Answers or None");
        goto out;
    }
    struct config c = {
        (uint32_t)arch, table.buf, answers == Py_None ? NULL : (Answers *)answers, prefixes.buf,
        (size_t)prefixes.len, never.buf, (size_t)never.len, directory_flag, empty_path, stat_flags,
        dup_nr, fcntl_nr, content, dirs, answers == Py_None ? 0 : top,
    };
    struct notif *n = request.buf;
    uint64_t *count = counts.buf;
    int code = 0, send_errno = 0;
    char path[3 * PATH_LIMIT];
    int kcmp = 1;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        memset(n, 0, sizeof(*n)); /* RECV wants a zeroed struct */
        if (ioctl(listener, IOCTL_RECV, n) < 0) {
            code = errno;
            break;
        }
        struct verdict v;
        decide(&c, n, path, &v);
        if (v.kind == PYTHON || v.kind == MEMORY_REFUSED) {
            code = v.kind;
            break;
        }
        /* an errno answer changes nothing in the job: no ID_VALID check (a stale one is refused) */
        struct notif_resp resp = {n->id, 0, 0, 0};
        if (v.kind == OPEN || v.kind == DUP) {
            if (ioctl(listener, IOCTL_ID_VALID, &n->id) < 0)
                continue; /* gone: its tid may be another process's by now */
            int responded = v.kind == OPEN ? open_here(listener, n, c.table, (const struct open_answer *)v.data,
                                                       c.answers, &kcmp, &resp)
                                           : dup_here(listener, n, &c, &v, &kcmp, &resp);
            if (responded < 0) {
                code = PYTHON; /* req holds it: Python's */
                break;
            }
            count[n->data.nr + 3 * TABLE_NRS] += 1;
            if (responded)
                continue;
        } else if (v.kind == RESTAT) {
            if (ioctl(listener, IOCTL_ID_VALID, &n->id) < 0)
                continue;
            if (restat_here(n, &c.table[TABLE_STRIDE * n->data.nr], &v, &resp) == MEMORY_REFUSED) {
                code = MEMORY_REFUSED;
                break;
            }
            count[n->data.nr + 3 * TABLE_NRS] += 1;
        } else if (v.kind == CONTINUE) {
            resp.flags = FLAG_CONTINUE;
        } else if (v.kind == ERRNO) {
            resp.error = -v.err;
        } else {
            /* as Python: write into the job only while the call still waits (its tid may be
             * another process's by now), and EFAULT when the buffer is not writable */
            if (ioctl(listener, IOCTL_ID_VALID, &n->id) < 0)
                continue;
            struct iovec local = {(void *)v.data, v.len};
            struct iovec remote = {(void *)(uintptr_t)v.buf, v.len};
            ssize_t wrote = process_vm_writev((pid_t)n->pid, &local, 1, &remote, 1, 0);
            if (wrote < 0 && (errno == EPERM || errno == ENOSYS)) {
                code = MEMORY_REFUSED; /* a profile refusing it: Python writes through /proc */
                break;
            }
            if (wrote != (ssize_t)v.len)
                resp.error = -EFAULT;
        }
        if (ioctl(listener, IOCTL_SEND, &resp) < 0 && errno != ENOENT) {
            send_errno = errno; /* ENOENT: interrupted by a signal meanwhile, it restarts */
            break;
        }
        if (v.kind != OPEN && v.kind != DUP && v.kind != RESTAT)
            count[n->data.nr + (v.kind - 1) * TABLE_NRS] += 1;
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
    {"first_free", first_free, METH_VARARGS, first_free_doc},
    {"hand_over", hand_over, METH_VARARGS, hand_over_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastnotify",
    "The seccomp supervisor's fast path for host paths (see notify.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastnotify(void)
{
    if (PyType_Ready(&AnswersType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&AnswersType);
    if (PyModule_AddObject(m, "Answers", (PyObject *)&AnswersType) < 0) {
        Py_DECREF(&AnswersType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "TABLE_NRS", TABLE_NRS) < 0 ||
        PyModule_AddIntConstant(m, "TABLE_STRIDE", TABLE_STRIDE) < 0 ||
        PyModule_AddIntConstant(m, "MEMORY_REFUSED", MEMORY_REFUSED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
