/* The DTLS data path's per-packet loop in C: UDP -> AES-GCM open -> tun, and tun -> AES-GCM seal
 * -> UDP, in batches (recvmmsg/sendmmsg), with no Python object per packet.
 *
 * What this owns: one established epoch's AES-GCM keys, its anti-replay window (RFC 6347
 * 4.1.2.6, the same rules as protocol/dtls/replay.py), its record numbering and its counters
 * (GcmDataPath); and, optionally, the UDP socket's receive loop on a thread without the GIL
 * (UdpReceiver), which also answers a login's DTLS handshake when _dtls_handshake_answer.c can
 * (the Python engine still sees and checks every step). What it must not do: any other
 * handshake work, timer, policy or fd lifetime. The Python engine (protocol/dtls/endpoint.py)
 * shares this object's replay window and numbering;
 * everything that is not an application-data record of this epoch carrying a DATA packet goes
 * back to Python untouched (or, for DPD and DISCONNECT, decrypted).
 *
 * Record layout (RFC 5288 in DTLS 1.2): header(13) = type, version, epoch<<48|seq, length;
 * body = explicit nonce(8) = epoch_seq, ciphertext, tag(16); nonce = salt(4) || explicit(8);
 * AAD = epoch_seq(8) type(1) version(2) plaintext length(2). The plaintext starts with the
 * AnyConnect payload type (0x00 = an IP packet).
 *
 * Python never needs this module: without it the pure-Python path does the same work.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <sys/epoll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_dtls_handshake_answer.h"

#define HEADER_LEN 13
#define EXPLICIT_LEN 8
#define TAG_LEN 16
#define OVERHEAD (HEADER_LEN + EXPLICIT_LEN + TAG_LEN)
#define CONTENT_APPLICATION_DATA 23
#define PAYLOAD_DATA 0x00
#define MAX_SEQUENCE ((1ULL << 48) - 1)
#define WINDOW_SIZE 64
/* A slot holds one datagram: any DTLS record we accept is far below this. */
#define SLOT_SIZE (16384 + 256)
#define BATCH 64

typedef unsigned char Slot[SLOT_SIZE];

/* ----------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *read_ctx;
    EVP_CIPHER_CTX *write_ctx;
    unsigned char read_salt[4];
    unsigned char write_salt[4];
    unsigned int epoch;
    unsigned int version;
    /* replay window: highest sequence seen (-1: none) and bit i = (highest - i) seen */
    long long highest;
    unsigned long long bitmap;
    /* where forward_tun sends and receive_udp writes; -1 when detached */
    int tun_fd;
    int udp_fd;
    struct sockaddr_storage peer;
    socklen_t peer_len;
    /* the next epoch<<48|seq to seal with: the engine numbers its own records from here too */
    unsigned long long write_next;
    /* receive_udp forwards the tun right after a batch of this path's records (a ping reply
     * leaves before any Python runs); Python clears it while the DTLS path is down */
    int forwarding;
    /* counters since the last take_counts(), and the last UDP send error seen */
    unsigned long long packets_in, bytes_in, packets_out, bytes_out;
    /* valid records received (any payload): what proves the peer is there */
    unsigned long long records_in;
    int send_errno;
    /* set by receive_udp when this path got at least one record in the current batch */
    int touched;
    /* set while a UdpReceiver thread routes to this path: its lock guards all of the above
     * against that thread (Python callers hold the GIL and take it too) */
    pthread_mutex_t *lock;
    /* how many of that receiver's routes name this path; the lock goes with the last one */
    int routes;
    /* that receiver, and the slot its thread watches this path's tun under (-1: not watched;
     * only while forwarding) */
    struct UdpReceiver *receiver;
    int watch_slot;
    /* in the receiver's list of paths to report to Python */
    int pending;
    PyObject *owner;
} GcmDataPath;

struct UdpReceiver;
static void watch_tun(struct UdpReceiver *receiver, GcmDataPath *path);
static void unwatch_tun(struct UdpReceiver *receiver, GcmDataPath *path);

#define PATH_LOCK(p) do { if ((p)->lock) pthread_mutex_lock((p)->lock); } while (0)
#define PATH_UNLOCK(p) do { if ((p)->lock) pthread_mutex_unlock((p)->lock); } while (0)

static PyTypeObject GcmDataPathType;

static int replay_check(GcmDataPath *self, unsigned long long seq) {
    if ((long long)seq > self->highest) return 1;
    unsigned long long offset = (unsigned long long)(self->highest - (long long)seq);
    if (offset >= WINDOW_SIZE) return 0;
    return !((self->bitmap >> offset) & 1ULL);
}

static void replay_mark(GcmDataPath *self, unsigned long long seq) {
    if ((long long)seq > self->highest) {
        unsigned long long shift = (unsigned long long)((long long)seq - self->highest);
        self->bitmap = shift >= WINDOW_SIZE ? 1ULL : ((self->bitmap << shift) | 1ULL);
        self->highest = (long long)seq;
    } else if (self->highest - (long long)seq < WINDOW_SIZE) {
        self->bitmap |= 1ULL << (unsigned long long)(self->highest - (long long)seq);
    }
}

static const EVP_CIPHER *gcm_for(Py_ssize_t key_len) {
    if (key_len == 16) return EVP_aes_128_gcm();
    if (key_len == 32) return EVP_aes_256_gcm();
    return NULL;
}

static EVP_CIPHER_CTX *make_ctx(const unsigned char *key, Py_ssize_t key_len, int encrypt) {
    const EVP_CIPHER *cipher = gcm_for(key_len);
    if (cipher == NULL) return NULL;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return NULL;
    if (EVP_CipherInit_ex(ctx, cipher, NULL, NULL, NULL, encrypt) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, NULL, encrypt) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static void put_u64(unsigned char *p, unsigned long long v) {
    for (int i = 7; i >= 0; i--) { p[i] = (unsigned char)v; v >>= 8; }
}

static unsigned long long get_u64(const unsigned char *p) {
    unsigned long long v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

/* The GCM nonce and AAD of the record at `rec` (header and explicit nonce in place). */
static void nonce_and_aad(const unsigned char *salt, const unsigned char *rec, int plen,
                          unsigned char nonce[12], unsigned char aad[13]) {
    memcpy(nonce, salt, 4);
    memcpy(nonce + 4, rec + HEADER_LEN, 8);
    memcpy(aad, rec + 3, 8); /* epoch<<48|seq */
    memcpy(aad + 8, rec, 3); /* type, version */
    aad[11] = (unsigned char)(plen >> 8);
    aad[12] = (unsigned char)plen;
}

/* Decrypt the record at `rec` (whole datagram, `len` bytes, header already checked) in place;
 * the plaintext lands at rec + HEADER_LEN + EXPLICIT_LEN. Returns the plaintext length or -1. */
static int open_in_place(GcmDataPath *self, unsigned char *rec, size_t len) {
    unsigned char nonce[12], aad[13];
    int plen = (int)len - OVERHEAD, out = 0;
    if (plen < 0) return -1;
    nonce_and_aad(self->read_salt, rec, plen, nonce, aad);
    EVP_CIPHER_CTX *ctx = self->read_ctx;
    unsigned char *body = rec + HEADER_LEN + EXPLICIT_LEN;
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (EVP_DecryptUpdate(ctx, NULL, &out, aad, sizeof aad) != 1) return -1;
    if (plen > 0 && EVP_DecryptUpdate(ctx, body, &out, body, plen) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, body + plen) != 1) return -1;
    if (EVP_DecryptFinal_ex(ctx, body + plen, &out) != 1) return -1;
    return plen;
}

/* Seal `plen` plaintext bytes already at rec + HEADER_LEN + EXPLICIT_LEN; writes header, nonce
 * and tag around them. Returns the record length or -1. */
static int seal_in_place(GcmDataPath *self, unsigned char *rec, int plen, unsigned char type,
                         unsigned long long epoch_seq) {
    unsigned char nonce[12], aad[13];
    int out = 0, total = OVERHEAD + plen;
    int length = EXPLICIT_LEN + plen + TAG_LEN;
    rec[0] = type;
    rec[1] = (unsigned char)(self->version >> 8);
    rec[2] = (unsigned char)self->version;
    put_u64(rec + 3, epoch_seq);
    rec[11] = (unsigned char)(length >> 8);
    rec[12] = (unsigned char)length;
    put_u64(rec + HEADER_LEN, epoch_seq);
    nonce_and_aad(self->write_salt, rec, plen, nonce, aad);
    EVP_CIPHER_CTX *ctx = self->write_ctx;
    unsigned char *body = rec + HEADER_LEN + EXPLICIT_LEN;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1) return -1;
    if (EVP_EncryptUpdate(ctx, NULL, &out, aad, sizeof aad) != 1) return -1;
    if (plen > 0 && EVP_EncryptUpdate(ctx, body, &out, body, plen) != 1) return -1;
    if (EVP_EncryptFinal_ex(ctx, body + plen, &out) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, body + plen) != 1) return -1;
    return total;
}

/* ----------------------------------------------------------------------------------------- */

static PyObject *GcmDataPath_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"read_key", "read_salt", "write_key", "write_salt", "epoch",
                             "version", "owner", NULL};
    Py_buffer rk, rs, wk, ws;
    unsigned int epoch, version;
    PyObject *owner = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*y*y*II|O", kwlist, &rk, &rs, &wk, &ws,
                                     &epoch, &version, &owner))
        return NULL;
    GcmDataPath *self = NULL;
    if (rs.len != 4 || ws.len != 4 || gcm_for(rk.len) == NULL || gcm_for(wk.len) == NULL ||
        epoch > 0xFFFF || version > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "AES-GCM needs 16- or 32-byte keys and 4-byte salts");
        goto done;
    }
    self = (GcmDataPath *)type->tp_alloc(type, 0);
    if (self == NULL) goto done;
    self->read_ctx = make_ctx(rk.buf, rk.len, 0);
    self->write_ctx = make_ctx(wk.buf, wk.len, 1);
    if (self->read_ctx == NULL || self->write_ctx == NULL) {
        Py_CLEAR(self);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up AES-GCM");
        goto done;
    }
    memcpy(self->read_salt, rs.buf, 4);
    memcpy(self->write_salt, ws.buf, 4);
    self->epoch = epoch;
    self->version = version;
    self->highest = -1;
    self->bitmap = 0;
    self->tun_fd = -1;
    self->udp_fd = -1;
    self->watch_slot = -1;
    self->write_next = (unsigned long long)epoch << 48;
    Py_INCREF(owner);
    self->owner = owner;
done:
    PyBuffer_Release(&rk);
    PyBuffer_Release(&rs);
    PyBuffer_Release(&wk);
    PyBuffer_Release(&ws);
    return (PyObject *)self;
}

static int GcmDataPath_traverse(GcmDataPath *self, visitproc visit, void *arg) {
    Py_VISIT(self->owner);
    return 0;
}

static int GcmDataPath_clear(GcmDataPath *self) {
    Py_CLEAR(self->owner);
    return 0;
}

static void GcmDataPath_dealloc(GcmDataPath *self) {
    PyObject_GC_UnTrack(self);
    GcmDataPath_clear(self);
    if (self->read_ctx) EVP_CIPHER_CTX_free(self->read_ctx);
    if (self->write_ctx) EVP_CIPHER_CTX_free(self->write_ctx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* check(seq) / mark(seq): the ReplayWindow protocol, so the Python engine shares this window. */
static PyObject *GcmDataPath_check(GcmDataPath *self, PyObject *arg) {
    unsigned long long seq = PyLong_AsUnsignedLongLong(arg);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    PATH_LOCK(self);
    int fresh = seq <= MAX_SEQUENCE && replay_check(self, seq);
    PATH_UNLOCK(self);
    return PyBool_FromLong(fresh);
}

static PyObject *GcmDataPath_mark(GcmDataPath *self, PyObject *arg) {
    unsigned long long seq = PyLong_AsUnsignedLongLong(arg);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    PATH_LOCK(self);
    if (seq <= MAX_SEQUENCE) replay_mark(self, seq);
    PATH_UNLOCK(self);
    Py_RETURN_NONE;
}

static PyObject *GcmDataPath_set_replay_state(GcmDataPath *self, PyObject *args) {
    long long highest;
    unsigned long long bitmap;
    if (!PyArg_ParseTuple(args, "LK", &highest, &bitmap)) return NULL;
    PATH_LOCK(self);
    self->highest = highest < -1 ? -1 : highest;
    self->bitmap = bitmap;
    PATH_UNLOCK(self);
    Py_RETURN_NONE;
}

static PyObject *GcmDataPath_replay_state(GcmDataPath *self, PyObject *unused) {
    PATH_LOCK(self);
    long long highest = self->highest;
    unsigned long long bitmap = self->bitmap;
    PATH_UNLOCK(self);
    return Py_BuildValue("LK", highest, bitmap);
}

/* open_datagram(data) -> bytes | None: the plaintext of a datagram that is exactly one
 * application-data record of this epoch; b"" for a replay or a forgery (dropped); None for
 * anything else (the Python engine handles it). */
static PyObject *GcmDataPath_open_datagram(GcmDataPath *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = NULL;
    const unsigned char *d = view.buf;
    size_t len = (size_t)view.len;
    if (len < HEADER_LEN || d[0] != CONTENT_APPLICATION_DATA ||
        ((unsigned)d[3] << 8 | d[4]) != self->epoch ||
        HEADER_LEN + ((size_t)d[11] << 8 | d[12]) != len) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    unsigned long long seq = get_u64(d + 3) & MAX_SEQUENCE;
    if (len < OVERHEAD || len > SLOT_SIZE) {
        result = PyBytes_FromStringAndSize(NULL, 0);
        goto done;
    }
    unsigned char buffer[SLOT_SIZE];
    memcpy(buffer, d, len);
    PATH_LOCK(self);
    int plen = replay_check(self, seq) ? open_in_place(self, buffer, len) : -1;
    if (plen >= 0) replay_mark(self, seq);
    PATH_UNLOCK(self);
    if (plen < 0) {
        result = PyBytes_FromStringAndSize(NULL, 0);
        goto done;
    }
    result = PyBytes_FromStringAndSize((char *)buffer + HEADER_LEN + EXPLICIT_LEN, plen);
done:
    PyBuffer_Release(&view);
    return result;
}

/* seal(content_type, epoch_seq, plaintext) -> bytes: one record with the given sequence number. */
static PyObject *GcmDataPath_seal(GcmDataPath *self, PyObject *args) {
    unsigned int type;
    unsigned long long epoch_seq;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "IKy*", &type, &epoch_seq, &view)) return NULL;
    PyObject *result = NULL;
    if (view.len > 16384 || type > 255) {
        PyErr_SetString(PyExc_ValueError, "record plaintext too long");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, OVERHEAD + view.len);
    if (result == NULL) goto done;
    unsigned char *rec = (unsigned char *)PyBytes_AS_STRING(result);
    memcpy(rec + HEADER_LEN + EXPLICIT_LEN, view.buf, view.len);
    PATH_LOCK(self);
    int sealed = seal_in_place(self, rec, (int)view.len, (unsigned char)type, epoch_seq);
    PATH_UNLOCK(self);
    if (sealed < 0) {
        Py_CLEAR(result);
        PyErr_SetString(PyExc_RuntimeError, "AES-GCM seal failed");
    }
done:
    PyBuffer_Release(&view);
    return result;
}

/* attach(tun_fd, udp_fd, family, address_key): where packets go. The address key is the one
 * `address_key()` makes (port, address[, scope id]). */
static int sockaddr_from_key(struct sockaddr_storage *ss, socklen_t *len, int family,
                             const unsigned char *key, Py_ssize_t key_len) {
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET && key_len == 6) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        memcpy(&sin->sin_port, key, 2);
        memcpy(&sin->sin_addr, key + 2, 4);
        *len = sizeof *sin;
        return 0;
    }
    if (family == AF_INET6 && key_len == 22) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_port, key, 2);
        memcpy(&sin6->sin6_addr, key + 2, 16);
        sin6->sin6_scope_id = (uint32_t)key[18] << 24 | (uint32_t)key[19] << 16 |
                              (uint32_t)key[20] << 8 | key[21];
        *len = sizeof *sin6;
        return 0;
    }
    return -1;
}

static PyObject *GcmDataPath_attach(GcmDataPath *self, PyObject *args) {
    int tun_fd, udp_fd, family;
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "iiiy*", &tun_fd, &udp_fd, &family, &key)) return NULL;
    struct sockaddr_storage peer;
    socklen_t peer_len = 0;
    int bad = sockaddr_from_key(&peer, &peer_len, family, key.buf, key.len);
    PyBuffer_Release(&key);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "bad address key");
        return NULL;
    }
    PATH_LOCK(self);
    if (self->receiver) unwatch_tun(self->receiver, self);
    self->peer = peer;
    self->peer_len = peer_len;
    self->tun_fd = tun_fd;
    self->udp_fd = udp_fd;
    if (self->receiver) watch_tun(self->receiver, self);
    PATH_UNLOCK(self);
    Py_RETURN_NONE;
}

static PyObject *GcmDataPath_detach(GcmDataPath *self, PyObject *unused) {
    /* After this returns no thread touches the fds: the caller may close them. */
    PATH_LOCK(self);
    if (self->receiver) unwatch_tun(self->receiver, self);
    self->tun_fd = -1;
    self->udp_fd = -1;
    PATH_UNLOCK(self);
    Py_RETURN_NONE;
}

static PyObject *GcmDataPath_take_counts(GcmDataPath *self, PyObject *unused) {
    PATH_LOCK(self);
    unsigned long long pin = self->packets_in, bin = self->bytes_in, pout = self->packets_out,
                       bout = self->bytes_out, records = self->records_in;
    int send_errno = self->send_errno;
    self->packets_in = self->bytes_in = self->packets_out = self->bytes_out = 0;
    self->records_in = 0;
    self->send_errno = 0;
    PATH_UNLOCK(self);
    PyObject *r = Py_BuildValue("KKKKiK", pin, bin, pout, bout, send_errno, records);
    return r;
}

/* One set of buffers for the process: every call holds the GIL from start to end. */
static Slot tx_slots[BATCH];

/* Read the tun until EAGAIN or `limit` packets, seal each as a DATA record, send them in
 * sendmmsg batches. Returns the packets moved (sequence numbers used); sets *read_errno (a tun
 * error other than EAGAIN), *eof, and path->send_errno. Touches no Python object. */
static unsigned long long forward_batch(GcmDataPath *self, unsigned long long limit, Slot *tx,
                                        int *read_errno, int *eof, int *seal_failed) {
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    unsigned long long packets = 0, bytes = 0;
    const int room = SLOT_SIZE - OVERHEAD - 1;
    *read_errno = *eof = *seal_failed = 0;
    while (packets < limit && !*read_errno && !*eof) {
        int n = 0;
        while (n < BATCH && packets + (unsigned long long)n < limit) {
            unsigned long long seq = self->write_next;
            if ((seq & MAX_SEQUENCE) == MAX_SEQUENCE) break; /* exhausted: a new handshake */
            unsigned char *rec = tx[n];
            unsigned char *payload = rec + HEADER_LEN + EXPLICIT_LEN;
            ssize_t got = read(self->tun_fd, payload + 1, room);
            if (got < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) *read_errno = errno;
                break;
            }
            if (got == 0) {
                *eof = 1;
                break;
            }
            payload[0] = PAYLOAD_DATA;
            int total = seal_in_place(self, rec, (int)got + 1, CONTENT_APPLICATION_DATA, seq);
            if (total < 0) {
                *seal_failed = 1;
                break;
            }
            self->write_next = seq + 1;
            iovs[n].iov_base = rec;
            iovs[n].iov_len = (size_t)total;
            memset(&msgs[n].msg_hdr, 0, sizeof msgs[n].msg_hdr);
            msgs[n].msg_hdr.msg_name = &self->peer;
            msgs[n].msg_hdr.msg_namelen = self->peer_len;
            msgs[n].msg_hdr.msg_iov = &iovs[n];
            msgs[n].msg_hdr.msg_iovlen = 1;
            bytes += (unsigned long long)got;
            n++;
        }
        if (n == 0) break;
        int sent = 0;
        while (sent < n) {
            int r = sendmmsg(self->udp_fd, msgs + sent, (unsigned)(n - sent), MSG_DONTWAIT);
            if (r < 0) {
                if (errno == EINTR) continue;
                /* EAGAIN: the socket buffer is full; drop, as a router would (TCP recovers). */
                if (errno != EAGAIN && errno != EWOULDBLOCK) self->send_errno = errno;
                break;
            }
            sent += r;
        }
        packets += (unsigned long long)n;
        if (n < BATCH || *seal_failed) break; /* the tun is drained (or the limit reached) */
    }
    self->packets_out += packets;
    self->bytes_out += bytes;
    return packets;
}

/* forward_tun(limit) -> packets (-1 when detached): what forward_batch does, for the tun reader
 * task. Raises
 * OSError for a tun error other than EAGAIN (when nothing moved), EOFError at end of file. */
static PyObject *GcmDataPath_forward_tun(GcmDataPath *self, PyObject *arg) {
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    int read_errno, eof, seal_failed;
    PATH_LOCK(self);
    if (self->tun_fd < 0 || self->udp_fd < 0) {
        PATH_UNLOCK(self);
        return PyLong_FromLong(-1); /* detached: the caller uses its own path */
    }
    unsigned long long packets = forward_batch(self, limit < 0 ? 0 : (unsigned long long)limit,
                                               tx_slots, &read_errno, &eof, &seal_failed);
    PATH_UNLOCK(self);
    if (seal_failed) {
        PyErr_SetString(PyExc_RuntimeError, "AES-GCM seal failed");
        return NULL;
    }
    if (packets == 0) {
        if (eof) {
            PyErr_SetString(PyExc_EOFError, "tun: end of file");
            return NULL;
        }
        if (read_errno) {
            errno = read_errno;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    return PyLong_FromUnsignedLongLong(packets);
}

/* take_sequence() -> the next epoch<<48|seq, counted as used; -1 once exhausted. */
static PyObject *GcmDataPath_take_sequence(GcmDataPath *self, PyObject *unused) {
    PATH_LOCK(self);
    unsigned long long seq = self->write_next;
    int exhausted = (seq & MAX_SEQUENCE) == MAX_SEQUENCE;
    if (!exhausted) self->write_next = seq + 1;
    PATH_UNLOCK(self);
    if (exhausted) return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *GcmDataPath_set_write_sequence(GcmDataPath *self, PyObject *arg) {
    unsigned long long seq = PyLong_AsUnsignedLongLong(arg);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    PATH_LOCK(self);
    self->write_next = seq;
    PATH_UNLOCK(self);
    Py_RETURN_NONE;
}

static PyObject *GcmDataPath_get_forwarding(GcmDataPath *self, void *closure) {
    return PyBool_FromLong(self->forwarding);
}

static int GcmDataPath_set_forwarding(GcmDataPath *self, PyObject *value, void *closure) {
    int truth = value == NULL ? 0 : PyObject_IsTrue(value);
    if (truth < 0) return -1;
    PATH_LOCK(self);
    self->forwarding = truth;
    if (self->receiver) {
        if (truth) watch_tun(self->receiver, self);
        else unwatch_tun(self->receiver, self);
    }
    PATH_UNLOCK(self);
    return 0;
}

static PyObject *GcmDataPath_get_watched(GcmDataPath *self, void *closure) {
    PATH_LOCK(self);
    int watched = self->watch_slot >= 0;
    PATH_UNLOCK(self);
    return PyBool_FromLong(watched);
}

static PyObject *GcmDataPath_get_owner(GcmDataPath *self, void *closure) {
    Py_INCREF(self->owner);
    return self->owner;
}

static PyMethodDef GcmDataPath_methods[] = {
    {"check", (PyCFunction)GcmDataPath_check, METH_O, "replay window: is seq new?"},
    {"mark", (PyCFunction)GcmDataPath_mark, METH_O, "replay window: seq was accepted"},
    {"replay_state", (PyCFunction)GcmDataPath_replay_state, METH_NOARGS, NULL},
    {"set_replay_state", (PyCFunction)GcmDataPath_set_replay_state, METH_VARARGS, NULL},
    {"open_datagram", (PyCFunction)GcmDataPath_open_datagram, METH_O, NULL},
    {"seal", (PyCFunction)GcmDataPath_seal, METH_VARARGS, NULL},
    {"attach", (PyCFunction)GcmDataPath_attach, METH_VARARGS, NULL},
    {"detach", (PyCFunction)GcmDataPath_detach, METH_NOARGS, NULL},
    {"take_counts", (PyCFunction)GcmDataPath_take_counts, METH_NOARGS, NULL},
    {"forward_tun", (PyCFunction)GcmDataPath_forward_tun, METH_O, NULL},
    {"take_sequence", (PyCFunction)GcmDataPath_take_sequence, METH_NOARGS, NULL},
    {"set_write_sequence", (PyCFunction)GcmDataPath_set_write_sequence, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef GcmDataPath_getset[] = {
    {"owner", (getter)GcmDataPath_get_owner, NULL, "whoever handles what C does not", NULL},
    {"watched", (getter)GcmDataPath_get_watched, NULL,
     "a receive thread reads this path's tun (the tun reader task need not)", NULL},
    {"forwarding", (getter)GcmDataPath_get_forwarding, (setter)GcmDataPath_set_forwarding,
     "forward the tun right after a receive batch", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject GcmDataPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trio_ocserv._dtls_fastpath.GcmDataPath",
    .tp_basicsize = sizeof(GcmDataPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = GcmDataPath_new,
    .tp_dealloc = (destructor)GcmDataPath_dealloc,
    .tp_traverse = (traverseproc)GcmDataPath_traverse,
    .tp_clear = (inquiry)GcmDataPath_clear,
    .tp_methods = GcmDataPath_methods,
    .tp_getset = GcmDataPath_getset,
};

/* ----------------------------------------------------------------------------------------- */

static int key_from_sockaddr(const struct sockaddr_storage *ss, unsigned char *key) {
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        memcpy(key, &sin->sin_port, 2);
        memcpy(key + 2, &sin->sin_addr, 4);
        return 6;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        uint32_t scope = sin6->sin6_scope_id;
        memcpy(key, &sin6->sin6_port, 2);
        memcpy(key + 2, &sin6->sin6_addr, 16);
        key[18] = (unsigned char)(scope >> 24);
        key[19] = (unsigned char)(scope >> 16);
        key[20] = (unsigned char)(scope >> 8);
        key[21] = (unsigned char)scope;
        return 22;
    }
    return 0;
}

/* The address tuple the socket module would give for this sockaddr. */
static PyObject *address_tuple(const struct sockaddr_storage *ss) {
    char text[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text);
        return Py_BuildValue("(si)", text, ntohs(sin->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text);
        return Py_BuildValue("(siII)", text, ntohs(sin6->sin6_port), ntohl(sin6->sin6_flowinfo),
                             sin6->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* What the fast path did with one datagram. */
enum { NOT_MINE, DROPPED, DELIVERED, PAYLOAD };

/* A datagram from `path`'s peer: if it is exactly one application-data record of its epoch,
 * replay-check and open it in place; a DATA payload goes to the tun. Other payloads are left
 * at *payload (plen bytes) for Python. Touches no Python object. */
static int handle_record(GcmDataPath *path, unsigned char *d, size_t len,
                         unsigned char **payload, int *plen) {
    if (path == NULL || path->tun_fd < 0 || d[0] != CONTENT_APPLICATION_DATA ||
        ((unsigned)d[3] << 8 | d[4]) != path->epoch ||
        HEADER_LEN + ((size_t)d[11] << 8 | d[12]) != len)
        return NOT_MINE;
    unsigned long long seq = get_u64(d + 3) & MAX_SEQUENCE;
    if (!replay_check(path, seq)) return DROPPED;
    int n = open_in_place(path, d, len);
    if (n < 0) return DROPPED; /* forged or corrupt */
    replay_mark(path, seq);
    path->records_in++;
    unsigned char *p = d + HEADER_LEN + EXPLICIT_LEN;
    if (n > 1 && p[0] == PAYLOAD_DATA) {
        /* Queue full or a packet the kernel refuses: dropped, as a router would. */
        if (write(path->tun_fd, p + 1, (size_t)n - 1) >= 0) {
            path->packets_in++;
            path->bytes_in += (unsigned long long)n - 1;
        }
        return DELIVERED;
    }
    *payload = p;
    *plen = n;
    return PAYLOAD;
}

static Slot rx_slots[BATCH];

/* receive_udp(fd, routes, limit) -> (datagrams, payloads, touched, more)
 *
 * Reads up to `limit` datagrams (recvmmsg until EAGAIN). For a datagram from an address in
 * `routes` (address key -> GcmDataPath) that is exactly one application-data record of that
 * path's epoch: replay check, decrypt, and a DATA payload goes straight to the path's tun.
 * Other payloads come back decrypted in `payloads` as (path, plaintext); replays and forgeries
 * are dropped. Everything else comes back whole in `datagrams` as (bytes, address, None): the
 * same shape as UdpReceiver.take(), whose third item is the flight it answered with.
 * `touched` lists each path that got a valid record; `more` is true when the limit was reached
 * before EAGAIN. */
static PyObject *receive_udp(PyObject *module, PyObject *args) {
    int fd;
    PyObject *routes;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "iO!n", &fd, &PyDict_Type, &routes, &limit)) return NULL;
    /* A strong reference: building result objects may run the GC, whose finalizers could
     * change `routes`. */
    GcmDataPath *last_path = NULL;
    PyObject *datagrams = PyList_New(0), *payloads = PyList_New(0), *touched = PyList_New(0);
    if (datagrams == NULL || payloads == NULL || touched == NULL) goto fail;
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct sockaddr_storage names[BATCH];
    Py_ssize_t total = 0;
    int more = 0;
    unsigned char last_key[22];
    int last_key_len = -1;

    for (;;) {
        if (total >= limit) {
            more = 1;
            break;
        }
        int want = (int)(limit - total < BATCH ? limit - total : BATCH);
        for (int i = 0; i < want; i++) {
            iovs[i].iov_base = rx_slots[i];
            iovs[i].iov_len = SLOT_SIZE;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_name = &names[i];
            msgs[i].msg_hdr.msg_namelen = sizeof names[i];
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(fd, msgs, (unsigned)want, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            /* ICMP errors surface here on Linux: nothing to do, try again. */
            total++;
            continue;
        }
        if (got == 0) break;
        total += got;
        for (int i = 0; i < got; i++) {
            unsigned char *d = rx_slots[i];
            size_t len = msgs[i].msg_len;
            if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) continue; /* too big for any record */
            if (len < HEADER_LEN) continue;
            unsigned char key[22];
            int key_len = key_from_sockaddr(&names[i], key);
            GcmDataPath *path = NULL;
            if (key_len > 0 && key_len == last_key_len && memcmp(key, last_key, key_len) == 0) {
                path = last_path;
            } else if (key_len > 0) {
                PyObject *k = PyBytes_FromStringAndSize((char *)key, key_len);
                if (k == NULL) goto fail;
                PyObject *found = PyDict_GetItemWithError(routes, k);
                Py_DECREF(k);
                if (found == NULL && PyErr_Occurred()) goto fail;
                path = (found != NULL && Py_IS_TYPE(found, &GcmDataPathType))
                           ? (GcmDataPath *)found : NULL;
                memcpy(last_key, key, key_len);
                last_key_len = key_len;
                Py_XINCREF(path);
                Py_XSETREF(last_path, path);
            }
            unsigned char *payload = NULL;
            int plen = 0;
            int outcome = handle_record(path, d, len, &payload, &plen);
            if (outcome == DROPPED) continue;
            if (outcome != NOT_MINE) {
                if (!path->touched) {
                    path->touched = 1;
                    if (PyList_Append(touched, (PyObject *)path) < 0) goto fail;
                }
                if (outcome == DELIVERED) continue;
                PyObject *item = Py_BuildValue("(Oy#)", (PyObject *)path, payload,
                                               (Py_ssize_t)plen);
                if (item == NULL) goto fail;
                int bad = PyList_Append(payloads, item);
                Py_DECREF(item);
                if (bad) goto fail;
                continue;
            }
            PyObject *address = address_tuple(&names[i]);
            if (address == NULL) goto fail;
            PyObject *item = Py_BuildValue("(y#NO)", d, (Py_ssize_t)len, address, Py_None);
            if (item == NULL) goto fail;
            int bad = PyList_Append(datagrams, item);
            Py_DECREF(item);
            if (bad) goto fail;
        }
        if (got < want) break;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(touched); i++) {
        GcmDataPath *path = (GcmDataPath *)PyList_GET_ITEM(touched, i);
        path->touched = 0;
        if (path->forwarding && path->tun_fd >= 0 && path->udp_fd >= 0) {
            /* Replies the kernel made while we wrote (TCP ACKs, pings) leave now. Tun errors
             * are left for the tun reader task, which meets them on its next read. */
            int read_errno, eof, seal_failed;
            forward_batch(path, BATCH, tx_slots, &read_errno, &eof, &seal_failed);
        }
    }
    Py_XDECREF(last_path);
    return Py_BuildValue("(NNNO)", datagrams, payloads, touched, more ? Py_True : Py_False);
fail:
    Py_XDECREF(last_path);
    if (touched != NULL)
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(touched); i++)
            ((GcmDataPath *)PyList_GET_ITEM(touched, i))->touched = 0;
    Py_XDECREF(datagrams);
    Py_XDECREF(payloads);
    Py_XDECREF(touched);
    return NULL;
}


/* ----------------------------------------------------------------------------------------- */
/* UdpReceiver: the UDP socket's receive loop on a thread of its own, without the GIL.
 *
 * Data records of established sessions go to their tun, and the session's tun is forwarded
 * right after, with no Python on the way: a ping through the tunnel costs what it costs in C.
 * Everything else (handshakes, unknown peers, DPD and DISCONNECT payloads) is copied to a queue,
 * and Python is told through an eventfd (`wake_fd`) to `take()` it; so are the sessions that
 * received records, at most every NOTIFY_MS when nothing else is queued, for liveness and
 * counters. One mutex guards the routes, the queue and the state of every routed path; the
 * thread never takes the GIL, and Python takes the mutex only for short updates. */

#define NBUCKETS 16384
#define MAX_QUEUED_BYTES (4u << 20)
#define NOTIFY_MS 100

typedef struct Route {
    struct Route *next;
    int key_len;
    unsigned char key[22];
    GcmDataPath *path; /* a strong reference, taken and dropped with the GIL */
} Route;

typedef struct QueueItem {
    struct QueueItem *next;
    GcmDataPath *path; /* NULL: a whole datagram for Python's demultiplexer */
    struct sockaddr_storage name;
    size_t len;
    size_t answer_len; /* after the datagram in `data`: the flight the thread answered it with */
    unsigned char data[];
} QueueItem;

/* A session whose login handshake the thread may answer: found by App-ID (or session id) for
 * the ClientHello, then, in PSK mode, by the client's address for its key exchange. */
typedef struct Answerer {
    struct Answerer *next_by_id, *next_by_peer;
    unsigned char id[ANSWER_MAX_ID];
    int id_len;
    unsigned char peer[22];
    int peer_len; /* 0 until the hello is answered */
    HandshakeAnswer *answer;
} Answerer;

#define ANSWER_BUCKETS 1024

typedef struct UdpReceiver {
    PyObject_HEAD
    int udp_fd, wake_fd, stop_fd, epfd;
    /* watched tuns: epoll data = generation << 32 | slot, so a stale event finds nothing */
    GcmDataPath **slots;
    uint32_t *generations;
    uint32_t *free_slots;
    size_t n_slots, n_free;
    pthread_mutex_t lock;
    Route **buckets;
    QueueItem *head, *tail;
    size_t queued_bytes;
    unsigned long long dropped;
    GcmDataPath **pending;
    size_t n_pending, cap_pending;
    PyObject *retired; /* paths no longer routed; released by take() or close() */
    int notified, late_notice;
    long long last_notify_ms;
    Slot *rx, *tx;
    Answerer **answer_ids, **answer_peers;
    size_t n_answerers;
} UdpReceiver;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define UDP_TOKEN (~(uint64_t)0)
#define STOP_TOKEN (~(uint64_t)0 - 1)

/* With the receiver's lock held: let the thread read `path`'s tun (while it forwards). */
static void watch_tun(UdpReceiver *self, GcmDataPath *path) {
    if (path->watch_slot >= 0 || path->tun_fd < 0 || path->udp_fd < 0 || !path->forwarding)
        return;
    uint32_t slot;
    if (self->n_free > 0) {
        slot = self->free_slots[--self->n_free];
    } else {
        size_t n = self->n_slots + 1;
        GcmDataPath **slots = realloc(self->slots, n * sizeof *slots);
        if (slots == NULL) return;
        self->slots = slots;
        uint32_t *generations = realloc(self->generations, n * sizeof *generations);
        if (generations == NULL) return;
        self->generations = generations;
        uint32_t *free_slots = realloc(self->free_slots, n * sizeof *free_slots);
        if (free_slots == NULL) return;
        self->free_slots = free_slots;
        slot = (uint32_t)self->n_slots;
        self->generations[slot] = 0;
        self->n_slots = n;
    }
    uint32_t generation = ++self->generations[slot];
    struct epoll_event event = {.events = EPOLLIN};
    event.data.u64 = (uint64_t)generation << 32 | slot;
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, path->tun_fd, &event) < 0) {
        self->free_slots[self->n_free++] = slot;
        return; /* the tun reader task keeps reading it */
    }
    self->slots[slot] = path;
    path->watch_slot = (int)slot;
}

/* With the lock held: the tun reader task reads `path`'s tun again (or nobody: detached). */
static void unwatch_tun(UdpReceiver *self, GcmDataPath *path) {
    if (path->watch_slot < 0) return;
    uint32_t slot = (uint32_t)path->watch_slot;
    if (path->tun_fd >= 0) epoll_ctl(self->epfd, EPOLL_CTL_DEL, path->tun_fd, NULL);
    self->slots[slot] = NULL;
    self->generations[slot]++;
    self->free_slots[self->n_free++] = slot;
    path->watch_slot = -1;
}

static unsigned key_hash(const unsigned char *key, int len) {
    unsigned h = 2166136261u;
    for (int i = 0; i < len; i++) h = (h ^ key[i]) * 16777619u;
    return h % NBUCKETS;
}

static GcmDataPath *route_lookup(UdpReceiver *self, const unsigned char *key, int len) {
    for (Route *r = self->buckets[key_hash(key, len)]; r != NULL; r = r->next)
        if (r->key_len == len && memcmp(r->key, key, len) == 0) return r->path;
    return NULL;
}

static int enqueue(UdpReceiver *self, GcmDataPath *path, const struct sockaddr_storage *name,
                   const unsigned char *data, size_t len, const unsigned char *answer,
                   size_t answer_len) {
    if (self->queued_bytes + len > MAX_QUEUED_BYTES && answer_len == 0) {
        self->dropped++;
        return 0;
    }
    QueueItem *item = malloc(sizeof *item + len + answer_len);
    if (item == NULL) {
        self->dropped++;
        return 0;
    }
    item->next = NULL;
    item->path = path;
    if (name != NULL) item->name = *name;
    item->len = len;
    item->answer_len = answer_len;
    memcpy(item->data, data, len);
    if (answer_len) memcpy(item->data + len, answer, answer_len);
    if (self->tail) self->tail->next = item;
    else self->head = item;
    self->tail = item;
    self->queued_bytes += len;
    return 1;
}

static void mark_pending(UdpReceiver *self, GcmDataPath *path) {
    if (path->pending) return;
    if (self->n_pending == self->cap_pending) {
        size_t cap = self->cap_pending ? self->cap_pending * 2 : 64;
        GcmDataPath **grown = realloc(self->pending, cap * sizeof *grown);
        if (grown == NULL) return; /* reported with a later batch */
        self->pending = grown;
        self->cap_pending = cap;
    }
    path->pending = 1;
    self->pending[self->n_pending++] = path;
}

static Answerer **answerer_by_id(UdpReceiver *self, const unsigned char *id, int id_len) {
    Answerer **a = &self->answer_ids[key_hash(id, id_len) % ANSWER_BUCKETS];
    while (*a != NULL && ((*a)->id_len != id_len || memcmp((*a)->id, id, id_len) != 0))
        a = &(*a)->next_by_id;
    return a;
}

static Answerer **answerer_by_peer(UdpReceiver *self, const unsigned char *key, int key_len) {
    Answerer **a = &self->answer_peers[key_hash(key, key_len) % ANSWER_BUCKETS];
    while (*a != NULL && ((*a)->peer_len != key_len || memcmp((*a)->peer, key, key_len) != 0))
        a = &(*a)->next_by_peer;
    return a;
}

/* With the lock held: unlink `*slot` (in the id table) from both tables and free it. */
static void drop_answerer(UdpReceiver *self, Answerer **slot) {
    Answerer *a = *slot;
    *slot = a->next_by_id;
    if (a->peer_len) {
        Answerer **p = answerer_by_peer(self, a->peer, a->peer_len);
        while (*p != NULL && *p != a) p = &(*p)->next_by_peer;
        if (*p == a) *p = a->next_by_peer;
    }
    answer_free(a->answer);
    free(a);
    self->n_answerers--;
}

/* With the lock held: answer `d` if it is a step of a login handshake the thread may answer
 * (a ClientHello naming an expected App-ID, or the PSK key exchange from the address answered);
 * returns the length of the flight sent (copied to `flight`), 0 when Python must answer.
 * An answerer serves one handshake: it is dropped after its last flight, or when a send fails
 * (Python then sends the same bytes itself). */
static size_t answer_handshake(UdpReceiver *self, const struct sockaddr_storage *name,
                               socklen_t name_len, const unsigned char *key, int key_len,
                               const unsigned char *d, size_t len, unsigned char *flight) {
    if (self->n_answerers == 0 || d[0] != 22 || len < HEADER_LEN + 1 || key_len == 0) return 0;
    Answerer **slot, *a;
    size_t n;
    if (d[HEADER_LEN] == 1) { /* ClientHello */
        const unsigned char *id;
        size_t id_len;
        if (!hello_app_id(d, len, &id, &id_len)) return 0;
        slot = answerer_by_id(self, id, (int)id_len);
        a = *slot;
        if (a == NULL || a->peer_len || (n = answer_hello(a->answer, d, len, flight)) == 0)
            return 0;
        memcpy(a->peer, key, key_len);
        a->peer_len = key_len;
        Answerer **bucket = &self->answer_peers[key_hash(key, key_len) % ANSWER_BUCKETS];
        a->next_by_peer = *bucket;
        *bucket = a;
    } else {
        a = *answerer_by_peer(self, key, key_len);
        if (a == NULL || (n = answer_key_exchange(a->answer, d, len, flight)) == 0) return 0;
        slot = answerer_by_id(self, a->id, a->id_len);
    }
    ssize_t sent = sendto(self->udp_fd, flight, n, MSG_DONTWAIT, (const struct sockaddr *)name,
                          name_len);
    if (sent == (ssize_t)n) answer_prepare(a->answer); /* while the client computes */
    if (sent != (ssize_t)n || !answer_pending(a->answer)) drop_answerer(self, slot);
    return sent == (ssize_t)n ? n : 0;
}

/* One recvmmsg batch, handled under the lock. Returns the datagrams read (0: none waiting,
 * -1: the socket is gone). Sets *notify when Python must be told now. */
static int receive_batch(UdpReceiver *self, int *notify) {
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct sockaddr_storage names[BATCH];
    GcmDataPath *batch_paths[BATCH];
    int n_batch = 0;
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = self->rx[i];
        iovs[i].iov_len = SLOT_SIZE;
        memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
        msgs[i].msg_hdr.msg_name = &names[i];
        msgs[i].msg_hdr.msg_namelen = sizeof names[i];
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int got = recvmmsg(self->udp_fd, msgs, BATCH, MSG_DONTWAIT, NULL);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        if (errno == EBADF || errno == ENOTSOCK) return -1;
        return 1; /* EINTR, or an ICMP error surfacing here: try again */
    }
    int urgent = 0, any_pending = 0;
    pthread_mutex_lock(&self->lock);
    for (int i = 0; i < got; i++) {
        unsigned char *d = self->rx[i];
        size_t len = msgs[i].msg_len;
        if ((msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || len < HEADER_LEN) continue;
        unsigned char key[22];
        int key_len = key_from_sockaddr(&names[i], key);
        GcmDataPath *path = key_len > 0 ? route_lookup(self, key, key_len) : NULL;
        unsigned char *payload = NULL;
        int plen = 0;
        int outcome = handle_record(path, d, len, &payload, &plen);
        if (outcome == DROPPED) continue;
        if (outcome == NOT_MINE) {
            unsigned char flight[ANSWER_FLIGHT_MAX];
            size_t answered = answer_handshake(self, &names[i], msgs[i].msg_hdr.msg_namelen, key,
                                               key_len, d, len, flight);
            urgent |= enqueue(self, NULL, &names[i], d, len, flight, answered);
            continue;
        }
        if (!path->touched) {
            path->touched = 1;
            batch_paths[n_batch++] = path;
        }
        if (!path->pending) any_pending = 1;
        mark_pending(self, path);
        if (outcome == PAYLOAD) urgent |= enqueue(self, path, NULL, payload, (size_t)plen, NULL, 0);
    }
    for (int j = 0; j < n_batch; j++) {
        GcmDataPath *path = batch_paths[j];
        path->touched = 0;
        if (path->forwarding && path->tun_fd >= 0 && path->udp_fd >= 0) {
            int read_errno, eof, seal_failed;
            forward_batch(path, BATCH, self->tx, &read_errno, &eof, &seal_failed);
        }
    }
    if (!self->notified) {
        long long now = now_ms();
        if (urgent || ((any_pending || self->late_notice) &&
                       now - self->last_notify_ms >= NOTIFY_MS)) {
            self->notified = 1;
            self->late_notice = 0;
            self->last_notify_ms = now;
            *notify = 1;
        } else if (any_pending) {
            self->late_notice = 1; /* the poll timeout delivers it */
        }
    }
    pthread_mutex_unlock(&self->lock);
    return got;
}

static void wake_python(UdpReceiver *self) {
    uint64_t one = 1;
    ssize_t r = write(self->wake_fd, &one, sizeof one);
    (void)r; /* the counter is far from full; an error leaves nothing to do */
}

static void receiver_loop(UdpReceiver *self) {
    struct epoll_event events[BATCH];
    for (;;) {
        int timeout = -1;
        pthread_mutex_lock(&self->lock);
        if (self->late_notice && !self->notified) {
            long long wait = NOTIFY_MS - (now_ms() - self->last_notify_ms);
            timeout = wait < 0 ? 0 : (int)wait;
        }
        pthread_mutex_unlock(&self->lock);
        int ready = epoll_wait(self->epfd, events, BATCH, timeout);
        if (ready < 0) {
            if (errno == EINTR) continue;
            return;
        }
        int notify = 0, udp_ready = 0, tun_ready = 0;
        for (int i = 0; i < ready; i++) {
            if (events[i].data.u64 == STOP_TOKEN) return;
            if (events[i].data.u64 == UDP_TOKEN) udp_ready = 1;
            else tun_ready = 1;
        }
        pthread_mutex_lock(&self->lock);
        if (ready == 0 && self->late_notice && !self->notified) {
            self->notified = 1;
            self->late_notice = 0;
            self->last_notify_ms = now_ms();
            notify = 1;
        }
        for (int i = 0; tun_ready && i < ready; i++) {
            uint64_t token = events[i].data.u64;
            if (token == UDP_TOKEN) continue;
            uint32_t slot = (uint32_t)token, generation = (uint32_t)(token >> 32);
            if (slot >= self->n_slots || self->generations[slot] != generation) continue;
            GcmDataPath *path = self->slots[slot];
            if (path == NULL) continue;
            int read_errno, eof, seal_failed;
            if (forward_batch(path, BATCH, self->tx, &read_errno, &eof, &seal_failed) > 0 &&
                !path->pending) {
                mark_pending(self, path); /* for the counters, within NOTIFY_MS */
                self->late_notice = 1;
            }
            if (read_errno || eof || seal_failed) {
                /* The tun reader task takes over and meets the error itself. */
                unwatch_tun(self, path);
                path->forwarding = 0;
                mark_pending(self, path);
                if (!self->notified) {
                    self->notified = 1;
                    self->last_notify_ms = now_ms();
                    notify = 1;
                }
            }
        }
        if (!self->notified && self->late_notice && now_ms() - self->last_notify_ms >= NOTIFY_MS) {
            self->notified = 1;
            self->late_notice = 0;
            self->last_notify_ms = now_ms();
            notify = 1;
        }
        pthread_mutex_unlock(&self->lock);
        for (int round = 0; round < 8 && udp_ready; round++) {
            int got = receive_batch(self, &notify);
            if (got < 0) return;
            if (got < BATCH) break;
        }
        if (notify) wake_python(self);
    }
}

static PyObject *UdpReceiver_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    int udp_fd;
    if (!PyArg_ParseTuple(args, "i", &udp_fd)) return NULL;
    UdpReceiver *self = (UdpReceiver *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->udp_fd = udp_fd;
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd >= 0 && self->stop_fd >= 0) {
        struct epoll_event udp = {.events = EPOLLIN}, stop = {.events = EPOLLIN};
        udp.data.u64 = UDP_TOKEN;
        stop.data.u64 = STOP_TOKEN;
        if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, udp_fd, &udp) < 0 ||
            epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->stop_fd, &stop) < 0) {
            close(self->epfd);
            self->epfd = -1;
        }
    }
    pthread_mutex_init(&self->lock, NULL);
    self->buckets = calloc(NBUCKETS, sizeof *self->buckets);
    self->rx = malloc(BATCH * sizeof(Slot));
    self->tx = malloc(BATCH * sizeof(Slot));
    self->retired = PyList_New(0);
    self->answer_ids = calloc(ANSWER_BUCKETS, sizeof *self->answer_ids);
    self->answer_peers = calloc(ANSWER_BUCKETS, sizeof *self->answer_peers);
    if (self->wake_fd < 0 || self->stop_fd < 0 || self->epfd < 0 || self->buckets == NULL ||
        self->answer_ids == NULL || self->answer_peers == NULL || self->rx == NULL ||
        self->tx == NULL || self->retired == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

/* Unroute everything and drop what is queued; call with the thread stopped (or not started). */
static void receiver_clear(UdpReceiver *self) {
    if (self->buckets != NULL) {
        pthread_mutex_lock(&self->lock);
        Route *all = NULL;
        for (int b = 0; b < NBUCKETS; b++) {
            Route *r = self->buckets[b];
            while (r != NULL) {
                Route *next = r->next;
                unwatch_tun(self, r->path);
                r->path->receiver = NULL;
                r->path->lock = NULL;
                r->path->routes = 0;
                r->path->pending = 0;
                r->next = all;
                all = r;
                r = next;
            }
            self->buckets[b] = NULL;
        }
        QueueItem *item = self->head;
        self->head = self->tail = NULL;
        self->queued_bytes = 0;
        self->n_pending = 0;
        for (int b = 0; self->answer_ids != NULL && b < ANSWER_BUCKETS; b++)
            while (self->answer_ids[b] != NULL) drop_answerer(self, &self->answer_ids[b]);
        pthread_mutex_unlock(&self->lock);
        while (item != NULL) {
            QueueItem *next = item->next;
            free(item);
            item = next;
        }
        while (all != NULL) {
            Route *next = all->next;
            Py_DECREF(all->path);
            free(all);
            all = next;
        }
    }
    if (self->retired != NULL) PyList_SetSlice(self->retired, 0, PY_SSIZE_T_MAX, NULL);
}

static void UdpReceiver_dealloc(UdpReceiver *self) {
    receiver_clear(self);
    Py_CLEAR(self->retired);
    if (self->wake_fd >= 0) close(self->wake_fd);
    if (self->stop_fd >= 0) close(self->stop_fd);
    if (self->epfd >= 0) close(self->epfd);
    free(self->slots);
    free(self->generations);
    free(self->free_slots);
    pthread_mutex_destroy(&self->lock);
    free(self->buckets);
    free(self->answer_ids);
    free(self->answer_peers);
    free(self->pending);
    free(self->rx);
    free(self->tx);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* add_route(key, path): datagrams from that address key go to `path` (replacing any path there). */
static PyObject *UdpReceiver_add_route(UdpReceiver *self, PyObject *args) {
    Py_buffer key;
    PyObject *path;
    if (!PyArg_ParseTuple(args, "y*O!", &key, &GcmDataPathType, &path)) return NULL;
    if (key.len != 6 && key.len != 22) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "bad address key");
        return NULL;
    }
    Route *route = malloc(sizeof *route);
    if (route == NULL) {
        PyBuffer_Release(&key);
        return PyErr_NoMemory();
    }
    route->key_len = (int)key.len;
    memcpy(route->key, key.buf, key.len);
    PyBuffer_Release(&key);
    Py_INCREF(path);
    route->path = (GcmDataPath *)path;
    GcmDataPath *replaced = NULL;
    pthread_mutex_lock(&self->lock);
    Route **slot = &self->buckets[key_hash(route->key, route->key_len)];
    for (Route **r = slot; *r != NULL; r = &(*r)->next) {
        if ((*r)->key_len == route->key_len && memcmp((*r)->key, route->key, route->key_len) == 0) {
            Route *old = *r;
            *r = old->next;
            replaced = old->path;
            if (--replaced->routes == 0) {
                unwatch_tun(self, replaced);
                replaced->receiver = NULL;
                replaced->lock = NULL;
            }
            free(old);
            break;
        }
    }
    route->next = *slot;
    *slot = route;
    ((GcmDataPath *)path)->routes++;
    ((GcmDataPath *)path)->lock = &self->lock;
    ((GcmDataPath *)path)->receiver = self;
    watch_tun(self, (GcmDataPath *)path);
    pthread_mutex_unlock(&self->lock);
    if (replaced != NULL && replaced != (GcmDataPath *)path) {
        int bad = PyList_Append(self->retired, (PyObject *)replaced);
        Py_DECREF(replaced);
        if (bad) return NULL;
    } else if (replaced != NULL) {
        Py_DECREF(replaced);
    }
    Py_RETURN_NONE;
}

/* remove_route(key): the path routed there (if any) stops receiving; it is unlocked once it has
 * no route left. */
static PyObject *UdpReceiver_remove_route(UdpReceiver *self, PyObject *arg) {
    Py_buffer key;
    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE) < 0) return NULL;
    GcmDataPath *removed = NULL;
    pthread_mutex_lock(&self->lock);
    if (key.len == 6 || key.len == 22) {
        Route **slot = &self->buckets[key_hash(key.buf, (int)key.len)];
        for (Route **r = slot; *r != NULL; r = &(*r)->next) {
            if ((*r)->key_len == key.len && memcmp((*r)->key, key.buf, key.len) == 0) {
                Route *old = *r;
                *r = old->next;
                removed = old->path;
                free(old);
                break;
            }
        }
    }
    if (removed != NULL && --removed->routes == 0) {
        unwatch_tun(self, removed);
        removed->receiver = NULL;
        removed->lock = NULL;
    }
    pthread_mutex_unlock(&self->lock);
    PyBuffer_Release(&key);
    if (removed != NULL) {
        /* Kept alive until take(): the queue may still name it. */
        int bad = PyList_Append(self->retired, (PyObject *)removed);
        Py_DECREF(removed);
        if (bad) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *UdpReceiver_run(UdpReceiver *self, PyObject *unused) {
    Py_BEGIN_ALLOW_THREADS
    receiver_loop(self);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *UdpReceiver_stop(UdpReceiver *self, PyObject *unused) {
    uint64_t one = 1;
    if (write(self->stop_fd, &one, sizeof one) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *UdpReceiver_close(UdpReceiver *self, PyObject *unused) {
    receiver_clear(self);
    Py_RETURN_NONE;
}

/* take() -> (datagrams, payloads, touched): what the thread left for Python since the last call
 * ((bytes, address, answer) triples, where answer is the flight the thread already sent in
 * reply, or None; (path, plaintext) pairs; and the paths that received records). */
static PyObject *UdpReceiver_take(UdpReceiver *self, PyObject *unused) {
    uint64_t count;
    /* Cleared before the swap: a notice that arrives in between wakes us once more, harmlessly;
     * cleared after, it could be lost. */
    ssize_t r = read(self->wake_fd, &count, sizeof count);
    (void)r;
    pthread_mutex_lock(&self->lock);
    QueueItem *item = self->head;
    self->head = self->tail = NULL;
    self->queued_bytes = 0;
    size_t n_pending = self->n_pending;
    GcmDataPath **pending = NULL;
    if (n_pending) {
        pending = malloc(n_pending * sizeof *pending);
        if (pending == NULL) n_pending = 0;
        else memcpy(pending, self->pending, n_pending * sizeof *pending);
        for (size_t i = 0; i < n_pending; i++) pending[i]->pending = 0;
    }
    self->n_pending = 0;
    self->notified = 0;
    pthread_mutex_unlock(&self->lock);

    PyObject *datagrams = PyList_New(0), *payloads = PyList_New(0);
    PyObject *touched = PyList_New((Py_ssize_t)n_pending);
    int failed = datagrams == NULL || payloads == NULL || touched == NULL;
    for (size_t i = 0; i < n_pending && !failed; i++) {
        Py_INCREF(pending[i]);
        PyList_SET_ITEM(touched, (Py_ssize_t)i, (PyObject *)pending[i]);
    }
    free(pending);
    while (item != NULL) {
        QueueItem *next = item->next;
        if (!failed) {
            PyObject *entry;
            if (item->path == NULL) {
                PyObject *address = address_tuple(&item->name);
                PyObject *answer = item->answer_len == 0
                    ? Py_NewRef(Py_None)
                    : PyBytes_FromStringAndSize((char *)item->data + item->len,
                                                (Py_ssize_t)item->answer_len);
                entry = address == NULL || answer == NULL
                    ? NULL
                    : Py_BuildValue("(y#NN)", item->data, (Py_ssize_t)item->len, address, answer);
                if (entry == NULL) {
                    Py_XDECREF(address);
                    Py_XDECREF(answer);
                }
                failed = entry == NULL || PyList_Append(datagrams, entry) < 0;
            } else {
                entry = Py_BuildValue("(Oy#)", (PyObject *)item->path, item->data,
                                      (Py_ssize_t)item->len);
                failed = entry == NULL || PyList_Append(payloads, entry) < 0;
            }
            Py_XDECREF(entry);
        }
        free(item);
        item = next;
    }
    /* Everything that named a retired path has been turned into a reference of its own. */
    PyList_SetSlice(self->retired, 0, PY_SSIZE_T_MAX, NULL);
    if (failed) {
        Py_XDECREF(datagrams);
        Py_XDECREF(payloads);
        Py_XDECREF(touched);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    return Py_BuildValue("(NNN)", datagrams, payloads, touched);
}

static PyTypeObject HandshakeAnswerType;

/* HandshakeAnswer: one login's handshake answers as a Python object (see module functions
 * psk_handshake_answer / legacy_handshake_answer), datagrams in and out; handed to a
 * UdpReceiver (expect_hello), which takes the answers over. */
typedef struct {
    PyObject_HEAD
    HandshakeAnswer *answer; /* NULL once a receiver took it */
} HandshakeAnswerObject;

/* expect_hello(app_id, answer): the thread answers the ClientHello naming `app_id` (and, in PSK
 * mode, the key exchange after it) with `answer`, which it takes over; replaces an earlier
 * expectation for that App-ID. */
static PyObject *UdpReceiver_expect_hello(UdpReceiver *self, PyObject *args) {
    Py_buffer id;
    HandshakeAnswerObject *object;
    if (!PyArg_ParseTuple(args, "y*O!", &id, &HandshakeAnswerType, &object)) return NULL;
    Answerer *a = NULL;
    if (id.len < 1 || id.len > ANSWER_MAX_ID || object->answer == NULL) {
        PyErr_SetString(PyExc_ValueError, "bad App-ID, or an answer already taken");
    } else if ((a = calloc(1, sizeof *a)) == NULL) {
        PyErr_NoMemory();
    } else {
        memcpy(a->id, id.buf, id.len);
        a->id_len = (int)id.len;
        a->answer = object->answer;
        object->answer = NULL;
        pthread_mutex_lock(&self->lock);
        Answerer **slot = answerer_by_id(self, a->id, a->id_len);
        if (*slot != NULL) drop_answerer(self, slot);
        Answerer **bucket = &self->answer_ids[key_hash(a->id, a->id_len) % ANSWER_BUCKETS];
        a->next_by_id = *bucket;
        *bucket = a;
        self->n_answerers++;
        pthread_mutex_unlock(&self->lock);
    }
    PyBuffer_Release(&id);
    if (a == NULL) return NULL;
    Py_RETURN_NONE;
}

/* forget_hello(app_id): the thread answers nothing more of that handshake. */
static PyObject *UdpReceiver_forget_hello(UdpReceiver *self, PyObject *arg) {
    Py_buffer id;
    if (PyObject_GetBuffer(arg, &id, PyBUF_SIMPLE) < 0) return NULL;
    if (id.len >= 1 && id.len <= ANSWER_MAX_ID) {
        pthread_mutex_lock(&self->lock);
        Answerer **slot = answerer_by_id(self, id.buf, (int)id.len);
        if (*slot != NULL) drop_answerer(self, slot);
        pthread_mutex_unlock(&self->lock);
    }
    PyBuffer_Release(&id);
    Py_RETURN_NONE;
}

static PyObject *UdpReceiver_get_wake_fd(UdpReceiver *self, void *closure) {
    return PyLong_FromLong(self->wake_fd);
}

static PyObject *UdpReceiver_get_dropped(UdpReceiver *self, void *closure) {
    pthread_mutex_lock(&self->lock);
    unsigned long long dropped = self->dropped;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromUnsignedLongLong(dropped);
}

static PyMethodDef UdpReceiver_methods[] = {
    {"add_route", (PyCFunction)UdpReceiver_add_route, METH_VARARGS, NULL},
    {"remove_route", (PyCFunction)UdpReceiver_remove_route, METH_O, NULL},
    {"run", (PyCFunction)UdpReceiver_run, METH_NOARGS, "the thread's body; returns after stop()"},
    {"stop", (PyCFunction)UdpReceiver_stop, METH_NOARGS, NULL},
    {"close", (PyCFunction)UdpReceiver_close, METH_NOARGS, "unroute all; thread stopped"},
    {"take", (PyCFunction)UdpReceiver_take, METH_NOARGS, NULL},
    {"expect_hello", (PyCFunction)UdpReceiver_expect_hello, METH_VARARGS, NULL},
    {"forget_hello", (PyCFunction)UdpReceiver_forget_hello, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef UdpReceiver_getset[] = {
    {"wake_fd", (getter)UdpReceiver_get_wake_fd, NULL, "readable when take() has work", NULL},
    {"dropped", (getter)UdpReceiver_get_dropped, NULL, "datagrams dropped: queue full", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject UdpReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trio_ocserv._dtls_fastpath.UdpReceiver",
    .tp_basicsize = sizeof(UdpReceiver),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = UdpReceiver_new,
    .tp_dealloc = (destructor)UdpReceiver_dealloc,
    .tp_methods = UdpReceiver_methods,
    .tp_getset = UdpReceiver_getset,
};

static PyObject *wrap_answer(HandshakeAnswer *answer) {
    if (answer == NULL) return PyErr_NoMemory();
    HandshakeAnswerObject *self = PyObject_New(HandshakeAnswerObject, &HandshakeAnswerType);
    if (self == NULL) {
        answer_free(answer);
        return NULL;
    }
    self->answer = answer;
    return (PyObject *)self;
}

/* psk_handshake_answer(psk, randoms, preference): randoms = server random || session id (64),
 * preference = the PSK suites we accept, best first, as big-endian u16 codes. */
static PyObject *psk_handshake_answer(PyObject *module, PyObject *args) {
    Py_buffer psk, randoms, preference;
    if (!PyArg_ParseTuple(args, "y*y*y*", &psk, &randoms, &preference)) return NULL;
    uint16_t codes[ANSWER_MAX_SUITES];
    size_t n = (size_t)preference.len / 2;
    int valid = randoms.len == 64 && preference.len % 2 == 0 && n <= ANSWER_MAX_SUITES &&
                psk.len >= 1 && psk.len <= ANSWER_MAX_PSK;
    const unsigned char *p = preference.buf;
    for (size_t i = 0; valid && i < n; i++) codes[i] = (uint16_t)(p[2 * i] << 8 | p[2 * i + 1]);
    HandshakeAnswer *answer =
        valid ? answer_new_psk(psk.buf, (size_t)psk.len, randoms.buf, codes, n) : NULL;
    PyBuffer_Release(&psk);
    PyBuffer_Release(&randoms);
    PyBuffer_Release(&preference);
    if (!valid) {
        PyErr_SetString(PyExc_ValueError, "bad PSK answer parameters");
        return NULL;
    }
    return wrap_answer(answer);
}

/* legacy_handshake_answer(master_secret, session_id, suite, server_random) */
static PyObject *legacy_handshake_answer(PyObject *module, PyObject *args) {
    Py_buffer master, session_id, server_random;
    int suite;
    if (!PyArg_ParseTuple(args, "y*y*iy*", &master, &session_id, &suite, &server_random))
        return NULL;
    int valid = master.len == 48 && session_id.len >= 1 && session_id.len <= 32 &&
                server_random.len == 32 && suite >= 0 && suite <= 0xFFFF;
    HandshakeAnswer *answer =
        valid ? answer_new_legacy(master.buf, session_id.buf, (size_t)session_id.len,
                                  (uint16_t)suite, server_random.buf)
              : NULL;
    PyBuffer_Release(&master);
    PyBuffer_Release(&session_id);
    PyBuffer_Release(&server_random);
    if (!valid) {
        PyErr_SetString(PyExc_ValueError, "bad legacy answer parameters");
        return NULL;
    }
    return wrap_answer(answer);
}

static void HandshakeAnswer_dealloc(HandshakeAnswerObject *self) {
    answer_free(self->answer);
    PyObject_Free(self);
}

static PyObject *answer_step(HandshakeAnswerObject *self, PyObject *arg, int hello) {
    Py_buffer d;
    if (PyObject_GetBuffer(arg, &d, PyBUF_SIMPLE) < 0) return NULL;
    unsigned char flight[ANSWER_FLIGHT_MAX];
    size_t n = self->answer == NULL ? 0
               : hello ? answer_hello(self->answer, d.buf, (size_t)d.len, flight)
                       : answer_key_exchange(self->answer, d.buf, (size_t)d.len, flight);
    PyBuffer_Release(&d);
    if (n == 0) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((char *)flight, (Py_ssize_t)n);
}

static PyObject *HandshakeAnswer_answer_hello(HandshakeAnswerObject *self, PyObject *arg) {
    return answer_step(self, arg, 1);
}

static PyObject *HandshakeAnswer_answer_key_exchange(HandshakeAnswerObject *self, PyObject *arg) {
    return answer_step(self, arg, 0);
}

static PyMethodDef HandshakeAnswer_methods[] = {
    {"answer_hello", (PyCFunction)HandshakeAnswer_answer_hello, METH_O,
     "our flight for a ClientHello datagram, or None"},
    {"answer_key_exchange", (PyCFunction)HandshakeAnswer_answer_key_exchange, METH_O,
     "PSK: our CCS + Finished flight for the client's key exchange flight, or None"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HandshakeAnswerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trio_ocserv._dtls_fastpath.HandshakeAnswer",
    .tp_basicsize = sizeof(HandshakeAnswerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)HandshakeAnswer_dealloc,
    .tp_methods = HandshakeAnswer_methods,
};

static PyObject *client_hello_app_id(PyObject *module, PyObject *arg) {
    Py_buffer d;
    if (PyObject_GetBuffer(arg, &d, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *id;
    size_t id_len;
    PyObject *result = hello_app_id(d.buf, (size_t)d.len, &id, &id_len)
        ? PyBytes_FromStringAndSize((const char *)id, (Py_ssize_t)id_len)
        : Py_NewRef(Py_None);
    PyBuffer_Release(&d);
    return result;
}

static PyMethodDef module_methods[] = {
    {"receive_udp", receive_udp, METH_VARARGS, "one batch of UDP datagrams, fast path first"},
    {"hello_app_id", client_hello_app_id, METH_O,
     "the App-ID of a ClientHello the thread could answer, or None"},
    {"psk_handshake_answer", psk_handshake_answer, METH_VARARGS, NULL},
    {"legacy_handshake_answer", legacy_handshake_answer, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_dtls_fastpath",
    "The DTLS data path's per-packet loop (AES-GCM) and login handshake answers, in C.", -1,
    module_methods,
};

static int add_type(PyObject *m, const char *name, PyTypeObject *type) {
    if (PyType_Ready(type) < 0) return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(m, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__dtls_fastpath(void) {
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    if (add_type(m, "GcmDataPath", &GcmDataPathType) < 0 ||
        add_type(m, "UdpReceiver", &UdpReceiverType) < 0 ||
        add_type(m, "HandshakeAnswer", &HandshakeAnswerType) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
