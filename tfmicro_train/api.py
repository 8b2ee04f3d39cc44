"""Public API: convert(), TrainingModel, MemoryReport, SGD."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from .autodiff import differentiate
from .emit import emit
from .fuse import feature_cache as cache_frozen_prefix
from .fuse import stream_input as stream_first_input
from .graph import from_tflite
from .importer import WEIGHT_OPS, LayerRef, check_layers, import_model
from .plan import MemoryPlan, plan_memory
from .schedule import lower
from .sparse import LayerTraining, SparseUpdate, resolve

BACKWARDS = ("int8", "fp32")
LOSSES = {"sparse_categorical_crossentropy": "softmax", "mse": "linear",
          "mean_squared_error": "linear"}


@dataclass(frozen=True)
class SGD:
    """Plain SGD (no momentum: it does not help at batch 1 and doubles update memory).

    The learning rate is a runtime input of the artifact; `schedule="cosine"` decays it from
    `learning_rate` to 0 over `decay_steps` after `warmup_steps` of linear warm-up.
    """

    learning_rate: float = 0.01
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0
                and math.isfinite(self.learning_rate)):
            raise ValueError(f"SGD learning_rate must be a positive number, got {self.learning_rate!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"SGD schedule must be 'constant' or 'cosine', got {self.schedule!r}")

    def __call__(self, step: int) -> float:
        """Learning rate of training step `step` (0-based)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if self.schedule == "cosine" and self.decay_steps:
            t = min(1.0, (step - self.warmup_steps) / self.decay_steps)
            return max(self.learning_rate * 0.5 * (1 + math.cos(math.pi * t)), 1e-12)
        return self.learning_rate


@dataclass(frozen=True)
class TimelineEntry:
    """Memory live during one operator of the training step."""

    index: int
    op: str
    role: str
    layer: str | None
    live_bytes: int


@dataclass
class MemoryReport:
    """Memory of one training step: peak SRAM (arena + variables + TFLM bookkeeping) and flash."""

    peak_sram_bytes: int
    flash_bytes: int
    arena_bytes: int
    variable_bytes: int
    overhead_bytes: int
    timeline: list[TimelineEntry] = field(default_factory=list)
    # overhead_bytes by kind on a 32-bit MCU: eval_tensors, nodes, op_data, interpreter (TFLM's
    # own structs) and planning (AllocateTensors' temporary memory beyond the arena)
    bookkeeping: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        kb = 1024
        return (f"peak SRAM {self.peak_sram_bytes / kb:.1f} KB (arena {self.arena_bytes / kb:.1f}"
                f" + variables {self.variable_bytes / kb:.1f} + TFLM bookkeeping "
                f"{self.overhead_bytes / kb:.1f}), flash {self.flash_bytes / kb:.1f} KB")

    def plot(self, path: str) -> str:
        """Write a PNG of live arena bytes over the operators of one step; returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        colors = {"forward": "tab:blue", "variable": "tab:gray", "loss": "tab:red",
                  "backward": "tab:orange", "update": "tab:green"}
        fig, ax = plt.subplots(figsize=(10, 4))
        xs = [e.index for e in self.timeline]
        ax.bar(xs, [e.live_bytes / 1024 for e in self.timeline], width=1.0,
               color=[colors.get(e.role, "k") for e in self.timeline])
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        ax.axhline(self.arena_bytes / 1024, color="k", ls="--", lw=1)
        handles = [Patch(color=c, label=role) for role, c in colors.items()]
        handles.append(Line2D([], [], color="k", ls="--", label="planned arena"))
        ax.set_xlabel("operator in the training step")
        ax.set_ylabel("live arena KB")
        ax.set_title(str(self), fontsize=9)
        ax.legend(handles=handles, fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


@dataclass
class TrainingModel:
    """A self-training TFLite artifact and what the converter knows about it."""

    flatbuffer: bytes
    inference_flatbuffer: bytes  # TensorFlow's int8 model the artifact was built from
    layers: list[LayerRef]
    trainable: list[LayerTraining]
    plan: MemoryPlan
    timeline: list[TimelineEntry]
    optimizer: SGD
    metadata: dict

    def save(self, path: str | os.PathLike) -> None:
        """Write the flatbuffer atomically (a temporary file renamed into place)."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.flatbuffer)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def memory_report(self) -> MemoryReport:
        """Peak SRAM, flash and the per-operator timeline of one training step."""
        p = self.plan
        return MemoryReport(p.peak_sram_bytes, len(self.flatbuffer), p.arena_bytes,
                            p.variable_bytes, p.peak_sram_bytes - p.arena_bytes - p.variable_bytes,
                            list(self.timeline), dict(p.overhead_parts))

    def export_c(self, path: str | os.PathLike, name: str = "g_model") -> list[str]:
        """Write the artifact as an aligned constant C array for a device build: `path` (.h,
        declarations) and the .cpp beside it (definition, in flash). Returns both paths."""
        from .codegen import export_c

        return export_c(self.flatbuffer, path, name)

    def summary(self) -> str:
        """What trains, per layer."""
        lines = [f"{'conv':>4}  {'layer':<32} {'op':<18} {'weights':>12} {'bias':>5}"]
        for lt in self.trainable:
            lines.append(f"{lt.layer.conv_index:>4}  {lt.layer.name:<32} {lt.layer.kind:<18} "
                         f"{lt.weight_channels:>12} {'yes' if lt.bias else 'no':>5}")
        return "\n".join(lines)


def _keras_out_channels(model) -> tuple[list[LayerRef], list[int]]:
    refs, chans = [], []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in WEIGHT_OPS:
            if kind == "Conv2D":
                c = int(layer.filters)
            elif kind == "Dense":
                c = int(layer.units)
            else:
                c = int(layer.kernel.shape[2]) * int(layer.depth_multiplier)
            refs.append(LayerRef(len(refs), layer.name, WEIGHT_OPS[kind], -1))
            chans.append(c)
    return refs, chans


def convert(model, representative_data: Iterable, update: str | SparseUpdate = "last",
            loss: str = "sparse_categorical_crossentropy", optimizer: SGD | None = None,
            qas: bool = True, seed: int = 0, fuse: bool = True,
            backward: str = "int8", flash_requant: bool = True,
            narrow_biases: bool = True, stream_input: bool = False,
            feature_cache: bool = False) -> TrainingModel:
    """Keras model -> self-training int8 TFLite artifact.

    update: "full", "last" (classifier only), "bias", or a SparseUpdate. loss:
    "sparse_categorical_crossentropy" (int32 label input) or "mse". qas: quantization-aware
    scaling of the updates. fuse: run frozen inverted-residual blocks as row-streamed
    TMT_FUSED_IRB ops (bit-identical results, far smaller arena). backward: "int8" (int8
    gradients with run-time scales, any MCU) or "fp32" (float32 gradients, for MCUs with an FPU;
    4-byte gradient buffers, same int8 forward, parameters and stochastic rounding).
    flash_requant: run the remaining int8 convolutions and per-channel fully-connected layers as
    TMT_CONV ops reading their per-channel output multipliers from flash (bit-identical results;
    TFLM's builtins keep 8 bytes per output channel in SRAM), and global-average MEANs as TMT_MEAN
    (bit-identical, without TFLM's int32 scratch per channel). narrow_biases: with flash_requant
    and int8 gradients, keep each trained bias as an int16 change in SRAM (2 bytes per channel
    instead of 4; changes up to half the layer's int8 output range). stream_input: the int8 image
    is no arena tensor: the first fused block (TMT_FUSED_IRB, which must be its only reader, else
    ValueError) reads it from memory outside the arena (flash, PSRAM, a camera buffer) that the
    application passes through TFLM's external context (tflm_ops/README.md); the artifact's
    inputs are then (label, learning rate) and metadata["stream_input"] describes the image.
    feature_cache: the frozen prefix (the fused blocks from the image on, which must read it
    alone, else ValueError) can be skipped for a sample seen before: two more inputs,
    `tmt/features_given` (int32, 1 = skip the prefix) and the prefix's output (int8 features,
    also the last output, to keep after a step that computed it); a step on cached features
    trains exactly as one on the image. metadata["feature_cache"] describes them.
    Nothing is written to disk; call `.save()` on the result.
    """
    if backward not in BACKWARDS:
        raise ValueError(f"backward {backward!r} is not supported; use one of {list(BACKWARDS)}")
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is not supported; use one of {sorted(LOSSES)}")
    optimizer = optimizer or SGD()
    if not isinstance(optimizer, SGD):
        raise ValueError(f"optimizer must be tfmicro_train.SGD, got {type(optimizer).__name__}")
    check_layers(model)
    refs, chans = _keras_out_channels(model)
    resolve(update, refs, chans)  # fail on a bad spec before the slow conversion
    head = LOSSES[loss]
    imported = import_model(model, representative_data, head)
    graph = from_tflite(imported.model)
    for ref in imported.layers:
        graph.nodes[ref.op_index].layer = ref.name
    out_channels = [graph.tensors[graph.nodes[r.op_index].outputs[0]].shape[-1]
                    for r in imported.layers]
    trainable = resolve(update, imported.layers, out_channels)
    differentiate(graph, trainable, head, qas, seed, fp32=backward == "fp32")
    lower(graph, fuse=fuse, flash_requant=flash_requant, narrow=narrow_biases)
    streamed = stream_first_input(graph) if stream_input else None
    cache = cache_frozen_prefix(graph) if feature_cache else None
    mem = plan_memory(graph)
    metadata = {
        "format": 1, "head": head, "qas": qas, "backward": backward, "learning_rate": optimizer.learning_rate,
        "inputs": [graph.tensors[t].name for t in graph.inputs],
        "outputs": [graph.tensors[t].name for t in graph.outputs],
        "variables": [{"name": v.name, "layer": v.layer, "kind": v.kind, "channels": v.channels,
                       "dtype": graph.tensors[v.value].dtype.name,
                       "op_index": v.op_index, "slot": v.slot} for v in graph.variables],
    }
    if streamed is not None:
        metadata["stream_input"] = streamed
    if cache is not None:
        metadata["feature_cache"] = cache
    timeline = [TimelineEntry(i + 1, n.op, n.role, n.layer, mem.live_bytes[i])
                for i, n in enumerate(graph.nodes)]
    return TrainingModel(emit(graph, metadata, mem.offsets), imported.flatbuffer, imported.layers,
                         trainable, mem, timeline, optimizer, metadata)
