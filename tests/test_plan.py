"""The memory plan written into the artifact: valid for TFLM, in place where safe, masks packed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import residual_cnn

import tfmicro_train as tmt
from tfmicro_train.schema import TENSOR_DTYPES, fb, op_name


def _offline_plan(m: fb.ModelT) -> np.ndarray:
    for md in m.metadata:
        if md.name.decode() == "OfflineMemoryAllocation":
            raw = np.frombuffer(bytes(bytearray(m.buffers[md.buffer].data)), "<i4")
            assert raw[2] == len(m.subgraphs[0].tensors) == raw.size - 3
            return raw[3:]
    raise AssertionError("no OfflineMemoryAllocation metadata")


def _fused_lags(art) -> dict[tuple[int, int], int]:
    """(x, y) of every TMT_FUSED_IRB op -> the lag y must start before x to be written over it,
    recomputed by the numpy twin from the op's options and tensor shapes in the flatbuffer."""
    from flatbuffers import flexbuffers

    from tfmicro_train.kernels import fused_ops

    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    tensors = m.subgraphs[0].tensors
    lags = {}
    for op in m.subgraphs[0].operators:
        if op_name(m, op) != fused_ops.OP_NAME:
            continue
        o = flexbuffers.Loads(bytes(bytearray(op.customOptions)))
        ins = [int(t) for t in op.inputs]

        def shape(k: int, ins=ins):
            return tuple(int(d) for d in tensors[ins[k]].shape) if ins[k] >= 0 else None

        wd = shape(fused_ops.W_DW)
        lags[(ins[0], int(op.outputs[0]))] = fused_ops.inplace_lag(
            shape(fused_ops.X), wd[3], shape(fused_ops.W_EXPAND), wd, shape(fused_ops.W_PROJECT)[0],
            o)
    return lags


def _check_plan(art) -> tuple[int, int]:
    """Recompute lifetimes from the flatbuffer; no two live tensors may share bytes, except an
    element-wise gradient op's output over the input that dies there, and a TMT_FUSED_IRB's output
    y over its input x that dies there when y starts at least the proven lag (fused_ops.
    inplace_lag) before x (streaming in place). Returns (tensors, aliases)."""
    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    sg = m.subgraphs[0]
    offsets = _offline_plan(m)
    n_ops = len(sg.operators)
    first, last = {}, {}
    for t in sg.inputs:
        first[int(t)] = 0
    for i, op in enumerate(sg.operators):
        for t in (*op.inputs, *op.outputs):
            if t >= 0:
                first.setdefault(int(t), i)
                last[int(t)] = i
    for t in sg.outputs:
        last[int(t)] = n_ops - 1
    planned = {}
    for t, off in enumerate(offsets):
        tensor = sg.tensors[t]
        has_data = m.buffers[tensor.buffer].data is not None
        if off < 0:
            assert has_data or tensor.isVariable, f"tensor {t} '{tensor.name}' is not planned"
            continue
        assert not has_data and not tensor.isVariable and off % 16 == 0
        size = int(np.prod(tensor.shape)) * TENSOR_DTYPES[tensor.type].itemsize
        planned[t] = (int(off), size, first[t], last[t])
    in_place = {(int(op.inputs[0]), int(op.outputs[0])) for op in sg.operators
                if op_name(m, op) in ("TMT_ACT_GRAD", "TMT_MASK_GRAD", "TMT_RESHAPE_GRAD",
                                      "TMT_PAD_GRAD", "TMT_GRAD_ADD")}
    fused = _fused_lags(art)
    items = sorted(planned.items())
    aliases = 0
    for a, (oa, sa, fa, la) in items:
        for b, (ob, sb, fb_, lb) in items:
            if b <= a or not (oa < ob + sb and ob < oa + sa) or not (fa <= lb and fb_ <= la):
                continue
            # shared bytes while both live: only an in-place op's input (dying there) and output
            in_place_pair = ((a, b) in in_place and la == fb_) or ((b, a) in in_place and lb == fa)
            for (x, y), lag in fused.items():  # x dies where y is written, y >= lag before x
                if {a, b} == {x, y} and planned[x][3] == planned[y][2]:
                    in_place_pair |= planned[x][0] - planned[y][0] >= lag
            assert in_place_pair, (sg.tensors[a].name, sg.tensors[b].name)
            aliases += 1
    top = max(o + s for o, s, _, _ in planned.values())
    assert top <= art.memory_report().arena_bytes
    return len(planned), aliases


@pytest.mark.parametrize("update", ["full", "bias", "last"])
def test_offline_plan_is_valid(calib, update):
    art = tmt.convert(residual_cnn(pool="avg"), calib, update=update)
    n, aliases = _check_plan(art)
    print(f"{update}: {n} planned tensors, {aliases} in-place pairs, arena "
          f"{art.memory_report().arena_bytes} B")
    if update == "full":
        assert aliases > 0


def test_masks_are_packed_and_save_memory(calib):
    model = residual_cnn(pool="gap")
    # the pack runs in the forward pass, right after the layer it masks (bias-only: the layers'
    # inputs die there, so the pack stays an op of its own)
    art = tmt.convert(model, calib, update="bias")
    ops = [e.op for e in art.timeline]
    assert "TMT_MASK_PACK" in ops and "TMT_MASK_GRAD" in ops
    i = ops.index("TMT_MASK_PACK")
    assert art.timeline[i - 1].role == "forward" and art.timeline[i].role == "forward"
    _check_plan(art)


def test_mask_packs_fold_into_their_conv(calib):
    """Where a layer's input is kept for its weight gradient, its TMT_CONV writes the mask itself
    (output 1 'bits'): one operator less per mask, no more arena, the same training bit for bit."""
    model = residual_cnn(pool="avg")
    update = tmt.SparseUpdate(bias_last_k=3, weight_ratios={0: 1, 3: 1})
    plain = tmt.convert(model, calib, update=update, flash_requant=False)
    n_packs = [e.op for e in plain.timeline].count("TMT_MASK_PACK")
    art = tmt.convert(model, calib, update=update, narrow_biases=False)  # int32 in both
    assert n_packs >= 2 and "TMT_MASK_PACK" not in [e.op for e in art.timeline]
    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    sg = m.subgraphs[0]
    with_bits = [op for op in sg.operators if op_name(m, op) == "TMT_CONV" and len(op.outputs) == 2
                 and any(int(op.outputs[1]) in o.inputs for o in sg.operators)]
    assert len(with_bits) == n_packs
    assert len(art.timeline) == len(plain.timeline) - n_packs
    assert art.memory_report().arena_bytes <= plain.memory_report().arena_bytes
    _check_plan(art)
    sims = [tmt.HostSimulator(a, learning_rate=0.05) for a in (plain, art)]
    for k in range(3):
        losses = [s.train_step(calib[k], np.array([k % 10])) for s in sims]
        assert losses[0] == losses[1]
    w0, w1 = sims[0].weights(), sims[1].weights()
    assert w0.keys() == w1.keys() and all(np.array_equal(w0[k], w1[k]) for k in w0)


def test_memory_report_timeline_and_plot(tmp_path, calib):
    art = tmt.convert(residual_cnn(), calib, update="full")
    rep = art.memory_report()
    assert len(rep.timeline) == len(fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
                                    .subgraphs[0].operators)
    assert max(e.live_bytes for e in rep.timeline) <= rep.arena_bytes
    assert rep.peak_sram_bytes == rep.arena_bytes + rep.variable_bytes + rep.overhead_bytes
    path = rep.plot(str(tmp_path / "m.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_fused_blocks_stream_in_place(monkeypatch):
    """A TMT_FUSED_IRB writes y over its dying input x (streaming in place), only as far as the
    proven lag allows: the checker recomputes the lag and rejects the plan if it were larger."""
    from test_fuse import irb_net

    from tfmicro_train.kernels import fused_ops

    rng = np.random.default_rng(1)
    calib16 = [rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32) for _ in range(8)]
    art = tmt.convert(irb_net(), calib16, update="last", fuse=True)
    plain = tmt.convert(irb_net(), calib16, update="last", fuse=False)
    _check_plan(art)
    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    offsets, tensors = _offline_plan(m), m.subgraphs[0].tensors
    overlapping = 0
    for (x, y), lag in _fused_lags(art).items():
        nx, ny = int(np.prod(tensors[x].shape)), int(np.prod(tensors[y].shape))
        if offsets[x] < offsets[y] + ny and offsets[y] < offsets[x] + nx:
            overlapping += 1
            assert offsets[x] - offsets[y] >= lag
    print(f"irb_net last: {overlapping} fused ops in place, arena "
          f"{plain.memory_report().arena_bytes} B unfused -> {art.memory_report().arena_bytes} B")
    assert overlapping >= 1
    assert art.memory_report().arena_bytes < plain.memory_report().arena_bytes
    monkeypatch.setattr(fused_ops, "inplace_lag", lambda *a, **k: 1 << 30)
    with pytest.raises(AssertionError):
        _check_plan(art)


def test_layout_keeps_the_smaller_of_the_orders(monkeypatch, calib):
    """The offline plan lays the arena out in TFLM's largest-first order and in a lifetime order
    and keeps the smaller: never larger than TFLM's own greedy plan of the same buffers, never
    below the bytes live at the busiest operator, and valid (no overlap of live tensors)."""
    from tfmicro_train import api
    from tfmicro_train import plan as P

    graphs = []
    monkeypatch.setattr(api, "plan_memory", lambda g: graphs.append(g) or P.plan_memory(g))
    for update in ("full", tmt.SparseUpdate(bias_last_k=3, weight_ratios={2: 0.5, 3: 1})):
        art = tmt.convert(residual_cnn(pool="gap"), calib, update=update)
        g = graphs[-1]
        _check_plan(art)
        tflm_greedy = P.greedy_layout(P.lifetimes(g), order=P.by_size)
        mem = art.plan
        assert max(mem.live_bytes) <= mem.arena_bytes <= tflm_greedy
