// TFLite Micro glue of TMT_CONV and TMT_MEAN (tflm_ops/core/conv_op.h, docs/contract.md): TFLM's int8
// CONV_2D / DEPTHWISE_CONV_2D / per-channel FULLY_CONNECTED, bit for bit, with the per-channel
// output multipliers and shifts read from the constant `requant` input (flash). Unlike the
// builtins, Prepare allocates no per-channel memory: it checks the tensors, checks that
// `requant` holds exactly what TFLM's Prepare would compute from the scales, and keeps only the
// geometry, offsets and activation clamp (ConvOpParams) in its op data.
#include <cstdint>
#include <limits>
#include <new>
#include <type_traits>

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_context.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/micro/micro_utils.h"
#include "tflm_ops/core/conv_op.h"
#include "tflm_ops/core/training_ops.h"
#include "tflm_ops/tflm/options.h"
#include "tflm_ops/tflm/training_ops.h"

namespace tfmicro_train {
namespace {

namespace core = ::tfmicro_train::core;

constexpr int kInputs = 4;  // x, w, b, requant; optional 5th: w_rest (rows [CO1, CO) of w)
const char* const kInputNames[kInputs + 1] = {"x", "w", "b", "requant", "w_rest"};
const char* const kKindNames[3] = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"};

// Kept per operator (32 bytes on a 32-bit MCU): core::ConvOpParams without the shapes, which
// Eval takes from the tensors (ParamsOf), the rest as int16 (Prepare checks that the parameters
// ParamsOf gives are exactly those it computed).
struct ConvOpData {
  const char* options = nullptr;  // the custom options (in the model; Prepare reads them)
  int32_t w_split = -1;           // rows of 'w' when 'w_rest' (input 4) holds the others
  uint16_t options_length = 0;
  int16_t stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1, pad_top = 0, pad_left = 0;
  int16_t x_offset = 0;
  int16_t mask_min = 0, mask_max = 0;  // output 1 'bits' (options mask_min / mask_max)
  int8_t y_offset = 0, act_min = -128, act_max = 127;
  int8_t kind = -1;
};

// Elements of a TfLiteTensor or a TfLiteEvalTensor.
template <typename Tensor>
int Elements(const Tensor* t) {
  return tflite::ElementCount(*t->dims);
}

// Mean mode (option 'mean', tfmicro_train/head.py): output 0 is the mean over H and W of the
// y the op no longer writes; y's shape and quantization and the mean's multiplier are options.
struct MeanOptions {
  bool on = false;
  int32_t y_h = 0, y_w = 0, y_zp = 0;
  float y_scale = 0.0f;
  int32_t multiplier = 0, shift = 0, pooled_zp = 0;
};

// Reads the mean-mode options (all absent: off); prints why and returns false when one is
// missing or out of range.
bool ReadMeanOptions(const char* options, size_t length, MeanOptions* m) {
  OptionReader r(options, length);
  int32_t mean = 0;
  if (r.unreadable() || !r.Has("mean") || !r.Int("mean", &mean) || mean == 0) return !r.bad();
  m->on = true;
  r.Int("y_h", &m->y_h);
  r.Int("y_w", &m->y_w);
  r.Float("y_scale", &m->y_scale);
  r.Int("y_zp", &m->y_zp);
  r.Int("mean_multiplier", &m->multiplier);
  r.Int("mean_shift", &m->shift);
  r.Int("pooled_zp", &m->pooled_zp);
  if (r.bad()) {
    MicroPrintf("TMT_CONV: custom option '%s' %s (mean mode)", r.bad(),
                r.out_of_range() ? "out of range" : "missing");
    return false;
  }
  return true;
}

// The op's parameters from its op data and tensors (as PrepareConvOp computed them); in mean
// mode y's spatial dims come from the options (`mean`) and its channels from output 0.
core::ConvOpParams ParamsOf(const ConvOpData& d, const TfLiteEvalTensor* x,
                            const TfLiteEvalTensor* w, const TfLiteEvalTensor* y,
                            const MeanOptions* mean = nullptr) {
  core::ConvOpParams p;
  p.kind = d.kind;
  if (d.kind == core::kConvOpFullyConnected) {
    const int32_t in_c = w->dims->data[1];
    const int32_t rows = in_c > 0 ? Elements(x) / in_c : 0;
    p.x = {1, rows, in_c};
    p.y = {1, rows, rows > 0 ? Elements(y) / rows : 0};
  } else {
    p.x = {x->dims->data[1], x->dims->data[2], x->dims->data[3]};
    if (mean != nullptr && mean->on) {
      p.y = {mean->y_h, mean->y_w, Elements(y)};
    } else {
      p.y = {y->dims->data[1], y->dims->data[2], y->dims->data[3]};
    }
    p.kh = w->dims->data[1];
    p.kw = w->dims->data[2];
    p.stride_h = d.stride_h;
    p.stride_w = d.stride_w;
    p.dil_h = d.dil_h;
    p.dil_w = d.dil_w;
    p.pad_top = d.pad_top;
    p.pad_left = d.pad_left;
  }
  p.x_offset = d.x_offset;
  p.y_offset = d.y_offset;
  p.act_min = d.act_min;
  p.act_max = d.act_max;
  return p;
}

bool SameParams(const core::ConvOpParams& p, const core::ConvOpParams& q);

// TFLite's ComputePaddingWithOffset (leading padding), as PrepareConvOp uses it.
int32_t LeadingPadding(int32_t stride, int32_t dil, int32_t in, int32_t filt, int32_t out) {
  return core::tflm_ref::LeadingPad(stride, dil, in, filt, out);
}

// Stores `p` (less its shapes) in `d`; false if a value does not fit or ParamsOf would not give
// `p` back from these tensors.
bool StoreParams(const core::ConvOpParams& p, const TfLiteEvalTensor* x, const TfLiteEvalTensor* w,
                 const TfLiteEvalTensor* y, const MeanOptions& mean, ConvOpData* d) {
  bool fits = true;
  auto put = [&](int32_t v, auto* out) {
    using T = std::remove_pointer_t<decltype(out)>;
    fits = fits && v >= std::numeric_limits<T>::min() && v <= std::numeric_limits<T>::max();
    *out = static_cast<T>(v);
  };
  d->kind = static_cast<int8_t>(p.kind);
  put(p.stride_h, &d->stride_h);
  put(p.stride_w, &d->stride_w);
  put(p.dil_h, &d->dil_h);
  put(p.dil_w, &d->dil_w);
  put(p.pad_top, &d->pad_top);
  put(p.pad_left, &d->pad_left);
  put(p.x_offset, &d->x_offset);
  put(p.y_offset, &d->y_offset);
  put(p.act_min, &d->act_min);
  put(p.act_max, &d->act_max);
  if (!fits) return false;
  return SameParams(p, ParamsOf(*d, x, w, y, &mean));
}

// TMT_CONV's custom options (Prepare).
struct ConvOptions {
  int32_t kind = -1;
  int32_t act = 0;
  int32_t stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1, padding = core::kPaddingValid;
  int16_t mask_min = 0, mask_max = 0;  // with output 1 'bits' only
};

// user_data of an op whose options hold its runtime parameters too (x_zp, y_zp, act_min,
// act_max: artifacts of this converter): Prepare and each Eval read everything from the model,
// no op data is kept (never written: its address is the marker).
const ConvOpData kConvInModel;

// Whether the options carry the runtime parameters (kConvInModel).
bool RuntimeInOptions(const char* buffer, size_t length) {
  OptionReader r(buffer, length);
  return !r.unreadable() && r.Has("x_zp") && r.Has("y_zp") && r.Has("act_min") &&
         r.Has("act_max");
}

// The op data of an op whose parameters are in its options (kConvInModel), into *d: what
// Prepare stores (StoreParams) for these tensors, from the options, the dims of x, w and y (mean
// mode: the options' y dims) and the inputs (w_rest). Prints why and returns false when an
// option is missing or out of range.
bool ConvDataFromOptions(const TfLiteNode* node, const TfLiteEvalTensor* x,
                         const TfLiteEvalTensor* w, const TfLiteEvalTensor* y,
                         const MeanOptions& mean, ConvOpData* d);

void* ConvInit(TfLiteContext* context, const char* buffer, size_t length) {
  if (RuntimeInOptions(buffer, length)) return const_cast<ConvOpData*>(&kConvInModel);
  void* mem = context->AllocatePersistentBuffer(context, sizeof(ConvOpData));
  if (mem == nullptr) return nullptr;
  ConvOpData* d = new (mem) ConvOpData();
  if (length <= UINT16_MAX) {  // (longer options are reported as unreadable in Prepare)
    d->options = buffer;
    d->options_length = static_cast<uint16_t>(length);
  }
  return d;
}

// Reads the options (mask_min / mask_max with output 1 'bits'); prints why and returns false when
// one is missing or out of range.
bool ReadConvOptions(const ConvOpData* d, bool mask, ConvOptions* o) {
  OptionReader r(d->options, d->options_length);
  if (r.unreadable()) {
    MicroPrintf("TMT_CONV: custom option '%s' missing", r.unreadable());
    return false;
  }
  r.Int("kind", &o->kind);
  r.Int("act", &o->act);
  if (o->kind != core::kConvOpFullyConnected) {
    r.Int("stride_h", &o->stride_h);
    r.Int("stride_w", &o->stride_w);
    r.Int("dil_h", &o->dil_h);
    r.Int("dil_w", &o->dil_w);
    r.Int("padding", &o->padding);
  }
  if (mask) {
    r.Int16("mask_min", &o->mask_min);
    r.Int16("mask_max", &o->mask_max);
  }
  if (r.bad()) {
    MicroPrintf("TMT_CONV: custom option '%s' %s", r.bad(),
                r.out_of_range() ? "out of range" : "missing");
    return false;
  }
  return true;
}

bool ConvDataFromOptions(const TfLiteNode* node, const TfLiteEvalTensor* x,
                         const TfLiteEvalTensor* w, const TfLiteEvalTensor* y,
                         const MeanOptions& mean, ConvOpData* d) {
  const size_t length = static_cast<size_t>(node->custom_initial_data_size);
  d->options = static_cast<const char*>(node->custom_initial_data);
  d->options_length = static_cast<uint16_t>(length <= UINT16_MAX ? length : 0);
  ConvOptions o;
  if (!ReadConvOptions(d, node->outputs->size == 2, &o)) return false;
  OptionReader r(d->options, d->options_length);
  int16_t x_zp = 0, y_zp = 0, act_min = 0, act_max = 0;
  r.Int16("x_zp", &x_zp);
  r.Int16("y_zp", &y_zp);
  r.Int16("act_min", &act_min);
  r.Int16("act_max", &act_max);
  const bool fits = [&] {
    for (int32_t v : {o.stride_h, o.stride_w, o.dil_h, o.dil_w}) {
      if (v < 1 || v > INT16_MAX) return false;
    }
    return x_zp >= INT8_MIN && x_zp <= INT8_MAX && y_zp >= INT8_MIN && y_zp <= INT8_MAX &&
           act_min >= INT8_MIN && act_max <= INT8_MAX;
  }();
  if (r.bad() || !fits) {
    MicroPrintf("TMT_CONV: custom option '%s' %s", r.bad() ? r.bad() : "x_zp / y_zp / act_*",
                r.bad() && !r.out_of_range() ? "missing" : "out of range");
    return false;
  }
  d->kind = static_cast<int8_t>(o.kind);
  d->stride_h = static_cast<int16_t>(o.stride_h);
  d->stride_w = static_cast<int16_t>(o.stride_w);
  d->dil_h = static_cast<int16_t>(o.dil_h);
  d->dil_w = static_cast<int16_t>(o.dil_w);
  d->pad_top = d->pad_left = 0;
  if (o.kind != core::kConvOpFullyConnected) {  // as PrepareConvOp: TFLite's leading padding
    const int32_t out_h = mean.on ? mean.y_h : y->dims->data[1];
    const int32_t out_w = mean.on ? mean.y_w : y->dims->data[2];
    d->pad_top = static_cast<int16_t>(
        LeadingPadding(o.stride_h, o.dil_h, x->dims->data[1], w->dims->data[1], out_h));
    d->pad_left = static_cast<int16_t>(
        LeadingPadding(o.stride_w, o.dil_w, x->dims->data[2], w->dims->data[2], out_w));
  }
  d->x_offset = static_cast<int16_t>(-x_zp);
  d->y_offset = static_cast<int8_t>(y_zp);
  d->act_min = static_cast<int8_t>(act_min);
  d->act_max = static_cast<int8_t>(act_max);
  d->mask_min = o.mask_min;
  d->mask_max = o.mask_max;
  d->w_split = node->inputs->size == kInputs + 1 && node->inputs->data[kInputs] >= 0
                   ? w->dims->data[0]
                   : -1;
  return true;
}

// Whether two parameter sets are the same (every field ConvOp reads).
bool SameParams(const core::ConvOpParams& p, const core::ConvOpParams& q) {
  return q.kind == p.kind && q.x.h == p.x.h && q.x.w == p.x.w && q.x.c == p.x.c &&
         q.y.h == p.y.h && q.y.w == p.y.w && q.y.c == p.y.c && q.kh == p.kh && q.kw == p.kw &&
         q.stride_h == p.stride_h && q.stride_w == p.stride_w && q.dil_h == p.dil_h &&
         q.dil_w == p.dil_w && q.pad_top == p.pad_top && q.pad_left == p.pad_left &&
         q.x_offset == p.x_offset && q.y_offset == p.y_offset && q.act_min == p.act_min &&
         q.act_max == p.act_max;
}

TfLiteStatus ConvPrepare(TfLiteContext* context, TfLiteNode* node) {
  if (node->user_data == nullptr) {
    MicroPrintf("TMT_CONV: could not allocate op data");
    return kTfLiteError;
  }
  // parameters in the options: Prepare checks them against the tensors (StoreParams into a local
  // op data, compared with what Eval will read)
  const bool in_model = node->user_data == &kConvInModel;
  ConvOpData local;
  if (in_model) {
    const size_t length = static_cast<size_t>(node->custom_initial_data_size);
    local.options = static_cast<const char*>(node->custom_initial_data);
    local.options_length = static_cast<uint16_t>(length <= UINT16_MAX ? length : 0);
  }
  ConvOpData* d = in_model ? &local : static_cast<ConvOpData*>(node->user_data);
  ConvOptions o;
  // A narrow bias: an int16 'b' (the trained change), its base and shifts in rows 2 and 3 of
  // 'requant' (core::ConvOpNarrowBias expands it a chunk of channels at a time, on the stack).
  const bool narrow = node->inputs->size >= 3 && node->inputs->data[2] >= 0 &&
                      context->GetEvalTensor(context, node->inputs->data[2])->type ==
                          kTfLiteInt16;
  const int n_out = node->outputs->size;
  const bool mask = n_out == 2;
  if (!ReadConvOptions(d, mask, &o)) return kTfLiteError;
  MeanOptions mean;
  if (!ReadMeanOptions(d->options, d->options_length, &mean)) return kTfLiteError;
  if (mean.on && o.kind != core::kConvOpConv2D) {
    MicroPrintf("TMT_CONV: option 'mean' needs kind 0 (CONV_2D), got %d", static_cast<int>(o.kind));
    return kTfLiteError;
  }
  if (o.kind < core::kConvOpConv2D || o.kind > core::kConvOpFullyConnected) {
    MicroPrintf("TMT_CONV: invalid options: kind %d (0 CONV_2D, 1 DEPTHWISE_CONV_2D, "
                "2 FULLY_CONNECTED)", static_cast<int>(o.kind));
    return kTfLiteError;
  }
  const char* op = kKindNames[o.kind];
  const bool split = node->inputs->size == kInputs + 1;
  if ((node->inputs->size != kInputs && !split) || (n_out != 1 && !mask)) {
    MicroPrintf("TMT_CONV (%s): expected 4 inputs (5 with 'w_rest') and 1 output (+1 'bits'), "
                "got %d and %d", op, node->inputs->size, n_out);
    return kTfLiteError;
  }
  d->mask_min = o.mask_min;
  d->mask_max = o.mask_max;
  tflite::MicroContext* mc = tflite::GetMicroContext(context);
  TfLiteTensor* in[kInputs + 1] = {};
  for (int i = 0; i < node->inputs->size; ++i) {
    if (node->inputs->data[i] >= 0) in[i] = mc->AllocateTempInputTensor(node, i);
  }
  TfLiteTensor* y = mc->AllocateTempOutputTensor(node, 0);
  TfLiteStatus status = kTfLiteOk;
  auto fail = [&](int i, const char* what) {
    if (status != kTfLiteOk) return;  // report the first problem only
    MicroPrintf("TMT_CONV (%s): %s %d '%s' %s", op, i < 0 ? "output" : "input", i < 0 ? 0 : i,
                i < 0 ? (mean.on ? "pooled" : "y") : kInputNames[i], what);
    status = kTfLiteError;
  };
  auto type = [&](int i, const TfLiteTensor* t, TfLiteType want) {
    if (t != nullptr && t->type != want && status == kTfLiteOk) {
      MicroPrintf("TMT_CONV (%s): %s %d '%s' must be %s, not %s", op, i < 0 ? "output" : "input",
                  i < 0 ? 0 : i, i < 0 ? (mean.on ? "pooled" : "y") : kInputNames[i],
                  TfLiteTypeGetName(want),
                  TfLiteTypeGetName(t->type));
      status = kTfLiteError;
    }
  };
  for (int i : {0, 1, 3}) {
    if (in[i] == nullptr) fail(i, "is missing");
  }
  if (y == nullptr) fail(-1, "is missing");
  type(0, in[0], kTfLiteInt8);
  type(1, in[1], kTfLiteInt8);
  type(2, in[2], narrow ? kTfLiteInt16 : kTfLiteInt32);
  type(3, in[3], kTfLiteInt32);
  type(-1, y, kTfLiteInt8);
  const bool fc = o.kind == core::kConvOpFullyConnected;
  core::ConvOpSpec s;
  core::WeightScales ws, ws_rest;
  // rows (output channels) held by 'w_rest' (input 4), after those of 'w'
  const int32_t rows_rest =
      split && in[4] != nullptr && in[4]->dims->size >= 1 ? in[4]->dims->data[0] : 0;
  int32_t rows_w = 0;  // output channels held by 'w' (all of them without 'w_rest')
  if (status == kTfLiteOk) {
    const TfLiteTensor* x = in[0];
    const TfLiteTensor* w = in[1];
    const int want_w = fc ? 2 : 4;
    if (w->dims->size != want_w) fail(1, fc ? "must be [CO, CI]" : "must be 4-D");
    if (!fc && (x->dims->size != 4 || x->dims->data[0] != 1)) fail(0, "must be [1, H, W, C]");
    if (!fc && !mean.on && (y->dims->size != 4 || y->dims->data[0] != 1)) {
      fail(-1, "must be [1, H, W, C]");
    }
    if (w->quantization.type != kTfLiteAffineQuantization || w->quantization.params == nullptr) {
      fail(1, "must be quantized");
    } else {
      const auto* q = static_cast<const TfLiteAffineQuantization*>(w->quantization.params);
      if (q->scale == nullptr || q->scale->size < 1) {
        fail(1, "must be quantized");
      } else {
        ws.scales = q->scale->data;
        ws.n = q->scale->size;
      }
    }
    s.kind = o.kind;
    s.x_q.scale = x->params.scale;
    s.x_q.zero_point = x->params.zero_point;
    s.y_q.scale = mean.on ? mean.y_scale : y->params.scale;
    s.y_q.zero_point = mean.on ? mean.y_zp : y->params.zero_point;
    s.conv.act = o.act;
    if (status == kTfLiteOk && fc) {
      s.w_in_c = w->dims->data[1];
      s.channels = w->dims->data[0] + rows_rest;
      const int rows = s.w_in_c > 0 ? Elements(x) / s.w_in_c : 0;
      if (s.w_in_c < 1 || rows * s.w_in_c != Elements(x)) fail(0, "must hold rows of CI elements");
      s.x = {1, rows, s.w_in_c};
      s.y = {1, rows, s.channels};
      if (Elements(y) != rows * s.channels) fail(-1, "must hold rows * CO elements");
    } else if (status == kTfLiteOk) {
      s.x = {x->dims->data[1], x->dims->data[2], x->dims->data[3]};
      s.y = mean.on ? core::Hwc{mean.y_h, mean.y_w, Elements(y)}
                    : core::Hwc{y->dims->data[1], y->dims->data[2], y->dims->data[3]};
      const bool dw = o.kind == core::kConvOpDepthwise;
      if (dw && w->dims->data[0] != 1) fail(1, "must be [1, KH, KW, C] (depth multiplier 1)");
      s.conv.kh = w->dims->data[1];
      s.conv.kw = w->dims->data[2];
      s.conv.stride_h = o.stride_h;
      s.conv.stride_w = o.stride_w;
      s.conv.dil_h = o.dil_h;
      s.conv.dil_w = o.dil_w;
      s.conv.padding = o.padding;
      s.w_in_c = w->dims->data[3];
      s.channels = dw ? w->dims->data[3] : w->dims->data[0] + rows_rest;
    }
  }
  rows_w = s.channels - rows_rest;
  if (status == kTfLiteOk && split) {  // rows [rows_w, CO) of the weights in 'w_rest'
    const TfLiteTensor* w = in[1];
    const TfLiteTensor* r = in[4];
    bool same = r != nullptr && r->dims->size == w->dims->size;
    for (int i = 1; same && i < w->dims->size; ++i) same = r->dims->data[i] == w->dims->data[i];
    const auto* q = r != nullptr && r->quantization.type == kTfLiteAffineQuantization
                        ? static_cast<const TfLiteAffineQuantization*>(r->quantization.params)
                        : nullptr;
    if (o.kind == core::kConvOpDepthwise) {
      fail(4, "is only taken by CONV_2D and FULLY_CONNECTED");
    } else if (r == nullptr || r->type != kTfLiteInt8 || r->allocation_type != kTfLiteMmapRo) {
      fail(4, "must be a constant int8 tensor");
    } else if (!same) {
      fail(4, "must have the row shape of 'w'");
    } else if (q == nullptr || q->scale == nullptr || q->scale->size < 1) {
      fail(4, "must be quantized");
    } else {
      ws_rest.scales = q->scale->data;
      ws_rest.n = q->scale->size;
      if (ws_rest.n != 1 && ws_rest.n != rows_rest) {
        fail(4, "must have 1 or one scale per row");
      }
    }
  }
  core::ConvOpParams params;
  if (status == kTfLiteOk) {
    const core::Status cs = core::PrepareConvOp(s, &params);
    if (cs != core::Status::kOk) {
      MicroPrintf("TMT_CONV (%s): %s (x, w, y or the options are inconsistent)", op,
                  core::StatusString(cs));
      status = kTfLiteError;
    } else if (!StoreParams(params, context->GetEvalTensor(context, node->inputs->data[0]),
                            context->GetEvalTensor(context, node->inputs->data[1]),
                            context->GetEvalTensor(context, node->outputs->data[0]), mean,
                            d)) {
      MicroPrintf("TMT_CONV (%s): strides, dilations, padding or offsets out of the int16 range",
                  op);
      status = kTfLiteError;
    }
  }
  if (status == kTfLiteOk && split && !core::ConvOpTakesSplit(params)) {
    fail(4, "is only taken by 1x1 stride-1 unpadded convolutions and fully-connected layers");
  }
  d->w_split = split ? rows_w : -1;
  if (status == kTfLiteOk && ws.n != 1 && ws.n != rows_w) {
    fail(1, split ? "must have 1 scale or one per row" : "must have 1 or C scales");
  }
  const TfLiteTensor* rq = in[3];
  if (status == kTfLiteOk) {
    if (rq->allocation_type != kTfLiteMmapRo || rq->dims->size != 2 ||
        rq->dims->data[0] != (narrow ? 4 : 2) || rq->dims->data[1] != s.channels) {
      fail(3, narrow ? "must be a constant int32 [4, C] tensor with an int16 'b' (C output "
                       "channels; rows 2 and 3 the bias base and shifts)"
                     : "must be a constant int32 [2, C] tensor (C output channels)");
    }
  }
  if (status == kTfLiteOk && narrow) {
    const int32_t* k = tflite::GetTensorData<int32_t>(rq) + 3 * s.channels;
    for (int32_t c = 0; c < s.channels && status == kTfLiteOk; ++c) {
      if (k[c] < 0 || k[c] > core::kMaxBiasShift) {
        MicroPrintf("TMT_CONV (%s): input 3 'requant' channel %d: bias shift %ld outside [0, %d]",
                    op, static_cast<int>(c), static_cast<long>(k[c]),
                    static_cast<int>(core::kMaxBiasShift));
        status = kTfLiteError;
      }
    }
  }
  if (status == kTfLiteOk) {
    // requant must hold what TFLM's Prepare computes from the scales (no memory needed).
    const int32_t* mult = tflite::GetTensorData<int32_t>(rq);
    const int32_t* shift = mult + s.channels;
    for (int32_t c = 0; c < s.channels && status == kTfLiteOk; ++c) {
      const bool rest = c >= rows_w;  // a row of 'w_rest'
      const core::WeightScales& part = rest ? ws_rest : ws;
      const int32_t row = rest ? c - rows_w : c;
      core::WeightScales one;
      one.scales = part.n == 1 ? part.scales : part.scales + row;
      one.n = 1;
      int32_t m = 0, sh = 0;
      if (core::ConvOpMultipliers(s.x_q.scale, one, s.y_q.scale, 1, &m, &sh) !=
          core::Status::kOk) {
        MicroPrintf("TMT_CONV (%s): input %d '%s' row %d: invalid scale", op, rest ? 4 : 1,
                    rest ? "w_rest" : "w", static_cast<int>(row));
        status = kTfLiteError;
      } else if (m != mult[c] || sh != shift[c]) {
        MicroPrintf("TMT_CONV (%s): input 3 'requant' channel %d holds multiplier %ld shift %ld, "
                    "the scales give %ld %ld (re-convert the model)", op, static_cast<int>(c),
                    static_cast<long>(mult[c]), static_cast<long>(shift[c]),
                    static_cast<long>(m), static_cast<long>(sh));
        status = kTfLiteError;
      }
    }
  }
  if (status == kTfLiteOk && in[2] != nullptr && Elements(in[2]) != s.channels) {
    fail(2, "must have C elements");
  }
  // the elements of y (in mean mode the op does not write it)
  const int y_elements = mean.on ? s.y.size() : Elements(y);
  if (status == kTfLiteOk && mean.on && s.channels != s.y.c) {
    fail(-1, "must have C elements (the output channels)");
  }
  if (status == kTfLiteOk && mean.on) {  // output 0 'pooled': the mean of y over H and W
    int32_t m = 0, sh = 0;
    if (s.y.h * s.y.w > core::kMeanChunkBytes) {
      MicroPrintf("TMT_CONV (%s): mean mode: y has %d pixels, at most %d", op,
                  static_cast<int>(s.y.h * s.y.w), static_cast<int>(core::kMeanChunkBytes));
      status = kTfLiteError;
    } else if (core::MeanOpMultiplier(mean.y_scale, y->params.scale, s.y.h * s.y.w, &m, &sh) !=
                   core::Status::kOk ||
               m != mean.multiplier || sh != mean.shift) {
      MicroPrintf("TMT_CONV (%s): options 'mean_multiplier' %ld 'mean_shift' %ld: the scales of y "
                  "(%f) and output 0 'pooled' (%f) give %ld %ld (re-convert the model)", op,
                  static_cast<long>(mean.multiplier), static_cast<long>(mean.shift),
                  static_cast<double>(mean.y_scale), static_cast<double>(y->params.scale),
                  static_cast<long>(m), static_cast<long>(sh));
      status = kTfLiteError;
    } else if (mean.pooled_zp != y->params.zero_point) {
      fail(-1, "has a zero point other than the option 'pooled_zp'");
    }
  }
  if (status == kTfLiteOk && mask) {  // output 1 'bits': the packed mask of y
    TfLiteTensor* bits = mc->AllocateTempOutputTensor(node, 1);
    if (bits == nullptr || bits->type != kTfLiteUInt8 || Elements(bits) != (y_elements + 7) / 8) {
      MicroPrintf("TMT_CONV (%s): output 1 'bits' must be uint8 with ceil(N / 8) elements (N of "
                  "y: %d)", op, y_elements);
      status = kTfLiteError;
    }
    if (bits) mc->DeallocateTempTfLiteTensor(bits);
  }
  for (TfLiteTensor* t : in) {
    if (t) mc->DeallocateTempTfLiteTensor(t);
  }
  if (y) mc->DeallocateTempTfLiteTensor(y);
  if (status == kTfLiteOk && in_model) {  // what Eval reads from the options == what Prepare computed
    const TfLiteEvalTensor* ex = context->GetEvalTensor(context, node->inputs->data[0]);
    const TfLiteEvalTensor* ew = context->GetEvalTensor(context, node->inputs->data[1]);
    const TfLiteEvalTensor* ey = context->GetEvalTensor(context, node->outputs->data[0]);
    ConvOpData from_options;
    if (!ConvDataFromOptions(node, ex, ew, ey, mean, &from_options)) return kTfLiteError;
    if (!SameParams(ParamsOf(local, ex, ew, ey, &mean), ParamsOf(from_options, ex, ew, ey, &mean)) ||
        from_options.w_split != local.w_split || from_options.mask_min != local.mask_min ||
        from_options.mask_max != local.mask_max) {
      MicroPrintf("TMT_CONV (%s): options 'x_zp', 'y_zp', 'act_min', 'act_max' disagree with the "
                  "tensors' quantization and the activation (re-convert the model)", op);
      return kTfLiteError;
    }
  }
  return status;
}

TfLiteStatus ConvEval(TfLiteContext* context, TfLiteNode* node) {
  const TfLiteEvalTensor* x = tflite::micro::GetEvalInput(context, node, 0);
  const TfLiteEvalTensor* w = tflite::micro::GetEvalInput(context, node, 1);
  const TfLiteEvalTensor* b =
      node->inputs->data[2] >= 0 ? tflite::micro::GetEvalInput(context, node, 2) : nullptr;
  const TfLiteEvalTensor* rq = tflite::micro::GetEvalInput(context, node, 3);
  TfLiteEvalTensor* y = tflite::micro::GetEvalOutput(context, node, 0);
  const int32_t* mult = tflite::micro::GetTensorData<int32_t>(rq);
  const bool in_model = node->user_data == &kConvInModel;
  ConvOpData local;
  const ConvOpData* d = in_model ? &local : static_cast<const ConvOpData*>(node->user_data);
  const char* options = in_model ? static_cast<const char*>(node->custom_initial_data) : d->options;
  const size_t options_length =
      in_model ? static_cast<size_t>(node->custom_initial_data_size) : d->options_length;
  MeanOptions mean;  // (checked in Prepare)
  if (!ReadMeanOptions(options, options_length, &mean)) return kTfLiteError;
  if (in_model && !ConvDataFromOptions(node, x, w, y, mean, &local)) return kTfLiteError;
  const core::ConvOpParams params = ParamsOf(*d, x, w, y, &mean);
  const int32_t channels = params.y.c;
  const bool narrow = b != nullptr && b->type == kTfLiteInt16;
  core::SplitWeights split;
  if (d->w_split >= 0) {
    split.rest = tflite::micro::GetTensorData<int8_t>(tflite::micro::GetEvalInput(context, node, 4));
    split.split = d->w_split;
  }
  core::Status st = core::Status::kOk;
  core::NarrowBias nb;
  if (narrow) {
    nb.base = mult + 2 * channels;
    nb.delta = tflite::micro::GetTensorData<int16_t>(b);
    nb.shift = mult + 3 * channels;
  }
  if (mean.on) {  // output 0 the mean of y over H and W (and 1 y's mask), without y
    core::ConvMeanParams m;
    m.multiplier = mean.multiplier;
    m.shift = mean.shift;
    m.pooled_zero_point = mean.pooled_zp;
    m.mask = node->outputs->size == 2;
    m.mask_min = d->mask_min;
    m.mask_max = d->mask_max;
    st = core::ConvOpMean(
        params, mult, mult + channels, tflite::micro::GetTensorData<int8_t>(x),
        tflite::micro::GetTensorData<int8_t>(w),
        b != nullptr && !narrow ? tflite::micro::GetTensorData<int32_t>(b) : nullptr,
        narrow ? &nb : nullptr, m, tflite::micro::GetTensorData<int8_t>(y),
        m.mask ? tflite::micro::GetTensorData<uint8_t>(tflite::micro::GetEvalOutput(context, node, 1))
               : nullptr,
        split);
  } else if (narrow) {  // the int32 bias from its base, change and shifts, a chunk at a time
    st = core::ConvOpNarrowBias(params, mult, mult + channels,
                                tflite::micro::GetTensorData<int8_t>(x),
                                tflite::micro::GetTensorData<int8_t>(w), nb,
                                tflite::micro::GetTensorData<int8_t>(y), split);
  } else {
    st = core::ConvOp(params, mult, mult + channels, tflite::micro::GetTensorData<int8_t>(x),
                      tflite::micro::GetTensorData<int8_t>(w),
                      b != nullptr ? tflite::micro::GetTensorData<int32_t>(b) : nullptr,
                      tflite::micro::GetTensorData<int8_t>(y), split);
  }
  if (st == core::Status::kOk && !mean.on && node->outputs->size == 2) {  // TMT_MASK_PACK of y
    st = core::MaskPack(tflite::micro::GetTensorData<int8_t>(y), Elements(y), d->mask_min,
                        d->mask_max,
                        tflite::micro::GetTensorData<uint8_t>(
                            tflite::micro::GetEvalOutput(context, node, 1)));
  }
  if (st != core::Status::kOk) {
    MicroPrintf("TMT_CONV (%s): %s", kKindNames[params.kind], core::StatusString(st));
    return kTfLiteError;
  }
  return kTfLiteOk;
}

// TMT_MEAN: TFLM's int8 MEAN over H and W (core::MeanOp) without its int32 scratch per output
// element. Inputs x [1, H, W, C] int8, axis (constant int32, {1, 2} in any order); output y
// (C elements) int8. Options: keep_dims (only for turning the op back into MEAN).
struct MeanOpData {
  core::MeanOpParams params;
};

void* MeanInit(TfLiteContext* context, const char*, size_t) {
  void* mem = context->AllocatePersistentBuffer(context, sizeof(MeanOpData));
  return mem == nullptr ? nullptr : new (mem) MeanOpData();
}

TfLiteStatus MeanPrepare(TfLiteContext* context, TfLiteNode* node) {
  MeanOpData* d = static_cast<MeanOpData*>(node->user_data);
  if (d == nullptr) {
    MicroPrintf("TMT_MEAN: could not allocate op data");
    return kTfLiteError;
  }
  if (node->inputs->size != 2 || node->outputs->size != 1) {
    MicroPrintf("TMT_MEAN: expected 2 inputs (x, axis) and 1 output, got %d and %d",
                node->inputs->size, node->outputs->size);
    return kTfLiteError;
  }
  tflite::MicroContext* mc = tflite::GetMicroContext(context);
  TfLiteTensor* x = mc->AllocateTempInputTensor(node, 0);
  TfLiteTensor* axis = mc->AllocateTempInputTensor(node, 1);
  TfLiteTensor* y = mc->AllocateTempOutputTensor(node, 0);
  TfLiteStatus status = kTfLiteError;
  if (x == nullptr || axis == nullptr || y == nullptr) {
    MicroPrintf("TMT_MEAN: %s is missing", x == nullptr ? "input 0 'x'"
                : axis == nullptr ? "input 1 'axis'" : "output 0 'y'");
  } else if (x->type != kTfLiteInt8 || y->type != kTfLiteInt8) {
    MicroPrintf("TMT_MEAN: %s must be int8, not %s", x->type != kTfLiteInt8 ? "input 0 'x'"
                : "output 0 'y'", TfLiteTypeGetName(x->type != kTfLiteInt8 ? x->type : y->type));
  } else if (x->dims->size != 4 || x->dims->data[0] != 1) {
    MicroPrintf("TMT_MEAN: input 0 'x' must be [1, H, W, C]");
  } else if (axis->type != kTfLiteInt32 || axis->allocation_type != kTfLiteMmapRo ||
             Elements(axis) != 2 ||
             tflite::GetTensorData<int32_t>(axis)[0] + tflite::GetTensorData<int32_t>(axis)[1] != 3 ||
             tflite::GetTensorData<int32_t>(axis)[0] * tflite::GetTensorData<int32_t>(axis)[1] != 2) {
    MicroPrintf("TMT_MEAN: input 1 'axis' must be a constant int32 {1, 2} (H and W)");
  } else if (Elements(y) != x->dims->data[3]) {
    MicroPrintf("TMT_MEAN: output 0 'y' must hold C = %d elements, has %d", x->dims->data[3],
                Elements(y));
  } else {
    core::MeanOpParams& p = d->params;
    p.x = {x->dims->data[1], x->dims->data[2], x->dims->data[3]};
    p.x_zero_point = x->params.zero_point;
    p.y_zero_point = y->params.zero_point;
    if (core::MeanOpMultiplier(x->params.scale, y->params.scale, p.x.h * p.x.w, &p.multiplier,
                               &p.shift) != core::Status::kOk) {
      MicroPrintf("TMT_MEAN: the scales of x (%f) and y (%f) give no valid multiplier",
                  static_cast<double>(x->params.scale), static_cast<double>(y->params.scale));
    } else {
      status = kTfLiteOk;
    }
  }
  for (TfLiteTensor* t : {x, axis, y}) {
    if (t) mc->DeallocateTempTfLiteTensor(t);
  }
  return status;
}

TfLiteStatus MeanEval(TfLiteContext* context, TfLiteNode* node) {
  const MeanOpData* d = static_cast<const MeanOpData*>(node->user_data);
  const TfLiteEvalTensor* x = tflite::micro::GetEvalInput(context, node, 0);
  TfLiteEvalTensor* y = tflite::micro::GetEvalOutput(context, node, 0);
  const core::Status s = core::MeanOp(d->params, tflite::micro::GetTensorData<int8_t>(x),
                                      tflite::micro::GetTensorData<int8_t>(y));
  if (s != core::Status::kOk) {
    MicroPrintf("TMT_MEAN: %s", core::StatusString(s));
    return kTfLiteError;
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_TMT_CONV() {
  return tflite::micro::RegisterOp(ConvInit, ConvPrepare, ConvEval);
}

TFLMRegistration Register_TMT_MEAN() {
  return tflite::micro::RegisterOp(MeanInit, MeanPrepare, MeanEval);
}

}  // namespace tfmicro_train
