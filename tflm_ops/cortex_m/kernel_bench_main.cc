// kernel_bench PLAN: instructions of single kernel calls on Cortex-M (QEMU -icount shift=0).
//
// PLAN is a text file, one kernel call per line (written by benchmarks/cortex_m.py):
//   <label> <kind> OH OW CO KH KW IH IW CI SH SW PT PL N
// kind: conv_input_grad | dw_input_grad | conv_weight_update | conv_weight_update_dsp |
//       dw_weight_update | bias_update | conv_forward | dw_forward |
//       tflm_conv_input_grad | tflm_dw_input_grad | tflm_conv_weight_grad | tflm_dw_weight_grad |
//       cmsis_conv_input_grad | cmsis_dw_input_grad | cmsis_conv_weight_grad | cmsis_dw_weight_grad
// (g / output [OH, OW, CO], x / input [IH, IW, CI], weights [CO, KH, KW, CI] or [1, KH, KW, C],
// N = update_channels). conv_forward / dw_forward are TFLM's reference int8 kernels
// (reference_integer_ops::ConvPerChannel / DepthwiseConvPerChannel, what TFLM's CONV_2D and
// DEPTHWISE_CONV_2D run without an optimized kernel library). The tflm_* kinds are the same
// gradients as our conv_input_grad / dw_input_grad / conv_weight_update / dw_weight_update of
// that line, computed as a TFLM user would with TFLM's reference int8 kernels (TFLM has no
// training ops; the paper's "full update with TFLM kernels"), the cheaper where two fit:
//   conv input grad   TransposeConv (TFLM's TRANSPOSE_CONV: the gradient of a convolution with
//                     respect to its input), or for a 1x1 stride-1 conv ConvPerChannel with the
//                     transposed weights [CI, 1, 1, CO];
//   conv weight grad  1x1 stride 1: FullyConnected of g^T [CO, OH*OW] by x^T [CI, OH*OW];
//                     otherwise ConvPerChannel of x^T [CI, IH, IW, 1] by g^T [CO, OH, OW, 1]
//                     with dilation = the stride -> [CI, KH, KW, CO];
//   dw input grad     DepthwiseConvPerChannel of g with the rotated kernel, for stride s as
//                     s*s stride-1 calls, one per output phase with the taps that reach it;
//   dw weight grad    DepthwiseConvPerChannel of x by g [1, OH, OW, C] with dilation = the
//                     stride -> [1, KH, KW, C].
// Only the multiply-accumulate kernels: the transposes, the dyn-quant scaling and the weight
// update itself are not counted (they would only add). These need TMT_WITH_TFLM_REFERENCE and
// TFLM's include paths. Data are pseudo-random (fixed seed); each call runs once to warm up and
// once measured (the tflm_* kinds once: their cost does not depend on a warm-up under QEMU).
// The cmsis_* kinds (kernel_bench_cmsis.cc, built with TMT_WITH_CMSIS_NN, CMSIS-NN's Include
// directory on the include path and a TFLM library built with OPTIMIZED_KERNEL_DIR=cmsis_nn, which
// holds CMSIS-NN) are the same mappings on Arm's CMSIS-NN kernels, what TFLM's TRANSPOSE_CONV /
// CONV_2D / FULLY_CONNECTED / DEPTHWISE_CONV_2D run in that build, the cheaper where two fit:
//   conv input grad   arm_transpose_conv_wrapper_s8, or for a 1x1 stride-1 conv
//                     arm_convolve_wrapper_s8 (-> arm_convolve_1x1_s8_fast) with [CI, 1, 1, CO];
//   conv weight grad  1x1 stride 1: arm_fully_connected_s8 of g^T by x^T, or the same product as
//                     a 1x1 convolution (arm_convolve_1x1_s8_fast, what TFLM's FULLY_CONNECTED
//                     with a 4-D output runs); otherwise arm_convolve_wrapper_s8 with dilation
//                     (-> arm_convolve_s8, which takes dilation);
//   dw input grad     arm_depthwise_conv_wrapper_s8 per output phase (stride 1, no dilation:
//                     the 3x3 or the DSP "opt" kernel), with the padding that makes it exact;
//   dw weight grad    arm_depthwise_conv_wrapper_s8 with dilation = the stride (stride 2: the
//                     generic arm_depthwise_conv_s8, CMSIS-NN's only depthwise kernel with
//                     dilation).
// Each cmsis_* call also runs TFLM's reference kernel on the same data and parameters (not
// measured) and prints "<label> <kind> mismatch <bytes>": output bytes that differ (0 = exact).
// Prints "<label> <kind> insns <n>" per line, then "done".
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
#include "tensorflow/lite/kernels/internal/reference/integer_ops/fully_connected.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/transpose_conv.h"
#endif

#if defined(__arm__)
#include "tflm_ops/cortex_m/cm_timer.h"
#endif

#if defined(TMT_WITH_CMSIS_NN)
namespace tmt_kernel_bench {
// kernel_bench_cmsis.cc: a cmsis_* kind of a line's fields (OH ... N), ~0 if it cannot run;
// *mismatch = output bytes differing from TFLM's reference kernels on the same data.
unsigned long long CmsisGradient(const char* kind, const int* fields, unsigned long long* mismatch);
}  // namespace tmt_kernel_bench
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

template <typename Fn>
unsigned long long MeasureOnce(Fn fn) {
  Start();
  fn();
  return Stop();
}

#if defined(TMT_WITH_TFLM_REFERENCE)
// The parameters every TFLM reference int8 call below takes (values do not change the cost).
template <typename P>
P RefParams(int32_t pad_h, int32_t pad_w, int32_t stride_h, int32_t stride_w, int32_t dil_h,
            int32_t dil_w) {
  P p = {};
  p.padding_values.height = static_cast<int16_t>(pad_h);
  p.padding_values.width = static_cast<int16_t>(pad_w);
  p.stride_height = static_cast<int16_t>(stride_h);
  p.stride_width = static_cast<int16_t>(stride_w);
  p.dilation_height_factor = static_cast<int16_t>(dil_h);
  p.dilation_width_factor = static_cast<int16_t>(dil_w);
  p.input_offset = 3;
  p.output_offset = -5;
  p.quantized_activation_min = -128;
  p.quantized_activation_max = 127;
  return p;
}

tflite::RuntimeShape Shape4(int32_t a, int32_t b, int32_t c, int32_t d) {
  const int32_t dims[4] = {a, b, c, d};
  return tflite::RuntimeShape(4, dims);
}

// DepthwiseConvPerChannel of in [1, ih, iw, c] by a [1, kh, kw, c] kernel -> [1, oh, ow, c].
unsigned long long RefDepthwise(int32_t ih, int32_t iw, int32_t c, int32_t kh, int32_t kw,
                                int32_t oh, int32_t ow, int32_t pad_h, int32_t pad_w,
                                int32_t dil_h, int32_t dil_w) {
  std::vector<int8_t> in = Random(static_cast<size_t>(ih * iw * c));
  std::vector<int8_t> k = Random(static_cast<size_t>(kh * kw * c));
  std::vector<int8_t> out(static_cast<size_t>(oh * ow * c));
  std::vector<int32_t> mult(static_cast<size_t>(c), 1 << 30), shift(static_cast<size_t>(c), -8);
  auto dp = RefParams<tflite::DepthwiseParams>(pad_h, pad_w, 1, 1, dil_h, dil_w);
  dp.depth_multiplier = 1;
  const int32_t bias_dims[1] = {c};
  return MeasureOnce([&] {
    tflite::reference_integer_ops::DepthwiseConvPerChannel(
        dp, mult.data(), shift.data(), Shape4(1, ih, iw, c), in.data(), Shape4(1, kh, kw, c),
        k.data(), tflite::RuntimeShape(1, bias_dims), nullptr, Shape4(1, oh, ow, c), out.data());
  });
}

// ConvPerChannel of in [b, ih, iw, ci] by [co, kh, kw, ci] -> [b, oh, ow, co], stride 1.
unsigned long long RefConv(int32_t b, int32_t ih, int32_t iw, int32_t ci, int32_t co, int32_t kh,
                           int32_t kw, int32_t oh, int32_t ow, int32_t pad_h, int32_t pad_w,
                           int32_t dil_h, int32_t dil_w) {
  std::vector<int8_t> in = Random(static_cast<size_t>(b * ih * iw * ci));
  std::vector<int8_t> k = Random(static_cast<size_t>(co * kh * kw * ci));
  std::vector<int8_t> out(static_cast<size_t>(b * oh * ow * co));
  std::vector<int32_t> mult(static_cast<size_t>(co), 1 << 30), shift(static_cast<size_t>(co), -8);
  const auto cp = RefParams<tflite::ConvParams>(pad_h, pad_w, 1, 1, dil_h, dil_w);
  const int32_t bias_dims[1] = {co};
  return MeasureOnce([&] {
    tflite::reference_integer_ops::ConvPerChannel(
        cp, mult.data(), shift.data(), Shape4(b, ih, iw, ci), in.data(), Shape4(co, kh, kw, ci),
        k.data(), tflite::RuntimeShape(1, bias_dims), static_cast<const int32_t*>(nullptr),
        Shape4(b, oh, ow, co), out.data());
  });
}

// The line's gradients with TFLM's reference kernels (see the kinds at the top).
unsigned long long RunTflmGradient(const Line& l, const std::string& kind) {
  const bool pointwise = l.kh == 1 && l.kw == 1 && l.sh == 1 && l.sw == 1 && l.pt == 0 &&
                         l.pl == 0 && l.oh == l.ih && l.ow == l.iw;
  if (kind == "tflm_conv_input_grad") {
    // g [OH, OW, CO] -> [IH, IW, CI] through the forward weights [CO, KH, KW, CI]
    std::vector<int8_t> g = Random(static_cast<size_t>(l.oh * l.ow * l.co));
    std::vector<int8_t> w = Random(static_cast<size_t>(l.co * l.kh * l.kw * l.ci));
    std::vector<int8_t> out(static_cast<size_t>(l.ih * l.iw * l.ci));
    std::vector<int32_t> scratch(out.size());
    std::vector<int32_t> mult(static_cast<size_t>(l.ci), 1 << 30), shift(static_cast<size_t>(l.ci), -8);
    const auto cp = RefParams<tflite::ConvParams>(l.pt, l.pl, l.sh, l.sw, 1, 1);
    const int32_t bias_dims[1] = {l.ci};
    const tflite::RuntimeShape none;
    unsigned long long n = MeasureOnce([&] {
      tflite::reference_integer_ops::TransposeConv(
          cp, mult.data(), shift.data(), Shape4(1, l.oh, l.ow, l.co), g.data(),
          Shape4(l.ci, l.kh, l.kw, l.co), w.data(), tflite::RuntimeShape(1, bias_dims), nullptr,
          Shape4(1, l.ih, l.iw, l.ci), out.data(), none, nullptr, scratch.data());
    });
    if (pointwise) {
      const unsigned long long c = RefConv(1, l.oh, l.ow, l.co, l.ci, 1, 1, l.ih, l.iw, 0, 0, 1, 1);
      if (c < n) n = c;
    }
    return n;
  }
  if (kind == "tflm_conv_weight_grad") {
    if (pointwise) {
      // dW [CO, CI] = g^T [CO, P] x^T [CI, P]^T, P = OH * OW
      const int32_t pos = l.oh * l.ow;
      std::vector<int8_t> gt = Random(static_cast<size_t>(l.co * pos));
      std::vector<int8_t> xt = Random(static_cast<size_t>(l.ci * pos));
      std::vector<int8_t> out(static_cast<size_t>(l.co * l.ci));
      tflite::FullyConnectedParams fp = {};
      fp.input_offset = 3;
      fp.output_offset = -5;
      fp.output_multiplier = 1 << 30;
      fp.output_shift = -8;
      fp.quantized_activation_min = -128;
      fp.quantized_activation_max = 127;
      const int32_t in_dims[2] = {l.co, pos};
      const int32_t f_dims[2] = {l.ci, pos};
      const int32_t o_dims[2] = {l.co, l.ci};
      const int32_t bias_dims[1] = {l.ci};
      return MeasureOnce([&] {
        tflite::reference_integer_ops::FullyConnected<int8_t, int8_t, int8_t, int32_t>(
            fp, tflite::RuntimeShape(2, in_dims), gt.data(), tflite::RuntimeShape(2, f_dims),
            xt.data(), tflite::RuntimeShape(1, bias_dims), nullptr, tflite::RuntimeShape(2, o_dims),
            out.data());
      });
    }
    // dW^T [CI, KH, KW, CO]: batches = CI, one input channel, g^T as the kernel
    return RefConv(l.ci, l.ih, l.iw, 1, l.co, l.oh, l.ow, l.kh, l.kw, l.pt, l.pl, l.sh, l.sw);
  }
  if (kind == "tflm_dw_input_grad") {
    // output phase (py, px) of the input gradient: the taps ky with (py + pt - ky) % sh == 0
    unsigned long long n = 0;
    for (int32_t py = 0; py < l.sh; ++py) {
      for (int32_t px = 0; px < l.sw; ++px) {
        int32_t ty = 0, tx = 0;
        for (int32_t k = 0; k < l.kh; ++k) ty += ((py + l.pt - k) % l.sh + l.sh) % l.sh == 0;
        for (int32_t k = 0; k < l.kw; ++k) tx += ((px + l.pl - k) % l.sw + l.sw) % l.sw == 0;
        const int32_t oh = (l.ih - py + l.sh - 1) / l.sh, ow = (l.iw - px + l.sw - 1) / l.sw;
        if (ty == 0 || tx == 0 || oh <= 0 || ow <= 0) continue;
        n += RefDepthwise(l.oh, l.ow, l.co, ty, tx, oh, ow, ty - 1, tx - 1, 1, 1);
      }
    }
    return n;
  }
  if (kind == "tflm_dw_weight_grad") {
    return RefDepthwise(l.ih, l.iw, l.ci, l.oh, l.ow, l.kh, l.kw, l.pt, l.pl, l.sh, l.sw);
  }
  return ~0ull;
}
#endif

#if defined(TMT_WITH_CMSIS_NN)
unsigned long long g_mismatch = 0;  // of the last cmsis_* line
#endif

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
#if defined(TMT_WITH_CMSIS_NN)
  if (kind.compare(0, 6, "cmsis_") == 0) {
    const int fields[13] = {l.oh, l.ow, l.co, l.kh, l.kw, l.ih, l.iw, l.ci, l.sh, l.sw, l.pt, l.pl, l.n};
    return tmt_kernel_bench::CmsisGradient(l.kind, fields, &g_mismatch);
  }
#endif
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
  if (kind.compare(0, 5, "tflm_") == 0) return RunTflmGradient(l, kind);
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
#if defined(TMT_WITH_CMSIS_NN)
      if (std::strncmp(l.kind, "cmsis_", 6) == 0) {
        std::printf("%s %s mismatch %llu\n", l.label, l.kind, g_mismatch);
      }
#endif
    }
  }
  std::fclose(f);
  std::printf("done\n");
  return bad ? 1 : 0;
}
