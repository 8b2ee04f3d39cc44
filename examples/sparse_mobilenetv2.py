"""The MIT paper's 100 KB sparse scheme on MobileNetV2-w0.35 at 128x128: convert and inspect memory.

    python examples/sparse_mobilenetv2.py
"""

import numpy as np

import tfmicro_train as tmt
from tfmicro_train import zoo

model = zoo.mobilenetv2_w035(128)
calib = [np.random.default_rng(i).random((1, 128, 128, 3), np.float32) for i in range(8)]
scheme = tmt.SparseUpdate(bias_last_k=25, weight_ratios={27: 1, 30: 1, 33: 1, 36: 1, 39: 1,
                                                         42: 1 / 8, 45: 1 / 2, 48: 1})
art = tmt.convert(model, calib, update=scheme)
report = art.memory_report()
print(report)
print(art.summary())
print("memory over the step:", report.plot("mbv2_sparse_memory.png"))
sim = tmt.HostSimulator(art)
print("one training step, loss:", sim.train_step(calib[0], np.int32(3)))
