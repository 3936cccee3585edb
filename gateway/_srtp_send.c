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
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

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
    if (self->fd >= 0)
        close(self->fd);
    self->fd = copy;
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

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway._srtp_send", "whipgate's optional SRTP protect + sendto fast path", -1, NULL,
};

PyMODINIT_FUNC
PyInit__srtp_send(void)
{
    if (PyType_Ready(&SenderType) < 0)
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
    if (PyModule_AddIntConstant(m, "MAX_PACKET", MAX_PACKET) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
