"""Graph passes: a pooled head without its H x W tensors.

A classifier head `conv (fused ReLU/ReLU6) -> global average pool` writes an H x W x C tensor y
that only the pool reads, and its backward pass broadcasts the pooled gradient back over H x W
(TMT_MEAN_GRAD) and masks it (TMT_MASK_GRAD) for the layer's input gradient and bias update. For
MobileNetV2's Conv_1 (4 x 4 x 1280) each of those tensors is 20 KB, and they set the step's peak.

`fold_pooled_outputs`: a TMT_CONV whose y only a TMT_MEAN (and the layer's TMT_MASK_PACK) read
computes the mean itself, a chunk of output channels over every pixel at a time (tflm_ops
core::ConvOpMean): its outputs become the pooled tensor and the packed mask; y no longer exists.

`fold_broadcast_grads`: a TMT_MEAN_GRAD whose broadcast gradient (after TMT_MASK_GRAD, if any)
only TMT_CONV_INPUT_GRAD and int8 TMT_BIAS_UPDATE read is folded into those readers: they read
the pooled gradient g [C] and its scale with the options g_bcast_h / g_bcast_w (the broadcast
extent; TMT_MEAN_GRAD's inv_count is float32 1 / (h * w), `broadcast_inv`), and the packed mask
as input GRAD_MASK (-1: none). They compute exactly what they computed on the broadcast, masked
tensor (kernels/training_ops.py `broadcast_grad` is the contract).

Both run last in `schedule.lower` (after narrow biases, which read y's scale).
"""

from __future__ import annotations

import numpy as np

from .fuse import _drop_tensors
from .graph import Graph, Node
from .kernels import conv_ops
from .kernels.training_ops import broadcast_inv

# C++ ConvOpMean's chunk buffer holds kMeanChunkBytes int8: at least one channel of every pixel
MAX_MEAN_PIXELS = 512
GRAD_MASK = 6  # input slot of the packed mask in TMT_CONV_INPUT_GRAD and TMT_BIAS_UPDATE
_BCAST_READERS = ("TMT_CONV_INPUT_GRAD", "TMT_BIAS_UPDATE")


def _readers(g: Graph) -> dict[int, list[Node]]:
    """tensor -> the nodes reading it (each once)."""
    out: dict[int, list[Node]] = {}
    for n in g.nodes:
        for t in dict.fromkeys(n.inputs):
            if t >= 0:
                out.setdefault(t, []).append(n)
    return out


def fold_pooled_outputs(g: Graph) -> Graph:
    """Each TMT_CONV (kind CONV_2D) whose output y only a TMT_MEAN and TMT_MASK_PACK read
    writes the mean (and the mask) instead of y (in place; returns g)."""
    readers = _readers(g)
    producer = {t: n for n in g.nodes for t in n.outputs}
    drop: set[int] = set()
    dead: set[int] = set()
    for m in g.nodes:
        if m.op != conv_ops.MEAN_OP_NAME or m.role != "forward":
            continue
        y = m.inputs[0]
        c = producer.get(y)
        if c is None or c.op != conv_ops.OP_NAME or c.options.get("kind") != 0 or y in g.outputs:
            continue
        yt = g.tensors[y]
        if len(yt.shape) != 4 or yt.shape[1] * yt.shape[2] > MAX_MEAN_PIXELS:
            continue
        others = [n for n in readers.get(y, []) if n is not m]
        packs = [n for n in others if n.op == "TMT_MASK_PACK"]
        if len(others) != len(packs) or len(packs) > 1 or (packs and len(c.outputs) > 1):
            continue
        pooled = g.tensors[m.outputs[0]]
        count = int(yt.shape[1] * yt.shape[2])
        mm = conv_ops.mean_multiplier(float(np.ravel(yt.scale)[0]),
                                      float(np.ravel(pooled.scale)[0]), count)
        if mm is None:
            continue
        o = dict(c.options, mean=1, y_h=int(yt.shape[1]), y_w=int(yt.shape[2]),
                 y_scale=float(np.float32(np.ravel(yt.scale)[0])),
                 y_zp=int(np.ravel(yt.zero_point)[0]), pooled_zp=int(np.ravel(pooled.zero_point)[0]),
                 mean_multiplier=int(mm[0]), mean_shift=int(mm[1]),
                 mean_keep_dims=int(m.options.get("keep_dims", 0)),
                 mean_version=int(m.options.get("version", 1)))
        outputs = [m.outputs[0]]
        if packs:
            p = packs[0]
            outputs.append(p.outputs[0])
            o.update(mask_min=int(p.options["act_min"]), mask_max=int(p.options["act_max"]))
            drop.add(id(p))
        elif len(c.outputs) > 1:
            outputs.append(c.outputs[1])
        c.outputs, c.options = outputs, o
        drop.add(id(m))
        dead.add(y)
    g.nodes = [n for n in g.nodes if id(n) not in drop]
    _drop_tensors(g, dead)
    return g


def fold_broadcast_grads(g: Graph) -> Graph:
    """Fold each TMT_MEAN_GRAD (and its TMT_MASK_GRAD) into the readers of the broadcast
    gradient when those are TMT_CONV_INPUT_GRAD / int8 TMT_BIAS_UPDATE only (in place)."""
    readers = _readers(g)
    drop: set[int] = set()
    dead: set[int] = set()
    for mg in g.nodes:
        if mg.op != "TMT_MEAN_GRAD" or g.tensors[mg.inputs[0]].dtype != np.int8:
            continue
        gb, sb = mg.outputs
        shape = g.tensors[gb].shape
        if len(shape) != 4:
            continue
        grad, mask, folded = gb, -1, [mg]
        users = readers.get(gb, [])
        if len(users) == 1 and users[0].op == "TMT_MASK_GRAD" and users[0].inputs[0] == gb:
            k = users[0]
            grad, mask = k.outputs[0], k.inputs[1]
            folded.append(k)
            users = readers.get(grad, [])
        if not users or any(u.op not in _BCAST_READERS or u.inputs[0] != grad
                            or u.inputs[1] != sb for u in users):
            continue
        ids = {id(u) for u in users}
        if any(id(u) not in ids for u in readers.get(sb, [])):  # the scale: these readers only
            continue
        if np.float32(mg.options["inv_count"]) != broadcast_inv(shape[1], shape[2]):
            continue
        for u in users:
            ins = list(u.inputs) + [-1] * max(0, GRAD_MASK + 1 - len(u.inputs))
            ins[0], ins[1], ins[GRAD_MASK] = mg.inputs[0], mg.inputs[1], mask
            u.inputs = ins
            u.options = dict(u.options, g_bcast_h=int(shape[1]), g_bcast_w=int(shape[2]))
        drop.update(id(n) for n in folded)
        dead.update(t for n in folded for t in n.outputs)
    g.nodes = [n for n in g.nodes if id(n) not in drop]
    _drop_tensors(g, dead)
    return g
