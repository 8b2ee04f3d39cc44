// Portable cores of the TMT_* training ops (docs/contract.md).
//
// C++17, no TFLM, no heap, no exceptions, no RTTI. Each function mirrors the numpy
// reference of the same op in tfmicro_train/kernels/training_ops.py bit for bit
// (tests/test_golden_cpp.py checks it on thousands of random and edge cases).
//
// Conventions:
// * Activations/gradients are NHWC with batch 1, described by Hwc {h, w, c};
//   a [1, C] tensor is Hwc{1, 1, C}.
// * Weights: conv [CO, KH, KW, CI], depthwise [1, KH, KW, C], fully connected [CO, CI]
//   (= conv with KH = KW = 1 on a 1x1 image).
// * Ops producing a dyn-quantized gradient take `int64_t* scratch`: either nullptr (no
//   memory: every accumulator is computed twice; the input gradients compute each once, stage
//   it in the int8 output and compute again only the few largest) or room for
//   ScratchElements(...) int64s (each accumulator computed once). Both give identical results.
// * The learning-rate gate (lr == 0: op does nothing; lr < 0 / NaN: loss ops fail) and
//   the update counter live in the TFLM glue / host simulator, not here.
// * Functions return Status::kOk, or an error for inputs the contract rejects
//   (the glue turns that into kTfLiteError with a message naming the op).
#ifndef TFLM_OPS_CORE_TRAINING_OPS_H_
#define TFLM_OPS_CORE_TRAINING_OPS_H_

#include <cstdint>

namespace tfmicro_train {
namespace core {

enum class Status : int32_t {
  kOk = 0,
  kLabelOutOfRange,   // TMT_SOFTMAX_CE_GRAD: label outside [0, N)
  kBadShape,          // dimensions inconsistent with each other
  kBadParams,         // strides < 1, negative padding, update_channels out of range, ...
};

const char* StatusString(Status s);

struct Hwc {
  int32_t h = 1;
  int32_t w = 1;
  int32_t c = 1;
  constexpr int32_t size() const { return h * w * c; }
};

// Geometry of a forward convolution / pooling window (dilation 1).
struct ConvGeom {
  int32_t stride_h = 1;
  int32_t stride_w = 1;
  int32_t pad_top = 0;
  int32_t pad_left = 0;
};

struct PoolParams {
  int32_t filter_h = 1;
  int32_t filter_w = 1;
  ConvGeom geom;
};

struct UpdateParams {
  int32_t update_channels = 0;  // channels [0, update_channels) are updated
  uint32_t seed = 0;            // stochastic-rounding seed (the op option)
  int32_t x_zero_point = 0;     // zero point of the forward input (weight updates only)
};

// ---------------------------------------------------------------- loss ops

// TMT_SOFTMAX_CE_GRAD. probs: int8 softmax output (scale 1/256, zp -128), n entries;
// loss_lut: 256 float32. Outputs grad[n], grad_scale = 1/128, loss = loss_lut[probs[label]+128].
Status SoftmaxCeGrad(const int8_t* probs, int32_t n, int32_t label, const float* loss_lut,
                     int8_t* grad, float* grad_scale, float* loss);

// TMT_MSE_GRAD. y, target: n int8 values of one quantization with scale `scale`.
Status MseGrad(const int8_t* y, const int8_t* target, int32_t n, float scale, int8_t* grad,
               float* grad_scale, float* loss);

// ---------------------------------------------------------------- gradient plumbing

// TMT_ACT_GRAD: out = g where act_min < y < act_max, else 0 (n elements).
Status ActGrad(const int8_t* g, const int8_t* y, int32_t n, int32_t act_min, int32_t act_max,
               int8_t* out);

// TMT_MASK_PACK: bits[i / 8] bit (i % 8) = act_min < y[i] < act_max, (n + 7) / 8 bytes.
Status MaskPack(const int8_t* y, int32_t n, int32_t act_min, int32_t act_max, uint8_t* bits);

// TMT_MASK_GRAD: out = g where the packed mask bit is set, else 0 (may alias g).
Status MaskGrad(const int8_t* g, const uint8_t* bits, int32_t n, int8_t* out);

// TMT_GRAD_ADD: (g1, s1) + (g2, s2) -> (out, out_scale), n elements.
// scratch: nullptr or n int64s.
Status GradAdd(const int8_t* g1, float s1, const int8_t* g2, float s2, int32_t n, int8_t* out,
               float* out_scale, int64_t* scratch);

// TMT_MEAN_GRAD: g has in.c elements; out [in.h, in.w, in.c]; out_scale = s * inv_count.
Status MeanGrad(const int8_t* g, float s, Hwc in, float inv_count, int8_t* out, float* out_scale);

// TMT_PAD_GRAD: g [g_dims] cropped to out [in] at (pad_top, pad_left).
Status PadGrad(const int8_t* g, Hwc g_dims, Hwc in, int32_t pad_top, int32_t pad_left,
               int8_t* out);

// TMT_RESHAPE_GRAD: backward of RESHAPE / Flatten: a copy of n int8 values.
Status ReshapeGrad(const int8_t* g, int32_t n, int8_t* out);

// TMT_AVGPOOL_GRAD: g [g_dims] (the pool output's gradient) -> g_in [in].
// scratch: nullptr or in.size() int64s.
Status AvgPoolGrad(const int8_t* g, float s, Hwc g_dims, Hwc in, const PoolParams& p,
                   int8_t* g_in, float* s_in, int64_t* scratch);

// TMT_MAXPOOL_GRAD: x [in] and y [g_dims] are the forward input and output.
// scratch: nullptr or in.size() int64s.
Status MaxPoolGrad(const int8_t* g, float s, const int8_t* x, const int8_t* y, Hwc g_dims,
                   Hwc in, const PoolParams& p, int8_t* g_in, float* s_in, int64_t* scratch);

// ---------------------------------------------------------------- input gradients

// A weight tensor [CO, ...] held in two parts: output channels [0, split) at `w` (the trained
// slice, in SRAM) and [split, CO) at `rest` (the frozen rest, in flash), each row contiguous.
// rest == nullptr: every row at w. Row co of the whole tensor is RowOf(w, split, co, row_len).
struct SplitWeights {
  const int8_t* rest = nullptr;
  int32_t split = 0;
};

inline const int8_t* RowOf(const int8_t* w, const SplitWeights& sw, int32_t co, int32_t row_len) {
  return sw.rest != nullptr && co >= sw.split ? sw.rest + (co - sw.split) * row_len
                                              : w + co * row_len;
}

// A gradient folded from TMT_MEAN_GRAD (and TMT_MASK_GRAD) into its readers
// (tfmicro_train/head.py): `g` holds the C pooled values, and the gradient it stands for is g[c]
// at every pixel of g_dims (H x W x C), 0 where the packed mask bit pixel * C + c (LSB first) is
// clear (mask null: no mask). Its scale is BroadcastScale(s, H, W).
struct GradBroadcast {
  bool on = false;
  const uint8_t* mask = nullptr;
};

// s * (1.0f / float(h * w)) in float32: TMT_MEAN_GRAD's scale (inv_count), h * w < 2^24.
float BroadcastScale(float s, int32_t h, int32_t w);

// TMT_CONV_INPUT_GRAD: g [g_dims] (g_dims.c = CO), w [CO, kh, kw, in.c] (split: see
// SplitWeights), wmul [CO] (Q15) -> g_in [in], s_in. scratch: nullptr or in.size() int64s.
Status ConvInputGrad(const int8_t* g, float s, Hwc g_dims, const int8_t* w, int32_t kh,
                     int32_t kw, const int32_t* wmul, float w_scale_max, Hwc in,
                     const ConvGeom& geom, int8_t* g_in, float* s_in, int64_t* scratch,
                     const SplitWeights& split = SplitWeights(),
                     const GradBroadcast& bcast = GradBroadcast());

// TMT_DW_INPUT_GRAD: g [g_dims], w [1, kh, kw, C], wmul [C], C = g_dims.c = in.c.
Status DepthwiseInputGrad(const int8_t* g, float s, Hwc g_dims, const int8_t* w, int32_t kh,
                          int32_t kw, const int32_t* wmul, float w_scale_max, Hwc in,
                          const ConvGeom& geom, int8_t* g_in, float* s_in, int64_t* scratch);

// ---------------------------------------------------------------- parameter updates
// All update in place; `counter` is the op's update count before this call.

// TMT_CONV_WEIGHT_UPDATE: w [CO = g_dims.c, kh, kw, CI = x_dims.c], wfactor [CO].
Status ConvWeightUpdate(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                        int8_t* w, int32_t kh, int32_t kw, const float* wfactor, float lr,
                        const ConvGeom& geom, const UpdateParams& p, uint32_t counter);

// The two implementations behind ConvWeightUpdate (same results, bit for bit): portable C++,
// and SMLAD / SXTB16 on Cortex-M with the DSP extension (__ARM_FEATURE_DSP; elsewhere
// ConvWeightUpdateDsp is the portable one). ConvWeightUpdate is the DSP one where available,
// unless tflm_ops/core/training_ops.cc is compiled with -DTMT_PORTABLE_ONLY.
Status ConvWeightUpdatePortable(const int8_t* g, float s, Hwc g_dims, const int8_t* x,
                                Hwc x_dims, int8_t* w, int32_t kh, int32_t kw,
                                const float* wfactor, float lr, const ConvGeom& geom,
                                const UpdateParams& p, uint32_t counter);
Status ConvWeightUpdateDsp(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                           int8_t* w, int32_t kh, int32_t kw, const float* wfactor, float lr,
                           const ConvGeom& geom, const UpdateParams& p, uint32_t counter);
// True when ConvWeightUpdateDsp uses the DSP instructions in this build.
bool ConvWeightUpdateHasDsp();

// TMT_DW_WEIGHT_UPDATE: w [1, kh, kw, C], C = g_dims.c = x_dims.c, wfactor [C].
Status DepthwiseWeightUpdate(const int8_t* g, float s, Hwc g_dims, const int8_t* x, Hwc x_dims,
                             int8_t* w, int32_t kh, int32_t kw, const float* wfactor, float lr,
                             const ConvGeom& geom, const UpdateParams& p, uint32_t counter);

// TMT_BIAS_UPDATE: g has `positions` rows of `channels` values (broadcast: `channels` values
// standing for `positions` rows, GradBroadcast); b [channels], bfactor [channels].
Status BiasUpdate(const int8_t* g, float s, int32_t positions, int32_t channels, int32_t* b,
                  const float* bfactor, float lr, const UpdateParams& p, uint32_t counter,
                  const GradBroadcast& bcast = GradBroadcast());
// The same for a narrow bias (TMT_CONV's int16 change of the bias, in units of 2^k[c]; the
// converter divides bfactor by 2^k[c]): the same step, b saturates to int16.
Status BiasUpdate(const int8_t* g, float s, int32_t positions, int32_t channels, int16_t* b,
                  const float* bfactor, float lr, const UpdateParams& p, uint32_t counter,
                  const GradBroadcast& bcast = GradBroadcast());

}  // namespace core
}  // namespace tfmicro_train

#endif  // TFLM_OPS_CORE_TRAINING_OPS_H_
