// The libFuzzer entry points a Swift fuzz target needs to see.
#ifndef CFUZZDRIVER_H
#define CFUZZDRIVER_H

#include <stddef.h>
#include <stdint.h>

/// Runs libFuzzer with the process's arguments; each fuzz target defines LLVMFuzzerTestOneInput.
int blockd_fuzz_main(int argc, char **argv);

#endif
