"""Stage 3: operator order of one training step.

TMT_INIT first (it fills the variable tensors once, from flash); then the forward operators in the
converter's order; then the loss and the backward nodes in the order autodiff made them: reverse
execution order, a layer's input gradient before its update, each update as soon as the layer's
output gradient exists, so no gradient buffer outlives the update that consumes it. `lower` runs
the graph passes between autodiff and this (fusion, TMT_CONV, sliced weights) and then it.
"""

from __future__ import annotations

from .fuse import fuse_frozen_blocks
from .graph import Graph
from .head import fold_broadcast_grads, fold_pooled_outputs
from .requant import flash_requant as to_tmt_conv
from .requant import fold_mask_packs, narrow_biases, split_weight_reads
from .updates import fold_bias_updates

ROLE_ORDER = {"variable": 0, "forward": 1, "loss": 2, "backward": 3, "update": 3}


def schedule(g: Graph) -> Graph:
    """Fix the final order: stable by phase, autodiff's order within the backward phase."""
    g.nodes = sorted(g.nodes, key=lambda n: ROLE_ORDER[n.role])
    seen: set[int] = set(g.inputs) | {t for t, x in enumerate(g.tensors)
                                      if x.data is not None or x.variable}
    for i, node in enumerate(g.nodes):
        missing = [t for t in node.inputs if t >= 0 and t not in seen]
        if missing:
            raise ValueError(f"internal: operator {i} ({node.op}) reads tensor "
                             f"'{g.tensors[missing[0]].name}' before it is written")
        seen.update(node.outputs)
    return g


def lower(g: Graph, fuse: bool = True, flash_requant: bool = True, narrow: bool = True) -> Graph:
    """The graph passes between autodiff and the memory plan, then the schedule: what convert()
    and the sparse-update search's memory model both run (so the search measures the artifact
    convert() makes)."""
    if fuse:  # frozen inverted-residual blocks -> row-streamed TMT_FUSED_IRB
        fuse_frozen_blocks(g)
    if flash_requant:  # per-channel multipliers of the builtin convolutions -> flash (TMT_CONV)
        to_tmt_conv(g)
        fold_mask_packs(g)  # activation masks written by the TMT_CONV of their layer
        if narrow:  # trained biases of TMT_CONV layers as int16 changes
            narrow_biases(g)
    split_weight_reads(g)  # sliced layers' weights read in two parts, never concatenated
    if flash_requant:  # a pooled head without its H x W tensors
        fold_pooled_outputs(g)
    fold_broadcast_grads(g)
    fold_bias_updates(g)  # each bias update inside the input gradient reading the same gradient
    return schedule(g)
