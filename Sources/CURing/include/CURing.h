// A narrow C interface over liburing for blockd's batched file I/O engine.
#ifndef CURING_H
#define CURING_H

#include <stdint.h>

/// An io_uring instance owned by one thread.
typedef struct blk_ring blk_ring;

/// Operations a ring entry can carry.
enum blk_ring_op { BLK_RING_READ = 0, BLK_RING_WRITE = 1, BLK_RING_FDATASYNC = 2 };

/// Creates a ring with `entries` submission slots; NULL with *error = errno when io_uring is unavailable.
blk_ring *blk_ring_create(unsigned entries, int *error);
/// Destroys a ring; no operation may be in flight.
void blk_ring_destroy(blk_ring *ring);
/// Queues one operation; returns 0, or -EBUSY when the submission queue is full.
int blk_ring_prep(blk_ring *ring, int op, int fd, void *buffer, uint32_t length, uint64_t offset, int dsync, uint64_t token);
/// Submits what is queued and waits until `wait` completions are available; returns 0 or -errno.
int blk_ring_submit_wait(blk_ring *ring, unsigned wait);
/// Takes up to `max` completions without waiting; returns how many were taken.
int blk_ring_reap(blk_ring *ring, uint64_t *tokens, int32_t *results, int max);

#endif
