// tflm_reference.h's integer derivations against the double-precision arithmetic they replace:
// ScaleRatioMultiplier(a, b, c) == QuantizeMultiplier(double(a) * double(b) / double(c)) with
// the libm frexp / round decoding (TFLM's QuantizeMultiplier), QuantizeMultiplier's bit decoding
// == the libm one, ValidScale == isfinite && > 0, on random floats (normal scales near the usual
// ranges, any exponent, significands with few bits set: exact quotients and rounding ties), and
// MultiplyByQuantizedMultiplier (one 64-bit rounding step) == TFLM's SaturatingRoundingDoublingHighMul
// then RoundingDivideByPOT on random and edge accumulators, multipliers and shifts (built for a
// Cortex-M with the DSP extension, its SMMULR fast path too: tests/test_cortex_m.py), and
// RequantizeRun(s) with Requant::folded (the SMMLAR path) == Requantize's checked path.
// Usage: multiplier_test [N]; prints "multiplier_test: N checked, 0 mismatches",
// "requantize_test: M checked, 0 mismatches", "fast_path_test: ..." and "folded_path_test: ...".
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tflm_ops/core/tflm_reference.h"

namespace {

using tfmicro_train::core::tflm_ref::MultiplyByQuantizedMultiplier;
using tfmicro_train::core::tflm_ref::QuantizeMultiplier;
using tfmicro_train::core::tflm_ref::ScaleRatioMultiplier;
using tfmicro_train::core::tflm_ref::ValidScale;

uint64_t g_state = 88172645463325252ull;
uint32_t Next() {  // xorshift64
  g_state ^= g_state << 13;
  g_state ^= g_state >> 7;
  g_state ^= g_state << 17;
  return static_cast<uint32_t>(g_state >> 16);
}

float F(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// TFLM's QuantizeMultiplier (kernels/internal/quantization_util.cc).
void Reference(double real, int32_t* m, int32_t* s) {
  if (real == 0.0) {
    *m = 0;
    *s = 0;
    return;
  }
  int e = 0;
  const double q = std::frexp(real, &e);
  int64_t q_fixed = static_cast<int64_t>(std::round(q * static_cast<double>(1ll << 31)));
  if (q_fixed == (1ll << 31)) {
    q_fixed /= 2;
    ++e;
  }
  if (e < -31) {
    e = 0;
    q_fixed = 0;
  }
  *m = static_cast<int32_t>(q_fixed);
  *s = e;
}

// TFLM's MultiplyByQuantizedMultiplier (kernels/internal/common.h, gemmlowp fixedpoint), written
// as there (the left shift as a wrapping multiply: TFLM's signed overflow is undefined).
int32_t ReferenceSrdhm(int32_t a, int32_t b) {
  const bool overflow = a == b && a == INT32_MIN;
  const int64_t ab = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  const int32_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
  const int32_t high = static_cast<int32_t>((ab + nudge) / (1ll << 31));
  return overflow ? INT32_MAX : high;
}

int32_t ReferenceDivideByPot(int32_t x, int exponent) {
  const int32_t mask = static_cast<int32_t>((1ll << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + ((x < 0) ? 1 : 0);
  return (x >> exponent) + ((remainder > threshold) ? 1 : 0);
}

int32_t ReferenceRequant(int32_t x, int32_t m, int32_t shift) {
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  const int32_t shifted = static_cast<int32_t>(static_cast<uint32_t>(x) * (1u << left));
  return ReferenceDivideByPot(ReferenceSrdhm(shifted, m), right);
}

int32_t Pick(const int32_t* edges, int n_edges) {
  return (Next() & 3) ? static_cast<int32_t>(Next() << 16 ^ Next()) : edges[Next() % n_edges];
}

long RequantizeMismatches(long n, long* checked) {
  static const int32_t xs[] = {0, 1, -1, 2, -2, 127, -128, 1 << 30, -(1 << 30), INT32_MAX,
                               INT32_MIN, INT32_MAX - 1, INT32_MIN + 1, 0x40000001, -0x40000001};
  static const int32_t ms[] = {0, 1, 1 << 30, (1 << 30) + 1, INT32_MAX, INT32_MAX - 1,
                               INT32_MIN, -1, 0x5A827999};
  long bad = 0;
  for (long i = 0; i < n; ++i) {
    int32_t x = Pick(xs, sizeof(xs) / sizeof(xs[0]));
    int32_t m = Pick(ms, sizeof(ms) / sizeof(ms[0]));
    if (i % 2) m = static_cast<int32_t>((1u << 30) | (Next() << 15 ^ Next()) >> 2);  // [2^30, 2^31)
    const int32_t shift = static_cast<int32_t>(Next() % 42) - 31;  // [-31, 10]
    if (i % 3 == 0 && shift >= 0) {
      // around the bounds +-2^(30 - shift) of the left-shift fast path (and inside them)
      const int32_t bound = int32_t{1} << (30 - shift);
      const int32_t near = static_cast<int32_t>(Next() % 5) - 2;
      switch (Next() % 3) {
        case 0: x = bound + near; break;
        case 1: x = -bound + near; break;
        default: x = static_cast<int32_t>(Next() % (2u * static_cast<uint32_t>(bound))) - bound;
      }
    }
    const int32_t got = MultiplyByQuantizedMultiplier(x, m, shift);
    const int32_t want = ReferenceRequant(x, m, shift);
    ++*checked;
    if (got != want) {
      if (bad < 10) {
        std::printf("requantize mismatch x %ld m %ld shift %ld: %ld, expected %ld\n",
                    static_cast<long>(x), static_cast<long>(m), static_cast<long>(shift),
                    static_cast<long>(got), static_cast<long>(want));
      }
      ++bad;
    }
  }
  return bad;
}

// WithFastPath's bound (|b| + window * 32640 < 2^30, shifts in [-31, -1]) at its edges, and
// Requantize with `fast` set equal to Requantize without it (the checked path) on accumulators
// under the bound: per failure one count.
long FastPathMismatches(long n, long* checked) {
  using tfmicro_train::core::Requant;
  using tfmicro_train::core::tflm_ref::Requantize;
  using tfmicro_train::core::tflm_ref::WithFastPath;
  long bad = 0;
  int32_t mult[2] = {0x5A827999, 1 << 30}, shift[2] = {-1, -31};
  Requant rq;
  rq.multiplier = mult;
  rq.shift = shift;
  const int32_t window = 1000;
  const int32_t edge = (1 << 30) - 1 - window * 32640;  // the largest bias allowed
  const int32_t b_in[2] = {edge, -edge}, b_out[2] = {0, edge + 1};
  const bool edges_ok = WithFastPath(rq, 2, window, b_in).fast &&
                        !WithFastPath(rq, 2, window, b_out).fast &&
                        !WithFastPath(rq, 2, (1 << 30) / 32640 + 1, nullptr).fast &&
                        WithFastPath(rq, 2, (1 << 30) / 32640, nullptr).fast;
  shift[1] = 0;
  const bool shift0 = WithFastPath(rq, 2, 1, nullptr).fast;
  shift[1] = -32;
  const bool shift32 = WithFastPath(rq, 2, 1, nullptr).fast;
  *checked += 6;
  if (!edges_ok || shift0 || shift32) {
    std::printf("WithFastPath: wrong bound (edges %d, shift 0 %d, shift -32 %d)\n", edges_ok,
                shift0, shift32);
    ++bad;
  }
  for (long i = 0; i < n; ++i) {
    int32_t m = static_cast<int32_t>((1u << 30) | (Next() << 15 ^ Next()) >> 2);
    if (i % 5 == 0) m = -m;
    int32_t sh = -1 - static_cast<int32_t>(Next() % 31);
    Requant slow;
    slow.multiplier = &m;
    slow.shift = &sh;
    slow.output_offset = static_cast<int32_t>(Next() % 256) - 128;
    slow.act_min = -128 + static_cast<int32_t>(Next() % 64);
    slow.act_max = 127 - static_cast<int32_t>(Next() % 64);
    Requant fast = slow;
    fast.fast = true;
    const int32_t lim = (1 << 30) - 1;  // |acc| <= 2^30 - 1, edges included
    const int32_t acc = (i % 4 == 0) ? ((i % 8 == 0) ? lim : -lim)
                                     : static_cast<int32_t>(Next() % (2u * lim + 1u)) - lim;
    ++*checked;
    if (Requantize(acc, fast, 0) != Requantize(acc, slow, 0)) {
      if (bad < 10) {
        std::printf("fast requantize mismatch acc %ld m %ld shift %ld\n", static_cast<long>(acc),
                    static_cast<long>(m), static_cast<long>(sh));
      }
      ++bad;
    }
  }
  return bad;
}

// WithFastPath's `folded` bound (multipliers >= 0, |(2 * output_offset + 1) << (-shift - 1)| <
// 2^30) at its edges, and RequantizeRun / RequantizeRuns<true> (one and two pixels: the
// SMMLAR path on a DSP build) equal to Requantize without `fast` on runs of 1 to 24 channels:
// random and edge accumulators (|x| <= 2^30 - 1, x = -1 with small multipliers: h = 0), zero
// and edge multipliers, shifts -1 to -31 (both sides of the folded tier's edge), output
// offsets at the bound, clamps to the whole int8 range or not. Per failure one count.
long FoldedMismatches(long n, long* checked) {
  using tfmicro_train::core::Requant;
  using tfmicro_train::core::tflm_ref::Requantize;
  using tfmicro_train::core::tflm_ref::RequantizeRun;
  using tfmicro_train::core::tflm_ref::RequantizeRuns;
  using tfmicro_train::core::tflm_ref::WithFastPath;
  long bad = 0;
  // the bound's edges: K = 2 off + 1 with |K| << (e - 1) just under 2^30, and just over it (e
  // = 31: none under it)
  int32_t mult[1] = {1 << 30}, shift[1] = {-1};
  Requant rq;
  rq.multiplier = mult;
  rq.shift = shift;
  shift[0] = -31;  // |K| << 30 >= 2^30 for every K
  bool edges_ok = !WithFastPath(rq, 1, 1, nullptr).folded;
  for (int32_t e = 1; e <= 30; ++e) {
    shift[0] = -e;
    int32_t k_max = ((1 << 30) - 1) >> (e - 1);
    if (k_max % 2 == 0) --k_max;
    for (int32_t sign = -1; sign <= 1; sign += 2) {
      rq.output_offset = (sign * k_max - 1) / 2;  // K = sign * k_max
      const bool in = WithFastPath(rq, 1, 1, nullptr).folded;
      rq.output_offset = (sign * (k_max + 2) - 1) / 2;  // K = sign * (k_max + 2)
      const bool out = WithFastPath(rq, 1, 1, nullptr).folded;
      edges_ok = edges_ok && in && !out;
    }
  }
  rq.output_offset = 127;  // int8 offsets: folded up to e = 23
  shift[0] = -23;
  const bool e23 = WithFastPath(rq, 1, 1, nullptr).folded;
  shift[0] = -24;
  const bool e24 = WithFastPath(rq, 1, 1, nullptr).folded && WithFastPath(rq, 1, 1, nullptr).fast;
  mult[0] = -1;
  shift[0] = -1;
  const bool negative = WithFastPath(rq, 1, 1, nullptr).folded;
  *checked += 3;
  if (!edges_ok || !e23 || e24 || negative) {
    std::printf("WithFastPath: wrong folded bound (edges %d, e 23 %d, e 24 %d, m < 0 %d)\n",
                edges_ok, e23, e24, negative);
    ++bad;
  }
  constexpr int32_t kMaxRun = 24;
  int32_t m[kMaxRun], sh[kMaxRun], acc0[kMaxRun], acc1[kMaxRun];
  int8_t got0[kMaxRun], got1[kMaxRun], got2[kMaxRun];
  const int32_t lim = (1 << 30) - 1;
  for (long i = 0; i < n; ++i) {
    const int32_t len = 1 + static_cast<int32_t>(Next() % kMaxRun);
    Requant slow;
    slow.multiplier = m;
    slow.shift = sh;
    slow.output_offset = static_cast<int32_t>(Next() % 256) - 128;
    if (Next() % 2) {
      slow.act_min = -128 + static_cast<int32_t>(Next() % 64);
      slow.act_max = 127 - static_cast<int32_t>(Next() % 64);
    }
    const int32_t e_top = (i % 4 == 0) ? 31 : 23;  // (some runs past the folded tier)
    for (int32_t k = 0; k < len; ++k) {
      const uint32_t pick = Next() % 8;
      m[k] = pick == 0   ? 0
             : pick == 1 ? INT32_MAX
             : pick == 2 ? 1 + static_cast<int32_t>(Next() % 1000)  // (x = -1, -2: h = 0)
                         : static_cast<int32_t>((1u << 30) | (Next() << 15 ^ Next()) >> 2);
      sh[k] = -1 - static_cast<int32_t>(Next() % e_top);
      int32_t* const pixels[2] = {acc0 + k, acc1 + k};
      for (int32_t* a : pixels) {
        switch (Next() % 6) {
          case 0: *a = (Next() % 2) ? lim : -lim; break;
          case 1: *a = static_cast<int32_t>(Next() % 5) - 2; break;  // -2 .. 2
          case 2: *a = static_cast<int32_t>(Next() % 20001) - 10000; break;
          default: *a = static_cast<int32_t>(Next() % (2u * lim + 1u)) - lim;
        }
      }
    }
    if (i % 16 == 0) {  // the offset at the bound (edges above), e = 1 .. 4
      const int32_t e = 1 + static_cast<int32_t>(Next() % 4);
      int32_t k_max = ((1 << 30) - 1) >> (e - 1);
      if (k_max % 2 == 0) --k_max;
      slow.output_offset = ((Next() % 2 ? k_max : -k_max) - 1) / 2;
      for (int32_t k = 0; k < len; ++k) sh[k] = -e;
    }
    const Requant fast = WithFastPath(slow, len, 0, nullptr);
    if (!fast.fast) {
      std::printf("folded test: fast path expected\n");
      ++bad;
      continue;
    }
    RequantizeRun(acc0, len, fast, 0, got0);
    RequantizeRuns<true>(acc0, acc1, len, fast, 0, got1, got2);
    for (int32_t k = 0; k < len; ++k) {
      const int8_t want0 = Requantize(acc0[k], slow, k), want1 = Requantize(acc1[k], slow, k);
      ++*checked;
      if (got0[k] != want0 || got1[k] != want0 || got2[k] != want1) {
        if (bad < 10) {
          std::printf("folded requantize mismatch acc %ld %ld m %ld shift %ld off %ld folded %d: "
                      "%d %d %d, expected %d %d\n",
                      static_cast<long>(acc0[k]), static_cast<long>(acc1[k]),
                      static_cast<long>(m[k]), static_cast<long>(sh[k]),
                      static_cast<long>(slow.output_offset), fast.folded, got0[k], got1[k],
                      got2[k], want0, want1);
        }
        ++bad;
      }
    }
  }
  return bad;
}
}  // namespace

int main(int argc, char** argv) {
  const long n = argc > 1 ? std::atol(argv[1]) : 2000000;
  long checked = 0, bad = 0;
  for (long i = 0; i < n; ++i) {
    uint32_t u[3] = {Next() & 0x7FFFFFFFu, Next() & 0x7FFFFFFFu, Next() & 0x7FFFFFFFu};
    switch (i % 4) {
      case 0:  // scales around 2^-11 .. 2^-4
        for (auto& v : u) v = 0x3A000000u + (v & 0x3FFFFFFu);
        break;
      case 1:  // few significand bits: exact quotients, ties in the rounding to 31 bits
        u[0] &= 0xFFFFF000u;
        u[1] &= 0xFFFE0000u;
        u[2] &= (Next() & 1) ? 0xFF800000u : 0xFFFFFF00u;
        break;
      case 2:  // any bits (inf, NaN, subnormal, zero included)
        u[0] = Next() | (Next() & 1u) << 31;
        break;
      default:
        break;
    }
    const float a = F(u[0]), b = F(u[1]), c = F(u[2]);
    ++checked;
    if (ValidScale(a) != (std::isfinite(a) && a > 0.0f)) ++bad;
    int32_t m1 = 0, s1 = 0, m2 = 0, s2 = 0, m3 = 0, s3 = 0;
    if (!ScaleRatioMultiplier(a, b, c, &m1, &s1)) continue;
    const double real = static_cast<double>(a) * static_cast<double>(b) / static_cast<double>(c);
    Reference(real, &m2, &s2);
    const bool ok = QuantizeMultiplier(real, &m3, &s3);
    if (!ok || m1 != m2 || s1 != s2 || m3 != m2 || s3 != s2) {
      if (bad < 10) {
        std::printf("mismatch %08lx %08lx %08lx: %ld %ld / %ld %ld, expected %ld %ld\n",
                    static_cast<unsigned long>(u[0]), static_cast<unsigned long>(u[1]),
                    static_cast<unsigned long>(u[2]), static_cast<long>(m1), static_cast<long>(s1),
                    static_cast<long>(m3), static_cast<long>(s3), static_cast<long>(m2),
                    static_cast<long>(s2));
      }
      ++bad;
    }
  }
  std::printf("multiplier_test: %ld checked, %ld mismatches\n", checked, bad);
  long rq_checked = 0;
  const long rq_bad = RequantizeMismatches(4 * n, &rq_checked);
  std::printf("requantize_test: %ld checked, %ld mismatches (DSP path %d)\n", rq_checked, rq_bad,
              TMT_REFERENCE_DSP);
  long fast_checked = 0;
  const long fast_bad = FastPathMismatches(n, &fast_checked);
  std::printf("fast_path_test: %ld checked, %ld mismatches\n", fast_checked, fast_bad);
  long folded_checked = 0;
  const long folded_bad = FoldedMismatches(n / 4, &folded_checked);
  std::printf("folded_path_test: %ld runs, %ld checked, %ld mismatches\n", n / 4, folded_checked,
              folded_bad);
  return bad || rq_bad || fast_bad || folded_bad ? 1 : 0;
}
