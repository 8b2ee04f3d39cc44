"""TensorFlow float autodiff of an artifact's forward graph (dequantized weights, float activations).

The reference the int8 gradients are judged against: the same quantized model (same int8 weights,
dequantized), run in float32 by TensorFlow and differentiated by tf.GradientTape.
"""

from __future__ import annotations

import types

import numpy as np
import tensorflow as tf

from tfmicro_train.kernels import conv_ops
from tfmicro_train.schema import fb
from tfmicro_train.simulator import HostSimulator

ACT = {fb.ActivationFunctionType.NONE: lambda v: v, fb.ActivationFunctionType.RELU: tf.nn.relu,
       fb.ActivationFunctionType.RELU6: tf.nn.relu6}


def _deq(info, q: np.ndarray) -> np.ndarray:
    scale = info.scale.astype(np.float64)
    zp = info.zero_point.astype(np.float64)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[info.quantized_dimension] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((q.astype(np.float64) - zp) * scale).astype(np.float32)


def _pad(options) -> str:
    return "SAME" if options.padding == fb.Padding.SAME else "VALID"


def _fake_quant(y: tf.Tensor, info) -> tf.Tensor:
    """Round to the int8 grid of the tensor (straight-through gradient)."""
    s, zp = float(info.scale[0]), float(info.zero_point[0])
    q = tf.clip_by_value(tf.round(y / s) + zp, -128.0, 127.0)
    return y + tf.stop_gradient((q - zp) * s - y)


def float_gradients(sim: HostSimulator, x: np.ndarray, label: int,
                    fake_quant: bool = False) -> tuple[dict, float]:
    """dL/dparam (real units) of every trainable parameter, and the loss, by TensorFlow.

    fake_quant=True also rounds every activation to its int8 grid in the forward pass
    (straight-through estimator), i.e. the quantized model's forward values exactly."""
    sg = sim.main
    weights = sim.weights()
    variables = {name: tf.Variable(_deq(_info_of(sg, name), w)) for name, w in weights.items()}
    values: dict[int, tf.Tensor] = {}
    with tf.GradientTape() as tape:
        xq = sim.quantize_input(x).reshape(sim.input_info.shape)
        values[sg.inputs[0]] = tf.constant(_deq(sim.input_info, xq))
        for op in sg.ops:
            name, o = op.name, op.options

            def get(i, op=op):
                t = op.inputs[i]
                if t in values:
                    return values[t]
                if sg.is_variable[t]:
                    return variables[sg.infos[t].name]
                return tf.constant(_deq(sg.infos[t], sg.consts[t]) if sg.infos[t].quantized
                                   else sg.consts[t])

            if name == "TMT_CONV":  # a builtin convolution with its multipliers in flash
                name, _, o = conv_ops.builtin_of(o)
                if len(op.inputs) > conv_ops.W_REST and op.inputs[conv_ops.W_REST] >= 0:
                    whole = tf.concat([get(conv_ops.W), get(conv_ops.W_REST)], axis=0)

                    def get(i, get=get, whole=whole):  # noqa: F811 (the weights made whole)
                        return whole if i == conv_ops.W else get(i)
            elif name == "TMT_MEAN":  # the builtin MEAN over H and W, without scratch
                name, o = "MEAN", types.SimpleNamespace(keepDims=bool(o.get("keep_dims", 0)))
            elif name.startswith("TMT_"):
                continue
            if name == "CONV_2D":
                w = tf.transpose(get(1), (1, 2, 3, 0))
                y = tf.nn.conv2d(get(0), w, [1, o.strideH, o.strideW, 1], _pad(o))
                y = ACT[o.fusedActivationFunction](y + get(2) if op.inputs[2] >= 0 else y)
            elif name == "DEPTHWISE_CONV_2D":
                w = tf.transpose(get(1), (1, 2, 3, 0))
                y = tf.nn.depthwise_conv2d(get(0), w, [1, o.strideH, o.strideW, 1], _pad(o))
                y = ACT[o.fusedActivationFunction](y + get(2) if op.inputs[2] >= 0 else y)
            elif name == "FULLY_CONNECTED":
                xin = tf.reshape(get(0), (1, -1))
                y = tf.matmul(xin, get(1), transpose_b=True)
                has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
                y = ACT[o.fusedActivationFunction](y + get(2) if has_bias else y)
            elif name == "ADD":
                y = ACT[o.fusedActivationFunction](get(0) + get(1))
            elif name == "MEAN":
                axes = [int(a) for a in np.ravel(sg.consts[op.inputs[1]])]
                y = tf.reduce_mean(get(0), axis=axes, keepdims=bool(o.keepDims))
            elif name == "SOFTMAX":
                logits = get(0)
                y = tf.nn.softmax(logits)
                loss = tf.nn.sparse_softmax_cross_entropy_with_logits([label], logits)
                values[op.outputs[0]] = y
                break
            elif name == "RESHAPE":
                y = tf.reshape(get(0), sg.infos[op.outputs[0]].shape)
            elif name in ("PAD", "PADV2"):
                y = tf.pad(get(0), sg.consts[op.inputs[1]])
            elif name == "AVERAGE_POOL_2D":
                y = tf.nn.avg_pool2d(get(0), (o.filterHeight, o.filterWidth),
                                     (o.strideH, o.strideW), _pad(o))
            elif name == "MAX_POOL_2D":
                y = tf.nn.max_pool2d(get(0), (o.filterHeight, o.filterWidth),
                                     (o.strideH, o.strideW), _pad(o))
            elif name == "CONCATENATION":  # sliced weights: trainable head + frozen rest
                out_info = sg.infos[op.outputs[0]]
                parts, row = [], 0
                for t in op.inputs:
                    info = sg.infos[t]
                    if sg.is_variable[t]:
                        parts.append(variables[info.name])
                    else:
                        rows = info.shape[0]
                        s = out_info.scale[row:row + rows].reshape((-1,) + (1,) * (len(info.shape) - 1))
                        parts.append(tf.constant((sg.consts[t].astype(np.float64) * s).astype(np.float32)))
                    row += info.shape[0]
                y = tf.concat(parts, axis=0)
            elif name == "QUANTIZE":
                y = get(0)
            else:
                raise NotImplementedError(name)
            if fake_quant and name != "CONCATENATION":  # (joined weights are not activations)
                y = _fake_quant(y, sg.infos[op.outputs[0]])
            values[op.outputs[0]] = y
    grads = tape.gradient(loss, list(variables.values()))
    return {k: g.numpy() for k, g in zip(variables, grads)}, float(loss.numpy()[0])


def _info_of(sg, name: str):
    for info in sg.infos:
        if info.name == name:
            return info
    raise KeyError(name)
