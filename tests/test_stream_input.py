"""Streamed input (convert(..., stream_input=True)): the int8 image is no arena tensor; the first
TMT_FUSED_IRB reads it from memory outside the arena that the application hands over through
TFLM's external context (tfmicro_train::StreamedInput, tflm_ops/tflm/training_ops.h).

* converter: no image input, the fused op carries x_external and the image's shape and
  quantization, the metadata describes it, the plan's arena shrinks by about the image; an image
  read by anything but one fused block is refused with the operator and layer named;
* HostSimulator: the same public API, and the same losses, trained variables, predictions and
  gradients as the artifact converted without streaming, bit for bit;
* TFLM on this host (TFLM_DIR; tflm_ops/integration/train_driver.cc): the streamed artifact
  trains bit for bit like the simulator and the plain artifact in a smaller arena (head = plan);
  no StreamedInput makes AllocateTensors fail, a bad one (bytes, magic, null data) makes Invoke
  fail with a message naming TMT_FUSED_IRB, changing no variable;
* Cortex-M7 under QEMU (TFLM's cortex-m7 build): the plan's peak SRAM is the arena TFLM needs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import tfmicro_train as tmt
from tfmicro_train.schema import fb, op_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_fuse import _bn_from_batch, irb_net  # noqa: E402

TFLM_SKIP = ("TFLM tests of the streamed input skipped: set TFLM_DIR=/path/to/tflite-micro (a "
             "checkout where `make -f tensorflow/lite/micro/tools/make/Makefile microlite` has run)")


def stem_net(seed: int = 0):
    """48x48x3 image -> stem conv (stride 2) -> depthwise (stride 2) -> project: one fused block
    whose input, the image, is most of the arena; GAP, Dense."""
    import keras

    L = keras.layers
    keras.utils.set_random_seed(seed)
    inp = keras.Input((48, 48, 3))
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(8, 3, strides=2, padding="same",
                                                     use_bias=False)(inp)))
    x = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, strides=2, padding="same",
                                                              use_bias=False)(x)))
    x = L.BatchNormalization()(L.Conv2D(8, 1, use_bias=False)(x))
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(10)(x))
    _bn_from_batch(model, (48, 48, 3))
    return model


@pytest.fixture(scope="module")
def calib16():
    rng = np.random.default_rng(5)
    return [rng.random((1, 16, 16, 3)).astype(np.float32) for _ in range(16)]


@pytest.fixture(scope="module")
def calib48():
    rng = np.random.default_rng(6)
    return [rng.random((1, 48, 48, 3)).astype(np.float32) for _ in range(8)]


@pytest.fixture(scope="module")
def irb_pair(calib16):
    """irb_net (stem + block 0 fuse) converted with and without the streamed input."""
    m = irb_net()
    kw = dict(update="last", optimizer=tmt.SGD(0.05))
    return tmt.convert(m, calib16, **kw), tmt.convert(m, calib16, stream_input=True, **kw)


@pytest.fixture(scope="module")
def stem_pair(calib48):
    m = stem_net()
    kw = dict(update="last", optimizer=tmt.SGD(0.05))
    return tmt.convert(m, calib48, **kw), tmt.convert(m, calib48, stream_input=True, **kw)


def _fused_ops(art) -> list:
    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    from flatbuffers import flexbuffers

    return [(op, flexbuffers.Loads(bytes(bytearray(op.customOptions))))
            for op in m.subgraphs[0].operators if op_name(m, op) == "TMT_FUSED_IRB"], m


# --------------------------------------------------------------------------- converter


def test_streamed_artifact_has_no_image_tensor(stem_pair):
    plain, streamed = stem_pair
    ops, m = _fused_ops(streamed)
    sg = m.subgraphs[0]
    names = [sg.tensors[int(t)].name.decode() for t in sg.inputs]
    assert names == ["label", "learning_rate"] == streamed.metadata["inputs"]
    assert plain.metadata["inputs"][1:] == names and "stream_input" not in plain.metadata
    first, o = ops[0]
    assert int(first.inputs[0]) == -1 and o["x_external"] == 1
    assert (o["x_h"], o["x_w"], o["x_c"]) == (48, 48, 3)
    assert all("x_external" not in opts for _, opts in ops[1:])
    info = streamed.metadata["stream_input"]
    x = tmt.HostSimulator(plain).input_info
    assert info["name"].startswith("serving_default") and info["shape"] == [1, 48, 48, 3]
    assert info["bytes"] == 6912
    assert info["dtype"] == "int8" and info["zero_point"] == int(x.zero_point[0])
    assert np.float32(info["scale"]) == np.float32(x.scale[0]) == np.float32(o["x_scale"])
    # no tensor of the artifact is the image any more
    assert len(sg.tensors) == len(fb.ModelT.InitFromPackedBuf(plain.flatbuffer, 0).subgraphs[0].tensors) - 1
    # the arena loses about the image (the fused block's y was written over part of it)
    a, b = plain.memory_report(), streamed.memory_report()
    print(f"\nplain: {a}\nstreamed: {b}")
    assert a.arena_bytes - b.arena_bytes >= 0.8 * 6912
    assert b.bookkeeping["interpreter"] == a.bookkeeping["interpreter"] - 48  # one input less
    assert b.bookkeeping["eval_tensors"] <= a.bookkeeping["eval_tensors"]
    assert b.peak_sram_bytes < a.peak_sram_bytes


def test_search_memory_model_plans_the_streamed_artifact(stem_pair, calib48):
    # plan_sparse_update(stream_input=True) budgets with the planner of the artifact convert()
    # makes with stream_input=True
    from tfmicro_train import search
    from tfmicro_train.search import MemoryModel

    plain, streamed = stem_pair
    m = stem_net()
    last = tmt.SparseUpdate.preset("last", 4)
    for art, flag in ((plain, False), (streamed, True)):
        mm = MemoryModel(m, calib48, stream_input=flag)
        assert mm.measure(last)[0] == art.memory_report().peak_sram_bytes
    # a scheme training the stem (which reads the image) cannot stream: it fits no budget
    assert mm.measure(tmt.SparseUpdate.preset("full", 4))[0] == search.UNSTREAMABLE
    assert MemoryModel(m, calib48).measure(tmt.SparseUpdate.preset("full", 4))[0] < 1 << 30


@pytest.mark.parametrize("case", ["first layer not fused", "no fusion", "first layer trains"])
def test_image_read_by_other_operators_is_refused(case, residual_model, calib, calib16):
    if case == "first layer not fused":  # c1's output also feeds the residual Add: c1 stays
        model, data, kw, layer = residual_model, calib, {}, "'c1'"
    elif case == "no fusion":
        model, data, kw, layer = irb_net(), calib16, {"fuse": False}, "'[^']+'"
    else:  # trains: nothing fuses, and the weight update reads the image too
        model, data, kw, layer = irb_net(), calib16, {"update": "full"}, "'[^']+'"
    want = rf"stream_input: the input '[^']+' is read by (TMT_)?CONV(_2D)? \(layer {layer}\)"
    with pytest.raises(ValueError, match=want) as e:
        tmt.convert(model, data, stream_input=True, **kw)
    assert "not by a fused block" in str(e.value)
    print(f"\n{case}: {e.value}")


# --------------------------------------------------------------------------- simulator


def test_simulator_bit_exact_with_and_without_streaming(irb_pair, calib16):
    plain, streamed = irb_pair
    a, b = tmt.HostSimulator(plain), tmt.HostSimulator(streamed)
    assert b.streamed_input is not None and a.streamed_input is None
    assert b.input_info.shape == a.input_info.shape == (1, 16, 16, 3)
    assert np.array_equal(a.quantize_input(calib16[0]), b.quantize_input(calib16[0]))
    ga, gb = a.gradients(calib16[1], 3), b.gradients(calib16[1], 3)
    assert ga.keys() == gb.keys() and all(np.array_equal(ga[k], gb[k]) for k in ga)
    la = [a.train_step(calib16[k], k % 10) for k in range(6)]
    lb = [b.train_step(calib16[k], k % 10) for k in range(6)]
    assert la == lb and len(set(la)) > 1
    wa, wb = a.weights(), b.weights()
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    xs = np.concatenate(calib16[6:10])
    assert np.array_equal(a.predict(xs), b.predict(xs))
    # the device-level call takes the image first, as before
    raw = [a.quantize_input(calib16[2]), np.array([1], np.int32), np.zeros(1, np.float32)]
    assert all(np.array_equal(u, v) for u, v in zip(a.invoke(raw), b.invoke(raw)))
    with pytest.raises(ValueError, match="takes 3 inputs, got 2"):
        b.invoke(raw[1:])
    with pytest.raises(ValueError, match="input 0 .* must be int8"):
        b.invoke([raw[0].astype(np.int32), *raw[1:]])
    # the exported plain model takes the image as its input again
    m = fb.ModelT.InitFromPackedBuf(b.export_tflite(), 0)
    sg = m.subgraphs[0]
    assert len(sg.inputs) == 1 and tuple(sg.tensors[int(sg.inputs[0])].shape) == (1, 16, 16, 3)


# --------------------------------------------------------------------------- TFLM on this host


@pytest.fixture(scope="module")
def driver():
    if not (os.environ.get("TFLM_DIR") or os.environ.get("TMT_TRAIN_DRIVER")):
        pytest.skip(TFLM_SKIP)
    return _build_driver()


def _build_driver() -> Path:
    """tflm_ops/integration/train_driver.cc, as test_tflm_integration.py builds it."""
    prebuilt = os.environ.get("TMT_TRAIN_DRIVER")
    if prebuilt:
        return Path(prebuilt).resolve()
    from test_golden_cpp import CORE_SOURCES, GLUE_SOURCES, _tflm_flags, build_cpp

    flags, libs = _tflm_flags()
    base = ["-std=c++17", "-O1", "-ffp-contract=off", "-Wall", "-Werror"]
    return build_cpp("train_driver", [ROOT / "tflm_ops/integration/train_driver.cc",
                                      *GLUE_SOURCES, *CORE_SOURCES], flags, libs, base_flags=base)


def _steps(sim, data, n: int) -> list[list[np.ndarray]]:
    """n steps (int8 image, label, lr) as the device gets them, one an inference call (lr 0)."""
    return [[sim.quantize_input(data[k % len(data)]), np.array([k % 10], np.int32),
             np.array([0.0 if k == 3 else 0.05], np.float32)] for k in range(n)]


def test_streamed_training_in_tflm_bit_exact(driver, stem_pair, calib48, tmp_path):
    import test_tflm_integration as ti

    plain, streamed = stem_pair
    steps = _steps(tmt.HostSimulator(plain), calib48, 10)
    run_p = ti.run_driver(driver, plain.flatbuffer, steps, tmp_path / "plain")
    run_s = ti.run_driver(driver, streamed.flatbuffer, steps, tmp_path / "streamed")
    assert run_p.returncode == 0 and run_s.returncode == 0, str(run_s)
    assert "streamed input: 6912 bytes outside the arena" in run_s.stdout
    sim_steps, sim_vars = ti.simulate(streamed.flatbuffer, steps)
    problems = ti.compare(run_s, sim_steps, sim_vars)
    assert not problems, "\n".join(problems[:20]) + "\n" + str(run_s)
    assert run_s.steps == run_p.steps and all(s[0] == "ok" for s in run_s.steps.values())
    assert run_s.variables.keys() == run_p.variables.keys()
    assert all(np.array_equal(run_s.variables[k], run_p.variables[k]) for k in run_s.variables)
    assert "reset: ok" in run_s.stdout
    assert run_s.arena["head"] == streamed.memory_report().arena_bytes
    assert run_p.arena["head"] == plain.memory_report().arena_bytes
    used = {k: r.arena["used"] - r.arena["recording"] for k, r in (("p", run_p), ("s", run_s))}
    print(f"\nTFLM arena head {run_p.arena['head']} -> {run_s.arena['head']} B streamed; used "
          f"{used['p']} -> {used['s']} B (plan host peak {streamed.plan.host_peak_sram_bytes})")
    assert used["p"] - used["s"] >= 0.8 * 6912
    assert streamed.plan.host_peak_sram_bytes >= used["s"]


def test_missing_external_context_fails_allocation(driver, stem_pair, calib48, tmp_path):
    _, streamed = stem_pair
    steps = _steps(tmt.HostSimulator(streamed), calib48, 2)
    run = _run(driver, streamed.flatbuffer, steps, tmp_path, ["--no-external-context"])
    print(f"\n{run.stderr.strip()}")
    assert run.returncode == 4, str(run)
    assert "TMT_FUSED_IRB" in run.stderr and "SetStreamedInput" in run.stderr, str(run)
    assert not run.steps and run.variables is None


@pytest.mark.parametrize("fault", ["bytes", "magic", "null"])
def test_bad_streamed_input_fails_invoke_and_changes_nothing(driver, stem_pair, calib48, tmp_path,
                                                             fault):
    import test_tflm_integration as ti

    _, streamed = stem_pair
    steps = _steps(tmt.HostSimulator(streamed), calib48, 6)
    run = _run(driver, streamed.flatbuffer, steps, tmp_path, ["--stream-fault", f"2:{fault}"])
    assert run.returncode == 0, str(run)
    assert run.steps[2] == ("failed", "step 2 failed (Invoke); variables unchanged"), str(run)
    want = {"bytes": "the streamed input has 6911 bytes", "null": "the streamed input has 6912",
            "magic": "is no tfmicro_train::StreamedInput"}[fault]
    assert "TMT_FUSED_IRB" in run.stderr and want in run.stderr, run.stderr
    print(f"\n{fault}: {run.stderr.strip().splitlines()[0]}")
    # the other steps train as the simulator does without step 2
    sim_steps, sim_vars = ti.simulate(streamed.flatbuffer, steps[:2] + steps[3:])
    kept = {k if k < 2 else k + 1: v for k, v in sim_steps.items()}
    assert all(run.steps[k] == v for k, v in kept.items())
    assert all(np.array_equal(run.variables[k], sim_vars[k]) for k in sim_vars)


def _run(driver, model: bytes, steps, tmp: Path, extra: list[str]):
    """test_tflm_integration.run_driver with extra driver arguments."""
    import subprocess

    import test_tflm_integration as ti

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model.tflite").write_bytes(model)
    ti.write_steps(tmp / "steps.bin", steps)
    var_path = tmp / "variables.bin"
    if var_path.exists():
        var_path.unlink()
    cmd = [str(driver), str(tmp / "model.tflite"), str(tmp / "steps.bin"), str(var_path), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return ti.DriverRun(res, var_path)


# --------------------------------------------------------------------------- Cortex-M7


def m7_train_program(art, sim, xs, ys, features, arena: int, tmp_path: Path):
    """tflm_train_main.cc for the Cortex-M7 with `art` in flash, an `arena`-byte arena and the
    steps file of (xs, ys, lr 0.05, features) at tmp_path/steps.bin: (cmbuild, elf, steps path).
    Skips without the cross tools or TFLM's cortex-m7 build."""
    sys.path.insert(0, str(ROOT / "tflm_ops" / "cortex_m"))
    import cmbuild
    from test_checkpoint import tflm_train_sources

    missing = cmbuild.missing_cross_tools()
    if missing is not None:
        pytest.skip(f"Cortex-M tests skipped: {missing}")
    tflm = cmbuild.find_tflm("cortex-m7")
    if isinstance(tflm, str):
        pytest.skip(tflm)
    art.export_c(tmp_path / "model_data.h")
    steps = tmp_path / "steps.bin"
    steps.write_bytes(cmbuild.steps_file(sim, xs, ys, [0.05] * len(xs), features))
    try:
        elf = cmbuild.build_arm(
            "tflm_train", "cortex-m7", [], cmbuild.DRIVER_FLAGS,
            [*tflm_train_sources(), tmp_path / "model_data.cpp"],
            defines=["TMT_EMBEDDED_MODEL=g_model", f"TMT_ARENA_BYTES={arena}",
                     f"TMT_STEPS_MAX_BYTES={len(steps.read_bytes())}", "TMT_REGION_MAX_BYTES=65536"],
            libs=[str(tflm.lib)], extra_flags=list(tflm.flags))
    except cmbuild.BuildError as e:
        pytest.fail(str(e))
    return cmbuild, elf, steps


def test_plan_predicts_the_cortex_m7_arena_streamed(stem_pair, calib48, tmp_path):
    """memory_report().peak_sram_bytes of the streamed artifact is the arena TFLM needs on the
    Cortex-M7 (AllocateTensors succeeds in it, and fails 1 KB + 2% below), and one training step
    there gives the simulator's loss."""
    _, art = stem_pair
    peak = art.memory_report().peak_sram_bytes
    sim = tmt.HostSimulator(art)
    xs, ys = calib48[:3], [1, 2, 3]
    cmbuild, elf, steps = m7_train_program(art, sim, xs, ys, None, peak, tmp_path)

    def run(arena: int, steps_arg: str = "-") -> dict | None:
        res = cmbuild.run_qemu(elf, "cortex-m7", ["-", steps_arg, str(tmp_path / "region.bin"),
                                                  f"arena={arena}"], timeout=300)
        out = cmbuild.parse_train_output(res.stdout)
        return out if res.returncode == 0 and out.get("done") else None

    out = run(peak)
    assert out is not None, f"AllocateTensors() failed in the predicted {peak}-byte arena"
    lo, hi = out["arena"] - 1, peak
    while hi - lo > 16:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if run(mid) else (mid, hi)
    print(f"\nstreamed, M7: plan {peak} B; smallest arena that allocates {hi} B (+-16), "
          f"arena_used_bytes() {out['arena']} B")
    assert hi <= peak <= hi + 1024 + hi // 50
    trained = run(peak, str(steps))
    assert trained is not None
    want = [int(np.float32(sim.train_step(x, y, 0.05)).view(np.uint32)) for x, y in zip(xs, ys)]
    assert [s["loss_bits"] for s in trained["steps"]] == want
