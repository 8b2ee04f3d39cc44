"""Numpy versions of TFLite Micro's reference int8 builtin kernels, bit-exact with TFLM.

Each kernel mirrors both the Prepare-time parameter computation (multipliers, shifts,
activation ranges, padding) and the Eval-time integer arithmetic of the TFLM reference
kernels (double-rounding `MultiplyByQuantizedMultiplier`, gemmlowp fixed point for
softmax/logistic).  Integer math is done in int64 and wrapped to int32 where TFLM's
int32 arithmetic would wrap; matmuls use float64 BLAS on integer values, which is exact
because every partial sum stays far below 2**53.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tfmicro_train.schema import TensorInfo, fb, op_name, tensor_data, tensor_info

Kernel = Callable[
    [list[np.ndarray | None], list[TensorInfo], list[TensorInfo], Any], list[np.ndarray]
]

_I32_MIN = -(1 << 31)
_I32_MAX = (1 << 31) - 1
_IntLike = np.ndarray | int
_Inputs = list[np.ndarray | None]
_Infos = list[TensorInfo]


# --------------------------------------------------------------------------------------
# Fixed-point primitives (gemmlowp / tensorflow/lite/kernels/internal/common.h)
# --------------------------------------------------------------------------------------


def _wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to the int32 range (kept as int64)."""
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _srdhm(a: _IntLike, b: _IntLike) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul for int32 values held in int64."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b
    t = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    res = np.where(t >= 0, t >> 31, -((-t) >> 31))  # C++ division truncates toward 0
    return np.where((a == _I32_MIN) & (b == _I32_MIN), _I32_MAX, res)


def _rounding_divide_by_pot(x: _IntLike, exponent: _IntLike) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT (round half away from zero)."""
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def _saturating_shift_left(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingMultiplyByPOT for a positive exponent (int32)."""
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, _I32_MAX, np.where(x < -threshold, _I32_MIN, x << exponent))


def multiply_by_quantized_multiplier(
    x: np.ndarray | int, multiplier: np.ndarray | int, shift: np.ndarray | int
) -> np.ndarray:
    """TFLM's int32 `MultiplyByQuantizedMultiplier` (double-rounding variant), vectorised.

    `x` is interpreted as int32 (wrapped like C++ int32 arithmetic); `multiplier` and
    `shift` broadcast against it (e.g. per-channel along the last axis).  Returns int64.
    """
    x = _wrap32(np.asarray(x, np.int64))
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return _rounding_divide_by_pot(_srdhm(_wrap32(x << left), multiplier), right)


def _round_half_away(x: np.ndarray | float) -> np.ndarray:
    """std::round / TfLiteRound: round half away from zero (exact for float32 input)."""
    x = np.asarray(x, np.float64)
    return np.copysign(np.floor(np.abs(x) + 0.5), x)


def _quantize_multipliers(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised TFLM `QuantizeMultiplier` on float64 values."""
    q, shift = np.frexp(np.asarray(real, np.float64))
    q_fixed = _round_half_away(q * float(1 << 31)).astype(np.int64)
    at_one = q_fixed == (1 << 31)
    q_fixed = np.where(at_one, q_fixed // 2, q_fixed)
    shift = np.where(at_one, shift + 1, shift).astype(np.int64)
    tiny = shift < -31
    return np.where(tiny, 0, q_fixed), np.where(tiny, 0, shift)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLM's `QuantizeMultiplier`: (int32 significand in Q31, power-of-two exponent)."""
    m, s = _quantize_multipliers(real)
    return int(m), int(s)


# --------------------------------------------------------------------------------------
# gemmlowp fixed-point transcendental functions (int32 raw values in int64 arrays)
# --------------------------------------------------------------------------------------


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: np.ndarray) -> np.ndarray:
    """gemmlowp exp(x) for x in [-1/4, 0), Q0.31 in and out."""
    constant_term = 1895147668
    constant_1_over_3 = 715827883
    x = a + (1 << 28)
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    x4_over_4 = _rounding_divide_by_pot(x4, 2)
    poly = _rounding_divide_by_pot(_srdhm(x4_over_4 + x3, constant_1_over_3) + x2, 1)
    return _wrap32(constant_term + _srdhm(constant_term, x + poly))


def _exp_on_negative_values(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """gemmlowp exp_on_negative_values: Q(integer_bits) input, Q0.31 output."""
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_one_quarter = (a & (one_quarter - 1)) - one_quarter
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        _saturating_shift_left(a_mod_quarter_minus_one_quarter, integer_bits)
    )
    remainder = a_mod_quarter_minus_one_quarter - a
    barrel = [(-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
              (2, 39332535), (3, 720401), (4, 242)]
    for exponent, multiplier in barrel:
        if integer_bits > exponent:
            bit = 1 << (fractional_bits + exponent)
            result = np.where(remainder & bit, _srdhm(result, multiplier), result)
    if integer_bits > 5:
        result = np.where(a < -(1 << (36 - integer_bits)), 0, result)
    return np.where(a == 0, _I32_MAX, result)


def _one_over_one_plus_x_for_x_in_0_1(a: np.ndarray) -> np.ndarray:
    """gemmlowp 1/(1+x) for x in [0, 1), Q0.31 in and out (Newton-Raphson)."""
    total = a + _I32_MAX  # RoundingHalfSum(a, One): (sum + sign) / 2, truncating
    total += np.where(total >= 0, 1, -1)
    half_denominator = np.where(total >= 0, total // 2, -((-total) // 2))
    x = 1515870810 + _srdhm(half_denominator, -1010580540)
    for _ in range(3):
        one_minus = (1 << 29) - _srdhm(half_denominator, x)
        x = x + _saturating_shift_left(_srdhm(x, one_minus), 2)
    return _saturating_shift_left(x, 1)


def _logistic_q4(a: np.ndarray) -> np.ndarray:
    """gemmlowp logistic() on Q4.27 raw values, Q0.31 output."""
    positive = a > 0
    abs_a = np.where(positive, a, -a)
    if_positive = _one_over_one_plus_x_for_x_in_0_1(_exp_on_negative_values(-abs_a, 4))
    result = np.where(positive, if_positive, _I32_MAX - if_positive)
    return np.where(a == 0, 1 << 30, result)


# --------------------------------------------------------------------------------------
# Prepare-time helpers
# --------------------------------------------------------------------------------------


def _scale(info: TensorInfo) -> np.float32:
    return np.float32(info.scale[0])


def _zp(info: TensorInfo) -> int:
    return int(info.zero_point[0]) if info.zero_point.size else 0


def _dtype_range(dtype: np.dtype) -> tuple[int, int]:
    ii = np.iinfo(dtype)
    return int(ii.min), int(ii.max)


def _quantize_scalar(value: float, info: TensorInfo) -> int:
    """kernel_util.cc Quantize(): zp + round(f / scale) in float32."""
    return _zp(info) + int(_round_half_away(np.float32(value) / _scale(info)))


def _activation_range(activation: int, info: TensorInfo) -> tuple[int, int]:
    """CalculateActivationRangeQuantized for a fused activation on the output tensor."""
    qmin, qmax = _dtype_range(info.dtype)
    act = fb.ActivationFunctionType
    if activation == act.RELU:
        return max(qmin, _quantize_scalar(0.0, info)), qmax
    if activation == act.RELU6:
        return max(qmin, _quantize_scalar(0.0, info)), min(qmax, _quantize_scalar(6.0, info))
    if activation == act.RELU_N1_TO_1:
        return max(qmin, _quantize_scalar(-1.0, info)), min(qmax, _quantize_scalar(1.0, info))
    if activation != act.NONE:
        raise NotImplementedError(f"fused activation {activation} on a quantized op")
    return qmin, qmax


def _out_size_and_padding(
    padding: int, in_size: int, filter_size: int, stride: int, dilation: int
) -> tuple[int, int]:
    """padding.h ComputeOutSize + ComputePaddingWithOffset (leading padding only)."""
    effective = (filter_size - 1) * dilation + 1
    if padding == fb.Padding.SAME:
        out = (in_size + stride - 1) // stride
    else:
        out = (in_size + stride - effective) // stride
    total = max((out - 1) * stride + effective - in_size, 0)
    return out, total // 2


def _conv_multipliers(
    in_info: TensorInfo, w_info: TensorInfo, out_info: TensorInfo, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """PopulateConvolutionQuantizationParams: per-channel multipliers (double math)."""
    w_scales = np.asarray(w_info.scale, np.float32).astype(np.float64)
    if w_scales.size == 1:
        w_scales = np.repeat(w_scales, channels)
    real = float(_scale(in_info)) * w_scales / float(_scale(out_info))
    return _quantize_multipliers(real)


def _requantize_output(
    acc: np.ndarray, multiplier: _IntLike, shift: _IntLike, out_info: TensorInfo,
    act_min: int, act_max: int,
) -> np.ndarray:
    """MultiplyByQuantizedMultiplier + output offset + clamp + cast."""
    out = multiply_by_quantized_multiplier(acc, multiplier, shift) + _zp(out_info)
    return np.clip(out, act_min, act_max).astype(out_info.dtype)


def _pad_spatial(
    x: np.ndarray, pad_h: int, pad_w: int, need_h: int, need_w: int, value: int
) -> np.ndarray:
    """Embed NHWC `x` at offset (pad_h, pad_w) in a canvas at least need_h x need_w."""
    n, h, w, c = x.shape
    canvas = np.full((n, max(need_h, pad_h + h), max(need_w, pad_w + w), c), value, x.dtype)
    canvas[:, pad_h:pad_h + h, pad_w:pad_w + w, :] = x
    return canvas


def _windows(
    xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, oh: int, ow: int
) -> list[np.ndarray]:
    """The kh*kw strided (n, oh, ow, c) views of a padded NHWC array, row-major taps."""
    return [
        xp[:, ky * dh:ky * dh + (oh - 1) * sh + 1:sh, kx * dw:kx * dw + (ow - 1) * sw + 1:sw, :]
        for ky in range(kh)
        for kx in range(kw)
    ]


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------


def _conv_2d(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any,
    multipliers: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """CONV_2D: reference_integer_ops::ConvPerChannel (grouped conv supported)."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    in_info, w_info, out_info = input_infos[0], input_infos[1], output_infos[0]
    n, h, wd, c = x.shape
    o, kh, kw, ci = w.shape
    _, oh, ow, _ = out_info.shape
    sh, sw = options.strideH, options.strideW
    dh, dw = options.dilationHFactor, options.dilationWFactor
    _, pad_h = _out_size_and_padding(options.padding, h, kh, sh, dh)
    _, pad_w = _out_size_and_padding(options.padding, wd, kw, sw, dw)

    # Out-of-image taps are skipped in TFLM, i.e. (input - zero_point) is padded with 0.
    x0 = x.astype(np.float64) - _zp(in_info)
    xp = _pad_spatial(x0, pad_h, pad_w, (oh - 1) * sh + (kh - 1) * dh + 1,
                      (ow - 1) * sw + (kw - 1) * dw + 1, 0)
    patches = np.stack(_windows(xp, kh, kw, sh, sw, dh, dw, oh, ow), axis=3)
    groups = c // ci
    per_group = o // groups
    wf = w.astype(np.float64)
    acc = np.concatenate(
        [
            patches[..., g * ci:(g + 1) * ci].reshape(n * oh * ow, kh * kw * ci)
            @ wf[g * per_group:(g + 1) * per_group].reshape(per_group, kh * kw * ci).T
            for g in range(groups)
        ],
        axis=1,
    ).astype(np.int64)
    if bias is not None:
        acc += bias.astype(np.int64)
    mult, shift = multipliers if multipliers is not None else _conv_multipliers(in_info, w_info, out_info, o)
    lo, hi = _activation_range(options.fusedActivationFunction, out_info)
    out = _requantize_output(acc, mult, shift, out_info, lo, hi)
    return [out.reshape(out_info.shape)]


def _depthwise_conv_2d(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any,
    multipliers: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """DEPTHWISE_CONV_2D: reference_integer_ops::DepthwiseConvPerChannel."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    in_info, w_info, out_info = input_infos[0], input_infos[1], output_infos[0]
    _, h, wd, c = x.shape
    _, kh, kw, oc = w.shape
    _, oh, ow, _ = out_info.shape
    sh, sw = options.strideH, options.strideW
    dh, dw = options.dilationHFactor, options.dilationWFactor
    _, pad_h = _out_size_and_padding(options.padding, h, kh, sh, dh)
    _, pad_w = _out_size_and_padding(options.padding, wd, kw, sw, dw)

    x0 = x.astype(np.int32) - np.int32(_zp(in_info))
    if oc != c:  # depth_multiplier > 1: output channel = in_channel * multiplier + m
        x0 = np.repeat(x0, oc // c, axis=3)
    xp = _pad_spatial(x0, pad_h, pad_w, (oh - 1) * sh + (kh - 1) * dh + 1,
                      (ow - 1) * sw + (kw - 1) * dw + 1, 0)
    taps = w.reshape(kh * kw, oc).astype(np.int32)
    acc = np.zeros((x.shape[0], oh, ow, oc), np.int32)  # int32 wraps just like TFLM's
    for tap, window in zip(taps, _windows(xp, kh, kw, sh, sw, dh, dw, oh, ow), strict=True):
        acc += window * tap
    if bias is not None:
        acc += bias.astype(np.int32)
    mult, shift = multipliers if multipliers is not None else _conv_multipliers(in_info, w_info, out_info, oc)
    lo, hi = _activation_range(options.fusedActivationFunction, out_info)
    return [_requantize_output(acc, mult, shift, out_info, lo, hi)]


def _fully_connected(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any,
    multipliers: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """FULLY_CONNECTED: reference_integer_ops::FullyConnected[PerChannel]."""
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    in_info, w_info, out_info = input_infos[0], input_infos[1], output_infos[0]
    units, depth = w.shape
    wf = w.astype(np.float64)
    if multipliers is not None:  # TMT_CONV: per-channel, from the op's constant tensors
        mult, shift = multipliers
    elif w_info.scale.size > 1:
        # Per-channel: weights are symmetric, their zero point is ignored.
        mult, shift = _conv_multipliers(in_info, w_info, out_info, units)
    else:
        wf -= _zp(w_info)
        # GetQuantizedConvolutionMultipler: the scale product is taken in float32.
        real = float(_scale(in_info) * _scale(w_info)) / float(_scale(out_info))
        mult, shift = _quantize_multipliers(real)
    x0 = x.reshape(-1, depth).astype(np.float64) - _zp(in_info)
    acc = (x0 @ wf.T).astype(np.int64)
    if bias is not None:
        acc += bias.astype(np.int64)
    lo, hi = _activation_range(options.fusedActivationFunction, out_info)
    out = _requantize_output(acc, mult, shift, out_info, lo, hi)
    return [out.reshape(out_info.shape)]


def _add(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """ADD (int8, broadcasting): reference_integer_ops AddFunc (left_shift 20)."""
    (x1, x2), (i1, i2), out_info = inputs, input_infos, output_infos[0]
    if out_info.dtype != np.int8:
        raise NotImplementedError(f"ADD with {out_info.dtype} output")
    left_shift = 20
    s1, s2, so = float(_scale(i1)), float(_scale(i2)), float(_scale(out_info))
    twice_max = 2 * max(s1, s2)
    m1, sh1 = _quantize_multipliers(s1 / twice_max)
    m2, sh2 = _quantize_multipliers(s2 / twice_max)
    mo, sho = _quantize_multipliers(twice_max / ((1 << left_shift) * so))
    v1 = (x1.astype(np.int64) - _zp(i1)) << left_shift
    v2 = (x2.astype(np.int64) - _zp(i2)) << left_shift
    raw_sum = _wrap32(
        multiply_by_quantized_multiplier(v1, m1, sh1)
        + multiply_by_quantized_multiplier(v2, m2, sh2)
    )
    lo, hi = _activation_range(options.fusedActivationFunction, out_info)
    out = _requantize_output(raw_sum, mo, sho, out_info, lo, hi)
    return [out.reshape(out_info.shape)]


def _mul(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """MUL (int8, broadcasting): reference_integer_ops::MulElementwise."""
    (x1, x2), (i1, i2), out_info = inputs, input_infos, output_infos[0]
    if out_info.dtype != np.int8:
        raise NotImplementedError(f"MUL with {out_info.dtype} output")
    real = float(_scale(i1)) * float(_scale(i2)) / float(_scale(out_info))
    mult, shift = _quantize_multipliers(real)
    prod = (x1.astype(np.int64) - _zp(i1)) * (x2.astype(np.int64) - _zp(i2))
    lo, hi = _activation_range(options.fusedActivationFunction, out_info)
    out = _requantize_output(prod, mult, shift, out_info, lo, hi)
    return [out.reshape(out_info.shape)]


def _pad(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """PAD / PADV2: constant padding with the output zero point or `constant_values`."""
    x, paddings = inputs[0], inputs[1].astype(np.int64).reshape(-1, 2)
    if len(inputs) > 2 and inputs[2] is not None:
        value = inputs[2].reshape(-1)[0]
    elif output_infos[0].dtype == np.int8:
        value = _zp(output_infos[0])
    else:
        value = 0
    return [np.pad(x, paddings, mode="constant", constant_values=value)]


def mean_multiplier(in_scale: float, out_scale: float, count: int) -> tuple[int, int]:
    """MEAN's (multiplier, shift): QuantizeMultiplier(s_in / s_out) with 1 / count folded in
    exactly as TFLM's Eval does (k = min(floor(log2 count), 32, 31 + shift))."""
    mult, shift = quantize_multiplier(in_scale / out_scale)
    extra = min(int(count).bit_length() - 1, 32, 31 + shift)
    return (mult << extra) // count, shift - extra


def _mean(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """MEAN (int8/int16): reference_ops::QuantizedMeanOrSum with compute_sum=false."""
    x, axis = inputs
    in_info, out_info = input_infos[0], output_infos[0]
    axes = tuple(dict.fromkeys(int(a) % x.ndim for a in axis.reshape(-1)))
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    mult, shift = mean_multiplier(float(_scale(in_info)), float(_scale(out_info)), count)
    total = _wrap32(x.astype(np.int64).sum(axis=axes))
    shifted = _wrap32(total - _zp(in_info) * count)
    out = multiply_by_quantized_multiplier(shifted, mult, shift) + _zp(out_info)
    lo, hi = _dtype_range(out_info.dtype)
    return [np.clip(out, lo, hi).astype(out_info.dtype).reshape(out_info.shape)]


def _pool_setup(x: np.ndarray, out_info: TensorInfo, options) -> tuple[int, ...]:
    _, h, w, _ = x.shape
    _, oh, ow, _ = out_info.shape
    kh, kw, sh, sw = options.filterHeight, options.filterWidth, options.strideH, options.strideW
    _, pad_h = _out_size_and_padding(options.padding, h, kh, sh, 1)
    _, pad_w = _out_size_and_padding(options.padding, w, kw, sw, 1)
    return kh, kw, sh, sw, oh, ow, pad_h, pad_w


def _average_pool_2d(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """AVERAGE_POOL_2D (int8/int16): average over in-image taps, rounded half away."""
    x, out_info = inputs[0], output_infos[0]
    kh, kw, sh, sw, oh, ow, pad_h, pad_w = _pool_setup(x, out_info, options)
    need_h, need_w = (oh - 1) * sh + kh, (ow - 1) * sw + kw
    xp = _pad_spatial(x.astype(np.int64), pad_h, pad_w, need_h, need_w, 0)
    ones = _pad_spatial(np.ones((1, *x.shape[1:3], 1), np.int64), pad_h, pad_w, need_h, need_w, 0)
    acc = sum(_windows(xp, kh, kw, sh, sw, 1, 1, oh, ow))
    count = sum(_windows(ones, kh, kw, sh, sw, 1, 1, oh, ow))
    half = count // 2
    acc = np.where(acc > 0, (acc + half) // count, -((half - acc) // count))
    lo, hi = _activation_range(options.fusedActivationFunction, out_info)
    return [np.clip(acc, lo, hi).astype(out_info.dtype)]


def _max_pool_2d(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """MAX_POOL_2D (int8/int16): max over in-image taps, then activation clamp."""
    x, out_info = inputs[0], output_infos[0]
    kh, kw, sh, sw, oh, ow, pad_h, pad_w = _pool_setup(x, out_info, options)
    lowest = _dtype_range(x.dtype)[0]
    xp = _pad_spatial(x, pad_h, pad_w, (oh - 1) * sh + kh, (ow - 1) * sw + kw, lowest)
    out = np.maximum.reduce(_windows(xp, kh, kw, sh, sw, 1, 1, oh, ow))
    lo, hi = _activation_range(options.fusedActivationFunction, out_info)
    return [np.clip(out, lo, hi).astype(out_info.dtype)]


def _reshape(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """RESHAPE: the output tensor's static shape is authoritative."""
    return [inputs[0].reshape(output_infos[0].shape)]


def _softmax(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """SOFTMAX (int8 in, int8/int16 out): reference_ops::Softmax with gemmlowp exp."""
    x, in_info, out_info = inputs[0], input_infos[0], output_infos[0]
    if x.dtype != np.int8:
        raise NotImplementedError(f"SOFTMAX with {x.dtype} input")
    scaled_diff_integer_bits, accumulation_integer_bits = 5, 12
    # PreprocessSoftmaxScaling + CalculateInputRadius (softmax_common.cc).
    real = min(
        float(options.beta) * float(_scale(in_info)) * (1 << (31 - scaled_diff_integer_bits)),
        (1 << 31) - 1.0,
    )
    mult, left_shift = quantize_multiplier(real)
    radius = np.floor(
        ((1 << scaled_diff_integer_bits) - 1)
        * float(1 << (31 - scaled_diff_integer_bits)) / float(1 << left_shift)
    )
    diff_min = -int(radius)

    diff = x.astype(np.int64) - x.max(axis=-1, keepdims=True)
    valid = diff >= diff_min
    rescaled = _srdhm(_wrap32(diff << left_shift), mult)
    exps = _exp_on_negative_values(rescaled, scaled_diff_integer_bits)
    sum_of_exps = _wrap32(
        np.where(valid, _rounding_divide_by_pot(exps, accumulation_integer_bits), 0)
        .sum(axis=-1, keepdims=True)
    )
    # GetReciprocal (common.h).
    headroom_plus_one = 32 - np.frexp(sum_of_exps.astype(np.float64))[1].astype(np.int64)
    headroom_plus_one = np.where(sum_of_exps == 0, 32, headroom_plus_one)
    num_bits_over_unit = accumulation_integer_bits - headroom_plus_one
    shifted_sum_minus_one = _wrap32(((sum_of_exps << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31))
    shifted_scale = _one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one)

    out_min, out_max = _dtype_range(out_info.dtype)
    exponent = num_bits_over_unit + 31 - 8 * out_info.dtype.itemsize
    unsat = _rounding_divide_by_pot(_srdhm(shifted_scale, exps), exponent)
    out = np.where(valid, np.clip(unsat + out_min, out_min, out_max), out_min)
    return [out.astype(out_info.dtype)]


def _logistic(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """LOGISTIC (int8): reference_integer_ops::Logistic with gemmlowp logistic()."""
    x, in_info, out_info = inputs[0], input_infos[0], output_infos[0]
    if x.dtype != np.int8:
        raise NotImplementedError(f"LOGISTIC with {x.dtype} input")
    input_integer_bits = 4
    q, left_shift = np.frexp(float(_scale(in_info)) * float(1 << (31 - input_integer_bits)))
    mult = int(_wrap32(_round_half_away(q * float(1 << 31)).astype(np.int64)))
    radius = int(np.floor(
        ((1 << input_integer_bits) - 1)
        * float(1 << (31 - input_integer_bits)) / float(1 << int(left_shift))
    ))
    # The op only depends on the int8 value, so evaluate it as a 256-entry table.
    values = np.arange(-128, 128, dtype=np.int64)
    centered = values - _zp(in_info)
    in_q4 = multiply_by_quantized_multiplier(centered, mult, int(left_shift))
    in_range = _rounding_divide_by_pot(_logistic_q4(in_q4), 31 - 8) - 128
    table = np.where(centered <= -radius, -128,
                     np.where(centered >= radius, 127, np.clip(in_range, -128, 127)))
    return [table[x.astype(np.int64) + 128].astype(out_info.dtype)]


def _quantize(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """QUANTIZE: float -> int (AffineQuantize) or int -> int (Requantize)."""
    x, in_info, out_info = inputs[0], input_infos[0], output_infos[0]
    lo, hi = _dtype_range(out_info.dtype)
    if x.dtype == np.float32:
        q = _round_half_away(x / _scale(out_info))
        # float -> int32 conversion of out-of-range values yields INT32_MIN on x86.
        q = np.where(np.abs(q) < 2.0**31, q, _I32_MIN).astype(np.int64) + _zp(out_info)
        return [np.clip(q, lo, hi).astype(out_info.dtype)]
    mult, shift = quantize_multiplier(float(_scale(in_info)) / float(_scale(out_info)))
    centered = x.astype(np.int64) - _zp(in_info)
    return [_requantize_output(centered, mult, shift, out_info, lo, hi)]


def _dequantize(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """DEQUANTIZE: float(double(scale) * (q - zero_point))."""
    x, in_info, out_info = inputs[0], input_infos[0], output_infos[0]
    centered = x.astype(np.int64) - _zp(in_info)
    return [(float(_scale(in_info)) * centered).astype(out_info.dtype)]


def _concatenation(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """CONCATENATION: int8 inputs share the output quantization, so a plain concat."""
    if options.fusedActivationFunction != fb.ActivationFunctionType.NONE:
        raise NotImplementedError("CONCATENATION with a fused activation")
    return [np.concatenate(inputs, axis=options.axis)]


def _relu(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """RELU (int8/int16): requantize to the output scale, clamp at the output zero."""
    x, in_info, out_info = inputs[0], input_infos[0], output_infos[0]
    # CalculateReluOpData divides the scales in float32.
    mult, shift = quantize_multiplier(float(_scale(in_info) / _scale(out_info)))
    qmin, qmax = _dtype_range(out_info.dtype)
    centered = x.astype(np.int64) - _zp(in_info)
    return [_requantize_output(centered, mult, shift, out_info, max(qmin, _zp(out_info)), qmax)]


def _relu6(
    inputs: _Inputs, input_infos: _Infos, output_infos: _Infos, options: Any
) -> list[np.ndarray]:
    """RELU6 (int8/int16): clamp to the *input* quantization's [0, 6], no requantize."""
    x, in_info = inputs[0], input_infos[0]
    qmin, qmax = _dtype_range(x.dtype)
    six = int(np.clip(_quantize_scalar(6.0, in_info), qmin, qmax))
    return [np.clip(x, _zp(in_info), six).astype(x.dtype)]


BUILTIN_KERNELS: dict[str, Kernel] = {
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "FULLY_CONNECTED": _fully_connected,
    "ADD": _add,
    "MUL": _mul,
    "PAD": _pad,
    "PADV2": _pad,
    "MEAN": _mean,
    "AVERAGE_POOL_2D": _average_pool_2d,
    "MAX_POOL_2D": _max_pool_2d,
    "RESHAPE": _reshape,
    "SOFTMAX": _softmax,
    "LOGISTIC": _logistic,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
    "CONCATENATION": _concatenation,
    "RELU": _relu,
    "RELU6": _relu6,
}


# --------------------------------------------------------------------------------------
# Graph execution
# --------------------------------------------------------------------------------------


def run_graph(
    model: fb.ModelT, inputs: list[np.ndarray], subgraph: int = 0
) -> dict[int, np.ndarray]:
    """Runs one subgraph with BUILTIN_KERNELS; returns every tensor value by index."""
    graph = model.subgraphs[subgraph]
    infos = [tensor_info(t) for t in graph.tensors]
    values: dict[int, np.ndarray] = {}
    for index, tensor in enumerate(graph.tensors):
        data = tensor_data(model, tensor)
        if data is not None:
            values[index] = data
    for index, x in zip(graph.inputs, inputs, strict=True):
        values[int(index)] = np.asarray(x, infos[index].dtype).reshape(infos[index].shape)
    for op in graph.operators:
        name = op_name(model, op)
        if name not in BUILTIN_KERNELS:
            raise NotImplementedError(f"no numpy kernel for {name}")
        ins = [values[int(i)] if i >= 0 else None for i in op.inputs]
        in_infos = [infos[int(i)] if i >= 0 else None for i in op.inputs]
        out_infos = [infos[int(i)] for i in op.outputs]
        outs = BUILTIN_KERNELS[name](ins, in_infos, out_infos, op.builtinOptions)
        for index, out in zip(op.outputs, outs, strict=True):
            values[int(index)] = out
    return values


def execute_graph(
    model: fb.ModelT, inputs: list[np.ndarray], subgraph: int = 0
) -> list[np.ndarray]:
    """Runs one subgraph with BUILTIN_KERNELS and returns its output tensors."""
    values = run_graph(model, inputs, subgraph)
    return [values[int(i)] for i in model.subgraphs[subgraph].outputs]
