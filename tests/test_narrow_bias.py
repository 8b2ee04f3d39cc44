"""Narrow biases: trained biases of TMT_CONV layers kept as int16 changes (requant.narrow_biases).

* the converter narrows them (int16 variables, requant [4, C], a `bias32` output, bfactor / 2^k)
  and the SRAM the step needs drops by 2 bytes per channel;
* with every shift k = 0 a narrow artifact trains bit for bit like the int32 one (the same step in
  the same unit), and with the default shifts it trains as well, its biases within the rounding
  of the coarser unit;
* the change saturates at int16 without corrupting anything else; export_tflite() gives int32
  biases again; a bias whose scratch would set the step's peak stays int32 (widen_at_peak).
(The numpy / C++ / TFLM-glue contract is replayed bit for bit by the golden cases,
tests/test_golden_cpp.py; whole steps in TFLM: tests/test_tflm_integration.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

UPDATE = dict(bias_last_k=4, weight_ratios={3: 1})


def wide_cnn():
    """Conv, BN, ReLU6, depthwise, pointwise, global pooling, Dense: 64-channel layers (narrow
    biases pay from about 40 channels on)."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(64, 3, strides=2, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(6.0, name="r1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.ReLU(6.0, name="r2")(x)
    x = keras.layers.Conv2D(64, 1, name="pw")(x)
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
    # the 64-channel layers' biases, except pw's: its bias32 would sit at the step's busiest
    # operator (its forward op, 256 bytes more there for 128 saved: widen_at_peak); the
    # classifier's 10 channels would cost more than they save
    assert {k: d for k, d in kinds.items() if k[1] == "bias"} == {
        ("c1", "bias"): "int16", ("dw", "bias"): "int16", ("pw", "bias"): "int32",
        ("fc", "bias"): "int32"}
    assert {d for (_, k), d in _kinds(wide).items() if k == "bias"} == {"int32"}
    assert wide.plan.variable_bytes - narrow.plan.variable_bytes == 2 * 128
    assert narrow.memory_report().peak_sram_bytes < wide.memory_report().peak_sram_bytes


def test_shift_zero_trains_bit_for_bit_like_int32(model, calib, monkeypatch):
    import tfmicro_train as tmt
    from tfmicro_train import requant

    monkeypatch.setattr(requant, "NARROW_RANGE", 1e-9)  # k = 0 for every channel
    up = tmt.SparseUpdate(**UPDATE)
    a = tmt.HostSimulator(tmt.convert(model, calib, update=up))
    b = tmt.HostSimulator(tmt.convert(model, calib, update=up, narrow_biases=False))
    assert any(v.dtype == np.int16 for v in a.weights().values())
    for k in range(8):
        assert a.train_step(calib[k], k % 10, 0.05) == b.train_step(calib[k], k % 10, 0.05), k
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
    la = [a.train_step(calib[k % 20], k % 10, 0.05) for k in range(40)]
    lb = [b.train_step(calib[k % 20], k % 10, 0.05) for k in range(40)]
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


def test_bias_at_the_peak_stays_int32():
    """widen_at_peak: a wide layer whose bias32 scratch would sit at the busiest operator."""
    from tfmicro_train.graph import Graph, Node, Tensor, Variable
    from tfmicro_train.requant import narrow_biases, widen_at_peak

    def graph(channels: int, big: int) -> Graph:
        g = Graph()
        i8, i32 = np.dtype(np.int8), np.dtype(np.int32)
        x = g.add(Tensor("x", (1, 1, 1, 4), i8, np.ones(1, np.float32), np.zeros(1, np.int64)))
        w = g.add(Tensor("w", (channels, 1, 1, 4), i8, np.full(channels, 0.01, np.float32),
                         np.zeros(channels, np.int64), 0, np.ones((channels, 1, 1, 4), np.int8)))
        init = g.add(Tensor("b/init", (channels,), i32, data=np.arange(channels, dtype=np.int32)))
        b = g.add(Tensor("b", (channels,), i32, np.full(channels, 0.01, np.float32),
                         np.zeros(channels, np.int64), 0, variable=True))
        rq = g.add(Tensor("rq", (2, channels), i32, data=np.ones((2, channels), np.int32)))
        y = g.add(Tensor("y", (1, 1, 1, channels), i8, np.full(1, 0.1, np.float32),
                         np.zeros(1, np.int64)))
        other = g.add(Tensor("other", (big,), i8))
        gd = g.add(Tensor("g", (1, 1, 1, channels), i8))
        gs = g.add(Tensor("gs", (1,), np.dtype(np.float32)))
        bf = g.add(Tensor("bf", (channels,), np.dtype(np.float32),
                          data=np.ones(channels, np.float32)))
        lr = g.add(Tensor("lr", (1,), np.dtype(np.float32)))
        g.inputs = [x, gd, gs, lr]
        g.nodes = [Node("TMT_CONV", [x, w, b, rq], [y], {"kind": 0}),
                   Node("SOME_OP", [y], [other]),
                   Node("TMT_BIAS_UPDATE", [gd, gs, b, bf, lr], [], {}, role="update")]
        g.outputs = [other]
        g.variables = [Variable("b", "l", "bias", init, b, channels, 0, 2)]
        return g

    g = narrow_biases(graph(1024, 64))  # the conv is the busiest operator: keep int32
    assert g.tensors[g.variables[0].value].dtype == np.int16
    widen_at_peak(g)
    assert g.tensors[g.variables[0].value].dtype == np.int32
    assert len(g.nodes[0].outputs) == 1 and g.tensors[g.nodes[0].inputs[3]].shape == (2, 1024)
    assert np.array_equal(g.tensors[g.variables[0].init].data, np.arange(1024))
    g = widen_at_peak(narrow_biases(graph(1024, 64 * 1024)))  # peak elsewhere: stays narrow
    assert g.tensors[g.variables[0].value].dtype == np.int16


def test_fp32_backward_and_builtin_convs_keep_int32(model, calib):
    import tfmicro_train as tmt

    up = tmt.SparseUpdate(**UPDATE)
    for kw in (dict(backward="fp32"), dict(flash_requant=False)):
        art = tmt.convert(model, calib, update=up, **kw)
        assert {d for (_, k), d in _kinds(art).items() if k == "bias"} == {"int32"}, kw
