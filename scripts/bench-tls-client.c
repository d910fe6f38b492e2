/* bench-tls-client: a libnbd queue-depth loop for scripts/bench-tls (fio's nbd engine refuses
 * nbds:// URIs that name certificate or PSK files). Prints operations per second and MiB/s.
 *
 *   bench-tls-client URI randread|read|write BLOCK QD SECONDS
 */
#include <libnbd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s URI randread|read|write BLOCK QD SECONDS\n", argv[0]);
        return 2;
    }
    const char *mode = argv[2];
    size_t block = strtoull(argv[3], NULL, 0);
    int depth = atoi(argv[4]);
    double seconds = atof(argv[5]);
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_set_uri_allow_local_file(h, true) < 0 || nbd_connect_uri(h, argv[1]) < 0) {
        fprintf(stderr, "%s\n", nbd_get_error());
        return 1;
    }
    int64_t size = nbd_get_size(h);
    uint64_t blocks = (uint64_t)size / block, next = 0, done = 0;
    char **buffers = calloc(depth, sizeof *buffers);
    int64_t *cookies = calloc(depth, sizeof *cookies);
    for (int i = 0; i < depth; i++) {
        buffers[i] = malloc(block);
        memset(buffers[i], 0xa5, block);
    }
    unsigned int seed = 1;
    int writing = strcmp(mode, "write") == 0, random = strcmp(mode, "randread") == 0;
    double start = now(), end = start + seconds;
    int running = 1;
    for (int i = 0; i < depth; i++) cookies[i] = 0;
    while (running || done < next) {
        for (int i = 0; i < depth; i++) {
            if (cookies[i] > 0) {
                int r = nbd_aio_command_completed(h, cookies[i]);
                if (r < 0) {
                    fprintf(stderr, "%s\n", nbd_get_error());
                    return 1;
                }
                if (r == 0) continue;
                cookies[i] = 0;
                done++;
            }
            if (cookies[i] == 0 && running) {
                uint64_t index = random ? (uint64_t)rand_r(&seed) * 2654435761u % blocks : next % blocks;
                cookies[i] = writing ? nbd_aio_pwrite(h, buffers[i], block, index * block, NBD_NULL_COMPLETION, 0)
                                     : nbd_aio_pread(h, buffers[i], block, index * block, NBD_NULL_COMPLETION, 0);
                if (cookies[i] < 0) {
                    fprintf(stderr, "%s\n", nbd_get_error());
                    return 1;
                }
                next++;
            }
        }
        if (nbd_aio_in_flight(h) > 0 && nbd_poll(h, -1) < 0) {
            fprintf(stderr, "%s\n", nbd_get_error());
            return 1;
        }
        if (running && now() >= end) running = 0;
    }
    double elapsed = now() - start;
    printf("%.0f %.1f\n", done / elapsed, done * (double)block / elapsed / (1 << 20));
    nbd_shutdown(h, 0);
    nbd_close(h);
    return 0;
}
