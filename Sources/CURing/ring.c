#define _GNU_SOURCE
#include "CURing.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <linux/fs.h>

struct blk_ring { struct io_uring ring; };

blk_ring *blk_ring_create(unsigned entries, int *error) {
    blk_ring *ring = calloc(1, sizeof *ring);
    if (!ring) { *error = ENOMEM; return NULL; }
    int result = io_uring_queue_init(entries, &ring->ring, 0);
    if (result < 0) { *error = -result; free(ring); return NULL; }
    return ring;
}

void blk_ring_destroy(blk_ring *ring) {
    if (!ring) return;
    io_uring_queue_exit(&ring->ring);
    free(ring);
}

int blk_ring_prep(blk_ring *ring, int op, int fd, void *buffer, uint32_t length, uint64_t offset, int dsync, uint64_t token) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (!sqe) return -EBUSY;
    switch (op) {
    case BLK_RING_READ: io_uring_prep_read(sqe, fd, buffer, length, offset); break;
    case BLK_RING_WRITE:
        io_uring_prep_write(sqe, fd, buffer, length, offset);
        if (dsync) sqe->rw_flags = RWF_DSYNC;
        break;
    default: io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC); break;
    }
    io_uring_sqe_set_data64(sqe, token);
    return 0;
}

int blk_ring_submit_wait(blk_ring *ring, unsigned wait) {
    int result;
    do { result = io_uring_submit_and_wait(&ring->ring, wait); } while (result == -EINTR);
    return result < 0 ? result : 0;
}

int blk_ring_reap(blk_ring *ring, uint64_t *tokens, int32_t *results, int max) {
    struct io_uring_cqe *cqe;
    unsigned head;
    int count = 0;
    io_uring_for_each_cqe(&ring->ring, head, cqe) {
        if (count == max) break;
        tokens[count] = cqe->user_data;
        results[count] = cqe->res;
        count++;
    }
    io_uring_cq_advance(&ring->ring, count);
    return count;
}
