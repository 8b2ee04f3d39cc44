// Portable cores of the TMT_* training ops. See training_ops.h and docs/contract.md.
#include "tflm_ops/core/training_ops.h"

#include "tflm_ops/core/arith.h"
#include "tflm_ops/core/grad_copy.h"
#include "tflm_ops/core/window.h"

#include <cstring>

// Cortex-M4/M7 DSP extension (SMLAD / SXTB16 via arm_acle.h): ConvWeightUpdateDsp is compiled
// when the target has it; ConvWeightUpdate uses it unless built with -DTMT_PORTABLE_ONLY.
#if (defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP) || \
    (defined(__ARM_FEATURE_SAT) && __ARM_FEATURE_SAT)
#include <arm_acle.h>
#endif
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#define TMT_CORE_HAVE_DSP 1
#else
#define TMT_CORE_HAVE_DSP 0
#endif
#if TMT_CORE_HAVE_DSP && !defined(TMT_PORTABLE_ONLY)
#define TMT_CORE_USE_DSP 1
#else
#define TMT_CORE_USE_DSP 0
#endif

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

// the window helpers shared with the other core (window.h)
using window::CeilDiv;
using window::MaxPoolFirst;
using window::MaxPoolRoute;
using window::PoolCount;
using window::ValidGeom;
using window::ValidHwc;
using window::WindowRange;

// The output index o with o * stride - pad + k == i, or -1 if none in [0, out_size).
inline int32_t OutputFor(int32_t i, int32_t k, int32_t stride, int32_t pad, int32_t out_size) {
  const int32_t t = i + pad - k;
  if (t < 0 || t % stride != 0) return -1;
  const int32_t o = t / stride;
  return o < out_size ? o : -1;
}

#if TMT_CORE_HAVE_DSP
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
#endif

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
  return grad_copy::ActGrad(g, y, n, act_min, act_max, out);
}

Status MaskPack(const int8_t* y, int32_t n, int32_t act_min, int32_t act_max, uint8_t* bits) {
  if (n < 0) return Status::kBadShape;
  // act_min < v < act_max for an int8 v as one unsigned compare: the bounds clamped to
  // [-129, 128] (the same test for v in [-128, 127]), then v - lo - 1 < hi - lo - 1 (unsigned;
  // an empty range, span <= 0, sets no bit).
  const int32_t lo = act_min < -129 ? -129 : (act_min > 128 ? 128 : act_min);
  const int32_t hi = act_max < -129 ? -129 : (act_max > 128 ? 128 : act_max);
  const int32_t span = hi - lo - 1;
  const uint32_t uspan = span > 0 ? static_cast<uint32_t>(span) : 0u;
  const int32_t base = lo + 1;
  auto in = [&](int32_t v) -> uint32_t {
    return static_cast<uint32_t>(v - base) < uspan ? 1u : 0u;
  };
  const int32_t full = n / 8;
  int32_t byte = 0;
#if TMT_CORE_USE_DSP
  if (span > 0) {
    // Four bytes at a time: with L = max(lo + 1, -128) and H = min(hi - 1, 127) (span > 0: L <= H,
    // both int8), v is in range iff v >= L and H >= v; SSUB8 sets GE per byte iff the exact
    // signed difference is >= 0, SEL keeps 0x01 in those bytes, and the multiply by 0x01020408
    // moves byte k's bit to bit 24 + k (the partial products do not overlap).
    const uint32_t L = (static_cast<uint32_t>(base < -128 ? -128 : base) & 0xFFu) * 0x01010101u;
    const uint32_t H = (static_cast<uint32_t>(hi - 1 > 127 ? 127 : hi - 1) & 0xFFu) * 0x01010101u;
    uint32_t gather = 0x01020408u;
    __asm__("" : "+r"(gather));  // one MUL (GCC would expand it into three shifted adds)
    auto nibble = [&](uint32_t v) -> uint32_t {
      uint32_t m, t;
      __asm__("ssub8 %1, %2, %3\n\tsel %0, %4, %5\n\tssub8 %1, %6, %2\n\tsel %0, %0, %5"
              : "=&r"(m), "=&r"(t)
              : "r"(v), "r"(L), "r"(0x01010101u), "r"(0u), "r"(H));
      return (m * gather) >> 24;
    };
    for (; byte < full; ++byte, y += 8) {
      bits[byte] = static_cast<uint8_t>(nibble(Load32(y)) | (nibble(Load32(y + 4)) << 4));
    }
  }
#endif
  for (; byte < full; ++byte, y += 8) {
    bits[byte] = static_cast<uint8_t>(in(y[0]) | (in(y[1]) << 1) | (in(y[2]) << 2) |
                                      (in(y[3]) << 3) | (in(y[4]) << 4) | (in(y[5]) << 5) |
                                      (in(y[6]) << 6) | (in(y[7]) << 7));
  }
  if (n % 8) {
    uint32_t packed = 0;
    for (int32_t b = 0; b < n % 8; ++b) packed |= in(y[b]) << b;
    bits[full] = static_cast<uint8_t>(packed);
  }
  return Status::kOk;
}

namespace {

// The four mask bits b0..b3 of x (x < 16) as bytes 0x00 / 0xFF, bit k in byte k: the copies
// x << 7k do not overlap (no carries), so bit k lands alone at bit 8k; times 0xFF fills its byte.
inline uint32_t ByteMask4(uint32_t x) { return ((x * 0x00204081u) & 0x01010101u) * 0xFFu; }

}  // namespace

Status MaskGrad(const int8_t* g, const uint8_t* bits, int32_t n, int8_t* out) {
  if (n < 0) return Status::kBadShape;
  // Whole mask bytes a word of gradients at a time: out = g AND the bytes of the mask bits
  // (g where the bit is set, else 0: grad_copy::MaskGrad's select).
  // (byte k of a word is element k: little-endian targets)
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  const int32_t full = 0;
#else
  const int32_t full = n / 8;
#endif
  for (int32_t byte = 0; byte < full; ++byte, g += 8, out += 8) {
    const uint32_t m = bits[byte];
    uint32_t lo, hi;
    std::memcpy(&lo, g, 4);
    std::memcpy(&hi, g + 4, 4);
    lo &= ByteMask4(m & 0xFu);
    hi &= ByteMask4(m >> 4);
    std::memcpy(out, &lo, 4);
    std::memcpy(out + 4, &hi, 4);
  }
  return grad_copy::MaskGrad(g, bits + full, n % 8, out);
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
  return grad_copy::PadGrad(g, g_dims, in, pad_top, pad_left, out);
}

Status ReshapeGrad(const int8_t* g, int32_t n, int8_t* out) {
  return grad_copy::ReshapeGrad(g, n, out);
}

namespace {

bool ValidPool(Hwc g_dims, Hwc in) {
  return ValidHwc(g_dims) && ValidHwc(in) && g_dims.c == in.c;
}

inline int64_t PoolWeight(int64_t count) {
  const int64_t one = int64_t{1} << kPoolBits;
  return (one + count / 2) / (count > 1 ? count : 1);
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
          const int32_t r = MaxPoolRoute(x, y[o], oh, ow, c, in, p);
          if (r >= 0) scratch[r * C + c] += g[o];
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

namespace {

// Kernel extent per axis up to which the scratch-free input gradients enumerate the window taps
// of an input position in small stack arrays (larger kernels take the generic path).
constexpr int32_t kMaxTapsPerAxis = 16;

// The window taps of input row (or column) i: k and output o with o * stride - pad + k == i.
// Returns the count; g_off[t] = o * g_step, w_off[t] = k * w_step.
inline int32_t TapsFor(int32_t i, int32_t k_size, int32_t stride, int32_t pad, int32_t out_size,
                       int32_t g_step, int32_t w_step, int32_t* g_off, int32_t* w_off) {
  int32_t n = 0;
  for (int32_t k = 0; k < k_size; ++k) {
    const int32_t o = OutputFor(i, k, stride, pad, out_size);
    if (o < 0) continue;
    g_off[n] = o * g_step;
    w_off[n] = k * w_step;
    ++n;
  }
  return n;
}

// The window taps of one input pixel (ih, iw): rows r < nr, columns c < nc; the gradient at
// g + gr[r] + gc[c] (+ channel) meets the weights at w + wr[r] + wc[c] (+ channel offsets).
struct PixelTaps {
  int32_t nr = 0, nc = 0;
  int32_t gr[kMaxTapsPerAxis], wr[kMaxTapsPerAxis], gc[kMaxTapsPerAxis], wc[kMaxTapsPerAxis];
};

// Shapes of one input-gradient op (conv: w_ci = CI, w_co = kh * kw * CI; depthwise: CO = CI = C,
// w_co = 0).
struct InputGradCtx {
  const int8_t* g;
  Hwc g_dims;
  const int8_t* w;
  int32_t kh_size, kw_size;
  const int32_t* wmul;
  Hwc in;
  ConvGeom geom;
  int32_t w_co;  // w stride between output channels (conv)
  SplitWeights split = SplitWeights();  // conv: rows [split, CO) at split.rest
  GradBroadcast bcast = GradBroadcast();  // conv: g [CO] broadcast over g_dims, masked
};

// Bit i (LSB first) of a packed mask (TMT_MASK_PACK's layout).
inline bool MaskBit(const uint8_t* mask, int32_t i) { return (mask[i >> 3] >> (i & 7)) & 1; }

// The gradient at element `off + co` of g_dims (off: a pixel's first element): g[off + co], or
// with a broadcast g (GradBroadcast) g[co] where the mask bit off + co is set, else 0.
inline int32_t GradAt(const int8_t* g, const GradBroadcast& bc, int32_t off, int32_t co) {
  if (!bc.on) return g[off + co];
  return (bc.mask == nullptr || MaskBit(bc.mask, off + co)) ? g[co] : 0;
}

inline void RowTaps(const InputGradCtx& k, int32_t ih, PixelTaps* t) {
  t->nr = TapsFor(ih, k.kh_size, k.geom.stride_h, k.geom.pad_top, k.g_dims.h,
                  k.g_dims.w * k.g_dims.c, k.kw_size * k.in.c, t->gr, t->wr);
}

inline void ColTaps(const InputGradCtx& k, int32_t iw, PixelTaps* t) {
  t->nc = TapsFor(iw, k.kw_size, k.geom.stride_w, k.geom.pad_left, k.g_dims.w, k.g_dims.c,
                  k.in.c, t->gc, t->wc);
}

// Scratch-free dyn_quantize in one pass over the accumulators plus a cheap fix-up pass.
//
// PutBlock(i0, acc, n) is called for consecutive blocks of elements in ascending order. It keeps
// the bit length of max|acc| exactly (all dyn_quantize needs), c = max(0, bit_length(max so far) - 8)
// and out[i] = t = floor(acc / 2^c) when t is in [-127, 127], else the marker -128. When the running max
// gains bits, c grows and the stored t are floored further (floor(floor(a / 2^c) / 2^d) ==
// floor(a / 2^(c + d)), exact; markers stay markers), so every stored t is at the current c.
// At the end c == max(0, bit_length(m) - 8) for the final m, and the contract's shift is
// s = max(0, bit_length(m) - 7): s == 0 means c == 0 and |acc| <= 127, nothing marked and
// out[i] == acc == q; otherwise s == c + 1 and round_shift_right(acc, s) =
// floor((acc + 2^c) / 2^(c + 1)) = floor((t + 1) / 2) = (t + 1) >> 1, in [-63, 64] (no clamp).
// Only marked elements (|acc| >= ~127 * 2^c when stored: within a factor ~2 of the running max)
// are computed again, exactly, in the fix-up. Results are identical to the two-pass dyn_quantize.
class StagedQuant {
 public:
  explicit StagedQuant(int8_t* out) : out_(out) {}

  // Stages a[j] as element i0 + j, j in [0, n).
  void PutBlock(int32_t i0, const int64_t* a, int32_t n) {
    max_abs_ |= Store(out_ + i0, a, n, c_);
    if (max_abs_ >= lim_) {  // the block lifts the bit length: new c, the block again
      Grow(i0);
      Store(out_ + i0, a, n, c_);
    }
  }

  int shift() const { return DynQuantizeShift(max_abs_); }

  // After every Put: finishes out[0, n) and returns the shift. exact_pixel(p, base, s) must
  // set out[base + j] = DynQuantizeValue(acc, s) for the marked elements j of pixel p.
  template <typename FixPixel>
  int Finish(int32_t pixels, int32_t ch, FixPixel fix_pixel) {
    const int s = shift();
    if (s == 0) return 0;
    for (int32_t p = 0, base = 0; p < pixels; ++p, base += ch) {
      int32_t marked = 0;
      int8_t* o = out_ + base;
      int32_t j = 0;
#if TMT_CORE_USE_DSP
      // Four elements a word: SHADD8 with 0x01 bytes is (t + 1) >> 1 per byte (exact, the sum
      // is taken in 9 bits); SSUB8 t - (-127) sets GE exactly where t >= -127 (no marker), and
      // SEL keeps the marker bytes. A result byte is a marker iff bit 7 is set and bit 6 clear
      // (the others are in [-63, 64]); USADA8 adds those 0x80 bytes, so marks / 128 counts them.
      uint32_t marks = 0;
      for (; j + 4 <= ch; j += 4) {
        const uint32_t v = Load32(o + j);
        uint32_t r, d;
        __asm__("shadd8 %0, %2, %3\n\tssub8 %1, %2, %4\n\tsel %0, %0, %2"
                : "=&r"(r), "=&r"(d)
                : "r"(v), "r"(0x01010101u), "r"(0x81818181u));
        std::memcpy(o + j, &r, 4);
        marks = __usada8((r & ~(r << 1)) & 0x80808080u, 0u, marks);
      }
      marked = static_cast<int32_t>(marks >> 7);
#endif
      for (; j < ch; ++j) {
        const int32_t t = o[j];
        if (t == kMarker) {
          ++marked;
        } else {
          o[j] = static_cast<int8_t>((t + 1) >> 1);
        }
      }
      if (marked) fix_pixel(p, base, marked, s);
    }
    return s;
  }

  static constexpr int8_t kMarker = -128;

 private:
  // o[j] = t = a[j] >> c when -127 <= t <= 127, else the marker. t is in range iff
  // a in [-127 2^c, 128 2^c), i.e. u = a + 127 2^c < 255 2^c as uint64 (one add and one
  // compare of 64 bits); then t's low byte (all the int8 store keeps) is bits c..c+7 of a.
  // Returns the OR of |a[j]| over the marked j only: an unmarked one has |a| < 2^(c+7), so it
  // cannot reach lim_ = 2^(c+8), and it never sets the bit length: once c > 0 the OR already has
  // bit length c + 8 (Grow), and with c == 0 it is <= 127, where DynQuantizeShift is 0 either
  // way. PutBlock, Grow and shift() therefore see exactly what the OR of every |a| gives them.
  static TMT_NOINLINE uint64_t Store(int8_t* o, const int64_t* a, int32_t n, int c) {
    uint64_t marked = 0;
    const int64_t* const end = a + n;
    if (c <= 24) {  // 255 2^c < 2^32; bits c..c+7 are in the low word
      const uint32_t k = uint32_t{127} << c, l = uint32_t{255} << c;
      for (; a < end; ++a, ++o) {
        const uint64_t u = static_cast<uint64_t>(*a) + k;
        if (u < l) {
          *o = static_cast<int8_t>(static_cast<uint32_t>(*a) >> c);
        } else {
          *o = kMarker;
          marked |= AbsU64(*a);
        }
      }
    } else if (c < 32) {  // bits c..c+7 straddle the words
      const uint64_t k = uint64_t{127} << c, l = uint64_t{255} << c;
      for (; a < end; ++a, ++o) {
        const uint64_t v = static_cast<uint64_t>(*a);
        if (v + k < l) {
          *o = static_cast<int8_t>((static_cast<uint32_t>(v) >> c) |
                                   (static_cast<uint32_t>(v >> 32) << (32 - c)));
        } else {
          *o = kMarker;
          marked |= AbsU64(*a);
        }
      }
    } else {  // 32 <= c <= 56 (bit length <= 64): u's low word is a's, 255 2^(c-32) < 2^32
      const uint32_t k = uint32_t{127} << (c - 32), l = uint32_t{255} << (c - 32);
      for (; a < end; ++a, ++o) {
        const uint32_t hi = static_cast<uint32_t>(static_cast<uint64_t>(*a) >> 32);
        if (hi + k < l) {
          *o = static_cast<int8_t>(hi >> (c - 32));
        } else {
          *o = kMarker;
          marked |= AbsU64(*a);
        }
      }
    }
    return marked;
  }

  TMT_NOINLINE void Grow(int32_t i) {
    int c = BitLength(max_abs_) - 8;
    if (c < 0) c = 0;
    const int d = c - c_;
    if (d > 0) {
      for (int32_t j = 0; j < i; ++j) {
        const int8_t t = out_[j];
        if (t != kMarker) out_[j] = static_cast<int8_t>(t >> (d > 7 ? 7 : d));
      }
    }
    c_ = c;
    lim_ = c + 8 < 64 ? uint64_t{1} << (c + 8) : ~uint64_t{0};
  }

  int8_t* out_;
  uint64_t max_abs_ = 0;  // OR of every |acc| so far: the bit length of their max
  int c_ = 0;
  uint64_t lim_ = uint64_t{1} << 8;  // bit_length(m) > c + 8  <=>  m >= lim_
};

// int32 x int32 -> int64 (one SMULL; GCC otherwise may widen both operands first).
inline int64_t Mul64(int32_t a, int32_t b) {
#if defined(__ARM_ARCH_7EM__) || defined(__ARM_ARCH_7M__)
  uint32_t lo, hi;
  __asm__("smull %0, %1, %2, %3" : "=&r"(lo), "=&r"(hi) : "r"(a), "r"(b));
  return static_cast<int64_t>((static_cast<uint64_t>(hi) << 32) | lo);
#else
  return static_cast<int64_t>(a) * b;
#endif
}

// Tiles of the scratch-free conv input gradient (stack: kCiTile int64 + kCoTile entries) and
// channel blocks of the depthwise one (kDwTile int64).
constexpr int32_t kCiTile = 64;
constexpr int32_t kCoTile = 32;
constexpr int32_t kDwTile = 16;

// One nonzero gradient of a tap's output pixel: gw = g[oh, ow, co] * wmul[co] (|gw| <= 2^22, so
// int32) and its weight row w[co, kh, kw, ci0:] (the tile's first input channel).
struct GwEntry {
  int32_t gw;
  const int8_t* w;
};

// Bound on the sum of the |gw| of one list: with |w| <= 128 every partial sum of the list's
// products gw * w is at most 128 * kGwSumMax < 2^31, so the list sums exactly in int32. One
// entry alone always fits (|gw| <= 128 * 2^15).
constexpr uint32_t kGwSumMax = (uint32_t{1} << 24) - 1;

// *p += a (ADDS / ADC with the sign of a: GCC otherwise keeps the sign words apart, spilling).
inline void AddWide(int64_t* p, int32_t a) {
#if defined(__ARM_ARCH_7EM__) || defined(__ARM_ARCH_7M__)
  uint32_t lo, hi;
  std::memcpy(&lo, p, 4);
  std::memcpy(&hi, reinterpret_cast<const char*>(p) + 4, 4);
  __asm__("adds %0, %0, %2\n\tadc %1, %1, %2, asr #31" : "+r"(lo), "+r"(hi) : "r"(a) : "cc");
  std::memcpy(p, &lo, 4);
  std::memcpy(reinterpret_cast<char*>(p) + 4, &hi, 4);
#else
  *p += a;
#endif
}

// acc[j] += sum_e list[e].gw * list[e].w[j] for j in [0, cn): the list's sum in int32 (exact:
// kGwSumMax), eight input channels at a time, then added to the int64 accumulators. The list
// ends with an entry gw == 0 (so the loop needs no end pointer).
TMT_NOINLINE void AccumulateTile(const GwEntry* list, int32_t cn, int64_t* acc) {
  int32_t j = 0;
  for (; j + 8 <= cn; j += 8) {
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    const GwEntry* e = list;
    for (int32_t gw = e->gw; gw != 0; gw = e->gw) {
      const int8_t* wp = e->w + j;
      ++e;
      a0 += gw * wp[0];
      a1 += gw * wp[1];
      a2 += gw * wp[2];
      a3 += gw * wp[3];
      a4 += gw * wp[4];
      a5 += gw * wp[5];
      a6 += gw * wp[6];
      a7 += gw * wp[7];
    }
    AddWide(acc + j, a0);
    AddWide(acc + j + 1, a1);
    AddWide(acc + j + 2, a2);
    AddWide(acc + j + 3, a3);
    AddWide(acc + j + 4, a4);
    AddWide(acc + j + 5, a5);
    AddWide(acc + j + 6, a6);
    AddWide(acc + j + 7, a7);
  }
  for (; j < cn; ++j) {
    int32_t a = 0;
    for (const GwEntry* e = list; e->gw != 0; ++e) a += e->gw * e->w[j];
    acc[j] += a;
  }
}

// The list of one output pixel gp from output channel *co on: the nonzero g[co] * wmul[co] with
// their weight rows RowOf(w, split, co, w_co) + at (every listed gw is nonzero: wmul >= 1), up to
// kCoTile entries and kGwSumMax, then the end entry gw == 0. Returns the count; *co becomes the
// first channel not examined (CO when done).
template <typename GAt>
inline int32_t BuildGwListOf(GAt gp, const int32_t* wmul, const int8_t* w,
                             const SplitWeights& split, int32_t at, int32_t w_co, int32_t* co_io,
                             int32_t CO, GwEntry* list) {
  int32_t n = 0;
  uint32_t sum = 0;
  int32_t co = *co_io;
  // Scans [co, end), rows seg + (co - first) * w_co; false once the list is complete.
  auto scan = [&](int32_t end, const int8_t* seg, int32_t first) -> bool {
    for (; co < end; ++co) {
      const int32_t gv = gp[co];
      if (gv == 0) continue;
      const int32_t gw = gv * wmul[co];
      const uint32_t mag = static_cast<uint32_t>(gv < 0 ? -gw : gw);
      if (n > 0 && sum + mag > kGwSumMax) return false;  // co opens the next list
      sum += mag;
      list[n].gw = gw;
      list[n].w = seg + (co - first) * w_co;
      if (++n == kCoTile) {
        ++co;
        return false;
      }
    }
    return true;
  };
  // rows [co, mid) at w, [mid, CO) at split.rest (no split: mid = CO)
  int32_t mid = CO;
  if (split.rest != nullptr && split.split < CO) mid = split.split > co ? split.split : co;
  if (scan(mid, w + at, 0)) scan(CO, split.rest + at, split.split);
  list[n].gw = 0;
  *co_io = co;
  return n;
}
// One output pixel's values of a broadcast gradient, as BuildGwListOf reads them.
struct BroadcastPixel {
  const int8_t* g;
  GradBroadcast bc;
  int32_t off;
  int32_t operator[](int32_t co) const { return GradAt(g, bc, off, co); }
};

// BuildGwListOf for output pixel `off` (its first element) of k's gradient.
inline int32_t BuildGwList(const InputGradCtx& k, int32_t off, int32_t at, int32_t* co,
                           GwEntry* list) {
  const int32_t CO = k.g_dims.c;
  if (!k.bcast.on) {
    return BuildGwListOf(k.g + off, k.wmul, k.w, k.split, at, k.w_co, co, CO, list);
  }
  return BuildGwListOf(BroadcastPixel{k.g, k.bcast, off}, k.wmul, k.w, k.split, at, k.w_co, co,
                       CO, list);
}

// As AccumulateTile for the input channels idx[m], m in [0, nm): acc[m] += sum_e gw * w[idx[m]]
// (the list's sum in int32).
TMT_NOINLINE void AccumulateGather(const GwEntry* list, const int32_t* idx, int32_t nm,
                                   int64_t* acc) {
  for (int32_t m = 0; m < nm; ++m) {
    const int32_t ci = idx[m];
    int32_t a = 0;  // exact in int32 (kGwSumMax)
    const GwEntry* e = list;
    for (int32_t gw = e->gw; gw != 0; gw = e->gw) {
      a += gw * e->w[ci];
      ++e;
    }
    acc[m] += a;
  }
}

// acc[ci] for ci in [0, CI) of one input pixel of TMT_CONV_INPUT_GRAD (window taps t), passed on
// as emit(ci0, acc + 0, n) for consecutive blocks of n <= kCiTile channels: acc = sum_{taps, co} (g[oh, ow, co] * wmul[co]) * w[co, kh, kw, ci] in
// int64, exactly the contract's sum (integer addition in any order). Per tile of input channels,
// per tap and tile of output channels: the nonzero g * wmul of the tap's output pixel, then
// AccumulateTile.
template <typename Emit>
TMT_NOINLINE void ConvPixelAccs(const InputGradCtx& k, const PixelTaps& t, Emit emit) {
  const int32_t CO = k.g_dims.c;
  const int32_t CI = k.in.c;
  int64_t acc[kCiTile];
  GwEntry list[kCoTile + 1];
  for (int32_t ci0 = 0; ci0 < CI; ci0 += kCiTile) {
    const int32_t cn = CI - ci0 < kCiTile ? CI - ci0 : kCiTile;
    for (int32_t j = 0; j < cn; ++j) acc[j] = 0;
    for (int32_t r = 0; r < t.nr; ++r) {
      for (int32_t c = 0; c < t.nc; ++c) {
        const int32_t off = t.gr[r] + t.gc[c];
        const int32_t at = t.wr[r] + t.wc[c] + ci0;
        for (int32_t co = 0; co < CO;) {
          if (BuildGwList(k, off, at, &co, list)) AccumulateTile(list, cn, acc);
        }
      }
    }
    emit(ci0, acc, cn);
  }
}

// The accumulators of the marked input channels of one conv input pixel, at most kFixTile from
// ci0 on: out[ci] = DynQuantizeValue(acc[ci], s). Returns the channel after the last one examined.
constexpr int32_t kFixTile = 16;
TMT_NOINLINE int32_t ConvFixGather(const InputGradCtx& k, const PixelTaps& t, int8_t* out,
                                   int32_t ci0, int s) {
  const int32_t CO = k.g_dims.c;
  const int32_t CI = k.in.c;
  int64_t acc[kFixTile];
  int32_t idx[kFixTile];
  GwEntry list[kCoTile + 1];
  int32_t nm = 0;
  for (; ci0 < CI && nm < kFixTile; ++ci0) {
    if (out[ci0] == StagedQuant::kMarker) idx[nm++] = ci0;
  }
  if (nm == 0) return ci0;
  for (int32_t m = 0; m < nm; ++m) acc[m] = 0;
  for (int32_t r = 0; r < t.nr; ++r) {
    for (int32_t c = 0; c < t.nc; ++c) {
      const int32_t off = t.gr[r] + t.gc[c];
      const int32_t at = t.wr[r] + t.wc[c];
      for (int32_t co = 0; co < CO;) {
        if (BuildGwList(k, off, at, &co, list)) AccumulateGather(list, idx, nm, acc);
      }
    }
  }
  for (int32_t m = 0; m < nm; ++m) out[idx[m]] = DynQuantizeValue(acc[m], s);
  return ci0;
}

// Fix-up of one conv input pixel: out[ci] = DynQuantizeValue(acc[ci], s) for the marked ci (the
// others are final already).
inline void ConvPixelFix(const InputGradCtx& k, const PixelTaps& t, int8_t* out, int32_t marked,
                         int s) {
  const int32_t CI = k.in.c;
  if (marked * 5 > CI * 3) {  // most channels: the whole pixel through the tiles
    ConvPixelAccs(k, t, [&](int32_t ci0, const int64_t* acc, int32_t n) {
      for (int32_t j = 0; j < n; ++j) {
        if (out[ci0 + j] == StagedQuant::kMarker) out[ci0 + j] = DynQuantizeValue(acc[j], s);
      }
    });
    return;
  }
  for (int32_t ci0 = 0; ci0 < CI;) ci0 = ConvFixGather(k, t, out, ci0, s);
}

// Window taps of a pixel flattened: g + g and w + w (+ channel) meet. Depthwise kernels with more
// taps than kMaxFlatTaps in one pixel take the row / column loops.
constexpr int32_t kMaxFlatTaps = 32;
struct FlatTap {
  int32_t g;
  int32_t w;
};

// t0..t3 += sum over the taps of g[tap + j] * w[tap + j], j = 0..3 (four channels).
inline void DwTap4(const int8_t* gp, const int8_t* wp, int32_t& t0, int32_t& t1, int32_t& t2,
                   int32_t& t3) {
#if TMT_CORE_USE_DSP
  const uint32_t G = Load32(gp);
  const uint32_t W = Load32(wp);
  const int32_t G02 = static_cast<int32_t>(__sxtb16(G));
  const int32_t G13 = static_cast<int32_t>(Sxtb16Odd(G));
  const int32_t W02 = static_cast<int32_t>(__sxtb16(W));
  const int32_t W13 = static_cast<int32_t>(Sxtb16Odd(W));
  t0 = __smlabb(G02, W02, t0);
  t2 = __smlatt(G02, W02, t2);
  t1 = __smlabb(G13, W13, t1);
  t3 = __smlatt(G13, W13, t3);
#else
  t0 += static_cast<int32_t>(gp[0]) * wp[0];
  t1 += static_cast<int32_t>(gp[1]) * wp[1];
  t2 += static_cast<int32_t>(gp[2]) * wp[2];
  t3 += static_cast<int32_t>(gp[3]) * wp[3];
#endif
}

template <typename Emit>
inline void DepthwisePixelAccs(const InputGradCtx& k, const PixelTaps& t, Emit emit) {
  const int32_t C = k.in.c;
  const int32_t nr = t.nr, nc = t.nc;
  const int32_t* wmul = k.wmul;
  const bool flat = nr * nc <= kMaxFlatTaps;
  FlatTap taps[kMaxFlatTaps];
  int32_t nt = 0;
  if (flat) {
    for (int32_t r = 0; r < nr; ++r) {
      for (int32_t q = 0; q < nc; ++q, ++nt) {
        taps[nt].g = t.gr[r] + t.gc[q];
        taps[nt].w = t.wr[r] + t.wc[q];
      }
    }
  }
  const FlatTap* tend = taps + nt;
  int64_t acc[kDwTile];
  for (int32_t c0 = 0; c0 < C; c0 += kDwTile) {
    const int32_t cn = C - c0 < kDwTile ? C - c0 : kDwTile;
    int32_t j = 0;
    for (; j + 4 <= cn; j += 4) {
      const int32_t c = c0 + j;
      int32_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
      const int8_t* gc = k.g + c;
      const int8_t* wc = k.w + c;
      if (flat) {
#if TMT_CORE_USE_DSP
        for (const FlatTap* e = taps; e != tend;) {
          // one LDMIA for the tap (GCC emits two loads and an add); fixed ascending registers
          register int32_t go __asm__("r4");
          register int32_t wo __asm__("r5");
          __asm__("ldmia %2!, {%0, %1}" : "=r"(go), "=r"(wo), "+r"(e) : "m"(*e));
          DwTap4(gc + go, wc + wo, t0, t1, t2, t3);
        }
#else
        for (const FlatTap* e = taps; e != tend; ++e) DwTap4(gc + e->g, wc + e->w, t0, t1, t2, t3);
#endif
      } else {
        for (int32_t r = 0; r < nr; ++r) {
          for (int32_t q = 0; q < nc; ++q) {
            DwTap4(gc + t.gr[r] + t.gc[q], wc + t.wr[r] + t.wc[q], t0, t1, t2, t3);
          }
        }
      }
      acc[j] = Mul64(t0, wmul[c]);
      acc[j + 1] = Mul64(t1, wmul[c + 1]);
      acc[j + 2] = Mul64(t2, wmul[c + 2]);
      acc[j + 3] = Mul64(t3, wmul[c + 3]);
    }
    for (; j < cn; ++j) {
      const int32_t c = c0 + j;
      int32_t sum = 0;
      for (int32_t r = 0; r < nr; ++r) {
        for (int32_t q = 0; q < nc; ++q) {
          sum += static_cast<int32_t>(k.g[t.gr[r] + t.gc[q] + c]) * k.w[t.wr[r] + t.wc[q] + c];
        }
      }
      acc[j] = Mul64(sum, wmul[c]);
    }
    emit(c0, acc, cn);
  }
}

inline int64_t DepthwiseElementAcc(const InputGradCtx& k, const PixelTaps& t, int32_t c) {
  int32_t s = 0;
  for (int32_t r = 0; r < t.nr; ++r) {
    for (int32_t j = 0; j < t.nc; ++j) {
      s += static_cast<int32_t>(k.g[t.gr[r] + t.gc[j] + c]) * k.w[t.wr[r] + t.wc[j] + c];
    }
  }
  return static_cast<int64_t>(s) * k.wmul[c];
}

// The scratch-free input gradient (kernel extents <= kMaxTapsPerAxis): one pass through
// StagedQuant, then its fix-up recomputing the marked elements (a whole pixel at once through
// pixel_accs when most of its channels are marked, else one element at a time).
template <bool kDepthwise>
int InputGradNoScratch(const InputGradCtx& k, int8_t* g_in) {
  const Hwc in = k.in;
  const int32_t ch = in.c;
  StagedQuant sq(g_in);
  PixelTaps t;
  int32_t i = 0;
  for (int32_t ih = 0; ih < in.h; ++ih) {
    RowTaps(k, ih, &t);
    for (int32_t iw = 0; iw < in.w; ++iw, i += ch) {
      ColTaps(k, iw, &t);
      const int32_t i0 = i;
      auto put = [&](int32_t c0, const int64_t* acc, int32_t n) { sq.PutBlock(i0 + c0, acc, n); };
      if constexpr (kDepthwise) {
        DepthwisePixelAccs(k, t, put);
      } else {
        ConvPixelAccs(k, t, put);
      }
    }
  }
  return sq.Finish(in.h * in.w, ch, [&](int32_t p, int32_t b, int32_t marked, int s) {
    RowTaps(k, p / in.w, &t);
    ColTaps(k, p % in.w, &t);
    int8_t* o = g_in + b;
    if constexpr (kDepthwise) {
      (void)marked;
      for (int32_t j = 0; j < ch; ++j) {
        if (o[j] == StagedQuant::kMarker) o[j] = DynQuantizeValue(DepthwiseElementAcc(k, t, j), s);
      }
    } else {
      ConvPixelFix(k, t, o, marked, s);
    }
  });
}

}  // namespace

Status ConvInputGrad(const int8_t* g, float s, Hwc g_dims, const int8_t* w, int32_t kh_size,
                     int32_t kw_size, const int32_t* wmul, float w_scale_max, Hwc in,
                     const ConvGeom& geom, int8_t* g_in, float* s_in, int64_t* scratch,
                     const SplitWeights& split, const GradBroadcast& bcast) {
  if (!ValidHwc(g_dims) || !ValidHwc(in) || kh_size < 1 || kw_size < 1) return Status::kBadShape;
  if (!ValidGeom(geom)) return Status::kBadParams;
  const int32_t CO = g_dims.c;
  const int32_t CI = in.c;
  const int32_t n = in.size();
  // w[co, kh, kw, ci]
  const int32_t w_co = kh_size * kw_size * CI;
  auto w_at = [&](int32_t co, int32_t kh, int32_t kw) {
    return RowOf(w, split, co, w_co) + (kh * kw_size + kw) * CI;
  };
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
            const int32_t go = (oh * g_dims.w + ow) * CO;
            int64_t* acc = scratch + (ih * in.w + iw) * CI;
            for (int32_t co = 0; co < CO; ++co) {
              const int32_t gv = GradAt(g, bcast, go, co);
              if (gv == 0) continue;
              // |g * wmul| < 2^39 in general, so int64; the products with w accumulate in int64.
              const int64_t gw = static_cast<int64_t>(gv) * wmul[co];
              const int8_t* wr = w_at(co, kh, kw);
              if (gw == static_cast<int32_t>(gw)) {
                const int32_t gw32 = static_cast<int32_t>(gw);
                for (int32_t ci = 0; ci < CI; ++ci) acc[ci] += static_cast<int64_t>(gw32) * wr[ci];
              } else {
                for (int32_t ci = 0; ci < CI; ++ci) acc[ci] += gw * wr[ci];
              }
            }
          }
        }
      }
    }
    shift = DynQuantizeArray(scratch, n, g_in);
  } else if (kh_size <= kMaxTapsPerAxis && kw_size <= kMaxTapsPerAxis) {
    const InputGradCtx k{g, g_dims, w, kh_size, kw_size, wmul, in, geom, w_co, split, bcast};
    shift = InputGradNoScratch<false>(k, g_in);
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
          const int32_t go = (oh * g_dims.w + ow) * CO;
          for (int32_t co = 0; co < CO; ++co) {
            acc += static_cast<int64_t>(GradAt(g, bcast, go, co)) * wmul[co] * w_at(co, kh, kw)[ci];
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
              acc[c] += static_cast<int64_t>(static_cast<int32_t>(go[c]) * wr[c]) * wmul[c];
            }
          }
        }
      }
    }
    shift = DynQuantizeArray(scratch, n, g_in);
  } else if (kh_size <= kMaxTapsPerAxis && kw_size <= kMaxTapsPerAxis) {
    const InputGradCtx k{g, g_dims, w, kh_size, kw_size, wmul, in, geom, 0};
    shift = InputGradNoScratch<true>(k, g_in);
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

// w - floor((requant64(acc, M, shift + 16) + r) / 2^16), clamped to [lo, hi] (generic form).
inline int64_t UpdatedValue(int64_t value, int64_t acc32, const Multiplier& m, uint32_t base,
                            uint32_t index, int64_t lo, int64_t hi) {
  const int64_t delta = Requant64(acc32, m.multiplier, m.shift + kQ16);
  const int64_t step = StochasticStep(delta, Noise(base, index));
  return Clamp64(value - step, lo, hi);
}

// v clamped to [-2^(kBits-1), 2^(kBits-1) - 1]: one SSAT on ARMv6 / ARMv7-M and later.
template <int kBits>
inline int32_t SatBits(int32_t v) {
#if defined(__ARM_FEATURE_SAT) && __ARM_FEATURE_SAT
  return __ssat(v, kBits);
#else
  constexpr int32_t kHi = (int32_t{1} << (kBits - 1)) - 1;
  return v < -kHi - 1 ? -kHi - 1 : (v > kHi ? kHi : v);
#endif
}

// QuantizeMultiplierF32(real) from the bits of the float32 (frexpf / ldexpf are exact, so is
// this; no soft-float library calls on an FPU-less core): a normal real is
// (mant24 / 2^24) * 2^(e - 126), so M = +-mant24 * 2^7 and shift = e - 126; a subnormal one is
// normalised first.
inline Multiplier DecodeMultiplier(float real) {
  uint32_t bits;
  std::memcpy(&bits, &real, 4);
  const int32_t e = static_cast<int32_t>((bits >> 23) & 0xFFu);
  uint32_t mant = bits & 0x7FFFFFu;
  if (e == 0xFF || (e == 0 && mant == 0)) return {0, 0};  // non-finite or zero
  int shift;
  if (e == 0) {  // subnormal: mant * 2^-149, mant < 2^23
    int top = 22;
    while (!(mant >> top)) --top;  // the highest set bit: real = (mant / 2^(top+1)) 2^(top-148)
    mant <<= 23 - top;
    shift = top - 148;
  } else {
    mant |= 0x800000u;
    shift = e - 126;
  }
  const int32_t m = static_cast<int32_t>(mant << 7);
  return {(bits >> 31) ? -m : m, shift};
}

// The stochastic-rounding step of one output channel, decoded once per channel:
// Step(a, i) = floor((requant64(a, M, shift + 16) + r_i) / 2^16) for an int32 accumulator a.
//
// Fused form. With rs = 31 - (shift + 16) (requant64's right shift) and u = 2 r + 1, the rounding
// half 2^(rs-1) and the noise r 2^rs are one addend u 2^(rs-1), and the two floors are one
// (floor((floor(y / 2^rs) + r) / 2^16) == floor((y + r 2^rs) / 2^(rs+16)) for integers y, r):
//   step = floor((a M + u 2^(rs-1)) / 2^(rs+16)).
// For rs in [16, 46] the sum is exact in int64 (|a M| < 2^62, 0 < u 2^(rs-1) < 2^62) and
// rs + 16 >= 32, so the step is the int32 high word of the sum shifted right by rs - 16; no
// 64-bit variable shift. rs <= 32: the addend is one 32 x 32 -> 64-bit product u 2^(rs-1)
// (UMULL), the sum one SMLAL; rs >= 33: the addend has no low word, so the high word is that
// of a M (SMULL) plus u 2^(rs-33). r needs no final hash round: Hash32's last step
// (x ^= x >> 16) leaves bits 16..31 unchanged. Shifts outside [16, 46] (a multiplier >= 1/2 or
// < 2^-31 per accumulator unit: no practical learning rate) take the generic requant64 form.
class ChannelStep {
 public:
  // lr_s = lr * s (float32, once per op): the multiplier is UpdateMultiplier(lr, s, factor).
  ChannelStep(float lr_s, float factor, uint32_t base)
      : m_(DecodeMultiplier(lr_s * factor)), base_(base) {
    const int rs = 31 - (m_.shift + kQ16);
    mode_ = rs < kMinFusedShift || rs > kMaxFusedShift ? kGeneric : (rs <= 32 ? kLowAddend
                                                                              : kHighAddend);
    if (mode_ != kGeneric) {
      add_ = mode_ == kLowAddend ? uint32_t{1} << (rs - 1) : static_cast<uint32_t>(rs - 33);
      hi_shift_ = rs - kQ16;
    }
  }

  // The updated int8 weight: clamp(w - step, -127, 127).
  inline int8_t Weight(int8_t w, int32_t a, uint32_t index) const {
    if (mode_ == kGeneric) {
      return static_cast<int8_t>(UpdatedValue(w, a, m_, base_, index, -127, 127));
    }
    return FusedWeight(w, Step(a, base_ + index));
  }

  // Weight() for w[0, n) with accumulators acc[0, n) - sub, elements index, index + 1, ...
  TMT_NOINLINE void Weights(int8_t* w, const int32_t* acc, int32_t n, int32_t sub,
                            uint32_t index) const {
    // The channel's constants in locals (the int8 stores to w may alias *this).
    const int32_t m = m_.multiplier;
    const uint32_t add = add_;
    const int sh = hi_shift_;
    uint32_t h = base_ + index;
    int8_t* const end = w + n;
    if (mode_ == kLowAddend) {
      for (; w < end; ++w, ++acc, ++h) {
        *w = FusedWeight(*w, LowAddendStep(*acc - sub, h, m, add, sh));
      }
    } else if (mode_ == kHighAddend) {
      for (; w < end; ++w, ++acc, ++h) {
        *w = FusedWeight(*w, HighAddendStep(*acc - sub, h, m, add, sh));
      }
    } else {
      for (; w < end; ++w, ++acc, ++index) *w = Weight(*w, *acc - sub, index);
    }
  }

  // The updated int32 bias: sat32(b - step).
  inline int32_t Bias(int32_t b, int32_t a, uint32_t index) const {
    if (mode_ == kGeneric) {
      return static_cast<int32_t>(UpdatedValue(b, a, m_, base_, index, INT32_MIN, INT32_MAX));
    }
    return Sat32(static_cast<int64_t>(b) - Step(a, base_ + index));
  }

  // The updated narrow (int16) bias: clamp(b - step, -32768, 32767).
  inline int16_t Bias(int16_t b, int32_t a, uint32_t index) const {
    if (mode_ == kGeneric) {
      return static_cast<int16_t>(UpdatedValue(b, a, m_, base_, index, INT16_MIN, INT16_MAX));
    }
    return static_cast<int16_t>(
        Clamp64(static_cast<int64_t>(b) - Step(a, base_ + index), INT16_MIN, INT16_MAX));
  }

 private:
  enum Mode : uint8_t { kGeneric, kLowAddend, kHighAddend };
  static constexpr int kMinFusedShift = 16;
  static constexpr int kMaxFusedShift = 46;

  // 2 r + 1 for x = base + index, r = Hash32(x) >> 16 (Hash32 without its last round).
  static inline uint32_t NoiseOdd(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return (x >> 15) | 1u;
  }

  // rs <= 32: add = 2^(rs-1).
  static inline int32_t LowAddendStep(int32_t a, uint32_t x, int32_t m, uint32_t add, int sh) {
    const uint64_t addend = static_cast<uint64_t>(NoiseOdd(x)) * add;
    const int64_t sum = static_cast<int64_t>(a) * m + static_cast<int64_t>(addend);
    return static_cast<int32_t>(static_cast<uint64_t>(sum) >> 32) >> sh;
  }

  // rs >= 33: add = rs - 33, the addend's high word is u << add.
  static inline int32_t HighAddendStep(int32_t a, uint32_t x, int32_t m, uint32_t add, int sh) {
    const uint64_t prod = static_cast<uint64_t>(static_cast<int64_t>(a) * m);
    const uint32_t hi = static_cast<uint32_t>(prod >> 32) + (NoiseOdd(x) << add);
    return static_cast<int32_t>(hi) >> sh;
  }

  inline int32_t Step(int32_t a, uint32_t x) const {
    return mode_ == kLowAddend ? LowAddendStep(a, x, m_.multiplier, add_, hi_shift_)
                               : HighAddendStep(a, x, m_.multiplier, add_, hi_shift_);
  }

  // clamp(w - step, -127, 127), with the step first clamped to [-256, 255] (same result, and
  // w - step cannot overflow).
  static inline int8_t FusedWeight(int8_t w, int32_t step) {
    const int32_t v = SatBits<8>(static_cast<int32_t>(w) - SatBits<9>(step));
    return static_cast<int8_t>(v < -127 ? -127 : v);
  }

  Multiplier m_;
  uint32_t base_;
  Mode mode_;
  uint32_t add_ = 0;
  int hi_shift_ = 0;
};

// ConvWeightTap's stack: the gradients of up to kUpdateChunk weights are summed, then updated;
// output positions are listed kTapChunk at a time.
constexpr int32_t kUpdateChunk = 64;
constexpr int32_t kTapChunk = 64;

// Output positions up to which a weight-gradient sum and its parts are exact in int32, so that
// sat32 is the identity: sum g * (x - zp) with |g| <= 128, |x - zp| <= 255 (zp an int8 zero
// point) is below 128 * 255 * 65793 < 2^31, and so are sum g * x and zp * sum g.
constexpr int32_t kMaxInt32Positions = 65793;

inline bool Int32Sums(Hwc g_dims, int64_t zp) {
  return g_dims.h * g_dims.w <= kMaxInt32Positions && zp >= -128 && zp <= 127;
}

bool ConvWeightUpdateChecks(Hwc g_dims, Hwc x_dims, int32_t kh_size, int32_t kw_size,
                            const ConvGeom& geom, const UpdateParams& p, Status* st) {
  if (!ValidHwc(g_dims) || !ValidHwc(x_dims) || kh_size < 1 || kw_size < 1) {
    *st = Status::kBadShape;
    return false;
  }
  if (!ValidGeom(geom) || p.update_channels < 0 || p.update_channels > g_dims.c) {
    *st = Status::kBadParams;
    return false;
  }
  return true;
}

// The weight gradient sums with int64 products: for layers with more than kMaxInt32Positions
// output positions (or a zero point outside int8).
Status ConvWeightUpdateWide(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                            int8_t* w, int32_t kh_size, int32_t kw_size, const float* wfactor,
                            float lr, const ConvGeom& geom, const UpdateParams& p,
                            uint32_t counter) {
  const int32_t CO = g_dims.c;
  const int32_t CI = x_dims.c;
  const uint32_t base = NoiseBase(p.seed, counter);
  const float lr_s = lr * s;  // UpdateMultiplier's first product, once per op
  const int64_t zp = p.x_zero_point;
  for (int32_t co = 0; co < p.update_channels; ++co) {
    const ChannelStep up(lr_s, wfactor[co], base);
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
          wr[ci] = up.Weight(wr[ci], Sat32(acc), idx0 + static_cast<uint32_t>(ci));
        }
      }
    }
  }
  return Status::kOk;
}


// A nonzero gradient of a tap's output position and the offset of its input in x.
struct TapTerm {
  int32_t g;
  int32_t off;
};

// acc[k] (0 if `first`) + sum_j t[j].g * x[t[j].off + k] into acc[k], for k in [0, nc), over m
// terms; four input channels at a time (the DSP extension takes AccumulatePairs instead).
TMT_NOINLINE void AccumulateTerms(const TapTerm* t, int32_t m, const int8_t* x, int32_t* acc,
                                  int32_t nc, bool first) {
  const TapTerm* end = t + m;
  int32_t k = 0;
  for (; k + 4 <= nc; k += 4) {
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    if (!first) {
      a0 = acc[k];
      a1 = acc[k + 1];
      a2 = acc[k + 2];
      a3 = acc[k + 3];
    }
    const int8_t* xk = x + k;
    const TapTerm* tp = t;
    for (; tp < end; ++tp) {
      const int32_t v = tp->g;
      const int8_t* xp = xk + tp->off;
      a0 += v * xp[0];
      a1 += v * xp[1];
      a2 += v * xp[2];
      a3 += v * xp[3];
    }
    acc[k] = a0;
    acc[k + 1] = a1;
    acc[k + 2] = a2;
    acc[k + 3] = a3;
  }
  for (; k < nc; ++k) {
    int32_t a = first ? 0 : acc[k];
    for (const TapTerm* tp = t; tp < end; ++tp) a += tp->g * x[tp->off + k];
    acc[k] = a;
  }
}

#if TMT_CORE_HAVE_DSP
// Two nonzero gradients of a tap's output positions packed as int16 halves (PKHBT, once per
// chunk instead of once per channel block) and their inputs' offsets in x. An odd last term is
// paired with a zero gradient at its own offset (adds 0 * x: exact).
struct TermPair {
  uint32_t g;  // low half: the first gradient, high half: the second
  int32_t off0, off1;
};

// AccumulateTerms over m term pairs with SMLAD, two terms at a time: acc[k] (0 if `first`) + sum_j of both products.
TMT_NOINLINE void AccumulatePairs(const TermPair* t, int32_t m, const int8_t* x, int32_t* acc,
                                  int32_t nc, bool first) {
  const TermPair* end = t + m;
  int32_t k = 0;
  for (; k + 4 <= nc; k += 4) {
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    if (!first) {
      a0 = acc[k];
      a1 = acc[k + 1];
      a2 = acc[k + 2];
      a3 = acc[k + 3];
    }
    const int8_t* xk = x + k;
    for (const TermPair* tp = t; tp < end;) {
      // one LDMIA for the pair (GCC emits three loads and an add); fixed ascending registers
      register uint32_t G __asm__("r4");
      register int32_t off0 __asm__("r5");
      register int32_t off1 __asm__("r6");
      __asm__("ldmia %3!, {%0, %1, %2}" : "=r"(G), "=r"(off0), "=r"(off1), "+r"(tp) : "m"(*tp));
      const uint32_t P = Load32(xk + off0);
      const uint32_t Q = Load32(xk + off1);
      const uint32_t P02 = __sxtb16(P), P13 = Sxtb16Odd(P);
      const uint32_t Q02 = __sxtb16(Q), Q13 = Sxtb16Odd(Q);
      a0 = __smlad(G, PackLow(P02, Q02), a0);
      a1 = __smlad(G, PackLow(P13, Q13), a1);
      a2 = __smlad(G, PackHigh(Q02, P02), a2);
      a3 = __smlad(G, PackHigh(Q13, P13), a3);
    }
    acc[k] = a0;
    acc[k + 1] = a1;
    acc[k + 2] = a2;
    acc[k + 3] = a3;
  }
  for (; k < nc; ++k) {
    int32_t a = first ? 0 : acc[k];
    for (const TermPair* tp = t; tp < end; ++tp) {
      a += static_cast<int16_t>(tp->g & 0xFFFFu) * x[tp->off0 + k] +
           (static_cast<int32_t>(tp->g) >> 16) * x[tp->off1 + k];
    }
    acc[k] = a;
  }
}
#endif

// One tap (co, kh, kw) of ConvWeightUpdateNarrow: the CI weights wr[0, CI) summed over `rows` x
// `cols` output positions. g points at g[oh0, ow0, co] (next row g + g_row, next column g + CO),
// x at x[ih0, iw0, 0] (next row x + x_row, next column x + xstep).
struct ConvTap {
  const int8_t* g;
  const int8_t* x;
  int8_t* wr;
  int32_t rows, cols;
  uint32_t idx0;  // element index of wr[0] (noise order)
  int32_t g_row, CO, x_row, xstep, CI, zp;
  const ChannelStep* up;
  bool dsp;  // AccumulatePairs
};

// The gradient of one tap's weights, acc = (sum g * x) - zp * (sum g), exact in int32
// (Int32Sums), and their update. The positions are taken kTapChunk at a time: their nonzero
// gradients and input offsets are listed once, then summed for every input channel (no per-row
// overhead; zero gradients, e.g. behind a ReLU, cost nothing further).
TMT_NOINLINE void ConvWeightTap(const ConvTap& a) {
  int32_t acc[kUpdateChunk];
  union {  // the chunk's terms (DSP: paired, fewer bytes)
    TapTerm t[kTapChunk];
#if TMT_CORE_HAVE_DSP
    TermPair pr[kTapChunk / 2];
#endif
  } terms;
  const int32_t positions = a.rows * a.cols;
  for (int32_t c0 = 0; c0 < a.CI; c0 += kUpdateChunk) {
    const int32_t nc = a.CI - c0 < kUpdateChunk ? a.CI - c0 : kUpdateChunk;
    if (positions == 0) {
      for (int32_t k = 0; k < nc; ++k) acc[k] = 0;
    }
    int32_t gsum = 0;
    // The walk over the positions, row by row: gp / xo the current one's gradient and input offset.
    const int8_t* grow = a.g;
    const int8_t* gp = a.g;
    int32_t xrow = c0, xo = c0, col = 0;
    for (int32_t p0 = 0; p0 < positions; p0 += kTapChunk) {
      const int32_t pn = positions - p0 < kTapChunk ? positions - p0 : kTapChunk;
      // walk(term): the chunk's positions in order, term(v, xo) for each nonzero gradient v.
      auto walk = [&](auto term) {
        for (int32_t i = 0; i < pn; ++i) {
          const int32_t v = *gp;
          gsum += v;
          if (v != 0) term(v, xo);
          if (++col == a.cols) {
            col = 0;
            gp = grow += a.g_row;
            xo = xrow += a.x_row;
          } else {
            gp += a.CO;
            xo += a.xstep;
          }
        }
      };
      int32_t m = 0;
#if TMT_CORE_HAVE_DSP
      if (a.dsp) {
        TermPair* pr = terms.pr;
        int32_t pend = 0, pend_off = 0;
        walk([&](int32_t v, int32_t off) {
          if (pend == 0) {
            pend = v;
            pend_off = off;
            return;
          }
          pr[m].g = PackLow(static_cast<uint32_t>(pend), static_cast<uint32_t>(v));
          pr[m].off0 = pend_off;
          pr[m].off1 = off;
          ++m;
          pend = 0;
        });
        if (pend != 0) {
          pr[m].g = static_cast<uint32_t>(pend) & 0xFFFFu;
          pr[m].off0 = pend_off;
          pr[m].off1 = pend_off;
          ++m;
        }
        AccumulatePairs(pr, m, a.x, acc, nc, p0 == 0);
        continue;
      }
#endif
      TapTerm* t = terms.t;
      walk([&](int32_t v, int32_t off) {
        t[m].g = v;
        t[m].off = off;
        ++m;
      });
      AccumulateTerms(t, m, a.x, acc, nc, p0 == 0);
    }
    a.up->Weights(a.wr + c0, acc, nc, a.zp * gsum, a.idx0 + static_cast<uint32_t>(c0));
  }
}

// ConvWeightUpdate for layers whose sums are exact in int32 (Int32Sums), tap by tap.
Status ConvWeightUpdateNarrow(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                              int8_t* w, int32_t kh_size, int32_t kw_size, const float* wfactor,
                              float lr, const ConvGeom& geom, const UpdateParams& p,
                              uint32_t counter, bool dsp) {
  const int32_t CI = x_dims.c;
  const int32_t sw = geom.stride_w;
  ConvTap tap;
  tap.CO = g_dims.c;
  tap.CI = CI;
  tap.xstep = sw * CI;  // x offset between neighbouring output columns
  tap.g_row = g_dims.w * g_dims.c;
  tap.x_row = geom.stride_h * x_dims.w * CI;  // x offset between output rows
  tap.zp = p.x_zero_point;
  tap.dsp = dsp;
  const uint32_t base = NoiseBase(p.seed, counter);
  const float lr_s = lr * s;  // UpdateMultiplier's first product, once per op
  for (int32_t co = 0; co < p.update_channels; ++co) {
    const ChannelStep up(lr_s, wfactor[co], base);
    tap.up = &up;
    for (int32_t kh = 0; kh < kh_size; ++kh) {
      int32_t oh0, oh1;
      WindowRange(x_dims.h, kh, geom.stride_h, geom.pad_top, g_dims.h, &oh0, &oh1);
      for (int32_t kw = 0; kw < kw_size; ++kw) {
        int32_t ow0, ow1;
        WindowRange(x_dims.w, kw, sw, geom.pad_left, g_dims.w, &ow0, &ow1);
        const int32_t widx = ((co * kh_size + kh) * kw_size + kw) * CI;
        const int32_t ih0 = oh0 * geom.stride_h - geom.pad_top + kh;
        const int32_t iw0 = ow0 * sw - geom.pad_left + kw;
        tap.g = g + (oh0 * g_dims.w + ow0) * tap.CO + co;
        tap.x = x + (ih0 * x_dims.w + iw0) * CI;
        tap.wr = w + widx;
        tap.rows = oh1 - oh0;
        tap.cols = ow1 - ow0;
        tap.idx0 = static_cast<uint32_t>(widx);
        ConvWeightTap(tap);
      }
    }
  }
  return Status::kOk;
}

// One tap of a depthwise weight update for four channels: acc[j] = sum g[.., j] * (x[.., j] - zp)
// over rows x cols output positions, exact in int32 (Int32Sums). g points at the first
// position's four gradients (next column g + C, next row g + g_row), x at its four inputs (next
// column x + xstep, next row x + x_row). With the DSP extension (unless TMT_PORTABLE_ONLY): one
// word of each, SXTB16 / SSUB16 and four 16 x 16 multiply-accumulates per position.
TMT_NOINLINE void DepthwiseTap4(const int8_t* g, int32_t g_row, int32_t C, const int8_t* x,
                                int32_t x_row, int32_t xstep, int32_t rows, int32_t cols,
                                int32_t zp, int32_t* acc) {
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#if TMT_CORE_USE_DSP
  const int32_t zz = static_cast<int32_t>((static_cast<uint32_t>(zp) & 0xFFFFu) * 0x10001u);
#endif
  for (int32_t r = 0; r < rows; ++r, g += g_row, x += x_row) {
    const int8_t* gp = g;
    const int8_t* xp = x;
    for (int32_t n = cols; n > 0; --n, gp += C, xp += xstep) {
#if TMT_CORE_USE_DSP
      const uint32_t G = Load32(gp);
      if (G == 0) continue;
      const uint32_t X = Load32(xp);
      const int32_t G02 = static_cast<int32_t>(__sxtb16(G));
      const int32_t G13 = static_cast<int32_t>(Sxtb16Odd(G));
      const int32_t X02 = __ssub16(static_cast<int32_t>(__sxtb16(X)), zz);  // x - zp, int16 lanes
      const int32_t X13 = __ssub16(static_cast<int32_t>(Sxtb16Odd(X)), zz);
      a0 = __smlabb(G02, X02, a0);
      a2 = __smlatt(G02, X02, a2);
      a1 = __smlabb(G13, X13, a1);
      a3 = __smlatt(G13, X13, a3);
#else
      a0 += static_cast<int32_t>(gp[0]) * (xp[0] - zp);
      a1 += static_cast<int32_t>(gp[1]) * (xp[1] - zp);
      a2 += static_cast<int32_t>(gp[2]) * (xp[2] - zp);
      a3 += static_cast<int32_t>(gp[3]) * (xp[3] - zp);
#endif
    }
  }
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
}

}  // namespace

Status ConvWeightUpdatePortable(const int8_t* g, float s, Hwc g_dims, const int8_t* x,
                                Hwc x_dims, int8_t* w, int32_t kh_size, int32_t kw_size,
                                const float* wfactor, float lr, const ConvGeom& geom,
                                const UpdateParams& p, uint32_t counter) {
  Status st = Status::kOk;
  if (!ConvWeightUpdateChecks(g_dims, x_dims, kh_size, kw_size, geom, p, &st)) return st;
  if (!Int32Sums(g_dims, p.x_zero_point)) {
    return ConvWeightUpdateWide(g, s, g_dims, x, x_dims, w, kh_size, kw_size, wfactor, lr, geom,
                                p, counter);
  }
  return ConvWeightUpdateNarrow(g, s, g_dims, x, x_dims, w, kh_size, kw_size, wfactor, lr, geom,
                                p, counter, false);
}

Status ConvWeightUpdateDsp(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                           int8_t* w, int32_t kh_size, int32_t kw_size, const float* wfactor,
                           float lr, const ConvGeom& geom, const UpdateParams& p,
                           uint32_t counter) {
#if TMT_CORE_HAVE_DSP
  Status st = Status::kOk;
  if (!ConvWeightUpdateChecks(g_dims, x_dims, kh_size, kw_size, geom, p, &st)) return st;
  if (!Int32Sums(g_dims, p.x_zero_point)) {
    return ConvWeightUpdateWide(g, s, g_dims, x, x_dims, w, kh_size, kw_size, wfactor, lr, geom,
                                p, counter);
  }
  return ConvWeightUpdateNarrow(g, s, g_dims, x, x_dims, w, kh_size, kw_size, wfactor, lr, geom,
                                p, counter, true);
#else
  return ConvWeightUpdatePortable(g, s, g_dims, x, x_dims, w, kh_size, kw_size, wfactor, lr, geom,
                                  p, counter);
#endif
}

bool ConvWeightUpdateHasDsp() { return TMT_CORE_HAVE_DSP != 0; }

Status ConvWeightUpdate(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                        int8_t* w, int32_t kh_size, int32_t kw_size, const float* wfactor,
                        float lr, const ConvGeom& geom, const UpdateParams& p, uint32_t counter) {
#if TMT_CORE_USE_DSP
  return ConvWeightUpdateDsp(g, s, g_dims, x, x_dims, w, kh_size, kw_size, wfactor, lr, geom, p,
                             counter);
#else
  return ConvWeightUpdatePortable(g, s, g_dims, x, x_dims, w, kh_size, kw_size, wfactor, lr, geom,
                                  p, counter);
#endif
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
  const float lr_s = lr * s;  // UpdateMultiplier's first product, once per op
  const int64_t zp = p.x_zero_point;
  const bool narrow = Int32Sums(g_dims, zp);
  const int32_t sw = geom.stride_w;
  const int32_t xstep = sw * C;
  const int32_t g_row = g_dims.w * C;
  const int32_t x_row = geom.stride_h * x_dims.w * C;
  int32_t c = 0;
  if (narrow) {  // four channels at a time
    for (; c + 4 <= p.update_channels; c += 4) {
      const ChannelStep up[4] = {ChannelStep(lr_s, wfactor[c], base),
                                 ChannelStep(lr_s, wfactor[c + 1], base),
                                 ChannelStep(lr_s, wfactor[c + 2], base),
                                 ChannelStep(lr_s, wfactor[c + 3], base)};
      for (int32_t kh = 0; kh < kh_size; ++kh) {
        int32_t oh0, oh1;
        WindowRange(x_dims.h, kh, geom.stride_h, geom.pad_top, g_dims.h, &oh0, &oh1);
        for (int32_t kw = 0; kw < kw_size; ++kw) {
          int32_t ow0, ow1;
          WindowRange(x_dims.w, kw, sw, geom.pad_left, g_dims.w, &ow0, &ow1);
          const int32_t ih0 = oh0 * geom.stride_h - geom.pad_top + kh;
          const int32_t iw0 = ow0 * sw - geom.pad_left + kw;
          int32_t acc[4];
          DepthwiseTap4(g + (oh0 * g_dims.w + ow0) * C + c, g_row, C,
                        x + (ih0 * x_dims.w + iw0) * C + c, x_row, xstep, oh1 - oh0, ow1 - ow0,
                        static_cast<int32_t>(zp), acc);
          int8_t* wr = w + (kh * kw_size + kw) * C + c;
          const uint32_t idx = static_cast<uint32_t>((c * kh_size + kh) * kw_size + kw);
          const uint32_t per_channel = static_cast<uint32_t>(kh_size * kw_size);
          for (int32_t j = 0; j < 4; ++j) {
            wr[j] = up[j].Weight(wr[j], acc[j], idx + static_cast<uint32_t>(j) * per_channel);
          }
        }
      }
    }
  }
  for (; c < p.update_channels; ++c) {
    const ChannelStep up(lr_s, wfactor[c], base);
    for (int32_t kh = 0; kh < kh_size; ++kh) {
      int32_t oh0, oh1;
      WindowRange(x_dims.h, kh, geom.stride_h, geom.pad_top, g_dims.h, &oh0, &oh1);
      for (int32_t kw = 0; kw < kw_size; ++kw) {
        int32_t ow0, ow1;
        WindowRange(x_dims.w, kw, sw, geom.pad_left, g_dims.w, &ow0, &ow1);
        int32_t acc = 0;
        if (narrow) {  // sum g * x minus zp * sum g, exact in int32
          int32_t gx = 0, gsum = 0;
          const int32_t x0 = (ow0 * sw - geom.pad_left + kw) * C + c;
          for (int32_t oh = oh0; oh < oh1; ++oh) {
            const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
            const int8_t* gp = g + (oh * g_dims.w + ow0) * C + c;
            const int8_t* xp = x + ih * x_dims.w * C + x0;
            for (int32_t n = ow1 - ow0; n > 0; --n, gp += C, xp += xstep) {
              const int32_t gv = *gp;
              gsum += gv;
              gx += gv * *xp;
            }
          }
          acc = gx - static_cast<int32_t>(zp) * gsum;
        } else {
          int64_t wide = 0;
          for (int32_t oh = oh0; oh < oh1; ++oh) {
            const int32_t ih = oh * geom.stride_h - geom.pad_top + kh;
            for (int32_t ow = ow0; ow < ow1; ++ow) {
              const int32_t iw = ow * sw - geom.pad_left + kw;
              wide += static_cast<int64_t>(g[(oh * g_dims.w + ow) * C + c]) *
                      (static_cast<int64_t>(x[(ih * x_dims.w + iw) * C + c]) - zp);
            }
          }
          acc = Sat32(wide);
        }
        int8_t& wv = w[(kh * kw_size + kw) * C + c];
        const uint32_t idx = static_cast<uint32_t>((c * kh_size + kh) * kw_size + kw);
        wv = up.Weight(wv, acc, idx);
      }
    }
  }
  return Status::kOk;
}

namespace {

#if TMT_CORE_USE_DSP
// s[k] = sum_i g[i * stride + k], k < 4: SXTAB16 adds bytes 0, 2 (1, 3) into int16 lanes, exact
// for up to 256 positions (|sum| <= 256 * 128 = 2^15, and -2^15 is an int16), then the lanes are
// added to int32 sums.
inline void ColumnSums4(const int8_t* g, int32_t positions, int32_t stride, int32_t* s) {
  int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int32_t i = 0; i < positions;) {
    const int32_t n = positions - i < 256 ? positions - i : 256;
    uint32_t even = 0, odd = 0;
    for (int32_t k = 0; k < n; ++k, g += stride) {
      const uint32_t v = Load32(g);
      __asm__("sxtab16 %0, %0, %2\n\tsxtab16 %1, %1, %2, ror #8"
              : "+r"(even), "+r"(odd)
              : "r"(v));
    }
    i += n;
    s0 += static_cast<int16_t>(even & 0xFFFFu);
    s2 += static_cast<int32_t>(even) >> 16;
    s1 += static_cast<int16_t>(odd & 0xFFFFu);
    s3 += static_cast<int32_t>(odd) >> 16;
  }
  s[0] = s0;
  s[1] = s1;
  s[2] = s2;
  s[3] = s3;
}
#endif

template <typename Bias>
Status BiasUpdateOf(const int8_t* g, float s, int32_t positions, int32_t channels, Bias* b,
                    const float* bfactor, float lr, const UpdateParams& p, uint32_t counter,
                    const GradBroadcast& bc) {
  if (positions < 0 || channels < 0) return Status::kBadShape;
  if (p.update_channels < 0 || p.update_channels > channels) return Status::kBadParams;
  const uint32_t base = NoiseBase(p.seed, counter);
  const float lr_s = lr * s;  // UpdateMultiplier's first product, once per op
  const bool narrow = positions < (1 << 24);  // int32 sums of |g| <= 128 cannot overflow
#if TMT_CORE_USE_DSP
  const int32_t quads = p.update_channels & ~3;  // channels summed four at a time
  int32_t sums[4] = {0, 0, 0, 0};
#endif
  for (int32_t c = 0; c < p.update_channels; ++c) {
    int64_t acc = 0;
    if (bc.on) {  // g[c] at each position whose mask bit is set
      int64_t n = positions;
      if (bc.mask != nullptr) {
        n = 0;
        for (int32_t i = 0; i < positions; ++i) n += MaskBit(bc.mask, i * channels + c);
      }
      acc = n * g[c];
    } else if (narrow) {
#if TMT_CORE_USE_DSP
      if (c < quads) {
        if ((c & 3) == 0) ColumnSums4(g + c, positions, channels, sums);
        acc = sums[c & 3];
      } else
#endif
      {
        int32_t a = 0;
        const int8_t* gp = g + c;
        for (int32_t i = 0; i < positions; ++i, gp += channels) a += *gp;
        acc = a;
      }
    } else {
      for (int32_t i = 0; i < positions; ++i) acc += g[i * channels + c];
    }
    const ChannelStep up(lr_s, bfactor[c], base);
    b[c] = up.Bias(b[c], Sat32(acc), static_cast<uint32_t>(c));
  }
  return Status::kOk;
}

}  // namespace

Status BiasUpdate(const int8_t* g, float s, int32_t positions, int32_t channels, int32_t* b,
                  const float* bfactor, float lr, const UpdateParams& p, uint32_t counter,
                  const GradBroadcast& bcast) {
  return BiasUpdateOf(g, s, positions, channels, b, bfactor, lr, p, counter, bcast);
}

Status BiasUpdate(const int8_t* g, float s, int32_t positions, int32_t channels, int16_t* b,
                  const float* bfactor, float lr, const UpdateParams& p, uint32_t counter,
                  const GradBroadcast& bcast) {
  return BiasUpdateOf(g, s, positions, channels, b, bfactor, lr, p, counter, bcast);
}

float BroadcastScale(float s, int32_t h, int32_t w) {
  const float inv = 1.0f / static_cast<float>(h * w);  // TMT_MEAN_GRAD's inv_count
  return s * inv;
}

}  // namespace core
}  // namespace tfmicro_train
