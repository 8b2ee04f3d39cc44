"""Does int8 on-device training match float fine-tuning? (The MIT paper's Table 1 question.)

    python benchmarks/accuracy.py            # 4 transfer tasks, about 5 minutes on 2 cores
    python benchmarks/accuracy.py --quick    # 1 task, 1 epoch

A small CNN (tfmicro_train.demo.small_cnn) is pretrained in float on upright digits, then
fine-tuned at batch 1 on a shifted task (rotated, flipped, inverted digits) with the same sparse
update (biases of the last 5 layers, weights of conv2 and the classifier), the same learning rate
schedule (SGD, cosine decay, no momentum) and the same sample order, four ways:

* Keras/TensorFlow float32 SGD on the float model (BatchNormalization in inference mode; its beta
  trained in place of the folded bias);
* tfmicro-train int8 backward with QAS (the default artifact: trained biases as int16 changes,
  `narrow_biases=True`), on HostSimulator;
* the same with int32 biases (`narrow_biases=False`);
* the same without QAS (plain SGD on the integer weights);
* tfmicro-train fp32 backward (`backward="fp32"`), QAS on.

The device columns run the artifact bit for bit as TFLM would. Prints a table of held-out accuracy
and writes benchmarks/out/accuracy.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LR = 0.05
TASKS = {
    "rotated 90": lambda x: np.rot90(x, k=1, axes=(1, 2)),
    "rotated 180": lambda x: np.rot90(x, k=2, axes=(1, 2)),
    "mirrored": lambda x: x[:, :, ::-1],
    "inverted": lambda x: 1.0 - x,
}
SPARSE = {"bias_last_k": 5, "weight_ratios": {3: 1, 4: 1}}  # conv2 and the classifier


def keras_finetune(model, xd, yd, xt, yt, epochs: int) -> float:
    """Float32 SGD at batch 1 on the same parameters as the device; returns held-out accuracy."""
    import keras
    import tensorflow as tf

    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    layers = {layer.name: layer for layer in m.layers}
    train = [layers["conv2"].kernel, layers["classifier"].kernel, layers["bn0"].beta,
             layers["dw1"].bias, layers["pw1"].bias, layers["conv2"].bias, layers["classifier"].bias]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps = epochs * len(xd)
    sched = keras.optimizers.schedules.CosineDecay(LR, steps)

    @tf.function
    def step(x, y, lr):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, m(x, training=False))
        for v, g in zip(train, tape.gradient(loss, train)):
            v.assign_sub(lr * g)
        return loss

    rng = np.random.default_rng(0)  # the order HostSimulator.fit uses
    k = 0
    for _ in range(epochs):
        for i in rng.permutation(len(xd)):
            step(xd[i:i + 1], yd[i:i + 1], tf.constant(float(sched(k)), tf.float32))
            k += 1
    return float(np.mean(np.argmax(m.predict(xt, verbose=0), -1) == yt))


def device_finetune(model, calib, xd, yd, xt, yt, epochs: int, qas: bool,
                    backward: str, narrow: bool = True) -> tuple[float, float]:
    """(before, after) held-out accuracy of the simulated device."""
    import tfmicro_train as tmt

    steps = epochs * len(xd)
    art = tmt.convert(model, calib, update=tmt.SparseUpdate(**SPARSE), qas=qas, backward=backward,
                      optimizer=tmt.SGD(LR, schedule="cosine", decay_steps=steps),
                      narrow_biases=narrow)
    sim = tmt.HostSimulator(art)
    before = sim.evaluate(xt, yt)
    sim.fit(xd, yd, epochs=epochs)
    return before, sim.evaluate(xt, yt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one task, one epoch")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    from tfmicro_train.demo import digits_data, pretrain, small_cnn

    epochs = 1 if args.quick else args.epochs
    tasks = dict(list(TASKS.items())[:1]) if args.quick else TASKS
    (xp, yp), (xd, yd), (xt, yt) = digits_data()
    model = pretrain(small_cnn(), xp, yp)
    calib = [xp[i:i + 1] for i in range(100)]
    cols = ["before", "Keras fp32", "int8+QAS", "int8+QAS int32 biases", "int8 no QAS",
            "fp32 backward"]
    rows = []
    t0 = time.time()
    for name, fn in tasks.items():
        xd_t, xt_t = np.ascontiguousarray(fn(xd)), np.ascontiguousarray(fn(xt))
        before, qas = device_finetune(model, calib, xd_t, yd, xt_t, yt, epochs, True, "int8")
        _, wide = device_finetune(model, calib, xd_t, yd, xt_t, yt, epochs, True, "int8", False)
        _, noqas = device_finetune(model, calib, xd_t, yd, xt_t, yt, epochs, False, "int8")
        _, fp32 = device_finetune(model, calib, xd_t, yd, xt_t, yt, epochs, True, "fp32")
        ref = keras_finetune(model, xd_t, yd, xt_t, yt, epochs)
        rows.append((name, [before, ref, qas, wide, noqas, fp32]))
        print(f"  {name}: done ({time.time() - t0:.0f} s)", file=sys.stderr)
    mean = np.mean([r[1] for r in rows], axis=0)
    rows.append(("mean", list(mean)))
    print(f"\nHeld-out accuracy after {epochs} epoch(s) of batch-1 fine-tuning ({len(xd)} samples "
          f"each), same sparse update, lr {LR} cosine, same sample order")
    print(f"| task | {' | '.join(cols)} |")
    print("|---" * (len(cols) + 1) + "|")
    for name, vals in rows:
        print(f"| {name} | " + " | ".join(f"{v:.1%}" for v in vals) + " |")
    print(f"int8+QAS vs Keras fp32 (mean): {100 * (mean[2] - mean[1]):+.1f} points; int16 vs int32 "
          f"biases: {100 * (mean[2] - mean[3]):+.1f} points; fp32 backward vs Keras fp32: "
          f"{100 * (mean[5] - mean[1]):+.1f} points")
    _plot(rows, cols, os.path.join(ROOT, "benchmarks", "out", "accuracy.png"))


def _plot(rows, cols, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(cols)
    for k, col in enumerate(cols):
        ax.bar(np.arange(len(rows)) + k * width, [100 * r[1][k] for r in rows], width, label=col)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, [r[0] for r in rows])
    ax.set_ylabel("held-out accuracy %")
    ax.set_ylim(0, 118)
    ax.set_title("batch-1 fine-tuning on shifted digits: float Keras vs int8 on device")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
