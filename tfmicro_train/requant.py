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

`fold_mask_packs` then moves each TMT_MASK_PACK into the TMT_CONV writing its input, as that
op's second output (one operator less: its node and op data in TFLM, and one pass over y).

`narrow_biases` then keeps each trained bias a TMT_CONV reads as an int16 change in SRAM instead
of the int32 bias: 2 bytes per channel instead of 4 (kernels/conv_ops.py, "Narrow bias").

The same pass turns every int8 global-average MEAN (over H and W of a [1, H, W, C] tensor) into
TMT_MEAN (kernels/conv_ops.py): the same output without the int32 scratch per output channel
that TFLM's MEAN holds in the arena during its Eval.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node, Tensor
from .kernels import conv_ops
from .plan import _align
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
        o = conv_ops.options_of(n.op, n.options[1], n.version)
        o.update(conv_ops.runtime_options(_info(g.tensors[x]), _info(g.tensors[y]), o["act"]))
        g.nodes[i] = Node(conv_ops.OP_NAME, [x, w, b, rq], [y], o, 1, n.layer, n.role)
        count += 1
    for i, n in enumerate(g.nodes):
        if _mean_convertible(g, n):
            g.nodes[i] = Node(conv_ops.MEAN_OP_NAME, list(n.inputs[:2]), list(n.outputs),
                              {"keep_dims": int(bool(n.options[1].keepDims)),
                               "version": int(n.version)}, 1, n.layer, n.role)
    return g


def fold_mask_packs(g: Graph) -> Graph:
    """Make each TMT_MASK_PACK whose input y a TMT_CONV writes the second output (`bits`) of that
    TMT_CONV, with the pack's bounds as its options mask_min / mask_max (in place; returns g).
    The mask is then written with y, where the pack ran right after it. Only where the conv's
    input x lives on after it (saved for a weight gradient, or read later): there x, y and the
    mask were live together at the pack already, so no operator needs more arena; where x dies
    at the conv, the pack stays (folded, x, y and the mask would meet at the conv)."""
    producer = {t: n for n in g.nodes for t in n.outputs}
    index = {id(n): i for i, n in enumerate(g.nodes)}
    last_read: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        for t in n.inputs:
            last_read[t] = i
    keep = []
    for n in g.nodes:
        conv = producer.get(n.inputs[0]) if n.op == "TMT_MASK_PACK" else None
        if conv is None or conv.op != conv_ops.OP_NAME or len(conv.outputs) != 1:
            keep.append(n)
            continue
        x = conv.inputs[conv_ops.X]
        if last_read.get(x, -1) <= index[id(conv)] and x not in g.outputs:
            keep.append(n)
            continue
        conv.outputs.append(n.outputs[0])
        conv.options = {**conv.options, "mask_min": int(n.options["act_min"]),
                        "mask_max": int(n.options["act_max"])}
    g.nodes = keep
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
    operators = []
    for op in sg.operators:
        operators.append(op)
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
        ins = [int(t) for t in op.inputs[:conv_ops.REQUANT]]
        if ins[conv_ops.B] >= 0 and sg.tensors[ins[conv_ops.B]].type == fb.TensorType.INT16:
            bt = sg.tensors[ins[conv_ops.B]]
            if bt.isVariable and not (bt.buffer > 0 and m.buffers[bt.buffer].data is not None
                                      and len(m.buffers[bt.buffer].data)):
                bias_name = bt.name.decode() if isinstance(bt.name, bytes) else bt.name
                raise ValueError(
                    f"narrow bias {bias_name!r} is a trained int16 variable: a builtin convolution "
                    "cannot read it (export_tflite() folds its value; to unfuse a training "
                    "artifact, convert it with narrow_biases=False)")
            ins[conv_ops.B] = _wide_bias(m, sg, ins[conv_ops.B], rq)
        if rq >= 0 and sg.tensors[rq].buffer > 0:  # its data is no longer needed
            m.buffers[sg.tensors[rq].buffer].data = None
        if len(op.inputs) > conv_ops.W_REST and op.inputs[conv_ops.W_REST] >= 0:
            # weights in two parts: the builtin reads their CONCATENATION (a new tensor)
            ins[conv_ops.W] = _insert_concat(m, sg, operators, code, ins[conv_ops.W],
                                             int(op.inputs[conv_ops.W_REST]))
        if ins[conv_ops.B] < 0:
            ins = ins[:conv_ops.B]
        op.opcodeIndex = code(name, int(o.get("version", 1)))
        op.inputs = np.array(ins, np.int32)
        op.outputs = np.array(op.outputs[:1], np.int32)  # (a folded mask: training-only work)
        op.builtinOptionsType, op.builtinOptions = kind, opts
        op.customOptions, op.customOptionsFormat = None, 0
        rewritten += 1
        if o.get("mean"):  # mean mode: the conv writes y again, a MEAN pools it
            operators.append(_unfold_mean(m, sg, code, op, o))
    sg.operators = operators
    return rewritten


def _unfold_mean(m: fb.ModelT, sg, code, op, o: dict):
    """A TMT_CONV in mean mode back as CONV_2D -> y -> MEAN: a new y tensor (the options' shape
    and quantization) becomes the conv's output; returns the MEAN operator writing the pooled
    output."""
    pooled = int(op.outputs[0])
    channels = int(sg.tensors[int(op.inputs[conv_ops.W])].shape[0])

    def tensor(name: str, shape, dtype: int, data: np.ndarray | None = None) -> int:
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, np.array(shape, np.int32), dtype, 0
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(data.tobytes(), np.uint8).copy()
            m.buffers.append(buf)
            t.buffer = len(m.buffers) - 1
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    y = tensor(f"tmt/unfolded_mean/{pooled}/y", (1, o["y_h"], o["y_w"], channels),
               fb.TensorType.INT8)
    q = fb.QuantizationParametersT()
    q.scale, q.zeroPoint = np.array([o["y_scale"]], np.float32), np.array([o["y_zp"]], np.int64)
    sg.tensors[y].quantization = q
    axis = tensor(f"tmt/unfolded_mean/{pooled}/axis", (2,), fb.TensorType.INT32,
                  np.array([1, 2], np.int32))
    op.outputs = np.array([y], np.int32)
    mean = fb.OperatorT()
    mean.opcodeIndex = code("MEAN", int(o.get("mean_version", 1)))
    mean.inputs, mean.outputs = np.array([y, axis], np.int32), np.array([pooled], np.int32)
    ro = fb.ReducerOptionsT()
    ro.keepDims = bool(o.get("mean_keep_dims", 0))
    mean.builtinOptionsType, mean.builtinOptions = fb.BuiltinOptions.ReducerOptions, ro
    return mean


def _wide_bias(m: fb.ModelT, sg, b: int, rq: int) -> int:
    """A new int32 constant: the bias a narrow `b` stands for (its data, or no change when it
    has none: the artifact's initial state), from the base and shifts in `requant`."""
    t = sg.tensors[b]
    channels = int(t.shape[0])
    rows = np.frombuffer(bytes(bytearray(m.buffers[sg.tensors[rq].buffer].data)), "<i4")
    rows = rows.reshape(4, channels)
    data = m.buffers[t.buffer].data if t.buffer > 0 else None
    delta = (np.frombuffer(bytes(bytearray(data)), "<i2") if data is not None and len(data)
             else np.zeros(channels, np.int16))
    wide = conv_ops.expand_bias(rows[2], delta, rows[3])
    buf = fb.BufferT()
    buf.data = np.frombuffer(wide.astype("<i4").tobytes(), np.uint8).copy()
    m.buffers.append(buf)
    out = fb.TensorT()
    out.name = (t.name.decode() if isinstance(t.name, bytes) else t.name) + "/int32"
    out.shape = np.array([channels], np.int32)
    out.type = fb.TensorType.INT32
    out.buffer = len(m.buffers) - 1
    if t.quantization is not None and t.quantization.scale is not None:
        q = fb.QuantizationParametersT()
        q.scale = (np.asarray(t.quantization.scale, np.float64) / np.exp2(rows[3])).astype(np.float32)
        q.zeroPoint = np.zeros(channels, np.int64)
        q.quantizedDimension = 0
        out.quantization = q
    sg.tensors.append(out)
    return len(sg.tensors) - 1


def _insert_concat(m: fb.ModelT, sg, operators: list, code, head: int, rest: int) -> int:
    """A CONCATENATION (axis 0) of weight tensors `head` and `rest` into a new tensor, appended
    to `operators` before the op being rewritten (moved after it); returns the new tensor."""
    a, b = sg.tensors[head], sg.tensors[rest]
    full = fb.TensorT()
    full.name = (a.name.decode() if isinstance(a.name, bytes) else a.name) + "/full"
    full.shape = np.array([int(a.shape[0]) + int(b.shape[0]), *a.shape[1:]], np.int32)
    full.type = a.type
    full.buffer = 0
    qa, qb = a.quantization, b.quantization
    q = fb.QuantizationParametersT()
    sa, sb = np.asarray(qa.scale, np.float32), np.asarray(qb.scale, np.float32)
    q.scale = np.concatenate([sa, sb]) if sa.size > 1 or sb.size > 1 else sa.copy()
    q.zeroPoint = np.zeros(q.scale.size, np.int64)
    q.quantizedDimension = 0
    full.quantization = q
    sg.tensors.append(full)
    out = len(sg.tensors) - 1
    cat = fb.OperatorT()
    cat.opcodeIndex = code("CONCATENATION", 1)
    cat.inputs = np.array([head, rest], np.int32)
    cat.outputs = np.array([out], np.int32)
    opts = fb.ConcatenationOptionsT()
    opts.axis = 0
    cat.builtinOptionsType, cat.builtinOptions = fb.BuiltinOptions.ConcatenationOptions, opts
    operators.insert(len(operators) - 1, cat)
    return out


def _takes_split(g: Graph, n: Node) -> bool:
    """A TMT_CONV that reads each output pixel's input at one place (core::ConvOpTakesSplit)."""
    o = n.options
    if o["kind"] == conv_ops.KINDS["FULLY_CONNECTED"]:
        return True
    w = g.tensors[n.inputs[conv_ops.W]]
    return (o["kind"] == conv_ops.KINDS["CONV_2D"] and tuple(w.shape[1:3]) == (1, 1)
            and o["stride_h"] == 1 and o["stride_w"] == 1)


def split_weight_reads(g: Graph) -> Graph:
    """Ops reading the whole weights of a layer that trains a slice of its output channels take
    the two parts instead of their CONCATENATION (trained slice, a variable, + frozen rest, a
    constant): TMT_CONV (1x1 stride-1 or fully-connected) as its `w_rest` input, and
    TMT_CONV_INPUT_GRAD as its optional input 5. A CONCATENATION left without readers is removed,
    so the whole weight tensor is never built in the arena (in place; returns g)."""
    parts: dict[int, tuple[int, int]] = {}  # concat output -> (slice, rest)
    for n in g.nodes:
        if (n.op == "CONCATENATION" and len(n.inputs) == 2 and isinstance(n.options, tuple)
                and n.options[1].axis == 0):
            a, b = n.inputs
            if g.tensors[a].variable and g.tensors[b].data is not None:
                parts[n.outputs[0]] = (a, b)
    if not parts:
        return g
    conv_split = []  # (full, slice, rest) read in two parts by a TMT_CONV
    for n in g.nodes:
        if (n.op == conv_ops.OP_NAME and len(n.inputs) == conv_ops.REQUANT + 1
                and n.inputs[conv_ops.W] in parts and _takes_split(g, n)):
            full = n.inputs[conv_ops.W]
            n.inputs[conv_ops.W] = parts[full][0]
            n.inputs.append(parts[full][1])
            conv_split.append((full, *parts[full]))
        elif n.op == "TMT_CONV_INPUT_GRAD" and len(n.inputs) == 5 and n.inputs[2] in parts:
            full = n.inputs[2]
            n.inputs[2] = parts[full][0]
            n.inputs.append(parts[full][1])
    read = {t for n in g.nodes for t in n.inputs} | set(g.outputs)
    g.nodes = [n for n in g.nodes if not (n.op == "CONCATENATION" and n.outputs[0] in parts
                                          and n.outputs[0] not in read)]
    for full, head, rest in conv_split:
        _rest_scales(g, full, head, rest)
    return g


def _rest_scales(g: Graph, full: int, head: int, rest: int) -> None:
    """Give the frozen rest its own per-channel weight scales (TMT_CONV checks its multipliers
    against them), unless a builtin CONCATENATION still reads it (TFLM's int8 CONCATENATION
    wants the first scale of every input to be the output's)."""
    if any(n.op == "CONCATENATION" and rest in n.inputs for n in g.nodes):
        return
    f, r = g.tensors[full], g.tensors[rest]
    scales = np.ravel(np.asarray(f.scale, np.float32))
    if scales.size > 1:
        n_head = g.tensors[head].shape[0]
        r.scale = scales[n_head:].copy()
        r.zero_point = np.zeros(scales.size - n_head, np.int64)
        r.qdim = 0


# A narrow bias covers changes of up to NARROW_RANGE output steps (s_y) either way: half the int8
# output range, far beyond what fine-tuning moves a bias, in steps of NARROW_RANGE / 32767 of an
# output step (the int32 bias's own step is s_W s_x, typically 1e-4..1e-2 s_y).
NARROW_RANGE = 128.0
# SRAM a narrow bias must save (its int16 variable against the int32 one, each 16-byte aligned):
# it adds no tensor, only flash (6 bytes per channel: k and the zero change TMT_INIT copies).
NARROW_MIN_SAVING = 0


def bias_shifts(bias_scale: np.ndarray, y_scale: float) -> np.ndarray:
    """Per-channel k of a narrow bias: the smallest k in [0, 16] with 32767 * 2^k * s_b >=
    NARROW_RANGE * s_y (s_b = s_W[c] s_x, the int32 bias's scale)."""
    s_b = np.asarray(bias_scale, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.log2(NARROW_RANGE * float(y_scale) / (32767.0 * s_b))
    k = np.where(np.isfinite(need), np.ceil(need), 0.0)
    return np.clip(k, 0, conv_ops.MAX_BIAS_SHIFT).astype(np.int32)


def narrow_biases(g: Graph) -> Graph:
    """Each trained bias that only its TMT_CONV and its int8 TMT_BIAS_UPDATE read (and TMT_INIT
    fills), where that saves SRAM (NARROW_MIN_SAVING), becomes an int16 variable holding the
    change since conversion, in units of 2^k[c] (`bias_shifts`): the op's requant tensor gains
    the int32 bias (flash) and k as rows 2 and 3 (the op expands the int32 bias a chunk of
    channels at a time, on the stack), and the update's bfactor is divided by 2^k (the same
    step in the new unit; the change saturates at int16). In place; returns g."""
    readers: dict[int, list[Node]] = {}
    for n in g.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)
    for v in g.variables:
        if v.kind != "bias":
            continue
        users = [n for n in readers.get(v.value, []) if n.op != "TMT_INIT"]
        convs = [n for n in users if n.op == conv_ops.OP_NAME and n.inputs[conv_ops.B] == v.value]
        updates = [n for n in users if n.op == "TMT_BIAS_UPDATE" and n.inputs[2] == v.value]
        if len(convs) != 1 or len(updates) != 1 or len(users) != 2:
            continue
        conv, update = convs[0], updates[0]
        if g.tensors[update.inputs[0]].dtype != np.int8:
            continue  # the fp32 backward keeps int32 biases
        value, init = g.tensors[v.value], g.tensors[v.init]
        channels = value.shape[0]
        if _align(4 * channels) - _align(2 * channels) <= NARROW_MIN_SAVING:
            continue
        s_b = np.broadcast_to(np.asarray(value.scale, np.float64), (channels,))
        y_scale = float(np.ravel(g.tensors[conv.outputs[0]].scale)[0])
        k = bias_shifts(s_b, y_scale)
        rq = g.tensors[conv.inputs[conv_ops.REQUANT]]
        rq.data = np.concatenate([np.asarray(rq.data, np.int32).reshape(2, channels),
                                  np.asarray(init.data, np.int32).reshape(1, channels),
                                  k.reshape(1, channels)]).astype(np.int32)
        rq.shape = (4, channels)
        init.dtype, init.data = np.dtype(np.int16), np.zeros(channels, np.int16)
        value.dtype = np.dtype(np.int16)
        value.scale = (s_b * np.exp2(k)).astype(np.float32)
        value.zero_point = np.zeros(channels, np.int64)
        bf = g.tensors[update.inputs[3]]
        bf.data = (np.asarray(bf.data, np.float32) / np.exp2(k).astype(np.float32)).astype(np.float32)
    return g
