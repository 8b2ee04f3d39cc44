"""Stage 4: memory plan of one training step.

Lifetimes follow TFLite Micro's rules (a tensor lives from the operator that writes it, or the
start for graph inputs, to the last operator that reads it, or the end for graph outputs). Gradient
ops that work element by element write their output over an input that dies there (in place);
a TMT_FUSED_IRB (row-streamed) writes its output y over its input x when x dies there, y starting
the proven lag (kernels/fused_ops.inplace_lag, FusedIrbInPlaceLag) before x (streaming in place). The
arena is laid out greedily (16-byte aligned), in TFLM's largest-first order and in a lifetime order,
keeping the smaller, and the offsets are written into the artifact as "OfflineMemoryAllocation"
metadata, so TFLM uses exactly this plan (its kernels' scratch buffers it places itself, around it).
Peak SRAM = arena + variable tensors (persistent: trainable parameters and the training state)
+ TFLM's own bookkeeping (tensor structs, nodes, op data such as the per-channel multipliers of
every builtin convolution; TMT_CONV reads them from flash instead), counted with the sizes of
TFLM's structs on a 32-bit microcontroller (and the planner's temporary memory during
AllocateTensors() when it exceeds the arena): the arena a MicroInterpreter on a Cortex-M needs,
checked on the Cortex-M7 (tests/test_cortex_m.py). `host_peak_sram_bytes` is the same for a
64-bit host (x86-64, fitted to TFLM there: an upper bound, tests/test_tflm_integration.py). The
integration tests check the arena layout byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Graph

ALIGN = 16
# TFLM bookkeeping, fitted to TFLM's RecordingMicroInterpreter on x86-64 (tests/test_tflm_integration.py)
BASE_OVERHEAD = 1536  # interpreter, subgraph and allocator structs (with some margin)
TENSOR_OVERHEAD = 24  # TfLiteEvalTensor per tensor
NODE_OVERHEAD = 128  # node, registration and op data per operator (TMT training ops: none)
FUSED_OVERHEAD = 32  # more op data of a TMT_FUSED_IRB (its quantization and weight scales)
CHANNEL_OVERHEAD = 8  # per-channel output multiplier and shift of each builtin conv / fully-connected
# A TMT_CONV keeps no per-channel data (its multipliers are a constant tensor, counted by
# TENSOR_OVERHEAD) and less op data than the builtin (no shapes, int16 parameters): 48 bytes,
# 72 fewer than a builtin conv's without its channels.
CONV_OP_OVERHEAD = -72
CONV_OP_DATA_HOST = 48  # ... none when its options hold its runtime parameters (x_zp, ...)
PLANNER_OVERHEAD = 48  # per planned buffer, temporarily, while AllocateTensors() plans the arena

# TFLM's bookkeeping on a 32-bit microcontroller: sizeof of its structs compiled for Cortex-M, each
# persistent allocation rounded up to 16 bytes (MicroArenaBufferAlignment).
MCU_BASE = 384  # MicroAllocator, its buffer allocator and planner, subgraph structs (~280 measured)
MCU_TENSOR = 12  # TfLiteEvalTensor per tensor
MCU_NODE = 32  # NodeAndRegistration per operator
MCU_IO_TENSOR = 48  # TfLiteTensor (32) and its quantization of each graph input and output
MCU_SCRATCH = 16  # ScratchBufferHandle per kernel scratch buffer (with margin)
# temporary, while AllocateTensors() plans: an AllocationInfo (24 bytes) per tensor and scratch
# buffer, GreedyMemoryPlanner's lists (36 bytes) per planned buffer
MCU_ALLOCATION_INFO = 24
MCU_PLANNER_ENTRY = 36
MCU_CHANNEL_ARRAY = 2  # builtin conv / fully-connected: multiplier and shift arrays of 4 * C bytes
# op data per operator. The TMT_* training ops not listed read their options from the model at
# each Prepare and Eval and keep none; one that requests a scratch buffer (option use_scratch)
# keeps 32 bytes. TMT_CONV keeps none either when its options hold x_zp, y_zp, act_min and act_max
# (as the converter writes them), else 32 bytes.
MCU_OP_DATA = {"TMT_CONV": 32, "TMT_FUSED_IRB": 48, "TMT_MEAN": 32, "TMT_MSE_GRAD": 32,
               "CONV_2D": 64, "DEPTHWISE_CONV_2D": 64, "FULLY_CONNECTED": 48, "ADD": 64,
               "SOFTMAX": 64, "MEAN": 48, "AVERAGE_POOL_2D": 32, "MAX_POOL_2D": 32, "RESHAPE": 0}
MCU_OP_DATA_SCRATCH = 32  # a TMT_* training op with use_scratch
MCU_OP_DATA_OTHER = 64  # any other builtin (PAD, CONCATENATION, ...: 48 or less)


def _conv_without_op_data(n) -> bool:
    """A TMT_CONV whose options carry its runtime parameters (x_zp, ...): TFLM keeps no op data."""
    return n.op == "TMT_CONV" and isinstance(n.options, dict) and "x_zp" in n.options


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# op -> input slot whose buffer output 0 may reuse (element-wise, alias-safe in both kernels)
IN_PLACE = {"TMT_ACT_GRAD": 0, "TMT_MASK_GRAD": 0, "TMT_RESHAPE_GRAD": 0, "TMT_PAD_GRAD": 0,
            "TMT_GRAD_ADD": 0}


@dataclass
class Buffer:
    """One planned arena buffer (one tensor, or a chain of tensors updated in place)."""

    tensor: int
    size: int
    first: int
    last: int
    offset: int = 0
    aliases: list[int] = field(default_factory=list)  # further tensors sharing this buffer
    rel: dict[int, int] = field(default_factory=dict)  # tensor -> offset in the buffer (else 0)
    # [offset in the buffer, size, first, last] of the regions it occupies: one, unless a
    # TMT_FUSED_IRB streams in place (x's region until the op, then y's, from the op)
    parts: list[list[int]] = field(default_factory=list)

    def regions(self) -> list[list[int]]:
        return self.parts or [[0, self.size, self.first, self.last]]


@dataclass
class MemoryPlan:
    """Arena layout and figures of a scheduled training graph."""

    buffers: list[Buffer]
    offsets: dict[int, int]  # tensor -> arena offset
    arena_bytes: int
    variable_bytes: int
    overhead_bytes: int  # 32-bit MCU: bookkeeping + the planner's temporary memory past the arena
    live_bytes: list[int] = field(default_factory=list)  # per operator
    host_overhead_bytes: int = 0  # the same on a 64-bit host (x86-64, an upper bound)
    overhead_parts: dict[str, int] = field(default_factory=dict)  # overhead_bytes by kind

    @property
    def peak_sram_bytes(self) -> int:
        """The arena a MicroInterpreter on a 32-bit microcontroller needs: planned head +
        variables + TFLM's persistent bookkeeping (+ what the planner holds temporarily during
        AllocateTensors(), where that exceeds the planned head)."""
        return self.arena_bytes + self.variable_bytes + self.overhead_bytes

    @property
    def host_peak_sram_bytes(self) -> int:
        """The same for TFLM on a 64-bit host (x86-64; fitted there, an upper bound)."""
        planner = PLANNER_OVERHEAD * len(self.offsets)  # TFLM plans every tensor, aliased or not
        return self.arena_bytes + self.variable_bytes + self.host_overhead_bytes + planner


def fused_inplace_lag(g: Graph, node) -> int:
    """Bytes y of a TMT_FUSED_IRB node must start before x to be written over it (16-aligned)."""
    from .kernels import fused_ops

    x, w_e, w_d, w_p = (node.inputs[k] for k in (fused_ops.X, fused_ops.W_EXPAND, fused_ops.W_DW,
                                                 fused_ops.W_PROJECT))
    wd_shape = g.tensors[w_d].shape
    lag = fused_ops.inplace_lag(g.tensors[x].shape, int(wd_shape[3]),
                                g.tensors[w_e].shape if w_e >= 0 else None, wd_shape,
                                int(g.tensors[w_p].shape[0]), node.options)
    return _align(lag)


def lifetimes(g: Graph, in_place: bool = True, lags: dict[int, int] | None = None) -> list[Buffer]:
    """Planned (non-constant, non-variable) tensors with their first and last operator; with
    `in_place`, the output of an IN_PLACE op joins its input's buffer when that input dies there,
    at the input's place, and the output y of a TMT_FUSED_IRB joins its input x's buffer when x
    dies there, starting fused_inplace_lag bytes before x (if that overlaps them at all).
    `lags`: node index -> that lag, for the TMT_FUSED_IRB nodes to write in place (default all)."""
    first: dict[int, int] = {t: 0 for t in g.inputs}
    last: dict[int, int] = {}
    for i, node in enumerate(g.nodes):
        for t in node.inputs:
            if t >= 0:
                first.setdefault(t, i)
                last[t] = i
        for t in node.outputs:
            first.setdefault(t, i)
            last[t] = max(last.get(t, i), i)
    end = len(g.nodes) - 1
    for t in g.outputs:
        last[t] = end
    buffers: dict[int, Buffer] = {}
    for t, f in first.items():
        tensor = g.tensors[t]
        if tensor.data is not None or tensor.variable or tensor.nbytes == 0:
            continue
        buffers[t] = Buffer(t, _align(tensor.nbytes), f, last.get(t, f))
    if in_place:
        inputs = set(g.inputs)
        owner: dict[int, Buffer] = dict(buffers)
        for i, node in enumerate(g.nodes):
            fused = node.op == "TMT_FUSED_IRB"
            slot = 0 if fused else IN_PLACE.get(node.op)
            if slot is None or not node.outputs:
                continue
            src, dst = node.inputs[slot], node.outputs[0]
            if src not in owner or dst not in buffers or owner[src].last != i or dst in inputs:
                continue  # (a graph input, e.g. cached features, is live from the start)
            b = owner[src]
            parts = b.parts or [[0, b.size, b.first, b.last]]
            at = b.rel.get(src, 0)
            if fused:
                if lags is not None and i not in lags:
                    continue
                lag = lags[i] if lags is not None else fused_inplace_lag(g, node)
                if lag >= buffers[dst].size:
                    continue  # would not overlap: nothing to gain
                at -= lag
                if at < 0:  # y starts before the buffer: move its tensors up
                    for t in (b.tensor, *b.aliases):
                        b.rel[t] = b.rel.get(t, 0) - at
                    for part in parts:
                        part[0] -= at
                    at = 0
            moved = buffers.pop(dst)
            if fused:  # y: a region of its own from this op on
                parts.append([at, moved.size, i, moved.last])
            else:  # element-wise: the output extends the input's region
                parts[-1][1], parts[-1][3] = max(parts[-1][1], moved.size), moved.last
            b.parts = parts
            b.size, b.last = max(p[0] + p[1] for p in parts), moved.last
            b.rel[dst] = at
            b.aliases.append(dst)
            owner[dst] = b
    return list(buffers.values())


def kernel_scratch(g: Graph) -> list[Buffer]:
    """Scratch buffers TFLM's reference kernels request in Prepare (int8 MEAN: an int32
    accumulator per output element, plus two small index arrays), live during their operator."""
    out = []
    for i, node in enumerate(g.nodes):
        if node.op == "MEAN" and g.tensors[node.inputs[0]].dtype == np.int8:
            n_out = int(np.prod(g.tensors[node.outputs[0]].shape))
            rank = len(g.tensors[node.inputs[0]].shape)
            n_axis = int(np.size(g.tensors[node.inputs[1]].data))
            out += [Buffer(-1, _align(4 * n), i, i) for n in (n_out, rank, n_axis)]
    return out


def by_size(b: Buffer) -> tuple:
    """TFLM GreedyMemoryPlanner's order: largest first."""
    return (-b.size, b.first, b.tensor)


def by_lifetime(b: Buffer) -> tuple:
    """Tiny buffers first (graph inputs such as the label and the learning rate, live from the
    start), then longest-lived first: the activations saved for the backward pass, born in the
    forward pass and dying in reverse order in the backward pass, stack up at the bottom and the
    short-lived large buffers share the space above them."""
    return (b.size > 4 * ALIGN, b.first - b.last, -b.size, b.tensor)


# Placement orders the offline plan tries (it keeps the smallest arena; TFLM honours any layout).
ORDERS = (by_size, by_lifetime)


def greedy_layout(buffers: list[Buffer], fixed: list[Buffer] | None = None, order=by_size) -> int:
    """Greedy placement in `order` (default TFLM GreedyMemoryPlanner's: largest first), each
    buffer at the lowest offset free over its lifetime, around the `fixed` (already placed, e.g.
    offline-planned) buffers."""
    placed: list[Buffer] = list(fixed or [])
    for b in sorted(buffers, key=order):
        if not b.parts:  # one region: TFLM's scan over the overlapping regions by offset
            overlapping = sorted((p.offset + r[0], r[1]) for p in placed for r in p.regions()
                                 if r[2] <= b.last and b.first <= r[3])
            offset = 0
            for o, n in overlapping:
                if offset + b.size <= o:
                    break
                offset = max(offset, o + n)
        else:  # regions at fixed distances: the lowest offset where all of them fit
            others = [(p.offset + r[0], r[1], r[2], r[3]) for p in placed for r in p.regions()
                      if p.first <= b.last and b.first <= p.last]
            offset = 0
            while True:
                # every region in the way must end below the offset (the lowest that can fit)
                bump = max((o + n - rel for rel, size, f, la in b.parts for o, n, pf, pl in others
                            if pf <= la and f <= pl and o < offset + rel + size
                            and offset + rel < o + n), default=None)
                if bump is None:
                    break
                offset = bump
        b.offset = offset
        placed.append(b)
    return max((b.offset + b.size for b in placed), default=0)


def _live_bytes(b: Buffer, i: int) -> int:
    """Bytes of `b` in use at operator i: the union of its regions live there."""
    total, end = 0, None
    for o, n in sorted((r[0], r[1]) for r in b.regions() if r[2] <= i <= r[3]):
        lo = o if end is None else max(o, end)
        total += max(0, o + n - lo)
        end = o + n if end is None else max(end, o + n)
    return total


def live_bytes(buffers: list[Buffer], n_ops: int) -> list[int]:
    """Arena bytes in use at each of the n_ops operators (the regions of `buffers` live there)."""
    return [sum(_live_bytes(b, i) for b in buffers) for i in range(n_ops)]


def plan_memory(g: Graph) -> MemoryPlan:
    """Lay out the arena and compute the memory figures of a scheduled graph."""
    def layout(lags: dict[int, int], order) -> tuple[int, list[Buffer]]:
        buffers = lifetimes(g, lags=lags)
        arena = greedy_layout(buffers, order=order)
        # TFLM places the kernels' own scratch buffers online (its own order), around our offsets
        return max(arena, greedy_layout(kernel_scratch(g), fixed=buffers)), buffers

    def best_for(order) -> tuple[int, list[Buffer]]:
        # Streaming in place ties y's region to x's; a greedy layout is a heuristic and need
        # not gain from every tie. Start with every fused op in place, drop those whose removal
        # shrinks the arena, and never do worse than none in place.
        lags = {i: fused_inplace_lag(g, n) for i, n in enumerate(g.nodes)
                if n.op == "TMT_FUSED_IRB" and n.inputs[0] >= 0}  # (not a streamed input)
        arena, buffers = layout(lags, order)
        if lags:
            for i in list(lags):
                trial = {k: v for k, v in lags.items() if k != i}
                t_arena, t_buffers = layout(trial, order)
                if t_arena < arena:
                    lags, arena, buffers = trial, t_arena, t_buffers
            none_arena, none_buffers = layout({}, order)
            if none_arena < arena:
                arena, buffers = none_arena, none_buffers
        return arena, buffers

    arena, buffers = min((best_for(order) for order in ORDERS), key=lambda r: r[0])
    offsets = {t: b.offset + b.rel.get(t, 0) for b in buffers for t in (b.tensor, *b.aliases)}
    variables = sum(_align(t.nbytes) for t in g.tensors if t.variable)
    used = set(g.inputs) | set(g.outputs) | {t for n in g.nodes for t in (*n.inputs, *n.outputs)}
    n_tensors = len(used - {-1})  # the tensors the artifact keeps
    channels = sum(g.tensors[n.outputs[0]].shape[-1] for n in g.nodes
                   if n.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    fused = sum(n.op == "TMT_FUSED_IRB" for n in g.nodes)
    conv_ops = sum(n.op == "TMT_CONV" for n in g.nodes)
    in_model = sum(_conv_without_op_data(n) for n in g.nodes)
    host = (BASE_OVERHEAD + TENSOR_OVERHEAD * n_tensors + NODE_OVERHEAD * len(g.nodes)
            + CHANNEL_OVERHEAD * channels + FUSED_OVERHEAD * fused + CONV_OP_OVERHEAD * conv_ops
            - CONV_OP_DATA_HOST * in_model)
    live = live_bytes(buffers, len(g.nodes))
    parts = mcu_overhead(g, arena, len(offsets), n_tensors)
    return MemoryPlan(buffers, offsets, arena, variables, sum(parts.values()), live, host, parts)


def mcu_overhead(g: Graph, arena: int, planned: int, n_tensors: int) -> dict[str, int]:
    """TFLM's bookkeeping for `g` on a 32-bit microcontroller, by kind (the kinds of TFLM's
    RecordingMicroAllocator where they match), plus what AllocateTensors() holds temporarily
    (allocation records for every tensor, planner lists for the `planned` arena tensors) beyond
    the planned arena head of `arena` bytes, which it overlays. `n_tensors`: the tensors the
    artifact keeps (those an operator or the subgraph reads or writes), each an eval tensor."""
    scratch = len(kernel_scratch(g))  # (the converter sets no TMT_* op's use_scratch)
    op_data = 0
    for node in g.nodes:
        if _conv_without_op_data(node):
            pass  # its runtime parameters in the options: no op data (tflm_ops/tflm/conv_op.cc)
        elif node.op in MCU_OP_DATA:
            op_data += MCU_OP_DATA[node.op]
        elif node.op.startswith("TMT_"):
            scratch_opt = isinstance(node.options, dict) and node.options.get("use_scratch")
            op_data += MCU_OP_DATA_SCRATCH if scratch_opt else 0
        else:
            op_data += MCU_OP_DATA_OTHER
        if node.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            op_data += MCU_CHANNEL_ARRAY * _align(4 * int(g.tensors[node.outputs[0]].shape[-1]))
    parts = {"eval_tensors": _align(MCU_TENSOR * n_tensors), "nodes": _align(MCU_NODE * len(g.nodes)),
             "op_data": op_data,
             "interpreter": (MCU_BASE + MCU_IO_TENSOR * (len(g.inputs) + len(g.outputs))
                             + MCU_SCRATCH * scratch)}
    temporary = (_align(MCU_ALLOCATION_INFO * (n_tensors + scratch))
                 + _align(MCU_PLANNER_ENTRY * (planned + scratch)) + 2 * ALIGN)
    parts["planning"] = max(0, temporary - arena)
    return parts
