// Window arithmetic shared by the int8 and fp32 training-op cores (internal header).
// Portable C++17: no TFLM, no heap, no exceptions.
#ifndef TFLM_OPS_CORE_WINDOW_H_
#define TFLM_OPS_CORE_WINDOW_H_

#include <cstdint>

#include "tflm_ops/core/training_ops.h"

namespace tfmicro_train {
namespace core {
namespace window {

// ceil(a / b) for b > 0 and any sign of a.
inline int32_t CeilDiv(int32_t a, int32_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// Outputs o in [*o0, *o1) whose window offset k lands inside [0, in_size):
// 0 <= o * stride - pad + k < in_size, o in [0, out_size).
inline void WindowRange(int32_t in_size, int32_t k, int32_t stride, int32_t pad, int32_t out_size,
                        int32_t* o0, int32_t* o1) {
  int32_t lo = CeilDiv(pad - k, stride);
  int32_t hi = CeilDiv(in_size + pad - k, stride);
  if (lo < 0) lo = 0;
  if (hi > out_size) hi = out_size;
  if (hi < lo) hi = lo;
  *o0 = lo;
  *o1 = hi;
}

inline bool ValidHwc(Hwc d) { return d.h >= 0 && d.w >= 0 && d.c >= 0; }

inline bool ValidGeom(const ConvGeom& g) {
  return g.stride_h >= 1 && g.stride_w >= 1 && g.pad_top >= 0 && g.pad_left >= 0;
}

// Number of in-bounds window elements of pool output (oh, ow).
inline int32_t PoolCount(int32_t oh, int32_t ow, Hwc in, const PoolParams& p) {
  int32_t rows = 0, cols = 0;
  for (int32_t k = 0; k < p.filter_h; ++k) {
    const int32_t i = oh * p.geom.stride_h - p.geom.pad_top + k;
    rows += (i >= 0 && i < in.h);
  }
  for (int32_t k = 0; k < p.filter_w; ++k) {
    const int32_t i = ow * p.geom.stride_w - p.geom.pad_left + k;
    cols += (i >= 0 && i < in.w);
  }
  return rows * cols;
}

// Window offset (kh * filter_w + kw) of the first in-bounds input equal to y at output
// (oh, ow, c), scanning (kh, kw) in order; -1 if none.
inline int32_t MaxPoolFirst(const int8_t* x, int8_t yv, int32_t oh, int32_t ow, int32_t c, Hwc in,
                            const PoolParams& p) {
  for (int32_t kh = 0; kh < p.filter_h; ++kh) {
    const int32_t ih = oh * p.geom.stride_h - p.geom.pad_top + kh;
    if (ih < 0 || ih >= in.h) continue;
    for (int32_t kw = 0; kw < p.filter_w; ++kw) {
      const int32_t iw = ow * p.geom.stride_w - p.geom.pad_left + kw;
      if (iw < 0 || iw >= in.w) continue;
      if (x[(ih * in.w + iw) * in.c + c] == yv) return kh * p.filter_w + kw;
    }
  }
  return -1;
}

// The input pixel (ih * in.w + iw) to which max-pool output (oh, ow, c) routes its gradient (the
// first in-bounds window input equal to y), or -1 if none.
inline int32_t MaxPoolRoute(const int8_t* x, int8_t yv, int32_t oh, int32_t ow, int32_t c, Hwc in,
                            const PoolParams& p) {
  const int32_t k = MaxPoolFirst(x, yv, oh, ow, c, in, p);
  if (k < 0) return -1;
  const int32_t ih = oh * p.geom.stride_h - p.geom.pad_top + k / p.filter_w;
  const int32_t iw = ow * p.geom.stride_w - p.geom.pad_left + k % p.filter_w;
  return ih * in.w + iw;
}

}  // namespace window
}  // namespace core
}  // namespace tfmicro_train

#endif  // TFLM_OPS_CORE_WINDOW_H_
