// Shared integer arithmetic of the TMT_* training ops (docs/contract.md, "Conventions").
//
// Portable C++17: no TFLM, no heap, no exceptions, no RTTI. Every function mirrors
// the numpy helper of the same name in tfmicro_train/kernels/training_ops.py bit
// for bit. Compile with -ffp-contract=off (float32 expressions are written in the
// contract's order and must not be fused).
#ifndef TFLM_OPS_CORE_ARITH_H_
#define TFLM_OPS_CORE_ARITH_H_

#include <cmath>
#include <cstdint>

// A function kept out of line: its hot loop keeps the registers, or its arrays stay off its
// callers' stack frames.
#if defined(__GNUC__)
#define TMT_NOINLINE __attribute__((noinline))
#else
#define TMT_NOINLINE
#endif

namespace tfmicro_train {
namespace core {

constexpr int32_t kInt8GradMax = 127;
constexpr int kQ16 = 16;            // fractional bits of an update before stochastic rounding
constexpr int kWmulBits = 15;       // per-channel weight-scale ratios are Q15
constexpr int kPoolBits = 15;       // average-pool reciprocal weights are Q15
constexpr int kGradAddBits = 14;    // gradient-sum alignment weights are Q14
constexpr int64_t kSat62 = (int64_t{1} << 62) - 1;

// Wrapping int64 addition (numpy int64 arithmetic wraps; signed overflow is UB in C++).
inline int64_t WrapAdd(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

// (x + 2^(shift-1)) >> shift for shift > 0 (arithmetic shift: round half up); x for shift <= 0.
inline int64_t RoundShiftRight(int64_t x, int shift) {
  if (shift <= 0) return x;
  return WrapAdd(x, int64_t{1} << (shift - 1)) >> shift;
}

// Number of bits of a non-negative value (0 for 0).
inline int BitLength(uint64_t m) {
  int n = 0;
  while (m) {
    ++n;
    m >>= 1;
  }
  return n;
}

// |x| as uint64 (exact also for INT64_MIN).
inline uint64_t AbsU64(int64_t x) {
  return x < 0 ? static_cast<uint64_t>(0) - static_cast<uint64_t>(x) : static_cast<uint64_t>(x);
}

inline int64_t Clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Saturate an int64 to int32.
inline int32_t Sat32(int64_t x) {
  return static_cast<int32_t>(Clamp64(x, INT32_MIN, INT32_MAX));
}

// dyn_quantize's shift for a tensor whose largest |acc| is max_abs.
inline int DynQuantizeShift(uint64_t max_abs) {
  const int s = BitLength(max_abs) - 7;
  return s > 0 ? s : 0;
}

// dyn_quantize's value for one element, given the tensor's shift.
inline int8_t DynQuantizeValue(int64_t acc, int shift) {
  return static_cast<int8_t>(Clamp64(RoundShiftRight(acc, shift), -kInt8GradMax, kInt8GradMax));
}

// dyn_quantize over n accumulators produced by acc_at(i) (any callable int64(int32)).
// With scratch (n int64s) each accumulator is computed once; with scratch == nullptr it is
// computed twice (max pass, then quantize pass) and no memory is needed. Returns the shift.
template <typename AccAt>
inline int DynQuantize(int32_t n, AccAt acc_at, int64_t* scratch, int8_t* out) {
  uint64_t max_abs = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int64_t a = acc_at(i);
    if (scratch) scratch[i] = a;
    const uint64_t m = AbsU64(a);
    if (m > max_abs) max_abs = m;
  }
  const int shift = DynQuantizeShift(max_abs);
  for (int32_t i = 0; i < n; ++i) {
    out[i] = DynQuantizeValue(scratch ? scratch[i] : acc_at(i), shift);
  }
  return shift;
}

// dyn_quantize of an int64 array in place-free form.
inline int DynQuantizeArray(const int64_t* acc, int32_t n, int8_t* out) {
  uint64_t max_abs = 0;
  for (int32_t i = 0; i < n; ++i) {
    const uint64_t m = AbsU64(acc[i]);
    if (m > max_abs) max_abs = m;
  }
  const int shift = DynQuantizeShift(max_abs);
  for (int32_t i = 0; i < n; ++i) out[i] = DynQuantizeValue(acc[i], shift);
  return shift;
}

// float32 real == multiplier * 2^(shift - 31) exactly; multiplier in [2^30, 2^31) for
// positive reals (negative for negative reals); 0 or non-finite gives (0, 0).
struct Multiplier {
  int32_t multiplier;
  int shift;
};

inline Multiplier QuantizeMultiplierF32(float real) {
  if (real == 0.0f || !std::isfinite(real)) return {0, 0};
  int exp = 0;
  const float frac = std::frexp(real, &exp);  // |frac| in [0.5, 1), exact
  return {static_cast<int32_t>(std::ldexp(frac, 31)), exp};
}

// acc (int32 range) * M * 2^(shift - 31), rounded half up, saturated to +-(2^62 - 1).
inline int64_t Requant64(int64_t acc, int32_t multiplier, int shift) {
  const int64_t prod = acc * static_cast<int64_t>(multiplier);  // |prod| < 2^62
  const int rs = 31 - shift;
  if (rs > 0) return RoundShiftRight(prod, rs < 62 ? rs : 62);
  const int ls = -rs;
  if (ls > 62) return prod > 0 ? kSat62 : (prod < 0 ? -kSat62 : 0);
  const int64_t lim = kSat62 >> ls;
  if (prod > lim) return kSat62;
  if (prod < -lim) return -kSat62;
  return static_cast<int64_t>(static_cast<uint64_t>(prod) << ls);
}

// lowbias32 integer hash, wrapping arithmetic.
inline uint32_t Hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// Per-call base of the rounding noise of update number `counter` of an op seeded `seed`.
inline uint32_t NoiseBase(uint32_t seed, uint32_t counter) {
  return Hash32(seed ^ (counter * 0x9E3779B9u));
}

// The i-th draw, uniform in [0, 2^16).
inline int64_t Noise(uint32_t base, uint32_t i) {
  return static_cast<int64_t>(Hash32(base + i) >> 16);
}

// floor((delta + noise) / 2^16): an unbiased integer step from a Q16 update.
inline int64_t StochasticStep(int64_t delta_q16, int64_t noise) {
  return (delta_q16 + noise) >> kQ16;
}

// Per-channel update multiplier: (lr * g_scale) * factor, float32, in that order.
inline Multiplier UpdateMultiplier(float lr, float g_scale, float factor) {
  const float lg = lr * g_scale;
  const float m = lg * factor;
  return QuantizeMultiplierF32(m);
}

// ldexpf(base, exponent), as numpy's float32 ldexp.
inline float OutScale(float base, int exponent) { return std::ldexp(base, exponent); }

}  // namespace core
}  // namespace tfmicro_train

#endif  // TFLM_OPS_CORE_ARITH_H_
