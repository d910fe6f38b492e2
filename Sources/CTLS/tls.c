#define _GNU_SOURCE
#include "CTLS.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/tls.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

struct blk_tls_creds {
    atomic_int references;
    int kind;
    int verify_peer;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk;
    gnutls_anon_server_credentials_t anon;
    gnutls_dh_params_t dh;
    gnutls_priority_t priority;
    char *priority_text;
};

enum { RX_CAPACITY = 256 * 1024, TX_CAPACITY = 256 * 1024, STAGE_CAPACITY = 256 * 1024 };

struct blk_tls_session {
    gnutls_session_t session;
    blk_tls_creds *creds;
    int fd;
    /* Ciphertext received and not yet handed to GnuTLS. */
    unsigned char *rx;
    size_t rx_start, rx_end;
    /* Ciphertext GnuTLS produced and not yet sent. */
    unsigned char *tx;
    size_t tx_length;
    /* Plaintext gathered from the vectors of one send. */
    unsigned char *stage;
};

static void say(char *err, size_t errlen, const char *format, const char *detail) {
    if (err && errlen) snprintf(err, errlen, format, detail);
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static char *join(const char *dir, const char *name) {
    size_t length = strlen(dir) + strlen(name) + 2;
    char *path = malloc(length);
    if (path) snprintf(path, length, "%s/%s", dir, name);
    return path;
}

/* With AES instructions: AES-128-GCM, then AES-256-GCM, ahead of ChaCha20-Poly1305 (the cipher
 * decides most of TLS's cost), and the server's order decides. */
#define AES_FIRST ":-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305:+AES-128-CCM:+AES-256-CCM" \
                  ":+AES-128-CBC:+AES-256-CBC:%SERVER_PRECEDENCE"

static const char *default_priority(int kind) {
    int aes = __builtin_cpu_supports("aes");
    if (kind == BLK_TLS_PSK) return aes ? "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK" AES_FIRST : "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK";
    if (kind == BLK_TLS_ANON) return aes ? "NORMAL:+ANON-ECDH:+ANON-DH" AES_FIRST : "NORMAL:+ANON-ECDH:+ANON-DH";
    return aes ? "NORMAL" AES_FIRST : "NORMAL";
}

static void creds_free(blk_tls_creds *creds) {
    if (creds->x509) gnutls_certificate_free_credentials(creds->x509);
    if (creds->psk) gnutls_psk_free_server_credentials(creds->psk);
    if (creds->anon) gnutls_anon_free_server_credentials(creds->anon);
    if (creds->dh) gnutls_dh_params_deinit(creds->dh);
    if (creds->priority) gnutls_priority_deinit(creds->priority);
    free(creds->priority_text);
    free(creds);
}

static int load_dh(blk_tls_creds *creds, const char *dir, char *err, size_t errlen) {
    char *path = join(dir, "dh-params.pem");
    int rc = 0;
    if (path && file_exists(path)) {
        gnutls_datum_t data = {0};
        if ((rc = gnutls_load_file(path, &data)) < 0 || (rc = gnutls_dh_params_init(&creds->dh)) < 0 ||
            (rc = gnutls_dh_params_import_pkcs3(creds->dh, &data, GNUTLS_X509_FMT_PEM)) < 0) {
            say(err, errlen, "Unable to load DH parameters from dh-params.pem: %s", gnutls_strerror(rc));
            rc = -1;
        }
        gnutls_free(data.data);
    }
    free(path);
    return rc < 0 ? -1 : 0;
}

static int load_x509(blk_tls_creds *creds, const char *dir, char *err, size_t errlen) {
    char *ca = join(dir, "ca-cert.pem"), *cert = join(dir, "server-cert.pem"), *key = join(dir, "server-key.pem");
    char *crl = join(dir, "ca-crl.pem");
    int rc = -1, status;
    if (!ca || !cert || !key || !crl) goto out;
    const char *missing = !file_exists(ca) ? ca : !file_exists(cert) ? cert : !file_exists(key) ? key : NULL;
    if (missing) {
        say(err, errlen, "Unable to access credentials %s: No such file or directory", missing);
        goto out;
    }
    if ((status = gnutls_certificate_allocate_credentials(&creds->x509)) < 0) {
        say(err, errlen, "Cannot allocate credentials: %s", gnutls_strerror(status));
        goto out;
    }
    if ((status = gnutls_certificate_set_x509_trust_file(creds->x509, ca, GNUTLS_X509_FMT_PEM)) < 0) {
        say(err, errlen, "Cannot load CA certificate ca-cert.pem: %s", gnutls_strerror(status));
        goto out;
    }
    if ((status = gnutls_certificate_set_x509_key_file(creds->x509, cert, key, GNUTLS_X509_FMT_PEM)) < 0) {
        say(err, errlen, "Cannot load certificate server-cert.pem and key server-key.pem: %s", gnutls_strerror(status));
        goto out;
    }
    if (file_exists(crl) && (status = gnutls_certificate_set_x509_crl_file(creds->x509, crl, GNUTLS_X509_FMT_PEM)) < 0) {
        say(err, errlen, "Cannot load CRL ca-crl.pem: %s", gnutls_strerror(status));
        goto out;
    }
    if (load_dh(creds, dir, err, errlen) < 0) goto out;
    if (creds->dh) gnutls_certificate_set_dh_params(creds->x509, creds->dh);
    else gnutls_certificate_set_known_dh_params(creds->x509, GNUTLS_SEC_PARAM_MEDIUM);
    rc = 0;
out:
    free(ca); free(cert); free(key); free(crl);
    return rc;
}

static int load_psk(blk_tls_creds *creds, const char *dir, char *err, size_t errlen) {
    char *keys = join(dir, "keys.psk");
    int rc = -1, status;
    if (!keys) goto out;
    if (!file_exists(keys)) {
        say(err, errlen, "Unable to access credentials %s: No such file or directory", keys);
        goto out;
    }
    if ((status = gnutls_psk_allocate_server_credentials(&creds->psk)) < 0 ||
        (status = gnutls_psk_set_server_credentials_file(creds->psk, keys)) < 0) {
        say(err, errlen, "Cannot set PSK server credentials: %s", gnutls_strerror(status));
        goto out;
    }
    if (load_dh(creds, dir, err, errlen) < 0) goto out;
    if (creds->dh) gnutls_psk_set_server_dh_params(creds->psk, creds->dh);
    else gnutls_psk_set_server_known_dh_params(creds->psk, GNUTLS_SEC_PARAM_MEDIUM);
    rc = 0;
out:
    free(keys);
    return rc;
}

blk_tls_creds *blk_tls_creds_load(int kind, const char *dir, int verify_peer, const char *priority,
                                  char *err, size_t errlen) {
    blk_tls_creds *creds = calloc(1, sizeof *creds);
    if (!creds) return NULL;
    atomic_init(&creds->references, 1);
    creds->kind = kind;
    creds->verify_peer = verify_peer;
    int rc = 0;
    if (kind == BLK_TLS_X509) {
        rc = load_x509(creds, dir, err, errlen);
    } else if (kind == BLK_TLS_PSK) {
        rc = load_psk(creds, dir, err, errlen);
    } else {
        int status = gnutls_anon_allocate_server_credentials(&creds->anon);
        if (status < 0) {
            say(err, errlen, "Cannot allocate credentials: %s", gnutls_strerror(status));
            rc = -1;
        } else if (dir && (rc = load_dh(creds, dir, err, errlen)) == 0 && creds->dh) {
            gnutls_anon_set_server_dh_params(creds->anon, creds->dh);
        } else if (rc == 0) {
            gnutls_anon_set_server_known_dh_params(creds->anon, GNUTLS_SEC_PARAM_MEDIUM);
        }
    }
    if (rc == 0) {
        const char *text = priority ? priority : default_priority(kind);
        const char *where = NULL;
        int status = gnutls_priority_init(&creds->priority, text, &where);
        if (status < 0) {
            say(err, errlen, "Unable to set TLS session priority %s", text);
            rc = -1;
        } else {
            creds->priority_text = strdup(text);
        }
    }
    if (rc < 0) {
        creds_free(creds);
        return NULL;
    }
    return creds;
}

void blk_tls_creds_release(blk_tls_creds *creds) {
    if (creds && atomic_fetch_sub(&creds->references, 1) == 1) creds_free(creds);
}

const char *blk_tls_creds_priority(const blk_tls_creds *creds) { return creds->priority_text; }

/* Sends what GnuTLS produced. */
static int flush_tx(blk_tls_session *s) {
    size_t done = 0;
    while (done < s->tx_length) {
        ssize_t sent = send(s->fd, s->tx + done, s->tx_length - done, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        done += (size_t)sent;
    }
    s->tx_length = 0;
    return 0;
}

/* Small records (handshake messages, short replies) are gathered and sent together; a full
 * record goes out at once, with what was gathered before it, without another copy. */
static ssize_t push(gnutls_transport_ptr_t pointer, const void *data, size_t size) {
    blk_tls_session *s = pointer;
    if (size >= 8192 || s->tx_length + size > TX_CAPACITY) {
        if (flush_tx(s) < 0) {
            gnutls_transport_set_errno(s->session, errno);
            return -1;
        }
    }
    if (size >= 8192) {
        ssize_t sent;
        do sent = send(s->fd, data, size, MSG_NOSIGNAL); while (sent < 0 && errno == EINTR);
        if (sent < 0) gnutls_transport_set_errno(s->session, errno);
        return sent;
    }
    memcpy(s->tx + s->tx_length, data, size);
    s->tx_length += size;
    return (ssize_t)size;
}

/* Serves GnuTLS from the receive buffer, refilled with one recv of whatever has arrived. */
static ssize_t pull(gnutls_transport_ptr_t pointer, void *data, size_t size) {
    blk_tls_session *s = pointer;
    if (s->rx_start == s->rx_end) {
        if (s->tx_length && flush_tx(s) < 0) {
            gnutls_transport_set_errno(s->session, errno);
            return -1;
        }
        ssize_t received;
        do received = recv(s->fd, s->rx, RX_CAPACITY, 0); while (received < 0 && errno == EINTR);
        if (received < 0) {
            gnutls_transport_set_errno(s->session, errno == EWOULDBLOCK ? EAGAIN : errno);
            return -1;
        }
        s->rx_start = 0;
        s->rx_end = (size_t)received;
        if (received == 0) return 0;
    }
    size_t count = s->rx_end - s->rx_start < size ? s->rx_end - s->rx_start : size;
    memcpy(data, s->rx + s->rx_start, count);
    s->rx_start += count;
    return (ssize_t)count;
}

static int pull_timeout(gnutls_transport_ptr_t pointer, unsigned int ms) {
    blk_tls_session *s = pointer;
    if (s->rx_start < s->rx_end) return 1;
    if (s->tx_length && flush_tx(s) < 0) return -1;
    struct pollfd p = {.fd = s->fd, .events = POLLIN};
    int rc;
    do rc = poll(&p, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int)ms); while (rc < 0 && errno == EINTR);
    return rc;
}

blk_tls_session *blk_tls_session_new(blk_tls_creds *creds, int fd, char *err, size_t errlen) {
    blk_tls_session *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->fd = fd;
    s->rx = malloc(RX_CAPACITY);
    s->tx = malloc(TX_CAPACITY);
    s->stage = malloc(STAGE_CAPACITY);
    int rc;
    if (!s->rx || !s->tx || !s->stage || (rc = gnutls_init(&s->session, GNUTLS_SERVER)) < 0) {
        say(err, errlen, "Cannot initialize TLS session: %s", "out of memory");
        free(s->rx); free(s->tx); free(s->stage); free(s);
        return NULL;
    }
    atomic_fetch_add(&creds->references, 1);
    s->creds = creds;
    rc = gnutls_priority_set(s->session, creds->priority);
    if (rc >= 0) {
        if (creds->kind == BLK_TLS_X509) {
            rc = gnutls_credentials_set(s->session, GNUTLS_CRD_CERTIFICATE, creds->x509);
            if (creds->verify_peer) gnutls_certificate_server_set_request(s->session, GNUTLS_CERT_REQUEST);
        } else if (creds->kind == BLK_TLS_PSK) {
            rc = gnutls_credentials_set(s->session, GNUTLS_CRD_PSK, creds->psk);
        } else {
            rc = gnutls_credentials_set(s->session, GNUTLS_CRD_ANON, creds->anon);
        }
    }
    if (rc < 0) {
        say(err, errlen, "Cannot set session credentials: %s", gnutls_strerror(rc));
        blk_tls_session_free(s, 0);
        return NULL;
    }
    gnutls_transport_set_ptr(s->session, s);
    gnutls_transport_set_push_function(s->session, push);
    gnutls_transport_set_pull_function(s->session, pull);
    gnutls_transport_set_pull_timeout_function(s->session, pull_timeout);
    /* The connection's deadline bounds the handshake, through the socket's timeouts. */
    gnutls_handshake_set_timeout(s->session, 0);
    return s;
}

int blk_tls_handshake(blk_tls_session *s, char *err, size_t errlen) {
    int rc;
    do rc = gnutls_handshake(s->session); while (rc == GNUTLS_E_INTERRUPTED || (rc < 0 && rc != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(rc)));
    if (rc == 0 && flush_tx(s) < 0) {
        say(err, errlen, "TLS handshake failed: %s", strerror(errno));
        return -1;
    }
    if (rc == GNUTLS_E_AGAIN) {
        say(err, errlen, "TLS handshake failed: %s", "timed out");
        return -1;
    }
    if (rc < 0) {
        say(err, errlen, "TLS handshake failed: %s", gnutls_strerror(rc));
        return -1;
    }
    return 0;
}

static int x509_identity(blk_tls_session *s, char *identity, size_t len, char *err, size_t errlen) {
    unsigned int count = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(s->session, &count);
    if (!certs || count == 0) {
        if (s->creds->verify_peer) {
            say(err, errlen, "%s", "No certificate peer");
            return -1;
        }
        return 0;
    }
    if (s->creds->verify_peer) {
        unsigned int status = 0;
        int rc = gnutls_certificate_verify_peers2(s->session, &status);
        if (rc < 0) {
            say(err, errlen, "Verify failed: %s", gnutls_strerror(rc));
            return -1;
        }
        if (status != 0) {
            gnutls_datum_t text = {0};
            if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0) >= 0) {
                say(err, errlen, "Certificate verification failed: %s", (const char *)text.data);
                gnutls_free(text.data);
            } else {
                say(err, errlen, "%s", "Certificate verification failed");
            }
            return -1;
        }
    }
    gnutls_x509_crt_t cert;
    int rc = gnutls_x509_crt_init(&cert);
    if (rc >= 0) rc = gnutls_x509_crt_import(cert, &certs[0], GNUTLS_X509_FMT_DER);
    if (rc >= 0) {
        size_t size = len;
        rc = gnutls_x509_crt_get_dn(cert, identity, &size);
    }
    gnutls_x509_crt_deinit(cert);
    if (rc < 0) {
        say(err, errlen, "Cannot read the certificate's distinguished name: %s", gnutls_strerror(rc));
        return -1;
    }
    return 0;
}

int blk_tls_peer_identity(blk_tls_session *s, char *identity, size_t len, char *err, size_t errlen) {
    if (len) identity[0] = 0;
    if (s->creds->kind == BLK_TLS_X509) return x509_identity(s, identity, len, err, errlen);
    if (s->creds->kind == BLK_TLS_PSK) {
        const char *user = gnutls_psk_server_get_username(s->session);
        if (user) snprintf(identity, len, "%s", user);
    }
    return 0;
}

void blk_tls_describe(blk_tls_session *s, char *buf, size_t len) {
    const char *version = gnutls_protocol_get_name(gnutls_protocol_get_version(s->session));
    const char *cipher = gnutls_cipher_get_name(gnutls_cipher_get(s->session));
    snprintf(buf, len, "%s %s", version ? version : "?", cipher ? cipher : "?");
}

int blk_tls_kernel_available(void) {
    static atomic_int known = -1;
    int value = atomic_load(&known);
    if (value >= 0) return value;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    /* An unconnected socket: ENOTCONN when the module is there, ENOENT when it is not. */
    value = fd >= 0 && setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") < 0 && errno == ENOTCONN;
    if (fd >= 0) close(fd);
    atomic_store(&known, value);
    return value;
}

/* Fills one direction's kernel crypto info from GnuTLS's record state. */
static int kernel_direction(blk_tls_session *s, int read, int optname) {
    gnutls_datum_t mac, iv, key;
    unsigned char seq[8];
    if (gnutls_record_get_state(s->session, read, &mac, &iv, &key, seq) < 0) return -1;
    gnutls_protocol_t protocol = gnutls_protocol_get_version(s->session);
    unsigned short version = protocol == GNUTLS_TLS1_3 ? TLS_1_3_VERSION : TLS_1_2_VERSION;
    if (protocol != GNUTLS_TLS1_3 && protocol != GNUTLS_TLS1_2) return -1;
    switch (gnutls_cipher_get(s->session)) {
    case GNUTLS_CIPHER_AES_128_GCM: {
        struct tls12_crypto_info_aes_gcm_128 info = {.info = {.version = version, .cipher_type = TLS_CIPHER_AES_GCM_128}};
        if (key.size != sizeof info.key || iv.size < sizeof info.salt) return -1;
        memcpy(info.key, key.data, key.size);
        memcpy(info.salt, iv.data, sizeof info.salt);
        memcpy(info.iv, protocol == GNUTLS_TLS1_3 ? iv.data + 4 : seq, sizeof info.iv);
        memcpy(info.rec_seq, seq, sizeof info.rec_seq);
        return setsockopt(s->fd, SOL_TLS, optname, &info, sizeof info);
    }
    case GNUTLS_CIPHER_AES_256_GCM: {
        struct tls12_crypto_info_aes_gcm_256 info = {.info = {.version = version, .cipher_type = TLS_CIPHER_AES_GCM_256}};
        if (key.size != sizeof info.key || iv.size < sizeof info.salt) return -1;
        memcpy(info.key, key.data, key.size);
        memcpy(info.salt, iv.data, sizeof info.salt);
        memcpy(info.iv, protocol == GNUTLS_TLS1_3 ? iv.data + 4 : seq, sizeof info.iv);
        memcpy(info.rec_seq, seq, sizeof info.rec_seq);
        return setsockopt(s->fd, SOL_TLS, optname, &info, sizeof info);
    }
    case GNUTLS_CIPHER_CHACHA20_POLY1305: {
        struct tls12_crypto_info_chacha20_poly1305 info = {.info = {.version = version, .cipher_type = TLS_CIPHER_CHACHA20_POLY1305}};
        if (key.size != sizeof info.key || iv.size != sizeof info.iv) return -1;
        memcpy(info.key, key.data, key.size);
        memcpy(info.iv, iv.data, sizeof info.iv);
        memcpy(info.rec_seq, seq, sizeof info.rec_seq);
        return setsockopt(s->fd, SOL_TLS, optname, &info, sizeof info);
    }
    default:
        return -1;
    }
}

int blk_tls_enable_kernel(blk_tls_session *s) {
    if (!blk_tls_kernel_available()) return 0;
    /* Records already read past the handshake would be lost to the kernel. */
    if (s->rx_start < s->rx_end || gnutls_record_check_pending(s->session) > 0 || flush_tx(s) < 0) return 0;
    gnutls_cipher_algorithm_t cipher = gnutls_cipher_get(s->session);
    if (cipher != GNUTLS_CIPHER_AES_128_GCM && cipher != GNUTLS_CIPHER_AES_256_GCM && cipher != GNUTLS_CIPHER_CHACHA20_POLY1305)
        return 0;
    if (setsockopt(s->fd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") < 0) return 0;
    /* Once the ULP is set the socket cannot go back: a failure here ends the connection. */
    if (kernel_direction(s, 0, TLS_TX) < 0 || kernel_direction(s, 1, TLS_RX) < 0) return -1;
    return 1;
}

/* Whether another gnutls_record_recv can return without waiting for the network. */
static int buffered(blk_tls_session *s) {
    return gnutls_record_check_pending(s->session) > 0 || s->rx_start < s->rx_end;
}

ssize_t blk_tls_recv(blk_tls_session *s, void *buf, size_t count) {
    size_t done = 0;
    while (done < count) {
        ssize_t rc = gnutls_record_recv(s->session, (unsigned char *)buf + done, count - done);
        if (rc == GNUTLS_E_INTERRUPTED || rc == GNUTLS_E_AGAIN) {
            if (done) break;
            if (rc == GNUTLS_E_AGAIN) { errno = EAGAIN; return -1; }
            continue;
        }
        if (rc == 0 || rc == GNUTLS_E_PREMATURE_TERMINATION) break;
        if (rc < 0) {
            if (done) break;
            errno = EIO;
            return -1;
        }
        done += (size_t)rc;
        if (!buffered(s)) break;
    }
    return (ssize_t)done;
}

static int send_plain(blk_tls_session *s, const unsigned char *data, size_t count) {
    while (count > 0) {
        ssize_t rc = gnutls_record_send(s->session, data, count);
        if (rc == GNUTLS_E_INTERRUPTED || rc == GNUTLS_E_AGAIN) continue;
        if (rc < 0) {
            errno = EPIPE;
            return -1;
        }
        data += rc;
        count -= (size_t)rc;
    }
    return 0;
}

int blk_tls_send(blk_tls_session *s, const void *buf, size_t count) {
    if (send_plain(s, buf, count) < 0) return -1;
    return flush_tx(s);
}

int blk_tls_sendv(blk_tls_session *s, const struct iovec *iov, int count) {
    /* The kernel gathers the vectors into the staging buffer: memory that cannot be paged in (a
     * truncated mapping) fails with EFAULT, as sendmsg would, instead of raising SIGBUS. */
    pid_t self = getpid();
    int index = 0;
    size_t offset = 0;
    while (index < count) {
        struct iovec local = {.iov_base = s->stage, .iov_len = 0};
        struct iovec remote[64];
        int pieces = 0;
        size_t room = STAGE_CAPACITY;
        for (int i = index; i < count && pieces < 64 && room > 0; i++) {
            size_t start = i == index ? offset : 0;
            size_t take = iov[i].iov_len - start < room ? iov[i].iov_len - start : room;
            if (take == 0) continue;
            remote[pieces].iov_base = (char *)iov[i].iov_base + start;
            remote[pieces].iov_len = take;
            pieces++;
            room -= take;
        }
        local.iov_len = STAGE_CAPACITY - room;
        if (local.iov_len > 0) {
            ssize_t copied = process_vm_readv(self, &local, 1, remote, (unsigned long)pieces, 0);
            if (copied < 0 || (size_t)copied != local.iov_len) {
                errno = EFAULT;
                return -1;
            }
            if (send_plain(s, s->stage, local.iov_len) < 0) return -1;
        }
        /* Advance past what was staged. */
        size_t left = local.iov_len;
        while (index < count) {
            size_t rest = iov[index].iov_len - offset;
            if (left < rest) {
                offset += left;
                break;
            }
            left -= rest;
            index++;
            offset = 0;
            if (left == 0 && index < count && iov[index].iov_len != 0) break;
        }
    }
    return flush_tx(s);
}

void blk_tls_session_free(blk_tls_session *s, int bye) {
    if (!s) return;
    if (bye && s->session) {
        gnutls_bye(s->session, GNUTLS_SHUT_WR);
        flush_tx(s);
    }
    if (s->session) gnutls_deinit(s->session);
    blk_tls_creds_release(s->creds);
    free(s->rx);
    free(s->tx);
    free(s->stage);
    free(s);
}
