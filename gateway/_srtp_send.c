/* whipgate's optional egress fast path: SRTP protect + UDP sendto in one C call (issue #6).
 *
 * Built at `pip install` time as an *optional* setuptools extension (setup.py): when it cannot be compiled
 * or imported, gateway/aiortc_adapter.py falls back to the pure-Python path, which sends the same bytes.
 *
 * It does not link against libsrtp. pylibsrtp's own extension module already carries libsrtp (statically,
 * libsrtp2 2.7.0 in pylibsrtp 1.0.0); gateway/aiortc_adapter.py hands us the address of its `srtp_protect` /
 * `srtp_protect_rtcp` (from the cffi `lib`) and of the session's `srtp_t`, after checking the cffi signature
 * is libsrtp 2's `srtp_err_status_t (*)(srtp_t, void *, int *)`. So both paths use the very same SRTP context:
 * one rollover counter and one SRTCP index per stream (RFC 3711 §3.3.1, §3.4) whichever path protects.
 *
 * The socket: a dup() of the nominated pair's datagram socket, so a closed transport's descriptor number
 * cannot be reused under us; it is closed when the Sender goes away. Datagrams are sent with MSG_DONTWAIT:
 * a full socket buffer drops the packet (the caller counts it) instead of blocking the event loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef _WIN32
#error "the fast path is POSIX only; the pure-Python path is used instead"
#endif

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

/* RFC 3711: the RTP header and payload stay in place, SRTP appends at most the MKI and the tag; libsrtp's
 * SRTP_MAX_TRAILER_LEN (16 + 128) and SRTCP's (4 + 16 + 128) bound what protect adds. */
#define MAX_PACKET 1500
#define MAX_TRAILER 148
#define MIN_RTP_HEADER 12
#define MIN_RTCP_HEADER 8

typedef int (*srtp_protect_fn)(void *ctx, void *header, int *len);

typedef struct {
    PyObject_HEAD
    srtp_protect_fn protect;
    srtp_protect_fn protect_rtcp;
    void *ctx;
    PyObject *owner;    /* keeps the pylibsrtp Session (and so its srtp_t) alive */
    PyObject *error;    /* exception class raised when libsrtp refuses a packet (pylibsrtp.Error) */
    int fd;             /* our dup() of the socket, -1 once closed */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned long long dropped;  /* datagrams the kernel did not take (EAGAIN/ENOBUFS/...) */
    int last_errno;
    dev_t sock_dev;     /* the socket's identity (fstat of our dup): senders on one socket batch in sendmmsg */
    ino_t sock_ino;
} Sender;

static int
fill_address(Sender *self, const char *host, int port)
{
    memset(&self->addr, 0, sizeof(self->addr));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&self->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&self->addr;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((unsigned short)port);
        self->addrlen = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((unsigned short)port);
        self->addrlen = sizeof(*v6);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not a numeric IP address: %s", host);
    return -1;
}

static int
Sender_init(Sender *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"fd", "host", "port", "protect", "protect_rtcp", "ctx", "owner", "error", NULL};
    int fd, port;
    const char *host;
    unsigned long long protect, protect_rtcp, ctx;
    PyObject *owner, *error;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "isiKKKOO", keywords, &fd, &host, &port, &protect,
                                     &protect_rtcp, &ctx, &owner, &error))
        return -1;
    if (!protect || !protect_rtcp || !ctx) {
        PyErr_SetString(PyExc_ValueError, "null libsrtp function or context");
        return -1;
    }
    if (fill_address(self, host, port) < 0)
        return -1;
    int copy = dup(fd);
    if (copy < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct stat st;
    if (fstat(copy, &st) < 0) {  /* the socket's identity decides which datagrams share a sendmmsg: never guess it */
        PyErr_SetFromErrno(PyExc_OSError);
        close(copy);
        return -1;
    }
    if (self->fd >= 0)
        close(self->fd);
    self->fd = copy;
    self->sock_dev = st.st_dev;
    self->sock_ino = st.st_ino;
    self->protect = (srtp_protect_fn)(uintptr_t)protect;
    self->protect_rtcp = (srtp_protect_fn)(uintptr_t)protect_rtcp;
    self->ctx = (void *)(uintptr_t)ctx;
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    Py_INCREF(error);
    Py_XSETREF(self->error, error);
    return 0;
}

static PyObject *
Sender_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Sender *self = (Sender *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->fd = -1;
    return (PyObject *)self;
}

static void
Sender_dealloc(Sender *self)
{
    if (self->fd >= 0)
        close(self->fd);
    Py_XDECREF(self->owner);
    Py_XDECREF(self->error);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Protect `packet` with `fn` into a stack buffer and send it: the bytes on the wire, 0 when the datagram was
 * dropped (counted), NULL with an exception when libsrtp refused the packet or it is too long/short. */
static PyObject *
protect_and_send(Sender *self, PyObject *packet, srtp_protect_fn fn, Py_ssize_t min_len)
{
    unsigned char buffer[MAX_PACKET + MAX_TRAILER];
    const char *data;
    Py_ssize_t length;
    Py_buffer view;
    int have_view = 0;
    if (PyBytes_CheckExact(packet)) {
        data = PyBytes_AS_STRING(packet);
        length = PyBytes_GET_SIZE(packet);
    } else {
        if (PyObject_GetBuffer(packet, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        have_view = 1;
        data = view.buf;
        length = view.len;
    }
    if (length > MAX_PACKET || length < min_len) {
        if (have_view)
            PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "packet of %zd bytes (%zd to %d allowed)", length, min_len, MAX_PACKET);
        return NULL;
    }
    memcpy(buffer, data, (size_t)length);
    if (have_view)
        PyBuffer_Release(&view);
    if (self->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "sender is closed");
        return NULL;
    }
    int out_len = (int)length;
    int status = fn(self->ctx, buffer, &out_len);
    if (status != 0) {
        PyErr_Format(self->error, "srtp protect failed (libsrtp status %d)", status);
        return NULL;
    }
    ssize_t sent;
    do {
        sent = sendto(self->fd, buffer, (size_t)out_len, MSG_DONTWAIT, (struct sockaddr *)&self->addr, self->addrlen);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) {
        /* EAGAIN/EWOULDBLOCK/ENOBUFS: the socket buffer is full; anything else (EPERM from a firewall,
         * ENETUNREACH, ...) is a datagram the network did not take either. UDP loses it: drop and count. */
        self->dropped++;
        self->last_errno = errno;
        return PyLong_FromLong(0);
    }
    return PyLong_FromLong(out_len);
}

static PyObject *
Sender_send_rtp(Sender *self, PyObject *packet)
{
    return protect_and_send(self, packet, self->protect, MIN_RTP_HEADER);
}

static PyObject *
Sender_send_rtcp(Sender *self, PyObject *packet)
{
    return protect_and_send(self, packet, self->protect_rtcp, MIN_RTCP_HEADER);
}

static PyObject *
Sender_close(Sender *self, PyObject *unused)
{
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    Py_RETURN_NONE;
}

static PyObject *
Sender_get_dropped(Sender *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->dropped);
}

static PyObject *
Sender_get_last_errno(Sender *self, void *closure)
{
    return PyLong_FromLong(self->last_errno);
}

static PyMethodDef Sender_methods[] = {
    {"send_rtp", (PyCFunction)Sender_send_rtp, METH_O,
     "SRTP-protect one RTP packet and send it; bytes on the wire, 0 when the socket dropped it."},
    {"send_rtcp", (PyCFunction)Sender_send_rtcp, METH_O,
     "SRTCP-protect one compound RTCP packet and send it; bytes on the wire, 0 when the socket dropped it."},
    {"close", (PyCFunction)Sender_close, METH_NOARGS, "Close our duplicate of the socket."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sender_getset[] = {
    {"dropped", (getter)Sender_get_dropped, NULL, "datagrams the socket did not take", NULL},
    {"last_errno", (getter)Sender_get_last_errno, NULL, "errno of the last dropped datagram", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ---- Unprotector: SRTP/SRTCP unprotect of what a peer sends, without pylibsrtp's per-packet Python ---------------
 *
 * pylibsrtp's Session.unprotect_rtcp costs ~4 µs per packet in the gateway (its bounds checks, an `int *`
 * allocation, two copies and its status check, all in Python, for libsrtp's ~1 µs), and every browser viewer sends
 * ~16 feedback packets a second. Same libsrtp function and session as pylibsrtp's: the address of cffi
 * `lib.srtp_unprotect(_rtcp)` and the session's srtp_t, handed over by gateway/aiortc_adapter.py after the same
 * signature check as for protect. The packet is copied once, into the bytes object returned, and unprotected
 * there (in place, as libsrtp works). */
typedef struct {
    PyObject_HEAD
    srtp_protect_fn unprotect;  /* same signature as protect: (srtp_t, void *, int *) */
    void *ctx;
    PyObject *owner;            /* keeps the pylibsrtp Session (and so its srtp_t) alive */
    PyObject *error;            /* raised when libsrtp refuses a packet, or its length is out of range */
    Py_ssize_t min_len;
} Unprotector;

static int
Unprotector_init(Unprotector *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"unprotect", "ctx", "owner", "error", "min_length", NULL};
    unsigned long long unprotect, ctx;
    PyObject *owner, *error;
    Py_ssize_t min_len;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKOOn", keywords, &unprotect, &ctx, &owner, &error, &min_len))
        return -1;
    if (!unprotect || !ctx) {
        PyErr_SetString(PyExc_ValueError, "null libsrtp function or context");
        return -1;
    }
    if (min_len < 2) {  /* bytes of length 0 or 1 are shared singletons: never unprotect into one */
        PyErr_SetString(PyExc_ValueError, "min_length must be at least 2");
        return -1;
    }
    self->unprotect = (srtp_protect_fn)(uintptr_t)unprotect;
    self->ctx = (void *)(uintptr_t)ctx;
    self->min_len = min_len;
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    Py_INCREF(error);
    Py_XSETREF(self->error, error);
    return 0;
}

static void
Unprotector_dealloc(Unprotector *self)
{
    Py_XDECREF(self->owner);
    Py_XDECREF(self->error);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The clear packet as new bytes; the error class (pylibsrtp.Error) when libsrtp refuses it (authentication,
 * replay, unknown SSRC, ...) or its length is outside [min_length, MAX_PACKET + MAX_TRAILER]. */
static PyObject *
Unprotector_unprotect(Unprotector *self, PyObject *packet)
{
    if (!PyBytes_CheckExact(packet)) {
        PyErr_SetString(PyExc_TypeError, "packet must be bytes");
        return NULL;
    }
    if (self->unprotect == NULL) {
        PyErr_SetString(PyExc_ValueError, "unprotector not initialised");
        return NULL;
    }
    Py_ssize_t length = PyBytes_GET_SIZE(packet);
    if (length < self->min_len || length > MAX_PACKET + MAX_TRAILER) {
        PyErr_Format(self->error, "srtp unprotect refused a packet of %zd bytes", length);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(packet), length);  /* new, not shared: length >= 2 */
    if (out == NULL)
        return NULL;
    int out_len = (int)length;
    int status = self->unprotect(self->ctx, PyBytes_AS_STRING(out), &out_len);
    if (status != 0) {
        Py_DECREF(out);
        PyErr_Format(self->error, "srtp unprotect failed (libsrtp status %d)", status);
        return NULL;
    }
    if (out_len < 0 || out_len > length) {  /* cannot happen with libsrtp 2; never return bytes past the packet */
        Py_DECREF(out);
        PyErr_Format(self->error, "srtp unprotect returned %d bytes of %zd", out_len, length);
        return NULL;
    }
    if (out_len != length && _PyBytes_Resize(&out, out_len) < 0)
        return NULL;
    return out;
}

static PyMethodDef Unprotector_methods[] = {
    {"unprotect", (PyCFunction)Unprotector_unprotect, METH_O,
     "unprotect(packet: bytes) -> bytes: the clear packet; raises the error class given when libsrtp refuses it"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject UnprotectorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._srtp_send.Unprotector",
    .tp_basicsize = sizeof(Unprotector),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Unprotector(unprotect, ctx, owner, error, min_length): libsrtp's srtp_unprotect(_rtcp) on one session",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Unprotector_init,
    .tp_dealloc = (destructor)Unprotector_dealloc,
    .tp_methods = Unprotector_methods,
};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._srtp_send.Sender",
    .tp_basicsize = sizeof(Sender),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SRTP protect with a libsrtp 2 context + sendto on a dup of a UDP socket, one C call per packet.",
    .tp_new = Sender_new,
    .tp_init = (initproc)Sender_init,
    .tp_dealloc = (destructor)Sender_dealloc,
    .tp_methods = Sender_methods,
    .tp_getset = Sender_getset,
};

/* ---- TransportWide: one viewer's transport-wide congestion control state, shared with Python --------------
 *
 * draft-holmer-rmcat-transport-wide-cc-extensions-01: every packet on a viewer's transport carries the next
 * 16-bit transport-wide sequence number (§2), and the sender keeps what it sent by that number to read the
 * viewer's feedback against (simulcast/bwe.py SendLog). GCC §4: video leaves through a pacer (simulcast/bwe.py
 * Pacer). All of that state lives in Python-owned arrays (SendLog's rings, the Pacer's bucket and the viewer's
 * counters); a TransportWide holds buffer views of them so a lane can stamp, log and pace in C exactly as
 * gateway/sfu/down_track.py does, on the very same counters. */
enum { TW_SEQS, TW_SIZES, TW_TIMES, TW_CLUSTERS, TW_STATES, TW_COUNTERS, TW_BUCKET, TW_VIEWS };
enum { COUNTER_NEXT_SEQ, COUNTER_PROBING, COUNTERS };           /* simulcast/viewer_bandwidth.py */
enum { BUCKET_RATE, BUCKET_BURST, BUCKET_BUDGET, BUCKET_UPDATED, BUCKET_QUEUED, BUCKET_HOLD, BUCKET_SLOTS };  /* bwe.Pacer */

typedef struct {
    PyObject_HEAD
    Py_buffer views[TW_VIEWS];
    int held;                 /* views acquired so far */
    int32_t *seqs;
    int32_t *sizes;
    int64_t *times;
    int32_t *clusters;
    uint8_t *states;
    int64_t *counters;
    double *bucket;
    uint32_t mask;
} TransportWide;

/* One Python-owned array a C object views: its item size and kind ('d': doubles, else integers), name, and how many
 * items it must hold at least (0 for the send log's rings, which share one power-of-two length instead). */
typedef struct { char format; Py_ssize_t itemsize; const char *name; Py_ssize_t min_items; } array_layout;

static const array_layout tw_layout[TW_VIEWS] = {
    {'i', 4, "seqs", 0}, {'i', 4, "sizes", 0}, {'q', 8, "times", 0}, {'i', 4, "clusters", 0}, {'B', 1, "states", 0},
    {'q', 8, "counters", COUNTERS}, {'d', 8, "bucket", BUCKET_SLOTS},
};

/* Writable C-contiguous buffers of objects[0..n) into views (counting *held, for the caller's release), checked
 * against layout; those with min_items 0 (the send log's rings) must share one power-of-two length >= 16, which is
 * returned. -1 with an exception set on a mismatch. */
static Py_ssize_t
acquire_arrays(PyObject *const *objects, Py_buffer *views, int *held, const array_layout *layout, int n)
{
    Py_ssize_t ring = -1;
    for (int k = 0; k < n; k++) {
        Py_buffer *view = &views[k];
        if (PyObject_GetBuffer(objects[k], view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        (*held)++;
        const char *format = view->format ? view->format : "B";
        if (format[0] == '@' || format[0] == '=')
            format++;
        /* array('q') reports 'q' or 'l' (same size on LP64); compare sizes and the integer/float kind */
        int want_float = layout[k].format == 'd';
        int is_float = format[0] == 'd' || format[0] == 'f';
        if (view->itemsize != layout[k].itemsize || want_float != is_float || format[1] != '\0') {
            PyErr_Format(PyExc_TypeError, "%s: expected an array of %zd-byte %s", layout[k].name,
                         layout[k].itemsize, want_float ? "doubles" : "integers");
            return -1;
        }
        Py_ssize_t items = view->len / view->itemsize;
        if (layout[k].min_items == 0) {
            if (ring < 0)
                ring = items;
            if (items != ring || items < 16 || (items & (items - 1))) {
                PyErr_SetString(PyExc_ValueError, "the send log rings must have one power-of-two length");
                return -1;
            }
        } else if (items < layout[k].min_items) {
            PyErr_Format(PyExc_ValueError, "%s: too short", layout[k].name);
            return -1;
        }
    }
    return ring;
}

/* Release the first *held views that acquire_arrays took. */
static void
release_arrays(Py_buffer *views, int *held)
{
    while (*held > 0)
        PyBuffer_Release(&views[--*held]);
}

static PyObject *
TransportWide_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if ((kwds && PyDict_GET_SIZE(kwds)) || PyTuple_GET_SIZE(args) != TW_VIEWS) {
        PyErr_SetString(PyExc_TypeError, "TransportWide(seqs, sizes, times, clusters, states, counters, bucket)");
        return NULL;
    }
    TransportWide *self = (TransportWide *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_ssize_t ring = acquire_arrays(PySequence_Fast_ITEMS(args), self->views, &self->held, tw_layout, TW_VIEWS);
    if (ring < 0)
        goto fail;
    self->seqs = self->views[TW_SEQS].buf;
    self->sizes = self->views[TW_SIZES].buf;
    self->times = self->views[TW_TIMES].buf;
    self->clusters = self->views[TW_CLUSTERS].buf;
    self->states = self->views[TW_STATES].buf;
    self->counters = self->views[TW_COUNTERS].buf;
    self->bucket = self->views[TW_BUCKET].buf;
    self->mask = (uint32_t)(ring - 1);
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static void
TransportWide_dealloc(TransportWide *self)
{
    release_arrays(self->views, &self->held);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject TransportWideType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._srtp_send.TransportWide",
    .tp_basicsize = sizeof(TransportWide),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One viewer's transport-wide seq counter, send log rings and pacer bucket (Python-owned arrays).",
    .tp_new = TransportWide_new,
    .tp_dealloc = (destructor)TransportWide_dealloc,
};

/* ---- FeedbackMatcher: a viewer's transport-wide feedback, parsed and matched with its send log in C ----------
 *
 * simulcast/bwe.py SendSideEstimator._match_feedback in C, from the FCI's bytes (twcc.parse_feedback's rules):
 * draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1 decoded, each reported packet looked up in the send
 * log rings (marked reported lost / received there), the GCC §5.1/§5.2 packet groups formed on the group state
 * array the estimator owns (bwe.G_* slots), and each completed group run through the trendline and the §5.4
 * over-use detector (bwe._Trendline, SendSideEstimator._detect); then the window part of _apply_feedback: the
 * arrivals the capacity-drop check looks back over, the two receive-rate windows and the check's run rate (its
 * guard stays in Python). What is left to Python (the guard, rate and loss control) runs once per feedback. A
 * browser viewer sends ~16 feedbacks a second; in Python the parse, the match and the filter were two thirds of
 * on_feedback (bench/feedback.py), and in a gateway with 500 such viewers the windows cost ~15 µs more per feedback
 * of cold-cache object walks (BENCHMARKS.md). */
enum { FM_SEQS, FM_SIZES, FM_TIMES, FM_CLUSTERS, FM_STATES, FM_GROUPS, FM_VIEWS };
enum {
    GROUP_FIRST_SEND, GROUP_LAST_SEND, GROUP_FIRST_ARRIVAL, GROUP_LAST_ARRIVAL, GROUP_PREV_SEND, GROUP_PREV_ARRIVAL,
    GROUP_REF_RAW, GROUP_REF_OFFSET, GROUP_SLOTS
};
#define GROUP_NONE INT64_MIN
#define TWCC_REFERENCE_UNIT_US 64000    /* §3.1: reference time in multiples of 64 ms */
#define TWCC_REFERENCE_WRAP_US ((int64_t)(1 << 24) * TWCC_REFERENCE_UNIT_US)
#define TWCC_DELTA_UNIT_US 250          /* §3.1.5 */
enum { LOG_UNREPORTED, LOG_REPORTED_LOST, LOG_REPORTED_RECEIVED };  /* bwe._UNREPORTED ... */
#define LOG_NO_CLUSTER (-1)
#define TRENDLINE_MAX_WINDOW 64
enum { SIGNAL_NORMAL, SIGNAL_OVERUSE, SIGNAL_UNDERUSE };  /* bwe._NORMAL ... */

/* A growable FIFO of fixed-size int64 records (a deque of tuples in Python): `width` int64s per record. */
typedef struct {
    int64_t *items;
    Py_ssize_t head, count, cap;
    int width;
} arrival_ring;

static int64_t *
ring_at(arrival_ring *r, Py_ssize_t k)  /* k-th record from the oldest */
{
    return r->items + ((r->head + k) % r->cap) * r->width;
}

static int
ring_push(arrival_ring *r, const int64_t *record)  /* -1 (MemoryError set) when it cannot grow */
{
    if (r->count == r->cap) {
        Py_ssize_t cap = r->cap ? 2 * r->cap : 64;
        int64_t *items = PyMem_Malloc((size_t)cap * r->width * sizeof(int64_t));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t k = 0; k < r->count; k++)
            memcpy(items + k * r->width, ring_at(r, k), r->width * sizeof(int64_t));
        PyMem_Free(r->items);
        r->items = items;
        r->head = 0;
        r->cap = cap;
    }
    memcpy(ring_at(r, r->count), record, r->width * sizeof(int64_t));
    r->count++;
    return 0;
}

static void
ring_pop_oldest(arrival_ring *r)
{
    r->head = (r->head + 1) % r->cap;
    r->count--;
}

/* bwe._RateWindow: (first arrival, last arrival, bytes, first packet's size) per feedback. */
typedef struct {
    arrival_ring entries;
    int64_t bytes, newest, bps, window, min_span;
    int has_bps;
} rate_window;

static int64_t
floor_div(int64_t a, int64_t b)  /* Python's // for b > 0 */
{
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* _RateWindow.add, line by line. */
static int
rate_window_add(rate_window *w, int64_t reset_gap, int64_t first, int64_t last, int64_t total, int64_t first_size)
{
    arrival_ring *e = &w->entries;
    if (e->count && last < w->newest - reset_gap) {
        e->count = 0;  /* the receiver clock went backwards: start over */
        e->head = 0;
        w->bytes = 0;
    }
    if (!e->count || last > w->newest)
        w->newest = last;
    int64_t record[4] = {first, last, total, first_size};
    if (ring_push(e, record) < 0)
        return -1;
    w->bytes += total;
    while (e->count > 1 && ring_at(e, 0)[1] < w->newest - w->window) {
        w->bytes -= ring_at(e, 0)[2];
        ring_pop_oldest(e);
    }
    int64_t *oldest = ring_at(e, 0);  /* min(entries): the lexicographically smallest record */
    for (Py_ssize_t k = 1; k < e->count; k++) {
        int64_t *x = ring_at(e, k);
        for (int i = 0; i < 4; i++) {
            if (x[i] != oldest[i]) {
                if (x[i] < oldest[i])
                    oldest = x;
                break;
            }
        }
    }
    int64_t span = w->newest - oldest[0];
    if (span >= w->min_span) {
        w->bps = floor_div((w->bytes - oldest[3]) * 8000000, span);
        w->has_bps = 1;
    }
    return 0;
}

typedef struct {
    PyObject_HEAD
    Py_buffer views[FM_VIEWS];
    int held;
    int32_t *seqs;
    int32_t *sizes;
    int64_t *times;
    int32_t *clusters;
    uint8_t *states;
    int64_t *groups;
    uint32_t mask;
    int64_t burst_time_us;   /* GCC §5.2 burst_time (bwe.BURST_TIME_US) */
    int64_t max_burst_us;    /* bwe.MAX_BURST_US */
    /* bwe._Trendline and SendSideEstimator._detect, same arithmetic in the same order (so the same doubles:
     * setup.py builds with -ffp-contract=off); parameters first, then state. */
    int window;              /* TRENDLINE_WINDOW, at most TRENDLINE_MAX_WINDOW */
    double smoothing, gain, max_deltas, threshold_min, threshold_max, threshold_max_offset, threshold_max_dt;
    double k_up, k_down, overuse_time_th, reset_gap_us;
    double xs[TRENDLINE_MAX_WINDOW], ys[TRENDLINE_MAX_WINDOW];
    int filled, pos, deltas, has_origin, has_threshold_updated, overuse_count, signal;
    double accumulated, smoothed, origin, bx, by, sx, sy, sxx, sxy;
    double threshold, prev_trend, overuse_time, threshold_updated;
    /* SendSideEstimator._recent_arrivals (the capacity-drop check's window) and its two _RateWindows (R_hat and
     * the recent rate), kept here instead of in Python; same rules, integer arithmetic. */
    int64_t reset_gap;       /* bwe.RESET_GAP_US */
    int64_t queue_window, queue_jump, queue_run_min_us, queue_run_min_packets, busy_slack;  /* bwe.QUEUE_* ... */
    /* bwe.SUSPECT_*: the early warning */
    int64_t suspect_jump, suspect_run_min_us, suspect_run_min_packets, suspect_min_bytes;
    arrival_ring recent;
    int64_t recent_newest;
    rate_window rate, recent_rate;
} FeedbackMatcher;

/* SendSideEstimator._queue_run_rate (the capacity-drop check up to its guard), line by line: the delivered rate of
 * the run of packets that queued behind a busy bottleneck, or 0, and (in *suspect_out) the early warning's rate over
 * the run's shorter parts, each judged alone, or 0. Records are (arrival, one-way delay, size). */
static int64_t
queue_run_rate(FeedbackMatcher *f, int64_t newest_arrival, int64_t *suspect_out)
{
    arrival_ring *packets = &f->recent;
    *suspect_out = 0;
    if (newest_arrival < f->recent_newest - f->reset_gap) {
        /* The receiver clock went backwards: what came before is on the old clock. */
        while (packets->count && ring_at(packets, 0)[0] > newest_arrival)
            ring_pop_oldest(packets);
        f->recent_newest = newest_arrival;
    } else if (newest_arrival > f->recent_newest) {
        f->recent_newest = newest_arrival;
    }
    int64_t oldest = f->recent_newest - f->queue_window;
    while (packets->count && ring_at(packets, 0)[0] < oldest)
        ring_pop_oldest(packets);
    Py_ssize_t count = packets->count;
    if (count < f->suspect_run_min_packets)  /* <= queue_run_min_packets */
        return 0;
    int64_t last_arrival = ring_at(packets, count - 1)[0], last_delay = ring_at(packets, count - 1)[1];
    int64_t base = last_delay;
    for (Py_ssize_t k = 0; k < count; k++)
        if (ring_at(packets, k)[1] < base)
            base = ring_at(packets, k)[1];
    if (last_delay - base < f->suspect_jump)
        return 0;
    int64_t delivered = 0, suspect = 0, after_bytes = 0;
    Py_ssize_t start = count - 1;
    int64_t *p = ring_at(packets, start);
    int64_t arrival = p[0], delay = p[1], size = p[2];
    while (start > 0) {
        int64_t *q = ring_at(packets, start - 1);
        int64_t previous_arrival = q[0], previous_delay = q[1], previous_size = q[2];
        int64_t send_gap = (arrival - delay) - (previous_arrival - previous_delay);
        if (previous_delay - base < send_gap + f->busy_slack && delay <= previous_delay)
            break;
        after_bytes += size;
        start--;
        arrival = previous_arrival;
        delay = previous_delay;
        size = previous_size;
        int64_t span = last_arrival - arrival;
        if (span >= f->suspect_run_min_us) {
            int64_t rate = floor_div(after_bytes * 8000000, span);
            int64_t grown = last_delay - delay;
            if (count - start >= f->suspect_run_min_packets && grown >= f->suspect_jump && 2 * grown >= span
                && after_bytes >= f->suspect_min_bytes && (!suspect || rate < suspect))
                suspect = rate;
            if (span >= f->queue_run_min_us && count - start >= f->queue_run_min_packets
                && (!delivered || rate < delivered))
                delivered = rate;
        }
    }
    *suspect_out = suspect;
    if (!delivered)
        return 0;
    int64_t span = last_arrival - arrival;
    int64_t growth = last_delay - delay;
    /* Arrival span >= 2 x send span (send span = arrival span - delay growth): at most half got through. */
    if (growth < f->queue_jump || 2 * growth < span)
        return 0;
    return delivered;
}

static const array_layout fm_layout[FM_VIEWS] = {
    {'i', 4, "seqs", 0}, {'i', 4, "sizes", 0}, {'q', 8, "times", 0}, {'i', 4, "clusters", 0}, {'B', 1, "states", 0},
    {'q', 8, "groups", GROUP_SLOTS},
};

static PyObject *
FeedbackMatcher_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    long long burst_time, max_burst;
    PyObject *arrays[FM_VIEWS];
    int window;
    double smoothing, gain, max_deltas, threshold, threshold_min, threshold_max, threshold_max_offset;
    double threshold_max_dt, k_up, k_down, overuse_time_th, reset_gap_us;
    long long reset_gap, queue_window, queue_jump, queue_run_min_us, queue_run_min_packets, busy_slack;
    long long rate_window_us, rate_min_span, recent_window_us, recent_min_span, suspect_jump, suspect_run_min_us;
    long long suspect_run_min_packets, suspect_min_bytes;
    if ((kwds && PyDict_GET_SIZE(kwds))
        || !PyArg_ParseTuple(args, "OOOOOOLL(idddddddddddd)(LLLLLLLLLLLLLL):FeedbackMatcher", &arrays[0], &arrays[1],
                             &arrays[2], &arrays[3], &arrays[4], &arrays[5], &burst_time, &max_burst, &window,
                             &smoothing, &gain, &max_deltas, &threshold, &threshold_min, &threshold_max,
                             &threshold_max_offset, &threshold_max_dt, &k_up, &k_down, &overuse_time_th,
                             &reset_gap_us, &reset_gap, &queue_window, &queue_jump, &queue_run_min_us,
                             &queue_run_min_packets, &busy_slack, &rate_window_us, &rate_min_span, &recent_window_us,
                             &recent_min_span, &suspect_jump, &suspect_run_min_us,
                             &suspect_run_min_packets, &suspect_min_bytes))
        return NULL;
    if (queue_window < 0 || reset_gap < 0 || rate_window_us < 0 || recent_window_us < 0 || rate_min_span <= 0
        || recent_min_span <= 0 || queue_run_min_us <= 0 || suspect_run_min_us <= 0
        || suspect_run_min_us > queue_run_min_us || suspect_jump > queue_jump || suspect_run_min_packets < 2
        || suspect_run_min_packets > queue_run_min_packets || suspect_min_bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "window parameters out of range");
        return NULL;
    }
    if (window < 2 || window > TRENDLINE_MAX_WINDOW) {
        PyErr_SetString(PyExc_ValueError, "trendline window out of range");
        return NULL;
    }
    FeedbackMatcher *self = (FeedbackMatcher *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_ssize_t ring = acquire_arrays(arrays, self->views, &self->held, fm_layout, FM_VIEWS);
    if (ring < 0)
        goto fail;
    self->seqs = self->views[FM_SEQS].buf;
    self->sizes = self->views[FM_SIZES].buf;
    self->times = self->views[FM_TIMES].buf;
    self->clusters = self->views[FM_CLUSTERS].buf;
    self->states = self->views[FM_STATES].buf;
    self->groups = self->views[FM_GROUPS].buf;
    self->mask = (uint32_t)(ring - 1);
    self->burst_time_us = burst_time;
    self->max_burst_us = max_burst;
    self->window = window;
    self->smoothing = smoothing;
    self->gain = gain;
    self->max_deltas = max_deltas;
    self->threshold = threshold;
    self->threshold_min = threshold_min;
    self->threshold_max = threshold_max;
    self->threshold_max_offset = threshold_max_offset;
    self->threshold_max_dt = threshold_max_dt;
    self->k_up = k_up;
    self->k_down = k_down;
    self->overuse_time_th = overuse_time_th;
    self->reset_gap_us = reset_gap_us;
    self->overuse_time = -1.0;
    self->signal = SIGNAL_NORMAL;  /* the rest starts at 0 (tp_alloc): bwe._Trendline.reset's values */
    self->reset_gap = reset_gap;
    self->queue_window = queue_window;
    self->queue_jump = queue_jump;
    self->queue_run_min_us = queue_run_min_us;
    self->queue_run_min_packets = queue_run_min_packets;
    self->busy_slack = busy_slack;
    self->suspect_jump = suspect_jump;
    self->suspect_run_min_us = suspect_run_min_us;
    self->suspect_run_min_packets = suspect_run_min_packets;
    self->suspect_min_bytes = suspect_min_bytes;
    self->recent.width = 3;
    self->rate.entries.width = 4;
    self->rate.window = rate_window_us;
    self->rate.min_span = rate_min_span;
    self->recent_rate.entries.width = 4;
    self->recent_rate.window = recent_window_us;
    self->recent_rate.min_span = recent_min_span;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static void
FeedbackMatcher_dealloc(FeedbackMatcher *self)
{
    release_arrays(self->views, &self->held);
    PyMem_Free(self->recent.items);
    PyMem_Free(self->rate.entries.items);
    PyMem_Free(self->recent_rate.entries.items);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Append a tuple of `n` int64s to `list`; -1 on error. */
static int
append_ints(PyObject *list, int n, int64_t a, int64_t b, int64_t c, int64_t d)
{
    int64_t values[4] = {a, b, c, d};
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL)
        return -1;
    for (int k = 0; k < n; k++) {
        PyObject *value = PyLong_FromLongLong(values[k]);
        if (value == NULL) {
            Py_DECREF(tuple);
            return -1;
        }
        PyTuple_SET_ITEM(tuple, k, value);
    }
    int rc = PyList_Append(list, tuple);
    Py_DECREF(tuple);
    return rc;
}

static void
trendline_reset(FeedbackMatcher *f)
{
    f->filled = f->pos = f->deltas = 0;
    f->accumulated = f->smoothed = 0.0;
    f->has_origin = 0;
    f->bx = f->by = f->sx = f->sy = f->sxx = f->sxy = 0.0;
}

/* bwe._Trendline.update: 1 and the modified trend in *trend once the window is full, else 0. */
static int
trendline_update(FeedbackMatcher *f, double variation_ms, double arrival_ms, double *trend)
{
    if (!f->has_origin) {
        f->origin = arrival_ms;
        f->has_origin = 1;
    }
    if (f->deltas < 1000)
        f->deltas++;
    f->accumulated += variation_ms;
    double smoothed = f->smoothed = f->smoothing * f->smoothed + (1 - f->smoothing) * f->accumulated;
    double x = arrival_ms - f->origin;
    int pos = f->pos, window = f->window;
    if (f->filled == 0) {
        f->bx = x;
        f->by = smoothed;
    }
    double bx = f->bx, by = f->by;
    if (f->filled == window) {  /* the oldest point leaves the window */
        double ox = f->xs[pos] - bx, oy = f->ys[pos] - by;
        f->sx -= ox;
        f->sy -= oy;
        f->sxx -= ox * ox;
        f->sxy -= ox * oy;
    } else {
        f->filled++;
    }
    f->xs[pos] = x;
    f->ys[pos] = smoothed;
    double dx = x - bx, dy = smoothed - by;
    f->sx += dx;
    f->sy += dy;
    f->sxx += dx * dx;
    f->sxy += dx * dy;
    pos++;
    if (pos == window) {  /* rebase on the oldest point and recompute exactly */
        pos = 0;
        bx = f->bx = f->xs[0];
        by = f->by = f->ys[0];
        double sx = 0.0, sy = 0.0, sxx = 0.0, sxy = 0.0;
        for (int k = 0; k < f->filled; k++) {
            dx = f->xs[k] - bx;
            dy = f->ys[k] - by;
            sx += dx;
            sy += dy;
            sxx += dx * dx;
            sxy += dx * dy;
        }
        f->sx = sx;
        f->sy = sy;
        f->sxx = sxx;
        f->sxy = sxy;
    }
    f->pos = pos;
    if (f->filled < window)
        return 0;
    double n = (double)window;
    double denominator = n * f->sxx - f->sx * f->sx;
    if (denominator <= 1e-9) {
        *trend = 0.0;
        return 1;
    }
    double slope = (n * f->sxy - f->sx * f->sy) / denominator;
    double deltas = f->deltas < f->max_deltas ? (double)f->deltas : f->max_deltas;
    *trend = deltas * slope * f->gain;
    return 1;
}

/* SendSideEstimator._detect (GCC §5.4 with the adaptive threshold): 1 when over-use is signalled now. */
static int
detect(FeedbackMatcher *f, double trend, double send_delta_ms, double now_ms)
{
    int signalled = 0;
    double threshold = f->threshold;
    if (trend > threshold) {
        if (f->overuse_time < 0)
            f->overuse_time = send_delta_ms / 2;
        else
            f->overuse_time += send_delta_ms;
        f->overuse_count++;
        if (f->overuse_time > f->overuse_time_th && f->overuse_count > 1 && trend >= f->prev_trend) {
            f->overuse_time = 0.0;
            f->overuse_count = 0;
            f->signal = SIGNAL_OVERUSE;
            signalled = 1;
        }
    } else if (trend < -threshold) {
        f->overuse_time = -1.0;
        f->overuse_count = 0;
        f->signal = SIGNAL_UNDERUSE;
    } else {
        f->overuse_time = -1.0;
        f->overuse_count = 0;
        f->signal = SIGNAL_NORMAL;
    }
    f->prev_trend = trend;
    double magnitude = fabs(trend);
    int had_last = f->has_threshold_updated;
    double last = f->threshold_updated;
    f->threshold_updated = now_ms;
    f->has_threshold_updated = 1;
    if (!had_last || magnitude - threshold > f->threshold_max_offset)
        return signalled;
    double gain = magnitude < threshold ? f->k_down : f->k_up;
    double dt = now_ms - last;
    if (dt < 0.0)
        dt = 0.0;
    if (f->threshold_max_dt < dt)
        dt = f->threshold_max_dt;
    threshold += dt * gain * (magnitude - threshold);
    if (f->threshold_min > threshold)
        threshold = f->threshold_min;
    if (f->threshold_max < threshold)
        threshold = f->threshold_max;
    f->threshold = threshold;
    return signalled;
}

/* SendSideEstimator._on_group: one complete group through the filter and the detector. */
static int
on_group(FeedbackMatcher *f, int64_t send_delta_us, int64_t arrival_delta_us, int64_t arrival_us)
{
    if (arrival_delta_us < 0)
        return 0;
    if ((double)arrival_delta_us > f->reset_gap_us || (double)send_delta_us > f->reset_gap_us) {
        trendline_reset(f);
        f->has_threshold_updated = 0;
        return 0;
    }
    double variation_ms = (double)(arrival_delta_us - send_delta_us) / 1000.0;
    double arrival_ms = (double)arrival_us / 1000.0;
    double trend;
    if (!trendline_update(f, variation_ms, arrival_ms, &trend))
        return 0;
    return detect(f, trend, (double)send_delta_us / 1000.0, arrival_ms);
}

/* match(fci, oldest_send_us) -> the tuple SendSideEstimator._match_feedback returns. ValueError, with nothing
 * changed, when the FCI is malformed. */
static PyObject *
FeedbackMatcher_match(FeedbackMatcher *self, PyObject *args)
{
    Py_buffer fci;
    long long oldest_send;
    if (!PyArg_ParseTuple(args, "y*L:match", &fci, &oldest_send))
        return NULL;
    const uint8_t *data = fci.buf;
    Py_ssize_t size = fci.len;
    uint8_t stack_symbols[512];
    uint8_t *symbols = stack_symbols;
    PyObject *probes = NULL, *result = NULL;
    if (size < 8) {
        PyErr_Format(PyExc_ValueError, "transport-cc FCI of %zd bytes is shorter than its 8-byte header", size);
        goto done;
    }
    uint32_t base_seq = ((uint32_t)data[0] << 8) | data[1];
    uint32_t status_count = ((uint32_t)data[2] << 8) | data[3];
    int64_t reference = ((int64_t)data[4] << 16) | ((int64_t)data[5] << 8) | data[6];
    if (reference & 0x800000)  /* §3.1: 24-bit signed */
        reference -= 0x1000000;
    reference *= TWCC_REFERENCE_UNIT_US;
    if (status_count == 0) {
        PyErr_SetString(PyExc_ValueError, "transport-cc feedback with a packet status count of 0");
        goto done;
    }
    if (status_count > sizeof stack_symbols && (symbols = PyMem_Malloc(status_count)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* §3.1.2-3.1.4: chunks until status_count symbols are known. */
    uint32_t known = 0;
    Py_ssize_t pos = 8;
    Py_ssize_t small = 0, large = 0;
    while (known < status_count) {
        if (pos + 2 > size) {
            PyErr_Format(PyExc_ValueError, "transport-cc packet chunks end after %u of %u statuses", known,
                         status_count);
            goto done;
        }
        uint32_t chunk = ((uint32_t)data[pos] << 8) | data[pos + 1];
        pos += 2;
        uint32_t left = status_count - known;
        if (!(chunk & 0x8000)) {  /* §3.1.3 run length chunk */
            uint8_t symbol = (chunk >> 13) & 3;
            uint32_t run = chunk & 0x1FFF;
            if (run > left)
                run = left;
            if (symbol == 3 && run) {
                PyErr_SetString(PyExc_ValueError, "transport-cc run length chunk with the reserved symbol 11");
                goto done;
            }
            memset(symbols + known, symbol, run);
            known += run;
        } else if (chunk & 0x4000) {  /* §3.1.4 status vector, 7 2-bit symbols */
            for (uint32_t k = 0; k < 7 && k < left; k++) {
                uint8_t symbol = (chunk >> (12 - 2 * k)) & 3;
                if (symbol == 3) {
                    PyErr_SetString(PyExc_ValueError, "transport-cc status vector with the reserved symbol 11");
                    goto done;
                }
                symbols[known++] = symbol;
            }
        } else {  /* §3.1.4 status vector, 14 1-bit symbols */
            for (uint32_t k = 0; k < 14 && k < left; k++)
                symbols[known++] = (chunk >> (13 - k)) & 1;
        }
    }
    /* §3.1.5: one receive delta per received packet, all present before anything is changed. */
    for (uint32_t k = 0; k < status_count; k++) {
        if (symbols[k] == 1)
            small++;
        else if (symbols[k] == 2)
            large++;
    }
    if (pos + small + 2 * large > size) {
        Py_ssize_t need = pos;
        uint32_t seq = base_seq;
        for (uint32_t k = 0; k < status_count; k++, seq = (seq + 1) & 0xFFFF) {
            need += symbols[k] == 1 ? 1 : symbols[k] == 2 ? 2 : 0;
            if (need > size)
                break;
        }
        PyErr_Format(PyExc_ValueError, "transport-cc receive deltas end before sequence number %u", seq);
        goto done;
    }

    int64_t *g = self->groups;
    /* The 24-bit reference time wraps every ~12.4 days; unwrap it (as _match_feedback does). */
    if (g[GROUP_REF_RAW] != GROUP_NONE) {
        int64_t step = reference - g[GROUP_REF_RAW];
        if (step > TWCC_REFERENCE_WRAP_US / 2)
            g[GROUP_REF_OFFSET] -= TWCC_REFERENCE_WRAP_US;
        else if (step < -TWCC_REFERENCE_WRAP_US / 2)
            g[GROUP_REF_OFFSET] += TWCC_REFERENCE_WRAP_US;
    }
    g[GROUP_REF_RAW] = reference;
    reference += g[GROUP_REF_OFFSET];

    int64_t received = 0, lost = 0, unknown = 0, received_bytes = 0;
    int64_t first_arrival = 0, first_size = 0, last_arrival = 0, newest_send = 0;
    int have_newest = 0;
    int64_t g_first_send = g[GROUP_FIRST_SEND], g_last_send = g[GROUP_LAST_SEND];
    int64_t g_first_arrival = g[GROUP_FIRST_ARRIVAL], g_last_arrival = g[GROUP_LAST_ARRIVAL];
    int64_t prev_send = g[GROUP_PREV_SEND], prev_arrival = g[GROUP_PREV_ARRIVAL];
    const int64_t burst = self->burst_time_us;
    int64_t ticks = 0;
    uint32_t seq = base_seq;
    int failed = 0, overuse = 0;
    for (uint32_t k = 0; k < status_count && !failed; k++, seq = (seq + 1) & 0xFFFF) {
        uint8_t symbol = symbols[k];
        if (symbol == 1) {
            ticks += data[pos++];
        } else if (symbol == 2) {
            ticks += (int16_t)(((uint16_t)data[pos] << 8) | data[pos + 1]);
            pos += 2;
        }
        uint32_t index = seq & self->mask;
        if (self->seqs[index] != (int32_t)seq) {
            unknown++;
            continue;
        }
        int64_t send = self->times[index];
        if (send < oldest_send)
            continue;
        uint8_t status = self->states[index];
        int32_t cluster = self->clusters[index];
        if (symbol == 0) {
            if (status == LOG_UNREPORTED) {
                self->states[index] = LOG_REPORTED_LOST;
                lost++;
                if (cluster != LOG_NO_CLUSTER) {
                    if ((probes == NULL && (probes = PyList_New(0)) == NULL)
                        || append_ints(probes, 1, cluster, 0, 0, 0) < 0)
                        failed = 1;
                }
            }
            continue;
        }
        if (status == LOG_REPORTED_RECEIVED)
            continue;  /* reported again (twcc.TwccRecorder does after a late arrival) */
        if (status == LOG_REPORTED_LOST)
            lost--;  /* reported lost before, arrived late: not a loss after all */
        self->states[index] = LOG_REPORTED_RECEIVED;
        int64_t arrival = reference + ticks * TWCC_DELTA_UNIT_US;
        int64_t size_bytes = self->sizes[index];
        if (received == 0 || arrival < first_arrival) {
            first_arrival = arrival;
            first_size = size_bytes;
        }
        if (received == 0 || arrival > last_arrival)
            last_arrival = arrival;
        received++;
        received_bytes += size_bytes;
        int64_t record[3] = {arrival, arrival - send, size_bytes};  /* _recent_arrivals.extend(arrivals) */
        if (ring_push(&self->recent, record) < 0) {
            failed = 1;
            continue;
        }
        if (!have_newest || send > newest_send) {
            newest_send = send;
            have_newest = 1;
        }
        if (cluster != LOG_NO_CLUSTER) {
            if ((probes == NULL && (probes = PyList_New(0)) == NULL)
                || append_ints(probes, 4, cluster, send, arrival, size_bytes) < 0) {
                failed = 1;
                continue;
            }
        }
        /* GCC §5.1/§5.2: packet groups (the comments of _match_feedback apply line by line). */
        if (g_first_send == GROUP_NONE) {
            g_first_send = g_last_send = send;
            g_first_arrival = g_last_arrival = arrival;
            continue;
        }
        if (send < g_first_send)
            continue;
        if (send - g_first_send <= burst) {
            if (send > g_last_send)
                g_last_send = send;
            if (arrival > g_last_arrival)
                g_last_arrival = arrival;
            continue;
        }
        int64_t inter_arrival = arrival - g_last_arrival;
        if (inter_arrival < burst && inter_arrival - (send - g_last_send) < 0
            && arrival - g_first_arrival < self->max_burst_us) {
            g_last_send = send;
            if (arrival > g_last_arrival)
                g_last_arrival = arrival;
            continue;
        }
        if (prev_send != GROUP_NONE
            && on_group(self, g_last_send - prev_send, g_last_arrival - prev_arrival, g_last_arrival))
            overuse = 1;
        prev_send = g_last_send;
        prev_arrival = g_last_arrival;
        g_first_send = g_last_send = send;
        g_first_arrival = g_last_arrival = arrival;
    }
    g[GROUP_FIRST_SEND] = g_first_send;
    g[GROUP_LAST_SEND] = g_last_send;
    g[GROUP_FIRST_ARRIVAL] = g_first_arrival;
    g[GROUP_LAST_ARRIVAL] = g_last_arrival;
    g[GROUP_PREV_SEND] = prev_send;
    g[GROUP_PREV_ARRIVAL] = prev_arrival;
    if (failed)
        goto done;
    /* _apply_feedback's window part: R_hat and the recent rate, then the capacity-drop check's run (both only
     * with something received). */
    int64_t run_rate = 0, suspect_rate = 0;
    if (received) {
        if (rate_window_add(&self->rate, self->reset_gap, first_arrival, last_arrival, received_bytes, first_size) < 0
            || rate_window_add(&self->recent_rate, self->reset_gap, first_arrival, last_arrival, received_bytes,
                               first_size) < 0)
            goto done;
        run_rate = queue_run_rate(self, last_arrival, &suspect_rate);
    }
    PyObject *newest = have_newest ? PyLong_FromLongLong(newest_send) : Py_NewRef(Py_None);
    if (newest == NULL)
        goto done;
    PyObject *rate = self->rate.has_bps ? PyLong_FromLongLong(self->rate.bps) : Py_NewRef(Py_None);
    PyObject *recent = self->recent_rate.has_bps ? PyLong_FromLongLong(self->recent_rate.bps) : Py_NewRef(Py_None);
    if (rate == NULL || recent == NULL) {
        Py_DECREF(newest);
        Py_XDECREF(rate);
        Py_XDECREF(recent);
        goto done;
    }
    /* windows: (run rate, R_hat or None, recent rate or None, the early warning's run rate); groups: () (run through
     * on_group above) */
    result = Py_BuildValue("(LLLLLLNL(LNNL)()OOi)", (long long)received, (long long)lost, (long long)received_bytes,
                           (long long)first_arrival, (long long)first_size, (long long)last_arrival, newest,
                           (long long)unknown, (long long)run_rate, rate, recent, (long long)suspect_rate,
                           probes ? probes : Py_None, overuse ? Py_True : Py_False, self->signal);
done:
    if (symbols != stack_symbols)
        PyMem_Free(symbols);
    Py_XDECREF(probes);
    PyBuffer_Release(&fci);
    return result;
}

static PyMethodDef FeedbackMatcher_methods[] = {
    {"match", (PyCFunction)FeedbackMatcher_match, METH_VARARGS,
     "match(fci, oldest_send_us): parse a transport-cc FCI, match it with the send log, run the groups through the "
     "trendline and the over-use detector (bwe._match_feedback + _on_group)"},
    {NULL, NULL, 0, NULL},
};

static PyObject *
FeedbackMatcher_get_threshold(FeedbackMatcher *self, void *closure)
{
    return PyFloat_FromDouble(self->threshold);
}

static PyObject *
FeedbackMatcher_get_trend(FeedbackMatcher *self, void *closure)
{
    return PyFloat_FromDouble(self->prev_trend);
}

static PyGetSetDef FeedbackMatcher_getset[] = {
    {"threshold", (getter)FeedbackMatcher_get_threshold, NULL, "the §5.4 adaptive threshold del_var_th (ms)", NULL},
    {"trend", (getter)FeedbackMatcher_get_trend, NULL, "the last modified trend the detector saw (m(i), ms)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FeedbackMatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._srtp_send.FeedbackMatcher",
    .tp_basicsize = sizeof(FeedbackMatcher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Transport-wide feedback parsed and matched with a viewer's send log (Python-owned arrays).",
    .tp_new = FeedbackMatcher_new,
    .tp_dealloc = (destructor)FeedbackMatcher_dealloc,
    .tp_methods = FeedbackMatcher_methods,
    .tp_getset = FeedbackMatcher_getset,
};

/* GCC §4 via simulcast/bwe.py Pacer.can_send_now: nothing queued, the bucket (refilled to now) not in debt;
 * then charge it. Same arithmetic as Pacer._refill. */
static int
pacer_take(double *bucket, int64_t now_us, double size)
{
    if (bucket[BUCKET_QUEUED] > 0 || (double)now_us < bucket[BUCKET_HOLD])  /* queued, or held (Pacer.hold) */
        return 0;
    double last = bucket[BUCKET_UPDATED];
    double budget = bucket[BUCKET_BUDGET];
    double now = (double)now_us;
    if (last >= 0 && now > last) {
        budget += (now - last) * bucket[BUCKET_RATE];
        if (budget > bucket[BUCKET_BURST])
            budget = bucket[BUCKET_BURST];
    }
    if (last < 0 || now > last)
        bucket[BUCKET_UPDATED] = now;
    bucket[BUCKET_BUDGET] = budget;
    if (budget < 0)
        return 0;
    bucket[BUCKET_BUDGET] = budget - size;
    return 1;
}

/* ---- Lanes: the whole per-viewer forwarding step in C -----------------------------------------------------
 *
 * A LaneGroup holds the viewers of one layer that share one egress profile and are in steady state, "armed" by
 * gateway/sfu/down_track.py: forwarding the layer they receive with no switch pending, no probe cluster sending,
 * no VP9 payload to rewrite and no VP8 temporal layer to filter. For such a viewer forwarding is arithmetic: the current
 * segment of its RtpMunger (simulcast/rtp_munger.py) maps sequence number and timestamp by fixed offsets. `send`
 * does, per incoming packet and for every lane: that mapping (the munger's fast path, same rules: at or after the
 * segment start maps by the offsets; the newest value moves highest_in / last_out / last_ts / last_time), the
 * 12-byte fixed header (RFC 3550 §5.1) in front of the profile's shared bytes, SRTP protect and sendto. No
 * Python object is made per viewer.
 *
 * A viewer with transport-cc has a TransportWide: its lane stamps the next transport-wide sequence number into
 * the profile's slot for it and logs the packet (size on the wire, send time) in the viewer's SendLog. Its video
 * lanes are also paced: when the viewer's pacer has a queue or its bucket is in debt, the packet is not sent but
 * DEFERRED: mapped as if sent (the munger state moves on), and handed back by take_deferred() as (owner, seq, ts, rest)
 * for Python to queue in the pacer, whose timer sends it. The lane stays armed.
 *
 * A VP8 lane also runs simulcast/vp8.py Vp8Munger.rewrite for every temporal layer it forwards (RFC 7741 §4.2):
 * PictureID, TL0PICIDX and KEYIDX continued by the offsets of the current switch, in its buffer; a picture older
 * than the switch, without a picture id, or above the viewer's temporal layer (or starting a layer up: Y bit)
 * sends the lane back to Python first.
 *
 * A lane that cannot take a packet (older than its segment's start, sender closed, libsrtp refused it, lease
 * used up) leaves the group BEFORE that packet, its munger state unchanged by it, and comes back from
 * take_failed() with that state: Python forwards the packet the ordinary way (and may re-arm the lane). The
 * lease sends every lane through the Python path once per `lease` packets, where PacketSender re-checks the
 * nominated ICE candidate pair.
 */
typedef struct {
    PyObject *owner;   /* the DownTrack; strong reference while armed */
    Sender *sender;    /* strong reference */
    uint32_t ssrc;
    uint32_t ts_offset;
    uint32_t last_ts;
    uint16_t in_start;
    uint16_t offset;
    uint16_t highest_in;
    uint16_t last_out;
    double last_time;
    unsigned long long packets;
    unsigned long long octets;
    long lease;
    TransportWide *transport;  /* strong reference, or NULL: no transport-wide sequence number */
    /* VP8 (simulcast/vp8.py Vp8Munger, started, its temporal layer at its target): */
    int vp8;
    int v_ext;                 /* newest incoming picture id, unwrapped to 15 bits */
    int v_picture;             /* incoming picture id of the picture decided last, and its outgoing id */
    int v_picture_out;
    int v_temporal;            /* highest TID forwarded */
    uint16_t p_in_start, p_offset, p_highest_in, p_last_out;  /* its picture id SerialMunger(15) segment */
    uint8_t tl0_offset, last_tl0, has_tl0, keyidx_offset, last_keyidx, has_keyidx;
    char deferred;             /* within one send(): this packet went to take_deferred() */
    char deferred_rewrite;     /* ... with its VP8 payload rewritten (the rewritten bytes go with it) */
    int paced;                 /* video of a transport-cc viewer: the viewer's pacer decides (pacer_take) */
} Lane;

typedef struct {
    PyObject_HEAD
    Lane *lanes;
    Py_ssize_t count;
    Py_ssize_t capacity;
    PyObject *failed;                  /* list of (owner, state) since the last take_failed() */
    PyObject *deferred;                /* list of (owner, seq, ts) the pacers held back, since take_deferred() */
    unsigned long long socket_full;    /* datagrams the socket did not take, since the last take_drops() */
    unsigned long long send_failed;
} LaneGroup;


static PyObject *
lane_state(const Lane *lane)
{
    PyObject *vp8;
    if (lane->vp8)
        vp8 = Py_BuildValue("(iiiiiiiii)", lane->v_ext, lane->v_picture, lane->v_picture_out, (int)lane->p_highest_in,
                            (int)lane->p_last_out, (int)lane->last_tl0, (int)lane->has_tl0, (int)lane->last_keyidx,
                            (int)lane->has_keyidx);
    else
        vp8 = Py_NewRef(Py_None);
    if (vp8 == NULL)
        return NULL;
    return Py_BuildValue("(iiIdKKN)", (int)lane->highest_in, (int)lane->last_out, (unsigned int)lane->last_ts,
                         lane->last_time, lane->packets, lane->octets, vp8);
}

/* Take lane i out of the group (the last lane moves into its place). */
static void
lane_remove(LaneGroup *self, Py_ssize_t i)
{
    Lane *lane = &self->lanes[i];
    PyObject *owner = lane->owner;
    Sender *sender = lane->sender;
    TransportWide *transport = lane->transport;
    self->count--;
    if (i != self->count)
        self->lanes[i] = self->lanes[self->count];
    Py_DECREF(owner);
    Py_DECREF(sender);
    Py_XDECREF(transport);
}

static Py_ssize_t
lane_find(LaneGroup *self, PyObject *owner)
{
    for (Py_ssize_t i = 0; i < self->count; i++)
        if (self->lanes[i].owner == owner)
            return i;
    return -1;
}

static int
lane_fail(LaneGroup *self, Py_ssize_t i)
{
    PyObject *state = lane_state(&self->lanes[i]);
    if (state == NULL)
        return -1;
    PyObject *item = PyTuple_Pack(2, self->lanes[i].owner, state);
    Py_DECREF(state);
    if (item == NULL)
        return -1;
    int err = PyList_Append(self->failed, item);
    Py_DECREF(item);
    if (err < 0)
        return -1;
    lane_remove(self, i);
    return 0;
}

static PyObject *
LaneGroup_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "LaneGroup() takes no arguments");
        return NULL;
    }
    LaneGroup *self = (LaneGroup *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->failed = PyList_New(0);
    self->deferred = PyList_New(0);
    if (self->failed == NULL || self->deferred == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
LaneGroup_traverse(LaneGroup *self, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Py_VISIT(self->lanes[i].owner);
        Py_VISIT(self->lanes[i].sender);
    }
    Py_VISIT(self->failed);
    Py_VISIT(self->deferred);
    return 0;
}

static int
LaneGroup_clear(LaneGroup *self)
{
    while (self->count > 0)
        lane_remove(self, self->count - 1);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->deferred);
    return 0;
}

static void
LaneGroup_dealloc(LaneGroup *self)
{
    PyObject_GC_UnTrack(self);
    LaneGroup_clear(self);
    PyMem_Free(self->lanes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
LaneGroup_arm(LaneGroup *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"owner", "sender", "ssrc", "in_start", "offset", "ts_offset", "highest_in",
                               "last_out", "last_ts", "last_time", "lease", "transport", "paced", "vp8", NULL};
    PyObject *owner, *sender, *transport = Py_None, *vp8 = Py_None;
    unsigned long ssrc, ts_offset, last_ts;
    int in_start, offset, highest_in, last_out, paced = 0;
    double last_time;
    long lease;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!kiikiikdl|OpO", keywords, &owner, &SenderType, &sender, &ssrc,
                                     &in_start, &offset, &ts_offset, &highest_in, &last_out, &last_ts, &last_time,
                                     &lease, &transport, &paced, &vp8))
        return NULL;
    int v[14] = {0};
    if (vp8 != Py_None && !PyArg_ParseTuple(vp8, "iiiiiiiiiiiiii;vp8: (ext, picture, picture_out, temporal, in_start, "
                                            "offset, highest_in, last_out, tl0_offset, last_tl0, has_tl0, keyidx_offset, "
                                            "last_keyidx, has_keyidx)", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                                            &v[7], &v[8], &v[9], &v[10], &v[11], &v[12], &v[13]))
        return NULL;
    if (transport != Py_None && !PyObject_TypeCheck(transport, &TransportWideType)) {
        PyErr_SetString(PyExc_TypeError, "transport must be a TransportWide or None");
        return NULL;
    }
    if (paced && transport == Py_None) {
        PyErr_SetString(PyExc_ValueError, "a paced lane needs its viewer's TransportWide");
        return NULL;
    }
    if (lane_find(self, owner) >= 0) {
        PyErr_SetString(PyExc_ValueError, "already armed in this group");
        return NULL;
    }
    if (lease <= 0) {
        PyErr_SetString(PyExc_ValueError, "lease must be positive");
        return NULL;
    }
    if (self->count == self->capacity) {
        Py_ssize_t capacity = self->capacity ? self->capacity * 2 : 16;
        Lane *lanes = PyMem_Realloc(self->lanes, (size_t)capacity * sizeof(Lane));
        if (lanes == NULL)
            return PyErr_NoMemory();
        self->lanes = lanes;
        self->capacity = capacity;
    }
    Lane *lane = &self->lanes[self->count++];
    Py_INCREF(owner);
    Py_INCREF(sender);
    lane->owner = owner;
    lane->sender = (Sender *)sender;
    lane->ssrc = (uint32_t)ssrc;
    lane->in_start = (uint16_t)in_start;
    lane->offset = (uint16_t)offset;
    lane->ts_offset = (uint32_t)ts_offset;
    lane->highest_in = (uint16_t)highest_in;
    lane->last_out = (uint16_t)last_out;
    lane->last_ts = (uint32_t)last_ts;
    lane->last_time = last_time;
    lane->packets = 0;
    lane->octets = 0;
    lane->lease = lease;
    lane->transport = transport != Py_None ? (TransportWide *)transport : NULL;
    Py_XINCREF(lane->transport);
    lane->paced = paced;
    lane->deferred = 0;
    lane->deferred_rewrite = 0;
    lane->vp8 = vp8 != Py_None;
    lane->v_ext = v[0] & 0x7FFF;
    lane->v_picture = v[1];
    lane->v_picture_out = v[2];
    lane->v_temporal = v[3];
    lane->p_in_start = (uint16_t)(v[4] & 0x7FFF);
    lane->p_offset = (uint16_t)(v[5] & 0x7FFF);
    lane->p_highest_in = (uint16_t)(v[6] & 0x7FFF);
    lane->p_last_out = (uint16_t)(v[7] & 0x7FFF);
    lane->tl0_offset = (uint8_t)v[8];
    lane->last_tl0 = (uint8_t)v[9];
    lane->has_tl0 = v[10] != 0;
    lane->keyidx_offset = (uint8_t)(v[11] & 0x1F);
    lane->last_keyidx = (uint8_t)(v[12] & 0x1F);
    lane->has_keyidx = v[13] != 0;
    Py_RETURN_NONE;
}

static PyObject *
LaneGroup_disarm(LaneGroup *self, PyObject *owner)
{
    Py_ssize_t i = lane_find(self, owner);
    if (i < 0)
        Py_RETURN_NONE;
    PyObject *state = lane_state(&self->lanes[i]);
    if (state != NULL)
        lane_remove(self, i);
    return state;
}

static PyObject *
LaneGroup_counts(LaneGroup *self, PyObject *owner)
{
    Py_ssize_t i = lane_find(self, owner);
    if (i < 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(KK)", self->lanes[i].packets, self->lanes[i].octets);
}

/* Datagrams of lanes on ONE socket leave in one sendmmsg (rtc.udp_port: every viewer shares the gateway's socket);
 * lanes on their own sockets (a port per session) make batches of one. Protected straight into these slots. */
#define BATCH 32
static unsigned char batch_buffers[BATCH][MAX_PACKET + MAX_TRAILER];
static struct mmsghdr batch_messages[BATCH];
static struct iovec batch_iovecs[BATCH];

typedef struct {
    int count;
    int fd;
    dev_t dev;
    ino_t ino;
    Py_ssize_t lane[BATCH];  /* lane indices: below the loop's index, so a lane leaving the group moves none of them */
} Batch;

static void
batch_drop(LaneGroup *self, Sender *sender, int error)
{
    sender->dropped++;
    sender->last_errno = error;
    if (error == EAGAIN || error == EWOULDBLOCK || error == ENOBUFS)
        self->socket_full++;
    else
        self->send_failed++;
}

static void
batch_flush(LaneGroup *self, Batch *batch, long *sent, unsigned long long payload_len)
{
    int done = 0;
    while (done < batch->count) {
        int n;
        do {
            n = sendmmsg(batch->fd, batch_messages + done, (unsigned int)(batch->count - done), MSG_DONTWAIT);
        } while (n < 0 && errno == EINTR);
        if (n <= 0) {
            /* the first datagram left was not taken (socket buffer full, ...): UDP loses it; go on after it */
            batch_drop(self, self->lanes[batch->lane[done]].sender, n < 0 ? errno : EAGAIN);
            done++;
            continue;
        }
        for (int k = done; k < done + n; k++) {
            Lane *lane = &self->lanes[batch->lane[k]];
            lane->packets++;
            lane->octets += payload_len;
        }
        *sent += n;
        done += n;
    }
    batch->count = 0;
}

static int64_t
monotonic_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);  /* Python's time.monotonic_ns() clock: the send log's timebase */
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* The munger's fast path moves on as the packet leaves (or is deferred to the pacer): simulcast/rtp_munger.py */
static inline void
lane_advance(Lane *lane, uint16_t seq, uint16_t out_seq, uint32_t out_ts, double now)
{
    uint16_t ahead = (uint16_t)(seq - lane->highest_in);
    if (ahead != 0 && ahead < 0x8000) {
        lane->highest_in = seq;
        lane->last_out = out_seq;
        if (out_ts != lane->last_ts) {
            lane->last_ts = out_ts;
            lane->last_time = now;
        }
    }
}

/* An error in the middle of send(): the packets deferred so far are lost (their lanes stay armed, their state
 * moved on as for a loss on the way), and no flag may outlive this call. */
static PyObject *
lanes_abandon_deferred(LaneGroup *self)
{
    for (Py_ssize_t k = 0; k < self->count; k++)
        self->lanes[k].deferred = 0;
    return NULL;
}

/* One packet's VP8 payload descriptor (simulcast/vp8.py parse_descriptor, parsed once per packet in Python);
 * -1 = absent. Offsets are from the payload's start. */
typedef struct {
    int present;
    int picture_id, m, picture_id_offset, tl0, tl0_offset, keyidx, tk_offset, tid, y, keyframe;
} Vp8Fields;

/* What Vp8Munger.rewrite decides for this lane and packet, without changing the lane (so that a lane that must
 * leave leaves before the packet): 0 = the lane cannot take it (Python decides), else 1 and *out filled. */
typedef struct {
    int ext, picture, picture_out, highest, last_out, last_tl0, has_tl0, last_keyidx, has_keyidx;
    int rewrite;  /* the payload's fields change */
} Vp8Step;

static int
vp8_step(const Lane *lane, const Vp8Fields *d, Vp8Step *out)
{
    if (d->picture_id < 0)
        return 0;  /* no picture ids: Vp8Munger decides per packet; rare (browsers send them) */
    out->ext = lane->v_ext;
    out->picture = lane->v_picture;
    out->picture_out = lane->v_picture_out;
    out->highest = lane->p_highest_in;
    out->last_out = lane->p_last_out;
    out->last_tl0 = lane->last_tl0;
    out->has_tl0 = lane->has_tl0;
    out->last_keyidx = lane->last_keyidx;
    out->has_keyidx = lane->has_keyidx;
    int pid = d->picture_id;
    if (pid != out->picture) {  /* Vp8Munger._begin_picture */
        int ext;
        if (d->m) {
            ext = pid;
        } else {  /* unwrap a 7-bit id against the newest one */
            int delta = (pid - out->ext) & 0x7F;
            ext = (out->ext + (delta >= 64 ? delta - 128 : delta)) & 0x7FFF;
        }
        if (((ext - lane->p_in_start) & 0x7FFF) >= 0x4000)
            return 0;  /* older than the switch: SerialMunger._map_older */
        int ahead = (ext - out->highest) & 0x7FFF;
        int newest = ahead != 0 && ahead < 0x4000;
        int tid = d->tid < 0 ? 0 : d->tid;
        /* Vp8Munger._decide with the temporal layer at its target: a key frame changes nothing; a Y frame one
         * layer up would raise it (never: the target is the current layer); a frame above it is dropped */
        if (tid > lane->v_temporal)
            return 0;
        int mapped = (ext + lane->p_offset) & 0x7FFF;
        if (newest) {
            out->ext = ext;
            out->highest = ext;
            out->last_out = mapped;
            if (d->tl0 >= 0) {  /* Vp8Munger._note_forwarded */
                int tl0 = (d->tl0 + lane->tl0_offset) & 0xFF;
                int step = (tl0 - out->last_tl0) & 0xFF;
                if ((step > 0 && step < 0x80) || !out->has_tl0) {
                    out->last_tl0 = tl0;
                    out->has_tl0 = 1;
                }
            }
            if (d->keyidx >= 0) {
                int key = (d->keyidx + lane->keyidx_offset) & 0x1F;
                int step = (key - out->last_keyidx) & 0x1F;
                if ((step > 0 && step < 0x10) || !out->has_keyidx) {
                    out->last_keyidx = key;
                    out->has_keyidx = 1;
                }
            }
        }
        out->picture = pid;
        out->picture_out = mapped;
    }
    int out_pid = d->m ? out->picture_out : out->picture_out & 0x7F;
    out->rewrite = out_pid != pid || (d->tl0 >= 0 && lane->tl0_offset) || (d->keyidx >= 0 && lane->keyidx_offset);
    return 1;
}

static void
vp8_commit(Lane *lane, const Vp8Step *step)
{
    lane->v_ext = step->ext;
    lane->v_picture = step->picture;
    lane->v_picture_out = step->picture_out;
    lane->p_highest_in = (uint16_t)step->highest;
    lane->p_last_out = (uint16_t)step->last_out;
    lane->last_tl0 = (uint8_t)step->last_tl0;
    lane->has_tl0 = (uint8_t)step->has_tl0;
    lane->last_keyidx = (uint8_t)step->last_keyidx;
    lane->has_keyidx = (uint8_t)step->has_keyidx;
}

/* Vp8Munger.rewrite's writes, into the payload at `payload` (the packet's last payload_len bytes) */
static void
vp8_write(unsigned char *payload, const Lane *lane, const Vp8Fields *d, const Vp8Step *step)
{
    int out_pid = step->picture_out;
    if (d->m) {
        payload[d->picture_id_offset] = (unsigned char)(0x80 | (out_pid >> 8));
        payload[d->picture_id_offset + 1] = (unsigned char)out_pid;
    } else {
        payload[d->picture_id_offset] = (unsigned char)(out_pid & 0x7F);
    }
    if (d->tl0 >= 0)
        payload[d->tl0_offset] = (unsigned char)((d->tl0 + lane->tl0_offset) & 0xFF);
    if (d->keyidx >= 0)
        payload[d->tk_offset] = (unsigned char)((payload[d->tk_offset] & 0xE0) | ((d->keyidx + lane->keyidx_offset) & 0x1F));
}

/* send(first_word, head, rest, seq, ts, now, payload_len, paced_size[, vp8]) -> packets sent.
 * head: the profile's bytes in front of the transport-wide sequence number slot (b"" without transport-cc);
 * paced_size: what the viewer's pacer charges for the packet (down_track.PACED_HEADER_BYTES + len(rest));
 * vp8: None, or the packet's VP8 descriptor as (picture_id, m, picture_id_offset, tl0picidx, tl0picidx_offset, keyidx,
 * tk_offset, tid, y, keyframe), -1 for what is absent. */
static PyObject *
LaneGroup_send(LaneGroup *self, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 8 && nargs != 9) || !PyBytes_CheckExact(args[1]) || !PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "send(first_word: int, head: bytes, rest: bytes, seq: int, ts: int, now: float, "
                                         "payload_len: int, paced_size: int[, vp8: tuple | None])");
        return NULL;
    }
    Vp8Fields vp8 = {0};
    if (nargs == 9 && args[8] != Py_None) {
        if (!PyArg_ParseTuple(args[8], "iiiiiiiiii;vp8: (picture_id, m, picture_id_offset, tl0picidx, tl0picidx_offset, "
                              "keyidx, tk_offset, tid, y, keyframe)", &vp8.picture_id, &vp8.m, &vp8.picture_id_offset,
                              &vp8.tl0, &vp8.tl0_offset, &vp8.keyidx, &vp8.tk_offset, &vp8.tid, &vp8.y, &vp8.keyframe))
            return NULL;
        vp8.present = 1;
    }
    unsigned long first_word = PyLong_AsUnsignedLong(args[0]);
    unsigned long seq_in = PyLong_AsUnsignedLong(args[3]);
    unsigned long ts_in = PyLong_AsUnsignedLong(args[4]);
    double now = PyFloat_AsDouble(args[5]);
    long payload_len = PyLong_AsLong(args[6]);
    long paced_size = PyLong_AsLong(args[7]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t head_len = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t rest_len = PyBytes_GET_SIZE(args[2]);
    if (head_len != 0 && head_len != 5 && head_len != 6) {
        PyErr_SetString(PyExc_ValueError, "head: the one-byte (5) or two-byte (6) extension bytes before the slot");
        return NULL;
    }
    Py_ssize_t slot = head_len ? MIN_RTP_HEADER + head_len : 0;  /* where the transport-wide seq goes */
    Py_ssize_t total = MIN_RTP_HEADER + (head_len ? head_len + 2 : 0) + rest_len;
    if (total > MAX_PACKET) {
        PyErr_Format(PyExc_ValueError, "packet of %zd bytes (at most %d)", total, MAX_PACKET);
        return NULL;
    }
    int length = (int)total;
    if (vp8.present) {  /* every offset inside the payload, the 15-bit id's second octet included */
        long last = payload_len - 1;
        if (payload_len < 1 || payload_len > rest_len || vp8.picture_id_offset + (vp8.m ? 1 : 0) > last
            || vp8.tl0_offset > last || vp8.tk_offset > last
            || (vp8.picture_id >= 0 && vp8.picture_id_offset < 0) || (vp8.tl0 >= 0 && vp8.tl0_offset < 0)
            || (vp8.keyidx >= 0 && vp8.tk_offset < 0)) {
            PyErr_SetString(PyExc_ValueError, "vp8: offsets outside the payload");
            return NULL;
        }
    }
    const char *head = PyBytes_AS_STRING(args[1]);
    const char *rest = PyBytes_AS_STRING(args[2]);
    uint16_t seq = (uint16_t)seq_in;
    uint32_t ts = (uint32_t)ts_in;
    int64_t now_us = head_len ? monotonic_us() : 0;
    long sent = 0;
    Py_ssize_t deferred = 0;
    Batch batch;
    batch.count = 0;
    Py_ssize_t i = 0;
    while (i < self->count) {
        Lane *lane = &self->lanes[i];
        Sender *sender = lane->sender;
        TransportWide *tw = lane->transport;
        if ((uint16_t)(seq - lane->in_start) >= 0x8000 || lane->lease <= 0 || sender->fd < 0
            || (tw != NULL) != (head_len != 0) || (tw != NULL && tw->counters[COUNTER_PROBING])) {
            /* lane_fail makes Python objects (a GC pass may run Python code): nothing may wait in the batch */
            batch_flush(self, &batch, &sent, (unsigned long long)payload_len);
            if (lane_fail(self, i) < 0)
                return lanes_abandon_deferred(self);
            continue;
        }
        Vp8Step step = {0};
        int munge = lane->vp8 && vp8.present;
        if (munge && !vp8_step(lane, &vp8, &step)) {
            batch_flush(self, &batch, &sent, (unsigned long long)payload_len);
            if (lane_fail(self, i) < 0)
                return lanes_abandon_deferred(self);
            continue;
        }
        uint16_t out_seq = (uint16_t)(seq + lane->offset);
        uint32_t out_ts = ts + lane->ts_offset;
        if (lane->paced && !pacer_take(tw->bucket, now_us, (double)paced_size)) {
            if (munge)  /* DownTrack.forward: the VP8 munger decides, the RTP munger maps, then the pacer queues */
                vp8_commit(lane, &step);
            lane->deferred_rewrite = munge && step.rewrite;
            lane_advance(lane, seq, out_seq, out_ts, now);
            lane->deferred = 1;
            deferred++;
            i++;
            continue;
        }
        if (batch.count == BATCH || (batch.count && (sender->sock_ino != batch.ino || sender->sock_dev != batch.dev)))
            batch_flush(self, &batch, &sent, (unsigned long long)payload_len);
        unsigned char *buffer = batch_buffers[batch.count];
        uint32_t ssrc = lane->ssrc;
        buffer[0] = (unsigned char)(first_word >> 8);
        buffer[1] = (unsigned char)first_word;
        buffer[2] = (unsigned char)(out_seq >> 8);
        buffer[3] = (unsigned char)out_seq;
        buffer[4] = (unsigned char)(out_ts >> 24);
        buffer[5] = (unsigned char)(out_ts >> 16);
        buffer[6] = (unsigned char)(out_ts >> 8);
        buffer[7] = (unsigned char)out_ts;
        buffer[8] = (unsigned char)(ssrc >> 24);
        buffer[9] = (unsigned char)(ssrc >> 16);
        buffer[10] = (unsigned char)(ssrc >> 8);
        buffer[11] = (unsigned char)ssrc;
        uint16_t transport_seq = 0;
        if (slot) {
            transport_seq = (uint16_t)tw->counters[COUNTER_NEXT_SEQ];
            memcpy(buffer + MIN_RTP_HEADER, head, (size_t)head_len);
            buffer[slot] = (unsigned char)(transport_seq >> 8);
            buffer[slot + 1] = (unsigned char)transport_seq;
            memcpy(buffer + slot + 2, rest, (size_t)rest_len);
        } else {
            memcpy(buffer + MIN_RTP_HEADER, rest, (size_t)rest_len);
        }
        if (munge && step.rewrite)
            vp8_write(buffer + length - payload_len, lane, &vp8, &step);
        int out_len = length;
        if (sender->protect(sender->ctx, buffer, &out_len) != 0) {
            if (lane->paced)  /* not sent after all: give the pacer its budget back */
                tw->bucket[BUCKET_BUDGET] += (double)paced_size;
            batch_flush(self, &batch, &sent, (unsigned long long)payload_len);
            if (lane_fail(self, i) < 0)
                return lanes_abandon_deferred(self);
            continue;
        }
        /* The packet went through libsrtp (its sequence number is used): the munger's state moves on. */
        if (munge)
            vp8_commit(lane, &step);
        lane_advance(lane, seq, out_seq, out_ts, now);
        if (tw != NULL) {  /* simulcast/bwe.py SendLog.record(transport_seq, size on the wire, now) */
            tw->counters[COUNTER_NEXT_SEQ] = (transport_seq + 1) & 0xFFFF;
            uint32_t index = transport_seq & tw->mask;
            tw->seqs[index] = transport_seq;
            tw->sizes[index] = out_len;
            tw->times[index] = now_us;
            tw->clusters[index] = -1;  /* bwe.NO_CLUSTER: a lane never sends during a probe cluster */
            tw->states[index] = 0;     /* bwe._UNREPORTED */
        }
        lane->lease--;
        struct mmsghdr *message = &batch_messages[batch.count];
        batch_iovecs[batch.count].iov_base = buffer;
        batch_iovecs[batch.count].iov_len = (size_t)out_len;
        memset(&message->msg_hdr, 0, sizeof(message->msg_hdr));
        message->msg_hdr.msg_name = &sender->addr;
        message->msg_hdr.msg_namelen = sender->addrlen;
        message->msg_hdr.msg_iov = &batch_iovecs[batch.count];
        message->msg_hdr.msg_iovlen = 1;
        if (batch.count == 0) {
            batch.fd = sender->fd;
            batch.dev = sender->sock_dev;
            batch.ino = sender->sock_ino;
        }
        batch.lane[batch.count++] = i;
        i++;
    }
    batch_flush(self, &batch, &sent, (unsigned long long)payload_len);
    /* Only now (no datagram waits in the static batch) the deferred packets become Python objects. */
    for (Py_ssize_t k = 0; deferred > 0 && k < self->count; k++) {
        Lane *lane = &self->lanes[k];
        if (!lane->deferred)
            continue;
        lane->deferred = 0;
        deferred--;
        PyObject *rewritten = Py_None;
        if (lane->deferred_rewrite) {  /* the rest of the packet as this viewer gets it (Vp8Munger.rewrite) */
            rewritten = PyBytes_FromStringAndSize(rest, rest_len);
            if (rewritten == NULL)
                return lanes_abandon_deferred(self);
            Vp8Step step = {0};
            step.picture_out = lane->v_picture_out;
            vp8_write((unsigned char *)PyBytes_AS_STRING(rewritten) + rest_len - payload_len, lane, &vp8, &step);
        } else {
            Py_INCREF(rewritten);
        }
        PyObject *item = Py_BuildValue("(OiIN)", lane->owner, (int)(uint16_t)(seq + lane->offset),
                                       (unsigned int)(ts + lane->ts_offset), rewritten);
        if (item == NULL || PyList_Append(self->deferred, item) < 0) {
            Py_XDECREF(item);
            return lanes_abandon_deferred(self);
        }
        Py_DECREF(item);
    }
    return PyLong_FromLong(sent);
}

/* Hand the list in *slot to the caller and leave an empty one in its place. */
static PyObject *
take_list(PyObject **slot)
{
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    PyObject *taken = *slot;
    *slot = fresh;
    return taken;
}

static PyObject *
LaneGroup_take_deferred(LaneGroup *self, PyObject *unused)
{
    return take_list(&self->deferred);
}

static PyObject *
LaneGroup_take_failed(LaneGroup *self, PyObject *unused)
{
    return take_list(&self->failed);
}

static PyObject *
LaneGroup_take_drops(LaneGroup *self, PyObject *unused)
{
    PyObject *drops = Py_BuildValue("(KK)", self->socket_full, self->send_failed);
    if (drops != NULL)
        self->socket_full = self->send_failed = 0;
    return drops;
}

static PyObject *
LaneGroup_get_failed(LaneGroup *self, void *closure)
{
    return PyLong_FromSsize_t(PyList_GET_SIZE(self->failed));
}

static PyObject *
LaneGroup_get_deferred(LaneGroup *self, void *closure)
{
    return PyLong_FromSsize_t(PyList_GET_SIZE(self->deferred));
}

static PyObject *
LaneGroup_get_drops(LaneGroup *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->socket_full + self->send_failed);
}

static Py_ssize_t
LaneGroup_length(LaneGroup *self)
{
    return self->count;
}

static PyMethodDef LaneGroup_methods[] = {
    {"arm", (PyCFunction)(void (*)(void))LaneGroup_arm, METH_VARARGS | METH_KEYWORDS,
     "Add a lane: its owner, its Sender, SSRC and munger state (in_start, offset, ts_offset, highest_in, last_out, "
     "last_ts, last_time), and its lease in packets."},
    {"disarm", (PyCFunction)LaneGroup_disarm, METH_O,
     "Remove owner's lane: (highest_in, last_out, last_ts, last_time, packets, octets), or None if not armed."},
    {"counts", (PyCFunction)LaneGroup_counts, METH_O, "(packets, octets) sent on owner's lane, or None."},
    {"send", (PyCFunction)(void (*)(void))LaneGroup_send, METH_FASTCALL,
     "send(first_word, head, rest, seq, ts, now, payload_len, paced_size): forward one packet on every lane; "
     "packets sent."},
    {"take_deferred", (PyCFunction)LaneGroup_take_deferred, METH_NOARGS,
     "[(owner, seq, ts, rest), ...] of the packets the viewers' pacers held back since the last call (to queue there); "
     "rest: the template's last part with the viewer's VP8 fields, or None when the shared one is the viewer's."},
    {"take_failed", (PyCFunction)LaneGroup_take_failed, METH_NOARGS,
     "[(owner, state), ...] of the lanes that left the group before a packet since the last call."},
    {"take_drops", (PyCFunction)LaneGroup_take_drops, METH_NOARGS,
     "(socket full, send failed) datagrams dropped since the last call."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef LaneGroup_getset[] = {
    {"failed", (getter)LaneGroup_get_failed, NULL, "lanes waiting in take_failed()", NULL},
    {"deferred", (getter)LaneGroup_get_deferred, NULL, "packets waiting in take_deferred()", NULL},
    {"drops", (getter)LaneGroup_get_drops, NULL, "datagrams dropped since take_drops()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods LaneGroup_as_sequence = {
    .sq_length = (lenfunc)LaneGroup_length,
};

static PyTypeObject LaneGroupType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._srtp_send.LaneGroup",
    .tp_basicsize = sizeof(LaneGroup),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The armed viewers of one layer and egress profile: map, header, protect and send per packet in C.",
    .tp_new = LaneGroup_new,
    .tp_traverse = (traverseproc)LaneGroup_traverse,
    .tp_clear = (inquiry)LaneGroup_clear,
    .tp_dealloc = (destructor)LaneGroup_dealloc,
    .tp_methods = LaneGroup_methods,
    .tp_getset = LaneGroup_getset,
    .tp_as_sequence = &LaneGroup_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway._srtp_send", "whipgate's optional SRTP protect + sendto fast path", -1, NULL,
};

PyMODINIT_FUNC
PyInit__srtp_send(void)
{
    if (PyType_Ready(&SenderType) < 0 || PyType_Ready(&LaneGroupType) < 0 || PyType_Ready(&TransportWideType) < 0
        || PyType_Ready(&FeedbackMatcherType) < 0 || PyType_Ready(&UnprotectorType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SenderType);
    if (PyModule_AddObject(m, "Sender", (PyObject *)&SenderType) < 0) {
        Py_DECREF(&SenderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&TransportWideType);
    if (PyModule_AddObject(m, "TransportWide", (PyObject *)&TransportWideType) < 0) {
        Py_DECREF(&TransportWideType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&FeedbackMatcherType);
    if (PyModule_AddObject(m, "FeedbackMatcher", (PyObject *)&FeedbackMatcherType) < 0) {
        Py_DECREF(&FeedbackMatcherType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&LaneGroupType);
    if (PyModule_AddObject(m, "LaneGroup", (PyObject *)&LaneGroupType) < 0) {
        Py_DECREF(&LaneGroupType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&UnprotectorType);
    if (PyModule_AddObject(m, "Unprotector", (PyObject *)&UnprotectorType) < 0) {
        Py_DECREF(&UnprotectorType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_PACKET", MAX_PACKET) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
