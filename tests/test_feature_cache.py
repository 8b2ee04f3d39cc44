"""Feature cache (convert(..., feature_cache=True)): a step on a sample seen before skips the
frozen prefix, the TMT_FUSED_IRB chain from the image on, when the application hands over the
prefix's output (the sample's cached features) instead of the image.

* converter: every prefix op reads the new int32 input `tmt/features_given`; the prefix's output
  is a graph input and the last graph output; the metadata describes it; an image not read by a
  frozen fused block alone is refused with the operator and layer named;
* HostSimulator: training on cached features gives the losses, trained variables and outputs of
  training on the images, bit for bit; features() equals what a step outputs; a bad flag or bad
  features fail with the input named and change nothing;
* TFLM on this host (TFLM_DIR; tflm_ops/integration/train_driver.cc): the same, bit for bit, and
  the features TFLM outputs are the simulator's; a flag other than 0 or 1 fails the step naming
  TMT_FUSED_IRB and 'features_given', changing no variable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import tfmicro_train as tmt
from tfmicro_train.kernels import fused_ops
from tfmicro_train.schema import fb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_fuse import irb_net  # noqa: E402
from test_stream_input import _build_driver, m7_train_program  # noqa: E402

TFLM_SKIP = ("TFLM tests of the feature cache skipped: set TFLM_DIR=/path/to/tflite-micro (a "
             "checkout where `make -f tensorflow/lite/micro/tools/make/Makefile microlite` has run)")

# irb_net's conv layers: 0 stem, 1-2 block 0, 3-5 block 1, 6-8 block 2 (residual), 9 Dense
BLOCK2_TRAINS = tmt.SparseUpdate(bias_last_k=2, weight_ratios={8: 1})


@pytest.fixture(scope="module")
def calib16():
    rng = np.random.default_rng(5)
    return [rng.random((1, 16, 16, 3)).astype(np.float32) for _ in range(16)]


@pytest.fixture(scope="module", params=["last", "block 2 trains"])
def pair(request, calib16):
    """irb_net converted without and with the feature cache."""
    update = "last" if request.param == "last" else BLOCK2_TRAINS
    kw = dict(update=update, optimizer=tmt.SGD(0.05))
    m = irb_net()
    return request.param, tmt.convert(m, calib16, **kw), tmt.convert(m, calib16,
                                                                    feature_cache=True, **kw)


def _labels(n: int) -> list[int]:
    return [k % 10 for k in range(n)]


# --------------------------------------------------------------------------- converter


def test_prefix_ops_read_the_flag_and_the_features_are_an_input_and_output(pair):
    case, plain, cached = pair
    meta = cached.metadata["feature_cache"]
    assert meta["ops"] == (3 if case == "last" else 2)  # block 2 trains: not in the prefix
    assert meta["shape"] == [1, 4, 4, 8] and meta["bytes"] == 128 and meta["dtype"] == "int8"
    names = cached.metadata["inputs"]
    assert len(plain.metadata["inputs"]) == 3 and names[1:3] == plain.metadata["inputs"][1:]
    assert names[3] == "tmt/features_given"
    assert names[4] == meta["name"] == cached.metadata["outputs"][meta["features_output"]]
    assert (meta["flag_input"], meta["features_input"], meta["features_output"]) == (3, 4, 2)
    m = fb.ModelT.InitFromPackedBuf(cached.flatbuffer, 0)
    sg = m.subgraphs[0]
    flag = int(sg.inputs[3])
    fused = [op for op in sg.operators if m.operatorCodes[op.opcodeIndex].customCode
             == fused_ops.OP_NAME.encode()]
    readers = [op for op in fused if len(op.inputs) == 8 and int(op.inputs[7]) == flag]
    assert len(readers) == meta["ops"] and len(fused) == meta["ops"]
    assert int(readers[-1].outputs[0]) == int(sg.inputs[4]) == int(sg.outputs[2])
    # the features are live for the whole step: a little more arena, at most their bytes + 64
    grow = cached.memory_report().arena_bytes - plain.memory_report().arena_bytes
    print(f"\n{case}: arena {plain.memory_report().arena_bytes} -> "
          f"{cached.memory_report().arena_bytes} B")
    assert 0 <= grow <= meta["bytes"] + 16 + 64 * 4


@pytest.mark.parametrize("case", ["no fusion", "first layer trains"])
def test_image_not_read_by_a_frozen_fused_block_is_refused(case, calib16):
    kw = {"fuse": False} if case == "no fusion" else {"update": "full"}
    with pytest.raises(ValueError, match=r"feature_cache: the input '[^']+' must be read by "
                                         r"exactly one frozen fused block") as e:
        tmt.convert(irb_net(), calib16, feature_cache=True, **kw)
    assert "CONV" in str(e.value) and "(layer '" in str(e.value)
    print(f"\n{case}: {e.value}")


# --------------------------------------------------------------------------- simulator


def test_training_on_cached_features_is_bit_exact(pair, calib16):
    _, plain, cached = pair
    a, b = tmt.HostSimulator(plain), tmt.HostSimulator(cached)
    assert a.feature_cache is None and b.feature_cache == cached.metadata["feature_cache"]
    xs, ys = calib16[:6], _labels(6)
    la = a.fit(xs, ys, epochs=3)
    lb = b.fit(xs, ys, epochs=3, cache_features=True)
    assert la == lb and len(set(la)) > 1
    wa, wb = a.weights(), b.weights()
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    f = b.features(calib16[7])
    assert f.dtype == np.int8 and f.shape == (1, 4, 4, 8)
    assert np.array_equal(a.predict_raw(calib16[7]), b.predict_raw(None, features=f))
    # a training step outputs the features too, and a step on them equals a step on the image
    raw = [b.quantize_input(calib16[8]), np.array([3], np.int32), np.array([0.05], np.float32),
           np.array([0], np.int32), np.zeros((1, 4, 4, 8), np.int8)]
    saved = {k: v.copy() for k, v in b.variables.items()}
    out = b.invoke(raw)
    assert np.array_equal(out[2], b.features(calib16[8]))
    after_image = {k: v.copy() for k, v in b.variables.items()}
    b.variables = saved
    out_f = b.invoke([np.zeros_like(raw[0]), raw[1], raw[2], np.array([1], np.int32), out[2]])
    assert np.array_equal(out_f[0], out[0]) and np.array_equal(out_f[1], out[1])
    assert all(np.array_equal(after_image[k], b.variables[k]) for k in saved)
    # the exported plain model is the ordinary network: the image in, the output out
    m = fb.ModelT.InitFromPackedBuf(b.export_tflite(), 0)
    assert len(m.subgraphs[0].inputs) == 1 and len(m.subgraphs[0].outputs) == 1


def test_bad_flag_or_features_fail_and_change_nothing(pair, calib16):
    _, plain, cached = pair
    b = tmt.HostSimulator(cached)
    b.train_step(calib16[0], 1)
    before = {k: v.copy() for k, v in b.variables.items()}
    f = b.features(calib16[1])
    raw = [np.zeros((1, 16, 16, 3), np.int8), np.array([1], np.int32),
           np.array([0.05], np.float32), np.array([2], np.int32), f]
    with pytest.raises(ValueError, match="TMT_FUSED_IRB: input 7 'features_given' is 2"):
        b.invoke(raw)
    with pytest.raises(ValueError, match=r"features must be int8 with shape \[1, 4, 4, 8\]"):
        b.train_step(None, 1, features=f.astype(np.int32))
    with pytest.raises(ValueError, match=r"features must be int8 with shape \[1, 4, 4, 8\]"):
        b.train_step(None, 1, features=f.reshape(-1)[:100])
    assert all(np.array_equal(before[k], b.variables[k]) for k in before)
    a = tmt.HostSimulator(plain)
    with pytest.raises(ValueError, match="no feature cache"):
        a.train_step(None, 1, features=f)
    with pytest.raises(ValueError, match="no feature cache"):
        a.fit(calib16[:2], [0, 1], cache_features=True)


def test_streamed_input_with_feature_cache(calib16):
    kw = dict(update="last", optimizer=tmt.SGD(0.05))
    m = irb_net()
    a = tmt.HostSimulator(tmt.convert(m, calib16, **kw))
    both = tmt.convert(m, calib16, stream_input=True, feature_cache=True, **kw)
    b = tmt.HostSimulator(both)
    assert b.streamed_input is not None and both.metadata["feature_cache"]["flag_input"] == 2
    xs, ys = calib16[:5], _labels(5)
    assert a.fit(xs, ys, epochs=3) == b.fit(xs, ys, epochs=3, cache_features=True)
    wa, wb = a.weights(), b.weights()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_search_memory_model_plans_the_cached_artifact(pair, calib16):
    # plan_sparse_update(feature_cache=True) budgets with the planner of the artifact convert()
    # makes with feature_cache=True: the features are an input live for the whole step
    from tfmicro_train import search

    case, plain, cached = pair
    update = tmt.SparseUpdate.preset("last", 10) if case == "last" else BLOCK2_TRAINS
    m = irb_net()
    peaks = {}
    for art, flag in ((plain, False), (cached, True)):
        mm = search.MemoryModel(m, calib16, feature_cache=flag)
        peaks[flag] = mm.measure(update)[0]
        assert peaks[flag] == art.memory_report().peak_sram_bytes, (case, flag)
    assert peaks[True] > peaks[False]
    # a scheme training the stem (which reads the image) has no cache: it fits no budget
    stem = tmt.SparseUpdate.preset("full", 10)
    assert search.MemoryModel(m, calib16, feature_cache=True).measure(stem)[0] == search.NOT_CONVERTIBLE
    assert search.MemoryModel(m, calib16).measure(stem)[0] < search.NOT_CONVERTIBLE


# --------------------------------------------------------------------------- TFLM on this host


@pytest.fixture(scope="module")
def driver():
    if not (os.environ.get("TFLM_DIR") or os.environ.get("TMT_TRAIN_DRIVER")):
        pytest.skip(TFLM_SKIP)
    return _build_driver()


def _steps(sim, data, n: int, cached: bool) -> list[list[np.ndarray]]:
    """n steps as the device gets them (image, label, lr, features_given, features): with
    `cached`, every step from the second epoch (k >= 4) on the features of its sample."""
    shape = tuple(sim.feature_cache["shape"])
    out = []
    for k in range(n):
        x = data[k % 4]
        use = cached and k >= 4
        out.append([np.zeros((1, 16, 16, 3), np.int8) if use else sim.quantize_input(x),
                    np.array([k % 10], np.int32), np.array([0.0 if k == 5 else 0.05], np.float32),
                    np.array([1 if use else 0], np.int32),
                    sim.features(x) if use else np.zeros(shape, np.int8)])
    return out


def test_cached_training_in_tflm_bit_exact(driver, pair, calib16, tmp_path):
    import test_tflm_integration as ti

    case, plain, cached = pair
    sim = tmt.HostSimulator(cached)
    fresh, reuse = _steps(sim, calib16, 10, False), _steps(sim, calib16, 10, True)
    run_f = ti.run_driver(driver, cached.flatbuffer, fresh, tmp_path / "fresh")
    run_c = ti.run_driver(driver, cached.flatbuffer, reuse, tmp_path / "cached")
    run_p = ti.run_driver(driver, plain.flatbuffer, [s[:3] for s in fresh], tmp_path / "plain")
    for run in (run_f, run_c, run_p):
        assert run.returncode == 0, str(run)
    sim_steps, sim_vars = ti.simulate(cached.flatbuffer, reuse)
    problems = ti.compare(run_c, sim_steps, sim_vars)
    assert not problems, "\n".join(problems[:20]) + "\n" + str(run_c)
    # the same losses, outputs and trained variables as on the images, with or without the cache
    assert run_c.steps == run_f.steps == run_p.steps
    assert all(s[0] == "ok" for s in run_c.steps.values())
    for run in (run_f, run_p):
        assert all(np.array_equal(run_c.variables[k], run.variables[k]) for k in run.variables)
    # the features TFLM outputs after a step on the image are the simulator's
    for k in range(4):
        assert run_f.out2[k] == sim.features(calib16[k]).tobytes()
    assert "reset: ok" in run_c.stdout
    print(f"\n{case}: 10 steps bit-exact in TFLM, 6 of them on cached features")


def test_bad_flag_fails_the_step_in_tflm_and_changes_nothing(driver, pair, calib16, tmp_path):
    import test_tflm_integration as ti

    _, _, cached = pair
    steps = _steps(tmt.HostSimulator(cached), calib16, 8, True)
    steps[5][3] = np.array([7], np.int32)
    run = ti.run_driver(driver, cached.flatbuffer, steps, tmp_path / "bad")
    assert run.returncode == 0, str(run)
    assert run.steps[5] == ("failed", "step 5 failed (Invoke); variables unchanged"), str(run)
    assert "TMT_FUSED_IRB: input 7 'features_given' is 7" in run.stderr, run.stderr
    sim_steps, sim_vars = ti.simulate(cached.flatbuffer, steps[:5] + steps[6:])
    kept = {k if k < 5 else k + 1: v for k, v in sim_steps.items()}
    assert all(run.steps[k] == v for k, v in kept.items())
    assert all(np.array_equal(run.variables[k], sim_vars[k]) for k in sim_vars)


# --------------------------------------------------------------------------- Cortex-M7


def test_cached_steps_on_the_cortex_m7(pair, calib16, tmp_path):
    """tflm_train on the Cortex-M7 (QEMU): steps on cached features give the simulator's losses,
    equal to the steps on the images, in the planned arena."""
    case, _, art = pair
    peak = art.memory_report().peak_sram_bytes
    sim = tmt.HostSimulator(art)
    xs, ys = calib16[:4] * 2, _labels(8)
    feats = [None] * 4 + [sim.features(x) for x in xs[4:]]  # the second epoch on the cache
    cmbuild, elf, steps = m7_train_program(art, sim, xs, ys, feats, peak, tmp_path)
    res = cmbuild.run_qemu(elf, "cortex-m7", ["-", str(steps), str(tmp_path / "region.bin"),
                                              f"arena={peak}"], timeout=300)
    out = cmbuild.parse_train_output(res.stdout)
    assert res.returncode == 0 and out.get("done"), res.stdout[-2000:]
    plain = tmt.HostSimulator(pair[1])
    want = [int(np.float32(plain.train_step(x, y, 0.05)).view(np.uint32)) for x, y in zip(xs, ys)]
    assert [s["loss_bits"] for s in out["steps"]] == want
    print(f"\n{case}: 8 steps on the M7 in the planned {peak} B, 4 on cached features, bit-exact")
