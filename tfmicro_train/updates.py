"""Graph pass: each bias update folded into the input gradient that reads the same gradient.

A trained layer's TMT_BIAS_UPDATE and its TMT_CONV_INPUT_GRAD / TMT_DW_INPUT_GRAD read the same
int8 gradient g and scale s (and, folded from a pooled head, the same broadcast and mask). The
update then runs inside the input gradient op, right after it, with the update's own options
(`b_update_channels`, `b_seed`) and tensors (inputs BIAS, BFACTOR, STATE): one operator less
per trained layer (32 bytes of TFLM node on a 32-bit MCU), the same arithmetic
(kernels/training_ops.py bias_update on the same g and s), the same order of effects.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node

BIAS, BFACTOR, STATE = 7, 8, 9  # input slots of the folded update in an input gradient op
INPUT_GRADS = ("TMT_CONV_INPUT_GRAD", "TMT_DW_INPUT_GRAD")
_BCAST_KEYS = ("g_bcast_h", "g_bcast_w")


def _mask(n: Node) -> int:
    return n.inputs[6] if len(n.inputs) > 6 else -1


def fold_bias_updates(g: Graph) -> Graph:
    """Each int8 TMT_BIAS_UPDATE whose gradient and scale an input gradient op earlier in the
    step reads the same way (same broadcast and mask, if any) becomes part of that op (in place;
    returns g)."""
    drop: set[int] = set()
    for i, u in enumerate(g.nodes):
        if u.op != "TMT_BIAS_UPDATE" or g.tensors[u.inputs[0]].dtype != np.int8:
            continue
        for n in g.nodes[:i]:
            if (n.op in INPUT_GRADS and n.inputs[:2] == u.inputs[:2] and len(n.inputs) <= BIAS
                    and _mask(n) == _mask(u)
                    and all(n.options.get(k) == u.options.get(k) for k in _BCAST_KEYS)
                    and n.inputs[4] == u.inputs[4]):  # the same learning rate
                ins = list(n.inputs) + [-1] * (BIAS - len(n.inputs))
                n.inputs = ins + [u.inputs[2], u.inputs[3], u.inputs[5]]
                n.options = dict(n.options, b_update_channels=int(u.options["update_channels"]),
                                 b_seed=int(u.options["seed"]))
                drop.add(id(u))
                break
    g.nodes = [n for n in g.nodes if id(n) not in drop]
    return g
