#define _GNU_SOURCE
#include "CBlockShims.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/vfs.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

int blk_o_direct(void) { return O_DIRECT; }

int blk_fs_type(int fd, int64_t *type) {
    struct statfs info;
    if (fstatfs(fd, &info) != 0) return -errno;
    *type = (int64_t)info.f_type;
    return 0;
}

int blk_punch_hole(int fd, uint64_t offset, uint64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0 ? 0 : -errno;
}

int blk_zero_range(int fd, uint64_t offset, uint64_t length) {
    return fallocate(fd, FALLOC_FL_ZERO_RANGE, (off_t)offset, (off_t)length) == 0 ? 0 : -errno;
}

int blk_device_size(int fd, uint64_t *size) {
    return ioctl(fd, BLKGETSIZE64, size) == 0 ? 0 : -errno;
}

ssize_t blk_pwrite_dsync(int fd, const void *buf, size_t count, uint64_t offset) {
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = count };
    ssize_t n = pwritev2(fd, &iov, 1, (off_t)offset, RWF_DSYNC);
    return n >= 0 ? n : -errno;
}

int blk_device_zeroout(int fd, uint64_t offset, uint64_t length) {
    uint64_t range[2] = { offset, length };
    return ioctl(fd, BLKZEROOUT, range) == 0 ? 0 : -errno;
}

int blk_device_discard(int fd, uint64_t offset, uint64_t length) {
    uint64_t range[2] = { offset, length };
    return ioctl(fd, BLKDISCARD, range) == 0 ? 0 : -errno;
}

int blk_set_recv_timeout(int fd, int64_t milliseconds) {
    struct timeval tv = { .tv_sec = milliseconds / 1000, .tv_usec = (milliseconds % 1000) * 1000 };
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 ? 0 : -errno;
}

int blk_set_send_timeout(int fd, int64_t milliseconds) {
    struct timeval tv = { .tv_sec = milliseconds / 1000, .tv_usec = (milliseconds % 1000) * 1000 };
    return setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0 ? 0 : -errno;
}

int blk_set_nodelay(int fd) {
    int on = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) == 0 ? 0 : -errno;
}

int blk_accept(int fd, struct sockaddr *address, unsigned int *length) {
    socklen_t size = *length;
    int client = accept4(fd, address, &size, SOCK_CLOEXEC);
    *length = size;
    return client;
}

int blk_ioctl_ulong(int fd, unsigned long request, unsigned long argument) {
    return ioctl(fd, request, argument);
}
