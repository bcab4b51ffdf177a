/* The CSTP data path of established tunnels, on one thread that never takes the GIL.
 *
 * Once a tunnel is up (after `200 CONNECTED`), `CstpPlane` owns the TLS record layer of its TCP
 * connection: the thread reads the socket, feeds the ciphertext to the connection's OpenSSL
 * memory BIO, decrypts, splits the plaintext into CSTP frames (protocol.md §6) and writes data
 * frames to the session's tun. While the tunnel reader hands it the tun (`tun_watch`), it also
 * reads the tun, frames each packet (8-byte header, one TLS record per frame, as openconnect
 * expects) and sends the records. A ping reply the kernel made while a packet was written leaves
 * in the same pass, without waking the interpreter.
 *
 * OpenSSL: the connection is pyOpenSSL's, whose OpenSSL is the one bundled in `cryptography`
 * (not necessarily the system libssl). So this module links no OpenSSL: Python hands it the
 * addresses of that OpenSSL's SSL_read/SSL_write/BIO calls once (`configure`), and every call
 * goes through those pointers on the connection's own SSL and BIO handles.
 *
 * Python keeps the rest: DPD answers, DISCONNECT, timers, counters (the thread collects them and
 * hands them over at most every NOTIFY_MS), and the end of the tunnel. Python sends its frames
 * through `CstpPath.send`, under the plane's mutex, so one SSL object is never used by two
 * threads at once. `detach()` (taken under the same mutex) guarantees the thread never touches
 * the connection, the socket or the tun again; any ciphertext not yet sent stays in the outgoing
 * BIO, where the Python TLS stream sends it first.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEADER_LEN 8
#define TYPE_DATA 0x00
#define TYPE_DPD_REQUEST 0x03
#define TYPE_DISCONNECT 0x05
#define TYPE_COMPRESSED 0x08
#define MAX_PACKET 65535
/* Plaintext reassembly: a whole frame (header + 64 KiB) plus one record more. */
#define PLAIN_CAP (HEADER_LEN + MAX_PACKET + 16384 + 1024)
#define RECV_CHUNK 65536
#define RECV_ROUNDS 8
#define TUN_BATCH 64
#define MAX_EVENTS 64
#define NOTIFY_MS 100
#define MAX_QUEUED_BYTES (4u << 20)

/* OpenSSL constants (stable ABI values). */
#define SSL_ERROR_WANT_READ 2
#define SSL_ERROR_ZERO_RETURN 6

/* Why the thread stopped serving a path (reported with END). */
enum { END_EOF = 1, END_CLOSE_NOTIFY, END_TLS_ERROR, END_PROTOCOL_ERROR, END_SOCKET_ERROR,
       END_TUN_GONE };
/* What the queue carries to Python. */
enum { EVENT_FRAME = 1, EVENT_END, EVENT_TUN_RETURNED };

typedef struct {
    int (*ssl_read)(void *ssl, void *buf, int num);
    int (*ssl_write)(void *ssl, const void *buf, int num);
    int (*ssl_get_error)(const void *ssl, int ret);
    int (*bio_write)(void *bio, const void *buf, int len);
    int (*bio_read)(void *bio, void *buf, int len);
    long (*bio_get_mem_data)(void *bio, char **data); /* cffi's wrapper of the macro */
    void (*err_clear_error)(void);
} OpenSslCalls;

static OpenSslCalls ossl;
static int ossl_ready;

struct CstpPlane;

typedef struct CstpPath {
    PyObject_HEAD
    PyObject *owner;
    void *ssl, *rbio, *wbio;
    int tcp_fd, tun_fd;
    int max_payload;
    struct CstpPlane *plane; /* set while attached (the plane holds a strong reference) */
    int slot;                /* epoll slot while attached */
    int tun_watched;         /* the tun is in the epoll set */
    int out_blocked;         /* the socket is full: wait for EPOLLOUT, leave the tun alone */
    int ended;               /* the thread stopped serving it; Python ends the tunnel */
    int pending;             /* in the plane's list of paths with counts for Python */
    unsigned char *partial;  /* the start of a frame split across reads */
    size_t partial_len;
    unsigned long long packets_in, bytes_in, packets_out, bytes_out, frames_in;
} CstpPath;

typedef struct QueueItem {
    struct QueueItem *next;
    CstpPath *path;
    int kind, code;
    size_t len;
    unsigned char data[];
} QueueItem;

typedef struct CstpPlane {
    PyObject_HEAD
    int epfd, wake_fd, stop_fd;
    pthread_mutex_t lock;
    CstpPath **slots;
    uint32_t *generations;
    uint32_t *free_slots;
    size_t n_slots, n_free;
    QueueItem *head, *tail;
    size_t queued_bytes;
    unsigned long long dropped;
    CstpPath **pending;
    size_t n_pending, cap_pending;
    PyObject *retired; /* detached paths the queue may still name; released by take() */
    int notified, late_notice;
    long long last_notify_ms;
    unsigned char *rx, *plain, *tx, *trash;
} CstpPlane;

static PyTypeObject CstpPathType;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define STOP_TOKEN (~(uint64_t)0)

static uint64_t token_for(CstpPlane *plane, CstpPath *path, int is_tun) {
    uint32_t slot = (uint32_t)path->slot;
    return (uint64_t)plane->generations[slot] << 32 | (uint64_t)slot << 1 | (uint64_t)is_tun;
}

/* ---- the queue to Python (all with the plane's lock held) ---------------------------------- */

static int enqueue(CstpPlane *self, CstpPath *path, int kind, int code,
                   const unsigned char *data, size_t len) {
    if (kind == EVENT_FRAME && self->queued_bytes + len > MAX_QUEUED_BYTES) {
        self->dropped++;
        return 0;
    }
    QueueItem *item = malloc(sizeof *item + len);
    if (item == NULL) {
        self->dropped++;
        return 0;
    }
    item->next = NULL;
    item->path = path;
    item->kind = kind;
    item->code = code;
    item->len = len;
    if (len) memcpy(item->data, data, len);
    if (self->tail) self->tail->next = item;
    else self->head = item;
    self->tail = item;
    self->queued_bytes += len;
    return 1;
}

static void mark_pending(CstpPlane *self, CstpPath *path) {
    if (path->pending) return;
    if (self->n_pending == self->cap_pending) {
        size_t cap = self->cap_pending ? self->cap_pending * 2 : 64;
        CstpPath **grown = realloc(self->pending, cap * sizeof *grown);
        if (grown == NULL) return; /* reported with a later batch */
        self->pending = grown;
        self->cap_pending = cap;
    }
    path->pending = 1;
    self->pending[self->n_pending++] = path;
}

/* ---- epoll registration (lock held) -------------------------------------------------------- */

static int take_slot(CstpPlane *self, CstpPath *path) {
    uint32_t slot;
    if (self->n_free > 0) {
        slot = self->free_slots[--self->n_free];
    } else {
        size_t n = self->n_slots + 1;
        CstpPath **slots = realloc(self->slots, n * sizeof *slots);
        if (slots == NULL) return -1;
        self->slots = slots;
        uint32_t *generations = realloc(self->generations, n * sizeof *generations);
        if (generations == NULL) return -1;
        self->generations = generations;
        uint32_t *free_slots = realloc(self->free_slots, n * sizeof *free_slots);
        if (free_slots == NULL) return -1;
        self->free_slots = free_slots;
        slot = (uint32_t)self->n_slots;
        self->generations[slot] = 0;
        self->n_slots = n;
    }
    self->generations[slot]++;
    self->slots[slot] = path;
    path->slot = (int)slot;
    return 0;
}

static void give_slot_back(CstpPlane *self, CstpPath *path) {
    uint32_t slot = (uint32_t)path->slot;
    self->slots[slot] = NULL;
    self->generations[slot]++; /* a stale event for the old token finds nothing */
    self->free_slots[self->n_free++] = slot;
    path->slot = -1;
}

static void tun_events(CstpPlane *self, CstpPath *path) {
    if (!path->tun_watched) return;
    struct epoll_event event = {.events = path->out_blocked ? 0 : EPOLLIN};
    event.data.u64 = token_for(self, path, 1);
    epoll_ctl(self->epfd, EPOLL_CTL_MOD, path->tun_fd, &event);
}

static void tcp_events(CstpPlane *self, CstpPath *path) {
    struct epoll_event event = {.events = EPOLLIN | (path->out_blocked ? EPOLLOUT : 0)};
    event.data.u64 = token_for(self, path, 0);
    epoll_ctl(self->epfd, EPOLL_CTL_MOD, path->tcp_fd, &event);
}

static void unwatch_tun(CstpPlane *self, CstpPath *path) {
    if (!path->tun_watched) return;
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, path->tun_fd, NULL);
    path->tun_watched = 0;
}

/* The thread stops serving `path` (its fds leave the epoll set); Python hears why at once. */
static void end_path(CstpPlane *self, CstpPath *path, int why) {
    if (path->ended) return;
    path->ended = 1;
    unwatch_tun(self, path);
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, path->tcp_fd, NULL);
    enqueue(self, path, EVENT_END, why, NULL, 0);
}

/* ---- TLS records <-> socket (lock held) ---------------------------------------------------- */

/* Send what OpenSSL queued in the outgoing BIO; on a full socket, wait for EPOLLOUT and stop
 * reading the tun until it drains (the client's TCP window is the backpressure). */
static void flush_out(CstpPlane *self, CstpPath *path) {
    for (;;) {
        char *data = NULL;
        long pending = ossl.bio_get_mem_data(path->wbio, &data);
        if (pending <= 0 || data == NULL) break;
        ssize_t sent = send(path->tcp_fd, data, (size_t)pending, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!path->out_blocked) {
                    path->out_blocked = 1;
                    tcp_events(self, path);
                    tun_events(self, path);
                }
                return;
            }
            end_path(self, path, END_SOCKET_ERROR);
            return;
        }
        /* Consume what left (the BIO is read from its start, where `data` points). */
        for (ssize_t left = sent; left > 0;) {
            int chunk = left > RECV_CHUNK ? RECV_CHUNK : (int)left;
            int got = ossl.bio_read(path->wbio, self->trash, chunk);
            if (got <= 0) break;
            left -= got;
        }
    }
    if (path->out_blocked) {
        path->out_blocked = 0;
        tcp_events(self, path);
        tun_events(self, path);
    }
}

/* A write error that ends the tunnel. EIO is not one: the device is down (its tunnel has just
 * been answered and the tun is still being configured, or the admin set it down), and the
 * packet is dropped, as the kernel drops what is routed to a down interface. */
static int tun_gone(int err) {
    return err == EBADF || err == ENXIO || err == ENODEV || err == EFAULT;
}

/* Read the tun until EAGAIN (at most `limit` packets), one CSTP frame and TLS record each, and
 * send them in one pass. Returns the packets read. */
static int forward_tun(CstpPlane *self, CstpPath *path, int limit) {
    if (!path->tun_watched || path->out_blocked || path->ended) return 0;
    unsigned char *frame = self->tx;
    int count = 0;
    while (count < limit) {
        ssize_t got = read(path->tun_fd, frame + HEADER_LEN, MAX_PACKET);
        if (got <= 0) {
            if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            if (got < 0 && errno == EINTR) continue;
            /* The tunnel's reader task takes the tun back and meets the error itself. */
            unwatch_tun(self, path);
            enqueue(self, path, EVENT_TUN_RETURNED, 0, NULL, 0);
            break;
        }
        frame[0] = 'S';
        frame[1] = 'T';
        frame[2] = 'F';
        frame[3] = 1;
        frame[4] = (unsigned char)(got >> 8);
        frame[5] = (unsigned char)got;
        frame[6] = TYPE_DATA;
        frame[7] = 0;
        int written = ossl.ssl_write(path->ssl, frame, (int)got + HEADER_LEN);
        if (written <= 0) {
            ossl.err_clear_error();
            end_path(self, path, END_TLS_ERROR);
            return count;
        }
        count++;
        path->packets_out++;
        path->bytes_out += (unsigned long long)got;
    }
    if (count) flush_out(self, path);
    return count;
}

/* Split `buf[0:len]` into frames: data to the tun, the rest to Python. Returns the bytes used
 * (a partial frame stays), or -1 once the path ended (bad framing, DISCONNECT, tun gone). */
static long dispatch_frames(CstpPlane *self, CstpPath *path, unsigned char *buf, size_t len,
                            int *wrote) {
    size_t at = 0;
    while (len - at >= HEADER_LEN) {
        unsigned char *h = buf + at;
        size_t plen = (size_t)h[4] << 8 | h[5];
        if (h[0] != 'S' || h[1] != 'T' || h[2] != 'F' || h[3] != 1 || h[7] != 0 ||
            plen > (size_t)path->max_payload) {
            end_path(self, path, END_PROTOCOL_ERROR);
            return -1;
        }
        if (len - at < HEADER_LEN + plen) break;
        unsigned char code = h[6], *payload = h + HEADER_LEN;
        at += HEADER_LEN + plen;
        path->frames_in++;
        if (code == TYPE_DATA && !path->tun_watched) {
            /* Data on CSTP while the tun is not ours: DTLS carries tun -> client, so the
             * client's DTLS broke (§6). Python moves the tun to CSTP before writing the
             * packet, so that the reply cannot leave over the broken path. */
            enqueue(self, path, EVENT_FRAME, code, payload, plen);
        } else if (code == TYPE_DATA) {
            path->packets_in++;
            path->bytes_in += plen;
            *wrote = 1;
            if (write(path->tun_fd, payload, plen) < 0 && tun_gone(errno)) {
                end_path(self, path, END_TUN_GONE);
                return -1;
            }
            /* EAGAIN (tun queue full), EINVAL (not a packet) or EIO (device down): dropped, as
             * the kernel would. */
        } else if (code == TYPE_DPD_REQUEST || code == TYPE_DISCONNECT || code == TYPE_COMPRESSED) {
            enqueue(self, path, EVENT_FRAME, code, payload, plen);
            if (code == TYPE_DISCONNECT) {
                /* Nothing after a goodbye counts; Python ends the tunnel. */
                path->ended = 1;
                unwatch_tun(self, path);
                epoll_ctl(self->epfd, EPOLL_CTL_DEL, path->tcp_fd, NULL);
                return -1;
            }
        }
        /* KEEPALIVE, DPD responses, TERMINATE and unknown types only prove the peer alive. */
    }
    return (long)at;
}

/* Decrypt every record OpenSSL can now, frame by frame. */
static void decrypt_records(CstpPlane *self, CstpPath *path, int *wrote) {
    unsigned char *buf = self->plain;
    size_t have = path->partial_len;
    if (have) {
        memcpy(buf, path->partial, have);
        free(path->partial);
        path->partial = NULL;
        path->partial_len = 0;
    }
    while (!path->ended) {
        int got = ossl.ssl_read(path->ssl, buf + have, (int)(PLAIN_CAP - have));
        if (got <= 0) {
            int err = ossl.ssl_get_error(path->ssl, got);
            if (err != SSL_ERROR_WANT_READ) {
                ossl.err_clear_error();
                end_path(self, path, err == SSL_ERROR_ZERO_RETURN ? END_CLOSE_NOTIFY
                                                                 : END_TLS_ERROR);
            }
            break;
        }
        have += (size_t)got;
        long used = dispatch_frames(self, path, buf, have, wrote);
        if (used < 0) return;
        if (used > 0) {
            memmove(buf, buf + used, have - (size_t)used);
            have -= (size_t)used;
        }
    }
    if (have && !path->ended) {
        path->partial = malloc(have);
        if (path->partial == NULL) {
            end_path(self, path, END_PROTOCOL_ERROR);
            return;
        }
        memcpy(path->partial, buf, have);
        path->partial_len = have;
    }
}

/* The socket is readable: ciphertext into the BIO, records out, data to the tun; then the
 * replies the kernel queued on the tun meanwhile, in the same pass. */
static void serve_socket(CstpPlane *self, CstpPath *path) {
    int wrote = 0, eof = 0;
    for (int round = 0; round < RECV_ROUNDS && !path->ended; round++) {
        ssize_t got = recv(path->tcp_fd, self->rx, RECV_CHUNK, MSG_DONTWAIT);
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            end_path(self, path, END_SOCKET_ERROR);
            break;
        }
        if (got == 0) {
            eof = 1;
            break;
        }
        if (ossl.bio_write(path->rbio, self->rx, (int)got) != (int)got) {
            end_path(self, path, END_TLS_ERROR);
            break;
        }
        decrypt_records(self, path, &wrote);
        if (got < RECV_CHUNK) break;
    }
    if (path->ended) {
        flush_out(self, path); /* e.g. an alert OpenSSL queued */
        return;
    }
    if (eof) {
        end_path(self, path, END_EOF);
        return;
    }
    if (wrote) forward_tun(self, path, TUN_BATCH);
    flush_out(self, path); /* e.g. a TLS 1.3 KeyUpdate answer */
}

/* ---- the thread ---------------------------------------------------------------------------- */

static void wake_python(CstpPlane *self) {
    uint64_t one = 1;
    ssize_t r = write(self->wake_fd, &one, sizeof one);
    (void)r; /* the counter is far from full; an error leaves nothing to do */
}

static void plane_loop(CstpPlane *self) {
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int timeout = -1;
        pthread_mutex_lock(&self->lock);
        if (self->late_notice && !self->notified) {
            long long wait = NOTIFY_MS - (now_ms() - self->last_notify_ms);
            timeout = wait < 0 ? 0 : (int)wait;
        }
        pthread_mutex_unlock(&self->lock);
        int ready = epoll_wait(self->epfd, events, MAX_EVENTS, timeout);
        if (ready < 0) {
            if (errno == EINTR) continue;
            return;
        }
        int notify = 0;
        pthread_mutex_lock(&self->lock);
        for (int i = 0; i < ready; i++) {
            uint64_t token = events[i].data.u64;
            if (token == STOP_TOKEN) {
                pthread_mutex_unlock(&self->lock);
                return;
            }
            uint32_t slot = (uint32_t)token >> 1, generation = (uint32_t)(token >> 32);
            if (slot >= self->n_slots || self->generations[slot] != generation) continue;
            CstpPath *path = self->slots[slot];
            if (path == NULL || path->ended) continue;
            unsigned long long before = path->frames_in + path->packets_out;
            if (token & 1) {
                forward_tun(self, path, TUN_BATCH);
            } else {
                if (events[i].events & EPOLLOUT) flush_out(self, path);
                if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                    serve_socket(self, path);
            }
            if (path->frames_in + path->packets_out != before || path->ended) {
                if (!path->pending) self->late_notice = 1;
                mark_pending(self, path);
            }
        }
        /* Only what Python must see at once is queued (frames, ends, tun errors). */
        int urgent = self->head != NULL;
        if (!self->notified) {
            long long now = now_ms();
            if (urgent || (self->late_notice && now - self->last_notify_ms >= NOTIFY_MS)) {
                self->notified = 1;
                self->late_notice = 0;
                self->last_notify_ms = now;
                notify = 1;
            }
        }
        pthread_mutex_unlock(&self->lock);
        if (notify) wake_python(self);
    }
}

/* ---- CstpPath ------------------------------------------------------------------------------ */

/* CstpPath(owner, ssl, rbio, wbio, tcp_fd, tun_fd, max_payload): pointers are addresses. */
static PyObject *CstpPath_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *owner;
    unsigned long long ssl, rbio, wbio;
    int tcp_fd, tun_fd, max_payload;
    if (!PyArg_ParseTuple(args, "OKKKiii", &owner, &ssl, &rbio, &wbio, &tcp_fd, &tun_fd,
                          &max_payload))
        return NULL;
    if (!ssl || !rbio || !wbio || tcp_fd < 0 || tun_fd < 0 || max_payload < 0 ||
        max_payload > MAX_PACKET) {
        PyErr_SetString(PyExc_ValueError, "bad CSTP path arguments");
        return NULL;
    }
    CstpPath *self = (CstpPath *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    Py_INCREF(owner);
    self->owner = owner;
    self->ssl = (void *)(uintptr_t)ssl;
    self->rbio = (void *)(uintptr_t)rbio;
    self->wbio = (void *)(uintptr_t)wbio;
    self->tcp_fd = tcp_fd;
    self->tun_fd = tun_fd;
    self->max_payload = max_payload;
    self->slot = -1;
    return (PyObject *)self;
}

static int CstpPath_traverse(CstpPath *self, visitproc visit, void *arg) {
    Py_VISIT(self->owner);
    return 0;
}

static int CstpPath_clear(CstpPath *self) {
    Py_CLEAR(self->owner);
    return 0;
}

static void CstpPath_dealloc(CstpPath *self) {
    PyObject_GC_UnTrack(self);
    CstpPath_clear(self);
    free(self->partial);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* With the lock held (and the GIL): leave the plane; the thread never touches it again. */
static void detach_locked(CstpPlane *plane, CstpPath *path) {
    unwatch_tun(plane, path);
    if (!path->ended) epoll_ctl(plane->epfd, EPOLL_CTL_DEL, path->tcp_fd, NULL);
    give_slot_back(plane, path);
    path->plane = NULL;
}

/* detach(): the thread lets go; safe to call twice, or after the plane closed. */
static PyObject *CstpPath_detach(CstpPath *self, PyObject *unused) {
    CstpPlane *plane = self->plane;
    if (plane == NULL) Py_RETURN_NONE;
    pthread_mutex_lock(&plane->lock);
    detach_locked(plane, self);
    pthread_mutex_unlock(&plane->lock);
    /* The plane's reference: kept until take(), since the queue may still name this path. */
    int bad = PyList_Append(plane->retired, (PyObject *)self);
    Py_DECREF(self);
    if (bad) return NULL;
    Py_RETURN_NONE;
}

/* send(frame) -> bool: one TLS record, sent now (or when the socket drains). False when the
 * thread no longer serves the connection (Python's TLS stream is in charge again). */
static PyObject *CstpPath_send(CstpPath *self, PyObject *arg) {
    Py_buffer frame;
    if (PyObject_GetBuffer(arg, &frame, PyBUF_SIMPLE) < 0) return NULL;
    CstpPlane *plane = self->plane;
    int ok = 0;
    if (plane != NULL && frame.len > 0 && frame.len <= HEADER_LEN + MAX_PACKET) {
        pthread_mutex_lock(&plane->lock);
        if (!self->ended) {
            int written = ossl.ssl_write(self->ssl, frame.buf, (int)frame.len);
            if (written == (int)frame.len) {
                ok = 1;
                flush_out(plane, self);
            } else {
                ossl.err_clear_error();
                end_path(plane, self, END_TLS_ERROR);
            }
        }
        int notify = 0;
        if (plane->head != NULL && !plane->notified) {
            plane->notified = 1;
            plane->last_notify_ms = now_ms();
            notify = 1;
        }
        pthread_mutex_unlock(&plane->lock);
        if (notify) wake_python(plane);
    }
    PyBuffer_Release(&frame);
    return PyBool_FromLong(ok);
}

/* take_counts() -> (packets_in, bytes_in, packets_out, bytes_out, frames_in) */
static PyObject *CstpPath_take_counts(CstpPath *self, PyObject *unused) {
    CstpPlane *plane = self->plane;
    if (plane != NULL) pthread_mutex_lock(&plane->lock);
    unsigned long long pin = self->packets_in, bin = self->bytes_in, pout = self->packets_out,
                       bout = self->bytes_out, frames = self->frames_in;
    self->packets_in = self->bytes_in = self->packets_out = self->bytes_out = 0;
    self->frames_in = 0;
    if (plane != NULL) pthread_mutex_unlock(&plane->lock);
    return Py_BuildValue("(KKKKK)", pin, bin, pout, bout, frames);
}

static PyObject *CstpPath_get_tun_watch(CstpPath *self, void *closure) {
    return PyBool_FromLong(self->tun_watched);
}

/* tun_watch = True: the thread reads the tun (CSTP carries tun -> client); False: it stops
 * before this returns. Setting True may leave it False (detached, ended, or epoll refused). */
static int CstpPath_set_tun_watch(CstpPath *self, PyObject *value, void *closure) {
    int want = PyObject_IsTrue(value);
    if (want < 0) return -1;
    CstpPlane *plane = self->plane;
    if (plane == NULL) return 0;
    pthread_mutex_lock(&plane->lock);
    if (!want) {
        unwatch_tun(plane, self);
    } else if (!self->tun_watched && !self->ended) {
        struct epoll_event event = {.events = self->out_blocked ? 0 : EPOLLIN};
        event.data.u64 = token_for(plane, self, 1);
        if (epoll_ctl(plane->epfd, EPOLL_CTL_ADD, self->tun_fd, &event) == 0)
            self->tun_watched = 1;
    }
    pthread_mutex_unlock(&plane->lock);
    return 0;
}

static PyObject *CstpPath_get_attached(CstpPath *self, void *closure) {
    return PyBool_FromLong(self->plane != NULL);
}

static PyObject *CstpPath_get_owner(CstpPath *self, void *closure) {
    Py_INCREF(self->owner);
    return self->owner;
}

static PyMethodDef CstpPath_methods[] = {
    {"detach", (PyCFunction)CstpPath_detach, METH_NOARGS, NULL},
    {"send", (PyCFunction)CstpPath_send, METH_O, NULL},
    {"take_counts", (PyCFunction)CstpPath_take_counts, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef CstpPath_getset[] = {
    {"tun_watch", (getter)CstpPath_get_tun_watch, (setter)CstpPath_set_tun_watch,
     "the thread reads the tun", NULL},
    {"attached", (getter)CstpPath_get_attached, NULL, "served by a plane", NULL},
    {"owner", (getter)CstpPath_get_owner, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CstpPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trio_ocserv._cstp_fastpath.CstpPath",
    .tp_basicsize = sizeof(CstpPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = CstpPath_new,
    .tp_dealloc = (destructor)CstpPath_dealloc,
    .tp_traverse = (traverseproc)CstpPath_traverse,
    .tp_clear = (inquiry)CstpPath_clear,
    .tp_methods = CstpPath_methods,
    .tp_getset = CstpPath_getset,
};

/* ---- CstpPlane ----------------------------------------------------------------------------- */

static PyObject *CstpPlane_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, "")) return NULL;
    CstpPlane *self = (CstpPlane *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    pthread_mutex_init(&self->lock, NULL);
    if (self->epfd >= 0 && self->stop_fd >= 0) {
        struct epoll_event stop = {.events = EPOLLIN};
        stop.data.u64 = STOP_TOKEN;
        if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->stop_fd, &stop) < 0) {
            close(self->epfd);
            self->epfd = -1;
        }
    }
    self->rx = malloc(RECV_CHUNK);
    self->plain = malloc(PLAIN_CAP);
    self->tx = malloc(HEADER_LEN + MAX_PACKET);
    self->trash = malloc(RECV_CHUNK);
    self->retired = PyList_New(0);
    if (self->wake_fd < 0 || self->stop_fd < 0 || self->epfd < 0 || self->rx == NULL ||
        self->plain == NULL || self->tx == NULL || self->trash == NULL || self->retired == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

/* Detach every path and drop the queue; with the thread stopped (or never started). Returns the
 * owners of the paths that were attached (they must stop relying on the thread). */
static PyObject *plane_clear(CstpPlane *self) {
    PyObject *owners = PyList_New(0);
    if (owners == NULL) return NULL;
    pthread_mutex_lock(&self->lock);
    size_t n = self->n_slots;
    CstpPath **attached = n ? malloc(n * sizeof *attached) : NULL;
    size_t n_attached = 0;
    for (size_t s = 0; s < n; s++) {
        CstpPath *path = self->slots[s];
        if (path == NULL) continue;
        detach_locked(self, path);
        if (attached != NULL) attached[n_attached++] = path;
    }
    QueueItem *item = self->head;
    self->head = self->tail = NULL;
    self->queued_bytes = 0;
    for (size_t i = 0; i < self->n_pending; i++) self->pending[i]->pending = 0;
    self->n_pending = 0;
    pthread_mutex_unlock(&self->lock);
    while (item != NULL) {
        QueueItem *next = item->next;
        free(item);
        item = next;
    }
    for (size_t i = 0; i < n_attached; i++) {
        PyList_Append(owners, attached[i]->owner);
        Py_DECREF(attached[i]); /* the plane's reference */
    }
    free(attached);
    if (self->retired != NULL) PyList_SetSlice(self->retired, 0, PY_SSIZE_T_MAX, NULL);
    return owners;
}

static void CstpPlane_dealloc(CstpPlane *self) {
    PyObject *owners = plane_clear(self);
    Py_XDECREF(owners);
    Py_CLEAR(self->retired);
    if (self->wake_fd >= 0) close(self->wake_fd);
    if (self->stop_fd >= 0) close(self->stop_fd);
    if (self->epfd >= 0) close(self->epfd);
    pthread_mutex_destroy(&self->lock);
    free(self->slots);
    free(self->generations);
    free(self->free_slots);
    free(self->pending);
    free(self->rx);
    free(self->plain);
    free(self->tx);
    free(self->trash);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* attach(path): the thread serves the connection from now on; what OpenSSL already holds is
 * served here at once (records that arrived with the CONNECT request). */
static PyObject *CstpPlane_attach(CstpPlane *self, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &CstpPathType)) {
        PyErr_SetString(PyExc_TypeError, "attach() takes a CstpPath");
        return NULL;
    }
    CstpPath *path = (CstpPath *)arg;
    if (!ossl_ready) {
        PyErr_SetString(PyExc_RuntimeError, "configure() the OpenSSL calls first");
        return NULL;
    }
    if (path->plane != NULL || path->ended) {
        PyErr_SetString(PyExc_ValueError, "path already attached or ended");
        return NULL;
    }
    int urgent = 0, failed = 0;
    pthread_mutex_lock(&self->lock);
    if (take_slot(self, path) < 0) {
        failed = 1;
    } else {
        struct epoll_event event = {.events = EPOLLIN};
        event.data.u64 = token_for(self, path, 0);
        if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, path->tcp_fd, &event) < 0) {
            give_slot_back(self, path);
            failed = 2;
        } else {
            Py_INCREF(path);
            path->plane = self;
            int wrote = 0;
            decrypt_records(self, path, &wrote);
            if (!path->ended) flush_out(self, path);
            if (path->frames_in || path->ended) {
                mark_pending(self, path);
                urgent = 1;
            }
        }
    }
    int notify = 0;
    if (urgent && !self->notified) {
        self->notified = 1;
        self->last_notify_ms = now_ms();
        notify = 1;
    }
    pthread_mutex_unlock(&self->lock);
    if (failed == 1) return PyErr_NoMemory();
    if (failed == 2) return PyErr_SetFromErrno(PyExc_OSError);
    if (notify) wake_python(self);
    Py_RETURN_NONE;
}

static PyObject *CstpPlane_run(CstpPlane *self, PyObject *unused) {
    Py_BEGIN_ALLOW_THREADS
    plane_loop(self);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *CstpPlane_stop(CstpPlane *self, PyObject *unused) {
    uint64_t one = 1;
    if (write(self->stop_fd, &one, sizeof one) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *CstpPlane_close(CstpPlane *self, PyObject *unused) {
    return plane_clear(self);
}

/* take() -> (events, touched): events are (path, kind, code, payload) in order; touched are the
 * paths with counts to collect (take_counts) since the last call. */
static PyObject *CstpPlane_take(CstpPlane *self, PyObject *unused) {
    uint64_t count;
    /* Cleared before the swap: a notice arriving in between wakes us once more, harmlessly. */
    ssize_t r = read(self->wake_fd, &count, sizeof count);
    (void)r;
    pthread_mutex_lock(&self->lock);
    QueueItem *item = self->head;
    self->head = self->tail = NULL;
    self->queued_bytes = 0;
    size_t n_pending = self->n_pending;
    CstpPath **pending = NULL;
    if (n_pending) {
        pending = malloc(n_pending * sizeof *pending);
        if (pending == NULL) n_pending = 0;
        else memcpy(pending, self->pending, n_pending * sizeof *pending);
        for (size_t i = 0; i < self->n_pending; i++) self->pending[i]->pending = 0;
    }
    self->n_pending = 0;
    self->notified = 0;
    pthread_mutex_unlock(&self->lock);

    PyObject *events = PyList_New(0), *touched = PyList_New((Py_ssize_t)n_pending);
    int failed = events == NULL || touched == NULL;
    for (size_t i = 0; i < n_pending && !failed; i++) {
        Py_INCREF(pending[i]);
        PyList_SET_ITEM(touched, (Py_ssize_t)i, (PyObject *)pending[i]);
    }
    free(pending);
    while (item != NULL) {
        QueueItem *next = item->next;
        if (!failed) {
            PyObject *entry = Py_BuildValue("(Oiiy#)", (PyObject *)item->path, item->kind,
                                            item->code, item->data, (Py_ssize_t)item->len);
            failed = entry == NULL || PyList_Append(events, entry) < 0;
            Py_XDECREF(entry);
        }
        free(item);
        item = next;
    }
    PyList_SetSlice(self->retired, 0, PY_SSIZE_T_MAX, NULL);
    if (failed) {
        Py_XDECREF(events);
        Py_XDECREF(touched);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    return Py_BuildValue("(NN)", events, touched);
}

static PyObject *CstpPlane_get_wake_fd(CstpPlane *self, void *closure) {
    return PyLong_FromLong(self->wake_fd);
}

static PyObject *CstpPlane_get_dropped(CstpPlane *self, void *closure) {
    pthread_mutex_lock(&self->lock);
    unsigned long long dropped = self->dropped;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromUnsignedLongLong(dropped);
}

static PyMethodDef CstpPlane_methods[] = {
    {"attach", (PyCFunction)CstpPlane_attach, METH_O, NULL},
    {"run", (PyCFunction)CstpPlane_run, METH_NOARGS, "the thread's body; returns after stop()"},
    {"stop", (PyCFunction)CstpPlane_stop, METH_NOARGS, NULL},
    {"close", (PyCFunction)CstpPlane_close, METH_NOARGS,
     "detach all (thread stopped); returns their owners"},
    {"take", (PyCFunction)CstpPlane_take, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef CstpPlane_getset[] = {
    {"wake_fd", (getter)CstpPlane_get_wake_fd, NULL, "readable when take() has work", NULL},
    {"dropped", (getter)CstpPlane_get_dropped, NULL, "frames dropped: queue full", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CstpPlaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trio_ocserv._cstp_fastpath.CstpPlane",
    .tp_basicsize = sizeof(CstpPlane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = CstpPlane_new,
    .tp_dealloc = (destructor)CstpPlane_dealloc,
    .tp_methods = CstpPlane_methods,
    .tp_getset = CstpPlane_getset,
};

/* configure(ssl_read, ssl_write, ssl_get_error, bio_write, bio_read, bio_get_mem_data,
 *           err_clear_error):
 * the addresses of the OpenSSL functions pyOpenSSL's connections use. */
static PyObject *configure(PyObject *module, PyObject *args) {
    unsigned long long a[7];
    if (!PyArg_ParseTuple(args, "KKKKKKK", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6]))
        return NULL;
    for (int i = 0; i < 7; i++) {
        if (a[i] == 0) {
            PyErr_SetString(PyExc_ValueError, "a NULL OpenSSL function");
            return NULL;
        }
    }
    ossl.ssl_read = (int (*)(void *, void *, int))(uintptr_t)a[0];
    ossl.ssl_write = (int (*)(void *, const void *, int))(uintptr_t)a[1];
    ossl.ssl_get_error = (int (*)(const void *, int))(uintptr_t)a[2];
    ossl.bio_write = (int (*)(void *, const void *, int))(uintptr_t)a[3];
    ossl.bio_read = (int (*)(void *, void *, int))(uintptr_t)a[4];
    ossl.bio_get_mem_data = (long (*)(void *, char **))(uintptr_t)a[5];
    ossl.err_clear_error = (void (*)(void))(uintptr_t)a[6];
    ossl_ready = 1;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_VARARGS, "the OpenSSL functions to call"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cstp_fastpath",
    "The CSTP data path of established tunnels, on a thread of its own.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__cstp_fastpath(void) {
    if (PyType_Ready(&CstpPathType) < 0 || PyType_Ready(&CstpPlaneType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    Py_INCREF(&CstpPathType);
    Py_INCREF(&CstpPlaneType);
    if (PyModule_AddObject(m, "CstpPath", (PyObject *)&CstpPathType) < 0 ||
        PyModule_AddObject(m, "CstpPlane", (PyObject *)&CstpPlaneType) < 0 ||
        PyModule_AddIntConstant(m, "EVENT_FRAME", EVENT_FRAME) < 0 ||
        PyModule_AddIntConstant(m, "EVENT_END", EVENT_END) < 0 ||
        PyModule_AddIntConstant(m, "EVENT_TUN_RETURNED", EVENT_TUN_RETURNED) < 0 ||
        PyModule_AddIntConstant(m, "END_EOF", END_EOF) < 0 ||
        PyModule_AddIntConstant(m, "END_CLOSE_NOTIFY", END_CLOSE_NOTIFY) < 0 ||
        PyModule_AddIntConstant(m, "END_TLS_ERROR", END_TLS_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "END_PROTOCOL_ERROR", END_PROTOCOL_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "END_SOCKET_ERROR", END_SOCKET_ERROR) < 0 ||
        PyModule_AddIntConstant(m, "END_TUN_GONE", END_TUN_GONE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
