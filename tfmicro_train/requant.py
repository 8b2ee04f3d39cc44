"""Graph pass: per-channel requantization of the builtin convolutions -> flash (TMT_CONV).

TFLite Micro's CONV_2D, DEPTHWISE_CONV_2D and per-channel FULLY_CONNECTED compute an output
multiplier and shift per output channel in Prepare and keep them in the persistent arena for good:
8 bytes per channel, tens of KB for the convolutions left in a MobileNetV2 training graph. This
pass replaces every int8 one of them by TMT_CONV (kernels/conv_ops.py, tflm_ops/core/conv_op.h),
which computes the same output bit for bit but reads those values from a constant int32 [2, C]
tensor the converter computes here exactly as TFLM's Prepare does (flash).

x, w and b keep their input slots, so the backward ops autodiff made (reading the same tensors)
are unaffected, and variable (trained) weights and biases and the CONCATENATION of sliced weights
work as before. It runs after autodiff and fusion (`convert(..., conv_ops=True)`, the default);
`restore_builtin_convs` (called by fuse.unfuse_model, so by export_tflite) turns the ops back
into the builtins for any TFLite interpreter.

The same pass turns every int8 global-average MEAN (over H and W of a [1, H, W, C] tensor) into
TMT_MEAN (kernels/conv_ops.py): the same output without the int32 scratch per output channel
that TFLM's MEAN holds in the arena during its Eval.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node, Tensor
from .kernels import conv_ops
from .schema import TensorInfo, fb

I8, I32 = np.dtype(np.int8), np.dtype(np.int32)


def _info(t: Tensor) -> TensorInfo:
    return TensorInfo(t.name, tuple(t.shape), t.dtype, np.asarray(t.scale, np.float32),
                      np.asarray(t.zero_point, np.int64), t.qdim)


def _act(t: Tensor) -> bool:
    """An int8 per-tensor quantized activation."""
    return t.dtype == I8 and t.scale is not None and np.size(t.scale) == 1 and t.data is None


def _convertible(g: Graph, n: Node) -> bool:
    """An int8 builtin the op reproduces: per-channel quantized weights (per-tensor too for the
    convolutions, which TFLM also requantizes per channel), non-grouped, depth multiplier 1."""
    if n.op not in conv_ops.KINDS or n.role != "forward" or len(n.outputs) != 1:
        return False
    if not isinstance(n.options, tuple) or n.options[1] is None or len(n.inputs) < 2:
        return False
    x, w, y = (g.tensors[t] for t in (n.inputs[0], n.inputs[1], n.outputs[0]))
    if not (_act(x) and _act(y)) or w.dtype != I8 or w.scale is None:
        return False
    if len(n.inputs) > 2 and n.inputs[2] >= 0 and g.tensors[n.inputs[2]].dtype != I32:
        return False
    act = n.options[1].fusedActivationFunction
    if act not in (0, 1, 2, 3):  # NONE, RELU, RELU_N1_TO_1, RELU6
        return False
    if n.op == "FULLY_CONNECTED":
        if len(w.shape) != 2 or np.size(w.scale) != w.shape[0] or w.shape[0] < 2:
            return False  # per-tensor FC keeps one multiplier: nothing to gain
        if n.options[1].weightsFormat != 0 or n.options[1].asymmetricQuantizeInputs:
            return False
        ci, co = w.shape[1], w.shape[0]
        nx = int(np.prod(x.shape))
        return nx % ci == 0 and nx // ci * co == int(np.prod(y.shape))
    if len(x.shape) != 4 or x.shape[0] != 1 or len(w.shape) != 4 or len(y.shape) != 4:
        return False
    channels = w.shape[0] if n.op == "CONV_2D" else w.shape[3]
    if np.size(w.scale) not in (1, channels) or y.shape[3] != channels:
        return False
    if n.op == "CONV_2D":
        return w.shape[3] == x.shape[3]  # no grouped convolution
    return w.shape[0] == 1 and w.shape[3] == x.shape[3]  # depth multiplier 1


def flash_requant(g: Graph) -> Graph:
    """Replace every int8 per-channel CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED node by a
    TMT_CONV node reading its multipliers from a new constant tensor (in place; returns g)."""
    count = 0
    for i, n in enumerate(g.nodes):
        if not _convertible(g, n):
            continue
        x, w, y = n.inputs[0], n.inputs[1], n.outputs[0]
        channels = g.tensors[y].shape[-1]
        data = conv_ops.requant_params(_info(g.tensors[x]), _info(g.tensors[w]),
                                       _info(g.tensors[y]), channels)
        name = f"tmt/conv{count}/requant"
        rq = g.add(Tensor(name, (2, channels), I32, data=data))
        b = n.inputs[2] if len(n.inputs) > 2 else -1
        g.nodes[i] = Node(conv_ops.OP_NAME, [x, w, b, rq], [y],
                          conv_ops.options_of(n.op, n.options[1], n.version), 1, n.layer, n.role)
        count += 1
    for i, n in enumerate(g.nodes):
        if _mean_convertible(g, n):
            g.nodes[i] = Node(conv_ops.MEAN_OP_NAME, list(n.inputs[:2]), list(n.outputs),
                              {"keep_dims": int(bool(n.options[1].keepDims)),
                               "version": int(n.version)}, 1, n.layer, n.role)
    return g


def _mean_convertible(g: Graph, n: Node) -> bool:
    """An int8 MEAN over H and W of a [1, H, W, C] tensor (global average pooling) whose
    multiplier TMT_MEAN can hold."""
    if n.op != "MEAN" or n.role != "forward" or len(n.inputs) != 2 or len(n.outputs) != 1:
        return False
    if not isinstance(n.options, tuple) or n.options[1] is None:
        return False
    x, axis, y = (g.tensors[t] for t in (n.inputs[0], n.inputs[1], n.outputs[0]))
    if not (_act(x) and _act(y)) or len(x.shape) != 4 or x.shape[0] != 1:
        return False
    if axis.data is None or sorted(int(a) % 4 for a in np.ravel(axis.data)) != [1, 2]:
        return False
    if int(np.prod(y.shape)) != x.shape[3]:
        return False
    return conv_ops.mean_multiplier(float(np.ravel(x.scale)[0]), float(np.ravel(y.scale)[0]),
                                    x.shape[1] * x.shape[2]) is not None


def restore_builtin_convs(m: fb.ModelT, code) -> int:
    """Rewrite every TMT_CONV and TMT_MEAN operator of subgraph 0 of `m` (in place) as the
    builtin it stands for (TMT_CONV's `requant` input dropped; the tensor stays, unused and
    without data).
    `code(op, version)` returns the operator code index of a builtin. Returns the number of
    operators rewritten."""
    from flatbuffers import flexbuffers

    from .schema import op_name

    sg = m.subgraphs[0]
    rewritten = 0
    for op in sg.operators:
        if op_name(m, op) == conv_ops.MEAN_OP_NAME:
            o = flexbuffers.Loads(bytes(bytearray(op.customOptions)))
            opts = fb.ReducerOptionsT()
            opts.keepDims = bool(o.get("keep_dims", 0))
            op.opcodeIndex = code("MEAN", int(o.get("version", 1)))
            op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.ReducerOptions, opts
            op.customOptions, op.customOptionsFormat = None, 0
            rewritten += 1
            continue
        if op_name(m, op) != conv_ops.OP_NAME:
            continue
        o = flexbuffers.Loads(bytes(bytearray(op.customOptions)))
        name, kind, opts = conv_ops.builtin_of(o)
        rq = int(op.inputs[conv_ops.REQUANT])
        if rq >= 0 and sg.tensors[rq].buffer > 0:  # its data is no longer needed
            m.buffers[sg.tensors[rq].buffer].data = None
        ins = [int(t) for t in op.inputs[:conv_ops.REQUANT]]
        if ins[conv_ops.B] < 0:
            ins = ins[:conv_ops.B]
        op.opcodeIndex = code(name, int(o.get("version", 1)))
        op.inputs = np.array(ins, np.int32)
        op.builtinOptionsType, op.builtinOptions = kind, opts
        op.customOptions, op.customOptionsFormat = None, 0
        rewritten += 1
    return rewritten
