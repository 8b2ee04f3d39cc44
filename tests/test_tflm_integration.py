"""TFLite Micro integration: a converter artifact trained in TFLM's MicroInterpreter.

A residual CNN (conv, BN, ReLU6, depthwise, pointwise, residual add, max pool, dense) is
converted with a sparse update that trains conv weights, depthwise weights, a half-trained
pointwise conv, the classifier and the last three biases. The C++ driver
tflm_ops/integration/train_driver.cc runs the .tflite in TFLM (RecordingMicroInterpreter,
AddTrainingBuiltins + RegisterTrainingOps, no resource variables) for 25 steps from files,
and its loss / output of every step and every variable tensor at the end (trainable
parameters and tmt/state) must equal `tfmicro_train.HostSimulator` on the same artifact and
inputs, bit for bit. Bad input on the device (wrong types and shapes, label out of range,
lr < 0 / NaN, arena too small, unknown TMT_* op version, a parameter that is not a
variable tensor) must fail with a message naming the culprit and leave every trainable
parameter unchanged. More artifacts (other poolings and heads, fused blocks, and the same kinds
converted with backward="fp32": float32 gradient tensors) are compared the same way.

Needs TFLM: TFLM_DIR=/path/to/tflite-micro (built with TFLM's `make ... microlite`; the
driver is compiled here with g++ and cached like tests/test_golden_cpp.py), or
TMT_TRAIN_DRIVER=/path/to/train_driver (a prebuilt driver: the Bazel target
//tflm_ops/integration:tflm_integration_test passes its own). Without either: skipped.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

SKIP = ("TFLM integration test skipped: set TFLM_DIR=/path/to/tflite-micro (a checkout where "
        "`make -f tensorflow/lite/micro/tools/make/Makefile microlite` has run) or "
        "TMT_TRAIN_DRIVER=/path/to/train_driver")
if not (os.environ.get("TFLM_DIR") or os.environ.get("TMT_TRAIN_DRIVER")):
    pytest.skip(SKIP, allow_module_level=True)

from conftest import residual_cnn  # noqa: E402

import tfmicro_train as tmt  # noqa: E402
from tfmicro_train.schema import fb  # noqa: E402

N_STEPS = 25
INFERENCE_STEP = 7  # lr = 0 there: an inference call inside the run (no update, no counter step)
UPDATE = dict(bias_last_k=3, weight_ratios={0: 1, 1: 1, 2: 0.5, 3: 1})

# numpy dtype -> TfLiteType (tensorflow/lite/core/c/c_api_types.h)
TFLITE_TYPE = {np.dtype(np.float32): 1, np.dtype(np.int32): 2, np.dtype(np.uint8): 3,
               np.dtype(np.int64): 4, np.dtype(np.int16): 7, np.dtype(np.int8): 9}
NUMPY_TYPE = {v: k for k, v in TFLITE_TYPE.items()}


# --------------------------------------------------------------------------- driver


@pytest.fixture(scope="module")
def driver() -> Path:
    prebuilt = os.environ.get("TMT_TRAIN_DRIVER")
    if prebuilt:
        path = Path(prebuilt).resolve()
        assert path.is_file(), f"TMT_TRAIN_DRIVER={prebuilt} does not exist"
        return path
    from test_golden_cpp import CORE_SOURCES, GLUE_SOURCES, _tflm_flags, build_cpp

    flags, libs = _tflm_flags()
    base = ["-std=c++17", "-O1", "-ffp-contract=off", "-Wall", "-Werror"]
    return build_cpp("train_driver", [ROOT / "tflm_ops/integration/train_driver.cc",
                                      *GLUE_SOURCES, *CORE_SOURCES],
                     flags, libs, base_flags=base)


def write_steps(path: Path, steps: list[list[np.ndarray]]) -> None:
    """STEPS.bin of train_driver.cc: "TMTI", version, steps, inputs; (type, bytes, data)..."""
    n_inputs = len(steps[0]) if steps else 0
    out = [b"TMTI", struct.pack("<III", 1, len(steps), n_inputs)]
    for step in steps:
        assert len(step) == n_inputs
        for a in step:
            a = np.ascontiguousarray(a)
            data = a.astype(a.dtype.newbyteorder("<")).tobytes()
            out.append(struct.pack("<iI", TFLITE_TYPE[a.dtype], len(data)) + data)
    path.write_bytes(b"".join(out))


def read_variables(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    assert data[:4] == b"TMTV", "not a TMTV file"
    (count,), pos, out = struct.unpack_from("<I", data, 4), 8, {}
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, pos)
        name = data[pos + 4:pos + 4 + n].decode()
        pos += 4 + n
        typ, nbytes = struct.unpack_from("<iI", data, pos)
        pos += 8
        out[name] = np.frombuffer(data[pos:pos + nbytes], NUMPY_TYPE[typ].newbyteorder("<")).copy()
        pos += nbytes
    assert pos == len(data), "trailing bytes in the variables file"
    return out


class DriverRun:
    def __init__(self, res: subprocess.CompletedProcess, var_path: Path):
        self.returncode, self.stdout, self.stderr = res.returncode, res.stdout, res.stderr
        self.variables = read_variables(var_path) if var_path.exists() else None
        self.steps: dict[int, tuple] = {}  # k -> ("ok", loss bits, out0 bytes) | ("failed", line)
        self.out2: dict[int, bytes] = {}  # k -> output 2 (the features of a feature cache)
        self.arena: dict[str, int] = {}
        for line in self.stdout.splitlines():
            w = line.split()
            if line.startswith("step "):
                k = int(w[1])
                if w[2] == "ok":
                    self.steps[k] = ("ok", int(w[4], 16), bytes.fromhex(w[7]))
                    if len(w) > 9 and w[8] == "out2":  # a feature cache's features
                        self.out2[k] = bytes.fromhex(w[9])
                else:
                    self.steps[k] = ("failed", line)
            elif line.startswith("arena: used "):
                # arena: used T bytes (head H, tail L) of S; variable buffers V bytes;
                # recording overhead R bytes            | --plain: arena: used T bytes of S (...)
                nums = [int(x.strip("(),;")) for x in w if x.strip("(),;").isdigit()]
                keys = (["used", "size"] if "(MicroInterpreter)" in line else
                        ["used", "head", "tail", "size", "variables", "recording"])
                self.arena = dict(zip(keys, nums))

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


def run_driver(driver: Path, model: bytes, steps, tmp: Path, arena: int | None = None,
               plain: bool = False) -> DriverRun:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model.tflite").write_bytes(model)
    write_steps(tmp / "steps.bin", steps)
    var_path = tmp / "variables.bin"
    if var_path.exists():
        var_path.unlink()
    cmd = [str(driver), str(tmp / "model.tflite"), str(tmp / "steps.bin"), str(var_path)]
    if arena is not None:
        cmd += ["--arena", str(arena)]
    if plain:
        cmd.append("--plain")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return DriverRun(res, var_path)


# --------------------------------------------------------------------------- host side


def simulate(model: bytes, steps) -> tuple[dict[int, tuple], dict[str, np.ndarray]]:
    """The same steps in HostSimulator: per step ("ok", loss bits, out0 bytes) or ("failed",
    message), and every variable tensor at the end by name."""
    sim = tmt.HostSimulator(model)
    infos = sim.main.infos
    results: dict[int, tuple] = {}
    for k, inputs in enumerate(steps):
        try:
            out = sim.invoke(inputs)
        except ValueError as e:
            results[k] = ("failed", str(e))
            continue
        loss = np.asarray(out[1], np.float32).reshape(-1)
        results[k] = ("ok", int(loss.view(np.uint32)[0]), np.ascontiguousarray(out[0]).tobytes())
    variables = {infos[t].name: np.ascontiguousarray(v).reshape(-1)
                 for t, v in sim.variables.items()}
    return results, variables


def initial_values(model: bytes) -> dict[str, np.ndarray]:
    """Every trainable parameter's shipped value (what TMT_INIT copies), by name."""
    sim = tmt.HostSimulator(model)
    return {k: v.reshape(-1) for k, v in sim.weights().items()}


def compare(tflm: DriverRun, sim_steps: dict, sim_vars: dict) -> list[str]:
    problems = []
    for k, want in sim_steps.items():
        got = tflm.steps.get(k)
        if got is None:
            problems.append(f"step {k}: no result from TFLM")
        elif got[0] != want[0]:
            problems.append(f"step {k}: TFLM {got}, simulator {want}")
        elif got[0] == "ok" and got[1:] != want[1:]:
            lt, ls = (struct.unpack("<f", struct.pack("<I", x[1]))[0] for x in (got, want))
            problems.append(f"step {k}: loss TFLM {lt!r} (0x{got[1]:08x}) vs simulator {ls!r} "
                            f"(0x{want[1]:08x}); outputs equal: {got[2] == want[2]}")
    if tflm.variables is None:
        return problems + ["TFLM wrote no variables"]
    if set(tflm.variables) != set(sim_vars):
        problems.append(f"variable tensors differ: TFLM {sorted(tflm.variables)}, "
                        f"simulator {sorted(sim_vars)}")
    for name in sorted(set(tflm.variables) & set(sim_vars)):
        a, b = tflm.variables[name], sim_vars[name]
        if a.dtype != b.dtype or a.tobytes() != b.tobytes():
            diff = int(np.sum(a != b)) if a.shape == b.shape else -1
            problems.append(f"variable {name}: {diff} of {b.size} elements differ")
    return problems


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def artifact(calib):
    return tmt.convert(residual_cnn(), calib, update=tmt.SparseUpdate(**UPDATE))


@pytest.fixture(scope="module")
def samples(artifact):
    """N_STEPS (int8 image, int32 label [1], float32 lr [1]) as the device gets them."""
    sim = tmt.HostSimulator(artifact)
    rng = np.random.default_rng(7)
    n_classes = sim.output_info.shape[-1]
    base = float(sim.meta["learning_rate"])
    steps = []
    for k in range(N_STEPS):
        x = sim.quantize_input(rng.random((1, 12, 12, 1)).astype(np.float32))
        label = np.array([rng.integers(0, n_classes)], np.int32)
        lr = 0.0 if k == INFERENCE_STEP else base * 5 * (1 - k / (2 * N_STEPS))
        steps.append([x, label, np.array([lr], np.float32)])
    return steps


@pytest.fixture(scope="module")
def main_run(driver, artifact, samples, tmp_path_factory):
    return run_driver(driver, artifact.flatbuffer, samples, tmp_path_factory.mktemp("tflm_main"))


# --------------------------------------------------------------------------- tests


def test_artifact_trains_what_the_issue_asks(artifact):
    """The sparse update touches conv weights, depthwise weights, a partial conv and biases;
    the artifact needs no resource variables (one subgraph, no VAR_HANDLE & co.)."""
    names = set(initial_values(artifact.flatbuffer))
    for want in ("tmt/c1/weights", "tmt/dw/weights", "tmt/pw/weights", "tmt/fc/weights",
                 "tmt/dw/bias", "tmt/pw/bias", "tmt/fc/bias"):
        assert want in names, f"{want} not trainable: {sorted(names)}"
    m = fb.ModelT.InitFromPackedBuf(artifact.flatbuffer, 0)
    assert len(m.subgraphs) == 1
    B = fb.BuiltinOperator
    resource_ops = {B.VAR_HANDLE, B.READ_VARIABLE, B.ASSIGN_VARIABLE, B.CALL_ONCE}
    assert not [c for c in m.operatorCodes if c.builtinCode in resource_ops]


def test_training_in_tflm_is_bit_exact(artifact, samples, main_run):
    """>= 20 training steps in TFLM == HostSimulator: loss + output of every step, every
    variable tensor at the end; arena bytes TFLM reports vs the converter's plan."""
    run = main_run
    assert run.returncode == 0, str(run)
    sim_steps, sim_vars = simulate(artifact.flatbuffer, samples)
    problems = compare(run, sim_steps, sim_vars)
    assert not problems, "\n".join(problems[:20]) + "\n" + str(run)

    trained = [k for k, s in enumerate(samples) if s[2][0] > 0]
    assert len(trained) >= 20 and all(run.steps[k][0] == "ok" for k in range(N_STEPS))
    # The counter advanced once per training step (not on the inference call).
    assert run.variables["tmt/state"].view(np.uint32).tolist() == [0x544D5431, len(trained)]
    # Training moved every kind of parameter (the comparison is not vacuous).
    init = initial_values(artifact.flatbuffer)
    moved = {k: int(np.sum(run.variables[k] != v)) for k, v in init.items()}
    assert all(moved.values()), f"parameters that did not change: {moved}"
    # pw ([8, 1, 1, 8]) trains half of its output channels: the other half, if the variable
    # holds them at all (the converter may keep only the trained rows in SRAM), is untouched.
    pw, pw0 = run.variables["tmt/pw/weights"].reshape(-1, 8), init["tmt/pw/weights"].reshape(-1, 8)
    assert len(pw) in (4, 8)
    assert np.array_equal(pw[4:], pw0[4:]) and not np.array_equal(pw[:4], pw0[:4])
    assert "reset: ok" in run.stdout, run.stdout[-2000:]

    mem = artifact.memory_report()
    a = run.arena
    tflm_bytes = a["used"] - a["recording"]
    n_var = sum(v.nbytes for v in run.variables.values())
    print(f"\nTFLM integration: {len(sim_steps)} steps compared bit for bit ({len(trained)} training "
          f"steps + {len(sim_steps) - len(trained)} inference call): loss and output of every step; "
          f"{len(run.variables)} variable tensors ({n_var} bytes) identical at the end; "
          f"parameter elements changed by training: {sum(moved.values())}")
    print(f"arena bytes: TFLM {tflm_bytes} used (RecordingMicroInterpreter {a['used']} minus "
          f"{a['recording']} of recording bookkeeping; head {a['head']} = planned tensors + scratch, "
          f"tail {a['tail']} incl. variable buffers {a['variables']})")
    print(f"          plan: arena_bytes {mem.arena_bytes} (vs TFLM head {a['head']}), variable_bytes "
          f"{mem.variable_bytes} (vs TFLM {a['variables']}), host_peak_sram_bytes "
          f"{artifact.plan.host_peak_sram_bytes} (vs TFLM {tflm_bytes} on this 64-bit host)")
    print(run.stdout.splitlines()[0])
    print("reset: " + next(ln for ln in run.stdout.splitlines() if ln.startswith("reset:"))[7:])
    # The converter's plan is TFLM's: same head (greedy planner) and variable buffers.
    assert a["head"] == mem.arena_bytes, (a, mem)
    assert a["variables"] == mem.variable_bytes, (a, mem)


def test_arena_size_needed(driver, artifact, samples, main_run, tmp_path):
    """The smallest arena a plain MicroInterpreter runs the artifact with, next to the plan.

    TFLM needs more than arena_used_bytes() while AllocateTensors plans the memory (the greedy
    planner's per-buffer bookkeeping is temporary head memory), so the smallest working arena
    is found by bisection."""
    steps = samples[:2]
    plain = run_driver(driver, artifact.flatbuffer, steps, tmp_path / "plain", plain=True)
    assert plain.returncode == 0, str(plain)
    used = plain.arena["used"]

    def works(size: int) -> bool:
        return run_driver(driver, artifact.flatbuffer, steps, tmp_path / "s", size, True).returncode == 0

    lo, hi = 1024, 2 * used  # lo fails, hi works
    assert works(hi) and not works(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if works(mid) else (mid, hi)
    host = artifact.plan.host_peak_sram_bytes  # (the 64-bit host's estimate; M7: test_cortex_m.py)
    print(f"\narena: plain MicroInterpreter arena_used_bytes() {used}; smallest arena that runs "
          f"(bisection): {hi} bytes; RecordingMicroInterpreter used {main_run.arena['used']}; "
          f"plan host_peak_sram_bytes {host}: "
          f"{'enough' if host >= hi else f'{hi - host} bytes short'}")
    assert used <= hi <= host


# More artifacts through TFLM, each >= 20 training steps bit for bit: the ops the main one
# lacks (packed activation masks, zero pad + average pooling, global average pooling, the
# MSE head) and every builtin of AddTrainingBuiltins a Keras CNN of this kind produces.
VARIANTS = {
    # (the masks written by the TMT_CONV of their layer, its output 1 'bits')
    "avgpool_masks": dict(pool="avg", update=dict(bias_last_k=3, weight_ratios={0: 1, 3: 1}),
                          ops={"TMT_MASK_GRAD", "TMT_AVGPOOL_GRAD", "TMT_PAD_GRAD",
                               "PAD", "AVERAGE_POOL_2D"}, conv_masks=True),
    "gap_biases": dict(pool="gap", update=dict(bias_last_k=4, weight_ratios={0: 1}),
                       ops={"TMT_MEAN_GRAD", "TMT_MASK_GRAD", "TMT_MEAN"}),
    # (the pooled gradient's broadcast folded into the bias update, its only reader: head.py)
    "gap_mse": dict(pool="gap", update=dict(bias_last_k=2, weight_ratios={3: 1}), loss="mse",
                    ops={"TMT_MSE_GRAD", "TMT_MEAN", "TMT_BIAS_UPDATE"}),
    # backward="fp32" (float32 gradient tensors, docs/contract.md "fp32 backward"): the main
    # artifact's update (conv, depthwise, half a pointwise conv, dense, biases; max pool, the
    # residual's gradient sum) and the other heads / poolings.
    "fp32_main": dict(pool="max", update=UPDATE, backward="fp32",
                      ops={"TMT_SOFTMAX_CE_GRAD", "TMT_MAXPOOL_GRAD", "TMT_CONV_INPUT_GRAD",
                           "TMT_DW_INPUT_GRAD", "TMT_CONV_WEIGHT_UPDATE", "TMT_DW_WEIGHT_UPDATE",
                           "TMT_BIAS_UPDATE", "TMT_GRAD_ADD"}),
    # (builtin convolutions: the masks packed by TMT_MASK_PACK after them)
    "fp32_avgpool_masks": dict(pool="avg", update=dict(bias_last_k=3, weight_ratios={0: 1, 3: 1}),
                               backward="fp32", flash_requant=False,
                               ops={"TMT_MASK_PACK", "TMT_MASK_GRAD", "TMT_AVGPOOL_GRAD",
                                    "TMT_PAD_GRAD"}),
    "fp32_gap_mse": dict(pool="gap", update=dict(bias_last_k=2, weight_ratios={3: 1}), loss="mse",
                         backward="fp32", ops={"TMT_MSE_GRAD", "TMT_MEAN_GRAD"}),
    # narrow biases (80- and 96-channel layers: int16 changes expanded in two 64-channel chunks
    # by TMT_CONV, the int16 TMT_BIAS_UPDATE; test_narrow_bias.py), at a high learning rate so
    # the changes grow
    "narrow_biases": dict(model="wide", update=dict(bias_last_k=4, weight_ratios={3: 1}),
                          ops={"TMT_CONV", "TMT_BIAS_UPDATE"}, narrow=True, pooled=True),
    # the pooled head without its H x W tensors (head.py): TMT_CONV in mean mode (two chunks of
    # channels), the broadcast gradient read by the input gradient and the narrow bias update
    "pooled_head": dict(model="head", update=dict(bias_last_k=3),
                        ops={"TMT_CONV", "TMT_BIAS_UPDATE", "TMT_CONV_INPUT_GRAD"}, narrow=True,
                        pooled=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_more_artifacts_bit_exact(driver, calib, variant, tmp_path):
    from collections import Counter

    from tfmicro_train.schema import op_name

    v = VARIANTS[variant]
    backward = v.get("backward", "int8")
    if v.get("model") == "wide":
        from test_narrow_bias import wide_cnn

        model = wide_cnn()
    elif v.get("model") == "head":
        from test_head import head_cnn

        model = head_cnn()
    else:
        model = residual_cnn(pool=v["pool"])
    art = tmt.convert(model, calib, update=tmt.SparseUpdate(**v["update"]),
                      loss=v.get("loss", "sparse_categorical_crossentropy"), backward=backward,
                      flash_requant=v.get("flash_requant", True))
    m = fb.ModelT.InitFromPackedBuf(art.flatbuffer, 0)
    ops = Counter(op_name(m, op) for op in m.subgraphs[0].operators)
    assert v["ops"] <= set(ops), f"{variant}: missing {v['ops'] - set(ops)} in {dict(ops)}"
    if v.get("narrow"):
        assert any(d["dtype"] == "int16" for d in art.metadata["variables"]), variant
    if v.get("pooled"):  # the head's pool and its gradient's broadcast folded (head.py)
        assert not {"TMT_MEAN", "TMT_MEAN_GRAD"} & set(ops), dict(ops)
    if v.get("conv_masks"):
        assert "TMT_MASK_PACK" not in ops and any(
            op_name(m, op) == "TMT_CONV" and len(op.outputs) == 2 for op in m.subgraphs[0].operators)
    grad_types = _gradient_types(m)
    assert grad_types == {fb.TensorType.FLOAT32 if backward == "fp32" else fb.TensorType.INT8}, (
        f"{variant}: gradient tensor types {grad_types}")
    sim = tmt.HostSimulator(art)
    rng = np.random.default_rng(11)
    base = float(sim.meta["learning_rate"])
    steps = []
    for _ in range(N_STEPS - 3):
        x = sim.quantize_input(rng.random((1, 12, 12, 1)).astype(np.float32))
        if sim.meta["head"] == "softmax":
            y = np.array([rng.integers(0, sim.output_info.shape[-1])], np.int32)
        else:
            y = sim._label_array(rng.random(sim.output_info.shape))
        steps.append([x, y, np.array([base * 5], np.float32)])
    failing = []
    if backward == "fp32":  # an inference call and a failing step inside the fp32 runs too
        steps[INFERENCE_STEP][2] = np.array([0.0], np.float32)
        steps[12][2] = np.array([-base], np.float32)
        failing = [12]
    run = run_driver(driver, art.flatbuffer, steps, tmp_path)
    assert run.returncode == 0, str(run)
    sim_steps, sim_vars = simulate(art.flatbuffer, steps)
    assert [k for k, s in sim_steps.items() if s[0] == "failed"] == failing
    problems = compare(run, sim_steps, sim_vars)
    assert not problems, "\n".join(problems[:20]) + "\n" + str(run)
    if failing:
        n_trained = sum(1 for s in steps if s[2][0] > 0)
        assert run.variables["tmt/state"].view(np.uint32)[1] == n_trained
    init = initial_values(art.flatbuffer)
    moved = sum(int(np.sum(run.variables[k] != x)) for k, x in init.items())
    assert moved > 0 and "reset: ok" in run.stdout
    mem = art.memory_report()
    print(f"\n{variant}: {len(steps)} steps compared bit for bit, {len(run.variables)} "
          f"variable tensors identical ({moved} parameter elements moved); ops {dict(ops)}; "
          f"arena TFLM head {run.arena['head']} vs plan arena_bytes {mem.arena_bytes}, TFLM used "
          f"{run.arena['used'] - run.arena['recording']} vs plan host_peak_sram_bytes "
          f"{art.plan.host_peak_sram_bytes}")
    assert run.arena["head"] == mem.arena_bytes


FORWARD_TMT_OPS = ("TMT_INIT", "TMT_MASK_PACK", "TMT_FUSED_IRB", "TMT_CONV", "TMT_MEAN")


def _gradient_types(m) -> set[int]:
    """The types of the gradient tensors of a training artifact: input 0 of every TMT_* backward
    op, output 0 of the loss op."""
    from tfmicro_train.schema import op_name

    sg = m.subgraphs[0]
    types = set()
    for op in sg.operators:
        name = op_name(m, op)
        if name in ("TMT_SOFTMAX_CE_GRAD", "TMT_MSE_GRAD"):
            types.add(sg.tensors[op.outputs[0]].type)
        elif name.startswith("TMT_") and name not in FORWARD_TMT_OPS:
            types.add(sg.tensors[op.inputs[0]].type)
    return types


def _patched(model: bytes, edit) -> bytes:
    """The artifact with `edit(fb.ModelT)` applied."""
    import flatbuffers

    m = fb.ModelT.InitFromPackedBuf(model, 0)
    edit(m)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _tensor(m, name: str):
    sg = m.subgraphs[0]
    return next(t for t in sg.tensors if (t.name.decode() if isinstance(t.name, bytes) else t.name) == name)


def test_failed_steps_leave_parameters_unchanged(driver, artifact, samples, tmp_path):
    """Label out of range, lr < 0 and lr NaN fail in the loss op, before any update: TFLM
    reports the culprit and every variable tensor (parameters and counter) stays byte for
    byte as it was; the steps after continue exactly as in the simulator."""
    steps = [list(s) for s in samples[:12]]
    bad = {3: "label", 5: "lr<0", 8: "nan", 9: "label<0"}
    steps[3] = [steps[3][0], np.array([10], np.int32), steps[3][2]]
    steps[5] = [steps[5][0], steps[5][1], np.array([-0.01], np.float32)]
    steps[8] = [steps[8][0], steps[8][1], np.array([np.nan], np.float32)]
    steps[9] = [steps[9][0], np.array([-1], np.int32), steps[9][2]]
    run = run_driver(driver, artifact.flatbuffer, steps, tmp_path)
    assert run.returncode == 0, str(run)
    for k in bad:
        assert run.steps[k][0] == "failed", f"step {k} ({bad[k]}) did not fail:\n{run}"
        assert run.steps[k][1].endswith("variables unchanged"), run.steps[k][1]
    assert "TMT_SOFTMAX_CE_GRAD: input 1 'label' = 10 is outside [0, 10)" in run.stderr, run.stderr
    assert "TMT_SOFTMAX_CE_GRAD: input 1 'label' = -1 is outside [0, 10)" in run.stderr, run.stderr
    assert run.stderr.count("TMT_SOFTMAX_CE_GRAD: input 'lr' must be >= 0") == 2, run.stderr
    sim_steps, sim_vars = simulate(artifact.flatbuffer, steps)
    assert all(sim_steps[k][0] == "failed" for k in bad)
    problems = compare(run, sim_steps, sim_vars)
    assert not problems, "\n".join(problems) + "\n" + str(run)
    n_ok = sum(1 for s in run.steps.values() if s[0] == "ok")
    assert run.variables["tmt/state"].view(np.uint32)[1] == n_ok - (1 if INFERENCE_STEP < 12 else 0)
    print(f"\nfailed steps {sorted(bad)} ({', '.join(bad.values())}): variables unchanged in TFLM; "
          f"{len(steps)} steps then equal to the simulator bit for bit")


def test_wrong_input_type_or_shape_is_rejected(driver, artifact, samples, tmp_path):
    """Inputs of the wrong type or size never reach the interpreter (the driver checks them
    against the model's input tensors) and change nothing."""
    x, label, lr = samples[0]
    steps = [[x, label, lr],
             [x.astype(np.float32), label, lr],                # image float32
             [x, label.astype(np.float32), lr],                # label float32
             [x[:, :6], label, lr],                            # image of the wrong shape
             [x, np.array([1, 2], np.int32), lr],              # two labels
             [x, label, lr.astype(np.int32)]]                  # lr int32
    run = run_driver(driver, artifact.flatbuffer, steps, tmp_path)
    assert run.returncode == 0, str(run)
    assert run.steps[0][0] == "ok"
    want = {1: "input 0 '", 2: "input 1 'label' must be INT32", 3: "input 0 '",
            4: "input 1 'label' must be INT32 with 4 bytes, got INT32 with 8 bytes",
            5: "input 2 'learning_rate' must be FLOAT32"}
    for k, text in want.items():
        assert run.steps[k][0] == "failed" and "rejected" in run.steps[k][1], run.steps[k]
        assert text in run.steps[k][1], run.steps[k][1]
    sim_steps, sim_vars = simulate(artifact.flatbuffer, steps)
    assert all(sim_steps[k][0] == "failed" for k in want)
    assert not compare(run, sim_steps, sim_vars)


@pytest.mark.parametrize("case", ["label_type", "label_shape", "image_type", "param_not_variable",
                                  "state_not_variable", "op_version", "arena_too_small"])
def test_bad_model_or_device_setup(driver, artifact, samples, tmp_path, case):
    """Each gives a non-OK status and a message naming the culprit; nothing trains."""
    model = artifact.flatbuffer
    arena = None
    T = fb.TensorType
    if case == "label_type":  # the label input tensor declared float32 in the model
        model = _patched(model, lambda m: setattr(_tensor(m, "label"), "type", T.FLOAT32))
        want, code = "TMT_SOFTMAX_CE_GRAD: input 1 'label' must be INT32, not FLOAT32", 4
    elif case == "label_shape":
        model = _patched(model, lambda m: setattr(_tensor(m, "label"), "shape",
                                                  np.array([2], np.int32)))
        want, code = "TMT_SOFTMAX_CE_GRAD: input 1 'label' must have 1 elements, has 2", 4
    elif case == "image_type":  # the image declared int16: TFLM's CONV_2D rejects it
        inp = lambda m: m.subgraphs[0].tensors[m.subgraphs[0].inputs[0]]  # noqa: E731
        model = _patched(model, lambda m: setattr(inp(m), "type", T.INT16))
        want, code = "CONV_2D", 4
    elif case == "param_not_variable":  # a trainable weight that is not a variable tensor
        model = _patched(model, lambda m: setattr(_tensor(m, "tmt/dw/weights"), "isVariable", False))
        want, code = "TMT_INIT: variable input", 4
    elif case == "state_not_variable":
        model = _patched(model, lambda m: setattr(_tensor(m, "tmt/state"), "isVariable", False))
        want, code = "'state' must be an int32 variable tensor", 4
    elif case == "op_version":  # an artifact for another version of TMT_CONV_INPUT_GRAD

        def bump(m):
            code = next(c for c in m.operatorCodes if c.customCode == b"TMT_CONV_INPUT_GRAD")
            code.version = 99
        model = _patched(model, bump)
        want, code = ("TMT_CONV_INPUT_GRAD version 99 is not supported (this build implements "
                      "version 1)"), 3
    else:  # arena_too_small
        arena = 4096
        want, code = "AllocateTensors() failed with a 4096-byte arena", 4
    run = run_driver(driver, model, samples[:3], tmp_path, arena=arena)
    print(f"\n{case}: exit {run.returncode}; stdout: {run.stdout.strip().splitlines()[-1]}; "
          f"stderr: {' | '.join(run.stderr.strip().splitlines()[:3])}")
    assert run.returncode == code, str(run)
    assert want in run.stdout + run.stderr, str(run)
    assert not any(s[0] == "ok" for s in run.steps.values()) and run.variables is None
    if case == "arena_too_small":
        assert "Arena size is too small" in run.stderr or "Failed to" in run.stderr, run.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))


def test_fused_blocks_bit_exact_in_tflm(driver, tmp_path):
    """Frozen inverted-residual blocks as row-streamed TMT_FUSED_IRB ops, trained behind them."""
    from test_fuse import irb_net

    rng = np.random.default_rng(5)
    calib16 = [rng.random((1, 16, 16, 3)).astype(np.float32) for _ in range(16)]
    art = tmt.convert(irb_net(), calib16, update="last", fuse=True, optimizer=tmt.SGD(0.05))
    n_fused = sum(e.op == "TMT_FUSED_IRB" for e in art.timeline)
    assert n_fused >= 2
    sim = tmt.HostSimulator(art)
    steps = [[sim.quantize_input(calib16[k % 16]), np.array([k % 10], np.int32),
              np.array([0.05], np.float32)] for k in range(N_STEPS - 3)]
    run = run_driver(driver, art.flatbuffer, steps, tmp_path)
    assert run.returncode == 0, str(run)
    sim_steps, sim_vars = simulate(art.flatbuffer, steps)
    problems = compare(run, sim_steps, sim_vars)
    assert not problems, "\n".join(problems[:20]) + "\n" + str(run)
    mem = art.memory_report()
    print(f"\nfused: {n_fused} TMT_FUSED_IRB ops, {len(steps)} steps bit for bit; arena TFLM head "
          f"{run.arena['head']} vs plan {mem.arena_bytes}; TFLM used "
          f"{run.arena['used'] - run.arena['recording']} vs plan host peak {art.plan.host_peak_sram_bytes}")
    assert run.arena["head"] == mem.arena_bytes


def test_conv_ops_save_what_the_plan_says(driver, calib, samples, tmp_path):
    """TMT_CONV (multipliers in flash) against the builtin convolutions in TFLM: the same
    results bit for bit, TFLM's memory drops (8 bytes per output channel, less TMT_CONV's
    slightly larger op data and its constant's tensor; here also the sliced layer's forward
    CONCATENATION), by no more than the plan says, and the plan bounds both. (int32 biases in
    both: narrow biases train differently, test_more_artifacts_bit_exact[narrow_biases].)"""
    update = tmt.SparseUpdate(**UPDATE)
    artifact = tmt.convert(residual_cnn(), calib, update=update, narrow_biases=False)
    plain = tmt.convert(residual_cnn(), calib, update=update, flash_requant=False)
    assert "TMT_CONV" in {e.op for e in artifact.timeline}
    assert "TMT_CONV" not in {e.op for e in plain.timeline}
    main_run = run_driver(driver, artifact.flatbuffer, samples, tmp_path / "flash")
    run = run_driver(driver, plain.flatbuffer, samples, tmp_path / "plain")
    assert main_run.returncode == 0 and run.returncode == 0, str(run)
    assert run.steps == main_run.steps and run.variables.keys() == main_run.variables.keys()
    assert all(np.array_equal(run.variables[k], main_run.variables[k]) for k in run.variables)
    used = {k: r.arena["used"] - r.arena["recording"] for k, r in (("flash", main_run), ("plain", run))}
    saved_tflm = used["plain"] - used["flash"]
    saved_plan = plain.plan.host_peak_sram_bytes - artifact.plan.host_peak_sram_bytes
    print(f"\nTMT_CONV: TFLM used {used['flash']} vs {used['plain']} with the builtins (saved "
          f"{saved_tflm}); plan saved {saved_plan}")
    assert 0 < saved_tflm <= saved_plan
    assert plain.plan.host_peak_sram_bytes >= used["plain"]
    assert artifact.plan.host_peak_sram_bytes >= used["flash"]
