// TMT_FUSED_IRB core. See fused_irb.h and tfmicro_train/kernels/fused_ops.py.
#include "tflm_ops/core/fused_irb.h"

#include <cmath>
#include <cstdint>

namespace tfmicro_train {
namespace core {
namespace {

constexpr int32_t kQMin = -128;
constexpr int32_t kQMax = 127;
constexpr int32_t kAddLeftShift = 20;  // reference add.cc, int8

// ------------------------------------------------------------ TFLM fixed-point arithmetic

// Two's-complement wrap to int32 (TFLM's int32 accumulators wrap in practice).
inline int32_t Wrap32(int64_t v) { return static_cast<int32_t>(static_cast<uint32_t>(v)); }

// gemmlowp SaturatingRoundingDoublingHighMul.
inline int32_t Srdhm(int32_t a, int32_t b) {
  const bool overflow = a == b && a == INT32_MIN;
  const int64_t ab = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  const int64_t nudge = ab >= 0 ? (int64_t{1} << 30) : (1 - (int64_t{1} << 30));
  const int32_t high = static_cast<int32_t>((ab + nudge) / (int64_t{1} << 31));
  return overflow ? INT32_MAX : high;
}

// gemmlowp RoundingDivideByPOT, exponent in [0, 31].
inline int32_t RoundingDivideByPot(int32_t x, int exponent) {
  const int32_t mask = static_cast<int32_t>((int64_t{1} << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

// TFLM MultiplyByQuantizedMultiplier (double-rounding variant).
inline int32_t MultiplyByQuantizedMultiplier(int32_t x, int32_t multiplier, int32_t shift) {
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  const int32_t shifted =
      left >= 32 ? 0 : static_cast<int32_t>(static_cast<uint32_t>(x) << left);
  return RoundingDivideByPot(Srdhm(shifted, multiplier), right);
}

// TFLM QuantizeMultiplier (double). False for a non-finite or negative multiplier.
bool QuantizeMultiplier(double real, int32_t* multiplier, int32_t* shift) {
  if (!std::isfinite(real) || real < 0) return false;
  if (real == 0.0) {
    *multiplier = 0;
    *shift = 0;
    return true;
  }
  int exp = 0;
  const double q = std::frexp(real, &exp);
  int64_t q_fixed = static_cast<int64_t>(std::round(q * static_cast<double>(int64_t{1} << 31)));
  if (q_fixed == (int64_t{1} << 31)) {
    q_fixed /= 2;
    ++exp;
  }
  if (exp < -31) {
    exp = 0;
    q_fixed = 0;
  }
  *multiplier = static_cast<int32_t>(q_fixed);
  *shift = exp;
  return true;
}

inline bool ValidScale(float s) { return std::isfinite(s) && s > 0.0f; }
inline bool ValidZp(int32_t zp) { return zp >= kQMin && zp <= kQMax; }
inline bool ValidQuant(const TensorQuant& q) { return ValidScale(q.scale) && ValidZp(q.zero_point); }

// kernel_util CalculateActivationRangeQuantized for an int8 output. False for an unsupported
// activation or a bound that does not fit (absurd scales).
bool ActivationRange(int32_t act, const TensorQuant& q, int32_t* lo, int32_t* hi) {
  auto quantize = [&q](float f, int64_t* out) {
    const float r = std::round(f / q.scale);  // float32 division and rounding, as TFLM
    if (!(std::fabs(r) < 4.0e18f)) return false;
    *out = q.zero_point + static_cast<int64_t>(r);
    return true;
  };
  int64_t a = kQMin, b = kQMax, v = 0;
  switch (act) {
    case kActNone:
      break;
    case kActRelu:
      if (!quantize(0.0f, &v)) return false;
      a = v > kQMin ? v : kQMin;
      break;
    case kActRelu6:
      if (!quantize(0.0f, &v)) return false;
      a = v > kQMin ? v : kQMin;
      if (!quantize(6.0f, &v)) return false;
      b = v < kQMax ? v : kQMax;
      break;
    case kActReluN1To1:
      if (!quantize(-1.0f, &v)) return false;
      a = v > kQMin ? v : kQMin;
      if (!quantize(1.0f, &v)) return false;
      b = v < kQMax ? v : kQMax;
      break;
    default:
      return false;
  }
  *lo = static_cast<int32_t>(a);
  *hi = static_cast<int32_t>(b);
  return true;
}

// TFLite ComputeOutSize.
inline int32_t OutSize(int32_t padding, int32_t in, int32_t filt, int32_t stride, int32_t dil) {
  const int32_t eff = (filt - 1) * dil + 1;
  if (padding == kPaddingSame) return (in + stride - 1) / stride;
  const int32_t n = in + stride - eff;
  return n < 0 ? -1 : n / stride;  // negative: no valid output (Prepare rejects it)
}

// TFLite ComputePaddingWithOffset (leading padding only).
inline int32_t LeadingPad(int32_t stride, int32_t dil, int32_t in, int32_t filt, int32_t out) {
  const int32_t eff = (filt - 1) * dil + 1;
  int32_t total = (out - 1) * stride + eff - in;
  total = total > 0 ? total : 0;
  return total / 2;
}

inline bool ValidConv(const ConvSpec& s) {
  return s.kh >= 1 && s.kw >= 1 && s.stride_h >= 1 && s.stride_w >= 1 && s.dil_h >= 1 &&
         s.dil_w >= 1 && (s.padding == kPaddingSame || s.padding == kPaddingValid);
}

// PopulateConvolutionQuantizationParams: per-channel multipliers in double precision.
bool ChannelMultipliers(float in_scale, const WeightScales& w, float out_scale, int32_t channels,
                        int32_t* mult, int32_t* shift) {
  if (w.scales == nullptr || (w.n != 1 && w.n != channels)) return false;
  for (int32_t c = 0; c < channels; ++c) {
    const float ws = w.n == 1 ? w.scales[0] : w.scales[c];
    if (!ValidScale(ws)) return false;
    const double real =
        static_cast<double>(in_scale) * static_cast<double>(ws) / static_cast<double>(out_scale);
    if (!QuantizeMultiplier(real, &mult[c], &shift[c])) return false;
  }
  return true;
}

// One requantization stage; words == nullptr checks the weight scales but leaves the
// multipliers unset.
bool MakeRequant(float in_scale, const WeightScales& w, const TensorQuant& out, int32_t act,
                 int32_t channels, int32_t* words, Requant* rq) {
  if (w.scales == nullptr || (w.n != 1 && w.n != channels)) return false;
  for (int32_t c = 0; c < w.n; ++c) {
    if (!ValidScale(w.scales[c])) return false;
  }
  if (words) {
    if (!ChannelMultipliers(in_scale, w, out.scale, channels, words, words + channels)) {
      return false;
    }
    rq->multiplier = words;
    rq->shift = words + channels;
  } else {
    rq->multiplier = nullptr;
    rq->shift = nullptr;
  }
  rq->output_offset = out.zero_point;
  return ActivationRange(act, out, &rq->act_min, &rq->act_max);
}

inline int8_t Requantize(int64_t acc, const Requant& rq, int32_t c) {
  int32_t v = MultiplyByQuantizedMultiplier(Wrap32(acc), rq.multiplier[c], rq.shift[c]);
  v += rq.output_offset;
  v = v < rq.act_min ? rq.act_min : v;
  v = v > rq.act_max ? rq.act_max : v;
  return static_cast<int8_t>(v);
}

// One row `r` of the expansion (CONV_2D reference_integer_ops::ConvPerChannel) into `out`
// [e.w, c_exp].
void ExpandRow(const FusedIrbParams& p, const int8_t* x, const int8_t* w, const int32_t* b,
               int32_t r, int8_t* out) {
  const int32_t in_c = p.x.c;
  const int32_t y0 = r * p.e_stride_h - p.e_pad_top;
  for (int32_t ex = 0; ex < p.e.w; ++ex) {
    const int32_t x0 = ex * p.e_stride_w - p.e_pad_left;
    for (int32_t co = 0; co < p.c_exp; ++co) {
      int64_t acc = 0;
      for (int32_t ky = 0; ky < p.e_kh; ++ky) {
        const int32_t iy = y0 + ky * p.e_dil_h;
        if (iy < 0 || iy >= p.x.h) continue;
        for (int32_t kx = 0; kx < p.e_kw; ++kx) {
          const int32_t ix = x0 + kx * p.e_dil_w;
          if (ix < 0 || ix >= p.x.w) continue;
          const int8_t* xp = x + (static_cast<int64_t>(iy) * p.x.w + ix) * in_c;
          const int8_t* wp = w + ((static_cast<int64_t>(co) * p.e_kh + ky) * p.e_kw + kx) * in_c;
          for (int32_t ci = 0; ci < in_c; ++ci) {
            acc += static_cast<int64_t>(xp[ci] + p.x_offset) * wp[ci];
          }
        }
      }
      if (b) acc += b[co];
      out[ex * p.c_exp + co] = Requantize(acc, p.e_rq, co);
    }
  }
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
  int32_t* w = words;
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
    if (!MakeRequant(s.x_q.scale, s.w_expand_scales, s.e_q, e.act, s.c_exp, w, &p.e_rq)) {
      return Status::kBadParams;
    }
  } else {
    if (s.x.c != s.c_exp) return Status::kBadShape;
    p.e.h = s.x.h;
    p.e.w = s.x.w;
  }
  if (w) w += 2 * s.c_exp;
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
  if (!MakeRequant(s.d_in_q.scale, s.w_dw_scales, s.d_q, d.act, s.c_exp, w, &p.d_rq)) {
    return Status::kBadParams;
  }
  if (w) w += 2 * s.c_exp;
  p.p_in_offset = -s.d_q.zero_point;
  const TensorQuant& pq = s.residual ? s.p_q : s.y_q;
  if (!MakeRequant(s.d_q.scale, s.w_project_scales, pq, s.project_act, s.c_out, w, &p.p_rq)) {
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
  *out = p;
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
  int32_t next_row = 0;  // the next expansion row to compute (rows are computed in order)
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
        ExpandRow(p, x, w_e, b_e, r, ring + (r % p.ring_rows) * row_bytes);
      }
      if (last + 1 > next_row) next_row = last + 1;
    }
    for (int32_t ox = 0; ox < p.y.w; ++ox) {
      const int32_t col0 = ox * p.d_stride_w - p.d_pad_left;
      // depthwise (reference_integer_ops::DepthwiseConvPerChannel) for one pixel
      for (int32_t c = 0; c < p.c_exp; ++c) {
        int64_t acc = 0;
        for (int32_t ky = 0; ky < p.d_kh; ++ky) {
          const int32_t pr = base + ky * p.d_dil_h;
          if (pr < 0 || pr >= p.pd.h) continue;  // implicit (SAME) padding: tap skipped
          const int32_t er = pr - p.pad_top;
          const bool row_in = er >= 0 && er < p.e.h;
          const int8_t* row = nullptr;
          if (row_in) {
            row = p.has_expand ? ring + (er % p.ring_rows) * row_bytes
                               : x + static_cast<int64_t>(er) * row_bytes;
          }
          for (int32_t kx = 0; kx < p.d_kw; ++kx) {
            const int32_t pc = col0 + kx * p.d_dil_w;
            if (pc < 0 || pc >= p.pd.w) continue;
            const int32_t ec = pc - p.pad_left;
            const int32_t v = (row_in && ec >= 0 && ec < p.e.w) ? row[ec * p.c_exp + c]
                                                                : p.pad_value;  // PAD op
            acc += static_cast<int64_t>(v + p.d_in_offset) *
                   w_d[(ky * p.d_kw + kx) * p.c_exp + c];
          }
        }
        if (b_d) acc += b_d[c];
        dpix[c] = Requantize(acc, p.d_rq, c);
      }
      // project (1x1 CONV_2D) [+ residual ADD]
      const int64_t pix = static_cast<int64_t>(oy) * p.y.w + ox;
      int8_t* yp = y + pix * p.c_out;
      const int8_t* xp = p.residual ? x + pix * p.x.c : nullptr;  // same dims as y then
      for (int32_t co = 0; co < p.c_out; ++co) {
        const int8_t* wp = w_p + static_cast<int64_t>(co) * p.c_exp;
        int64_t acc = 0;
        for (int32_t c = 0; c < p.c_exp; ++c) {
          acc += static_cast<int64_t>(dpix[c] + p.p_in_offset) * wp[c];
        }
        if (b_p) acc += b_p[co];
        const int8_t pv = Requantize(acc, p.p_rq, co);
        yp[co] = p.residual ? AddResidual(p, xp[co], pv) : pv;
      }
    }
  }
  return Status::kOk;
}

}  // namespace core
}  // namespace tfmicro_train
