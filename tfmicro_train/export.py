"""Export the forward pass of a training artifact, with given parameter values, as a plain model.

The result uses builtin ops only (no variable tensors, no TMT_* ops): the fine-tuned network as an
ordinary int8 TFLite model for any interpreter.
"""

from __future__ import annotations

import flatbuffers
import numpy as np

from .schema import TENSOR_DTYPES, fb, op_name

LOSS_OPS = ("TMT_SOFTMAX_CE_GRAD", "TMT_MSE_GRAD")


def inference_model(artifact: bytes, values: dict[str, np.ndarray]) -> bytes:
    """The artifact's forward operators with every variable tensor replaced by a constant holding
    `values[name]` (the trainable parameters by tensor name)."""
    from .fuse import unfuse_model

    m = fb.ModelT.InitFromPackedBuf(artifact, 0)
    sg = m.subgraphs[0]
    for tensor in sg.tensors:  # narrow biases: their values, for the int32 bias unfuse computes
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
        if tensor.isVariable and tensor.type == fb.TensorType.INT16 and name in values:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.asarray(values[name], "<i2").tobytes(), np.uint8).copy()
            m.buffers.append(buf)
            tensor.buffer = len(m.buffers) - 1
    unfuse_model(m)  # row-streamed blocks back to the builtin chains they stand for
    sg = m.subgraphs[0]
    forward = []
    for op in sg.operators:
        name = op_name(m, op)
        if name in LOSS_OPS:  # the forward pass ends where the loss begins
            break
        if not name.startswith("TMT_"):  # TMT_INIT, TMT_MASK_PACK: training-only work
            forward.append(op)
    used: list[int] = []
    for t in [int(sg.inputs[0]), int(sg.outputs[0])] + [int(t) for op in forward
                                                         for t in (*op.inputs, *op.outputs)]:
        if t >= 0 and t not in used:
            used.append(t)
    for t in used:
        tensor = sg.tensors[t]
        if tensor.isVariable:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(values[name]).tobytes(), np.uint8).copy()
            m.buffers.append(buf)
            tensor.buffer = len(m.buffers) - 1
            tensor.isVariable = False
    forward = _fold_constant_concats(m, sg, forward)
    read = {int(u) for op in forward for u in (*op.inputs, *op.outputs)}
    read |= {int(sg.inputs[0]), int(sg.outputs[0])}
    used = [t for t in used if t in read]  # a folded CONCATENATION's inputs are gone
    remap = {t: i for i, t in enumerate(used)}
    for op in forward:
        op.inputs = np.array([remap[int(t)] if t >= 0 else -1 for t in op.inputs], np.int32)
        op.outputs = np.array([remap[int(t)] for t in op.outputs], np.int32)
    sg.tensors = [sg.tensors[t] for t in used]
    sg.inputs = np.array([remap[int(sg.inputs[0])]], np.int32)
    sg.outputs = np.array([remap[int(sg.outputs[0])]], np.int32)
    sg.operators = forward
    m.metadata = None
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _fold_constant_concats(m: fb.ModelT, sg, ops: list) -> list:
    """Compute every CONCATENATION whose inputs are all constant (the two parts of a sliced
    layer's weights, once the trained slice is a constant) into a constant tensor; returns the
    other operators."""
    out = []
    for op in ops:
        ins = [int(t) for t in op.inputs]
        if op_name(m, op) != "CONCATENATION" or not all(
                sg.tensors[t].buffer > 0 and m.buffers[sg.tensors[t].buffer].data is not None
                for t in ins):
            out.append(op)
            continue
        parts = [np.frombuffer(bytes(bytearray(m.buffers[sg.tensors[t].buffer].data)),
                               TENSOR_DTYPES[sg.tensors[t].type]).reshape(
                                   [int(d) for d in sg.tensors[t].shape]) for t in ins]
        y = sg.tensors[int(op.outputs[0])]
        buf = fb.BufferT()
        data = np.concatenate(parts, axis=int(op.builtinOptions.axis))
        buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8).copy()
        m.buffers.append(buf)
        y.buffer = len(m.buffers) - 1
    return out
