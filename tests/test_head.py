"""A pooled head without its H x W tensors (tfmicro_train/head.py).

* the converter folds the global average pool into the TMT_CONV writing its input (mean mode) and
  the pooled gradient's broadcast (TMT_MEAN_GRAD, TMT_MASK_GRAD) into the input gradient and the
  bias update reading it: no H x W x C tensor of the head is left, and the arena shrinks;
* the folded artifact trains bit for bit as the unfolded one (same losses, same variables) and
  exports to the same plain TFLite model behaviour;
* heads the passes cannot take (a trained head weight, which reads the broadcast gradient) stay
  as they were.
(The numpy / C++ contract: tests/test_golden_cpp.py; whole steps in TFLM: test_tflm_integration.)
"""

from __future__ import annotations

import numpy as np
import pytest

UPDATE = dict(bias_last_k=3)


def head_cnn(head: int = 80):
    """Conv, BN, ReLU6, a 1x1 head conv with ReLU6 wider than one chunk of the C++ mean mode
    (6 x 6 pixels: 28 channels per chunk), global pooling, Dense."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(6.0, name="r1")(x)
    x = keras.layers.Conv2D(head, 1, name="head")(x)
    x = keras.layers.ReLU(6.0, name="r2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(10, name="fc")(x)
    return keras.Model(inp, x)


def _convert(model, calib, fold: bool, monkeypatch, **kw):
    import tfmicro_train as tmt
    from tfmicro_train import schedule

    with monkeypatch.context() as mp:
        if not fold:
            mp.setattr(schedule, "fold_pooled_outputs", lambda g: g)
            mp.setattr(schedule, "fold_broadcast_grads", lambda g: g)
        return tmt.convert(model, calib, update=tmt.SparseUpdate(**kw.pop("update", UPDATE)), **kw)


@pytest.fixture(scope="module")
def model():
    return head_cnn()


@pytest.fixture(scope="module")
def arts(model, calib):
    mp = pytest.MonkeyPatch()
    try:
        return _convert(model, calib, True, mp), _convert(model, calib, False, mp)
    finally:
        mp.undo()


def _ops(art):
    from flatbuffers import flexbuffers

    from tfmicro_train.schema import fb, op_name

    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    out = []
    for op in m.subgraphs[0].operators:
        o = (flexbuffers.Loads(bytes(bytearray(op.customOptions)))
             if op.customOptions is not None else {})
        out.append((op_name(m, op), o, [int(t) for t in op.inputs], [int(t) for t in op.outputs]))
    return m, out


def test_head_tensors_are_gone(arts):
    folded, plain = arts
    m, ops = _ops(folded)
    names = [n for n, *_ in ops]
    assert "TMT_MEAN" not in names and "TMT_MEAN_GRAD" not in names
    _, plain_ops = _ops(plain)
    plain_names = [n for n, *_ in plain_ops]
    assert "TMT_MEAN" in plain_names and "TMT_MEAN_GRAD" in plain_names
    means = [(o, outs) for n, o, _, outs in ops if n == "TMT_CONV" and o.get("mean")]
    assert len(means) == 1
    o, outs = means[0]
    sg = m.subgraphs[0]
    assert list(sg.tensors[outs[0]].shape) in ([1, 80], [1, 1, 1, 80])  # the pooled output
    assert len(outs) == 2 and sg.tensors[outs[1]].type == 3  # UINT8: the packed mask
    assert (o["y_h"], o["y_w"]) == (6, 6)
    readers = [(n, o, ins) for n, o, ins, _ in ops if "g_bcast_h" in o]
    # (the head's bias update runs inside its input gradient: updates.py)
    assert [n for n, *_ in readers] == ["TMT_CONV_INPUT_GRAD"]
    assert "b_update_channels" in readers[0][1]
    for _, o, ins in readers:
        assert (o["g_bcast_h"], o["g_bcast_w"]) == (6, 6) and ins[6] == outs[1]
        assert list(sg.tensors[ins[0]].shape) in ([1, 80], [1, 1, 1, 80])
    # no tensor of 6 x 6 x 80 elements is left in the step
    assert not any(int(np.prod(t.shape)) == 6 * 6 * 80 for t in sg.tensors)
    assert folded.plan.arena_bytes < plain.plan.arena_bytes
    # TMT_MEAN, TMT_MEAN_GRAD, TMT_MASK_GRAD and the head's TMT_MASK_PACK are gone
    packs = plain_names.count("TMT_MASK_PACK") - names.count("TMT_MASK_PACK")
    assert packs == 1 and len(ops) == len(plain_ops) - 4


def test_folded_head_trains_bit_exact(arts, calib):
    import tfmicro_train as tmt

    folded, plain = arts
    a, b = tmt.HostSimulator(folded), tmt.HostSimulator(plain)
    for k in range(6):
        la = a.train_step(calib[k], k % 10, 0.05)
        lb = b.train_step(calib[k], k % 10, 0.05)
        assert la == lb
    wa, wb = a.weights(), b.weights()
    assert wa.keys() == wb.keys()
    moved = 0
    for name in wa:
        assert np.array_equal(wa[name], wb[name]), name
        moved += int(np.any(wa[name] != tmt.HostSimulator(plain).weights()[name]))
    assert moved >= 2  # the head's and the classifier's biases learned
    assert np.array_equal(a.predict_raw(calib[7]), b.predict_raw(calib[7]))
    ga, gb = a.gradients(calib[8], 3), b.gradients(calib[8], 3)
    for name in ga:
        assert np.array_equal(ga[name], gb[name]), name


def test_folded_head_exports_builtins(arts, calib):
    import tfmicro_train as tmt
    from tfmicro_train.kernels.builtin_ops import execute_graph
    from tfmicro_train.schema import fb, op_name

    folded, _ = arts
    sim = tmt.HostSimulator(folded)
    for k in range(3):
        sim.train_step(calib[k], k % 10, 0.05)
    m = fb.ModelT.InitFromPackedBuf(sim.export_tflite(), 0)
    names = [op_name(m, op) for op in m.subgraphs[0].operators]
    assert "MEAN" in names and not any(n.startswith("TMT_") for n in names)
    x = sim.quantize_input(calib[9]).reshape(sim.input_info.shape)
    y = execute_graph(m, [x])[0]
    assert np.array_equal(np.asarray(y).reshape(-1), sim.predict_raw(calib[9]).reshape(-1))


def test_trained_head_weights_keep_the_broadcast(model, calib, monkeypatch):
    # the head's weight update reads the broadcast gradient: TMT_MEAN_GRAD stays (the forward
    # pass still folds the pool: y is not saved, the update reads the head's input)
    art = _convert(model, calib, True, monkeypatch, update=dict(bias_last_k=2, weight_ratios={1: 1}))
    _, ops = _ops(art)
    names = [n for n, *_ in ops]
    assert "TMT_MEAN_GRAD" in names and not any("g_bcast_h" in o for _, o, *_ in ops)
    plain = _convert(model, calib, False, monkeypatch,
                     update=dict(bias_last_k=2, weight_ratios={1: 1}))
    a, b = tmt_sims(art, plain)
    for k in range(3):
        assert a.train_step(calib[k], k % 10, 0.05) == b.train_step(calib[k], k % 10, 0.05)
    for name, v in a.weights().items():
        assert np.array_equal(v, b.weights()[name]), name


def tmt_sims(*arts):
    import tfmicro_train as tmt

    return [tmt.HostSimulator(a) for a in arts]
