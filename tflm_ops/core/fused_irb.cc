// TMT_FUSED_IRB core. See fused_irb.h and tfmicro_train/kernels/fused_ops.py.
#include "tflm_ops/core/fused_irb.h"

#include <cmath>
#include <cstdint>
#include <cstring>

// The 1x1 convolutions and the depthwise use tflm_reference.h's DotOffset / DepthwiseTaps
// (DSP paths on Cortex-M4/M7 unless built with -DTMT_PORTABLE_ONLY; bit-exact either way).

namespace tfmicro_train {
namespace core {
namespace {

using tflm_ref::ActivationRange;
using tflm_ref::ChannelMultipliers;
using tflm_ref::kQMax;
using tflm_ref::kQMin;
using tflm_ref::LeadingPad;
using tflm_ref::MultiplyByQuantizedMultiplier;
using tflm_ref::OutSize;
using tflm_ref::QuantizeMultiplier;
using tflm_ref::ValidConv;
using tflm_ref::ValidQuant;
using tflm_ref::ValidScale;
using tflm_ref::Wrap32;

constexpr int32_t kAddLeftShift = 20;  // reference add.cc, int8


// One requantization stage without its multipliers (FusedIrbMultipliers sets them): checks the
// weight scales, sets the output offset and the activation clamp.
bool MakeRequant(const WeightScales& w, const TensorQuant& out, int32_t act, int32_t channels,
                 Requant* rq) {
  if (w.scales == nullptr || (w.n != 1 && w.n != channels)) return false;
  for (int32_t c = 0; c < w.n; ++c) {
    if (!ValidScale(w.scales[c])) return false;
  }
  rq->multiplier = nullptr;
  rq->shift = nullptr;
  rq->output_offset = out.zero_point;
  return ActivationRange(act, out, &rq->act_min, &rq->act_max);
}

// The multipliers and shifts of one stage into words [2 * channels].
bool StageMultipliers(float in_scale, const WeightScales& w, float out_scale, int32_t channels,
                      int32_t* words, Requant* rq) {
  if (!ChannelMultipliers(in_scale, w, out_scale, channels, words, words + channels)) return false;
  rq->multiplier = words;
  rq->shift = words + channels;
  return true;
}

// The expansion (CONV_2D reference_integer_ops::ConvPerChannel) as a ConvLoop: row r of it is
// tflm_ref::ConvRow(loop, x, w, b, r, out) into out [e.w, c_exp].
tflm_ref::ConvLoop ExpandLoop(const FusedIrbParams& p) {
  tflm_ref::ConvLoop l;
  l.in_h = p.x.h;
  l.in_w = p.x.w;
  l.in_c = p.x.c;
  l.out_w = p.e.w;
  l.out_c = p.c_exp;
  l.kh = p.e_kh;
  l.kw = p.e_kw;
  l.stride_h = p.e_stride_h;
  l.stride_w = p.e_stride_w;
  l.dil_h = p.e_dil_h;
  l.dil_w = p.e_dil_w;
  l.pad_top = p.e_pad_top;
  l.pad_left = p.e_pad_left;
  l.in_offset = p.x_offset;
  l.rq = p.e_rq;
  return l;
}

// The depthwise (reference_integer_ops::DepthwiseConvPerChannel) on the PAD of the expansion.
tflm_ref::DepthwiseLoop DepthwiseOf(const FusedIrbParams& p) {
  tflm_ref::DepthwiseLoop l;
  l.src_h = p.e.h;
  l.src_w = p.e.w;
  l.c = p.c_exp;
  l.pd_h = p.pd.h;
  l.pd_w = p.pd.w;
  l.pad_top = p.pad_top;
  l.pad_left = p.pad_left;
  l.pad_value = p.pad_value;
  l.kh = p.d_kh;
  l.kw = p.d_kw;
  l.stride_h = p.d_stride_h;
  l.stride_w = p.d_stride_w;
  l.dil_h = p.d_dil_h;
  l.dil_w = p.d_dil_w;
  l.d_pad_top = p.d_pad_top;
  l.d_pad_left = p.d_pad_left;
  l.in_offset = p.d_in_offset;
  l.rq = p.d_rq;
  return l;
}

// reference_integer_ops::Add for one element pair (x, project); orientation does not change the
// result (the sum is symmetric and each input keeps its own multiplier).
inline int8_t AddResidual(const FusedIrbParams& p, int32_t xv, int32_t pv) {
  const int32_t sx = MultiplyByQuantizedMultiplier(
      (xv + p.add_offset_x) * (1 << p.add_left_shift), p.add_mult_x, p.add_shift_x);
  const int32_t sp = MultiplyByQuantizedMultiplier(
      (pv + p.add_offset_p) * (1 << p.add_left_shift), p.add_mult_p, p.add_shift_p);
  const int32_t raw_sum = Wrap32(static_cast<int64_t>(sx) + sp);
  int32_t v = MultiplyByQuantizedMultiplier(raw_sum, p.add_out_mult, p.add_out_shift) +
              p.add_out_offset;
  v = v < p.add_act_min ? p.add_act_min : v;
  v = v > p.add_act_max ? p.add_act_max : v;
  return static_cast<int8_t>(v);
}

#if TMT_REFERENCE_DSP
// MultiplyByQuantizedMultiplier(x, m, -e) (its DSP path) for e in [0, 30], 0 <= m < 2^31 and
// |x| < 2^29, given x2 = 2x, r = 2^e and e1 = e + 1, in four instructions. That path computes
// h = SMMULR(2x, m) (= Srdhm(x, m)), then for e >= 1 SmallRightShift's (h + 2^(e-1) - n) >> e,
// n = [h < 0], and for e = 0 (its left-shift path, shift 0) h itself. Both are
// (2h + 2^e - n) >> (e + 1): for e = 0, (2h + 1 - n) >> 1 = h; for e >= 1 the numerators
// 2h + 2^e - n and 2 (h + 2^(e-1) - n) differ only for n = 1, by one, and the odd 2h + 2^e - 1
// is no multiple of 2^(e+1), so the floors agree. |h| <= |x| + 1 < 2^29 + 1: 2h + 2^e fits int32.
inline int32_t AddStage(int32_t x2, int32_t m, int32_t r, int32_t e1) {
  int32_t h;
  __asm__("smmulr %0, %1, %2" : "=r"(h) : "r"(x2), "r"(m));
  return (2 * h + r - static_cast<int32_t>(static_cast<uint32_t>(h) >> 31)) >> e1;
}
#endif

// y[co] = AddResidual(p, x[co], v[co]) for co < n, in order: each x[co] read right before y[co]
// is written (y may overlap x, FusedIrbInPlaceLag). With the DSP extension, where the left shift
// is at most 20, every shift in [-30, 0], every multiplier >= 0 and the x and projection ones at
// most 1/2 (as add.cc's for int8, each input's scale over twice the larger), the three
// multiplications by AddStage: the inputs (v + offset) << left_shift are under 2^28 in
// magnitude, each scaled one at most 2^27 + 1 (m <= 2^30 with e = 0, or e >= 1), their sum at
// most 2^28 + 2. Otherwise AddResidual per element.
void AddResidualRun(const FusedIrbParams& p, const int8_t* x, const int8_t* v, int32_t n,
                    int8_t* y) {
#if TMT_REFERENCE_DSP
  auto half = [](int32_t m, int32_t shift) {
    return m >= 0 && (shift < 0 || m <= (int32_t{1} << 30));
  };
  if (p.add_left_shift >= 0 && p.add_left_shift <= 20 && p.add_shift_x >= -30 &&
      p.add_shift_x <= 0 && p.add_shift_p >= -30 && p.add_shift_p <= 0 &&
      p.add_out_shift >= -30 && p.add_out_shift <= 0 && p.add_out_mult >= 0 &&
      half(p.add_mult_x, p.add_shift_x) && half(p.add_mult_p, p.add_shift_p)) {
    // (locals: the int8 stores may alias p, they cannot alias these)
    const int32_t ls1 = p.add_left_shift + 1;
    const int32_t off_x = p.add_offset_x, off_p = p.add_offset_p;
    const int32_t mx = p.add_mult_x, mp = p.add_mult_p, mo = p.add_out_mult;
    const int32_t ex = -p.add_shift_x, ep = -p.add_shift_p, eo = -p.add_out_shift;
    const int32_t rx = int32_t{1} << ex, rp = int32_t{1} << ep, ro = int32_t{1} << eo;
    const int32_t out_off = p.add_out_offset, lo = p.add_act_min, hi = p.add_act_max;
    for (int32_t co = 0; co < n; ++co) {
      const int32_t sx = AddStage((x[co] + off_x) << ls1, mx, rx, ex + 1);
      const int32_t sp = AddStage((v[co] + off_p) << ls1, mp, rp, ep + 1);
      int32_t r = AddStage((sx + sp) * 2, mo, ro, eo + 1) + out_off;
      r = r < lo ? lo : r;
      r = r > hi ? hi : r;
      y[co] = static_cast<int8_t>(r);
    }
    return;
  }
#endif
  for (int32_t co = 0; co < n; ++co) y[co] = AddResidual(p, x[co], v[co]);
}

// One pixel of a 1x1 convolution: in [in_c] -> out [out_c] (reference FullyConnectedPerChannel /
// ConvPerChannel with a 1x1 kernel), w [out_c, in_c].
inline void Pointwise(const int8_t* in, int32_t in_c, int32_t in_offset, const int8_t* w,
                      const int32_t* b, const Requant& rq, int32_t out_c, int8_t* out) {
  tflm_ref::PointwisePixelTo(in, in_c, in_offset, w, b, rq, out_c, out);
}

// Input channels up to which a 1x1 expansion takes two pixels at a time (PointwisePair; its lanes
// take 4 bytes per channel of stack): MobileNetV2-w0.35 has 24-channel ones among its fused blocks.
constexpr int32_t kExpandPairMax = 32;

// Expansion row r into out [e.w, c_exp]: a 1x1 unpadded expansion reads one input pixel per
// output pixel (all in range: OutSize), two at a time where PointwisePair takes them; any other
// geometry runs the generic ConvRow. Not inlined: its lanes are on the stack only while it runs,
// not in FusedIrb's frame under the depthwise and projection calls (one call per row).
#if defined(__GNUC__)
__attribute__((noinline))
#endif
void ExpandRow(const FusedIrbParams& p, const tflm_ref::ConvLoop& loop, const int8_t* x,
               const int8_t* w, const int32_t* b, int32_t r, int8_t* out) {
  const int32_t iy = r * p.e_stride_h;
  if (p.e_kh == 1 && p.e_kw == 1 && p.e_pad_top == 0 && p.e_pad_left == 0 && iy < p.x.h &&
      (p.e.w - 1) * p.e_stride_w < p.x.w) {
    const int8_t* xr = x + static_cast<int64_t>(iy) * p.x.w * p.x.c;
    const int32_t step = p.e_stride_w * p.x.c;
    int32_t ox = 0;
    if (p.x.c == 8) {  // both pixels' lanes in registers (PointwisePixelPairTo)
      for (; ox + 2 <= p.e.w; ox += 2) {
        tflm_ref::PointwisePixelPairTo(xr + ox * step, xr + (ox + 1) * step, 8, p.x_offset, w, b,
                                       loop.rq, p.c_exp, out + ox * p.c_exp,
                                       out + (ox + 1) * p.c_exp);
      }
    }
    // (16 input channels too: with DotPair2's LDRD lanes, MobileNetV2-w0.35's 16 -> 96 blocks
    // take about 4% fewer instructions than by PointwiseAccsNarrow<4> one pixel at a time)
    if (p.x.c >= 16 && tflm_ref::PairLanesOf<kExpandPairMax>::Takes(p.x.c)) {
      tflm_ref::PairLanesOf<kExpandPairMax> lanes;
      for (; ox + 2 <= p.e.w; ox += 2) {
        lanes.Widen(xr + ox * step, xr + (ox + 1) * step, p.x.c, p.x_offset);
        tflm_ref::PointwisePair(lanes, w, b, loop.rq, p.c_exp, out + ox * p.c_exp,
                                out + (ox + 1) * p.c_exp);
      }
    }
    for (; ox < p.e.w; ++ox) {
      Pointwise(xr + ox * step, p.x.c, p.x_offset, w, b, loop.rq, p.c_exp, out + ox * p.c_exp);
    }
    return;
  }
  tflm_ref::ConvRow(loop, x, w, b, r, out);
}

constexpr int32_t kMaxTaps = 49;  // depthwise windows up to 7x7 take the fast path
// Expansion channels up to which the interior depthwise takes two pixels at a time (the second
// pixel's output on the stack: FusedIrb's frame grows by this many bytes). MobileNetV2-w0.35 at
// 128x128 on the M7: 144 (6 x 24) saves about 1.1 M instructions per step, 96 67 K less, 256
// saves 5 K more for 112 more bytes of stack.
constexpr int32_t kDwPairMax = 144;

// Output channels up to which a residual block's two projected pixels are buffered on the stack
// (ProjectPair, and the one-pixel projection's AddResidualRun: a byte each per pixel).
constexpr int32_t kProjPairOut = 32;

// The projection (1x1 CONV_2D) [+ residual ADD] of the two horizontally adjacent output pixels
// pix and pix + 1 from their depthwise outputs d0, d1 [c_exp]: the values of FusedIrb's project
// of each. With the DSP extension both pixels are widened into int16 lanes once (PairLanes) and
// two output channels of both are summed per pass (PointwisePair: each weight word loaded and
// split once for both pixels, not once per pixel as PointwiseAccs). With a residual both
// pixels' projections come first, then pixel pix's ADDs and pixel pix + 1's, each x[co] read
// right before y[co] is written, as FusedIrbInPlaceLag assumes. False (nothing done) where it
// does not apply: no DSP extension (PairLanes::Widen false), fewer than 4 or more than
// kDwPairMax expansion channels, a residual block of more than kProjPairOut output channels.
// Not inlined: the lanes (576 bytes) are on the stack only while it runs, not in FusedIrb's
// frame under every call. MobileNetV2-w0.35 128x128 on the M7: lanes of 96 channels, the
// 144-channel blocks in parts (PointwisePairParts), took 50 K instructions more per step for
// 80 B less of the step's stack.
#if defined(__GNUC__)
__attribute__((noinline))
#endif
bool ProjectPair(const FusedIrbParams& p, const int8_t* d0, const int8_t* d1, const int8_t* w,
                 const int32_t* b, const Requant& rq, int64_t pix, const int8_t* x, int8_t* y) {
  if (p.residual && p.c_out > kProjPairOut) return false;
  tflm_ref::PairLanesOf<kDwPairMax> lanes;  // (4 bytes per channel)
  if (!lanes.Widen(d0, d1, p.c_exp, p.p_in_offset)) return false;
  int8_t* yp = y + pix * p.c_out;
  int8_t v[2][kProjPairOut];  // with a residual, the projections before the ADDs
  tflm_ref::PointwisePair(lanes, w, b, rq, p.c_out, p.residual ? v[0] : yp,
                          p.residual ? v[1] : yp + p.c_out);
  if (!p.residual) return true;
  const int8_t* xp = x + pix * p.x.c;  // same dims as y then
  AddResidualRun(p, xp, v[0], p.c_out, yp);
  AddResidualRun(p, xp + p.x.c, v[1], p.c_out, yp + p.c_out);
  return true;
}

}  // namespace

int32_t FusedIrbChannelWords(const FusedIrbSpec& spec) {
  return 4 * spec.c_exp + 2 * spec.c_out;
}

Status PrepareFusedIrb(const FusedIrbSpec& s, int32_t* words, FusedIrbParams* out) {
  if (out == nullptr) return Status::kBadParams;
  FusedIrbParams p;
  if (s.x.h < 1 || s.x.w < 1 || s.x.c < 1 || s.y.h < 1 || s.y.w < 1 || s.y.c < 1 ||
      s.c_exp < 1 || s.c_out < 1 || s.y.c != s.c_out) {
    return Status::kBadShape;
  }
  if (!ValidQuant(s.x_q) || !ValidQuant(s.y_q) || !ValidQuant(s.d_in_q) || !ValidQuant(s.d_q) ||
      !ValidQuant(s.p_q) || (s.has_expand && !ValidQuant(s.e_q)) || !ValidConv(s.dw) ||
      (s.has_expand && !ValidConv(s.expand)) || s.pad_top < 0 || s.pad_bottom < 0 ||
      s.pad_left < 0 || s.pad_right < 0 || s.pad_value < kQMin || s.pad_value > kQMax ||
      s.residual < 0 || s.residual > 2) {
    return Status::kBadParams;
  }
  p.x = s.x;
  p.y = s.y;
  p.c_exp = s.c_exp;
  p.c_out = s.c_out;
  p.has_expand = s.has_expand;
  p.x_offset = -s.x_q.zero_point;
  if (s.has_expand) {
    const ConvSpec& e = s.expand;
    p.e.h = OutSize(e.padding, s.x.h, e.kh, e.stride_h, e.dil_h);
    p.e.w = OutSize(e.padding, s.x.w, e.kw, e.stride_w, e.dil_w);
    if (p.e.h < 1 || p.e.w < 1) return Status::kBadShape;
    p.e_kh = e.kh;
    p.e_kw = e.kw;
    p.e_stride_h = e.stride_h;
    p.e_stride_w = e.stride_w;
    p.e_dil_h = e.dil_h;
    p.e_dil_w = e.dil_w;
    p.e_pad_top = LeadingPad(e.stride_h, e.dil_h, s.x.h, e.kh, p.e.h);
    p.e_pad_left = LeadingPad(e.stride_w, e.dil_w, s.x.w, e.kw, p.e.w);
    if (!MakeRequant(s.w_expand_scales, s.e_q, e.act, s.c_exp, &p.e_rq)) {
      return Status::kBadParams;
    }
  } else {
    if (s.x.c != s.c_exp) return Status::kBadShape;
    p.e.h = s.x.h;
    p.e.w = s.x.w;
  }
  p.e.c = s.c_exp;
  p.pd = {p.e.h + s.pad_top + s.pad_bottom, p.e.w + s.pad_left + s.pad_right, s.c_exp};
  p.pad_top = s.pad_top;
  p.pad_left = s.pad_left;
  p.pad_value = s.pad_value;
  p.d_in_offset = -s.d_in_q.zero_point;
  const ConvSpec& d = s.dw;
  if (OutSize(d.padding, p.pd.h, d.kh, d.stride_h, d.dil_h) != s.y.h ||
      OutSize(d.padding, p.pd.w, d.kw, d.stride_w, d.dil_w) != s.y.w) {
    return Status::kBadShape;
  }
  p.d_kh = d.kh;
  p.d_kw = d.kw;
  p.d_stride_h = d.stride_h;
  p.d_stride_w = d.stride_w;
  p.d_dil_h = d.dil_h;
  p.d_dil_w = d.dil_w;
  p.d_pad_top = LeadingPad(d.stride_h, d.dil_h, p.pd.h, d.kh, s.y.h);
  p.d_pad_left = LeadingPad(d.stride_w, d.dil_w, p.pd.w, d.kw, s.y.w);
  if (!MakeRequant(s.w_dw_scales, s.d_q, d.act, s.c_exp, &p.d_rq)) {
    return Status::kBadParams;
  }
  p.p_in_offset = -s.d_q.zero_point;
  const TensorQuant& pq = s.residual ? s.p_q : s.y_q;
  if (!MakeRequant(s.w_project_scales, pq, s.project_act, s.c_out, &p.p_rq)) {
    return Status::kBadParams;
  }
  p.residual = s.residual;
  if (s.residual) {
    if (s.x.h != s.y.h || s.x.w != s.y.w || s.x.c != s.y.c) return Status::kBadShape;
    // add.cc CalculateOpDataAdd (int8)
    p.add_left_shift = kAddLeftShift;
    p.add_offset_x = -s.x_q.zero_point;
    p.add_offset_p = -s.p_q.zero_point;
    p.add_out_offset = s.y_q.zero_point;
    const float max_in = s.x_q.scale > s.p_q.scale ? s.x_q.scale : s.p_q.scale;
    const double twice_max = 2 * static_cast<double>(max_in);
    const double real_x = static_cast<double>(s.x_q.scale) / twice_max;
    const double real_p = static_cast<double>(s.p_q.scale) / twice_max;
    const double real_out =
        twice_max / ((1 << kAddLeftShift) * static_cast<double>(s.y_q.scale));
    // QuantizeMultiplierSmallerThanOneExp: TFLM checks every shift <= 0
    if (!QuantizeMultiplier(real_x, &p.add_mult_x, &p.add_shift_x) ||
        !QuantizeMultiplier(real_p, &p.add_mult_p, &p.add_shift_p) ||
        !QuantizeMultiplier(real_out, &p.add_out_mult, &p.add_out_shift) || p.add_shift_x > 0 ||
        p.add_shift_p > 0 || p.add_out_shift > 0 ||
        !ActivationRange(s.add_act, s.y_q, &p.add_act_min, &p.add_act_max)) {
      return Status::kBadParams;
    }
  }
  if (s.has_expand) {
    const int32_t span = (d.kh - 1) * d.dil_h + 1;
    p.ring_rows = span < p.e.h ? span : p.e.h;
  }
  if (words != nullptr) {
    const Status st = FusedIrbMultipliers(FusedIrbScalesOf(s), words, &p);
    if (st != Status::kOk) return st;
  }
  *out = p;
  return Status::kOk;
}

FusedIrbScales FusedIrbScalesOf(const FusedIrbSpec& s) {
  FusedIrbScales r;
  r.e_in = s.x_q.scale;
  r.e_out = s.e_q.scale;
  r.d_in = s.d_in_q.scale;
  r.d_out = s.d_q.scale;
  r.p_in = s.d_q.scale;
  r.p_out = s.residual ? s.p_q.scale : s.y_q.scale;
  r.w_expand = s.w_expand_scales;
  r.w_dw = s.w_dw_scales;
  r.w_project = s.w_project_scales;
  return r;
}

Status FusedIrbMultipliers(const FusedIrbScales& sc, int32_t* words, FusedIrbParams* p) {
  if (words == nullptr || p == nullptr) return Status::kBadParams;
  const int32_t ce = p->c_exp, co = p->c_out;
  if ((p->has_expand && !StageMultipliers(sc.e_in, sc.w_expand, sc.e_out, ce, words, &p->e_rq)) ||
      !StageMultipliers(sc.d_in, sc.w_dw, sc.d_out, ce, words + 2 * ce, &p->d_rq) ||
      !StageMultipliers(sc.p_in, sc.w_project, sc.p_out, co, words + 4 * ce, &p->p_rq)) {
    return Status::kBadParams;
  }
  return Status::kOk;
}

int32_t FusedIrbStreamBytes(const FusedIrbParams& p) {
  return p.ring_rows * p.e.w * p.c_exp + p.c_exp;
}

int32_t FusedIrbChannelWordsOffset(const FusedIrbParams& p) {
  return (FusedIrbStreamBytes(p) + 3) / 4 * 4;
}

int32_t FusedIrbScratchBytes(const FusedIrbParams& p) {
  return FusedIrbChannelWordsOffset(p) + 4 * (4 * p.c_exp + 2 * p.c_out);
}

int32_t FusedIrbInPlaceLag(const FusedIrbParams& p) {
  const int64_t x_row = static_cast<int64_t>(p.x.w) * p.x.c;
  int64_t lag = 0;
  auto read = [&lag](int64_t written, int64_t a) {  // a read of x at >= a after `written` bytes
    if (written - a > lag) lag = written - a;
  };
  // lowest column of x any expansion row reads (a lower bound for every row)
  int32_t e_col = p.x.w;
  if (p.has_expand) {
    for (int32_t kx = 0; kx < p.e_kw; ++kx) {
      for (int32_t ex = 0; ex < p.e.w; ++ex) {
        const int32_t ix = ex * p.e_stride_w - p.e_pad_left + kx * p.e_dil_w;
        if (ix >= 0 && ix < p.x.w && ix < e_col) e_col = ix;
      }
    }
  }
  int32_t next_row = 0;  // as FusedIrb
  for (int32_t oy = 0; oy < p.y.h; ++oy) {
    const int64_t row_written = static_cast<int64_t>(oy) * p.y.w * p.c_out;
    const int32_t base = oy * p.d_stride_h - p.d_pad_top;
    if (p.has_expand) {
      const int32_t first = base - p.pad_top;
      int32_t last = first + (p.d_kh - 1) * p.d_dil_h;
      if (last > p.e.h - 1) last = p.e.h - 1;
      int32_t r = first > next_row ? first : next_row;
      if (r < 0) r = 0;
      for (; r <= last; ++r) {  // ExpandRow(r): x rows y0 + ky * dil in range
        const int32_t y0 = r * p.e_stride_h - p.e_pad_top;
        for (int32_t ky = 0; ky < p.e_kh; ++ky) {
          const int32_t iy = y0 + ky * p.e_dil_h;
          if (iy < 0 || iy >= p.x.h || e_col >= p.x.w) continue;
          read(row_written, iy * x_row + static_cast<int64_t>(e_col) * p.x.c);
          break;  // the lowest row of this expansion row
        }
      }
      if (last + 1 > next_row) next_row = last + 1;
    }
    // without expansion, the lowest row of x the window of output row oy reads
    int32_t win_row = -1;
    if (!p.has_expand) {
      for (int32_t ky = 0; ky < p.d_kh && win_row < 0; ++ky) {
        const int32_t pr = base + ky * p.d_dil_h;
        if (pr < 0 || pr >= p.pd.h) continue;
        const int32_t er = pr - p.pad_top;
        if (er >= 0 && er < p.e.h) win_row = er;
      }
    }
    for (int32_t ox = 0; ox < p.y.w; ++ox) {
      const int64_t pix = static_cast<int64_t>(oy) * p.y.w + ox;
      const int64_t written = pix * p.c_out;  // bytes of y written before this pixel
      if (win_row >= 0) {
        const int32_t col0 = ox * p.d_stride_w - p.d_pad_left;
        for (int32_t kx = 0; kx < p.d_kw; ++kx) {
          const int32_t pc = col0 + kx * p.d_dil_w;
          if (pc < 0 || pc >= p.pd.w) continue;
          const int32_t ec = pc - p.pad_left;
          if (ec < 0 || ec >= p.e.w) continue;
          read(written, win_row * x_row + static_cast<int64_t>(ec) * p.x.c);
          break;  // the lowest column
        }
      }
      if (p.residual) read(written, pix * p.x.c);
    }
  }
  return static_cast<int32_t>(lag);
}

Status FusedIrb(const FusedIrbParams& p, const int8_t* x, const int8_t* w_e, const int32_t* b_e,
                const int8_t* w_d, const int32_t* b_d, const int8_t* w_p, const int32_t* b_p,
                int8_t* y, int8_t* scratch, int32_t scratch_bytes) {
  if (!x || !w_d || !w_p || !y || !scratch || (p.has_expand && !w_e) ||
      scratch_bytes < FusedIrbStreamBytes(p) || !p.d_rq.multiplier || !p.p_rq.multiplier ||
      (p.has_expand && !p.e_rq.multiplier)) {
    return Status::kBadParams;
  }
  const int32_t row_bytes = p.e.w * p.c_exp;
  int8_t* ring = scratch;
  int8_t* dpix = scratch + p.ring_rows * row_bytes;  // one pixel of depthwise output
  int8_t dpix2[kDwPairMax];  // a second one, for pixel pairs (C <= kDwPairMax)
  // the three stages' requantization, with the fast path where the biases allow it
  tflm_ref::ConvLoop expand = p.has_expand ? ExpandLoop(p) : tflm_ref::ConvLoop();
  if (p.has_expand) {
    expand.rq = tflm_ref::WithFastPath(p.e_rq, p.c_exp, int64_t{p.x.c} * p.e_kh * p.e_kw, b_e);
  }
  tflm_ref::DepthwiseLoop dw = DepthwiseOf(p);
  dw.rq = tflm_ref::WithFastPath(p.d_rq, p.c_exp, int64_t{p.d_kh} * p.d_kw, b_d);
  const Requant& d_rq = dw.rq;
  const Requant p_rq = tflm_ref::WithFastPath(p.p_rq, p.c_out, p.c_exp, b_p);
  auto row_of = [&](int32_t er) -> const int8_t* {
    return p.has_expand ? ring + (er % p.ring_rows) * row_bytes
                        : x + static_cast<int64_t>(er) * row_bytes;
  };
  int32_t next_row = 0;  // the next expansion row to compute (rows are computed in order)
  const int32_t C = p.c_exp;
  const bool fast_dw = p.d_kh * p.d_kw <= kMaxTaps;
  const int32_t pad_in = p.pad_value + p.d_in_offset;  // a PAD tap's (v + offset)
  for (int32_t oy = 0; oy < p.y.h; ++oy) {
    const int32_t base = oy * p.d_stride_h - p.d_pad_top;  // padded-row of tap ky = 0
    if (p.has_expand) {
      // The window needs expansion rows within [first, last] (first is the unclipped row of tap
      // 0, nondecreasing in oy, so rows below it are never needed again); compute the ones not
      // yet in the ring, in order. last - first < ring_rows, so none of them is overwritten.
      const int32_t first = base - p.pad_top;
      int32_t last = first + (p.d_kh - 1) * p.d_dil_h;
      if (last > p.e.h - 1) last = p.e.h - 1;
      int32_t r = first > next_row ? first : next_row;
      if (r < 0) r = 0;
      for (; r <= last; ++r) {
        ExpandRow(p, expand, x, w_e, b_e, r, ring + (r % p.ring_rows) * row_bytes);
      }
      if (last + 1 > next_row) next_row = last + 1;
    }
    // the window's rows for this output row: source row pointer, PAD row (nullptr) or skipped
    const int8_t* rows[kMaxTaps];
    bool row_used[kMaxTaps];
    if (fast_dw) {
      for (int32_t ky = 0; ky < p.d_kh; ++ky) {
        const int32_t pr = base + ky * p.d_dil_h;
        row_used[ky] = pr >= 0 && pr < p.pd.h;  // implicit (SAME) padding: tap skipped
        const int32_t er = pr - p.pad_top;
        rows[ky] = row_used[ky] && er >= 0 && er < p.e.h ? row_of(er) : nullptr;
      }
    }
    // the window's taps of output pixel ox: in-image taps (source pixel, weight offset), PAD
    // taps (weight offset); the int32 sum over taps wraps as the reference's does, in any order
    // (weight offsets in one array: in-image taps' from the front, PAD taps' from the back; at
    // most kMaxTaps in all)
    const int8_t* src[kMaxTaps];
    int32_t src_w[kMaxTaps];
    // the counts of in-image and PAD taps; for a 3x3 window (grid_3x3), the grid its in-image
    // taps form (in-image rows and columns are ranges): grid_rows rows of grid_cols taps, row by
    // row (one struct: the lambdas hold one reference to it, a smaller frame)
    struct {
      int32_t src, pad, grid_rows, grid_cols;
      bool grid_3x3;
    } n = {0, 0, 0, 0, fast_dw && p.d_kh == 3 && p.d_kw == 3};
    auto build_taps = [&](int32_t ox) {
      n.src = n.pad = n.grid_rows = n.grid_cols = 0;
      const int32_t col0 = ox * p.d_stride_w - p.d_pad_left;
      for (int32_t ky = 0; ky < p.d_kh; ++ky) {
        if (!row_used[ky]) continue;
        const int32_t row_first = n.src;
        for (int32_t kx = 0; kx < p.d_kw; ++kx) {
          const int32_t pc = col0 + kx * p.d_dil_w;
          if (pc < 0 || pc >= p.pd.w) continue;
          const int32_t ec = pc - p.pad_left;
          const int32_t wo = (ky * p.d_kw + kx) * C;
          if (rows[ky] && ec >= 0 && ec < p.e.w) {
            src[n.src] = rows[ky] + ec * C;
            src_w[n.src++] = wo;
          } else {
            src_w[kMaxTaps - 1 - n.pad++] = wo;
          }
        }
        if (n.grid_3x3 && n.src > row_first) {
          ++n.grid_rows;
          n.grid_cols = n.src - row_first;  // the same in every row with in-image taps
        }
      }
    };
    // project (1x1 CONV_2D) [+ residual ADD, interleaved per channel: see FusedIrbInPlaceLag]
    // the depthwise output dp of output pixel ox
    auto project = [&](int32_t ox, const int8_t* dp) {
      const int64_t pix = static_cast<int64_t>(oy) * p.y.w + ox;
      int8_t* yp = y + pix * p.c_out;
      if (p.residual) {
        // x[co] is read right before y[co] is written, channel by channel, as FusedIrbInPlaceLag
        // assumes (the dot products read only dp and the weights): up to kProjPairOut channels
        // the projection first, then AddResidualRun
        const int8_t* xp = x + pix * p.x.c;  // same dims as y then
        if (p.c_out <= kProjPairOut) {
          int8_t v[kProjPairOut];
          Pointwise(dp, C, p.p_in_offset, w_p, b_p, p_rq, p.c_out, v);
          AddResidualRun(p, xp, v, p.c_out, yp);
        } else {
          tflm_ref::PointwisePixel(dp, C, p.p_in_offset, w_p, b_p, p_rq, p.c_out,
                                   [&](int32_t co, int8_t pv) { yp[co] = AddResidual(p, xp[co], pv); });
        }
      } else {
        Pointwise(dp, C, p.p_in_offset, w_p, b_p, p_rq, p.c_out, yp);
      }
    };
    // depthwise (its taps built, src shifted by src_offset bytes), then project, of pixel ox
    auto pixel = [&](int32_t ox, int32_t src_offset) {
      if (fast_dw) {
        // a 3x3 window whose PAD taps add nothing (none, or pad_in = 0: pad_in * w = 0) takes
        // DepthwiseTapsRect on the grid (shifted as src)
        bool done = false;
        if (n.grid_rows > 0 && (n.pad == 0 || pad_in == 0)) {
          const int8_t* r1 = n.grid_rows > 1 ? src[n.grid_cols] : src[0];
          const int8_t* r2 = n.grid_rows > 2 ? src[2 * n.grid_cols] : src[0];
          const int32_t step = n.grid_cols > 1 ? static_cast<int32_t>(src[1] - src[0]) : 0;
          done = tflm_ref::DepthwiseTapsRect(n.grid_rows, n.grid_cols, src[0], r1, r2, step,
                                             w_d + src_w[0], 3 * C, C, b_d, C, p.d_in_offset,
                                             d_rq, dpix, src_offset);
        }
        if (!done) {
          tflm_ref::DepthwiseTaps(src, src_w, n.src, src_w + (kMaxTaps - n.pad), n.pad, pad_in,
                                  w_d, b_d, C, p.d_in_offset, d_rq, dpix, src_offset);
        }
      } else {
        tflm_ref::DepthwisePixel(dw, row_of, oy, ox, w_d, b_d, dpix);
      }
      project(ox, dpix);
    };
    // Interior pixels, [in0, in1): every column tap in the source (ec in [0, e.w)), so their
    // taps are those of pixel in0 shifted by (ox - in0) * stride_w pixels: one tap list per row.
    int32_t in0 = 0, in1 = 0;
    if (fast_dw) {
      const int32_t sw = p.d_stride_w;
      const int32_t lo = p.d_pad_left + p.pad_left;  // ox * sw >= lo
      const int32_t hi = p.e.w - 1 + lo - (p.d_kw - 1) * p.d_dil_w;  // ox * sw <= hi
      in0 = (lo + sw - 1) / sw;
      in1 = hi < 0 ? 0 : hi / sw + 1;
      if (in1 > p.y.w) in1 = p.y.w;
      if (in0 > in1) in0 = in1;
    }
    for (int32_t ox = 0; ox < in0; ++ox) {
      if (fast_dw) build_taps(ox);
      pixel(ox, 0);
    }
    if (in1 > in0) {
      build_taps(in0);
      const int32_t step = p.d_stride_w * C;
      int32_t ox = in0, off = 0;
      // two pixels at a time where both windows are 3x3 grids (2 or 3 rows) and dpix2 holds C:
      // one DepthwiseTapsGridPair (each tap's weights loaded once for both), then both projected
      // together (ProjectPair: each projection weight loaded once for both) or one by one.
      // (Pixel ox + 1's depthwise reads its source before pixel ox's projection writes y: reads
      // only earlier than one pixel at a time, of bytes FusedIrbInPlaceLag keeps unwritten.)
      if (n.grid_3x3 && n.grid_rows > 1 && n.grid_cols == 3 && (n.pad == 0 || pad_in == 0) &&
          C <= kDwPairMax) {
        const int32_t col_step = static_cast<int32_t>(src[1] - src[0]);
        auto pair = n.grid_rows == 3 ? tflm_ref::DepthwiseTapsGridPair<3>
                                     : tflm_ref::DepthwiseTapsGridPair<2>;
        for (; ox + 1 < in1; ox += 2, off += 2 * step) {
          pair(src[0] + off, src[3] + off, (n.grid_rows > 2 ? src[6] : src[0]) + off, col_step,
               step, w_d + src_w[0], 3 * C, C, b_d, C, p.d_in_offset, d_rq, dpix, dpix2);
          if (!ProjectPair(p, dpix, dpix2, w_p, b_p, p_rq, static_cast<int64_t>(oy) * p.y.w + ox,
                           x, y)) {
            project(ox, dpix);
            project(ox + 1, dpix2);
          }
        }
      }
      for (; ox < in1; ++ox, off += step) pixel(ox, off);
    }
    for (int32_t ox = in1; ox < p.y.w; ++ox) {  // (in0 <= in1)
      if (fast_dw) build_taps(ox);
      pixel(ox, 0);
    }
  }
  return Status::kOk;
}

}  // namespace core
}  // namespace tfmicro_train
