"""Choosing a sparse update under a memory budget: contribution analysis + evolutionary search.

As in the MIT paper: on the host, fine-tune the float model for a short while with one part
trainable at a time (the biases of the last k layers; the weights of one layer at one channel
ratio), always together with the classifier, and record the accuracy gain over training the
classifier alone. Then search the scheme that maximises the summed gains subject to the SRAM (and
flash) budget, each candidate's memory measured by the converter's own planner.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .autodiff import differentiate
from .emit import emit
from .fuse import feature_cache as cache_frozen_prefix
from .fuse import stream_input as stream_first_input
from .graph import Graph, from_tflite
from .importer import WEIGHT_OPS, import_model
from .plan import plan_memory
from .schedule import lower
from .sparse import SparseUpdate, resolve

RATIOS = (0.125, 0.25, 0.5, 1.0)


@dataclass
class Contributions:
    """Accuracy gains over training the classifier alone (validation accuracy, 0..1)."""

    baseline: float
    bias: dict[int, float] = field(default_factory=dict)  # k -> gain of biases of the last k
    weight: dict[tuple[int, float], float] = field(default_factory=dict)  # (conv, ratio) -> gain


@dataclass
class SparsePlan:
    """The chosen scheme, its predicted gain and its measured memory."""

    update: SparseUpdate
    score: float
    peak_sram_bytes: int
    flash_bytes: int
    contributions: Contributions
    evaluated: int  # distinct schemes whose memory was measured


def _weight_layers(model) -> list:
    return [lay for lay in model.layers if type(lay).__name__ in WEIGHT_OPS]


def _ends_in_softmax(model) -> bool:
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    return type(last).__name__ == "Softmax" or getattr(act, "__name__", "") == "softmax"


def _channel_mask(layer, ratio: float) -> np.ndarray:
    """1 for the first ratio * C output channels of the kernel, broadcastable to its shape."""
    k = layer.kernel
    axis = 2 if type(layer).__name__ == "DepthwiseConv2D" else len(k.shape) - 1
    c = int(k.shape[axis])
    n = c if ratio >= 1 else max(1, int(c * ratio))
    mask = np.zeros(k.shape, np.float32)
    index = [slice(None)] * len(k.shape)
    index[axis] = slice(0, n)
    mask[tuple(index)] = 1.0
    return mask


def _finetune(model, parts: list[tuple], data, val, epochs: int, lr: float, batch: int,
              seed: int) -> float:
    """Fine-tune a copy of the float model; parts = [(layer, "kernel"|"bias", mask or None)]."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    by_name = {lay.name: lay for lay in clone.layers}
    variables, masks = [], []
    for layer, what, mask in parts:
        var = getattr(by_name[layer.name], what, None)
        if var is None:
            continue
        variables.append(var)
        masks.append(None if mask is None else tf.constant(mask))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=not _ends_in_softmax(model))
    x, y = data

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, clone(xb, training=False))
        grads = tape.gradient(loss, variables)
        for v, g, m in zip(variables, grads, masks):
            v.assign_sub(lr * (g if m is None else g * m))

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            step(tf.constant(x[idx]), tf.constant(y[idx]))
    pred = clone.predict(val[0], verbose=0, batch_size=256)
    return float(np.mean(np.argmax(pred, -1) == np.asarray(val[1]).reshape(-1)))


def _digest(model, data, val, settings: dict) -> str:
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    for arr in (*data, *val):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def contribution_analysis(model, train_data, val_data, bias_ks=None, layers=None,
                          ratios=RATIOS, epochs: int = 1, learning_rate: float = 0.05,
                          batch_size: int = 1, seed: int = 0, cache_dir: str | None = None,
                          verbose: bool = True) -> Contributions:
    """Accuracy gain of each candidate part over training the classifier alone (cached on disk)."""
    import keras

    weight_layers = _weight_layers(model)
    n = len(weight_layers)
    if n == 0:
        raise ValueError("the model has no Conv2D, DepthwiseConv2D or Dense layer to train")
    bias_ks = sorted(set(bias_ks or [k for k in (1, 2, 4, 8, 16, 24, 32) if k <= n] + [n]))
    layers = list(range(n // 2, n - 1) if layers is None else layers)
    for i in layers:
        if not 0 <= i < n:
            raise ValueError(f"candidate layer {i} is not a conv index in [0, {n})")
    settings = {"bias_ks": bias_ks, "layers": layers, "ratios": list(ratios), "epochs": epochs,
                "lr": learning_rate, "batch": batch_size, "seed": seed}
    path = None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        path = os.path.join(cache_dir, f"contrib-{_digest(model, train_data, val_data, settings)}.json")
        if os.path.exists(path):
            with open(path) as f:
                raw = json.load(f)
            return Contributions(raw["baseline"], {int(k): v for k, v in raw["bias"].items()},
                                 {(int(k.split(":")[0]), float(k.split(":")[1])): v
                                  for k, v in raw["weight"].items()})
    classifier = weight_layers[-1]
    head = [(classifier, "kernel", None), (classifier, "bias", None)]
    runs = 1 + len(bias_ks) + len(layers) * len(ratios)
    bar = keras.utils.Progbar(runs, verbose=1 if verbose else 0, unit_name="run")

    def run(parts: list) -> float:
        acc = _finetune(model, head + parts, train_data, val_data, epochs, learning_rate,
                        batch_size, seed)
        bar.add(1)
        return acc

    base = run([])
    out = Contributions(base)
    for k in bias_ks:
        out.bias[k] = run([(lay, "bias", None) for lay in weight_layers[n - k:]]) - base
    for i in layers:
        for r in ratios:
            out.weight[(i, float(r))] = run([(weight_layers[i], "kernel",
                                              _channel_mask(weight_layers[i], r))]) - base
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"baseline": out.baseline, "bias": out.bias,
                       "weight": {f"{i}:{r}": v for (i, r), v in out.weight.items()}}, f)
        os.replace(tmp, path)
    return out


# MemoryModel's peak for a scheme that convert() refuses with its stream_input=True or
# feature_cache=True (the scheme trains the first fused block, which reads the image): no budget
# admits it.
NOT_CONVERTIBLE = 1 << 62
UNSTREAMABLE = NOT_CONVERTIBLE


class MemoryModel:
    """Peak SRAM and flash of any sparse scheme of one model, by the converter's own planner."""

    def __init__(self, model, representative_data, loss_head: str = "softmax", fuse: bool = True,
                 requant: bool = True, stream_input: bool = False, feature_cache: bool = False):
        self.fuse, self.requant = fuse, requant  # as convert(fuse=, flash_requant=)
        self.stream_input = stream_input  # as convert(stream_input=)
        self.feature_cache = feature_cache  # as convert(feature_cache=)
        self.imported = import_model(model, representative_data, loss_head)
        self.base: Graph = from_tflite(self.imported.model)
        for ref in self.imported.layers:
            self.base.nodes[ref.op_index].layer = ref.name
        self.channels = [self.base.tensors[self.base.nodes[r.op_index].outputs[0]].shape[-1]
                         for r in self.imported.layers]
        self.head = loss_head
        self.cache: dict[tuple, tuple[int, int]] = {}
        self.plans: dict[tuple, object] = {}  # key -> MemoryPlan
        self.keep_flatbuffers = False
        self.flatbuffers: dict[tuple, bytes] = {}

    def measure(self, update: SparseUpdate) -> tuple[int, int]:
        """(peak SRAM bytes, flash bytes) of the artifact `convert()` would make."""
        return self.cache[self._measure(update)]

    def plan(self, update: SparseUpdate):
        """The MemoryPlan (arena, variables, overhead) of a scheme."""
        return self.plans[self._measure(update)]

    def flatbuffer(self, update: SparseUpdate) -> bytes:
        """The artifact of a scheme (without convert()'s descriptive metadata)."""
        self.keep_flatbuffers = True
        key = self._measure(update)
        if key not in self.flatbuffers:
            del self.cache[key]
            self._measure(update)
        return self.flatbuffers[key]

    def _measure(self, update: SparseUpdate) -> tuple:
        key = (update.bias_last_k, tuple(sorted(update.weight_ratios.items())))
        if key not in self.cache:
            g = copy.deepcopy(self.base)
            plan = resolve(update, self.imported.layers, self.channels)
            differentiate(g, plan, self.head, True, 0)
            lower(g, fuse=self.fuse, flash_requant=self.requant)
            converts = True
            # as convert(): the streamed input first, then the feature cache; each refuses a
            # scheme that trains what reads the image
            for on, rewrite in ((self.stream_input, stream_first_input),
                                (self.feature_cache, cache_frozen_prefix)):
                if on and converts:
                    try:
                        rewrite(g)
                    except ValueError:
                        converts = False
            mem = plan_memory(g)
            self.plans[key] = mem
            data = emit(g, {"head": self.head}, mem.offsets)
            if self.keep_flatbuffers:
                self.flatbuffers[key] = data
            self.cache[key] = (mem.peak_sram_bytes if converts else NOT_CONVERTIBLE, len(data))
        return key


def plan_sparse_update(model, train_data, val_data, memory_budget_kb: float,
                       flash_budget_kb: float | None = None, representative_data=None,
                       bias_ks=None, layers=None, ratios=RATIOS, epochs: int = 1,
                       learning_rate: float = 0.05, batch_size: int = 1,
                       population: int = 32, generations: int = 25,
                       seed: int = 0, cache_dir: str | None = None, verbose: bool = True,
                       return_plan: bool = False, stream_input: bool = False,
                       feature_cache: bool = False) -> SparseUpdate | SparsePlan:
    """The SparseUpdate with the largest summed contribution whose training step fits the budget.

    train_data / val_data: (x, y) arrays of the target task. The classifier always trains.
    Contribution runs fine-tune at batch 1 by default, as the device does. Seeded and
    reproducible; contribution runs are cached in `cache_dir` when given. stream_input: plan
    the memory of artifacts converted with convert(..., stream_input=True) (the image outside
    the arena; a scheme that trains the block reading the image cannot stream and fits no
    budget). feature_cache: the same for convert(..., feature_cache=True) (the cached features
    are a graph input live for the whole step).
    """
    import keras

    x_train = np.asarray(train_data[0], np.float32)
    train = (x_train, np.asarray(train_data[1]))
    val = (np.asarray(val_data[0], np.float32), np.asarray(val_data[1]))
    contrib = contribution_analysis(model, train, val, bias_ks, layers, ratios, epochs,
                                    learning_rate, batch_size, seed, cache_dir, verbose)
    rep = representative_data if representative_data is not None else [
        x_train[i:i + 1] for i in range(min(64, len(x_train)))]
    mem = MemoryModel(model, rep, stream_input=stream_input, feature_cache=feature_cache)
    n = len(mem.imported.layers)
    classifier = n - 1
    ks = sorted(contrib.bias)
    cand = sorted({i for i, _ in contrib.weight})
    budget = memory_budget_kb * 1024
    flash_budget = flash_budget_kb * 1024 if flash_budget_kb else None
    rng = np.random.default_rng(seed)

    def to_update(genome: tuple) -> SparseUpdate:
        k_index, rs = genome
        ratios_map = {i: r for i, r in zip(cand, rs) if r > 0}
        ratios_map[classifier] = 1.0
        return SparseUpdate(ks[k_index], ratios_map)

    def fitness(genome: tuple) -> tuple[float, int, int]:
        k_index, rs = genome
        score = contrib.bias[ks[k_index]] + sum(contrib.weight[(i, r)]
                                                for i, r in zip(cand, rs) if r > 0)
        peak, flash = mem.measure(to_update(genome))
        fits = peak <= budget and (flash_budget is None or flash <= flash_budget)
        return (score if fits else -1e9 - peak / budget), peak, flash

    choices = (0.0, *[float(r) for r in ratios])

    def random_genome(density: float) -> tuple:
        rs = tuple(float(rng.choice(choices[1:])) if rng.random() < density else 0.0 for _ in cand)
        return int(rng.integers(len(ks))), rs

    def mutate(genome: tuple) -> tuple:
        k_index, rs = genome
        rs = list(rs)
        if rng.random() < 0.5:
            k_index = int(np.clip(k_index + rng.choice([-1, 1]), 0, len(ks) - 1))
        if cand:
            j = int(rng.integers(len(cand)))
            rs[j] = float(rng.choice(choices))
        return k_index, tuple(rs)

    def crossover(a: tuple, b: tuple) -> tuple:
        rs = tuple(x if rng.random() < 0.5 else y for x, y in zip(a[1], b[1]))
        return (a[0] if rng.random() < 0.5 else b[0]), rs

    pop = [(0, tuple(0.0 for _ in cand))] + [random_genome(d) for d in
                                            np.linspace(0.05, 0.5, population - 1)]
    scored: dict[tuple, tuple] = {}
    bar = keras.utils.Progbar(generations, verbose=1 if verbose else 0, unit_name="generation")
    for _ in range(generations):
        for gnm in pop:
            if gnm not in scored:
                scored[gnm] = fitness(gnm)
        ranked = sorted(set(pop), key=lambda gnm: -scored[gnm][0])
        parents = ranked[:max(2, population // 4)]
        children = []
        while len(children) < population - len(parents):
            a, b = (parents[int(i)] for i in rng.integers(len(parents), size=2))
            children.append(mutate(crossover(a, b)))
        pop = parents + children
        bar.add(1)
    best = max(scored, key=lambda gnm: scored[gnm][0])
    score, peak, flash = scored[best]
    if score <= -1e9:
        smallest = min(v[1] for v in scored.values())
        if smallest >= NOT_CONVERTIBLE:
            what = " and ".join(f"{n}=True" for n, on in (("stream_input", stream_input),
                                                          ("feature_cache", feature_cache)) if on)
            raise ValueError(f"no sparse update tried can be converted with {what}: each trains "
                             "the first fused block, which reads the image")
        smallest /= 1024
        flash_text = "" if flash_budget is None else f" and {flash_budget_kb} KB of flash"
        raise ValueError(f"no sparse update fits memory_budget_kb={memory_budget_kb} KB of SRAM"
                         f"{flash_text}; the smallest scheme tried needs {smallest:.1f} KB")
    update = to_update(best)
    if not return_plan:
        return update
    return SparsePlan(update, score, peak, flash, contrib, len(mem.cache))


def ratio_fraction(r: float) -> str:
    """1/8-style text of a ratio."""
    return str(Fraction(r).limit_denominator(8))
