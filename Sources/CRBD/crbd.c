// See crbd.h. The librados/librbd declarations below are written from the librbd and librados API
// documentation (librbd.h, librados.h): opaque handles are pointers, results are 0 or -errno.
#include "crbd.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

typedef void *rados_t;
typedef void *rados_ioctx_t;
typedef void *rbd_image_t;
typedef void *rbd_completion_t;
typedef void (*rbd_callback_t)(rbd_completion_t completion, void *argument);
/// rbd_snap_info_t.
struct rbd_snap_info {
    uint64_t id;
    uint64_t size;
    const char *name;
};

static struct {
    int (*rados_create)(rados_t *cluster, const char *id);
    int (*rados_conf_read_file)(rados_t cluster, const char *path);
    int (*rados_conf_set)(rados_t cluster, const char *option, const char *value);
    int (*rados_connect)(rados_t cluster);
    void (*rados_shutdown)(rados_t cluster);
    int (*rados_ioctx_create)(rados_t cluster, const char *pool, rados_ioctx_t *ioctx);
    void (*rados_ioctx_destroy)(rados_ioctx_t ioctx);
    void (*rados_ioctx_set_namespace)(rados_ioctx_t ioctx, const char *ns);
    int (*rbd_open)(rados_ioctx_t ioctx, const char *name, rbd_image_t *image, const char *snapshot);
    int (*rbd_open_read_only)(rados_ioctx_t ioctx, const char *name, rbd_image_t *image, const char *snapshot);
    int (*rbd_close)(rbd_image_t image);
    int (*rbd_get_size)(rbd_image_t image, uint64_t *size);
    int (*rbd_resize)(rbd_image_t image, uint64_t size);
    int (*rbd_lock_acquire)(rbd_image_t image, int mode);
    int (*rbd_aio_create_completion)(void *argument, rbd_callback_t callback, rbd_completion_t *completion);
    ssize_t (*rbd_aio_get_return_value)(rbd_completion_t completion);
    void (*rbd_aio_release)(rbd_completion_t completion);
    int (*rbd_aio_read)(rbd_image_t image, uint64_t offset, size_t length, char *buffer, rbd_completion_t completion);
    int (*rbd_aio_write)(rbd_image_t image, uint64_t offset, size_t length, const char *buffer, rbd_completion_t completion);
    int (*rbd_aio_discard)(rbd_image_t image, uint64_t offset, uint64_t length, rbd_completion_t completion);
    int (*rbd_aio_write_zeroes)(rbd_image_t image, uint64_t offset, size_t length, rbd_completion_t completion,
                                int zero_flags, int op_flags);
    int (*rbd_aio_flush)(rbd_image_t image, rbd_completion_t completion);
    int (*rbd_diff_iterate2)(rbd_image_t image, const char *from_snapshot, uint64_t offset, uint64_t length,
                             uint8_t include_parent, uint8_t whole_object,
                             int (*callback)(uint64_t, size_t, int, void *), void *argument);
    int (*rbd_snap_list)(rbd_image_t image, struct rbd_snap_info *snapshots, int *max_snapshots);
    void (*rbd_snap_list_end)(struct rbd_snap_info *snapshots);
} api;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[512];

#define RBD_LOCK_MODE_EXCLUSIVE 0

static void load(void) {
    const char *rbd_name = getenv("BLOCKD_LIBRBD") ? getenv("BLOCKD_LIBRBD") : "librbd.so.1";
    void *rados = dlopen("librados.so.2", RTLD_NOW | RTLD_LOCAL);
    void *rbd = rados ? dlopen(rbd_name, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (!rados || !rbd) {
        snprintf(load_error, sizeof load_error, "librbd is not installed (Debian package librbd1)");
        return;
    }
#define BIND(handle, name)                                                                  \
    do {                                                                                    \
        *(void **)&api.name = dlsym(handle, #name);                                         \
        if (!api.name) {                                                                    \
            snprintf(load_error, sizeof load_error, "librbd lacks %s (librbd1 too old?)", #name); \
            return;                                                                         \
        }                                                                                   \
    } while (0)
    BIND(rados, rados_create);
    BIND(rados, rados_conf_read_file);
    BIND(rados, rados_conf_set);
    BIND(rados, rados_connect);
    BIND(rados, rados_shutdown);
    BIND(rados, rados_ioctx_create);
    BIND(rados, rados_ioctx_destroy);
    BIND(rados, rados_ioctx_set_namespace);
    BIND(rbd, rbd_open);
    BIND(rbd, rbd_open_read_only);
    BIND(rbd, rbd_close);
    BIND(rbd, rbd_get_size);
    BIND(rbd, rbd_resize);
    BIND(rbd, rbd_lock_acquire);
    BIND(rbd, rbd_aio_create_completion);
    BIND(rbd, rbd_aio_get_return_value);
    BIND(rbd, rbd_aio_release);
    BIND(rbd, rbd_aio_read);
    BIND(rbd, rbd_aio_write);
    BIND(rbd, rbd_aio_discard);
    BIND(rbd, rbd_aio_write_zeroes);
    BIND(rbd, rbd_aio_flush);
    BIND(rbd, rbd_diff_iterate2);
    BIND(rbd, rbd_snap_list);
    BIND(rbd, rbd_snap_list_end);
#undef BIND
}

int blk_rbd_load(char *error, size_t error_size) {
    pthread_once(&load_once, load);
    if (load_error[0]) {
        snprintf(error, error_size, "%s", load_error);
        return -1;
    }
    return 0;
}

struct blk_rbd {
    rados_t cluster;
    rados_ioctx_t ioctx;
    rbd_image_t image;
};

int blk_rbd_open(const char *conf, const char *user, const char *const *settings, int count, const char *pool,
                 const char *ns, const char *image, const char *snapshot, int read_only, blk_rbd **out,
                 char *error, size_t error_size) {
    if (blk_rbd_load(error, error_size) != 0) return -ENOENT;
    blk_rbd *rbd = calloc(1, sizeof *rbd);
    if (!rbd) return -ENOMEM;
    int result = api.rados_create(&rbd->cluster, user);
    if (result < 0) {
        snprintf(error, error_size, "error initializing: %s", strerror(-result));
        free(rbd);
        return result;
    }
    // A cluster that cannot be reached makes requests fail after these bounds instead of hanging
    // (the export's error policy then decides); set before the file is read, which may change them.
    static const char *const bounds[][2] = {
        {"client_mount_timeout", "30"}, {"rados_mon_op_timeout", "30"}, {"rados_osd_op_timeout", "30"}};
    for (size_t index = 0; index < sizeof bounds / sizeof bounds[0]; index++) {
        api.rados_conf_set(rbd->cluster, bounds[index][0], bounds[index][1]);
    }
    result = api.rados_conf_read_file(rbd->cluster, conf);
    if (result < 0 && conf) {
        snprintf(error, error_size, "error reading conf file %s: %s", conf, strerror(-result));
        goto fail_cluster;
    }
    for (int index = 0; index < count; index++) {
        result = api.rados_conf_set(rbd->cluster, settings[2 * index], settings[2 * index + 1]);
        if (result < 0) {
            snprintf(error, error_size, "invalid conf option %s: %s", settings[2 * index], strerror(-result));
            goto fail_cluster;
        }
    }
    result = api.rados_connect(rbd->cluster);
    if (result < 0) {
        snprintf(error, error_size, "error connecting: %s", strerror(-result));
        goto fail_cluster;
    }
    result = api.rados_ioctx_create(rbd->cluster, pool, &rbd->ioctx);
    if (result < 0) {
        snprintf(error, error_size, "error opening pool %s: %s", pool, strerror(-result));
        goto fail_cluster;
    }
    api.rados_ioctx_set_namespace(rbd->ioctx, ns ? ns : "");
    result = read_only ? api.rbd_open_read_only(rbd->ioctx, image, &rbd->image, snapshot)
                       : api.rbd_open(rbd->ioctx, image, &rbd->image, NULL);
    if (result < 0) {
        snprintf(error, error_size, "error reading header from %s: %s", image, strerror(-result));
        api.rados_ioctx_destroy(rbd->ioctx);
        goto fail_cluster;
    }
    *out = rbd;
    return 0;
fail_cluster:
    api.rados_shutdown(rbd->cluster);
    free(rbd);
    return result;
}

void blk_rbd_close(blk_rbd *rbd) {
    api.rbd_close(rbd->image);
    api.rados_ioctx_destroy(rbd->ioctx);
    api.rados_shutdown(rbd->cluster);
    free(rbd);
}

int blk_rbd_size(blk_rbd *rbd, uint64_t *size) { return api.rbd_get_size(rbd->image, size); }

int blk_rbd_resize(blk_rbd *rbd, uint64_t size) { return api.rbd_resize(rbd->image, size); }

int blk_rbd_lock_exclusive(blk_rbd *rbd) { return api.rbd_lock_acquire(rbd->image, RBD_LOCK_MODE_EXCLUSIVE); }

struct request {
    blk_rbd_done done;
    void *context;
    int op;
    uint64_t length;
};

static void completed(rbd_completion_t completion, void *argument) {
    struct request *request = argument;
    ssize_t result = api.rbd_aio_get_return_value(completion);
    api.rbd_aio_release(completion);
    // Reads return the bytes read; the other kinds return 0 on success.
    if (result >= 0) result = request->op == BLK_RBD_READ ? result : (ssize_t)request->length;
    blk_rbd_done done = request->done;
    void *context = request->context;
    free(request);
    done(context, (int64_t)result);
}

int blk_rbd_submit(blk_rbd *rbd, int op, uint64_t offset, uint64_t length, void *buffer, blk_rbd_done done, void *context) {
    struct request *request = malloc(sizeof *request);
    if (!request) return -ENOMEM;
    *request = (struct request){.done = done, .context = context, .op = op, .length = length};
    rbd_completion_t completion;
    int result = api.rbd_aio_create_completion(request, completed, &completion);
    if (result < 0) {
        free(request);
        return result;
    }
    switch (op) {
    case BLK_RBD_READ: result = api.rbd_aio_read(rbd->image, offset, length, buffer, completion); break;
    case BLK_RBD_WRITE: result = api.rbd_aio_write(rbd->image, offset, length, buffer, completion); break;
    case BLK_RBD_DISCARD: result = api.rbd_aio_discard(rbd->image, offset, length, completion); break;
    case BLK_RBD_WRITE_ZEROES: result = api.rbd_aio_write_zeroes(rbd->image, offset, length, completion, 0, 0); break;
    case BLK_RBD_FLUSH: result = api.rbd_aio_flush(rbd->image, completion); break;
    default: result = -EINVAL;
    }
    if (result < 0) {
        api.rbd_aio_release(completion);
        free(request);
    }
    return result;
}

int blk_rbd_diff(blk_rbd *rbd, uint64_t offset, uint64_t length, blk_rbd_extent callback, void *context) {
    return api.rbd_diff_iterate2(rbd->image, NULL, offset, length, 1, 0, callback, context);
}

int blk_rbd_snapshots(blk_rbd *rbd, blk_rbd_snapshot callback, void *context) {
    int capacity = 16;
    for (;;) {
        struct rbd_snap_info *list = calloc((size_t)capacity, sizeof *list);
        if (!list) return -ENOMEM;
        int wanted = capacity;
        int count = api.rbd_snap_list(rbd->image, list, &wanted);
        if (count == -ERANGE) {
            free(list);
            capacity = wanted > capacity ? wanted : capacity * 2;
            continue;
        }
        if (count < 0) {
            free(list);
            return count;
        }
        for (int index = 0; index < count; index++) callback(list[index].name, list[index].id, list[index].size, context);
        api.rbd_snap_list_end(list);
        free(list);
        return count;
    }
}
