"""TMT_CONV: TFLM's int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with flash multipliers.

The op computes, bit for bit, what TFLite Micro's reference int8 kernel of the builtin it stands
for computes (`kind`: 0 CONV_2D, 1 DEPTHWISE_CONV_2D with depth multiplier 1, 2 per-channel
FULLY_CONNECTED), but reads the per-channel output multipliers and shifts from a constant int32
tensor written by the converter (flash) instead of computing them into TFLM's persistent arena
in Prepare (8 bytes per output channel, kept for good). The converter computes them exactly as
TFLM's Prepare does (PopulateConvolutionQuantizationParams: double-precision QuantizeMultiplier of
s_x * s_W[c] / s_y), with builtin_ops' own helper.

Inputs: x, w, b (-1 without bias), requant (int32 [2, C] const: row 0 the multipliers, row 1 the
shifts) and, optionally, w_rest: the weights' output channels [len(w), C) (a constant; `w` then
holds the first ones, typically the trained slice in SRAM, and the op computes what their
concatenation gives; 1x1 stride-1 convolutions and fully-connected layers only). x, w, b keep
the builtin's slots, so the backward ops autodiff made (which read them) are unaffected; w and b
may be variable tensors (trained in place) and w the output of a CONCATENATION (sliced weights
of other convolutions). Output: y and, optionally, `bits`: TMT_MASK_PACK(y, mask_min, mask_max)
(uint8 [ceil(N/8)], bit i set iff mask_min < y[i] < mask_max, LSB first), the packed
activation mask the backward pass reads (the pack folded into the layer that writes y). A
forward op: no learning-rate input, runs at inference too (the mask too).

Narrow bias: `b` may be an int16 variable holding the trained change of the bias (delta, SRAM)
instead of the int32 bias itself; `requant` is then int32 [4, C]: rows 2 and 3 the converter's
int32 bias (flash) and a per-channel shift k in [0, 16], and the op uses
b32[c] = sat32(base[c] + delta[c] * 2^k[c]) (int64 sum; `expand_bias`) as its bias. The C++ op
expands it 64 channels at a time into a stack buffer and computes those channels (no arena
scratch); the results are the same.

Mean mode (head.fold_pooled_outputs; kind 0): with option `mean`, output 0 is TMT_MEAN of the y the
op would write (y's shape and quantization in the options y_h, y_w, y_scale, y_zp; the mean's
multiplier in mean_multiplier, mean_shift; pooled_zp) and `bits` the mask of that y; y itself
is never written (the C++ op computes a chunk of channels over every pixel on the stack).

Options (flexbuffer map, ints): kind, act (TFLite ActivationFunctionType), version (the builtin's
operator version, for turning the op back into it), x_zp, y_zp, act_min, act_max (what TFLM's
Prepare derives from the tensors' quantization: the C++ op reads them at each Eval and keeps no
op data; Prepare checks them) and, for kind 0 and 1, stride_h stride_w
dil_h dil_w padding (TFLite Padding, 0 SAME 1 VALID); for kind 2 keep_num_dims; with `bits`,
mask_min and mask_max (TMT_MASK_PACK's act_min / act_max).

TMT_MEAN: TFLM's int8 MEAN over the H and W axes of a [1, H, W, C] tensor (Keras'
GlobalAveragePooling2D), bit for bit, without the int32 accumulator per output element TFLM's MEAN
requests as arena scratch for its Eval (5 KB for MobileNetV2's 1280 channels, at the forward
pass's busiest point). Inputs x and axis (the builtin's), output y; option keep_dims (for turning
it back into MEAN). Its reference is builtin_ops' MEAN kernel (bit-exact with TFLM's);
`mean_multiplier` is the multiplier and shift with 1 / (H * W) folded in, as TFLM's Eval folds it.

The C++ core is tflm_ops/core/conv_op.{h,cc}; this reference runs the builtin kernels of
builtin_ops.py with the given multipliers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..schema import TensorInfo, fb
from .builtin_ops import BUILTIN_KERNELS, _activation_range, _conv_multipliers
from .builtin_ops import mean_multiplier as builtin_mean_multiplier
from .training_ops import mask_pack

OP_NAME = "TMT_CONV"
MEAN_OP_NAME = "TMT_MEAN"
# input slots (W_REST optional: rows [len(w), CO) of the weights, for a layer training a slice)
X, W, B, REQUANT, W_REST = range(5)
MAX_BIAS_SHIFT = 16  # narrow biases: delta * 2^k, k <= 16
KINDS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 2}
BUILTINS = {v: k for k, v in KINDS.items()}


def requant_params(x_info: TensorInfo, w_info: TensorInfo, y_info: TensorInfo,
                   channels: int) -> np.ndarray:
    """int32 [2, channels]: the multipliers and shifts TFLM's Prepare computes for the builtin
    (PopulateConvolutionQuantizationParams; per-tensor weight scales are repeated)."""
    mult, shift = _conv_multipliers(x_info, w_info, y_info, channels)
    return np.stack([np.asarray(mult, np.int64), np.asarray(shift, np.int64)]).astype(np.int32)


def options_of(op: str, builtin_options: Any, version: int) -> dict:
    """The TMT_CONV options of a builtin conv / depthwise / fully-connected operator."""
    o = {"kind": KINDS[op], "act": int(builtin_options.fusedActivationFunction),
         "version": int(version)}
    if op == "FULLY_CONNECTED":
        o["keep_num_dims"] = int(bool(builtin_options.keepNumDims))
    else:
        o.update(stride_h=int(builtin_options.strideH), stride_w=int(builtin_options.strideW),
                 dil_h=int(builtin_options.dilationHFactor),
                 dil_w=int(builtin_options.dilationWFactor), padding=int(builtin_options.padding))
    return o


def runtime_options(x_info: TensorInfo, y_info: TensorInfo, act: int) -> dict:
    """x_zp, y_zp, act_min, act_max: what TFLM's Prepare computes from the tensors'
    quantization, in the options so that the C++ op keeps no op data (it reads them from the
    model at each Eval; Prepare checks them against the tensors)."""
    act_min, act_max = _activation_range(act, y_info)
    return {"x_zp": int(np.ravel(x_info.zero_point)[0]), "y_zp": int(np.ravel(y_info.zero_point)[0]),
            "act_min": int(act_min), "act_max": int(act_max)}


def builtin_of(o: dict) -> tuple[str, int, Any]:
    """(builtin name, BuiltinOptions type, options object) the op stands for."""
    name = BUILTINS[o["kind"]]
    if name == "FULLY_CONNECTED":
        opts = fb.FullyConnectedOptionsT()
        opts.fusedActivationFunction = o["act"]
        opts.keepNumDims = bool(o.get("keep_num_dims", 0))
        return name, fb.BuiltinOptions.FullyConnectedOptions, opts
    if name == "CONV_2D":
        opts, kind = fb.Conv2DOptionsT(), fb.BuiltinOptions.Conv2DOptions
    else:
        opts, kind = fb.DepthwiseConv2DOptionsT(), fb.BuiltinOptions.DepthwiseConv2DOptions
        opts.depthMultiplier = 1
    opts.strideH, opts.strideW = o["stride_h"], o["stride_w"]
    opts.dilationHFactor, opts.dilationWFactor = o["dil_h"], o["dil_w"]
    opts.padding, opts.fusedActivationFunction = o["padding"], o["act"]
    return name, kind, opts


def expand_bias(base: np.ndarray, delta: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """A narrow bias's int32 value: sat32(base + delta * 2^shift), shift in [0, 16]."""
    shift = np.asarray(shift, np.int64)
    if shift.size and (shift.min() < 0 or shift.max() > MAX_BIAS_SHIFT):
        raise ValueError(f"TMT_CONV: bias shifts must lie in [0, {MAX_BIAS_SHIFT}]")
    wide = np.asarray(base, np.int64) + (np.asarray(delta, np.int64) << shift)
    return np.clip(wide, -(2**31), 2**31 - 1).astype(np.int32)


def requant_rows(inputs: list) -> tuple[np.ndarray, np.ndarray | None]:
    """(int64 [2, C] multipliers and shifts, the int32 bias the op uses or None): `requant` has
    4 rows when `b` is a narrow (int16) bias."""
    b = inputs[B]
    narrow = b is not None and np.asarray(b).dtype == np.int16
    requant = np.asarray(inputs[REQUANT]).astype(np.int64).reshape(4 if narrow else 2, -1)
    bias = expand_bias(requant[2], b, requant[3]) if narrow else b
    return requant[:2], bias


def conv_op(inputs: list[np.ndarray | None], infos: list[TensorInfo | None], y_info: TensorInfo,
            o: dict) -> np.ndarray:
    """The op's output y: the builtin kernel with the multipliers of the `requant` input."""
    name, _, opts = builtin_of(o)
    requant, bias = requant_rows(inputs)
    ins = list(inputs[:REQUANT])
    ins[B] = bias
    if len(inputs) > W_REST and inputs[W_REST] is not None:  # the weights in two parts
        ins[W] = np.concatenate([ins[W], inputs[W_REST]])
    y = BUILTIN_KERNELS[name](ins, list(infos[:REQUANT]), [y_info], opts,
                              multipliers=(requant[0], requant[1]))[0]
    return np.asarray(y).reshape(y_info.shape)


def run_op(sg: Any, op: Any, values: dict) -> None:
    """HostSimulator hook: run one TMT_CONV operator on the value table (no lr gate)."""
    ins = [values[t] if t >= 0 else None for t in op.inputs]
    infos = [sg.infos[t] if t >= 0 else None for t in op.inputs]
    o = op.options
    y_info = y_info_of(o, infos[W], sg.infos[op.outputs[0]]) if o.get("mean") else None
    y = conv_op(ins, infos, y_info or sg.infos[op.outputs[0]], o)
    if y_info is not None:  # mean mode: output 0 is the mean of y over H and W
        p_t = op.outputs[0]
        values[p_t] = mean_op(y, y_info, sg.infos[p_t], o.get("mean_keep_dims", 0))
    else:
        values[op.outputs[0]] = y
    for t in op.outputs[1:]:  # `bits`: the packed activation mask (TMT_MASK_PACK of y)
        bits = mask_pack(y, o["mask_min"], o["mask_max"])
        values[t] = bits.reshape(sg.infos[t].shape)


def y_info_of(o: dict, w_info: TensorInfo, pooled: TensorInfo) -> TensorInfo:
    """Mean mode: the info of the y the op no longer writes (options y_h, y_w, y_scale, y_zp)."""
    return TensorInfo("y", (1, o["y_h"], o["y_w"], int(w_info.shape[0])), pooled.dtype,
                      np.array([o["y_scale"]], np.float32), np.array([o["y_zp"]], np.int64))


def mean_multiplier(x_scale: float, y_scale: float, count: int) -> tuple[int, int] | None:
    """TMT_MEAN's (multiplier, shift): QuantizeMultiplier(s_x / s_y) with 1 / count folded in
    as TFLM's MEAN Eval does; None when the shift leaves [-31, 31] (the op is not used then)."""
    mult, shift = builtin_mean_multiplier(float(np.float32(x_scale)), float(np.float32(y_scale)),
                                          count)
    return (mult, shift) if -31 <= shift <= 31 else None


def mean_op(x: np.ndarray, x_info: TensorInfo, y_info: TensorInfo, keep_dims: bool) -> np.ndarray:
    """TMT_MEAN's output: the builtin MEAN over axes 1 and 2."""
    opts = fb.ReducerOptionsT()
    opts.keepDims = bool(keep_dims)
    axis = np.array([1, 2], np.int32)
    y = BUILTIN_KERNELS["MEAN"]([x, axis], [x_info, None], [y_info], opts)[0]
    return np.asarray(y).reshape(y_info.shape)


def run_mean_op(sg: Any, op: Any, values: dict) -> None:
    """HostSimulator hook: run one TMT_MEAN operator on the value table (no lr gate)."""
    x_t, y_t = op.inputs[0], op.outputs[0]
    values[y_t] = mean_op(values[x_t], sg.infos[x_t], sg.infos[y_t], op.options.get("keep_dims", 0))
