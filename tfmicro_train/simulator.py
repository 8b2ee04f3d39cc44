"""HostSimulator: runs a training artifact exactly as the device does, in numpy.

It parses the flatbuffer (not the converter's in-memory graph), executes builtins with the
bit-exact numpy port of TFLM's reference kernels and TMT_* ops with the contract's numpy reference,
and keeps the variable tensors (trainable parameters, training state) as TFLM does. A step is
transactional: a
failing step raises and leaves every parameter and counter as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from flatbuffers import flexbuffers

from .emit import read_metadata
from .export import inference_model
from .graph import STATE_MAGIC
from .importer import buffer_array, tensor_info
from .kernels import fused_ops
from .kernels import training_ops as T
from .kernels.builtin_ops import BUILTIN_KERNELS
from .schema import fb, op_name
from .updates import BFACTOR, BIAS, STATE

F32 = np.float32


@dataclass
class _Op:
    name: str
    inputs: list[int]
    outputs: list[int]
    options: object


class _Subgraph:
    def __init__(self, model: fb.ModelT, index: int):
        sg = model.subgraphs[index]
        self.infos = [tensor_info(sg, i) for i in range(len(sg.tensors))]
        self.consts = {i: buffer_array(model, sg, i) for i in range(len(sg.tensors))}
        self.consts = {i: a for i, a in self.consts.items() if a is not None}
        self.is_variable = [bool(t.isVariable) for t in sg.tensors]
        self.inputs = [int(i) for i in sg.inputs]
        self.outputs = [int(o) for o in sg.outputs]
        self.ops = []
        for op in sg.operators:
            name = op_name(model, op)
            if name.startswith("TMT_"):
                raw = bytes(bytearray(op.customOptions)) if op.customOptions is not None else b""
                options = flexbuffers.Loads(raw) if raw else {}
            else:
                options = op.builtinOptions
            self.ops.append(_Op(name, [int(i) for i in op.inputs], [int(o) for o in op.outputs],
                                options))


class HostSimulator:
    """The device, bit-exact, in numpy: `train_step()`, `predict()`, `gradients()`, `invoke()`."""

    def __init__(self, artifact, learning_rate=None):
        data = artifact.flatbuffer if hasattr(artifact, "flatbuffer") else bytes(artifact)
        self._artifact = data
        self.model = fb.ModelT.InitFromPackedBuf(data, 0)
        self.meta = read_metadata(self.model)
        self.main = _Subgraph(self.model, 0)
        if learning_rate is None:  # the artifact's optimizer schedule, else its base rate
            learning_rate = getattr(artifact, "optimizer", None) or self.meta.get("learning_rate", 0.01)
        self.learning_rate = learning_rate
        sg = self.main
        self.variables: dict[int, np.ndarray] = {  # as TFLM resets them: zero point / zero
            t: np.full(info.shape, info.zero_point[0] if info.quantized else 0, info.dtype)
            for t, info in enumerate(sg.infos) if sg.is_variable[t]}
        # a streamed input (convert(stream_input=True)): the image the first fused block reads
        # from outside the arena; invoke() still takes it first
        op = next((op for op in sg.ops if op.name == fused_ops.OP_NAME
                   and op.options.get("x_external")), None)
        self._streamed = None if op is None else replace(
            fused_ops.external_x_info(op.options),
            name=self.meta.get("stream_input", {}).get("name", "streamed input"))
        # a feature cache (convert(feature_cache=True)): the frozen prefix's skip flag and output
        self._cache = self.meta.get("feature_cache")
        self.state_tensor = next(t for t in self.variables if sg.infos[t].name == "tmt/state")
        self.steps = 0
        self._record: dict | None = None

    # ------------------------------------------------------------------ device-level interface
    def invoke(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """One interpreter invocation on raw input tensors (int8 image, int32 label, float32 lr).
        A streamed input (convert(stream_input=True)) comes first, as the image: the device
        reads it from outside the arena.

        Transactional: if an operator fails, the variable tensors keep their previous values."""
        sg = self.main
        n_inputs = len(sg.inputs) + (self._streamed is not None)
        if len(inputs) != n_inputs:
            raise ValueError(f"the artifact takes {n_inputs} inputs, got {len(inputs)}")
        values: dict = dict(sg.consts)
        tensors = sg.inputs
        if self._streamed is not None:  # the image first, then the artifact's inputs
            tensors = [fused_ops.EXTERNAL_X, *sg.inputs]
        for i, (t, arr) in enumerate(zip(tensors, inputs)):
            info = self._streamed if t == fused_ops.EXTERNAL_X else sg.infos[t]
            arr = np.asarray(arr)
            if arr.dtype != info.dtype:
                raise ValueError(f"input {i} ('{info.name}') must be {info.dtype}, got {arr.dtype}")
            if arr.size != int(np.prod(info.shape)):
                raise ValueError(f"input {i} ('{info.name}') must have shape {info.shape}, "
                                 f"got {arr.shape}")
            values[t] = arr.reshape(info.shape)
        values.update({t: v.copy() for t, v in self.variables.items()})
        for index, op in enumerate(sg.ops):
            self._run_op(sg, index, op, values)
        self.variables = {t: values[t] for t in self.variables}
        return [values[t] for t in sg.outputs]

    def _run_op(self, sg: _Subgraph, index: int, op: _Op, values: dict) -> None:
        if op.name.startswith("TMT_"):
            _run_training_op(self, sg, index, op, values)
            return
        kernel = BUILTIN_KERNELS.get(op.name)
        if kernel is None:
            raise ValueError(f"operator {index} ({op.name}) has no host kernel")
        ins = [values[t] if t >= 0 else None for t in op.inputs]
        outs = kernel(ins, [sg.infos[t] if t >= 0 else None for t in op.inputs],
                      [sg.infos[t] for t in op.outputs], op.options)
        for t, arr in zip(op.outputs, outs):
            values[t] = np.asarray(arr).reshape(sg.infos[t].shape)

    @property
    def step(self) -> int:
        """The device's training-step counter (drives the stochastic rounding)."""
        return int(np.uint32(self.variables[self.state_tensor][1]))

    # ------------------------------------------------------------------ user-level interface
    @property
    def streamed_input(self):
        """The image's TensorInfo when the artifact streams it (convert(stream_input=True)), else
        None."""
        return self._streamed

    @property
    def input_info(self):
        if self._streamed is not None:
            return self._streamed
        return self.main.infos[self.main.inputs[0]]

    @property
    def output_info(self):
        return self.main.infos[self.main.outputs[0]]

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float image(s) -> int8 with the artifact's input quantization (int8 passes through)."""
        x = np.asarray(x)
        if x.dtype == np.int8:
            return x
        info = self.input_info
        q = np.round(x.astype(np.float64) / info.scale[0]) + info.zero_point[0]
        return np.clip(q, -128, 127).astype(np.int8)

    def _label_array(self, y) -> np.ndarray:
        if self.meta["head"] == "softmax":
            arr = np.asarray(y)
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"label must be an integer class index, got dtype {arr.dtype}")
            n = self.output_info.shape[-1]
            if arr.size != 1 or not 0 <= int(arr.reshape(-1)[0]) < n:
                raise ValueError(f"label {arr.reshape(-1)[:4].tolist()} out of range [0, {n})")
            return arr.reshape(1).astype(np.int32)
        info = self.output_info
        t = np.asarray(y, np.float64).reshape(info.shape)
        q = np.round(t / info.scale[0]) + info.zero_point[0]
        return np.clip(q, -128, 127).astype(np.int8)

    def _lr(self, learning_rate: float | None) -> np.ndarray:
        lr = self.learning_rate if learning_rate is None else learning_rate
        if callable(lr):
            lr = lr(self.steps)
        lr = float(lr)
        if not np.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning_rate must be a positive finite number, got {lr}")
        return np.array([lr], F32)

    def _dummy_label(self) -> np.ndarray:
        if self.meta["head"] == "softmax":
            return np.zeros(1, np.int32)
        return np.zeros(self.output_info.shape, np.int8)

    @property
    def feature_cache(self) -> dict | None:
        """The cached features' description (convert(feature_cache=True)), else None."""
        return self._cache

    def _need_cache(self, what: str) -> dict:
        """The feature cache's description; ValueError naming `what` when there is none."""
        if self._cache is None:
            raise ValueError(f"{what}: the artifact has no feature cache (convert(..., "
                             "feature_cache=True))")
        return self._cache

    def _invoke(self, x, label: np.ndarray, lr: np.ndarray, features=None) -> list[np.ndarray]:
        """invoke() on one sample (_inputs)."""
        return self.invoke(self._inputs(x, label, lr, features))

    def _inputs(self, x, label: np.ndarray, lr: np.ndarray, features=None) -> list[np.ndarray]:
        """The raw inputs of one invocation: the image x, or with a feature cache its cached
        features (x unused, may be None: the frozen prefix is skipped)."""
        if features is None:
            raw = [self.quantize_input(x).reshape(self.input_info.shape), label, lr]
        else:
            self._need_cache("features")
            raw = [np.zeros(self.input_info.shape, np.int8), label, lr]
        if self._cache is not None:
            shape = tuple(self._cache["shape"])
            if features is not None:
                f = np.asarray(features)
                if f.dtype != np.int8 or f.size != int(np.prod(shape)):
                    raise ValueError(f"features must be int8 with shape {list(shape)} (the "
                                     f"output of '{self._cache['layer']}'), got {f.dtype} "
                                     f"{list(f.shape)}")
            raw += [np.array([0 if features is None else 1], np.int32),
                    np.zeros(shape, np.int8) if features is None else f.reshape(shape)]
        return raw

    def train_step(self, x, y, learning_rate: float | None = None, features=None) -> float:
        """One on-device training step on one sample (batch 1); returns the loss. With a
        feature cache, `features` (from features() or fit(cache_features=True)) replaces the image x: the
        step skips the frozen prefix and trains exactly as on the image."""
        return float(self._train(x, y, learning_rate, features)[1][0])

    def _train(self, x, y, learning_rate, features=None) -> list[np.ndarray]:
        out = self._invoke(x, self._label_array(y), self._lr(learning_rate), features)
        self.steps += 1
        return out

    def features(self, x) -> np.ndarray:
        """The cached features of sample x: the frozen prefix's int8 output (an inference call;
        a training step on x gives the same as its last output)."""
        self._need_cache("features")
        out = self._invoke(x, self._dummy_label(), np.zeros(1, F32))
        return out[self._cache["features_output"]].copy()

    def fit(self, xs, ys, epochs: int = 1, learning_rate=None, shuffle_seed: int = 0,
            cache_features: bool = False) -> list[float]:
        """Train sample by sample; returns the mean loss of every epoch. cache_features (an
        artifact with a feature cache): keep each sample's features from its first step and
        train later epochs on them, skipping the frozen prefix (the same results)."""
        if cache_features:
            self._need_cache("cache_features")
        rng = np.random.default_rng(shuffle_seed)
        cached: dict[int, np.ndarray] = {}
        means = []
        for _ in range(epochs):
            losses = []
            for i in rng.permutation(len(xs)):
                out = self._train(xs[i], ys[i], learning_rate, cached.get(i))
                losses.append(float(out[1][0]))
                if cache_features and i not in cached:
                    cached[i] = out[self._cache["features_output"]].copy()
            means.append(float(np.mean(losses)))
        return means

    def predict_raw(self, x, features=None) -> np.ndarray:
        """Raw int8 output of one sample (an inference call: lr = 0 skips every TMT op); with a
        feature cache, `features` may replace x."""
        return self._invoke(x, self._dummy_label(), np.zeros(1, F32), features)[0]

    def predict(self, x) -> np.ndarray:
        """Dequantized outputs (probabilities for a softmax head) for a batch of samples."""
        x = np.asarray(x)
        batch = x.reshape((-1,) + self.input_info.shape[1:])
        info = self.output_info
        outs = [(self.predict_raw(s[None]).astype(np.float64) - info.zero_point[0]) * info.scale[0]
                for s in batch]
        return np.concatenate(outs, axis=0)

    def evaluate(self, xs, ys) -> float:
        """Classification accuracy over a data set."""
        return float(np.mean(np.argmax(self.predict(xs), axis=-1) == np.asarray(ys).reshape(-1)))

    def gradients(self, x, y) -> dict[str, np.ndarray]:
        """Real-valued gradients dL/dparam of every trainable parameter, computed by the device
        kernels (dequantized), without updating anything. Channels that do not train are 0."""
        self._record = {}
        saved = ({k: v.copy() for k, v in self.variables.items()}, self.steps)
        try:
            self.train_step(x, y, learning_rate=1e-30)
            return self._record
        finally:
            self.variables, self.steps = saved
            self._record = None

    def _initialise(self) -> None:
        """What TMT_INIT does on the first invocation."""
        values = dict(self.main.consts)
        values.update(self.variables)
        _run_init(self.main, next(op for op in self.main.ops if op.name == "TMT_INIT"), values)
        self.variables = {t: values[t] for t in self.variables}

    def weights(self) -> dict[str, np.ndarray]:
        """Current values of the variable tensors by name: int8 weights, int32 biases and the int16
        changes of narrow biases (`parameters()` gives those as int32 biases)."""
        self._initialise()
        infos = self.main.infos
        return {infos[t].name: v.copy() for t, v in self.variables.items()
                if t != self.state_tensor}

    def parameters(self) -> dict[str, np.ndarray]:
        """The trainable parameters as the forward pass uses them, by name: int8 weights and
        int32 biases (a narrow bias, which `weights()` gives as its int16 change, as base +
        change * 2^k)."""
        from .kernels import conv_ops

        values = self.weights()
        infos, consts = self.main.infos, self.main.consts
        for op in self.main.ops:
            b = op.inputs[conv_ops.B] if op.name == conv_ops.OP_NAME else -1
            if b >= 0 and infos[b].name in values and values[infos[b].name].dtype == np.int16:
                rows = np.asarray(consts[op.inputs[conv_ops.REQUANT]]).reshape(4, -1)
                values[infos[b].name] = conv_ops.expand_bias(rows[2], values[infos[b].name], rows[3])
        return values

    def export_tflite(self) -> bytes:
        """The network with its current (fine-tuned) parameters as a plain int8 TFLite model."""
        return inference_model(bytes(self._artifact), self.weights())

    def load_weights(self, values: dict[str, np.ndarray]) -> None:
        """Replace trainable parameters (same names, shapes and dtypes as `weights()`)."""
        current = self.weights()
        for k, v in values.items():
            if k not in current:
                raise ValueError(f"'{k}' is not a trainable parameter of this artifact")
            v = np.asarray(v)
            if v.shape != current[k].shape or v.dtype != current[k].dtype:
                raise ValueError(f"parameter '{k}' must be {current[k].dtype}{current[k].shape}, "
                                 f"got {v.dtype}{v.shape}")
        by_name = {self.main.infos[t].name: t for t in self.variables}
        for k, v in values.items():
            self.variables[by_name[k]] = np.asarray(v).copy()

    def save_checkpoint(self, region: bytearray | None = None) -> bytearray:
        """Save the training state (every variable tensor) into a two-slot, power-safe region,
        byte-identical to the device's `tfmicro_train::checkpoint::Save` (a new region if None)."""
        from .checkpoint import save_simulator

        return save_simulator(self, region)

    def load_checkpoint(self, region: bytes | bytearray) -> int:
        """Restore the newest valid checkpoint of this artifact from `region`; returns its sequence
        number. Raises checkpoint.CheckpointError (state unchanged) if there is none."""
        from .checkpoint import load_simulator

        return load_simulator(self, region)


def _geom(o: dict) -> T.ConvGeom:
    return T.ConvGeom(o["stride_h"], o["stride_w"], o["pad_top"], o["pad_left"])


def _run_init(sg: _Subgraph, op: _Op, values: dict) -> None:
    """TMT_INIT: if state[0] != STATE_MAGIC, copy each (init, variable) pair; state = [MAGIC, 0]."""
    state = values[op.inputs[0]]
    if int(state[0]) == STATE_MAGIC:
        return
    pairs = op.inputs[1:]
    for init, var in zip(pairs[::2], pairs[1::2]):
        values[var] = values[init].copy()
    values[op.inputs[0]] = np.array([STATE_MAGIC, 0], np.int32)


def _run_training_op(sim: HostSimulator, sg: _Subgraph, index: int, op: _Op, values: dict) -> None:
    """Execute one TMT_* op on the value table (updates in place on the variable copies)."""
    name = op.name
    if name == "TMT_INIT":
        _run_init(sg, op, values)
        return
    if name == "TMT_FUSED_IRB":  # a forward op: no learning rate, runs at inference too
        from .kernels import fused_ops

        fused_ops.run_op(sg, op, values)
        return
    if name == "TMT_CONV":  # a forward op (the builtin convolution, multipliers from flash)
        from .kernels import conv_ops

        conv_ops.run_op(sg, op, values)
        return
    if name == "TMT_MEAN":  # a forward op (the builtin MEAN over H and W, no scratch)
        from .kernels import conv_ops

        conv_ops.run_mean_op(sg, op, values)
        return
    if name not in _LR_SLOT:
        raise ValueError(f"operator {index}: unknown custom op {name}")
    ins = [values.get(t) if t >= 0 else None for t in op.inputs]
    o = op.options
    lr = F32(ins[_LR_SLOT[name]][0])
    if name in _LOSS_OPS:
        if not (lr >= 0):
            raise ValueError(f"{name}: learning rate {lr} must be >= 0")
    if not lr > 0:
        if name in _LOSS_OPS:
            values[op.outputs[-1]] = np.zeros(1, F32)
        return
    outs: list = []
    if "g_bcast_h" in o:  # a folded TMT_MEAN_GRAD (+ TMT_MASK_GRAD): the gradient it stands for
        hw = (o["g_bcast_h"], o["g_bcast_w"])
        full, s = T.broadcast_grad(ins[0], ins[1][0], hw, ins[6] if len(ins) > 6 else None,
                                   float(T.broadcast_inv(*hw)))
        ins[0], ins[1] = full, np.array([s], F32)
    if name == "TMT_CONV_INPUT_GRAD" and len(ins) > 5 and ins[5] is not None:
        ins[2] = np.concatenate([ins[2], ins[5]])  # the weights in two parts: w, then w_rest
    # the gradient's type picks the mode (the loss ops: their output); masking, copying and the
    # updates run the same code in both modes
    grad_type = sg.infos[op.outputs[0]].dtype if name in _LOSS_OPS else ins[0].dtype
    if grad_type == np.float32 and name in _F32_OPS:
        outs = _run_f32(sg, op, ins, values)
    elif name == "TMT_SOFTMAX_CE_GRAD":
        g, s, loss = T.softmax_ce_grad(ins[0], int(ins[1].reshape(-1)[0]), ins[3])
        outs = [g, np.array([s], F32), np.array([loss], F32)]
        _advance_step(values, op.inputs[4])
    elif name == "TMT_MSE_GRAD":
        g, s, loss = T.mse_grad(ins[0], ins[1], float(sg.infos[op.inputs[0]].scale[0]))
        outs = [g, np.array([s], F32), np.array([loss], F32)]
        _advance_step(values, op.inputs[3])
    elif name == "TMT_ACT_GRAD":
        outs = [T.act_grad(ins[0], ins[1], o["act_min"], o["act_max"])]
    elif name == "TMT_MASK_PACK":
        outs = [T.mask_pack(ins[0], o["act_min"], o["act_max"])]
    elif name == "TMT_MASK_GRAD":
        outs = [T.mask_grad(ins[0], ins[1])]
    elif name == "TMT_GRAD_ADD":
        g, s = T.grad_add(ins[0], ins[1][0], ins[2], ins[3][0])
        outs = [g, np.array([s], F32)]
    elif name == "TMT_MEAN_GRAD":
        g, s = T.mean_grad(ins[0], ins[1][0], sg.infos[op.outputs[0]].shape, o["inv_count"])
        outs = [g, np.array([s], F32)]
    elif name == "TMT_RESHAPE_GRAD":
        outs = [T.reshape_grad(ins[0], sg.infos[op.outputs[0]].shape)]
    elif name == "TMT_PAD_GRAD":
        outs = [T.pad_grad(ins[0], sg.infos[op.outputs[0]].shape, o["pad_top"], o["pad_left"])]
    elif name in ("TMT_AVGPOOL_GRAD", "TMT_MAXPOOL_GRAD"):
        filt = (o["filter_h"], o["filter_w"])
        if name == "TMT_AVGPOOL_GRAD":
            g, s = T.avgpool_grad(ins[0], ins[1][0], sg.infos[op.outputs[0]].shape, filt, _geom(o))
        else:
            g, s = T.maxpool_grad(ins[0], ins[1][0], ins[2], ins[3], filt, _geom(o))
        outs = [g, np.array([s], F32)]
    elif name in ("TMT_CONV_INPUT_GRAD", "TMT_DW_INPUT_GRAD"):
        fn = T.conv_input_grad if name == "TMT_CONV_INPUT_GRAD" else T.depthwise_input_grad
        g, s = fn(ins[0], ins[1][0], ins[2], ins[3], o["w_scale_max"],
                  sg.infos[op.outputs[0]].shape, _geom(o))
        outs = [g, np.array([s], F32)]
        if len(op.inputs) > BIAS and op.inputs[BIAS] >= 0:  # a folded TMT_BIAS_UPDATE (updates.py)
            b_ins = [op.inputs[0], op.inputs[1], op.inputs[BIAS], op.inputs[BFACTOR],
                     op.inputs[4], op.inputs[STATE]]
            update = _Op("TMT_BIAS_UPDATE", b_ins, [], {"update_channels": o["b_update_channels"],
                                                          "seed": o["b_seed"]})
            _run_update(sim, sg, update, [ins[0], ins[1], *(values[t] for t in b_ins[2:])],
                        values, lr)
    elif name in ("TMT_CONV_WEIGHT_UPDATE", "TMT_DW_WEIGHT_UPDATE", "TMT_BIAS_UPDATE"):
        _run_update(sim, sg, op, ins, values, lr)
    for t, arr in zip(op.outputs, outs):
        values[t] = np.asarray(arr).reshape(sg.infos[t].shape)


_LR_SLOT = {"TMT_SOFTMAX_CE_GRAD": 2, "TMT_MSE_GRAD": 2, "TMT_ACT_GRAD": 2, "TMT_MASK_PACK": 1,
            "TMT_MASK_GRAD": 2, "TMT_GRAD_ADD": 4,
            "TMT_MEAN_GRAD": 2, "TMT_PAD_GRAD": 1, "TMT_RESHAPE_GRAD": 1, "TMT_AVGPOOL_GRAD": 2,
            "TMT_MAXPOOL_GRAD": 4, "TMT_CONV_INPUT_GRAD": 4, "TMT_DW_INPUT_GRAD": 4,
            "TMT_CONV_WEIGHT_UPDATE": 5, "TMT_DW_WEIGHT_UPDATE": 5, "TMT_BIAS_UPDATE": 4}


_LOSS_OPS = ("TMT_SOFTMAX_CE_GRAD", "TMT_MSE_GRAD")
_F32_OPS = _LOSS_OPS + ("TMT_GRAD_ADD", "TMT_MEAN_GRAD", "TMT_AVGPOOL_GRAD", "TMT_MAXPOOL_GRAD",
                        "TMT_CONV_INPUT_GRAD", "TMT_DW_INPUT_GRAD")


def _run_f32(sg: _Subgraph, op: _Op, ins: list, values: dict) -> list:
    """The fp32-backward variant of an op in _F32_OPS (float32 gradients, no scale tensors)."""
    name, o = op.name, op.options
    out_shape = sg.infos[op.outputs[0]].shape
    if name == "TMT_SOFTMAX_CE_GRAD":
        g, loss = T.softmax_ce_grad_f32(ins[0], int(ins[1].reshape(-1)[0]), ins[3])
        _advance_step(values, op.inputs[4])
        return [g, np.array([loss], F32)]
    if name == "TMT_MSE_GRAD":
        g, loss = T.mse_grad_f32(ins[0], ins[1], float(sg.infos[op.inputs[0]].scale[0]))
        _advance_step(values, op.inputs[3])
        return [g, np.array([loss], F32)]
    if name == "TMT_GRAD_ADD":
        return [T.grad_add_f32(ins[0], ins[2])]
    if name == "TMT_MEAN_GRAD":
        return [T.mean_grad_f32(ins[0], out_shape, o["inv_count"])]
    if name == "TMT_AVGPOOL_GRAD":
        return [T.avgpool_grad_f32(ins[0], out_shape, (o["filter_h"], o["filter_w"]), _geom(o))]
    if name == "TMT_MAXPOOL_GRAD":
        return [T.maxpool_grad_f32(ins[0], ins[2], ins[3], (o["filter_h"], o["filter_w"]), _geom(o))]
    if name == "TMT_CONV_INPUT_GRAD":
        return [T.conv_input_grad_f32(ins[0], ins[2], ins[3], out_shape, _geom(o))]
    return [T.depthwise_input_grad_f32(ins[0], ins[2], ins[3], out_shape, _geom(o))]


def _advance_step(values: dict, state: int) -> None:
    """The loss op counts training steps (uint32, wrapping) after validating its inputs."""
    s = values[state].copy()
    s.view(np.uint32)[1] += np.uint32(1)
    values[state] = s


def _run_update(sim: HostSimulator, sg: _Subgraph, op: _Op, ins: list, values: dict,
                lr: np.float32) -> None:
    o = op.options
    name = op.name
    counter = int(np.uint32(ins[5 if name == "TMT_BIAS_UPDATE" else 6][1]))  # the state's [1]
    p = T.UpdateParams(o["update_channels"], o["seed"], o.get("x_zero_point", 0))
    g = ins[0]
    fp32 = g.dtype == np.float32
    s = F32(1.0) if fp32 else F32(ins[1][0])
    slot = 2 if name == "TMT_BIAS_UPDATE" else 3
    target = op.inputs[slot]
    if sim._record is not None:
        sim._record[sg.infos[target].name] = _real_gradient(sg, op, ins, p, s)
        return
    if fp32:
        if name == "TMT_BIAS_UPDATE":
            new = T.bias_update_f32(ins[2], g, ins[3], lr, p, counter)
        elif name == "TMT_CONV_WEIGHT_UPDATE":
            new = T.conv_weight_update_f32(ins[3], g, ins[2], ins[4], lr, _geom(o), p, counter)
        else:
            new = T.depthwise_weight_update_f32(ins[3], g, ins[2], ins[4], lr, _geom(o), p, counter)
    elif name == "TMT_BIAS_UPDATE":
        new = T.bias_update(ins[2], g, s, ins[3], lr, p, counter)
    elif name == "TMT_CONV_WEIGHT_UPDATE":
        new = T.conv_weight_update(ins[3], g, s, ins[2], ins[4], lr, _geom(o), p, counter)
    else:
        new = T.depthwise_weight_update(ins[3], g, s, ins[2], ins[4], lr, _geom(o), p, counter)
    values[target] = new


def _real_gradient(sg: _Subgraph, op: _Op, ins: list, p: T.UpdateParams, s: np.float32):
    """dL/dparam in real units from the same integer accumulators the update op uses."""
    o = op.options
    fp32 = ins[0].dtype == np.float32
    if op.name == "TMT_BIAS_UPDATE":
        acc = (T.bias_grad_f32 if fp32 else T.bias_grad_acc)(ins[0], p.update_channels)
        out = np.zeros(ins[2].shape, np.float64)
        out[:p.update_channels] = acc * float(s)
        return out
    x, w = ins[2], ins[3]
    s_x = float(sg.infos[op.inputs[2]].scale[0])
    if op.name == "TMT_CONV_WEIGHT_UPDATE":
        w4 = w.reshape(w.shape[0], 1, 1, -1) if w.ndim == 2 else w
        fn = T.conv_weight_grad_f32 if fp32 else T.conv_weight_grad_acc
        acc = fn(ins[0], x, p.x_zero_point, w4.shape[1:3], _geom(o), p.update_channels)
        out = np.zeros(w4.shape, np.float64)
        out[:p.update_channels] = acc * float(s) * s_x
        return out.reshape(w.shape)
    fn = T.depthwise_weight_grad_f32 if fp32 else T.depthwise_weight_grad_acc
    acc = fn(ins[0], x, p.x_zero_point, w.shape[1:3], _geom(o), p.update_channels)
    out = np.zeros(w.shape, np.float64)
    out[0, :, :, :p.update_channels] = np.moveaxis(acc, 0, 2) * float(s) * s_x
    return out
