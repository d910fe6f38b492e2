#include "ccurl.h"

#include <curl/curl.h>
#include <errno.h>
#include <unistd.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int blk_curl_global_init(void) {
    return (int)curl_global_init(CURL_GLOBAL_DEFAULT);
}

void *blk_curl_open(const blk_curl_settings *s) {
    CURL *h = curl_easy_init();
    if (!h) return NULL;
    curl_easy_setopt(h, CURLOPT_URL, s->url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    if (s->timeout_seconds > 0) curl_easy_setopt(h, CURLOPT_TIMEOUT, s->timeout_seconds);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, s->ssl_verify ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, s->ssl_verify ? 2L : 0L);
    if (s->cookie) curl_easy_setopt(h, CURLOPT_COOKIE, s->cookie);
    if (s->username) curl_easy_setopt(h, CURLOPT_USERNAME, s->username);
    if (s->password) curl_easy_setopt(h, CURLOPT_PASSWORD, s->password);
    if (s->proxy_username) curl_easy_setopt(h, CURLOPT_PROXYUSERNAME, s->proxy_username);
    if (s->proxy_password) curl_easy_setopt(h, CURLOPT_PROXYPASSWORD, s->proxy_password);
    return h;
}

void blk_curl_close(void *handle) {
    curl_easy_cleanup((CURL *)handle);
}

static size_t discard_body(char *data, size_t size, size_t count, void *user) {
    (void)data; (void)user;
    return size * count;
}

static size_t header_line(char *data, size_t size, size_t count, void *user) {
    size_t length = size * count;
    static const char name[] = "accept-ranges:";
    if (length > sizeof(name) - 1 && strncasecmp(data, name, sizeof(name) - 1) == 0) {
        const char *value = data + sizeof(name) - 1;
        size_t rest = length - (sizeof(name) - 1);
        while (rest > 0 && (*value == ' ' || *value == '\t')) { value++; rest--; }
        if (rest >= 5 && strncasecmp(value, "bytes", 5) == 0) *(int *)user = 1;
    }
    return length;
}

static void describe(CURLcode code, const char *detail, char *error, size_t error_size) {
    if (!error || error_size == 0) return;
    snprintf(error, error_size, "%s", detail[0] ? detail : curl_easy_strerror(code));
}

int blk_curl_probe(void *handle, int64_t *length, int *accepts_ranges, long *response, char *error, size_t error_size) {
    CURL *h = handle;
    char detail[CURL_ERROR_SIZE] = "";
    *accepts_ranges = 0;
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, detail);
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_line);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, accepts_ranges);
    CURLcode code = curl_easy_perform(h);
    curl_off_t size = -1;
    curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &size);
    *length = size;
    *response = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, response);
    curl_easy_setopt(h, CURLOPT_NOBODY, 0L);
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, NULL);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, NULL);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    if (code != CURLE_OK) describe(code, detail, error, error_size);
    return (int)code;
}

typedef struct {
    char *buffer;
    size_t capacity;
    size_t used;
} sink;

static size_t into_buffer(char *data, size_t size, size_t count, void *user) {
    sink *s = user;
    size_t length = size * count;
    if (length > s->capacity - s->used) return 0;  // more than asked for: stop the transfer
    memcpy(s->buffer + s->used, data, length);
    s->used += length;
    return length;
}

int blk_curl_range_get(void *handle, uint64_t offset, uint64_t length, void *buffer, size_t *received,
                       long *response, char *error, size_t error_size) {
    CURL *h = handle;
    char detail[CURL_ERROR_SIZE] = "";
    char range[64];
    snprintf(range, sizeof range, "%" PRIu64 "-%" PRIu64, offset, offset + length - 1);
    sink s = { buffer, (size_t)length, 0 };
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, detail);
    curl_easy_setopt(h, CURLOPT_RANGE, range);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, into_buffer);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    CURLcode code = curl_easy_perform(h);
    *received = s.used;
    *response = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, response);
    curl_easy_setopt(h, CURLOPT_RANGE, NULL);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    if (code != CURLE_OK) describe(code, detail, error, error_size);
    return (int)code;
}

static size_t into_fd(char *data, size_t size, size_t count, void *user) {
    int fd = *(int *)user;
    size_t length = size * count, done = 0;
    while (done < length) {
        ssize_t n = write(fd, data + done, length - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;  // stops the transfer with CURLE_WRITE_ERROR
        done += (size_t)n;
    }
    return length;
}

int blk_curl_get_whole(void *handle, int fd, char *error, size_t error_size) {
    CURL *h = handle;
    char detail[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, detail);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, into_fd);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &fd);
    CURLcode code = curl_easy_perform(h);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    if (code != CURLE_OK) describe(code, detail, error, error_size);
    return (int)code;
}
