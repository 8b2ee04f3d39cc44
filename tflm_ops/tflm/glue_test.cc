// Tests of the TFLM glue (tflm_ops/tflm/training_ops.cc) through TFLM's KernelRunner:
//
// 1. hand-written checks: registration in a MicroMutableOpResolver, the learning-rate
//    gate, the training-step counter in the `state` tensor (the loss ops advance state[1]
//    after validation, the update ops use it), TMT_INIT (copies once; a zeroed state, as
//    TFLM's ResetVariableTensors() leaves it, copies again), option / type / shape /
//    variable-ness errors;
// 2. golden replay (when given golden files: argv[1] or $TMT_GOLDEN_DIR): every case is
//    run through Init/Prepare/Eval with flexbuffer options built here, with and without
//    `use_scratch`, and compared bit for bit. The case's counter is put in state[1], so
//    every update case is compared (files from `python3 tests/golden/make_golden.py DIR`).
//
// Prints "<passed> passed, <failed> failed" and exits 1 on any failure.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "flatbuffers/flexbuffers.h"
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/kernels/kernel_runner.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/micro/test_helpers.h"
#include "tflm_ops/core/tflm_reference.h"
#include "tflm_ops/core/training_ops.h"
#include "tflm_ops/core/training_ops_f32.h"
#include "tflm_ops/tests/golden_reader.h"
#include "tflm_ops/tflm/training_ops.h"

namespace {

using tmt_golden::Array;
using tmt_golden::Case;

constexpr int32_t kStateMagic = 0x544D5431;  // "TMT1" (docs/contract.md, TMT_INIT)

int g_passed = 0;
int g_failed = 0;

void Result(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    if (g_failed <= 30) std::printf("FAIL %s\n", what.c_str());
  }
}

// ------------------------------------------------------------------ tensors

class Tensors {
 public:
  // A tensor copying `bytes` with the given shape and type.
  int Add(const std::vector<int>& shape, TfLiteType type, const void* bytes, size_t nbytes) {
    dims_.emplace_back();
    dims_.back().push_back(static_cast<int>(shape.size()));
    for (int d : shape) dims_.back().push_back(d);
    data_.emplace_back((nbytes + 7) / 8 + 1, 0);
    if (nbytes) std::memcpy(data_.back().data(), bytes, nbytes);
    TfLiteTensor t = {};
    t.type = type;
    t.dims = tflite::testing::IntArrayFromInts(dims_.back().data());
    t.data.data = data_.back().data();
    t.bytes = nbytes;
    t.params = {0.0f, 0};
    t.quantization = {kTfLiteNoQuantization, nullptr};
    t.is_variable = false;
    t.allocation_type = kTfLiteMemNone;
    tensors_.push_back(t);
    return static_cast<int>(tensors_.size()) - 1;
  }
  int AddArray(const Array& a) {
    std::vector<int> shape;
    for (int64_t d : a.dims) shape.push_back(static_cast<int>(d));
    if (shape.empty()) shape.push_back(1);
    return Add(shape, TypeOf(a.dtype), a.bytes(), a.nbytes);
  }
  int AddF32(float v) { return Add({1}, kTfLiteFloat32, &v, sizeof(v)); }
  int AddI32(int32_t v) { return Add({1}, kTfLiteInt32, &v, sizeof(v)); }
  int AddOutput(const std::vector<int>& shape, TfLiteType type) {
    size_t n = 1;
    for (int d : shape) n *= static_cast<size_t>(d);
    std::vector<uint8_t> fill(n * TfLiteTypeGetSizeOf(type), 0x5a);
    return Add(shape, type, fill.data(), fill.size());
  }
  // The artifact's `tmt/state` variable: {kStateMagic, counter}.
  int AddState(uint32_t counter) {
    const int32_t st[2] = {kStateMagic, static_cast<int32_t>(counter)};
    const int i = Add({2}, kTfLiteInt32, st, sizeof(st));
    SetVariable(i);
    return i;
  }
  void SetVariable(int i, bool v = true) { tensors_[i].is_variable = v; }
  void Quantize(int i, float scale, int zero_point) {
    tensors_[i].params = {scale, zero_point};
    tensors_[i].quantization = {kTfLiteAffineQuantization, nullptr};
  }
  // Per-channel (n > 1) or per-tensor affine quantization with zero points 0 (weights).
  void QuantizeScales(int i, const float* scales, int n, int qdim) {
    scales_.emplace_back(static_cast<size_t>(n) + 1);
    std::vector<float>& s = scales_.back();
    s[0] = static_cast<float>(n);
    std::copy(scales, scales + n, s.begin() + 1);
    zero_points_.emplace_back(static_cast<size_t>(n) + 1, 0);
    zero_points_.back()[0] = n;
    affine_.emplace_back();
    TfLiteAffineQuantization& q = affine_.back();
    q.scale = tflite::testing::FloatArrayFromFloats(s.data());
    q.zero_point = tflite::testing::IntArrayFromInts(zero_points_.back().data());
    q.quantized_dimension = qdim;
    tensors_[i].params = {scales[0], 0};
    tensors_[i].quantization = {kTfLiteAffineQuantization, &q};
  }
  void SetConstant(int i) { tensors_[i].allocation_type = kTfLiteMmapRo; }
  void SetArenaTensor(int i) { tensors_[i].allocation_type = kTfLiteArenaRw; }
  TfLiteTensor* data() { return tensors_.data(); }
  int size() const { return static_cast<int>(tensors_.size()); }
  template <typename T>
  T* ptr(int i) {
    return reinterpret_cast<T*>(tensors_[i].data.data);
  }
  int64_t elements(int i) const {
    int64_t n = 1;
    for (int k = 0; k < tensors_[i].dims->size; ++k) n *= tensors_[i].dims->data[k];
    return n;
  }

  static TfLiteType TypeOf(tmt_golden::DType t) {
    switch (t) {
      case tmt_golden::DType::kInt8: return kTfLiteInt8;
      case tmt_golden::DType::kInt16: return kTfLiteInt16;
      case tmt_golden::DType::kInt32: return kTfLiteInt32;
      case tmt_golden::DType::kInt64: return kTfLiteInt64;
      case tmt_golden::DType::kFloat32: return kTfLiteFloat32;
      case tmt_golden::DType::kUInt8: return kTfLiteUInt8;
      default: return kTfLiteNoType;
    }
  }
  static size_t TfLiteTypeGetSizeOf(TfLiteType t) {
    switch (t) {
      case kTfLiteInt8: case kTfLiteUInt8: return 1;
      case kTfLiteInt16: return 2;
      case kTfLiteInt32: case kTfLiteFloat32: return 4;
      case kTfLiteInt64: return 8;
      default: return 1;
    }
  }

 private:
  std::vector<std::vector<int>> dims_;
  std::vector<std::vector<uint64_t>> data_;
  std::vector<TfLiteTensor> tensors_;
  std::vector<std::vector<float>> scales_;  // element buffers stay put when these grow
  std::vector<std::vector<int>> zero_points_;
  std::deque<TfLiteAffineQuantization> affine_;
};

// Flexbuffer map of int / float options.
struct Options {
  std::vector<std::pair<std::string, int64_t>> ints;
  std::vector<std::pair<std::string, float>> floats;
  std::vector<uint8_t> Build() const {
    flexbuffers::Builder fbb;
    fbb.Map([&]() {
      for (const auto& kv : ints) fbb.Int(kv.first.c_str(), kv.second);
      for (const auto& kv : floats) fbb.Float(kv.first.c_str(), kv.second);
    });
    fbb.Finish();
    return fbb.GetBuffer();
  }
};

struct Run {
  TfLiteStatus prepare = kTfLiteError;
  TfLiteStatus invoke = kTfLiteError;
};

// The MicroInterpreter points each node's custom_initial_data at its options in the model (the
// training ops read them there at each Prepare and Eval); KernelRunner passes them to init only.
// RunOp's registration wraps prepare and invoke to set them as the interpreter does.
struct NodeOptions {
  const TFLMRegistration* reg = nullptr;
  const std::vector<uint8_t>* buf = nullptr;
};
NodeOptions g_node_options;

void SetNodeOptions(TfLiteNode* node) {
  node->custom_initial_data = g_node_options.buf->data();
  node->custom_initial_data_size = static_cast<int>(g_node_options.buf->size());
}
TfLiteStatus PrepareWithOptions(TfLiteContext* context, TfLiteNode* node) {
  SetNodeOptions(node);
  return g_node_options.reg->prepare(context, node);
}
TfLiteStatus InvokeWithOptions(TfLiteContext* context, TfLiteNode* node) {
  SetNodeOptions(node);
  return g_node_options.reg->invoke(context, node);
}

// Init + Prepare + `invokes` x Invoke of `reg` on the given tensors.
Run RunOp(const TFLMRegistration& reg, Tensors& t, const std::vector<int>& inputs,
          const std::vector<int>& outputs, const Options& opts, int invokes = 1) {
  std::vector<int> in_arr = {static_cast<int>(inputs.size())};
  in_arr.insert(in_arr.end(), inputs.begin(), inputs.end());
  std::vector<int> out_arr = {static_cast<int>(outputs.size())};
  out_arr.insert(out_arr.end(), outputs.begin(), outputs.end());
  const std::vector<uint8_t> buf = opts.Build();
  g_node_options.reg = &reg;
  g_node_options.buf = &buf;
  TFLMRegistration wrapped = reg;
  if (reg.prepare) wrapped.prepare = PrepareWithOptions;
  if (reg.invoke) wrapped.invoke = InvokeWithOptions;
  tflite::micro::KernelRunner runner(wrapped, t.data(), t.size(),
                                     tflite::testing::IntArrayFromInts(in_arr.data()),
                                     tflite::testing::IntArrayFromInts(out_arr.data()), nullptr);
  Run r;
  r.prepare = runner.InitAndPrepare(reinterpret_cast<const char*>(buf.data()), buf.size());
  if (r.prepare != kTfLiteOk) return r;
  for (int i = 0; i < invokes; ++i) {
    r.invoke = runner.Invoke();
    if (r.invoke != kTfLiteOk) break;
  }
  return r;
}

template <typename T>
bool Same(const Array& want, const T* got, int64_t n, std::string* msg) {
  return tmt_golden::CompareExact(want, got, n, msg);
}

std::vector<int> ShapeOf(const Case& c, const std::string& key) {
  const Array& a = c.array(key);
  std::vector<int> s;
  for (int64_t i = 0; i < a.size(); ++i) s.push_back(static_cast<int>(a.int_at(i)));
  return s;
}

std::vector<int> DimsOf(const Array& a) {
  std::vector<int> s;
  for (int64_t d : a.dims) s.push_back(static_cast<int>(d));
  return s;
}

void AddGeom(const Case& c, Options* o) {
  for (const char* k : {"stride_h", "stride_w", "pad_top", "pad_left"}) {
    o->ints.push_back({k, c.i64(k)});
  }
}

// ------------------------------------------------------------------ golden replay

constexpr int kAbsent = -1;  // an optional input left out (kTfLiteOptionalTensor)

// A folded TMT_MEAN_GRAD's gradient: options g_bcast_h / g_bcast_w and input 6, the mask (or
// absent).
void AddBroadcast(const Case& c, Tensors* t, std::vector<int>* in, Options* o) {
  o->ints.push_back({"g_bcast_h", c.i64("bcast_h")});
  o->ints.push_back({"g_bcast_w", c.i64("bcast_w")});
  in->push_back(c.has("mask") ? t->AddArray(c.array("mask")) : kAbsent);
}

// The registration of the op named `op`, if any.
bool FindRegistration(const std::string& op, TFLMRegistration* reg) {
  const tfmicro_train::TrainingOpEntry* ops = tfmicro_train::TrainingOps();
  for (unsigned i = 0; i < tfmicro_train::kNumTrainingOps; ++i) {
    if (op == ops[i].name) {
      *reg = ops[i].registration();
      return true;
    }
  }
  return false;
}

// Starting values of state[1] for the loss ops, which advance it by one (wrapping) after
// validating: varied, including the wrap-around.
uint32_t LossCounter(const Case& c) {
  return c.index % 5 == 0 ? 0xFFFFFFFFu : static_cast<uint32_t>(c.index) * 7919u;
}

std::string ExpectState(Tensors& t, int idx, uint32_t want) {
  const int32_t* st = t.ptr<int32_t>(idx);
  if (st[0] == kStateMagic && static_cast<uint32_t>(st[1]) == want) return "";
  return "state = {" + std::to_string(st[0]) + ", " + std::to_string(static_cast<uint32_t>(st[1])) +
         "}, want {" + std::to_string(kStateMagic) + ", " + std::to_string(want) + "}";
}

// Runs one fp32-backward golden case (op `<base>_F32`) through the glue of `base`: float32
// gradient tensors, the scale inputs absent (-1), no scale outputs, no `w_scale_max` option.
// Returns "" or what went wrong.
std::string ReplayCaseF32(const Case& c, const std::string& op, bool use_scratch) {
  TFLMRegistration reg = {};
  if (!FindRegistration(op, &reg)) return "no registration for " + op;
  Tensors t;
  Options o;
  std::vector<int> in, out;
  std::string msg, e;
  // use_scratch is accepted and ignored: fp32 mode needs no scratch.
  if (use_scratch) o.ints.push_back({"use_scratch", 1});
  const float kLr = 1.0f;
  auto expect_f32 = [&](int idx, const char* key) -> std::string {
    return Same(c.array(key), t.ptr<float>(idx), t.elements(idx), &msg) ? "" : std::string(key) + ": " + msg;
  };
  auto run = [&]() -> std::string {
    const Run r = RunOp(reg, t, in, out, o);
    if (r.prepare != kTfLiteOk) return "Prepare failed";
    if (r.invoke != kTfLiteOk) return "Invoke failed";
    return "";
  };
  const uint32_t counter0 = LossCounter(c);
  if (op == "TMT_SOFTMAX_CE_GRAD") {
    const Array& probs = c.array("probs");
    in = {t.AddArray(probs), t.AddI32(static_cast<int32_t>(c.i64("label"))), t.AddF32(kLr),
          t.AddArray(c.array("loss_lut")), t.AddState(counter0)};
    out = {t.AddOutput(DimsOf(probs), kTfLiteFloat32), t.AddOutput({1}, kTfLiteFloat32)};
    const Run r = RunOp(reg, t, in, out, o);
    if (c.has("error")) {
      if (r.prepare != kTfLiteOk || r.invoke != kTfLiteError) return "expected a label error";
      return ExpectState(t, in[4], counter0);
    }
    if (r.prepare != kTfLiteOk || r.invoke != kTfLiteOk) return "failed";
    if (!(e = expect_f32(out[0], "out_grad")).empty()) return e;
    if (!(e = expect_f32(out[1], "out_loss")).empty()) return e;
    return ExpectState(t, in[4], counter0 + 1u);
  }
  if (op == "TMT_MSE_GRAD") {
    const Array& y = c.array("y");
    in = {t.AddArray(y), t.AddArray(c.array("target")), t.AddF32(kLr), t.AddState(counter0)};
    t.Quantize(in[0], c.f32("scale"), -7);
    t.Quantize(in[1], c.f32("scale"), -7);
    out = {t.AddOutput(DimsOf(y), kTfLiteFloat32), t.AddOutput({1}, kTfLiteFloat32)};
    if (!(e = run()).empty()) return e;
    if (!(e = expect_f32(out[0], "out_grad")).empty()) return e;
    if (!(e = expect_f32(out[1], "out_loss")).empty()) return e;
    return ExpectState(t, in[3], counter0 + 1u);
  }
  if (op == "TMT_ACT_GRAD" || op == "TMT_MASK_GRAD") {
    const bool act = op == "TMT_ACT_GRAD";
    const Array& g = c.array("g");
    in = {t.AddArray(g), t.AddArray(c.array(act ? "y" : "bits")), t.AddF32(kLr)};
    // TMT_MASK_GRAD in place (the output over 'g', as planned) every other case
    out = {!act && c.index % 2 == 0 ? in[0] : t.AddOutput(DimsOf(g), kTfLiteFloat32)};
    if (act) {
      o.ints.push_back({"act_min", c.i64("act_min")});
      o.ints.push_back({"act_max", c.i64("act_max")});
    }
    if (!(e = run()).empty()) return e;
    return expect_f32(out[0], "out_g");
  }
  if (op == "TMT_GRAD_ADD") {
    const Array& g1 = c.array("g1");
    in = {t.AddArray(g1), kAbsent, t.AddArray(c.array("g2")), kAbsent, t.AddF32(kLr)};
    out = {t.AddOutput(DimsOf(g1), kTfLiteFloat32)};
    if (!(e = run()).empty()) return e;
    return expect_f32(out[0], "out_g");
  }
  if (op == "TMT_MEAN_GRAD") {
    in = {t.AddArray(c.array("g")), kAbsent, t.AddF32(kLr)};
    out = {t.AddOutput(ShapeOf(c, "in_shape"), kTfLiteFloat32)};
    o.floats.push_back({"inv_count", c.f32("inv_count")});
    if (!(e = run()).empty()) return e;
    return expect_f32(out[0], "out_g_in");
  }
  if (op == "TMT_PAD_GRAD" || op == "TMT_RESHAPE_GRAD") {
    in = {t.AddArray(c.array("g")), t.AddF32(kLr)};
    out = {t.AddOutput(ShapeOf(c, "in_shape"), kTfLiteFloat32)};
    if (op == "TMT_PAD_GRAD") {
      o.ints.push_back({"pad_top", c.i64("pad_top")});
      o.ints.push_back({"pad_left", c.i64("pad_left")});
    }
    if (!(e = run()).empty()) return e;
    return expect_f32(out[0], "out_g_in");
  }
  if (op == "TMT_AVGPOOL_GRAD" || op == "TMT_MAXPOOL_GRAD") {
    const bool mx = op == "TMT_MAXPOOL_GRAD";
    in = {t.AddArray(c.array("g")), kAbsent};
    std::vector<int> in_shape;
    if (mx) {
      in.push_back(t.AddArray(c.array("x")));
      in.push_back(t.AddArray(c.array("y")));
      in_shape = DimsOf(c.array("x"));
    } else {
      in_shape = ShapeOf(c, "in_shape");
    }
    in.push_back(t.AddF32(kLr));
    out = {t.AddOutput(in_shape, kTfLiteFloat32)};
    o.ints.push_back({"filter_h", c.i64("filter_h")});
    o.ints.push_back({"filter_w", c.i64("filter_w")});
    AddGeom(c, &o);
    if (!(e = run()).empty()) return e;
    return expect_f32(out[0], "out_g_in");
  }
  if (op == "TMT_CONV_INPUT_GRAD" || op == "TMT_DW_INPUT_GRAD") {
    in = {t.AddArray(c.array("g")), kAbsent, t.AddArray(c.array("w")),
          t.AddArray(c.array("wscale")), t.AddF32(kLr)};
    if (c.has("w_rest")) {  // the weights in two parts: 'w_rest' (constant) after 'lr'
      in.push_back(t.AddArray(c.array("w_rest")));
      t.SetConstant(in.back());
    }
    out = {t.AddOutput(ShapeOf(c, "in_shape"), kTfLiteFloat32)};
    AddGeom(c, &o);
    if (!(e = run()).empty()) return e;
    return expect_f32(out[0], "out_g_in");
  }
  if (op == "TMT_CONV_WEIGHT_UPDATE" || op == "TMT_DW_WEIGHT_UPDATE" || op == "TMT_BIAS_UPDATE") {
    const bool bias = op == "TMT_BIAS_UPDATE";
    const float lr = c.f32("lr");
    const uint32_t counter = static_cast<uint32_t>(c.i64("counter"));
    int p, st;
    if (bias) {
      in = {t.AddArray(c.array("g")), kAbsent, p = t.AddArray(c.array("b")),
            t.AddArray(c.array("bfactor")), t.AddF32(lr), st = t.AddState(counter)};
    } else {
      in = {t.AddArray(c.array("g")), kAbsent, t.AddArray(c.array("x")),
            p = t.AddArray(c.array("w")), t.AddArray(c.array("wfactor")), t.AddF32(lr),
            st = t.AddState(counter)};
      AddGeom(c, &o);
      o.ints.push_back({"x_zero_point", c.i64("x_zero_point")});
    }
    t.SetVariable(p);
    o.ints.push_back({"update_channels", c.i64("update_channels")});
    o.ints.push_back({"seed", c.i64("seed")});
    if (!(e = run()).empty()) return e;
    if (!(e = ExpectState(t, st, counter)).empty()) return "the update op changed the state: " + e;
    const char* key = lr == 0.0f ? (bias ? "b" : "w") : (bias ? "out_b" : "out_w");
    const bool same = bias ? Same(c.array(key), t.ptr<int32_t>(p), t.elements(p), &msg)
                           : Same(c.array(key), t.ptr<int8_t>(p), t.elements(p), &msg);
    return same ? "" : std::string(key) + ": " + msg;
  }
  return "unknown op";
}

// Runs one golden case through the glue; returns "" or what went wrong.
std::string ReplayCase(const Case& c, bool use_scratch) {
  Tensors t;
  Options o;
  std::vector<int> in, out;
  std::string msg;
  const std::string& op = c.op;
  const std::string kF32 = "_F32";
  if (op.size() > kF32.size() && op.compare(op.size() - kF32.size(), kF32.size(), kF32) == 0) {
    return ReplayCaseF32(c, op.substr(0, op.size() - kF32.size()), use_scratch);
  }
  TFLMRegistration reg = {};
  if (!FindRegistration(op, &reg)) return "no registration";
  if (use_scratch) o.ints.push_back({"use_scratch", 1});
  const float kLr = 1.0f;

  auto expect_i8 = [&](int idx, const char* key) -> std::string {
    return Same(c.array(key), t.ptr<int8_t>(idx), t.elements(idx), &msg) ? "" : std::string(key) + ": " + msg;
  };
  auto expect_f32 = [&](int idx, const char* key) -> std::string {
    return Same(c.array(key), t.ptr<float>(idx), 1, &msg) ? "" : std::string(key) + ": " + msg;
  };
  auto run = [&]() -> std::string {
    const Run r = RunOp(reg, t, in, out, o);
    if (r.prepare != kTfLiteOk) return "Prepare failed";
    if (r.invoke != kTfLiteOk) return "Invoke failed";
    return "";
  };
  // Prepare must refuse the op once its constant 'w_rest' (input `slot`) is not a constant.
  auto refuses_non_constant_w_rest = [&](size_t slot) -> std::string {
    t.SetArenaTensor(in[slot]);
    const bool refused = RunOp(reg, t, in, out, o).prepare != kTfLiteOk;
    t.SetConstant(in[slot]);
    return refused ? "" : "a non-constant w_rest was accepted";
  };
  const uint32_t counter0 = LossCounter(c);
  auto expect_state = [&](int idx, uint32_t want) { return ExpectState(t, idx, want); };
  std::string e;
  if (op == "TMT_SOFTMAX_CE_GRAD") {
    const Array& probs = c.array("probs");
    in = {t.AddArray(probs), t.AddI32(static_cast<int32_t>(c.i64("label"))), t.AddF32(kLr),
          t.AddArray(c.array("loss_lut")), t.AddState(counter0)};
    out = {t.AddOutput(DimsOf(probs), kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32),
           t.AddOutput({1}, kTfLiteFloat32)};
    const Run r = RunOp(reg, t, in, out, o);
    if (c.has("error")) {
      if (r.prepare != kTfLiteOk || r.invoke != kTfLiteError) return "expected a label error";
      return expect_state(in[4], counter0);  // a failed step does not advance the counter
    }
    if (r.prepare != kTfLiteOk || r.invoke != kTfLiteOk) return "failed";
    if (!(e = expect_i8(out[0], "out_grad")).empty()) return e;
    if (!(e = expect_f32(out[1], "out_grad_scale")).empty()) return e;
    if (!(e = expect_f32(out[2], "out_loss")).empty()) return e;
    return expect_state(in[4], counter0 + 1u);
  }
  if (op == "TMT_MSE_GRAD") {
    const Array& y = c.array("y");
    in = {t.AddArray(y), t.AddArray(c.array("target")), t.AddF32(kLr), t.AddState(counter0)};
    t.Quantize(in[0], c.f32("scale"), 3);
    t.Quantize(in[1], c.f32("scale"), 3);
    out = {t.AddOutput(DimsOf(y), kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32),
           t.AddOutput({1}, kTfLiteFloat32)};
    if (!(e = run()).empty()) return e;
    if (!(e = expect_i8(out[0], "out_grad")).empty()) return e;
    if (!(e = expect_f32(out[1], "out_grad_scale")).empty()) return e;
    if (!(e = expect_f32(out[2], "out_loss")).empty()) return e;
    return expect_state(in[3], counter0 + 1u);
  }
  if (op == "TMT_ACT_GRAD") {
    const Array& g = c.array("g");
    in = {t.AddArray(g), t.AddArray(c.array("y")), t.AddF32(kLr)};
    out = {t.AddOutput(DimsOf(g), kTfLiteInt8)};
    o.ints.push_back({"act_min", c.i64("act_min")});
    o.ints.push_back({"act_max", c.i64("act_max")});
    if (!(e = run()).empty()) return e;
    return expect_i8(out[0], "out_g");
  }
  if (op == "TMT_MASK_PACK") {
    const Array& y = c.array("y");
    in = {t.AddArray(y), t.AddF32(kLr)};
    out = {t.AddOutput({static_cast<int>(c.array("out_bits").size())}, kTfLiteUInt8)};
    o.ints.push_back({"act_min", c.i64("act_min")});
    o.ints.push_back({"act_max", c.i64("act_max")});
    if (!(e = run()).empty()) return e;
    return Same(c.array("out_bits"), t.ptr<uint8_t>(out[0]), t.elements(out[0]), &msg)
               ? ""
               : "out_bits: " + msg;
  }
  if (op == "TMT_MASK_GRAD") {
    // In place, as the converter plans it (the output over 'g'), and out of place.
    const Array& g = c.array("g");
    const bool in_place = c.index % 2 == 0;
    in = {t.AddArray(g), t.AddArray(c.array("bits")), t.AddF32(kLr)};
    out = {in_place ? in[0] : t.AddOutput(DimsOf(g), kTfLiteInt8)};
    if (!(e = run()).empty()) return e;
    return expect_i8(out[0], "out_g");
  }
  if (op == "TMT_GRAD_ADD") {
    const Array& g1 = c.array("g1");
    in = {t.AddArray(g1), t.AddF32(c.f32("s1")), t.AddArray(c.array("g2")), t.AddF32(c.f32("s2")),
          t.AddF32(kLr)};
    out = {t.AddOutput(DimsOf(g1), kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32)};
    if (!(e = run()).empty()) return e;
    if (!(e = expect_i8(out[0], "out_g")).empty()) return e;
    return expect_f32(out[1], "out_s");
  }
  if (op == "TMT_MEAN_GRAD") {
    in = {t.AddArray(c.array("g")), t.AddF32(c.f32("s")), t.AddF32(kLr)};
    out = {t.AddOutput(ShapeOf(c, "in_shape"), kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32)};
    o.floats.push_back({"inv_count", c.f32("inv_count")});
    if (!(e = run()).empty()) return e;
    if (!(e = expect_i8(out[0], "out_g_in")).empty()) return e;
    return expect_f32(out[1], "out_s_in");
  }
  if (op == "TMT_PAD_GRAD") {
    in = {t.AddArray(c.array("g")), t.AddF32(kLr)};
    out = {t.AddOutput(ShapeOf(c, "in_shape"), kTfLiteInt8)};
    o.ints.push_back({"pad_top", c.i64("pad_top")});
    o.ints.push_back({"pad_left", c.i64("pad_left")});
    if (!(e = run()).empty()) return e;
    return expect_i8(out[0], "out_g_in");
  }
  if (op == "TMT_RESHAPE_GRAD") {
    in = {t.AddArray(c.array("g")), t.AddF32(kLr)};
    out = {t.AddOutput(ShapeOf(c, "in_shape"), kTfLiteInt8)};
    if (!(e = run()).empty()) return e;
    return expect_i8(out[0], "out_g_in");
  }
  if (op == "TMT_AVGPOOL_GRAD" || op == "TMT_MAXPOOL_GRAD") {
    const bool mx = op == "TMT_MAXPOOL_GRAD";
    in = {t.AddArray(c.array("g")), t.AddF32(c.f32("s"))};
    std::vector<int> in_shape;
    if (mx) {
      in.push_back(t.AddArray(c.array("x")));
      in.push_back(t.AddArray(c.array("y")));
      in_shape = DimsOf(c.array("x"));
    } else {
      in_shape = ShapeOf(c, "in_shape");
    }
    in.push_back(t.AddF32(kLr));
    out = {t.AddOutput(in_shape, kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32)};
    o.ints.push_back({"filter_h", c.i64("filter_h")});
    o.ints.push_back({"filter_w", c.i64("filter_w")});
    AddGeom(c, &o);
    if (!(e = run()).empty()) return e;
    if (!(e = expect_i8(out[0], "out_g_in")).empty()) return e;
    return expect_f32(out[1], "out_s_in");
  }
  if (op == "TMT_CONV_INPUT_GRAD" || op == "TMT_DW_INPUT_GRAD") {
    const bool folded = c.has("out_b");  // a folded TMT_BIAS_UPDATE (inputs 7-9), at its lr
    in = {t.AddArray(c.array("g")), t.AddF32(c.f32("s")), t.AddArray(c.array("w")),
          t.AddArray(c.array("wmul")), t.AddF32(folded ? c.f32("lr") : kLr)};
    if (c.has("w_rest")) {  // the weights in two parts: 'w_rest' (constant) after 'lr'
      in.push_back(t.AddArray(c.array("w_rest")));
      t.SetConstant(in.back());
    }
    if (c.has("bcast_h")) {  // a folded TMT_MEAN_GRAD: 'g' broadcast, its mask input 6
      if (in.size() == 5) in.push_back(kAbsent);
      AddBroadcast(c, &t, &in, &o);
    }
    int bias = -1, state = -1;
    const uint32_t counter = folded ? static_cast<uint32_t>(c.i64("counter")) : 0u;
    if (folded) {
      while (in.size() < 7) in.push_back(kAbsent);
      in.push_back(bias = t.AddArray(c.array("b")));
      t.SetVariable(bias);
      in.push_back(t.AddArray(c.array("bfactor")));
      in.push_back(state = t.AddState(counter));
      o.ints.push_back({"b_update_channels", c.i64("update_channels")});
      o.ints.push_back({"b_seed", c.i64("seed")});
    }
    out = {t.AddOutput(ShapeOf(c, "in_shape"), kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32)};
    o.floats.push_back({"w_scale_max", c.f32("w_scale_max")});
    AddGeom(c, &o);
    if (!(e = run()).empty()) return e;
    if (c.has("w_rest") && !use_scratch && !(e = refuses_non_constant_w_rest(5)).empty()) return e;
    if (!(e = expect_i8(out[0], "out_g_in")).empty()) return e;
    if (!(e = expect_f32(out[1], "out_s_in")).empty()) return e;
    if (folded) {
      if (!(e = expect_state(state, counter)).empty()) return "the folded update changed the state: " + e;
      const bool narrow = c.array("b").dtype == tmt_golden::DType::kInt16;
      const bool same = narrow ? Same(c.array("out_b"), t.ptr<int16_t>(bias), t.elements(bias), &msg)
                               : Same(c.array("out_b"), t.ptr<int32_t>(bias), t.elements(bias), &msg);
      if (!same) return "out_b (folded): " + msg;
      if (c.index < 200 && !use_scratch) {  // 'b' must be a variable tensor
        t.SetVariable(bias, false);
        const bool refused = RunOp(reg, t, in, out, o).prepare != kTfLiteOk;
        t.SetVariable(bias);
        if (!refused) return "a folded update of a non-variable 'b' was accepted";
      }
    }
    return "";
  }
  if (op == "TMT_CONV_WEIGHT_UPDATE" || op == "TMT_DW_WEIGHT_UPDATE" || op == "TMT_BIAS_UPDATE") {
    const bool bias = op == "TMT_BIAS_UPDATE";
    const float lr = c.f32("lr");
    // The update op reads the training-step counter from state[1] and leaves it as it is.
    const uint32_t counter = static_cast<uint32_t>(c.i64("counter"));
    int p;  // the updated parameter tensor
    int st;
    if (bias) {
      in = {t.AddArray(c.array("g")), t.AddF32(c.f32("s")), p = t.AddArray(c.array("b")),
            t.AddArray(c.array("bfactor")), t.AddF32(lr), st = t.AddState(counter)};
      if (c.has("bcast_h")) AddBroadcast(c, &t, &in, &o);  // a folded TMT_MEAN_GRAD
    } else {
      in = {t.AddArray(c.array("g")), t.AddF32(c.f32("s")), t.AddArray(c.array("x")),
            p = t.AddArray(c.array("w")), t.AddArray(c.array("wfactor")), t.AddF32(lr),
            st = t.AddState(counter)};
      AddGeom(c, &o);
      o.ints.push_back({"x_zero_point", c.i64("x_zero_point")});
    }
    t.SetVariable(p);
    o.ints.push_back({"update_channels", c.i64("update_channels")});
    o.ints.push_back({"seed", c.i64("seed")});
    if (!(e = run()).empty()) return e;
    if (!(e = expect_state(st, counter)).empty()) return "the update op changed the state: " + e;
    const char* before = bias ? "b" : "w";
    const char* after = bias ? "out_b" : "out_w";
    const bool narrow = bias && c.array("b").dtype == tmt_golden::DType::kInt16;
    auto same_as = [&](const char* key) {
      return narrow ? Same(c.array(key), t.ptr<int16_t>(p), t.elements(p), &msg)
             : bias ? Same(c.array(key), t.ptr<int32_t>(p), t.elements(p), &msg)
                    : Same(c.array(key), t.ptr<int8_t>(p), t.elements(p), &msg);
    };
    if (lr == 0.0f) {  // inference call: the parameter must be untouched
      return same_as(before) ? "" : std::string("lr == 0 changed the parameter: ") + msg;
    }
    const bool same = same_as(after);
    return same ? "" : std::string(after) + ": " + msg;
  }
  if (op == "TMT_CONV") {
    const Array& ws = c.array_of<float>("w_scales");
    const int kind = static_cast<int>(c.i64("kind"));
    const int x = t.AddArray(c.array("x"));
    t.Quantize(x, c.f32("x_scale"), static_cast<int>(c.i64("x_zp")));
    const int w = t.AddArray(c.array("w"));
    const int n_w = static_cast<int>(c.array("w").dim(0));  // rows of 'w' (split: the head)
    const bool per_channel = ws.size() > 1;
    t.QuantizeScales(w, ws.data<float>(), per_channel && c.has("w_rest") ? n_w : static_cast<int>(ws.size()),
                     kind == 1 ? 3 : 0);
    const int b = c.has("b") ? t.AddArray(c.array("b")) : -1;
    const bool narrow = c.has("bias_base");
    int rq;
    if (narrow) {  // requant [4, C]: multipliers, shifts, bias base, bias shifts
      std::vector<int32_t> rows = c.array("requant").vec<int32_t>();
      for (const char* k : {"bias_base", "bias_shift"}) {
        const std::vector<int32_t> row = c.array(k).vec<int32_t>();
        rows.insert(rows.end(), row.begin(), row.end());
      }
      rq = t.Add({4, static_cast<int>(rows.size() / 4)}, kTfLiteInt32, rows.data(),
                 rows.size() * sizeof(int32_t));
    } else {
      rq = t.AddArray(c.array("requant"));
    }
    t.SetConstant(rq);
    const int y = t.AddOutput(DimsOf(c.array("out_y")), kTfLiteInt8);
    t.Quantize(y, c.f32("y_scale"), static_cast<int>(c.i64("y_zp")));
    in = {x, w, b, rq};
    if (c.has("w_rest")) {  // the other rows, with their scales
      const int r = t.AddArray(c.array("w_rest"));
      const int n_r = static_cast<int>(c.array("w_rest").dim(0));
      t.QuantizeScales(r, ws.data<float>() + (per_channel ? n_w : 0), per_channel ? n_r : 1, 0);
      t.SetConstant(r);
      in.push_back(r);
    }
    out = {y};
    int bits = -1;
    if (c.has("out_bits")) {  // output 1: the packed activation mask of y
      bits = t.AddOutput(DimsOf(c.array("out_bits")), kTfLiteUInt8);
      out.push_back(bits);
      o.ints.push_back({"mask_min", c.i64("mask_min")});
      o.ints.push_back({"mask_max", c.i64("mask_max")});
    }
    o.ints.push_back({"kind", kind});
    o.ints.push_back({"act", c.i64("act")});
    o.ints.push_back({"version", 1});
    // every other case with the runtime parameters in the options (the converter's artifacts:
    // the op keeps no op data and reads them at each Eval), the others computed in Prepare
    const bool runtime_in_options = c.index % 2 == 0;
    if (runtime_in_options) {
      tfmicro_train::core::TensorQuant yq;
      yq.scale = c.f32("y_scale");
      yq.zero_point = static_cast<int32_t>(c.i64("y_zp"));
      int32_t act_min = 0, act_max = 0;
      tfmicro_train::core::tflm_ref::ActivationRange(static_cast<int32_t>(c.i64("act")), yq,
                                                     &act_min, &act_max);
      o.ints.push_back({"x_zp", c.i64("x_zp")});
      o.ints.push_back({"y_zp", c.i64("y_zp")});
      o.ints.push_back({"act_min", act_min});
      o.ints.push_back({"act_max", act_max});
    }
    if (kind != 2) {
      for (const char* k : {"stride_h", "stride_w", "dil_h", "dil_w", "padding"}) {
        o.ints.push_back({k, c.i64(k)});
      }
    }
    if (!(e = run()).empty()) return e;
    if (!(e = expect_i8(y, "out_y")).empty()) return e;
    if (bits >= 0 && !Same(c.array("out_bits"), t.ptr<uint8_t>(bits), t.elements(bits), &msg)) {
      return "out_bits: " + msg;
    }
    if (narrow && c.index < 200 && !use_scratch) {  // refused: a bias shift of 17
      std::vector<int32_t> rows(t.ptr<int32_t>(rq), t.ptr<int32_t>(rq) + t.elements(rq));
      rows.back() = 17;
      std::vector<int> bad_in = in;
      bad_in[3] = t.Add({4, static_cast<int>(rows.size() / 4)}, kTfLiteInt32, rows.data(),
                        rows.size() * sizeof(int32_t));
      t.SetConstant(bad_in[3]);
      if (RunOp(reg, t, bad_in, out, o).prepare == kTfLiteOk) return "a bias shift of 17 was accepted";
    }
    if (bits >= 0 && c.index < 40 && !use_scratch) {  // 'bits' needs its bounds; the wrong size is refused
      Options no_bounds = o;
      no_bounds.ints.erase(std::remove_if(no_bounds.ints.begin(), no_bounds.ints.end(),
                                          [](const auto& kv) { return kv.first == "mask_max"; }),
                           no_bounds.ints.end());
      if (RunOp(reg, t, in, out, no_bounds).prepare == kTfLiteOk) return "'bits' without mask_max accepted";
      std::vector<int> wrong = {y, t.AddOutput({static_cast<int>(t.elements(bits)) + 1}, kTfLiteUInt8)};
      if (RunOp(reg, t, in, wrong, o).prepare == kTfLiteOk) return "'bits' of the wrong size accepted";
    }
    if (c.has("w_rest") && !use_scratch && !(e = refuses_non_constant_w_rest(4)).empty()) return e;
    if (c.index < 3 && !use_scratch) {  // an option outside int32 is refused, not truncated
      Options bad = o;
      for (auto& kv : bad.ints) {
        if (kv.first == "act") kv.second += int64_t{1} << 32;
      }
      if (RunOp(reg, t, in, out, bad).prepare == kTfLiteOk) return "an out-of-range option was accepted";
    }
    if (c.has("out_pooled")) {  // mean mode: output 0 the mean of y over H, W; y not written
      const Array& want_y = c.array("out_y");
      const int pooled = t.AddOutput({1, static_cast<int>(want_y.dim(3))}, kTfLiteInt8);
      t.Quantize(pooled, c.f32("pooled_scale"), static_cast<int>(c.i64("pooled_zp")));
      std::vector<int> mean_out = {pooled};
      int mean_bits = -1;
      if (bits >= 0) {
        mean_bits = t.AddOutput(DimsOf(c.array("out_bits")), kTfLiteUInt8);
        mean_out.push_back(mean_bits);
      }
      Options mo = o;
      mo.ints.push_back({"mean", 1});
      mo.ints.push_back({"y_h", want_y.dim(1)});
      mo.ints.push_back({"y_w", want_y.dim(2)});
      mo.floats.push_back({"y_scale", c.f32("y_scale")});
      if (!runtime_in_options) mo.ints.push_back({"y_zp", c.i64("y_zp")});  // (else there)
      mo.ints.push_back({"mean_multiplier", c.i64("mean_mult")});
      mo.ints.push_back({"mean_shift", c.i64("mean_shift")});
      mo.ints.push_back({"pooled_zp", c.i64("pooled_zp")});
      const Run r = RunOp(reg, t, in, mean_out, mo);
      if (r.prepare != kTfLiteOk || r.invoke != kTfLiteOk) return "mean mode failed";
      if (!(e = expect_i8(pooled, "out_pooled")).empty()) return "mean mode: " + e;
      if (mean_bits >= 0 &&
          !Same(c.array("out_bits"), t.ptr<uint8_t>(mean_bits), t.elements(mean_bits), &msg)) {
        return "mean mode: out_bits: " + msg;
      }
      if (c.index < 300 && !use_scratch) {  // a multiplier the scales do not give is refused
        Options bad = mo;
        for (auto& kv : bad.ints) {
          if (kv.first == "mean_multiplier") kv.second += 1;
        }
        if (RunOp(reg, t, in, mean_out, bad).prepare == kTfLiteOk) {
          return "mean mode: a wrong mean_multiplier was accepted";
        }
      }
    }
    if (runtime_in_options && c.index < 100 && !use_scratch) {  // options that disagree: refused
      for (const char* key : {"x_zp", "act_max"}) {
        Options bad = o;
        for (auto& kv : bad.ints) {
          if (kv.first == key) kv.second += kv.second > 0 ? -1 : 1;
        }
        if (RunOp(reg, t, in, out, bad).prepare == kTfLiteOk) {
          return std::string("a wrong option '") + key + "' was accepted";
        }
      }
    }
    if (c.index < 3 && !use_scratch) {  // a requant that disagrees with the scales is refused
      t.ptr<int32_t>(rq)[0] += 1;
      if (RunOp(reg, t, in, out, o).prepare == kTfLiteOk) return "a wrong requant was accepted";
    }
    return "";
  }
  if (op == "TMT_MEAN") {
    const int x = t.AddArray(c.array("x"));
    t.Quantize(x, c.f32("x_scale"), static_cast<int>(c.i64("x_zp")));
    const int32_t axes[2] = {2, 1};  // any order
    const int axis = t.Add({2}, kTfLiteInt32, axes, sizeof(axes));
    t.SetConstant(axis);
    const int y = t.AddOutput(DimsOf(c.array("out_y")), kTfLiteInt8);
    t.Quantize(y, c.f32("y_scale"), static_cast<int>(c.i64("y_zp")));
    in = {x, axis};
    out = {y};
    o.ints.push_back({"keep_dims", c.i64("keep_dims")});
    if (!(e = run()).empty()) return e;
    return expect_i8(y, "out_y");
  }
  return "unknown op";
}

bool IsDir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void ReplayGolden(const std::string& path) {
  std::vector<std::string> files;
  if (IsDir(path)) {
    if (DIR* d = opendir(path.c_str())) {
      while (dirent* e = readdir(d)) {
        const std::string n = e->d_name;
        if (n.size() > 5 && n.compare(n.size() - 5, 5, ".tmtg") == 0) files.push_back(path + "/" + n);
      }
      closedir(d);
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  if (files.empty()) Result(false, "no .tmtg files in " + path);
  std::map<std::string, std::pair<int, int>> per_op;  // op -> (compared, failed)
  for (const auto& f : files) {
    std::vector<Case> cases;
    std::string err;
    if (!tmt_golden::ReadFile(f, &cases, &err)) {
      Result(false, err);
      continue;
    }
    for (const Case& c : cases) {
      for (bool scratch : {false, true}) {
        // KernelRunner's arena is 10000 bytes: scratch runs only for small outputs.
        if (scratch && c.has("out_g_in") && c.array("out_g_in").size() * 8 > 8000) continue;
        if (scratch && c.has("out_g") && c.array("out_g").size() * 8 > 8000) continue;
        std::string problem;
        try {
          problem = ReplayCase(c, scratch);
        } catch (const tmt_golden::GoldenError& e) {
          problem = std::string("bad case: ") + e.what();
        }
        auto& counts = per_op[c.op];
        ++counts.first;
        if (!problem.empty()) ++counts.second;
        Result(problem.empty(), f + " case #" + std::to_string(c.index) + " (" + c.op +
                                    (scratch ? ", use_scratch" : "") + "): " + problem);
      }
    }
  }
  for (const auto& kv : per_op) {
    std::printf("glue %s: %d runs compared, %d mismatches\n", kv.first.c_str(), kv.second.first,
                kv.second.second);
  }
}

// ------------------------------------------------------------------ hand-written checks

void TestResolver() {
  tflite::MicroMutableOpResolver<tfmicro_train::kNumTrainingOps + 1> resolver;
  Result(resolver.AddFullyConnected() == kTfLiteOk, "resolver: AddFullyConnected");
  Result(tfmicro_train::RegisterTrainingOps(resolver) == kTfLiteOk, "resolver: RegisterTrainingOps");
  Result(resolver.FindOp("TMT_CONV_WEIGHT_UPDATE") != nullptr, "resolver: FindOp(TMT_CONV_WEIGHT_UPDATE)");
  Result(resolver.FindOp("TMT_SOFTMAX_CE_GRAD") != nullptr, "resolver: FindOp(TMT_SOFTMAX_CE_GRAD)");
  for (unsigned i = 0; i < tfmicro_train::kNumTrainingOps; ++i) {
    const char* name = tfmicro_train::TrainingOps()[i].name;
    Result(resolver.FindOp(name) != nullptr, std::string("resolver: FindOp(") + name + ")");
  }
  tflite::MicroMutableOpResolver<tfmicro_train::kNumTrainingBuiltins> builtins;
  Result(tfmicro_train::AddTrainingBuiltins(builtins) == kTfLiteOk, "resolver: AddTrainingBuiltins");
  tflite::MicroMutableOpResolver<3> small;
  Result(tfmicro_train::RegisterTrainingOps(&small) == kTfLiteError, "resolver: too small must fail");
}

// Softmax loss: lr == 0 writes zeros; lr < 0 fails; label out of range fails.
// Softmax loss: lr == 0 writes zeros; lr < 0 / NaN fails; none of them advances the counter;
// lr > 0 computes and advances state[1].
void TestLossGate() {
  const int8_t probs[4] = {-128, 100, -100, 0};
  std::vector<float> lut(256, 2.5f);
  for (float lr : {0.0f, -1.0f, NAN, 1.0f}) {
    Tensors t;
    std::vector<int> in = {t.Add({1, 4}, kTfLiteInt8, probs, 4), t.AddI32(1), t.AddF32(lr),
                           t.Add({256}, kTfLiteFloat32, lut.data(), 256 * 4), t.AddState(10)};
    std::vector<int> out = {t.AddOutput({1, 4}, kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32),
                            t.AddOutput({1}, kTfLiteFloat32)};
    const Run r = RunOp(tfmicro_train::Register_TMT_SOFTMAX_CE_GRAD(), t, in, out, Options());
    const std::string tag = "softmax lr=" + std::to_string(lr);
    const int32_t step = t.ptr<int32_t>(in[4])[1];
    Result(r.prepare == kTfLiteOk, tag + ": prepare");
    if (lr == 0.0f) {
      Result(r.invoke == kTfLiteOk && t.ptr<float>(out[1])[0] == 0.0f && t.ptr<float>(out[2])[0] == 0.0f,
             tag + ": inference call writes loss 0, scale 0");
      Result(step == 10, tag + ": inference call leaves state[1]");
    } else if (!(lr > 0.0f)) {
      Result(r.invoke == kTfLiteError, tag + ": must fail");
      Result(step == 10, tag + ": failed call leaves state[1]");
    } else {
      Result(r.invoke == kTfLiteOk && t.ptr<float>(out[2])[0] == 2.5f &&
                 t.ptr<float>(out[1])[0] == 1.0f / 128.0f && t.ptr<int8_t>(out[0])[1] == -14,
             tag + ": loss, scale, grad");
      Result(step == 11, tag + ": state[1] advanced to 11, is " + std::to_string(step));
    }
  }
}

// The training-step counter: the loss op advances state[1] (after validation, wrapping), the
// update ops read it (checked against the core with the same counters) and leave it.
void TestUpdateCounter() {
  const int8_t probs[4] = {-128, 100, -100, 0};
  std::vector<float> lut(256, 1.0f);
  const int8_t g[4] = {50, -70, 127, 3};    // [1, 2, 2, 1]
  const int8_t x[4] = {10, -128, 127, 33};  // [1, 2, 2, 1]
  const int8_t w0[1] = {5};                 // [1, 1, 1, 1]
  const int32_t b0[1] = {-1000};
  const float wf[1] = {0.37f};
  const float bf[1] = {2.5e4f};
  const float s = 0.01f, lr = 0.003f;
  Options ow;
  ow.ints = {{"stride_h", 1}, {"stride_w", 1}, {"pad_top", 0}, {"pad_left", 0},
             {"x_zero_point", -3}, {"update_channels", 1}, {"seed", 777}};
  Options ob;
  ob.ints = {{"update_channels", 1}, {"seed", 778}};
  Tensors t;
  const int state = t.AddState(0xFFFFFFFEu);  // wraps after two steps
  const int lr_t = t.AddF32(lr);
  const int lr0 = t.AddF32(0.0f);
  const int label = t.AddI32(1);
  const int bad_label = t.AddI32(4);
  const int probs_t = t.Add({1, 4}, kTfLiteInt8, probs, 4);
  const int lut_t = t.Add({256}, kTfLiteFloat32, lut.data(), 256 * 4);
  const std::vector<int> loss_out = {t.AddOutput({1, 4}, kTfLiteInt8),
                                     t.AddOutput({1}, kTfLiteFloat32),
                                     t.AddOutput({1}, kTfLiteFloat32)};
  const int w = t.Add({1, 1, 1, 1}, kTfLiteInt8, w0, 1);
  const int b = t.Add({1}, kTfLiteInt32, b0, 4);
  t.SetVariable(w);
  t.SetVariable(b);
  const std::vector<int> wup = {t.Add({1, 2, 2, 1}, kTfLiteInt8, g, 4), t.AddF32(s),
                                t.Add({1, 2, 2, 1}, kTfLiteInt8, x, 4), w,
                                t.Add({1}, kTfLiteFloat32, wf, 4), lr_t, state};
  const std::vector<int> bup = {wup[0], wup[1], b, t.Add({1}, kTfLiteFloat32, bf, 4), lr_t, state};
  auto loss = [&](int label_t, int lr_in) {
    return RunOp(tfmicro_train::Register_TMT_SOFTMAX_CE_GRAD(), t,
                 {probs_t, label_t, lr_in, lut_t, state}, loss_out, Options());
  };
  auto step = [&]() { return static_cast<uint32_t>(t.ptr<int32_t>(state)[1]); };

  std::vector<uint32_t> used;  // the counters the updates should have seen
  for (int k = 0; k < 3; ++k) {
    const Run l = loss(label, lr_t);
    Result(l.prepare == kTfLiteOk && l.invoke == kTfLiteOk, "counter: loss step " + std::to_string(k));
    used.push_back(step());
    Result(RunOp(tfmicro_train::Register_TMT_CONV_WEIGHT_UPDATE(), t, wup, {}, ow).invoke == kTfLiteOk,
           "counter: weight update " + std::to_string(k));
    Result(RunOp(tfmicro_train::Register_TMT_BIAS_UPDATE(), t, bup, {}, ob).invoke == kTfLiteOk,
           "counter: bias update " + std::to_string(k));
    Result(step() == used.back(), "counter: the update ops leave state[1]");
    // Neither an inference call nor a failing loss (label out of range) advances it.
    Result(loss(label, lr0).invoke == kTfLiteOk && step() == used.back(),
           "counter: lr = 0 leaves state[1]");
    Result(loss(bad_label, lr_t).invoke == kTfLiteError && step() == used.back(),
           "counter: a failed loss leaves state[1]");
  }
  Result(used == std::vector<uint32_t>({0xFFFFFFFFu, 0u, 1u}),
         "counter: loss op advances state[1] by one, wrapping (0xFFFFFFFE -> ffffffff, 0, 1)");
  int8_t want_w = w0[0];
  int32_t want_b = b0[0];
  tfmicro_train::core::ConvGeom geom;
  tfmicro_train::core::UpdateParams pw, pb;
  pw.update_channels = 1;
  pw.seed = 777;
  pw.x_zero_point = -3;
  pb.update_channels = 1;
  pb.seed = 778;
  for (uint32_t counter : used) {
    tfmicro_train::core::ConvWeightUpdate(g, s, {2, 2, 1}, x, {2, 2, 1}, &want_w, 1, 1, wf, lr,
                                          geom, pw, counter);
    tfmicro_train::core::BiasUpdate(g, s, 4, 1, &want_b, bf, lr, pb, counter);
  }
  Result(t.ptr<int8_t>(w)[0] == want_w, "counter: weights after three steps = " +
                                            std::to_string(want_w) + ", got " +
                                            std::to_string(t.ptr<int8_t>(w)[0]));
  Result(t.ptr<int32_t>(b)[0] == want_b, "counter: bias after three steps = " +
                                             std::to_string(want_b) + ", got " +
                                             std::to_string(t.ptr<int32_t>(b)[0]));
  // The check is sensitive to the counter: counters 0, 1, 2 (an off-by-one, or no wrap) give
  // another bias.
  int32_t other_b = b0[0];
  for (uint32_t counter : {0u, 1u, 2u}) {
    tfmicro_train::core::BiasUpdate(g, s, 4, 1, &other_b, bf, lr, pb, counter);
  }
  Result(other_b != want_b, "counter: the bias test is sensitive to the counter");
}

// A weight variable holding only the trained leading output channels ([R, KH, KW, CI] with
// R < CO; the converter keeps the frozen rest in flash): updated like the first R rows of
// the whole tensor; update_channels > R is rejected.
void TestSlicedWeights() {
  const int8_t g[2 * 2 * 4] = {50, -70, 127, 3, -9, 8, 100, -127, 1, 2, 3, 4, 90, -90, 45, -45};
  const int8_t x[2 * 2 * 3] = {10, -128, 127, 33, 5, 6, -7, 8, 9, 100, -100, 0};
  int8_t w_full[4 * 3] = {5, -5, 7, 9, 11, -13, 20, 21, 22, 23, 24, 25};
  const float wf[4] = {0.37f, 0.5f, 0.25f, 0.125f};
  const float s = 0.01f, lr = 0.05f;
  Options o;
  o.ints = {{"stride_h", 1}, {"stride_w", 1}, {"pad_top", 0}, {"pad_left", 0},
            {"x_zero_point", -3}, {"update_channels", 2}, {"seed", 99}};
  Tensors t;
  const int w = t.Add({2, 1, 1, 3}, kTfLiteInt8, w_full, 6);  // rows 0 and 1 of w_full
  t.SetVariable(w);
  const std::vector<int> in = {t.Add({1, 2, 2, 4}, kTfLiteInt8, g, 16), t.AddF32(s),
                               t.Add({1, 2, 2, 3}, kTfLiteInt8, x, 12), w,
                               t.Add({4}, kTfLiteFloat32, wf, 16), t.AddF32(lr), t.AddState(42)};
  const TFLMRegistration reg = tfmicro_train::Register_TMT_CONV_WEIGHT_UPDATE();
  const Run r = RunOp(reg, t, in, {}, o);
  Result(r.prepare == kTfLiteOk && r.invoke == kTfLiteOk, "sliced: prepare + invoke");
  tfmicro_train::core::UpdateParams p;
  p.update_channels = 2;
  p.seed = 99;
  p.x_zero_point = -3;
  tfmicro_train::core::ConvWeightUpdate(g, s, {2, 2, 4}, x, {2, 2, 3}, w_full, 1, 1, wf, lr,
                                        tfmicro_train::core::ConvGeom(), p, 42);
  Result(std::memcmp(t.ptr<int8_t>(w), w_full, 6) == 0, "sliced: equals the whole-tensor update");
  Result(std::memcmp(w_full + 6, "\x14\x15\x16\x17\x18\x19", 6) == 0, "sliced: frozen rows untouched");
  o.ints[5] = {"update_channels", 3};
  Result(RunOp(reg, t, in, {}, o).prepare == kTfLiteError, "sliced: update_channels > rows of 'w'");
}

// TMT_INIT copies every initial value into its variable when state[0] != magic, then sets
// state = {magic, 0}; afterwards it copies nothing. A zeroed state (what TFLM's
// ResetVariableTensors() leaves) makes the next invoke restore the initial values.
void TestInit() {
  const int8_t w_init[5] = {1, -2, 3, -4, 127};
  const int32_t b_init[3] = {100000, -7, 0};
  Tensors t;
  const int32_t zero_state[2] = {0, 0};
  const int state = t.Add({2}, kTfLiteInt32, zero_state, 8);
  t.SetVariable(state);
  const int wi = t.Add({1, 5}, kTfLiteInt8, w_init, 5);
  const int wv = t.AddOutput({1, 5}, kTfLiteInt8);
  const int bi = t.Add({3}, kTfLiteInt32, b_init, 12);
  const int bv = t.AddOutput({3}, kTfLiteInt32);
  t.SetVariable(wv);
  t.SetVariable(bv);
  const std::vector<int> in = {state, wi, wv, bi, bv};
  const TFLMRegistration reg = tfmicro_train::Register_TMT_INIT();
  auto same_as_init = [&]() {
    return std::memcmp(t.ptr<int8_t>(wv), w_init, 5) == 0 &&
           std::memcmp(t.ptr<int32_t>(bv), b_init, 12) == 0;
  };
  Result(!same_as_init(), "init: variables start different");
  Run r = RunOp(reg, t, in, {}, Options());
  Result(r.prepare == kTfLiteOk && r.invoke == kTfLiteOk, "init: prepare + invoke");
  Result(same_as_init(), "init: first invoke copies the initial values");
  Result(t.ptr<int32_t>(state)[0] == kStateMagic && t.ptr<int32_t>(state)[1] == 0,
         "init: state = {magic, 0}");
  // Training changes the variables and the counter; TMT_INIT's Eval must not undo that.
  t.ptr<int8_t>(wv)[0] = 99;
  t.ptr<int32_t>(bv)[2] = -5;
  t.ptr<int32_t>(state)[1] = 7;
  r = RunOp(reg, t, in, {}, Options(), 3);
  // RunOp prepares again, as AllocateTensors() does: Prepare clears the marker (the arena may
  // hold anything), so the first invoke restores the shipped values and the counter.
  Result(r.invoke == kTfLiteOk && same_as_init() && t.ptr<int32_t>(state)[1] == 0,
         "init: a new AllocateTensors() re-initialises from flash");
  // ResetVariableTensors(): every variable to its zero point (0 here), state to {0, 0}.
  std::memset(t.ptr<int8_t>(wv), 0, 5);
  std::memset(t.ptr<int32_t>(bv), 0, 12);
  std::memset(t.ptr<int32_t>(state), 0, 8);
  r = RunOp(reg, t, in, {}, Options());
  Result(r.invoke == kTfLiteOk && same_as_init() && t.ptr<int32_t>(state)[0] == kStateMagic &&
             t.ptr<int32_t>(state)[1] == 0,
         "init: after a reset the next invoke restores the initial values");
  // Any other state[0] (garbage in a fresh arena) also initialises.
  t.ptr<int32_t>(state)[0] = kStateMagic + 1;
  t.ptr<int8_t>(wv)[1] = 55;
  r = RunOp(reg, t, in, {}, Options());
  Result(r.invoke == kTfLiteOk && same_as_init(), "init: state[0] != magic initialises");

  // Prepare errors.
  const int wv_short = t.AddOutput({1, 4}, kTfLiteInt8);
  t.SetVariable(wv_short);
  Result(RunOp(reg, t, {state, wi, wv_short}, {}, Options()).prepare == kTfLiteError,
         "init: size mismatch");
  const int bv_f32 = t.AddOutput({3}, kTfLiteFloat32);
  t.SetVariable(bv_f32);
  Result(RunOp(reg, t, {state, bi, bv_f32}, {}, Options()).prepare == kTfLiteError,
         "init: type mismatch");
  Result(RunOp(reg, t, {state, wi}, {}, Options()).prepare == kTfLiteError, "init: odd input count");
  const int state_i8 = t.AddOutput({8}, kTfLiteInt8);
  t.SetVariable(state_i8);
  Result(RunOp(reg, t, {state_i8, wi, wv}, {}, Options()).prepare == kTfLiteError,
         "init: state of the wrong type");
  const int wv_const = t.AddOutput({1, 5}, kTfLiteInt8);  // not a variable
  Result(RunOp(reg, t, {state, wi, wv_const}, {}, Options()).prepare == kTfLiteError,
         "init: target not a variable tensor");
  Result(RunOp(reg, t, {wi, wi, wv}, {}, Options()).prepare == kTfLiteError,
         "init: state not a variable tensor");
}

// Prepare rejects missing options, wrong types, inconsistent shapes, missing state, and
// parameters / state that are not variable tensors.
void TestPrepareErrors() {
  const int8_t g[8] = {};
  {
    Tensors t;  // TMT_PAD_GRAD without options
    std::vector<int> in = {t.Add({1, 2, 2, 2}, kTfLiteInt8, g, 8), t.AddF32(1.0f)};
    std::vector<int> out = {t.AddOutput({1, 1, 1, 2}, kTfLiteInt8)};
    Result(RunOp(tfmicro_train::Register_TMT_PAD_GRAD(), t, in, out, Options()).prepare == kTfLiteError,
           "prepare: missing options");
    Options o;
    o.ints = {{"pad_top", 1}, {"pad_left", 1}};
    Result(RunOp(tfmicro_train::Register_TMT_PAD_GRAD(), t, in, out, o).prepare == kTfLiteOk,
           "prepare: pad ok");
    o.ints = {{"pad_top", 2}, {"pad_left", 1}};
    Result(RunOp(tfmicro_train::Register_TMT_PAD_GRAD(), t, in, out, o).prepare == kTfLiteError,
           "prepare: pad past the end");
    // geometry options are kept as int16: a larger value is refused, not wrapped (65537 -> 1)
    o.ints = {{"pad_top", 65537}, {"pad_left", 1}};
    Result(RunOp(tfmicro_train::Register_TMT_PAD_GRAD(), t, in, out, o).prepare == kTfLiteError,
           "prepare: pad_top out of the int16 range");
    o.ints = {{"pad_top", 1}, {"pad_left", -65535}};
    Result(RunOp(tfmicro_train::Register_TMT_PAD_GRAD(), t, in, out, o).prepare == kTfLiteError,
           "prepare: pad_left out of the int16 range");
  }
  {
    Tensors t;  // TMT_ACT_GRAD with a float32 gradient
    const float gf[2] = {};
    std::vector<int> in = {t.Add({1, 2}, kTfLiteFloat32, gf, 8), t.Add({1, 2}, kTfLiteInt8, g, 2),
                           t.AddF32(1.0f)};
    std::vector<int> out = {t.AddOutput({1, 2}, kTfLiteInt8)};
    Options o;
    o.ints = {{"act_min", 0}, {"act_max", 127}};
    Result(RunOp(tfmicro_train::Register_TMT_ACT_GRAD(), t, in, out, o).prepare == kTfLiteError,
           "prepare: wrong type");
  }
  {
    Tensors t;  // TMT_BIAS_UPDATE
    const int32_t b[2] = {};
    const float bf[2] = {};
    const int bias = t.Add({2}, kTfLiteInt32, b, 8);
    t.SetVariable(bias);
    const int state = t.AddState(0);
    std::vector<int> in = {t.Add({1, 2}, kTfLiteInt8, g, 2), t.AddF32(1.0f), bias,
                           t.Add({2}, kTfLiteFloat32, bf, 8), t.AddF32(1.0f), state};
    Options o;
    o.ints = {{"update_channels", 2}, {"seed", 1}};
    const TFLMRegistration reg = tfmicro_train::Register_TMT_BIAS_UPDATE();
    Result(RunOp(reg, t, in, {}, o).prepare == kTfLiteOk, "prepare: bias update ok");
    o.ints = {{"update_channels", 3}, {"seed", 1}};
    Result(RunOp(reg, t, in, {}, o).prepare == kTfLiteError, "prepare: update_channels > channels");
    o.ints = {{"update_channels", 2}, {"seed", 1}};
    std::vector<int> no_state(in.begin(), in.end() - 1);
    Result(RunOp(reg, t, no_state, {}, o).prepare == kTfLiteError, "prepare: state input missing");
    std::vector<int> bad_state = in;
    bad_state.back() = t.AddF32(0.0f);
    t.SetVariable(bad_state.back());
    Result(RunOp(reg, t, bad_state, {}, o).prepare == kTfLiteError, "prepare: state of the wrong type");
    t.SetVariable(state, false);
    Result(RunOp(reg, t, in, {}, o).prepare == kTfLiteError, "prepare: state not a variable tensor");
    t.SetVariable(state, true);
    t.SetVariable(bias, false);
    Result(RunOp(reg, t, in, {}, o).prepare == kTfLiteError, "prepare: bias not a variable tensor");
  }
  {
    Tensors t;  // TMT_SOFTMAX_CE_GRAD with a float32 label
    const int8_t probs[4] = {};
    std::vector<float> lut(256, 0.0f);
    std::vector<int> in = {t.Add({1, 4}, kTfLiteInt8, probs, 4), t.AddF32(1.0f), t.AddF32(1.0f),
                           t.Add({256}, kTfLiteFloat32, lut.data(), 256 * 4), t.AddState(0)};
    std::vector<int> out = {t.AddOutput({1, 4}, kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32),
                            t.AddOutput({1}, kTfLiteFloat32)};
    Result(RunOp(tfmicro_train::Register_TMT_SOFTMAX_CE_GRAD(), t, in, out, Options()).prepare ==
               kTfLiteError,
           "prepare: float32 label");
  }
}

// fp32 backward: a float32 gradient selects the variant; its scale inputs must be absent (-1), it
// has no scale outputs and needs no `w_scale_max`; mixed int8 / float32 gradients are rejected;
// the loss ops' learning-rate gate writes only the loss.
void TestF32Mode() {
  namespace core = tfmicro_train::core;
  const float g[2] = {0.5f, -0.25f};          // [1, 2]
  const int8_t w[6] = {1, 2, 3, -4, -5, -127};  // [2, 3]
  const float ws[2] = {0.01f, 0.02f};
  const int32_t wmul[2] = {16384, 32768};
  Options geom;
  geom.ints = {{"stride_h", 1}, {"stride_w", 1}, {"pad_top", 0}, {"pad_left", 0}};
  Options geom_int8 = geom;
  geom_int8.floats = {{"w_scale_max", 0.02f}};
  Tensors t;
  const int gi = t.Add({1, 2}, kTfLiteFloat32, g, sizeof(g));
  const int wi = t.Add({2, 3}, kTfLiteInt8, w, sizeof(w));
  const int wsi = t.Add({2}, kTfLiteFloat32, ws, sizeof(ws));
  const int wmi = t.Add({2}, kTfLiteInt32, wmul, sizeof(wmul));
  const int lr = t.AddF32(1.0f);
  const int one = t.AddF32(1.0f);
  const int out = t.AddOutput({1, 3}, kTfLiteFloat32);
  const int out_i8 = t.AddOutput({1, 3}, kTfLiteInt8);
  const int out_s = t.AddOutput({1}, kTfLiteFloat32);
  const int g_i8 = t.AddOutput({1, 2}, kTfLiteInt8);
  const TFLMRegistration reg = tfmicro_train::Register_TMT_CONV_INPUT_GRAD();
  Run r = RunOp(reg, t, {gi, kAbsent, wi, wsi, lr}, {out}, geom);
  float want[3];
  core::ConvInputGradF32(g, {1, 1, 2}, w, 1, 1, ws, {1, 1, 3}, core::ConvGeom(), want);
  Result(r.prepare == kTfLiteOk && r.invoke == kTfLiteOk &&
             std::memcmp(t.ptr<float>(out), want, sizeof(want)) == 0,
         "f32: conv input grad without scale tensors or w_scale_max");
  Result(RunOp(reg, t, {gi, one, wi, wsi, lr}, {out}, geom).prepare == kTfLiteError,
         "f32: a scale input given with a float32 gradient");
  Result(RunOp(reg, t, {gi, kAbsent, wi, wsi, lr}, {out, out_s}, geom).prepare == kTfLiteError,
         "f32: a scale output with a float32 gradient");
  Result(RunOp(reg, t, {gi, kAbsent, wi, wmi, lr}, {out}, geom).prepare == kTfLiteError,
         "f32: int32 wmul instead of float32 wscale");
  Result(RunOp(reg, t, {gi, kAbsent, wi, wsi, lr}, {out_i8}, geom).prepare == kTfLiteError,
         "f32: an int8 output gradient");
  Result(RunOp(reg, t, {g_i8, kAbsent, wi, wmi, lr}, {out_i8, out_s}, geom_int8).prepare ==
             kTfLiteError,
         "int8: the scale input absent");
  Result(RunOp(reg, t, {g_i8, one, wi, wmi, lr}, {out_i8, out_s}, geom).prepare == kTfLiteError,
         "int8: w_scale_max missing");
  Result(RunOp(reg, t, {g_i8, one, wi, wmi, lr}, {out_i8, out_s}, geom_int8).prepare == kTfLiteOk,
         "int8: conv input grad with scale tensors and w_scale_max");
  {
    const TFLMRegistration add = tfmicro_train::Register_TMT_GRAD_ADD();
    const int sum = t.AddOutput({1, 2}, kTfLiteFloat32);
    r = RunOp(add, t, {gi, kAbsent, gi, kAbsent, lr}, {sum}, Options());
    Result(r.prepare == kTfLiteOk && r.invoke == kTfLiteOk && t.ptr<float>(sum)[0] == 1.0f &&
               t.ptr<float>(sum)[1] == -0.5f,
           "f32: grad add");
    Result(RunOp(add, t, {gi, kAbsent, g_i8, kAbsent, lr}, {sum}, Options()).prepare == kTfLiteError,
           "f32: grad add of a float32 and an int8 gradient");
  }
  // Loss: lr == 0 writes loss 0 (output 1) and leaves the gradient and the counter; lr > 0
  // computes and advances state[1]; lr < 0 fails. Three outputs with a float32 gradient fail.
  const int8_t probs[4] = {-128, 100, -100, 0};
  std::vector<float> lut(256, 2.5f);
  for (float lrv : {0.0f, -1.0f, 1.0f}) {
    Tensors u;
    const std::vector<int> in = {u.Add({1, 4}, kTfLiteInt8, probs, 4), u.AddI32(1), u.AddF32(lrv),
                                 u.Add({256}, kTfLiteFloat32, lut.data(), 256 * 4), u.AddState(10)};
    const std::vector<int> outs = {u.AddOutput({1, 4}, kTfLiteFloat32),
                                   u.AddOutput({1}, kTfLiteFloat32)};
    const std::string tag = "f32 softmax lr=" + std::to_string(lrv);
    r = RunOp(tfmicro_train::Register_TMT_SOFTMAX_CE_GRAD(), u, in, outs, Options());
    const uint32_t step = static_cast<uint32_t>(u.ptr<int32_t>(in[4])[1]);
    const float* grad = u.ptr<float>(outs[0]);
    if (lrv == 0.0f) {
      uint32_t g0;
      std::memcpy(&g0, grad, 4);
      Result(r.invoke == kTfLiteOk && u.ptr<float>(outs[1])[0] == 0.0f && g0 == 0x5a5a5a5au &&
                 step == 10,
             tag + ": inference call writes loss 0 only");
    } else if (lrv < 0.0f) {
      Result(r.invoke == kTfLiteError && step == 10, tag + ": fails, leaves state[1]");
    } else {
      Result(r.invoke == kTfLiteOk && u.ptr<float>(outs[1])[0] == 2.5f && grad[0] == 0.0f &&
                 grad[1] == 228.0f / 256.0f - 1.0f && grad[3] == 0.5f && step == 11,
             tag + ": gradient, loss, state[1] advanced");
    }
    const int extra = u.AddOutput({1}, kTfLiteFloat32);
    Result(RunOp(tfmicro_train::Register_TMT_SOFTMAX_CE_GRAD(), u, in, {outs[0], extra, outs[1]},
                 Options()).prepare == kTfLiteError,
           tag + ": a gradient-scale output with a float32 gradient");
  }
}

}  // namespace

int main(int argc, char** argv) {
  TestResolver();
  TestLossGate();
  TestUpdateCounter();
  TestInit();
  TestSlicedWeights();
  TestPrepareErrors();
  TestF32Mode();
  std::string golden;
  if (argc > 1) {
    golden = argv[1];
  } else if (const char* env = std::getenv("TMT_GOLDEN_DIR")) {
    golden = env;
  }
  if (!golden.empty()) {
    ReplayGolden(golden);
  } else {
    std::printf("glue_test: no golden files given (argv[1] or TMT_GOLDEN_DIR): golden replay skipped\n");
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
