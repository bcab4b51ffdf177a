/* One rtnetlink round trip with the GIL released: trio_ocserv._netlink.transact.
 *
 * A tun is configured (address, MTU, up) in a worker thread while the event loop answers the
 * client and runs its DTLS handshake. Done with Python's socket module, that worker takes the
 * GIL back after every system call and stalls the event loop each time; here the whole
 * exchange (socket, bind, send, every reply, close) runs without it. Python builds the requests
 * and parses the replies (trio_ocserv.net.link); this file only moves bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/netlink.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define RECEIVE_SIZE 65536
#define MAX_REPLY (4 << 20)   /* a few requests' acks and links: far below this */
#define MAX_DATAGRAMS 256     /* likewise */

/* Count the NLMSG_ERROR messages (one ack per request) in data[0:len]. */
static int count_acks(const unsigned char *data, size_t len) {
    int acks = 0;
    size_t offset = 0;
    while (offset + sizeof(struct nlmsghdr) <= len) {
        struct nlmsghdr header;
        memcpy(&header, data + offset, sizeof header);
        if (header.nlmsg_len < sizeof header || offset + header.nlmsg_len > len) break;
        if (header.nlmsg_type == NLMSG_ERROR) acks++;
        offset += NLMSG_ALIGN(header.nlmsg_len);
    }
    return acks;
}

/* Send `request` and read until `acks` acks arrived: the datagrams end to end in *reply_out,
 * each one's end in ends[0:*count]. 0, or an errno (nothing to free then). */
static int exchange(const void *request, size_t request_len, int acks, double timeout,
                    unsigned char **reply_out, size_t *ends, int *count) {
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    struct timeval limit = {.tv_sec = (time_t)timeout,
                            .tv_usec = (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6)};
    unsigned char *reply = NULL;
    size_t used = 0, size = 0;
    int err = 0, seen = 0, datagrams = 0;
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return errno;
    /* The kernel answers before sendto returns; a lost ack must not hang a worker thread. */
    if (bind(fd, (struct sockaddr *)&kernel, sizeof kernel) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) < 0 ||
        sendto(fd, request, request_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
        err = errno;
        goto done;
    }
    while (seen < acks) {
        if (datagrams == MAX_DATAGRAMS) {
            err = ENOBUFS;
            goto done;
        }
        if (size - used < RECEIVE_SIZE) {
            size_t bigger = size ? size * 2 : 2 * RECEIVE_SIZE;
            unsigned char *grown;
            if (bigger > MAX_REPLY || !(grown = realloc(reply, bigger))) {
                err = ENOBUFS;
                goto done;
            }
            reply = grown;
            size = bigger;
        }
        ssize_t got = recv(fd, reply + used, RECEIVE_SIZE, 0);
        if (got < 0) {
            if (errno == EINTR) continue;
            err = errno; /* EAGAIN: the timeout */
            goto done;
        }
        /* Datagrams hold whole messages: each one is counted (and parsed later) alone. */
        seen += count_acks(reply + used, (size_t)got);
        used += (size_t)got;
        ends[datagrams++] = used;
    }
done:
    close(fd);
    if (err) {
        free(reply);
        return err;
    }
    *reply_out = reply;
    *count = datagrams;
    return 0;
}

static PyObject *transact(PyObject *module, PyObject *args) {
    Py_buffer request;
    int acks;
    double timeout;
    unsigned char *reply = NULL;
    size_t ends[MAX_DATAGRAMS];
    int count = 0;
    if (!PyArg_ParseTuple(args, "y*id", &request, &acks, &timeout)) return NULL;
    if (acks < 1 || timeout <= 0) {
        PyBuffer_Release(&request);
        PyErr_SetString(PyExc_ValueError, "acks must be >= 1 and the timeout > 0");
        return NULL;
    }
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = exchange(request.buf, (size_t)request.len, acks, timeout, &reply, ends, &count);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&request);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *result = PyList_New(count);
    size_t start = 0;
    for (int i = 0; result && i < count; i++) {
        PyObject *datagram =
            PyBytes_FromStringAndSize((const char *)reply + start, (Py_ssize_t)(ends[i] - start));
        if (!datagram) Py_CLEAR(result);
        else PyList_SET_ITEM(result, i, datagram);
        start = ends[i];
    }
    free(reply);
    return result;
}

static PyMethodDef methods[] = {
    {"transact", transact, METH_VARARGS,
     "transact(request: bytes, acks: int, timeout: float) -> list[bytes]\n\n"
     "Send rtnetlink request messages (each with NLM_F_ACK) on a new NETLINK_ROUTE socket and\n"
     "return the datagrams that came back until `acks` acks did, with the GIL released.\n"
     "Raises OSError (EAGAIN when `timeout` seconds passed without the last ack)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "trio_ocserv._netlink",
    "rtnetlink round trips without the GIL (see _netlink.c)", -1, methods,
};

PyMODINIT_FUNC PyInit__netlink(void) { return PyModule_Create(&module); }
