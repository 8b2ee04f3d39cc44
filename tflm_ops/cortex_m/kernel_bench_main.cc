// kernel_bench PLAN: instructions of single kernel calls on Cortex-M (QEMU -icount shift=0).
//
// PLAN is a text file, one kernel call per line (written by benchmarks/cortex_m.py):
//   <label> <kind> OH OW CO KH KW IH IW CI SH SW PT PL N
// kind: conv_input_grad | dw_input_grad | conv_weight_update | conv_weight_update_dsp |
//       dw_weight_update | bias_update | conv_forward | dw_forward
// (g / output [OH, OW, CO], x / input [IH, IW, CI], weights [CO, KH, KW, CI] or [1, KH, KW, C],
// N = update_channels). conv_forward / dw_forward are TFLM's reference int8 kernels
// (reference_integer_ops::ConvPerChannel / DepthwiseConvPerChannel, what TFLM's CONV_2D and
// DEPTHWISE_CONV_2D run without an optimized kernel library); they need TMT_WITH_TFLM_REFERENCE
// and TFLM's include paths. Data are pseudo-random (fixed seed); each call runs once to warm up
// and once measured. Prints "<label> <kind> insns <n>" per line, then "done".
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tflm_ops/core/training_ops.h"
#include "tflm_ops/cortex_m/dsp_kernels.h"

#if defined(TMT_WITH_TFLM_REFERENCE)
#include "tensorflow/lite/kernels/internal/reference/integer_ops/conv.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/depthwise_conv.h"
#endif

#if defined(__arm__)
#include "tflm_ops/cortex_m/cm_timer.h"
#endif

namespace {

namespace core = tfmicro_train::core;

uint32_t g_rng = 12345;
int8_t Rand8(int lo, int hi) {
  g_rng = g_rng * 1664525u + 1013904223u;
  return static_cast<int8_t>(lo + static_cast<int>((g_rng >> 8) % static_cast<uint32_t>(hi - lo + 1)));
}

std::vector<int8_t> Random(size_t n, int lo = -127, int hi = 127) {
  std::vector<int8_t> v(n);
  for (auto& x : v) x = Rand8(lo, hi);
  return v;
}

void Start() {
#if defined(__arm__)
  TmtTimerStart();
#endif
}

unsigned long long Stop() {
#if defined(__arm__)
  return static_cast<unsigned long long>(TmtInstructions());
#else
  return 0;
#endif
}

struct Line {
  char label[64];
  char kind[32];
  int oh, ow, co, kh, kw, ih, iw, ci, sh, sw, pt, pl, n;
};

// Runs fn twice (warm-up, measured); returns the measured instruction count.
template <typename Fn>
unsigned long long Measure(Fn fn) {
  fn();
  Start();
  fn();
  return Stop();
}

unsigned long long Run(const Line& l) {
  const core::Hwc g_dims{l.oh, l.ow, l.co};
  const core::Hwc x_dims{l.ih, l.iw, l.ci};
  core::ConvGeom geom;
  geom.stride_h = l.sh;
  geom.stride_w = l.sw;
  geom.pad_top = l.pt;
  geom.pad_left = l.pl;
  const bool dw = std::strncmp(l.kind, "dw_", 3) == 0;
  const size_t wsize = static_cast<size_t>(dw ? l.kh * l.kw * l.ci : l.co * l.kh * l.kw * l.ci);
  std::vector<int8_t> g = Random(static_cast<size_t>(g_dims.size()));
  std::vector<int8_t> x = Random(static_cast<size_t>(x_dims.size()), -128, 127);
  std::vector<int8_t> w = Random(wsize);
  std::vector<int32_t> wmul(static_cast<size_t>(l.co), 20000);
  std::vector<float> factor(static_cast<size_t>(l.co), 0.01f);
  std::vector<int8_t> out(static_cast<size_t>(x_dims.size()));
  core::UpdateParams p;
  p.update_channels = l.n;
  p.seed = 7;
  p.x_zero_point = -3;
  float s_out = 0;
  const std::string kind = l.kind;
  if (kind == "conv_input_grad") {
    return Measure([&] {
      core::ConvInputGrad(g.data(), 0.01f, g_dims, w.data(), l.kh, l.kw, wmul.data(), 0.02f, x_dims,
                          geom, out.data(), &s_out, nullptr);
    });
  }
  if (kind == "dw_input_grad") {
    return Measure([&] {
      core::DepthwiseInputGrad(g.data(), 0.01f, g_dims, w.data(), l.kh, l.kw, wmul.data(), 0.02f,
                               x_dims, geom, out.data(), &s_out, nullptr);
    });
  }
  if (kind == "conv_weight_update" || kind == "conv_weight_update_dsp") {
    const auto fn = kind == "conv_weight_update" ? core::ConvWeightUpdatePortable
                                                 : tfmicro_train::cortex_m::ConvWeightUpdate;
    return Measure([&] {
      fn(g.data(), 0.01f, g_dims, x.data(), x_dims, w.data(), l.kh, l.kw, factor.data(), 0.05f, geom,
         p, 1);
    });
  }
  if (kind == "dw_weight_update") {
    return Measure([&] {
      core::DepthwiseWeightUpdate(g.data(), 0.01f, g_dims, x.data(), x_dims, w.data(), l.kh, l.kw,
                                  factor.data(), 0.05f, geom, p, 1);
    });
  }
  if (kind == "bias_update") {
    std::vector<int32_t> b(static_cast<size_t>(l.co), 1000);
    return Measure([&] {
      core::BiasUpdate(g.data(), 0.01f, l.oh * l.ow, l.co, b.data(), factor.data(), 0.05f, p, 1);
    });
  }
#if defined(TMT_WITH_TFLM_REFERENCE)
  std::vector<int32_t> mult(static_cast<size_t>(l.co), 1 << 30), shift(static_cast<size_t>(l.co), -8);
  std::vector<int32_t> bias(static_cast<size_t>(l.co), 100);
  std::vector<int8_t> y(static_cast<size_t>(g_dims.size()));
  const int32_t in_dims[4] = {1, l.ih, l.iw, l.ci};
  const int32_t out_dims[4] = {1, l.oh, l.ow, l.co};
  const int32_t conv_dims[4] = {l.co, l.kh, l.kw, l.ci};
  const int32_t dw_dims[4] = {1, l.kh, l.kw, l.ci};
  const int32_t bias_dims[1] = {l.co};
  const tflite::RuntimeShape in_shape(4, in_dims);
  const tflite::RuntimeShape out_shape(4, out_dims);
  const tflite::RuntimeShape bias_shape(1, bias_dims);
  if (kind == "conv_forward") {
    tflite::ConvParams cp = {};
    cp.padding_values.height = static_cast<int16_t>(l.pt);
    cp.padding_values.width = static_cast<int16_t>(l.pl);
    cp.stride_height = static_cast<int16_t>(l.sh);
    cp.stride_width = static_cast<int16_t>(l.sw);
    cp.dilation_height_factor = cp.dilation_width_factor = 1;
    cp.input_offset = 3;
    cp.output_offset = -5;
    cp.quantized_activation_min = -128;
    cp.quantized_activation_max = 127;
    const tflite::RuntimeShape f_shape(4, conv_dims);
    return Measure([&] {
      tflite::reference_integer_ops::ConvPerChannel(cp, mult.data(), shift.data(), in_shape,
                                                    x.data(), f_shape, w.data(), bias_shape,
                                                    bias.data(), out_shape, y.data());
    });
  }
  if (kind == "dw_forward") {
    tflite::DepthwiseParams dp = {};
    dp.padding_values.height = static_cast<int16_t>(l.pt);
    dp.padding_values.width = static_cast<int16_t>(l.pl);
    dp.stride_height = static_cast<int16_t>(l.sh);
    dp.stride_width = static_cast<int16_t>(l.sw);
    dp.dilation_height_factor = dp.dilation_width_factor = 1;
    dp.depth_multiplier = 1;
    dp.input_offset = 3;
    dp.output_offset = -5;
    dp.quantized_activation_min = -128;
    dp.quantized_activation_max = 127;
    const tflite::RuntimeShape f_shape(4, dw_dims);
    return Measure([&] {
      tflite::reference_integer_ops::DepthwiseConvPerChannel(dp, mult.data(), shift.data(),
                                                             in_shape, x.data(), f_shape, w.data(),
                                                             bias_shape, bias.data(), out_shape,
                                                             y.data());
    });
  }
#endif
  return ~0ull;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::printf("usage: kernel_bench PLAN\n");
    return 2;
  }
  FILE* f = std::fopen(argv[1], "r");
  if (!f) {
    std::printf("cannot open %s\n", argv[1]);
    return 3;
  }
  Line l;
  int bad = 0;
  while (std::fscanf(f, "%63s %31s %d %d %d %d %d %d %d %d %d %d %d %d %d", l.label, l.kind, &l.oh,
                     &l.ow, &l.co, &l.kh, &l.kw, &l.ih, &l.iw, &l.ci, &l.sh, &l.sw, &l.pt, &l.pl,
                     &l.n) == 15) {
    const unsigned long long n = Run(l);
    if (n == ~0ull) {
      std::printf("%s %s unsupported\n", l.label, l.kind);
      ++bad;
    } else {
      std::printf("%s %s insns %llu\n", l.label, l.kind, n);
    }
  }
  std::fclose(f);
  std::printf("done\n");
  return bad ? 1 : 0;
}
