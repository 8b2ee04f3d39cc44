// tflm_reference.h's integer derivations against the double-precision arithmetic they replace:
// ScaleRatioMultiplier(a, b, c) == QuantizeMultiplier(double(a) * double(b) / double(c)) with
// the libm frexp / round decoding (TFLM's QuantizeMultiplier), QuantizeMultiplier's bit decoding
// == the libm one, ValidScale == isfinite && > 0, on random floats (normal scales near the usual
// ranges, any exponent, significands with few bits set: exact quotients and rounding ties).
// Usage: multiplier_test [N]; prints "multiplier_test: N checked, 0 mismatches".
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tflm_ops/core/tflm_reference.h"

namespace {

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
  return bad ? 1 : 0;
}
