"""TMT_FUSED_IRB: frozen inverted-residual blocks as one row-streamed forward op.

* the C++ core (tflm_ops/core/fused_irb.cc) against the numpy reference (fused_ops.py, which runs
  the builtin kernels in sequence), bit for bit, on TMT_FUSED_IRB_CASES (default 1000) random and
  edge cases: stride 1/2/3, SAME/VALID, dilation, with/without expansion (1x1 or any conv), with
  explicit PAD, with/without residual ADD, extreme zero points, saturating scales, absent biases;
  exactly FusedIrbScratchBytes of scratch (a byte less is refused, guard bytes stay intact);
  and streaming in place: y overlapping x, starting FusedIrbInPlaceLag bytes (the numpy twin
  fused_ops.inplace_lag must agree) and that rounded up to 16 (as the planner places it) before x;
* the graph pass: which chains fuse (frozen, intermediates read by nothing else), artifacts with
  and without fusion give identical predictions, losses and trained weights, the plan stays valid
  and the arena shrinks; MobileNetV2-w0.35 at 128x128 with the paper's sparse scheme and "last";
* unfuse_model(): the fused artifact rewritten back to builtin ops computes the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfmicro_train as tmt
from tfmicro_train.fuse import unfuse_model
from tfmicro_train.schema import fb, op_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "golden"))

N_CASES = int(os.environ.get("TMT_FUSED_IRB_CASES", "1000"))
PAPER = dict(bias_last_k=25, weight_ratios={27: 1, 30: 1, 33: 1, 36: 1, 39: 1, 42: 1 / 8,
                                             45: 1 / 2, 48: 1})


# --------------------------------------------------------------------------- C++ core, bit exact


def test_core_bit_exact_against_numpy(tmp_path):
    import golden_cases
    from test_golden_cpp import CORE_SOURCES, build_cpp

    exe = build_cpp("golden_test", [ROOT / "tflm_ops/tests/golden_test_main.cc", *CORE_SOURCES])
    written = golden_cases.write_all(tmp_path, N_CASES, int(os.environ.get("TMT_GOLDEN_SEED", "0")),
                                     ops=["TMT_FUSED_IRB"])
    res = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True, timeout=600)
    print(res.stdout[-2000:])
    assert written["TMT_FUSED_IRB"] == N_CASES >= 300
    assert f"golden TMT_FUSED_IRB: {N_CASES} cases, 0 mismatches" in res.stdout, res.stderr[-2000:]
    assert res.returncode == 0


def test_golden_cases_cover_the_variants():
    import golden_cases

    cases = golden_cases.make_cases("TMT_FUSED_IRB", 300, 0)
    kinds = {(c["has_expand"], c["residual"] != 0, any(c[k] for k in (
        "pad_top", "pad_bottom", "pad_left", "pad_right")), c["d_stride_h"] > 1,
        c["d_padding"]) for c in cases}
    for want in [(1, True, False, False, 0), (0, True, False, False, 0), (1, False, False, True, 1),
                 (1, False, False, True, 0), (0, False, False, True, 1), (1, False, True, True, 1)]:
        assert want in kinds, want
    assert any(c.get("e_kh", 1) > 1 or c["w_e"].shape[1] > 1 for c in cases if c["has_expand"])
    assert {c["x_zp"] for c in cases} >= {-128, 127}
    assert any(c["d_dil_h"] > 1 for c in cases) and any("b_d" not in c for c in cases)
    # streaming: the ring is a fraction of the expanded tensor on larger cases
    big = [c for c in cases if c["has_expand"] and c["w_d"].shape[1] == 3 and c["x"].shape[1] >= 8
           and c["d_dil_h"] == 1 and c["w_e"].shape[1] == 1 and c["e_stride_h"] == 1]
    assert big and all(c["stream_bytes"] < c["x"].shape[1] * c["x"].shape[2]
                       * c["w_d"].shape[3] for c in big)
    # streaming in place (the harness runs every case with y overlapping x at the lag): y right
    # over x, and y a little before x, both occur, with and without expansion and residual
    lags = [(c["inplace_lag"], c["out_y"].size, c["has_expand"], c["residual"] != 0) for c in cases]
    assert all(0 <= lag < y for lag, y, _, _ in lags)
    for e in (0, 1):
        assert any(lag == 0 and ex == e for lag, _, ex, _ in lags)
        assert any(lag > 0 and ex == e for lag, _, ex, _ in lags)
    assert any(lag == 0 and res for lag, _, _, res in lags)


# --------------------------------------------------------------------------- graph pass


def irb_net(seed: int = 0):
    """Stem, an IRB without expansion, a stride-2 IRB with explicit ZeroPadding2D (a PAD op the
    converter keeps), a residual IRB, GAP, Dense. Batch-norm statistics from a batch."""
    import keras

    L = keras.layers
    keras.utils.set_random_seed(seed)

    def bn_relu6(t):
        return L.ReLU(6.0)(L.BatchNormalization()(t))

    inp = keras.Input((16, 16, 3))
    x = bn_relu6(L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp))
    x = bn_relu6(L.DepthwiseConv2D(3, padding="same", use_bias=False)(x))
    x = L.BatchNormalization()(L.Conv2D(4, 1, use_bias=False)(x))
    x = bn_relu6(L.Conv2D(24, 1, use_bias=False)(x))
    x = L.ZeroPadding2D(1)(x)
    x = bn_relu6(L.DepthwiseConv2D(3, strides=2, use_bias=False)(x))
    x = L.BatchNormalization()(L.Conv2D(8, 1, use_bias=False)(x))
    y = bn_relu6(L.Conv2D(24, 1, use_bias=False)(x))
    y = bn_relu6(L.DepthwiseConv2D(3, padding="same", use_bias=False)(y))
    y = L.BatchNormalization()(L.Conv2D(8, 1, use_bias=False)(y))
    x = L.Add()([x, y])
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(10)(x))
    _bn_from_batch(model, (16, 16, 3))
    return model


def _bn_from_batch(model, shape) -> None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(np.random.default_rng(5).uniform(-1, 1, (8, *shape)).astype(np.float32), training=True)


@pytest.fixture(scope="module")
def irb_model():
    return irb_net()


@pytest.fixture(scope="module")
def irb_calib():
    rng = np.random.default_rng(1)
    return [rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32) for _ in range(16)]


def _ops(art) -> list[str]:
    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    return [op_name(m, op) for op in m.subgraphs[0].operators]


def _same_run(plain, fused, xs, steps: int = 6, n_classes: int = 10) -> tuple[list, list]:
    """Predictions before/after training and every loss agree; returns both loss lists."""
    a, b = tmt.HostSimulator(plain), tmt.HostSimulator(fused)
    for x in xs[:3]:
        assert np.array_equal(a.predict_raw(x), b.predict_raw(x))
    la = [a.train_step(xs[i % len(xs)], np.int32(i % n_classes)) for i in range(steps)]
    lb = [b.train_step(xs[i % len(xs)], np.int32(i % n_classes)) for i in range(steps)]
    assert la == lb
    wa, wb = a.weights(), b.weights()
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    for x in xs[:3]:
        assert np.array_equal(a.predict_raw(x), b.predict_raw(x))
    return la, lb


def test_frozen_blocks_fuse_bit_exact(irb_model, irb_calib):
    from test_plan import _check_plan

    plain = tmt.convert(irb_model, irb_calib, update="last", fuse=False)
    fused = tmt.convert(irb_model, irb_calib, update="last", fuse=True)
    ops, ops_plain = _ops(fused), _ops(plain)
    print("plain:", ops_plain)
    print("fused:", ops)
    assert "PAD" in ops_plain or "PADV2" in ops_plain  # the explicit-PAD path is exercised
    # stem + block 0, block 1 (with its PAD), block 2 (with the residual ADD)
    assert ops.count("TMT_FUSED_IRB") == 3
    assert not {"DEPTHWISE_CONV_2D", "PAD", "PADV2", "ADD"} & set(ops)
    losses, _ = _same_run(plain, fused, irb_calib)
    assert all(np.isfinite(losses))
    try:  # and TFLM itself (the tflite_micro wheel) on the converter's inference model
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        runtime = None
    if runtime is not None:
        sim = tmt.HostSimulator(fused)
        for x in irb_calib[:4]:
            xq = sim.quantize_input(x)
            interp = runtime.Interpreter.from_bytes(fused.inference_flatbuffer)
            interp.set_input(xq, 0)
            interp.invoke()
            assert np.array_equal(sim.predict_raw(xq), interp.get_output(0))
    _check_plan(fused)
    pa, fa = plain.memory_report(), fused.memory_report()
    print(f"irb_net last: arena {pa.arena_bytes} -> {fa.arena_bytes} B, flash {pa.flash_bytes} "
          f"-> {fa.flash_bytes} B")
    assert fa.arena_bytes < pa.arena_bytes and fa.peak_sram_bytes < pa.peak_sram_bytes


def test_chains_needed_by_backward_stay_unfused(irb_model, irb_calib):
    # conv 5 (block 1's project) trains: blocks 1 and 2 must keep their tensors; only the stem
    # chain before it fuses
    update = tmt.SparseUpdate(bias_last_k=1, weight_ratios={5: 1})
    plain = tmt.convert(irb_model, irb_calib, update=update, fuse=False, narrow_biases=False)
    fused = tmt.convert(irb_model, irb_calib, update=update, fuse=True, flash_requant=False)
    ops = _ops(fused)
    assert ops.count("TMT_FUSED_IRB") == 1 and ops.count("DEPTHWISE_CONV_2D") == 2
    _same_run(plain, fused, irb_calib)
    # everything trains: nothing is frozen, nothing fuses
    full = tmt.convert(irb_model, irb_calib, update="full", fuse=True)
    assert "TMT_FUSED_IRB" not in _ops(full)


def test_unfuse_model_restores_builtin_chain(irb_model, irb_calib):
    narrow = tmt.convert(irb_model, irb_calib, update="last", fuse=True)
    with pytest.raises(ValueError, match=r"tmt/dense\w*/bias.*narrow_biases=False"):
        unfuse_model(fb.ModelT.InitFromPackedBuf(narrow.flatbuffer, 0))  # it would freeze it
    fused = tmt.convert(irb_model, irb_calib, update="last", fuse=True, narrow_biases=False)
    m = fb.ModelT.InitFromPackedBuf(fused.flatbuffer, 0)
    assert unfuse_model(m) == 3 + sum(_ops(fused).count(o) for o in ("TMT_CONV", "TMT_MEAN"))  # those too
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    unfused = bytes(b.Output())
    names = [op_name(m, op) for op in m.subgraphs[0].operators]
    assert "TMT_FUSED_IRB" not in names and "PADV2" in names and "ADD" in names
    a, u = tmt.HostSimulator(fused), tmt.HostSimulator(unfused, fused.optimizer)
    for i, x in enumerate(irb_calib[:4]):
        assert np.array_equal(a.predict_raw(x), u.predict_raw(x))
        assert a.train_step(x, np.int32(i)) == u.train_step(x, np.int32(i))


# --------------------------------------------------------------------------- MobileNetV2


@pytest.fixture(scope="module")
def mobilenet():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(128, 128, 3), weights=None,
                                           classes=10)
    _bn_from_batch(model, (128, 128, 3))
    rng = np.random.default_rng(2)
    calib = [rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32) for _ in range(8)]
    return model, calib


@pytest.mark.parametrize("scheme", ["paper", "last"])
def test_mobilenet_v2_fused_identical_and_smaller(mobilenet, scheme):
    model, calib = mobilenet
    update = tmt.SparseUpdate(**PAPER) if scheme == "paper" else "last"
    # int32 biases in both, so that the two train bit for bit alike whatever the bias shifts
    # (narrow biases: tests/test_narrow_bias.py)
    plain = tmt.convert(model, calib, update=update, fuse=False, narrow_biases=False)
    fused = tmt.convert(model, calib, update=update, fuse=True, narrow_biases=False)
    pa, fa = plain.memory_report(), fused.memory_report()
    n = _ops(fused).count("TMT_FUSED_IRB")
    print(f"\nMobileNetV2-w0.35 128x128, update={scheme}: {n} fused blocks\n"
          f"  without fusion: {pa}\n  with fusion:    {fa}\n"
          f"  arena {pa.arena_bytes / 1024:.1f} KB -> {fa.arena_bytes / 1024:.1f} KB")
    assert fa.arena_bytes < pa.arena_bytes
    assert fa.arena_bytes < 100 * 1024  # the 64x64x48 expansion no longer exists
    # the stem chain writes its 32 KB y over its dying 48 KB input (streaming in place)
    assert fa.arena_bytes < 64 * 1024
    losses, _ = _same_run(plain, fused, calib, steps=3)
    print(f"  losses (identical): {[round(v, 4) for v in losses]}")


def _fused_op_cases(art, x) -> list[dict]:
    """Golden cases of every TMT_FUSED_IRB op of `art` on the tensors of one inference call."""
    from tfmicro_train.kernels import fused_ops

    sim = tmt.HostSimulator(art)
    sg = sim.main
    values: dict = dict(sg.consts)
    for t, arr in zip(sg.inputs, [sim.quantize_input(x).reshape(sim.input_info.shape),
                                  sim._dummy_label(), np.zeros(1, np.float32)]):
        values[t] = arr
    values.update({t: v.copy() for t, v in sim.variables.items()})
    cases = []
    for index, op in enumerate(sg.ops):
        sim._run_op(sg, index, op, values)
        if op.name != fused_ops.OP_NAME:
            continue
        ins, o = op.inputs, op.options
        info = sg.infos
        case = {"op": "TMT_FUSED_IRB", "x": values[ins[0]],
                "x_scale": np.float32(info[ins[0]].scale[0]), "x_zp": int(info[ins[0]].zero_point[0]),
                "y_scale": np.float32(info[op.outputs[0]].scale[0]),
                "y_zp": int(info[op.outputs[0]].zero_point[0]),
                "has_expand": int(ins[fused_ops.W_EXPAND] >= 0), "out_y": values[op.outputs[0]]}
        for key, slot in (("w_e", 1), ("b_e", 2), ("w_d", 3), ("b_d", 4), ("w_p", 5), ("b_p", 6)):
            if ins[slot] >= 0:
                case[key] = values[ins[slot]]
                if key.startswith("w_"):
                    case[key + "_scales"] = np.asarray(info[ins[slot]].scale, np.float32)
        case.update({k: np.float32(v) if isinstance(v, float) else int(v) for k, v in o.items()})
        case["scratch_bytes"] = int(np.prod(info[op.outputs[1]].shape))
        w_e = ins[fused_ops.W_EXPAND]
        case["stream_bytes"] = fused_ops.stream_bytes(
            info[ins[0]].shape, info[ins[3]].shape[3], info[w_e].shape if w_e >= 0 else None,
            info[ins[3]].shape, o)
        case["inplace_lag"] = fused_ops.inplace_lag(
            info[ins[0]].shape, info[ins[3]].shape[3], info[w_e].shape if w_e >= 0 else None,
            info[ins[3]].shape, info[ins[5]].shape[0], o)
        cases.append(case)
    return cases


def test_core_on_mobilenet_blocks(mobilenet, tmp_path):
    """The C++ core on the real blocks (64x64x48 expansion, ring wrap-around, residuals)."""
    from test_golden_cpp import CORE_SOURCES, build_cpp

    from tfmicro_train.kernels import golden

    model, calib = mobilenet
    art = tmt.convert(model, calib, update="last", fuse=True)
    cases = _fused_op_cases(art, calib[0]) + _fused_op_cases(art, calib[1])
    assert len(cases) == 34 and any(c["residual"] for c in cases)
    golden.write_golden(tmp_path / "mnv2.tmtg", cases)
    exe = build_cpp("golden_test", [ROOT / "tflm_ops/tests/golden_test_main.cc", *CORE_SOURCES])
    res = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True, timeout=600)
    print(res.stdout[-1500:])
    assert "golden TMT_FUSED_IRB: 34 cases, 0 mismatches" in res.stdout and res.returncode == 0
    # ... including each with y over x at its in-place lag: the stem chain writes y right over x
    print("in-place lags:", [c["inplace_lag"] for c in cases[:17]])
    assert cases[0]["inplace_lag"] == 0
    first = cases[0]
    print(f"stem chain: x {first['x'].shape}, y {first['out_y'].shape}, scratch "
          f"{first['scratch_bytes']} B (streaming {first['stream_bytes']} B)")
