// Cortex-M4/M7 DSP paths of the training kernels. See dsp_kernels.h.
#include "tflm_ops/cortex_m/dsp_kernels.h"

namespace tfmicro_train {
namespace cortex_m {

bool HasDsp() { return core::ConvWeightUpdateHasDsp(); }

core::Status ConvWeightUpdate(const int8_t* g, float s, core::Hwc g_dims, const int8_t* x,
                              core::Hwc x_dims, int8_t* w, int32_t kh, int32_t kw,
                              const float* wfactor, float lr, const core::ConvGeom& geom,
                              const core::UpdateParams& p, uint32_t counter) {
  return core::ConvWeightUpdateDsp(g, s, g_dims, x, x_dims, w, kh, kw, wfactor, lr, geom, p,
                                   counter);
}

}  // namespace cortex_m
}  // namespace tfmicro_train
