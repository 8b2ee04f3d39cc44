// Gradient ops that only mask, crop or copy elements, for any element type: the int8 cores
// (training_ops.cc) and the fp32 cores (training_ops_f32.cc) are instances of these templates.
// Internal header. Portable C++17: no TFLM, no heap, no exceptions.
#ifndef TFLM_OPS_CORE_GRAD_COPY_H_
#define TFLM_OPS_CORE_GRAD_COPY_H_

#include <cstdint>

#include "tflm_ops/core/training_ops.h"
#include "tflm_ops/core/window.h"

namespace tfmicro_train {
namespace core {
namespace grad_copy {

// g where act_min < y < act_max, else zero (TMT_ACT_GRAD).
template <typename T>
Status ActGrad(const T* g, const int8_t* y, int32_t n, int32_t act_min, int32_t act_max, T* out) {
  if (n < 0) return Status::kBadShape;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t v = y[i];
    out[i] = (v > act_min && v < act_max) ? g[i] : static_cast<T>(0);
  }
  return Status::kOk;
}

// g where the packed mask bit is set, else zero (TMT_MASK_GRAD).
template <typename T>
Status MaskGrad(const T* g, const uint8_t* bits, int32_t n, T* out) {
  if (n < 0) return Status::kBadShape;
  for (int32_t i = 0; i < n; ++i) {
    out[i] = ((bits[i >> 3] >> (i & 7)) & 1u) ? g[i] : static_cast<T>(0);
  }
  return Status::kOk;
}

// The [pad_top, pad_left] window of g the size of `in` (TMT_PAD_GRAD).
template <typename T>
Status PadGrad(const T* g, Hwc g_dims, Hwc in, int32_t pad_top, int32_t pad_left, T* out) {
  if (!window::ValidHwc(g_dims) || !window::ValidHwc(in) || g_dims.c != in.c) {
    return Status::kBadShape;
  }
  if (pad_top < 0 || pad_left < 0) return Status::kBadParams;
  if (pad_top + in.h > g_dims.h || pad_left + in.w > g_dims.w) return Status::kBadShape;
  for (int32_t h = 0; h < in.h; ++h) {
    for (int32_t w = 0; w < in.w; ++w) {
      const T* src = g + ((h + pad_top) * g_dims.w + (w + pad_left)) * g_dims.c;
      T* dst = out + (h * in.w + w) * in.c;
      for (int32_t c = 0; c < in.c; ++c) dst[c] = src[c];
    }
  }
  return Status::kOk;
}

// The same n elements (TMT_RESHAPE_GRAD); nothing to do in place.
template <typename T>
Status ReshapeGrad(const T* g, int32_t n, T* out) {
  if (n < 0) return Status::kBadShape;
  if (g != out) {
    for (int32_t i = 0; i < n; ++i) out[i] = g[i];
  }
  return Status::kOk;
}

}  // namespace grad_copy
}  // namespace core
}  // namespace tfmicro_train

#endif  // TFLM_OPS_CORE_GRAD_COPY_H_
