// librbd and librados, loaded at run time with dlopen so that blockd builds and runs where Ceph is
// not installed. Only the handful of functions the rbd driver calls are declared (in crbd.c),
// from the librbd/librados API documentation.
#ifndef CRBD_H
#define CRBD_H

#include <stddef.h>
#include <stdint.h>

/// An open image with its cluster connection and pool context.
typedef struct blk_rbd blk_rbd;

/// Kinds of asynchronous request.
enum blk_rbd_op { BLK_RBD_READ = 0, BLK_RBD_WRITE = 1, BLK_RBD_DISCARD = 2, BLK_RBD_WRITE_ZEROES = 3, BLK_RBD_FLUSH = 4 };

/// Called once per asynchronous request, on a librbd thread, with the bytes done or -errno.
typedef void (*blk_rbd_done)(void *context, int64_t result);

/// Called for each extent rbd_diff_iterate2 reports; non-zero stops the walk.
typedef int (*blk_rbd_extent)(uint64_t offset, size_t length, int exists, void *context);

/// Loads librbd.so.1 and librados.so.2 (once); 0, or -1 with the reason in `error`.
int blk_rbd_load(char *error, size_t error_size);

/// Connects to the cluster and opens the image; 0, or -errno with a message in `error`.
/// `settings` holds `count` name/value pairs given to rados_conf_set after the file is read.
int blk_rbd_open(const char *conf, const char *user, const char *const *settings, int count, const char *pool,
                 const char *ns, const char *image, const char *snapshot, int read_only, blk_rbd **out,
                 char *error, size_t error_size);

/// Closes the image and the cluster connection.
void blk_rbd_close(blk_rbd *rbd);

/// The image's size; 0 or -errno.
int blk_rbd_size(blk_rbd *rbd, uint64_t *size);

/// Resizes the image; 0 or -errno.
int blk_rbd_resize(blk_rbd *rbd, uint64_t size);

/// Takes the image's exclusive lock and keeps it (no automatic hand-over); 0 or -errno
/// (-EROFS or -EBUSY when another client holds it, -EOPNOTSUPP without the exclusive-lock feature).
int blk_rbd_lock_exclusive(blk_rbd *rbd);

/// Starts an asynchronous request; `done` is called when it ends. 0, or -errno when it could not start
/// (then `done` is not called).
int blk_rbd_submit(blk_rbd *rbd, int op, uint64_t offset, uint64_t length, void *buffer, blk_rbd_done done, void *context);

/// Walks the allocated extents of [offset, offset+length); 0 or -errno.
int blk_rbd_diff(blk_rbd *rbd, uint64_t offset, uint64_t length, blk_rbd_extent callback, void *context);

/// Called for each snapshot of the image: its name, id and size.
typedef void (*blk_rbd_snapshot)(const char *name, uint64_t id, uint64_t size, void *context);

/// Lists the image's snapshots; the count, or -errno.
int blk_rbd_snapshots(blk_rbd *rbd, blk_rbd_snapshot callback, void *context);

#endif
