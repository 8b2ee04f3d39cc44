"""Unit tests of the numpy contract helpers (the C++ twin is checked in test_golden_cpp.py)."""

from __future__ import annotations

import numpy as np

from tfmicro_train.kernels import training_ops as T


def test_dyn_quantize_fits_int8_and_keeps_precision():
    rng = np.random.default_rng(0)
    for scale in (1, 100, 10**6, 10**12):
        acc = rng.integers(-scale, scale + 1, 200)
        q, shift = T.dyn_quantize(acc)
        assert q.dtype == np.int8 and np.abs(q).max() <= 127
        assert np.abs(q).max() >= 63 or scale == 1  # at most one bit of headroom lost
        assert np.abs(q.astype(np.int64) * 2**shift - acc).max() <= 2 ** max(shift - 1, 0) * 2
    q, shift = T.dyn_quantize(np.zeros(5, np.int64))
    assert shift == 0 and not q.any()


def test_quantize_multiplier_is_exact_and_requant_rounds_half_up():
    for real in (np.float32(0.3), np.float32(1e-9), np.float32(12345.678)):
        m, s = T.quantize_multiplier_f32(real)
        assert 2**30 <= m < 2**31 and np.ldexp(np.float64(m), s - 31) == np.float64(real)
    m, s = T.quantize_multiplier_f32(np.float32(0.5))  # x * 0.5: 3 -> 1.5 -> 2, -3 -> -1.5 -> -1
    assert T.requant64(np.array([3, -3]), m, s).tolist() == [2, -1]
    assert T.quantize_multiplier_f32(np.float32(0.0)) == (0, 0)
    big = T.requant64(np.array([2**31 - 1, -(2**31)]), 2**31 - 1, 100)
    assert big.tolist() == [T.SAT62, -T.SAT62]


def test_small_updates_do_not_vanish_and_are_unbiased():
    """A step of 0.1 int8 LSB per update: deterministic rounding would never move the weight."""
    w = np.zeros((1, 1, 1, 1), np.int8)
    g = np.ones((1, 1, 1, 1), np.int8)
    x = np.ones((1, 1, 1, 1), np.int8)
    p = T.UpdateParams(update_channels=1, seed=123)
    lr, scale, factor = np.float32(0.1), np.float32(1.0), np.ones(1, np.float32)  # delta = 0.1
    steps = [int(T.conv_weight_update(w, g, scale, x, factor, lr, T.ConvGeom(), p, c)[0, 0, 0, 0])
             for c in range(4000)]
    mean = -np.mean(steps)  # the weight moves down by lr * grad on average
    print(f"mean step over 4000 updates of 0.1 LSB: {mean:.4f}")
    assert set(steps) == {0, -1} and abs(mean - 0.1) < 0.02


def test_rounding_noise_is_reproducible_and_uniform():
    a = T.rounding_noise(7, 3, 50000)
    assert np.array_equal(a, T.rounding_noise(7, 3, 50000))
    assert not np.array_equal(a, T.rounding_noise(7, 4, 50000))
    assert a.min() >= 0 and a.max() < 2**16 and abs(a.mean() / 2**16 - 0.5) < 0.01


def test_qas_factor_makes_int8_sgd_match_float_sgd():
    """With wfactor = s_x / s_W, the int8 step equals the float SGD step in units of s_W."""
    rng = np.random.default_rng(3)
    s_w, s_x, s_g, lr = np.float32(0.02), np.float32(0.05), np.float32(0.001), np.float32(0.5)
    g = rng.integers(-127, 128, (1, 4, 4, 1)).astype(np.int8)
    x = rng.integers(-128, 128, (1, 4, 4, 1)).astype(np.int8)
    w = np.zeros((1, 1, 1, 1), np.int8)
    acc = float((g.astype(np.int64) * x.astype(np.int64)).sum())
    float_step = lr * (s_g * s_x * acc) / s_w  # dL/dW = s_g s_x acc; in LSB of s_W
    p = T.UpdateParams(1, 9)
    steps = [-int(T.conv_weight_update(w, g, s_g, x, np.array([s_x / s_w], np.float32), lr,
                                       T.ConvGeom(), p, c)[0, 0, 0, 0]) for c in range(2000)]
    print(f"QAS step {np.mean(steps):.3f} LSB vs float SGD {float_step:.3f} LSB")
    assert abs(np.mean(steps) - float_step) < 0.05 + 0.02 * abs(float_step)


# --------------------------------------------------------------------------- fp32 backward


def _scatter_conv_input_grad(g, w, wscale, in_shape, geom):
    """float64 dL/dx of a convolution, straight from the definition."""
    _, ih, iw, _ = in_shape
    _, oh, ow, _ = g.shape
    ref = np.zeros(in_shape[1:])
    for r in range(oh):
        for c in range(ow):
            for kh in range(w.shape[1]):
                for kw in range(w.shape[2]):
                    y, x = r * geom.stride_h - geom.pad_top + kh, c * geom.stride_w - geom.pad_left + kw
                    if 0 <= y < ih and 0 <= x < iw:
                        wr = w[:, kh, kw, :] * wscale[:, None].astype(np.float64)
                        ref[y, x] += (g[0, r, c, :, None] * wr).sum(0)
    return ref


def test_fp32_input_and_weight_gradients_follow_the_definition():
    rng = np.random.default_rng(3)
    geom = T.ConvGeom(2, 2, 1, 1)
    g = rng.normal(size=(1, 5, 5, 4)).astype(np.float32)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    ws = rng.uniform(0.01, 0.1, 4).astype(np.float32)
    got = T.conv_input_grad_f32(g, w, ws, (1, 9, 9, 3), geom)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0], _scatter_conv_input_grad(g, w, ws, (1, 9, 9, 3), geom),
                               rtol=0, atol=1e-4)
    x = rng.integers(-128, 128, (1, 9, 9, 3)).astype(np.int8)
    acc = T.conv_weight_grad_f32(g, x, 5, (3, 3), geom, 4)
    xz = np.pad(x[0].astype(np.float64) - 5, ((1, 1), (1, 1), (0, 0)))
    ref = np.zeros((4, 3, 3, 3))
    for r in range(5):
        for c in range(5):
            ref += g[0, r, c, :, None, None, None] * xz[None, 2 * r:2 * r + 3, 2 * c:2 * c + 3]
    np.testing.assert_allclose(acc, ref, rtol=1e-5, atol=1e-3)


def test_fp32_sums_keep_a_fixed_order_and_no_negative_zero():
    """Sums start at +0.0 and add terms in order: a masked-out (all negative-zero) gradient gives
    +0.0, and the result does not depend on numpy's pairwise summation."""
    g = np.full((1, 4, 4, 2), -0.0, np.float32)
    out = T.avgpool_grad_f32(g, (1, 8, 8, 2), (2, 2), T.ConvGeom(2, 2, 0, 0))
    assert not np.signbit(out).any()
    # 1 + 1e8 - 1e8 in order is 0 in float32; pairwise or reordered sums could give 1
    gb = np.array([[1.0], [1e8], [-1e8]], np.float32).reshape(1, 3, 1, 1)
    assert T.bias_grad_f32(gb, 1)[0] == np.float32(0.0)


def test_fp32_update_is_float_sgd_with_qas_and_saturates():
    rng = np.random.default_rng(4)
    s_w, s_x, lr = np.float32(0.02), np.float32(0.05), np.float32(0.01)
    g = rng.normal(size=(1, 1, 1, 3)).astype(np.float32)  # dense [1, 3] as NHWC
    x = rng.integers(-100, 100, (1, 1, 1, 5)).astype(np.int8)
    w = np.zeros((3, 1, 1, 5), np.int8)
    wfactor = np.full(3, s_x / s_w, np.float32)
    p = T.UpdateParams(3, seed=9)
    steps = np.mean([T.conv_weight_update_f32(w, g, x, wfactor, lr, T.ConvGeom(), p, k).astype(float)
                     for k in range(1, 400)], axis=0)
    real_grad = g[0, 0, 0, :, None] * (x[0, 0, 0].astype(float) * s_x)  # dL/dW
    np.testing.assert_allclose(steps[:, 0, 0] * s_w, -lr * real_grad, atol=0.2 * s_w)
    q = T.q16_from_f32(np.array([np.nan, np.inf, -np.inf, 1e30, -1.5, 2.75], np.float32))
    assert q.tolist() == [0, T.SAT62, -T.SAT62, T.SAT62, -2, 2]
