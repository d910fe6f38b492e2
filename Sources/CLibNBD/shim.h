// libnbd's C API (Debian: libnbd-dev), for the nbd client driver.
#include <libnbd.h>
