// Portable cores of the fp32-backward variants of the TMT_* training ops
// (docs/contract.md, "fp32 backward"): gradients are float32 tensors holding the real gradient,
// with no scale tensor. The forward tensors, saved activations, variables, update factors and the
// stochastic rounding of updates are those of the int8 mode (training_ops.h).
//
// C++17, no TFLM, no heap, no exceptions, no RTTI; single-precision float only (no double),
// compiled with -ffp-contract=off. Each function mirrors the numpy reference `<name>_f32` in
// tfmicro_train/kernels/training_ops.py bit for bit (tests/test_golden_cpp.py), which requires
// the summation orders of the contract:
// * every sum starts at +0.0f and adds its terms one at a time in the stated order; a term that
//   is +-0 leaves such a sum unchanged (it never becomes -0.0f), so the cores skip zero
//   gradients (where the other factor is finite, as int8 data and scales are);
// * "ascending output position" is row-major (oh, ow). The input gradients scatter into their
//   output in that order, so no scratch memory is needed.
// Shapes, weights and parameter structs are as in training_ops.h. The learning-rate gate lives in
// the TFLM glue / host simulator.
#ifndef TFLM_OPS_CORE_TRAINING_OPS_F32_H_
#define TFLM_OPS_CORE_TRAINING_OPS_F32_H_

#include <cstdint>

#include "tflm_ops/core/training_ops.h"

namespace tfmicro_train {
namespace core {

// q16(t) of the contract: NaN -> 0; d = floorf(t); d >= 2^62 -> 2^62 - 1; d <= -2^62 ->
// -(2^62 - 1); else (int64) d.
int64_t Q16FromF32(float t);

// ---------------------------------------------------------------- loss ops

// TMT_SOFTMAX_CE_GRAD, fp32: grad[i] = (float)d_i * (1/256), d_i as in int8 mode;
// loss = loss_lut[probs[label] + 128].
Status SoftmaxCeGradF32(const int8_t* probs, int32_t n, int32_t label, const float* loss_lut,
                        float* grad, float* loss);

// TMT_MSE_GRAD, fp32: c = (scale * 2) / (float)n; grad[i] = (float)(y[i] - target[i]) * c;
// loss as in int8 mode.
Status MseGradF32(const int8_t* y, const int8_t* target, int32_t n, float scale, float* grad,
                  float* loss);

// ---------------------------------------------------------------- gradient plumbing

// TMT_ACT_GRAD, fp32: out = g where act_min < y < act_max, else +0.0f (may alias g).
Status ActGradF32(const float* g, const int8_t* y, int32_t n, int32_t act_min, int32_t act_max,
                  float* out);

// TMT_MASK_GRAD, fp32: out = g where the packed mask bit is set, else +0.0f (may alias g).
Status MaskGradF32(const float* g, const uint8_t* bits, int32_t n, float* out);

// TMT_GRAD_ADD, fp32: out = g1 + g2 (may alias either).
Status GradAddF32(const float* g1, const float* g2, int32_t n, float* out);

// TMT_MEAN_GRAD, fp32: g has in.c elements; out[h, w, c] = g[c] * inv_count.
Status MeanGradF32(const float* g, Hwc in, float inv_count, float* out);

// TMT_PAD_GRAD, fp32: g [g_dims] cropped to out [in] at (pad_top, pad_left).
Status PadGradF32(const float* g, Hwc g_dims, Hwc in, int32_t pad_top, int32_t pad_left,
                  float* out);

// TMT_RESHAPE_GRAD, fp32: a copy of n values.
Status ReshapeGradF32(const float* g, int32_t n, float* out);

// TMT_AVGPOOL_GRAD, fp32: v[o] = g[o] / (float)count_o; g_in[i] = sum of v[o] over the outputs
// whose window holds i, in ascending output position.
Status AvgPoolGradF32(const float* g, Hwc g_dims, Hwc in, const PoolParams& p, float* g_in);

// TMT_MAXPOOL_GRAD, fp32: x [in] and y [g_dims] are the forward input and output; each output's
// gradient goes to its routed input (int8 mode's rule), summed in ascending output position.
Status MaxPoolGradF32(const float* g, const int8_t* x, const int8_t* y, Hwc g_dims, Hwc in,
                      const PoolParams& p, float* g_in);

// ---------------------------------------------------------------- input gradients

// TMT_CONV_INPUT_GRAD, fp32: g [g_dims] (g_dims.c = CO), w [CO, kh, kw, in.c] (split: see
// SplitWeights), wscale [CO] (s_W) -> g_in [in]: g_in[ih, iw, ci] = sum of
// g[oh, ow, co] * ((float)w[co, kh, kw, ci] * wscale[co]) in ascending (oh, ow, co).
Status ConvInputGradF32(const float* g, Hwc g_dims, const int8_t* w, int32_t kh, int32_t kw,
                        const float* wscale, Hwc in, const ConvGeom& geom, float* g_in,
                        const SplitWeights& split = SplitWeights());

// TMT_DW_INPUT_GRAD, fp32: w [1, kh, kw, C], wscale [C], C = g_dims.c = in.c; ascending (oh, ow).
Status DepthwiseInputGradF32(const float* g, Hwc g_dims, const int8_t* w, int32_t kh, int32_t kw,
                             const float* wscale, Hwc in, const ConvGeom& geom, float* g_in);

// ---------------------------------------------------------------- parameter updates
// In place; `counter` is the training-step counter (state[1]) the op reads.
// acc = sum of g[oh, ow, c] * (float)(x[ih, iw, ci] - x_zp), ascending (oh, ow);
// delta = q16(((lr * acc) * factor[c]) * 65536); step and noise as in int8 mode.

// TMT_CONV_WEIGHT_UPDATE, fp32: w [>= update_channels rows, kh, kw, CI = x_dims.c],
// wfactor [CO = g_dims.c].
Status ConvWeightUpdateF32(const float* g, Hwc g_dims, const int8_t* x, Hwc x_dims, int8_t* w,
                           int32_t kh, int32_t kw, const float* wfactor, float lr,
                           const ConvGeom& geom, const UpdateParams& p, uint32_t counter);

// TMT_DW_WEIGHT_UPDATE, fp32: w [1, kh, kw, C], C = g_dims.c = x_dims.c, wfactor [C].
Status DepthwiseWeightUpdateF32(const float* g, Hwc g_dims, const int8_t* x, Hwc x_dims,
                                int8_t* w, int32_t kh, int32_t kw, const float* wfactor, float lr,
                                const ConvGeom& geom, const UpdateParams& p, uint32_t counter);

// The float gradient sums of the updates above, written out (the updates consume them element by
// element, in the same code, without storing them): acc[i] for every weight element i of the first
// `channels` output channels, i in w's layout for conv ([channels, kh, kw, CI]) and in the noise
// order (c, kh, kw) for depthwise; acc[c] for c < channels for the bias.
Status ConvWeightGradF32(const float* g, Hwc g_dims, const int8_t* x, Hwc x_dims, int32_t kh,
                         int32_t kw, const ConvGeom& geom, int32_t channels, int32_t x_zero_point,
                         float* acc);
Status DepthwiseWeightGradF32(const float* g, Hwc g_dims, const int8_t* x, Hwc x_dims, int32_t kh,
                              int32_t kw, const ConvGeom& geom, int32_t channels,
                              int32_t x_zero_point, float* acc);
Status BiasGradF32(const float* g, int32_t positions, int32_t channels, int32_t n, float* acc);

// TMT_BIAS_UPDATE, fp32: g has `positions` rows of `channels` values; acc[c] = sum of g[.., c]
// in ascending position; b [channels], bfactor [channels]; b saturates to int32.
Status BiasUpdateF32(const float* g, int32_t positions, int32_t channels, int32_t* b,
                     const float* bfactor, float lr, const UpdateParams& p, uint32_t counter);

}  // namespace core
}  // namespace tfmicro_train

#endif  // TFLM_OPS_CORE_TRAINING_OPS_F32_H_
