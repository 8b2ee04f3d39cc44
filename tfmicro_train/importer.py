"""Stage 1 of the pipeline: Keras model -> validated int8 TFLite graph with its layers located.

The forward graph is made by TensorFlow's own converter (full-integer post-training quantization,
per-channel weights, int8 input and output). This module checks the Keras model and the
representative data, converts, and maps every Conv2D / DepthwiseConv2D / Dense layer (the
"conv index" of the MIT paper, counted from 0 at the input) to its operator in the flatbuffer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .schema import TensorInfo, fb, op_name, tensor_data
from .schema import tensor_info as schema_tensor_info

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SUPPORTED_LAYERS = (
    "InputLayer", "Conv2D", "DepthwiseConv2D", "Dense", "BatchNormalization", "ReLU", "Activation",
    "Add", "ZeroPadding2D", "GlobalAveragePooling2D", "AveragePooling2D", "MaxPooling2D",
    "Flatten", "Reshape", "Dropout", "Rescaling", "Softmax",
)
SUPPORTED_ACTIVATIONS = ("linear", "relu", "relu6", "softmax")
WEIGHT_OPS = {"Conv2D": "CONV_2D", "DepthwiseConv2D": "DEPTHWISE_CONV_2D", "Dense": "FULLY_CONNECTED"}


@dataclass(frozen=True)
class LayerRef:
    """A weight layer of the Keras model and the operator it became."""

    conv_index: int
    name: str
    kind: str  # "CONV_2D" | "DEPTHWISE_CONV_2D" | "FULLY_CONNECTED"
    op_index: int


@dataclass
class ImportedModel:
    """The converted forward graph and what the later stages need to know about it."""

    model: fb.ModelT
    layers: list[LayerRef]
    head: str  # "softmax" (classification) or "linear" (regression)
    input_shape: tuple[int, ...]
    float_model: object  # the Keras model actually converted (softmax appended if needed)
    flatbuffer: bytes  # the converter's inference model, as it came out


def _activation_name(act) -> str:
    name = getattr(act, "__name__", str(act))
    return name.lower()


def check_layers(model) -> None:
    """Raise ValueError naming the first layer the converter cannot train, before anything runs."""
    supported = ", ".join(SUPPORTED_LAYERS)
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in SUPPORTED_LAYERS:
            raise ValueError(
                f"layer '{layer.name}' of type {kind} is not supported; supported layer types: "
                f"{supported}")
        act = getattr(layer, "activation", None)
        if act is not None and _activation_name(act) not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"layer '{layer.name}' ({kind}) uses activation '{_activation_name(act)}'; "
                f"supported activations: {', '.join(SUPPORTED_ACTIVATIONS)}")
        if kind == "ReLU" and (float(layer.negative_slope) != 0 or float(layer.threshold) != 0
                               or layer.max_value not in (None, 6.0, 6)):
            raise ValueError(
                f"layer '{layer.name}' (ReLU) must be a plain ReLU or ReLU6 (no slope, threshold "
                "or other max_value)")
        if kind == "DepthwiseConv2D" and int(layer.depth_multiplier) != 1:
            raise ValueError(f"layer '{layer.name}' (DepthwiseConv2D) must have depth_multiplier 1")
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(f"layer '{layer.name}' ({kind}) must use data_format channels_last")


def collect_samples(data: Iterable, input_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Materialise representative data as float32 batches of the model's input shape."""
    if data is None:
        raise ValueError("representative_data is required: an iterable of input batches")
    samples = []
    for i, item in enumerate(data):
        if isinstance(item, (list, tuple)):
            item = item[0]
        arr = np.asarray(item, np.float32)
        if arr.shape == input_shape[1:]:
            arr = arr[None]
        if arr.ndim != len(input_shape) or tuple(arr.shape[1:]) != tuple(input_shape[1:]):
            raise ValueError(
                f"representative_data sample {i} has shape {arr.shape}; the model input is "
                f"{input_shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"representative_data sample {i} contains NaN or Inf values")
        samples.extend(arr[j:j + 1] for j in range(arr.shape[0]))
    if not samples:
        raise ValueError("representative_data is empty")
    return samples


def _with_softmax(model, head: str):
    """The model to convert: classification heads end in a softmax (appended if missing)."""
    import keras

    last = model.layers[-1]
    ends_softmax = type(last).__name__ == "Softmax" or (
        getattr(last, "activation", None) is not None
        and _activation_name(last.activation) == "softmax")
    if head == "linear" or ends_softmax:
        return model
    out = keras.layers.Softmax(name="tmt_softmax")(model.output)
    return keras.Model(model.inputs, out, name=model.name)


def tflite_convert(model, samples: list[np.ndarray]) -> bytes:
    """TensorFlow's full-integer post-training quantization (int8 in and out, per-channel)."""
    import tensorflow as tf

    def rep():
        for s in samples:
            yield [s]

    import keras

    fixed = keras.Input(batch_shape=(1,) + tuple(model.inputs[0].shape[1:]))
    conv = tf.lite.TFLiteConverter.from_keras_model(keras.Model(fixed, model(fixed)))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def tensor_info(sg: fb.SubGraphT, idx: int) -> TensorInfo:
    """TensorInfo of tensor `idx` of a subgraph."""
    return schema_tensor_info(sg.tensors[idx])


def buffer_array(model: fb.ModelT, sg: fb.SubGraphT, idx: int) -> np.ndarray | None:
    """The constant data of tensor `idx` of a subgraph, or None."""
    return tensor_data(model, sg.tensors[idx])


def _kernel_as_tflite(layer) -> np.ndarray:
    k = np.asarray(layer.get_weights()[0], np.float64)
    kind = type(layer).__name__
    if kind == "Conv2D":
        return np.transpose(k, (3, 0, 1, 2))
    if kind == "DepthwiseConv2D":
        return k.reshape(1, k.shape[0], k.shape[1], -1)
    return k.T


def _match_score(kernel: np.ndarray, weights: np.ndarray, qdim: int) -> float:
    """Mean |correlation| per output channel (batch-norm folding rescales channels)."""
    a = np.moveaxis(kernel, qdim, 0).reshape(kernel.shape[qdim], -1)
    b = np.moveaxis(weights.astype(np.float64), qdim, 0).reshape(weights.shape[qdim], -1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    corr = np.abs((a * b).sum(axis=1)) / np.where(den > 0, den, 1)
    return float(np.where(den > 0, corr, 0).mean())


def locate_layers(float_model, model: fb.ModelT) -> list[LayerRef]:
    """Map each weight layer (in Keras order) to its CONV_2D / DEPTHWISE_CONV_2D / FC operator."""
    sg = model.subgraphs[0]
    candidates: dict[int, tuple[str, np.ndarray, int]] = {}
    for i, op in enumerate(sg.operators):
        name = op_name(model, op)
        if name in WEIGHT_OPS.values():
            w = buffer_array(model, sg, op.inputs[1])
            if w is not None:
                qdim = 3 if name == "DEPTHWISE_CONV_2D" else 0
                candidates[i] = (name, w, qdim)
    refs, taken = [], set()
    weight_layers = [lay for lay in float_model.layers if type(lay).__name__ in WEIGHT_OPS]
    for ci, layer in enumerate(weight_layers):
        kernel = _kernel_as_tflite(layer)
        kind = WEIGHT_OPS[type(layer).__name__]
        best, best_score = None, -1.0
        for i, (name, w, qdim) in candidates.items():
            if i in taken or name != kind or w.shape != kernel.shape:
                continue
            score = _match_score(kernel, w, qdim)
            if score > best_score:
                best, best_score = i, score
        if best is None:
            raise ValueError(
                f"layer '{layer.name}' ({type(layer).__name__}) has no matching {kind} operator in "
                "the converted graph (was it folded away?)")
        taken.add(best)
        refs.append(LayerRef(ci, layer.name, kind, best))
    return refs


def import_model(keras_model, representative_data: Iterable, head: str = "softmax"
                 ) -> ImportedModel:
    """Validate, convert to int8 TFLite, and locate the weight layers."""
    if head not in ("softmax", "linear"):
        raise ValueError(f"head must be 'softmax' or 'linear', got {head!r}")
    if len(keras_model.inputs) != 1 or len(keras_model.outputs) != 1:
        raise ValueError("the model must have exactly one input and one output")
    check_layers(keras_model)
    input_shape = (1,) + tuple(int(d) for d in keras_model.inputs[0].shape[1:])
    samples = collect_samples(representative_data, input_shape)
    float_model = _with_softmax(keras_model, head)
    flatbuffer = tflite_convert(float_model, samples)
    model = fb.ModelT.InitFromPackedBuf(flatbuffer, 0)
    if len(model.subgraphs) != 1:
        raise ValueError("the converted model has more than one subgraph")
    return ImportedModel(model, locate_layers(float_model, model), head, input_shape, float_model,
                         flatbuffer)
