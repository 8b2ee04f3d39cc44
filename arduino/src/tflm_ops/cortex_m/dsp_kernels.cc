// Cortex-M4/M7 DSP paths of the training kernels. See dsp_kernels.h.
#include "tflm_ops/cortex_m/dsp_kernels.h"

#include <cstring>

#include "tflm_ops/core/arith.h"

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define TMT_HAVE_DSP 1
#endif

#if defined(TMT_DSP_AS_CORE)
// Build option (benchmarks/cortex_m.py): core::ConvWeightUpdate itself becomes the DSP path, so
// the TFLM glue uses it. Compile tflm_ops/core/training_ops.cc with
// -DConvWeightUpdate=ConvWeightUpdatePortable and this file with -DTMT_DSP_AS_CORE.
namespace tfmicro_train {
namespace core {
Status ConvWeightUpdatePortable(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                                int8_t* w, int32_t kh, int32_t kw, const float* wfactor, float lr,
                                const ConvGeom& geom, const UpdateParams& p, uint32_t counter);
}  // namespace core
}  // namespace tfmicro_train
#define TMT_PORTABLE_CONV_WEIGHT_UPDATE core::ConvWeightUpdatePortable
#else
#define TMT_PORTABLE_CONV_WEIGHT_UPDATE core::ConvWeightUpdate
#endif

namespace tfmicro_train {
namespace cortex_m {

bool HasDsp() {
#if defined(TMT_HAVE_DSP)
  return true;
#else
  return false;
#endif
}

#if !defined(TMT_HAVE_DSP)

core::Status ConvWeightUpdate(const int8_t* g, float s, core::Hwc g_dims, const int8_t* x,
                              core::Hwc x_dims, int8_t* w, int32_t kh, int32_t kw,
                              const float* wfactor, float lr, const core::ConvGeom& geom,
                              const core::UpdateParams& p, uint32_t counter) {
  return TMT_PORTABLE_CONV_WEIGHT_UPDATE(g, s, g_dims, x, x_dims, w, kh, kw, wfactor, lr, geom, p,
                                         counter);
}

#else

namespace {

using core::Hwc;

// As in tflm_ops/core/training_ops.cc.
inline int32_t CeilDiv(int32_t a, int32_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

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

inline int64_t UpdatedValue(int64_t value, int64_t acc32, const core::Multiplier& m,
                            uint32_t base, uint32_t index, int64_t lo, int64_t hi) {
  const int64_t delta = core::Requant64(acc32, m.multiplier, m.shift + core::kQ16);
  const int64_t step = core::StochasticStep(delta, core::Noise(base, index));
  return core::Clamp64(value - step, lo, hi);
}

inline uint32_t Load32(const int8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);  // LDR: unaligned access is allowed on ARMv7-M
  return v;
}

// (GCC's arm_acle.h has no __pkhbt / __pkhtb, and does not fuse the rotation into SXTB16.)
// PKHBT: low half of a, low half of b in the high half.
inline uint32_t PackLow(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
// PKHTB: high half of a, high half of b in the low half.
inline uint32_t PackHigh(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
// SXTB16 of bytes 1 and 3.
inline uint32_t Sxtb16Odd(uint32_t v) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}

// Positions whose int32 sums of g * x (each |.| <= 128 * 128) cannot overflow.
constexpr int32_t kMaxPositions = 131071;

}  // namespace

core::Status ConvWeightUpdate(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                              int8_t* w, int32_t kh_size, int32_t kw_size, const float* wfactor,
                              float lr, const core::ConvGeom& geom, const core::UpdateParams& p,
                              uint32_t counter) {
  const bool shapes_ok = g_dims.h >= 0 && g_dims.w >= 0 && g_dims.c >= 0 && x_dims.h >= 0 &&
                         x_dims.w >= 0 && x_dims.c >= 0 && kh_size >= 1 && kw_size >= 1;
  const bool params_ok = geom.stride_h >= 1 && geom.stride_w >= 1 && geom.pad_top >= 0 &&
                         geom.pad_left >= 0 && p.update_channels >= 0 &&
                         p.update_channels <= g_dims.c;
  if (!shapes_ok || !params_ok || g_dims.h * g_dims.w > kMaxPositions) {
    // Errors and huge layers: the portable core (same checks, same results).
    return TMT_PORTABLE_CONV_WEIGHT_UPDATE(g, s, g_dims, x, x_dims, w, kh_size, kw_size, wfactor,
                                           lr, geom, p, counter);
  }
  const int32_t CO = g_dims.c;
  const int32_t CI = x_dims.c;
  const int32_t sw = geom.stride_w;
  const uint32_t base = core::NoiseBase(p.seed, counter);
  const int64_t zp = p.x_zero_point;
  for (int32_t co = 0; co < p.update_channels; ++co) {
    const core::Multiplier m = core::UpdateMultiplier(lr, s, wfactor[co]);
    for (int32_t kh = 0; kh < kh_size; ++kh) {
      int32_t oh0, oh1;
      WindowRange(x_dims.h, kh, geom.stride_h, geom.pad_top, g_dims.h, &oh0, &oh1);
      for (int32_t kw = 0; kw < kw_size; ++kw) {
        int32_t ow0, ow1;
        WindowRange(x_dims.w, kw, sw, geom.pad_left, g_dims.w, &ow0, &ow1);
        int8_t* wr = w + ((co * kh_size + kh) * kw_size + kw) * CI;
        const uint32_t idx0 = static_cast<uint32_t>(((co * kh_size + kh) * kw_size + kw) * CI);
        // sum of g over the window (for the zero point), once per (co, kh, kw)
        int32_t gsum = 0;
        for (int32_t oh = oh0; oh < oh1; ++oh) {
          const int8_t* gr = g + oh * g_dims.w * CO + co;
          for (int32_t ow = ow0; ow < ow1; ++ow) gsum += gr[ow * CO];
        }
        const int64_t zp_term = zp * gsum;
        const int32_t xstep = sw * CI;  // x offset between neighbouring output columns
        int32_t ci = 0;
        for (; ci + 4 <= CI; ci += 4) {
          int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          for (int32_t oh = oh0; oh < oh1; ++oh) {
            const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
            const int8_t* gp = g + (oh * g_dims.w + ow0) * CO + co;
            const int8_t* xp = x + (ih * x_dims.w + ow0 * sw - geom.pad_left + kw) * CI + ci;
            int32_t n = ow1 - ow0;
            for (; n >= 2; n -= 2) {
              const uint32_t G = PackLow(static_cast<uint32_t>(gp[0]), static_cast<uint32_t>(gp[CO]));
              const uint32_t P = Load32(xp);
              const uint32_t Q = Load32(xp + xstep);
              const uint32_t P02 = __sxtb16(P), P13 = Sxtb16Odd(P);
              const uint32_t Q02 = __sxtb16(Q), Q13 = Sxtb16Odd(Q);
              a0 = __smlad(G, PackLow(P02, Q02), a0);
              a1 = __smlad(G, PackLow(P13, Q13), a1);
              a2 = __smlad(G, PackHigh(Q02, P02), a2);
              a3 = __smlad(G, PackHigh(Q13, P13), a3);
              gp += 2 * CO;
              xp += 2 * xstep;
            }
            if (n) {
              const int32_t gv = gp[0];
              a0 += gv * xp[0];
              a1 += gv * xp[1];
              a2 += gv * xp[2];
              a3 += gv * xp[3];
            }
          }
          const int32_t a[4] = {a0, a1, a2, a3};
          for (int k = 0; k < 4; ++k) {
            const int64_t acc = static_cast<int64_t>(a[k]) - zp_term;
            wr[ci + k] = static_cast<int8_t>(UpdatedValue(
                wr[ci + k], core::Sat32(acc), m, base, idx0 + static_cast<uint32_t>(ci + k), -127,
                127));
          }
        }
        for (; ci < CI; ++ci) {
          int32_t a = 0;
          for (int32_t oh = oh0; oh < oh1; ++oh) {
            const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
            const int8_t* gp = g + (oh * g_dims.w + ow0) * CO + co;
            const int8_t* xp = x + (ih * x_dims.w + ow0 * sw - geom.pad_left + kw) * CI + ci;
            for (int32_t ow = ow0; ow < ow1; ++ow) {
              a += static_cast<int32_t>(*gp) * *xp;
              gp += CO;
              xp += xstep;
            }
          }
          const int64_t acc = static_cast<int64_t>(a) - zp_term;
          wr[ci] = static_cast<int8_t>(UpdatedValue(wr[ci], core::Sat32(acc), m, base,
                                                    idx0 + static_cast<uint32_t>(ci), -127, 127));
        }
      }
    }
  }
  return core::Status::kOk;
}

#endif  // TMT_HAVE_DSP

}  // namespace cortex_m

#if defined(TMT_DSP_AS_CORE)
namespace core {
Status ConvWeightUpdate(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                        int8_t* w, int32_t kh, int32_t kw, const float* wfactor, float lr,
                        const ConvGeom& geom, const UpdateParams& p, uint32_t counter) {
  return cortex_m::ConvWeightUpdate(g, s, g_dims, x, x_dims, w, kh, kw, wfactor, lr, geom, p,
                                    counter);
}
}  // namespace core
#endif
}  // namespace tfmicro_train
