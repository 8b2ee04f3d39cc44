// Instruction counting on QEMU's MPS2 boards (test/benchmark builds only).
//
// Run QEMU with `-icount shift=0`: every guest instruction then advances virtual time by 1 ns.
// CMSDK APB timer 0 (0x40000000) counts down at the 25 MHz system clock of virtual time, so one
// tick is 40 instructions. TmtTimerStart() starts it from 0xFFFFFFFF; TmtInstructions() is the
// number of instructions executed since, to within 40 (+ the few instructions of the calls).
#ifndef TFLM_OPS_CORTEX_M_CM_TIMER_H_
#define TFLM_OPS_CORTEX_M_CM_TIMER_H_

#include <stdint.h>

#define TMT_TIMER0_BASE 0x40000000u
#define TMT_INSNS_PER_TICK 40u  // 1 GHz of instructions (icount shift 0) / 25 MHz timer clock

static inline volatile uint32_t* TmtTimerReg(uint32_t off) {
  return (volatile uint32_t*)(TMT_TIMER0_BASE + off);
}

static inline void TmtTimerStart(void) {
  *TmtTimerReg(0x0) = 0;            // CTRL: stop
  *TmtTimerReg(0x8) = 0xFFFFFFFFu;  // RELOAD
  *TmtTimerReg(0x4) = 0xFFFFFFFFu;  // VALUE
  *TmtTimerReg(0x0) = 1;            // CTRL: enable
}

static inline uint64_t TmtInstructions(void) {
  const uint32_t ticks = 0xFFFFFFFFu - *TmtTimerReg(0x4);
  return (uint64_t)ticks * TMT_INSNS_PER_TICK;
}

#endif  // TFLM_OPS_CORTEX_M_CM_TIMER_H_
