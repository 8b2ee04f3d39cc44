/* Start-up code for the Cortex-M test programs under QEMU (mps2-an386 / mps2-an500), built with
 * `--specs=rdimon.specs -nostartfiles`: vector table, FPU enable, .bss clear, newlib's semihosting
 * stdio, C++ constructors, main(argc, argv) with the semihosting command line, exit(). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern uint32_t __stack;
extern uint32_t __bss_start__, __bss_end__;
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);
extern int main(int argc, char** argv);

/* What crti/crtn/crtbegin provide when start files are linked. */
void _init(void) {}
void _fini(void) {}
void* __dso_handle = 0;

/* libstdc++'s random_device / newlib's arc4random reference it; there is no entropy source. */
__attribute__((weak)) int getentropy(void* buf, size_t n) {
  (void)buf;
  (void)n;
  return -1;
}

static char cmdline[4096];  /* room for a few dozen file paths */
static char* argv_buf[128];

/* SYS_GET_CMDLINE (0x15): QEMU returns `-semihosting-config arg=...` joined by spaces. */
static int semihost_cmdline(void) {
  uint32_t block[2] = {(uint32_t)(uintptr_t)cmdline, sizeof(cmdline) - 1};
  register uint32_t r0 __asm__("r0") = 0x15;
  register uint32_t r1 __asm__("r1") = (uint32_t)(uintptr_t)block;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  if (r0 != 0) return 0;
  cmdline[block[1]] = 0;
  int argc = 0;
  char* p = cmdline;
  while (*p && argc < 127) {
    while (*p == ' ') *p++ = 0;
    if (!*p) break;
    argv_buf[argc++] = p;
    while (*p && *p != ' ') ++p;
  }
  argv_buf[argc] = 0;
  return argc;
}

void Reset_Handler(void) {
#if defined(__ARM_FP)
  /* CPACR: full access to CP10/CP11 (the FPU). */
  *(volatile uint32_t*)0xE000ED88u |= 0xFu << 20;
  __asm__ volatile("dsb\n isb" ::: "memory");
#endif
  memset(&__bss_start__, 0, (size_t)((char*)&__bss_end__ - (char*)&__bss_start__));
  initialise_monitor_handles();
  __libc_init_array();
  const int argc = semihost_cmdline();
  exit(main(argc, argv_buf));
}

static void Default_Handler(void) {
  /* A fault: report through semihosting SYS_EXIT with a non-zero status. */
  static const uint32_t block[2] = {0x20026u /* ADP_Stopped_ApplicationExit */, 99};
  register uint32_t r0 __asm__("r0") = 0x20; /* SYS_EXIT_EXTENDED */
  register uint32_t r1 __asm__("r1") = (uint32_t)(uintptr_t)block;
  __asm__ volatile("bkpt 0xAB" : : "r"(r0), "r"(r1) : "memory");
  for (;;) {
  }
}

__attribute__((section(".vectors"), used)) const void* const vectors[16] = {
    &__stack,        (void*)Reset_Handler,   (void*)Default_Handler, (void*)Default_Handler,
    (void*)Default_Handler, (void*)Default_Handler, (void*)Default_Handler, 0,
    0,               0,                      0,                      (void*)Default_Handler,
    (void*)Default_Handler, 0,               (void*)Default_Handler, (void*)Default_Handler};
