"""Numpy reference of the TMT_* training ops: the integer-arithmetic contract (docs/contract.md).

Every function here is mirrored bit for bit by a C++ core in tflm_ops/core/. Conventions:

* Gradients travel as an int8 tensor plus a float32 scalar scale (real = q * scale), the scale chosen
  at run time by `dyn_quantize` (a power-of-two shift of a wide integer accumulator).
* Activations are NHWC with batch 1; conv weights [CO, KH, KW, CI]; depthwise [1, KH, KW, C];
  fully-connected weights [CO, CI] are handled as a 1x1 conv on a 1x1 image.
* float32 appears only in per-tensor or per-channel scalars, always as explicit single-precision
  operations in a fixed order, so a C++ build with -ffp-contract=off reproduces it exactly.
* `backward="fp32"` variants (`*_f32`) carry float32 real gradients instead; every float sum
  starts at +0.0 and adds its terms one at a time in the order the contract states.
* Updates are in place, with seeded counter-based stochastic rounding so that updates smaller than
  one int8 step still move the weights in expectation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32
INT8_GRAD_MAX = 127
Q16 = 16  # fractional bits of an update before stochastic rounding
WMUL_BITS = 15  # per-channel weight-scale ratios are Q15
POOL_BITS = 15  # average-pool reciprocal weights are Q15
GRAD_ADD_BITS = 14  # gradient-sum alignment weights are Q14
SAT62 = (1 << 62) - 1


class TrainingOpError(ValueError):
    """A training op refused its inputs (the device returns kTfLiteError with the same text)."""


# --------------------------------------------------------------------------- shared arithmetic


def round_shift_right(x: np.ndarray, shift: int) -> np.ndarray:
    """Arithmetic right shift by `shift` >= 0 rounding half up: (x + 2^(shift-1)) >> shift."""
    x = np.asarray(x, np.int64)
    if shift <= 0:
        return x
    return (x + (np.int64(1) << np.int64(shift - 1))) >> np.int64(shift)


def bit_length(m: int) -> int:
    """Number of bits of a non-negative integer (0 for 0)."""
    return int(m).bit_length()


def dyn_quantize(acc: np.ndarray) -> tuple[np.ndarray, int]:
    """Wide accumulator -> int8 in [-127, 127] and the power-of-two shift applied.

    shift = max(0, bit_length(max|acc|) - 7); q = clamp(round_shift_right(acc, shift), -127, 127).
    """
    acc = np.asarray(acc, np.int64)
    m = int(np.abs(acc).max()) if acc.size else 0
    shift = max(0, bit_length(m) - 7)
    q = np.clip(round_shift_right(acc, shift), -INT8_GRAD_MAX, INT8_GRAD_MAX)
    return q.astype(np.int8), shift


def sat32(x: np.ndarray) -> np.ndarray:
    """Saturate int64 values to int32."""
    return np.clip(np.asarray(x, np.int64), -(2**31), 2**31 - 1)


def quantize_multiplier_f32(real: np.float32) -> tuple[int, int]:
    """float32 -> (M, shift) with real == M * 2^(shift - 31) exactly; M in [2^30, 2^31) or 0."""
    real = F32(real)
    if real == 0 or not np.isfinite(real):
        return 0, 0
    frac, exp = np.frexp(real)  # frac in [0.5, 1) for positive values, exact
    return int(np.ldexp(F32(frac), 31)), int(exp)


def requant64(acc: np.ndarray, multiplier: int, shift: int) -> np.ndarray:
    """acc (int32 range) * M * 2^(shift-31), rounded half up, saturated to +-(2^62 - 1)."""
    prod = np.asarray(acc, np.int64) * np.int64(multiplier)
    rs = 31 - shift
    if rs > 0:
        return round_shift_right(prod, min(rs, 62))
    ls = -rs
    if ls > 62:
        return np.where(prod > 0, SAT62, np.where(prod < 0, -SAT62, 0)).astype(np.int64)
    lim = np.int64(SAT62 >> ls)
    return np.where(prod > lim, SAT62, np.where(prod < -lim, -SAT62, prod << np.int64(ls)))


def hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32 integer hash (uint32 -> uint32), wrapping arithmetic."""
    x = np.asarray(x, np.uint32).copy()
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def rounding_noise(seed: int, counter: int, n: int) -> np.ndarray:
    """n uniform draws in [0, 2^16) for update number `counter` of the op seeded `seed`."""
    with np.errstate(over="ignore"):
        base = hash32(np.uint32(seed & 0xFFFFFFFF) ^ (np.uint32(counter) * np.uint32(0x9E3779B9)))
        idx = np.arange(n, dtype=np.uint32) + base
    return (hash32(idx) >> np.uint32(16)).astype(np.int64)


def stochastic_step(delta_q16: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """floor((delta + noise) / 2^16): an unbiased integer step from a Q16 update."""
    return (np.asarray(delta_q16, np.int64) + noise) >> np.int64(Q16)


def update_multipliers(lr: np.float32, g_scale: np.float32, factor: np.ndarray) -> list[tuple]:
    """Per-channel (M, shift) of (lr * g_scale) * factor[c] * 2^16, all float32."""
    lg = F32(F32(lr) * F32(g_scale))
    return [quantize_multiplier_f32(F32(lg * F32(f))) for f in np.asarray(factor, F32)]


def apply_update(
    values: np.ndarray, acc: np.ndarray, mults: list[tuple], noise: np.ndarray, lo: int, hi: int
) -> np.ndarray:
    """values[c, ...] - stochastic_step(requant64(acc[c, ...], M_c, shift_c + 16)), clamped."""
    out = values.astype(np.int64).copy()
    flat_acc = acc.reshape(acc.shape[0], -1)
    flat_out = out.reshape(out.shape[0], -1)
    per = flat_acc.shape[1]
    for c, (m, s) in enumerate(mults):
        d = requant64(flat_acc[c], m, s + Q16)
        flat_out[c] = np.clip(flat_out[c] - stochastic_step(d, noise[c * per:(c + 1) * per]), lo, hi)
    return out.astype(values.dtype)


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ConvGeom:
    """Geometry of a forward convolution / pooling window (dilation 1)."""

    stride_h: int = 1
    stride_w: int = 1
    pad_top: int = 0
    pad_left: int = 0


@dataclass(frozen=True)
class UpdateParams:
    """Options of a parameter-update op."""

    update_channels: int  # channels [0, update_channels) of the parameter are updated
    seed: int  # stochastic-rounding seed (the op's counter advances each training step)
    x_zero_point: int = 0  # zero point of the forward input (weight updates only)


def _as_nhwc(a: np.ndarray) -> np.ndarray:
    """[1, C] -> [1, 1, 1, C]; NHWC tensors unchanged."""
    return a.reshape(1, 1, 1, -1) if a.ndim == 2 else a


def _windows(ih: int, kh: int, stride: int, pad: int, oh: int) -> list[tuple[int, int, int]]:
    """For each kernel row k: (k, first output row, count) such that input rows are in range."""
    out = []
    for k in range(kh):
        o0 = 0
        while o0 < oh and o0 * stride - pad + k < 0:
            o0 += 1
        o1 = oh
        while o1 > o0 and (o1 - 1) * stride - pad + k >= ih:
            o1 -= 1
        out.append((k, o0, o1 - o0))
    return out


def _patch_pairs(in_hw: tuple[int, int], out_hw: tuple[int, int], k_hw: tuple[int, int],
                 g: ConvGeom):
    """Yield (kh, kw, out-slice, in-slice) pairs of a strided window."""
    rows = _windows(in_hw[0], k_hw[0], g.stride_h, g.pad_top, out_hw[0])
    cols = _windows(in_hw[1], k_hw[1], g.stride_w, g.pad_left, out_hw[1])
    for kh, oh0, nh in rows:
        for kw, ow0, nw in cols:
            if nh <= 0 or nw <= 0:
                continue
            ih0 = oh0 * g.stride_h - g.pad_top + kh
            iw0 = ow0 * g.stride_w - g.pad_left + kw
            out_sl = (slice(oh0, oh0 + nh), slice(ow0, ow0 + nw))
            in_sl = (slice(ih0, ih0 + (nh - 1) * g.stride_h + 1, g.stride_h),
                     slice(iw0, iw0 + (nw - 1) * g.stride_w + 1, g.stride_w))
            yield kh, kw, out_sl, in_sl


def _out_scale(base: np.float32, exponent: int) -> np.float32:
    return F32(np.ldexp(F32(base), exponent))


# --------------------------------------------------------------------------- loss ops


def softmax_ce_grad(probs: np.ndarray, label: int, loss_lut: np.ndarray):
    """TMT_SOFTMAX_CE_GRAD: int8 softmax output (scale 1/256, zp -128) and label -> dL/dlogits.

    d_i = (p_i + 128) - 256 * [i == label]; g_i = clamp(round_shift_right(d_i, 1), -127, 127);
    scale = 1/128; loss = loss_lut[p_label + 128].
    """
    d, loss = _softmax_delta(probs, label, loss_lut)
    g = np.clip(round_shift_right(d, 1), -127, 127).astype(np.int8).reshape(probs.shape)
    return g, F32(1.0 / 128.0), loss


def _softmax_delta(probs: np.ndarray, label: int, loss_lut: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """d_i = (p_i + 128) - 256 [i == label] (int64, flat) and the loss loss_lut[p_label + 128];
    the label is validated first."""
    n = probs.size
    if not 0 <= int(label) < n:
        raise TrainingOpError(f"TMT_SOFTMAX_CE_GRAD: label {int(label)} out of range [0, {n})")
    k = probs.reshape(-1).astype(np.int64) + 128
    d = k.copy()
    d[int(label)] -= 256
    return d, F32(loss_lut[k[int(label)]])


def mse_grad(y: np.ndarray, target: np.ndarray, scale: float):
    """TMT_MSE_GRAD: int8 prediction and target (same quantization) -> dL/dy of mean squared error.

    d = y - t; g = clamp(round_shift_right(d, 1), -127, 127); g_scale = (s * 4) / N;
    loss = ((s * s) * sum(d^2)) / N.
    """
    d, loss = _mse_delta(y, target, scale)
    g = np.clip(round_shift_right(d, 1), -127, 127).astype(np.int8)
    return g, F32(F32(F32(scale) * F32(4.0)) / F32(d.size)), loss


def _mse_delta(y: np.ndarray, target: np.ndarray, scale: float) -> tuple[np.ndarray, np.float32]:
    """d = y - t (int64) and the loss ((s * s) * sum(d^2)) / N."""
    d = y.astype(np.int64) - target.astype(np.int64)
    s = F32(scale)
    return d, F32(F32(F32(s * s) * F32(int((d * d).sum()))) / F32(d.size))


# --------------------------------------------------------------------------- gradient plumbing


def act_grad(g: np.ndarray, y: np.ndarray, act_min: int, act_max: int) -> np.ndarray:
    """TMT_ACT_GRAD: pass the gradient where act_min < y < act_max (fused ReLU/ReLU6), else 0."""
    keep = (y.astype(np.int32) > act_min) & (y.astype(np.int32) < act_max)
    return np.where(keep, g, 0).astype(g.dtype)


def mask_pack(y: np.ndarray, act_min: int, act_max: int) -> np.ndarray:
    """TMT_MASK_PACK: bit i (LSB first, byte i // 8) = act_min < y[i] < act_max; ceil(N/8) bytes.

    Run in the forward pass so that only the packed mask, not y, is kept for the backward pass."""
    flat = y.reshape(-1).astype(np.int32)
    return np.packbits((flat > act_min) & (flat < act_max), bitorder="little")


def mask_grad(g: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """TMT_MASK_GRAD: g where the packed mask bit is set, else 0 (scale unchanged)."""
    keep = np.unpackbits(bits, count=g.size, bitorder="little").astype(bool)
    return np.where(keep.reshape(g.shape), g, 0).astype(g.dtype)


def reshape_grad(g: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """TMT_RESHAPE_GRAD: the same bytes in the forward input's shape."""
    return np.ascontiguousarray(g).reshape(in_shape)


def grad_add(g1: np.ndarray, s1: np.float32, g2: np.ndarray, s2: np.float32):
    """TMT_GRAD_ADD: sum of two gradients with different scales.

    S = max(s1, s2); w_i = int32(s_i / S * 2^14 + 0.5) (float32); acc = g1 w1 + g2 w2;
    (q, shift) = dyn_quantize(acc); scale = S * 2^(shift - 14).
    """
    s1, s2 = F32(s1), F32(s2)
    big = max(s1, s2)
    if big == 0:
        return np.zeros_like(g1), F32(0.0)
    w1 = int(F32(F32(F32(s1 / big) * F32(1 << GRAD_ADD_BITS)) + F32(0.5)))
    w2 = int(F32(F32(F32(s2 / big) * F32(1 << GRAD_ADD_BITS)) + F32(0.5)))
    acc = g1.astype(np.int64) * w1 + g2.astype(np.int64) * w2
    q, shift = dyn_quantize(acc)
    return q, _out_scale(big, shift - GRAD_ADD_BITS)


def mean_grad(g: np.ndarray, g_scale: np.float32, in_shape: tuple[int, ...], inv_count: float):
    """TMT_MEAN_GRAD: backward of a spatial mean: broadcast g over H, W; scale *= 1/(H*W)."""
    out = np.broadcast_to(g.reshape(1, 1, 1, -1), in_shape).astype(np.int8)
    return out, F32(F32(g_scale) * F32(inv_count))


def broadcast_inv(h: int, w: int) -> np.float32:
    """A folded TMT_MEAN_GRAD's inv_count: float32 1 / (h * w) (C++ core::BroadcastScale)."""
    return np.float32(1.0) / np.float32(h * w)


def broadcast_grad(g: np.ndarray, g_scale: np.float32, hw: tuple[int, int],
                   bits: np.ndarray | None, scale_mul: float):
    """The gradient a reader with options g_bcast_h / g_bcast_w (head.fold_broadcast_grads)
    stands for: mask_grad(mean_grad(g)) of the folded TMT_MEAN_GRAD (and TMT_MASK_GRAD), i.e.
    g [C] broadcast over H x W, zero where the packed mask bit (pixel * C + c) is clear (bits
    None: no mask); scale F32(g_scale * scale_mul), scale_mul = float32 1 / (H * W)."""
    c = g.size
    full, s = mean_grad(g, g_scale, (1, hw[0], hw[1], c), scale_mul)
    if bits is not None:
        full = mask_grad(full, bits)
    return np.ascontiguousarray(full), s


def pad_grad(g: np.ndarray, in_shape: tuple[int, ...], pad_top: int, pad_left: int) -> np.ndarray:
    """TMT_PAD_GRAD: backward of a spatial zero-pad: crop the gradient (scale unchanged)."""
    _, ih, iw, _ = in_shape
    return np.ascontiguousarray(g[:, pad_top:pad_top + ih, pad_left:pad_left + iw, :])


def avgpool_grad(g: np.ndarray, g_scale: np.float32, in_shape: tuple[int, ...],
                 filt: tuple[int, int], geom: ConvGeom):
    """TMT_AVGPOOL_GRAD: each output gradient spread over its window's valid inputs.

    Weight per window = (2^15 + count/2) // count with count the window's in-bounds elements;
    acc is int64; (q, shift) = dyn_quantize(acc); scale = g_scale * 2^(shift - 15).
    """
    _, ih, iw, _ = in_shape
    gg = g[0].astype(np.int64)
    oh, ow, _ = gg.shape
    count = np.zeros((oh, ow), np.int64)
    for _kh, _kw, out_sl, _in_sl in _patch_pairs((ih, iw), (oh, ow), filt, geom):
        count[out_sl] += 1
    wts = (np.int64(1 << POOL_BITS) + count // 2) // np.maximum(count, 1)
    gw = gg * wts[:, :, None]
    acc = np.zeros((ih, iw, gg.shape[2]), np.int64)
    for _kh, _kw, out_sl, in_sl in _patch_pairs((ih, iw), (oh, ow), filt, geom):
        acc[in_sl] += gw[out_sl]
    q, shift = dyn_quantize(acc)
    return q[None], _out_scale(g_scale, shift - POOL_BITS)


def maxpool_grad(g: np.ndarray, g_scale: np.float32, x: np.ndarray, y: np.ndarray,
                 filt: tuple[int, int], geom: ConvGeom):
    """TMT_MAXPOOL_GRAD: route each output gradient to the first window input equal to the output.

    Window positions are scanned in (kh, kw) order; none equal (clamped by an activation) gives no
    gradient. acc is int64; (q, shift) = dyn_quantize(acc); scale = g_scale * 2^shift.
    """
    _, ih, iw, c = x.shape
    gg, yy, xx = g[0].astype(np.int64), y[0], x[0]
    oh, ow, _ = gg.shape
    taken = np.zeros((oh, ow, c), bool)
    acc = np.zeros((ih, iw, c), np.int64)
    for _kh, _kw, out_sl, in_sl in _patch_pairs((ih, iw), (oh, ow), filt, geom):
        hit = (xx[in_sl] == yy[out_sl]) & ~taken[out_sl]
        acc[in_sl] += np.where(hit, gg[out_sl], 0)
        taken[out_sl] |= hit
    q, shift = dyn_quantize(acc)
    return q[None], _out_scale(g_scale, shift)


# --------------------------------------------------------------------------- input gradients


def conv_input_grad(g: np.ndarray, g_scale: np.float32, w: np.ndarray, wmul: np.ndarray,
                    w_scale_max: float, in_shape: tuple[int, ...], geom: ConvGeom):
    """TMT_CONV_INPUT_GRAD (Conv2D, FullyConnected): dL/dx of y = conv(x, W).

    acc[ih, iw, ci] = sum over (co, kh, kw) hitting (ih, iw) of (g[oh, ow, co] * wmul[co]) * W,
    wmul = Q15 ratio s_W[co] / max(s_W), int64 accumulator;
    (q, shift) = dyn_quantize(acc); scale = (g_scale * w_scale_max) * 2^(shift - 15).
    """
    g4 = _as_nhwc(g)
    w4 = w.reshape(w.shape[0], 1, 1, -1) if w.ndim == 2 else w
    in4 = (1, 1, 1, in_shape[-1]) if len(in_shape) == 2 else tuple(in_shape)
    _, ih, iw, ci = in4
    gw = g4[0].astype(np.int64) * wmul.astype(np.int64)[None, None, :]
    oh, ow, co = gw.shape
    acc = np.zeros((ih, iw, ci), np.int64)
    for kh, kw, out_sl, in_sl in _patch_pairs((ih, iw), (oh, ow), w4.shape[1:3], geom):
        part = gw[out_sl]
        acc[in_sl] += (part.reshape(-1, co) @ w4[:, kh, kw, :].astype(np.int64)).reshape(
            part.shape[0], part.shape[1], ci)
    q, shift = dyn_quantize(acc)
    scale = _out_scale(F32(F32(g_scale) * F32(w_scale_max)), shift - WMUL_BITS)
    return q.reshape(in_shape), scale


def depthwise_input_grad(g: np.ndarray, g_scale: np.float32, w: np.ndarray, wmul: np.ndarray,
                         w_scale_max: float, in_shape: tuple[int, ...], geom: ConvGeom):
    """TMT_DW_INPUT_GRAD: dL/dx of a depthwise conv (multiplier 1); contract as conv_input_grad."""
    _, ih, iw, c = in_shape
    gw = g[0].astype(np.int64) * wmul.astype(np.int64)[None, None, :]
    oh, ow, _ = gw.shape
    acc = np.zeros((ih, iw, c), np.int64)
    for kh, kw, out_sl, in_sl in _patch_pairs((ih, iw), (oh, ow), w.shape[1:3], geom):
        acc[in_sl] += gw[out_sl] * w[0, kh, kw, :].astype(np.int64)
    q, shift = dyn_quantize(acc)
    scale = _out_scale(F32(F32(g_scale) * F32(w_scale_max)), shift - WMUL_BITS)
    return q[None], scale


# --------------------------------------------------------------------------- parameter updates


def conv_weight_grad_acc(g: np.ndarray, x: np.ndarray, x_zp: int, k_hw: tuple[int, int],
                         geom: ConvGeom, channels: int) -> np.ndarray:
    """int32 acc[co, kh, kw, ci] = sat32(sum_{oh,ow} g[oh,ow,co] * (x[ih,iw,ci] - x_zp)), co < channels."""
    g4, x4 = _as_nhwc(g), _as_nhwc(x)
    gg = g4[0, :, :, :channels].astype(np.int64)
    xx = x4[0].astype(np.int64) - x_zp
    oh, ow, _ = gg.shape
    _, ih, iw, ci = x4.shape
    acc = np.zeros((channels, k_hw[0], k_hw[1], ci), np.int64)
    for kh, kw, out_sl, in_sl in _patch_pairs((ih, iw), (oh, ow), k_hw, geom):
        gp, xp = gg[out_sl], xx[in_sl]
        acc[:, kh, kw, :] = gp.reshape(-1, channels).T @ xp.reshape(-1, ci)
    return sat32(acc)


def depthwise_weight_grad_acc(g: np.ndarray, x: np.ndarray, x_zp: int, k_hw: tuple[int, int],
                              geom: ConvGeom, channels: int) -> np.ndarray:
    """int32 acc[c, kh, kw] = sat32(sum_{oh,ow} g[oh,ow,c] * (x[ih,iw,c] - x_zp)), c < channels."""
    gg = g[0, :, :, :channels].astype(np.int64)
    xx = x[0, :, :, :channels].astype(np.int64) - x_zp
    oh, ow, _ = gg.shape
    _, ih, iw, _ = x.shape
    acc = np.zeros((channels, k_hw[0], k_hw[1]), np.int64)
    for kh, kw, out_sl, in_sl in _patch_pairs((ih, iw), (oh, ow), k_hw, geom):
        acc[:, kh, kw] = (gg[out_sl] * xx[in_sl]).sum(axis=(0, 1))
    return sat32(acc)


def bias_grad_acc(g: np.ndarray, channels: int) -> np.ndarray:
    """int32 acc[c] = sat32(sum over positions of g[..., c]), c < channels."""
    return sat32(g.reshape(-1, g.shape[-1])[:, :channels].astype(np.int64).sum(axis=0))


def conv_weight_update(w: np.ndarray, g: np.ndarray, g_scale: np.float32, x: np.ndarray,
                       wfactor: np.ndarray, lr: np.float32, geom: ConvGeom, p: UpdateParams,
                       counter: int) -> np.ndarray:
    """TMT_CONV_WEIGHT_UPDATE: fused weight gradient + SGD (+QAS) with stochastic rounding.

    For co < n: m = (lr * g_scale) * wfactor[co] (float32) -> (M, shift);
    delta = requant64(acc, M, shift + 16); W -= floor((delta + r) / 2^16); W clamped to [-127, 127].
    wfactor = s_x / s_W[co] with QAS, s_x * s_W[co] without. Returns the new weights.
    """
    w4 = w.reshape(w.shape[0], 1, 1, -1) if w.ndim == 2 else w
    n = p.update_channels
    acc = conv_weight_grad_acc(g, x, p.x_zero_point, w4.shape[1:3], geom, n)
    mults = update_multipliers(lr, g_scale, wfactor[:n])
    noise = rounding_noise(p.seed, counter, acc.size)
    out = w4.copy()
    out[:n] = apply_update(w4[:n], acc, mults, noise, -127, 127)
    return out.reshape(w.shape)


def depthwise_weight_update(w: np.ndarray, g: np.ndarray, g_scale: np.float32, x: np.ndarray,
                            wfactor: np.ndarray, lr: np.float32, geom: ConvGeom,
                            p: UpdateParams, counter: int) -> np.ndarray:
    """TMT_DW_WEIGHT_UPDATE: as conv_weight_update for depthwise weights [1, KH, KW, C].

    Elements are visited channel-major (c, kh, kw) for the rounding noise.
    """
    n = p.update_channels
    acc = depthwise_weight_grad_acc(g, x, p.x_zero_point, w.shape[1:3], geom, n)
    mults = update_multipliers(lr, g_scale, wfactor[:n])
    noise = rounding_noise(p.seed, counter, acc.size)
    cur = np.moveaxis(w[0, :, :, :n], 2, 0)  # [n, KH, KW]
    new = apply_update(cur, acc, mults, noise, -127, 127)
    out = w.copy()
    out[0, :, :, :n] = np.moveaxis(new, 0, 2)
    return out


def bias_update(b: np.ndarray, g: np.ndarray, g_scale: np.float32, bfactor: np.ndarray,
                lr: np.float32, p: UpdateParams, counter: int) -> np.ndarray:
    """TMT_BIAS_UPDATE: b[c] -= floor((requant64(sum g[..., c], M_c, shift_c + 16) + r) / 2^16).

    bfactor = 1 / (s_W[c] s_x) with QAS, s_W[c] s_x without; bias saturates to int32. A narrow
    (int16) b is a bias change in units of 2^k[c] (TMT_CONV's narrow bias): the converter divides
    bfactor by 2^k[c], and b saturates to int16.
    """
    n = p.update_channels
    acc = bias_grad_acc(g, n)
    mults = update_multipliers(lr, g_scale, bfactor[:n])
    noise = rounding_noise(p.seed, counter, n)
    out = b.copy()
    info = np.iinfo(b.dtype)
    if b.dtype not in (np.int16, np.int32):
        raise ValueError(f"TMT_BIAS_UPDATE: 'b' must be int32 or int16, got {b.dtype}")
    out[:n] = apply_update(b[:n, None], acc[:, None], mults, noise, info.min, info.max)[:, 0]
    return out


# --------------------------------------------------------------------------- fp32 backward
#
# Gradients are float32 real values. Every sum starts at +0.0 and adds one term at a time in the
# contract's order (numpy's own reductions sum pairwise, so the loops below are explicit).


def q16_from_f32(t: np.ndarray) -> np.ndarray:
    """q16(t): NaN -> 0; floor(t) saturated to +-(2^62 - 1); as int64."""
    t = np.asarray(t, F32)
    d = np.floor(t)
    out = np.zeros(t.shape, np.int64)
    big, small = d >= F32(2.0**62), d <= F32(-(2.0**62))
    mid = ~(big | small | np.isnan(d))
    out[mid] = d[mid].astype(np.int64)
    out[big], out[small] = SAT62, -SAT62
    return out


def _f32_steps(acc: np.ndarray, lr: np.float32, factor: np.ndarray) -> np.ndarray:
    """q16(((lr * acc) * factor[c]) * 65536) for acc[c, ...]."""
    f = np.asarray(factor, F32).reshape((-1,) + (1,) * (acc.ndim - 1))
    with np.errstate(over="ignore", invalid="ignore"):
        t = ((F32(lr) * acc.astype(F32)) * f) * F32(1 << Q16)
    return q16_from_f32(t)


def _apply_f32(values: np.ndarray, acc: np.ndarray, lr: np.float32, factor: np.ndarray,
               noise: np.ndarray, lo: int, hi: int) -> np.ndarray:
    delta = _f32_steps(acc, lr, factor).reshape(-1)
    new = values.astype(np.int64).reshape(-1) - stochastic_step(delta, noise)
    return np.clip(new, lo, hi).astype(values.dtype).reshape(values.shape)


def softmax_ce_grad_f32(probs: np.ndarray, label: int, loss_lut: np.ndarray):
    """fp32 TMT_SOFTMAX_CE_GRAD: grad_i = (float)d_i * (1/256) = p_i - [i == label]."""
    d, loss = _softmax_delta(probs, label, loss_lut)
    return (d.astype(F32) * F32(1.0 / 256.0)).reshape(probs.shape), loss


def mse_grad_f32(y: np.ndarray, target: np.ndarray, scale: float):
    """fp32 TMT_MSE_GRAD: grad_i = (float)d_i * ((s * 2) / N); loss as the int8 op."""
    d, loss = _mse_delta(y, target, scale)
    c = F32(F32(F32(scale) * F32(2.0)) / F32(d.size))
    return (d.astype(F32) * c).astype(F32), loss


def grad_add_f32(g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """fp32 TMT_GRAD_ADD: g1 + g2."""
    return (g1.astype(F32) + g2.astype(F32)).astype(F32)


def mean_grad_f32(g: np.ndarray, in_shape: tuple[int, ...], inv_count: float) -> np.ndarray:
    """fp32 TMT_MEAN_GRAD: g_in[h, w, c] = g[c] * inv_count."""
    v = g.reshape(-1).astype(F32) * F32(inv_count)
    return np.ascontiguousarray(np.broadcast_to(v.reshape(1, 1, 1, -1), in_shape)).astype(F32)


def _descending(pairs):
    """Window pairs in descending (kh, kw): for one input element, ascending output position."""
    return sorted(pairs, key=lambda p: (-p[0], -p[1]))


def avgpool_grad_f32(g: np.ndarray, in_shape: tuple[int, ...], filt: tuple[int, int],
                     geom: ConvGeom) -> np.ndarray:
    """fp32 TMT_AVGPOOL_GRAD: g_in[i] = sum of g[o] / count_o over the windows o holding i."""
    _, ih, iw, c = in_shape
    gg = g[0].astype(F32)
    oh, ow, _ = gg.shape
    count = np.zeros((oh, ow), np.int64)
    pairs = list(_patch_pairs((ih, iw), (oh, ow), filt, geom))
    for _kh, _kw, out_sl, _in_sl in pairs:
        count[out_sl] += 1
    v = gg / np.maximum(count, 1).astype(F32)[:, :, None]
    acc = np.zeros((ih, iw, c), F32)
    for _kh, _kw, out_sl, in_sl in _descending(pairs):
        acc[in_sl] += v[out_sl]
    return acc[None]


def maxpool_grad_f32(g: np.ndarray, x: np.ndarray, y: np.ndarray, filt: tuple[int, int],
                     geom: ConvGeom) -> np.ndarray:
    """fp32 TMT_MAXPOOL_GRAD: each g[o] to o's routed input (as the int8 op), summed in ascending
    output order."""
    _, ih, iw, c = x.shape
    gg, yy, xx = g[0].astype(F32), y[0], x[0]
    oh, ow, _ = gg.shape
    taken = np.zeros((oh, ow, c), bool)
    hits = []
    for kh, kw, out_sl, in_sl in _patch_pairs((ih, iw), (oh, ow), filt, geom):
        hit = (xx[in_sl] == yy[out_sl]) & ~taken[out_sl]
        taken[out_sl] |= hit
        hits.append((kh, kw, out_sl, in_sl, hit))
    acc = np.zeros((ih, iw, c), F32)
    for _kh, _kw, out_sl, in_sl, hit in sorted(hits, key=lambda h: (-h[0], -h[1])):
        acc[in_sl] += np.where(hit, gg[out_sl], F32(0.0))
    return acc[None]


def conv_input_grad_f32(g: np.ndarray, w: np.ndarray, wscale: np.ndarray,
                        in_shape: tuple[int, ...], geom: ConvGeom) -> np.ndarray:
    """fp32 TMT_CONV_INPUT_GRAD: g_in = sum over ascending (oh, ow, co) of g * (w * wscale[co])."""
    g4 = _as_nhwc(g).astype(F32)
    w4 = w.reshape(w.shape[0], 1, 1, -1) if w.ndim == 2 else w
    wr = w4.astype(F32) * np.asarray(wscale, F32)[:, None, None, None]
    in4 = (1, 1, 1, in_shape[-1]) if len(in_shape) == 2 else tuple(in_shape)
    _, ih, iw, ci = in4
    _, oh, ow, co = g4.shape
    acc = np.zeros((ih, iw, ci), F32)
    pairs = _descending(_patch_pairs((ih, iw), (oh, ow), w4.shape[1:3], geom))
    for kh, kw, out_sl, in_sl in pairs:
        part = g4[0][out_sl]
        for c in range(co):
            acc[in_sl] += part[:, :, c, None] * wr[c, kh, kw][None, None, :]
    return acc.reshape(in_shape)


def depthwise_input_grad_f32(g: np.ndarray, w: np.ndarray, wscale: np.ndarray,
                             in_shape: tuple[int, ...], geom: ConvGeom) -> np.ndarray:
    """fp32 TMT_DW_INPUT_GRAD: g_in[ih, iw, c] = sum over ascending (oh, ow) of g * (w * wscale[c])."""
    _, ih, iw, c = in_shape
    gg = g[0].astype(F32)
    oh, ow, _ = gg.shape
    wr = w[0].astype(F32) * np.asarray(wscale, F32)[None, None, :]
    acc = np.zeros((ih, iw, c), F32)
    for kh, kw, out_sl, in_sl in _descending(_patch_pairs((ih, iw), (oh, ow), w.shape[1:3], geom)):
        acc[in_sl] += gg[out_sl] * wr[kh, kw][None, None, :]
    return acc[None]


def _padded_input(x4: np.ndarray, x_zp: int, k_hw: tuple[int, int], out_hw: tuple[int, int],
                  geom: ConvGeom) -> np.ndarray:
    """float32 (x - x_zp) zero-padded so that every window lies inside."""
    _, ih, iw, ci = x4.shape
    need_h = (out_hw[0] - 1) * geom.stride_h + k_hw[0]
    need_w = (out_hw[1] - 1) * geom.stride_w + k_hw[1]
    xp = np.zeros((max(need_h, geom.pad_top + ih), max(need_w, geom.pad_left + iw), ci), F32)
    xp[geom.pad_top:geom.pad_top + ih, geom.pad_left:geom.pad_left + iw] = (
        x4[0].astype(np.int32) - x_zp).astype(F32)
    return xp


def conv_weight_grad_f32(g: np.ndarray, x: np.ndarray, x_zp: int, k_hw: tuple[int, int],
                         geom: ConvGeom, channels: int) -> np.ndarray:
    """float32 acc[co, kh, kw, ci] = sum over ascending (oh, ow) of g[oh, ow, co] * (x - x_zp)."""
    g4, x4 = _as_nhwc(g).astype(F32), _as_nhwc(x)
    _, oh, ow, _ = g4.shape
    xp = _padded_input(x4, x_zp, k_hw, (oh, ow), geom)
    acc = np.zeros((channels, k_hw[0], k_hw[1], x4.shape[3]), F32)
    for r in range(oh):
        for c in range(ow):
            h0, w0 = r * geom.stride_h, c * geom.stride_w
            patch = xp[h0:h0 + k_hw[0], w0:w0 + k_hw[1]]
            acc += g4[0, r, c, :channels, None, None, None] * patch[None]
    return acc


def depthwise_weight_grad_f32(g: np.ndarray, x: np.ndarray, x_zp: int, k_hw: tuple[int, int],
                              geom: ConvGeom, channels: int) -> np.ndarray:
    """float32 acc[c, kh, kw] = sum over ascending (oh, ow) of g[oh, ow, c] * (x[.., c] - x_zp)."""
    gg = g[0, :, :, :channels].astype(F32)
    oh, ow, _ = gg.shape
    xp = _padded_input(x[..., :channels], x_zp, k_hw, (oh, ow), geom)
    acc = np.zeros((k_hw[0], k_hw[1], channels), F32)
    for r in range(oh):
        for c in range(ow):
            h0, w0 = r * geom.stride_h, c * geom.stride_w
            acc += gg[r, c][None, None, :] * xp[h0:h0 + k_hw[0], w0:w0 + k_hw[1]]
    return np.moveaxis(acc, 2, 0)


def bias_grad_f32(g: np.ndarray, channels: int) -> np.ndarray:
    """float32 acc[c] = sum over ascending positions of g[.., c]."""
    flat = g.reshape(-1, g.shape[-1])[:, :channels].astype(F32)
    acc = np.zeros(channels, F32)
    for row in flat:
        acc += row
    return acc


def conv_weight_update_f32(w: np.ndarray, g: np.ndarray, x: np.ndarray, wfactor: np.ndarray,
                           lr: np.float32, geom: ConvGeom, p: UpdateParams,
                           counter: int) -> np.ndarray:
    """fp32 TMT_CONV_WEIGHT_UPDATE: delta = q16(((lr * acc) * wfactor[co]) * 2^16), then the int8
    op's stochastic step (same noise, element order (co, kh, kw, ci))."""
    w4 = w.reshape(w.shape[0], 1, 1, -1) if w.ndim == 2 else w
    n = p.update_channels
    acc = conv_weight_grad_f32(g, x, p.x_zero_point, w4.shape[1:3], geom, n)
    noise = rounding_noise(p.seed, counter, acc.size)
    out = w4.copy()
    out[:n] = _apply_f32(w4[:n], acc, lr, wfactor[:n], noise, -127, 127)
    return out.reshape(w.shape)


def depthwise_weight_update_f32(w: np.ndarray, g: np.ndarray, x: np.ndarray, wfactor: np.ndarray,
                                lr: np.float32, geom: ConvGeom, p: UpdateParams,
                                counter: int) -> np.ndarray:
    """fp32 TMT_DW_WEIGHT_UPDATE: as conv_weight_update_f32; element order (c, kh, kw)."""
    n = p.update_channels
    acc = depthwise_weight_grad_f32(g, x, p.x_zero_point, w.shape[1:3], geom, n)
    noise = rounding_noise(p.seed, counter, acc.size)
    cur = np.moveaxis(w[0, :, :, :n], 2, 0)
    new = _apply_f32(cur, acc, lr, wfactor[:n], noise, -127, 127)
    out = w.copy()
    out[0, :, :, :n] = np.moveaxis(new, 0, 2)
    return out


def bias_update_f32(b: np.ndarray, g: np.ndarray, bfactor: np.ndarray, lr: np.float32,
                    p: UpdateParams, counter: int) -> np.ndarray:
    """fp32 TMT_BIAS_UPDATE: b[c] -= floor((q16(((lr * acc[c]) * bfactor[c]) * 2^16) + r) / 2^16)."""
    n = p.update_channels
    acc = bias_grad_f32(g, n)
    noise = rounding_noise(p.seed, counter, n)
    out = b.copy()
    out[:n] = _apply_f32(b[:n], acc, lr, bfactor[:n], noise, -(2**31), 2**31 - 1)
    return out
