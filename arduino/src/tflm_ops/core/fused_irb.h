// TMT_FUSED_IRB: a frozen inverted-residual block as one row-streamed forward op.
//
// Computes, bit for bit, what TFLite Micro's reference int8 kernels compute for
//   [CONV_2D expand (any kernel/stride/dilation, fused act) ->] [PAD ->]
//   DEPTHWISE_CONV_2D (multiplier 1, fused act) -> CONV_2D 1x1 project (fused act)
//   [-> ADD with the chain input x (residual, fused act)]
// while keeping only a ring of the (dilated) depthwise window's rows of the expansion plus one
// pixel of depthwise output in `scratch` (FusedIrbStreamBytes), never the expanded tensor.
// Without expansion x is read directly and only the pixel buffer is needed.
// Numpy reference: tfmicro_train/kernels/fused_ops.py (it runs the builtin kernels in sequence).
//
// Arithmetic as TFLM's reference kernels: int32 accumulators (wrapping), per-channel
// MultiplyByQuantizedMultiplier (double-rounding variant: SaturatingRoundingDoublingHighMul then
// RoundingDivideByPOT), multipliers from float scales by double-precision QuantizeMultiplier;
// ADD with left_shift 20 as reference_integer_ops::Add.
//
// The converter sizes the op's `scratch` tensor as FusedIrbScratchBytes: the streaming buffers
// (FusedIrbStreamBytes) and, 4-aligned after them at FusedIrbChannelWordsOffset, room for the
// FusedIrbChannelWords per-channel multipliers and shifts. A TFLM glue may either
//   (a) as TFLM's conv: Prepare: fill a FusedIrbSpec from the tensors (shapes, float scales, zero
//       points) and the custom options, allocate FusedIrbChannelWords(spec) int32s of persistent
//       memory, PrepareFusedIrb(spec, words, &params), check the scratch tensor's size;
//       Eval: FusedIrb(params, x, w_e, b_e, w_d, b_d, w_p, b_p, y, scratch, scratch_bytes); or
//   (b) keep no per-channel data in SRAM between invocations (frozen layers; for MobileNetV2
//       this is 8 bytes per channel, tens of KB): Prepare: PrepareFusedIrb(spec, nullptr, &params)
//       (checks everything, computes all but the multipliers) and check the scratch size;
//       Eval: PrepareFusedIrb(spec, nullptr, &params), FusedIrbMultipliers(FusedIrbScalesOf(spec),
//       scratch + FusedIrbChannelWordsOffset(params), &params), then FusedIrb(...) as in (a)
//       (the spec rebuilt from the options, the shapes and the scales, or kept). The streaming
//       never touches the channel words.
//
// Portable C++17: no TFLM, no heap, no exceptions, no RTTI.
#ifndef TFLM_OPS_CORE_FUSED_IRB_H_
#define TFLM_OPS_CORE_FUSED_IRB_H_

#include <cstdint>

#include "tflm_ops/core/tflm_reference.h"
#include "tflm_ops/core/training_ops.h"

namespace tfmicro_train {
namespace core {

// Everything the flatbuffer says about one TMT_FUSED_IRB op (tensors + custom options).
struct FusedIrbSpec {
  Hwc x;                 // input dims (batch 1)
  TensorQuant x_q;
  Hwc y;                 // output dims (checked against the geometry)
  TensorQuant y_q;
  int32_t c_exp = 0;     // channels of the expansion / depthwise (= w_dw dim 3)
  int32_t c_out = 0;     // output channels (= w_project dim 0)

  bool has_expand = false;
  ConvSpec expand;       // w_expand [c_exp, kh, kw, x.c]
  WeightScales w_expand_scales;
  TensorQuant e_q;       // options e_scale / e_zp

  int32_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int32_t pad_value = 0;
  TensorQuant d_in_q;    // options d_in_scale / d_in_zp

  ConvSpec dw;           // w_dw [1, kh, kw, c_exp]
  WeightScales w_dw_scales;
  TensorQuant d_q;       // options d_scale / d_zp

  int32_t project_act = kActNone;  // w_project [c_out, 1, 1, c_exp]
  WeightScales w_project_scales;
  TensorQuant p_q;       // options p_scale / p_zp (= y_q without residual)

  int32_t residual = 0;  // 0 none, 1 y = ADD(x, project), 2 y = ADD(project, x)
  int32_t add_act = kActNone;
};

// Precomputed parameters (PrepareFusedIrb), as TFLM's OpData.
struct FusedIrbParams {
  Hwc x, e, pd, y;       // input, expansion, padded depthwise input, output (d = y spatially)
  int32_t c_exp = 0, c_out = 0;
  bool has_expand = false;
  // expansion
  int32_t e_kh = 1, e_kw = 1, e_stride_h = 1, e_stride_w = 1, e_dil_h = 1, e_dil_w = 1;
  int32_t e_pad_top = 0, e_pad_left = 0;
  int32_t x_offset = 0;  // -x zero point
  Requant e_rq;
  // explicit PAD
  int32_t pad_top = 0, pad_left = 0, pad_value = 0;
  // depthwise
  int32_t d_kh = 1, d_kw = 1, d_stride_h = 1, d_stride_w = 1, d_dil_h = 1, d_dil_w = 1;
  int32_t d_pad_top = 0, d_pad_left = 0;
  int32_t d_in_offset = 0;  // -d_in zero point
  Requant d_rq;
  // project
  int32_t p_in_offset = 0;  // -d zero point
  Requant p_rq;
  // residual ADD (reference_integer_ops::Add)
  int32_t residual = 0;
  int32_t add_left_shift = 20;
  int32_t add_offset_x = 0, add_offset_p = 0;          // -zero points
  int32_t add_mult_x = 0, add_shift_x = 0, add_mult_p = 0, add_shift_p = 0;
  int32_t add_out_mult = 0, add_out_shift = 0, add_out_offset = 0;
  int32_t add_act_min = -128, add_act_max = 127;
  // streaming
  int32_t ring_rows = 0;  // rows of the expansion kept (0 without expansion)
};

// int32 words of per-channel multiplier storage PrepareFusedIrb needs: 4 * c_exp + 2 * c_out.
int32_t FusedIrbChannelWords(const FusedIrbSpec& spec);

// Checks the spec and computes every multiplier, shift, offset, clamp, padding and the ring size
// as TFLM's Prepare of each builtin would. `channel_words` must hold FusedIrbChannelWords(spec)
// int32s (4-byte aligned) and stay valid while `params` is used; nullptr computes and checks all
// but the per-channel multipliers (FusedIrb then refuses to run).
Status PrepareFusedIrb(const FusedIrbSpec& spec, int32_t* channel_words, FusedIrbParams* params);

// The float scales the per-channel multipliers come from (FusedIrbScalesOf).
struct FusedIrbScales {
  float e_in = 0.0f, e_out = 0.0f;  // expansion: x scale, expansion output scale
  float d_in = 0.0f, d_out = 0.0f;  // depthwise
  float p_in = 0.0f, p_out = 0.0f;  // project (p_out: p_q's scale with the residual, else y_q's)
  WeightScales w_expand, w_dw, w_project;
};

FusedIrbScales FusedIrbScalesOf(const FusedIrbSpec& spec);

// Computes the per-channel multipliers and shifts into `channel_words` (FusedIrbChannelWords
// int32s, 4-byte aligned) and points the requantizations of `params` (from PrepareFusedIrb) at
// them: exactly what PrepareFusedIrb(spec, channel_words, params) stores, from
// FusedIrbScalesOf(spec).
Status FusedIrbMultipliers(const FusedIrbScales& scales, int32_t* channel_words,
                           FusedIrbParams* params);

// Bytes FusedIrb streams through: ring_rows * e.w * c_exp + c_exp (fused_ops.stream_bytes).
int32_t FusedIrbStreamBytes(const FusedIrbParams& params);

// Offset of the channel words in the scratch tensor: FusedIrbStreamBytes rounded up to 4.
int32_t FusedIrbChannelWordsOffset(const FusedIrbParams& params);

// Bytes of the scratch tensor: FusedIrbChannelWordsOffset + 4 * FusedIrbChannelWords
// (fused_ops.scratch_bytes).
int32_t FusedIrbScratchBytes(const FusedIrbParams& params);

// Streaming in place: the smallest lag >= 0 (bytes) such that FusedIrb computes the same y when
// y starts `lag` (or any larger number of) bytes before x, overlapping it (fused_ops.inplace_lag).
// FusedIrb writes y pixel by pixel in order, so once pixel (oy, ox) is written, y's bytes
// [0, W) with W = (oy * y.w + ox + 1) * c_out are written, i.e. x's addresses [-lag, W - lag).
// The function replays FusedIrb's loops: every read of x (a whole expansion row's input rows at
// the start of an output row; without expansion, a depthwise window of x per pixel; with the
// residual, the pixel's own x) happens after the writes before it and reads no address below
// its bound `a` (a lower bound: row of the first tap in range * row bytes + the lowest column in
// range), so it is intact iff W_before - lag <= a: lag = max(0, max over reads (W_before - a)).
// The residual ADD interleaves the reads of a pixel's x and the writes of its y per channel:
// y[co] (address pix * c + co - lag) was read as x[co - lag] of this pixel or an earlier one
// already, as the later x[co'] (co' > co) lie above it; so treating the pixel's reads as before
// its writes is exact. Any larger lag is safe too (every write moves down).
int32_t FusedIrbInPlaceLag(const FusedIrbParams& params);

// Runs the block. w_e/b_e null without expansion; any bias may be null (absent in the model).
// scratch: at least FusedIrbStreamBytes(params) bytes (kBadParams if smaller; only those are
// written). y must not alias x, except streaming in place: y may start FusedIrbInPlaceLag(params)
// or more bytes before x (y == x - lag, lag >= FusedIrbInPlaceLag), overlapping it.
Status FusedIrb(const FusedIrbParams& params, const int8_t* x, const int8_t* w_expand,
                const int32_t* b_expand, const int8_t* w_dw, const int32_t* b_dw,
                const int8_t* w_project, const int32_t* b_project, int8_t* y, int8_t* scratch,
                int32_t scratch_bytes);

}  // namespace core
}  // namespace tfmicro_train

#endif  // TFLM_OPS_CORE_FUSED_IRB_H_
