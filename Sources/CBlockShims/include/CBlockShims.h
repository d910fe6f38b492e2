// Thin C wrappers for Linux calls whose flags or macros Swift cannot import directly.
#ifndef CBLOCKSHIMS_H
#define CBLOCKSHIMS_H

#include <stdint.h>
#include <sys/types.h>
#include "AtomicWords.h"

/// open(2) flag for direct I/O.
int blk_o_direct(void);
/// The file system type (statfs f_type) of an open file; returns 0 or -errno.
int blk_fs_type(int fd, int64_t *type);
/// Deallocates a range of a file, keeping its size; returns 0 or -errno.
int blk_punch_hole(int fd, uint64_t offset, uint64_t length);
/// Zeroes a range of a file efficiently (FALLOC_FL_ZERO_RANGE); returns 0 or -errno.
int blk_zero_range(int fd, uint64_t offset, uint64_t length);
/// Size in bytes of a block device (BLKGETSIZE64); returns 0 or -errno.
int blk_device_size(int fd, uint64_t *size);
/// pwritev2 with RWF_DSYNC: a write that is durable when it returns; returns bytes or -errno.
ssize_t blk_pwrite_dsync(int fd, const void *buf, size_t count, uint64_t offset);
/// Zeroes a block device range with BLKZEROOUT; returns 0 or -errno.
int blk_device_zeroout(int fd, uint64_t offset, uint64_t length);
/// Discards a block device range with BLKDISCARD; returns 0 or -errno.
int blk_device_discard(int fd, uint64_t offset, uint64_t length);
/// Sets SO_RCVTIMEO on a socket; 0 milliseconds clears it; returns 0 or -errno.
int blk_set_recv_timeout(int fd, int64_t milliseconds);
/// Sets SO_SNDTIMEO on a socket; 0 milliseconds clears it; returns 0 or -errno.
int blk_set_send_timeout(int fd, int64_t milliseconds);
/// Sets TCP_NODELAY on a TCP socket; returns 0 or -errno.
int blk_set_nodelay(int fd);

struct sockaddr;
/// accept4 with SOCK_CLOEXEC; returns the descriptor or -1 with errno set.
int blk_accept(int fd, struct sockaddr *address, unsigned int *length);

/// ioctl with an unsigned long argument (the kernel nbd driver's requests); returns ioctl's result, errno set.
int blk_ioctl_ulong(int fd, unsigned long request, unsigned long argument);

#endif
