"""convert(): structure of the artifact, pruning, presets, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import residual_cnn

import tfmicro_train as tmt
from tfmicro_train.schema import fb, op_name


def _ops(art) -> list[str]:
    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    return [op_name(m, op) for op in m.subgraphs[0].operators]


def _tmt_layers(art) -> set[str]:
    """Layers with a training op (TMT_* ops other than the forward TMT_CONV / TMT_MEAN / TMT_FUSED_IRB)."""
    return {e.layer for e in art.timeline if e.op.startswith("TMT_") and e.role != "forward"
            and e.layer}


def test_classifier_only_artifact_is_pruned(residual_model, calib):
    art = tmt.convert(residual_model, calib, update="last", fuse=False)
    ops = _ops(art)
    forward = ("TMT_CONV", "TMT_MEAN")  # forward ops
    tmt_ops = sorted(o for o in ops if o.startswith("TMT_") and o not in forward)
    print("classifier-only TMT ops:", tmt_ops)
    assert _tmt_layers(art) == {"fc"}
    assert not any(o in ops for o in ("TMT_CONV_INPUT_GRAD", "TMT_DW_INPUT_GRAD", "TMT_GRAD_ADD",
                                      "TMT_MAXPOOL_GRAD", "TMT_ACT_GRAD"))
    assert tmt_ops == ["TMT_BIAS_UPDATE", "TMT_CONV_WEIGHT_UPDATE", "TMT_INIT", "TMT_SOFTMAX_CE_GRAD"]
    # no extra saved activations: only the classifier input and the probabilities outlive the
    # forward pass besides the classifier's own parameters
    full = tmt.convert(residual_model, calib, update="full", fuse=False)
    assert art.memory_report().arena_bytes < full.memory_report().arena_bytes
    assert set(_tmt_layers(full)) == {"c1", "dw", "pw", "fc"}
    assert len(ops) < len(_ops(full))


def test_all_custom_ops_share_prefix_and_forward_is_builtin(residual_model, calib):
    art = tmt.convert(residual_model, calib, update="full")
    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    custom = [c.customCode.decode() for c in m.operatorCodes
              if c.builtinCode == fb.BuiltinOperator.CUSTOM]
    assert custom and all(c.startswith("TMT_") for c in custom)
    assert len(m.subgraphs) == 1 and _ops(art)[0] == "TMT_INIT"
    sg = m.subgraphs[0]
    variables = [sg.tensors[t].name.decode() for t in range(len(sg.tensors))
                 if sg.tensors[t].isVariable]
    assert len(variables) == len(art.metadata["variables"]) + 1 == 9 and "tmt/state" in variables
    # TMT_INIT reads (initial value, variable) pairs after the state tensor
    assert len(sg.operators[0].inputs) == 1 + 2 * 8


def test_bias_preset_and_sparse_ratios(residual_model, calib):
    art = tmt.convert(residual_model, calib, update="bias")
    assert [v["kind"] for v in art.metadata["variables"]] == ["bias"] * 4
    sp = tmt.convert(residual_model, calib,
                     update=tmt.SparseUpdate(bias_last_k=1, weight_ratios={0: 1 / 8, 2: 0.5}))
    chans = {(v["layer"], v["kind"]): v["channels"] for v in sp.metadata["variables"]}
    assert chans == {("c1", "weights"): 1, ("pw", "weights"): 4, ("fc", "bias"): 10}
    # the first layer's input needs no gradient: no input-gradient op for c1
    assert "TMT_CONV_INPUT_GRAD" in _ops(sp)
    assert not any(e.op.endswith("INPUT_GRAD") and e.layer == "c1" for e in sp.timeline)


def test_save_is_atomic_and_roundtrips(tmp_path, residual_model, calib):
    art = tmt.convert(residual_model, calib, update="last")
    path = tmp_path / "m.tflite"
    art.save(path)
    assert path.read_bytes() == art.flatbuffer
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]
    rep = art.memory_report()
    assert rep.flash_bytes == len(art.flatbuffer) and rep.peak_sram_bytes > rep.arena_bytes > 0
    png = rep.plot(str(tmp_path / "mem.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_mse_regression_head(calib):
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inp, out)
    art = tmt.convert(model, calib, update="full", loss="mse", optimizer=tmt.SGD(0.05))
    assert "TMT_MSE_GRAD" in _ops(art)
    sim = tmt.HostSimulator(art)
    target = np.array([0.5, -0.25], np.float32)
    losses = [sim.train_step(calib[0], target) for _ in range(30)]
    print("MSE losses", losses[0], losses[-1])
    assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------------ bad input


def test_unsupported_layer_named_before_any_file(tmp_path, calib):
    import keras

    inp = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3, name="c")(inp)
    x = keras.layers.LayerNormalization(name="ln_bad")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(3)(x))
    with pytest.raises(ValueError, match=r"'ln_bad'.*LayerNormalization.*supported layer types: .*Conv2D"):
        tmt.convert(model, calib).save(tmp_path / "x.tflite")
    assert list(tmp_path.iterdir()) == []


def test_unsupported_activation_named(calib):
    import keras

    inp = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3, activation="tanh", name="tanh_conv")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match="'tanh_conv'.*tanh"):
        tmt.convert(model, calib)


@pytest.mark.parametrize("update, message", [
    (tmt.SparseUpdate(weight_ratios={9: 1}), r"weight_ratios key 9 .*\[0, 4\)"),
    (tmt.SparseUpdate(weight_ratios={1: 0.3}), r"weight_ratios\[1\] = 0.3 is not allowed"),
    (tmt.SparseUpdate(bias_last_k=7), r"bias_last_k = 7 .* between 0 and 4"),
    (tmt.SparseUpdate(), "trains nothing"),
    ("everything", "preset 'everything' is unknown"),
])
def test_invalid_sparse_spec(residual_model, calib, update, message):
    with pytest.raises(ValueError, match=message):
        tmt.convert(residual_model, calib, update=update)


def test_nan_in_representative_data(residual_model, calib):
    bad = [c.copy() for c in calib[:4]]
    bad[2][0, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="representative_data sample 2 contains NaN"):
        tmt.convert(residual_model, bad)


def test_wrong_label_dtype_and_range_leave_weights_unchanged(residual_model, calib):
    art = tmt.convert(residual_model, calib, update="full")
    sim = tmt.HostSimulator(art)
    sim.train_step(calib[0], np.int32(1))
    before = sim.weights()
    with pytest.raises(ValueError, match="label must be an integer"):
        sim.train_step(calib[1], np.float32(1.0))
    with pytest.raises(ValueError, match=r"label \[10\] out of range \[0, 10\)"):
        sim.train_step(calib[1], np.int32(10))
    # the device-level path: the loss op itself rejects the label before any update runs
    xq = sim.quantize_input(calib[1])
    with pytest.raises(ValueError, match=r"TMT_SOFTMAX_CE_GRAD: label -3 out of range"):
        sim.invoke([xq, np.array([-3], np.int32), np.array([0.1], np.float32)])
    with pytest.raises(ValueError, match="input 0 .* must be int8"):
        sim.invoke([calib[1], np.array([1], np.int32), np.array([0.1], np.float32)])
    after = sim.weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_bad_loss_and_optimizer(residual_model, calib):
    with pytest.raises(ValueError, match="loss 'hinge' is not supported"):
        tmt.convert(residual_model, calib, loss="hinge")
    with pytest.raises(ValueError, match="learning_rate must be a positive"):
        tmt.SGD(-1.0)


def test_model_variants_convert(calib):
    for pool in ("avg", "gap"):
        art = tmt.convert(residual_cnn(pool=pool), calib, update="full")
        sim = tmt.HostSimulator(art)
        assert np.isfinite(sim.train_step(calib[0], np.int32(3)))
