// Tests of the TFLM glue (tflm_ops/tflm/training_ops.cc) through TFLM's KernelRunner:
//
// 1. hand-written checks: registration in a MicroMutableOpResolver, the learning-rate
//    gate, the update counter, option / type / shape errors;
// 2. golden replay (when given golden files: argv[1] or $TMT_GOLDEN_DIR): every case is
//    run through Init/Prepare/Eval with flexbuffer options built here, with and without
//    `use_scratch`, and compared bit for bit. Update-op cases need counter == 0 (a fresh
//    op); write them with `python3 tests/golden/make_golden.py DIR --counter0`; other
//    update cases are only run, not compared.
//
// Prints "<passed> passed, <failed> failed" and exits 1 on any failure.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "flatbuffers/flexbuffers.h"
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/kernels/kernel_runner.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/micro/test_helpers.h"
#include "tflm_ops/core/training_ops.h"
#include "tflm_ops/tests/golden_reader.h"
#include "tflm_ops/tflm/training_ops.h"

namespace {

using tmt_golden::Array;
using tmt_golden::Case;

int g_passed = 0;
int g_failed = 0;
int g_uncompared = 0;

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
  void Quantize(int i, float scale, int zero_point) {
    tensors_[i].params = {scale, zero_point};
    tensors_[i].quantization = {kTfLiteAffineQuantization, nullptr};
  }
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

// Init + Prepare + `invokes` x Invoke of `reg` on the given tensors.
Run RunOp(const TFLMRegistration& reg, Tensors& t, const std::vector<int>& inputs,
          const std::vector<int>& outputs, const Options& opts, int invokes = 1) {
  std::vector<int> in_arr = {static_cast<int>(inputs.size())};
  in_arr.insert(in_arr.end(), inputs.begin(), inputs.end());
  std::vector<int> out_arr = {static_cast<int>(outputs.size())};
  out_arr.insert(out_arr.end(), outputs.begin(), outputs.end());
  tflite::micro::KernelRunner runner(reg, t.data(), t.size(),
                                     tflite::testing::IntArrayFromInts(in_arr.data()),
                                     tflite::testing::IntArrayFromInts(out_arr.data()), nullptr);
  const std::vector<uint8_t> buf = opts.Build();
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

// Runs one golden case through the glue; returns "" or what went wrong.
std::string ReplayCase(const Case& c, bool use_scratch, bool* compared) {
  *compared = true;
  Tensors t;
  Options o;
  std::vector<int> in, out;
  std::string msg;
  const std::string& op = c.op;
  TFLMRegistration reg = {};
  bool found = false;
  const tfmicro_train::TrainingOpEntry* ops = tfmicro_train::TrainingOps();
  for (unsigned i = 0; i < tfmicro_train::kNumTrainingOps; ++i) {
    if (op == ops[i].name) {
      reg = ops[i].registration();
      found = true;
    }
  }
  if (!found) return "no registration";
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
  std::string e;
  if (op == "TMT_SOFTMAX_CE_GRAD") {
    const Array& probs = c.array("probs");
    in = {t.AddArray(probs), t.AddI32(static_cast<int32_t>(c.i64("label"))), t.AddF32(kLr),
          t.AddArray(c.array("loss_lut"))};
    out = {t.AddOutput(DimsOf(probs), kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32),
           t.AddOutput({1}, kTfLiteFloat32)};
    const Run r = RunOp(reg, t, in, out, o);
    if (c.has("error")) return (r.prepare == kTfLiteOk && r.invoke == kTfLiteError) ? "" : "expected a label error";
    if (r.prepare != kTfLiteOk || r.invoke != kTfLiteOk) return "failed";
    if (!(e = expect_i8(out[0], "out_grad")).empty()) return e;
    if (!(e = expect_f32(out[1], "out_grad_scale")).empty()) return e;
    return expect_f32(out[2], "out_loss");
  }
  if (op == "TMT_MSE_GRAD") {
    const Array& y = c.array("y");
    in = {t.AddArray(y), t.AddArray(c.array("target")), t.AddF32(kLr)};
    t.Quantize(in[0], c.f32("scale"), 3);
    t.Quantize(in[1], c.f32("scale"), 3);
    out = {t.AddOutput(DimsOf(y), kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32),
           t.AddOutput({1}, kTfLiteFloat32)};
    if (!(e = run()).empty()) return e;
    if (!(e = expect_i8(out[0], "out_grad")).empty()) return e;
    if (!(e = expect_f32(out[1], "out_grad_scale")).empty()) return e;
    return expect_f32(out[2], "out_loss");
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
    in = {t.AddArray(c.array("g")), t.AddF32(c.f32("s")), t.AddArray(c.array("w")),
          t.AddArray(c.array("wmul")), t.AddF32(kLr)};
    out = {t.AddOutput(ShapeOf(c, "in_shape"), kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32)};
    o.floats.push_back({"w_scale_max", c.f32("w_scale_max")});
    AddGeom(c, &o);
    if (!(e = run()).empty()) return e;
    if (!(e = expect_i8(out[0], "out_g_in")).empty()) return e;
    return expect_f32(out[1], "out_s_in");
  }
  if (op == "TMT_CONV_WEIGHT_UPDATE" || op == "TMT_DW_WEIGHT_UPDATE" || op == "TMT_BIAS_UPDATE") {
    const bool bias = op == "TMT_BIAS_UPDATE";
    const float lr = c.f32("lr");
    int p;  // the updated parameter tensor
    if (bias) {
      in = {t.AddArray(c.array("g")), t.AddF32(c.f32("s")), p = t.AddArray(c.array("b")),
            t.AddArray(c.array("bfactor")), t.AddF32(lr)};
    } else {
      in = {t.AddArray(c.array("g")), t.AddF32(c.f32("s")), t.AddArray(c.array("x")),
            p = t.AddArray(c.array("w")), t.AddArray(c.array("wfactor")), t.AddF32(lr)};
      AddGeom(c, &o);
      o.ints.push_back({"x_zero_point", c.i64("x_zero_point")});
    }
    o.ints.push_back({"update_channels", c.i64("update_channels")});
    o.ints.push_back({"seed", c.i64("seed")});
    if (!(e = run()).empty()) return e;
    const char* before = bias ? "b" : "w";
    const char* after = bias ? "out_b" : "out_w";
    if (lr == 0.0f) {  // inference call: the parameter must be untouched
      const bool same = bias ? Same(c.array(before), t.ptr<int32_t>(p), t.elements(p), &msg)
                             : Same(c.array(before), t.ptr<int8_t>(p), t.elements(p), &msg);
      return same ? "" : std::string("lr == 0 changed the parameter: ") + msg;
    }
    if (c.i64("counter") != 0) {
      *compared = false;
      return "";
    }
    const bool same = bias ? Same(c.array(after), t.ptr<int32_t>(p), t.elements(p), &msg)
                           : Same(c.array(after), t.ptr<int8_t>(p), t.elements(p), &msg);
    return same ? "" : std::string(after) + ": " + msg;
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
        bool compared = true;
        std::string problem;
        try {
          problem = ReplayCase(c, scratch, &compared);
        } catch (const tmt_golden::GoldenError& e) {
          problem = std::string("bad case: ") + e.what();
        }
        if (!compared) {
          ++g_uncompared;
          continue;
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
  if (g_uncompared) std::printf("glue: %d update runs with counter != 0 not compared\n", g_uncompared);
}

// ------------------------------------------------------------------ hand-written checks

void TestResolver() {
  tflite::MicroMutableOpResolver<tfmicro_train::kNumTrainingOps + 1> resolver;
  Result(resolver.AddFullyConnected() == kTfLiteOk, "resolver: AddFullyConnected");
  Result(tfmicro_train::RegisterTrainingOps(resolver) == kTfLiteOk, "resolver: RegisterTrainingOps");
  Result(resolver.FindOp("TMT_CONV_WEIGHT_UPDATE") != nullptr, "resolver: FindOp(TMT_CONV_WEIGHT_UPDATE)");
  Result(resolver.FindOp("TMT_SOFTMAX_CE_GRAD") != nullptr, "resolver: FindOp(TMT_SOFTMAX_CE_GRAD)");
  tflite::MicroMutableOpResolver<3> small;
  Result(tfmicro_train::RegisterTrainingOps(&small) == kTfLiteError, "resolver: too small must fail");
}

// Softmax loss: lr == 0 writes zeros; lr < 0 fails; label out of range fails.
void TestLossGate() {
  const int8_t probs[4] = {-128, 100, -100, 0};
  std::vector<float> lut(256, 2.5f);
  for (float lr : {0.0f, -1.0f, NAN, 1.0f}) {
    Tensors t;
    std::vector<int> in = {t.Add({1, 4}, kTfLiteInt8, probs, 4), t.AddI32(1), t.AddF32(lr),
                           t.Add({256}, kTfLiteFloat32, lut.data(), 256 * 4)};
    std::vector<int> out = {t.AddOutput({1, 4}, kTfLiteInt8), t.AddOutput({1}, kTfLiteFloat32),
                            t.AddOutput({1}, kTfLiteFloat32)};
    const Run r = RunOp(tfmicro_train::Register_TMT_SOFTMAX_CE_GRAD(), t, in, out, Options());
    const std::string tag = "softmax lr=" + std::to_string(lr);
    Result(r.prepare == kTfLiteOk, tag + ": prepare");
    if (lr == 0.0f) {
      Result(r.invoke == kTfLiteOk && t.ptr<float>(out[1])[0] == 0.0f && t.ptr<float>(out[2])[0] == 0.0f,
             tag + ": inference call writes loss 0, scale 0");
    } else if (!(lr > 0.0f)) {
      Result(r.invoke == kTfLiteError, tag + ": must fail");
    } else {
      Result(r.invoke == kTfLiteOk && t.ptr<float>(out[2])[0] == 2.5f &&
                 t.ptr<float>(out[1])[0] == 1.0f / 128.0f && t.ptr<int8_t>(out[0])[1] == -14,
             tag + ": loss, scale, grad");
    }
  }
}

// Two invokes of a weight update use counters 0 and 1 (checked against the core).
void TestUpdateCounter() {
  const int8_t g[4] = {50, -70, 127, 3};    // [1, 2, 2, 1]
  const int8_t x[4] = {10, -128, 127, 33};  // [1, 2, 2, 1]
  const int8_t w0[1] = {5};                 // [1, 1, 1, 1]
  const float wf[1] = {0.37f};
  const float s = 0.01f, lr = 0.003f;
  Options o;
  o.ints = {{"stride_h", 1}, {"stride_w", 1}, {"pad_top", 0}, {"pad_left", 0},
            {"x_zero_point", -3}, {"update_channels", 1}, {"seed", 777}};
  Tensors t;
  const int wi = 3;
  std::vector<int> in = {t.Add({1, 2, 2, 1}, kTfLiteInt8, g, 4), t.AddF32(s),
                         t.Add({1, 2, 2, 1}, kTfLiteInt8, x, 4), t.Add({1, 1, 1, 1}, kTfLiteInt8, w0, 1),
                         t.Add({1}, kTfLiteFloat32, wf, 4), t.AddF32(lr)};
  Result(in[3] == wi, "counter: tensor layout");
  const Run r = RunOp(tfmicro_train::Register_TMT_CONV_WEIGHT_UPDATE(), t, in, {}, o, 2);
  Result(r.prepare == kTfLiteOk && r.invoke == kTfLiteOk, "counter: two invokes");
  int8_t want = w0[0];
  tfmicro_train::core::ConvGeom geom;
  tfmicro_train::core::UpdateParams p;
  p.update_channels = 1;
  p.seed = 777;
  p.x_zero_point = -3;
  for (uint32_t counter = 0; counter < 2; ++counter) {
    tfmicro_train::core::ConvWeightUpdate(g, s, {2, 2, 1}, x, {2, 2, 1}, &want, 1, 1, wf, lr, geom,
                                          p, counter);
  }
  Result(t.ptr<int8_t>(wi)[0] == want, "counter: weights after two steps (counters 0, 1) = " +
                                           std::to_string(want) + ", got " +
                                           std::to_string(t.ptr<int8_t>(wi)[0]));
}

// Prepare rejects missing options, wrong types and inconsistent shapes.
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
    Tensors t;  // TMT_BIAS_UPDATE with update_channels > channels
    const int32_t b[2] = {};
    const float bf[2] = {};
    std::vector<int> in = {t.Add({1, 2}, kTfLiteInt8, g, 2), t.AddF32(1.0f),
                           t.Add({2}, kTfLiteInt32, b, 8), t.Add({2}, kTfLiteFloat32, bf, 8),
                           t.AddF32(1.0f)};
    Options o;
    o.ints = {{"update_channels", 3}, {"seed", 1}};
    Result(RunOp(tfmicro_train::Register_TMT_BIAS_UPDATE(), t, in, {}, o).prepare == kTfLiteError,
           "prepare: update_channels > channels");
  }
}

}  // namespace

int main(int argc, char** argv) {
  TestResolver();
  TestLossGate();
  TestUpdateCounter();
  TestPrepareErrors();
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
