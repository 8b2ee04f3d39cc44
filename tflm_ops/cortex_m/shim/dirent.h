// <dirent.h> for bare-metal newlib builds of the host test drivers (test-only shim).
// Semihosting cannot list directories: opendir() always fails, so drivers must be given
// files, not directories, on their command line.
#ifndef TFLM_OPS_CORTEX_M_SHIM_DIRENT_H_
#define TFLM_OPS_CORTEX_M_SHIM_DIRENT_H_

struct dirent {
  char d_name[256];
};
typedef struct TmtDir DIR;

static inline DIR* opendir(const char*) { return nullptr; }
static inline dirent* readdir(DIR*) { return nullptr; }
static inline int closedir(DIR*) { return 0; }

#endif  // TFLM_OPS_CORTEX_M_SHIM_DIRENT_H_
