"""On-device (simulated) training on digits: accuracy rises; QAS on vs off on the same run."""

from __future__ import annotations

import numpy as np
import pytest

import tfmicro_train as tmt
from tfmicro_train.demo import digits_data, pretrain, rotate, small_cnn


@pytest.fixture(scope="module")
def pretrained():
    (xp, yp), (xd, yd), (xt, yt) = digits_data()
    return pretrain(small_cnn(), xp, yp, epochs=20), xp, (rotate(xd), yd), (rotate(xt), yt)


def _run(model, xp, dev, test, qas: bool, update, epochs: int = 2, backward: str = "int8"):
    steps = epochs * len(dev[0])
    art = tmt.convert(model, [xp[i:i + 1] for i in range(64)], update=update, qas=qas,
                      optimizer=tmt.SGD(0.05, schedule="cosine", decay_steps=steps),
                      backward=backward)
    sim = tmt.HostSimulator(art)
    before = sim.evaluate(*test)
    sim.fit(*dev, epochs=epochs)
    return before, sim.evaluate(*test)


def test_training_raises_accuracy_and_qas_matters(pretrained):
    model, xp, dev, test = pretrained
    update = tmt.SparseUpdate(bias_last_k=5, weight_ratios={3: 1, 4: 1})
    before, with_qas = _run(model, xp, dev, test, True, update)
    _, without_qas = _run(model, xp, dev, test, False, update)
    print(f"\nrotated digits, held-out accuracy: before {before:.1%}, after 2 epochs "
          f"with QAS {with_qas:.1%}, without QAS {without_qas:.1%}")
    assert with_qas > before + 0.3
    assert with_qas > without_qas + 0.1


def test_fp32_backward_learns(pretrained):
    """backward="fp32" trains as well as the int8 backward on the same run (same data order)."""
    model, xp, dev, test = pretrained
    update = tmt.SparseUpdate(bias_last_k=5, weight_ratios={3: 1, 4: 1})
    before, fp32 = _run(model, xp, dev, test, True, update, backward="fp32")
    _, int8 = _run(model, xp, dev, test, True, update)
    print(f"\nrotated digits: before {before:.1%}, after 2 epochs fp32 backward {fp32:.1%}, "
          f"int8 backward {int8:.1%}")
    assert fp32 > before + 0.3
    assert abs(fp32 - int8) < 0.1


def test_last_layer_only_learns(pretrained):
    model, xp, dev, test = pretrained
    before, after = _run(model, xp, dev, test, True, "last")
    print(f"\nclassifier only: {before:.1%} -> {after:.1%}")
    assert after > before + 0.1


def test_inference_does_not_touch_state(pretrained):
    model, xp, dev, test = pretrained
    sim = tmt.HostSimulator(tmt.convert(model, [xp[:1]], update="full"))
    w = sim.weights()
    sim.predict(test[0][:5])
    assert sim.step == 0 and all(np.array_equal(w[k], v) for k, v in sim.weights().items())
    sim.train_step(dev[0][0], dev[1][0])
    assert sim.step == 1 and any(not np.array_equal(w[k], v) for k, v in sim.weights().items())
