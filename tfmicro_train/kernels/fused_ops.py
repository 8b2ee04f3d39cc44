"""TMT_FUSED_IRB: a frozen inverted-residual block as one forward op, numpy reference.

The op computes, bit for bit, what TFLite Micro's reference int8 kernels compute for the chain

    [CONV_2D (expand, any kernel/stride, fused act) ->] [PAD ->] DEPTHWISE_CONV_2D (fused act)
        -> CONV_2D 1x1 (project) [-> ADD with the chain input x (residual)]

The C++ core (tflm_ops/core/fused_irb.{h,cc}) streams rows: it keeps a ring of the
(dilated) depthwise window's rows of the expanded tensor plus one pixel of depthwise output in
the op's `scratch` output tensor, never the whole expanded tensor. This reference simply runs the
builtin kernels of builtin_ops.py in sequence on full tensors (numpy memory does not matter).

Inputs: x, w_expand, b_expand, w_dw, b_dw, w_project, b_project (-1 for an absent tensor: no
expansion, or a bias the converter dropped; x is absent for a streamed input, option
x_external = 1: the op reads the image from memory outside the arena, whose shape and
quantization are the options x_h x_w x_c x_scale (float) x_zp), and optionally an 8th,
features_given (int32 [1], a graph input; convert(feature_cache=True)): 0 computes as usual, 1
skips the op, writing nothing (the application gave the output of the frozen prefix, the cached
features, itself), any other value fails. Outputs: y, scratch (int8 [scratch_bytes]).
It is a forward op: it always runs (also at inference) and has no learning-rate input.

Options (flexbuffer map; ints unless noted; "padding" is TFLite's Padding enum, 0 SAME 1 VALID;
"act" is TFLite's ActivationFunctionType, 0 NONE 1 RELU 2 RELU_N1_TO_1 3 RELU6). The float
scales are the float32 values of the removed intermediate tensors' quantization:

    expand (only with w_expand): e_stride_h e_stride_w e_dil_h e_dil_w e_padding e_act
                                 e_scale (float) e_zp           quantization of the expansion
    pad (zeros without PAD):     pad_top pad_bottom pad_left pad_right pad_value
    depthwise input:             d_in_scale (float) d_in_zp     (the PAD output, else the
                                                                 expansion / x quantization)
    depthwise:                   d_stride_h d_stride_w d_dil_h d_dil_w d_padding d_act
                                 d_scale (float) d_zp           its output
    project:                     p_act p_scale (float) p_zp     its output (= y without ADD)
    residual:                    residual (0 none, 1 ADD(x, project), 2 ADD(project, x)), add_act

Multipliers are computed from these exactly as TFLM's Prepare does (double precision
QuantizeMultiplier, per output channel), by builtin_ops itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..schema import TensorInfo, fb
from .builtin_ops import BUILTIN_KERNELS

OP_NAME = "TMT_FUSED_IRB"
# input slots
X, W_EXPAND, B_EXPAND, W_DW, B_DW, W_PROJECT, B_PROJECT, FEATURES_GIVEN = range(8)

_GEOM_KEYS = ("stride_h", "stride_w", "dil_h", "dil_w", "padding", "act")


def out_size(padding: int, in_size: int, filt: int, stride: int, dilation: int) -> int:
    """TFLite ComputeOutSize."""
    eff = (filt - 1) * dilation + 1
    if padding == fb.Padding.SAME:
        return (in_size + stride - 1) // stride
    return (in_size + stride - eff) // stride


def shapes(x_shape: tuple[int, ...], c_exp: int, w_expand_shape: tuple[int, ...] | None,
           w_dw_shape: tuple[int, ...], o: dict) -> dict[str, tuple[int, int, int]]:
    """(h, w, c) of x, the expansion e, the padded depthwise input pd and the depthwise output d."""
    _, h, w, c = x_shape
    if w_expand_shape is not None:
        _, kh, kw, _ = w_expand_shape
        eh = out_size(o["e_padding"], h, kh, o["e_stride_h"], o["e_dil_h"])
        ew = out_size(o["e_padding"], w, kw, o["e_stride_w"], o["e_dil_w"])
    else:
        eh, ew = h, w
    ph = eh + o["pad_top"] + o["pad_bottom"]
    pw = ew + o["pad_left"] + o["pad_right"]
    _, kh, kw, _ = w_dw_shape
    dh = out_size(o["d_padding"], ph, kh, o["d_stride_h"], o["d_dil_h"])
    dw = out_size(o["d_padding"], pw, kw, o["d_stride_w"], o["d_dil_w"])
    return {"x": (h, w, c), "e": (eh, ew, c_exp), "pd": (ph, pw, c_exp), "d": (dh, dw, c_exp)}


def ring_rows(e_h: int, dw_kh: int, dil_h: int) -> int:
    """Rows of the expansion the C++ core keeps: the dilated depthwise window, at most e_h."""
    return max(1, min((dw_kh - 1) * dil_h + 1, e_h))


def stream_bytes(x_shape: tuple[int, ...], c_exp: int, w_expand_shape: tuple[int, ...] | None,
                 w_dw_shape: tuple[int, ...], o: dict) -> int:
    """Bytes the C++ core streams through (FusedIrbStreamBytes): a ring of ring_rows() rows of
    the expansion (none without expansion: x is read directly) plus one pixel of depthwise
    output."""
    s = shapes(x_shape, c_exp, w_expand_shape, w_dw_shape, o)
    eh, ew, _ = s["e"]
    ring = ring_rows(eh, w_dw_shape[1], o["d_dil_h"]) * ew * c_exp if w_expand_shape else 0
    return ring + c_exp


def scratch_bytes(x_shape: tuple[int, ...], c_exp: int, w_expand_shape: tuple[int, ...] | None,
                  w_dw_shape: tuple[int, ...], w_project_shape: tuple[int, ...], o: dict) -> int:
    """Bytes of the `scratch` tensor (FusedIrbScratchBytes): the streaming buffers, then, 4-aligned,
    room for the per-channel multipliers and shifts (4 * c_exp + 2 * c_out int32s), so a TFLM glue
    may compute them in Eval instead of keeping them in persistent memory."""
    stream = stream_bytes(x_shape, c_exp, w_expand_shape, w_dw_shape, o)
    return (stream + 3) // 4 * 4 + 4 * (4 * c_exp + 2 * int(w_project_shape[0]))


def leading_pad(stride: int, dilation: int, in_size: int, filt: int, out: int) -> int:
    """TFLite ComputePaddingWithOffset (leading padding only)."""
    eff = (filt - 1) * dilation + 1
    return max((out - 1) * stride + eff - in_size, 0) // 2


def inplace_lag(x_shape: tuple[int, ...], c_exp: int, w_expand_shape: tuple[int, ...] | None,
                w_dw_shape: tuple[int, ...], c_out: int, o: dict) -> int:
    """Streaming in place (FusedIrbInPlaceLag): the smallest lag >= 0 in bytes such that the C++
    core computes the same y when y starts `lag` (or more) bytes before x, overlapping it.

    Replays the core's loop order: output rows in order; at the start of row oy the expansion
    rows not yet in the ring are computed (each reads x rows from its lowest tap row); then the
    pixels in order, each reading (without expansion) its depthwise window of x and (with the
    residual) its own x pixel before writing its c_out bytes of y. A read of x at addresses >= a
    after W bytes of y were written is intact iff W - lag <= a, so
    lag = max(0, max over reads of (W - a)), with `a` a lower bound of the read's addresses."""
    s = shapes(x_shape, c_exp, w_expand_shape, w_dw_shape, o)
    xh, xw, xc = s["x"]
    eh, ew, _ = s["e"]
    ph, pw, _ = s["pd"]
    yh, yw, _ = s["d"]
    x_row = xw * xc
    kh, kw = int(w_dw_shape[1]), int(w_dw_shape[2])
    d_pad_top = leading_pad(o["d_stride_h"], o["d_dil_h"], ph, kh, yh)
    d_pad_left = leading_pad(o["d_stride_w"], o["d_dil_w"], pw, kw, yw)
    lag = 0
    has_expand = w_expand_shape is not None
    if has_expand:
        e_kh, e_kw = int(w_expand_shape[1]), int(w_expand_shape[2])
        e_pad_top = leading_pad(o["e_stride_h"], o["e_dil_h"], xh, e_kh, eh)
        e_pad_left = leading_pad(o["e_stride_w"], o["e_dil_w"], xw, e_kw, ew)
        ix = (np.arange(ew)[:, None] * o["e_stride_w"] - e_pad_left
              + np.arange(e_kw)[None, :] * o["e_dil_w"]).ravel()
        ix = ix[(ix >= 0) & (ix < xw)]
        e_col = int(ix.min()) if ix.size else None
    # lowest valid depthwise column of x per output column (None: the window reads no x)
    col_lo: list[int | None] = []
    for ox in range(yw):
        pcs = [ox * o["d_stride_w"] - d_pad_left + kx * o["d_dil_w"] for kx in range(kw)]
        ecs = [pc - o["pad_left"] for pc in pcs if 0 <= pc < pw and 0 <= pc - o["pad_left"] < ew]
        col_lo.append(min(ecs) if ecs else None)
    next_row = 0
    for oy in range(yh):
        row_written = oy * yw * c_out
        base = oy * o["d_stride_h"] - d_pad_top
        if has_expand:
            first = base - o["pad_top"]
            last = min(first + (kh - 1) * o["d_dil_h"], eh - 1)
            for r in range(max(first, next_row, 0), last + 1):
                y0 = r * o["e_stride_h"] - e_pad_top
                rows = [y0 + ky * o["e_dil_h"] for ky in range(e_kh)]
                rows = [iy for iy in rows if 0 <= iy < xh]
                if rows and e_col is not None:
                    lag = max(lag, row_written - (rows[0] * x_row + e_col * xc))
            next_row = max(next_row, last + 1)
        else:
            ers = [base + ky * o["d_dil_h"] - o["pad_top"] for ky in range(kh)
                   if 0 <= base + ky * o["d_dil_h"] < ph]
            ers = [er for er in ers if 0 <= er < eh]
            if ers:
                for ox, ec in enumerate(col_lo):
                    if ec is not None:
                        lag = max(lag, (oy * yw + ox) * c_out - (ers[0] * x_row + ec * xc))
        if o["residual"]:
            pix = oy * yw + np.arange(yw)
            lag = max(lag, int((pix * c_out - pix * xc).max()))
    return int(lag)


def _info(name: str, shape, scale: float, zp: int) -> TensorInfo:
    return TensorInfo(name, tuple(int(d) for d in shape), np.dtype(np.int8),
                      np.array([scale], np.float32), np.array([zp], np.int64))


def _conv_options(o: dict, prefix: str, act: int | None = None):
    opts = fb.Conv2DOptionsT()
    opts.strideH, opts.strideW = o[prefix + "stride_h"], o[prefix + "stride_w"]
    opts.dilationHFactor, opts.dilationWFactor = o[prefix + "dil_h"], o[prefix + "dil_w"]
    opts.padding = o[prefix + "padding"]
    opts.fusedActivationFunction = o[prefix + "act"] if act is None else act
    return opts


def _dw_options(o: dict):
    opts = fb.DepthwiseConv2DOptionsT()
    opts.strideH, opts.strideW = o["d_stride_h"], o["d_stride_w"]
    opts.dilationHFactor, opts.dilationWFactor = o["d_dil_h"], o["d_dil_w"]
    opts.padding = o["d_padding"]
    opts.depthMultiplier = 1
    opts.fusedActivationFunction = o["d_act"]
    return opts


def _pointwise_options(act: int):
    opts = fb.Conv2DOptionsT()
    opts.strideH = opts.strideW = opts.dilationHFactor = opts.dilationWFactor = 1
    opts.padding = fb.Padding.VALID
    opts.fusedActivationFunction = act
    return opts


def fused_irb(inputs: list[np.ndarray | None], infos: list[TensorInfo | None],
              y_info: TensorInfo, o: dict) -> np.ndarray:
    """The op's output y: the builtin kernels of the original chain, in sequence.

    inputs / infos: the seven inputs in slot order (None for absent ones); y_info: the output."""
    x, x_info = inputs[X], infos[X]
    conv, dwconv = BUILTIN_KERNELS["CONV_2D"], BUILTIN_KERNELS["DEPTHWISE_CONV_2D"]
    w_d, w_e = inputs[W_DW], inputs[W_EXPAND]
    c_exp = int(w_d.shape[3])
    s = shapes(x.shape, c_exp, None if w_e is None else w_e.shape, w_d.shape, o)
    src = x
    if w_e is not None:
        e_info = _info("e", (1, *s["e"]), o["e_scale"], o["e_zp"])
        src = conv([x, w_e, inputs[B_EXPAND]], [x_info, infos[W_EXPAND], infos[B_EXPAND]],
                   [e_info], _conv_options(o, "e_"))[0]
    pads = (o["pad_top"], o["pad_bottom"], o["pad_left"], o["pad_right"])
    d_in_info = _info("d_in", (1, *s["pd"]), o["d_in_scale"], o["d_in_zp"])
    if any(pads):
        paddings = np.array([[0, 0], [pads[0], pads[1]], [pads[2], pads[3]], [0, 0]], np.int32)
        src = BUILTIN_KERNELS["PADV2"]([src, paddings, np.array([o["pad_value"]], np.int8)],
                                       [None, None, None], [d_in_info], None)[0]
    d_info = _info("d", (1, *s["d"]), o["d_scale"], o["d_zp"])
    d = dwconv([src, w_d, inputs[B_DW]], [d_in_info, infos[W_DW], infos[B_DW]], [d_info],
               _dw_options(o))[0]
    c_out = int(inputs[W_PROJECT].shape[0])
    if o["residual"]:
        p_info = _info("p", (1, *s["d"][:2], c_out), o["p_scale"], o["p_zp"])
    else:
        p_info = y_info
    p = conv([d, inputs[W_PROJECT], inputs[B_PROJECT]], [d_info, infos[W_PROJECT],
                                                         infos[B_PROJECT]],
             [p_info], _pointwise_options(o["p_act"]))[0]
    if not o["residual"]:
        return p.reshape(y_info.shape)
    add_opts = fb.AddOptionsT()
    add_opts.fusedActivationFunction = o["add_act"]
    pair = ([x, p], [x_info, p_info]) if o["residual"] == 1 else ([p, x], [p_info, x_info])
    return BUILTIN_KERNELS["ADD"](pair[0], pair[1], [y_info], add_opts)[0].reshape(y_info.shape)


# The value-table key of a streamed input (option x_external: x is no tensor of the model but
# memory outside the arena the application hands over; HostSimulator puts the image here).
EXTERNAL_X = "tmt/external_x"


def external_x_info(o: dict) -> TensorInfo:
    """The streamed input's shape and quantization, from the options of its TMT_FUSED_IRB."""
    return _info("x", (1, o["x_h"], o["x_w"], o["x_c"]), o["x_scale"], o["x_zp"])


def skipped(inputs: list[int], values: dict) -> bool:
    """Whether a TMT_FUSED_IRB with these inputs skips (features_given = 1); ValueError naming
    the input for a value other than 0 or 1."""
    if len(inputs) <= FEATURES_GIVEN or inputs[FEATURES_GIVEN] < 0:
        return False
    flag = int(np.asarray(values[inputs[FEATURES_GIVEN]]).reshape(-1)[0])
    if flag not in (0, 1):
        raise ValueError(f"TMT_FUSED_IRB: input {FEATURES_GIVEN} 'features_given' is {flag}; it "
                         "must be 0 (compute the frozen prefix) or 1 (its output, the cached "
                         "features, was given)")
    return flag == 1


def run_op(sg: Any, op: Any, values: dict) -> None:
    """HostSimulator hook: run one TMT_FUSED_IRB operator on the value table (no lr gate); with
    features_given (input 7) = 1 it writes nothing."""
    if skipped(op.inputs, values):
        return
    ins = [values[t] if t >= 0 else None for t in op.inputs]
    infos = [sg.infos[t] if t >= 0 else None for t in op.inputs]
    if op.options.get("x_external"):  # a streamed input: x from outside the arena
        if EXTERNAL_X not in values:
            raise ValueError("TMT_FUSED_IRB: the streamed input (x_external) was not given")
        infos[X] = external_x_info(op.options)
        ins[X] = np.asarray(values[EXTERNAL_X]).reshape(infos[X].shape)
    y_t, scratch_t = op.outputs
    values[y_t] = fused_irb(ins, infos, sg.infos[y_t], op.options)
    values[scratch_t] = np.zeros(sg.infos[scratch_t].shape, np.int8)
