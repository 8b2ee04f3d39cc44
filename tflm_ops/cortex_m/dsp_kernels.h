// Cortex-M4/M7 DSP-extension paths of the training kernels (arm_acle.h: __smlad, __sxtb16).
//
// Same signatures, contract and results as the portable cores in tflm_ops/core/training_ops.h,
// bit for bit (tests/test_cortex_m.py replays the golden cases through both under QEMU). On a
// target without __ARM_FEATURE_DSP these are the portable cores.
//
// ConvWeightUpdate (also Dense: a 1x1 conv): the weight-gradient sum over output positions,
//   acc = sum g[p, co] * (x[p, ci] - x_zp), runs as SMLAD over pairs of positions for 4 input
//   channels at a time: sum g * x is exact in int32 (|g * x| <= 2^14, at most 2^17 positions,
//   else the portable core runs) and the zero point is applied once, as x_zp * sum g, in int64.
//   The implementation is core::ConvWeightUpdateDsp (tflm_ops/core/training_ops.cc), which
//   core::ConvWeightUpdate, and so the TFLM glue, uses by default on DSP targets (build with
//   -DTMT_PORTABLE_ONLY for the portable C++ path); this header names it for tests and benchmarks.
//
// Input gradients are left portable: their operands g * wmul (Q15) need 23 bits, more than the
// 16-bit lanes of SMLAD; the portable cores sum g * w in int32 per output channel and multiply
// by wmul once (one SMLAL per channel and 4 input channels).
#ifndef TFLM_OPS_CORTEX_M_DSP_KERNELS_H_
#define TFLM_OPS_CORTEX_M_DSP_KERNELS_H_

#include "tflm_ops/core/training_ops.h"

namespace tfmicro_train {
namespace cortex_m {

// True when this build uses the DSP instructions.
bool HasDsp();

core::Status ConvWeightUpdate(const int8_t* g, float s, core::Hwc g_dims, const int8_t* x,
                              core::Hwc x_dims, int8_t* w, int32_t kh, int32_t kw,
                              const float* wfactor, float lr, const core::ConvGeom& geom,
                              const core::UpdateParams& p, uint32_t counter);

}  // namespace cortex_m
}  // namespace tfmicro_train

#endif  // TFLM_OPS_CORTEX_M_DSP_KERNELS_H_
