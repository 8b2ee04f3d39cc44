"""The TFLite flatbuffer schema (object API), as shipped with TensorFlow, and small helpers."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field

import numpy as np


def _load_schema():
    """TensorFlow's generated TFLite schema module, loaded from its file so that importing this
    package (e.g. only to simulate) does not import all of TensorFlow."""
    name = "tfmicro_train._tflite_schema"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tfmicro-train needs TensorFlow (pip install tensorflow-cpu)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "lite", "python",
                        "schema_py_generated.py")
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


fb = _load_schema()

BUILTIN_NAMES: dict[int, str] = {
    v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")
}
TENSOR_DTYPES: dict[int, np.dtype] = {
    fb.TensorType.FLOAT32: np.dtype(np.float32),
    fb.TensorType.INT32: np.dtype(np.int32),
    fb.TensorType.INT8: np.dtype(np.int8),
    fb.TensorType.UINT8: np.dtype(np.uint8),
    fb.TensorType.INT16: np.dtype(np.int16),
    fb.TensorType.INT64: np.dtype(np.int64),
    fb.TensorType.BOOL: np.dtype(np.bool_),
    fb.TensorType.RESOURCE: np.dtype(np.int32),
}
DTYPE_TO_TENSOR_TYPE: dict[np.dtype, int] = {
    np.dtype(np.float32): fb.TensorType.FLOAT32,
    np.dtype(np.int32): fb.TensorType.INT32,
    np.dtype(np.int8): fb.TensorType.INT8,
    np.dtype(np.uint8): fb.TensorType.UINT8,
    np.dtype(np.int16): fb.TensorType.INT16,
    np.dtype(np.int64): fb.TensorType.INT64,
}


@dataclass
class TensorInfo:
    """Shape, dtype and quantization of one tensor, as the kernels see it.

    `scale` and `zero_point` are 1-D arrays (length 1 for per-tensor quantization,
    one entry per channel along `quantized_dimension` otherwise); empty when unquantized.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    zero_point: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    quantized_dimension: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale.size > 0


def tensor_info(tensor: fb.TensorT) -> TensorInfo:
    """The `TensorInfo` of a flatbuffer tensor."""
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    info = TensorInfo(name, shape, TENSOR_DTYPES[tensor.type])
    q = tensor.quantization
    if q is not None and q.scale is not None and len(q.scale) > 0:
        info.scale = np.asarray(q.scale, np.float32)
        zp = q.zeroPoint if q.zeroPoint is not None else np.zeros(len(q.scale))
        info.zero_point = np.asarray(zp, np.int64)
        info.quantized_dimension = int(q.quantizedDimension)
    return info


def tensor_data(model: fb.ModelT, tensor: fb.TensorT) -> np.ndarray | None:
    """The constant data of a flatbuffer tensor (a copy), or None."""
    if tensor.buffer >= len(model.buffers):
        return None
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0:
        return None
    info = tensor_info(tensor)
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(), info.dtype).reshape(info.shape).copy()


def op_name(model: fb.ModelT, op: fb.OperatorT) -> str:
    """The builtin name (e.g. 'CONV_2D') or the custom code of an operator."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == fb.BuiltinOperator.CUSTOM:
        cc = code.customCode
        return cc.decode() if isinstance(cc, bytes) else str(cc)
    return BUILTIN_NAMES[builtin]
