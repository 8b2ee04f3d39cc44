"""Random + edge-case golden cases of every TMT_* op, computed by the numpy reference.

`make_cases(op, n, seed)` returns `n` case dicts for tfmicro_train.kernels.golden.write_golden;
`write_all(out_dir, n, seed)` writes one file per op. The C++ driver
(tflm_ops/tests/golden_test_main.cc) replays them against the C++ cores.

Case keys: the op's inputs under their contract names, its options under their option names,
`in_shape` where the output shape is not implied by the inputs, expected outputs as `out_<name>`,
and `error` = 1 for cases the reference rejects (no outputs then). The fp32-backward variant of
an op (float32 gradients, no scales) is the golden op `<op>_F32`.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tfmicro_train.kernels import golden  # noqa: E402
from tfmicro_train.kernels import training_ops as T  # noqa: E402

F32 = np.float32


# --------------------------------------------------------------------------- random helpers


def i8(rng, shape, mode: str | None = None) -> np.ndarray:
    """Random int8 data in one of several regimes (chosen at random unless given)."""
    mode = mode or rng.choice(["full", "full", "grad", "small", "sparse", "extreme", "const"])
    if mode == "full":
        a = rng.integers(-128, 128, shape)
    elif mode == "grad":
        a = rng.integers(-127, 128, shape)
    elif mode == "small":
        a = rng.integers(-3, 4, shape)
    elif mode == "sparse":
        a = rng.integers(-127, 128, shape) * (rng.random(shape) < 0.1)
    elif mode == "extreme":
        a = rng.choice(np.array([-128, -127, 127]), shape)
    else:  # const
        a = np.full(shape, rng.choice([-128, -127, -1, 0, 1, 127]))
    return np.asarray(a, np.int8)


def grad_i8(rng, shape) -> np.ndarray:
    """A gradient tensor: int8 in [-127, 127]."""
    mode = rng.choice(["grad", "grad", "small", "sparse", "extreme", "const"])
    return np.clip(i8(rng, shape, mode), -127, 127).astype(np.int8)


def scale(rng, zero_prob: float = 0.0) -> np.float32:
    """A positive float32 scale, log-uniform over a wide range (sometimes 0 or a power of 2)."""
    u = rng.random()
    if u < zero_prob:
        return F32(0.0)
    if u < zero_prob + 0.1:
        return F32(2.0 ** int(rng.integers(-20, 5)))
    return F32(2.0 ** rng.uniform(-24, 6))


def geometry(rng, k_max: int = 5, in_max: int = 10):
    """Random conv/pool geometry: (ih, iw, kh, kw, ConvGeom, oh, ow)."""
    kh = int(rng.choice([1, 1, 2, 3, 3, 5][: 6 if k_max >= 5 else 5]))
    kw = kh if rng.random() < 0.8 else int(rng.integers(1, k_max + 1))
    kh, kw = min(kh, k_max), min(kw, k_max)
    sh = int(rng.choice([1, 1, 2, 2, 3]))
    sw = sh if rng.random() < 0.85 else int(rng.integers(1, 4))
    ih = int(rng.integers(1, in_max + 1))
    iw = ih if rng.random() < 0.6 else int(rng.integers(1, in_max + 1))
    padding = rng.choice(["SAME", "VALID", "EXPLICIT"])
    if padding == "VALID" and (ih < kh or iw < kw):
        padding = "SAME"
    if padding == "SAME":
        oh, ow = -(-ih // sh), -(-iw // sw)
        pt = max((oh - 1) * sh + kh - ih, 0) // 2
        pl = max((ow - 1) * sw + kw - iw, 0) // 2
    elif padding == "VALID":
        oh, ow = (ih - kh) // sh + 1, (iw - kw) // sw + 1
        pt = pl = 0
    else:
        pt, pb = int(rng.integers(0, kh)), int(rng.integers(0, kh))
        pl, pr = int(rng.integers(0, kw)), int(rng.integers(0, kw))
        oh = max((ih + pt + pb - kh) // sh + 1, 1)
        ow = max((iw + pl + pr - kw) // sw + 1, 1)
    return ih, iw, kh, kw, T.ConvGeom(sh, sw, pt, pl), oh, ow


def channels(rng, hi: int = 8) -> int:
    return int(rng.choice([1, 1, 2, 3, 4, 8, hi]) if rng.random() < 0.7 else rng.integers(1, hi + 1))


def update_channels(rng, total: int) -> int:
    """Channel ratios 1/8 .. 1 of the tensor (or a random count >= 1)."""
    # (0 is excluded: the numpy reference's conv_weight_grad_acc cannot reshape an empty acc.)
    u = rng.random()
    if u < 0.2:
        return int(rng.integers(1, total + 1))
    ratio = rng.choice([1 / 8, 1 / 4, 1 / 2, 3 / 4, 1, 1])
    return max(1, int(math.ceil(total * ratio)))


def geom_dict(g: T.ConvGeom) -> dict:
    return {"stride_h": g.stride_h, "stride_w": g.stride_w,
            "pad_top": g.pad_top, "pad_left": g.pad_left}


def lr_value(rng) -> np.float32:
    u = rng.random()
    if u < 0.04:
        return F32(1e12)  # saturates requant64
    if u < 0.08:
        return F32(1e-30)  # multiplier shift far below 0
    if u < 0.10:
        return F32(0.0)  # all multipliers 0 (the glue skips lr == 0; the core still works)
    return F32(2.0 ** rng.uniform(-16, 2))


def factors(rng, n: int) -> np.ndarray:
    f = (2.0 ** rng.uniform(-12, 12, n)).astype(F32)
    u = rng.random()
    if u < 0.05:
        f[rng.integers(0, n)] = 0.0
    elif u < 0.08:
        f[rng.integers(0, n)] = np.inf  # non-finite multiplier -> (0, 0)
    elif u < 0.15:
        f[:] = F32(2.0 ** rng.uniform(-4, 4))
    return f


def tuned_factors(rng, f: np.ndarray, lr, s, acc) -> np.ndarray:
    """Often: factors giving steps of ~0.25 .. 64 parameter units (else updates are mostly < 1)."""
    a = float(np.abs(acc).mean()) if acc.size else 0.0
    if rng.random() < 0.5 or a == 0 or float(lr) * float(s) == 0:
        return f
    step = 2.0 ** rng.uniform(-2, 6, f.size)
    with np.errstate(all="ignore"):
        return (step / (float(lr) * float(s) * a)).astype(F32)


# make_cases(counter0=True) sets this: update ops then use counter 0 (a freshly initialised op,
# as the TFLM glue test replays them).
_FORCE_COUNTER0 = False


def seed_counter(rng) -> tuple[int, int]:
    seed = int(rng.integers(0, 2**32))
    counter = int(rng.choice([0, 1, 2, int(rng.integers(0, 10**6)), 2**32 - 1]))
    return seed, 0 if _FORCE_COUNTER0 else counter


def zero_point(rng) -> int:
    return int(rng.choice([-128, 127, 0, int(rng.integers(-128, 128)), int(rng.integers(-128, 128))]))


# --------------------------------------------------------------------------- per-op generators


def gen_softmax_ce_grad(rng, i):
    n = int(rng.integers(1, 65)) if rng.random() < 0.9 else int(rng.integers(65, 1001))
    if rng.random() < 0.5:
        logits = rng.normal(0, rng.uniform(0.1, 8), n)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        probs = np.clip(np.round(p * 256) - 128, -128, 127).astype(np.int8)[None]
    else:
        probs = i8(rng, (1, n))
    k = np.arange(256)
    lut = (-np.log((k + 0.5) / 256)).astype(F32)
    if rng.random() < 0.1:
        lut = rng.normal(0, 10, 256).astype(F32)
    label = int(rng.integers(0, n))
    if rng.random() < 0.05:
        label = int(rng.choice([-1, n, n + 7, -(2**31), 2**31 - 1]))
    case = {"probs": probs, "label": np.array([label], np.int32), "loss_lut": lut}
    try:
        g, gs, loss = T.softmax_ce_grad(probs, label, lut)
    except T.TrainingOpError:
        return {**case, "error": 1}
    return {**case, "out_grad": g, "out_grad_scale": F32(gs), "out_loss": F32(loss)}


def gen_mse_grad(rng, i):
    n = int(rng.integers(1, 259))
    shape = (1, n)
    y, t = i8(rng, shape), i8(rng, shape)
    if rng.random() < 0.1:
        y, t = np.full(shape, 127, np.int8), np.full(shape, -128, np.int8)  # largest errors
    s = scale(rng)
    g, gs, loss = T.mse_grad(y, t, s)
    return {"y": y, "target": t, "scale": s, "out_grad": g, "out_grad_scale": F32(gs),
            "out_loss": F32(loss)}


def gen_act_grad(rng, i):
    shape = (1, int(rng.integers(1, 6)), int(rng.integers(1, 6)), channels(rng))
    if rng.random() < 0.2:
        shape = (1, int(rng.integers(1, 50)))
    g, y = grad_i8(rng, shape), i8(rng, shape)
    zp = zero_point(rng)
    kind = rng.choice(["none", "relu", "relu6", "random"])
    if kind == "none":
        lo, hi = -128, 127
    elif kind == "relu":
        lo, hi = zp, 127
    elif kind == "relu6":
        lo, hi = zp, min(127, zp + int(rng.integers(1, 256)))
    else:
        lo, hi = sorted(int(v) for v in rng.integers(-129, 129, 2))
    return {"g": g, "y": y, "act_min": lo, "act_max": hi,
            "out_g": T.act_grad(g, y, lo, hi)}


def gen_mask_pack(rng, i):
    case = gen_act_grad(rng, i)
    return {"y": case["y"], "act_min": case["act_min"], "act_max": case["act_max"],
            "out_bits": T.mask_pack(case["y"], case["act_min"], case["act_max"])}


def gen_mask_grad(rng, i):
    case = gen_act_grad(rng, i)
    bits = T.mask_pack(case["y"], case["act_min"], case["act_max"])
    out = T.mask_grad(case["g"], bits)
    assert np.array_equal(out, case["out_g"])  # the packed mask is the same mask
    return {"g": case["g"], "bits": bits, "out_g": out}


def gen_grad_add(rng, i):
    shape = (1, int(rng.integers(1, 6)), int(rng.integers(1, 6)), channels(rng))
    if rng.random() < 0.2:
        shape = (1, int(rng.integers(1, 50)))
    g1, g2 = grad_i8(rng, shape), grad_i8(rng, shape)
    u = rng.random()
    s1, s2 = scale(rng, 0.08), scale(rng, 0.08)
    if u < 0.1:
        s2 = s1
    elif u < 0.15:
        s1 = s2 = F32(0.0)
    elif u < 0.2:
        s2 = F32(s1 * F32(2.0 ** -30))  # second weight rounds to 0
    g, s = T.grad_add(g1, s1, g2, s2)
    return {"g1": g1, "s1": s1, "g2": g2, "s2": s2, "out_g": g, "out_s": F32(s)}


def gen_mean_grad(rng, i):
    h, w, c = int(rng.integers(1, 9)), int(rng.integers(1, 9)), channels(rng, 16)
    g = grad_i8(rng, (1, c) if rng.random() < 0.5 else (1, 1, 1, c))
    s = scale(rng, 0.05)
    inv = F32(1.0 / (h * w))
    out, s_in = T.mean_grad(g, s, (1, h, w, c), inv)
    return {"g": g, "s": s, "inv_count": inv, "in_shape": np.array([1, h, w, c], np.int32),
            "out_g_in": np.ascontiguousarray(out), "out_s_in": F32(s_in)}


def gen_pad_grad(rng, i):
    ih, iw, c = int(rng.integers(1, 8)), int(rng.integers(1, 8)), channels(rng)
    pt, pb, pl, pr = (int(v) for v in rng.integers(0, 4, 4))
    g = grad_i8(rng, (1, ih + pt + pb, iw + pl + pr, c))
    out = T.pad_grad(g, (1, ih, iw, c), pt, pl)
    return {"g": g, "pad_top": pt, "pad_left": pl, "in_shape": np.array([1, ih, iw, c], np.int32),
            "out_g_in": out}


def gen_reshape_grad(rng, i):
    dims = [int(rng.integers(1, 6)) for _ in range(3)]
    in_shape = (1, *dims) if rng.random() < 0.7 else (1, int(np.prod(dims)))
    g_shape = (1, int(np.prod(dims))) if len(in_shape) == 4 else (1, *dims)
    g = grad_i8(rng, g_shape)
    ref = getattr(T, "reshape_grad", None)
    out = ref(g, in_shape) if ref is not None else np.ascontiguousarray(g.reshape(in_shape))
    return {"g": g, "in_shape": np.array(in_shape, np.int32), "out_g_in": out}


def _pool_geometry(rng):
    if rng.random() < 0.5:  # the common "pool k, stride k" layers
        k = int(rng.choice([2, 2, 3, 4]))
        fh = fw = k
        sh = sw = k
        ih, iw = int(rng.integers(1, 13)), int(rng.integers(1, 13))
        padding = rng.choice(["SAME", "VALID"])
    else:
        fh, fw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        ih, iw = int(rng.integers(1, 11)), int(rng.integers(1, 11))
        padding = rng.choice(["SAME", "VALID"])
    if padding == "VALID" and (ih < fh or iw < fw):
        padding = "SAME"
    if padding == "SAME":
        oh, ow = -(-ih // sh), -(-iw // sw)
        pt = max((oh - 1) * sh + fh - ih, 0) // 2
        pl = max((ow - 1) * sw + fw - iw, 0) // 2
    else:
        oh, ow = (ih - fh) // sh + 1, (iw - fw) // sw + 1
        pt = pl = 0
    return ih, iw, fh, fw, T.ConvGeom(sh, sw, pt, pl), oh, ow


def _pool_dict(fh, fw, geom):
    return {"filter_h": fh, "filter_w": fw, **geom_dict(geom)}


def gen_avgpool_grad(rng, i):
    ih, iw, fh, fw, geom, oh, ow = _pool_geometry(rng)
    c = channels(rng)
    g = grad_i8(rng, (1, oh, ow, c))
    s = scale(rng, 0.03)
    out, s_in = T.avgpool_grad(g, s, (1, ih, iw, c), (fh, fw), geom)
    return {"g": g, "s": s, **_pool_dict(fh, fw, geom),
            "in_shape": np.array([1, ih, iw, c], np.int32), "out_g_in": out, "out_s_in": F32(s_in)}


def _maxpool_forward(x, fh, fw, geom, oh, ow):
    _, ih, iw, c = x.shape
    y = np.full((1, oh, ow, c), -128, np.int8)
    for o_h in range(oh):
        for o_w in range(ow):
            h0, w0 = o_h * geom.stride_h - geom.pad_top, o_w * geom.stride_w - geom.pad_left
            win = x[0, max(h0, 0):max(min(h0 + fh, ih), 0), max(w0, 0):max(min(w0 + fw, iw), 0)]
            if win.size:
                y[0, o_h, o_w] = win.reshape(-1, c).max(axis=0)
    return y


def gen_maxpool_grad(rng, i):
    ih, iw, fh, fw, geom, oh, ow = _pool_geometry(rng)
    c = channels(rng)
    x = i8(rng, (1, ih, iw, c), rng.choice(["full", "small", "const", "extreme"]))  # ties!
    y = _maxpool_forward(x, fh, fw, geom, oh, ow)
    u = rng.random()
    if u < 0.2:  # fused ReLU-like clamp: some windows have no input equal to y
        y = np.maximum(y, np.int8(zero_point(rng))).astype(np.int8)
    elif u < 0.25:
        y = i8(rng, y.shape)
    g = grad_i8(rng, (1, oh, ow, c))
    s = scale(rng, 0.03)
    out, s_in = T.maxpool_grad(g, s, x, y, (fh, fw), geom)
    return {"g": g, "s": s, "x": x, "y": y, **_pool_dict(fh, fw, geom),
            "out_g_in": out, "out_s_in": F32(s_in)}


def _wmul(rng, co) -> np.ndarray:
    s_w = (2.0 ** rng.uniform(-10, -2, co)).astype(F32)
    if rng.random() < 0.2:
        s_w[:] = s_w[0]
    wm = np.clip(np.round(s_w / s_w.max() * 2**15), 1, 2**15).astype(np.int32)
    return wm


def _weights(rng, shape) -> np.ndarray:
    mode = rng.choice(["grad", "grad", "full", "small", "extreme"])
    return i8(rng, shape, mode)


def gen_conv_input_grad(rng, i):
    w_scale_max = scale(rng)
    s = scale(rng, 0.03)
    if rng.random() < 0.15:  # fully connected
        ci, co = channels(rng, 32), channels(rng, 16)
        g, w = grad_i8(rng, (1, co)), _weights(rng, (co, ci))
        wm = _wmul(rng, co)
        out, s_in = T.conv_input_grad(g, s, w, wm, w_scale_max, (1, ci), T.ConvGeom())
        return {"g": g, "s": s, "w": w, "wmul": wm, "w_scale_max": w_scale_max,
                **geom_dict(T.ConvGeom()), "in_shape": np.array([1, ci], np.int32),
                "out_g_in": out, "out_s_in": F32(s_in)}
    ih, iw, kh, kw, geom, oh, ow = geometry(rng)
    ci, co = channels(rng), channels(rng)
    g, w = grad_i8(rng, (1, oh, ow, co)), _weights(rng, (co, kh, kw, ci))
    wm = _wmul(rng, co)
    out, s_in = T.conv_input_grad(g, s, w, wm, w_scale_max, (1, ih, iw, ci), geom)
    return {"g": g, "s": s, "w": w, "wmul": wm, "w_scale_max": w_scale_max, **geom_dict(geom),
            "in_shape": np.array([1, ih, iw, ci], np.int32), "out_g_in": out,
            "out_s_in": F32(s_in)}


def gen_dw_input_grad(rng, i):
    ih, iw, kh, kw, geom, oh, ow = geometry(rng)
    c = channels(rng, 16)
    g, w = grad_i8(rng, (1, oh, ow, c)), _weights(rng, (1, kh, kw, c))
    wm = _wmul(rng, c)
    w_scale_max, s = scale(rng), scale(rng, 0.03)
    out, s_in = T.depthwise_input_grad(g, s, w, wm, w_scale_max, (1, ih, iw, c), geom)
    return {"g": g, "s": s, "w": w, "wmul": wm, "w_scale_max": w_scale_max, **geom_dict(geom),
            "in_shape": np.array([1, ih, iw, c], np.int32), "out_g_in": out,
            "out_s_in": F32(s_in)}


def _update_common(rng, n_ch):
    seed, counter = seed_counter(rng)
    p = T.UpdateParams(update_channels(rng, n_ch), seed, zero_point(rng))
    return p, counter


def _update_dict(p: T.UpdateParams, counter: int) -> dict:
    return {"update_channels": p.update_channels, "seed": p.seed,
            "x_zero_point": p.x_zero_point, "counter": counter}


def gen_conv_weight_update(rng, i):
    s, lr = scale(rng, 0.03), lr_value(rng)
    if i % 200 == 7:  # large output: the int32 saturation of the weight-gradient sum
        ih = iw = 260
        kh = kw = 1
        geom, oh, ow = T.ConvGeom(), 260, 260
        ci = co = 1
        g = np.full((1, oh, ow, co), 127 if i % 400 == 7 else -127, np.int8)
        x = np.full((1, ih, iw, ci), 127, np.int8)
        p = T.UpdateParams(1, int(rng.integers(0, 2**32)), -128)
        counter = 0 if _FORCE_COUNTER0 else int(rng.integers(0, 100))
        w = _weights(rng, (co, kh, kw, ci))
    elif rng.random() < 0.15:  # fully connected
        ci, co = channels(rng, 32), channels(rng, 16)
        g, x, w = grad_i8(rng, (1, co)), i8(rng, (1, ci)), _weights(rng, (co, ci))
        geom = T.ConvGeom()
        p, counter = _update_common(rng, co)
    else:
        ih, iw, kh, kw, geom, oh, ow = geometry(rng)
        ci, co = channels(rng), channels(rng)
        g, x = grad_i8(rng, (1, oh, ow, co)), i8(rng, (1, ih, iw, ci))
        w = _weights(rng, (co, kh, kw, ci))
        p, counter = _update_common(rng, co)
    wf = factors(rng, co)
    if p.update_channels:
        w4 = w.reshape(w.shape[0], 1, 1, -1) if w.ndim == 2 else w
        wf = tuned_factors(rng, wf, lr, s, T.conv_weight_grad_acc(
            g, x, p.x_zero_point, w4.shape[1:3], geom, p.update_channels))
    out = T.conv_weight_update(w, g, s, x, wf, lr, geom, p, counter)
    return {"g": g, "s": s, "x": x, "w": w, "wfactor": wf, "lr": lr, **geom_dict(geom),
            **_update_dict(p, counter), "out_w": out}


def gen_dw_weight_update(rng, i):
    s, lr = scale(rng, 0.03), lr_value(rng)
    ih, iw, kh, kw, geom, oh, ow = geometry(rng)
    c = channels(rng, 16)
    g, x = grad_i8(rng, (1, oh, ow, c)), i8(rng, (1, ih, iw, c))
    w = _weights(rng, (1, kh, kw, c))
    p, counter = _update_common(rng, c)
    wf = tuned_factors(rng, factors(rng, c), lr, s, T.depthwise_weight_grad_acc(
        g, x, p.x_zero_point, w.shape[1:3], geom, p.update_channels))
    out = T.depthwise_weight_update(w, g, s, x, wf, lr, geom, p, counter)
    return {"g": g, "s": s, "x": x, "w": w, "wfactor": wf, "lr": lr, **geom_dict(geom),
            **_update_dict(p, counter), "out_w": out}


def gen_bias_update(rng, i):
    s, lr = scale(rng, 0.03), lr_value(rng)
    c = channels(rng, 16)
    shape = (1, c) if rng.random() < 0.3 else (1, int(rng.integers(1, 9)), int(rng.integers(1, 9)), c)
    g = grad_i8(rng, shape)
    u = rng.random()
    if u < 0.15:
        b = rng.choice(np.array([-(2**31), 2**31 - 1, -(2**31) + 1, 2**31 - 2]), c).astype(np.int32)
    else:
        b = rng.integers(-(2**20), 2**20, c).astype(np.int32)
    if rng.random() < 0.3:  # a narrow bias (TMT_CONV's int16 change), its saturation too
        b = (rng.choice(np.array([-32768, 32767, -32767, 32766]), c) if u < 0.15
             else rng.integers(-(2**15), 2**15, c)).astype(np.int16)
    seed, counter = seed_counter(rng)
    p = T.UpdateParams(update_channels(rng, c), seed)
    bf = tuned_factors(rng, factors(rng, c), lr, s, T.bias_grad_acc(g, p.update_channels))
    out = T.bias_update(b, g, s, bf, lr, p, counter)
    return {"g": g, "s": s, "b": b, "bfactor": bf, "lr": lr, "update_channels": p.update_channels,
            "seed": p.seed, "counter": counter, "out_b": out}


# --------------------------------------------------------------------------- fp32 backward
# The float32-gradient variants (docs/contract.md, "fp32 backward"): the same ops, dispatched on
# the gradient's type. Their golden cases are named `<op>_F32` (one file each); the keys are the
# int8 cases' without the scale entries, plus `wscale` (float32 s_W[co]) for the input gradients.


def grad_f32(rng, shape) -> np.ndarray:
    """A float32 real gradient in one of several regimes (finite: the C++ must match on every
    platform, and NaN bit patterns differ between x86 and Arm)."""
    mode = rng.choice(["normal", "normal", "wide", "sparse", "zeros", "const", "dequant", "cancel",
                       "tiny"])
    mag = 2.0 ** rng.uniform(-20, 3)
    if mode == "normal":
        a = rng.standard_normal(shape) * mag
    elif mode == "wide":  # magnitudes spread over 2^-40 .. 2^12 within one tensor
        a = rng.standard_normal(shape) * 2.0 ** rng.uniform(-40, 12, shape)
    elif mode == "sparse":
        a = rng.standard_normal(shape) * mag * (rng.random(shape) < 0.15)
    elif mode == "zeros":  # +0.0 and -0.0 with a few values: zero signs must survive
        a = rng.choice(np.array([0.0, -0.0, 0.0, -0.0, 1.5, -0.25]), shape) * mag
    elif mode == "const":
        a = np.full(shape, rng.choice([-1.0, 1.0, 0.5, -0.0]) * mag)
    elif mode == "dequant":  # what an int8 gradient times its scale would be
        a = grad_i8(rng, shape).astype(np.float64) * 2.0 ** int(rng.integers(-24, 0))
    elif mode == "cancel":  # small integers times a power of two: sums cancel to exact zeros
        a = rng.integers(-2, 3, shape) * 2.0 ** int(rng.integers(-10, 3))
    else:  # tiny: subnormal and near-subnormal values
        a = rng.standard_normal(shape) * 2.0 ** rng.uniform(-149, -110, shape)
    return np.asarray(a, F32)


def wscale_f32(rng, co: int) -> np.ndarray:
    """Per-channel weight scales s_W (sometimes per-tensor)."""
    s = (2.0 ** rng.uniform(-12, -1, co)).astype(F32)
    if rng.random() < 0.2:
        s[:] = s[0]
    return s


def lr_value_f32(rng) -> np.float32:
    u = rng.random()
    if u < 0.04:
        return F32(1e30)  # (lr * acc) * factor * 2^16 overflows: q16 saturates (or inf)
    if u < 0.08:
        return F32(1e-30)  # steps far below one unit: only the noise decides
    if u < 0.10:
        return F32(0.0)  # the glue skips lr == 0; the core still works
    return F32(2.0 ** rng.uniform(-16, 2))


def tuned_factors_f32(rng, f: np.ndarray, lr, acc) -> np.ndarray:
    """Often: factors giving steps of ~0.25 .. 64 parameter units (acc is the float gradient)."""
    a = float(np.abs(acc.astype(np.float64)).mean()) if acc.size else 0.0
    if rng.random() < 0.5 or a == 0 or not np.isfinite(a) or float(lr) == 0:
        return f
    step = 2.0 ** rng.uniform(-2, 6, f.size)
    with np.errstate(all="ignore"):
        out = (step / (float(lr) * a)).astype(F32)
    return np.where(np.isfinite(out), out, f).astype(F32)


def gen_softmax_ce_grad_f32(rng, i):
    case = gen_softmax_ce_grad(rng, i)
    case = {k: v for k, v in case.items() if not k.startswith("out_")}
    if "error" in case:
        return case
    g, loss = T.softmax_ce_grad_f32(case["probs"], int(case["label"][0]), case["loss_lut"])
    return {**case, "out_grad": g, "out_loss": F32(loss)}


def gen_mse_grad_f32(rng, i):
    case = gen_mse_grad(rng, i)
    g, loss = T.mse_grad_f32(case["y"], case["target"], case["scale"])
    return {"y": case["y"], "target": case["target"], "scale": case["scale"], "out_grad": g,
            "out_loss": F32(loss)}


def gen_act_grad_f32(rng, i):
    case = gen_act_grad(rng, i)
    g = grad_f32(rng, case["g"].shape)
    return {"g": g, "y": case["y"], "act_min": case["act_min"], "act_max": case["act_max"],
            "out_g": T.act_grad(g, case["y"], case["act_min"], case["act_max"])}


def gen_mask_grad_f32(rng, i):
    case = gen_act_grad_f32(rng, i)
    bits = T.mask_pack(case["y"], case["act_min"], case["act_max"])
    out = T.mask_grad(case["g"], bits)
    assert out.dtype == F32 and out.tobytes() == case["out_g"].tobytes()
    return {"g": case["g"], "bits": bits, "out_g": out}


def gen_grad_add_f32(rng, i):
    shape = (1, int(rng.integers(1, 6)), int(rng.integers(1, 6)), channels(rng))
    if rng.random() < 0.2:
        shape = (1, int(rng.integers(1, 50)))
    g1, g2 = grad_f32(rng, shape), grad_f32(rng, shape)
    u = rng.random()
    if u < 0.1:
        g2 = -g1  # x + (-x) = +0.0
    elif u < 0.15:  # -0.0 + -0.0 = -0.0, -0.0 + x = x
        g1 = np.full(shape, F32(-0.0))
        g2 = np.where(rng.random(shape) < 0.5, F32(-0.0), g2).astype(F32)
    elif u < 0.2:
        g2 = np.full(shape, F32(3.0e38))
        g1 = np.abs(g1) + F32(1e38)  # overflow to +inf
    return {"g1": g1, "g2": g2, "out_g": T.grad_add_f32(g1, g2)}


def gen_mean_grad_f32(rng, i):
    h, w, c = int(rng.integers(1, 9)), int(rng.integers(1, 9)), channels(rng, 16)
    g = grad_f32(rng, (1, c) if rng.random() < 0.5 else (1, 1, 1, c))
    inv = F32(1.0 / (h * w))
    out = T.mean_grad_f32(g, (1, h, w, c), inv)
    return {"g": g, "inv_count": inv, "in_shape": np.array([1, h, w, c], np.int32),
            "out_g_in": np.ascontiguousarray(out, F32)}


def gen_pad_grad_f32(rng, i):
    ih, iw, c = int(rng.integers(1, 8)), int(rng.integers(1, 8)), channels(rng)
    pt, pb, pl, pr = (int(v) for v in rng.integers(0, 4, 4))
    g = grad_f32(rng, (1, ih + pt + pb, iw + pl + pr, c))
    out = T.pad_grad(g, (1, ih, iw, c), pt, pl)
    return {"g": g, "pad_top": pt, "pad_left": pl, "in_shape": np.array([1, ih, iw, c], np.int32),
            "out_g_in": np.ascontiguousarray(out)}


def gen_reshape_grad_f32(rng, i):
    dims = [int(rng.integers(1, 6)) for _ in range(3)]
    in_shape = (1, *dims) if rng.random() < 0.7 else (1, int(np.prod(dims)))
    g_shape = (1, int(np.prod(dims))) if len(in_shape) == 4 else (1, *dims)
    g = grad_f32(rng, g_shape)
    return {"g": g, "in_shape": np.array(in_shape, np.int32), "out_g_in": T.reshape_grad(g, in_shape)}


def gen_avgpool_grad_f32(rng, i):
    ih, iw, fh, fw, geom, oh, ow = _pool_geometry(rng)
    c = channels(rng)
    g = grad_f32(rng, (1, oh, ow, c))
    out = T.avgpool_grad_f32(g, (1, ih, iw, c), (fh, fw), geom)
    return {"g": g, **_pool_dict(fh, fw, geom), "in_shape": np.array([1, ih, iw, c], np.int32),
            "out_g_in": out}


def gen_maxpool_grad_f32(rng, i):
    case = gen_maxpool_grad(rng, i)
    g = grad_f32(rng, case["g"].shape)
    geom = T.ConvGeom(case["stride_h"], case["stride_w"], case["pad_top"], case["pad_left"])
    out = T.maxpool_grad_f32(g, case["x"], case["y"], (case["filter_h"], case["filter_w"]), geom)
    return {"g": g, "x": case["x"], "y": case["y"], **_pool_dict(case["filter_h"], case["filter_w"], geom),
            "out_g_in": out}


def gen_conv_input_grad_f32(rng, i):
    if rng.random() < 0.15:  # fully connected
        ci, co = channels(rng, 32), channels(rng, 16)
        g, w = grad_f32(rng, (1, co)), _weights(rng, (co, ci))
        ws = wscale_f32(rng, co)
        out = T.conv_input_grad_f32(g, w, ws, (1, ci), T.ConvGeom())
        return {"g": g, "w": w, "wscale": ws, **geom_dict(T.ConvGeom()),
                "in_shape": np.array([1, ci], np.int32), "out_g_in": out}
    ih, iw, kh, kw, geom, oh, ow = geometry(rng)
    ci, co = channels(rng), channels(rng)
    g, w = grad_f32(rng, (1, oh, ow, co)), _weights(rng, (co, kh, kw, ci))
    ws = wscale_f32(rng, co)
    out = T.conv_input_grad_f32(g, w, ws, (1, ih, iw, ci), geom)
    return {"g": g, "w": w, "wscale": ws, **geom_dict(geom),
            "in_shape": np.array([1, ih, iw, ci], np.int32), "out_g_in": out}


def gen_dw_input_grad_f32(rng, i):
    ih, iw, kh, kw, geom, oh, ow = geometry(rng)
    c = channels(rng, 16)
    g, w = grad_f32(rng, (1, oh, ow, c)), _weights(rng, (1, kh, kw, c))
    ws = wscale_f32(rng, c)
    out = T.depthwise_input_grad_f32(g, w, ws, (1, ih, iw, c), geom)
    return {"g": g, "w": w, "wscale": ws, **geom_dict(geom),
            "in_shape": np.array([1, ih, iw, c], np.int32), "out_g_in": out}


def gen_conv_weight_update_f32(rng, i):
    lr = lr_value_f32(rng)
    if rng.random() < 0.15:  # fully connected
        ci, co = channels(rng, 32), channels(rng, 16)
        g, x, w = grad_f32(rng, (1, co)), i8(rng, (1, ci)), _weights(rng, (co, ci))
        geom = T.ConvGeom()
        p, counter = _update_common(rng, co)
    else:
        ih, iw, kh, kw, geom, oh, ow = geometry(rng)
        ci, co = channels(rng), channels(rng)
        g, x = grad_f32(rng, (1, oh, ow, co)), i8(rng, (1, ih, iw, ci))
        w = _weights(rng, (co, kh, kw, ci))
        p, counter = _update_common(rng, co)
    w4 = w.reshape(w.shape[0], 1, 1, -1) if w.ndim == 2 else w
    wf = tuned_factors_f32(rng, factors(rng, co), lr, T.conv_weight_grad_f32(
        g, x, p.x_zero_point, w4.shape[1:3], geom, p.update_channels))
    if rng.random() < 0.2:  # sliced weights: only the first R >= update_channels rows present
        rows = int(rng.integers(p.update_channels, co + 1))
        w = np.ascontiguousarray(w[:rows])
    out = T.conv_weight_update_f32(w, g, x, wf, lr, geom, p, counter)
    acc = T.conv_weight_grad_f32(g, x, p.x_zero_point, w4.shape[1:3], geom, p.update_channels)
    return {"g": g, "x": x, "w": w, "wfactor": wf, "lr": lr, **geom_dict(geom),
            **_update_dict(p, counter), "out_w": out, "out_acc": acc.astype(F32)}


def gen_dw_weight_update_f32(rng, i):
    lr = lr_value_f32(rng)
    ih, iw, kh, kw, geom, oh, ow = geometry(rng)
    c = channels(rng, 16)
    g, x = grad_f32(rng, (1, oh, ow, c)), i8(rng, (1, ih, iw, c))
    w = _weights(rng, (1, kh, kw, c))
    p, counter = _update_common(rng, c)
    wf = tuned_factors_f32(rng, factors(rng, c), lr, T.depthwise_weight_grad_f32(
        g, x, p.x_zero_point, w.shape[1:3], geom, p.update_channels))
    out = T.depthwise_weight_update_f32(w, g, x, wf, lr, geom, p, counter)
    acc = T.depthwise_weight_grad_f32(g, x, p.x_zero_point, w.shape[1:3], geom, p.update_channels)
    return {"g": g, "x": x, "w": w, "wfactor": wf, "lr": lr, **geom_dict(geom),
            **_update_dict(p, counter), "out_w": out, "out_acc": acc.astype(F32)}


def gen_bias_update_f32(rng, i):
    lr = lr_value_f32(rng)
    c = channels(rng, 16)
    shape = (1, c) if rng.random() < 0.3 else (1, int(rng.integers(1, 9)), int(rng.integers(1, 9)), c)
    g = grad_f32(rng, shape)
    if rng.random() < 0.15:
        b = rng.choice(np.array([-(2**31), 2**31 - 1, -(2**31) + 1, 2**31 - 2]), c).astype(np.int32)
    else:
        b = rng.integers(-(2**20), 2**20, c).astype(np.int32)
    seed, counter = seed_counter(rng)
    p = T.UpdateParams(update_channels(rng, c), seed)
    bf = tuned_factors_f32(rng, factors(rng, c), lr, T.bias_grad_f32(g, p.update_channels))
    out = T.bias_update_f32(b, g, bf, lr, p, counter)
    t = q16_inputs(rng)
    return {"g": g, "b": b, "bfactor": bf, "lr": lr, "update_channels": p.update_channels,
            "seed": p.seed, "counter": counter, "out_b": out,
            "out_acc": T.bias_grad_f32(g, p.update_channels).astype(F32),
            "q16_in": t, "out_q16": T.q16_from_f32(t).astype(np.int64)}


def q16_inputs(rng) -> np.ndarray:
    """Values for q16(t): the saturation and rounding edges, and random magnitudes."""
    two62 = F32(2.0**62)
    edges = np.array([np.nan, np.inf, -np.inf, two62, -two62, np.nextafter(two62, F32(0)),
                      -np.nextafter(two62, F32(0)), F32(3e38), F32(-3e38), 0.0, -0.0, 0.5, -0.5,
                      -1.0, -1.5, 65535.996, -65536.004, 1e-45, -1e-45, F32(2.0**24 + 2)], F32)
    rand = (rng.standard_normal(12) * 2.0 ** rng.uniform(-4, 64, 12)).astype(F32)
    return np.concatenate([edges[rng.permutation(edges.size)[:8]], rand]).astype(F32)


F32_GENERATORS = {
    "TMT_SOFTMAX_CE_GRAD_F32": gen_softmax_ce_grad_f32,
    "TMT_MSE_GRAD_F32": gen_mse_grad_f32,
    "TMT_ACT_GRAD_F32": gen_act_grad_f32,
    "TMT_MASK_GRAD_F32": gen_mask_grad_f32,
    "TMT_GRAD_ADD_F32": gen_grad_add_f32,
    "TMT_MEAN_GRAD_F32": gen_mean_grad_f32,
    "TMT_PAD_GRAD_F32": gen_pad_grad_f32,
    "TMT_RESHAPE_GRAD_F32": gen_reshape_grad_f32,
    "TMT_AVGPOOL_GRAD_F32": gen_avgpool_grad_f32,
    "TMT_MAXPOOL_GRAD_F32": gen_maxpool_grad_f32,
    "TMT_CONV_INPUT_GRAD_F32": gen_conv_input_grad_f32,
    "TMT_DW_INPUT_GRAD_F32": gen_dw_input_grad_f32,
    "TMT_CONV_WEIGHT_UPDATE_F32": gen_conv_weight_update_f32,
    "TMT_DW_WEIGHT_UPDATE_F32": gen_dw_weight_update_f32,
    "TMT_BIAS_UPDATE_F32": gen_bias_update_f32,
}
F32_SUFFIX = "_F32"


GENERATORS = {
    "TMT_SOFTMAX_CE_GRAD": gen_softmax_ce_grad,
    "TMT_MSE_GRAD": gen_mse_grad,
    "TMT_ACT_GRAD": gen_act_grad,
    "TMT_MASK_PACK": gen_mask_pack,
    "TMT_MASK_GRAD": gen_mask_grad,
    "TMT_GRAD_ADD": gen_grad_add,
    "TMT_MEAN_GRAD": gen_mean_grad,
    "TMT_PAD_GRAD": gen_pad_grad,
    "TMT_RESHAPE_GRAD": gen_reshape_grad,
    "TMT_AVGPOOL_GRAD": gen_avgpool_grad,
    "TMT_MAXPOOL_GRAD": gen_maxpool_grad,
    "TMT_CONV_INPUT_GRAD": gen_conv_input_grad,
    "TMT_DW_INPUT_GRAD": gen_dw_input_grad,
    "TMT_CONV_WEIGHT_UPDATE": gen_conv_weight_update,
    "TMT_DW_WEIGHT_UPDATE": gen_dw_weight_update,
    "TMT_BIAS_UPDATE": gen_bias_update,
    **F32_GENERATORS,
}


def make_cases(op: str, n: int, seed: int = 0, counter0: bool = False) -> list[dict]:
    """`n` cases of `op` (deterministic in `seed`); counter0: update ops use counter 0."""
    global _FORCE_COUNTER0
    gen = GENERATORS[op] if op in GENERATORS else FORWARD_GENERATORS[op]
    rng = np.random.default_rng([seed, sum(op.encode())])
    cases = []
    _FORCE_COUNTER0 = counter0
    try:
        with np.errstate(all="ignore"):
            for i in range(n):
                case = gen(rng, i)
                case["op"] = op
                cases.append(case)
    finally:
        _FORCE_COUNTER0 = False
    return cases


def write_all(out_dir: str | os.PathLike, n: int = 1000, seed: int = 0,
              ops: list[str] | None = None, counter0: bool = False) -> dict[str, int]:
    """One golden file `<op>.tmtg` per op in out_dir; returns {op: number of cases}."""
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for op in ops or list(GENERATORS):
        counts[op] = golden.write_golden(Path(out_dir) / f"{op}.tmtg",
                                         make_cases(op, n, seed, counter0))
    return counts


# --------------------------------------------------------------------------- forward custom ops
# TMT_FUSED_IRB (tfmicro_train/kernels/fused_ops.py, tflm_ops/core/fused_irb.h): a frozen
# inverted-residual block. Not in GENERATORS (the TFLM glue replay of test_golden_cpp does not
# cover it); tests/test_fuse.py replays these cases on the host, tests/test_cortex_m.py on
# Cortex-M7/M4, and tests/test_tflm_integration.py runs it inside whole TFLM training steps.


def _fused_act(rng, relu6_prob: float) -> int:
    if rng.random() < relu6_prob:
        return 3
    return int(rng.choice([0, 1, 2, 3]))


def _fused_conv_geom(rng, in_h: int, in_w: int, ks=(1, 2, 3, 3, 5), strides=(1, 1, 2, 3),
                     dil_prob: float = 0.15):
    """(kh, kw, stride_h, stride_w, dil_h, dil_w, padding) with a non-empty output."""
    kh = int(rng.choice(ks))
    kw = kh if rng.random() < 0.85 else int(rng.choice(ks))
    sh = int(rng.choice(strides))
    sw = sh if rng.random() < 0.85 else int(rng.choice(strides))
    dh = dw = 1
    if rng.random() < dil_prob:
        dh = int(rng.choice([1, 2, 3]))
        dw = dh if rng.random() < 0.7 else int(rng.choice([1, 2]))
    padding = int(rng.choice([0, 1]))  # 0 SAME, 1 VALID
    if padding == 1 and (in_h < (kh - 1) * dh + 1 or in_w < (kw - 1) * dw + 1):
        padding = 0
    return kh, kw, sh, sw, dh, dw, padding


def _fused_stage_scales(rng, in_scale: float, n: int, taps: int, act: int):
    """(weight scales, output scale) of one conv stage: the output scale suits the activation
    (as the converter picks it), the weight scales make typical accumulators span it (sometimes
    saturating or coarse); per-tensor weight scales sometimes."""
    if act == 3:
        out = 6.0 / 255.0 * 2.0 ** rng.uniform(-0.5, 0.5)
    elif act == 2:
        out = 2.0 / 255.0 * 2.0 ** rng.uniform(-0.5, 0.5)
    else:
        out = 2.0 ** rng.uniform(-8, 0)
    u = rng.random()
    gain = 2.0 ** (rng.uniform(-8, -3) if u < 0.04 else rng.uniform(3, 8) if u < 0.07
                   else rng.uniform(-1.5, 1.5))
    base = out * 50.0 / (float(in_scale) * 40.0 * 60.0 * math.sqrt(taps)) / gain
    if rng.random() < 0.15:
        w = np.array([base], F32)
    else:
        w = (base * 2.0 ** rng.uniform(-1.5, 1.5, n)).astype(F32)
    return w, F32(out)


def _fused_zp(rng, act: int) -> int:
    """Zero point of an activation output: mostly what the converter picks for its range."""
    if act in (1, 3) and rng.random() < 0.75:
        return -128
    if act == 2 and rng.random() < 0.6:
        return int(rng.integers(-3, 4))
    return zero_point(rng)


def _fused_weights(rng, shape) -> np.ndarray:
    mode = rng.choice(["full", "full", "full", "small", "sparse", "extreme"])
    if mode == "full":
        w = rng.integers(-127, 128, shape)
    elif mode == "small":
        w = rng.integers(-3, 4, shape)
    elif mode == "sparse":
        w = rng.integers(-127, 128, shape) * (rng.random(shape) < 0.2)
    else:
        w = rng.choice(np.array([-127, 127, -128]), shape)
    return np.asarray(w, np.int8)


def _fused_bias(rng, n: int, acc_scale: float):
    u = rng.random()
    if u < 0.1:
        return None
    if u < 0.15:
        return rng.choice(np.array([-(2**31), 2**31 - 1, 2**30, -(2**30)]), n).astype(np.int32)
    return np.round(rng.normal(0, 0.25 * acc_scale, n)).astype(np.int32)


def gen_fused_irb(rng, i):
    from tfmicro_train.kernels import fused_ops as FO
    from tfmicro_train.schema import TensorInfo

    def qinfo(shape, s, zp, qdim=0):
        return TensorInfo("t", tuple(shape), np.dtype(np.int8), np.atleast_1d(np.asarray(s, F32)),
                          np.zeros(np.size(s), np.int64) + zp, qdim)

    for _ in range(100):  # redraw the rare geometry whose ADD TFLM would reject
        residual_try = rng.random() < 0.35
        h, w = int(rng.integers(1, 11)), int(rng.integers(1, 11))
        if rng.random() < 0.6:
            w = h
        u = rng.random()  # (wider inputs too: the Cortex-M paths for 16 and 17..32 channels)
        cin = int(rng.choice([1, 2, 3, 4, 6, 8])) if u < 0.6 else \
            int(rng.integers(1, 9)) if u < 0.8 else int(rng.choice([12, 16, 20, 24, 32]))
        has_expand = rng.random() < 0.75
        o: dict = {}
        if has_expand:
            if residual_try or rng.random() < 0.65:
                ek = (1, 1, 1, 1, 1, 1, int(rng.choice([0, 1])))
            else:
                ek = _fused_conv_geom(rng, h, w, ks=(1, 2, 3, 5), strides=(1, 2, 2))
            u = rng.random()
            c_exp = int(rng.choice([1, 2, 4, 6, 8, 12, 16])) if u < 0.7 else \
                int(rng.integers(1, 17)) if u < 0.85 else int(rng.choice([24, 32, 36, 48, 54, 100]))
            o.update(zip(("e_kh", "e_kw", "e_stride_h", "e_stride_w", "e_dil_h", "e_dil_w",
                          "e_padding"), ek))
            o["e_act"] = _fused_act(rng, 0.6)
        else:
            c_exp = cin
        pads = (0, 0, 0, 0)
        if not residual_try and rng.random() < 0.25:
            pads = tuple(int(v) for v in rng.integers(0, 3, 4))
        o.update(pad_top=pads[0], pad_bottom=pads[1], pad_left=pads[2], pad_right=pads[3])
        # expansion / padded sizes
        if has_expand:
            eh = FO.out_size(o["e_padding"], h, o["e_kh"], o["e_stride_h"], o["e_dil_h"])
            ew = FO.out_size(o["e_padding"], w, o["e_kw"], o["e_stride_w"], o["e_dil_w"])
        else:
            eh, ew = h, w
        ph, pw = eh + pads[0] + pads[1], ew + pads[2] + pads[3]
        if residual_try:
            dg = (int(rng.choice([1, 3, 3, 5])), 0, 1, 1, 1, 1, 0)
            dg = (dg[0], dg[0] if rng.random() < 0.85 else int(rng.choice([1, 3])), *dg[2:])
            if rng.random() < 0.1:
                dg = (*dg[:4], 2, 2, 0)  # dilated, SAME
        else:
            dg = _fused_conv_geom(rng, ph, pw)
        o.update(zip(("d_kh", "d_kw", "d_stride_h", "d_stride_w", "d_dil_h", "d_dil_w",
                      "d_padding"), dg))
        o["d_act"] = _fused_act(rng, 0.7)
        oh = FO.out_size(o["d_padding"], ph, o["d_kh"], o["d_stride_h"], o["d_dil_h"])
        ow = FO.out_size(o["d_padding"], pw, o["d_kw"], o["d_stride_w"], o["d_dil_w"])
        residual_ok = (oh, ow) == (h, w)
        c_out = cin if residual_try and residual_ok else (
            int(rng.choice([1, 2, 4, 8])) if rng.random() < 0.7 else int(rng.integers(1, 9)))
        o["residual"] = int(rng.choice([1, 2])) if residual_try and residual_ok else 0
        o["p_act"] = 0 if rng.random() < 0.8 else _fused_act(rng, 0.3)
        o["add_act"] = 0 if rng.random() < 0.8 else _fused_act(rng, 0.3)
        # quantization
        x_scale, x_zp = F32(2.0 ** rng.uniform(-8, 0)), zero_point(rng)
        x = i8(rng, (1, h, w, cin), rng.choice(["full", "small", "sparse", "extreme", "const"],
                                                  p=[0.7, 0.1, 0.05, 0.1, 0.05]))
        src_scale = x_scale
        case: dict = {"x": x, "x_scale": x_scale, "x_zp": x_zp}
        ins: list = [x, None, None, None, None, None, None]
        infos: list = [qinfo(x.shape, x_scale, x_zp), None, None, None, None, None, None]
        if has_expand:
            we = _fused_weights(rng, (c_exp, o["e_kh"], o["e_kw"], cin))
            taps = o["e_kh"] * o["e_kw"] * cin
            ws, o["e_scale"] = _fused_stage_scales(rng, x_scale, c_exp, taps, o["e_act"])
            o["e_zp"] = _fused_zp(rng, o["e_act"])
            be = _fused_bias(rng, c_exp, 60 * 60 * math.sqrt(taps))
            ins[1], ins[2] = we, be
            infos[1] = qinfo(we.shape, ws, 0)
            case.update(w_e=we, w_e_scales=ws)
            if be is not None:
                case["b_e"] = be
            src_scale, src_zp = o["e_scale"], o["e_zp"]
        else:
            src_zp = x_zp
        if any(pads) and rng.random() < 0.5:  # a PAD whose output quantization differs
            o["d_in_scale"], o["d_in_zp"] = F32(src_scale * 2.0 ** rng.uniform(-1, 1)), zero_point(rng)
        else:
            o["d_in_scale"], o["d_in_zp"] = F32(src_scale), src_zp
        o["pad_value"] = o["d_in_zp"] if rng.random() < 0.8 else int(rng.integers(-128, 128))
        wd = _fused_weights(rng, (1, o["d_kh"], o["d_kw"], c_exp))
        taps = o["d_kh"] * o["d_kw"]
        wds, o["d_scale"] = _fused_stage_scales(rng, o["d_in_scale"], c_exp, taps, o["d_act"])
        o["d_zp"] = _fused_zp(rng, o["d_act"])
        bd = _fused_bias(rng, c_exp, 60 * 60 * math.sqrt(taps))
        wp = _fused_weights(rng, (c_out, 1, 1, c_exp))
        wps, p_scale = _fused_stage_scales(rng, o["d_scale"], c_out, c_exp, o["p_act"])
        bp = _fused_bias(rng, c_out, 60 * 60 * math.sqrt(c_exp))
        o["p_scale"], o["p_zp"] = p_scale, _fused_zp(rng, o["p_act"])
        if o["residual"]:
            y_scale = F32(max(x_scale, p_scale) * 2.0 ** rng.uniform(-1, 3))
            if rng.random() < 0.1:
                y_scale = F32(max(x_scale, p_scale) * 2.0 ** rng.uniform(-12, -1))
            y_zp = _fused_zp(rng, o["add_act"])
            twice_max = 2 * float(max(x_scale, p_scale))
            if twice_max / ((1 << 20) * float(y_scale)) >= 1.0:
                continue  # TFLM's ADD Prepare rejects an output multiplier >= 1
        else:
            y_scale, y_zp = o["p_scale"], o["p_zp"]
        break
    ins[3], ins[4], ins[5], ins[6] = wd, bd, wp, bp
    infos[3] = qinfo(wd.shape, wds, 0, 3)
    infos[5] = qinfo(wp.shape, wps, 0)
    case.update(w_d=wd, w_d_scales=wds, w_p=wp, w_p_scales=wps)
    if bd is not None:
        case["b_d"] = bd
    if bp is not None:
        case["b_p"] = bp
    opts = {k: v for k, v in o.items() if k not in ("e_kh", "e_kw", "d_kh", "d_kw")}
    y_info = qinfo((1, oh, ow, c_out), y_scale, y_zp)
    y = FO.fused_irb(ins, infos, y_info, opts)
    case.update({k: (F32(v) if isinstance(v, (float, np.floating)) else int(v))
                 for k, v in opts.items()})
    we_shape = (c_exp, o["e_kh"], o["e_kw"], cin) if has_expand else None
    case.update(has_expand=int(has_expand), y_scale=y_scale, y_zp=y_zp, out_y=y,
                stream_bytes=FO.stream_bytes(x.shape, c_exp, we_shape, wd.shape, opts),
                scratch_bytes=FO.scratch_bytes(x.shape, c_exp, we_shape, wd.shape, wp.shape, opts),
                inplace_lag=FO.inplace_lag(x.shape, c_exp, we_shape, wd.shape, c_out, opts))
    return case


# TMT_CONV (tfmicro_train/kernels/conv_ops.py, tflm_ops/core/conv_op.h): the builtin int8
# CONV_2D / DEPTHWISE_CONV_2D / per-channel FULLY_CONNECTED with the multipliers of a constant
# `requant` tensor (computed here as the converter does). `requant` is both an input of the C++
# run and a result to check C++'s ConvOpMultipliers (TFLM's Prepare) against. A forward op with
# a TFLM glue: in GENERATORS (replayed by the core and the glue tests).


def gen_conv_op(rng, i):
    from tfmicro_train.kernels import conv_ops as CO
    from tfmicro_train.kernels import fused_ops as FO
    from tfmicro_train.schema import TensorInfo

    def qinfo(shape, s, zp, qdim=0):
        return TensorInfo("t", tuple(shape), np.dtype(np.int8), np.atleast_1d(np.asarray(s, F32)),
                          np.zeros(np.size(s), np.int64) + zp, qdim)

    kind = int(rng.choice([0, 0, 1, 1, 2])) if i >= 3 else i  # the first cases: one of each
    act = _fused_act(rng, 0.4)
    o: dict = {"kind": kind, "act": act, "version": 1}
    x_scale, x_zp = F32(2.0 ** rng.uniform(-8, 0)), zero_point(rng)
    mode = rng.choice(["full", "small", "sparse", "extreme", "const"], p=[0.7, 0.1, 0.05, 0.1, 0.05])
    # wide layers (more output channels than a narrow bias's chunk, conv_op.h kBiasChunk = 64)
    wide = i >= 3 and rng.random() < 0.15
    if kind == 2:
        rows = 1 if rng.random() < 0.8 else int(rng.integers(2, 4))
        ci = int(rng.integers(1, 65)) if rng.random() < 0.7 else int(rng.integers(1, 9))
        co = int(rng.integers(65, 161)) if wide else int(rng.integers(2, 17))
        x = i8(rng, (rows, ci), mode)
        w_shape, taps, channels, qdim = (co, ci), ci, co, 0
        y_shape = (rows, co)
        o["keep_num_dims"] = 0
    else:
        h, w = int(rng.integers(1, 11)), int(rng.integers(1, 11))
        if rng.random() < 0.6:
            w = h
        if wide:
            h, w = min(h, 4), min(w, 4)
        cin = int(rng.choice([1, 2, 3, 4, 8, 16])) if rng.random() < 0.7 else int(rng.integers(1, 17))
        if wide and kind == 1:
            cin = int(rng.integers(65, 161))
        kh, kw, sh, sw, dh, dw, padding = _fused_conv_geom(rng, h, w, ks=(1, 1, 2, 3, 3, 5))
        if kind == 0 and rng.random() < 0.3:  # pointwise, as most of MobileNetV2's
            kh = kw = sh = sw = dh = dw = 1
            if i >= 3 and not wide and rng.random() < 0.3:
                # inputs wider than the Cortex-M pair lanes (128 channels: taken in parts)
                cin, h, w = int(rng.choice([132, 144, 200, 260])), min(h, 3), min(w, 3)
        if wide and kind == 1 and rng.random() < 0.35:  # windows over 7x7: the generic loop
            kh, kw, sh, sw, dh, dw, padding = 8, 8, 1, 1, 1, 1, 0
        o.update(stride_h=sh, stride_w=sw, dil_h=dh, dil_w=dw, padding=padding)
        oh = FO.out_size(padding, h, kh, sh, dh)
        ow = FO.out_size(padding, w, kw, sw, dw)
        x = i8(rng, (1, h, w, cin), mode)
        if kind == 0:
            channels = int(rng.choice([1, 2, 4, 8, 16])) if rng.random() < 0.7 else int(rng.integers(1, 17))
            if wide:
                channels = int(rng.integers(65, 161))
            w_shape, taps, qdim = (channels, kh, kw, cin), kh * kw * cin, 0
        else:
            channels = cin
            w_shape, taps, qdim = (1, kh, kw, cin), kh * kw, 3
        y_shape = (1, oh, ow, channels)
    ws, y_scale = _fused_stage_scales(rng, x_scale, channels, taps, act)
    y_zp = _fused_zp(rng, act)
    wt = _fused_weights(rng, w_shape)
    b = _fused_bias(rng, channels, 60 * 60 * math.sqrt(taps))
    x_info, w_info = qinfo(x.shape, x_scale, x_zp), qinfo(w_shape, ws, 0, qdim)
    if kind == 2 and ws.size == 1:  # per-channel FULLY_CONNECTED only
        ws = np.repeat(ws, channels).astype(F32)
        w_info = qinfo(w_shape, ws, 0, qdim)
    y_info = qinfo(y_shape, y_scale, y_zp)
    requant = CO.requant_params(x_info, w_info, y_info, channels)
    y = CO.conv_op([x, wt, b, requant], [x_info, w_info, None, None], y_info, o)
    case = {"kind": kind, "act": act, "x": x, "x_scale": x_scale, "x_zp": x_zp, "w": wt,
            "w_scales": ws, "y_scale": F32(y_scale), "y_zp": y_zp, "requant": requant, "out_y": y}
    for k in ("stride_h", "stride_w", "dil_h", "dil_w", "padding"):
        case[k] = int(o.get(k, 1))
    if b is not None and rng.random() < (0.8 if wide else 0.3):  # a narrow bias: int16 change,
        # its base and shifts (expanded_bias: the int32 bias the op uses, for ExpandBias)
        k = rng.integers(0, CO.MAX_BIAS_SHIFT + 1, channels).astype(np.int32)
        if rng.random() < 0.2:  # extreme bases and changes: the int32 saturation
            b = rng.choice(np.array([-(2**31), 2**31 - 1, 0]), channels).astype(np.int32)
            delta = rng.choice(np.array([-32768, 32767]), channels).astype(np.int16)
            k[:] = CO.MAX_BIAS_SHIFT
        else:
            delta = rng.integers(-(2**15), 2**15, channels).astype(np.int16)
            k = np.minimum(k, int(rng.integers(0, 6)))  # mostly small: the output stays in range
        narrow_rq = np.concatenate([requant, b[None], k[None]]).astype(np.int32)
        y = CO.conv_op([x, wt, delta, narrow_rq], [x_info, w_info, None, None], y_info, o)
        case.update(b=delta, bias_base=b, bias_shift=k, expanded_bias=CO.expand_bias(b, delta, k),
                    out_y=y)
    elif b is not None:
        case["b"] = b
    if rng.random() < 0.4:  # output 1 'bits': the packed activation mask (TMT_MASK_PACK of y)
        from tfmicro_train.kernels import training_ops as T

        lo = int(rng.integers(-128, 128))
        hi = min(128, lo + int(rng.integers(1, 120)))
        case.update(mask_min=lo, mask_max=hi, out_bits=T.mask_pack(y, lo, hi))
    r = np.random.default_rng(2_000_003 + i)  # own rng: the other cases stay as they were
    if kind == 0 and y.shape[1] * y.shape[2] <= 1024 and r.random() < 0.5:
        # mean mode (head.fold_pooled_outputs): the op writes the mean of y over H, W instead
        count = int(y.shape[1] * y.shape[2])
        while True:
            p_scale = F32(y_scale * r.choice([1.0, 2.0 ** r.uniform(-3, 3)]))
            mm = CO.mean_multiplier(F32(y_scale), p_scale, count)
            if mm is not None:
                break
        p_zp = zero_point(r)
        pooled = CO.mean_op(y, qinfo(y.shape, y_scale, y_zp), qinfo((1, channels), p_scale, p_zp), 0)
        case.update(mean_mult=mm[0], mean_shift=mm[1], pooled_scale=p_scale, pooled_zp=p_zp,
                    out_pooled=pooled)
    return case


# TMT_MEAN (kernels/conv_ops.py, tflm_ops/core/conv_op.h): TFLM's int8 MEAN over H and W,
# reference builtin_ops' MEAN kernel (bit-exact with TFLM's). `mult` / `shift` (the folded
# multiplier) are checked against C++'s MeanOpMultiplier; extreme and constant inputs reach the
# clamps, large maps the wide sums.


def gen_mean_op(rng, i):
    from tfmicro_train.kernels import conv_ops as CO
    from tfmicro_train.schema import TensorInfo

    def qinfo(shape, s, zp):
        return TensorInfo("t", tuple(shape), np.dtype(np.int8), np.atleast_1d(np.asarray(s, F32)),
                          np.zeros(1, np.int64) + zp, 0)

    while True:
        if rng.random() < 0.1:  # large maps: wide sums, large counts
            h, w = int(rng.integers(16, 65)), int(rng.integers(16, 65))
        else:
            h, w = int(rng.integers(1, 11)), int(rng.integers(1, 11))
        c = int(rng.integers(1, 65)) if rng.random() < 0.8 else int(rng.integers(1, 5))
        x_scale, x_zp = F32(2.0 ** rng.uniform(-8, 0)), zero_point(rng)
        ratio = rng.choice([1.0, 2.0 ** rng.uniform(-3, 3), 2.0 ** rng.uniform(-12, 12)])
        y_scale, y_zp = F32(x_scale * ratio), zero_point(rng)
        if CO.mean_multiplier(x_scale, y_scale, h * w) is not None:
            break
    mode = rng.choice(["full", "small", "sparse", "extreme", "const"], p=[0.6, 0.1, 0.1, 0.1, 0.1])
    x = i8(rng, (1, h, w, c), mode)
    keep = int(rng.random() < 0.5)
    y_shape = (1, 1, 1, c) if keep else (1, c)
    y = CO.mean_op(x, qinfo(x.shape, x_scale, x_zp), qinfo(y_shape, y_scale, y_zp), keep)
    mult, shift = CO.mean_multiplier(x_scale, y_scale, h * w)
    return {"x": x, "x_scale": x_scale, "x_zp": x_zp, "y_scale": y_scale, "y_zp": y_zp,
            "keep_dims": keep, "mult": mult, "shift": shift, "out_y": y}


# Split weights: a layer training its first k output channels holds them in one tensor (SRAM)
# and the rest in another (flash); TMT_CONV (1x1 stride-1 or fully-connected) and
# TMT_CONV_INPUT_GRAD take the two parts ('w', 'w_rest') and compute what the whole tensor gives.
# About a third of the eligible cases are split at a random row (own rng: the other cases stay
# as they were).


def _split_rows(gen, eligible=lambda case: True):
    def wrapped(rng, i):
        case = gen(rng, i)
        r = np.random.default_rng(1_000_003 + i)
        w = case["w"]
        if r.random() < (0.7 if w.shape[0] > 64 else 0.35) and w.shape[0] >= 2 and eligible(case):
            k = int(r.integers(1, w.shape[0]))
            case["w"], case["w_rest"] = w[:k].copy(), w[k:].copy()
        return case
    wrapped.__name__ = gen.__name__
    return wrapped


def _conv_op_splittable(case) -> bool:
    if case["kind"] == 2:
        return True
    return (case["kind"] == 0 and case["w"].shape[1:3] == (1, 1) and case["stride_h"] == 1
            and case["stride_w"] == 1)


def _broadcast_grads(gen):
    """About a third of the cases with a [1, H, W, C] gradient read it as a folded TMT_MEAN_GRAD
    (+ TMT_MASK_GRAD) (head.fold_broadcast_grads): 'g' becomes the pooled [C] values, with
    bcast_h / bcast_w and, mostly, a packed 'mask'; the outputs are those of the gradient it
    stands for (training_ops.broadcast_grad) at its scale (own rng: the other cases stay)."""
    def wrapped(rng, i):
        case = gen(rng, i)
        r = np.random.default_rng(3_000_017 + i)
        g = case["g"]
        if g.ndim != 4 or r.random() >= 0.35:
            return case
        _, h, w, c = g.shape
        gv = grad_i8(r, (1, c) if r.random() < 0.5 else (1, 1, 1, c))
        bits = None
        if r.random() < 0.8:
            keep = r.random() < np.array([0.0, 0.3, 0.7, 1.0])[int(r.integers(0, 4))]
            bits = np.packbits(r.random(h * w * c) < keep, bitorder="little")
        inv = float(T.broadcast_inv(h, w))
        full, s_eff = T.broadcast_grad(gv, case["s"], (h, w), bits, inv)
        case.update(g=gv, bcast_h=int(h), bcast_w=int(w))
        if bits is not None:
            case["mask"] = bits
        if "out_g_in" in case:  # TMT_CONV_INPUT_GRAD
            wt = case["w"] if "w_rest" not in case else np.concatenate([case["w"], case["w_rest"]])
            geom = T.ConvGeom(case["stride_h"], case["stride_w"], case["pad_top"], case["pad_left"])
            out, s_in = T.conv_input_grad(full, s_eff, wt, case["wmul"], case["w_scale_max"],
                                          tuple(int(d) for d in case["in_shape"]), geom)
            case.update(out_g_in=out, out_s_in=F32(s_in))
        else:  # TMT_BIAS_UPDATE
            p = T.UpdateParams(case["update_channels"], case["seed"])
            case["out_b"] = T.bias_update(case["b"], full, s_eff, case["bfactor"], case["lr"], p,
                                          case["counter"])
        return case
    wrapped.__name__ = gen.__name__
    return wrapped


for _name, _gen in (("TMT_CONV_INPUT_GRAD", gen_conv_input_grad),
                    ("TMT_CONV_INPUT_GRAD" + F32_SUFFIX, gen_conv_input_grad_f32)):
    if _name in GENERATORS:
        GENERATORS[_name] = _split_rows(_gen)
    if _name in F32_GENERATORS:
        F32_GENERATORS[_name] = _split_rows(_gen)
gen_conv_op = _split_rows(gen_conv_op, _conv_op_splittable)
GENERATORS["TMT_CONV_INPUT_GRAD"] = _broadcast_grads(GENERATORS["TMT_CONV_INPUT_GRAD"])
GENERATORS["TMT_BIAS_UPDATE"] = _broadcast_grads(GENERATORS["TMT_BIAS_UPDATE"])


def _folded_bias_update(gen):
    """About a third of the input-gradient cases also run a folded TMT_BIAS_UPDATE
    (tfmicro_train/updates.py) on the same gradient: 'b' (int32, or a narrow int16), 'bfactor',
    'lr' (> 0), update_channels, seed, counter and the expected 'out_b' (own rng: the other
    cases stay)."""
    def wrapped(rng, i):
        case = gen(rng, i)
        r = np.random.default_rng(4_000_037 + i)
        if r.random() >= 0.35:
            return case
        g, s = case["g"], case["s"]
        c = int(g.shape[-1])
        full, s_eff = g, s
        if "bcast_h" in case:
            inv = float(T.broadcast_inv(case["bcast_h"], case["bcast_w"]))
            full, s_eff = T.broadcast_grad(g, s, (case["bcast_h"], case["bcast_w"]),
                                           case.get("mask"), inv)
        lr = F32(2.0 ** r.uniform(-16, 2))
        if r.random() < 0.3:
            b = r.integers(-(2**15), 2**15, c).astype(np.int16)
        else:
            b = r.integers(-(2**20), 2**20, c).astype(np.int32)
        seed, counter = seed_counter(r)
        p = T.UpdateParams(update_channels(r, c), seed)
        bf = tuned_factors(r, factors(r, c), lr, s_eff, T.bias_grad_acc(full, p.update_channels))
        out = T.bias_update(b, full, s_eff, bf, lr, p, counter)
        case.update(b=b, bfactor=bf, lr=lr, update_channels=p.update_channels, seed=p.seed,
                    counter=counter, out_b=out)
        return case
    wrapped.__name__ = gen.__name__
    return wrapped


GENERATORS["TMT_CONV_INPUT_GRAD"] = _folded_bias_update(GENERATORS["TMT_CONV_INPUT_GRAD"])
GENERATORS["TMT_DW_INPUT_GRAD"] = _folded_bias_update(GENERATORS["TMT_DW_INPUT_GRAD"])

FORWARD_GENERATORS = {"TMT_FUSED_IRB": gen_fused_irb}
GENERATORS["TMT_CONV"] = gen_conv_op  # its TFLM glue replays it (tflm_ops/tflm/glue_test.cc)
GENERATORS["TMT_MEAN"] = gen_mean_op  # as TMT_CONV
