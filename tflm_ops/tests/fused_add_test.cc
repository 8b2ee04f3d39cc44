// fused_irb.cc's AddResidualRun (with the DSP extension: three AddStage per element, SMMULR
// and the rounding in one shift) against AddResidual (MultiplyByQuantizedMultiplier, TFLM's
// reference ADD) on every (x, projection) int8 pair, for add parameters made as add.cc's for
// int8 from random scales and zero points (equal scales too: both input shifts 0), clamps
// narrowed on some. Includes fused_irb.cc (its helpers are internal): build it with
// tflm_ops/core/training_ops.cc, not the core library (tests/test_cortex_m.py runs it on the
// M4 and M7). Prints "fused_add_test: N checked, 0 mismatches, F fast".
#include <cstdint>
#include <cstdio>

#include "tflm_ops/core/fused_irb.cc"

namespace {

using tfmicro_train::core::FusedIrbParams;

uint32_t g_state = 1;
uint32_t Next() {  // LCG, high bits
  g_state = g_state * 1664525u + 1013904223u;
  return g_state >> 8;
}

float RandScale() { return 0.001f + static_cast<float>(Next() % 100000) * 1e-5f; }

}  // namespace

int main() {
  namespace core = tfmicro_train::core;
  long checked = 0, bad = 0, fast = 0;
  for (int t = 0; t < 400; ++t) {
    FusedIrbParams p;
    p.residual = 1;
    p.add_left_shift = 20;
    const float sx = RandScale(), sy = RandScale();
    const float sp = t % 7 == 0 ? sx : RandScale();
    const int32_t zx = static_cast<int32_t>(Next() % 256) - 128;
    const int32_t zp = static_cast<int32_t>(Next() % 256) - 128;
    const int32_t zy = static_cast<int32_t>(Next() % 256) - 128;
    p.add_offset_x = -zx;
    p.add_offset_p = -zp;
    p.add_out_offset = zy;
    const double twice_max = 2 * static_cast<double>(sx > sp ? sx : sp);
    core::tflm_ref::QuantizeMultiplier(sx / twice_max, &p.add_mult_x, &p.add_shift_x);
    core::tflm_ref::QuantizeMultiplier(sp / twice_max, &p.add_mult_p, &p.add_shift_p);
    core::tflm_ref::QuantizeMultiplier(twice_max / ((1 << 20) * static_cast<double>(sy)),
                                       &p.add_out_mult, &p.add_out_shift);
    if (p.add_out_shift > 0) continue;  // (PrepareFusedIrb rejects it)
    p.add_act_min = t % 3 == 0 ? zy : -128;
    p.add_act_max = t % 5 == 0 ? 100 : 127;
    fast += p.add_shift_x >= -30 && p.add_shift_p >= -30 && p.add_out_shift >= -30;
    int8_t xs[256], vs[256], y[256];
    for (int a = 0; a < 256; ++a) {
      for (int b = 0; b < 256; ++b) {
        xs[b] = static_cast<int8_t>(a - 128);
        vs[b] = static_cast<int8_t>(b - 128);
      }
      core::AddResidualRun(p, xs, vs, 256, y);
      for (int b = 0; b < 256; ++b, ++checked) {
        if (y[b] != core::AddResidual(p, xs[b], vs[b])) ++bad;
      }
    }
  }
  std::printf("fused_add_test: %ld checked, %ld mismatches, %ld fast\n", checked, bad, fast);
  return bad != 0 ? 1 : 0;
}
