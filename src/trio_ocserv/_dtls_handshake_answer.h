/* The server's DTLS handshake flights of a login (protocol.md §7.3 PSK-NEGOTIATE, §7.4 legacy
 * resumption), computed in C so that the UDP receive thread can answer them without waking
 * Python. Sans-IO: datagrams in, datagrams out; no socket, no Python object, no lock (the
 * caller holds its own).
 *
 * It answers only the common case, exactly as protocol/dtls/server.py would, byte for byte:
 * the first ClientHello of a session (one record, one whole message) for an AES-GCM suite, and
 * in PSK mode openconnect's ClientKeyExchange + ChangeCipherSpec + Finished after it. (A legacy
 * client is up once it has our one flight; its last flight is Python's to check.) Anything
 * else gets 0 ("not answered"), and Python's engine answers it as before. Python's engine also
 * sees every datagram answered here, drawing the same server random (and PSK session id), so
 * it ends in the same state as if it had sent these bytes itself, and checks that it would
 * have. */
#ifndef TRIO_OCSERV_DTLS_HANDSHAKE_ANSWER_H
#define TRIO_OCSERV_DTLS_HANDSHAKE_ANSWER_H

#include <stddef.h>
#include <stdint.h>

#define ANSWER_MAX_ID 32
#define ANSWER_MAX_PSK 64
#define ANSWER_MAX_SUITES 16
/* Our flights are 75 to 149 bytes; the buffer given for one must hold this many. */
#define ANSWER_FLIGHT_MAX 256

typedef struct HandshakeAnswer HandshakeAnswer;

/* PSK-NEGOTIATE. `randoms`: our 32-byte server random, then the 32-byte session id (what the
 * engine draws first, in that order); `preference`: the PSK suites we accept, best first. NULL:
 * no memory, or parameters out of range. */
HandshakeAnswer *answer_new_psk(const unsigned char *psk, size_t psk_len,
                                const unsigned char *randoms, const uint16_t *preference,
                                size_t n_preference);
/* Legacy resumption of the client's X-DTLS-Master-Secret (48 bytes) under our
 * X-DTLS-Session-ID and the agreed suite; `server_random` is the engine's first draw. */
HandshakeAnswer *answer_new_legacy(const unsigned char *master_secret,
                                   const unsigned char *session_id, size_t session_id_len,
                                   uint16_t suite, const unsigned char *server_random);
/* Wipes the secrets. */
void answer_free(HandshakeAnswer *answer);

/* The App-ID a ClientHello datagram names (extension 48018, else the session id), as the UDP
 * demultiplexer reads it; 0 when the datagram is not a ClientHello this module would answer. */
int hello_app_id(const unsigned char *d, size_t len, const unsigned char **id, size_t *id_len);

/* Our flight for the ClientHello datagram `d` (written to `out`), or 0. Answers once. */
size_t answer_hello(HandshakeAnswer *answer, const unsigned char *d, size_t len,
                    unsigned char *out);

/* PSK, once the hello flight is sent: derive the keys and both Finished values while the
 * client computes its answer (answer_key_exchange does it itself if not done yet). */
void answer_prepare(HandshakeAnswer *answer);

/* PSK: the ChangeCipherSpec + Finished flight for the client's key exchange flight `d`, or 0
 * (not the expected flight, a client Finished that does not verify, the hello not answered). */
size_t answer_key_exchange(HandshakeAnswer *answer, const unsigned char *d, size_t len,
                           unsigned char *out);

/* Whether `answer` may still answer something (a key exchange, or a hello). */
int answer_pending(const HandshakeAnswer *answer);

#endif
