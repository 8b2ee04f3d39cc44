// Hand-written checks of tflm_ops/core/arith.h; expected values computed with the numpy
// reference (tfmicro_train/kernels/training_ops.py). The exhaustive bit-exact comparison is
// golden_test (driven by tests/test_golden_cpp.py).
#include <cstdio>
#include <cstdint>

#include "tflm_ops/core/arith.h"
#include "tflm_ops/core/training_ops.h"

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK_EQ(a, b)                                                                   \
  do {                                                                                   \
    ++g_checks;                                                                          \
    const long long va = static_cast<long long>(a), vb = static_cast<long long>(b);      \
    if (va != vb) {                                                                      \
      std::printf("%s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, va, vb); \
      ++g_failures;                                                                      \
    }                                                                                    \
  } while (0)

}  // namespace

int main() {
  using namespace tfmicro_train::core;
  // round_shift_right: round half up.
  const int64_t rsr_in[] = {-3, 3, -1, 1, -2, 5};
  const int64_t rsr_out[] = {-1, 2, 0, 1, -1, 3};
  for (int i = 0; i < 6; ++i) CHECK_EQ(RoundShiftRight(rsr_in[i], 1), rsr_out[i]);
  CHECK_EQ(RoundShiftRight(-5, 0), -5);

  // dyn_quantize([255, -255, 0, 3]) -> ([127, -127, 0, 2], 1)
  const int64_t acc[] = {255, -255, 0, 3};
  int8_t q[4];
  CHECK_EQ(DynQuantizeArray(acc, 4, q), 1);
  CHECK_EQ(q[0], 127);
  CHECK_EQ(q[1], -127);
  CHECK_EQ(q[2], 0);
  CHECK_EQ(q[3], 2);

  // quantize_multiplier_f32
  Multiplier m = QuantizeMultiplierF32(0.75f);
  CHECK_EQ(m.multiplier, 1610612736);
  CHECK_EQ(m.shift, 0);
  m = QuantizeMultiplierF32(1e-40f);  // subnormal
  CHECK_EQ(m.multiplier, 1169195008);
  CHECK_EQ(m.shift, -132);
  m = QuantizeMultiplierF32(-3.0f);
  CHECK_EQ(m.multiplier, -1610612736);
  CHECK_EQ(m.shift, 2);
  CHECK_EQ(QuantizeMultiplierF32(0.0f).multiplier, 0);

  // requant64, including the saturating left shifts.
  CHECK_EQ(Requant64(100, 1 << 30, 1), 100);
  CHECK_EQ(Requant64(-7, 1 << 30, 1), -7);
  CHECK_EQ(Requant64(1, 1 << 30, 64), kSat62);
  CHECK_EQ(Requant64(-1, 1 << 30, 64), -kSat62);
  CHECK_EQ(Requant64(0, 1 << 30, 64), 0);
  CHECK_EQ(Requant64(3, 1 << 30, 100), kSat62);
  CHECK_EQ(Requant64(5, 1 << 30, -40), 0);

  // hash32 and the rounding noise.
  CHECK_EQ(Hash32(0), 0u);
  CHECK_EQ(Hash32(1), 1753845952u);
  CHECK_EQ(Hash32(0xDEADBEEFu), 3861431939u);
  const int64_t noise[] = {32021, 44653, 30374, 26457};
  const uint32_t base = NoiseBase(12345, 7);
  for (uint32_t i = 0; i < 4; ++i) CHECK_EQ(Noise(base, i), noise[i]);

  // update multipliers: (lr * s) * factor in float32.
  m = UpdateMultiplier(0.01f, 0.003f, 0.5f);
  CHECK_EQ(m.multiplier, 2111062272);
  CHECK_EQ(m.shift, -16);
  m = UpdateMultiplier(0.01f, 0.003f, 7.0f);
  CHECK_EQ(m.multiplier, 1847179520);
  CHECK_EQ(m.shift, -12);

  // An op: the softmax loss rejects an out-of-range label.
  const int8_t probs[3] = {-128, 0, 127};
  float lut[256] = {};
  int8_t grad[3];
  float gs, loss;
  CHECK_EQ(static_cast<int>(SoftmaxCeGrad(probs, 3, 3, lut, grad, &gs, &loss)),
           static_cast<int>(Status::kLabelOutOfRange));
  CHECK_EQ(static_cast<int>(SoftmaxCeGrad(probs, 3, 1, lut, grad, &gs, &loss)),
           static_cast<int>(Status::kOk));
  CHECK_EQ(grad[0], 0);     // (0 + 1) >> 1
  CHECK_EQ(grad[1], -64);   // (128 - 256 + 1) >> 1
  CHECK_EQ(grad[2], 127);   // (255 + 1) >> 1 = 128 -> 127

  std::printf("arith_test: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
