/* The server's two PSK-NEGOTIATE flights (protocol.md §7.3), computed in C so that the UDP
 * receive thread can answer a login's DTLS handshake without waking Python. Sans-IO: datagrams
 * in, datagrams out; no socket, no Python object, no lock (the caller holds its own).
 *
 * It answers only the common case, exactly as protocol/dtls/server.py would, byte for byte:
 * the first ClientHello of a session (one record, one whole message) choosing an AES-GCM suite,
 * then openconnect's ClientKeyExchange + ChangeCipherSpec + Finished in one datagram. Anything
 * else gets 0 ("not answered"), and Python's engine answers it as before. Python's engine also
 * sees every datagram answered here, with the same server random and session id, so it ends in
 * the same state as if it had sent these bytes itself (and checks that it would have). */
#ifndef TRIO_OCSERV_DTLS_PSK_ANSWER_H
#define TRIO_OCSERV_DTLS_PSK_ANSWER_H

#include <stddef.h>
#include <stdint.h>

#define PSK_ANSWER_MAX_ID 32
#define PSK_ANSWER_MAX_PSK 64
#define PSK_ANSWER_MAX_SUITES 16
/* Our two flights are 133 and 75 bytes; the buffer given for one must hold this many. */
#define PSK_ANSWER_FLIGHT_MAX 256

typedef struct PskAnswer PskAnswer;

/* `randoms`: our 32-byte server random, then the 32-byte session id (what Python's engine draws
 * first, in that order); `preference`: the PSK suites we accept, best first. NULL: no memory, or
 * parameters out of range. */
PskAnswer *psk_answer_new(const unsigned char *psk, size_t psk_len, const unsigned char *randoms,
                          const uint16_t *preference, size_t n_preference);
/* Wipes the secrets. */
void psk_answer_free(PskAnswer *answer);

/* The App-ID a ClientHello datagram names (extension 48018, else the session id), as the UDP
 * demultiplexer reads it; 0 when the datagram is not a ClientHello this module would answer. */
int psk_hello_app_id(const unsigned char *d, size_t len, const unsigned char **id, size_t *id_len);

/* The ServerHello flight for the ClientHello datagram `d` (written to `out`), or 0. Answers once;
 * then derives the keys and both Finished values, so call it after nothing time-critical. */
size_t psk_answer_hello(PskAnswer *answer, const unsigned char *d, size_t len, unsigned char *out);

/* The ChangeCipherSpec + Finished flight for the client's key exchange flight `d`, or 0 (not the
 * expected flight, a client Finished that does not verify, or not answered the hello). */
size_t psk_answer_key_exchange(PskAnswer *answer, const unsigned char *d, size_t len,
                               unsigned char *out);

#endif
