"""Fine-tune a small CNN on device (simulated): the library's default demo, spelled out.

    python examples/finetune_digits.py
"""

import numpy as np

import tfmicro_train as tmt
from tfmicro_train.demo import digits_data, pretrain, rotate, small_cnn

(x_pre, y_pre), (x_dev, y_dev), (x_test, y_test) = digits_data()
model = pretrain(small_cnn(), x_pre, y_pre)                 # float pretraining on upright digits

art = tmt.convert(
    model,
    representative_data=[x_pre[i:i + 1] for i in range(100)],
    update=tmt.SparseUpdate(bias_last_k=5, weight_ratios={3: 1, 4: 1}),
    optimizer=tmt.SGD(0.05, schedule="cosine", decay_steps=3 * len(x_dev)),
)
art.save("digits_train.tflite")
print(art.memory_report())
print(art.summary())

sim = tmt.HostSimulator(art)                               # the device, bit-exact
x_dev, x_test = rotate(x_dev), rotate(x_test)              # the device sees rotated digits
print(f"before: {sim.evaluate(x_test, y_test):.1%}")
for epoch in range(3):
    losses = [sim.train_step(x, y) for x, y in zip(x_dev, y_dev)]
    print(f"epoch {epoch + 1}: loss {np.mean(losses):.3f}, accuracy {sim.evaluate(x_test, y_test):.1%}")
open("digits_finetuned.tflite", "wb").write(sim.export_tflite())   # plain int8 model, any interpreter
