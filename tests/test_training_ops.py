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
