// Thin C wrappers around libcurl's easy interface for the curl block drivers: typed setters for the
// variadic curl_easy_setopt, a HEAD probe and a range GET into a caller's buffer.
#ifndef CCURL_H
#define CCURL_H

#include <stddef.h>
#include <stdint.h>

/// Settings shared by every transfer of a node (NULL strings are left unset).
typedef struct {
    const char *url;
    long timeout_seconds;
    int ssl_verify;
    const char *cookie;
    const char *username;
    const char *password;
    const char *proxy_username;
    const char *proxy_password;
} blk_curl_settings;

/// Initialises libcurl once per process; returns 0 or a CURLcode.
int blk_curl_global_init(void);
/// A new easy handle with the settings applied, or NULL.
void *blk_curl_open(const blk_curl_settings *settings);
/// Frees an easy handle.
void blk_curl_close(void *handle);
/// HEAD (or the protocol's equivalent): the length (-1 when unknown), whether the server said
/// "Accept-Ranges: bytes", and the response code. Returns 0 or a CURLcode; `error` gets a message.
int blk_curl_probe(void *handle, int64_t *length, int *accepts_ranges, long *response, char *error, size_t error_size);
/// GET of bytes [offset, offset + length) into `buffer`; `received` gets the bytes written (the
/// transfer stops with an error past `length`). Returns 0 or a CURLcode; `error` gets a message.
int blk_curl_range_get(void *handle, uint64_t offset, uint64_t length, void *buffer, size_t *received,
                       long *response, char *error, size_t error_size);
/// GET of the whole file, written to `fd` from its current position (for protocols without byte
/// ranges). Returns 0 or a CURLcode; `error` gets a message.
int blk_curl_get_whole(void *handle, int fd, char *error, size_t error_size);

#endif
