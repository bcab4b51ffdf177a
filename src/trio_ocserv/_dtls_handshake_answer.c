/* A login's DTLS handshake flights in C (see _dtls_handshake_answer.h for what and why).
 *
 * The rules mirror protocol/dtls/server.py `_start_psk`, `_start_legacy` and
 * `_on_client_finished`; when a rule there has a case this file does not handle, this file
 * declines (returns 0) instead:
 *   PSK ClientHello: client_version <= DTLS 1.2 (numerically), the first suite of our preference
 *     the client offers (answered here only for the AES-GCM ones), null compression offered;
 *     renegotiation_info answered if the client sent it or the SCSV, record_size_limit 16384 if
 *     it sent one; a fresh 32-byte session id; records numbered 0 and 1 of epoch 0.
 *   PSK keys: RFC 4279 premaster (zeros || PSK), TLS 1.2 PRF with the suite's hash; epoch 1 keys
 *     from the key block (no MAC keys, 4-byte salts).
 *   PSK key exchange: openconnect's (psk_identity "psk"), message_seq 1, then CCS, then the
 *     Finished (message_seq 2) in epoch 1; ours: CCS as record 2 of epoch 0, Finished
 *     (message_seq 2) as record 0 of epoch 1, explicit nonce = epoch||seq (RFC 5288).
 *   Legacy ClientHello: DTLS 1.2 exactly (here: the AES-GCM suites), our session id echoed, the
 *     agreed suite offered; record_size_limit answered as above; then, in one datagram,
 *     ServerHello (record 0), CCS (record 1) and our Finished (message_seq 1, record 0 of
 *     epoch 1) over the hellos, keyed from the client's master secret.
 * The transcript is whole messages, 12-byte headers included (DTLS 1.2). */
#include "_dtls_handshake_answer.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <stdlib.h>
#include <string.h>

enum { WAIT_HELLO, WAIT_KEY_EXCHANGE, DONE };
enum { PSK, LEGACY };

#define HEADER 13     /* record header */
#define HS_HEADER 12  /* handshake message header */
#define CONTENT_CCS 20
#define CONTENT_HANDSHAKE 22
#define CLIENT_HELLO 1
#define SERVER_HELLO 2
#define SERVER_HELLO_DONE 14
#define CLIENT_KEY_EXCHANGE 16
#define FINISHED 20
#define DTLS1_2 0xFEFD
#define EXT_RECORD_SIZE_LIMIT 28
#define EXT_RENEGOTIATION_INFO 0xFF01
#define EXT_APP_ID 48018
#define SCSV 0x00FF
/* openconnect's key exchange: message_seq 1, psk_identity "psk" */
#define KEY_EXCHANGE_LEN (HS_HEADER + 5)
#define FINISHED_LEN (HS_HEADER + 12)
#define SEALED_FINISHED (8 + FINISHED_LEN + 16)

struct HandshakeAnswer {
    int mode, state;
    unsigned char psk[ANSWER_MAX_PSK];
    size_t psk_len;
    unsigned char master[48]; /* legacy: given; PSK: derived from the hellos */
    unsigned char server_random[32], session_id[32];
    size_t session_id_len;
    uint16_t preference[ANSWER_MAX_SUITES]; /* legacy: the agreed suite */
    size_t n_preference;
    /* From the ClientHello on. */
    const char *digest; /* the PRF hash */
    size_t key_len;
    unsigned char client_random[32];
    unsigned long long hello_record; /* the ClientHello's record number (epoch 0) */
    unsigned char *transcript;       /* ClientHello, ServerHello, ServerHelloDone */
    size_t transcript_len;
    /* Derived once our flight is out (answer_prepare). */
    int prepared;
    unsigned char client_key[32], client_salt[4];
    unsigned char key_exchange[KEY_EXCHANGE_LEN], client_finished[FINISHED_LEN];
    unsigned char final_flight[HEADER + 1 + HEADER + SEALED_FINISHED];
};

static uint32_t u16(const unsigned char *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t u24(const unsigned char *p) { return (uint32_t)p[0] << 16 | u16(p + 1); }

static unsigned long long u48(const unsigned char *p) {
    unsigned long long v = 0;
    for (int i = 0; i < 6; i++) v = v << 8 | p[i];
    return v;
}

static void put16(unsigned char *p, uint32_t v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static void put24(unsigned char *p, uint32_t v) { p[0] = (unsigned char)(v >> 16); put16(p + 1, v); }

static int dtls_version(uint32_t v) { return v == 0xFEFF || v == DTLS1_2 || v == 0x0100; }

/* A handshake message header: type, length, message_seq, offset 0, fragment = whole. */
static void put_hs_header(unsigned char *p, int type, size_t body_len, uint32_t message_seq) {
    p[0] = (unsigned char)type;
    put24(p + 1, (uint32_t)body_len);
    put16(p + 4, message_seq);
    put24(p + 6, 0);
    put24(p + 9, (uint32_t)body_len);
}

static void put_record_header(unsigned char *p, int type, uint32_t epoch, unsigned long long seq,
                              size_t length) {
    p[0] = (unsigned char)type;
    put16(p + 1, DTLS1_2);
    put16(p + 3, epoch);
    for (int i = 0; i < 6; i++) p[5 + i] = (unsigned char)(seq >> (8 * (5 - i)));
    put16(p + 11, (uint32_t)length);
}

typedef struct {
    const unsigned char *message; /* the ClientHello, handshake header included */
    size_t message_len;
    unsigned long long record;
    uint32_t client_version;
    const unsigned char *random, *session_id, *suites, *compression, *extensions;
    size_t session_id_len, suites_len, compression_len, extensions_len;
} Hello;

/* One epoch-0 handshake record holding one whole ClientHello (message_seq 0) and nothing else,
 * every length consistent (stricter than Python's parser: what passes here parses there). */
static int parse_hello(const unsigned char *d, size_t len, Hello *h) {
    if (len < HEADER + HS_HEADER || d[0] != CONTENT_HANDSHAKE || !dtls_version(u16(d + 1)) ||
        u16(d + 3) != 0 || HEADER + u16(d + 11) != len)
        return 0;
    const unsigned char *m = d + HEADER;
    size_t body_len = u24(m + 1);
    if (m[0] != CLIENT_HELLO || u16(m + 4) != 0 || u24(m + 6) != 0 || u24(m + 9) != body_len ||
        HEADER + HS_HEADER + body_len != len)
        return 0;
    h->message = m;
    h->message_len = HS_HEADER + body_len;
    h->record = u48(d + 5);
    const unsigned char *b = m + HS_HEADER, *end = b + body_len;
    if (end - b < 2 + 32 + 1) return 0;
    h->client_version = u16(b);
    h->random = b + 2;
    b += 34;
    h->session_id_len = *b++;
    if (h->session_id_len > 32 || (size_t)(end - b) < h->session_id_len) return 0;
    h->session_id = b;
    b += h->session_id_len;
    if (end - b < 1 || (size_t)(end - b - 1) < *b) return 0; /* cookie */
    b += 1 + *b;
    if (end - b < 2) return 0;
    h->suites_len = u16(b);
    b += 2;
    if (h->suites_len % 2 || (size_t)(end - b) < h->suites_len) return 0;
    h->suites = b;
    b += h->suites_len;
    if (end - b < 1) return 0;
    h->compression_len = *b++;
    if ((size_t)(end - b) < h->compression_len) return 0;
    h->compression = b;
    b += h->compression_len;
    h->extensions = NULL;
    h->extensions_len = 0;
    if (b == end) return 1;
    if (end - b < 2 || (size_t)(end - b - 2) != u16(b)) return 0;
    h->extensions = b + 2;
    h->extensions_len = u16(b);
    for (const unsigned char *p = h->extensions; p < end;) {
        if (end - p < 4 || (size_t)(end - p - 4) < u16(p + 2)) return 0;
        p += 4 + u16(p + 2);
    }
    return 1;
}

/* The first extension of `type` (as Python's ClientHello.extension), or NULL. */
static const unsigned char *find_extension(const Hello *h, uint32_t type, size_t *len) {
    const unsigned char *p = h->extensions, *end = p + h->extensions_len;
    while (p != NULL && p < end) {
        if (u16(p) == type) {
            *len = u16(p + 2);
            return p + 4;
        }
        p += 4 + u16(p + 2);
    }
    return NULL;
}

static int offers_suite(const Hello *h, uint32_t code) {
    for (size_t i = 0; i < h->suites_len; i += 2)
        if (u16(h->suites + i) == code) return 1;
    return 0;
}

int hello_app_id(const unsigned char *d, size_t len, const unsigned char **id, size_t *id_len) {
    Hello h;
    static const unsigned char zero[32];
    /* As hello_peek.py: a session id is required, an all-zero random (broken GnuTLS) is not
     * served, and a malformed App-ID extension names nothing. */
    if (!parse_hello(d, len, &h) || h.session_id_len == 0 || memcmp(h.random, zero, 32) == 0)
        return 0;
    size_t ext_len;
    const unsigned char *ext = find_extension(&h, EXT_APP_ID, &ext_len);
    if (ext != NULL) {
        if (ext_len < 1 || ext[0] == 0 || ext[0] > ext_len - 1) return 0;
        *id = ext + 1;
        *id_len = ext[0];
        return 1;
    }
    *id = h.session_id;
    *id_len = h.session_id_len;
    return 1;
}

HandshakeAnswer *answer_new_psk(const unsigned char *psk, size_t psk_len,
                                const unsigned char *randoms, const uint16_t *preference,
                                size_t n_preference) {
    if (psk_len == 0 || psk_len > ANSWER_MAX_PSK || n_preference > ANSWER_MAX_SUITES)
        return NULL;
    HandshakeAnswer *a = calloc(1, sizeof *a);
    if (a == NULL) return NULL;
    a->mode = PSK;
    a->state = WAIT_HELLO;
    memcpy(a->psk, psk, psk_len);
    a->psk_len = psk_len;
    memcpy(a->server_random, randoms, 32);
    memcpy(a->session_id, randoms + 32, 32);
    a->session_id_len = 32;
    memcpy(a->preference, preference, n_preference * sizeof *preference);
    a->n_preference = n_preference;
    return a;
}

HandshakeAnswer *answer_new_legacy(const unsigned char *master_secret,
                                   const unsigned char *session_id, size_t session_id_len,
                                   uint16_t suite, const unsigned char *server_random) {
    if (session_id_len == 0 || session_id_len > 32) return NULL;
    HandshakeAnswer *a = calloc(1, sizeof *a);
    if (a == NULL) return NULL;
    a->mode = LEGACY;
    a->state = WAIT_HELLO;
    memcpy(a->master, master_secret, 48);
    memcpy(a->session_id, session_id, session_id_len);
    a->session_id_len = session_id_len;
    a->preference[0] = suite;
    a->n_preference = 1;
    memcpy(a->server_random, server_random, 32);
    return a;
}

int answer_pending(const HandshakeAnswer *a) { return a->state != DONE; }

void answer_free(HandshakeAnswer *a) {
    if (a == NULL) return;
    if (a->transcript != NULL) {
        OPENSSL_cleanse(a->transcript, a->transcript_len);
        free(a->transcript);
    }
    OPENSSL_cleanse(a, sizeof *a);
    free(a);
}

/* TLS 1.2 PRF (RFC 5246 §5) of `secret` over label || seed, by OpenSSL's TLS1-PRF KDF. */
static int prf(const char *digest, const unsigned char *secret, size_t secret_len,
               const char *label, const unsigned char *seed, size_t seed_len,
               unsigned char *out, size_t out_len) {
    unsigned char label_seed[64 + 32];
    size_t label_len = strlen(label);
    if (label_len + seed_len > sizeof label_seed) return 0;
    memcpy(label_seed, label, label_len);
    memcpy(label_seed + label_len, seed, seed_len);
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS1-PRF", NULL);
    EVP_KDF_CTX *ctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)digest, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, (void *)secret, secret_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, label_seed,
                                          label_len + seed_len),
        OSSL_PARAM_construct_end(),
    };
    int ok = ctx != NULL && EVP_KDF_derive(ctx, out, out_len, params) == 1;
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    return ok;
}

/* Finished verify_data: PRF(master, label, Hash(transcript))[0..12). */
static int verify_data(const HandshakeAnswer *a, const unsigned char *master, const char *label,
                       const unsigned char *transcript, size_t len, unsigned char out[12]) {
    unsigned char hash[EVP_MAX_MD_SIZE];
    unsigned int hash_len = 0;
    const EVP_MD *md = EVP_get_digestbyname(a->digest);
    return md != NULL && EVP_Digest(transcript, len, hash, &hash_len, md, NULL) == 1 &&
           prf(a->digest, master, 48, label, hash, hash_len, out, 12);
}

/* AES-GCM over one record: nonce = salt || explicit(8), AAD = epoch_seq type version length. */
static int gcm(int encrypt, const unsigned char *key, size_t key_len, const unsigned char *salt,
               const unsigned char *header, const unsigned char *explicit_nonce,
               const unsigned char *in, int n, unsigned char *out, unsigned char *tag) {
    unsigned char nonce[12], aad[13];
    memcpy(nonce, salt, 4);
    memcpy(nonce + 4, explicit_nonce, 8);
    memcpy(aad, header + 3, 8);
    memcpy(aad + 8, header, 3);
    put16(aad + 11, (uint32_t)n);
    const EVP_CIPHER *cipher = key_len == 32 ? EVP_aes_256_gcm() : EVP_aes_128_gcm();
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int out_len = 0, ok = ctx != NULL &&
        EVP_CipherInit_ex(ctx, cipher, NULL, NULL, NULL, encrypt) == 1 &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1 &&
        EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, encrypt) == 1 &&
        EVP_CipherUpdate(ctx, NULL, &out_len, aad, sizeof aad) == 1 &&
        EVP_CipherUpdate(ctx, out, &out_len, in, n) == 1;
    if (ok && !encrypt) ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)tag) == 1;
    if (ok) ok = EVP_CipherFinal_ex(ctx, out + out_len, &out_len) == 1;
    if (ok && encrypt) ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

/* Epoch 1's keys from the master secret (RFC 5246 §6.3: no MAC keys for AEAD, 4-byte salts). */
static int derive_keys(HandshakeAnswer *a, unsigned char *server_key, unsigned char *server_salt) {
    unsigned char randoms[64], block[2 * (32 + 4)];
    size_t k = a->key_len;
    memcpy(randoms, a->server_random, 32);
    memcpy(randoms + 32, a->client_random, 32);
    int ok = prf(a->digest, a->master, 48, "key expansion", randoms, 64, block, 2 * (k + 4));
    memcpy(a->client_key, block, k);
    memcpy(server_key, block + k, k);
    memcpy(a->client_salt, block + 2 * k, 4);
    memcpy(server_salt, block + 2 * k + 4, 4);
    OPENSSL_cleanse(block, sizeof block);
    return ok;
}

/* Our Finished (`message_seq`, `verify` 12 bytes) as record 0 of epoch 1, sealed at `rec`. */
static int seal_finished(const HandshakeAnswer *a, const unsigned char *server_key,
                         const unsigned char *server_salt, uint32_t message_seq,
                         const unsigned char *verify, unsigned char *rec) {
    unsigned char finished[FINISHED_LEN];
    put_hs_header(finished, FINISHED, 12, message_seq);
    memcpy(finished + HS_HEADER, verify, 12);
    put_record_header(rec, CONTENT_HANDSHAKE, 1, 0, SEALED_FINISHED);
    memcpy(rec + HEADER, rec + 3, 8); /* explicit nonce = epoch||seq */
    return gcm(1, server_key, a->key_len, server_salt, rec, rec + HEADER, finished, FINISHED_LEN,
               rec + HEADER + 8, rec + HEADER + 8 + FINISHED_LEN);
}

/* PSK, after our hello flight: everything the key exchange flight will be checked against,
 * and our answer to it (Python's DtlsServer.prepare does the same ahead-of-time work). The
 * transcript has room for the key exchange and the client's Finished. */
static int prepare_psk(HandshakeAnswer *a) {
    unsigned char premaster[4 + 2 * ANSWER_MAX_PSK], randoms[64], server_key[32], salt[4];
    size_t n = a->psk_len;
    put16(premaster, (uint32_t)n);
    memset(premaster + 2, 0, n);
    put16(premaster + 2 + n, (uint32_t)n);
    memcpy(premaster + 4 + n, a->psk, n);
    memcpy(randoms, a->client_random, 32);
    memcpy(randoms + 32, a->server_random, 32);
    int ok = prf(a->digest, premaster, 4 + 2 * n, "master secret", randoms, 64, a->master, 48) &&
             derive_keys(a, server_key, salt);

    /* The transcript grows by the key exchange, then by the client's Finished. */
    unsigned char *t = a->transcript;
    size_t t_len = a->transcript_len;
    unsigned char *ke = a->key_exchange;
    put_hs_header(ke, CLIENT_KEY_EXCHANGE, 5, 1);
    memcpy(ke + HS_HEADER, "\x00\x03psk", 5);
    memcpy(t + t_len, ke, KEY_EXCHANGE_LEN);
    t_len += KEY_EXCHANGE_LEN;
    unsigned char *cf = a->client_finished, verify[12];
    put_hs_header(cf, FINISHED, 12, 2);
    ok = ok && verify_data(a, a->master, "client finished", t, t_len, cf + HS_HEADER);
    memcpy(t + t_len, cf, FINISHED_LEN);
    t_len += FINISHED_LEN;
    ok = ok && verify_data(a, a->master, "server finished", t, t_len, verify);

    unsigned char *f = a->final_flight;
    put_record_header(f, CONTENT_CCS, 0, 2, 1);
    f[HEADER] = 1;
    ok = ok && seal_finished(a, server_key, salt, 2, verify, f + HEADER + 1);
    OPENSSL_cleanse(a->master, sizeof a->master);
    OPENSSL_cleanse(server_key, sizeof server_key);
    OPENSSL_cleanse(premaster, sizeof premaster);
    return ok;
}

/* The suite's PRF hash and key length, for the AES-GCM suites answered here (PSK and legacy
 * DTLS 1.2); 0 for any other. */
static int gcm_suite(HandshakeAnswer *a, uint32_t suite) {
    if (suite == 0x00A9 || suite == 0x009D) {
        a->digest = "SHA384";
        a->key_len = 32;
    } else if (suite == 0x00A8 || suite == 0x009C) {
        a->digest = "SHA256";
        a->key_len = 16;
    } else {
        return 0;
    }
    return 1;
}

/* ServerHello (message_seq 0) into `sh`: DTLS 1.2, our random, `session_id`, `suite`, null
 * compression, the extensions asked for; returns the message length. */
static size_t server_hello(const HandshakeAnswer *a, uint32_t suite, int renegotiation,
                           int size_limit, unsigned char *sh) {
    unsigned char *b = sh + HS_HEADER;
    size_t id_len = a->session_id_len;
    put16(b, DTLS1_2);
    memcpy(b + 2, a->server_random, 32);
    b[34] = (unsigned char)id_len;
    memcpy(b + 35, a->session_id, id_len);
    unsigned char *p = b + 35 + id_len;
    put16(p, suite);
    p[2] = 0;
    p += 3;
    if (renegotiation || size_limit) {
        unsigned char *e = p + 2;
        if (renegotiation) {
            memcpy(e, "\xff\x01\x00\x01\x00", 5);
            e += 5;
        }
        if (size_limit) {
            memcpy(e, "\x00\x1c\x00\x02\x40\x00", 6);
            e += 6;
        }
        put16(p, (uint32_t)(e - p - 2));
        p = e;
    }
    size_t body_len = (size_t)(p - b);
    put_hs_header(sh, SERVER_HELLO, body_len, 0);
    return HS_HEADER + body_len;
}

/* The largest ServerHello: header, version, random, session id, suite, compression, both
 * extensions. */
#define SERVER_HELLO_MAX (HS_HEADER + 2 + 32 + 1 + 32 + 2 + 1 + 2 + 5 + 6)

static size_t answer_psk_hello(HandshakeAnswer *a, const Hello *h, unsigned char *out) {
    if (h->client_version > DTLS1_2) return 0;
    uint32_t chosen = 0;
    for (size_t i = 0; i < a->n_preference && chosen == 0; i++)
        if (offers_suite(h, a->preference[i])) chosen = a->preference[i];
    if (chosen == 0 || !gcm_suite(a, chosen) || chosen == 0x009D || chosen == 0x009C)
        return 0; /* none, or not AES-GCM PSK: Python's engine answers */
    if (memchr(h->compression, 0, h->compression_len) == NULL) return 0;
    size_t ignored;
    int renegotiation = find_extension(h, EXT_RENEGOTIATION_INFO, &ignored) != NULL ||
                        offers_suite(h, SCSV);
    int size_limit = find_extension(h, EXT_RECORD_SIZE_LIMIT, &ignored) != NULL;
    unsigned char sh[SERVER_HELLO_MAX], shd[HS_HEADER];
    size_t sh_len = server_hello(a, chosen, renegotiation, size_limit, sh);
    put_hs_header(shd, SERVER_HELLO_DONE, 0, 1);

    /* Room for the rest of the transcript: key exchange and client Finished (prepare_psk). */
    size_t t_len = h->message_len + sh_len + HS_HEADER;
    unsigned char *t = malloc(t_len + KEY_EXCHANGE_LEN + FINISHED_LEN);
    if (t == NULL) return 0;
    memcpy(t, h->message, h->message_len);
    memcpy(t + h->message_len, sh, sh_len);
    memcpy(t + h->message_len + sh_len, shd, HS_HEADER);
    a->transcript = t;
    a->transcript_len = t_len;
    put_record_header(out, CONTENT_HANDSHAKE, 0, 0, sh_len);
    memcpy(out + HEADER, sh, sh_len);
    unsigned char *second = out + HEADER + sh_len;
    put_record_header(second, CONTENT_HANDSHAKE, 0, 1, HS_HEADER);
    memcpy(second + HEADER, shd, HS_HEADER);
    a->state = WAIT_KEY_EXCHANGE;
    return 2 * HEADER + sh_len + HS_HEADER;
}

static size_t answer_legacy_hello(HandshakeAnswer *a, const Hello *h, unsigned char *out) {
    uint32_t suite = a->preference[0];
    if (h->client_version != DTLS1_2 || h->session_id_len != a->session_id_len ||
        CRYPTO_memcmp(h->session_id, a->session_id, a->session_id_len) != 0 ||
        !offers_suite(h, suite) || !gcm_suite(a, suite) || (suite != 0x009D && suite != 0x009C))
        return 0;
    size_t ignored;
    int size_limit = find_extension(h, EXT_RECORD_SIZE_LIMIT, &ignored) != NULL;
    unsigned char sh[SERVER_HELLO_MAX], server_key[32], salt[4], verify[12];
    size_t sh_len = server_hello(a, suite, 0, size_limit, sh);
    unsigned char *t = malloc(h->message_len + sh_len);
    if (t == NULL) return 0;
    memcpy(t, h->message, h->message_len);
    memcpy(t + h->message_len, sh, sh_len);
    a->transcript = t;
    a->transcript_len = h->message_len + sh_len;
    a->state = DONE; /* one flight; the client's last one is the engine's to check */
    put_record_header(out, CONTENT_HANDSHAKE, 0, 0, sh_len);
    memcpy(out + HEADER, sh, sh_len);
    unsigned char *ccs = out + HEADER + sh_len;
    put_record_header(ccs, CONTENT_CCS, 0, 1, 1);
    ccs[HEADER] = 1;
    int ok = derive_keys(a, server_key, salt) &&
             verify_data(a, a->master, "server finished", t, a->transcript_len, verify) &&
             seal_finished(a, server_key, salt, 1, verify, ccs + HEADER + 1);
    OPENSSL_cleanse(server_key, sizeof server_key);
    return ok ? 2 * HEADER + sh_len + 1 + HEADER + SEALED_FINISHED : 0;
}

size_t answer_hello(HandshakeAnswer *a, const unsigned char *d, size_t len, unsigned char *out) {
    Hello h;
    if (a->state != WAIT_HELLO || !parse_hello(d, len, &h)) return 0;
    memcpy(a->client_random, h.random, 32);
    a->hello_record = h.record;
    return a->mode == PSK ? answer_psk_hello(a, &h, out) : answer_legacy_hello(a, &h, out);
}

void answer_prepare(HandshakeAnswer *a) {
    if (a->state == WAIT_KEY_EXCHANGE && !a->prepared) {
        a->prepared = 1;
        if (!prepare_psk(a)) a->state = DONE; /* a crypto failure: decline from here on */
    }
}

size_t answer_key_exchange(HandshakeAnswer *a, const unsigned char *d, size_t len,
                           unsigned char *out) {
    const size_t ccs_at = HEADER + KEY_EXCHANGE_LEN, fin_at = ccs_at + HEADER + 1;
    answer_prepare(a);
    if (a->state != WAIT_KEY_EXCHANGE || len != fin_at + HEADER + SEALED_FINISHED) return 0;
    const unsigned char *ke = d, *ccs = d + ccs_at, *fin = d + fin_at;
    unsigned long long ke_record = u48(ke + 5), ccs_record = u48(ccs + 5);
    /* Three records, each as openconnect sends them, numbered after the hello (records the
     * engine's replay window would drop are left to it). */
    if (ke[0] != CONTENT_HANDSHAKE || !dtls_version(u16(ke + 1)) || u16(ke + 3) != 0 ||
        u16(ke + 11) != KEY_EXCHANGE_LEN || ke_record <= a->hello_record ||
        memcmp(ke + HEADER, a->key_exchange, KEY_EXCHANGE_LEN) != 0)
        return 0;
    if (ccs[0] != CONTENT_CCS || !dtls_version(u16(ccs + 1)) || u16(ccs + 3) != 0 ||
        u16(ccs + 11) != 1 || ccs[HEADER] != 1 || ccs_record <= ke_record ||
        ccs_record - a->hello_record >= 64)
        return 0;
    if (fin[0] != CONTENT_HANDSHAKE || !dtls_version(u16(fin + 1)) || u16(fin + 3) != 1 ||
        u16(fin + 11) != SEALED_FINISHED)
        return 0;
    unsigned char plain[FINISHED_LEN];
    if (!gcm(0, a->client_key, a->key_len, a->client_salt, fin, fin + HEADER, fin + HEADER + 8,
             FINISHED_LEN, plain, (unsigned char *)fin + HEADER + 8 + FINISHED_LEN) ||
        CRYPTO_memcmp(plain, a->client_finished, FINISHED_LEN) != 0)
        return 0;
    memcpy(out, a->final_flight, sizeof a->final_flight);
    a->state = DONE;
    return sizeof a->final_flight;
}
