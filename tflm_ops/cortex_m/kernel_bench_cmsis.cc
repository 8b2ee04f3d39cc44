// kernel_bench's cmsis_* kinds (see kernel_bench_main.cc): a line's gradient convolution on Arm's
// CMSIS-NN kernels, as TFLM built with OPTIMIZED_KERNEL_DIR=cmsis_nn would run it, each call also
// run (not measured) with TFLM's reference kernel on the same data to count differing output
// bytes. A translation unit of its own: GCC's code for the header-only reference kernels of the
// tflm_* kinds in kernel_bench_main.cc depends on what else that file holds (3x in instructions
// for TransposeConv when these functions were beside them), so they stay as without CMSIS-NN.
// Needs TFLM's include paths, CMSIS-NN's Include directory and a TFLM library holding CMSIS-NN.
#include <cstdint>
#include <string>
#include <vector>

#include "arm_nnfunctions.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/conv.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/depthwise_conv.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/fully_connected.h"
#include "tensorflow/lite/kernels/internal/reference/integer_ops/transpose_conv.h"

#if defined(__arm__)
#include "tflm_ops/cortex_m/cm_timer.h"
#endif

namespace tmt_kernel_bench {

unsigned long long CmsisGradient(const char* kind, const int* fields, unsigned long long* mismatch);

namespace {

// A kernel_bench plan line's fields: g [OH, OW, CO], kernel KH x KW, x [IH, IW, CI], strides,
// top / left padding, update channels.
struct Line {
  int oh, ow, co, kh, kw, ih, iw, ci, sh, sw, pt, pl, n;
};

uint32_t g_rng = 54321;
int8_t Rand8() {
  g_rng = g_rng * 1664525u + 1013904223u;
  return static_cast<int8_t>(-127 + static_cast<int>((g_rng >> 8) % 255u));
}

std::vector<int8_t> Random(size_t n) {
  std::vector<int8_t> v(n);
  for (auto& x : v) x = Rand8();
  return v;
}

template <typename Fn>
unsigned long long MeasureOnce(Fn fn) {
#if defined(__arm__)
  TmtTimerStart();
  fn();
  return static_cast<unsigned long long>(TmtInstructions());
#else
  fn();
  return 0;
#endif
}

// The parameters of TFLM's reference calls (as kernel_bench_main.cc's RefParams).
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

// Output bytes where a CMSIS-NN call differs from TFLM's reference kernel on the same data.
unsigned long long g_mismatch = 0;

void Compare(const std::vector<int8_t>& a, const std::vector<int8_t>& b) {
  for (size_t i = 0; i < a.size(); ++i) g_mismatch += a[i] != b[i];
}

// A scratch buffer of `bytes` for a CMSIS-NN context (never empty: some kernels test buf).
struct Scratch {
  std::vector<int32_t> mem;
  cmsis_nn_context ctx;
  explicit Scratch(int32_t bytes) : mem(static_cast<size_t>(bytes / 4 + 1)) {
    ctx.buf = mem.data();
    ctx.size = bytes;
  }
};

cmsis_nn_conv_params CmsisConvParams(int32_t pad_h, int32_t pad_w, int32_t stride_h,
                                     int32_t stride_w, int32_t dil_h, int32_t dil_w) {
  cmsis_nn_conv_params p = {};
  p.input_offset = 3;
  p.output_offset = -5;
  p.stride = {stride_w, stride_h};
  p.padding = {pad_w, pad_h};
  p.dilation = {dil_w, dil_h};
  p.activation = {-128, 127};
  return p;
}

// arm_convolve_wrapper_s8 of in [b, ih, iw, ci] by [co, kh, kw, ci] -> [b, oh, ow, co], stride
// 1 (as RefConv, checked against ConvPerChannel).
unsigned long long CmsisConv(int32_t b, int32_t ih, int32_t iw, int32_t ci, int32_t co, int32_t kh,
                             int32_t kw, int32_t oh, int32_t ow, int32_t pad_h, int32_t pad_w,
                             int32_t dil_h, int32_t dil_w) {
  std::vector<int8_t> in = Random(static_cast<size_t>(b * ih * iw * ci));
  std::vector<int8_t> k = Random(static_cast<size_t>(co * kh * kw * ci));
  std::vector<int8_t> out(static_cast<size_t>(b * oh * ow * co)), ref(out.size());
  std::vector<int32_t> mult(static_cast<size_t>(co), 1 << 30), shift(static_cast<size_t>(co), -8);
  const auto rp = RefParams<tflite::ConvParams>(pad_h, pad_w, 1, 1, dil_h, dil_w);
  const int32_t bias_dims[1] = {co};
  tflite::reference_integer_ops::ConvPerChannel(
      rp, mult.data(), shift.data(), Shape4(b, ih, iw, ci), in.data(), Shape4(co, kh, kw, ci),
      k.data(), tflite::RuntimeShape(1, bias_dims), static_cast<const int32_t*>(nullptr),
      Shape4(b, oh, ow, co), ref.data());
  const cmsis_nn_conv_params p = CmsisConvParams(pad_h, pad_w, 1, 1, dil_h, dil_w);
  const cmsis_nn_per_channel_quant_params q = {mult.data(), shift.data()};
  const cmsis_nn_dims in_d = {b, ih, iw, ci}, k_d = {co, kh, kw, ci}, bias_d = {1, 1, 1, co};
  const cmsis_nn_dims out_d = {b, oh, ow, co};
  Scratch s(arm_convolve_wrapper_s8_get_buffer_size(&p, &in_d, &k_d, &out_d));
  arm_cmsis_nn_status st = ARM_CMSIS_NN_SUCCESS;
  const unsigned long long n = MeasureOnce([&] {
    st = arm_convolve_wrapper_s8(&s.ctx, &p, &q, &in_d, in.data(), &k_d, k.data(), &bias_d, nullptr,
                                 &out_d, out.data());
  });
  if (st != ARM_CMSIS_NN_SUCCESS) return ~0ull;
  Compare(out, ref);
  return n;
}

// arm_depthwise_conv_wrapper_s8 of in [1, ih, iw, c] by [1, kh, kw, c] -> [1, oh, ow, c], stride 1
// (as RefDepthwise, checked against DepthwiseConvPerChannel).
unsigned long long CmsisDepthwise(int32_t ih, int32_t iw, int32_t c, int32_t kh, int32_t kw,
                                  int32_t oh, int32_t ow, int32_t pad_h, int32_t pad_w,
                                  int32_t dil_h, int32_t dil_w) {
  std::vector<int8_t> in = Random(static_cast<size_t>(ih * iw * c));
  std::vector<int8_t> k = Random(static_cast<size_t>(kh * kw * c));
  std::vector<int8_t> out(static_cast<size_t>(oh * ow * c)), ref(out.size());
  std::vector<int32_t> mult(static_cast<size_t>(c), 1 << 30), shift(static_cast<size_t>(c), -8);
  auto dp = RefParams<tflite::DepthwiseParams>(pad_h, pad_w, 1, 1, dil_h, dil_w);
  dp.depth_multiplier = 1;
  const int32_t bias_dims[1] = {c};
  tflite::reference_integer_ops::DepthwiseConvPerChannel(
      dp, mult.data(), shift.data(), Shape4(1, ih, iw, c), in.data(), Shape4(1, kh, kw, c), k.data(),
      tflite::RuntimeShape(1, bias_dims), nullptr, Shape4(1, oh, ow, c), ref.data());
  cmsis_nn_dw_conv_params p = {};
  p.input_offset = 3;
  p.output_offset = -5;
  p.ch_mult = 1;
  p.stride = {1, 1};
  p.padding = {pad_w, pad_h};
  p.dilation = {dil_w, dil_h};
  p.activation = {-128, 127};
  const cmsis_nn_per_channel_quant_params q = {mult.data(), shift.data()};
  const cmsis_nn_dims in_d = {1, ih, iw, c}, k_d = {1, kh, kw, c}, bias_d = {1, 1, 1, c};
  const cmsis_nn_dims out_d = {1, oh, ow, c};
  Scratch s(arm_depthwise_conv_wrapper_s8_get_buffer_size(&p, &in_d, &k_d, &out_d));
  arm_cmsis_nn_status st = ARM_CMSIS_NN_SUCCESS;
  const unsigned long long n = MeasureOnce([&] {
    st = arm_depthwise_conv_wrapper_s8(&s.ctx, &p, &q, &in_d, in.data(), &k_d, k.data(), &bias_d,
                                       nullptr, &out_d, out.data());
  });
  if (st != ARM_CMSIS_NN_SUCCESS) return ~0ull;
  Compare(out, ref);
  return n;
}

// The line's gradients with CMSIS-NN (see the kinds at the top).
unsigned long long Gradient(const Line& l, const std::string& kind) {
  const bool pointwise = l.kh == 1 && l.kw == 1 && l.sh == 1 && l.sw == 1 && l.pt == 0 &&
                         l.pl == 0 && l.oh == l.ih && l.ow == l.iw;
  if (kind == "cmsis_conv_input_grad") {
    // g [OH, OW, CO] -> [IH, IW, CI] through the forward weights [CO, KH, KW, CI], as TFLM's
    // TRANSPOSE_CONV with weights [CI, KH, KW, CO]
    std::vector<int8_t> g = Random(static_cast<size_t>(l.oh * l.ow * l.co));
    std::vector<int8_t> w = Random(static_cast<size_t>(l.co * l.kh * l.kw * l.ci));
    std::vector<int8_t> out(static_cast<size_t>(l.ih * l.iw * l.ci)), ref(out.size());
    std::vector<int32_t> acc(out.size());
    std::vector<int32_t> mult(static_cast<size_t>(l.ci), 1 << 30), shift(static_cast<size_t>(l.ci), -8);
    const auto cp = RefParams<tflite::ConvParams>(l.pt, l.pl, l.sh, l.sw, 1, 1);
    const int32_t bias_dims[1] = {l.ci};
    const tflite::RuntimeShape none;
    tflite::reference_integer_ops::TransposeConv(
        cp, mult.data(), shift.data(), Shape4(1, l.oh, l.ow, l.co), g.data(),
        Shape4(l.ci, l.kh, l.kw, l.co), w.data(), tflite::RuntimeShape(1, bias_dims), nullptr,
        Shape4(1, l.ih, l.iw, l.ci), ref.data(), none, nullptr, acc.data());
    cmsis_nn_transpose_conv_params p = {};
    p.input_offset = 3;
    p.output_offset = -5;
    p.stride = {l.sw, l.sh};
    p.padding = {l.pl, l.pt};
    p.padding_offsets = {l.pl, l.pt};
    p.dilation = {1, 1};
    p.activation = {-128, 127};
    const cmsis_nn_per_channel_quant_params q = {mult.data(), shift.data()};
    const cmsis_nn_dims in_d = {1, l.oh, l.ow, l.co}, k_d = {l.ci, l.kh, l.kw, l.co};
    const cmsis_nn_dims bias_d = {1, 1, 1, l.ci}, out_d = {1, l.ih, l.iw, l.ci};
    Scratch s(arm_transpose_conv_s8_get_buffer_size(&p, &in_d, &k_d, &out_d));
    Scratch r(arm_transpose_conv_s8_get_reverse_conv_buffer_size(&p, &in_d, &k_d));
    arm_cmsis_nn_status st = ARM_CMSIS_NN_SUCCESS;
    unsigned long long n = MeasureOnce([&] {
      st = arm_transpose_conv_wrapper_s8(&s.ctx, &r.ctx, &p, &q, &in_d, g.data(), &k_d, w.data(),
                                         &bias_d, nullptr, &out_d, out.data());
    });
    if (st != ARM_CMSIS_NN_SUCCESS) return ~0ull;
    Compare(out, ref);
    if (pointwise) {
      const unsigned long long c = CmsisConv(1, l.oh, l.ow, l.co, l.ci, 1, 1, l.ih, l.iw, 0, 0, 1, 1);
      if (c < n) n = c;
    }
    return n;
  }
  if (kind == "cmsis_conv_weight_grad") {
    if (pointwise) {
      // dW [CO, CI] = g^T [CO, P] x^T [CI, P]^T, P = OH * OW
      const int32_t pos = l.oh * l.ow;
      std::vector<int8_t> gt = Random(static_cast<size_t>(l.co * pos));
      std::vector<int8_t> xt = Random(static_cast<size_t>(l.ci * pos));
      std::vector<int8_t> out(static_cast<size_t>(l.co * l.ci)), ref(out.size());
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
      tflite::reference_integer_ops::FullyConnected<int8_t, int8_t, int8_t, int32_t>(
          fp, tflite::RuntimeShape(2, in_dims), gt.data(), tflite::RuntimeShape(2, f_dims), xt.data(),
          tflite::RuntimeShape(1, bias_dims), nullptr, tflite::RuntimeShape(2, o_dims), ref.data());
      cmsis_nn_fc_params p = {};
      p.input_offset = 3;
      p.filter_offset = 0;
      p.output_offset = -5;
      p.activation = {-128, 127};
      const cmsis_nn_per_tensor_quant_params q = {1 << 30, -8};
      const cmsis_nn_dims in_d = {l.co, 1, 1, pos}, f_d = {pos, 1, 1, l.ci};
      const cmsis_nn_dims bias_d = {1, 1, 1, l.ci}, out_d = {l.co, 1, 1, l.ci};
      Scratch s(arm_fully_connected_s8_get_buffer_size(&f_d));
      arm_cmsis_nn_status st = ARM_CMSIS_NN_SUCCESS;
      unsigned long long n = MeasureOnce([&] {
        st = arm_fully_connected_s8(&s.ctx, &p, &q, &in_d, gt.data(), &f_d, xt.data(), &bias_d,
                                    nullptr, &out_d, out.data());
      });
      if (st != ARM_CMSIS_NN_SUCCESS) return ~0ull;
      Compare(out, ref);
      const unsigned long long c = CmsisConv(1, 1, l.co, pos, l.ci, 1, 1, 1, l.co, 0, 0, 1, 1);
      return c < n ? c : n;
    }
    // dW^T [CI, KH, KW, CO]: batches = CI, one input channel, g^T as the kernel
    return CmsisConv(l.ci, l.ih, l.iw, 1, l.co, l.oh, l.ow, l.kh, l.kw, l.pt, l.pl, l.sh, l.sw);
  }
  if (kind == "cmsis_dw_input_grad") {
    // output phase (py, px): taps k0, k0 + s, ... with k0 = (py + pt) % s reach it from g rows
    // m + (py + pt - k0) / s - j; the rotated kernel with top padding ty - 1 - (py + pt - k0) / s
    unsigned long long n = 0;
    for (int32_t py = 0; py < l.sh; ++py) {
      for (int32_t px = 0; px < l.sw; ++px) {
        const int32_t ky = (py + l.pt) % l.sh, kx = (px + l.pl) % l.sw;
        const int32_t ty = ky < l.kh ? (l.kh - ky + l.sh - 1) / l.sh : 0;
        const int32_t tx = kx < l.kw ? (l.kw - kx + l.sw - 1) / l.sw : 0;
        const int32_t oh = (l.ih - py + l.sh - 1) / l.sh, ow = (l.iw - px + l.sw - 1) / l.sw;
        if (ty == 0 || tx == 0 || oh <= 0 || ow <= 0) continue;
        const int32_t pad_h = ty - 1 - (py + l.pt - ky) / l.sh;
        const int32_t pad_w = tx - 1 - (px + l.pl - kx) / l.sw;
        if (pad_h < 0 || pad_w < 0) return ~0ull;
        const unsigned long long c = CmsisDepthwise(l.oh, l.ow, l.co, ty, tx, oh, ow, pad_h, pad_w, 1, 1);
        if (c == ~0ull) return c;
        n += c;
      }
    }
    return n;
  }
  if (kind == "cmsis_dw_weight_grad") {
    return CmsisDepthwise(l.ih, l.iw, l.ci, l.oh, l.ow, l.kh, l.kw, l.pt, l.pl, l.sh, l.sw);
  }
  return ~0ull;
}

}  // namespace

unsigned long long CmsisGradient(const char* kind, const int* f, unsigned long long* mismatch) {
  const Line l = {f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12]};
  g_mismatch = 0;
  const unsigned long long n = Gradient(l, kind);
  *mismatch = g_mismatch;
  return n;
}

}  // namespace tmt_kernel_bench
