"""Graph pass: frozen inverted-residual blocks -> one row-streamed TMT_FUSED_IRB forward op.

A chain

    [CONV_2D (expand) ->] [PAD/PADV2 ->] DEPTHWISE_CONV_2D -> CONV_2D 1x1 (project) [-> ADD(x)]

is fused when every op in it is frozen (a forward op without variable inputs, constant weights),
every intermediate tensor is read only inside the chain (no backward node, mask or other op reads
it, and it is no graph output), and the fused op needs no more memory than the chain did. The
residual ADD joins only if its other input is the chain input x. The "expand" may be any
(non-grouped) CONV_2D, e.g. the stem convolution before MobileNetV2's first depthwise.

The fused op (tfmicro_train/kernels/fused_ops.py, tflm_ops/core/fused_irb.h) keeps a ring of the
depthwise window's rows of the expansion and one pixel of depthwise output in its `scratch`
output, so the expanded tensor never exists; it computes bit for bit what the chain computed.
Every expansion row is computed once, so fusion costs no extra arithmetic. The scratch also has
room for the per-channel requantization multipliers, so the device need not keep them in SRAM
between invocations (see fused_irb.h).
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node, Tensor
from .kernels import fused_ops
from .schema import fb

ACTIVATIONS = (fb.ActivationFunctionType.NONE, fb.ActivationFunctionType.RELU,
               fb.ActivationFunctionType.RELU_N1_TO_1, fb.ActivationFunctionType.RELU6)
I8 = np.dtype(np.int8)


def _opts(node: Node):
    return node.options[1] if isinstance(node.options, tuple) else None


def _q(t: Tensor) -> tuple[float, int]:
    return float(np.float32(t.scale[0])), int(t.zero_point[0])


def _consumers(g: Graph) -> dict[int, list[int]]:
    """tensor index -> the indices of the nodes that read it (each once, in order)."""
    consumers: dict[int, list[int]] = {}
    for i, n in enumerate(g.nodes):
        for t in n.inputs:
            if t >= 0 and i not in consumers.setdefault(t, []):
                consumers[t].append(i)
    return consumers


class _Matcher:
    def __init__(self, g: Graph):
        self.g = g
        self.producer = g.producers()
        self.consumers = _consumers(g)
        self.outputs = set(g.outputs)
        self.taken: set[int] = set()

    def int8_act(self, t: int) -> bool:
        x = self.g.tensors[t]
        return (x.dtype == I8 and x.scale is not None and np.size(x.scale) == 1
                and x.data is None and not x.variable)

    def frozen(self, i: int) -> bool:
        """A forward op of the converted model whose parameters are constants."""
        n = self.g.nodes[i]
        if i in self.taken or n.role != "forward" or not n.outputs:
            return False
        return all(t < 0 or not self.g.tensors[t].variable for t in n.inputs)

    def only_for(self, t: int, i: int) -> bool:
        """Tensor t is an intermediate read by node i alone (and not a graph output)."""
        return t not in self.outputs and self.consumers.get(t, []) == [i]

    def params_ok(self, n: Node) -> bool:
        """Weights (and bias, if any) constant, per-channel or per-tensor symmetric int8."""
        w = self.g.tensors[n.inputs[1]]
        if w.data is None or w.dtype != I8 or w.scale is None or len(w.shape) != 4:
            return False
        if len(n.inputs) > 2 and n.inputs[2] >= 0:
            b = self.g.tensors[n.inputs[2]]
            if b.data is None or b.dtype != np.dtype(np.int32):
                return False
        return True

    def conv(self, i: int, pointwise: bool) -> bool:
        n = self.g.nodes[i]
        o = _opts(n)
        if n.op != "CONV_2D" or o is None or not self.params_ok(n) or len(n.outputs) != 1:
            return False
        if o.fusedActivationFunction not in ACTIVATIONS or not self.int8_act(n.outputs[0]):
            return False
        x, w = self.g.tensors[n.inputs[0]], self.g.tensors[n.inputs[1]]
        if len(x.shape) != 4 or x.shape[0] != 1 or w.shape[3] != x.shape[3]:  # no grouped conv
            return False
        if pointwise:
            return w.shape[1] == w.shape[2] == 1 and o.strideH == o.strideW == 1
        return True

    def match(self, d: int) -> tuple[list[int], Node, Tensor] | None:
        """The chain around depthwise node d as (chain nodes, fused node, scratch), or None."""
        g = self.g
        dn = g.nodes[d]
        do = _opts(dn)
        if dn.op != "DEPTHWISE_CONV_2D" or not self.frozen(d) or do is None:
            return None
        if not self.params_ok(dn) or do.fusedActivationFunction not in ACTIVATIONS:
            return None
        d_in, d_out = dn.inputs[0], dn.outputs[0]
        wd = g.tensors[dn.inputs[1]]
        if not (self.int8_act(d_in) and self.int8_act(d_out)):
            return None
        if wd.shape[0] != 1 or wd.shape[3] != g.tensors[d_in].shape[3]:  # multiplier 1
            return None
        chain = [d]
        # optional PAD before the depthwise
        src, pad_node = d_in, None
        p = self.producer.get(d_in)
        if (p is not None and g.nodes[p].op in ("PAD", "PADV2") and self.frozen(p)
                and self.only_for(d_in, d)):
            pn = g.nodes[p]
            pads = g.tensors[pn.inputs[1]].data
            value_ok = True
            if pn.op == "PADV2" and len(pn.inputs) > 2 and pn.inputs[2] >= 0:
                value_ok = g.tensors[pn.inputs[2]].data is not None
            if (pads is not None and np.asarray(pads).size == 8 and value_ok
                    and not np.asarray(pads).reshape(4, 2)[[0, 3]].any()
                    and self.int8_act(pn.inputs[0])):
                pad_node, src = p, pn.inputs[0]
                chain.insert(0, p)
        # optional expansion convolution
        first = chain[0]
        x, expand = src, None
        e = self.producer.get(src)
        if e is not None and self.frozen(e) and self.conv(e, False) and self.only_for(src, first):
            expand, x = e, g.nodes[e].inputs[0]
            chain.insert(0, e)
        if not self.int8_act(x) or len(g.tensors[x].shape) != 4 or g.tensors[x].shape[0] != 1:
            return None
        # projection
        cons = self.consumers.get(d_out, [])
        if len(cons) != 1 or not self.only_for(d_out, cons[0]):
            return None
        j = cons[0]
        if not (self.frozen(j) and self.conv(j, True)):
            return None
        chain.append(j)
        y = g.nodes[j].outputs[0]
        residual, add_act, add = 0, 0, None
        cons = self.consumers.get(y, [])
        if len(cons) == 1 and self.only_for(y, cons[0]) and self.frozen(cons[0]):
            an = g.nodes[cons[0]]
            ao = _opts(an)
            if (an.op == "ADD" and len(an.inputs) == 2 and x in an.inputs and y in an.inputs
                    and x != y and ao is not None and ao.fusedActivationFunction in ACTIVATIONS
                    and g.tensors[x].shape == g.tensors[y].shape == g.tensors[an.outputs[0]].shape
                    and self.int8_act(an.outputs[0])):
                add = cons[0]
                residual = 1 if an.inputs[0] == x else 2
                add_act = int(ao.fusedActivationFunction)
                chain.append(add)
        if len(set(chain)) != len(chain):
            return None
        return self.build(chain, x, expand, pad_node, d, j, add, residual, add_act)

    def build(self, chain, x, expand, pad_node, d, j, add, residual, add_act):
        g = self.g
        dn, jn = g.nodes[d], g.nodes[j]
        o: dict = {}

        def bias(n: Node) -> int:
            return n.inputs[2] if len(n.inputs) > 2 else -1

        inputs = [x, -1, -1, dn.inputs[1], bias(dn), jn.inputs[1], bias(jn)]
        w_expand_shape = None
        if expand is not None:
            en = g.nodes[expand]
            eo = _opts(en)
            inputs[1], inputs[2] = en.inputs[1], bias(en)
            w_expand_shape = g.tensors[en.inputs[1]].shape
            e_scale, e_zp = _q(g.tensors[en.outputs[0]])
            o.update(e_stride_h=eo.strideH, e_stride_w=eo.strideW, e_dil_h=eo.dilationHFactor,
                     e_dil_w=eo.dilationWFactor, e_padding=int(eo.padding),
                     e_act=int(eo.fusedActivationFunction), e_scale=e_scale, e_zp=e_zp)
        pads, pad_value = [0, 0, 0, 0], 0
        d_in = dn.inputs[0]
        d_in_scale, d_in_zp = _q(g.tensors[d_in])
        if pad_node is not None:
            pn = g.nodes[pad_node]
            pr = np.asarray(g.tensors[pn.inputs[1]].data).reshape(4, 2)
            pads = [int(pr[1, 0]), int(pr[1, 1]), int(pr[2, 0]), int(pr[2, 1])]
            if pn.op == "PADV2" and len(pn.inputs) > 2 and pn.inputs[2] >= 0:
                pad_value = int(np.ravel(g.tensors[pn.inputs[2]].data)[0])
            else:
                pad_value = d_in_zp  # TFLM PAD: the output zero point
        o.update(pad_top=pads[0], pad_bottom=pads[1], pad_left=pads[2], pad_right=pads[3],
                 pad_value=pad_value, d_in_scale=d_in_scale, d_in_zp=d_in_zp)
        do = _opts(dn)
        d_scale, d_zp = _q(g.tensors[dn.outputs[0]])
        o.update(d_stride_h=do.strideH, d_stride_w=do.strideW, d_dil_h=do.dilationHFactor,
                 d_dil_w=do.dilationWFactor, d_padding=int(do.padding),
                 d_act=int(do.fusedActivationFunction), d_scale=d_scale, d_zp=d_zp)
        p_scale, p_zp = _q(g.tensors[jn.outputs[0]])
        o.update(p_act=int(_opts(jn).fusedActivationFunction), p_scale=p_scale, p_zp=p_zp,
                 residual=residual, add_act=add_act)
        y = g.nodes[chain[-1]].outputs[0]
        xs, ys = g.tensors[x].shape, g.tensors[y].shape
        wd_shape = g.tensors[dn.inputs[1]].shape
        c_exp = int(wd_shape[3])
        s = fused_ops.shapes(xs, c_exp, w_expand_shape, wd_shape, o)
        if s["d"][:2] != tuple(ys[1:3]) or min(s["e"][:2]) < 1:
            return None
        nbytes = fused_ops.scratch_bytes(xs, c_exp, w_expand_shape, wd_shape,
                                         g.tensors[jn.inputs[1]].shape, o)
        # memory: the fused op holds x, y and its streaming buffers at once; fuse only if some op
        # of the chain held at least as much (x stays live through the chain when the ADD reads
        # it). The channel words in the scratch are not counted: the chain's builtins keep as
        # many in TFLM's persistent memory for good.
        chain_peak = 0
        for k, n in enumerate(chain):
            node = g.nodes[n]
            held = {t for t in (*node.inputs, *node.outputs)
                    if t >= 0 and g.tensors[t].data is None}
            if residual or k == 0:
                held.add(x)
            chain_peak = max(chain_peak, sum(g.tensors[t].nbytes for t in held))
        stream = fused_ops.stream_bytes(xs, c_exp, w_expand_shape, wd_shape, o)
        if g.tensors[x].nbytes + g.tensors[y].nbytes + stream > chain_peak:
            return None
        scratch = Tensor(f"tmt/irb{len(self.taken)}/scratch", (nbytes,), I8)
        layer = dn.layer or (g.nodes[expand].layer if expand is not None else None)
        return chain, Node(fused_ops.OP_NAME, inputs, [y], o, 1, layer, "forward"), scratch


def _drop_tensors(g: Graph, candidates: set[int]) -> None:
    """Remove the candidate tensors nothing references any more, renumbering the rest."""
    used: set[int] = set(g.inputs) | set(g.outputs) | {g.state}
    for n in g.nodes:
        used.update(t for t in (*n.inputs, *n.outputs) if t >= 0)
    for v in g.variables:
        used.update((v.init, v.value))
    dead = {t for t in candidates if t not in used}
    if not dead:
        return
    remap, kept = {}, []
    for t, tensor in enumerate(g.tensors):
        if t not in dead:
            remap[t] = len(kept)
            kept.append(tensor)
    g.tensors = kept
    for n in g.nodes:
        n.inputs = [remap[t] if t >= 0 else -1 for t in n.inputs]
        n.outputs = [remap[t] for t in n.outputs]
    g.inputs = [remap[t] for t in g.inputs]
    g.outputs = [remap[t] for t in g.outputs]
    for v in g.variables:
        v.init, v.value = remap[v.init], remap[v.value]
    if g.state >= 0:
        g.state = remap[g.state]


def fuse_frozen_blocks(g: Graph) -> Graph:
    """Replace every frozen [expand ->] [pad ->] depthwise -> project [-> add] chain whose
    intermediates nothing else reads by one TMT_FUSED_IRB node (in place; returns g)."""
    m = _Matcher(g)
    replace: dict[int, tuple[list[int], Node, Tensor]] = {}
    for i, node in enumerate(g.nodes):
        if node.op != "DEPTHWISE_CONV_2D":
            continue
        found = m.match(i)
        if found is None:
            continue
        chain = found[0]
        m.taken.update(chain)
        replace[chain[-1]] = found
    if not replace:
        return g
    removed = {n for chain, _, _ in replace.values() for n in chain}
    candidates: set[int] = set()
    nodes = []
    for i, node in enumerate(g.nodes):
        if i in replace:
            chain, fused, scratch = replace[i]
            fused.outputs.append(g.add(scratch))
            nodes.append(fused)
        elif i not in removed:
            nodes.append(node)
        if i in removed:
            candidates.update(t for t in (*node.inputs, *node.outputs) if t >= 0)
    g.nodes = nodes
    _drop_tensors(g, candidates)
    return g


def stream_input(g: Graph) -> dict:
    """Streamed input: the graph's image input (input 0), read by exactly one TMT_FUSED_IRB,
    leaves the graph. The fused node reads it from memory outside the arena (x_external: its
    input 0 becomes absent, its options carry what the tensor did: x_h, x_w, x_c, x_scale, x_zp);
    the other inputs keep their order. Returns the image's description for the metadata.
    Raises ValueError naming the operator and layer when the image is read otherwise."""
    if not g.inputs:
        raise ValueError("stream_input: the graph has no input")
    t = g.inputs[0]
    x = g.tensors[t]
    if x.dtype != I8 or x.scale is None or np.size(x.scale) != 1 or len(x.shape) != 4:
        raise ValueError(f"stream_input: the input '{x.name}' must be a per-tensor quantized "
                         f"int8 [1, H, W, C] image, got {x.dtype.name} {list(x.shape)}")
    readers = [n for n in g.nodes if t in n.inputs]
    if t in g.outputs:
        raise ValueError(f"stream_input: the input '{x.name}' is also a graph output")
    for n in readers:
        if n.op != fused_ops.OP_NAME or n.inputs.index(t) != fused_ops.X:
            raise ValueError(f"stream_input: the input '{x.name}' is read by {n.op} (layer "
                             f"'{n.layer}'), not by a fused block (TMT_FUSED_IRB)")
    if len(readers) != 1:
        raise ValueError(f"stream_input: the input '{x.name}' must be read by exactly one "
                         f"operator, a fused block (TMT_FUSED_IRB); it is read by {len(readers)}")
    node = readers[0]
    scale, zp = _q(x)
    _, h, w, c = (int(d) for d in x.shape)
    node.inputs[fused_ops.X] = -1
    node.options.update(x_external=1, x_h=h, x_w=w, x_c=c, x_scale=scale, x_zp=zp)
    g.inputs = g.inputs[1:]
    return {"name": x.name, "shape": [1, h, w, c], "dtype": "int8", "scale": scale,
            "zero_point": zp, "bytes": h * w * c, "layer": node.layer}


def feature_cache(g: Graph) -> dict:
    """Feature cache: the frozen prefix, the chain of TMT_FUSED_IRB ops from the image on (each
    intermediate output read only by the next), can be skipped when the application hands over
    its output B (the features of a sample it has seen before). Every chain op gains input
    FEATURES_GIVEN, a new int32 [1] graph input `tmt/features_given` (0: compute, 1: skip); B
    becomes a graph input (written by the application before a skipping invoke) and a graph
    output (read after a computing one), live for the whole invocation. Returns B's description
    for the metadata. Raises ValueError naming the operator and layer when the image is not read
    by a frozen fused block alone (nothing to skip)."""
    if not g.inputs and not any(n.op == fused_ops.OP_NAME and n.options.get("x_external")
                                for n in g.nodes):
        raise ValueError("feature_cache: the graph has no input")
    readers = _consumers(g)
    first = next((i for i, n in enumerate(g.nodes)
                  if n.op == fused_ops.OP_NAME and n.options.get("x_external")), None)
    if first is None:  # the image is graph input 0: its one reader must be a fused block
        image = g.inputs[0]
        name = g.tensors[image].name
        rs = readers.get(image, [])
        bad = [i for i in rs if g.nodes[i].op != fused_ops.OP_NAME
               or g.nodes[i].inputs.index(image) != fused_ops.X]
        if bad or len(rs) != 1:
            n = g.nodes[(bad or rs or [0])[0]] if g.nodes else None
            what = f"{n.op} (layer '{n.layer}')" if n is not None else "no operator"
            raise ValueError(f"feature_cache: the input '{name}' must be read by exactly one "
                             f"frozen fused block (TMT_FUSED_IRB), the start of the frozen prefix; "
                             f"it is read by {len(rs)} operator(s), first {what} (convert with "
                             f"fuse=True and an update that leaves the first blocks frozen)")
        first = rs[0]
    chain = [first]
    while True:
        y = g.nodes[chain[-1]].outputs[0]
        rs = readers.get(y, [])
        if (len(rs) != 1 or y in g.outputs or g.nodes[rs[0]].op != fused_ops.OP_NAME
                or g.nodes[rs[0]].inputs[fused_ops.X] != y):
            break
        chain.append(rs[0])
    b = g.nodes[chain[-1]].outputs[0]
    if b in g.outputs:
        raise ValueError(f"feature_cache: the frozen prefix's output '{g.tensors[b].name}' is the "
                         "model's output: nothing would train after it")
    flag = g.add(Tensor("tmt/features_given", (1,), np.dtype(np.int32)))
    for i in chain:
        node = g.nodes[i]
        node.inputs = [*node.inputs, *[-1] * (fused_ops.FEATURES_GIVEN - len(node.inputs)), flag]
    g.inputs = [*g.inputs, flag, b]
    g.outputs = [*g.outputs, b]
    t = g.tensors[b]
    scale, zp = _q(t)
    return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": "int8", "scale": scale,
            "zero_point": zp, "bytes": t.nbytes, "ops": len(chain),
            "layer": g.nodes[chain[-1]].layer, "flag_input": len(g.inputs) - 2,
            "features_input": len(g.inputs) - 1, "features_output": len(g.outputs) - 1}


# ------------------------------------------------------------------ back to builtin operators

_BUILTIN_VERSIONS = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "PADV2": 2, "ADD": 2}


def _streamed_name(m: fb.ModelT) -> str:
    """The name of an artifact's streamed input (its metadata), else "input"."""
    from .emit import read_metadata

    try:
        return read_metadata(m).get("stream_input", {}).get("name", "input")
    except ValueError:
        return "input"


def unfuse_model(m: fb.ModelT) -> int:
    """Rewrite every TMT_FUSED_IRB operator of subgraph 0 of `m` (in place) as the builtin chain it
    stands for: CONV_2D, PADV2, DEPTHWISE_CONV_2D, CONV_2D, ADD, with the intermediate tensors
    recreated from the op's options (a streamed input, x_external, as input 0 of the
    subgraph again), and every TMT_CONV as its builtin (requant.py). For
    exporting a plain model (export.inference_model) or checking an artifact with any TFLite
    interpreter. Returns the number of operators rewritten."""
    from flatbuffers import flexbuffers

    from .requant import restore_builtin_convs
    from .schema import BUILTIN_NAMES, op_name

    sg = m.subgraphs[0]

    def code(op: str, version: int | None = None) -> int:
        """The operator code of builtin `op` (of `version`, if given), added when missing."""
        for i, c in enumerate(m.operatorCodes):
            b = max(c.builtinCode, c.deprecatedBuiltinCode)
            if (b != fb.BuiltinOperator.CUSTOM and BUILTIN_NAMES[b] == op
                    and (version is None or c.version == version)):
                return i
        c = fb.OperatorCodeT()
        c.builtinCode = getattr(fb.BuiltinOperator, op)
        c.deprecatedBuiltinCode = min(c.builtinCode, 127)
        c.version = _BUILTIN_VERSIONS[op] if version is None else version
        m.operatorCodes.append(c)
        return len(m.operatorCodes) - 1

    def tensor(name: str, shape, dtype: int, scale=None, zp=None, data=None) -> int:
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, np.array(shape, np.int32), dtype, 0
        if scale is not None:
            q = fb.QuantizationParametersT()
            q.scale, q.zeroPoint = np.array([scale], np.float32), np.array([zp], np.int64)
            t.quantization = q
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8).copy()
            m.buffers.append(buf)
            t.buffer = len(m.buffers) - 1
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    def operator(op: str, inputs, outputs, options_type, options) -> fb.OperatorT:
        o = fb.OperatorT()
        o.opcodeIndex = code(op)
        o.inputs, o.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        return o

    def conv_options(o: dict, prefix: str | None, act: int):
        c = fb.Conv2DOptionsT()
        if prefix is None:
            c.strideH = c.strideW = c.dilationHFactor = c.dilationWFactor = 1
            c.padding = fb.Padding.VALID
        else:
            c.strideH, c.strideW = o[prefix + "stride_h"], o[prefix + "stride_w"]
            c.dilationHFactor, c.dilationWFactor = o[prefix + "dil_h"], o[prefix + "dil_w"]
            c.padding = o[prefix + "padding"]
        c.fusedActivationFunction = act
        return c

    I8T, I32T = fb.TensorType.INT8, fb.TensorType.INT32
    out_ops, rewritten = [], restore_builtin_convs(m, code)
    for op in sg.operators:
        if op_name(m, op) != fused_ops.OP_NAME:
            out_ops.append(op)
            continue
        rewritten += 1
        o = flexbuffers.Loads(bytes(bytearray(op.customOptions)))
        ins = [int(t) for t in op.inputs]
        x, y = ins[0], int(op.outputs[0])
        if o.get("x_external"):  # streamed input: an input tensor again
            x = tensor(_streamed_name(m), (1, o["x_h"], o["x_w"], o["x_c"]), fb.TensorType.INT8,
                       o["x_scale"], o["x_zp"])
            sg.inputs = np.array([x, *[int(t) for t in sg.inputs]], np.int32)
        shape = lambda t: tuple(int(d) for d in sg.tensors[t].shape)  # noqa: E731
        w_e = ins[fused_ops.W_EXPAND]
        s = fused_ops.shapes(shape(x), shape(ins[fused_ops.W_DW])[3],
                             shape(w_e) if w_e >= 0 else None, shape(ins[fused_ops.W_DW]), o)
        tag = f"tmt/unfused/{rewritten}"
        src = x
        if w_e >= 0:
            src = tensor(tag + "/expand", (1, *s["e"]), I8T, o["e_scale"], o["e_zp"])
            out_ops.append(operator("CONV_2D", [x, w_e, ins[fused_ops.B_EXPAND]], [src],
                                    fb.BuiltinOptions.Conv2DOptions,
                                    conv_options(o, "e_", o["e_act"])))
        pads = [o["pad_top"], o["pad_bottom"], o["pad_left"], o["pad_right"]]
        if any(pads):
            paddings = np.array([[0, 0], pads[:2], pads[2:], [0, 0]], np.int32)
            pt = tensor(tag + "/paddings", (4, 2), I32T, data=paddings)
            vt = tensor(tag + "/pad_value", (1,), I8T, o["d_in_scale"], o["d_in_zp"],
                        np.array([o["pad_value"]], np.int8))
            padded = tensor(tag + "/padded", (1, *s["pd"]), I8T, o["d_in_scale"], o["d_in_zp"])
            out_ops.append(operator("PADV2", [src, pt, vt], [padded],
                                    fb.BuiltinOptions.PadV2Options, fb.PadV2OptionsT()))
            src = padded
        d = tensor(tag + "/depthwise", (1, *s["d"]), I8T, o["d_scale"], o["d_zp"])
        dopt = fb.DepthwiseConv2DOptionsT()
        dopt.strideH, dopt.strideW = o["d_stride_h"], o["d_stride_w"]
        dopt.dilationHFactor, dopt.dilationWFactor = o["d_dil_h"], o["d_dil_w"]
        dopt.padding, dopt.depthMultiplier = o["d_padding"], 1
        dopt.fusedActivationFunction = o["d_act"]
        out_ops.append(operator("DEPTHWISE_CONV_2D", [src, ins[fused_ops.W_DW],
                                                      ins[fused_ops.B_DW]], [d],
                                fb.BuiltinOptions.DepthwiseConv2DOptions, dopt))
        p = y
        if o["residual"]:
            p = tensor(tag + "/project", shape(y), I8T, o["p_scale"], o["p_zp"])
        out_ops.append(operator("CONV_2D", [d, ins[fused_ops.W_PROJECT], ins[fused_ops.B_PROJECT]],
                                [p], fb.BuiltinOptions.Conv2DOptions,
                                conv_options(o, None, o["p_act"])))
        if o["residual"]:
            aopt = fb.AddOptionsT()
            aopt.fusedActivationFunction = o["add_act"]
            pair = [x, p] if o["residual"] == 1 else [p, x]
            out_ops.append(operator("ADD", pair, [y], fb.BuiltinOptions.AddOptions, aopt))
    sg.operators = out_ops
    return rewritten
