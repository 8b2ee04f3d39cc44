// TMT_CONV core. See conv_op.h and tfmicro_train/kernels/conv_ops.py.
#include "tflm_ops/core/conv_op.h"

#include <cstdint>
#include <cstring>

#include "tflm_ops/core/arith.h"

namespace tfmicro_train {
namespace core {

Status PrepareConvOp(const ConvOpSpec& s, ConvOpParams* out) {
  if (out == nullptr) return Status::kBadParams;
  if (s.kind < kConvOpConv2D || s.kind > kConvOpFullyConnected) return Status::kBadParams;
  if (s.x.h < 1 || s.x.w < 1 || s.x.c < 1 || s.y.h < 1 || s.y.w < 1 || s.y.c < 1 ||
      s.channels < 1 || s.y.c != s.channels) {
    return Status::kBadShape;
  }
  if (!tflm_ref::ValidQuant(s.x_q) || !tflm_ref::ValidQuant(s.y_q)) return Status::kBadParams;
  ConvOpParams p;
  p.kind = s.kind;
  p.x = s.x;
  p.y = s.y;
  p.x_offset = -s.x_q.zero_point;
  p.y_offset = s.y_q.zero_point;
  if (s.kind == kConvOpFullyConnected) {
    if (s.w_in_c != s.x.c || s.x.h != 1 || s.y.h != 1 || s.x.w != s.y.w) {
      return Status::kBadShape;
    }
  } else {
    const ConvSpec& c = s.conv;
    if (!tflm_ref::ValidConv(c)) return Status::kBadParams;
    if (s.kind == kConvOpConv2D ? s.w_in_c != s.x.c : (s.w_in_c != s.x.c || s.x.c != s.y.c)) {
      return Status::kBadShape;
    }
    if (tflm_ref::OutSize(c.padding, s.x.h, c.kh, c.stride_h, c.dil_h) != s.y.h ||
        tflm_ref::OutSize(c.padding, s.x.w, c.kw, c.stride_w, c.dil_w) != s.y.w) {
      return Status::kBadShape;
    }
    p.kh = c.kh;
    p.kw = c.kw;
    p.stride_h = c.stride_h;
    p.stride_w = c.stride_w;
    p.dil_h = c.dil_h;
    p.dil_w = c.dil_w;
    p.pad_top = tflm_ref::LeadingPad(c.stride_h, c.dil_h, s.x.h, c.kh, s.y.h);
    p.pad_left = tflm_ref::LeadingPad(c.stride_w, c.dil_w, s.x.w, c.kw, s.y.w);
  }
  if (!tflm_ref::ActivationRange(s.conv.act, s.y_q, &p.act_min, &p.act_max)) {
    return Status::kBadParams;
  }
  *out = p;
  return Status::kOk;
}

Status ConvOpMultipliers(float x_scale, const WeightScales& w, float y_scale, int32_t channels,
                         int32_t* multiplier, int32_t* shift) {
  if (!multiplier || !shift || channels < 1 || !tflm_ref::ValidScale(x_scale) ||
      !tflm_ref::ValidScale(y_scale) ||
      !tflm_ref::ChannelMultipliers(x_scale, w, y_scale, channels, multiplier, shift)) {
    return Status::kBadParams;
  }
  return Status::kOk;
}

namespace {

constexpr int32_t kMaxDepthwiseTaps = 49;  // windows up to 7x7 take the tap-list path

}  // namespace

namespace {

bool ValidBiasShifts(const int32_t* shift, int32_t channels) {
  for (int32_t c = 0; c < channels; ++c) {
    if (shift[c] < 0 || shift[c] > kMaxBiasShift) return false;
  }
  return true;
}

// ExpandBias for shifts already checked.
void ExpandChecked(const int32_t* base, const int16_t* delta, const int32_t* shift,
                   int32_t channels, int32_t* b) {
  for (int32_t c = 0; c < channels; ++c) {
    const int64_t change = static_cast<int64_t>(delta[c]) * (int64_t{1} << shift[c]);
    b[c] = Sat32(static_cast<int64_t>(base[c]) + change);
  }
}

// A narrow bias the ops can expand: every part present, every shift in [0, kMaxBiasShift].
bool ValidNarrowBias(const NarrowBias& bias, int32_t channels) {
  return bias.base && bias.delta && bias.shift && ValidBiasShifts(bias.shift, channels);
}

// One channel of TFLM's int8 MEAN (MeanOp): the `count` values `stride` apart from x[0] summed
// in a wrapping int32, less x_zero_point * count (in int64, truncated as TFLM's cast does),
// requantized with the folded 1 / count, offset and clamped.
int8_t MeanOfChannel(const int8_t* x, int32_t count, int32_t stride, int32_t x_zero_point,
                     int32_t multiplier, int32_t shift, int32_t y_zero_point) {
  uint32_t sum = 0;  // wraps as TFLM's int32 accumulator would (no UB)
  for (int32_t i = 0; i < count; ++i, x += stride) {
    sum += static_cast<uint32_t>(static_cast<int32_t>(*x));
  }
  // TFLM: static_cast<int32_t>(temp_sum - x_zp * count), the product and difference in int64
  const int64_t shifted = static_cast<int64_t>(static_cast<int32_t>(sum)) -
                          static_cast<int64_t>(x_zero_point) * count;
  const int32_t v = tflm_ref::MultiplyByQuantizedMultiplier(tflm_ref::Wrap32(shifted), multiplier,
                                                            shift) + y_zero_point;
  return static_cast<int8_t>(v < -128 ? -128 : (v > 127 ? 127 : v));
}

}  // namespace

Status ExpandBias(const int32_t* base, const int16_t* delta, const int32_t* shift,
                  int32_t channels, int32_t* b) {
  if (channels < 0) return Status::kBadShape;
  if (!ValidBiasShifts(shift, channels)) return Status::kBadParams;
  ExpandChecked(base, delta, shift, channels, b);
  return Status::kOk;
}

bool ConvOpTakesSplit(const ConvOpParams& p) {
  return p.kind == kConvOpFullyConnected ||
         (p.kind == kConvOpConv2D && p.kh == 1 && p.kw == 1 && p.stride_h == 1 &&
          p.stride_w == 1 && p.pad_top == 0 && p.pad_left == 0);
}

namespace {

// ConvChannels for a depthwise of at most kMaxDepthwiseTaps taps: per output pixel, the window's
// in-image taps (out-of-image ones are skipped, as the reference does), then the channels over
// them; a 3x3 window's in-image taps by their grid (DepthwiseTapsRect), other windows' by a tap
// list. (Out of line, as PointwiseChannels: each keeps its arrays off the other's stack.)
TMT_NOINLINE void DepthwiseTapsChannels(const ConvOpParams& p, const Requant& rq_c,
                                        const int8_t* x, const int8_t* w, const int32_t* b,
                                        int8_t* y, int32_t c0, int32_t n_c) {
  const int32_t channels = p.y.c;
  const int8_t* src[kMaxDepthwiseTaps];
  int32_t src_w[kMaxDepthwiseTaps];
  const bool k3x3 = p.kh == 3 && p.kw == 3;
  const int64_t row_bytes = static_cast<int64_t>(p.x.w) * channels;
  // the window's taps in the image along one axis (3 taps): the first one and their count
  auto in_range = [](int32_t i0, int32_t dil, int32_t n, int32_t* first) {
    int32_t count = 0;
    for (int32_t k = 2; k >= 0; --k) {
      const int32_t i = i0 + k * dil;
      if (i >= 0 && i < n) {
        *first = k;
        ++count;
      }
    }
    return count;
  };
  for (int32_t oy = 0; oy < p.y.h; ++oy) {
    const int32_t iy0 = oy * p.stride_h - p.pad_top;
    int32_t ky0 = 0;
    const int32_t n_rows = k3x3 ? in_range(iy0, p.dil_h, p.x.h, &ky0) : 0;
    for (int32_t ox = 0; ox < p.y.w; ++ox) {
      const int32_t ix0 = ox * p.stride_w - p.pad_left;
      int8_t* out = y + (static_cast<int64_t>(oy) * p.y.w + ox) * channels + c0;
      int32_t kx0 = 0;
      const int32_t n_cols = k3x3 ? in_range(ix0, p.dil_w, p.x.w, &kx0) : 0;
      if (n_rows > 0 && n_cols > 0) {
        // the taps in the image form an n_rows x n_cols grid (the others are skipped):
        // its row pointers (r0 for rows past n_rows, unused)
        const int8_t* r0 = x + static_cast<int64_t>(iy0 + ky0 * p.dil_h) * row_bytes +
                           static_cast<int64_t>(ix0 + kx0 * p.dil_w) * channels + c0;
        const int64_t dy = p.dil_h * row_bytes;
        // two pixels whose windows' columns are all in the image: one DepthwiseTapsGridPair
        // (ox + 1's grid is ox's shifted by stride_w pixels)
        int32_t unused = 0;
        if (n_rows > 1 && n_cols == 3 && ox + 1 < p.y.w &&
            in_range(ix0 + p.stride_w, p.dil_w, p.x.w, &unused) == 3) {
          auto pair = n_rows == 3 ? tflm_ref::DepthwiseTapsGridPair<3>
                                  : tflm_ref::DepthwiseTapsGridPair<2>;
          pair(r0, r0 + dy, r0 + 2 * dy, p.dil_w * channels, p.stride_w * channels,
               w + ky0 * 3 * channels + c0, 3 * channels, channels, b, n_c, p.x_offset, rq_c, out,
               out + channels);
          ++ox;
          continue;
        }
        if (tflm_ref::DepthwiseTapsRect(n_rows, n_cols, r0, n_rows > 1 ? r0 + dy : r0,
                                        n_rows > 2 ? r0 + 2 * dy : r0, p.dil_w * channels,
                                        w + (ky0 * 3 + kx0) * channels + c0, 3 * channels,
                                        channels, b, n_c, p.x_offset, rq_c, out)) {
          continue;
        }
      }
      int32_t n = 0;
      for (int32_t ky = 0; ky < p.kh; ++ky) {
        const int32_t iy = iy0 + ky * p.dil_h;
        if (iy < 0 || iy >= p.x.h) continue;
        for (int32_t kx = 0; kx < p.kw; ++kx) {
          const int32_t ix = ix0 + kx * p.dil_w;
          if (ix < 0 || ix >= p.x.w) continue;
          src[n] = x + (static_cast<int64_t>(iy) * p.x.w + ix) * channels + c0;
          src_w[n++] = (ky * p.kw + kx) * channels + c0;
        }
      }
      tflm_ref::DepthwiseTaps(src, src_w, n, nullptr, 0, 0, w, b, n_c, p.x_offset, rq_c, out);
    }
  }
}

// The output channels [c0, c1) of a 1x1 ConvChannels call in at most two parts: [c0, h1) with
// rows of w, then [r0, c1) with rows of split.rest; each with its biases, requantization and
// place in a y pixel.
struct WeightParts {
  struct Part {
    const int8_t* w;
    const int32_t* b;
    const Requant* rq;
    int32_t n;      // output channels
    int32_t y_off;  // their first one's offset in a pixel of y
  };
  Part part[2];
  int32_t count = 0;
};

// Pixels [0, pixels) two at a time with the input channels in parts (PointwisePairParts): the
// pixels done (none without the DSP extension). (Out of line: its accumulators stay off the
// stack of the other paths.)
TMT_NOINLINE int64_t PairsInParts(const ConvOpParams& p, const int8_t* x, int64_t pixels,
                                  const WeightParts& wp, int8_t* y, int32_t y_stride,
                                  tflm_ref::PairLanes* lanes) {
  int64_t i = 0;
  for (; i + 2 <= pixels; i += 2) {
    const int8_t* xp = x + i * p.x.c;
    for (int32_t k = 0; k < wp.count; ++k) {
      const WeightParts::Part& q = wp.part[k];
      int8_t* yp = y + i * y_stride + q.y_off;
      if (!tflm_ref::PointwisePairParts(xp, xp + p.x.c, p.x.c, p.x_offset, q.w, q.b, *q.rq, q.n,
                                        yp, yp + y_stride, lanes)) {
        return i;  // (for every part alike: the same in_c)
      }
    }
  }
  return i;
}

// ConvChannels for a 1x1 convolution or a fully-connected layer (ConvOpTakesSplit): pairs of
// output pixels (PointwisePair) where the lanes take the input, in parts of the input channels
// where it is wider (PairsInParts), single ones (PointwisePixelTo) otherwise; output channels
// [0, split.split) from w, the rest from split.rest.
TMT_NOINLINE void PointwiseChannels(const ConvOpParams& p, const Requant& rq, const Requant& rq_c,
                                    const int8_t* x, const int8_t* w, const int32_t* b,
                                    int8_t* y, const SplitWeights& split, int32_t c0, int32_t c1,
                                    int32_t y_stride, int32_t y_c0) {
  const int64_t pixels = static_cast<int64_t>(p.y.h) * p.y.w;
  // output channels [0, head) from w, [head, channels) from split.rest (rows of x.c weights)
  const int32_t head = split.rest != nullptr ? split.split : p.y.c;
  const int32_t h1 = c1 < head ? c1 : head;  // [c0, h1) from w, [r0, c1) from split.rest
  const int32_t r0 = c0 > head ? c0 : head;
  Requant rq_rest = rq_c;  // (fast: channels [r0, c1) are among [c0, c1))
  rq_rest.multiplier = rq.multiplier + r0;
  rq_rest.shift = rq.shift + r0;
  WeightParts wp;
  if (h1 > c0) wp.part[wp.count++] = {w + static_cast<int64_t>(c0) * p.x.c, b, &rq_c, h1 - c0, 0};
  if (c1 > r0) {
    wp.part[wp.count++] = {split.rest + static_cast<int64_t>(r0 - head) * p.x.c,
                           b ? b + (r0 - c0) : nullptr, &rq_rest, c1 - r0, r0 - c0};
  }
  y += c0 - y_c0;
  int64_t i = 0;
  tflm_ref::PairLanes lanes;  // two pixels at a time where it applies (PointwisePair)
  for (; i + 2 <= pixels && lanes.Widen(x + i * p.x.c, x + (i + 1) * p.x.c, p.x.c, p.x_offset);
       i += 2) {
    for (int32_t k = 0; k < wp.count; ++k) {
      const WeightParts::Part& q = wp.part[k];
      int8_t* yp = y + i * y_stride + q.y_off;
      tflm_ref::PointwisePair(lanes, q.w, q.b, *q.rq, q.n, yp, yp + y_stride);
    }
  }
  if (!tflm_ref::PairLanes::Takes(p.x.c)) i = PairsInParts(p, x, pixels, wp, y, y_stride, &lanes);
  for (; i < pixels; ++i) {
    for (int32_t k = 0; k < wp.count; ++k) {
      const WeightParts::Part& q = wp.part[k];
      tflm_ref::PointwisePixelTo(x + i * p.x.c, p.x.c, p.x_offset, q.w, q.b, *q.rq, q.n,
                                 y + i * y_stride + q.y_off);
    }
  }
}

// Output channels [c0, c1) of the op over every output pixel: b (null: no bias) holds their
// biases (b[c - c0]); the multipliers and weights are the op's whole tensors. Channel c of output
// pixel i goes to y[i * y_stride + c - y_c0]: y the op's whole output (y_stride = channels,
// y_c0 = 0), or, for CONV_2D, a buffer of the chunk (y_stride = c1 - c0, y_c0 = c0).
void ConvChannels(const ConvOpParams& p, const Requant& rq, const int8_t* x, const int8_t* w,
                  const int32_t* b, int8_t* y, const SplitWeights& split, int32_t c0,
                  int32_t c1, int32_t y_stride, int32_t y_c0) {
  const int32_t channels = p.y.c;
  const int32_t n_c = c1 - c0;
  Requant rq_c = rq;  // channel c0 first
  rq_c.multiplier = rq.multiplier + c0;
  rq_c.shift = rq.shift + c0;
  const int64_t window = p.kind == kConvOpDepthwise ? p.kh * p.kw : p.kh * p.kw * p.x.c;
  rq_c = tflm_ref::WithFastPath(rq_c, n_c, window, b);
  if (p.kind == kConvOpDepthwise && p.kh * p.kw <= kMaxDepthwiseTaps) {
    DepthwiseTapsChannels(p, rq_c, x, w, b, y, c0, n_c);
    return;
  }
  if (p.kind == kConvOpDepthwise) {
    tflm_ref::DepthwiseLoop l;
    l.src_h = l.pd_h = p.x.h;
    l.src_w = l.pd_w = p.x.w;
    l.c = p.x.c;
    l.kh = p.kh;
    l.kw = p.kw;
    l.stride_h = p.stride_h;
    l.stride_w = p.stride_w;
    l.dil_h = p.dil_h;
    l.dil_w = p.dil_w;
    l.d_pad_top = p.pad_top;
    l.d_pad_left = p.pad_left;
    l.in_offset = p.x_offset;
    l.rq = rq;
    l.rq.fast = rq_c.fast;  // (the same channels, indexed from 0)
    l.rq.folded = rq_c.folded;
    l.c_begin = c0;
    l.c_end = c1;
    const int64_t row_bytes = static_cast<int64_t>(p.x.w) * p.x.c;
    auto row_of = [&](int32_t r) { return x + r * row_bytes; };
    for (int32_t oy = 0; oy < p.y.h; ++oy) {
      for (int32_t ox = 0; ox < p.y.w; ++ox) {
        tflm_ref::DepthwisePixel(l, row_of, oy, ox, w, b,
                                 y + (static_cast<int64_t>(oy) * p.y.w + ox) * channels);
      }
    }
    return;
  }
  if (ConvOpTakesSplit(p)) {  // every output pixel (FC: row) reads the input pixel at one place
    PointwiseChannels(p, rq, rq_c, x, w, b, y, split, c0, c1, y_stride, y_c0);
    return;
  }
  tflm_ref::ConvLoop l;
  l.in_h = p.x.h;
  l.in_w = p.x.w;
  l.in_c = p.x.c;
  l.out_w = p.y.w;
  l.out_c = n_c;
  l.out_stride = y_stride;
  l.kh = p.kh;
  l.kw = p.kw;
  l.stride_h = p.stride_h;
  l.stride_w = p.stride_w;
  l.dil_h = p.dil_h;
  l.dil_w = p.dil_w;
  l.pad_top = p.pad_top;
  l.pad_left = p.pad_left;
  l.in_offset = p.x_offset;
  l.rq = rq_c;
  const int8_t* w_c = w + static_cast<int64_t>(c0) * p.kh * p.kw * p.x.c;
  for (int32_t oy = 0; oy < p.y.h; ++oy) {
    tflm_ref::ConvRow(l, x, w_c, b, oy,
                      y + static_cast<int64_t>(oy) * p.y.w * y_stride + (c0 - y_c0));
  }
}

Status CheckConvOp(const ConvOpParams& p, const int32_t* multiplier, const int32_t* shift,
                   const int8_t* x, const int8_t* w, const int8_t* y, const SplitWeights& split) {
  if (!multiplier || !shift || !x || !w || !y) return Status::kBadParams;
  if (split.rest != nullptr &&
      (!ConvOpTakesSplit(p) || split.split < 0 || split.split > p.y.c)) {
    return Status::kBadParams;
  }
  for (int32_t c = 0; c < p.y.c; ++c) {
    if (multiplier[c] < 0 || shift[c] < -31 || shift[c] > 31) return Status::kBadParams;
  }
  return Status::kOk;
}

Requant RequantOf(const ConvOpParams& p, const int32_t* multiplier, const int32_t* shift) {
  Requant rq;
  rq.multiplier = multiplier;
  rq.shift = shift;
  rq.output_offset = p.y_offset;
  rq.act_min = p.act_min;
  rq.act_max = p.act_max;
  return rq;
}

}  // namespace

Status ConvOp(const ConvOpParams& p, const int32_t* multiplier, const int32_t* shift,
              const int8_t* x, const int8_t* w, const int32_t* b, int8_t* y,
              const SplitWeights& split) {
  const Status st = CheckConvOp(p, multiplier, shift, x, w, y, split);
  if (st != Status::kOk) return st;
  ConvChannels(p, RequantOf(p, multiplier, shift), x, w, b, y, split, 0, p.y.c, p.y.c, 0);
  return Status::kOk;
}

Status ConvOpNarrowBias(const ConvOpParams& p, const int32_t* multiplier, const int32_t* shift,
                        const int8_t* x, const int8_t* w, const NarrowBias& bias, int8_t* y,
                        const SplitWeights& split) {
  const Status st = CheckConvOp(p, multiplier, shift, x, w, y, split);
  if (st != Status::kOk) return st;
  if (!ValidNarrowBias(bias, p.y.c)) return Status::kBadParams;  // (before any output)
  const Requant rq = RequantOf(p, multiplier, shift);
  int32_t b32[kBiasChunk];  // the int32 biases of one chunk of channels
  for (int32_t c0 = 0; c0 < p.y.c; c0 += kBiasChunk) {
    const int32_t c1 = p.y.c - c0 > kBiasChunk ? c0 + kBiasChunk : p.y.c;
    ExpandChecked(bias.base + c0, bias.delta + c0, bias.shift + c0, c1 - c0, b32);
    ConvChannels(p, rq, x, w, b32, y, split, c0, c1, p.y.c, 0);
  }
  return Status::kOk;
}

Status ConvOpMean(const ConvOpParams& p, const int32_t* multiplier, const int32_t* shift,
                  const int8_t* x, const int8_t* w, const int32_t* b, const NarrowBias* narrow,
                  const ConvMeanParams& m, int8_t* pooled, uint8_t* bits,
                  const SplitWeights& split) {
  const Status st = CheckConvOp(p, multiplier, shift, x, w, pooled, split);
  if (st != Status::kOk) return st;
  const int32_t pixels = p.y.h * p.y.w;
  if (p.kind != kConvOpConv2D || pixels < 1 || pixels > kMeanChunkBytes) return Status::kBadParams;
  if (m.multiplier < 0 || m.shift < -31 || m.shift > 31) return Status::kBadParams;
  if (m.mask && m.mask_min > m.mask_max) return Status::kBadParams;
  if (narrow != nullptr && !ValidNarrowBias(*narrow, p.y.c)) return Status::kBadParams;
  const int32_t channels = p.y.c;
  if (bits != nullptr) {
    const int32_t n_bytes = (pixels * channels + 7) / 8;
    for (int32_t i = 0; i < n_bytes; ++i) bits[i] = 0;
  }
  const Requant rq = RequantOf(p, multiplier, shift);
  int32_t chunk = kMeanChunkBytes / pixels;
  if (chunk > kBiasChunk) chunk = kBiasChunk;
  int8_t buf[kMeanChunkBytes];  // y of one chunk of channels: [pixels][c1 - c0]
  int32_t b32[kBiasChunk];
  for (int32_t c0 = 0; c0 < channels; c0 += chunk) {
    const int32_t c1 = channels - c0 > chunk ? c0 + chunk : channels;
    const int32_t n_c = c1 - c0;
    const int32_t* bias = b != nullptr ? b + c0 : nullptr;
    if (narrow != nullptr) {
      ExpandChecked(narrow->base + c0, narrow->delta + c0, narrow->shift + c0, n_c, b32);
      bias = b32;
    }
    ConvChannels(p, rq, x, w, bias, buf, split, c0, c1, n_c, c0);
    for (int32_t j = 0; j < n_c; ++j) {  // y's zero point is the mean's input offset
      pooled[c0 + j] = MeanOfChannel(buf + j, pixels, n_c, p.y_offset, m.multiplier, m.shift,
                                     m.pooled_zero_point);
    }
    if (bits == nullptr || !m.mask) continue;
    for (int32_t i = 0; i < pixels; ++i) {  // bit i * C + c of y, as TMT_MASK_PACK packs it
      for (int32_t j = 0; j < n_c; ++j) {
        const int32_t v = buf[i * n_c + j];
        if (v > m.mask_min && v < m.mask_max) {
          const int32_t bit = i * channels + c0 + j;
          bits[bit >> 3] = static_cast<uint8_t>(bits[bit >> 3] | (1u << (bit & 7)));
        }
      }
    }
  }
  return Status::kOk;
}

Status MeanOpMultiplier(float x_scale, float y_scale, int32_t count, int32_t* multiplier,
                        int32_t* shift) {
  if (!multiplier || !shift || count < 1 || !tflm_ref::ValidScale(x_scale) ||
      !tflm_ref::ValidScale(y_scale)) {
    return Status::kBadParams;
  }
  // QuantizeMultiplier(double(s_x) / double(s_y)) = that of double(s_x) * double(1.0f) /
  // double(s_y), which ChannelMultipliers computes in exact integer arithmetic (no soft-float
  // double division on FPU-less targets)
  int32_t m = 0, sh = 0;
  const float unit = 1.0f;
  WeightScales one;
  one.scales = &unit;
  one.n = 1;
  if (!tflm_ref::ChannelMultipliers(x_scale, one, y_scale, 1, &m, &sh)) return Status::kBadParams;
  int32_t k = 0;  // floor(log2(count))
  while ((count >> (k + 1)) != 0) ++k;
  if (k > 32) k = 32;
  if (k > 31 + sh) k = 31 + sh;
  if (sh - k > 31 || sh - k < -31) return Status::kBadParams;  // outside MeanOp's range
  *multiplier = static_cast<int32_t>((static_cast<int64_t>(m) * (int64_t{1} << k)) / count);
  *shift = sh - k;
  return Status::kOk;
}

Status MeanOp(const MeanOpParams& p, const int8_t* x, int8_t* y) {
  if (!x || !y || p.x.h < 1 || p.x.w < 1 || p.x.c < 1 || p.multiplier < 0 || p.shift > 31 ||
      p.shift < -31) {
    return Status::kBadParams;
  }
  const int32_t count = p.x.h * p.x.w;
  for (int32_t c = 0; c < p.x.c; ++c) {
    y[c] = MeanOfChannel(x + c, count, p.x.c, p.x_zero_point, p.multiplier, p.shift,
                         p.y_zero_point);
  }
  return Status::kOk;
}

}  // namespace core
}  // namespace tfmicro_train
