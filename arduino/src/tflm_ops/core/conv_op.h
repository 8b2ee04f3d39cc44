// TMT_CONV: TFLM's int8 CONV_2D, DEPTHWISE_CONV_2D (multiplier 1) and FULLY_CONNECTED
// (per-channel), bit for bit, with the per-channel output multipliers and shifts read from
// constant int32 tensors (flash) instead of being computed into persistent SRAM by Prepare.
//
// TFLM's builtin convolutions keep 8 bytes per output channel (multiplier + shift) in the
// persistent arena for good; for the convolutions left in a MobileNetV2 training graph that is
// tens of KB. The converter computes the same values (double-precision QuantizeMultiplier of
// s_x * s_W[c] / s_y, as PopulateConvolutionQuantizationParams) and writes them as constants.
// Numpy reference: tfmicro_train/kernels/conv_ops.py (the builtin kernels of builtin_ops.py
// with the given multipliers).
//
// Use: PrepareConvOp(spec, &params) once (checks the geometry, computes padding, offsets and the
// activation clamp: no per-channel data); ConvOp(params, multiplier, shift, x, w, b, y) per call.
// ConvOpMultipliers computes what the converter writes (a glue may check the tensors with it).
//
// Portable C++17: no TFLM, no heap, no exceptions, no RTTI.
#ifndef TFLM_OPS_CORE_CONV_OP_H_
#define TFLM_OPS_CORE_CONV_OP_H_

#include <cstdint>

#include "tflm_ops/core/tflm_reference.h"
#include "tflm_ops/core/training_ops.h"

namespace tfmicro_train {
namespace core {

// The `kind` option of TMT_CONV: which builtin the op stands for.
enum ConvOpKind : int32_t {
  kConvOpConv2D = 0,          // CONV_2D, w [CO, KH, KW, CI] (non-grouped)
  kConvOpDepthwise = 1,       // DEPTHWISE_CONV_2D, w [1, KH, KW, C], depth multiplier 1
  kConvOpFullyConnected = 2,  // FULLY_CONNECTED, w [CO, CI]; x holds rows * CI elements
};

// Everything the flatbuffer says about one TMT_CONV op.
struct ConvOpSpec {
  int32_t kind = kConvOpConv2D;
  Hwc x;           // conv / depthwise: [1, H, W, C]; fully-connected: {1, rows, CI}
  TensorQuant x_q;
  Hwc y;           // conv / depthwise: [1, OH, OW, CO]; fully-connected: {1, rows, CO}
  TensorQuant y_q;
  ConvSpec conv;   // kh, kw from w; strides, dilations, padding, act from the options (FC: act)
  int32_t w_in_c = 1;   // conv: w dim 3; fully-connected: w dim 1; depthwise: w dim 3 (= C)
  int32_t channels = 1; // output channels: w dim 0 (conv, FC), w dim 3 (depthwise)
};

// Precomputed parameters (PrepareConvOp): TFLM's OpData without the per-channel arrays.
struct ConvOpParams {
  int32_t kind = kConvOpConv2D;
  Hwc x, y;
  int32_t kh = 1, kw = 1, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  int32_t pad_top = 0, pad_left = 0;
  int32_t x_offset = 0;  // -x zero point
  int32_t y_offset = 0;  // y zero point
  int32_t act_min = -128, act_max = 127;
};

// Checks the spec (shapes consistent with the geometry, valid quantization and activation) and
// computes padding, offsets and the activation clamp as TFLM's Prepare does.
Status PrepareConvOp(const ConvOpSpec& spec, ConvOpParams* params);

// The per-channel multipliers and shifts TFLM's Prepare computes (and the converter writes):
// QuantizeMultiplier(double(s_x) * double(s_W[c]) / double(s_y)); w.n == 1 repeats the scale.
Status ConvOpMultipliers(float x_scale, const WeightScales& w, float y_scale, int32_t channels,
                         int32_t* multiplier, int32_t* shift);

// Runs the op. multiplier/shift: [channels] (multiplier >= 0, shift in [-31, 31], else
// kBadParams); b may be null (no bias). y must not alias x. split: the weights' output channels
// [split.split, CO) at split.rest (SplitWeights; a layer training a slice of its channels), for
// pointwise convolutions (1x1, stride 1, no padding) and fully-connected layers only (else
// kBadParams).
Status ConvOp(const ConvOpParams& params, const int32_t* multiplier, const int32_t* shift,
              const int8_t* x, const int8_t* w, const int32_t* b, int8_t* y,
              const SplitWeights& split = SplitWeights());

// A narrow bias (TMT_CONV with an int16 'b', the trained change of the bias): the int32 bias the
// convolution uses, b[c] = Sat32(base[c] + delta[c] * 2^shift[c]) (int64 sum), shift[c] in
// [0, kMaxBiasShift] (else kBadParams, nothing written). base and shift: rows 2 and 3 of the
// op's int32 [4, C] requant tensor.
constexpr int32_t kMaxBiasShift = 16;
Status ExpandBias(const int32_t* base, const int16_t* delta, const int32_t* shift,
                  int32_t channels, int32_t* b);

struct NarrowBias {
  const int32_t* base = nullptr;   // [C], requant row 2
  const int16_t* delta = nullptr;  // [C], the int16 variable
  const int32_t* shift = nullptr;  // [C], requant row 3, each in [0, kMaxBiasShift]
};

// Output channels per ExpandBias chunk of ConvOpNarrowBias (its int32 biases on the stack).
constexpr int32_t kBiasChunk = 64;

// ConvOp with a narrow bias: the same outputs as ConvOp with the ExpandBias of `bias`, computed
// kBiasChunk output channels at a time (each chunk's int32 biases expanded into a 256-byte
// stack buffer, so no [C] scratch in the arena). kBadParams (nothing written) for a shift
// outside [0, kMaxBiasShift] or what ConvOp rejects.
Status ConvOpNarrowBias(const ConvOpParams& params, const int32_t* multiplier,
                        const int32_t* shift, const int8_t* x, const int8_t* w,
                        const NarrowBias& bias, int8_t* y,
                        const SplitWeights& split = SplitWeights());

// Whether ConvOp takes split weights for these parameters (pointwise or fully-connected).
bool ConvOpTakesSplit(const ConvOpParams& params);

// Mean mode (tfmicro_train/head.py fold_pooled_outputs): a CONV_2D whose output y only a global
// average pool (and its activation mask) read writes the pool instead of y.
struct ConvMeanParams {
  int32_t multiplier = 0;         // MeanOpMultiplier(y scale, pooled scale, H * W)
  int32_t shift = 0;
  int32_t pooled_zero_point = 0;
  bool mask = false;              // also write TMT_MASK_PACK(y, mask_min, mask_max) to `bits`
  int32_t mask_min = 0, mask_max = 0;
};

// y's pixels (H * W) times the channels of one chunk fit in this many bytes (the stack buffer).
constexpr int32_t kMeanChunkBytes = 512;

// pooled [C] = MeanOp(ConvOp(x)) over y's H x W (params.y; kind CONV_2D, H * W <=
// kMeanChunkBytes) and, with m.mask, bits [ceil(H * W * C / 8)] = MaskPack(y), bit for bit,
// without y: the channels in chunks of min(kBiasChunk, kMeanChunkBytes / (H * W)), each over
// every pixel into a stack buffer. The bias: b (int32, may be null) or, with `narrow`, a narrow
// bias (b unused). params.y_offset is y's zero point (the mean's input offset).
Status ConvOpMean(const ConvOpParams& params, const int32_t* multiplier, const int32_t* shift,
                  const int8_t* x, const int8_t* w, const int32_t* b, const NarrowBias* narrow,
                  const ConvMeanParams& mean, int8_t* pooled, uint8_t* bits,
                  const SplitWeights& split = SplitWeights());

// TMT_MEAN: TFLM's int8 MEAN over the H and W axes of a [1, H, W, C] tensor (global average
// pooling), bit for bit (reference_ops::QuantizedMeanOrSum, compute_sum false), without the
// int32 accumulator per output element that TFLM's MEAN asks of the arena for its whole Eval:
// each channel is summed in a register. Numpy reference: builtin_ops._mean.
struct MeanOpParams {
  Hwc x;                  // [1, H, W, C]; y holds C elements
  int32_t x_zero_point = 0;
  int32_t y_zero_point = 0;
  int32_t multiplier = 0;  // MeanOpMultiplier: 1 / (H * W) already folded in
  int32_t shift = 0;
};

// TFLM's multiplier and shift of the op: QuantizeMultiplier(double(s_x) / double(s_y)) (Prepare),
// then 1 / count folded in as its Eval does: k = min(floor(log2 count), 32, 31 + shift),
// multiplier = (int64(multiplier) << k) / count, shift -= k. count = H * W >= 1.
Status MeanOpMultiplier(float x_scale, float y_scale, int32_t count, int32_t* multiplier,
                        int32_t* shift);

// y[c] = clamp(MultiplyByQuantizedMultiplier(wrap32(sum_hw x[h, w, c] - x_zp * H * W),
// multiplier, shift) + y_zp, -128, 127); the sum wraps at 32 bits as TFLM's int32 accumulator.
Status MeanOp(const MeanOpParams& params, const int8_t* x, int8_t* y);

}  // namespace core
}  // namespace tfmicro_train

#endif  // TFLM_OPS_CORE_CONV_OP_H_
