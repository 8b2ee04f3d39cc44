"""tfmicro-train: on-device training for TensorFlow Lite Micro.

    import tfmicro_train as tmt
    art = tmt.convert(keras_model, representative_data=calib, update="last")
    art.save("model_train.tflite")
    sim = tmt.HostSimulator(art)
    loss = sim.train_step(x, y)
"""

from .api import SGD, MemoryReport, TrainingModel, convert
from .simulator import HostSimulator
from .sparse import SparseUpdate

__all__ = ["SGD", "HostSimulator", "MemoryReport", "SparseUpdate", "TrainingModel", "convert"]
__version__ = "0.1.0"
