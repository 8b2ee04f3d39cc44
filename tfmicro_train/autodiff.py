"""Stage 2: compile-time reverse-mode autodiff of the int8 graph, pruned to what trains.

Adds the loss, the resource variables of the trainable parameters, and the backward TMT_* nodes in
reverse execution order. A tensor gets a gradient only if a trainable parameter lies upstream of it,
so frozen parts of the network get no backward node and keep no extra activation.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node, Tensor, Variable
from .schema import fb
from .sparse import LayerTraining

F32 = np.dtype(np.float32)
I32 = np.dtype(np.int32)
I8 = np.dtype(np.int8)
SLICEABLE = ("CONV_2D", "FULLY_CONNECTED")  # output channels are leading, contiguous rows
ACT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D")


def _opts(node: Node):
    return node.options[1] if isinstance(node.options, tuple) else None


def _qparams(t: Tensor) -> tuple[float, int]:
    return float(t.scale[0]), int(t.zero_point[0])


def activation_bounds(node: Node, out: Tensor) -> tuple[int, int] | None:
    """(act_min, act_max) of a fused ReLU/ReLU6/ReLU_N1_TO_1 for the mask, or None."""
    opts = _opts(node)
    act = getattr(opts, "fusedActivationFunction", fb.ActivationFunctionType.NONE)
    if act == fb.ActivationFunctionType.NONE:
        return None
    s, zp = _qparams(out)
    lo_hi = {fb.ActivationFunctionType.RELU: (0.0, None),
             fb.ActivationFunctionType.RELU6: (0.0, 6.0),
             fb.ActivationFunctionType.RELU_N1_TO_1: (-1.0, 1.0)}.get(act)
    if lo_hi is None:
        raise ValueError(f"fused activation {act} of {node.op} has no backward pass")
    lo = max(-128, zp + int(round(lo_hi[0] / s)))
    hi = 128 if lo_hi[1] is None else min(127, zp + int(round(lo_hi[1] / s)))
    return lo, hi


def same_padding(in_size: int, out_size: int, filt: int, stride: int, padding: int) -> int:
    """TFLite's leading pad for SAME (0 for VALID)."""
    if padding != fb.Padding.SAME:
        return 0
    return max(0, (out_size - 1) * stride + filt - in_size) // 2


class _Builder:
    def __init__(self, g: Graph, qas: bool, seed: int, fp32: bool = False):
        self.g, self.qas, self.seed, self.fp32 = g, qas, seed, fp32
        self.grads: dict[int, list[tuple[int, int]]] = {}
        self.backward: list[Node] = []
        self.updates = 0

    def emit(self, op: str, inputs: list[int], outputs: list[int], options: dict, layer: str | None,
             role: str = "backward") -> None:
        self.backward.append(Node(op, inputs, outputs, options, 1, layer, role))

    def grad_tensor(self, like: int, tag: str) -> tuple[int, int]:
        """(data, scale) of a new gradient: int8 + float32 scale, or float32 and no scale (-1)."""
        t = self.g.tensors[like]
        if self.fp32:
            return self.g.add(Tensor(f"tmt/grad/{tag}/{t.name}", t.shape, F32)), -1
        data = self.g.add(Tensor(f"tmt/grad/{tag}/{t.name}", t.shape, I8))
        scale = self.g.add(Tensor(f"tmt/grad_scale/{tag}/{t.name}", (1,), F32))
        return data, scale

    def contribute(self, tensor: int, grad: tuple[int, int]) -> None:
        self.grads.setdefault(tensor, []).append(grad)

    def total(self, tensor: int, lr: int, layer: str | None) -> tuple[int, int] | None:
        """The summed gradient of a tensor (TMT_GRAD_ADD for several contributions)."""
        parts = self.grads.pop(tensor, None)
        if not parts:
            return None
        acc = parts[0]
        for k, part in enumerate(parts[1:]):
            out = self.grad_tensor(tensor, f"sum{k}")
            self.emit("TMT_GRAD_ADD", [acc[0], acc[1], part[0], part[1], lr], _outs(out), {}, layer)
            acc = out
        return acc

    def seed_for_update(self) -> int:
        self.updates += 1
        return (self.seed * 1000003 + self.updates * 7919) & 0x7FFFFFFF


def _outs(grad: tuple[int, int]) -> list[int]:
    """Output list of a gradient: data and scale, or data alone (fp32)."""
    return [t for t in grad if t >= 0]


def _make_variable(g: Graph, op_index: int, slot: int, kind: str, layer: str, channels: int,
                   bias_scale: np.ndarray | None) -> Variable:
    node = g.nodes[op_index]
    idx = node.inputs[slot] if slot < len(node.inputs) else -1
    if idx < 0:  # the converter dropped an all-zero bias: create it
        co = g.tensors[node.outputs[0]].shape[-1]
        idx = g.add(Tensor(f"{layer}/bias", (co,), I32, bias_scale.astype(np.float32),
                           np.zeros(co, np.int64), 0, np.zeros(co, np.int32)))
        while len(node.inputs) <= slot:
            node.inputs.append(-1)
    init = g.tensors[idx]
    if init.data is None:
        raise ValueError(f"layer '{layer}': its {kind} are not constant in the converted graph")
    name = f"tmt/{layer}/{kind}"
    co = init.shape[0]
    if kind == "weights" and node.op in SLICEABLE and channels < co:
        return _sliced_variable(g, op_index, init, name, layer, channels)
    # the initial values are only copied by TMT_INIT: no quantization parameters needed in flash
    idx = g.add(Tensor(name + "/init", init.shape, init.dtype, data=init.data))
    value = g.add(Tensor(name, init.shape, init.dtype, init.scale, init.zero_point, init.qdim,
                         variable=True))
    node.inputs[slot] = value
    return Variable(name, layer, kind, idx, value, channels, op_index, slot)


def _sliced_variable(g: Graph, op_index: int, init: Tensor, name: str, layer: str,
                     n: int) -> Variable:
    """Only the first n output channels of the weights live in SRAM; a CONCATENATION joins them
    with the frozen rest (flash) into a transient whole tensor right before the forward op."""
    node = g.nodes[op_index]
    scale = np.broadcast_to(np.asarray(init.scale, np.float32), (init.shape[0],))
    zero = np.zeros(1, np.int64)
    head = (n,) + init.shape[1:]
    idx = g.add(Tensor(name + "/init", head, init.dtype, data=init.data[:n].copy()))
    value = g.add(Tensor(name, head, init.dtype, scale[:n].copy(), np.zeros(n, np.int64), 0,
                         variable=True))
    # TFLM's int8 CONCATENATION only compares the first scale and zero point of its tensors
    frozen = g.add(Tensor(name + "/frozen", (init.shape[0] - n,) + init.shape[1:], init.dtype,
                          scale[:1].copy(), zero, 0, init.data[n:].copy()))
    full = g.add(Tensor(name + "/full", init.shape, init.dtype, init.scale, init.zero_point,
                        init.qdim))
    node.inputs[1] = full
    return Variable(name, layer, "weights", idx, value, n, op_index, 1, frozen, full)


def join_slices(g: Graph, var: Variable, tag: str | None = None) -> tuple[Node, int]:
    """A CONCATENATION node rebuilding the whole weight tensor of a sliced variable: into
    `var.full` (forward), or into a new tensor named by `tag` (backward)."""
    full = g.tensors[var.full]
    out = var.full if tag is None else g.add(
        Tensor(f"{var.name}/{tag}", full.shape, full.dtype, full.scale, full.zero_point, full.qdim))
    opts = fb.ConcatenationOptionsT()
    opts.axis = 0
    node = Node("CONCATENATION", [var.value, var.frozen], [out],
                (fb.BuiltinOptions.ConcatenationOptions, opts), 1, var.layer, "forward")
    return node, out


def _per_channel(t: Tensor, n: int) -> np.ndarray:
    s = np.asarray(t.scale, np.float64)
    return np.broadcast_to(s, (n,)).copy() if s.size == 1 else s


def differentiate(g: Graph, plan: list[LayerTraining], head: str, qas: bool, seed: int,
                  fp32: bool = False) -> Graph:
    """Add loss, variables and pruned backward nodes to the forward graph (in place).

    `fp32`: gradients are float32 tensors (docs/contract.md, "fp32 backward"), else int8 + scale."""
    b = _Builder(g, qas, seed, fp32)
    out_idx = g.outputs[0]
    lr = g.add(Tensor("learning_rate", (1,), F32))
    # --- variables
    train = {lt.layer.op_index: lt for lt in plan}
    for op_index, lt in train.items():
        node = g.nodes[op_index]
        node.layer = lt.layer.name
        co = g.tensors[node.outputs[0]].shape[-1]
        x_t = g.tensors[node.inputs[0]]
        s_w = _per_channel(g.tensors[node.inputs[1]], co)
        if lt.weight_channels:
            g.variables.append(_make_variable(g, op_index, 1, "weights", lt.layer.name,
                                              lt.weight_channels, None))
        if lt.bias:
            g.variables.append(_make_variable(g, op_index, 2, "bias", lt.layer.name, co,
                                              s_w * float(x_t.scale[0])))
    var_of = {(v.layer, v.kind): v for v in g.variables}
    g.state = g.add(Tensor("tmt/state", (2,), I32, variable=True))
    joins = {id(g.nodes[v.op_index]): join_slices(g, v)[0] for v in g.variables if v.full >= 0}
    init_inputs = [g.state] + [t for v in g.variables for t in (v.init, v.value)]
    g.nodes.insert(0, Node("TMT_INIT", init_inputs, [], {}, 1, None, "variable"))
    train = {i + 1: lt for i, lt in train.items()}  # operator indices moved by TMT_INIT
    # --- taint: tensors downstream of a trainable op
    tainted: set[int] = set()
    for i, node in enumerate(g.nodes):
        if i in train or any(t in tainted for t in node.inputs if t >= 0):
            tainted.update(node.outputs)
    # --- loss
    producer = g.producers()
    last = g.nodes[producer[out_idx]]
    if head == "softmax":
        if last.op != "SOFTMAX":
            raise ValueError("a classification model must end in a softmax")
        label = g.add(Tensor("label", (1,), I32))
        lut = np.array([-np.log((k + 0.5) / 256.0) for k in range(256)], np.float32)
        lut_t = g.add(Tensor("tmt/loss_lut", (256,), F32, data=lut))
        grad = b.grad_tensor(last.inputs[0], "loss")
        loss = g.add(Tensor("loss", (1,), F32))
        b.emit("TMT_SOFTMAX_CE_GRAD", [out_idx, label, lr, lut_t, g.state], [*_outs(grad), loss], {},
               None, "loss")
        b.contribute(last.inputs[0], grad)
        stop = producer[out_idx]
    else:
        label = g.like(out_idx, "target")
        grad = b.grad_tensor(out_idx, "loss")
        loss = g.add(Tensor("loss", (1,), F32))
        b.emit("TMT_MSE_GRAD", [out_idx, label, lr, g.state], [*_outs(grad), loss], {}, None, "loss")
        b.contribute(out_idx, grad)
        stop = len(g.nodes)
    g.inputs += [label, lr]
    g.outputs += [loss]
    # --- reverse pass
    for i in range(stop - 1, -1, -1):
        node = g.nodes[i]
        if not node.outputs or node.outputs[0] not in tainted:
            continue
        grad = b.total(node.outputs[0], lr, node.layer)
        if grad is None:
            continue
        _backward_node(b, node, i, grad, tainted, train, var_of, lr)
    for t, parts in b.grads.items():
        if parts and t not in g.inputs:
            raise ValueError(f"internal: gradient of tensor '{g.tensors[t].name}' was not consumed")
    _insert_forward(g, joins, _pack_masks(g, b.backward, lr))
    g.nodes.extend(b.backward)
    return g


def _pack_masks(g: Graph, backward: list[Node], lr: int) -> dict[int, list[Node]]:
    """Keep 1-bit masks instead of int8 activations where a mask is all the backward pass needs.

    Each TMT_ACT_GRAD whose `y` no other backward node reads becomes TMT_MASK_GRAD, fed by a
    TMT_MASK_PACK placed right after y's producer in the forward pass, so y dies as in inference.
    Returns the packs by the index of the forward node they follow.
    """
    producer = g.producers()
    packs: dict[int, list[Node]] = {}
    for node in backward:
        if node.op != "TMT_ACT_GRAD":
            continue
        y = node.inputs[1]
        if y in g.outputs or any(y in n.inputs for n in backward if n is not node):
            continue
        n_bytes = (int(np.prod(g.tensors[y].shape)) + 7) // 8
        bits = g.add(Tensor(f"tmt/mask/{g.tensors[y].name}", (n_bytes,), np.dtype(np.uint8)))
        packs.setdefault(producer[y], []).append(
            Node("TMT_MASK_PACK", [y, lr], [bits], dict(node.options), layer=node.layer))
        node.op, node.inputs, node.options = "TMT_MASK_GRAD", [node.inputs[0], bits, lr], {}
    return packs


def _insert_forward(g: Graph, before: dict[int, Node], after: dict[int, list[Node]]) -> None:
    """Place forward-phase nodes: `before[id(node)]` right before a node (sliced weights joined
    for their use), `after[index]` right after the node at that index (mask packs)."""
    nodes = []
    for i, node in enumerate(g.nodes):
        if id(node) in before:
            nodes.append(before[id(node)])
        nodes.append(node)
        nodes.extend(after.get(i, []))
    g.nodes = nodes


def _backward_node(b: _Builder, node: Node, index: int, grad: tuple[int, int],
                   tainted: set[int], train: dict, var_of: dict, lr: int) -> None:
    g = b.g
    out = node.outputs[0]
    x = node.inputs[0] if node.inputs else -1
    where = f"{node.op} (operator {index}{', layer ' + repr(node.layer) if node.layer else ''})"
    gd, gs = grad
    if node.op in ACT_OPS:
        bounds = activation_bounds(node, g.tensors[out])
        if bounds is not None:
            masked = g.like(gd, g.tensors[gd].name + "/masked")
            b.emit("TMT_ACT_GRAD", [gd, out, lr], [masked],
                   {"act_min": bounds[0], "act_max": bounds[1]}, node.layer)
            gd = masked
    opts = _opts(node)
    if node.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        _conv_backward(b, node, index, (gd, gs), tainted, train, var_of, lr, where)
    elif node.op == "ADD":
        for inp in node.inputs:
            if inp in tainted:
                b.contribute(inp, (gd, gs))
    elif node.op in ("QUANTIZE", "DEQUANTIZE") and x in tainted:
        b.contribute(x, (gd, gs))
    elif node.op == "RESHAPE" and x in tainted:
        dst = g.like(gd, f"tmt/grad/reshape/{g.tensors[x].name}")
        g.tensors[dst].shape = g.tensors[x].shape
        b.emit("TMT_RESHAPE_GRAD", [gd, lr], [dst], {}, node.layer)
        b.contribute(x, (dst, gs))
    elif node.op == "MEAN" and x in tainted:
        axes = g.tensors[node.inputs[1]].data
        xs = g.tensors[x].shape
        if len(xs) != 4 or sorted(int(a) % 4 for a in np.ravel(axes)) != [1, 2]:
            raise ValueError(f"{where}: only a spatial mean (GlobalAveragePooling2D) can be trained through")
        dst = b.grad_tensor(x, "mean")
        b.emit("TMT_MEAN_GRAD", [gd, gs, lr], _outs(dst),
               {"inv_count": float(np.float32(1.0) / np.float32(xs[1] * xs[2]))}, node.layer)
        b.contribute(x, dst)
    elif node.op in ("PAD", "PADV2") and x in tainted:
        pads = np.asarray(g.tensors[node.inputs[1]].data).reshape(-1, 2)
        if pads[0].any() or pads[3].any():
            raise ValueError(f"{where}: only spatial padding can be trained through")
        if node.op == "PADV2":
            value = g.tensors[node.inputs[2]].data
            if int(np.ravel(value)[0]) != int(g.tensors[x].zero_point[0]):
                raise ValueError(f"{where}: only zero padding can be trained through")
        dst = g.like(gd, f"tmt/grad/pad/{g.tensors[x].name}")
        g.tensors[dst].shape = g.tensors[x].shape
        b.emit("TMT_PAD_GRAD", [gd, lr], [dst],
               {"pad_top": int(pads[1, 0]), "pad_left": int(pads[2, 0])}, node.layer)
        b.contribute(x, (dst, gs))
    elif node.op in ("AVERAGE_POOL_2D", "MAX_POOL_2D") and x in tainted:
        xs, ys = g.tensors[x].shape, g.tensors[out].shape
        geom = {"filter_h": opts.filterHeight, "filter_w": opts.filterWidth,
                "stride_h": opts.strideH, "stride_w": opts.strideW,
                "pad_top": same_padding(xs[1], ys[1], opts.filterHeight, opts.strideH, opts.padding),
                "pad_left": same_padding(xs[2], ys[2], opts.filterWidth, opts.strideW, opts.padding)}
        dst = b.grad_tensor(x, "pool")
        if node.op == "AVERAGE_POOL_2D":
            b.emit("TMT_AVGPOOL_GRAD", [gd, gs, lr], _outs(dst), geom, node.layer)
        else:
            b.emit("TMT_MAXPOOL_GRAD", [gd, gs, x, out, lr], _outs(dst), geom, node.layer)
        b.contribute(x, dst)
    elif any(t in tainted for t in node.inputs if t >= 0):
        raise ValueError(f"{where}: training through this operator is not supported; freeze the "
                         "layers before it (train only layers after it)")


def _conv_backward(b: _Builder, node: Node, index: int, grad: tuple[int, int], tainted: set[int],
                   train: dict, var_of: dict, lr: int, where: str) -> None:
    g = b.g
    gd, gs = grad
    x, w_idx, out = node.inputs[0], node.inputs[1], node.outputs[0]
    xt, wt, yt = g.tensors[x], g.tensors[w_idx], g.tensors[out]
    opts = _opts(node)
    dw = node.op == "DEPTHWISE_CONV_2D"
    co = yt.shape[-1]
    if node.op == "FULLY_CONNECTED":
        geom = {"stride_h": 1, "stride_w": 1, "pad_top": 0, "pad_left": 0}
    else:
        if opts.dilationHFactor != 1 or opts.dilationWFactor != 1:
            raise ValueError(f"{where}: dilated convolutions cannot be trained through")
        kh, kw = wt.shape[1], wt.shape[2]
        geom = {"stride_h": opts.strideH, "stride_w": opts.strideW,
                "pad_top": same_padding(xt.shape[1], yt.shape[1], kh, opts.strideH, opts.padding),
                "pad_left": same_padding(xt.shape[2], yt.shape[2], kw, opts.strideW, opts.padding)}
    if dw and wt.shape[3] != xt.shape[3]:
        raise ValueError(f"{where}: depthwise multiplier must be 1 to train through")
    s_w = _per_channel(wt, co)
    s_x = float(xt.scale[0])
    lt = train.get(index)
    sliced = var_of.get((lt.layer.name, "weights")) if lt is not None else None
    if x in tainted and sliced is not None and sliced.frozen >= 0:
        join, w_idx = join_slices(g, sliced, "full_backward")  # the whole, current weights
        join.role = "backward"
        b.backward.append(join)
    if x in tainted:
        dst = b.grad_tensor(x, "input")
        if b.fp32:  # the real per-channel weight scales
            wmul_t = g.add(Tensor(f"tmt/wscale/{wt.name}", (co,), F32, data=s_w.astype(np.float32)))
            opts_in = dict(geom)
        else:
            wmul = np.clip(np.round(s_w / s_w.max() * 32768.0), 1, 32768).astype(np.int32)
            wmul_t = g.add(Tensor(f"tmt/wmul/{wt.name}", (co,), I32, data=wmul))
            opts_in = dict(geom, w_scale_max=float(np.float32(s_w.max())))
        b.emit("TMT_DW_INPUT_GRAD" if dw else "TMT_CONV_INPUT_GRAD",
               [gd, gs, w_idx, wmul_t, lr], _outs(dst), opts_in, node.layer)
        b.contribute(x, dst)
    if lt is None:
        return
    layer = lt.layer.name
    if lt.weight_channels:
        var = var_of[(layer, "weights")]
        f = s_x / s_w if b.qas else s_x * s_w
        f_t = g.add(Tensor(f"tmt/wfactor/{layer}", (co,), F32, data=f.astype(np.float32)))
        b.emit("TMT_DW_WEIGHT_UPDATE" if dw else "TMT_CONV_WEIGHT_UPDATE",
               [gd, gs, x, var.value, f_t, lr, g.state], [],
               dict(geom, x_zero_point=int(xt.zero_point[0]), update_channels=var.channels,
                    seed=b.seed_for_update()), layer, "update")
    if lt.bias:
        var = var_of[(layer, "bias")]
        f = 1.0 / (s_w * s_x) if b.qas else s_w * s_x
        f_t = g.add(Tensor(f"tmt/bfactor/{layer}", (co,), F32, data=f.astype(np.float32)))
        b.emit("TMT_BIAS_UPDATE", [gd, gs, var.value, f_t, lr, g.state], [],
               {"update_channels": var.channels, "seed": b.seed_for_update()}, layer, "update")
