// TFLite Micro glue of the TMT_* training ops: options, checks, and calls into the
// portable cores (tflm_ops/core/training_ops.h). See training_ops.h and docs/contract.md.
#include "tflm_ops/tflm/training_ops.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/memory_helpers.h"
#include "tensorflow/lite/micro/micro_context.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/micro/micro_utils.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "tflm_ops/core/fused_irb.h"
#include "tflm_ops/core/training_ops.h"
#include "tflm_ops/core/training_ops_f32.h"
#include "tflm_ops/tflm/options.h"

namespace tfmicro_train {
namespace {

namespace core = ::tfmicro_train::core;

enum OpKind : int {
  kSoftmaxCeGrad,
  kMseGrad,
  kActGrad,
  kGradAdd,
  kMeanGrad,
  kPadGrad,
  kReshapeGrad,
  kAvgPoolGrad,
  kMaxPoolGrad,
  kConvInputGrad,
  kDwInputGrad,
  kConvWeightUpdate,
  kDwWeightUpdate,
  kBiasUpdate,
  kMaskPack,
  kMaskGrad,
  kNumKinds,
};

// Options (bit flags of OpInfo::options).
enum : uint32_t {
  kOptActMin = 1u << 0,
  kOptActMax = 1u << 1,
  kOptInvCount = 1u << 2,
  kOptPadTop = 1u << 3,
  kOptPadLeft = 1u << 4,
  kOptFilter = 1u << 5,  // filter_h, filter_w
  kOptStride = 1u << 6,  // stride_h, stride_w
  kOptWScaleMax = 1u << 7,
  kOptXZeroPoint = 1u << 8,
  kOptUpdateChannels = 1u << 9,
  kOptSeed = 1u << 10,
  kOptUseScratch = 1u << 11,  // optional
  kOptBroadcast = 1u << 12,   // optional: g_bcast_h, g_bcast_w (a folded TMT_MEAN_GRAD)
  kOptBiasUpdate = 1u << 13,  // optional: b_update_channels, b_seed (a folded TMT_BIAS_UPDATE)
};

// Input slot of the packed mask of a broadcast gradient (tfmicro_train/head.py GRAD_MASK).
constexpr int kGradMaskInput = 6;
// Input slots of a folded TMT_BIAS_UPDATE in an input gradient op (tfmicro_train/updates.py).
constexpr int kBiasInput = 7, kBfactorInput = 8, kBiasStateInput = 9;
constexpr uint32_t kOptGeom = kOptStride | kOptPadTop | kOptPadLeft;

constexpr int kMaxTensors = 10;

// Which tensor's type selects the fp32-backward variant (docs/contract.md, "fp32 backward"):
// a float32 gradient (input 0, or the loss ops' output 0) runs it.
enum ModeTensor : int { kModeInput0, kModeOutput0, kNoF32 };

struct OpInfo {
  const char* name;
  const char* inputs[kMaxTensors];   // contract names, flatbuffer order (nullptr-terminated)
  const char* outputs[kMaxTensors];  // likewise
  uint32_t options;
  // fp32 backward: the mode tensor, the inputs (same positions; those in `absent_f32`, the scales,
  // must be absent (-1)) and the outputs (scale outputs dropped).
  ModeTensor mode;
  const char* inputs_f32[kMaxTensors];
  uint32_t absent_f32;  // bit i: input i is absent
  const char* outputs_f32[kMaxTensors];
};

const OpInfo kOps[kNumKinds] = {
    {"TMT_SOFTMAX_CE_GRAD", {"probs", "label", "lr", "loss_lut", "state"},
     {"grad", "grad_scale", "loss"}, 0,
     kModeOutput0, {"probs", "label", "lr", "loss_lut", "state"}, 0, {"grad", "loss"}},
    {"TMT_MSE_GRAD", {"y", "target", "lr", "state"}, {"grad", "grad_scale", "loss"}, 0,
     kModeOutput0, {"y", "target", "lr", "state"}, 0, {"grad", "loss"}},
    {"TMT_ACT_GRAD", {"g", "y", "lr"}, {"g_out"}, kOptActMin | kOptActMax,
     kModeInput0, {"g", "y", "lr"}, 0, {"g_out"}},
    {"TMT_GRAD_ADD", {"g1", "s1", "g2", "s2", "lr"}, {"g", "s"}, kOptUseScratch,
     kModeInput0, {"g1", "s1", "g2", "s2", "lr"}, 0b1010, {"g"}},
    {"TMT_MEAN_GRAD", {"g", "s", "lr"}, {"g_in", "s_in"}, kOptInvCount,
     kModeInput0, {"g", "s", "lr"}, 0b10, {"g_in"}},
    {"TMT_PAD_GRAD", {"g", "lr"}, {"g_in"}, kOptPadTop | kOptPadLeft,
     kModeInput0, {"g", "lr"}, 0, {"g_in"}},
    {"TMT_RESHAPE_GRAD", {"g", "lr"}, {"g_in"}, 0, kModeInput0, {"g", "lr"}, 0, {"g_in"}},
    {"TMT_AVGPOOL_GRAD", {"g", "s", "lr"}, {"g_in", "s_in"}, kOptFilter | kOptGeom | kOptUseScratch,
     kModeInput0, {"g", "s", "lr"}, 0b10, {"g_in"}},
    {"TMT_MAXPOOL_GRAD", {"g", "s", "x", "y", "lr"}, {"g_in", "s_in"},
     kOptFilter | kOptGeom | kOptUseScratch,
     kModeInput0, {"g", "s", "x", "y", "lr"}, 0b10, {"g_in"}},
    {"TMT_CONV_INPUT_GRAD", {"g", "s", "w", "wmul", "lr"}, {"g_in", "s_in"},
     kOptGeom | kOptWScaleMax | kOptUseScratch | kOptBroadcast | kOptBiasUpdate,
     kModeInput0, {"g", "s", "w", "wscale", "lr"}, 0b10, {"g_in"}},
    {"TMT_DW_INPUT_GRAD", {"g", "s", "w", "wmul", "lr"}, {"g_in", "s_in"},
     kOptGeom | kOptWScaleMax | kOptUseScratch | kOptBiasUpdate,
     kModeInput0, {"g", "s", "w", "wscale", "lr"}, 0b10, {"g_in"}},
    {"TMT_CONV_WEIGHT_UPDATE", {"g", "s", "x", "w", "wfactor", "lr", "state"}, {},
     kOptGeom | kOptXZeroPoint | kOptUpdateChannels | kOptSeed,
     kModeInput0, {"g", "s", "x", "w", "wfactor", "lr", "state"}, 0b10, {}},
    {"TMT_DW_WEIGHT_UPDATE", {"g", "s", "x", "w", "wfactor", "lr", "state"}, {},
     kOptGeom | kOptXZeroPoint | kOptUpdateChannels | kOptSeed,
     kModeInput0, {"g", "s", "x", "w", "wfactor", "lr", "state"}, 0b10, {}},
    {"TMT_BIAS_UPDATE", {"g", "s", "b", "bfactor", "lr", "state"}, {},
     kOptUpdateChannels | kOptSeed | kOptBroadcast,
     kModeInput0, {"g", "s", "b", "bfactor", "lr", "state"}, 0b10, {}},
    {"TMT_MASK_PACK", {"y", "lr"}, {"bits"}, kOptActMin | kOptActMax, kNoF32, {}, 0, {}},
    {"TMT_MASK_GRAD", {"g", "bits", "lr"}, {"g_out"}, 0,
     kModeInput0, {"g", "bits", "lr"}, 0, {"g_out"}},
};

int CountNames(const char* const* names) {
  int n = 0;
  while (n < kMaxTensors && names[n] != nullptr) ++n;
  return n;
}

int IndexOf(const char* const* names, const char* want) {
  for (int i = 0; i < kMaxTensors && names[i] != nullptr; ++i) {
    const char* a = names[i];
    const char* b = want;
    while (*a && *a == *b) ++a, ++b;
    if (*a == *b) return i;
  }
  return -1;
}

enum : uint8_t { kOptionsOk, kOptionsUnreadable, kOptionMissing, kOptionOutOfRange };

// An op's options, read from its custom options in the model (flash) by Prepare and again by
// each Eval: no per-operator memory. Only an op that keeps something Prepare computed
// (TMT_MSE_GRAD's scale of y, a requested scratch buffer's index) keeps it in the persistent
// arena (32 bytes on a 32-bit MCU, where TFLM rounds each persistent allocation up to 16 bytes).
// Options no op kind uses together share storage; the geometry options are int16 (values out of
// range are refused).
struct OpData {
  union {
    float w_scale_max = 0.0f;  // TMT_CONV_INPUT_GRAD, TMT_DW_INPUT_GRAD
    float inv_count;           // TMT_MEAN_GRAD
    float y_scale;             // TMT_MSE_GRAD (set in Prepare: the scale of y / target)
    uint32_t seed;             // the update ops
  };
  int32_t update_channels = 0;  // the update ops
  const char* bad_option = nullptr;  // the option 'option_error' names (reported in Prepare)
  int16_t pad_top = 0, pad_left = 0;
  int16_t stride_h = 1, stride_w = 1;
  union {
    int16_t filter_h = 1;  // the pool gradients
    int16_t act_min;       // TMT_ACT_GRAD, TMT_MASK_PACK
    int16_t bcast_h;       // TMT_CONV_INPUT_GRAD, TMT_BIAS_UPDATE with 'broadcast'
  };
  union {
    int16_t filter_w = 1;
    int16_t act_max;
    int16_t bcast_w;
  };
  int16_t x_zero_point = 0;
  int16_t scratch_index = -1;  // set in Prepare
  bool use_scratch = false;
  bool missing_w_scale_max = false;  // required in int8 mode only
  uint8_t option_error = kOptionsOk;
  // 'g' is a folded TMT_MEAN_GRAD's pooled gradient (+ TMT_MASK_GRAD's mask, input 6):
  // core::GradBroadcast over bcast_h x bcast_w
  uint8_t broadcast : 1;
  // an input gradient op running a folded TMT_BIAS_UPDATE after it (inputs 7-9; its channels
  // in update_channels, its seed read from the model at each Eval)
  uint8_t bias_update : 1;
  constexpr OpData() : broadcast(0), bias_update(0) {}
};

// Whether the node runs the fp32 backward (float32 gradients, no scale tensors): its mode tensor
// (docs/contract.md, "fp32 backward") is float32.
bool ModeF32(const OpInfo& info, TfLiteContext* context, const TfLiteNode* node) {
  if (info.mode == kNoF32) return false;
  const TfLiteEvalTensor* t = info.mode == kModeInput0
                                  ? tflite::micro::GetEvalInput(context, node, 0)
                                  : tflite::micro::GetEvalOutput(context, node, 0);
  return t != nullptr && t->type == kTfLiteFloat32;
}

// ------------------------------------------------------------------ Init

// The options of op K from its flexbuffer (the problems for Prepare to report in the op data).
template <int K>
void ReadOptions(const char* buffer, size_t length, OpData* d) {
  const uint32_t opts = kOps[K].options;
  const uint32_t required = opts & ~kOptUseScratch;
  OptionReader r(buffer, length);
  if (r.unreadable()) {
    if (required != 0) d->option_error = kOptionsUnreadable;
    return;
  }
  if (opts & kOptActMin) r.Int16("act_min", &d->act_min);
  if (opts & kOptActMax) r.Int16("act_max", &d->act_max);
  if (opts & kOptInvCount) r.Float("inv_count", &d->inv_count);
  if (opts & kOptPadTop) r.Int16("pad_top", &d->pad_top);
  if (opts & kOptPadLeft) r.Int16("pad_left", &d->pad_left);
  if (opts & kOptFilter) {
    r.Int16("filter_h", &d->filter_h);
    r.Int16("filter_w", &d->filter_w);
  }
  if (opts & kOptStride) {
    r.Int16("stride_h", &d->stride_h);
    r.Int16("stride_w", &d->stride_w);
  }
  // int8 mode only (Prepare checks it once the mode is known)
  if (opts & kOptWScaleMax) d->missing_w_scale_max = !r.Float("w_scale_max", &d->w_scale_max, false);
  if (opts & kOptXZeroPoint) r.Int16("x_zero_point", &d->x_zero_point);
  if (opts & kOptUpdateChannels) r.Int("update_channels", &d->update_channels);
  int64_t v = 0;
  if ((opts & kOptSeed) && r.Int64("seed", &v)) d->seed = static_cast<uint32_t>(v);
  if (opts & kOptUseScratch) d->use_scratch = r.Int64("use_scratch", &v, false) && v != 0;
  if ((opts & kOptBroadcast) && r.Has("g_bcast_h")) {
    d->broadcast = true;
    r.Int16("g_bcast_h", &d->bcast_h);
    r.Int16("g_bcast_w", &d->bcast_w);
  }
  if ((opts & kOptBiasUpdate) && r.Has("b_update_channels")) {
    d->bias_update = true;
    r.Int("b_update_channels", &d->update_channels);
    r.Int64("b_seed", &v);  // (required; Eval reads it again: FoldedBiasUpdate)
  }
  d->bad_option = r.bad();
  if (r.bad()) d->option_error = r.out_of_range() ? kOptionOutOfRange : kOptionMissing;
}

// user_data of the ops whose options are read from the model at each Prepare / Eval (never
// written: its address is the marker).
const OpData kInModel;

template <int K>
void* Init(TfLiteContext* context, const char* buffer, size_t length) {
  // Ops with no options and nothing set in Prepare (TMT_MASK_GRAD, TMT_RESHAPE_GRAD,
  // TMT_SOFTMAX_CE_GRAD) share one op data that is never written: no memory per operator.
  static const OpData kShared;
  if (kOps[K].options == 0 && K != kMseGrad) return const_cast<OpData*>(&kShared);
  OpData d;
  ReadOptions<K>(buffer, length, &d);
  if (K != kMseGrad && !d.use_scratch) return const_cast<OpData*>(&kInModel);
  void* mem = context->AllocatePersistentBuffer(context, sizeof(OpData));
  if (mem == nullptr) return nullptr;
  return new (mem) OpData(d);
}

// The node's op data: its persistent one, or its options read again from the model into *local.
template <int K>
OpData* OpDataOf(const TfLiteNode* node, OpData* local) {
  if (node->user_data != &kInModel) return static_cast<OpData*>(node->user_data);
  ReadOptions<K>(static_cast<const char*>(node->custom_initial_data),
                 static_cast<size_t>(node->custom_initial_data_size), local);
  return local;
}

// ------------------------------------------------------------------ Prepare

// The node's input and output TfLiteTensors, freed when this goes out of scope.
class PrepareTensors {
 public:
  PrepareTensors(TfLiteContext* context, TfLiteNode* node, int n_in, int n_out)
      : micro_context_(tflite::GetMicroContext(context)), n_in_(n_in), n_out_(n_out) {
    for (int i = 0; i < n_in_; ++i) in_[i] = micro_context_->AllocateTempInputTensor(node, i);
    for (int i = 0; i < n_out_; ++i) out_[i] = micro_context_->AllocateTempOutputTensor(node, i);
  }
  ~PrepareTensors() {
    for (int i = 0; i < n_in_; ++i) {
      if (in_[i]) micro_context_->DeallocateTempTfLiteTensor(in_[i]);
    }
    for (int i = 0; i < n_out_; ++i) {
      if (out_[i]) micro_context_->DeallocateTempTfLiteTensor(out_[i]);
    }
  }
  TfLiteTensor* in(int i) const { return in_[i]; }
  TfLiteTensor* out(int i) const { return out_[i]; }

 private:
  tflite::MicroContext* micro_context_;
  int n_in_, n_out_;
  TfLiteTensor* in_[kMaxTensors] = {};
  TfLiteTensor* out_[kMaxTensors] = {};
};

// Elements of a TfLiteTensor or a TfLiteEvalTensor.
template <typename Tensor>
int Elements(const Tensor* t) {
  return tflite::ElementCount(*t->dims);
}

int Dim(const TfLiteTensor* t, int i) { return t->dims->data[i]; }

// Shape checks with errors naming the op and the tensor ("input 2 'w'").
class Checker {
 public:
  Checker(int kind, const PrepareTensors& t, bool f32)
      : info_(kOps[kind]),
        t_(t),
        f32_(f32),
        in_names_(f32 ? kOps[kind].inputs_f32 : kOps[kind].inputs),
        out_names_(f32 ? kOps[kind].outputs_f32 : kOps[kind].outputs) {}

  TfLiteTensor* In(int i) const { return t_.in(i); }
  TfLiteTensor* Out(int i) const { return t_.out(i); }

  bool Fail(bool is_input, int i, const char* what) const {
    MicroPrintf("%s: %s %d '%s' %s", info_.name, is_input ? "input" : "output", i,
                is_input ? in_names_[i] : out_names_[i], what);
    return false;
  }
  bool Type(bool is_input, int i, TfLiteType want) const {
    const TfLiteTensor* t = is_input ? In(i) : Out(i);
    if (t == nullptr) return Fail(is_input, i, "is missing");
    if (t->type != want) {
      MicroPrintf("%s: %s %d '%s' must be %s, not %s", info_.name, is_input ? "input" : "output", i,
                  is_input ? in_names_[i] : out_names_[i], TfLiteTypeGetName(want),
                  TfLiteTypeGetName(t->type));
      return false;
    }
    return true;
  }
  // A float32 tensor with exactly one element (a scale, the learning rate, a loss).
  bool Scalar(bool is_input, int i) const {
    if (!Type(is_input, i, kTfLiteFloat32)) return false;
    if (Elements(is_input ? In(i) : Out(i)) != 1) return Fail(is_input, i, "must have 1 element");
    return true;
  }
  bool Elems(bool is_input, int i, int want) const {
    if (Elements(is_input ? In(i) : Out(i)) != want) {
      MicroPrintf("%s: %s %d '%s' must have %d elements, has %d", info_.name,
                  is_input ? "input" : "output", i, is_input ? in_names_[i] : out_names_[i],
                  want, Elements(is_input ? In(i) : Out(i)));
      return false;
    }
    return true;
  }
  // NHWC with batch 1 ([1, H, W, C]), or [1, C] when allow_2d.
  bool Activation(bool is_input, int i, bool allow_2d) const {
    const TfLiteTensor* t = is_input ? In(i) : Out(i);
    const int nd = t->dims->size;
    if (!((nd == 4) || (allow_2d && nd == 2)) || Dim(t, 0) != 1) {
      return Fail(is_input, i, allow_2d ? "must be [1, H, W, C] or [1, C]" : "must be [1, H, W, C]");
    }
    return true;
  }
  bool SameShape(bool is_input, int i, const TfLiteTensor* ref, const char* ref_name) const {
    const TfLiteTensor* t = is_input ? In(i) : Out(i);
    bool same = t->dims->size == ref->dims->size;
    for (int k = 0; same && k < t->dims->size; ++k) same = Dim(t, k) == Dim(ref, k);
    if (!same) {
      MicroPrintf("%s: %s %d '%s' must have the shape of '%s'", info_.name,
                  is_input ? "input" : "output", i, is_input ? in_names_[i] : out_names_[i],
                  ref_name);
      return false;
    }
    return true;
  }
  // An input TFLM keeps in the persistent arena and the op may write (state, parameters).
  bool Variable(int i) const {
    if (!In(i)->is_variable) return Fail(true, i, "must be a variable tensor (is_variable)");
    return true;
  }
  bool Option(bool ok, const char* what) const {
    if (!ok) MicroPrintf("%s: invalid options: %s", info_.name, what);
    return ok;
  }
  // The type of gradient tensors: int8 (with scale tensors), or float32 in fp32 mode.
  TfLiteType Grad() const { return f32_ ? kTfLiteFloat32 : kTfLiteInt8; }
  // A gradient-scale input: a float32 scalar in int8 mode, absent (-1) in fp32 mode.
  bool ScaleIn(int i) const {
    if (!f32_) return Scalar(true, i);
    if (In(i) != nullptr) return Fail(true, i, "must be absent (-1) with a float32 gradient");
    return true;
  }
  // A gradient-scale output: a float32 scalar in int8 mode; fp32 mode has none.
  bool ScaleOut(int i) const { return f32_ || Scalar(false, i); }

 private:
  const OpInfo& info_;
  const PrepareTensors& t_;
  bool f32_;
  const char* const* in_names_;
  const char* const* out_names_;
};

inline int LastDim(const TfLiteTensor* t) { return t->dims->data[t->dims->size - 1]; }

// A folded TMT_BIAS_UPDATE's inputs (7 'b' int32 / int16 variable [C], 8 'bfactor' float32 [C],
// 9 'state' int32 [2] variable; C the channels of 'g') and its channels; prints what is wrong.
bool CheckFoldedBiasUpdate(const OpInfo& info, const PrepareTensors& t, int channels,
                           const OpData* d) {
  const TfLiteTensor* b = t.in(kBiasInput);
  const TfLiteTensor* bf = t.in(kBfactorInput);
  const TfLiteTensor* st = t.in(kBiasStateInput);
  const char* what = nullptr;
  if (b == nullptr || (b->type != kTfLiteInt32 && b->type != kTfLiteInt16) || !b->is_variable ||
      Elements(b) != channels) {
    what = "input 7 'b' must be an int32 or int16 variable tensor with the channels of 'g'";
  } else if (bf == nullptr || bf->type != kTfLiteFloat32 || Elements(bf) != channels) {
    what = "input 8 'bfactor' must be float32 with the channels of 'g'";
  } else if (st == nullptr || st->type != kTfLiteInt32 || Elements(st) != 2 || !st->is_variable) {
    what = "input 9 'state' must be an int32 variable tensor with 2 elements";
  } else if (d->update_channels < 0 || d->update_channels > channels) {
    what = "invalid options: b_update_channels outside [0, channels]";
  }
  if (what != nullptr) MicroPrintf("%s (folded TMT_BIAS_UPDATE): %s", info.name, what);
  return what == nullptr;
}

template <int K>
TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  const OpInfo& info = kOps[K];
  if (node->user_data == nullptr) {
    MicroPrintf("%s: could not allocate op data", info.name);
    return kTfLiteError;
  }
  OpData local;
  OpData* d = OpDataOf<K>(node, &local);
  if (d->option_error == kOptionsUnreadable) {
    MicroPrintf("%s: custom options missing or not a flexbuffer map", info.name);
    return kTfLiteError;
  }
  if (d->option_error != kOptionsOk) {
    MicroPrintf("%s: custom option '%s' %s", info.name, d->bad_option,
                d->option_error == kOptionOutOfRange ? "out of range" : "missing");
    return kTfLiteError;
  }
  // The mode: a float32 gradient tensor (input 0, or the loss ops' output 0) selects the fp32
  // backward variant, anything else the int8 one (whose checks then name the type).
  bool f32 = false;
  if (info.mode != kNoF32) {
    tflite::MicroContext* mc = tflite::GetMicroContext(context);
    const bool from_input = info.mode == kModeInput0;
    if ((from_input ? node->inputs->size : node->outputs->size) >= 1) {
      TfLiteTensor* gt = from_input ? mc->AllocateTempInputTensor(node, 0)
                                    : mc->AllocateTempOutputTensor(node, 0);
      if (gt != nullptr) {
        f32 = gt->type == kTfLiteFloat32;
        mc->DeallocateTempTfLiteTensor(gt);
      }
    }
  }
  if (!f32 && d->missing_w_scale_max) {
    MicroPrintf("%s: custom option 'w_scale_max' missing (required with an int8 gradient)",
                info.name);
    return kTfLiteError;
  }
  // TMT_CONV_INPUT_GRAD may take the weights in two parts: 'w_rest' (input 5) after 'lr'; a
  // broadcast gradient's mask is input 6 (-1 without a mask; 'w_rest' -1 or the weights' rest)
  const bool bcast = d->broadcast && !f32;
  const int n_base = CountNames(info.inputs);
  const bool w_rest = K == kConvInputGrad && node->inputs->size > 5 && node->inputs->data[5] >= 0;
  const int n_in = d->bias_update ? kBiasStateInput + 1
                   : bcast          ? kGradMaskInput + 1
                                    : n_base + (w_rest ? 1 : 0);
  if ((d->broadcast || d->bias_update) && f32) {
    MicroPrintf("%s: options '%s' need an int8 gradient", info.name,
                d->broadcast ? "g_bcast_h' / 'g_bcast_w" : "b_update_channels' / 'b_seed");
    return kTfLiteError;
  }
  const int n_out = CountNames(f32 ? info.outputs_f32 : info.outputs);
  if (node->inputs->size != n_in || node->outputs->size != n_out) {
    MicroPrintf("%s: expected %d inputs and %d outputs (%s gradients), got %d and %d", info.name,
                n_in, n_out, f32 ? "float32" : "int8", node->inputs->size, node->outputs->size);
    return kTfLiteError;
  }
  PrepareTensors t(context, node, n_in, n_out);
  Checker c(K, t, f32);
  // A broadcast gradient: 'g' holds the C pooled values of a bcast_h x bcast_w x C gradient, its
  // mask (input 6, optional) ceil(H * W * C / 8) bytes.
  const TfLiteTensor* mask = bcast ? t.in(kGradMaskInput) : nullptr;
  if (bcast) {
    if (d->bcast_h < 1 || d->bcast_w < 1 ||
        static_cast<int32_t>(d->bcast_h) * d->bcast_w >= (1 << 24)) {
      MicroPrintf("%s: options 'g_bcast_h' / 'g_bcast_w' must be >= 1 with a product < 2^24",
                  info.name);
      return kTfLiteError;
    }
    const TfLiteTensor* g = t.in(0);
    if (g == nullptr || g->type != kTfLiteInt8 || LastDim(g) != Elements(g)) {
      MicroPrintf("%s: input 0 'g' must be int8 [1, C] or [1, 1, 1, C] (a broadcast gradient)",
                  info.name);
      return kTfLiteError;
    }
    const int want = (d->bcast_h * d->bcast_w * Elements(g) + 7) / 8;
    if (mask != nullptr && (mask->type != kTfLiteUInt8 || Elements(mask) != want)) {
      MicroPrintf("%s: input 6 'mask' must be uint8 with %d elements (ceil(%d x %d x %d / 8))",
                  info.name, want, d->bcast_h, d->bcast_w, Elements(g));
      return kTfLiteError;
    }
  }
  const TfLiteType gt = c.Grad();
  constexpr bool kIn = true, kOut = false;
  const int lr = IndexOf(info.inputs, "lr");
  if (!c.Scalar(kIn, lr)) return kTfLiteError;
  const int state = IndexOf(info.inputs, "state");
  if (state >= 0 &&
      !(c.Type(kIn, state, kTfLiteInt32) && c.Elems(kIn, state, 2) && c.Variable(state))) {
    return kTfLiteError;
  }
  int scratch_elems = 0;
  bool ok = true;
  switch (K) {
    case kSoftmaxCeGrad: {
      ok = c.Type(kIn, 0, kTfLiteInt8) && c.Type(kIn, 1, kTfLiteInt32) && c.Elems(kIn, 1, 1) &&
           c.Type(kIn, 3, kTfLiteFloat32) && c.Elems(kIn, 3, 256) && c.Type(kOut, 0, gt) &&
           c.Elems(kOut, 0, Elements(c.In(0))) && c.ScaleOut(1) && c.Scalar(kOut, f32 ? 1 : 2);
      break;
    }
    case kMseGrad: {
      ok = c.Type(kIn, 0, kTfLiteInt8) && c.Type(kIn, 1, kTfLiteInt8) &&
           c.Elems(kIn, 1, Elements(c.In(0))) && c.Type(kOut, 0, gt) &&
           c.Elems(kOut, 0, Elements(c.In(0))) && c.ScaleOut(1) && c.Scalar(kOut, f32 ? 1 : 2);
      if (ok && c.In(0)->quantization.type != kTfLiteAffineQuantization) {
        ok = c.Fail(kIn, 0, "must be quantized (its scale defines the loss)");
      }
      if (ok) d->y_scale = c.In(0)->params.scale;
      break;
    }
    case kActGrad: {
      ok = c.Type(kIn, 0, gt) && c.Type(kIn, 1, kTfLiteInt8) &&
           c.Elems(kIn, 1, Elements(c.In(0))) && c.Type(kOut, 0, gt) &&
           c.Elems(kOut, 0, Elements(c.In(0)));
      break;
    }
    case kMaskPack: {
      ok = c.Type(kIn, 0, kTfLiteInt8) && c.Type(kOut, 0, kTfLiteUInt8) &&
           c.Elems(kOut, 0, (Elements(c.In(0)) + 7) / 8);
      break;
    }
    case kMaskGrad: {
      ok = c.Type(kIn, 0, gt) && c.Type(kIn, 1, kTfLiteUInt8) &&
           c.Elems(kIn, 1, (Elements(c.In(0)) + 7) / 8) && c.Type(kOut, 0, gt) &&
           c.Elems(kOut, 0, Elements(c.In(0)));
      break;
    }
    case kGradAdd: {
      ok = c.Type(kIn, 0, gt) && c.ScaleIn(1) && c.Type(kIn, 2, gt) &&
           c.Elems(kIn, 2, Elements(c.In(0))) && c.ScaleIn(3) && c.Type(kOut, 0, gt) &&
           c.Elems(kOut, 0, Elements(c.In(0))) && c.ScaleOut(1);
      scratch_elems = ok ? Elements(c.In(0)) : 0;
      break;
    }
    case kMeanGrad: {
      ok = c.Type(kIn, 0, gt) && c.ScaleIn(1) && c.Type(kOut, 0, gt) &&
           c.Activation(kOut, 0, false) && c.Elems(kIn, 0, LastDim(c.Out(0))) && c.ScaleOut(1);
      break;
    }
    case kPadGrad: {
      ok = c.Type(kIn, 0, gt) && c.Activation(kIn, 0, false) && c.Type(kOut, 0, gt) &&
           c.Activation(kOut, 0, false);
      if (ok && LastDim(c.In(0)) != LastDim(c.Out(0))) ok = c.Fail(kOut, 0, "must have the channels of 'g'");
      ok = ok && c.Option(d->pad_top >= 0 && d->pad_left >= 0, "negative padding") &&
           c.Option(d->pad_top + Dim(c.Out(0), 1) <= Dim(c.In(0), 1) &&
                        d->pad_left + Dim(c.Out(0), 2) <= Dim(c.In(0), 2),
                    "padding crops past the end of 'g'");
      break;
    }
    case kReshapeGrad: {
      ok = c.Type(kIn, 0, gt) && c.Type(kOut, 0, gt) && c.Elems(kOut, 0, Elements(c.In(0)));
      break;
    }
    case kAvgPoolGrad:
    case kMaxPoolGrad: {
      ok = c.Type(kIn, 0, gt) && c.Activation(kIn, 0, false) && c.ScaleIn(1) &&
           c.Type(kOut, 0, gt) && c.Activation(kOut, 0, false) && c.ScaleOut(1);
      if (ok && LastDim(c.In(0)) != LastDim(c.Out(0))) ok = c.Fail(kOut, 0, "must have the channels of 'g'");
      if (ok && K == kMaxPoolGrad) {
        ok = c.Type(kIn, 2, kTfLiteInt8) && c.SameShape(kIn, 2, c.Out(0), "g_in") &&
             c.Type(kIn, 3, kTfLiteInt8) && c.SameShape(kIn, 3, c.In(0), "g");
      }
      ok = ok && c.Option(d->filter_h >= 1 && d->filter_w >= 1, "filter size < 1") &&
           c.Option(d->stride_h >= 1 && d->stride_w >= 1, "stride < 1") &&
           c.Option(d->pad_top >= 0 && d->pad_left >= 0, "negative padding");
      scratch_elems = ok ? Elements(c.Out(0)) : 0;
      break;
    }
    case kConvInputGrad:
    case kDwInputGrad: {
      const bool dw = K == kDwInputGrad;
      // input 3: wmul int32 [CO] (Q15 ratios) in int8 mode, wscale float32 [CO] (s_W) in fp32 mode
      ok = c.Type(kIn, 0, gt) && c.Activation(kIn, 0, !dw) && c.ScaleIn(1) &&
           c.Type(kIn, 2, kTfLiteInt8) && c.Type(kIn, 3, f32 ? kTfLiteFloat32 : kTfLiteInt32) &&
           c.Type(kOut, 0, gt) && c.Activation(kOut, 0, !dw) && c.ScaleOut(1);
      if (ok) {
        const TfLiteTensor* w = c.In(2);
        const int co = LastDim(c.In(0));
        const int ci = LastDim(c.Out(0));
        if (dw) {
          if (w->dims->size != 4 || Dim(w, 0) != 1 || Dim(w, 3) != co || co != ci) {
            ok = c.Fail(kIn, 2, "must be [1, KH, KW, C] with C the channels of 'g' and 'g_in'");
          }
        } else if (w_rest) {  // rows [0, split) in 'w', [split, CO) in the constant 'w_rest'
          const TfLiteTensor* r = t.in(5);
          bool same = r != nullptr && r->dims->size == w->dims->size;
          for (int i = 1; same && i < w->dims->size; ++i) same = Dim(r, i) == Dim(w, i);
          if (!((w->dims->size == 4 || w->dims->size == 2) && LastDim(w) == ci)) {
            ok = c.Fail(kIn, 2, "must be [CO1, KH, KW, CI] or [CO1, CI] matching 'g_in'");
          } else if (r == nullptr || r->type != kTfLiteInt8 || r->allocation_type != kTfLiteMmapRo) {
            MicroPrintf("%s: input 5 'w_rest' must be a constant int8 tensor", info.name);
            ok = false;
          } else if (!same || Dim(w, 0) + Dim(r, 0) != co) {
            MicroPrintf("%s: input 5 'w_rest' must hold the other CO - CO1 rows of input 2 'w' "
                        "(same row shape; CO = %d, the channels of 'g')", info.name, co);
            ok = false;
          }
        } else if (!((w->dims->size == 4 || w->dims->size == 2) && Dim(w, 0) == co &&
                     LastDim(w) == ci)) {
          ok = c.Fail(kIn, 2, "must be [CO, KH, KW, CI] or [CO, CI] matching 'g' and 'g_in'");
        }
        ok = ok && c.Elems(kIn, 3, co);
      }
      ok = ok && c.Option(d->stride_h >= 1 && d->stride_w >= 1, "stride < 1") &&
           c.Option(d->pad_top >= 0 && d->pad_left >= 0, "negative padding");
      if (ok && d->bias_update) ok = CheckFoldedBiasUpdate(info, t, LastDim(c.In(0)), d);
      scratch_elems = ok ? Elements(c.Out(0)) : 0;
      break;
    }
    case kConvWeightUpdate:
    case kDwWeightUpdate: {
      const bool dw = K == kDwWeightUpdate;
      ok = c.Type(kIn, 0, gt) && c.Activation(kIn, 0, !dw) && c.ScaleIn(1) &&
           c.Type(kIn, 2, kTfLiteInt8) && c.Activation(kIn, 2, !dw) &&
           c.Type(kIn, 3, kTfLiteInt8) && c.Variable(3) && c.Type(kIn, 4, kTfLiteFloat32);
      int co = 0;
      if (ok) {
        const TfLiteTensor* w = c.In(3);
        co = LastDim(c.In(0));
        const int ci = LastDim(c.In(2));
        if (dw) {
          if (w->dims->size != 4 || Dim(w, 0) != 1 || Dim(w, 3) != co || co != ci) {
            ok = c.Fail(kIn, 3, "must be [1, KH, KW, C] with C the channels of 'g' and 'x'");
          }
        } else if (!((w->dims->size == 4 || w->dims->size == 2) && Dim(w, 0) >= 1 &&
                     Dim(w, 0) <= co && LastDim(w) == ci)) {
          // R == CO, or R < CO: only the leading (trained) output channels are a variable
          // tensor (rows are contiguous, so the core updates them the same way).
          ok = c.Fail(kIn, 3, "must be [R, KH, KW, CI] or [R, CI] with R <= the channels of 'g' "
                              "and CI those of 'x'");
        }
        ok = ok && c.Elems(kIn, 4, co);
      }
      const int rows = ok ? Dim(c.In(3), 0) : 0;  // output channels present in 'w'
      ok = ok && c.Option(d->stride_h >= 1 && d->stride_w >= 1, "stride < 1") &&
           c.Option(d->pad_top >= 0 && d->pad_left >= 0, "negative padding") &&
           c.Option(d->update_channels >= 0 && d->update_channels <= co,
                    "update_channels outside [0, output channels]") &&
           c.Option(dw || d->update_channels <= rows,
                    "update_channels larger than the output channels of 'w'");
      break;
    }
    case kBiasUpdate: {
      // an int16 'b' is a narrow bias (TMT_CONV's trained change of the bias; int8 mode only)
      const bool narrow = !f32 && c.In(2) != nullptr && c.In(2)->type == kTfLiteInt16;
      ok = c.Type(kIn, 0, gt) && c.ScaleIn(1) &&
           c.Type(kIn, 2, narrow ? kTfLiteInt16 : kTfLiteInt32) && c.Variable(2) &&
           c.Type(kIn, 3, kTfLiteFloat32);
      if (ok) {
        const int ch = Elements(c.In(2));
        ok = c.Elems(kIn, 3, ch);
        if (ok && (c.In(0)->dims->size < 1 || LastDim(c.In(0)) != ch)) {
          ok = c.Fail(kIn, 0, "must end in the bias's channel count");
        }
        ok = ok && c.Option(d->update_channels >= 0 && d->update_channels <= ch,
                            "update_channels outside [0, channels]");
      }
      break;
    }
    default:
      break;
  }
  if (!ok) return kTfLiteError;
  if (info.options & kOptUseScratch) d->scratch_index = -1;
  // (fp32 mode sums straight into its float32 output: no scratch)
  if ((info.options & kOptUseScratch) && d->use_scratch && !f32 && scratch_elems > 0) {
    int index = -1;
    if (context->RequestScratchBufferInArena(
            context, static_cast<size_t>(scratch_elems) * sizeof(int64_t), &index) != kTfLiteOk ||
        index < 0 || index > INT16_MAX) {
      MicroPrintf("%s: could not request %d bytes of scratch", info.name,
                  scratch_elems * static_cast<int>(sizeof(int64_t)));
      return kTfLiteError;
    }
    d->scratch_index = static_cast<int16_t>(index);
  }
  return kTfLiteOk;
}

// ------------------------------------------------------------------ Eval

core::Hwc HwcOf(const TfLiteEvalTensor* t) {
  core::Hwc r;
  const TfLiteIntArray* d = t->dims;
  if (d->size == 4) {
    r.h = d->data[1];
    r.w = d->data[2];
    r.c = d->data[3];
  } else if (d->size >= 1) {
    r.c = d->data[d->size - 1];
  } else {
    r.c = 1;
  }
  return r;
}

core::ConvGeom GeomOf(const OpData* d) {
  core::ConvGeom g;
  g.stride_h = d->stride_h;
  g.stride_w = d->stride_w;
  g.pad_top = d->pad_top;
  g.pad_left = d->pad_left;
  return g;
}

core::UpdateParams UpdateOf(const OpData* d) {
  core::UpdateParams p;
  p.update_channels = d->update_channels;
  p.seed = d->seed;
  p.x_zero_point = d->x_zero_point;
  return p;
}

// Kernel size of conv weights [CO, KH, KW, CI] / [1, KH, KW, C] or [CO, CI] (1x1).
void KernelOf(const TfLiteEvalTensor* w, int32_t* kh, int32_t* kw) {
  *kh = w->dims->size == 4 ? w->dims->data[1] : 1;
  *kw = w->dims->size == 4 ? w->dims->data[2] : 1;
}

// TMT_CONV_INPUT_GRAD's weights in two parts ('w_rest', input 5, holds rows [CO1, CO); 'w' the
// first CO1, as Prepare checked).
template <typename In>
core::SplitWeights SplitOf(const TfLiteNode* node, In in) {
  core::SplitWeights sw;
  if (node->inputs->size > 5 && node->inputs->data[5] >= 0) {
    sw.rest = tflite::micro::GetTensorData<int8_t>(in(5));
    sw.split = in(2)->dims->data[0];
  }
  return sw;
}

// A folded TMT_MEAN_GRAD's gradient (options g_bcast_h / g_bcast_w): the dims and scale it
// stands for, and its mask (input 6, if present). Off (dims and scale unchanged) otherwise.
core::GradBroadcast BroadcastOf(TfLiteContext* context, const TfLiteNode* node, const OpData* d,
                                core::Hwc* g_dims, float* g_scale) {
  core::GradBroadcast bc;
  if (!d->broadcast) return bc;
  bc.on = true;
  if (node->inputs->size > kGradMaskInput && node->inputs->data[kGradMaskInput] >= 0) {
    bc.mask = tflite::micro::GetTensorData<uint8_t>(
        tflite::micro::GetEvalInput(context, node, kGradMaskInput));
  }
  g_dims->h = d->bcast_h;
  g_dims->w = d->bcast_w;
  *g_scale = core::BroadcastScale(*g_scale, d->bcast_h, d->bcast_w);
  return bc;
}

// The int8 bias step of TMT_BIAS_UPDATE and of a folded one: 'b' (int32, or a narrow int16)
// updated from g, which stands for g_elements values (a broadcast gradient's H * W * C, else its
// own), at scale g_scale.
core::Status BiasStep(const int8_t* g, int32_t g_elements, float g_scale,
                      const core::GradBroadcast& bc, TfLiteEvalTensor* b, const float* bfactor,
                      float lr, const core::UpdateParams& p, uint32_t counter) {
  const int32_t ch = tflite::ElementCount(*b->dims);
  const int32_t positions = ch ? g_elements / ch : 0;
  return b->type == kTfLiteInt16
             ? core::BiasUpdate(g, g_scale, positions, ch, tflite::micro::GetTensorData<int16_t>(b),
                                bfactor, lr, p, counter, bc)
             : core::BiasUpdate(g, g_scale, positions, ch, tflite::micro::GetTensorData<int32_t>(b),
                                bfactor, lr, p, counter, bc);
}

// An input gradient op's folded TMT_BIAS_UPDATE (inputs 7-9, checked in Prepare): the update
// of 'b' from the same gradient (dims and scale as the op read it), its seed (option b_seed)
// read from the model, the step counter from its 'state'.
core::Status FoldedBiasUpdate(TfLiteContext* context, const TfLiteNode* node, const OpData* d,
                              const int8_t* g, float g_scale, core::Hwc g_dims,
                              const core::GradBroadcast& bc, float lr) {
  const uint32_t counter = static_cast<uint32_t>(tflite::micro::GetTensorData<int32_t>(
      tflite::micro::GetEvalInput(context, node, kBiasStateInput))[1]);
  OptionReader r(static_cast<const char*>(node->custom_initial_data),
                 static_cast<size_t>(node->custom_initial_data_size));
  int64_t seed = 0;
  if (!r.Int64("b_seed", &seed)) return core::Status::kBadParams;  // (checked in Init/Prepare)
  core::UpdateParams p;
  p.update_channels = d->update_channels;
  p.seed = static_cast<uint32_t>(seed);
  return BiasStep(g, g_dims.size(), g_scale, bc,
                  tflite::micro::GetMutableEvalInput(context, node, kBiasInput),
                  tflite::micro::GetTensorData<float>(
                      tflite::micro::GetEvalInput(context, node, kBfactorInput)),
                  lr, p, counter);
}

TfLiteStatus Report(int kind, core::Status s) {
  if (s == core::Status::kOk) return kTfLiteOk;
  MicroPrintf("%s: %s", kOps[kind].name, core::StatusString(s));
  return kTfLiteError;
}

// The fp32-backward variant of op K (float32 gradients; the scale inputs are absent).
template <int K>
core::Status EvalF32(TfLiteContext* context, TfLiteNode* node, const OpData* d, float lr,
                     uint32_t counter) {
  auto in = [&](int i) { return tflite::micro::GetEvalInput(context, node, i); };
  auto out = [&](int i) { return tflite::micro::GetEvalOutput(context, node, i); };
  auto i8 = [](const TfLiteEvalTensor* t) { return tflite::micro::GetTensorData<int8_t>(t); };
  auto cf = [](const TfLiteEvalTensor* t) { return tflite::micro::GetTensorData<float>(t); };
  auto mf = [](TfLiteEvalTensor* t) { return tflite::micro::GetTensorData<float>(t); };
  switch (K) {
    case kSoftmaxCeGrad:
      return core::SoftmaxCeGradF32(i8(in(0)), Elements(in(0)),
                                    tflite::micro::GetTensorData<int32_t>(in(1))[0], cf(in(3)),
                                    mf(out(0)), mf(out(1)));
    case kMseGrad:
      return core::MseGradF32(i8(in(0)), i8(in(1)), Elements(in(0)), d->y_scale, mf(out(0)),
                              mf(out(1)));
    case kActGrad:
      return core::ActGradF32(cf(in(0)), i8(in(1)), Elements(in(0)), d->act_min, d->act_max,
                              mf(out(0)));
    case kMaskGrad:
      return core::MaskGradF32(cf(in(0)), tflite::micro::GetTensorData<uint8_t>(in(1)),
                               Elements(in(0)), mf(out(0)));
    case kGradAdd:
      return core::GradAddF32(cf(in(0)), cf(in(2)), Elements(in(0)), mf(out(0)));
    case kMeanGrad:
      return core::MeanGradF32(cf(in(0)), HwcOf(out(0)), d->inv_count, mf(out(0)));
    case kPadGrad:
      return core::PadGradF32(cf(in(0)), HwcOf(in(0)), HwcOf(out(0)), d->pad_top, d->pad_left,
                              mf(out(0)));
    case kReshapeGrad:
      return core::ReshapeGradF32(cf(in(0)), Elements(in(0)), mf(out(0)));
    case kAvgPoolGrad:
    case kMaxPoolGrad: {
      core::PoolParams p;
      p.filter_h = d->filter_h;
      p.filter_w = d->filter_w;
      p.geom = GeomOf(d);
      if (K == kAvgPoolGrad) {
        return core::AvgPoolGradF32(cf(in(0)), HwcOf(in(0)), HwcOf(out(0)), p, mf(out(0)));
      }
      return core::MaxPoolGradF32(cf(in(0)), i8(in(2)), i8(in(3)), HwcOf(in(0)), HwcOf(out(0)),
                                  p, mf(out(0)));
    }
    case kConvInputGrad:
    case kDwInputGrad: {
      int32_t kh, kw;
      KernelOf(in(2), &kh, &kw);
      if (K == kConvInputGrad) {
        return core::ConvInputGradF32(cf(in(0)), HwcOf(in(0)), i8(in(2)), kh, kw, cf(in(3)),
                                      HwcOf(out(0)), GeomOf(d), mf(out(0)), SplitOf(node, in));
      }
      return core::DepthwiseInputGradF32(cf(in(0)), HwcOf(in(0)), i8(in(2)), kh, kw, cf(in(3)),
                                         HwcOf(out(0)), GeomOf(d), mf(out(0)));
    }
    case kConvWeightUpdate:
    case kDwWeightUpdate: {
      TfLiteEvalTensor* w = tflite::micro::GetMutableEvalInput(context, node, 3);
      int32_t kh, kw;
      KernelOf(w, &kh, &kw);
      const auto fn =
          K == kConvWeightUpdate ? core::ConvWeightUpdateF32 : core::DepthwiseWeightUpdateF32;
      return fn(cf(in(0)), HwcOf(in(0)), i8(in(2)), HwcOf(in(2)),
                tflite::micro::GetTensorData<int8_t>(w), kh, kw, cf(in(4)), lr, GeomOf(d),
                UpdateOf(d), counter);
    }
    case kBiasUpdate: {
      TfLiteEvalTensor* b = tflite::micro::GetMutableEvalInput(context, node, 2);
      const int32_t ch = Elements(b);
      const int32_t positions = ch ? Elements(in(0)) / ch : 0;
      return core::BiasUpdateF32(cf(in(0)), positions, ch, tflite::micro::GetTensorData<int32_t>(b),
                                 cf(in(3)), lr, UpdateOf(d), counter);
    }
    default:
      return core::Status::kBadParams;  // TMT_MASK_PACK has no fp32 variant (never selected)
  }
}

template <int K>
TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node) {
  const OpInfo& info = kOps[K];
  OpData local;
  const OpData* d = OpDataOf<K>(node, &local);
  const bool mode_f32 = ModeF32(info, context, node);
  auto in = [&](int i) { return tflite::micro::GetEvalInput(context, node, i); };
  auto out = [&](int i) { return tflite::micro::GetEvalOutput(context, node, i); };
  auto i8 = [](const TfLiteEvalTensor* t) { return tflite::micro::GetTensorData<int8_t>(t); };
  auto f32 = [](const TfLiteEvalTensor* t) { return tflite::micro::GetTensorData<float>(t)[0]; };
  auto mut_i8 = [](TfLiteEvalTensor* t) { return tflite::micro::GetTensorData<int8_t>(t); };

  const float lr = f32(in(IndexOf(info.inputs, "lr")));
  const int state_index = IndexOf(info.inputs, "state");
  // The training-step counter: advanced by the loss op, read by the update ops.
  uint32_t* step = state_index >= 0 ? reinterpret_cast<uint32_t*>(
                                          tflite::micro::GetTensorData<int32_t>(
                                              tflite::micro::GetMutableEvalInput(context, node,
                                                                                 state_index))) +
                                          1
                                    : nullptr;
  const bool is_loss = K == kSoftmaxCeGrad || K == kMseGrad;
  if (lr == 0.0f) {  // inference call: loss 0 (and gradient scale 0 in int8 mode)
    if (is_loss) {
      tflite::micro::GetTensorData<float>(out(1))[0] = 0.0f;
      if (!mode_f32) tflite::micro::GetTensorData<float>(out(2))[0] = 0.0f;
    }
    return kTfLiteOk;
  }
  if (is_loss && !(lr > 0.0f)) {
    MicroPrintf("%s: input 'lr' must be >= 0 (got a negative value or NaN)", info.name);
    return kTfLiteError;
  }
  if (K == kSoftmaxCeGrad) {
    const int32_t n = Elements(in(0));
    const int32_t label = tflite::micro::GetTensorData<int32_t>(in(1))[0];
    if (label < 0 || label >= n) {
      MicroPrintf("%s: input 1 'label' = %d is outside [0, %d)", info.name, static_cast<int>(label),
                  static_cast<int>(n));
      return kTfLiteError;
    }
  }
  if (mode_f32) {
    const core::Status s = EvalF32<K>(context, node, d, lr, step ? *step : 0u);
    if (s != core::Status::kOk) return Report(K, s);
    if (is_loss) ++*step;
    return kTfLiteOk;
  }
  int64_t* scratch = d->scratch_index >= 0
                         ? static_cast<int64_t*>(context->GetScratchBuffer(context, d->scratch_index))
                         : nullptr;
  core::Status s = core::Status::kOk;
  switch (K) {
    case kSoftmaxCeGrad: {
      const int32_t n = Elements(in(0));
      const int32_t label = tflite::micro::GetTensorData<int32_t>(in(1))[0];
      s = core::SoftmaxCeGrad(i8(in(0)), n, label, tflite::micro::GetTensorData<float>(in(3)),
                              mut_i8(out(0)), tflite::micro::GetTensorData<float>(out(1)),
                              tflite::micro::GetTensorData<float>(out(2)));
      break;
    }
    case kMseGrad:
      s = core::MseGrad(i8(in(0)), i8(in(1)), Elements(in(0)), d->y_scale, mut_i8(out(0)),
                        tflite::micro::GetTensorData<float>(out(1)),
                        tflite::micro::GetTensorData<float>(out(2)));
      break;
    case kActGrad:
      s = core::ActGrad(i8(in(0)), i8(in(1)), Elements(in(0)), d->act_min, d->act_max,
                        mut_i8(out(0)));
      break;
    case kMaskPack:
      s = core::MaskPack(i8(in(0)), Elements(in(0)), d->act_min, d->act_max,
                         tflite::micro::GetTensorData<uint8_t>(out(0)));
      break;
    case kMaskGrad:
      s = core::MaskGrad(i8(in(0)), tflite::micro::GetTensorData<uint8_t>(in(1)), Elements(in(0)),
                         mut_i8(out(0)));
      break;
    case kGradAdd:
      s = core::GradAdd(i8(in(0)), f32(in(1)), i8(in(2)), f32(in(3)), Elements(in(0)),
                        mut_i8(out(0)), tflite::micro::GetTensorData<float>(out(1)), scratch);
      break;
    case kMeanGrad:
      s = core::MeanGrad(i8(in(0)), f32(in(1)), HwcOf(out(0)), d->inv_count, mut_i8(out(0)),
                         tflite::micro::GetTensorData<float>(out(1)));
      break;
    case kPadGrad:
      s = core::PadGrad(i8(in(0)), HwcOf(in(0)), HwcOf(out(0)), d->pad_top, d->pad_left,
                        mut_i8(out(0)));
      break;
    case kReshapeGrad:
      s = core::ReshapeGrad(i8(in(0)), Elements(in(0)), mut_i8(out(0)));
      break;
    case kAvgPoolGrad:
    case kMaxPoolGrad: {
      core::PoolParams p;
      p.filter_h = d->filter_h;
      p.filter_w = d->filter_w;
      p.geom = GeomOf(d);
      if (K == kAvgPoolGrad) {
        s = core::AvgPoolGrad(i8(in(0)), f32(in(1)), HwcOf(in(0)), HwcOf(out(0)), p,
                              mut_i8(out(0)), tflite::micro::GetTensorData<float>(out(1)), scratch);
      } else {
        s = core::MaxPoolGrad(i8(in(0)), f32(in(1)), i8(in(2)), i8(in(3)), HwcOf(in(0)),
                              HwcOf(out(0)), p, mut_i8(out(0)),
                              tflite::micro::GetTensorData<float>(out(1)), scratch);
      }
      break;
    }
    case kConvInputGrad:
    case kDwInputGrad: {
      int32_t kh, kw;
      KernelOf(in(2), &kh, &kw);
      core::Hwc g_dims = HwcOf(in(0));
      float g_scale = f32(in(1));
      const core::GradBroadcast bc = BroadcastOf(context, node, d, &g_dims, &g_scale);
      if (K == kConvInputGrad) {
        s = core::ConvInputGrad(i8(in(0)), g_scale, g_dims, i8(in(2)), kh, kw,
                                tflite::micro::GetTensorData<int32_t>(in(3)), d->w_scale_max,
                                HwcOf(out(0)), GeomOf(d), mut_i8(out(0)),
                                tflite::micro::GetTensorData<float>(out(1)), scratch,
                                SplitOf(node, in), bc);
      } else {
        s = core::DepthwiseInputGrad(i8(in(0)), g_scale, g_dims, i8(in(2)), kh, kw,
                                     tflite::micro::GetTensorData<int32_t>(in(3)),
                                     d->w_scale_max, HwcOf(out(0)), GeomOf(d), mut_i8(out(0)),
                                     tflite::micro::GetTensorData<float>(out(1)), scratch);
      }
      if (s == core::Status::kOk && d->bias_update) {  // the folded TMT_BIAS_UPDATE, after it
        s = FoldedBiasUpdate(context, node, d, i8(in(0)), g_scale, g_dims, bc, lr);
      }
      break;
    }
    case kConvWeightUpdate:
    case kDwWeightUpdate: {
      TfLiteEvalTensor* w = tflite::micro::GetMutableEvalInput(context, node, 3);
      int32_t kh, kw;
      KernelOf(w, &kh, &kw);
      const auto fn = K == kConvWeightUpdate ? core::ConvWeightUpdate : core::DepthwiseWeightUpdate;
      s = fn(i8(in(0)), f32(in(1)), HwcOf(in(0)), i8(in(2)), HwcOf(in(2)), mut_i8(w), kh, kw,
             tflite::micro::GetTensorData<float>(in(4)), lr, GeomOf(d), UpdateOf(d), *step);
      break;
    }
    case kBiasUpdate: {
      core::Hwc g_dims = HwcOf(in(0));
      float g_scale = f32(in(1));
      const core::GradBroadcast bc = BroadcastOf(context, node, d, &g_dims, &g_scale);
      s = BiasStep(i8(in(0)), bc.on ? g_dims.size() : Elements(in(0)), g_scale, bc,
                   tflite::micro::GetMutableEvalInput(context, node, 2),
                   tflite::micro::GetTensorData<float>(in(3)), lr, UpdateOf(d), *step);
      break;
    }
    default:
      break;
  }
  if (s != core::Status::kOk) return Report(K, s);
  if (is_loss) ++*step;  // after validation: a failed step leaves the counter as it was
  return kTfLiteOk;
}

template <int K>
TFLMRegistration Registration() {
  return tflite::micro::RegisterOp(Init<K>, Prepare<K>, Eval<K>);
}

// ------------------------------------------------------------------ TMT_INIT

// inputs: state int32[2] (variable), then (initial value, variable) pairs; no outputs.
// Eval: if state[0] != kStateMagic, copy every initial value into its variable and set
// state = {kStateMagic, 0}. ResetVariableTensors() zeroes the state, so the next Invoke
// restores the shipped parameters.
constexpr int32_t kStateMagic = 0x544D5431;  // "TMT1"

TfLiteStatus InitPrepare(TfLiteContext* context, TfLiteNode* node) {
  if (node->inputs->size < 1 || (node->inputs->size - 1) % 2 != 0 || node->outputs->size != 0) {
    MicroPrintf("TMT_INIT: expected a state tensor and (initial value, variable) pairs, "
                "no outputs; got %d inputs and %d outputs",
                node->inputs->size, node->outputs->size);
    return kTfLiteError;
  }
  tflite::MicroContext* mc = tflite::GetMicroContext(context);
  TfLiteTensor* st = mc->AllocateTempInputTensor(node, 0);
  const bool state_ok =
      st != nullptr && st->type == kTfLiteInt32 && st->bytes == 8 && st->is_variable;
  // AllocateTensors() does not clear variable tensors: whatever the arena held could look like
  // an initialised state. Clear the marker so the first Invoke fills the variables from flash.
  if (state_ok && st->data.data != nullptr) static_cast<int32_t*>(st->data.data)[0] = 0;
  if (st) mc->DeallocateTempTfLiteTensor(st);
  if (!state_ok) {
    MicroPrintf("TMT_INIT: input 0 'state' must be an int32 variable tensor with 2 elements");
    return kTfLiteError;
  }
  for (int i = 1; i < node->inputs->size; i += 2) {
    TfLiteTensor* init = mc->AllocateTempInputTensor(node, i);
    TfLiteTensor* var = mc->AllocateTempInputTensor(node, i + 1);
    const char* problem = nullptr;
    if (init == nullptr || var == nullptr) {
      problem = "is missing";
    } else if (init->data.data == nullptr) {
      problem = "has an initial value that is not constant";
    } else if (!var->is_variable) {
      problem = "is not a variable tensor (is_variable)";
    } else if (init->type != var->type) {
      problem = "has a type other than its initial value's";
    } else if (init->bytes != var->bytes) {
      problem = "has a size other than its initial value's";
    }
    const int init_bytes = init ? static_cast<int>(init->bytes) : -1;
    const int var_bytes = var ? static_cast<int>(var->bytes) : -1;
    if (init) mc->DeallocateTempTfLiteTensor(init);
    if (var) mc->DeallocateTempTfLiteTensor(var);
    if (problem != nullptr) {
      MicroPrintf("TMT_INIT: variable input %d %s (initial value: input %d, %d bytes; "
                  "variable: %d bytes)",
                  i + 1, problem, i, init_bytes, var_bytes);
      return kTfLiteError;
    }
  }
  return kTfLiteOk;
}

TfLiteStatus InitEval(TfLiteContext* context, TfLiteNode* node) {
  int32_t* state = tflite::micro::GetTensorData<int32_t>(
      tflite::micro::GetMutableEvalInput(context, node, 0));
  if (state[0] == kStateMagic) return kTfLiteOk;
  for (int i = 1; i < node->inputs->size; i += 2) {
    const TfLiteEvalTensor* init = tflite::micro::GetEvalInput(context, node, i);
    TfLiteEvalTensor* var = tflite::micro::GetMutableEvalInput(context, node, i + 1);
    size_t bytes = 0;
    TF_LITE_ENSURE_STATUS(tflite::TfLiteEvalTensorByteLength(init, &bytes));
    std::memcpy(var->data.data, init->data.data, bytes);
  }
  state[0] = kStateMagic;
  state[1] = 0;
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_TMT_INIT() {
  return tflite::micro::RegisterOp(nullptr, InitPrepare, InitEval);
}

TFLMRegistration Register_TMT_SOFTMAX_CE_GRAD() { return Registration<kSoftmaxCeGrad>(); }
TFLMRegistration Register_TMT_MSE_GRAD() { return Registration<kMseGrad>(); }
TFLMRegistration Register_TMT_ACT_GRAD() { return Registration<kActGrad>(); }
TFLMRegistration Register_TMT_MASK_PACK() { return Registration<kMaskPack>(); }
TFLMRegistration Register_TMT_MASK_GRAD() { return Registration<kMaskGrad>(); }
TFLMRegistration Register_TMT_GRAD_ADD() { return Registration<kGradAdd>(); }
TFLMRegistration Register_TMT_MEAN_GRAD() { return Registration<kMeanGrad>(); }
TFLMRegistration Register_TMT_PAD_GRAD() { return Registration<kPadGrad>(); }
TFLMRegistration Register_TMT_RESHAPE_GRAD() { return Registration<kReshapeGrad>(); }
TFLMRegistration Register_TMT_AVGPOOL_GRAD() { return Registration<kAvgPoolGrad>(); }
TFLMRegistration Register_TMT_MAXPOOL_GRAD() { return Registration<kMaxPoolGrad>(); }
TFLMRegistration Register_TMT_CONV_INPUT_GRAD() { return Registration<kConvInputGrad>(); }
TFLMRegistration Register_TMT_DW_INPUT_GRAD() { return Registration<kDwInputGrad>(); }
TFLMRegistration Register_TMT_CONV_WEIGHT_UPDATE() { return Registration<kConvWeightUpdate>(); }
TFLMRegistration Register_TMT_DW_WEIGHT_UPDATE() { return Registration<kDwWeightUpdate>(); }
TFLMRegistration Register_TMT_BIAS_UPDATE() { return Registration<kBiasUpdate>(); }

TfLiteStatus CheckModel(const tflite::Model* model) {
  if (model == nullptr || model->subgraphs() == nullptr || model->subgraphs()->size() == 0) {
    MicroPrintf("tfmicro_train::CheckModel: no model or no subgraph");
    return kTfLiteError;
  }
  const auto* codes = model->operator_codes();
  TfLiteStatus status = kTfLiteOk;
  for (unsigned int i = 0; codes != nullptr && i < codes->size(); ++i) {
    const tflite::OperatorCode* code = codes->Get(i);
    const flatbuffers::String* name = code->custom_code();
    if (name == nullptr || std::strncmp(name->c_str(), "TMT_", 4) != 0) continue;
    bool known = false;
    for (unsigned int k = 0; k < kNumTrainingOps; ++k) {
      known = known || std::strcmp(TrainingOps()[k].name, name->c_str()) == 0;
    }
    if (!known) {
      MicroPrintf("tfmicro_train::CheckModel: operator code %d: %s is not a training op this "
                  "build knows (re-convert with a matching tfmicro_train)",
                  static_cast<int>(i), name->c_str());
      status = kTfLiteError;
    } else if (code->version() != kTrainingOpVersion) {
      MicroPrintf("tfmicro_train::CheckModel: operator code %d: %s version %d is not supported "
                  "(this build implements version %d)",
                  static_cast<int>(i), name->c_str(), static_cast<int>(code->version()),
                  kTrainingOpVersion);
      status = kTfLiteError;
    }
  }
  return status;
}

// ------------------------------------------------------------------ TMT_FUSED_IRB

namespace {

// A frozen inverted-residual block, row-streamed (tflm_ops/core/fused_irb.h). Keeps no
// per-channel data and no precomputed parameters between invocations (48 bytes of op data on a
// 32-bit MCU): Prepare checks everything and sizes the scratch output; Eval reads the options
// again (from the model), takes the shapes from the tensors and the quantization kept here,
// recomputes the parameters and the multipliers into the tail of the scratch tensor
// (PrepareFusedIrb), then streams the block.
struct FusedOpData {
  core::TensorQuant x_q, y_q;
  core::WeightScales w_expand, w_dw, w_project;  // pointing into the model
  const char* options = nullptr;  // the custom options (in the model)
  uint16_t options_length = 0;
};

constexpr int kFusedInputs = 7;
constexpr int kFeaturesGiven = 7;  // optional 8th input (convert(feature_cache=True))

// Input 7 'features_given' (int32 [1]) of a frozen-prefix op: 0 computes, 1 skips the op (the
// application wrote the prefix's output, its cached features); *skip is false without the input.
// Prints why and returns false for any other value (before the op writes anything).
bool FeaturesGiven(TfLiteContext* context, TfLiteNode* node, bool* skip) {
  *skip = false;
  if (node->inputs->size <= kFeaturesGiven || node->inputs->data[kFeaturesGiven] < 0) return true;
  const int32_t v = *tflite::micro::GetTensorData<int32_t>(
      tflite::micro::GetEvalInput(context, node, kFeaturesGiven));
  if (v != 0 && v != 1) {
    MicroPrintf("TMT_FUSED_IRB: input 7 'features_given' is %ld; it must be 0 (compute the frozen "
                "prefix) or 1 (its output, the cached features, was given)", static_cast<long>(v));
    return false;
  }
  *skip = v == 1;
  return true;
}

void* FusedInit(TfLiteContext* context, const char* buffer, size_t length) {
  void* mem = context->AllocatePersistentBuffer(context, sizeof(FusedOpData));
  if (mem == nullptr) return nullptr;
  FusedOpData* d = new (mem) FusedOpData();
  if (length <= UINT16_MAX) {  // (longer options are reported as unreadable in Prepare)
    d->options = buffer;
    d->options_length = static_cast<uint16_t>(length);
  }
  return d;
}

// The options into `spec` (Prepare); prints why and returns false when one is missing or out of
// range. *x_external: the op reads a streamed input (options x_external, x_h, x_w, x_c, x_scale,
// x_zp, which then set spec->x and spec->x_q) instead of input 0.
bool ReadFusedOptions(const FusedOpData* d, core::FusedIrbSpec* spec, bool* x_external) {
  OptionReader r(d->options, d->options_length);
  if (r.unreadable()) {
    MicroPrintf("TMT_FUSED_IRB: custom option '%s' missing", r.unreadable());
    return false;
  }
  auto get_int = [&](const char* key, int32_t* out) { r.Int(key, out); };
  auto get_quant = [&](const char* scale, const char* zp, core::TensorQuant* q) {
    if (r.Float(scale, &q->scale)) r.Int(zp, &q->zero_point);
  };
  // the geometry and activation of the expansion ("e_...") and the depthwise ("d_...") stage
  auto get_conv = [&](const char* const (&keys)[6], core::ConvSpec* c) {
    int32_t* fields[6] = {&c->stride_h, &c->stride_w, &c->dil_h, &c->dil_w, &c->padding, &c->act};
    for (int i = 0; i < 6; ++i) get_int(keys[i], fields[i]);
  };
  static const char* const kExpand[6] = {"e_stride_h", "e_stride_w", "e_dil_h", "e_dil_w",
                                         "e_padding", "e_act"};
  static const char* const kDepthwise[6] = {"d_stride_h", "d_stride_w", "d_dil_h", "d_dil_w",
                                            "d_padding", "d_act"};
  core::FusedIrbSpec& s = *spec;
  int32_t external = 0;
  r.Int("x_external", &external, /*required=*/false);
  *x_external = external != 0;
  if (*x_external) {
    get_int("x_h", &s.x.h);
    get_int("x_w", &s.x.w);
    get_int("x_c", &s.x.c);
    get_quant("x_scale", "x_zp", &s.x_q);
  }
  if (r.Has("e_scale")) {
    get_conv(kExpand, &s.expand);
    get_quant("e_scale", "e_zp", &s.e_q);
  }
  get_int("pad_top", &s.pad_top);
  get_int("pad_bottom", &s.pad_bottom);
  get_int("pad_left", &s.pad_left);
  get_int("pad_right", &s.pad_right);
  get_int("pad_value", &s.pad_value);
  get_quant("d_in_scale", "d_in_zp", &s.d_in_q);
  get_conv(kDepthwise, &s.dw);
  get_quant("d_scale", "d_zp", &s.d_q);
  get_int("p_act", &s.project_act);
  get_quant("p_scale", "p_zp", &s.p_q);
  get_int("residual", &s.residual);
  get_int("add_act", &s.add_act);
  if (r.bad()) {
    MicroPrintf("TMT_FUSED_IRB: custom option '%s' %s", r.bad(),
                r.out_of_range() ? "out of range" : "missing");
    return false;
  }
  if (*x_external && (s.x.h < 1 || s.x.w < 1 || s.x.c < 1 ||
                      static_cast<int64_t>(s.x.h) * s.x.w * s.x.c > INT32_MAX)) {
    MicroPrintf("TMT_FUSED_IRB: custom options x_h, x_w, x_c (%d, %d, %d) out of range",
                static_cast<int>(s.x.h), static_cast<int>(s.x.w), static_cast<int>(s.x.c));
    return false;
  }
  return true;
}

// The application's StreamedInput (training_ops.h) for an op with x_external, from TFLM's
// external context; prints what to call and returns nullptr when there is none.
const StreamedInput* StreamedInputOf(TfLiteContext* context) {
  const auto* in =
      static_cast<const StreamedInput*>(tflite::GetMicroContext(context)->external_context());
  if (in == nullptr || in->magic != kStreamedInputMagic) {
    MicroPrintf("TMT_FUSED_IRB: the model streams its input image (x_external) but %s; call "
                "tfmicro_train::SetStreamedInput(interpreter, &input) with a "
                "tfmicro_train::StreamedInput before AllocateTensors()",
                in == nullptr ? "no external context is set"
                              : "the external context is no tfmicro_train::StreamedInput");
    return nullptr;
  }
  return in;
}

// Scales of a (per-channel or per-tensor) quantized weight tensor, pointing into the model.
bool WeightScalesOf(const TfLiteTensor* t, core::WeightScales* out) {
  if (t->quantization.type != kTfLiteAffineQuantization || t->quantization.params == nullptr) {
    return false;
  }
  const auto* q = static_cast<const TfLiteAffineQuantization*>(t->quantization.params);
  if (q->scale == nullptr || q->scale->size < 1) return false;
  out->scales = q->scale->data;
  out->n = q->scale->size;
  return true;
}

core::Hwc Hwc4(const TfLiteIntArray* dims) {
  core::Hwc r;
  r.h = dims->data[1];
  r.w = dims->data[2];
  r.c = dims->data[3];
  return r;
}

// The spec's shapes from the tensors' (w_expand null without expansion; x null for a streamed
// input, whose shape and quantization ReadFusedOptions set) and the quantization kept in `d`.
void FillSpec(const FusedOpData* d, const TfLiteIntArray* x, const TfLiteIntArray* y,
              const TfLiteIntArray* w_expand, const TfLiteIntArray* w_dw,
              const TfLiteIntArray* w_project, core::FusedIrbSpec* s) {
  if (x != nullptr) {
    s->x = Hwc4(x);
    s->x_q = d->x_q;
  }
  s->y = Hwc4(y);
  s->y_q = d->y_q;
  s->c_exp = w_dw->data[3];
  s->c_out = w_project->data[0];
  s->has_expand = w_expand != nullptr;
  if (s->has_expand) {
    s->expand.kh = w_expand->data[1];
    s->expand.kw = w_expand->data[2];
  }
  s->dw.kh = w_dw->data[1];
  s->dw.kw = w_dw->data[2];
  s->w_expand_scales = d->w_expand;
  s->w_dw_scales = d->w_dw;
  s->w_project_scales = d->w_project;
}

TfLiteStatus FusedPrepare(TfLiteContext* context, TfLiteNode* node) {
  FusedOpData* d = static_cast<FusedOpData*>(node->user_data);
  if (d == nullptr) {
    MicroPrintf("TMT_FUSED_IRB: could not allocate op data");
    return kTfLiteError;
  }
  core::FusedIrbSpec s;
  bool x_external = false;
  if (!ReadFusedOptions(d, &s, &x_external)) return kTfLiteError;
  if ((node->inputs->size != kFusedInputs && node->inputs->size != kFusedInputs + 1) ||
      node->outputs->size != 2) {
    MicroPrintf("TMT_FUSED_IRB: expected 7 inputs (8 with 'features_given') and 2 outputs, got "
                "%d and %d", node->inputs->size, node->outputs->size);
    return kTfLiteError;
  }
  if (node->inputs->size > kFeaturesGiven && node->inputs->data[kFeaturesGiven] >= 0) {
    TfLiteTensor* flag = tflite::GetMicroContext(context)->AllocateTempInputTensor(node, kFeaturesGiven);
    const bool ok = flag != nullptr && flag->type == kTfLiteInt32 &&
                    tflite::ElementCount(*flag->dims) == 1;
    if (flag != nullptr) tflite::GetMicroContext(context)->DeallocateTempTfLiteTensor(flag);
    if (!ok) {
      MicroPrintf("TMT_FUSED_IRB: input 7 'features_given' must be int32 with 1 element");
      return kTfLiteError;
    }
  }
  if (x_external && node->inputs->data[0] >= 0) {
    MicroPrintf("TMT_FUSED_IRB: input 0 'x' must be absent (-1) with option x_external");
    return kTfLiteError;
  }
  if (x_external && StreamedInputOf(context) == nullptr) return kTfLiteError;
  static const char* const kNames[kFusedInputs] = {"x", "w_expand", "b_expand", "w_dw", "b_dw",
                                                   "w_project", "b_project"};
  tflite::MicroContext* mc = tflite::GetMicroContext(context);
  TfLiteTensor* in[kFusedInputs] = {};
  for (int i = 0; i < kFusedInputs; ++i) {
    if (node->inputs->data[i] >= 0) in[i] = mc->AllocateTempInputTensor(node, i);
  }
  TfLiteTensor* y = mc->AllocateTempOutputTensor(node, 0);
  TfLiteTensor* scratch = mc->AllocateTempOutputTensor(node, 1);
  TfLiteStatus status = kTfLiteOk;
  auto fail = [&](const char* what, int i) {
    MicroPrintf("TMT_FUSED_IRB: %s %d '%s' %s", i < 0 ? "output" : "input", i < 0 ? -i - 1 : i,
                i < 0 ? (i == -1 ? "y" : "scratch") : kNames[i], what);
    status = kTfLiteError;
  };
  const int required[] = {0, 3, 5};
  for (int i : required) {
    if (in[i] == nullptr && !(i == 0 && x_external)) fail("is missing", i);
  }
  if (y == nullptr) fail("is missing", -1);
  if (scratch == nullptr) fail("is missing", -2);
  for (int i = 0; status == kTfLiteOk && i < kFusedInputs; ++i) {
    if (in[i] == nullptr) continue;
    const bool bias = i == 2 || i == 4 || i == 6;
    if (in[i]->type != (bias ? kTfLiteInt32 : kTfLiteInt8)) fail(bias ? "must be int32" : "must be int8", i);
    if (!bias && in[i]->dims->size != 4) fail("must be 4-D", i);
  }
  if (status == kTfLiteOk && (y->type != kTfLiteInt8 || y->dims->size != 4)) {
    fail("must be int8 [1, H, W, C]", -1);
  }
  if (status == kTfLiteOk) {
    if (!x_external) {
      d->x_q.scale = in[0]->params.scale;
      d->x_q.zero_point = in[0]->params.zero_point;
    }
    d->y_q.scale = y->params.scale;
    d->y_q.zero_point = y->params.zero_point;
    d->w_expand = core::WeightScales();
    if (in[1] != nullptr && !WeightScalesOf(in[1], &d->w_expand)) fail("must be quantized", 1);
    if (!WeightScalesOf(in[3], &d->w_dw)) fail("must be quantized", 3);
    if (!WeightScalesOf(in[5], &d->w_project)) fail("must be quantized", 5);
  }
  if (status == kTfLiteOk) {
    FillSpec(d, x_external ? nullptr : in[0]->dims, y->dims, in[1] ? in[1]->dims : nullptr,
             in[3]->dims, in[5]->dims, &s);
    core::FusedIrbParams params;
    const core::Status cs = core::PrepareFusedIrb(s, nullptr, &params);
    if (cs != core::Status::kOk) {
      MicroPrintf("TMT_FUSED_IRB: %s", core::StatusString(cs));
      status = kTfLiteError;
    } else if (static_cast<int32_t>(scratch->bytes) < core::FusedIrbScratchBytes(params)) {
      MicroPrintf("TMT_FUSED_IRB: output 1 'scratch' has %d bytes, needs %d",
                  static_cast<int>(scratch->bytes),
                  static_cast<int>(core::FusedIrbScratchBytes(params)));
      status = kTfLiteError;
    }
  }
  for (TfLiteTensor* t : in) {
    if (t) mc->DeallocateTempTfLiteTensor(t);
  }
  if (y) mc->DeallocateTempTfLiteTensor(y);
  if (scratch) mc->DeallocateTempTfLiteTensor(scratch);
  return status;
}

TfLiteStatus FusedEval(TfLiteContext* context, TfLiteNode* node) {
  bool skip = false;  // the cached features were given: the frozen prefix writes nothing
  if (!FeaturesGiven(context, node, &skip)) return kTfLiteError;
  if (skip) return kTfLiteOk;
  const FusedOpData* d = static_cast<const FusedOpData*>(node->user_data);
  auto in = [&](int i) -> const TfLiteEvalTensor* {
    return node->inputs->data[i] >= 0 ? tflite::micro::GetEvalInput(context, node, i) : nullptr;
  };
  auto i8 = [&](int i) { return in(i) ? tflite::micro::GetTensorData<int8_t>(in(i)) : nullptr; };
  auto i32 = [&](int i) {
    return in(i) ? tflite::micro::GetTensorData<int32_t>(in(i)) : nullptr;
  };
  TfLiteEvalTensor* y = tflite::micro::GetEvalOutput(context, node, 0);
  TfLiteEvalTensor* scratch = tflite::micro::GetEvalOutput(context, node, 1);
  int8_t* scratch_data = tflite::micro::GetTensorData<int8_t>(scratch);
  size_t scratch_bytes = 0;
  TF_LITE_ENSURE_STATUS(tflite::TfLiteEvalTensorByteLength(scratch, &scratch_bytes));
  core::FusedIrbSpec spec;
  bool x_external = false;
  if (!ReadFusedOptions(d, &spec, &x_external)) return kTfLiteError;
  const int8_t* x = nullptr;
  if (x_external) {  // the application's buffer, checked again: it may change between invokes
    const StreamedInput* image = StreamedInputOf(context);
    if (image == nullptr) return kTfLiteError;
    const int32_t want = spec.x.h * spec.x.w * spec.x.c;
    if (image->bytes != want || image->data == nullptr) {
      MicroPrintf("TMT_FUSED_IRB: the streamed input has %d bytes at %p (StreamedInput bytes, "
                  "data); the model's image needs %d bytes (%dx%dx%d int8) at a non-null address",
                  static_cast<int>(image->bytes), static_cast<const void*>(image->data),
                  static_cast<int>(want), static_cast<int>(spec.x.h), static_cast<int>(spec.x.w),
                  static_cast<int>(spec.x.c));
      return kTfLiteError;
    }
    x = image->data;
  } else {
    x = i8(0);
  }
  FillSpec(d, x_external ? nullptr : in(0)->dims, y->dims, in(1) ? in(1)->dims : nullptr,
           in(3)->dims, in(5)->dims, &spec);
  // The parameters, then the multipliers into the scratch tensor's tail.
  core::FusedIrbParams params;
  core::Status s = core::PrepareFusedIrb(spec, nullptr, &params);
  if (s == core::Status::kOk) {
    int32_t* words =
        reinterpret_cast<int32_t*>(scratch_data + core::FusedIrbChannelWordsOffset(params));
    s = core::FusedIrbMultipliers(core::FusedIrbScalesOf(spec), words, &params);
  }
  if (s == core::Status::kOk) {
    s = core::FusedIrb(params, x, i8(1), i32(2), i8(3), i32(4), i8(5), i32(6),
                       tflite::micro::GetTensorData<int8_t>(y), scratch_data,
                       static_cast<int32_t>(scratch_bytes));
  }
  if (s != core::Status::kOk) {
    MicroPrintf("TMT_FUSED_IRB: %s", core::StatusString(s));
    return kTfLiteError;
  }
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_TMT_FUSED_IRB() {
  return tflite::micro::RegisterOp(FusedInit, FusedPrepare, FusedEval);
}

int32_t StreamedInputBytes(const tflite::Model* model) {
  if (model == nullptr || model->subgraphs() == nullptr || model->subgraphs()->size() == 0 ||
      model->operator_codes() == nullptr) {
    return 0;
  }
  const auto* ops = model->subgraphs()->Get(0)->operators();
  for (unsigned int i = 0; ops != nullptr && i < ops->size(); ++i) {
    const tflite::Operator* op = ops->Get(i);
    if (op->opcode_index() >= model->operator_codes()->size()) continue;
    const flatbuffers::String* name =
        model->operator_codes()->Get(op->opcode_index())->custom_code();
    if (name == nullptr || std::strcmp(name->c_str(), "TMT_FUSED_IRB") != 0 ||
        op->custom_options() == nullptr) {
      continue;
    }
    OptionReader r(reinterpret_cast<const char*>(op->custom_options()->data()),
                   op->custom_options()->size());
    int32_t external = 0, h = 0, w = 0, c = 0;
    if (r.Int("x_external", &external, false) && external != 0 && r.Int("x_h", &h) &&
        r.Int("x_w", &w) && r.Int("x_c", &c) && h > 0 && w > 0 && c > 0 &&
        static_cast<int64_t>(h) * w * c <= INT32_MAX) {
      return h * w * c;
    }
  }
  return 0;
}

const TrainingOpEntry* TrainingOps() {
  static const TrainingOpEntry kEntries[kNumTrainingOps] = {
      {"TMT_INIT", Register_TMT_INIT},
      {"TMT_SOFTMAX_CE_GRAD", Register_TMT_SOFTMAX_CE_GRAD},
      {"TMT_MSE_GRAD", Register_TMT_MSE_GRAD},
      {"TMT_ACT_GRAD", Register_TMT_ACT_GRAD},
      {"TMT_MASK_PACK", Register_TMT_MASK_PACK},
      {"TMT_MASK_GRAD", Register_TMT_MASK_GRAD},
      {"TMT_GRAD_ADD", Register_TMT_GRAD_ADD},
      {"TMT_MEAN_GRAD", Register_TMT_MEAN_GRAD},
      {"TMT_PAD_GRAD", Register_TMT_PAD_GRAD},
      {"TMT_RESHAPE_GRAD", Register_TMT_RESHAPE_GRAD},
      {"TMT_AVGPOOL_GRAD", Register_TMT_AVGPOOL_GRAD},
      {"TMT_MAXPOOL_GRAD", Register_TMT_MAXPOOL_GRAD},
      {"TMT_CONV_INPUT_GRAD", Register_TMT_CONV_INPUT_GRAD},
      {"TMT_DW_INPUT_GRAD", Register_TMT_DW_INPUT_GRAD},
      {"TMT_CONV_WEIGHT_UPDATE", Register_TMT_CONV_WEIGHT_UPDATE},
      {"TMT_DW_WEIGHT_UPDATE", Register_TMT_DW_WEIGHT_UPDATE},
      {"TMT_BIAS_UPDATE", Register_TMT_BIAS_UPDATE},
      {"TMT_FUSED_IRB", Register_TMT_FUSED_IRB},
      {"TMT_CONV", Register_TMT_CONV},
      {"TMT_MEAN", Register_TMT_MEAN},
  };
  static_assert(sizeof(kEntries) / sizeof(kEntries[0]) == kNumTrainingOps, "");
  return kEntries;
}

}  // namespace tfmicro_train
