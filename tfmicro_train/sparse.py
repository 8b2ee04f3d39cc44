"""Which parameters train: SparseUpdate specs, presets, and their resolution against a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from .importer import LayerRef

ALLOWED_RATIOS = (Fraction(0), Fraction(1, 8), Fraction(1, 4), Fraction(1, 2), Fraction(1))
PRESETS = ("full", "last", "bias")


@dataclass(frozen=True)
class SparseUpdate:
    """Biases of the last `bias_last_k` weight layers, plus weights of chosen layers.

    `weight_ratios` maps a conv index (Conv2D, DepthwiseConv2D and Dense layers counted from 0 at
    the input, as in the MIT paper) to the fraction of output channels whose weights train:
    1/8, 1/4, 1/2 or 1 (0 = none).
    """

    bias_last_k: int = 0
    weight_ratios: dict[int, float] = field(default_factory=dict)

    @classmethod
    def preset(cls, name: str, n_layers: int) -> SparseUpdate:
        """'full' (every weight and bias), 'last' (the classifier), 'bias' (every bias)."""
        if name == "full":
            return cls(n_layers, {i: 1.0 for i in range(n_layers)})
        if name == "last":
            return cls(1, {n_layers - 1: 1.0})
        if name == "bias":
            return cls(n_layers, {})
        raise ValueError(f"update preset {name!r} is unknown; use one of {PRESETS} or a SparseUpdate")


@dataclass(frozen=True)
class LayerTraining:
    """What trains in one weight layer: its leading `weight_channels` and optionally the bias."""

    layer: LayerRef
    weight_channels: int
    bias: bool


def _ratio(value, index: int) -> Fraction:
    try:
        r = Fraction(value).limit_denominator(64)
    except (TypeError, ValueError):
        raise ValueError(f"weight_ratios[{index}] = {value!r} is not a number") from None
    if r not in ALLOWED_RATIOS:
        raise ValueError(
            f"weight_ratios[{index}] = {value!r} is not allowed; use 0, 1/8, 1/4, 1/2 or 1")
    return r


def resolve(update, layers: list[LayerRef], out_channels: list[int]) -> list[LayerTraining]:
    """Turn a preset name or SparseUpdate into per-layer decisions (only layers that train)."""
    n = len(layers)
    if isinstance(update, str):
        update = SparseUpdate.preset(update, n)
    if not isinstance(update, SparseUpdate):
        raise ValueError(f"update must be one of {PRESETS} or a SparseUpdate, got {update!r}")
    k = update.bias_last_k
    if not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"bias_last_k = {k!r} must be an integer between 0 and {n} "
                         f"(the model has {n} Conv2D/DepthwiseConv2D/Dense layers)")
    ratios = {}
    for idx, value in update.weight_ratios.items():
        if not isinstance(idx, int) or not 0 <= idx < n:
            raise ValueError(f"weight_ratios key {idx!r} is not a conv index in [0, {n}) "
                             f"(the model has {n} Conv2D/DepthwiseConv2D/Dense layers)")
        ratios[idx] = _ratio(value, idx)
    plan = []
    for i, ref in enumerate(layers):
        r = ratios.get(i, Fraction(0))
        channels = 0 if r == 0 else max(1, int(out_channels[i] * r))
        bias = i >= n - k
        if channels or bias:
            plan.append(LayerTraining(ref, channels, bias))
    if not plan:
        raise ValueError("the update trains nothing: set bias_last_k > 0 or some weight_ratios")
    return plan
