"""Stage 4: memory plan of one training step.

Lifetimes follow TFLite Micro's rules (a tensor lives from the operator that writes it, or the
start for graph inputs, to the last operator that reads it, or the end for graph outputs). Gradient
ops that work element by element write their output over an input that dies there (in place). The
arena is laid out with TFLM's greedy-by-size algorithm (16-byte aligned) and the offsets are written
into the artifact as "OfflineMemoryAllocation" metadata, so TFLM uses exactly this plan.
Peak SRAM = arena + variable tensors (persistent: trainable parameters and the training state)
+ TFLM's own bookkeeping (tensor structs, nodes, op data such as the per-channel multipliers of
every convolution), estimated from measurements of TFLM on x86-64: 64-bit pointers, so an upper
bound for a 32-bit microcontroller. The integration tests check the arena layout byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Graph

ALIGN = 16
# TFLM bookkeeping, fitted to TFLM's RecordingMicroInterpreter on x86-64 (tests/test_tflm_integration.py)
BASE_OVERHEAD = 1024  # interpreter, subgraph and allocator structs
TENSOR_OVERHEAD = 24  # TfLiteEvalTensor per tensor
NODE_OVERHEAD = 160  # node, registration and op data per operator
FUSED_OVERHEAD = 320  # more op data of a TMT_FUSED_IRB (its spec and precomputed parameters)
CHANNEL_OVERHEAD = 8  # per-channel output multiplier and shift of each conv / fully-connected
PLANNER_OVERHEAD = 48  # per planned buffer, temporarily, while AllocateTensors() plans the arena


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


@dataclass
class MemoryPlan:
    """Arena layout and figures of a scheduled training graph."""

    buffers: list[Buffer]
    offsets: dict[int, int]  # tensor -> arena offset
    arena_bytes: int
    variable_bytes: int
    overhead_bytes: int
    live_bytes: list[int] = field(default_factory=list)  # per operator

    @property
    def peak_sram_bytes(self) -> int:
        """The arena a MicroInterpreter needs: planned head + variables + TFLM's persistent
        bookkeeping + what the planner holds temporarily during AllocateTensors()."""
        planner = PLANNER_OVERHEAD * len(self.buffers)
        return self.arena_bytes + self.variable_bytes + self.overhead_bytes + planner


def lifetimes(g: Graph, in_place: bool = True) -> list[Buffer]:
    """Planned (non-constant, non-variable) tensors with their first and last operator; with
    `in_place`, the output of an IN_PLACE op joins its input's buffer when that input dies there."""
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
        owner: dict[int, Buffer] = dict(buffers)
        for i, node in enumerate(g.nodes):
            slot = IN_PLACE.get(node.op)
            if slot is None or not node.outputs:
                continue
            src, dst = node.inputs[slot], node.outputs[0]
            if src not in owner or dst not in buffers or owner[src].last != i:
                continue
            b = owner[src]
            moved = buffers.pop(dst)
            b.size, b.last = max(b.size, moved.size), moved.last
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


def greedy_layout(buffers: list[Buffer], fixed: list[Buffer] | None = None) -> int:
    """TFLM GreedyMemoryPlanner: largest first, each at the lowest offset free over its lifetime,
    around the `fixed` (already placed, e.g. offline-planned) buffers."""
    placed: list[Buffer] = list(fixed or [])
    for b in sorted(buffers, key=lambda b: (-b.size, b.first, b.tensor)):
        overlapping = sorted((p for p in placed if p.first <= b.last and b.first <= p.last),
                             key=lambda p: p.offset)
        offset = 0
        for p in overlapping:
            if offset + b.size <= p.offset:
                break
            offset = max(offset, p.offset + p.size)
        b.offset = offset
        placed.append(b)
    return max((b.offset + b.size for b in placed), default=0)


def plan_memory(g: Graph) -> MemoryPlan:
    """Lay out the arena and compute the memory figures of a scheduled graph."""
    buffers = lifetimes(g)
    arena = greedy_layout(buffers)
    # TFLM places the kernels' own scratch buffers online, around our (offline) offsets
    arena = max(arena, greedy_layout(kernel_scratch(g), fixed=buffers))
    offsets = {t: b.offset for b in buffers for t in (b.tensor, *b.aliases)}
    variables = sum(_align(t.nbytes) for t in g.tensors if t.variable)
    used = set(g.inputs) | set(g.outputs) | {t for n in g.nodes for t in (*n.inputs, *n.outputs)}
    channels = sum(g.tensors[n.outputs[0]].shape[-1] for n in g.nodes
                   if n.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    fused = sum(n.op == "TMT_FUSED_IRB" for n in g.nodes)
    overhead = (BASE_OVERHEAD + TENSOR_OVERHEAD * len(used - {-1}) + NODE_OVERHEAD * len(g.nodes)
                + CHANNEL_OVERHEAD * channels + FUSED_OVERHEAD * fused)
    live = [sum(b.size for b in buffers if b.first <= i <= b.last) for i in range(len(g.nodes))]
    return MemoryPlan(buffers, offsets, arena, variables, overhead, live)
