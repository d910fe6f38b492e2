#ifndef BLOCKD_CTLS_H
#define BLOCKD_CTLS_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Server-side TLS for NBD connections, on GnuTLS: credentials, one session per connection,
 * record I/O from the connection's own thread, and kernel TLS when the kernel offers it. */

typedef struct blk_tls_creds blk_tls_creds;
typedef struct blk_tls_session blk_tls_session;

enum { BLK_TLS_X509 = 1, BLK_TLS_PSK = 2, BLK_TLS_ANON = 3 };

/* Loads server credentials of `kind` from `dir` (x509: ca-cert.pem, server-cert.pem,
 * server-key.pem, optional ca-crl.pem and dh-params.pem; psk: keys.psk; anon: no dir).
 * `priority` NULL takes blockd's default. NULL on failure, with the reason in `err`. */
blk_tls_creds *blk_tls_creds_load(int kind, const char *dir, int verify_peer, const char *priority,
                                  char *err, size_t errlen);
/* Drops one reference (sessions hold their own). */
void blk_tls_creds_release(blk_tls_creds *creds);
/* The priority string in effect. */
const char *blk_tls_creds_priority(const blk_tls_creds *creds);

/* A server session on connected socket `fd`. */
blk_tls_session *blk_tls_session_new(blk_tls_creds *creds, int fd, char *err, size_t errlen);
/* The handshake; the socket's timeouts bound it. 0, or -1 with the reason. */
int blk_tls_handshake(blk_tls_session *session, char *err, size_t errlen);
/* Checks the peer (x509 with verify-peer: its certificate chain) and writes its identity (the
 * certificate's distinguished name, or the PSK user name; empty for none). 0, or -1 with the reason. */
int blk_tls_peer_identity(blk_tls_session *session, char *identity, size_t len, char *err, size_t errlen);
/* "TLS1.3 AES-256-GCM" and the like. */
void blk_tls_describe(blk_tls_session *session, char *buf, size_t len);
/* Whether the kernel can take TLS records (the tls module). */
int blk_tls_kernel_available(void);
/* Hands the record keys to the kernel: 1 when the socket now encrypts and decrypts by itself
 * (free the session without bye), 0 when it stays in userspace. */
int blk_tls_enable_kernel(blk_tls_session *session);
/* Receives up to `count` bytes of plaintext, decrypting while whole records are already buffered.
 * >0, 0 for end of stream, -1 for an error. */
ssize_t blk_tls_recv(blk_tls_session *session, void *buf, size_t count);
/* Sends every byte. 0, or -1. */
int blk_tls_send(blk_tls_session *session, const void *buf, size_t count);
/* Sends every byte of the vectors; -1 with errno EFAULT when a vector's memory cannot be read. */
int blk_tls_sendv(blk_tls_session *session, const struct iovec *iov, int count);
/* Ends the session (close_notify when `bye`) and frees it. */
void blk_tls_session_free(blk_tls_session *session, int bye);

#endif
