"""Stage 5: write the scheduled training graph as a TFLite flatbuffer (TFLite schema, object API).

One subgraph ("train_step"): TMT_INIT (copies the converted values of the trainable parameters
from flash into their variable tensors, once), the forward pass, the loss and the backward pass.
Custom options are flexbuffer maps. A "tmt_training" metadata entry (JSON) describes the inputs, outputs and
variables for host tools.
"""

from __future__ import annotations

import json

import flatbuffers
import numpy as np
from flatbuffers import flexbuffers

from .graph import Graph, Tensor
from .schema import DTYPE_TO_TENSOR_TYPE, fb

METADATA_KEY = "tmt_training"
OFFLINE_PLAN_KEY = "OfflineMemoryAllocation"
FILE_IDENTIFIER = b"TFL3"


class _Writer:
    def __init__(self) -> None:
        self.model = fb.ModelT()
        self.model.version = 3
        self.model.description = "tfmicro-train training artifact"
        self.model.buffers = [fb.BufferT()]
        self.model.operatorCodes = []
        self.model.subgraphs = []
        self.codes: dict[tuple[str, int], int] = {}

    def buffer(self, data: bytes) -> int:
        buf = fb.BufferT()
        buf.data = np.frombuffer(data, np.uint8).copy()
        self.model.buffers.append(buf)
        return len(self.model.buffers) - 1

    def opcode(self, op: str, version: int) -> int:
        key = (op, version)
        if key not in self.codes:
            code = fb.OperatorCodeT()
            if op.startswith("TMT_"):
                code.builtinCode = fb.BuiltinOperator.CUSTOM
                code.customCode = op
            else:
                code.builtinCode = getattr(fb.BuiltinOperator, op)
            code.deprecatedBuiltinCode = min(code.builtinCode, 127)
            code.version = version
            self.model.operatorCodes.append(code)
            self.codes[key] = len(self.model.operatorCodes) - 1
        return self.codes[key]

    def tensor(self, t: Tensor, const_buffers: dict[int, int], key: int) -> fb.TensorT:
        out = fb.TensorT()
        out.name = short_name(t.name)
        out.shape = np.array(t.shape, np.int32)
        out.type = DTYPE_TO_TENSOR_TYPE[np.dtype(t.dtype)]
        out.isVariable = t.variable
        out.buffer = 0
        if t.data is not None:
            if key not in const_buffers:
                const_buffers[key] = self.buffer(np.ascontiguousarray(t.data, t.dtype).tobytes())
            out.buffer = const_buffers[key]
        if t.scale is not None:
            q = fb.QuantizationParametersT()
            q.scale = np.asarray(t.scale, np.float32)
            q.zeroPoint = np.asarray(t.zero_point, np.int64)
            q.quantizedDimension = int(t.qdim)
            out.quantization = q
        return out


def short_name(name: str, limit: int = 48) -> str:
    """Tensor names cost flash: keep the first of the converter's fused names, at most `limit`
    characters (our own tmt/ names are kept whole)."""
    if name.startswith("tmt/"):
        return name
    first = name.split(";")[0]
    return first if len(first) <= limit else first[-limit:]


def _custom_options(options: dict) -> np.ndarray:
    return np.frombuffer(bytes(flexbuffers.Dumps(options)), np.uint8).copy()


def _operator(w: _Writer, node, remap: dict[int, int]) -> fb.OperatorT:
    op = fb.OperatorT()
    op.opcodeIndex = w.opcode(node.op, node.version)
    op.inputs = np.array([remap[t] if t >= 0 else -1 for t in node.inputs], np.int32)
    op.outputs = np.array([remap[t] for t in node.outputs], np.int32)
    if node.op.startswith("TMT_"):
        op.customOptions = _custom_options(node.options)
        op.customOptionsFormat = fb.CustomOptionsFormat.FLEXBUFFERS
    elif isinstance(node.options, tuple):
        op.builtinOptionsType, op.builtinOptions = node.options
    return op


def _subgraph(w: _Writer, g: Graph, name: str, nodes, inputs, outputs, const_buffers):
    used: list[int] = []
    seen: set[int] = set()
    for t in [*inputs, *outputs] + [t for n in nodes for t in (*n.inputs, *n.outputs)]:
        if t >= 0 and t not in seen:
            seen.add(t)
            used.append(t)
    remap = {t: i for i, t in enumerate(used)}
    w.used = used
    sg = fb.SubGraphT()
    sg.name = name
    sg.tensors = [w.tensor(g.tensors[t], const_buffers, t) for t in used]
    sg.inputs = np.array([remap[t] for t in inputs], np.int32)
    sg.outputs = np.array([remap[t] for t in outputs], np.int32)
    sg.operators = [_operator(w, n, remap) for n in nodes]
    w.model.subgraphs.append(sg)
    return remap


def emit(g: Graph, metadata: dict, offsets: dict[int, int] | None = None) -> bytes:
    """Serialize the scheduled graph to flatbuffer bytes; `offsets` (tensor -> arena offset) become
    TFLM's "OfflineMemoryAllocation" metadata (-1, planned online, for every other tensor)."""
    w = _Writer()
    _subgraph(w, g, "train_step", g.nodes, g.inputs, g.outputs, {})
    md = fb.MetadataT()
    md.name = METADATA_KEY
    md.buffer = w.buffer(json.dumps(metadata, sort_keys=True).encode())
    w.model.metadata = [md]
    if offsets is not None:
        plan = [offsets.get(t, -1) for t in w.used]
        md = fb.MetadataT()
        md.name = OFFLINE_PLAN_KEY
        md.buffer = w.buffer(np.array([1, 1, len(plan), *plan], "<i4").tobytes())
        w.model.metadata.append(md)
    builder = flatbuffers.Builder(1024)
    builder.Finish(w.model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def read_metadata(model: fb.ModelT) -> dict:
    """The tmt_training metadata of an artifact (raises ValueError if it is not one)."""
    for md in model.metadata or []:
        name = md.name.decode() if isinstance(md.name, bytes) else md.name
        if name == METADATA_KEY:
            return json.loads(bytes(bytearray(model.buffers[md.buffer].data)).decode())
    raise ValueError("this flatbuffer is not a tfmicro-train artifact (no tmt_training metadata)")
