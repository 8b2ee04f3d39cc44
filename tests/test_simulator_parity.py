"""The simulator's inference path against the tflite_micro reference interpreter, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import residual_cnn

import tfmicro_train as tmt

runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")


def _wheel(model: bytes, xq: np.ndarray) -> np.ndarray:
    interp = runtime.Interpreter.from_bytes(model)
    interp.set_input(xq, 0)
    interp.invoke()
    return interp.get_output(0)


@pytest.mark.parametrize("pool", ["max", "avg", "gap"])
def test_predict_matches_tflm_before_and_after_training(calib, pool):
    art = tmt.convert(residual_cnn(pool=pool), calib, update="full", optimizer=tmt.SGD(0.05))
    sim = tmt.HostSimulator(art)
    xs = [sim.quantize_input(c) for c in calib[:6]]
    for xq in xs:
        assert np.array_equal(sim.predict_raw(xq), _wheel(art.inference_flatbuffer, xq))
    # the exported model with untouched weights is TensorFlow's model, operator for operator
    assert all(np.array_equal(_wheel(sim.export_tflite(), xq), _wheel(art.inference_flatbuffer, xq))
               for xq in xs)
    for i in range(20):
        sim.train_step(calib[i], np.int32(i % 10))
    trained = sim.export_tflite()
    changed = 0
    for xq in xs:
        ours = sim.predict_raw(xq)
        assert np.array_equal(ours, _wheel(trained, xq))
        changed += not np.array_equal(ours, _wheel(art.inference_flatbuffer, xq))
    assert changed > 0


def test_sliced_sparse_update_matches_tflm_after_training(calib):
    update = tmt.SparseUpdate(bias_last_k=1, weight_ratios={2: 0.5, 3: 0.25})
    art = tmt.convert(residual_cnn(pool="gap"), calib, update=update, optimizer=tmt.SGD(0.1))
    sim = tmt.HostSimulator(art)
    init = sim.weights()
    for i in range(15):
        sim.train_step(calib[i], np.int32(i % 10))
    trained = sim.weights()
    assert trained["tmt/pw/weights"].shape == (4, 1, 1, 8)
    assert not np.array_equal(init["tmt/pw/weights"], trained["tmt/pw/weights"])
    plain = sim.export_tflite()
    for c in calib[:4]:
        xq = sim.quantize_input(c)
        assert np.array_equal(sim.predict_raw(xq), _wheel(plain, xq))
