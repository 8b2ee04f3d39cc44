// Portable cores of the TMT_* training ops. See training_ops.h and docs/contract.md.
#include "tflm_ops/core/training_ops.h"

#include "tflm_ops/core/arith.h"

namespace tfmicro_train {
namespace core {

const char* StatusString(Status s) {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kLabelOutOfRange: return "label out of range";
    case Status::kBadShape: return "inconsistent tensor shapes";
    case Status::kBadParams: return "invalid op parameters";
  }
  return "unknown error";
}

namespace {

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

// The output index o with o * stride - pad + k == i, or -1 if none in [0, out_size).
inline int32_t OutputFor(int32_t i, int32_t k, int32_t stride, int32_t pad, int32_t out_size) {
  const int32_t t = i + pad - k;
  if (t < 0 || t % stride != 0) return -1;
  const int32_t o = t / stride;
  return o < out_size ? o : -1;
}

inline bool ValidHwc(Hwc d) { return d.h >= 0 && d.w >= 0 && d.c >= 0; }

inline bool ValidGeom(const ConvGeom& g) {
  return g.stride_h >= 1 && g.stride_w >= 1 && g.pad_top >= 0 && g.pad_left >= 0;
}

inline int8_t ClampGrad(int64_t v) {
  return static_cast<int8_t>(Clamp64(v, -kInt8GradMax, kInt8GradMax));
}

}  // namespace

// ---------------------------------------------------------------- loss ops

Status SoftmaxCeGrad(const int8_t* probs, int32_t n, int32_t label, const float* loss_lut,
                     int8_t* grad, float* grad_scale, float* loss) {
  if (n <= 0) return Status::kBadShape;
  if (label < 0 || label >= n) return Status::kLabelOutOfRange;
  for (int32_t i = 0; i < n; ++i) {
    int64_t d = static_cast<int64_t>(probs[i]) + 128;
    if (i == label) d -= 256;
    grad[i] = ClampGrad(RoundShiftRight(d, 1));
  }
  *grad_scale = 1.0f / 128.0f;
  *loss = loss_lut[static_cast<int32_t>(probs[label]) + 128];
  return Status::kOk;
}

Status MseGrad(const int8_t* y, const int8_t* target, int32_t n, float scale, int8_t* grad,
               float* grad_scale, float* loss) {
  if (n <= 0) return Status::kBadShape;
  int64_t sum_sq = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int64_t d = static_cast<int64_t>(y[i]) - static_cast<int64_t>(target[i]);
    grad[i] = ClampGrad(RoundShiftRight(d, 1));
    sum_sq += d * d;
  }
  const float nf = static_cast<float>(n);
  const float ss = scale * scale;
  const float sum_f = static_cast<float>(sum_sq);
  const float prod = ss * sum_f;
  *loss = prod / nf;
  const float s4 = scale * 4.0f;
  *grad_scale = s4 / nf;
  return Status::kOk;
}

// ---------------------------------------------------------------- gradient plumbing

Status ActGrad(const int8_t* g, const int8_t* y, int32_t n, int32_t act_min, int32_t act_max,
               int8_t* out) {
  if (n < 0) return Status::kBadShape;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t v = y[i];
    out[i] = (v > act_min && v < act_max) ? g[i] : static_cast<int8_t>(0);
  }
  return Status::kOk;
}

Status MaskPack(const int8_t* y, int32_t n, int32_t act_min, int32_t act_max, uint8_t* bits) {
  if (n < 0) return Status::kBadShape;
  for (int32_t byte = 0; byte < (n + 7) / 8; ++byte) {
    uint32_t packed = 0;
    for (int32_t b = 0; b < 8 && byte * 8 + b < n; ++b) {
      const int32_t v = y[byte * 8 + b];
      if (v > act_min && v < act_max) packed |= 1u << b;
    }
    bits[byte] = static_cast<uint8_t>(packed);
  }
  return Status::kOk;
}

Status MaskGrad(const int8_t* g, const uint8_t* bits, int32_t n, int8_t* out) {
  if (n < 0) return Status::kBadShape;
  for (int32_t i = 0; i < n; ++i) {
    out[i] = ((bits[i >> 3] >> (i & 7)) & 1u) ? g[i] : static_cast<int8_t>(0);
  }
  return Status::kOk;
}

Status GradAdd(const int8_t* g1, float s1, const int8_t* g2, float s2, int32_t n, int8_t* out,
               float* out_scale, int64_t* scratch) {
  if (n < 0) return Status::kBadShape;
  const float big = (s2 > s1) ? s2 : s1;  // Python max(s1, s2)
  if (big == 0.0f) {
    for (int32_t i = 0; i < n; ++i) out[i] = 0;
    *out_scale = 0.0f;
    return Status::kOk;
  }
  const float one_q = static_cast<float>(1 << kGradAddBits);
  const float r1 = s1 / big;
  const float r2 = s2 / big;
  const float t1 = r1 * one_q;
  const float t2 = r2 * one_q;
  const int64_t w1 = static_cast<int32_t>(t1 + 0.5f);
  const int64_t w2 = static_cast<int32_t>(t2 + 0.5f);
  const int shift = DynQuantize(
      n, [&](int32_t i) { return static_cast<int64_t>(g1[i]) * w1 + static_cast<int64_t>(g2[i]) * w2; },
      scratch, out);
  *out_scale = OutScale(big, shift - kGradAddBits);
  return Status::kOk;
}

Status MeanGrad(const int8_t* g, float s, Hwc in, float inv_count, int8_t* out,
                float* out_scale) {
  if (!ValidHwc(in)) return Status::kBadShape;
  const int32_t hw = in.h * in.w;
  for (int32_t p = 0; p < hw; ++p) {
    int8_t* o = out + p * in.c;
    for (int32_t c = 0; c < in.c; ++c) o[c] = g[c];
  }
  *out_scale = s * inv_count;
  return Status::kOk;
}

Status PadGrad(const int8_t* g, Hwc g_dims, Hwc in, int32_t pad_top, int32_t pad_left,
               int8_t* out) {
  if (!ValidHwc(g_dims) || !ValidHwc(in) || g_dims.c != in.c) return Status::kBadShape;
  if (pad_top < 0 || pad_left < 0) return Status::kBadParams;
  if (pad_top + in.h > g_dims.h || pad_left + in.w > g_dims.w) return Status::kBadShape;
  for (int32_t h = 0; h < in.h; ++h) {
    for (int32_t w = 0; w < in.w; ++w) {
      const int8_t* src = g + ((h + pad_top) * g_dims.w + (w + pad_left)) * g_dims.c;
      int8_t* dst = out + (h * in.w + w) * in.c;
      for (int32_t c = 0; c < in.c; ++c) dst[c] = src[c];
    }
  }
  return Status::kOk;
}

Status ReshapeGrad(const int8_t* g, int32_t n, int8_t* out) {
  if (n < 0) return Status::kBadShape;
  if (g != out) {
    for (int32_t i = 0; i < n; ++i) out[i] = g[i];
  }
  return Status::kOk;
}

namespace {

bool ValidPool(Hwc g_dims, Hwc in) {
  return ValidHwc(g_dims) && ValidHwc(in) && g_dims.c == in.c;
}

// Number of in-bounds window elements of output (oh, ow).
inline int64_t PoolCount(int32_t oh, int32_t ow, Hwc in, const PoolParams& p) {
  int64_t rows = 0, cols = 0;
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

inline int64_t PoolWeight(int64_t count) {
  const int64_t one = int64_t{1} << kPoolBits;
  return (one + count / 2) / (count > 1 ? count : 1);
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

}  // namespace

Status AvgPoolGrad(const int8_t* g, float s, Hwc g_dims, Hwc in, const PoolParams& p,
                   int8_t* g_in, float* s_in, int64_t* scratch) {
  if (!ValidPool(g_dims, in)) return Status::kBadShape;
  if (!ValidGeom(p.geom) || p.filter_h < 1 || p.filter_w < 1) return Status::kBadParams;
  const int32_t n = in.size();
  const int32_t C = in.c;
  int shift;
  if (scratch) {
    for (int32_t i = 0; i < n; ++i) scratch[i] = 0;
    for (int32_t oh = 0; oh < g_dims.h; ++oh) {
      for (int32_t ow = 0; ow < g_dims.w; ++ow) {
        const int64_t wt = PoolWeight(PoolCount(oh, ow, in, p));
        const int8_t* go = g + (oh * g_dims.w + ow) * C;
        for (int32_t kh = 0; kh < p.filter_h; ++kh) {
          const int32_t ih = oh * p.geom.stride_h - p.geom.pad_top + kh;
          if (ih < 0 || ih >= in.h) continue;
          for (int32_t kw = 0; kw < p.filter_w; ++kw) {
            const int32_t iw = ow * p.geom.stride_w - p.geom.pad_left + kw;
            if (iw < 0 || iw >= in.w) continue;
            int64_t* acc = scratch + (ih * in.w + iw) * C;
            for (int32_t c = 0; c < C; ++c) acc[c] += static_cast<int64_t>(go[c]) * wt;
          }
        }
      }
    }
    shift = DynQuantizeArray(scratch, n, g_in);
  } else {
    auto acc_at = [&](int32_t i) -> int64_t {
      const int32_t c = i % C;
      const int32_t iw = (i / C) % in.w;
      const int32_t ih = i / C / in.w;
      int64_t acc = 0;
      for (int32_t kh = 0; kh < p.filter_h; ++kh) {
        const int32_t oh = OutputFor(ih, kh, p.geom.stride_h, p.geom.pad_top, g_dims.h);
        if (oh < 0) continue;
        for (int32_t kw = 0; kw < p.filter_w; ++kw) {
          const int32_t ow = OutputFor(iw, kw, p.geom.stride_w, p.geom.pad_left, g_dims.w);
          if (ow < 0) continue;
          acc += static_cast<int64_t>(g[(oh * g_dims.w + ow) * C + c]) *
                 PoolWeight(PoolCount(oh, ow, in, p));
        }
      }
      return acc;
    };
    shift = DynQuantize(n, acc_at, nullptr, g_in);
  }
  *s_in = OutScale(s, shift - kPoolBits);
  return Status::kOk;
}

Status MaxPoolGrad(const int8_t* g, float s, const int8_t* x, const int8_t* y, Hwc g_dims,
                   Hwc in, const PoolParams& p, int8_t* g_in, float* s_in, int64_t* scratch) {
  if (!ValidPool(g_dims, in)) return Status::kBadShape;
  if (!ValidGeom(p.geom) || p.filter_h < 1 || p.filter_w < 1) return Status::kBadParams;
  const int32_t n = in.size();
  const int32_t C = in.c;
  int shift;
  if (scratch) {
    for (int32_t i = 0; i < n; ++i) scratch[i] = 0;
    for (int32_t oh = 0; oh < g_dims.h; ++oh) {
      for (int32_t ow = 0; ow < g_dims.w; ++ow) {
        for (int32_t c = 0; c < C; ++c) {
          const int32_t o = (oh * g_dims.w + ow) * C + c;
          const int32_t k = MaxPoolFirst(x, y[o], oh, ow, c, in, p);
          if (k < 0) continue;
          const int32_t ih = oh * p.geom.stride_h - p.geom.pad_top + k / p.filter_w;
          const int32_t iw = ow * p.geom.stride_w - p.geom.pad_left + k % p.filter_w;
          scratch[(ih * in.w + iw) * C + c] += g[o];
        }
      }
    }
    shift = DynQuantizeArray(scratch, n, g_in);
  } else {
    auto acc_at = [&](int32_t i) -> int64_t {
      const int32_t c = i % C;
      const int32_t iw = (i / C) % in.w;
      const int32_t ih = i / C / in.w;
      int64_t acc = 0;
      for (int32_t kh = 0; kh < p.filter_h; ++kh) {
        const int32_t oh = OutputFor(ih, kh, p.geom.stride_h, p.geom.pad_top, g_dims.h);
        if (oh < 0) continue;
        for (int32_t kw = 0; kw < p.filter_w; ++kw) {
          const int32_t ow = OutputFor(iw, kw, p.geom.stride_w, p.geom.pad_left, g_dims.w);
          if (ow < 0) continue;
          const int32_t o = (oh * g_dims.w + ow) * C + c;
          if (MaxPoolFirst(x, y[o], oh, ow, c, in, p) == kh * p.filter_w + kw) acc += g[o];
        }
      }
      return acc;
    };
    shift = DynQuantize(n, acc_at, nullptr, g_in);
  }
  *s_in = OutScale(s, shift);
  return Status::kOk;
}

// ---------------------------------------------------------------- input gradients

Status ConvInputGrad(const int8_t* g, float s, Hwc g_dims, const int8_t* w, int32_t kh_size,
                     int32_t kw_size, const int32_t* wmul, float w_scale_max, Hwc in,
                     const ConvGeom& geom, int8_t* g_in, float* s_in, int64_t* scratch) {
  if (!ValidHwc(g_dims) || !ValidHwc(in) || kh_size < 1 || kw_size < 1) return Status::kBadShape;
  if (!ValidGeom(geom)) return Status::kBadParams;
  const int32_t CO = g_dims.c;
  const int32_t CI = in.c;
  const int32_t n = in.size();
  // w[co, kh, kw, ci]
  auto w_at = [&](int32_t co, int32_t kh, int32_t kw) { return w + ((co * kh_size + kh) * kw_size + kw) * CI; };
  int shift;
  if (scratch) {
    for (int32_t i = 0; i < n; ++i) scratch[i] = 0;
    for (int32_t kh = 0; kh < kh_size; ++kh) {
      int32_t oh0, oh1;
      WindowRange(in.h, kh, geom.stride_h, geom.pad_top, g_dims.h, &oh0, &oh1);
      for (int32_t kw = 0; kw < kw_size; ++kw) {
        int32_t ow0, ow1;
        WindowRange(in.w, kw, geom.stride_w, geom.pad_left, g_dims.w, &ow0, &ow1);
        for (int32_t oh = oh0; oh < oh1; ++oh) {
          const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
          for (int32_t ow = ow0; ow < ow1; ++ow) {
            const int32_t iw = ow * geom.stride_w - geom.pad_left + kw;
            const int8_t* go = g + (oh * g_dims.w + ow) * CO;
            int64_t* acc = scratch + (ih * in.w + iw) * CI;
            for (int32_t co = 0; co < CO; ++co) {
              const int64_t gw = static_cast<int64_t>(go[co]) * wmul[co];
              if (gw == 0) continue;
              const int8_t* wr = w_at(co, kh, kw);
              for (int32_t ci = 0; ci < CI; ++ci) acc[ci] += gw * wr[ci];
            }
          }
        }
      }
    }
    shift = DynQuantizeArray(scratch, n, g_in);
  } else {
    auto acc_at = [&](int32_t i) -> int64_t {
      const int32_t ci = i % CI;
      const int32_t iw = (i / CI) % in.w;
      const int32_t ih = i / CI / in.w;
      int64_t acc = 0;
      for (int32_t kh = 0; kh < kh_size; ++kh) {
        const int32_t oh = OutputFor(ih, kh, geom.stride_h, geom.pad_top, g_dims.h);
        if (oh < 0) continue;
        for (int32_t kw = 0; kw < kw_size; ++kw) {
          const int32_t ow = OutputFor(iw, kw, geom.stride_w, geom.pad_left, g_dims.w);
          if (ow < 0) continue;
          const int8_t* go = g + (oh * g_dims.w + ow) * CO;
          for (int32_t co = 0; co < CO; ++co) {
            acc += static_cast<int64_t>(go[co]) * wmul[co] * w_at(co, kh, kw)[ci];
          }
        }
      }
      return acc;
    };
    shift = DynQuantize(n, acc_at, nullptr, g_in);
  }
  const float base = s * w_scale_max;
  *s_in = OutScale(base, shift - kWmulBits);
  return Status::kOk;
}

Status DepthwiseInputGrad(const int8_t* g, float s, Hwc g_dims, const int8_t* w, int32_t kh_size,
                          int32_t kw_size, const int32_t* wmul, float w_scale_max, Hwc in,
                          const ConvGeom& geom, int8_t* g_in, float* s_in, int64_t* scratch) {
  if (!ValidHwc(g_dims) || !ValidHwc(in) || g_dims.c != in.c || kh_size < 1 || kw_size < 1) {
    return Status::kBadShape;
  }
  if (!ValidGeom(geom)) return Status::kBadParams;
  const int32_t C = in.c;
  const int32_t n = in.size();
  // w[0, kh, kw, c]
  int shift;
  if (scratch) {
    for (int32_t i = 0; i < n; ++i) scratch[i] = 0;
    for (int32_t kh = 0; kh < kh_size; ++kh) {
      int32_t oh0, oh1;
      WindowRange(in.h, kh, geom.stride_h, geom.pad_top, g_dims.h, &oh0, &oh1);
      for (int32_t kw = 0; kw < kw_size; ++kw) {
        int32_t ow0, ow1;
        WindowRange(in.w, kw, geom.stride_w, geom.pad_left, g_dims.w, &ow0, &ow1);
        const int8_t* wr = w + (kh * kw_size + kw) * C;
        for (int32_t oh = oh0; oh < oh1; ++oh) {
          const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
          for (int32_t ow = ow0; ow < ow1; ++ow) {
            const int32_t iw = ow * geom.stride_w - geom.pad_left + kw;
            const int8_t* go = g + (oh * g_dims.w + ow) * C;
            int64_t* acc = scratch + (ih * in.w + iw) * C;
            for (int32_t c = 0; c < C; ++c) {
              acc[c] += static_cast<int64_t>(go[c]) * wmul[c] * wr[c];
            }
          }
        }
      }
    }
    shift = DynQuantizeArray(scratch, n, g_in);
  } else {
    auto acc_at = [&](int32_t i) -> int64_t {
      const int32_t c = i % C;
      const int32_t iw = (i / C) % in.w;
      const int32_t ih = i / C / in.w;
      int64_t acc = 0;
      for (int32_t kh = 0; kh < kh_size; ++kh) {
        const int32_t oh = OutputFor(ih, kh, geom.stride_h, geom.pad_top, g_dims.h);
        if (oh < 0) continue;
        for (int32_t kw = 0; kw < kw_size; ++kw) {
          const int32_t ow = OutputFor(iw, kw, geom.stride_w, geom.pad_left, g_dims.w);
          if (ow < 0) continue;
          acc += static_cast<int64_t>(g[(oh * g_dims.w + ow) * C + c]) * wmul[c] *
                 w[(kh * kw_size + kw) * C + c];
        }
      }
      return acc;
    };
    shift = DynQuantize(n, acc_at, nullptr, g_in);
  }
  const float base = s * w_scale_max;
  *s_in = OutScale(base, shift - kWmulBits);
  return Status::kOk;
}

// ---------------------------------------------------------------- parameter updates

namespace {

// w - floor((requant64(acc, M, shift + 16) + r) / 2^16), clamped to [lo, hi].
inline int64_t UpdatedValue(int64_t value, int64_t acc32, const Multiplier& m, uint32_t base,
                            uint32_t index, int64_t lo, int64_t hi) {
  const int64_t delta = Requant64(acc32, m.multiplier, m.shift + kQ16);
  const int64_t step = StochasticStep(delta, Noise(base, index));
  return Clamp64(value - step, lo, hi);
}

}  // namespace

Status ConvWeightUpdate(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                        int8_t* w, int32_t kh_size, int32_t kw_size, const float* wfactor,
                        float lr, const ConvGeom& geom, const UpdateParams& p, uint32_t counter) {
  if (!ValidHwc(g_dims) || !ValidHwc(x_dims) || kh_size < 1 || kw_size < 1) {
    return Status::kBadShape;
  }
  const int32_t CO = g_dims.c;
  const int32_t CI = x_dims.c;
  if (!ValidGeom(geom) || p.update_channels < 0 || p.update_channels > CO) {
    return Status::kBadParams;
  }
  const uint32_t base = NoiseBase(p.seed, counter);
  const int64_t zp = p.x_zero_point;
  for (int32_t co = 0; co < p.update_channels; ++co) {
    const Multiplier m = UpdateMultiplier(lr, s, wfactor[co]);
    for (int32_t kh = 0; kh < kh_size; ++kh) {
      int32_t oh0, oh1;
      WindowRange(x_dims.h, kh, geom.stride_h, geom.pad_top, g_dims.h, &oh0, &oh1);
      for (int32_t kw = 0; kw < kw_size; ++kw) {
        int32_t ow0, ow1;
        WindowRange(x_dims.w, kw, geom.stride_w, geom.pad_left, g_dims.w, &ow0, &ow1);
        int8_t* wr = w + ((co * kh_size + kh) * kw_size + kw) * CI;
        const uint32_t idx0 = static_cast<uint32_t>(((co * kh_size + kh) * kw_size + kw) * CI);
        for (int32_t ci = 0; ci < CI; ++ci) {
          int64_t acc = 0;
          for (int32_t oh = oh0; oh < oh1; ++oh) {
            const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
            for (int32_t ow = ow0; ow < ow1; ++ow) {
              const int32_t iw = ow * geom.stride_w - geom.pad_left + kw;
              acc += static_cast<int64_t>(g[(oh * g_dims.w + ow) * CO + co]) *
                     (static_cast<int64_t>(x[(ih * x_dims.w + iw) * CI + ci]) - zp);
            }
          }
          wr[ci] = static_cast<int8_t>(
              UpdatedValue(wr[ci], Sat32(acc), m, base, idx0 + static_cast<uint32_t>(ci), -127, 127));
        }
      }
    }
  }
  return Status::kOk;
}

Status DepthwiseWeightUpdate(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                             int8_t* w, int32_t kh_size, int32_t kw_size, const float* wfactor,
                             float lr, const ConvGeom& geom, const UpdateParams& p,
                             uint32_t counter) {
  if (!ValidHwc(g_dims) || !ValidHwc(x_dims) || g_dims.c != x_dims.c || kh_size < 1 ||
      kw_size < 1) {
    return Status::kBadShape;
  }
  const int32_t C = g_dims.c;
  if (!ValidGeom(geom) || p.update_channels < 0 || p.update_channels > C) {
    return Status::kBadParams;
  }
  const uint32_t base = NoiseBase(p.seed, counter);
  const int64_t zp = p.x_zero_point;
  for (int32_t c = 0; c < p.update_channels; ++c) {
    const Multiplier m = UpdateMultiplier(lr, s, wfactor[c]);
    for (int32_t kh = 0; kh < kh_size; ++kh) {
      int32_t oh0, oh1;
      WindowRange(x_dims.h, kh, geom.stride_h, geom.pad_top, g_dims.h, &oh0, &oh1);
      for (int32_t kw = 0; kw < kw_size; ++kw) {
        int32_t ow0, ow1;
        WindowRange(x_dims.w, kw, geom.stride_w, geom.pad_left, g_dims.w, &ow0, &ow1);
        int64_t acc = 0;
        for (int32_t oh = oh0; oh < oh1; ++oh) {
          const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
          for (int32_t ow = ow0; ow < ow1; ++ow) {
            const int32_t iw = ow * geom.stride_w - geom.pad_left + kw;
            acc += static_cast<int64_t>(g[(oh * g_dims.w + ow) * C + c]) *
                   (static_cast<int64_t>(x[(ih * x_dims.w + iw) * C + c]) - zp);
          }
        }
        int8_t& wv = w[(kh * kw_size + kw) * C + c];
        const uint32_t idx = static_cast<uint32_t>((c * kh_size + kh) * kw_size + kw);
        wv = static_cast<int8_t>(UpdatedValue(wv, Sat32(acc), m, base, idx, -127, 127));
      }
    }
  }
  return Status::kOk;
}

Status BiasUpdate(const int8_t* g, float s, int32_t positions, int32_t channels, int32_t* b,
                  const float* bfactor, float lr, const UpdateParams& p, uint32_t counter) {
  if (positions < 0 || channels < 0) return Status::kBadShape;
  if (p.update_channels < 0 || p.update_channels > channels) return Status::kBadParams;
  const uint32_t base = NoiseBase(p.seed, counter);
  for (int32_t c = 0; c < p.update_channels; ++c) {
    int64_t acc = 0;
    for (int32_t i = 0; i < positions; ++i) acc += g[i * channels + c];
    const Multiplier m = UpdateMultiplier(lr, s, bfactor[c]);
    b[c] = static_cast<int32_t>(UpdatedValue(b[c], Sat32(acc), m, base, static_cast<uint32_t>(c),
                                             INT32_MIN, INT32_MAX));
  }
  return Status::kOk;
}

}  // namespace core
}  // namespace tfmicro_train
