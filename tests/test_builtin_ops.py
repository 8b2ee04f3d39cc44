"""Bit-exactness of the numpy TFLM kernels against the tflite_micro Python interpreter."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Callable  # noqa: E402

import flatbuffers  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from tflite_micro.python.tflite_micro import runtime  # noqa: E402

from tfmicro_train.kernels.builtin_ops import (  # noqa: E402
    BUILTIN_KERNELS,
    execute_graph,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    run_graph,
)
from tfmicro_train.schema import fb, op_name  # noqa: E402

L = keras.layers
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _convert(model: keras.Model, lo: float = -2.0, hi: float = 2.0, int8_io: bool = True,
             per_channel_dense: bool = True, samples: int = 30) -> bytes:
    """Full-integer post-training quantization of a Keras model."""
    rng = np.random.default_rng(0)
    shapes = [(1, *t.shape[1:]) for t in model.inputs]

    def representative():
        for _ in range(samples):
            yield [rng.uniform(lo, hi, s).astype(np.float32) for s in shapes]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    if not per_channel_dense:
        conv._experimental_disable_per_channel_quantization_for_dense_layers = True
    return conv.convert()


def _random_inputs(model: fb.ModelT, rng: np.random.Generator) -> list[np.ndarray]:
    graph = model.subgraphs[0]
    xs = []
    for index in graph.inputs:
        t = graph.tensors[index]
        shape = tuple(int(d) for d in t.shape)
        if t.type == fb.TensorType.FLOAT32:
            xs.append(rng.uniform(-2.5, 2.5, shape).astype(np.float32))
        else:
            xs.append(rng.integers(-128, 128, shape).astype(np.int8))
    return xs


def assert_bit_exact(buf: bytes, trials: int = 3, seed: int = 1,
                     inputs: list[list[np.ndarray]] | None = None) -> None:
    """Every operator output and every graph output equals the TFLM interpreter's."""
    model = fb.ModelT.InitFromPackedBuf(buf, 0)
    graph = model.subgraphs[0]
    interp = runtime.Interpreter.from_bytes(
        buf, arena_size=64 << 20,
        intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors,
    )
    rng = np.random.default_rng(seed)
    for xs in inputs or [_random_inputs(model, rng) for _ in range(trials)]:
        for i, x in enumerate(xs):
            interp.set_input(x, i)
        interp.invoke()
        values = run_graph(model, xs)
        for op in graph.operators:
            for index in op.outputs:
                ref = np.asarray(interp.GetTensor(int(index), 0)["tensor_data"])
                mine = values[int(index)]
                assert mine.dtype == ref.dtype, op_name(model, op)
                assert np.array_equal(mine, ref.reshape(mine.shape)), (
                    f"{op_name(model, op)} -> {graph.tensors[index].name}: max abs diff "
                    f"{np.abs(mine.astype(np.float64) - ref.reshape(mine.shape)).max()}"
                )
        outs = execute_graph(model, xs)
        for i, out in enumerate(outs):
            assert np.array_equal(out, interp.get_output(i))


def _model(shape: tuple[int, ...], body: Callable) -> keras.Model:
    inp = keras.Input(shape, batch_size=1)
    return keras.Model(inp, body(inp))


def _squeeze_excite(x):
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Dense(2, activation="relu")(s)
    s = L.Dense(x.shape[-1], activation="sigmoid")(s)
    return L.Multiply()([x, s])


def _inverted_residual(x):
    y = L.Conv2D(12, 1, use_bias=False)(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU(6.0)(y)
    y = L.DepthwiseConv2D(3, padding="same")(y)
    y = L.ReLU(6.0)(y)
    y = L.Conv2D(x.shape[-1], 1)(y)
    return L.Add()([x, y])


# name -> (input shape, body, representative-data range)
KERAS_CASES: dict[str, tuple[tuple[int, ...], Callable, tuple[float, float]]] = {
    "conv_s1_same": ((10, 10, 3), lambda x: L.Conv2D(6, 3, padding="same")(x), (-2, 2)),
    "conv_s2_valid_relu": (
        (13, 13, 3), lambda x: L.Conv2D(6, 3, strides=2, activation="relu")(x), (-2, 2)),
    "conv_s2_same_5x5_relu6": (
        (12, 12, 4), lambda x: L.Conv2D(5, 5, strides=2, padding="same",
                                        activation="relu6")(x), (-2, 2)),
    "conv_dilated": (
        (14, 14, 3), lambda x: L.Conv2D(5, 3, dilation_rate=2, padding="same")(x), (-2, 2)),
    "conv_grouped": ((6, 6, 4), lambda x: L.Conv2D(6, 3, groups=2, padding="same")(x), (-2, 2)),
    "depthwise_m1_s2": (
        (12, 12, 4), lambda x: L.DepthwiseConv2D(3, strides=2, padding="same")(x), (-2, 2)),
    "depthwise_m2_valid_relu": (
        (11, 11, 3), lambda x: L.DepthwiseConv2D(3, depth_multiplier=2,
                                                 activation="relu")(x), (-2, 2)),
    "depthwise_dilated": (
        (12, 12, 4), lambda x: L.DepthwiseConv2D(3, dilation_rate=2, padding="same")(x),
        (-2, 2)),
    "dense_relu_dense": ((20,), lambda x: L.Dense(7)(L.Dense(9, activation="relu")(x)), (-2, 2)),
    "dense_3d": ((4, 6), lambda x: L.Dense(5)(x), (-2, 2)),
    "residual_add_relu6": ((8, 8, 4), _inverted_residual, (-2, 2)),
    "add_relu": (
        (8, 8, 4),
        lambda x: L.ReLU()(L.Add()([L.Conv2D(4, 1)(x), L.Conv2D(4, 3, padding="same")(x)])),
        (-2, 2)),
    "add_broadcast": (
        (6, 6, 4), lambda x: L.Add()([x, L.GlobalAveragePooling2D(keepdims=True)(x)]), (-2, 2)),
    "squeeze_excite_mul_logistic": ((6, 6, 4), _squeeze_excite, (-2, 2)),
    "zero_padding": ((6, 6, 3), lambda x: L.ZeroPadding2D(((1, 0), (2, 1)))(x), (-2, 2)),
    "pad_then_maxpool": (
        (6, 6, 3), lambda x: L.MaxPooling2D(2)(L.ZeroPadding2D(((1, 0), (0, 1)))(
            L.Conv2D(4, 1)(x))), (-2, 2)),
    "padv2": (
        (6, 6, 3), lambda x: keras.ops.pad(x, [[0, 0], [1, 1], [2, 0], [0, 0]],
                                           constant_values=0.5), (-2, 2)),
    "global_average_pool": ((6, 6, 5), lambda x: L.GlobalAveragePooling2D()(L.Conv2D(8, 1)(x)),
                            (-2, 2)),
    "global_average_pool_keepdims": (
        (7, 5, 5), lambda x: L.GlobalAveragePooling2D(keepdims=True)(x), (-2, 2)),
    "mean_one_axis": ((6, 6, 4), lambda x: keras.ops.mean(x, axis=1), (-2, 2)),
    "average_pool": ((9, 9, 4), lambda x: L.AveragePooling2D(2)(x), (-2, 2)),
    "average_pool_same": (
        (9, 9, 4), lambda x: L.AveragePooling2D(3, strides=2, padding="same")(x), (-2, 2)),
    "max_pool_same": (
        (9, 9, 4), lambda x: L.MaxPooling2D(3, strides=2, padding="same")(x), (-2, 2)),
    "flatten_dense_softmax": (
        (5, 5, 3), lambda x: L.Softmax()(L.Dense(10)(L.Flatten()(L.Conv2D(4, 3)(x)))), (-2, 2)),
    "reshape": ((4, 6), lambda x: L.Reshape((3, 8))(x), (-2, 2)),
    "rescaling_conv": (
        (8, 8, 3), lambda x: L.Conv2D(4, 3)(L.Rescaling(1 / 127.5, offset=-1)(x)), (0, 255)),
    "relu_standalone": ((6, 6, 3), lambda x: L.ReLU()(x), (-2, 2)),
    "relu6_after_concat": (
        (6, 6, 3), lambda x: L.ReLU(6.0)(L.Concatenate()([L.Conv2D(2, 1)(x),
                                                         L.Conv2D(2, 1)(x)])), (-2, 2)),
    "concatenate": (
        (8, 8, 3), lambda x: L.Concatenate()([x, L.Conv2D(3, 3, padding="same")(x)]), (-2, 2)),
}


@pytest.mark.parametrize("name", list(KERAS_CASES))
def test_keras_model_bit_exact(name: str) -> None:
    shape, body, (lo, hi) = KERAS_CASES[name]
    keras.utils.set_random_seed(0)
    assert_bit_exact(_convert(_model(shape, body), lo, hi))


def test_per_tensor_dense() -> None:
    keras.utils.set_random_seed(1)
    model = _model((12,), lambda x: L.Dense(3)(L.Dense(5, activation="relu")(x)))
    buf = _convert(model, per_channel_dense=False)
    graph = fb.ModelT.InitFromPackedBuf(buf, 0).subgraphs[0]
    filters = [graph.tensors[op.inputs[1]] for op in graph.operators]
    assert all(len(t.quantization.scale) == 1 for t in filters)
    assert_bit_exact(buf, trials=5)


def test_float_io_quantize_dequantize() -> None:
    keras.utils.set_random_seed(2)
    model = _model((6, 6, 3), lambda x: L.Softmax()(L.Dense(5)(
        L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(x)))))
    buf = _convert(model, int8_io=False)
    model_t = fb.ModelT.InitFromPackedBuf(buf, 0)
    names = [op_name(model_t, op) for op in model_t.subgraphs[0].operators]
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE"
    x = np.random.default_rng(3).uniform(-1.5, 1.5, (4, 1, 6, 6, 3)).astype(np.float32)
    x[0, 0, 0, 0] = [1e12, -1e12, 0.5]  # saturation and exact ties
    assert_bit_exact(buf, inputs=[[xi] for xi in x])


def test_two_inputs_concatenate() -> None:
    a, b = keras.Input((4, 4, 3), batch_size=1), keras.Input((4, 4, 2), batch_size=1)
    assert_bit_exact(_convert(keras.Model([a, b], L.Concatenate()([a, L.ReLU()(b)]))))


def test_mobilenet_v2_bit_exact() -> None:
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        alpha=0.35, input_shape=(96, 96, 3), weights=None, classes=10)
    # Random init makes activations vanish layer after layer; set the batch-norm
    # statistics from a batch so that every layer keeps a sensible range.
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.momentum = 0.0
    model(np.random.default_rng(5).uniform(-1, 1, (8, 96, 96, 3)).astype(np.float32),
          training=True)
    buf = _convert(model, -1.0, 1.0, samples=8)
    assert_bit_exact(buf, trials=2)


# --------------------------------------------------------------------------------------
# Hand-built single-operator models for parameter corners the converter never emits
# --------------------------------------------------------------------------------------


def _tensor(shape, ttype=fb.TensorType.INT8, scale=None, zero_point=None, qdim=0):
    t = fb.TensorT()
    t.shape = list(shape)
    t.type = ttype
    t.name = f"t{id(t)}"
    if scale is not None:
        q = fb.QuantizationParametersT()
        q.scale = list(np.atleast_1d(scale).astype(np.float32))
        q.zeroPoint = list(np.atleast_1d(zero_point if zero_point is not None else 0)
                           .astype(np.int64))
        q.quantizedDimension = qdim
        t.quantization = q
    return t


def _single_op(op: str, options_type: str | None, options, tensors, constants: dict,
               inputs: list[int], outputs: list[int], op_inputs: list[int] | None = None
               ) -> bytes:
    """Pack a one-operator model: `tensors[i]` gets `constants[i]` as its buffer."""
    model = fb.ModelT()
    model.version = 3
    code = fb.OperatorCodeT()
    code.builtinCode = getattr(fb.BuiltinOperator, op)
    code.deprecatedBuiltinCode = min(code.builtinCode, 127)
    code.version = 1
    model.operatorCodes = [code]
    model.buffers = [fb.BufferT()]
    for i, t in enumerate(tensors):
        t.buffer = 0
        if i in constants:
            buffer = fb.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(constants[i]).tobytes(), np.uint8)
            model.buffers.append(buffer)
            t.buffer = len(model.buffers) - 1
    operator = fb.OperatorT()
    operator.opcodeIndex = 0
    operator.inputs = op_inputs if op_inputs is not None else inputs + sorted(constants)
    operator.outputs = outputs
    if options_type is not None:
        operator.builtinOptionsType = getattr(fb.BuiltinOptions, options_type)
        operator.builtinOptions = options
    graph = fb.SubGraphT()
    graph.tensors = tensors
    graph.inputs = inputs
    graph.outputs = outputs
    graph.operators = [operator]
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _options(cls_name: str, **fields):
    opts = getattr(fb, cls_name)()
    for key, value in fields.items():
        setattr(opts, key, value)
    return opts


@pytest.mark.parametrize("in_q,out_q", [((0.05, 3), (0.02, -10)), ((0.02, -10), (0.07, 5)),
                                        ((0.1, 0), (0.1, 7)), ((1e-3, -128), (0.25, 127))])
def test_quantize_int8_requantize(in_q, out_q) -> None:
    tensors = [_tensor((2, 64), scale=in_q[0], zero_point=in_q[1]),
               _tensor((2, 64), scale=out_q[0], zero_point=out_q[1])]
    assert_bit_exact(_single_op("QUANTIZE", None, None, tensors, {}, [0], [1]))


@pytest.mark.parametrize("shape,axes,keep,in_q,out_q", [
    ((1, 5, 7, 8), [1, 2], True, (0.1, -3), (0.1, -3)),
    ((1, 5, 7, 8), [2, 1], False, (0.1, -3), (0.1, -3)),
    ((1, 5, 7, 8), [1, 2], False, (0.1, -3), (0.031, 9)),
    ((1, 40, 40, 2), [1, 2], True, (0.02, 100), (0.5, -128)),
    ((1, 6, 3, 4), [-3], False, (0.3, 0), (0.2, 1)),
])
def test_mean_quantization_corners(shape, axes, keep, in_q, out_q) -> None:
    out_shape = [1 if a in [ax % 4 for ax in axes] else d for a, d in enumerate(shape)]
    if not keep:
        out_shape = [d for a, d in enumerate(shape) if a not in [ax % 4 for ax in axes]]
    tensors = [_tensor(shape, scale=in_q[0], zero_point=in_q[1]),
               _tensor((len(axes),), fb.TensorType.INT32),
               _tensor(out_shape, scale=out_q[0], zero_point=out_q[1])]
    buf = _single_op("MEAN", "ReducerOptions", _options("ReducerOptionsT", keepDims=keep),
                     tensors, {1: np.array(axes, np.int32)}, [0], [2])
    assert_bit_exact(buf)


@pytest.mark.parametrize("shape,scale,zp,beta", [
    ((1, 10), 0.5, 3, 1.0), ((2, 16), 0.05, -7, 1.0), ((1, 3, 3, 20), 0.15, 0, 1.0),
    ((4, 7), 1.3, 10, 1.0), ((3, 12), 0.1, -2, 0.5), ((3, 12), 0.02, 0, 2.0),
])
def test_softmax_corners(shape, scale, zp, beta) -> None:
    tensors = [_tensor(shape, scale=scale, zero_point=zp),
               _tensor(shape, scale=1 / 256, zero_point=-128)]
    buf = _single_op("SOFTMAX", "SoftmaxOptions", _options("SoftmaxOptionsT", beta=beta),
                     tensors, {}, [0], [1])
    assert_bit_exact(buf, trials=4)


@pytest.mark.parametrize("scale,zp", [(0.01, 0), (0.06, -20), (0.3, 5), (2.0, 0)])
def test_logistic_all_int8_values(scale, zp) -> None:
    tensors = [_tensor((1, 256), scale=scale, zero_point=zp),
               _tensor((1, 256), scale=1 / 256, zero_point=-128)]
    buf = _single_op("LOGISTIC", None, None, tensors, {}, [0], [1])
    assert_bit_exact(buf, inputs=[[np.arange(-128, 128, dtype=np.int8)[None]]])


ACT = fb.ActivationFunctionType


@pytest.mark.parametrize("op,shape2,act", [
    ("ADD", (1, 4, 4, 3), ACT.NONE), ("ADD", (1, 1, 1, 3), ACT.RELU6),
    ("ADD", (3,), ACT.RELU_N1_TO_1), ("ADD", (1, 4, 1, 1), ACT.RELU),
    ("MUL", (1, 4, 4, 3), ACT.NONE), ("MUL", (1, 1, 1, 3), ACT.RELU6), ("MUL", (4, 1, 3), ACT.RELU),
])
def test_binary_broadcast_and_activation(op, shape2, act) -> None:
    tensors = [_tensor((1, 4, 4, 3), scale=0.04, zero_point=-5),
               _tensor(shape2, scale=0.013, zero_point=12),
               _tensor((1, 4, 4, 3), scale=0.05 if op == "ADD" else 0.01, zero_point=-3)]
    opts_name = "AddOptions" if op == "ADD" else "MulOptions"
    options = _options(opts_name + "T", fusedActivationFunction=act)
    assert_bit_exact(_single_op(op, opts_name, options, tensors, {}, [0, 1], [2]))


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_conv_without_bias_and_per_tensor_filter(per_tensor: bool, with_bias: bool) -> None:
    rng = np.random.default_rng(7)
    w = rng.integers(-127, 128, (5, 3, 3, 4)).astype(np.int8)
    w_scale = 0.01 if per_tensor else rng.uniform(0.002, 0.02, 5)
    tensors = [_tensor((1, 7, 7, 4), scale=0.03, zero_point=-4),
               _tensor(w.shape, scale=w_scale, zero_point=np.zeros(np.size(w_scale), int)),
               _tensor((1, 4, 4, 5), scale=0.2, zero_point=6),
               _tensor((5,), fb.TensorType.INT32, scale=0.0003, zero_point=0)]
    constants = {1: w}
    if with_bias:
        constants[3] = rng.integers(-3000, 3000, 5).astype(np.int32)
    options = _options("Conv2DOptionsT", padding=fb.Padding.SAME, strideH=2, strideW=2,
                       fusedActivationFunction=ACT.RELU_N1_TO_1)
    buf = _single_op("CONV_2D", "Conv2DOptions", options, tensors, constants, [0], [2],
                     op_inputs=[0, 1, 3 if with_bias else -1])
    assert_bit_exact(buf)


@pytest.mark.parametrize("pool", ["AVERAGE_POOL_2D", "MAX_POOL_2D"])
@pytest.mark.parametrize("act", [ACT.NONE, ACT.RELU6])
def test_pooling_same_stride3_activation(pool: str, act: int) -> None:
    tensors = [_tensor((1, 10, 11, 3), scale=0.02, zero_point=-30),
               _tensor((1, 4, 4, 3), scale=0.02, zero_point=-30)]
    options = _options("Pool2DOptionsT", padding=fb.Padding.SAME, strideH=3, strideW=3,
                       filterHeight=4, filterWidth=3, fusedActivationFunction=act)
    assert_bit_exact(_single_op(pool, "Pool2DOptions", options, tensors, {}, [0], [1]))


def test_fully_connected_keep_num_dims_per_tensor() -> None:
    rng = np.random.default_rng(8)
    w = rng.integers(-127, 128, (6, 10)).astype(np.int8)
    tensors = [_tensor((1, 3, 10), scale=0.05, zero_point=7),
               _tensor(w.shape, scale=0.004, zero_point=0),
               _tensor((6,), fb.TensorType.INT32, scale=0.0002, zero_point=0),
               _tensor((1, 3, 6), scale=0.1, zero_point=-2)]
    options = _options("FullyConnectedOptionsT", keepNumDims=True,
                       fusedActivationFunction=ACT.RELU)
    constants = {1: w, 2: rng.integers(-500, 500, 6).astype(np.int32)}
    assert_bit_exact(_single_op("FULLY_CONNECTED", "FullyConnectedOptions", options, tensors,
                                constants, [0], [3]))


# --------------------------------------------------------------------------------------
# Fixed-point helpers
# --------------------------------------------------------------------------------------


def _mbqm_scalar(x: int, multiplier: int, shift: int) -> int:
    """Straight transcription of TFLM's double-rounding int32 MultiplyByQuantizedMultiplier."""
    left, right = max(shift, 0), max(-shift, 0)
    a = (x * (1 << left) + (1 << 31)) % (1 << 32) - (1 << 31)
    if a == multiplier == I32_MIN:
        high = I32_MAX
    else:
        ab = a * multiplier
        t = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
        high = abs(t) // (1 << 31) * (1 if t >= 0 else -1)
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if (high & mask) > threshold else 0)


def test_multiply_by_quantized_multiplier_known_values() -> None:
    half = 1 << 30
    # Ties in the doubling high-mul round towards +inf, ties of the shift away from zero.
    assert int(multiply_by_quantized_multiplier(3, half, 0)) == 2
    assert int(multiply_by_quantized_multiplier(-3, half, 0)) == -1
    # Double rounding: 5 * 0.25 = 1.25 -> 2.5 -> 3 -> 1.5 -> 2.
    assert int(multiply_by_quantized_multiplier(5, half, -1)) == 2
    assert int(multiply_by_quantized_multiplier(-5, half, -1)) == -1
    assert int(multiply_by_quantized_multiplier(3, half, 2)) == 6
    assert int(multiply_by_quantized_multiplier(I32_MIN, I32_MIN, 0)) == I32_MAX
    assert int(multiply_by_quantized_multiplier(I32_MAX, I32_MAX, 0)) == I32_MAX - 1
    assert int(multiply_by_quantized_multiplier(1000, 0, 5)) == 0


def test_multiply_by_quantized_multiplier_matches_scalar_reference() -> None:
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.integers(-(1 << 20), 1 << 20, 3000),
                        rng.integers(I32_MIN, I32_MAX, 1000, endpoint=True),
                        [0, 1, -1, I32_MIN, I32_MAX, 1 << 30, -(1 << 30)]])
    multiplier = rng.integers(1 << 30, I32_MAX, x.size, endpoint=True)
    shift = rng.integers(-31, 8, x.size)
    small = np.abs(x) < (1 << 20)
    shift = np.where(small, shift, np.minimum(shift, 0))  # no int32 overflow on the left shift
    got = multiply_by_quantized_multiplier(x, multiplier, shift)
    want = [_mbqm_scalar(int(a), int(m), int(s)) for a, m, s in zip(x, multiplier, shift)]
    assert got.tolist() == want
    # Per-channel broadcasting along the last axis.
    grid = rng.integers(-50000, 50000, (4, 3))
    got = multiply_by_quantized_multiplier(grid, multiplier[:3], shift[:3])
    assert got.tolist() == [[_mbqm_scalar(int(v), int(multiplier[j]), int(shift[j]))
                             for j, v in enumerate(row)] for row in grid]


@pytest.mark.parametrize("real,expected", [
    (0.0, (0, 0)),
    (1.0, (1 << 30, 1)),
    (0.5, (1 << 30, 0)),
    (0.75, (3 << 29, 0)),
    (-0.75, (-(3 << 29), 0)),
    (0.5 + 2.0**-32, ((1 << 30) + 1, 0)),  # exact tie rounds away from zero (not to even)
    (1.0 - 2.0**-40, (1 << 30, 1)),  # rounds up to 2^31: halved and exponent bumped
    (2.0**-32, (1 << 30, -31)),
    (2.0**-33, (0, 0)),  # shift < -31 flushes to zero
    (3.0e5, (int(round(3.0e5 / 2**19 * 2**31)), 19)),
])
def test_quantize_multiplier_edge_cases(real: float, expected: tuple[int, int]) -> None:
    got = quantize_multiplier(real)
    assert got == expected
    assert all(type(v) is int for v in got)


def test_registry_covers_requested_ops() -> None:
    requested = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "PAD", "PADV2",
                 "MEAN", "AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "SOFTMAX", "QUANTIZE",
                 "DEQUANTIZE", "CONCATENATION", "RELU", "RELU6", "LOGISTIC"}
    assert requested <= set(BUILTIN_KERNELS)
