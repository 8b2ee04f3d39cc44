"""The in-memory training graph that flows through the pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .importer import buffer_array, tensor_info
from .schema import fb, op_name

STATE_MAGIC = 0x544D5431  # "TMT1": the variables hold trained (or initial) values


@dataclass
class Tensor:
    """One tensor: shape, dtype, optional quantization and constant data."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    qdim: int = 0
    data: np.ndarray | None = None
    variable: bool = False  # a TFLite variable tensor: persistent, written in place

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class Node:
    """One operator: a TFLite builtin (options object kept from the converter) or a TMT_ op."""

    op: str
    inputs: list[int]
    outputs: list[int]
    options: Any = None
    version: int = 1
    layer: str | None = None
    role: str = "forward"  # forward | variable | loss | backward | update


@dataclass
class Variable:
    """A trainable parameter kept in SRAM as a TFLite variable tensor, updated in place."""

    name: str
    layer: str
    kind: str  # "weights" | "bias"
    init: int  # constant tensor with the converted values (flash, copied once by TMT_INIT)
    value: int  # the variable tensor the forward op reads and the update op writes
    channels: int  # leading channels updated
    op_index: int  # the operator that reads it, in the converter's inference model
    slot: int  # its input position there
    frozen: int = -1  # sliced weights: the constant remaining output channels (flash)
    full: int = -1  # sliced weights: the whole tensor the forward op reads (joined per step)


@dataclass
class Graph:
    """Tensors, nodes in execution order, graph inputs/outputs and variables."""

    tensors: list[Tensor] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    variables: list[Variable] = field(default_factory=list)
    state: int = -1  # int32 [2] variable tensor: initialised marker, training step counter

    def add(self, tensor: Tensor) -> int:
        """Append a tensor and return its index."""
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def like(self, idx: int, name: str, dtype: np.dtype | None = None) -> int:
        """A new tensor with the shape (and, same dtype, the quantization) of tensor idx."""
        t = self.tensors[idx]
        if dtype is None or dtype == t.dtype:
            return self.add(Tensor(name, t.shape, t.dtype, t.scale, t.zero_point, t.qdim))
        return self.add(Tensor(name, t.shape, np.dtype(dtype)))

    def producers(self) -> dict[int, int]:
        """tensor index -> index of the node that writes it."""
        return {o: i for i, n in enumerate(self.nodes) for o in n.outputs}


def from_tflite(model: fb.ModelT) -> Graph:
    """Subgraph 0 of a converted model as a Graph (builtin options and op versions kept)."""
    sg = model.subgraphs[0]
    g = Graph()
    for i in range(len(sg.tensors)):
        info = tensor_info(sg, i)
        q = info.quantized
        g.add(Tensor(info.name, info.shape, info.dtype,
                     info.scale if q else None, info.zero_point if q else None,
                     info.quantized_dimension, buffer_array(model, sg, i)))
    for op in sg.operators:
        code = model.operatorCodes[op.opcodeIndex]
        g.nodes.append(Node(op_name(model, op), [int(i) for i in op.inputs],
                            [int(o) for o in op.outputs],
                            (op.builtinOptionsType, op.builtinOptions), int(code.version)))
    g.inputs = [int(i) for i in sg.inputs]
    g.outputs = [int(o) for o in sg.outputs]
    return g
