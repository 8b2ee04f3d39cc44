"""Stage 4: memory plan of one training step.

Lifetimes follow TFLite Micro's rules (a tensor lives from the operator that writes it, or the
start for graph inputs, to the last operator that reads it, or the end for graph outputs) and the
arena is laid out with TFLM's greedy-by-size algorithm (16-byte aligned), so the figure is the one
TFLM's default planner reaches for the same schedule. Peak SRAM = arena + variable tensors
(persistent: trainable parameters and the training state) + an estimate of TFLM's per-tensor and per-operator bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .graph import Graph

ALIGN = 16
# TFLM bookkeeping per tensor (TfLiteEvalTensor + allocation info) and per node (node, op data).
TENSOR_OVERHEAD = 24
NODE_OVERHEAD = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Buffer:
    """One planned arena buffer."""

    tensor: int
    size: int
    first: int
    last: int
    offset: int = 0


@dataclass
class MemoryPlan:
    """Arena layout and figures of a scheduled training graph."""

    buffers: list[Buffer]
    arena_bytes: int
    variable_bytes: int
    overhead_bytes: int
    live_bytes: list[int] = field(default_factory=list)  # per operator

    @property
    def peak_sram_bytes(self) -> int:
        return self.arena_bytes + self.variable_bytes + self.overhead_bytes


def lifetimes(g: Graph) -> list[Buffer]:
    """Planned (non-constant, non-resource) tensors with their first and last operator."""
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
    out = []
    for t, f in first.items():
        tensor = g.tensors[t]
        if tensor.data is not None or tensor.variable or tensor.nbytes == 0:
            continue
        out.append(Buffer(t, _align(tensor.nbytes), f, last.get(t, f)))
    return out


def greedy_layout(buffers: list[Buffer]) -> int:
    """TFLM GreedyMemoryPlanner: largest first, each at the lowest offset free over its lifetime."""
    placed: list[Buffer] = []
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
    return max((b.offset + b.size for b in buffers), default=0)


def plan_memory(g: Graph) -> MemoryPlan:
    """Lay out the arena and compute the memory figures of a scheduled graph."""
    buffers = lifetimes(g)
    arena = greedy_layout(buffers)
    variables = sum(_align(t.nbytes) for t in g.tensors if t.variable)
    overhead = TENSOR_OVERHEAD * len(g.tensors) + NODE_OVERHEAD * len(g.nodes)
    live = [sum(b.size for b in buffers if b.first <= i <= b.last) for i in range(len(g.nodes))]
    return MemoryPlan(buffers, arena, variables, overhead, live)
