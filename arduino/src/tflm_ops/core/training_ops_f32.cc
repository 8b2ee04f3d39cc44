// Portable cores of the fp32-backward TMT_* ops. See training_ops_f32.h and docs/contract.md
// ("fp32 backward"). Every float expression is one single-precision operation at a time, in the
// contract's order (built with -ffp-contract=off).
#include "tflm_ops/core/training_ops_f32.h"

#include <cmath>

#include "tflm_ops/core/arith.h"
#include "tflm_ops/core/grad_copy.h"
#include "tflm_ops/core/window.h"

namespace tfmicro_train {
namespace core {

namespace {

// the window helpers shared with the other core (window.h)
using window::CeilDiv;
using window::MaxPoolRoute;
using window::PoolCount;
using window::ValidGeom;
using window::ValidHwc;
using window::WindowRange;

inline bool ValidPool(Hwc g_dims, Hwc in, const PoolParams& p, Status* st) {
  if (!ValidHwc(g_dims) || !ValidHwc(in) || g_dims.c != in.c) {
    *st = Status::kBadShape;
    return false;
  }
  if (!ValidGeom(p.geom) || p.filter_h < 1 || p.filter_w < 1) {
    *st = Status::kBadParams;
    return false;
  }
  return true;
}

inline void Zero(float* p, int32_t n) {
  for (int32_t i = 0; i < n; ++i) p[i] = 0.0f;
}

constexpr float kQ16Scale = 65536.0f;  // 2^16: the update's fractional bits

// The stochastic step of one parameter: q16(((lr * acc) * factor) * 2^16), then
// floor((delta + r) / 2^16) with the element's noise (int8 mode's step).
inline int64_t StepOf(float acc, float lr, float factor, uint32_t base, uint32_t index) {
  const float la = lr * acc;
  const float lf = la * factor;
  const float t = lf * kQ16Scale;
  return StochasticStep(Q16FromF32(t), Noise(base, index));
}

inline int8_t UpdatedWeight(int8_t w, float acc, float lr, float factor, uint32_t base,
                            uint32_t index) {
  const int64_t v = static_cast<int64_t>(w) - StepOf(acc, lr, factor, base, index);
  return static_cast<int8_t>(Clamp64(v, -kInt8GradMax, kInt8GradMax));
}

}  // namespace

int64_t Q16FromF32(float t) {
  if (std::isnan(t)) return 0;
  const float d = std::floor(t);
  constexpr float k2Pow62 = 4611686018427387904.0f;  // 2^62, exact in float32
  if (d >= k2Pow62) return kSat62;
  if (d <= -k2Pow62) return -kSat62;
  return static_cast<int64_t>(d);
}

// ---------------------------------------------------------------- loss ops

Status SoftmaxCeGradF32(const int8_t* probs, int32_t n, int32_t label, const float* loss_lut,
                        float* grad, float* loss) {
  if (n <= 0) return Status::kBadShape;
  if (label < 0 || label >= n) return Status::kLabelOutOfRange;
  constexpr float kInv256 = 1.0f / 256.0f;  // exact
  for (int32_t i = 0; i < n; ++i) {
    int32_t d = static_cast<int32_t>(probs[i]) + 128;
    if (i == label) d -= 256;
    grad[i] = static_cast<float>(d) * kInv256;
  }
  *loss = loss_lut[static_cast<int32_t>(probs[label]) + 128];
  return Status::kOk;
}

Status MseGradF32(const int8_t* y, const int8_t* target, int32_t n, float scale, float* grad,
                  float* loss) {
  if (n <= 0) return Status::kBadShape;
  const float nf = static_cast<float>(n);
  const float s2 = scale * 2.0f;
  const float c = s2 / nf;
  int64_t sum_sq = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t d = static_cast<int32_t>(y[i]) - static_cast<int32_t>(target[i]);
    grad[i] = static_cast<float>(d) * c;
    sum_sq += static_cast<int64_t>(d) * d;
  }
  const float ss = scale * scale;
  const float sum_f = static_cast<float>(sum_sq);
  const float prod = ss * sum_f;
  *loss = prod / nf;
  return Status::kOk;
}

// ---------------------------------------------------------------- gradient plumbing

Status ActGradF32(const float* g, const int8_t* y, int32_t n, int32_t act_min, int32_t act_max,
                  float* out) {
  return grad_copy::ActGrad(g, y, n, act_min, act_max, out);
}

Status MaskGradF32(const float* g, const uint8_t* bits, int32_t n, float* out) {
  return grad_copy::MaskGrad(g, bits, n, out);
}

Status GradAddF32(const float* g1, const float* g2, int32_t n, float* out) {
  if (n < 0) return Status::kBadShape;
  for (int32_t i = 0; i < n; ++i) out[i] = g1[i] + g2[i];
  return Status::kOk;
}

Status MeanGradF32(const float* g, Hwc in, float inv_count, float* out) {
  if (!ValidHwc(in)) return Status::kBadShape;
  const int32_t hw = in.h * in.w;
  for (int32_t p = 0; p < hw; ++p) {
    float* o = out + p * in.c;
    for (int32_t c = 0; c < in.c; ++c) o[c] = g[c] * inv_count;
  }
  return Status::kOk;
}

Status PadGradF32(const float* g, Hwc g_dims, Hwc in, int32_t pad_top, int32_t pad_left,
                  float* out) {
  return grad_copy::PadGrad(g, g_dims, in, pad_top, pad_left, out);
}

Status ReshapeGradF32(const float* g, int32_t n, float* out) {
  return grad_copy::ReshapeGrad(g, n, out);
}

Status AvgPoolGradF32(const float* g, Hwc g_dims, Hwc in, const PoolParams& p, float* g_in) {
  Status st = Status::kOk;
  if (!ValidPool(g_dims, in, p, &st)) return st;
  const int32_t C = in.c;
  Zero(g_in, in.size());
  constexpr int32_t kBlock = 16;  // v[o] for up to 16 channels at a time
  float v[kBlock];
  for (int32_t oh = 0; oh < g_dims.h; ++oh) {
    for (int32_t ow = 0; ow < g_dims.w; ++ow) {
      const int32_t count = PoolCount(oh, ow, in, p);
      if (count == 0) continue;  // a window wholly in the padding reaches no input
      const float cf = static_cast<float>(count);
      const float* go = g + (oh * g_dims.w + ow) * C;
      for (int32_t c0 = 0; c0 < C; c0 += kBlock) {
        const int32_t nc = C - c0 < kBlock ? C - c0 : kBlock;
        for (int32_t k = 0; k < nc; ++k) v[k] = go[c0 + k] / cf;
        for (int32_t kh = 0; kh < p.filter_h; ++kh) {
          const int32_t ih = oh * p.geom.stride_h - p.geom.pad_top + kh;
          if (ih < 0 || ih >= in.h) continue;
          for (int32_t kw = 0; kw < p.filter_w; ++kw) {
            const int32_t iw = ow * p.geom.stride_w - p.geom.pad_left + kw;
            if (iw < 0 || iw >= in.w) continue;
            float* acc = g_in + (ih * in.w + iw) * C + c0;
            for (int32_t k = 0; k < nc; ++k) acc[k] += v[k];
          }
        }
      }
    }
  }
  return Status::kOk;
}

Status MaxPoolGradF32(const float* g, const int8_t* x, const int8_t* y, Hwc g_dims, Hwc in,
                      const PoolParams& p, float* g_in) {
  Status st = Status::kOk;
  if (!ValidPool(g_dims, in, p, &st)) return st;
  const int32_t C = in.c;
  Zero(g_in, in.size());
  for (int32_t oh = 0; oh < g_dims.h; ++oh) {
    for (int32_t ow = 0; ow < g_dims.w; ++ow) {
      for (int32_t c = 0; c < C; ++c) {
        const int32_t o = (oh * g_dims.w + ow) * C + c;
        const int32_t r = MaxPoolRoute(x, y[o], oh, ow, c, in, p);
        if (r >= 0) g_in[r * C + c] += g[o];
      }
    }
  }
  return Status::kOk;
}

// ---------------------------------------------------------------- input gradients

Status ConvInputGradF32(const float* g, Hwc g_dims, const int8_t* w, int32_t kh_size,
                        int32_t kw_size, const float* wscale, Hwc in, const ConvGeom& geom,
                        float* g_in, const SplitWeights& split) {
  if (!ValidHwc(g_dims) || !ValidHwc(in) || kh_size < 1 || kw_size < 1) return Status::kBadShape;
  if (!ValidGeom(geom)) return Status::kBadParams;
  const int32_t CO = g_dims.c;
  const int32_t CI = in.c;
  const int32_t w_co = kh_size * kw_size * CI;  // w stride between output channels
  Zero(g_in, in.size());
  // Scatter in ascending (oh, ow, co): an input position gets at most one tap (kh, kw) per
  // output position, so its terms arrive in the contract's order.
  for (int32_t oh = 0; oh < g_dims.h; ++oh) {
    for (int32_t ow = 0; ow < g_dims.w; ++ow) {
      const float* go = g + (oh * g_dims.w + ow) * CO;
      for (int32_t kh = 0; kh < kh_size; ++kh) {
        const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
        if (ih < 0 || ih >= in.h) continue;
        for (int32_t kw = 0; kw < kw_size; ++kw) {
          const int32_t iw = ow * geom.stride_w - geom.pad_left + kw;
          if (iw < 0 || iw >= in.w) continue;
          float* acc = g_in + (ih * in.w + iw) * CI;
          const int32_t tap = (kh * kw_size + kw) * CI;
          for (int32_t co = 0; co < CO; ++co) {
            const float gv = go[co];
            if (gv == 0.0f) continue;  // +-0 terms leave the sums as they are
            const float ws = wscale[co];
            const int8_t* wr = RowOf(w, split, co, w_co) + tap;
            for (int32_t ci = 0; ci < CI; ++ci) {
              const float wv = static_cast<float>(wr[ci]) * ws;
              acc[ci] += gv * wv;
            }
          }
        }
      }
    }
  }
  return Status::kOk;
}

Status DepthwiseInputGradF32(const float* g, Hwc g_dims, const int8_t* w, int32_t kh_size,
                             int32_t kw_size, const float* wscale, Hwc in, const ConvGeom& geom,
                             float* g_in) {
  if (!ValidHwc(g_dims) || !ValidHwc(in) || g_dims.c != in.c || kh_size < 1 || kw_size < 1) {
    return Status::kBadShape;
  }
  if (!ValidGeom(geom)) return Status::kBadParams;
  const int32_t C = in.c;
  Zero(g_in, in.size());
  for (int32_t oh = 0; oh < g_dims.h; ++oh) {
    for (int32_t ow = 0; ow < g_dims.w; ++ow) {
      const float* go = g + (oh * g_dims.w + ow) * C;
      for (int32_t kh = 0; kh < kh_size; ++kh) {
        const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
        if (ih < 0 || ih >= in.h) continue;
        for (int32_t kw = 0; kw < kw_size; ++kw) {
          const int32_t iw = ow * geom.stride_w - geom.pad_left + kw;
          if (iw < 0 || iw >= in.w) continue;
          float* acc = g_in + (ih * in.w + iw) * C;
          const int8_t* wk = w + (kh * kw_size + kw) * C;
          for (int32_t c = 0; c < C; ++c) {
            const float wv = static_cast<float>(wk[c]) * wscale[c];
            acc[c] += go[c] * wv;
          }
        }
      }
    }
  }
  return Status::kOk;
}

// ---------------------------------------------------------------- parameter updates

namespace {

// Calls visit(co, index, acc) for every weight-gradient sum of TMT_CONV_WEIGHT_UPDATE (fp32), for
// co < channels, in the noise's element order (co, kh, kw, ci); index is the element's offset in
// w. acc = sum of g[oh, ow, co] * (float)(x[ih, iw, ci] - zp), ascending (oh, ow), zero gradients
// skipped; four input channels at a time.
template <typename Visit>
void ConvWeightGradSums(const float* g, Hwc g_dims, const int8_t* x, Hwc x_dims, int32_t kh_size,
                        int32_t kw_size, const ConvGeom& geom, int32_t channels, int32_t zp,
                        Visit visit) {
  const int32_t CO = g_dims.c;
  const int32_t CI = x_dims.c;
  const int32_t sw = geom.stride_w;
  const int32_t xstep = sw * CI;  // x offset between neighbouring output columns
  for (int32_t co = 0; co < channels; ++co) {
    for (int32_t kh = 0; kh < kh_size; ++kh) {
      int32_t oh0, oh1;
      WindowRange(x_dims.h, kh, geom.stride_h, geom.pad_top, g_dims.h, &oh0, &oh1);
      for (int32_t kw = 0; kw < kw_size; ++kw) {
        int32_t ow0, ow1;
        WindowRange(x_dims.w, kw, sw, geom.pad_left, g_dims.w, &ow0, &ow1);
        const int32_t widx = ((co * kh_size + kh) * kw_size + kw) * CI;
        const int32_t x0 = (ow0 * sw - geom.pad_left + kw) * CI;
        int32_t ci = 0;
        for (; ci + 4 <= CI; ci += 4) {
          float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
          for (int32_t oh = oh0; oh < oh1; ++oh) {
            const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
            const float* gp = g + (oh * g_dims.w + ow0) * CO + co;
            const int8_t* xp = x + ih * x_dims.w * CI + x0 + ci;
            for (int32_t n = ow1 - ow0; n > 0; --n, gp += CO, xp += xstep) {
              const float gv = *gp;
              if (gv == 0.0f) continue;
              a0 += gv * static_cast<float>(xp[0] - zp);
              a1 += gv * static_cast<float>(xp[1] - zp);
              a2 += gv * static_cast<float>(xp[2] - zp);
              a3 += gv * static_cast<float>(xp[3] - zp);
            }
          }
          visit(co, widx + ci, a0);
          visit(co, widx + ci + 1, a1);
          visit(co, widx + ci + 2, a2);
          visit(co, widx + ci + 3, a3);
        }
        for (; ci < CI; ++ci) {
          float a = 0.0f;
          for (int32_t oh = oh0; oh < oh1; ++oh) {
            const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
            const float* gp = g + (oh * g_dims.w + ow0) * CO + co;
            const int8_t* xp = x + ih * x_dims.w * CI + x0 + ci;
            for (int32_t n = ow1 - ow0; n > 0; --n, gp += CO, xp += xstep) {
              const float gv = *gp;
              if (gv == 0.0f) continue;
              a += gv * static_cast<float>(*xp - zp);
            }
          }
          visit(co, widx + ci, a);
        }
      }
    }
  }
}

// As ConvWeightGradSums for TMT_DW_WEIGHT_UPDATE: visit(c, index, acc) in the order (c, kh, kw),
// index = (c * kh_size + kh) * kw_size + kw (the noise index).
template <typename Visit>
void DepthwiseWeightGradSums(const float* g, Hwc g_dims, const int8_t* x, Hwc x_dims,
                             int32_t kh_size, int32_t kw_size, const ConvGeom& geom,
                             int32_t channels, int32_t zp, Visit visit) {
  const int32_t C = g_dims.c;
  const int32_t sw = geom.stride_w;
  const int32_t xstep = sw * C;
  for (int32_t c = 0; c < channels; ++c) {
    for (int32_t kh = 0; kh < kh_size; ++kh) {
      int32_t oh0, oh1;
      WindowRange(x_dims.h, kh, geom.stride_h, geom.pad_top, g_dims.h, &oh0, &oh1);
      for (int32_t kw = 0; kw < kw_size; ++kw) {
        int32_t ow0, ow1;
        WindowRange(x_dims.w, kw, sw, geom.pad_left, g_dims.w, &ow0, &ow1);
        const int32_t x0 = (ow0 * sw - geom.pad_left + kw) * C + c;
        float a = 0.0f;
        for (int32_t oh = oh0; oh < oh1; ++oh) {
          const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
          const float* gp = g + (oh * g_dims.w + ow0) * C + c;
          const int8_t* xp = x + ih * x_dims.w * C + x0;
          for (int32_t n = ow1 - ow0; n > 0; --n, gp += C, xp += xstep) {
            const float gv = *gp;
            if (gv == 0.0f) continue;
            a += gv * static_cast<float>(*xp - zp);
          }
        }
        visit(c, (c * kh_size + kh) * kw_size + kw, a);
      }
    }
  }
}

// acc[c] = sum of g[i, c] over i ascending.
inline float BiasGradSum(const float* g, int32_t positions, int32_t channels, int32_t c) {
  float acc = 0.0f;
  const float* gp = g + c;
  for (int32_t i = 0; i < positions; ++i, gp += channels) acc += *gp;
  return acc;
}

Status ConvWeightChecks(Hwc g_dims, Hwc x_dims, int32_t kh_size, int32_t kw_size,
                        const ConvGeom& geom, int32_t channels) {
  if (!ValidHwc(g_dims) || !ValidHwc(x_dims) || kh_size < 1 || kw_size < 1) {
    return Status::kBadShape;
  }
  if (!ValidGeom(geom) || channels < 0 || channels > g_dims.c) return Status::kBadParams;
  return Status::kOk;
}

Status DepthwiseWeightChecks(Hwc g_dims, Hwc x_dims, int32_t kh_size, int32_t kw_size,
                             const ConvGeom& geom, int32_t channels) {
  if (!ValidHwc(g_dims) || !ValidHwc(x_dims) || g_dims.c != x_dims.c || kh_size < 1 ||
      kw_size < 1) {
    return Status::kBadShape;
  }
  if (!ValidGeom(geom) || channels < 0 || channels > g_dims.c) return Status::kBadParams;
  return Status::kOk;
}

}  // namespace

Status ConvWeightGradF32(const float* g, Hwc g_dims, const int8_t* x, Hwc x_dims,
                         int32_t kh_size, int32_t kw_size, const ConvGeom& geom,
                         int32_t channels, int32_t x_zero_point, float* acc) {
  const Status st = ConvWeightChecks(g_dims, x_dims, kh_size, kw_size, geom, channels);
  if (st != Status::kOk) return st;
  ConvWeightGradSums(g, g_dims, x, x_dims, kh_size, kw_size, geom, channels, x_zero_point,
                     [&](int32_t, int32_t i, float a) { acc[i] = a; });
  return Status::kOk;
}

Status DepthwiseWeightGradF32(const float* g, Hwc g_dims, const int8_t* x, Hwc x_dims,
                              int32_t kh_size, int32_t kw_size, const ConvGeom& geom,
                              int32_t channels, int32_t x_zero_point, float* acc) {
  const Status st = DepthwiseWeightChecks(g_dims, x_dims, kh_size, kw_size, geom, channels);
  if (st != Status::kOk) return st;
  DepthwiseWeightGradSums(g, g_dims, x, x_dims, kh_size, kw_size, geom, channels, x_zero_point,
                          [&](int32_t, int32_t i, float a) { acc[i] = a; });
  return Status::kOk;
}

Status BiasGradF32(const float* g, int32_t positions, int32_t channels, int32_t n, float* acc) {
  if (positions < 0 || channels < 0) return Status::kBadShape;
  if (n < 0 || n > channels) return Status::kBadParams;
  for (int32_t c = 0; c < n; ++c) acc[c] = BiasGradSum(g, positions, channels, c);
  return Status::kOk;
}

Status ConvWeightUpdateF32(const float* g, Hwc g_dims, const int8_t* x, Hwc x_dims, int8_t* w,
                           int32_t kh_size, int32_t kw_size, const float* wfactor, float lr,
                           const ConvGeom& geom, const UpdateParams& p, uint32_t counter) {
  const Status st = ConvWeightChecks(g_dims, x_dims, kh_size, kw_size, geom, p.update_channels);
  if (st != Status::kOk) return st;
  const uint32_t base = NoiseBase(p.seed, counter);
  ConvWeightGradSums(g, g_dims, x, x_dims, kh_size, kw_size, geom, p.update_channels,
                     p.x_zero_point, [&](int32_t co, int32_t i, float a) {
                       w[i] = UpdatedWeight(w[i], a, lr, wfactor[co], base,
                                            static_cast<uint32_t>(i));
                     });
  return Status::kOk;
}

Status DepthwiseWeightUpdateF32(const float* g, Hwc g_dims, const int8_t* x, Hwc x_dims,
                                int8_t* w, int32_t kh_size, int32_t kw_size, const float* wfactor,
                                float lr, const ConvGeom& geom, const UpdateParams& p,
                                uint32_t counter) {
  const Status st =
      DepthwiseWeightChecks(g_dims, x_dims, kh_size, kw_size, geom, p.update_channels);
  if (st != Status::kOk) return st;
  const int32_t C = g_dims.c;
  const uint32_t base = NoiseBase(p.seed, counter);
  DepthwiseWeightGradSums(g, g_dims, x, x_dims, kh_size, kw_size, geom, p.update_channels,
                          p.x_zero_point, [&](int32_t c, int32_t i, float a) {
                            // i = (c * kh + kh_i) * kw + kw_i; w is [1, kh, kw, C]
                            int8_t& wv = w[(i - c * kh_size * kw_size) * C + c];
                            wv = UpdatedWeight(wv, a, lr, wfactor[c], base,
                                               static_cast<uint32_t>(i));
                          });
  return Status::kOk;
}

Status BiasUpdateF32(const float* g, int32_t positions, int32_t channels, int32_t* b,
                     const float* bfactor, float lr, const UpdateParams& p, uint32_t counter) {
  if (positions < 0 || channels < 0) return Status::kBadShape;
  if (p.update_channels < 0 || p.update_channels > channels) return Status::kBadParams;
  const uint32_t base = NoiseBase(p.seed, counter);
  for (int32_t c = 0; c < p.update_channels; ++c) {
    const float acc = BiasGradSum(g, positions, channels, c);
    const int64_t step = StepOf(acc, lr, bfactor[c], base, static_cast<uint32_t>(c));
    b[c] = Sat32(static_cast<int64_t>(b[c]) - step);
  }
  return Status::kOk;
}

}  // namespace core
}  // namespace tfmicro_train
