// TFLite Micro's reference int8 arithmetic and convolution loops, shared by the forward ops
// TMT_FUSED_IRB (fused_irb.cc) and TMT_CONV (conv_op.cc).
//
// Every function computes bit for bit what TFLM's reference kernels compute
// (reference_integer_ops::ConvPerChannel, DepthwiseConvPerChannel, FullyConnectedPerChannel,
// kernel_util's QuantizeMultiplier / CalculateActivationRangeQuantized, padding.h): int32
// accumulators (wrapping), per-channel MultiplyByQuantizedMultiplier (double-rounding variant:
// SaturatingRoundingDoublingHighMul then RoundingDivideByPOT), multipliers from float scales by
// double-precision QuantizeMultiplier. The numpy twin is tfmicro_train/kernels/builtin_ops.py.
//
// Portable C++17, header only: no TFLM, no heap, no exceptions, no RTTI.
#ifndef TFLM_OPS_CORE_TFLM_REFERENCE_H_
#define TFLM_OPS_CORE_TFLM_REFERENCE_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// Cortex-M4/M7 DSP extension (SXTB16 / SXTAB16 / SMLAD / SMLAxy / SMMULR / SMMLAR / SSAT via
// arm_acle.h or inline asm) for the convolutions' dot products, the depthwise taps and the
// requantization (PairLanes, DepthwiseTapsGrid, RequantizeRun, ...), unless built with
// -DTMT_PORTABLE_ONLY; bit-exact either way.
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP && !defined(TMT_PORTABLE_ONLY)
#include <arm_acle.h>
#define TMT_REFERENCE_DSP 1
#else
#define TMT_REFERENCE_DSP 0
#endif

namespace tfmicro_train {
namespace core {

// TFLite's ActivationFunctionType and Padding values (as in the builtin options).
enum FusedActivation : int32_t { kActNone = 0, kActRelu = 1, kActReluN1To1 = 2, kActRelu6 = 3 };
enum FusedPadding : int32_t { kPaddingSame = 0, kPaddingValid = 1 };

// Quantization of one int8 tensor (float32 scale, as in the flatbuffer).
struct TensorQuant {
  float scale = 1.0f;
  int32_t zero_point = 0;
};

// Geometry of a convolution as in its builtin options.
struct ConvSpec {
  int32_t kh = 1;
  int32_t kw = 1;
  int32_t stride_h = 1;
  int32_t stride_w = 1;
  int32_t dil_h = 1;
  int32_t dil_w = 1;
  int32_t padding = kPaddingValid;
  int32_t act = kActNone;
};

// Per-channel (n == channels) or per-tensor (n == 1) weight scales.
struct WeightScales {
  const float* scales = nullptr;
  int32_t n = 0;
};

// One requantization stage: per-channel multipliers, output offset, activation clamp.
struct Requant {
  const int32_t* multiplier = nullptr;  // [channels]
  const int32_t* shift = nullptr;       // [channels]
  int32_t output_offset = 0;
  int32_t act_min = -128;
  int32_t act_max = 127;
  // Set by tflm_ref::WithFastPath: every shift in [-31, -1] and every accumulator under 2^30 in
  // magnitude, so (with the DSP extension) Requantize takes the SMMULR path without checking.
  bool fast = false;
  // Set by WithFastPath with `fast` when also every multiplier is >= 0 and every
  // |(2 * output_offset + 1) << (-shift - 1)| < 2^30: RequantizeRun's SMMLAR path (DSP builds).
  bool folded = false;
};

namespace tflm_ref {

constexpr int32_t kQMin = -128;
constexpr int32_t kQMax = 127;

// Two's-complement wrap to int32 (TFLM's int32 accumulators wrap in practice).
inline int32_t Wrap32(int64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(v)); }

// gemmlowp SaturatingRoundingDoublingHighMul: (ab + nudge) / 2^31 truncated toward zero, nudge
// 2^30 (ab >= 0) or 1 - 2^30 (ab < 0). Both cases equal floor((ab + 2^30) / 2^31), one
// arithmetic shift: for ab < 0, v = ab + 1 - 2^30 < 0 and trunc(v / 2^31) = floor((v + 2^31 - 1)
// / 2^31) = floor((ab + 2^30) / 2^31). (|ab| <= 2^62: no int64 overflow.)
inline int32_t Srdhm(int32_t a, int32_t b) {
  const bool overflow = a == b && a == INT32_MIN;
  const int64_t ab = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  const int32_t high = static_cast<int32_t>((ab + (int64_t{1} << 30)) >> 31);
  return overflow ? INT32_MAX : high;
}

// gemmlowp RoundingDivideByPOT, exponent in [0, 31] (mask, remainder and threshold as unsigned
// values: the same numbers, all in [0, 2^31)).
inline int32_t RoundingDivideByPot(int32_t x, int exponent) {
  const uint32_t mask = (uint32_t{1} << exponent) - 1u;
  const uint32_t remainder = static_cast<uint32_t>(x) & mask;
  const uint32_t threshold = (mask >> 1) + (static_cast<uint32_t>(x) >> 31);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

// TFLM MultiplyByQuantizedMultiplier (double-rounding variant): RoundingDivideByPot(Srdhm(x <<
// left, multiplier), right), shift = left or -right. For a right shift e >= 1 both roundings are
// done in one 64-bit sum: with P = x * multiplier + 2^30, Srdhm = h = floor(P / 2^31), and
// RoundingDivideByPot(h, e) = floor((h + 2^(e-1) - [h < 0]) / 2^e) (the remainder h mod 2^e
// exceeds the threshold 2^(e-1) - 1 + [h < 0] exactly when adding 2^(e-1) - [h < 0] carries),
// so by floor((floor(P / A) + k) / B) = floor((P + k A) / (A B)) and [h < 0] = [P < 0] the
// result is the high word of P + (2^(e-1) - [P < 0]) * 2^31, shifted right by e - 1.
// (|P| < 2^62 + 2^30: no int64 overflow; Srdhm's one saturating case keeps its own path.)
// tflm_ops/tests/multiplier_test.cc checks it against TFLM's formulation.
#if TMT_REFERENCE_DSP
// MultiplyByQuantizedMultiplier(x, multiplier, -e) for e in [1, 31] and |x| < 2^30 (below).
inline int32_t SmallRightShift(int32_t x, int32_t multiplier, int32_t e) {
  int32_t h;
  __asm__("smmulr %0, %1, %2" : "=r"(h) : "r"(x * 2), "r"(multiplier));
  return (h + (int32_t{1} << (e - 1)) - static_cast<int32_t>(static_cast<uint32_t>(h) >> 31)) >> e;
}
#endif

inline int32_t MultiplyByQuantizedMultiplier(int32_t x, int32_t multiplier, int32_t shift) {
#if TMT_REFERENCE_DSP
  // The common case of a convolution's requantization, a right shift of an accumulator with
  // |x| < 2^30, in a few instructions: SMMULR(2x, m) = floor((2xm + 2^31) / 2^32) = Srdhm(x, m)
  // (2x fits int32; Srdhm's saturating case needs x = INT32_MIN), and |h| < 2^30 for any m, so
  // the rounding division's h + 2^(e-1) - [h < 0] fits int32 (RoundingDivideByPot as below).
  if (shift < 0 &&
      static_cast<uint32_t>(x) + ((uint32_t{1} << 30) - 1u) < (uint32_t{1} << 31) - 1u) {
    return SmallRightShift(x, multiplier, -shift);
  }
  // A left shift s in [0, 30] (no division after it) of an x with |x << s| < 2^30, the
  // depthwise's usual case: Srdhm(x << s, m) = SMMULR(x << (s + 1), m) as above; the check is
  // that x << (s + 1) shifted back gives x (it fits int32).
  if (static_cast<uint32_t>(shift) <= 30u) {
    const int32_t a = static_cast<int32_t>(static_cast<uint32_t>(x) << (shift + 1));
    if ((a >> (shift + 1)) == x) {
      int32_t h;
      __asm__("smmulr %0, %1, %2" : "=r"(h) : "r"(a), "r"(multiplier));
      return h;
    }
  }
#endif
  if (shift > 0) {  // nothing to divide after a left shift (RoundingDivideByPot by 2^0)
    const int32_t shifted =
        shift >= 32 ? 0 : static_cast<int32_t>(static_cast<uint32_t>(x) << shift);
    return Srdhm(shifted, multiplier);
  }
  const int32_t e = -shift;
  if (e == 0 || (x == INT32_MIN && multiplier == INT32_MIN)) {
    return RoundingDivideByPot(Srdhm(x, multiplier), e);
  }
  const int64_t p = static_cast<int64_t>(x) * multiplier + (int64_t{1} << 30);
  const int32_t k = (int32_t{1} << (e - 1)) - (p < 0 ? 1 : 0);
  const int64_t q = p + static_cast<int64_t>(k) * (int64_t{1} << 31);
  return static_cast<int32_t>(q >> 32) >> (e - 1);
}

// QuantizeMultiplier's last steps: a significand rounded up to 2^31 becomes 2^30 with the
// exponent one higher, and an exponent below -31 gives (0, 0).
inline void StoreMultiplier(int64_t q_fixed, int32_t exp, int32_t* multiplier, int32_t* shift) {
  if (q_fixed == (int64_t{1} << 31)) {
    q_fixed /= 2;
    ++exp;
  }
  if (exp < -31) {
    exp = 0;
    q_fixed = 0;
  }
  *multiplier = static_cast<int32_t>(q_fixed);
  *shift = exp;
}

// TFLM QuantizeMultiplier (double). False for a non-finite or negative multiplier.
// A normal double is mant * 2^(e - 1075) with mant in [2^52, 2^53): frexp gives
// q = mant / 2^53, exp = e - 1022, and round(q * 2^31) = (mant + 2^21) >> 22 exactly (round half
// away from zero of a positive value), so normal inputs are decoded from the bits (no soft-float
// frexp / multiply / round on FPU-less targets); zero and subnormals take the libm path.
inline bool QuantizeMultiplier(double real, int32_t* multiplier, int32_t* shift) {
  if (!std::isfinite(real) || real < 0) return false;
  if (real == 0.0) {
    *multiplier = 0;
    *shift = 0;
    return true;
  }
  uint64_t bits = 0;
  std::memcpy(&bits, &real, sizeof bits);
  const int32_t e_field = static_cast<int32_t>((bits >> 52) & 0x7FF);
  int exp = 0;
  int64_t q_fixed = 0;
  if (e_field != 0) {
    const uint64_t mant = (bits & ((uint64_t{1} << 52) - 1)) | (uint64_t{1} << 52);
    q_fixed = static_cast<int64_t>((mant + (uint64_t{1} << 21)) >> 22);
    exp = e_field - 1022;
  } else {
    const double q = std::frexp(real, &exp);
    q_fixed = static_cast<int64_t>(std::round(q * static_cast<double>(int64_t{1} << 31)));
  }
  StoreMultiplier(q_fixed, exp, multiplier, shift);
  return true;
}

// std::isfinite(s) && s > 0.0f, from the bits (no soft-float compares): sign clear, exponent
// not all ones, not +0.
inline bool ValidScale(float s) {
  uint32_t u = 0;
  std::memcpy(&u, &s, 4);
  return (u >> 31) == 0 && (u >> 23) != 0xFFu && u != 0;
}
inline bool ValidZp(int32_t zp) { return zp >= kQMin && zp <= kQMax; }
inline bool ValidQuant(const TensorQuant& q) { return ValidScale(q.scale) && ValidZp(q.zero_point); }

// kernel_util CalculateActivationRangeQuantized for an int8 output. False for an unsupported
// activation or a bound that does not fit (absurd scales).
inline bool ActivationRange(int32_t act, const TensorQuant& q, int32_t* lo, int32_t* hi) {
  auto quantize = [&q](float f, int64_t* out) {
    const float r = std::round(f / q.scale);  // float32 division and rounding, as TFLM
    if (!(std::fabs(r) < 4.0e18f)) return false;
    *out = q.zero_point + static_cast<int64_t>(r);
    return true;
  };
  int64_t a = kQMin, b = kQMax, v = 0;
  switch (act) {
    case kActNone:
      break;
    case kActRelu:
      if (!quantize(0.0f, &v)) return false;
      a = v > kQMin ? v : kQMin;
      break;
    case kActRelu6:
      if (!quantize(0.0f, &v)) return false;
      a = v > kQMin ? v : kQMin;
      if (!quantize(6.0f, &v)) return false;
      b = v < kQMax ? v : kQMax;
      break;
    case kActReluN1To1:
      if (!quantize(-1.0f, &v)) return false;
      a = v > kQMin ? v : kQMin;
      if (!quantize(1.0f, &v)) return false;
      b = v < kQMax ? v : kQMax;
      break;
    default:
      return false;
  }
  *lo = static_cast<int32_t>(a);
  *hi = static_cast<int32_t>(b);
  return true;
}

// TFLite ComputeOutSize.
inline int32_t OutSize(int32_t padding, int32_t in, int32_t filt, int32_t stride, int32_t dil) {
  const int32_t eff = (filt - 1) * dil + 1;
  if (padding == kPaddingSame) return (in + stride - 1) / stride;
  const int32_t n = in + stride - eff;
  return n < 0 ? -1 : n / stride;  // negative: no valid output (Prepare rejects it)
}

// TFLite ComputePaddingWithOffset (leading padding only).
inline int32_t LeadingPad(int32_t stride, int32_t dil, int32_t in, int32_t filt, int32_t out) {
  const int32_t eff = (filt - 1) * dil + 1;
  int32_t total = (out - 1) * stride + eff - in;
  total = total > 0 ? total : 0;
  return total / 2;
}

inline bool ValidConv(const ConvSpec& s) {
  return s.kh >= 1 && s.kw >= 1 && s.stride_h >= 1 && s.stride_w >= 1 && s.dil_h >= 1 &&
         s.dil_w >= 1 && (s.padding == kPaddingSame || s.padding == kPaddingValid);
}

// QuantizeMultiplier(double(a) * double(b) / double(c)) for normal positive floats a, b, c,
// in integer arithmetic (no soft-float division on FPU-less targets; false, computing nothing,
// when any is not a positive normal float). a * b is exact in double (48-bit significand
// product P); the quotient P / mc (mc = c's 24-bit significand) is formed by long division
// (P's top 24 bits, then 8-bit digits: remainders < 2^24, so each step fits a 32-bit division)
// to 32 fraction bits plus a sticky bit, rounded to 53 bits to nearest-even (the double division), and the
// significand then decoded as QuantizeMultiplier does.
inline bool ScaleRatioMultiplier(float a, float b, float c, int32_t* multiplier, int32_t* shift) {
  uint32_t ua = 0, ub = 0, uc = 0;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  std::memcpy(&uc, &c, 4);
  const int32_t ea = static_cast<int32_t>(ua >> 23), eb = static_cast<int32_t>(ub >> 23),
                ec = static_cast<int32_t>(uc >> 23);  // sign bit 0 for positive values
  if (ea < 1 || ea > 254 || eb < 1 || eb > 254 || ec < 1 || ec > 254) return false;
  const uint64_t ma = (ua & 0x7FFFFFu) | 0x800000u, mb = (ub & 0x7FFFFFu) | 0x800000u;
  const uint32_t mc = (uc & 0x7FFFFFu) | 0x800000u;
  const uint64_t prod = ma * mb;  // [2^46, 2^48)
  // t = floor(prod * 2^32 / mc) in [2^54, 2^57): the top 24 bits of prod, then 8-bit digits
  // (3 more of prod, 4 zero digits) from the top
  const uint32_t top = static_cast<uint32_t>(prod >> 24);
  const uint32_t rest = static_cast<uint32_t>(prod) & 0xFFFFFFu;
  uint64_t t = top / mc;
  uint32_t rem = top % mc;
  auto digit = [&](uint32_t dg) {
    const uint32_t n = (rem << 8) | dg;  // rem < mc < 2^24
    t = (t << 8) | (n / mc);
    rem = n % mc;
  };
  digit(rest >> 16);
  digit((rest >> 8) & 0xFFu);
  digit(rest & 0xFFu);
  for (int32_t i = 0; i < 4; ++i) digit(0);
  const bool sticky = rem != 0;
  // bits to drop to keep 53: 2..4 (t in [2^54, 2^57))
  const int32_t d = 2 + (t >= (uint64_t{1} << 55) ? 1 : 0) + (t >= (uint64_t{1} << 56) ? 1 : 0);
  const uint64_t low = t & ((uint64_t{1} << d) - 1), half = uint64_t{1} << (d - 1);
  uint64_t m53 = t >> d;
  if (low > half || (low == half && (sticky || (m53 & 1)))) ++m53;
  // value = t * 2^-32 * 2^(ea + eb - ec - 150 - 23 + ...): a * b / c with a = ma * 2^(ea - 150)
  int32_t exp = 53 + d - 32 + (ea - 150) + (eb - 150) - (ec - 150);
  if (m53 == (uint64_t{1} << 53)) {
    m53 >>= 1;
    ++exp;
  }
  int64_t q_fixed = static_cast<int64_t>((m53 + (uint64_t{1} << 21)) >> 22);
  StoreMultiplier(q_fixed, exp, multiplier, shift);
  return true;
}

// PopulateConvolutionQuantizationParams: per-channel multipliers in double precision
// (ScaleRatioMultiplier computes the same in integers for normal scales).
inline bool ChannelMultipliers(float in_scale, const WeightScales& w, float out_scale,
                               int32_t channels, int32_t* mult, int32_t* shift) {
  if (w.scales == nullptr || (w.n != 1 && w.n != channels)) return false;
  for (int32_t c = 0; c < channels; ++c) {
    const float ws = w.n == 1 ? w.scales[0] : w.scales[c];
    if (!ValidScale(ws)) return false;
    if (ScaleRatioMultiplier(in_scale, ws, out_scale, &mult[c], &shift[c])) continue;
    const double real =
        static_cast<double>(in_scale) * static_cast<double>(ws) / static_cast<double>(out_scale);
    if (!QuantizeMultiplier(real, &mult[c], &shift[c])) return false;
  }
  return true;
}

// (always inlined: as a call its int64 argument and the Requant fields cost more than its body)
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline int8_t Requantize(int64_t acc, const Requant& rq, int32_t c) {
  int32_t v;
#if TMT_REFERENCE_DSP
  if (rq.fast) {  // (WithFastPath: the conditions of MultiplyByQuantizedMultiplier's first path)
    v = SmallRightShift(Wrap32(acc), rq.multiplier[c], -rq.shift[c]);
  } else {
    v = MultiplyByQuantizedMultiplier(Wrap32(acc), rq.multiplier[c], rq.shift[c]);
  }
#else
  v = MultiplyByQuantizedMultiplier(Wrap32(acc), rq.multiplier[c], rq.shift[c]);
#endif
  v += rq.output_offset;
  v = v < rq.act_min ? rq.act_min : v;
  v = v > rq.act_max ? rq.act_max : v;
  return static_cast<int8_t>(v);
}

#if TMT_REFERENCE_DSP
// SMMLAR: r + SMMULR(a, b), modulo 2^32.
inline int32_t Smmlar(int32_t a, int32_t b, int32_t r) {
  int32_t v;
  __asm__("smmlar %0, %1, %2, %3" : "=r"(v) : "r"(a), "r"(b), "r"(r));
  return v;
}

// SSAT #8 of v >> 1 (arithmetic): SSAT's operand shift.
inline int32_t Ssat8Half(int32_t v) {
  int32_t r;
  __asm__("ssat %0, #8, %1, asr #1" : "=r"(r) : "r"(v));
  return r;
}

// a = p[0], b = p[1] by one LDRD (p 4-byte aligned, as int32_t), p advanced past them.
inline void Load2(const int32_t** p, int32_t* a, int32_t* b) {
  __asm__("ldrd %0, %1, [%2], #8"
          : "=r"(*a), "=r"(*b), "+r"(*p)
          : "m"(*reinterpret_cast<const int32_t(*)[2]>(*p)));
}

// p[0] = a, p[1] = b (int8), p advanced past them (two post-indexed STRB).
inline void Store2(int8_t** p, int32_t a, int32_t b) {
  __asm__("strb %3, [%0, #1]\n\tstrb %2, [%0], #2"
          : "+r"(*p), "=m"(*reinterpret_cast<int8_t(*)[2]>(*p))
          : "r"(a), "r"(b));
}

// Requantize(x, rq, c) for rq.folded before its clamp, as SSAT's operand: the value t with
// (t >> 1) = SmallRightShift(x, m, e) + off, given x2 = 2x, e1 = e - 1 = ~shift and
// r = (2 off + 1) << e1 (per channel; the caller clamps Ssat8Half(t), or t >> 1).
//   SmallRightShift + off = ((h + 2^(e-1) - [h < 0]) >> e) + off, h = SMMULR(2x, m),
//                         = (h + r - [h < 0]) >> e       (off * 2^e added before the shift),
//                         = (SMMLAR(2x, m, r) + (2x >> 31)) >> e1 >> 1.
// SMMLAR is exact: h is in [-2^30, 2^30) (|x| < 2^30, 0 <= m < 2^31: |2xm| < 2^62 - 2^32) and
// |r| < 2^30, so h + r and h + r - 1 fit int32. [h < 0] = [x < 0] = -(2x >> 31) (m >= 0: h has
// x's sign or is 0) except for x < 0 with h = 0, where (r - 1) >> e = r >> e = off (0 <=
// 2^(e-1) - 1 < 2^e).
inline int32_t FoldedRequant(int32_t x2, int32_t m, int32_t r, int32_t e1) {
  return (Smmlar(x2, m, r) + (x2 >> 31)) >> e1;
}

// RequantizeRuns for rq.folded (below), kFull: the clamp is the whole int8 range (SSAT alone).
template <bool kTwo, bool kFull>
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline void FoldedRuns(const int32_t* acc0, const int32_t* acc1, int32_t n, const Requant& rq,
                       int32_t c0, int8_t* out0, int8_t* out1) {
  const int32_t* m = rq.multiplier + c0;
  const int32_t* s = rq.shift + c0;
  const int32_t k_odd = 2 * rq.output_offset + 1;
  const int32_t lo = rq.act_min, hi = rq.act_max;
  // (the lambdas always inlined: GCC may otherwise call them, in a unit with more callers)
  auto clamp = [lo, hi](int32_t t) __attribute__((always_inline)) {
    int32_t v = Ssat8Half(t);
    if constexpr (!kFull) {
      v = v < lo ? lo : v;
      v = v > hi ? hi : v;
    }
    return v;
  };
  // two channels per iteration, each array read by one LDRD (GCC's own unrolling indexes every
  // array separately); the channels' shifts and rounding terms serve both pixels with kTwo
  const int32_t* const end2 = acc0 + (n & ~1);
  while (acc0 != end2) {
    int32_t s0, s1, m0, m1;
    Load2(&s, &s0, &s1);
    Load2(&m, &m0, &m1);
    const int32_t e0 = ~s0, e1 = ~s1;
    const int32_t r0 = static_cast<int32_t>(static_cast<uint32_t>(k_odd) << e0);
    const int32_t r1 = static_cast<int32_t>(static_cast<uint32_t>(k_odd) << e1);
    auto pixel = [&](const int32_t** acc, int8_t** out) __attribute__((always_inline)) {
      int32_t a0, a1;
      Load2(acc, &a0, &a1);
      Store2(out, clamp(FoldedRequant(a0 * 2, m0, r0, e0)),
             clamp(FoldedRequant(a1 * 2, m1, r1, e1)));
    };
    pixel(&acc0, &out0);
    if constexpr (kTwo) pixel(&acc1, &out1);
  }
  if (n & 1) {  // an odd n's last channel
    const int32_t e1 = ~*s;
    const int32_t r = static_cast<int32_t>(static_cast<uint32_t>(k_odd) << e1);
    const int32_t mk = *m;  // (loaded before the int8 stores, which may alias it)
    *out0 = static_cast<int8_t>(clamp(FoldedRequant(*acc0 * 2, mk, r, e1)));
    if constexpr (kTwo) *out1 = static_cast<int8_t>(clamp(FoldedRequant(*acc1 * 2, mk, r, e1)));
  }
}
#endif

// out0[k] = Requantize(acc0[k], rq, c0 + k) for k < n, and with kTwo the same of acc1 into out1
// (two pixels, the same channels), as one loop: with rq.folded (DSP builds) the fields stay in
// registers, a channel's shift and rounding term serve both pixels, and a clamp to the whole
// int8 range is one SSAT.
template <bool kTwo>
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline void RequantizeRuns(const int32_t* acc0, const int32_t* acc1, int32_t n, const Requant& rq,
                           int32_t c0, int8_t* out0, int8_t* out1) {
#if TMT_REFERENCE_DSP
  if (rq.folded) {
    if (rq.act_min == kQMin && rq.act_max == kQMax) {
      FoldedRuns<kTwo, true>(acc0, acc1, n, rq, c0, out0, out1);
    } else {
      FoldedRuns<kTwo, false>(acc0, acc1, n, rq, c0, out0, out1);
    }
    return;
  }
  if constexpr (kTwo) {  // (otherwise one pixel after the other)
    RequantizeRuns<false>(acc0, nullptr, n, rq, c0, out0, nullptr);
    RequantizeRuns<false>(acc1, nullptr, n, rq, c0, out1, nullptr);
    return;
  }
  if (rq.fast) {
    const int32_t* m = rq.multiplier + c0;
    const int32_t* s = rq.shift + c0;
    const int32_t off = rq.output_offset;
    if (rq.act_min == kQMin && rq.act_max == kQMax) {
      for (int32_t k = 0; k < n; ++k) {
        out0[k] = static_cast<int8_t>(__ssat(SmallRightShift(acc0[k], m[k], -s[k]) + off, 8));
      }
      return;
    }
    const int32_t lo = rq.act_min, hi = rq.act_max;
    for (int32_t k = 0; k < n; ++k) {
      int32_t v = SmallRightShift(acc0[k], m[k], -s[k]) + off;
      v = v < lo ? lo : v;
      v = v > hi ? hi : v;
      out0[k] = static_cast<int8_t>(v);
    }
    return;
  }
#endif
  for (int32_t k = 0; k < n; ++k) out0[k] = Requantize(acc0[k], rq, c0 + k);
  if constexpr (kTwo) {
    for (int32_t k = 0; k < n; ++k) out1[k] = Requantize(acc1[k], rq, c0 + k);
  }
}

// out[k] = Requantize(acc[k], rq, c0 + k) for k < n (RequantizeRuns of one pixel).
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline void RequantizeRun(const int32_t* acc, int32_t n, const Requant& rq, int32_t c0,
                          int8_t* out) {
  RequantizeRuns<false>(acc, nullptr, n, rq, c0, out, nullptr);
}

// rq with `fast` set when its channels [0, channels) all have a right shift (shift in [-31, -1])
// and every accumulator is under 2^30 in magnitude: a sum of `window` terms (x + offset) * w
// (|x + offset| <= 255, |w| <= 128) plus the bias b[c] (b null: none), |b[c]| + window * 32640
// < 2^30. Then Requantize skips MultiplyByQuantizedMultiplier's checks (the same results).
inline Requant WithFastPath(Requant rq, int32_t channels, int64_t window, const int32_t* b) {
  rq.fast = false;
  rq.folded = false;
  const int64_t kLimit = int64_t{1} << 30;
  const int64_t terms = window * 32640;
  if (rq.multiplier == nullptr || rq.shift == nullptr || window < 0 || terms >= kLimit) return rq;
  for (int32_t c = 0; c < channels; ++c) {
    const int64_t bias = b ? b[c] : 0;
    if (rq.shift[c] > -1 || rq.shift[c] < -31 || (bias < 0 ? -bias : bias) + terms >= kLimit) {
      return rq;
    }
  }
  rq.fast = true;
  // folded: RequantizeRuns' SMMLAR path (FoldedRequant: m >= 0, |(2 off + 1) << (e - 1)| < 2^30)
  const int64_t k_odd = 2 * int64_t{rq.output_offset} + 1;
  for (int32_t c = 0; c < channels; ++c) {
    const int64_t r = k_odd * (int64_t{1} << (-rq.shift[c] - 1));
    if (rq.multiplier[c] < 0 || r >= kLimit || r <= -kLimit) return rq;
  }
  rq.folded = true;
  return rq;
}

// ------------------------------------------------------------------ convolution loops

// A (non-grouped) convolution with precomputed padding, as reference_integer_ops::ConvPerChannel.
struct ConvLoop {
  int32_t in_h = 1, in_w = 1, in_c = 1;  // input dims (batch 1)
  int32_t out_w = 1, out_c = 1;          // output row width and channels
  int32_t out_stride = 0;  // int8 between output pixels (0: out_c; a channel chunk of a wider y)
  int32_t kh = 1, kw = 1, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  int32_t pad_top = 0, pad_left = 0;
  int32_t in_offset = 0;  // -input zero point
  Requant rq;
};

#if TMT_REFERENCE_DSP
// SXTB16 of bytes 1 and 3 (GCC's arm_acle.h does not fuse the rotation into SXTB16).
inline int32_t Sxtb16Odd(int32_t v) {
  int32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}

// v (|v| < 2^15) in both int16 lanes: the SADD16 / SMLAxy operand of an offset or a constant.
inline int32_t Dup16(int32_t v) {
  return static_cast<int32_t>((static_cast<uint32_t>(v) & 0xFFFFu) * 0x10001u);
}

// The 4 int8 of `word` as int16 lanes plus the lanes of off2 (Dup16 of the input offset; the
// sums fit a lane): bytes 0 and 2 into *even, 1 and 3 into *odd. Two instructions: SXTAB16 adds
// the sign-extended bytes to off2's lanes, lane by lane (no carry between lanes), as SXTB16 then
// SADD16 would.
inline void SplitOffset(int32_t word, int32_t off2, int32_t* even, int32_t* odd) {
  int32_t r;
  __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(off2), "r"(word));
  *even = __sxtab16(off2, word);
  *odd = r;
}

// One tap of 4 depthwise channels: the input word v (offset added by SXTAB16) times the weight
// word wv, lane by lane into a0..a3 (channels c..c+3; SMLAxy's 32-bit sums wrap). Always inlined
// (the accumulators stay in registers).
__attribute__((always_inline)) inline void DepthwiseTap4(int32_t v, int32_t wv, int32_t off2,
                                                         int32_t* a0, int32_t* a1, int32_t* a2,
                                                         int32_t* a3) {
  int32_t v02, v13;
  SplitOffset(v, off2, &v02, &v13);
  const int32_t w02 = __sxtb16(wv), w13 = Sxtb16Odd(wv);
  *a0 = __smlabb(v02, w02, *a0);
  *a2 = __smlatt(v02, w02, *a2);
  *a1 = __smlabb(v13, w13, *a1);
  *a3 = __smlatt(v13, w13, *a3);
}

// The int16 lanes (plus off2's) of bytes kOdd and kOdd + 2 of the word at p: channels kOdd and
// kOdd + 2 of a pixel (one SXTAB16).
template <int kOdd>
__attribute__((always_inline)) inline int32_t LoadLanes(const int8_t* p, int32_t off2) {
  int32_t v;
  std::memcpy(&v, p, 4);
  if constexpr (kOdd == 0) return __sxtab16(off2, v);
  int32_t r;
  __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(off2), "r"(v));
  return r;
}

// p, opaque to GCC (no instruction): loads through it are not merged with loads through p.
template <typename T>
__attribute__((always_inline)) inline T* Opaque(T* p) {
  __asm__ volatile("" : "+r"(p));
  return p;
}

// DepthwiseRow<3> of two output pixels, channels kOdd and kOdd + 2 (the int16 lanes of one
// SXTAB16 / SXTB16; all four channels would take 8 accumulators, and GCC then spills the sums
// and the pointers in every tap): pixel 0's inputs at p + k step into a[0], a[1], pixel 1's at
// p + next + k step into a[2], a[3], weights at wr + k w_stride. A tap's weight lanes are
// loaded and split once for both pixels; with kShared (next == step: stride 1, dilation 1)
// pixel 1's tap k is pixel 0's tap k + 1, so its input lanes are reused too (4 input words per
// row, not 6).
template <int kOdd, bool kShared>
__attribute__((always_inline)) inline void DepthwiseRowPair(const int8_t* p, int32_t step,
                                                            int32_t next, const int8_t* wr,
                                                            int32_t w_stride, int32_t off2,
                                                            int32_t* a) {
  int32_t x = LoadLanes<kOdd>(p, off2);
#pragma GCC unroll 3
  for (int32_t k = 0; k < 3; ++k) {
    int32_t wv;
    std::memcpy(&wv, wr + k * w_stride, 4);
    const int32_t wl = kOdd == 0 ? __sxtb16(wv) : Sxtb16Odd(wv);
    a[0] = __smlabb(x, wl, a[0]);
    a[1] = __smlatt(x, wl, a[1]);
    const int32_t y = LoadLanes<kOdd>(p + (kShared ? (k + 1) * step : next + k * step), off2);
    a[2] = __smlabb(y, wl, a[2]);
    a[3] = __smlatt(y, wl, a[3]);
    if (k < 2) x = kShared ? y : LoadLanes<kOdd>(p + (k + 1) * step, off2);
  }
}

// The kCols (1 to 3) taps of a window row of 4 depthwise channels: inputs at p + k step, weights
// at wr + k w_stride (written out: GCC -O2 keeps a loop of 3 trips, and its counter).
template <int kCols>
__attribute__((always_inline)) inline void DepthwiseRow(const int8_t* p, int32_t step,
                                                        const int8_t* wr, int32_t w_stride,
                                                        int32_t off2, int32_t* a0, int32_t* a1,
                                                        int32_t* a2, int32_t* a3) {
  int32_t v, wv;
  std::memcpy(&v, p, 4);
  std::memcpy(&wv, wr, 4);
  DepthwiseTap4(v, wv, off2, a0, a1, a2, a3);
  if constexpr (kCols > 1) {
    std::memcpy(&v, p + step, 4);
    std::memcpy(&wv, wr + w_stride, 4);
    DepthwiseTap4(v, wv, off2, a0, a1, a2, a3);
  }
  if constexpr (kCols > 2) {
    std::memcpy(&v, p + 2 * step, 4);
    std::memcpy(&wv, wr + 2 * w_stride, 4);
    DepthwiseTap4(v, wv, off2, a0, a1, a2, a3);
  }
}
#endif

// int32 (wrapping) sum of (in[c] + in_offset) * w[c], c < n: the int32 accumulator of the
// reference kernels (each product fits int32; the wrapped sum equals Wrap32 of the int64 sum).
// With the DSP extension four at a time: SXTB16 splits 4 bytes into 2 x 2 int16 lanes, SADD16
// adds the offset (|in + offset| <= 255 fits a lane), SMLAD accumulates two products (its 32-bit
// result wraps like the portable sum; the Q flag it may set is not read).
inline int32_t DotOffset(const int8_t* in, const int8_t* w, int32_t n, int32_t in_offset) {
  uint32_t acc = 0;
  int32_t c = 0;
#if TMT_REFERENCE_DSP
  const int32_t off2 = Dup16(in_offset);
  int32_t sacc = 0;
  for (; c + 4 <= n; c += 4) {
    int32_t a, b, a02, a13;
    std::memcpy(&a, in + c, 4);  // LDR: unaligned access is allowed on ARMv7-M
    std::memcpy(&b, w + c, 4);
    SplitOffset(a, off2, &a02, &a13);
    sacc = __smlad(a02, __sxtb16(b), sacc);
    sacc = __smlad(a13, Sxtb16Odd(b), sacc);
  }
  acc = static_cast<uint32_t>(sacc);
#endif
  for (; c < n; ++c) {
    acc += static_cast<uint32_t>((in[c] + in_offset) * w[c]);
  }
  return static_cast<int32_t>(acc);
}

// DotOffset(in, w0, n, in_offset) and DotOffset(in, w1, n, in_offset) together (two output
// channels of a 1x1 convolution): the same sums, the input's bytes split and offset once for both.
inline void DotOffset2(const int8_t* in, const int8_t* w0, const int8_t* w1, int32_t n,
                       int32_t in_offset, int32_t* out0, int32_t* out1) {
  uint32_t acc0 = 0, acc1 = 0;
  int32_t c = 0;
#if TMT_REFERENCE_DSP
  const int32_t off2 = Dup16(in_offset);
  int32_t s0 = 0, s1 = 0;
  for (; c + 4 <= n; c += 4) {
    int32_t a, b0, b1, a02, a13;
    std::memcpy(&a, in + c, 4);
    std::memcpy(&b0, w0 + c, 4);
    std::memcpy(&b1, w1 + c, 4);
    SplitOffset(a, off2, &a02, &a13);
    s0 = __smlad(a02, __sxtb16(b0), s0);
    s0 = __smlad(a13, Sxtb16Odd(b0), s0);
    s1 = __smlad(a02, __sxtb16(b1), s1);
    s1 = __smlad(a13, Sxtb16Odd(b1), s1);
  }
  acc0 = static_cast<uint32_t>(s0);
  acc1 = static_cast<uint32_t>(s1);
#endif
  for (; c < n; ++c) {
    const int32_t v = in[c] + in_offset;
    acc0 += static_cast<uint32_t>(v * w0[c]);
    acc1 += static_cast<uint32_t>(v * w1[c]);
  }
  *out0 = static_cast<int32_t>(acc0);
  *out1 = static_cast<int32_t>(acc1);
}

// One depthwise output pixel (reference DepthwiseConvPerChannel, multiplier 1) from its window's
// taps: in-image ones src[t] + src_offset (a [channels] pixel, weights at w + src_w[t], t < n_src;
// the offset lets the pixels of a row with the same window shape share one tap list) and
// explicit-PAD ones (value pad_in = pad value + in_offset, weights at w + pad_w[t], t < n_pad):
// out[c] = Requantize(b[c] + sum_t (src[t][c] + in_offset) * w[src_w[t] + c]
// + sum_t pad_in * w[pad_w[t] + c]), the reference's wrapping int32 sum (order-free). With the
// DSP extension four channels at a time: SXTAB16 (input plus offset) / SXTB16 into int16 lanes,
// SMLABB / SMLATT per lane (32-bit results wrap like the portable sum).
inline void DepthwiseTaps(const int8_t* const* src, const int32_t* src_w, int32_t n_src,
                          const int32_t* pad_w, int32_t n_pad, int32_t pad_in, const int8_t* w,
                          const int32_t* b, int32_t channels, int32_t in_offset,
                          const Requant& rq_in, int8_t* out, int32_t src_offset = 0) {
  const Requant rq = rq_in;  // a local copy, as in PointwisePixel
  int32_t c = 0;
#if TMT_REFERENCE_DSP
  const int32_t off2 = Dup16(in_offset);
  const int32_t pad2 = Dup16(pad_in);
  for (; c + 4 <= channels; c += 4) {
    int32_t a0 = b ? b[c] : 0, a1 = b ? b[c + 1] : 0;
    int32_t a2 = b ? b[c + 2] : 0, a3 = b ? b[c + 3] : 0;
    for (int32_t t = 0; t < n_src; ++t) {
      int32_t v, wv;
      std::memcpy(&v, src[t] + (src_offset + c), 4);
      std::memcpy(&wv, w + src_w[t] + c, 4);
      DepthwiseTap4(v, wv, off2, &a0, &a1, &a2, &a3);
    }
    for (int32_t t = 0; t < n_pad; ++t) {
      int32_t wv;
      std::memcpy(&wv, w + pad_w[t] + c, 4);
      const int32_t w02 = __sxtb16(wv), w13 = Sxtb16Odd(wv);
      a0 = __smlabb(pad2, w02, a0);
      a2 = __smlatt(pad2, w02, a2);
      a1 = __smlabb(pad2, w13, a1);
      a3 = __smlatt(pad2, w13, a3);
    }
    out[c] = Requantize(a0, rq, c);
    out[c + 1] = Requantize(a1, rq, c + 1);
    out[c + 2] = Requantize(a2, rq, c + 2);
    out[c + 3] = Requantize(a3, rq, c + 3);
  }
#endif
  for (; c < channels; ++c) {
    uint32_t acc = b ? static_cast<uint32_t>(b[c]) : 0u;
    for (int32_t t = 0; t < n_src; ++t) {
      acc += static_cast<uint32_t>((src[t][src_offset + c] + in_offset) * w[src_w[t] + c]);
    }
    for (int32_t t = 0; t < n_pad; ++t) {
      acc += static_cast<uint32_t>(pad_in * w[pad_w[t] + c]);
    }
    out[c] = Requantize(static_cast<int32_t>(acc), rq, c);
  }
}

// DepthwiseTapsGrid's channels [c, channels) one at a time (rows r0..r2 already shifted).
// Always inlined (out of line, its call in every DepthwiseTapsGrid pixel cost the fused op
// about 95 K instructions per step at 128x128 though it rarely has channels to do).
template <int kRows, int kCols>
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
inline void GridChannels(const int8_t* r0, const int8_t* r1, const int8_t* r2, int32_t step,
                         const int8_t* w, int32_t w_row, int32_t w_stride, const int32_t* b,
                         int32_t c, int32_t channels, int32_t in_offset, const Requant& rq,
                         int8_t* out) {
  const int8_t* const rr[3] = {r0, r1, r2};
  for (; c < channels; ++c) {
    uint32_t acc = b ? static_cast<uint32_t>(b[c]) : 0u;
    for (int32_t r = 0; r < kRows; ++r) {
      for (int32_t k = 0; k < kCols; ++k) {
        const int32_t v = rr[r][k * step + c] + in_offset;
        acc += static_cast<uint32_t>(v * w[r * w_row + k * w_stride + c]);
      }
    }
    out[c] = Requantize(static_cast<int32_t>(acc), rq, c);
  }
}

// DepthwiseTaps for a window whose taps in the image form a kRows x kCols grid (1 to 3 each)
// and whose other taps contribute nothing (skipped, or PAD taps of value pad_in = 0): grid row r
// starts at r_r + src_offset (its first tap's pixel, channel 0; the offset as in DepthwiseTaps;
// rows past kRows unused), column taps `step` bytes apart; tap (r, k) has weights at
// w + r * w_row + k * w_stride. The same wrapping sums as DepthwiseTaps with the grid's taps
// listed (the order does not matter): the tap addresses come from the row pointers instead of
// two loaded arrays, and the taps are unrolled (no tap count to reload).
template <int kRows, int kCols>
void DepthwiseTapsGrid(const int8_t* r0, const int8_t* r1, const int8_t* r2, int32_t step,
                       const int8_t* w, int32_t w_row, int32_t w_stride, const int32_t* b,
                       int32_t channels, int32_t in_offset, const Requant& rq_in, int8_t* out,
                       int32_t src_offset) {
  const Requant rq = rq_in;
  r0 += src_offset;
  r1 = kRows > 1 ? r1 + src_offset : r0;
  r2 = kRows > 2 ? r2 + src_offset : r0;
  int32_t c = 0;
#if TMT_REFERENCE_DSP
  const int32_t off2 = Dup16(in_offset);
  // the accumulators of up to 16 channels, then one RequantizeRun over them
  int32_t acc[16];
  while (c + 4 <= channels) {
    const int32_t c0 = c;
    int32_t j = 0;
    for (; j < 16 && c + 4 <= channels; j += 4, c += 4) {
      int32_t a0 = b ? b[c] : 0, a1 = b ? b[c + 1] : 0;
      int32_t a2 = b ? b[c + 2] : 0, a3 = b ? b[c + 3] : 0;
      const int8_t* wr = w + c;
      DepthwiseRow<kCols>(r0 + c, step, wr, w_stride, off2, &a0, &a1, &a2, &a3);
      if constexpr (kRows > 1) {
        wr += w_row;
        DepthwiseRow<kCols>(r1 + c, step, wr, w_stride, off2, &a0, &a1, &a2, &a3);
      }
      if constexpr (kRows > 2) {
        wr += w_row;
        DepthwiseRow<kCols>(r2 + c, step, wr, w_stride, off2, &a0, &a1, &a2, &a3);
      }
      acc[j] = a0;
      acc[j + 1] = a1;
      acc[j + 2] = a2;
      acc[j + 3] = a3;
    }
    RequantizeRun(acc, j, rq, c0, out + c0);
  }
#endif
  GridChannels<kRows, kCols>(r0, r1, r2, step, w, w_row, w_stride, b, c, channels, in_offset, rq,
                             out);
}

// DepthwiseTapsGrid for an n_rows x n_cols grid: false (nothing computed) for a shape without
// its own instance (the full 3x3 window, its 3x2 and 2x3 borders and 2x2 corners have one).
inline bool DepthwiseTapsRect(int32_t n_rows, int32_t n_cols, const int8_t* r0, const int8_t* r1,
                              const int8_t* r2, int32_t step, const int8_t* w, int32_t w_row,
                              int32_t w_stride, const int32_t* b, int32_t channels,
                              int32_t in_offset, const Requant& rq, int8_t* out,
                              int32_t src_offset = 0) {
  auto grid = n_rows == 3 ? (n_cols == 3 ? DepthwiseTapsGrid<3, 3>
                             : n_cols == 2 ? DepthwiseTapsGrid<3, 2> : nullptr)
            : n_rows == 2 ? (n_cols == 3 ? DepthwiseTapsGrid<2, 3>
                             : n_cols == 2 ? DepthwiseTapsGrid<2, 2> : nullptr)
                          : nullptr;
  if (grid == nullptr) return false;
  grid(r0, r1, r2, step, w, w_row, w_stride, b, channels, in_offset, rq, out, src_offset);
  return true;
}

#if TMT_REFERENCE_DSP
// DepthwiseTapsGridPair's 4-channel blocks from channel *c on (DepthwiseRowPair<kShared> per
// grid row), up to kPairRun channels of each pixel then one RequantizeRuns<true> (a channel's
// multiplier, shift and rounding term loaded once for both pixels); *c left at the first
// channel not done. kPairRun = 48 (384 B of accumulators): MobileNetV2-w0.35 at 128x128 on the
// M7, runs of 8 took 0.71 M instructions more per step, of 32 91 K more, of 72 16 K fewer
// (and 68 B more of the step's stack).
constexpr int32_t kPairRun = 48;

template <int kRows, bool kShared>
__attribute__((always_inline)) inline void GridPairBlocks(
    const int8_t* r0, const int8_t* r1, const int8_t* r2, int32_t step, int32_t next,
    const int8_t* w, int32_t w_row, int32_t w_stride, const int32_t* b, int32_t channels,
    int32_t off2, const Requant& rq, int8_t* out0, int8_t* out1, int32_t* c_io) {
  int32_t c = *c_io;
  int32_t acc0[kPairRun], acc1[kPairRun];
  while (c + 4 <= channels) {
    const int32_t c0 = c;
    int32_t j = 0;
    for (; j < kPairRun && c + 4 <= channels; j += 4, c += 4) {
      // channels c + kOdd and c + kOdd + 2 of both pixels (DepthwiseRowPair); the pointers
      // Opaque in each lane pass: GCC would otherwise load each word once for both passes and
      // keep the words on the stack (a store and a reload each instead of a second LDR)
      auto lanes = [&](auto odd) {
        constexpr int kOdd = decltype(odd)::value;
        const int8_t* const rows[3] = {Opaque(r0 + c), Opaque(r1 + c), Opaque(r2 + c)};
        const int8_t* wr = Opaque(w + c);
        int32_t a[4] = {0, 0, 0, 0};
        if (b) a[0] = a[2] = b[c + kOdd], a[1] = a[3] = b[c + kOdd + 2];
#pragma GCC unroll 3
        for (int32_t r = 0; r < kRows; ++r) {
          DepthwiseRowPair<kOdd, kShared>(rows[r], step, next, wr, w_stride, off2, a);
          // (Opaque: the weight row's taps at [wr], [wr, w_stride], [wr, w_stride, lsl #1],
          // instead of a stack slot per tap offset r * w_row + k * w_stride)
          wr = Opaque(wr + w_row);
        }
        acc0[j + kOdd] = a[0];
        acc0[j + kOdd + 2] = a[1];
        acc1[j + kOdd] = a[2];
        acc1[j + kOdd + 2] = a[3];
      };
      lanes(std::integral_constant<int, 0>());
      lanes(std::integral_constant<int, 1>());
    }
    RequantizeRuns<true>(acc0, acc1, j, rq, c0, out0 + c0, out1 + c0);
  }
  *c_io = c;
}
#endif

// DepthwiseTapsGrid<kRows, 3> of two output pixels of a row whose windows both have kRows x 3
// grids: pixel 0's rows at r_r (into out0), pixel 1's at r_r + next (into out1); the other
// arguments as there (no src_offset). The same sums and results as two DepthwiseTapsGrid
// calls; with the DSP extension the 4-channel blocks of both pixels together (GridPairBlocks).
template <int kRows>
void DepthwiseTapsGridPair(const int8_t* r0, const int8_t* r1, const int8_t* r2, int32_t step,
                           int32_t next, const int8_t* w, int32_t w_row, int32_t w_stride,
                           const int32_t* b, int32_t channels, int32_t in_offset,
                           const Requant& rq_in, int8_t* out0, int8_t* out1) {
  const Requant rq = rq_in;
  r1 = kRows > 1 ? r1 : r0;
  r2 = kRows > 2 ? r2 : r0;
  int32_t c = 0;
#if TMT_REFERENCE_DSP
  const int32_t off2 = Dup16(in_offset);
  if (next == step) {
    GridPairBlocks<kRows, true>(r0, r1, r2, step, next, w, w_row, w_stride, b, channels, off2,
                                rq, out0, out1, &c);
  } else {
    GridPairBlocks<kRows, false>(r0, r1, r2, step, next, w, w_row, w_stride, b, channels, off2,
                                 rq, out0, out1, &c);
  }
#endif
  GridChannels<kRows, 3>(r0, r1, r2, step, w, w_row, w_stride, b, c, channels, in_offset, rq,
                         out0);
  GridChannels<kRows, 3>(r0 + next, r1 + next, r2 + next, step, w, w_row, w_stride, b, c,
                         channels, in_offset, rq, out1);
}

// DotOffset(in, w + k * stride, n, in_offset) into out[k], k < 3 (three output channels of a 1x1
// convolution): the same sums, the input's bytes split and offset once for all three. Three, not
// four: with four weight rows GCC keeps the loop's pointers on the stack (ARMv7-M has 13
// general registers), and the loop is no cheaper per MAC (24 instructions per 12 MACs here,
// 18 per 8 for DotOffset2).
inline void DotOffset3(const int8_t* in, const int8_t* w, int32_t stride, int32_t n,
                       int32_t in_offset, int32_t* out) {
  const int8_t* w0 = w;
  const int8_t* w1 = w0 + stride;
  const int8_t* w2 = w1 + stride;
  uint32_t acc0 = 0, acc1 = 0, acc2 = 0;
  int32_t c = 0;
#if TMT_REFERENCE_DSP
  const int32_t off2 = Dup16(in_offset);
  int32_t s0 = 0, s1 = 0, s2 = 0;
  const int8_t* pi = in;
  const int8_t* p0 = w0;
  const int8_t* const end = in + (n & ~3);
  for (; pi != end; pi += 4, p0 += 4) {
    int32_t a, b, a02, a13;
    std::memcpy(&a, pi, 4);
    SplitOffset(a, off2, &a02, &a13);
    std::memcpy(&b, p0, 4);
    s0 = __smlad(a02, __sxtb16(b), s0);
    s0 = __smlad(a13, Sxtb16Odd(b), s0);
    std::memcpy(&b, p0 + stride, 4);
    s1 = __smlad(a02, __sxtb16(b), s1);
    s1 = __smlad(a13, Sxtb16Odd(b), s1);
    std::memcpy(&b, p0 + 2 * stride, 4);
    s2 = __smlad(a02, __sxtb16(b), s2);
    s2 = __smlad(a13, Sxtb16Odd(b), s2);
  }
  c = n & ~3;
  acc0 = static_cast<uint32_t>(s0);
  acc1 = static_cast<uint32_t>(s1);
  acc2 = static_cast<uint32_t>(s2);
#endif
  for (; c < n; ++c) {
    const int32_t v = in[c] + in_offset;
    acc0 += static_cast<uint32_t>(v * w0[c]);
    acc1 += static_cast<uint32_t>(v * w1[c]);
    acc2 += static_cast<uint32_t>(v * w2[c]);
  }
  out[0] = static_cast<int32_t>(acc0);
  out[1] = static_cast<int32_t>(acc1);
  out[2] = static_cast<int32_t>(acc2);
}

#if TMT_REFERENCE_DSP
// PointwiseAccs for in_c = 4 * N (N <= 4): the input's N words split and offset once, kept in
// registers for every output channel; the same wrapping sums (bias first, then the SMLADs).
template <int N>
inline void PointwiseAccsNarrow(const int8_t* in, int32_t in_offset, const int8_t* w,
                                const int32_t* b, int32_t n, int32_t* acc) {
  const int32_t off2 = Dup16(in_offset);
  int32_t even[N], odd[N];
#pragma GCC unroll 4
  for (int k = 0; k < N; ++k) {
    int32_t a;
    std::memcpy(&a, in + 4 * k, 4);
    SplitOffset(a, off2, &even[k], &odd[k]);
  }
  for (int32_t co = 0; co < n; ++co) {
    const int8_t* wc = w + static_cast<int64_t>(co) * (4 * N);
    int32_t a = b ? b[co] : 0;
#pragma GCC unroll 4  // (the lanes stay in registers only when unrolled)
    for (int k = 0; k < N; ++k) {
      int32_t wv;
      std::memcpy(&wv, wc + 4 * k, 4);
      a = __smlad(even[k], __sxtb16(wv), a);
      a = __smlad(odd[k], Sxtb16Odd(wv), a);
    }
    acc[co] = a;
  }
}

// PointwiseAccsNarrow<2> (8 input channels) of two pixels at once: both pixels' lanes in
// registers, each weight word split once for both.
inline void PointwiseAccsNarrowPair(const int8_t* in0, const int8_t* in1, int32_t in_offset,
                                    const int8_t* w, const int32_t* b, int32_t n, int32_t* acc0,
                                    int32_t* acc1) {
  const int32_t off2 = Dup16(in_offset);
  int32_t a;
  int32_t e00, o00, e01, o01, e10, o10, e11, o11;  // pixel, word
  std::memcpy(&a, in0, 4);
  SplitOffset(a, off2, &e00, &o00);
  std::memcpy(&a, in0 + 4, 4);
  SplitOffset(a, off2, &e01, &o01);
  std::memcpy(&a, in1, 4);
  SplitOffset(a, off2, &e10, &o10);
  std::memcpy(&a, in1 + 4, 4);
  SplitOffset(a, off2, &e11, &o11);
  for (int32_t co = 0; co < n; ++co, w += 8) {
    const int32_t bias = b ? b[co] : 0;
    int32_t w0, w1;
    std::memcpy(&w0, w, 4);
    std::memcpy(&w1, w + 4, 4);
    const int32_t w0e = __sxtb16(w0), w0o = Sxtb16Odd(w0);
    const int32_t w1e = __sxtb16(w1), w1o = Sxtb16Odd(w1);
    int32_t s0 = __smlad(e00, w0e, bias), s1 = __smlad(e10, w0e, bias);
    s0 = __smlad(o00, w0o, s0);
    s1 = __smlad(o10, w0o, s1);
    s0 = __smlad(e01, w1e, s0);
    s1 = __smlad(e11, w1e, s1);
    acc0[co] = __smlad(o01, w1o, s0);
    acc1[co] = __smlad(o11, w1o, s1);
  }
}
#endif

// The int32 (wrapping) accumulators of output channels [0, n) of a 1x1 convolution (or a
// fully-connected layer) of one pixel: acc[k] = b[k] + sum_c (in[c] + in_offset) * w[k][c], w
// [n, in_c] from the first of them, b from the first (null: no bias). Three output channels at a
// time (DotOffset3), then a pair (DotOffset2), then one; with the DSP extension, 8 or 16 input
// channels take PointwiseAccsNarrow (MobileNetV2's early expansions).
inline void PointwiseAccs(const int8_t* in, int32_t in_c, int32_t in_offset, const int8_t* w,
                          const int32_t* b, int32_t n, int32_t* acc) {
#if TMT_REFERENCE_DSP
  if (in_c == 8) {
    PointwiseAccsNarrow<2>(in, in_offset, w, b, n, acc);
    return;
  }
  if (in_c == 16) {
    PointwiseAccsNarrow<4>(in, in_offset, w, b, n, acc);
    return;
  }
#endif
  int32_t co = 0;
  for (; co + 3 <= n; co += 3) {
    DotOffset3(in, w + static_cast<int64_t>(co) * in_c, in_c, in_c, in_offset, acc + co);
  }
  for (; co + 2 <= n; co += 2) {
    const int8_t* w0 = w + static_cast<int64_t>(co) * in_c;
    DotOffset2(in, w0, w0 + in_c, in_c, in_offset, acc + co, acc + co + 1);
  }
  for (; co < n; ++co) {
    acc[co] = DotOffset(in, w + static_cast<int64_t>(co) * in_c, in_c, in_offset);
  }
  if (b) {
    for (int32_t k = 0; k < n; ++k) {
      acc[k] = static_cast<int32_t>(static_cast<uint32_t>(acc[k]) + static_cast<uint32_t>(b[k]));
    }
  }
}

// Output channels per chunk of accumulators (stack: 4 bytes each).
constexpr int32_t kAccChunk = 24;

// One pixel of a 1x1 convolution (or a fully-connected layer): in [in_c] -> output channel
// values store(co, v), co ascending, with w [out_c, in_c]
// (reference_integer_ops::FullyConnectedPerChannel for one batch row). The accumulators of
// kAccChunk channels at a time (PointwiseAccs), then their stores: store(co, v) is called once
// per channel, in ascending order, after the chunk's sums are computed.
template <typename Store>
inline void PointwisePixel(const int8_t* in, int32_t in_c, int32_t in_offset, const int8_t* w,
                           const int32_t* b, const Requant& rq_in, int32_t out_c, Store store) {
  // a local copy: the int8 stores may alias the caller's struct, its copy they cannot (the
  // fields stay in registers instead of being reloaded per output value)
  const Requant rq = rq_in;
  int32_t acc[kAccChunk];
  for (int32_t c0 = 0; c0 < out_c; c0 += kAccChunk) {
    const int32_t n = out_c - c0 < kAccChunk ? out_c - c0 : kAccChunk;
    PointwiseAccs(in, in_c, in_offset, w + static_cast<int64_t>(c0) * in_c, b ? b + c0 : nullptr,
                  n, acc);
    for (int32_t k = 0; k < n; ++k) store(c0 + k, Requantize(acc[k], rq, c0 + k));
  }
}

// PointwisePixel into out [out_c] (out[co] = v): the chunks requantized by RequantizeRun.
inline void PointwisePixelTo(const int8_t* in, int32_t in_c, int32_t in_offset, const int8_t* w,
                             const int32_t* b, const Requant& rq, int32_t out_c, int8_t* out) {
  int32_t acc[kAccChunk];
  for (int32_t c0 = 0; c0 < out_c; c0 += kAccChunk) {
    const int32_t n = out_c - c0 < kAccChunk ? out_c - c0 : kAccChunk;
    PointwiseAccs(in, in_c, in_offset, w + static_cast<int64_t>(c0) * in_c, b ? b + c0 : nullptr,
                  n, acc);
    RequantizeRun(acc, n, rq, c0, out + c0);
  }
}

// PointwisePixelTo of two pixels, in0 into out0 and in1 into out1 (8 input channels with the DSP
// extension: PointwiseAccsNarrowPair; otherwise one pixel after the other).
inline void PointwisePixelPairTo(const int8_t* in0, const int8_t* in1, int32_t in_c,
                                 int32_t in_offset, const int8_t* w, const int32_t* b,
                                 const Requant& rq, int32_t out_c, int8_t* out0, int8_t* out1) {
#if TMT_REFERENCE_DSP
  if (in_c == 8) {
    int32_t acc0[kAccChunk], acc1[kAccChunk];
    for (int32_t c0 = 0; c0 < out_c; c0 += kAccChunk) {
      const int32_t n = out_c - c0 < kAccChunk ? out_c - c0 : kAccChunk;
      PointwiseAccsNarrowPair(in0, in1, in_offset, w + static_cast<int64_t>(c0) * 8,
                              b ? b + c0 : nullptr, n, acc0, acc1);
      RequantizeRuns<true>(acc0, acc1, n, rq, c0, out0 + c0, out1 + c0);
    }
    return;
  }
#endif
  PointwisePixelTo(in0, in_c, in_offset, w, b, rq, out_c, out0);
  PointwisePixelTo(in1, in_c, in_offset, w, b, rq, out_c, out1);
}

// Two input pixels of a 1x1 convolution widened once for all its output channels
// (PairLanes::Widen), then summed two output channels of both pixels per pass (PointwisePair):
// about 1.15 instructions per MAC instead of 2 (DotOffset3). With the DSP extension and 4 <= in_c
// <= kPairMaxChannels only; elsewhere Widen returns false and the caller runs PointwisePixelTo
// per pixel. The lanes take 4 * kPairMaxChannels bytes of stack (4 without the DSP extension).
constexpr int32_t kPairMaxChannels = 128;

template <int32_t kMaxChannels>
struct PairLanesOf {
  const int8_t* in0 = nullptr;  // the pixels (their last in_c % 4 channels are read from here)
  const int8_t* in1 = nullptr;
  int32_t in_offset = 0;
  int32_t groups = 0;  // in_c / 4
  int32_t tail = 0;    // in_c % 4
  // per group of 4 channels the SMLAD operands: the int16 lanes (+ offset) of pixel 0's bytes
  // 0, 2 and 1, 3, then pixel 1's
  int32_t lanes[TMT_REFERENCE_DSP ? kMaxChannels : 1];

  // Whether Widen takes pixels of in_c channels (the DSP extension, 4 <= in_c <= the maximum).
  static bool Takes(int32_t in_c) {
    return TMT_REFERENCE_DSP && in_c >= 4 && in_c <= kMaxChannels;
  }

  bool Widen(const int8_t* p0, const int8_t* p1, int32_t in_c, int32_t offset) {
#if TMT_REFERENCE_DSP
    if (!Takes(in_c)) return false;
    in0 = p0;
    in1 = p1;
    in_offset = offset;
    groups = in_c / 4;
    tail = in_c % 4;
    const int32_t off2 = Dup16(offset);
    int32_t* l = lanes;
    for (int32_t g = 0; g < groups; ++g, l += 4) {
      int32_t a0, a1;
      std::memcpy(&a0, p0 + 4 * g, 4);
      std::memcpy(&a1, p1 + 4 * g, 4);
      SplitOffset(a0, off2, &l[0], &l[1]);
      SplitOffset(a1, off2, &l[2], &l[3]);
    }
    return true;
#else
    (void)p0;
    (void)p1;
    (void)in_c;
    (void)offset;
    return false;
#endif
  }
};
using PairLanes = PairLanesOf<kPairMaxChannels>;

#if TMT_REFERENCE_DSP
// The dot products of weight rows w0, w1 with both pixels' lanes added to acc {pixel 0 row 0,
// pixel 0 row 1, pixel 1 row 0, pixel 1 row 1} (wrapping, as the reference's sums): each weight
// word is split once for both pixels.
inline void DotPair2(const int32_t* lanes, int32_t groups, const int8_t* w0, const int8_t* w1,
                     int32_t* acc) {
  int32_t s00 = acc[0], s01 = acc[1], s10 = acc[2], s11 = acc[3];
  const int32_t* const end = lanes + 4 * groups;
  while (lanes != end) {
    int32_t l0, l1, l2, l3;  // a group's lanes by two LDRD (GCC's own takes four LDR)
    Load2(&lanes, &l0, &l1);
    Load2(&lanes, &l2, &l3);
    int32_t b;
    std::memcpy(&b, w0, 4);
    w0 += 4;
    int32_t be = __sxtb16(b), bo = Sxtb16Odd(b);
    s00 = __smlad(l0, be, s00);
    s00 = __smlad(l1, bo, s00);
    s10 = __smlad(l2, be, s10);
    s10 = __smlad(l3, bo, s10);
    std::memcpy(&b, w1, 4);
    w1 += 4;
    be = __sxtb16(b);
    bo = Sxtb16Odd(b);
    s01 = __smlad(l0, be, s01);
    s01 = __smlad(l1, bo, s01);
    s11 = __smlad(l2, be, s11);
    s11 = __smlad(l3, bo, s11);
  }
  acc[0] = s00;
  acc[1] = s01;
  acc[2] = s10;
  acc[3] = s11;
}

// DotPair2 over all of a PairLanes' channels: the lanes, then the in_c % 4 last channels from the
// pixels themselves (rows w0, w1 of in_c int8).
template <int32_t kMax>
inline void DotPairRows(const PairLanesOf<kMax>& l, const int8_t* w0, const int8_t* w1,
                        int32_t* acc) {
  DotPair2(l.lanes, l.groups, w0, w1, acc);
  uint32_t s00 = static_cast<uint32_t>(acc[0]), s01 = static_cast<uint32_t>(acc[1]);
  uint32_t s10 = static_cast<uint32_t>(acc[2]), s11 = static_cast<uint32_t>(acc[3]);
  for (int32_t c = 4 * l.groups, end = c + l.tail; c < end; ++c) {
    const int32_t v0 = l.in0[c] + l.in_offset, v1 = l.in1[c] + l.in_offset;
    s00 += static_cast<uint32_t>(v0 * w0[c]);
    s01 += static_cast<uint32_t>(v0 * w1[c]);
    s10 += static_cast<uint32_t>(v1 * w0[c]);
    s11 += static_cast<uint32_t>(v1 * w1[c]);
  }
  acc[0] = static_cast<int32_t>(s00);
  acc[1] = static_cast<int32_t>(s01);
  acc[2] = static_cast<int32_t>(s10);
  acc[3] = static_cast<int32_t>(s11);
}
#endif

// Output channels per chunk of PointwisePair's accumulators (stack: 8 bytes each).
constexpr int32_t kPairChunk = 16;

// Both pixels of `lanes` (PairLanes::Widen returned true) through a 1x1 convolution with w
// [out_c, in_c]: exactly PointwisePixelTo of pixel 0 into out0 [out_c] and of pixel 1 into out1
// (the same wrapping sums, bias first).
template <int32_t kMax>
inline void PointwisePair(const PairLanesOf<kMax>& lanes, const int8_t* w, const int32_t* b,
                          const Requant& rq, int32_t out_c, int8_t* out0, int8_t* out1) {
#if TMT_REFERENCE_DSP
  const int32_t in_c = 4 * lanes.groups + lanes.tail;
  int32_t acc0[kPairChunk], acc1[kPairChunk];
  const int8_t* w0 = w;  // output channel co's row
  for (int32_t c0 = 0; c0 < out_c; c0 += kPairChunk) {
    const int32_t n = out_c - c0 < kPairChunk ? out_c - c0 : kPairChunk;
    // two output channels per pass, by pointers (GCC's indexing of acc0 / acc1 by k takes an
    // address computation per store): an odd count's last channel its row twice, the copy's
    // sums unused
    int32_t* a0 = acc0;
    int32_t* a1 = acc1;
    for (int32_t k = 0; k < n; k += 2, a0 += 2, a1 += 2, w0 += 2 * in_c) {
      const bool two = k + 1 < n;
      const int32_t b0 = b ? b[c0 + k] : 0, b1 = b && two ? b[c0 + k + 1] : 0;
      int32_t acc[4] = {b0, b1, b0, b1};
      DotPairRows(lanes, w0, two ? w0 + in_c : w0, acc);
      a0[0] = acc[0];
      a1[0] = acc[2];
      a0[1] = acc[1];  // (for an odd n, past it: kPairChunk is even; an odd n is the last)
      a1[1] = acc[3];
    }
    RequantizeRuns<true>(acc0, acc1, n, rq, c0, out0 + c0, out1 + c0);
  }
#else
  (void)lanes;
  (void)w;
  (void)b;
  (void)rq;
  (void)out_c;
  (void)out0;
  (void)out1;
#endif
}

// PointwisePair for two pixels of in_c = 4k channels, any number of them: per chunk of
// kPairChunk output channels, the input channels in parts of at most kMax, each part widened
// into `lanes` and summed into the chunk's accumulators (the same wrapping sums: any order).
// Each part is widened once per chunk (about 7% more than PointwisePair's one widening); false
// (nothing computed) without the DSP extension or for in_c % 4 != 0.
template <int32_t kMax>
inline bool PointwisePairParts(const int8_t* in0, const int8_t* in1, int32_t in_c,
                               int32_t in_offset, const int8_t* w, const int32_t* b,
                               const Requant& rq, int32_t out_c, int8_t* out0, int8_t* out1,
                               PairLanesOf<kMax>* lanes) {
#if TMT_REFERENCE_DSP
  if (in_c % 4 != 0 || in_c < 4) return false;
  int32_t acc0[kPairChunk], acc1[kPairChunk];
  for (int32_t c0 = 0; c0 < out_c; c0 += kPairChunk) {
    const int32_t n = out_c - c0 < kPairChunk ? out_c - c0 : kPairChunk;
    for (int32_t k = 0; k < n; ++k) acc0[k] = acc1[k] = b ? b[c0 + k] : 0;
    for (int32_t p0 = 0; p0 < in_c; p0 += kMax) {
      const int32_t part = in_c - p0 < kMax ? in_c - p0 : kMax;
      lanes->Widen(in0 + p0, in1 + p0, part, in_offset);
      for (int32_t k = 0; k < n; k += 2) {
        const int8_t* w0 = w + static_cast<int64_t>(c0 + k) * in_c + p0;
        const bool two = k + 1 < n;  // (else row k twice, the copy's sums unused)
        int32_t acc[4] = {acc0[k], two ? acc0[k + 1] : 0, acc1[k], two ? acc1[k + 1] : 0};
        DotPair2(lanes->lanes, lanes->groups, w0, two ? w0 + in_c : w0, acc);
        acc0[k] = acc[0];
        acc1[k] = acc[2];
        if (two) {
          acc0[k + 1] = acc[1];
          acc1[k + 1] = acc[3];
        }
      }
    }
    RequantizeRuns<true>(acc0, acc1, n, rq, c0, out0 + c0, out1 + c0);
  }
  return true;
#else
  (void)in0;
  (void)in1;
  (void)in_c;
  (void)in_offset;
  (void)w;
  (void)b;
  (void)rq;
  (void)out_c;
  (void)out0;
  (void)out1;
  (void)lanes;
  return false;
#endif
}

// Windows of at most this many int8 (kh * kw * in_c) take ConvRow's patch path (stack bytes),
// up to kConvPairMax two output pixels at a time (a stem's 3x3x3).
constexpr int32_t kConvPatchMax = 128;
constexpr int32_t kConvPairMax = 32;

// Output row `r` of the convolution into `out` [out_w, out_c]; w [out_c, kh, kw, in_c]. The int32
// (wrapping) sums of the reference over the in-image taps: with dilation 1 along x a kernel row's
// in-image taps are one contiguous run of x and of w, summed by one DotOffset.
inline void ConvRow(const ConvLoop& p, const int8_t* x, const int8_t* w, const int32_t* b,
                    int32_t r, int8_t* out) {
  const int32_t in_c = p.in_c;
  const int32_t y0 = r * p.stride_h - p.pad_top;
  const int32_t window = p.kh * p.kw * in_c;
  const int32_t zero_point = -p.in_offset;
  const int32_t out_px = p.out_stride > 0 ? p.out_stride : p.out_c;
  if (window <= kConvPatchMax && zero_point >= kQMin && zero_point <= kQMax) {
    // Small windows (a stem's 3x3x3): gather each output pixel's window into a patch, taps
    // outside the image as the input zero point (their products (zp + in_offset) * w are 0, as
    // the reference's skipped taps), then one 1x1 convolution of the patch with w [out_c,
    // window]: the same wrapping int32 sums, over long runs instead of kernel rows of in_c.
    const int32_t run = p.kw * in_c;
    auto gather = [&](int32_t ox, int8_t* dst) {
      const int32_t x0 = ox * p.stride_w - p.pad_left;
      const bool cols_in = p.dil_w == 1 && x0 >= 0 && x0 + p.kw <= p.in_w;
      for (int32_t ky = 0; ky < p.kh; ++ky, dst += run) {
        const int32_t iy = y0 + ky * p.dil_h;
        if (iy < 0 || iy >= p.in_h) {
          std::memset(dst, zero_point, static_cast<size_t>(run));
          continue;
        }
        const int8_t* xr = x + static_cast<int64_t>(iy) * p.in_w * in_c;
        if (cols_in) {  // the kernel row's taps: one contiguous run of x
          std::memcpy(dst, xr + static_cast<int64_t>(x0) * in_c, static_cast<size_t>(run));
          continue;
        }
        for (int32_t kx = 0; kx < p.kw; ++kx) {
          const int32_t ix = x0 + kx * p.dil_w;
          if (ix < 0 || ix >= p.in_w) {
            std::memset(dst + kx * in_c, zero_point, static_cast<size_t>(in_c));
          } else {
            std::memcpy(dst + kx * in_c, xr + static_cast<int64_t>(ix) * in_c,
                        static_cast<size_t>(in_c));
          }
        }
      }
    };
    int32_t ox = 0;
    if (PairLanesOf<kConvPairMax>::Takes(window)) {  // two output pixels at a time (PointwisePair)
      int8_t patches[2][kConvPairMax];
      PairLanesOf<kConvPairMax> lanes;
      for (; ox + 2 <= p.out_w; ox += 2) {
        gather(ox, patches[0]);
        gather(ox + 1, patches[1]);
        lanes.Widen(patches[0], patches[1], window, p.in_offset);
        int8_t* o0 = out + ox * out_px;
        PointwisePair(lanes, w, b, p.rq, p.out_c, o0, o0 + out_px);
      }
    }
    for (; ox < p.out_w; ++ox) {
      int8_t patch[kConvPatchMax];
      gather(ox, patch);
      PointwisePixelTo(patch, window, p.in_offset, w, b, p.rq, p.out_c, out + ox * out_px);
    }
    return;
  }
  const int64_t w_co = static_cast<int64_t>(p.kh) * p.kw * in_c;  // w stride between channels
  for (int32_t ox = 0; ox < p.out_w; ++ox) {
    const int32_t x0 = ox * p.stride_w - p.pad_left;
    int32_t kx0 = 0, kx1 = p.kw;  // dilation 1: the in-image taps are kx in [kx0, kx1)
    if (p.dil_w == 1) {
      kx0 = x0 < 0 ? -x0 : 0;
      kx1 = p.in_w - x0 < p.kw ? p.in_w - x0 : p.kw;
    }
    for (int32_t co = 0; co < p.out_c; ++co) {
      uint32_t acc = b ? static_cast<uint32_t>(b[co]) : 0u;
      for (int32_t ky = 0; ky < p.kh; ++ky) {
        const int32_t iy = y0 + ky * p.dil_h;
        if (iy < 0 || iy >= p.in_h) continue;
        const int8_t* xr = x + static_cast<int64_t>(iy) * p.in_w * in_c;
        const int8_t* wr = w + co * w_co + static_cast<int64_t>(ky) * p.kw * in_c;
        if (p.dil_w == 1) {
          if (kx1 > kx0) {
            acc += static_cast<uint32_t>(DotOffset(xr + static_cast<int64_t>(x0 + kx0) * in_c,
                                                   wr + kx0 * in_c, (kx1 - kx0) * in_c,
                                                   p.in_offset));
          }
          continue;
        }
        for (int32_t kx = 0; kx < p.kw; ++kx) {
          const int32_t ix = x0 + kx * p.dil_w;
          if (ix < 0 || ix >= p.in_w) continue;
          acc += static_cast<uint32_t>(
              DotOffset(xr + static_cast<int64_t>(ix) * in_c, wr + kx * in_c, in_c, p.in_offset));
        }
      }
      out[ox * out_px + co] = Requantize(static_cast<int32_t>(acc), p.rq, co);
    }
  }
}

// A depthwise convolution (multiplier 1) whose input may be embedded in an explicit PAD:
// the unpadded source [src_h, src_w, c] sits at (pad_top, pad_left) of a [pd_h, pd_w, c]
// canvas filled with pad_value; the depthwise's own (SAME) padding d_pad_* skips taps.
// Without PAD: pad_* = 0 and pd = src.
struct DepthwiseLoop {
  int32_t src_h = 1, src_w = 1, c = 1;
  int32_t pd_h = 1, pd_w = 1;
  int32_t pad_top = 0, pad_left = 0, pad_value = 0;
  int32_t kh = 1, kw = 1, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  int32_t d_pad_top = 0, d_pad_left = 0;
  int32_t in_offset = 0;  // -input zero point
  Requant rq;
  int32_t c_begin = 0, c_end = -1;  // the channels computed: [c_begin, c_end) (-1: c)
};

// One output pixel (oy, ox) of the depthwise (reference_integer_ops::DepthwiseConvPerChannel)
// into out [c]; w [1, kh, kw, c]. row_of(er) returns the source row er ([src_w, c]). Only
// channels [c_begin, c_end) are computed: out[c] and the multipliers of channel c as always, the
// bias b[c - c_begin] (a chunk of it).
template <typename RowOf>
inline void DepthwisePixel(const DepthwiseLoop& p, RowOf row_of, int32_t oy, int32_t ox,
                           const int8_t* w, const int32_t* b, int8_t* out) {
  const int32_t base = oy * p.stride_h - p.d_pad_top;  // padded row of tap ky = 0
  const int32_t col0 = ox * p.stride_w - p.d_pad_left;
  const int32_t c_end = p.c_end < 0 ? p.c : p.c_end;
  for (int32_t c = p.c_begin; c < c_end; ++c) {
    int64_t acc = 0;
    for (int32_t ky = 0; ky < p.kh; ++ky) {
      const int32_t pr = base + ky * p.dil_h;
      if (pr < 0 || pr >= p.pd_h) continue;  // implicit (SAME) padding: tap skipped
      const int32_t er = pr - p.pad_top;
      const bool row_in = er >= 0 && er < p.src_h;
      const int8_t* row = row_in ? row_of(er) : nullptr;
      for (int32_t kx = 0; kx < p.kw; ++kx) {
        const int32_t pc = col0 + kx * p.dil_w;
        if (pc < 0 || pc >= p.pd_w) continue;
        const int32_t ec = pc - p.pad_left;
        const int32_t v = (row_in && ec >= 0 && ec < p.src_w) ? row[ec * p.c + c]
                                                              : p.pad_value;  // PAD op
        acc += static_cast<int64_t>(v + p.in_offset) * w[(ky * p.kw + kx) * p.c + c];
      }
    }
    if (b) acc += b[c - p.c_begin];
    out[c] = Requantize(acc, p.rq, c);
  }
}

}  // namespace tflm_ref
}  // namespace core
}  // namespace tfmicro_train

#endif  // TFLM_OPS_CORE_TFLM_REFERENCE_H_
