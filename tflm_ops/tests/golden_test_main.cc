// golden_test [DIR_OR_FILE...]: replays golden cases written by the numpy reference
// (tests/golden/golden_cases.py) against the C++ cores and compares bit for bit.
//
// Without arguments it reads the directory in $TMT_GOLDEN_DIR; with neither it prints
// how to make one and exits 0 (so a plain `bazel test //...` passes; the real check
// runs from `pytest tests/test_golden_cpp.py`, or with
//   python3 tests/golden/make_golden.py /tmp/golden
//   bazel test //tflm_ops/tests:golden_test --test_env=TMT_GOLDEN_DIR=/tmp/golden
// ).
//
// Ops with a dyn-quantized output run twice: with an int64 scratch buffer and
// without (recompute mode); both must match. The fp32-backward variants are the ops
// named `<op>_F32` (tflm_ops/core/training_ops_f32.h); their outputs start poisoned with
// NaN bit patterns, so every element must be written. Prints one line per op:
//   golden TMT_X: <n> cases, <m> mismatches
// and a final "<passed> passed, <failed> failed" line; exits 1 on any failure.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "tflm_ops/core/conv_op.h"
#include "tflm_ops/core/fused_irb.h"
#include "tflm_ops/core/training_ops.h"
#include "tflm_ops/core/training_ops_f32.h"
#include "tflm_ops/tests/golden_reader.h"

namespace {

using tfmicro_train::core::ConvGeom;
using tfmicro_train::core::Hwc;
using tfmicro_train::core::PoolParams;
using tfmicro_train::core::Status;
using tfmicro_train::core::UpdateParams;
using tmt_golden::Array;
using tmt_golden::Case;
namespace core = tfmicro_train::core;

// Thrown by a checker to report a mismatch (message says what differs).
struct Mismatch {
  std::string what;
};

// [1, C] -> {1, 1, C}; [1, H, W, C] -> {H, W, C}; anything else -> flattened as [1, N].
Hwc HwcOf(const std::vector<int64_t>& d) {
  Hwc r;
  if (d.size() == 4) {
    r.h = static_cast<int32_t>(d[1]);
    r.w = static_cast<int32_t>(d[2]);
    r.c = static_cast<int32_t>(d[3]);
  } else if (d.size() == 2) {
    r.c = static_cast<int32_t>(d[1]);
  } else {
    int64_t n = 1;
    for (int64_t v : d) n *= v;
    r.c = static_cast<int32_t>(n);
  }
  return r;
}

std::vector<int64_t> ShapeEntry(const Case& c, const std::string& key) {
  const Array& a = c.array(key);
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < a.size(); ++i) dims.push_back(a.int_at(i));
  return dims;
}

ConvGeom GeomOf(const Case& c) {
  ConvGeom g;
  g.stride_h = static_cast<int32_t>(c.i64("stride_h"));
  g.stride_w = static_cast<int32_t>(c.i64("stride_w"));
  g.pad_top = static_cast<int32_t>(c.i64("pad_top"));
  g.pad_left = static_cast<int32_t>(c.i64("pad_left"));
  return g;
}

template <typename T>
void Expect(const Case& c, const std::string& key, const std::vector<T>& got) {
  std::string msg;
  if (!tmt_golden::CompareExact(c.array(key), got, &msg)) throw Mismatch{key + ": " + msg};
}

void ExpectF32(const Case& c, const std::string& key, float got) {
  std::string msg;
  if (!tmt_golden::CompareExact(c.array(key), &got, 1, &msg)) throw Mismatch{key + ": " + msg};
}

void ExpectOk(Status s, const char* what) {
  if (s != Status::kOk) throw Mismatch{std::string(what) + " returned " + core::StatusString(s)};
}

// Runs fn(scratch) with and without scratch; returns the scratch run's results after
// checking both agree via `check` (called once per run).
void BothModes(int64_t n, const std::function<void(int64_t*)>& run_and_check) {
  std::vector<int64_t> scratch(static_cast<size_t>(std::max<int64_t>(n, 1)), 0x5a5a5a5a5a5a5a5a);
  run_and_check(scratch.data());
  run_and_check(nullptr);
}

// ------------------------------------------------------------------ checkers

void CheckSoftmaxCeGrad(const Case& c) {
  const Array& probs = c.array_of<int8_t>("probs");
  const int32_t n = static_cast<int32_t>(probs.size());
  const int32_t label = static_cast<int32_t>(c.i64("label"));
  std::vector<int8_t> grad(n);
  float gs = -1, loss = -1;
  const Status st = core::SoftmaxCeGrad(probs.data<int8_t>(), n, label,
                                        c.array_of<float>("loss_lut").data<float>(), grad.data(),
                                        &gs, &loss);
  if (c.has("error")) {
    if (st != Status::kLabelOutOfRange) throw Mismatch{"expected label error, got ok"};
    return;
  }
  ExpectOk(st, "SoftmaxCeGrad");
  Expect(c, "out_grad", grad);
  ExpectF32(c, "out_grad_scale", gs);
  ExpectF32(c, "out_loss", loss);
}

void CheckMseGrad(const Case& c) {
  const Array& y = c.array_of<int8_t>("y");
  const int32_t n = static_cast<int32_t>(y.size());
  std::vector<int8_t> grad(n);
  float gs = -1, loss = -1;
  ExpectOk(core::MseGrad(y.data<int8_t>(), c.array_of<int8_t>("target").data<int8_t>(), n,
                         c.f32("scale"), grad.data(), &gs, &loss),
           "MseGrad");
  Expect(c, "out_grad", grad);
  ExpectF32(c, "out_grad_scale", gs);
  ExpectF32(c, "out_loss", loss);
}

void CheckActGrad(const Case& c) {
  const Array& g = c.array_of<int8_t>("g");
  std::vector<int8_t> out(g.size());
  ExpectOk(core::ActGrad(g.data<int8_t>(), c.array_of<int8_t>("y").data<int8_t>(),
                         static_cast<int32_t>(g.size()), static_cast<int32_t>(c.i64("act_min")),
                         static_cast<int32_t>(c.i64("act_max")), out.data()),
           "ActGrad");
  Expect(c, "out_g", out);
}

void CheckMaskPack(const Case& c) {
  const Array& y = c.array_of<int8_t>("y");
  const int32_t n = static_cast<int32_t>(y.size());
  std::vector<uint8_t> bits((n + 7) / 8, 0xAA);
  ExpectOk(core::MaskPack(y.data<int8_t>(), n, static_cast<int32_t>(c.i64("act_min")),
                          static_cast<int32_t>(c.i64("act_max")), bits.data()),
           "MaskPack");
  Expect(c, "out_bits", bits);
}

void CheckMaskGrad(const Case& c) {
  const Array& g = c.array_of<int8_t>("g");
  const int32_t n = static_cast<int32_t>(g.size());
  std::vector<int8_t> out(g.data<int8_t>(), g.data<int8_t>() + n);  // in place, as planned
  ExpectOk(core::MaskGrad(out.data(), c.array_of<uint8_t>("bits").data<uint8_t>(), n, out.data()),
           "MaskGrad");
  Expect(c, "out_g", out);
}

void CheckGradAdd(const Case& c) {
  const Array& g1 = c.array_of<int8_t>("g1");
  const int32_t n = static_cast<int32_t>(g1.size());
  BothModes(n, [&](int64_t* scratch) {
    std::vector<int8_t> out(n, 99);
    float s = -1;
    ExpectOk(core::GradAdd(g1.data<int8_t>(), c.f32("s1"), c.array_of<int8_t>("g2").data<int8_t>(),
                           c.f32("s2"), n, out.data(), &s, scratch),
             "GradAdd");
    Expect(c, "out_g", out);
    ExpectF32(c, "out_s", s);
  });
}

void CheckMeanGrad(const Case& c) {
  const Hwc in = HwcOf(ShapeEntry(c, "in_shape"));
  std::vector<int8_t> out(in.size(), 99);
  float s = -1;
  ExpectOk(core::MeanGrad(c.array_of<int8_t>("g").data<int8_t>(), c.f32("s"), in,
                          c.f32("inv_count"), out.data(), &s),
           "MeanGrad");
  Expect(c, "out_g_in", out);
  ExpectF32(c, "out_s_in", s);
}

void CheckPadGrad(const Case& c) {
  const Array& g = c.array_of<int8_t>("g");
  const Hwc in = HwcOf(ShapeEntry(c, "in_shape"));
  std::vector<int8_t> out(in.size(), 99);
  ExpectOk(core::PadGrad(g.data<int8_t>(), HwcOf(g.dims), in,
                         static_cast<int32_t>(c.i64("pad_top")),
                         static_cast<int32_t>(c.i64("pad_left")), out.data()),
           "PadGrad");
  Expect(c, "out_g_in", out);
}

void CheckReshapeGrad(const Case& c) {
  const Array& g = c.array_of<int8_t>("g");
  std::vector<int64_t> shape = ShapeEntry(c, "in_shape");
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n != g.size()) throw Mismatch{"in_shape has another element count than g"};
  std::vector<int8_t> out(static_cast<size_t>(n), 99);
  ExpectOk(core::ReshapeGrad(g.data<int8_t>(), static_cast<int32_t>(n), out.data()), "ReshapeGrad");
  Expect(c, "out_g_in", out);
}

PoolParams PoolOf(const Case& c) {
  PoolParams p;
  p.filter_h = static_cast<int32_t>(c.i64("filter_h"));
  p.filter_w = static_cast<int32_t>(c.i64("filter_w"));
  p.geom = GeomOf(c);
  return p;
}

void CheckAvgPoolGrad(const Case& c) {
  const Array& g = c.array_of<int8_t>("g");
  const Hwc in = HwcOf(ShapeEntry(c, "in_shape"));
  BothModes(in.size(), [&](int64_t* scratch) {
    std::vector<int8_t> out(in.size(), 99);
    float s = -1;
    ExpectOk(core::AvgPoolGrad(g.data<int8_t>(), c.f32("s"), HwcOf(g.dims), in, PoolOf(c),
                               out.data(), &s, scratch),
             "AvgPoolGrad");
    Expect(c, "out_g_in", out);
    ExpectF32(c, "out_s_in", s);
  });
}

void CheckMaxPoolGrad(const Case& c) {
  const Array& g = c.array_of<int8_t>("g");
  const Array& x = c.array_of<int8_t>("x");
  const Hwc in = HwcOf(x.dims);
  BothModes(in.size(), [&](int64_t* scratch) {
    std::vector<int8_t> out(in.size(), 99);
    float s = -1;
    ExpectOk(core::MaxPoolGrad(g.data<int8_t>(), c.f32("s"), x.data<int8_t>(),
                               c.array_of<int8_t>("y").data<int8_t>(), HwcOf(g.dims), in,
                               PoolOf(c), out.data(), &s, scratch),
             "MaxPoolGrad");
    Expect(c, "out_g_in", out);
    ExpectF32(c, "out_s_in", s);
  });
}

// Kernel height/width of conv weights [CO, KH, KW, CI] or [CO, CI] (-> 1, 1).
void KernelOf(const Array& w, int32_t* kh, int32_t* kw) {
  *kh = w.ndim() == 4 ? static_cast<int32_t>(w.dim(1)) : 1;
  *kw = w.ndim() == 4 ? static_cast<int32_t>(w.dim(2)) : 1;
}

// A case's weights in two parts: rows of "w" then those of "w_rest" (when present).
core::SplitWeights SplitOfCase(const Case& c) {
  core::SplitWeights sw;
  if (c.has("w_rest")) {
    sw.rest = c.array_of<int8_t>("w_rest").data<int8_t>();
    sw.split = static_cast<int32_t>(c.array("w").dim(0));
  }
  return sw;
}

int32_t RestRows(const Case& c) {
  return c.has("w_rest") ? static_cast<int32_t>(c.array("w_rest").dim(0)) : 0;
}

UpdateParams UpdateOf(const Case& c);

// A folded TMT_MEAN_GRAD (+ TMT_MASK_GRAD): 'g' holds C values broadcast over bcast_h x
// bcast_w, masked by 'mask' if present (core::GradBroadcast); the dims and scale it stands for.
core::GradBroadcast BroadcastOf(const Case& c, const Array& g, Hwc* g_dims, float* s) {
  core::GradBroadcast bc;
  if (!c.has("bcast_h")) return bc;
  bc.on = true;
  bc.mask = c.has("mask") ? c.array_of<uint8_t>("mask").data<uint8_t>() : nullptr;
  g_dims->h = static_cast<int32_t>(c.i64("bcast_h"));
  g_dims->w = static_cast<int32_t>(c.i64("bcast_w"));
  g_dims->c = static_cast<int32_t>(g.size());
  *s = core::BroadcastScale(*s, g_dims->h, g_dims->w);
  return bc;
}

// The case's TMT_BIAS_UPDATE step (its own, or one folded into an input gradient,
// tfmicro_train/updates.py): 'b' (int32, or a narrow int16) from g standing for g_elements
// values (a broadcast gradient's H * W * C, else its own) at scale s; compares 'out_b'.
template <typename Bias>
void CheckBiasStepOf(const Case& c, const Array& g, int64_t g_elements, float s,
                     const core::GradBroadcast& bc, const char* what) {
  std::vector<Bias> b = c.array_of<Bias>("b").template vec<Bias>();
  const int32_t ch = static_cast<int32_t>(b.size());
  const int32_t positions = ch ? static_cast<int32_t>(g_elements / ch) : 0;
  ExpectOk(core::BiasUpdate(g.data<int8_t>(), s, positions, ch, b.data(),
                            c.array_of<float>("bfactor").data<float>(), c.f32("lr"), UpdateOf(c),
                            static_cast<uint32_t>(c.i64("counter")), bc),
           what);
  Expect(c, "out_b", b);
}

void CheckBiasStep(const Case& c, const Array& g, int64_t g_elements, float s,
                   const core::GradBroadcast& bc, const char* what) {
  if (c.array("b").dtype == tmt_golden::DType::kInt16) {
    CheckBiasStepOf<int16_t>(c, g, g_elements, s, bc, what);
  } else {
    CheckBiasStepOf<int32_t>(c, g, g_elements, s, bc, what);
  }
}

void CheckInputGrad(const Case& c, bool depthwise) {
  const Array& g = c.array_of<int8_t>("g");
  const Array& w = c.array_of<int8_t>("w");
  const Hwc in = HwcOf(ShapeEntry(c, "in_shape"));
  int32_t kh, kw;
  KernelOf(w, &kh, &kw);
  Hwc g_dims = HwcOf(g.dims);
  float s_g = c.f32("s");
  const core::GradBroadcast bc = BroadcastOf(c, g, &g_dims, &s_g);
  BothModes(in.size(), [&](int64_t* scratch) {
    std::vector<int8_t> out(in.size(), 99);
    float s = -1;
    const int32_t* wmul = c.array_of<int32_t>("wmul").data<int32_t>();
    if (depthwise) {
      ExpectOk(core::DepthwiseInputGrad(g.data<int8_t>(), c.f32("s"), HwcOf(g.dims),
                                        w.data<int8_t>(), kh, kw, wmul, c.f32("w_scale_max"), in,
                                        GeomOf(c), out.data(), &s, scratch),
               "DepthwiseInputGrad");
    } else {
      ExpectOk(core::ConvInputGrad(g.data<int8_t>(), s_g, g_dims, w.data<int8_t>(), kh, kw,
                                   wmul, c.f32("w_scale_max"), in, GeomOf(c), out.data(), &s,
                                   scratch, SplitOfCase(c), bc),
               "ConvInputGrad");
    }
    Expect(c, "out_g_in", out);
    ExpectF32(c, "out_s_in", s);
  });
  if (c.has("out_b")) CheckBiasStep(c, g, g_dims.size(), s_g, bc, "BiasUpdate (folded)");
}

UpdateParams UpdateOf(const Case& c) {
  UpdateParams p;
  p.update_channels = static_cast<int32_t>(c.i64("update_channels"));
  p.seed = static_cast<uint32_t>(c.i64("seed"));
  p.x_zero_point = static_cast<int32_t>(c.i64_or("x_zero_point", 0));
  return p;
}

void CheckWeightUpdate(const Case& c, bool depthwise) {
  const Array& g = c.array_of<int8_t>("g");
  const Array& x = c.array_of<int8_t>("x");
  std::vector<int8_t> w = c.array_of<int8_t>("w").vec<int8_t>();
  int32_t kh, kw;
  KernelOf(c.array("w"), &kh, &kw);
  const auto fn = depthwise ? core::DepthwiseWeightUpdate : core::ConvWeightUpdate;
  ExpectOk(fn(g.data<int8_t>(), c.f32("s"), HwcOf(g.dims), x.data<int8_t>(), HwcOf(x.dims),
              w.data(), kh, kw, c.array_of<float>("wfactor").data<float>(), c.f32("lr"),
              GeomOf(c), UpdateOf(c), static_cast<uint32_t>(c.i64("counter"))),
           depthwise ? "DepthwiseWeightUpdate" : "ConvWeightUpdate");
  Expect(c, "out_w", w);
}

// An int32 bias, or a narrow (int16) one: the same step, saturating at the type's range.
void CheckBiasUpdate(const Case& c) {
  const Array& g = c.array_of<int8_t>("g");
  Hwc g_dims;
  float s = c.f32("s");
  const core::GradBroadcast bc = BroadcastOf(c, g, &g_dims, &s);
  CheckBiasStep(c, g, bc.on ? g_dims.size() : g.size(), s, bc, "BiasUpdate");
}

// ------------------------------------------------------------------ fp32 backward checkers

// An output buffer poisoned with a NaN pattern: an element the core does not write mismatches.
std::vector<float> Poisoned(int64_t n) {
  const uint32_t bits = 0x7FA5A5A5u;
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return std::vector<float>(static_cast<size_t>(n), v);
}

void CheckSoftmaxCeGradF32(const Case& c) {
  const Array& probs = c.array_of<int8_t>("probs");
  const int32_t n = static_cast<int32_t>(probs.size());
  std::vector<float> grad = Poisoned(n);
  float loss = -1;
  const Status st = core::SoftmaxCeGradF32(probs.data<int8_t>(), n,
                                           static_cast<int32_t>(c.i64("label")),
                                           c.array_of<float>("loss_lut").data<float>(),
                                           grad.data(), &loss);
  if (c.has("error")) {
    if (st != Status::kLabelOutOfRange) throw Mismatch{"expected label error, got ok"};
    return;
  }
  ExpectOk(st, "SoftmaxCeGradF32");
  Expect(c, "out_grad", grad);
  ExpectF32(c, "out_loss", loss);
}

void CheckMseGradF32(const Case& c) {
  const Array& y = c.array_of<int8_t>("y");
  const int32_t n = static_cast<int32_t>(y.size());
  std::vector<float> grad = Poisoned(n);
  float loss = -1;
  ExpectOk(core::MseGradF32(y.data<int8_t>(), c.array_of<int8_t>("target").data<int8_t>(), n,
                            c.f32("scale"), grad.data(), &loss),
           "MseGradF32");
  Expect(c, "out_grad", grad);
  ExpectF32(c, "out_loss", loss);
}

void CheckActGradF32(const Case& c) {
  const Array& g = c.array_of<float>("g");
  const int32_t n = static_cast<int32_t>(g.size());
  // out of place, then in place (the output over 'g')
  std::vector<float> out = Poisoned(n);
  ExpectOk(core::ActGradF32(g.data<float>(), c.array_of<int8_t>("y").data<int8_t>(), n,
                            static_cast<int32_t>(c.i64("act_min")),
                            static_cast<int32_t>(c.i64("act_max")), out.data()),
           "ActGradF32");
  Expect(c, "out_g", out);
  std::vector<float> io = g.vec<float>();
  ExpectOk(core::ActGradF32(io.data(), c.array_of<int8_t>("y").data<int8_t>(), n,
                            static_cast<int32_t>(c.i64("act_min")),
                            static_cast<int32_t>(c.i64("act_max")), io.data()),
           "ActGradF32(in place)");
  Expect(c, "out_g", io);
}

void CheckMaskGradF32(const Case& c) {
  const Array& g = c.array_of<float>("g");
  const int32_t n = static_cast<int32_t>(g.size());
  const uint8_t* bits = c.array_of<uint8_t>("bits").data<uint8_t>();
  std::vector<float> out = Poisoned(n);
  ExpectOk(core::MaskGradF32(g.data<float>(), bits, n, out.data()), "MaskGradF32");
  Expect(c, "out_g", out);
  std::vector<float> io = g.vec<float>();  // in place, as planned
  ExpectOk(core::MaskGradF32(io.data(), bits, n, io.data()), "MaskGradF32(in place)");
  Expect(c, "out_g", io);
}

void CheckGradAddF32(const Case& c) {
  const Array& g1 = c.array_of<float>("g1");
  const int32_t n = static_cast<int32_t>(g1.size());
  std::vector<float> out = Poisoned(n);
  ExpectOk(core::GradAddF32(g1.data<float>(), c.array_of<float>("g2").data<float>(), n,
                            out.data()),
           "GradAddF32");
  Expect(c, "out_g", out);
}

void CheckMeanGradF32(const Case& c) {
  const Hwc in = HwcOf(ShapeEntry(c, "in_shape"));
  std::vector<float> out = Poisoned(in.size());
  ExpectOk(core::MeanGradF32(c.array_of<float>("g").data<float>(), in, c.f32("inv_count"),
                             out.data()),
           "MeanGradF32");
  Expect(c, "out_g_in", out);
}

void CheckPadGradF32(const Case& c) {
  const Array& g = c.array_of<float>("g");
  const Hwc in = HwcOf(ShapeEntry(c, "in_shape"));
  std::vector<float> out = Poisoned(in.size());
  ExpectOk(core::PadGradF32(g.data<float>(), HwcOf(g.dims), in,
                            static_cast<int32_t>(c.i64("pad_top")),
                            static_cast<int32_t>(c.i64("pad_left")), out.data()),
           "PadGradF32");
  Expect(c, "out_g_in", out);
}

void CheckReshapeGradF32(const Case& c) {
  const Array& g = c.array_of<float>("g");
  std::vector<int64_t> shape = ShapeEntry(c, "in_shape");
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n != g.size()) throw Mismatch{"in_shape has another element count than g"};
  std::vector<float> out = Poisoned(n);
  ExpectOk(core::ReshapeGradF32(g.data<float>(), static_cast<int32_t>(n), out.data()),
           "ReshapeGradF32");
  Expect(c, "out_g_in", out);
}

void CheckAvgPoolGradF32(const Case& c) {
  const Array& g = c.array_of<float>("g");
  const Hwc in = HwcOf(ShapeEntry(c, "in_shape"));
  std::vector<float> out = Poisoned(in.size());
  ExpectOk(core::AvgPoolGradF32(g.data<float>(), HwcOf(g.dims), in, PoolOf(c), out.data()),
           "AvgPoolGradF32");
  Expect(c, "out_g_in", out);
}

void CheckMaxPoolGradF32(const Case& c) {
  const Array& g = c.array_of<float>("g");
  const Array& x = c.array_of<int8_t>("x");
  const Hwc in = HwcOf(x.dims);
  std::vector<float> out = Poisoned(in.size());
  ExpectOk(core::MaxPoolGradF32(g.data<float>(), x.data<int8_t>(),
                                c.array_of<int8_t>("y").data<int8_t>(), HwcOf(g.dims), in,
                                PoolOf(c), out.data()),
           "MaxPoolGradF32");
  Expect(c, "out_g_in", out);
}

void CheckInputGradF32(const Case& c, bool depthwise) {
  const Array& g = c.array_of<float>("g");
  const Array& w = c.array_of<int8_t>("w");
  const Hwc in = HwcOf(ShapeEntry(c, "in_shape"));
  int32_t kh, kw;
  KernelOf(w, &kh, &kw);
  std::vector<float> out = Poisoned(in.size());
  const float* wscale = c.array_of<float>("wscale").data<float>();
  if (depthwise) {
    ExpectOk(core::DepthwiseInputGradF32(g.data<float>(), HwcOf(g.dims), w.data<int8_t>(), kh, kw,
                                         wscale, in, GeomOf(c), out.data()),
             "DepthwiseInputGradF32");
  } else {
    ExpectOk(core::ConvInputGradF32(g.data<float>(), HwcOf(g.dims), w.data<int8_t>(), kh, kw,
                                    wscale, in, GeomOf(c), out.data(), SplitOfCase(c)),
             "ConvInputGradF32");
  }
  Expect(c, "out_g_in", out);
}

void CheckWeightUpdateF32(const Case& c, bool depthwise) {
  const Array& g = c.array_of<float>("g");
  const Array& x = c.array_of<int8_t>("x");
  std::vector<int8_t> w = c.array_of<int8_t>("w").vec<int8_t>();
  int32_t kh, kw;
  KernelOf(c.array("w"), &kh, &kw);
  const auto fn = depthwise ? core::DepthwiseWeightUpdateF32 : core::ConvWeightUpdateF32;
  ExpectOk(fn(g.data<float>(), HwcOf(g.dims), x.data<int8_t>(), HwcOf(x.dims), w.data(), kh, kw,
              c.array_of<float>("wfactor").data<float>(), c.f32("lr"), GeomOf(c), UpdateOf(c),
              static_cast<uint32_t>(c.i64("counter"))),
           depthwise ? "DepthwiseWeightUpdateF32" : "ConvWeightUpdateF32");
  Expect(c, "out_w", w);
  // The float gradient sums behind the update (the step hides their last bits).
  const UpdateParams p = UpdateOf(c);
  std::vector<float> acc = Poisoned(c.array("out_acc").size());
  const auto grad = depthwise ? core::DepthwiseWeightGradF32 : core::ConvWeightGradF32;
  ExpectOk(grad(g.data<float>(), HwcOf(g.dims), x.data<int8_t>(), HwcOf(x.dims), kh, kw,
                GeomOf(c), p.update_channels, p.x_zero_point, acc.data()),
           depthwise ? "DepthwiseWeightGradF32" : "ConvWeightGradF32");
  Expect(c, "out_acc", acc);
}

void CheckBiasUpdateF32(const Case& c) {
  const Array& g = c.array_of<float>("g");
  std::vector<int32_t> b = c.array_of<int32_t>("b").vec<int32_t>();
  const int32_t ch = static_cast<int32_t>(b.size());
  const int32_t positions = ch ? static_cast<int32_t>(g.size() / ch) : 0;
  ExpectOk(core::BiasUpdateF32(g.data<float>(), positions, ch, b.data(),
                               c.array_of<float>("bfactor").data<float>(), c.f32("lr"),
                               UpdateOf(c), static_cast<uint32_t>(c.i64("counter"))),
           "BiasUpdateF32");
  Expect(c, "out_b", b);
  const int32_t n = static_cast<int32_t>(c.i64("update_channels"));
  std::vector<float> acc = Poisoned(n);
  ExpectOk(core::BiasGradF32(g.data<float>(), positions, ch, n, acc.data()), "BiasGradF32");
  Expect(c, "out_acc", acc);
  const Array& t = c.array_of<float>("q16_in");
  std::vector<int64_t> q(static_cast<size_t>(t.size()));
  for (int64_t i = 0; i < t.size(); ++i) q[static_cast<size_t>(i)] = core::Q16FromF32(t.data<float>()[i]);
  Expect(c, "out_q16", q);
}

// TMT_FUSED_IRB (forward op): PrepareFusedIrb from the float scales, then the row-streamed
// kernel on poisoned scratch, with the per-channel words in separate memory (exactly
// FusedIrbStreamBytes of scratch; guard bytes must stay intact) and in the scratch's tail.
core::TensorQuant QuantOf(const Case& c, const std::string& scale, const std::string& zp) {
  core::TensorQuant q;
  q.scale = c.f32(scale);
  q.zero_point = static_cast<int32_t>(c.i64(zp));
  return q;
}

core::WeightScales ScalesOf(const Case& c, const std::string& key) {
  const Array& a = c.array_of<float>(key);
  core::WeightScales w;
  w.scales = a.data<float>();
  w.n = static_cast<int32_t>(a.size());
  return w;
}

core::ConvSpec ConvSpecOf(const Case& c, const Array& w, const std::string& prefix) {
  core::ConvSpec s;
  s.kh = static_cast<int32_t>(w.dim(1));
  s.kw = static_cast<int32_t>(w.dim(2));
  s.stride_h = static_cast<int32_t>(c.i64(prefix + "stride_h"));
  s.stride_w = static_cast<int32_t>(c.i64(prefix + "stride_w"));
  s.dil_h = static_cast<int32_t>(c.i64(prefix + "dil_h"));
  s.dil_w = static_cast<int32_t>(c.i64(prefix + "dil_w"));
  s.padding = static_cast<int32_t>(c.i64(prefix + "padding"));
  s.act = static_cast<int32_t>(c.i64(prefix + "act"));
  return s;
}

const int32_t* OptionalBias(const Case& c, const std::string& key) {
  return c.has(key) ? c.array_of<int32_t>(key).data<int32_t>() : nullptr;
}

void CheckFusedIrb(const Case& c) {
  const Array& x = c.array_of<int8_t>("x");
  const Array& wd = c.array_of<int8_t>("w_d");
  const Array& wp = c.array_of<int8_t>("w_p");
  const Array& want = c.array_of<int8_t>("out_y");
  core::FusedIrbSpec s;
  s.x = HwcOf(x.dims);
  s.y = HwcOf(want.dims);
  s.x_q = QuantOf(c, "x_scale", "x_zp");
  s.y_q = QuantOf(c, "y_scale", "y_zp");
  s.c_exp = static_cast<int32_t>(wd.dim(3));
  s.c_out = static_cast<int32_t>(wp.dim(0));
  s.has_expand = c.i64("has_expand") != 0;
  const int8_t* we = nullptr;
  if (s.has_expand) {
    const Array& w = c.array_of<int8_t>("w_e");
    we = w.data<int8_t>();
    s.expand = ConvSpecOf(c, w, "e_");
    s.w_expand_scales = ScalesOf(c, "w_e_scales");
    s.e_q = QuantOf(c, "e_scale", "e_zp");
  }
  s.pad_top = static_cast<int32_t>(c.i64("pad_top"));
  s.pad_bottom = static_cast<int32_t>(c.i64("pad_bottom"));
  s.pad_left = static_cast<int32_t>(c.i64("pad_left"));
  s.pad_right = static_cast<int32_t>(c.i64("pad_right"));
  s.pad_value = static_cast<int32_t>(c.i64("pad_value"));
  s.d_in_q = QuantOf(c, "d_in_scale", "d_in_zp");
  s.dw = ConvSpecOf(c, wd, "d_");
  s.w_dw_scales = ScalesOf(c, "w_d_scales");
  s.d_q = QuantOf(c, "d_scale", "d_zp");
  s.project_act = static_cast<int32_t>(c.i64("p_act"));
  s.w_project_scales = ScalesOf(c, "w_p_scales");
  s.p_q = QuantOf(c, "p_scale", "p_zp");
  s.residual = static_cast<int32_t>(c.i64("residual"));
  s.add_act = static_cast<int32_t>(c.i64("add_act"));
  // mode (a): per-channel words in separate (persistent) memory
  std::vector<int32_t> words(static_cast<size_t>(core::FusedIrbChannelWords(s)), 0x5a5a5a5a);
  core::FusedIrbParams p;
  ExpectOk(core::PrepareFusedIrb(s, words.data(), &p), "PrepareFusedIrb");
  const int32_t stream = core::FusedIrbStreamBytes(p);
  const int32_t bytes = core::FusedIrbScratchBytes(p);
  if (stream != c.i64("stream_bytes") || bytes != c.i64("scratch_bytes")) {
    throw Mismatch{"scratch bytes " + std::to_string(stream) + "/" + std::to_string(bytes) +
                   " != numpy " + std::to_string(c.i64("stream_bytes")) + "/" +
                   std::to_string(c.i64("scratch_bytes"))};
  }
  if (s.has_expand && stream >= p.e.h * p.e.w * p.c_exp + p.c_exp && p.ring_rows < p.e.h) {
    throw Mismatch{"the ring is not smaller than the expansion"};
  }
  constexpr int32_t kGuard = 32;
  auto poison = [](int32_t i) { return static_cast<int8_t>(i * 37 + 11); };
  std::vector<int8_t> scratch(static_cast<size_t>(bytes + kGuard));
  for (size_t i = 0; i < scratch.size(); ++i) scratch[i] = poison(static_cast<int32_t>(i));
  std::vector<int8_t> y(static_cast<size_t>(want.size()), 99);
  const int32_t* be = OptionalBias(c, "b_e");
  const int32_t* bd = OptionalBias(c, "b_d");
  const int32_t* bp = OptionalBias(c, "b_p");
  auto run = [&](const core::FusedIrbParams& params, int32_t n) {
    return core::FusedIrb(params, x.data<int8_t>(), we, be, wd.data<int8_t>(), bd,
                          wp.data<int8_t>(), bp, y.data(), scratch.data(), n);
  };
  if (run(p, stream - 1) != Status::kBadParams) {
    throw Mismatch{"a scratch one byte short was accepted"};
  }
  ExpectOk(run(p, stream), "FusedIrb");
  Expect(c, "out_y", y);
  for (int32_t i = stream; i < bytes + kGuard; ++i) {
    if (scratch[static_cast<size_t>(i)] != poison(i)) throw Mismatch{"FusedIrb wrote past its stream"};
  }
  // mode (b): words computed into the scratch tensor's tail (as a glue's Eval would)
  core::FusedIrbParams q;
  ExpectOk(core::PrepareFusedIrb(s, nullptr, &q), "PrepareFusedIrb(nullptr)");
  if (run(q, bytes) != Status::kBadParams) throw Mismatch{"ran without multipliers"};
  const int32_t off = core::FusedIrbChannelWordsOffset(q);
  if (off % 4 != 0 || off < stream || off + 4 * core::FusedIrbChannelWords(s) != bytes) {
    throw Mismatch{"bad channel words offset"};
  }
  int32_t* tail = reinterpret_cast<int32_t*>(scratch.data() + off);  // vector data is aligned
  ExpectOk(core::PrepareFusedIrb(s, tail, &q), "PrepareFusedIrb(scratch)");
  const std::vector<int8_t> tail_before(scratch.begin() + off, scratch.begin() + bytes);
  std::fill(y.begin(), y.end(), 99);
  ExpectOk(run(q, bytes), "FusedIrb(words in scratch)");
  Expect(c, "out_y", y);
  if (!std::equal(tail_before.begin(), tail_before.end(), scratch.begin() + off)) {
    throw Mismatch{"the streaming overwrote the channel words"};
  }
  for (int32_t i = bytes; i < bytes + kGuard; ++i) {
    if (scratch[static_cast<size_t>(i)] != poison(i)) throw Mismatch{"FusedIrb wrote past scratch"};
  }
  // streaming in place: y starting `lag` bytes before x, overlapping it, as the planner places
  // them (lag rounded up to 16) and at the exact minimal lag
  const int32_t lag = core::FusedIrbInPlaceLag(p);
  if (lag != c.i64("inplace_lag")) {
    throw Mismatch{"in-place lag " + std::to_string(lag) + " != numpy " +
                   std::to_string(c.i64("inplace_lag"))};
  }
  const int32_t x_bytes = static_cast<int32_t>(x.size());
  const int32_t y_bytes = static_cast<int32_t>(want.size());
  for (const int32_t l : {lag, (lag + 15) / 16 * 16}) {
    const int32_t total = std::max(l + x_bytes, y_bytes);
    std::vector<int8_t> arena(static_cast<size_t>(total + kGuard));
    for (size_t i = 0; i < arena.size(); ++i) arena[i] = poison(static_cast<int32_t>(i) + 5);
    std::copy(x.data<int8_t>(), x.data<int8_t>() + x_bytes, arena.begin() + l);
    ExpectOk(core::FusedIrb(p, arena.data() + l, we, be, wd.data<int8_t>(), bd, wp.data<int8_t>(),
                            bp, arena.data(), scratch.data(), stream),
             "FusedIrb(in place)");
    Expect(c, "out_y", std::vector<int8_t>(arena.begin(), arena.begin() + y_bytes));
    for (int32_t i = total; i < total + kGuard; ++i) {
      if (arena[static_cast<size_t>(i)] != poison(i + 5)) throw Mismatch{"in place: wrote past"};
    }
  }
}

// TMT_MEAN (forward op): MeanOpMultiplier from the float scales must give the case's mult and
// shift; MeanOp must give out_y and write nothing past y.
void CheckMeanOp(const Case& c) {
  const Array& x = c.array_of<int8_t>("x");
  const Array& want = c.array_of<int8_t>("out_y");
  core::MeanOpParams p;
  p.x = HwcOf(x.dims);
  p.x_zero_point = static_cast<int32_t>(c.i64("x_zp"));
  p.y_zero_point = static_cast<int32_t>(c.i64("y_zp"));
  ExpectOk(core::MeanOpMultiplier(c.f32("x_scale"), c.f32("y_scale"), p.x.h * p.x.w,
                                  &p.multiplier, &p.shift),
           "MeanOpMultiplier");
  if (p.multiplier != c.i64("mult") || p.shift != c.i64("shift")) {
    throw Mismatch{"MeanOpMultiplier: " + std::to_string(p.multiplier) + " " +
                   std::to_string(p.shift) + ", want " + std::to_string(c.i64("mult")) + " " +
                   std::to_string(c.i64("shift"))};
  }
  constexpr int32_t kGuard = 32;
  const size_t n = static_cast<size_t>(want.size());
  std::vector<int8_t> y(n + kGuard, 99);
  ExpectOk(core::MeanOp(p, x.data<int8_t>(), y.data()), "MeanOp");
  Expect(c, "out_y", std::vector<int8_t>(y.begin(), y.begin() + static_cast<int64_t>(n)));
  for (size_t i = n; i < y.size(); ++i) {
    if (y[i] != 99) throw Mismatch{"MeanOp wrote past y"};
  }
}

// TMT_CONV (forward op): ConvOpMultipliers from the float scales must give the case's `requant`
// (what the converter writes); ConvOp with it must give out_y and write nothing past y.
void CheckConvOp(const Case& c) {
  const Array& x = c.array_of<int8_t>("x");
  const Array& w = c.array_of<int8_t>("w");
  const Array& rq = c.array_of<int32_t>("requant");
  const Array& want = c.array_of<int8_t>("out_y");
  core::ConvOpSpec s;
  s.kind = static_cast<int32_t>(c.i64("kind"));
  s.x_q = QuantOf(c, "x_scale", "x_zp");
  s.y_q = QuantOf(c, "y_scale", "y_zp");
  s.conv.act = static_cast<int32_t>(c.i64("act"));
  if (s.kind == core::kConvOpFullyConnected) {
    const int32_t rows = static_cast<int32_t>(x.dim(0));
    s.w_in_c = static_cast<int32_t>(w.dim(1));
    s.channels = static_cast<int32_t>(w.dim(0)) + RestRows(c);
    s.x = {1, rows, static_cast<int32_t>(x.dim(1))};
    s.y = {1, rows, static_cast<int32_t>(want.dim(1))};
  } else {
    s.x = HwcOf(x.dims);
    s.y = HwcOf(want.dims);
    s.conv.kh = static_cast<int32_t>(w.dim(1));
    s.conv.kw = static_cast<int32_t>(w.dim(2));
    s.conv.stride_h = static_cast<int32_t>(c.i64("stride_h"));
    s.conv.stride_w = static_cast<int32_t>(c.i64("stride_w"));
    s.conv.dil_h = static_cast<int32_t>(c.i64("dil_h"));
    s.conv.dil_w = static_cast<int32_t>(c.i64("dil_w"));
    s.conv.padding = static_cast<int32_t>(c.i64("padding"));
    s.w_in_c = static_cast<int32_t>(w.dim(3));
    s.channels = static_cast<int32_t>(s.kind == core::kConvOpConv2D ? w.dim(0) + RestRows(c)
                                                                     : w.dim(3));
  }
  std::vector<int32_t> words(static_cast<size_t>(2 * s.channels), 0x5a5a5a5a);
  ExpectOk(core::ConvOpMultipliers(s.x_q.scale, ScalesOf(c, "w_scales"), s.y_q.scale, s.channels,
                                   words.data(), words.data() + s.channels),
           "ConvOpMultipliers");
  Expect(c, "requant", words);
  core::ConvOpParams p;
  ExpectOk(core::PrepareConvOp(s, &p), "PrepareConvOp");
  constexpr int32_t kGuard = 32;
  const size_t n = static_cast<size_t>(want.size());
  std::vector<int8_t> y(n + kGuard, 99);
  const int32_t* mult = rq.data<int32_t>();
  if (c.has("bias_base")) {  // a narrow bias: ExpandBias, then the op a chunk at a time
    core::NarrowBias nb;
    nb.base = c.array_of<int32_t>("bias_base").data<int32_t>();
    nb.delta = c.array_of<int16_t>("b").data<int16_t>();
    nb.shift = c.array_of<int32_t>("bias_shift").data<int32_t>();
    std::vector<int32_t> b32(static_cast<size_t>(s.channels), 0x5a5a5a5a);
    ExpectOk(core::ExpandBias(nb.base, nb.delta, nb.shift, s.channels, b32.data()), "ExpandBias");
    Expect(c, "expanded_bias", b32);
    ExpectOk(core::ConvOpNarrowBias(p, mult, mult + s.channels, x.data<int8_t>(),
                                    w.data<int8_t>(), nb, y.data(), SplitOfCase(c)),
             "ConvOpNarrowBias");
    Expect(c, "out_y", std::vector<int8_t>(y.begin(), y.begin() + static_cast<int64_t>(n)));
    std::fill(y.begin(), y.end(), int8_t{99});  // and ConvOp with the expanded bias: the same
    ExpectOk(core::ConvOp(p, mult, mult + s.channels, x.data<int8_t>(), w.data<int8_t>(),
                          b32.data(), y.data(), SplitOfCase(c)),
             "ConvOp");
  } else {
    ExpectOk(core::ConvOp(p, mult, mult + s.channels, x.data<int8_t>(), w.data<int8_t>(),
                          OptionalBias(c, "b"), y.data(), SplitOfCase(c)),
             "ConvOp");
  }
  Expect(c, "out_y", std::vector<int8_t>(y.begin(), y.begin() + static_cast<int64_t>(n)));
  for (size_t i = n; i < y.size(); ++i) {
    if (y[i] != 99) throw Mismatch{"ConvOp wrote past y"};
  }
  if (c.has("out_pooled")) {  // mean mode: the mean of y over H, W (and its mask), without y
    core::ConvMeanParams m;
    m.multiplier = static_cast<int32_t>(c.i64("mean_mult"));
    m.shift = static_cast<int32_t>(c.i64("mean_shift"));
    m.pooled_zero_point = static_cast<int32_t>(c.i64("pooled_zp"));
    m.mask = c.has("out_bits");
    if (m.mask) {
      m.mask_min = static_cast<int32_t>(c.i64("mask_min"));
      m.mask_max = static_cast<int32_t>(c.i64("mask_max"));
    }
    std::vector<int8_t> pooled(static_cast<size_t>(s.channels) + kGuard, 99);
    std::vector<uint8_t> bits((n + 7) / 8 + kGuard, 0xA5);
    core::NarrowBias nb;
    const bool narrow = c.has("bias_base");
    if (narrow) {
      nb.base = c.array_of<int32_t>("bias_base").data<int32_t>();
      nb.delta = c.array_of<int16_t>("b").data<int16_t>();
      nb.shift = c.array_of<int32_t>("bias_shift").data<int32_t>();
    }
    ExpectOk(core::ConvOpMean(p, mult, mult + s.channels, x.data<int8_t>(), w.data<int8_t>(),
                              narrow ? nullptr : OptionalBias(c, "b"), narrow ? &nb : nullptr, m,
                              pooled.data(), m.mask ? bits.data() : nullptr, SplitOfCase(c)),
             "ConvOpMean");
    Expect(c, "out_pooled", std::vector<int8_t>(pooled.begin(), pooled.begin() + s.channels));
    for (size_t i = static_cast<size_t>(s.channels); i < pooled.size(); ++i) {
      if (pooled[i] != 99) throw Mismatch{"ConvOpMean wrote past pooled"};
    }
    if (m.mask) {
      Expect(c, "out_bits", std::vector<uint8_t>(bits.begin(), bits.begin() + (n + 7) / 8));
      for (size_t i = (n + 7) / 8; i < bits.size(); ++i) {
        if (bits[i] != 0xA5) throw Mismatch{"ConvOpMean wrote past bits"};
      }
    }
  }
}

const std::map<std::string, std::function<void(const Case&)>>& Checkers() {
  static const std::map<std::string, std::function<void(const Case&)>> m = {
      {"TMT_SOFTMAX_CE_GRAD", CheckSoftmaxCeGrad},
      {"TMT_MSE_GRAD", CheckMseGrad},
      {"TMT_ACT_GRAD", CheckActGrad},
      {"TMT_MASK_PACK", CheckMaskPack},
      {"TMT_MASK_GRAD", CheckMaskGrad},
      {"TMT_GRAD_ADD", CheckGradAdd},
      {"TMT_MEAN_GRAD", CheckMeanGrad},
      {"TMT_PAD_GRAD", CheckPadGrad},
      {"TMT_RESHAPE_GRAD", CheckReshapeGrad},
      {"TMT_AVGPOOL_GRAD", CheckAvgPoolGrad},
      {"TMT_MAXPOOL_GRAD", CheckMaxPoolGrad},
      {"TMT_CONV_INPUT_GRAD", [](const Case& c) { CheckInputGrad(c, false); }},
      {"TMT_DW_INPUT_GRAD", [](const Case& c) { CheckInputGrad(c, true); }},
      {"TMT_CONV_WEIGHT_UPDATE", [](const Case& c) { CheckWeightUpdate(c, false); }},
      {"TMT_DW_WEIGHT_UPDATE", [](const Case& c) { CheckWeightUpdate(c, true); }},
      {"TMT_BIAS_UPDATE", CheckBiasUpdate},
      {"TMT_FUSED_IRB", CheckFusedIrb},
      {"TMT_SOFTMAX_CE_GRAD_F32", CheckSoftmaxCeGradF32},
      {"TMT_MSE_GRAD_F32", CheckMseGradF32},
      {"TMT_ACT_GRAD_F32", CheckActGradF32},
      {"TMT_MASK_GRAD_F32", CheckMaskGradF32},
      {"TMT_GRAD_ADD_F32", CheckGradAddF32},
      {"TMT_MEAN_GRAD_F32", CheckMeanGradF32},
      {"TMT_PAD_GRAD_F32", CheckPadGradF32},
      {"TMT_RESHAPE_GRAD_F32", CheckReshapeGradF32},
      {"TMT_AVGPOOL_GRAD_F32", CheckAvgPoolGradF32},
      {"TMT_MAXPOOL_GRAD_F32", CheckMaxPoolGradF32},
      {"TMT_CONV_INPUT_GRAD_F32", [](const Case& c) { CheckInputGradF32(c, false); }},
      {"TMT_DW_INPUT_GRAD_F32", [](const Case& c) { CheckInputGradF32(c, true); }},
      {"TMT_CONV_WEIGHT_UPDATE_F32", [](const Case& c) { CheckWeightUpdateF32(c, false); }},
      {"TMT_DW_WEIGHT_UPDATE_F32", [](const Case& c) { CheckWeightUpdateF32(c, true); }},
      {"TMT_BIAS_UPDATE_F32", CheckBiasUpdateF32},
      {"TMT_CONV", CheckConvOp},
      {"TMT_MEAN", CheckMeanOp},
  };
  return m;
}

bool IsDir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> GoldenFiles(const std::string& path) {
  if (!IsDir(path)) return {path};
  std::vector<std::string> files;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 5 && name.compare(name.size() - 5, 5, ".tmtg") == 0) {
        files.push_back(path + "/" + name);
      }
    }
    closedir(d);
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> inputs(argv + 1, argv + argc);
  if (inputs.empty()) {
    const char* dir = std::getenv("TMT_GOLDEN_DIR");
    if (!dir || !*dir) {
      std::printf(
          "golden_test: no golden files given, nothing checked. Run `python3 -m pytest "
          "tests/test_golden_cpp.py`, or write them with `python3 tests/golden/make_golden.py "
          "DIR` and pass DIR as an argument or in TMT_GOLDEN_DIR.\n");
      return 0;
    }
    inputs.push_back(dir);
  }
  std::vector<std::string> files;
  for (const auto& in : inputs) {
    for (const auto& f : GoldenFiles(in)) files.push_back(f);
  }
  if (files.empty()) {
    std::fprintf(stderr, "golden_test: no .tmtg files in %s\n", inputs[0].c_str());
    return 1;
  }
  std::map<std::string, std::pair<int64_t, int64_t>> per_op;  // op -> (cases, mismatches)
  int64_t passed = 0, failed = 0;
  int reported = 0;
  for (const auto& f : files) {
    std::vector<Case> cases;
    std::string err;
    if (!tmt_golden::ReadFile(f, &cases, &err)) {
      std::fprintf(stderr, "golden_test: %s\n", err.c_str());
      ++failed;
      continue;
    }
    for (const Case& c : cases) {
      auto& counts = per_op[c.op];
      ++counts.first;
      std::string problem;
      const auto it = Checkers().find(c.op);
      if (it == Checkers().end()) {
        problem = "no C++ checker for this op";
      } else {
        try {
          it->second(c);
        } catch (const Mismatch& m) {
          problem = m.what;
        } catch (const tmt_golden::GoldenError& e) {
          problem = std::string("bad case: ") + e.what();
        }
      }
      if (problem.empty()) {
        ++passed;
      } else {
        ++failed;
        ++counts.second;
        if (reported++ < 20) {
          // (%lu: newlib's small printf on the Cortex-M builds has no %zu)
          std::printf("MISMATCH %s case #%lu (%s): %s\n", f.c_str(),
                      static_cast<unsigned long>(c.index), c.op.c_str(), problem.c_str());
        }
      }
    }
  }
  for (const auto& kv : per_op) {
    std::printf("golden %s: %lld cases, %lld mismatches\n", kv.first.c_str(),
                static_cast<long long>(kv.second.first), static_cast<long long>(kv.second.second));
  }
  std::printf("%lld passed, %lld failed\n", static_cast<long long>(passed),
              static_cast<long long>(failed));
  return failed ? 1 : 0;
}
