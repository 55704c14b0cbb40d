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
 * And it answers the first use of a /cvmfs entry where the shadow tree of the job's revision
 * holds the answer already (first_walk): a placeholder's stat, linked content or a populated
 * directory opened and handed over, ENOENT in a populated directory; and it lets through host
 * paths outside the system roots after the translator's own symlink check (host_link_none).
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
#define STATX_BYTES 256  /* sizeof(struct statx), statx.STATX_SIZE */
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

#define MAX_LINKS 40 /* as the kernel, vfs.host_link_into_cvmfs and translate.MAX_SYMLINKS */

/* Whether vfs.host_link_into_cvmfs(path) is None: walked on the host as the kernel walks it
 * (".." after symlinks, MAX_LINKS links at most), path never enters /cvmfs, or cannot be walked. */
static int walk_stays_out(const char *path, size_t len)
{
    char done[PATH_LIMIT], here[PATH_LIMIT], target[PATH_LIMIT], rest[2 * PATH_LIMIT], next[2 * PATH_LIMIT];
    size_t done_len = 0, rest_len = len, pos = 0;
    int links = 0;
    if (len >= sizeof(rest))
        return 0;
    memcpy(rest, path, len);
    for (;;) {
        while (pos < rest_len && rest[pos] == '/')
            pos++;
        if (pos == rest_len)
            return 1;
        const char *c = rest + pos, *slash = memchr(c, '/', rest_len - pos);
        size_t k = slash != NULL ? (size_t)(slash - c) : rest_len - pos;
        pos += k;
        if (k == 1 && c[0] == '.')
            continue;
        if (k == 2 && c[0] == '.' && c[1] == '.') {
            const char *up = memrchr(done, '/', done_len);
            done_len = up != NULL ? (size_t)(up - done) : 0;
            continue;
        }
        if (done_len + 1 + k >= PATH_LIMIT)
            return 1; /* ENAMETOOLONG: cannot be walked */
        memcpy(here, done, done_len);
        here[done_len] = '/';
        memcpy(here + done_len + 1, c, k);
        size_t here_len = done_len + 1 + k;
        here[here_len] = 0;
        if (here_len == 6 && memcmp(here, "/cvmfs", 6) == 0)
            return 0;
        ssize_t got = readlink(here, target, sizeof(target) - 1);
        if (got < 0) {
            if (errno != EINVAL)
                return 1; /* missing, or not to be walked: the kernel's */
            memcpy(done, here, here_len);
            done_len = here_len;
            continue;
        }
        if (++links > MAX_LINKS)
            return 1;
        if (got > 0 && target[0] == '/')
            done_len = 0;
        if ((size_t)got + 1 + (rest_len - pos) >= sizeof(next))
            return 1;
        memcpy(next, target, (size_t)got); /* the link's components come next */
        next[got] = '/';
        memcpy(next + got + 1, rest + pos, rest_len - pos);
        rest_len = (size_t)got + 1 + (rest_len - pos);
        memcpy(rest, next, rest_len);
        pos = 0;
    }
}

/* Whether Translator._host_link_target(path) is None (the kernel finds what the job means),
 * by its steps: one readlink for most paths (there and not a link, or a link elsewhere), the
 * walk of walk_stays_out() for the others. */
static int host_link_none(const char *path, size_t len)
{
    char cur[PATH_LIMIT], target[PATH_LIMIT], next[PATH_LIMIT];
    if (len == 0 || len >= PATH_LIMIT)
        return 0;
    memcpy(cur, path, len);
    cur[len] = 0;
    for (int depth = 0;; depth++) {
        size_t n = len;
        while (n > 0 && cur[n - 1] == '/')
            n--;
        const char *last = n > 0 ? memrchr(cur, '/', n) : NULL;
        last = last != NULL ? last + 1 : cur;
        size_t k = (size_t)(cur + n - last);
        if (k == 0 || (last[0] == '.' && (k == 1 || (k == 2 && last[1] == '.'))))
            return walk_stays_out(cur, len);
        char saved = cur[n];
        cur[n] = 0; /* "sw/" makes the kernel follow sw itself: ask about sw */
        ssize_t got = readlink(cur, target, sizeof(target) - 1);
        int err = errno;
        cur[n] = saved;
        if (got < 0)
            return err != ENOENT && err != ENOTDIR ? 1 : walk_stays_out(cur, len);
        target[got] = 0;
        if (got > 0 && target[0] == '/')
            return !(got >= 6 && memcmp(target, "/cvmfs", 6) == 0) || walk_stays_out(cur, len);
        int dotdot = 0;
        for (const char *p = target; p < target + got;) {
            const char *e = memchr(p, '/', (size_t)(target + got - p));
            size_t m = e != NULL ? (size_t)(e - p) : (size_t)(target + got - p);
            dotdot |= m == 2 && p[0] == '.' && p[1] == '.';
            p += m + 1;
        }
        if (dotdot || depth >= MAX_LINKS)
            return walk_stays_out(cur, len);
        /* libfoo.so -> libfoo.so.1: the same directory, which the kernel resolved */
        size_t parent = (size_t)(last - cur) > 1 ? (size_t)(last - cur) - 1 : 1; /* dirname, or "/" */
        size_t tail = len - n; /* the trailing slashes */
        if (parent + 1 + (size_t)got + tail >= PATH_LIMIT)
            return 0;
        memcpy(next, cur, parent);
        next[parent] = '/';
        memcpy(next + parent + 1, target, (size_t)got);
        memcpy(next + parent + 1 + got, cur + n, tail);
        len = parent + 1 + (size_t)got + tail;
        memcpy(cur, next, len);
        cur[len] = 0;
    }
}

/* Translator._plain_host (with the open exceptions of Translator._open) for an absolute path
 * without "cvmfs": under a system root but a magic one; elsewhere (magic given) reaching no
 * /cvmfs through a host symlink (host_link_none). */
static int host_passes(const char *s, size_t n, const char *prefixes, size_t prefixes_len, const char *never,
                       size_t never_len, const char *magic, size_t magic_len, int is_open)
{
    if (is_open && is_one_of(s, n, never, never_len))
        return 0;
    if (has_prefix(s, n, prefixes, prefixes_len))
        return 1;
    if (magic == NULL || has_prefix(s, n, magic, magic_len))
        return 0;
    return host_link_none(s, n);
}

/* ---- MD5, for the names of shadow.ShadowTree's markers (done/<md5 of a directory's path>) --- */

static const uint32_t MD5_K[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};
static const unsigned char MD5_S[16] = {7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21};

static void md5_block(uint32_t h[4], const unsigned char *block)
{
    uint32_t w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] | (uint32_t)block[4 * i + 1] << 8 | (uint32_t)block[4 * i + 2] << 16 |
               (uint32_t)block[4 * i + 3] << 24;
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        switch (i / 16) {
        case 0: f = (b & c) | (~b & d); g = i; break;
        case 1: f = (d & b) | (~d & c); g = (5 * i + 1) % 16; break;
        case 2: f = b ^ c ^ d; g = (3 * i + 5) % 16; break;
        default: f = c ^ (b | ~d); g = (7 * i) % 16; break;
        }
        uint32_t sum = a + f + MD5_K[i] + w[g];
        unsigned r = MD5_S[(i / 16) * 4 + i % 4];
        a = d;
        d = c;
        c = b;
        b = b + (sum << r | sum >> (32 - r));
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
}

/* The MD5 of data as 32 lowercase hex digits and a NUL, as hashlib's hexdigest(). */
static void md5_hex(const char *data, size_t n, char out[33])
{
    uint32_t h[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
    unsigned char tail[128] = {0};
    size_t whole = n - n % 64;
    for (size_t i = 0; i < whole; i += 64)
        md5_block(h, (const unsigned char *)data + i);
    size_t rest = n - whole, tail_len = rest < 56 ? 64 : 128;
    memcpy(tail, data + whole, rest);
    tail[rest] = 0x80;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++)
        tail[tail_len - 8 + i] = (unsigned char)(bits >> (8 * i));
    for (size_t i = 0; i < tail_len; i += 64)
        md5_block(h, tail + i);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        unsigned char byte = (unsigned char)(h[i / 4] >> (8 * (i % 4)));
        out[2 * i] = hex[byte >> 4];
        out[2 * i + 1] = hex[byte & 15];
    }
    out[32] = 0;
}

PyDoc_STRVAR(md5_hex_doc, "md5_hex(data) -> str\n\nThe MD5 serve() names a shadow tree's markers with, for tests.");

static PyObject *py_md5_hex(PyObject *self, PyObject *args)
{
    Py_buffer data;
    char out[33];
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    md5_hex(data.buf, (size_t)data.len, out);
    PyBuffer_Release(&data);
    return PyUnicode_FromString(out);
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

#define TREES 64 /* the shadow trees of the repositories a job mounted: see first_walk() */
#define WALK_SIZE (8 * PATH_LIMIT) /* >= sizeof(struct walk), checked where it is defined */

#define LABELS 4      /* label names known per tree (translate._LSM_LABELS has two) */
#define LABEL_NAME 32 /* their longest name, NUL included */

struct tree {
    const char *logical; /* "/cvmfs/<fqrn>": the job's name for its root */
    const char *meta;    /* its m/ directory (placeholders), real path */
    const char *data;    /* its d/ directory (content) */
    const char *done;    /* its markers of populated directories */
    size_t logical_len, meta_len, data_len, done_len;
    char *strings;       /* the four, in one allocation */
    int nlabels;         /* a security module's labels no entry of the tree has: */
    char label_names[LABELS][LABEL_NAME];  /* their names (security.selinux...), */
    int label_errs[LABELS];                /* and the errno asking for one gets */
};

struct walk;

typedef struct {
    PyObject_HEAD
    struct answer *slots;
    size_t used;
    struct cursor cursors[CURSORS];
    struct pidfd pidfds[PIDFDS];
    struct tree trees[TREES];
    int ntrees;
    struct walk *walk; /* serve()'s room for the paths of first_walk() and host_relative() */
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
    a->walk = calloc(1, WALK_SIZE); /* zeroed: no marker kept yet (marker_names) */
    if (a->slots == NULL || a->walk == NULL) {
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
    for (int i = 0; i < a->ntrees; i++)
        free(a->trees[i].strings);
    free(a->walk);
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

/* Store (or replace) an answer: an errno, or data. 0, or -1 (out of memory); no GIL needed. */
static int answer_put(Answers *a, int nr, const uint64_t *key, const char *path, size_t len,
                      int kind, int err, const char *data, size_t data_len)
{
    if (2 * (a->used + 1) > ANSWER_SLOTS)
        answers_clear(a);
    uint64_t h = answer_hash(nr, key, path, len);
    struct answer *s = answer_find(a, nr, key, path, len, h);
    char *copy = malloc(len + data_len);
    if (copy == NULL)
        return -1;
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

/* answer_put, from Python: -1 with MemoryError set. */
static int answer_store(Answers *a, int nr, const uint64_t *key, const char *path, size_t len,
                        int kind, int err, const char *data, size_t data_len)
{
    if (answer_put(a, nr, key, path, len, kind, err, data, data_len) == 0)
        return 0;
    PyErr_NoMemory();
    return -1;
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

static PyObject *answers_add_tree(Answers *a, PyObject *args)
{
    Py_buffer b[4];
    unsigned stat_size;
    if (!PyArg_ParseTuple(args, "y*y*y*y*I", &b[0], &b[1], &b[2], &b[3], &stat_size))
        return NULL;
    PyObject *result = NULL;
    size_t total = 0;
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        const char *p = b[i].buf;
        bad |= b[i].len == 0 || b[i].len >= PATH_LIMIT / 2 || p[0] != '/' || p[b[i].len - 1] == '/' ||
               memchr(p, 0, (size_t)b[i].len) != NULL;
        total += (size_t)b[i].len + 1;
    }
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "Answers.add_tree: four absolute paths without a trailing /");
        goto out;
    }
    /* the rule writes the kernel's struct stat: only where it is the one Python packs */
    if (stat_size != sizeof(struct stat) || a->ntrees == TREES) {
        result = Py_False;
        Py_INCREF(result);
        goto out;
    }
    char *strings = malloc(total);
    if (strings == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    struct tree *t = &a->trees[a->ntrees];
    const char **fields[4] = {&t->logical, &t->meta, &t->data, &t->done};
    size_t *lens[4] = {&t->logical_len, &t->meta_len, &t->data_len, &t->done_len};
    char *at = strings;
    for (int i = 0; i < 4; i++) {
        memcpy(at, b[i].buf, (size_t)b[i].len);
        at[b[i].len] = 0;
        *fields[i] = at;
        *lens[i] = (size_t)b[i].len;
        at += b[i].len + 1;
    }
    t->strings = strings;
    a->ntrees++;
    result = Py_True;
    Py_INCREF(result);
out:
    for (int i = 0; i < 4; i++)
        PyBuffer_Release(&b[i]);
    return result;
}

static PyObject *answers_add_label(Answers *a, PyObject *args)
{
    const char *logical, *name;
    Py_ssize_t logical_len, name_len;
    int err;
    if (!PyArg_ParseTuple(args, "y#y#i", &logical, &logical_len, &name, &name_len, &err))
        return NULL;
    if (name_len == 0 || name_len >= LABEL_NAME || memchr(name, 0, (size_t)name_len) != NULL || err <= 0) {
        PyErr_SetString(PyExc_ValueError, "Answers.add_label: a name of 1 to 31 bytes, a positive errno");
        return NULL;
    }
    for (int i = 0; i < a->ntrees; i++) {
        struct tree *t = &a->trees[i];
        if (t->logical_len != (size_t)logical_len || memcmp(t->logical, logical, (size_t)logical_len) != 0)
            continue;
        int j = 0;
        while (j < t->nlabels && strcmp(t->label_names[j], name) != 0)
            j++;
        if (j == LABELS)
            Py_RETURN_FALSE;
        memcpy(t->label_names[j], name, (size_t)name_len);
        t->label_names[j][name_len] = 0;
        t->label_errs[j] = err;
        if (j == t->nlabels)
            t->nlabels++;
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *answers_len(Answers *a, PyObject *unused)
{
    (void)unused;
    return PyLong_FromSize_t(a->used);
}

static PyMethodDef answers_methods[] = {
    {"add_label", (PyCFunction)answers_add_label, METH_VARARGS,
     "add_label(logical, name, errno) -> bool: what asking an entry of the tree at logical (as\n"
     "add_tree named it) for a security module's label gets; False if no such tree, or no room."},
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
    {"add_tree", (PyCFunction)answers_add_tree, METH_VARARGS,
     "add_tree(logical, meta, data, done, stat_size) -> bool: a repository the job mounted (its\n"
     "name under /cvmfs; its shadow tree's m/, d/ and marker directories, real paths), whose\n"
     "populated entries serve() may then answer on their first use too (see first_walk in\n"
     "_fastnotify.c).  False: not taken (stat_size is not this build's struct stat, or too\n"
     "many trees).  Only from the thread that runs serve()."},
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

/* Open path here as the job asked (flags): a shadow directory, or content (never made
 * blocking), as notify.Supervisor._open_here does.  The fd, or a negative errno. */
static int open_local(const char *path, int flags, int content)
{
    int blocking = !(flags & (O_NONBLOCK | O_PATH)) && !content;
    int local = (flags & ~O_CLOEXEC) | O_CLOEXEC | O_NOCTTY | (blocking ? O_NONBLOCK : 0);
    int fd = open(path, local, 0);
    if (fd < 0)
        return -errno;
    if (blocking)
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

/* Hand fd over at a free number of [base, end) (base 0: the lowest free one), then close it.
 * 1: answered already; else resp. */
static int place_fd(int listener, const struct notif *n, int fd, int base, int end, int cloexec,
                    Answers *answers, int *kcmp, struct notif_resp *resp)
{
    int target = base > 0 ? free_in_range(answers, (pid_t)n->pid, listener, base, end, kcmp) : -1;
    return hand_back(listener, n, fd, target, cloexec, resp);
}

/* A remembered open (notify.Supervisor._open_here for a shadow path): open o->path here, hand
 * the fd over at a free number of its range, as Python would. 1: answered already; else resp. */
static int open_here(int listener, const struct notif *n, const unsigned char *table,
                     const struct open_answer *o, Answers *answers, int *kcmp, struct notif_resp *resp)
{
    const struct notif_data *d = &n->data;
    unsigned flags_arg = table[TABLE_STRIDE * d->nr + 1];
    int flags = (int)(uint32_t)d->args[flags_arg - 1];
    int fd = open_local(o->path, flags, o->content);
    if (fd < 0) {
        resp->error = fd;
        return 0;
    }
    return place_fd(listener, n, fd, o->base, o->end, flags & O_CLOEXEC, answers, kcmp, resp);
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
    const char *magic;          /* roots of magic links (/proc/, /dev/); NULL: other host paths
                                 * are Python's, else host_link_none() decides */
    size_t magic_len;
    const char *shadow;         /* where the shadow trees are (Namespace.base_prefix): a dirfd
                                 * elsewhere is a host directory */
    size_t shadow_len;
    unsigned long directory_flag; /* opens with this flag go to Python (0: none do) */
    unsigned long empty_path;     /* AT_EMPTY_PATH: with an empty path, a call is an fstat */
    unsigned long stat_flags;     /* the AT_* flags an fstat-like call may have (else: Python) */
    int dup_nr, fcntl_nr;         /* copies of reserved fds stay in their range */
    int getcwd_nr;                /* getcwd: the kernel answers outside the shadow trees */
    int getxattr_nr, lgetxattr_nr; /* (l)getxattr: ENODATA from a directory's marker */
    const char *xattr_python;     /* NUL-separated: the names Python answers (magic ones) */
    size_t xattr_python_len;
    const char *xattr_labels;     /* NUL-separated prefixes: a security module's labels */
    size_t xattr_labels_len;
    int content, dirs, top;       /* the reserved fd ranges (seccomp.FdRanges; top 0: none) */
    int statx_nr;                 /* statx (-1: none): its flags and mask arguments, what they */
    unsigned statx_flags_arg, statx_mask_arg; /* may hold for an answer from the tree, and the */
    unsigned long statx_flags, statx_mask;    /* mask the answer is made with (statx.ASKED) */
    struct walk *walk;            /* first_walk()'s room (the Answers'), or NULL */
};

enum { PYTHON = 0, CONTINUE = 1, ERRNO = 2, WRITE = 3, OPEN = 4, DUP = 5, RESTAT = 6, OPENED = 7 };
#define FOUND (-2) /* placeholder(): the entry's placeholder is there (not a verdict) */

struct verdict {
    int kind;         /* PYTHON, CONTINUE, ... OPENED; or MEMORY_REFUSED */
    int err;          /* ERRNO: the errno */
    int fd, minimum, cloexec; /* DUP: the job's fd, the copy's least number, its FD_CLOEXEC;
                               * OPENED: our fd, the range's first number (0: none) */
    int end;          /* OPENED: the range's end */
    const char *data; /* WRITE: what to write, where; OPEN: a struct open_answer; RESTAT: a
                       * struct restat; OPENED with a prime_key: the content's struct stat */
    uint32_t len;
    uint64_t buf;
    const char *prime_key; /* OPENED content: its d/ path, what an fstat of the fd finds */
    size_t prime_key_len;
    const char *opened;    /* OPENED: the path opened (content, or a shadow directory) */
    const char *key;       /* first_walk's answers: kept under this key (NULL: not kept) */
    size_t key_len;
    unsigned drop;         /* the argument left out of the key (a dirfd: its target is in it) */
    int walked;            /* answered by first_walk */
};

/* first_walk()'s room, kept by Answers: the answers it gives point into it */
struct walk {
    char inner[PATH_LIMIT];            /* the entry's path under m/ (and d/), from "/" */
    char mpath[PATH_LIMIT];            /* its placeholder */
    char dpath[PATH_LIMIT];            /* its content, or its directory's marker */
    _Alignas(8) char restat[sizeof(struct restat) + PATH_LIMIT];
    struct stat st;                    /* the placeholder's */
    _Alignas(8) char stx[STAT_SIZE_MAX]; /* its struct statx, for a statx */
    char xname[PATH_LIMIT];            /* an xattr's name, as read from the job */
    char marker[PATH_LIMIT];           /* the last marker read (marker_names), */
    char marker_of[PATH_LIMIT];        /* its path, */
    size_t marker_len;                 /* its length (0: none kept) */
};
_Static_assert(sizeof(struct walk) <= WALK_SIZE, "WALK_SIZE too small");

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

#ifndef RESOLVE_NO_SYMLINKS
#define RESOLVE_NO_SYMLINKS 0x04
#endif

/* lstat of path with no symlink followed on the way (openat2's RESOLVE_NO_SYMLINKS): 0, or -1
 * with errno (ELOOP for a symlink before the last component). */
static int lstat_no_links(const char *path, struct stat *st)
{
#ifdef SYS_openat2
    uint64_t how[3] = {O_PATH | O_NOFOLLOW | O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS};
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, how, sizeof(how));
    if (fd < 0)
        return -1;
    int failed = fstat(fd, st);
    int saved = errno;
    close(fd);
    errno = saved;
    return failed;
#else
    (void)path;
    (void)st;
    errno = ENOSYS;
    return -1;
#endif
}

/* out = a followed by b (lengths an, bn), NUL-terminated; the caller checked the room. */
static void join(char *out, const char *a, size_t an, const char *b, size_t bn)
{
    memcpy(out, a, an);
    memcpy(out + an, b, bn);
    out[an + bn] = 0;
}

/* The marker of directory inner[0:n] of tree tr, done/<md5 of the path>
 * (shadow.ShadowTree._marker), into w->dpath. */
static void marker_path(const struct tree *tr, const char *inner, size_t n, struct walk *w)
{
    char name[34];
    name[0] = '/';
    md5_hex(inner, n, name + 1);
    join(w->dpath, tr->done, tr->done_len, name, 33);
}

/* Whether directory inner[0:n] of tree tr is populated: its marker exists (in w->dpath). */
static int populated(const struct tree *tr, const char *inner, size_t n, struct walk *w)
{
    marker_path(tr, inner, n, w);
    return faccessat(AT_FDCWD, w->dpath, F_OK, 0) == 0;
}

/* Whether the entry inner (missing from m/) is missing from the revision: its nearest
 * ancestor in m/ is a populated directory (its marker exists), reached without a symlink.
 * Otherwise (an ancestor not populated yet, a symlink or a file on the way) the walk's. */
static int missing(const struct tree *tr, const char *inner, size_t inner_len, struct walk *w)
{
    struct stat st;
    size_t n = inner_len;
    for (int depth = 0; depth < 64; depth++) {
        const char *slash = memrchr(inner, '/', n);
        if (slash == NULL)
            return 0;
        n = (size_t)(slash - inner); /* the parent: inner[0:n], "" for the repository root */
        join(w->dpath, tr->meta, tr->meta_len, inner, n);
        if (lstat_no_links(w->dpath, &st) < 0) {
            if (errno == ENOENT)
                continue;
            return 0;
        }
        return S_ISDIR(st.st_mode) && populated(tr, inner, n, w);
    }
    return 0;
}

/* The placeholder of entry inner (m/ + inner, into w->mpath; its lstat into w->st): FOUND;
 * or, when there is none, ERRNO with ENOENT if the entry is missing from its populated
 * directory, else PYTHON (ELOOP: a symlink on the way, the walk's; a directory not populated
 * yet).  one_name: inner is one name in a directory reached without a symlink. */
static int placeholder(const struct tree *tr, const char *inner, size_t inner_len, int one_name, struct walk *w,
                       struct verdict *v)
{
    join(w->mpath, tr->meta, tr->meta_len, inner, inner_len);
    int found = one_name ? fstatat(AT_FDCWD, w->mpath, &w->st, AT_SYMLINK_NOFOLLOW) : lstat_no_links(w->mpath, &w->st);
    if (found == 0)
        return FOUND;
    if (errno != ENOENT || !missing(tr, inner, inner_len, w))
        return PYTHON;
    v->err = ENOENT;
    return v->kind = ERRNO;
}

/* (l)getxattr: their answers depend on the name asked, which no key of a kept answer holds. */
static int is_xattr_get(const struct config *c, int nr)
{
    return nr == c->getxattr_nr || nr == c->lgetxattr_nr;
}

/* Whether the marker in w->dpath is of the current format and names entry (length k) among
 * those with extended attributes in the catalog: 1, 0, or -1 when unknown (no marker, one of an
 * older format, or one too large to read here). */
static int marker_names(struct walk *w, const char *entry, size_t k)
{
    static const char format[] = "xattrs:"; /* shadow._MARKER_FORMAT */
    size_t f = sizeof(format) - 1;
    if (w->marker_len == 0 || strcmp(w->dpath, w->marker_of) != 0) {
        /* A marker of this format is written once, whole (ShadowTree._write_marker), and only
         * one of an older format is ever written again: the last one read is kept, as Python
         * keeps them (ShadowTree.xattr_names); ls -l asks every entry of one directory. */
        w->marker_len = 0;
        int fd = open(w->dpath, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -1;
        ssize_t got = read(fd, w->marker, sizeof(w->marker));
        close(fd);
        if (got < (ssize_t)f || got == (ssize_t)sizeof(w->marker) || memcmp(w->marker, format, f) != 0)
            return -1;
        w->marker_len = (size_t)got;
        strcpy(w->marker_of, w->dpath);
    }
    return is_one_of(entry, k, w->marker + f, w->marker_len - f);
}

/* (l)getxattr of an entry of tree tr (inner: as for walk_entry): ENODATA for a name that is
 * neither one Python answers (a magic one) nor a security module's label, when the marker of
 * the entry's directory does not name it among the entries with extended attributes
 * (Translator._xattr, Mount.entry_xattrs); ENOENT for an entry missing from its populated
 * directory.  Anything else (a named entry, a symlink getxattr follows, a label): Python's. */
static int xattr_entry(const struct config *c, const struct notif *n, const struct tree *tr,
                       const char *inner, size_t inner_len, int one_name, struct verdict *v)
{
    const struct notif_data *d = &n->data;
    struct walk *w = c->walk;
    size_t name_len = 0;
    if (read_path((pid_t)n->pid, d->args[1], w->xname, &name_len) != 0 || name_len == 0 || name_len > 255)
        return PYTHON; /* unreadable, ERANGE: Python says which */
    int label = 0; /* the errno a security module's label gets in this tree, if known */
    if (is_one_of(w->xname, name_len, c->xattr_python, c->xattr_python_len))
        return PYTHON;
    if (has_prefix(w->xname, name_len, c->xattr_labels, c->xattr_labels_len)) {
        for (int i = 0; i < tr->nlabels && label == 0; i++)
            if (strlen(tr->label_names[i]) == name_len && memcmp(tr->label_names[i], w->xname, name_len) == 0)
                label = tr->label_errs[i];
        if (label == 0)
            return PYTHON; /* not known yet, or the placeholder's (Translator._label) */
    }
    int missing_kind = placeholder(tr, inner, inner_len, one_name, w, v);
    if (missing_kind != FOUND)
        return missing_kind;
    if (S_ISLNK(w->st.st_mode) && d->nr == c->getxattr_nr)
        return PYTHON; /* followed: the walk's */
    if (label != 0) {
        v->err = label;
        return v->kind = ERRNO;
    }
    const char *slash = memrchr(inner, '/', inner_len);
    size_t parent = (size_t)(slash - inner);
    marker_path(tr, inner, parent, w);
    if (marker_names(w, slash + 1, inner_len - parent - 1) != 0)
        return PYTHON;
    v->err = ENODATA;
    return v->kind = ERRNO;
}

/* The first use of an entry of a mounted repository, whose shadow tree has it already (an
 * earlier job, or this one, populated its directory and linked its content): answered as the
 * translator would after its walk of the pinned revision, without the walk.  inner: the entry's
 * path under the tree's m/, from "/"; one_name: it is one name in a directory the job holds
 * an fd of (no symlink on the way there).  Only what the tree alone decides:
 *   - a stat (stat, lstat, newfstatat, statx) of anything but a symlink: the placeholder's
 *     struct stat or statx (Translator._stat_answer), or for a directory the call made on it
 *     here (the kernel's each time: populating a directory moves its ctime);
 *   - a read-only open of a regular file whose content is linked under d/: that opened and
 *     handed over in the content range, its fstat answer primed (Translator._open);
 *   - a read-only open of a populated directory (its marker exists): m/ opened and handed
 *     over in the directory range.
 *   - either, of an entry missing from its populated directory: ENOENT.
 * A symlink anywhere on the way (the walk expands them), ".", "..", a missing placeholder in
 * a directory not yet populated, content not yet fetched, or any other call: Python's. */
static int walk_entry(const struct config *c, const struct notif *n, const unsigned char *t,
                      const struct tree *tr, const char *inner, size_t inner_len, int one_name,
                      struct verdict *v)
{
    const struct notif_data *d = &n->data;
    struct walk *w = c->walk;
    int is_open = t[1] != 0, is_xattr = is_xattr_get(c, d->nr);
    if (w == NULL || (!is_open && !is_xattr && (t[4] == 0 || t[4] > 6)) || inner_len == 0 || inner[0] != '/')
        return PYTHON;
    if (tr->meta_len + inner_len >= PATH_LIMIT || tr->data_len + inner_len >= PATH_LIMIT ||
        tr->done_len + 34 >= PATH_LIMIT)
        return PYTHON;
    for (const char *p = inner, *stop = inner + inner_len; p < stop;) { /* p: at a '/' */
        const char *name = p + 1, *end = memchr(name, '/', (size_t)(stop - name));
        if (end == NULL)
            end = stop;
        size_t k = (size_t)(end - name);
        if (k == 0 || (name[0] == '.' && (k == 1 || (k == 2 && name[1] == '.'))))
            return PYTHON;
        p = end;
    }
    if (is_xattr)
        return xattr_entry(c, n, tr, inner, inner_len, one_name, v);
    int flags = 0, is_statx = d->nr == c->statx_nr;
    if (is_open) {
        flags = (int)(uint32_t)d->args[t[1] - 1];
        if ((flags & O_ACCMODE) != O_RDONLY || flags & (O_CREAT | O_TRUNC | O_PATH) ||
            (flags & O_TMPFILE) == O_TMPFILE)
            return PYTHON;
    } else if (is_statx) { /* Translator._stat_answer: flags and a mask it answers alone */
        if (d->args[c->statx_flags_arg] & ~c->statx_flags || d->args[c->statx_mask_arg] & ~c->statx_mask)
            return PYTHON;
    } else if (t[5] != 0 && (t[5] > 6 || d->args[t[5] - 1] & ~c->stat_flags)) {
        return PYTHON;
    }
    int missing_kind = placeholder(tr, inner, inner_len, one_name, w, v);
    if (missing_kind != FOUND)
        return missing_kind;
    mode_t type = w->st.st_mode & S_IFMT;
    if (type == S_IFLNK)
        return PYTHON;
    if (!is_open) {
        v->buf = d->args[t[4] - 1];
        if (type == S_IFDIR) {
            struct restat *r = (struct restat *)w->restat;
            r->out_size = is_statx ? STATX_BYTES : sizeof(struct stat);
            memcpy(r->path, w->mpath, tr->meta_len + inner_len + 1);
            v->data = w->restat;
            return v->kind = RESTAT;
        }
        if (is_statx) { /* statx.shadow_statx: the placeholder's, with the mask Python asks */
            if (syscall(SYS_statx, AT_FDCWD, w->mpath, AT_SYMLINK_NOFOLLOW, (unsigned)c->statx_mask, w->stx) != 0)
                return PYTHON;
            v->data = w->stx;
            v->len = STATX_BYTES;
            return v->kind = WRITE;
        }
        v->data = (const char *)&w->st;
        v->len = sizeof(struct stat);
        return v->kind = WRITE;
    }
    int fd;
    v->prime_key = NULL;
    v->prime_key_len = 0;
    if (type == S_IFREG) {
        if (flags & O_DIRECTORY)
            return PYTHON;
        join(w->dpath, tr->data, tr->data_len, inner, inner_len);
        fd = open_local(w->dpath, flags, 1);
        if (fd < 0)
            return PYTHON; /* not linked yet: Python fetches it */
        v->minimum = c->top > 0 ? c->content : 0;
        v->end = c->top > 0 ? c->dirs : 0;
        v->prime_key = w->dpath;
        v->prime_key_len = tr->data_len + inner_len;
        v->opened = w->dpath;
        v->data = (const char *)&w->st;
        v->len = sizeof(struct stat);
    } else if (type == S_IFDIR) {
        if (!populated(tr, inner, inner_len, w))
            return PYTHON; /* not populated yet */
        fd = open_local(w->mpath, flags, 0);
        if (fd < 0)
            return PYTHON;
        v->opened = w->mpath;
        v->minimum = c->top > 0 ? c->dirs : 0;
        v->end = c->top;
    } else {
        return PYTHON; /* a fifo's or device's placeholder: the translator's */
    }
    v->fd = fd;
    v->cloexec = flags & O_CLOEXEC;
    return v->kind = OPENED;
}

static int first_walk(const struct config *c, const struct notif *n, const unsigned char *t,
                      const struct tree *tr, const char *inner, size_t inner_len, int one_name,
                      struct verdict *v)
{
    int kind = walk_entry(c, n, t, tr, inner, inner_len, one_name, v);
    v->walked = kind != PYTHON && !is_xattr_get(c, n->data.nr); /* what it answered is kept */
    return kind;
}

/* The tree whose m/ holds target (a shadow directory fd's /proc link), with the entry's path
 * under m/ (target's rest, "/", rel) in c->walk->inner: first_walk() for it. */
static int relative_walk(const struct config *c, const struct notif *n, const unsigned char *t,
                         const char *target, size_t target_len, const char *rel, size_t rel_len,
                         struct verdict *v)
{
    const Answers *a = c->answers;
    if (c->walk == NULL)
        return PYTHON;
    for (int i = 0; i < a->ntrees; i++) {
        const struct tree *tr = &a->trees[i];
        if (target_len < tr->meta_len || memcmp(target, tr->meta, tr->meta_len) != 0 ||
            (target_len > tr->meta_len && target[tr->meta_len] != '/'))
            continue;
        size_t rest = target_len - tr->meta_len;
        if (rest + 1 + rel_len >= PATH_LIMIT)
            return PYTHON;
        char *inner = c->walk->inner;
        memcpy(inner, target + tr->meta_len, rest);
        inner[rest] = '/';
        memcpy(inner + rest + 1, rel, rel_len);
        return first_walk(c, n, t, tr, inner, rest + 1 + rel_len, memchr(rel, '/', rel_len) == NULL, v);
    }
    return PYTHON;
}

/* A path relative to a host directory (target: the dirfd's or the cwd's link, outside the
 * shadow trees): Translator.locate lets the kernel have it when the whole path names no
 * "cvmfs" and lies under a system root (magic ones too), or has no symlink into /cvmfs at its
 * end; a directory's open goes to Python, which moves its fd into the reserved range. */
static int host_relative(const struct config *c, const char *target, size_t target_len, const char *rel,
                         size_t rel_len, int directory_open, struct verdict *v)
{
    char *full = c->walk->inner;
    if (target_len == 1) /* "/": Translator.locate strips a trailing slash */
        target_len = 0;
    if (directory_open || target_len + 1 + rel_len >= PATH_LIMIT)
        return PYTHON;
    memcpy(full, target, target_len);
    full[target_len] = '/';
    memcpy(full + target_len + 1, rel, rel_len);
    size_t n = target_len + 1 + rel_len;
    full[n] = 0;
    if (memmem(full, n, "cvmfs", 5) != NULL || c->magic == NULL)
        return PYTHON;
    if (has_prefix(full, n, c->prefixes, c->prefixes_len) || has_prefix(full, n, c->magic, c->magic_len) ||
        host_link_none(full, n))
        return v->kind = CONTINUE;
    return PYTHON;
}

/* What to do with notification n (path: room for 3 paths); v->kind, also returned. */
static int decide(const struct config *c, const struct notif *n, char *path, struct verdict *v)
{
    const struct notif_data *d = &n->data;
    v->kind = PYTHON;
    v->walked = 0;
    v->key = NULL;
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
    if (d->nr == c->getcwd_nr) { /* Translator._getcwd: a host cwd is the kernel's to name */
        char link[64];
        snprintf(link, sizeof(link), "/proc/%u/cwd", n->pid);
        ssize_t k = readlink(link, path, PATH_LIMIT);
        if (k <= 0 || k >= PATH_LIMIT || c->shadow_len == 0 ||
            ((size_t)k >= c->shadow_len && memcmp(path, c->shadow, c->shadow_len) == 0))
            return PYTHON; /* gone, or in a shadow tree: its /cvmfs name is Python's */
        return v->kind = CONTINUE;
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
    if (path[0] != '/') { /* relative to a dirfd or the cwd: what that links to decides */
        if (t[6] == 0 || t[6] > 6 || c->answers == NULL || c->walk == NULL)
            return PYTHON;
        int dirfd = (int32_t)d->args[t[6] - 1];
        char link[64];
        if (dirfd == -100 /* AT_FDCWD */)
            snprintf(link, sizeof(link), "/proc/%u/cwd", n->pid);
        else
            snprintf(link, sizeof(link), "/proc/%u/fd/%d", n->pid, dirfd);
        char *key_path = path + len + 1; /* "target", NUL, the relative path */
        ssize_t k = readlink(link, key_path, PATH_LIMIT - 1);
        if (k <= 0 || k >= PATH_LIMIT - 1 || key_path[0] != '/')
            return PYTHON; /* gone, not a directory, or anonymous: the translator's */
        key_path[k] = 0;
        if (c->shadow_len > 0 && ((size_t)k < c->shadow_len || memcmp(key_path, c->shadow, c->shadow_len) != 0))
            return host_relative(c, key_path, (size_t)k, path, len, is_open && d->args[flags_arg - 1] & c->directory_flag, v);
        v->key = NULL;
        if (dirfd == -100) /* remembered answers are keyed by a dirfd's target alone */
            return relative_walk(c, n, t, key_path, (size_t)k, path, len, v);
        memcpy(key_path + k + 1, path, len);
        if (remembered(c, d, t, key_path, (size_t)k + 1 + len, 1u << (t[6] - 1), v) != PYTHON)
            return v->kind;
        v->key = key_path; /* what first_walk answers is kept, as Python keeps its answers */
        v->key_len = (size_t)k + 1 + len;
        v->drop = 1u << (t[6] - 1);
        return relative_walk(c, n, t, key_path, (size_t)k, path, len, v);
    }
    if (memmem(path, len, "cvmfs", 5) != NULL) {
        if (remembered(c, d, t, path, len, 0, v) != PYTHON || c->answers == NULL)
            return v->kind;
        const Answers *a = c->answers;
        for (int i = 0; i < a->ntrees; i++) {
            const struct tree *tr = &a->trees[i];
            if (len > tr->logical_len + 1 && memcmp(path, tr->logical, tr->logical_len) == 0 &&
                path[tr->logical_len] == '/') {
                v->key = path;
                v->key_len = len;
                v->drop = 0;
                return first_walk(c, n, t, tr, path + tr->logical_len, len - tr->logical_len, 0, v);
            }
        }
        return v->kind = PYTHON;
    }
    if (is_open && (d->args[flags_arg - 1] & c->directory_flag))
        return PYTHON; /* a host directory: Python moves its fd into the reserved range */
    if (!host_passes(path, len, c->prefixes, c->prefixes_len, c->never, c->never_len, c->magic, c->magic_len,
                     is_open))
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

/* Keep what first_walk answered under the call's key, as Python keeps its own answers
 * (FastPath.remember*): the same call again is then one lookup, not another walk of the tree
 * (the dynamic loader probes the same missing paths in every process). */
static void keep(Answers *a, const struct notif_data *d, const unsigned char *t, const struct verdict *v)
{
    uint64_t key[6];
    if (v->key == NULL)
        return;
    key_args(d->args, t[2] & ~v->drop, key);
    if (v->kind == ERRNO) {
        answer_put(a, d->nr, key, v->key, v->key_len, ANSWER_ERRNO, v->err, NULL, 0);
    } else if (v->kind == WRITE) {
        answer_put(a, d->nr, key, v->key, v->key_len, ANSWER_WRITE, 0, v->data, v->len);
    } else if (v->kind == RESTAT) {
        const struct restat *r = (const struct restat *)v->data;
        answer_put(a, d->nr, key, v->key, v->key_len, ANSWER_RESTAT, 0, v->data,
                   sizeof(struct restat) + strlen(r->path) + 1);
    } else if (v->kind == OPENED) {
        _Alignas(8) char buf[sizeof(struct open_answer) + PATH_LIMIT];
        struct open_answer *o = (struct open_answer *)buf;
        size_t n = strlen(v->opened);
        o->base = v->minimum;
        o->end = v->end;
        o->content = v->prime_key != NULL;
        memcpy(o->path, v->opened, n + 1);
        answer_put(a, d->nr, key, v->key, v->key_len, ANSWER_OPEN, 0, buf, sizeof(struct open_answer) + n + 1);
    }
}

PyDoc_STRVAR(serve_doc,
"serve(listener, request, table, prefixes, never, magic, shadow, directory_flag, empty_path,\n"
"      stat_flags, arch, (dup_nr, fcntl_nr, getcwd_nr), (content, dirs, top),\n"
"      (getxattr_nr, lgetxattr_nr, python_names, label_prefixes),\n"
"      (statx_nr, statx_flags_arg, statx_mask_arg, statx_flags, statx_mask), answers, counts) -> int\n\n"
"Receive notifications on listener and continue every one the configuration lets through,\n"
"or answer it from answers (an Answers, or None), counting them per syscall number in counts\n"
"(unsigned 64-bit, one per number of table: continued, then answered with an errno, with a\n"
"struct stat, with an fd).\n"
"Returns 0 with the first other notification in request (struct seccomp_notif), -1 the\n"
"same when the job's memory could not be read from this process, or the errno RECV\n"
"failed with.  Raises OSError when SEND fails other than with ENOENT (call interrupted).");

static PyObject *serve(PyObject *self, PyObject *args)
{
    int listener, dup_nr, fcntl_nr, getcwd_nr, content, dirs, top, statx_nr, getxattr_nr, lgetxattr_nr;
    unsigned statx_flags_arg, statx_mask_arg;
    unsigned long directory_flag, empty_path, stat_flags, arch, statx_flags, statx_mask;
    PyObject *answers;
    Py_buffer request, table, prefixes, never, magic, shadow, counts, xattr_python, xattr_labels;
    (void)self;
    if (!PyArg_ParseTuple(args, "iw*y*y*y*y*y*kkkk(iii)(iii)(iiy*y*)(iIIkk)Ow*", &listener, &request, &table,
                          &prefixes, &never, &magic, &shadow, &directory_flag, &empty_path, &stat_flags, &arch,
                          &dup_nr, &fcntl_nr, &getcwd_nr, &content, &dirs, &top, &getxattr_nr,
                          &lgetxattr_nr, &xattr_python, &xattr_labels, &statx_nr, &statx_flags_arg,
                          &statx_mask_arg, &statx_flags, &statx_mask, &answers, &counts))
        return NULL;
    PyObject *result = NULL;
    if (request.len < (Py_ssize_t)sizeof(struct notif) || table.len != TABLE_STRIDE * TABLE_NRS ||
        counts.len != (Py_ssize_t)(4 * 8 * TABLE_NRS)) {
        PyErr_SetString(PyExc_ValueError, "serve: buffer sizes do not match");
        goto out;
    }
    if (statx_flags_arg > 5 || statx_mask_arg > 5) {
        PyErr_SetString(PyExc_ValueError, "serve: statx's arguments are among its 6");
        goto out;
    }
    if (answers != Py_None && !PyObject_TypeCheck(answers, &AnswersType)) {
        PyErr_SetString(PyExc_TypeError, "serve: answers must be an Answers or None");
        goto out;
    }
    struct config c = {
        .arch = (uint32_t)arch,
        .table = table.buf,
        .answers = answers == Py_None ? NULL : (Answers *)answers,
        .prefixes = prefixes.buf,
        .prefixes_len = (size_t)prefixes.len,
        .never = never.buf,
        .never_len = (size_t)never.len,
        .magic = magic.len > 0 ? magic.buf : NULL,
        .magic_len = (size_t)magic.len,
        .shadow = shadow.buf,
        .shadow_len = (size_t)shadow.len,
        .directory_flag = directory_flag,
        .empty_path = empty_path,
        .stat_flags = stat_flags,
        .dup_nr = dup_nr,
        .fcntl_nr = fcntl_nr,
        .getcwd_nr = getcwd_nr,
        .getxattr_nr = getxattr_nr,
        .lgetxattr_nr = lgetxattr_nr,
        .xattr_python = xattr_python.buf,
        .xattr_python_len = (size_t)xattr_python.len,
        .xattr_labels = xattr_labels.buf,
        .xattr_labels_len = (size_t)xattr_labels.len,
        .content = content,
        .dirs = dirs,
        .top = answers == Py_None ? 0 : top,
        .statx_nr = statx_nr,
        .statx_flags_arg = statx_flags_arg,
        .statx_mask_arg = statx_mask_arg,
        .statx_flags = statx_flags,
        .statx_mask = statx_mask,
        .walk = answers == Py_None ? NULL : ((Answers *)answers)->walk,
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
        if (v.walked)
            keep(c.answers, &n->data, &c.table[TABLE_STRIDE * n->data.nr], &v);
        if (v.kind == OPENED) { /* first_walk's: an fd of ours to hand over */
            if (v.prime_key != NULL) { /* its fstat, as Python primes it (the table may be full) */
                uint64_t key[6] = {0};
                answer_put(c.answers, FD_KEY, key, v.prime_key, v.prime_key_len, ANSWER_WRITE, 0, v.data,
                           v.len);
            }
            if (ioctl(listener, IOCTL_ID_VALID, &n->id) < 0) {
                close(v.fd);
                continue;
            }
            int responded = place_fd(listener, n, v.fd, v.minimum, v.end, v.cloexec, c.answers, &kcmp, &resp);
            count[n->data.nr + 3 * TABLE_NRS] += 1;
            if (responded)
                continue;
        } else if (v.kind == OPEN || v.kind == DUP) {
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
        if (v.kind != OPEN && v.kind != DUP && v.kind != RESTAT && v.kind != OPENED)
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
    PyBuffer_Release(&magic);
    PyBuffer_Release(&shadow);
    PyBuffer_Release(&counts);
    PyBuffer_Release(&xattr_python);
    PyBuffer_Release(&xattr_labels);
    return result;
}

PyDoc_STRVAR(path_passes_doc,
"path_passes(path, prefixes, never, is_open, magic=b'') -> bool\n\n"
"The host path rule of serve() on its own, for tests: whether serve() would continue a call\n"
"with this path argument (with magic: looking at host symlinks outside the system roots).");

static PyObject *path_passes(PyObject *self, PyObject *args)
{
    Py_buffer path, prefixes, never, magic = {0};
    int is_open;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*p|y*", &path, &prefixes, &never, &is_open, &magic))
        return NULL;
    const char *s = path.buf;
    size_t n = (size_t)path.len;
    int ok = n > 0 && n < PATH_LIMIT && memchr(s, 0, n) == NULL && s[0] == '/' &&
             memmem(s, n, "cvmfs", 5) == NULL &&
             host_passes(s, n, prefixes.buf, (size_t)prefixes.len, never.buf, (size_t)never.len,
                         magic.len > 0 ? magic.buf : NULL, (size_t)magic.len, is_open);
    PyBuffer_Release(&path);
    PyBuffer_Release(&prefixes);
    PyBuffer_Release(&never);
    if (magic.obj != NULL)
        PyBuffer_Release(&magic);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS, serve_doc},
    {"path_passes", path_passes, METH_VARARGS, path_passes_doc},
    {"md5_hex", py_md5_hex, METH_VARARGS, md5_hex_doc},
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
