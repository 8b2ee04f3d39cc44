"""TMT_CONV: the builtin int8 convolutions with their per-channel multipliers in flash.

* the golden cases cover the variants (tests/test_golden_cpp.py replays them bit for bit: the
  C++ core (tflm_ops/core/conv_op.cc) and the TFLM glue against the numpy reference
  (kernels/conv_ops.py, the builtin kernels of builtin_ops.py with the given multipliers); C++'s
  ConvOpMultipliers (TFLM's Prepare) must give exactly the `requant` the converter writes);
* the graph pass (requant.py): every int8 conv / depthwise / per-channel FC becomes TMT_CONV,
  training is bit-identical to the builtin graph, the plan drops the per-channel bookkeeping,
  and export_tflite() / unfuse_model() give the builtins back.
(Whole training steps in TFLM: tests/test_tflm_integration.py.)
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "golden"))


def test_golden_cases_cover_the_variants():
    import golden_cases

    cases = golden_cases.make_cases("TMT_CONV", 300, 0)
    kinds = Counter(c["kind"] for c in cases)
    assert set(kinds) == {0, 1, 2} and min(kinds.values()) >= 30, kinds
    conv = [c for c in cases if c["kind"] < 2]
    assert any(c["w"].shape[1:3] == (1, 1) for c in conv if c["kind"] == 0)  # pointwise
    assert any(c["w"].shape[1] >= 3 for c in conv)
    assert any(c["stride_h"] > 1 for c in conv) and any(c["dil_h"] > 1 for c in conv)
    assert {c["padding"] for c in conv} == {0, 1}
    assert {c["act"] for c in cases} == {0, 1, 2, 3}
    assert any("b" not in c for c in cases) and any(c["w_scales"].size == 1 for c in conv)
    narrow = [c for c in cases if "bias_base" in c]  # int16 change + base and shifts
    assert len(narrow) > 30 and any(c["bias_shift"].max() > 0 for c in narrow)
    assert any((c["expanded_bias"] == 2**31 - 1).any() for c in narrow)  # the int32 saturation
    # wide layers: several of the C++ op's 64-channel bias chunks, each kind, split weights too
    wide = [c for c in narrow if c["out_y"].shape[-1] > 64]
    assert {c["kind"] for c in wide} == {0, 1, 2}, Counter(c["kind"] for c in wide)
    assert any("w_rest" in c for c in wide)
    assert any(c["x"].shape[0] > 1 for c in cases if c["kind"] == 2)  # FC with several rows
    varied = sum(int(c["out_y"].min() != c["out_y"].max()) for c in cases)
    assert varied > 0.8 * len(cases)


# --------------------------------------------------------------------------- the graph pass

UPDATE = dict(bias_last_k=3, weight_ratios={0: 1, 1: 1, 2: 0.5, 3: 1})


def _ops(art) -> list[str]:
    from tfmicro_train.schema import fb, op_name

    m = fb.ModelT.InitFromPackedBuf(art if isinstance(art, bytes) else art.flatbuffer, 0)
    return [op_name(m, op) for op in m.subgraphs[0].operators]


@pytest.fixture(scope="module")
def pair(residual_model, calib):
    import tfmicro_train as tmt

    up = tmt.SparseUpdate(**UPDATE)  # int32 biases in both (narrow ones: test_narrow_bias.py)
    return (tmt.convert(residual_model, calib, update=up, narrow_biases=False),
            tmt.convert(residual_model, calib, update=up, flash_requant=False))


def test_every_builtin_conv_becomes_tmt_conv(pair):
    art, plain = pair
    ops, plain_ops = _ops(art), _ops(plain)
    assert not {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} & set(ops)
    n_builtin = sum(plain_ops.count(k) for k in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    assert ops.count("TMT_CONV") == n_builtin == 4
    # the backward and update ops are the same, in the same order
    skip = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONCATENATION")
    assert [o for o in ops if o != "TMT_CONV"] == [o for o in plain_ops if o not in skip]
    # layer 2 trains half its channels: the builtin needs its weights concatenated (forward
    # only), TMT_CONV and the input gradient read the two parts (slice in SRAM, rest in flash)
    assert "CONCATENATION" not in ops and plain_ops.count("CONCATENATION") == 1
    # the plan no longer counts TFLM's 8 bytes per channel for these ops
    assert art.plan.arena_bytes <= plain.plan.arena_bytes
    assert art.plan.overhead_bytes < plain.plan.overhead_bytes


def test_training_bit_identical_to_builtins(pair, calib):
    import tfmicro_train as tmt

    art, plain = pair
    a, b = tmt.HostSimulator(art), tmt.HostSimulator(plain)
    for k in range(8):
        la, lb = a.train_step(calib[k], k % 10, 0.05), b.train_step(calib[k], k % 10, 0.05)
        assert la == lb, k
    wa, wb = a.weights(), b.weights()
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert np.array_equal(a.predict_raw(calib[9]), b.predict_raw(calib[9]))
    # the exported models hold the builtins again and compute the same
    from tfmicro_train.kernels.builtin_ops import execute_graph
    from tfmicro_train.schema import fb

    ea, eb = a.export_tflite(), b.export_tflite()
    assert "TMT_CONV" not in _ops(ea) and _ops(ea) == _ops(eb)
    x = a.quantize_input(calib[9]).reshape(a.input_info.shape)
    ya = execute_graph(fb.ModelT.InitFromPackedBuf(ea, 0), [x])
    yb = execute_graph(fb.ModelT.InitFromPackedBuf(eb, 0), [x])
    assert all(np.array_equal(u, v) for u, v in zip(ya, yb))
    assert np.array_equal(np.asarray(ya[0]).reshape(-1), a.predict_raw(calib[9]).reshape(-1))


def test_unfuse_model_restores_builtins(pair):
    import flatbuffers

    from tfmicro_train.fuse import unfuse_model
    from tfmicro_train.schema import fb, op_name

    art, plain = pair
    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    assert unfuse_model(m) == _ops(art).count("TMT_CONV") + _ops(art).count("TMT_MEAN")
    ops = [op_name(m, op) for op in m.subgraphs[0].operators]
    assert ops == _ops(plain)
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    m2 = fb.ModelT.InitFromPackedBuf(bytes(builder.Output()), 0)
    convs = [op for op in m2.subgraphs[0].operators if op_name(m2, op) == "CONV_2D"]
    assert convs and all(len(op.inputs) == 3 and op.builtinOptions is not None for op in convs)


def test_fused_and_requant_together(calib):
    """MobileNetV2-like blocks: the frozen ones fuse, the rest become TMT_CONV, bit for bit."""
    from test_fuse import irb_net

    import tfmicro_train as tmt

    rng = np.random.default_rng(5)
    calib16 = [rng.random((1, 16, 16, 3)).astype(np.float32) for _ in range(8)]
    a = tmt.convert(irb_net(), calib16, update="last", narrow_biases=False)
    b = tmt.convert(irb_net(), calib16, update="last", flash_requant=False)
    assert "TMT_FUSED_IRB" in _ops(a) and "TMT_CONV" in _ops(a)
    sa, sb = tmt.HostSimulator(a), tmt.HostSimulator(b)
    for k in range(4):
        assert sa.train_step(calib16[k], k, 0.05) == sb.train_step(calib16[k], k, 0.05)
    assert all(np.array_equal(u, v) for u, v in zip(sa.weights().values(), sb.weights().values()))


def test_integer_multipliers_match_double_precision():
    """tflm_reference.h derives the per-channel multipliers (TMT_CONV's Prepare check,
    TMT_FUSED_IRB's per-invocation multipliers) in integers: ScaleRatioMultiplier, the bit
    decoding in QuantizeMultiplier and ValidScale must equal TFLM's double-precision
    QuantizeMultiplier(double(s_x) * double(s_W) / double(s_y)) on random and edge floats."""
    import subprocess

    from test_golden_cpp import build_cpp

    exe = build_cpp("multiplier_test", [ROOT / "tflm_ops/tests/multiplier_test.cc"])
    res = subprocess.run([str(exe), "2000000"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "2000000 checked, 0 mismatches" in res.stdout
    assert "requantize_test: 8000000 checked, 0 mismatches" in res.stdout
    assert "fast_path_test: 2000006 checked, 0 mismatches" in res.stdout


# --------------------------------------------------------------------------- TMT_MEAN


def test_mean_golden_cases_cover_the_variants():
    import golden_cases

    cases = golden_cases.make_cases("TMT_MEAN", 300, 0)
    assert {c["keep_dims"] for c in cases} == {0, 1}
    assert any(c["x"].shape[1] * c["x"].shape[2] >= 256 for c in cases)  # wide sums
    assert any(c["x"].shape[1] * c["x"].shape[2] == 1 for c in cases)
    assert any(c["shift"] < -8 for c in cases) and any(c["shift"] > 0 for c in cases)
    ys = np.concatenate([c["out_y"].ravel() for c in cases])
    assert ys.min() == -128 and ys.max() == 127  # both clamps reached
    varied = sum(int(c["out_y"].min() != c["out_y"].max()) for c in cases if c["x"].shape[3] > 4)
    assert varied > 0.5 * sum(c["x"].shape[3] > 4 for c in cases)


@pytest.fixture(scope="module")
def gap_pair(calib):
    from conftest import residual_cnn

    import tfmicro_train as tmt

    model = residual_cnn(pool="gap")
    up = tmt.SparseUpdate(bias_last_k=3, weight_ratios={2: 1, 3: 1})
    # int32 biases in both (narrow biases train slightly differently: test_narrow_bias.py)
    return (tmt.convert(model, calib, update=up, narrow_biases=False),
            tmt.convert(model, calib, update=up, flash_requant=False))


def test_gap_becomes_tmt_mean_without_scratch(gap_pair, calib):
    """GlobalAveragePooling2D's MEAN becomes TMT_MEAN: the same training, bit for bit, and the
    plan loses TFLM's MEAN scratch (an int32 per channel and two index arrays)."""
    import tfmicro_train as tmt

    art, plain = gap_pair
    assert _ops(art).count("TMT_MEAN") == 1 and "MEAN" not in _ops(art)
    assert _ops(plain).count("MEAN") == 1
    a, b = tmt.HostSimulator(art), tmt.HostSimulator(plain)
    for k in range(6):
        assert a.train_step(calib[k], k % 10, 0.05) == b.train_step(calib[k], k % 10, 0.05), k
    assert all(np.array_equal(u, v) for u, v in zip(a.weights().values(), b.weights().values()))
    assert np.array_equal(a.predict_raw(calib[9]), b.predict_raw(calib[9]))
    assert art.plan.arena_bytes <= plain.plan.arena_bytes
    ea = a.export_tflite()
    assert "TMT_MEAN" not in _ops(ea) and _ops(ea).count("MEAN") == 1


def test_mean_multiplier_out_of_range_keeps_the_builtin():
    from tfmicro_train.kernels import conv_ops

    assert conv_ops.mean_multiplier(1.0, 1.0, 16) is not None
    assert conv_ops.mean_multiplier(2.0 ** 20, 2.0 ** -20, 1) is None  # shift 41: not representable
