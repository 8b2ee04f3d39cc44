"""tfmicro-train: on-device training for TensorFlow Lite Micro.

    import tfmicro_train as tmt
    art = tmt.convert(keras_model, representative_data=calib, update="last")
    art.save("model_train.tflite")
    sim = tmt.HostSimulator(art)
    loss = sim.train_step(x, y)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .api import SGD, MemoryReport, TrainingModel, convert  # noqa: E402
from .search import SparsePlan, contribution_analysis, plan_sparse_update  # noqa: E402
from .simulator import HostSimulator  # noqa: E402
from .sparse import SparseUpdate  # noqa: E402

__all__ = ["SGD", "HostSimulator", "MemoryReport", "SparsePlan", "SparseUpdate", "TrainingModel",
           "contribution_analysis", "convert", "plan_sparse_update"]
__version__ = "0.1.0"
