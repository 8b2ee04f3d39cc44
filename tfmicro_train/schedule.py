"""Stage 3: operator order of one training step.

Forward operators keep the converter's order; each trainable parameter is read from its resource
variable just before its first use; backward nodes follow in the order autodiff made them (reverse
execution order, the input gradient of a layer before its update), and each parameter is stored
back right after its update, so no gradient buffer outlives the update that consumes it.
"""

from __future__ import annotations

from .graph import Graph, Node


def schedule(g: Graph) -> Graph:
    """Insert VAR_HANDLE / READ_VARIABLE / ASSIGN_VARIABLE nodes and fix the final order."""
    by_value = {v.value: v for v in g.variables}
    order: list[Node] = [Node("VAR_HANDLE", [], [v.handle], v.name, 1, v.layer, "variable")
                         for v in g.variables]
    read: set[int] = set()
    for node in g.nodes:
        for t in node.inputs:
            v = by_value.get(t)
            if v is not None and t not in read and node.role == "forward":
                order.append(Node("READ_VARIABLE", [v.handle], [v.value], None, 1, v.layer,
                                  "variable"))
                read.add(t)
        order.append(node)
        if node.role == "update":
            v = by_value[node.inputs[2] if node.op == "TMT_BIAS_UPDATE" else node.inputs[3]]
            order.append(Node("ASSIGN_VARIABLE", [v.handle, v.value], [], None, 1, v.layer,
                              "variable"))
    missing = set(by_value) - read
    if missing:
        names = sorted(by_value[t].name for t in missing)
        raise ValueError(f"internal: variables never read by the forward pass: {names}")
    g.nodes = order
    return g
