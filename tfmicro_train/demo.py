"""The default demo: pretrain on digits, convert, fine-tune on the (simulated) device.

The device's camera is mounted sideways: it sees the digits rotated by 90 degrees. The model was
pretrained on upright digits, so accuracy drops; a few on-device epochs on rotated samples recover it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class DemoResult:
    """Figures of one demo run."""

    pretrained_acc: float  # float Keras model on upright digits (held out)
    int8_acc_shifted_before: float  # the int8 artifact on rotated digits, before training
    int8_acc_shifted_after: float  # after on-device training
    losses: list[float]
    flash_bytes: int
    peak_sram_bytes: int
    seconds: float


def digits_data(seed: int = 0):
    """scikit-learn's digits as float32 [N, 8, 8, 1] in [0, 1], split into pretrain/device/test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:900], y[:900]), (x[900:1300], y[900:1300]), (x[1300:], y[1300:])


def rotate(x: np.ndarray) -> np.ndarray:
    """The shifted task: images rotated by 90 degrees."""
    return np.ascontiguousarray(np.rot90(x, k=1, axes=(1, 2)))


def small_cnn(seed: int = 0):
    """A small MCU-style CNN: conv, depthwise-separable blocks, global pooling, classifier."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv0")(inp)
    x = keras.layers.BatchNormalization(name="bn0")(x)
    x = keras.layers.ReLU(6.0, name="relu0")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw1")(x)
    x = keras.layers.ReLU(6.0, name="relu1")(x)
    x = keras.layers.Conv2D(24, 1, name="pw1")(x)
    x = keras.layers.ReLU(6.0, name="relu1b")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", name="conv2", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(10, name="classifier")(x)
    return keras.Model(inp, x, name="digits_cnn")


def pretrain(model, x, y, epochs: int = 30, seed: int = 0):
    """Float pretraining in Keras (a few seconds on a CPU)."""
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def run_demo(epochs: int = 3, update="default", learning_rate: float = 0.05,
             out_path: str | None = None, verbose: bool = True) -> DemoResult:
    """Pretrain, convert, fine-tune on device (simulated); print and return the figures."""
    import tfmicro_train as tmt

    t0 = time.time()
    say = print if verbose else (lambda *a, **k: None)
    (xp, yp), (xd, yd), (xt, yt) = digits_data()
    model = pretrain(small_cnn(), xp, yp)
    logits = model.predict(xt, verbose=0)
    pre_acc = float(np.mean(np.argmax(logits, -1) == yt))
    say(f"pretrained float model, upright digits: {pre_acc:.1%} held-out accuracy")
    if update == "default":
        update = tmt.SparseUpdate(bias_last_k=5, weight_ratios={3: 1, 4: 1})
    art = tmt.convert(model, representative_data=[xp[i:i + 1] for i in range(100)],
                      update=update,
                      optimizer=tmt.SGD(learning_rate, schedule="cosine",
                                        decay_steps=epochs * len(xd)))
    if out_path:
        art.save(out_path)
        say(f"wrote {out_path}")
    report = art.memory_report()
    say(f"artifact: {report}")
    say(art.summary())
    sim = tmt.HostSimulator(art)
    xd_r, xt_r = rotate(xd), rotate(xt)
    before = sim.evaluate(xt_r, yt)
    say(f"on device, rotated digits, before training: {before:.1%}")
    losses = []
    for e in range(epochs):
        losses += sim.fit(xd_r, yd, epochs=1, shuffle_seed=e)
        say(f"  epoch {e + 1}: mean loss {losses[-1]:.3f}, held-out accuracy "
            f"{sim.evaluate(xt_r, yt):.1%}")
    after = sim.evaluate(xt_r, yt)
    say(f"on device, rotated digits, after {epochs} epochs ({epochs * len(xd)} steps of batch 1):"
        f" {before:.1%} -> {after:.1%}")
    return DemoResult(pre_acc, before, after, losses, report.flash_bytes, report.peak_sram_bytes,
                      time.time() - t0)
