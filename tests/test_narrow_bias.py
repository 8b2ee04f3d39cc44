"""Narrow biases: trained biases of TMT_CONV layers kept as int16 changes (requant.narrow_biases).

* the converter narrows them (int16 variables, requant [4, C], bfactor / 2^k) and the SRAM the
  step needs drops by 2 bytes per channel, with no new tensor and no arena scratch;
* with every shift k = 0 a narrow artifact trains bit for bit like the int32 one (the same step in
  the same unit), and with the default shifts it trains as well, its biases within the rounding
  of the coarser unit;
* the change saturates at int16 without corrupting anything else; export_tflite() gives int32
  biases again.
(The numpy / C++ / TFLM-glue contract is replayed bit for bit by the golden cases,
tests/test_golden_cpp.py; whole steps in TFLM: tests/test_tflm_integration.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

UPDATE = dict(bias_last_k=4, weight_ratios={3: 1})


def wide_cnn():
    """Conv, BN, ReLU6, depthwise, pointwise, global pooling, Dense: layers wider than the C++
    op's 64-channel bias chunks (conv_op.h kBiasChunk), so TFLM runs expand them in two chunks."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(96, 3, strides=2, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(6.0, name="r1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.ReLU(6.0, name="r2")(x)
    x = keras.layers.Conv2D(80, 1, name="pw")(x)
    x = keras.layers.ReLU(6.0, name="r3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(10, name="fc")(x)
    return keras.Model(inp, x)


@pytest.fixture(scope="module")
def model():
    return wide_cnn()


@pytest.fixture(scope="module")
def arts(model, calib):
    import tfmicro_train as tmt

    up = tmt.SparseUpdate(**UPDATE)
    return (tmt.convert(model, calib, update=up),
            tmt.convert(model, calib, update=up, narrow_biases=False))


def _kinds(art) -> dict[tuple[str, str], str]:
    return {(v["layer"], v["kind"]): v["dtype"] for v in art.metadata["variables"]}


def test_trained_biases_become_int16(arts):
    narrow, wide = arts
    kinds = _kinds(narrow)
    # every trained bias, the classifier's 10 channels too (48 bytes aligned become 32)
    assert {k: d for k, d in kinds.items() if k[1] == "bias"} == {
        ("c1", "bias"): "int16", ("dw", "bias"): "int16", ("pw", "bias"): "int16",
        ("fc", "bias"): "int16"}
    assert {d for (_, k), d in _kinds(wide).items() if k == "bias"} == {"int32"}
    assert wide.plan.variable_bytes - narrow.plan.variable_bytes == 192 + 192 + 160 + 16
    assert narrow.memory_report().peak_sram_bytes < wide.memory_report().peak_sram_bytes


def test_narrow_bias_adds_no_tensor_or_scratch(arts):
    """The op expands the int32 bias on the stack: the same tensors and operator outputs, and
    the arena is no larger (each narrow bias only changes its variable's and requant's type)."""
    from tfmicro_train.schema import fb, op_name

    narrow, wide = arts
    models = [fb.ModelT.InitFromPackedBuf(a.flatbuffer, 0) for a in (narrow, wide)]
    counts = [len(m.subgraphs[0].tensors) for m in models]
    assert counts[0] == counts[1], counts
    outs = [[len(op.outputs) for op in m.subgraphs[0].operators if op_name(m, op) == "TMT_CONV"]
            for m in models]
    assert outs[0] == outs[1]
    assert narrow.plan.arena_bytes <= wide.plan.arena_bytes


def test_shift_zero_trains_bit_for_bit_like_int32(model, calib, monkeypatch):
    import tfmicro_train as tmt
    from tfmicro_train import requant

    monkeypatch.setattr(requant, "NARROW_RANGE", 1e-9)  # k = 0 for every channel
    # (and the classifier's 10-channel bias int32: its changes leave int16 in int32 units)
    monkeypatch.setattr(requant, "NARROW_MIN_SAVING", 16)
    up = tmt.SparseUpdate(**UPDATE)
    a = tmt.HostSimulator(tmt.convert(model, calib, update=up))
    b = tmt.HostSimulator(tmt.convert(model, calib, update=up, narrow_biases=False))
    assert any(v.dtype == np.int16 for v in a.weights().values())
    for k in range(8):  # (a rate at which no change reaches the int16 limits in int32 units)
        assert a.train_step(calib[k], k % 10, 0.01) == b.train_step(calib[k], k % 10, 0.01), k
    assert all(np.abs(v.astype(np.int32)).max() < 32767
               for v in a.weights().values() if v.dtype == np.int16)
    pa, pb = a.parameters(), b.parameters()
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert np.array_equal(a.predict_raw(calib[9]), b.predict_raw(calib[9]))


def test_default_shifts_train_like_int32(arts, calib):
    import tfmicro_train as tmt
    from tfmicro_train.requant import bias_shifts

    narrow, wide = arts
    a, b = tmt.HostSimulator(narrow), tmt.HostSimulator(wide)
    a0, b0 = a.parameters(), b.parameters()
    assert a0.keys() == b0.keys() and all(np.array_equal(a0[k], b0[k]) for k in a0)
    # (at 0.05 the classifier's int32 bias swings by hundreds of output steps per step, past the
    # +-128 a narrow one covers: test_change_saturates_at_int16)
    la = [a.train_step(calib[k % 20], k % 10, 0.005) for k in range(40)]
    lb = [b.train_step(calib[k % 20], k % 10, 0.005) for k in range(40)]
    assert abs(np.mean(la[-10:]) - np.mean(lb[-10:])) < 0.1 * np.mean(lb[:10])
    pa, pb = a.parameters(), b.parameters()
    for name in (k for k, v in a.weights().items() if v.dtype == np.int16):
        da = np.abs(pa[name].astype(np.int64) - a0[name]).mean()
        db = np.abs(pb[name].astype(np.int64) - b0[name]).mean()
        assert db > 0 and 0.5 < da / db < 2.0, (name, da, db)  # the same size of change
    assert bias_shifts(np.array([1e-9]), 1.0)[0] > 0  # a fine bias scale gets a coarser unit
    assert bias_shifts(np.array([1.0]), 1.0)[0] == 0


def test_change_saturates_at_int16(arts, calib):
    import tfmicro_train as tmt

    narrow, _ = arts
    sim = tmt.HostSimulator(narrow)
    before = sim.parameters()
    for k in range(6):
        sim.train_step(calib[k], k % 10, 1e6)  # absurd learning rate: every change saturates
    deltas = {k: v for k, v in sim.weights().items() if v.dtype == np.int16}
    assert deltas and any(np.abs(v.astype(np.int32)).max() == 32767 or v.min() == -32768
                          for v in deltas.values())
    after = sim.parameters()
    for name in deltas:
        assert np.abs(after[name].astype(np.int64)).max() <= 2**31 - 1
        assert not np.array_equal(after[name], before[name])
    assert np.isfinite(sim.predict_raw(calib[0]).astype(np.float32)).all()


def test_export_gives_int32_biases(arts, calib):
    import tfmicro_train as tmt
    from tfmicro_train.kernels.builtin_ops import execute_graph
    from tfmicro_train.schema import fb, op_name

    narrow, _ = arts
    sim = tmt.HostSimulator(narrow)
    for k in range(4):
        sim.train_step(calib[k], k % 10, 0.05)
    exported = sim.export_tflite()
    m = fb.ModelT.InitFromPackedBuf(exported, 0)
    sg = m.subgraphs[0]
    assert all(not op_name(m, op).startswith("TMT_") for op in sg.operators)
    biases = [sg.tensors[op.inputs[2]] for op in sg.operators
              if op_name(m, op) in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
              and len(op.inputs) > 2 and op.inputs[2] >= 0]
    assert biases and all(t.type == fb.TensorType.INT32 for t in biases)
    x = sim.quantize_input(calib[9]).reshape(sim.input_info.shape)
    y = execute_graph(m, [x])[0]
    assert np.array_equal(np.asarray(y).reshape(-1), sim.predict_raw(calib[9]).reshape(-1))


def test_fp32_backward_and_builtin_convs_keep_int32(model, calib):
    import tfmicro_train as tmt

    up = tmt.SparseUpdate(**UPDATE)
    for kw in (dict(backward="fp32"), dict(flash_requant=False)):
        art = tmt.convert(model, calib, update=up, **kw)
        assert {d for (_, k), d in _kinds(art).items() if k == "bias"} == {"int32"}, kw
