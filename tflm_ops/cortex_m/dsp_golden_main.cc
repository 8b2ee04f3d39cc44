// dsp_golden FILE...: replays golden cases of the ops with a Cortex-M DSP path through both the
// portable core and tflm_ops/cortex_m/dsp_kernels, compares both with the numpy reference bit for
// bit, and (on Cortex-M under QEMU -icount) counts the instructions of each.
//
// Prints per op: "dsp <OP>: <n> cases, <m> mismatches, portable insns <a>, dsp insns <b>, dsp <0|1>"
// and "<passed> passed, <failed> failed"; exits 1 on any mismatch.
#include <cstdio>
#include <string>
#include <vector>

#include "tflm_ops/core/training_ops.h"
#include "tflm_ops/cortex_m/dsp_kernels.h"
#include "tflm_ops/tests/golden_reader.h"

#if defined(__arm__)
#include "tflm_ops/cortex_m/cm_timer.h"
#endif

namespace {

namespace core = tfmicro_train::core;
using tmt_golden::Array;
using tmt_golden::Case;

unsigned long long Measure(bool start) {
#if defined(__arm__)
  if (start) {
    TmtTimerStart();
    return 0;
  }
  return static_cast<unsigned long long>(TmtInstructions());
#else
  (void)start;
  return 0;
#endif
}

core::Hwc HwcOf(const std::vector<int64_t>& d) {
  core::Hwc r;
  if (d.size() == 4) {
    r.h = static_cast<int32_t>(d[1]);
    r.w = static_cast<int32_t>(d[2]);
    r.c = static_cast<int32_t>(d[3]);
  } else {
    int64_t n = 1;
    for (size_t i = 1; i < d.size(); ++i) n *= d[i];
    r.c = static_cast<int32_t>(n);
  }
  return r;
}

struct Totals {
  long cases = 0, bad = 0;
  unsigned long long portable = 0, dsp = 0;
};

// Returns true if both paths reproduce out_w.
bool CheckConvWeightUpdate(const Case& c, Totals* t) {
  const Array& g = c.array_of<int8_t>("g");
  const Array& x = c.array_of<int8_t>("x");
  const Array& w0 = c.array_of<int8_t>("w");
  const int32_t kh = w0.ndim() == 4 ? static_cast<int32_t>(w0.dim(1)) : 1;
  const int32_t kw = w0.ndim() == 4 ? static_cast<int32_t>(w0.dim(2)) : 1;
  core::ConvGeom geom;
  geom.stride_h = static_cast<int32_t>(c.i64("stride_h"));
  geom.stride_w = static_cast<int32_t>(c.i64("stride_w"));
  geom.pad_top = static_cast<int32_t>(c.i64("pad_top"));
  geom.pad_left = static_cast<int32_t>(c.i64("pad_left"));
  core::UpdateParams p;
  p.update_channels = static_cast<int32_t>(c.i64("update_channels"));
  p.seed = static_cast<uint32_t>(c.i64("seed"));
  p.x_zero_point = static_cast<int32_t>(c.i64_or("x_zero_point", 0));
  const uint32_t counter = static_cast<uint32_t>(c.i64("counter"));
  const std::vector<int8_t> want = c.array_of<int8_t>("out_w").vec<int8_t>();
  bool ok = true;
  for (int dsp = 0; dsp < 2; ++dsp) {
    std::vector<int8_t> w = w0.vec<int8_t>();
    const auto fn =
        dsp ? tfmicro_train::cortex_m::ConvWeightUpdate : core::ConvWeightUpdatePortable;
    Measure(true);
    const core::Status st =
        fn(g.data<int8_t>(), c.f32("s"), HwcOf(g.dims), x.data<int8_t>(), HwcOf(x.dims), w.data(),
           kh, kw, c.array_of<float>("wfactor").data<float>(), c.f32("lr"), geom, p, counter);
    const unsigned long long n = Measure(false);
    (dsp ? t->dsp : t->portable) += n;
    if (st != core::Status::kOk || w != want) {
      ok = false;
      std::printf("MISMATCH case #%zu (%s path)\n", c.index, dsp ? "dsp" : "portable");
    }
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  Totals t;
  long passed = 0, failed = 0;
  for (int i = 1; i < argc; ++i) {
    std::vector<Case> cases;
    std::string err;
    if (!tmt_golden::ReadFile(argv[i], &cases, &err)) {
      std::printf("dsp_golden: %s\n", err.c_str());
      ++failed;
      continue;
    }
    for (const Case& c : cases) {
      if (c.op != "TMT_CONV_WEIGHT_UPDATE") continue;
      ++t.cases;
      if (CheckConvWeightUpdate(c, &t)) {
        ++passed;
      } else {
        ++t.bad;
        ++failed;
      }
    }
  }
  std::printf("dsp TMT_CONV_WEIGHT_UPDATE: %ld cases, %ld mismatches, portable insns %llu, dsp insns "
              "%llu, dsp %d\n",
              t.cases, t.bad, t.portable, t.dsp, tfmicro_train::cortex_m::HasDsp() ? 1 : 0);
  std::printf("%ld passed, %ld failed\n", passed, failed);
  return failed || t.cases == 0 ? 1 : 0;
}
