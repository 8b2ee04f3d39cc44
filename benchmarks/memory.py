"""Memory of one training step: tfmicro-train's plan vs Keras/TensorFlow on this host.

    python benchmarks/memory.py            # all three models (about 5 minutes on 2 cores)
    python benchmarks/memory.py --quick    # MobileNetV2-w0.35 only, no TensorFlow column

For MobileNetV2-w0.35 (keras.applications), an MCUNet-like and a ProxylessNAS-like model at
128x128, batch 1: peak SRAM and flash of full, last (classifier), bias-only and the MIT paper's
published sparse schemes at about 50, 100 and 150 KB, planned by the converter (the plan TFLM runs,
through the OfflineMemoryAllocation metadata; with TFLM_DIR set, each artifact also runs one
training step in TFLM and the arena TFLM reports is printed beside the plan). The TensorFlow
column is the peak resident-memory growth of a fresh Python process that builds the float model
and runs one eager training step (GradientTape + SGD) of the same parameters, measured with /proc
(VmHWM). With TFLM_DIR and the Cortex-M7 build of TFLM and the cross tools, the "M7 used" column
is arena_used_bytes() of each artifact in TFLM on the Cortex-M7 (QEMU mps2-an500): the memory the
microcontroller's arena needs, with its own 32-bit bookkeeping (--no-m7 skips it). Writes a PNG
of memory over the paper's 100 KB MobileNetV2 step to benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EVERY3 = lambda a, b: {i: 1 for i in range(a, b + 1, 3)}  # noqa: E731
# The MIT paper's published schemes (../shared/reference/mit-tiny-training.md): budget KB ->
# (bias_last_k, {conv index: ratio}); ratio 0 (bias only) entries are covered by bias_last_k.
PAPER = {
    "mobilenetv2_w035": {
        49: (16, {36: 1, 39: 1, 41: 1 / 4, 42: 1 / 8, 45: 1 / 8, 48: 1 / 8, 49: 1 / 8}),
        99: (25, {27: 1, 30: 1, 33: 1, 36: 1, 39: 1, 42: 1 / 8, 45: 1 / 2, 48: 1}),
        138: (34, EVERY3(27, 48)),
    },
    "mcunet_like": {
        49: (20, {24: 1 / 4, 27: 1 / 2, 30: 1 / 2}),
        99: (22, {21: 1, 24: 1, 27: 1, 30: 1, 36: 1 / 8, 39: 1 / 4}),
        148: (23, {21: 1, 24: 1, 27: 1, 30: 1, 36: 1, 39: 1 / 2}),
    },
    "proxyless_like": {
        49: (21, {39: 1 / 4, 42: 1, 45: 1, 51: 1 / 8, 54: 1 / 4, 57: 1 / 4}),
        98: (25, {36: 1, 39: 1 / 2, 42: 1, 45: 1, 48: 1 / 4, 51: 1 / 2, 54: 1, 57: 1}),
        148: (45, EVERY3(36, 57)),
    },
}
LABELS = {"mobilenetv2_w035": "MobileNetV2-w0.35", "mcunet_like": "MCUNet-like",
          "proxyless_like": "ProxylessNAS-like"}

TF_STEP = r"""
import os, sys, json, gc
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, {root!r})
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
import numpy as np, tensorflow as tf, keras
from tfmicro_train import zoo
gc.collect()
open("/proc/self/clear_refs", "w").write("5")
before = rss("VmRSS:")
model = getattr(zoo, {name!r})()
layers = [l for l in model.layers if type(l).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense")]
spec = json.loads({spec!r})
train = []
n = len(layers)
for i, l in enumerate(layers):
    if str(i) in spec["w"]:
        train.append(l.kernel)
    if i >= n - spec["b"] and getattr(l, "bias", None) is not None:
        train.append(l.bias)
x = tf.constant(np.random.default_rng(0).random((1, 128, 128, 3), np.float32))
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
with tf.GradientTape() as tape:
    loss = loss_fn(tf.constant([3]), model(x, training=False))
grads = tape.gradient(loss, train)
for v, g in zip(train, grads):
    if g is not None:
        v.assign_sub(0.01 * g)
print(rss("VmHWM:") - before)
"""


def tf_step_bytes(name: str, bias_k: int, ratios: dict) -> int:
    """Peak RSS growth of a fresh process: build the float model + one training step."""
    spec = json.dumps({"b": bias_k, "w": {str(k): v for k, v in ratios.items()}})
    out = subprocess.run([sys.executable, "-c", TF_STEP.format(root=ROOT, name=name, spec=spec)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def tflm_runner():
    """A function running one training step of an artifact in TFLM -> (head, used) bytes, or
    None when TFLM is not configured (TFLM_DIR)."""
    if not os.environ.get("TFLM_DIR"):
        return None
    import tempfile
    from pathlib import Path

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_golden_cpp import CORE_SOURCES, GLUE_SOURCES, _tflm_flags, build_cpp
    from test_tflm_integration import run_driver

    flags, libs = _tflm_flags()
    root = Path(ROOT)
    driver = build_cpp("train_driver", [root / "tflm_ops/integration/train_driver.cc",
                                        *GLUE_SOURCES, *CORE_SOURCES],
                       flags, libs, base_flags=["-std=c++17", "-O1", "-ffp-contract=off"])
    tmp = Path(tempfile.mkdtemp(prefix="tmt_bench_"))

    def run(model: bytes, x: np.ndarray) -> tuple[int, int] | str:
        from tfmicro_train import HostSimulator

        sim = HostSimulator(model)
        steps = [[sim.quantize_input(x), np.array([1], np.int32), np.array([0.01], np.float32)]]
        if sim.feature_cache:  # a step on the image: features_given 0, the features unused
            steps[0] += [np.array([0], np.int32), np.zeros(sim.feature_cache["shape"], np.int8)]
        res = run_driver(driver, model, steps, tmp, arena=4 << 20)
        if res.returncode != 0:
            return (res.stderr.strip().splitlines() or ["failed"])[-1][:60]
        return res.arena["head"], res.arena["used"] - res.arena.get("recording", 0)

    return run


def m7_runner():
    """A function giving the arena TFLM needs for an artifact on the Cortex-M7 (32-bit pointers:
    the microcontroller's own bookkeeping; QEMU mps2-an500) and its persistent allocations by
    kind, or None when TFLM's Cortex-M7 build or the cross tools are missing."""
    if not os.environ.get("TFLM_DIR"):
        return None
    import tempfile
    from pathlib import Path

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    sys.path.insert(0, os.path.join(ROOT, "tflm_ops", "cortex_m"))
    import cmbuild
    import cortex_m

    if cmbuild.missing_cross_tools():
        return None
    tflm = cmbuild.find_tflm(cortex_m.CPU)
    if isinstance(tflm, str):
        return None
    work = Path(tempfile.mkdtemp(prefix="tmt_bench_m7_"))

    def run(model: bytes, variable_bytes: int) -> tuple[int, dict] | str:
        try:
            return cortex_m.tflm_arena(model, variable_bytes, tflm, work, breakdown=True)
        except RuntimeError as e:
            return str(e).splitlines()[-1][:60]

    return run


def m7_breakdown(used: int, allocs: dict) -> str:
    """TFLM's arena_used_bytes() on the Cortex-M7 split by kind (RecordingMicroInterpreter)."""
    kb = lambda n: f"{n / 1024:.1f} KB"  # noqa: E731
    get = lambda k: allocs.get(k, (0, 0))  # noqa: E731
    variables = get("variable_buffers")[0]
    op_data, n_op_data = get("persistent_buffers")
    nodes, n_nodes = get("nodes")
    tensors, n_tensors = get("eval_tensors")
    other = get("persistent_tensors")[0] + get("persistent_quantization")[0] + get("op_data")[0]
    head = used - sum(b for b, _ in allocs.values())
    return (f"{kb(used)} = variables {kb(variables)} + arena head (activations, gradients, "
            f"scratch) and TFLM's interpreter structs {kb(head)} + op data {kb(op_data)} "
            f"({n_op_data} buffers) + nodes {kb(nodes)} ({n_nodes}) + eval tensors "
            f"{kb(tensors)} ({n_tensors}) + other {kb(other)}")


def schemes(name: str, n_layers: int):
    from tfmicro_train import SparseUpdate

    yield "full", SparseUpdate.preset("full", n_layers), (n_layers, {i: 1 for i in range(n_layers)})
    yield "last", SparseUpdate.preset("last", n_layers), (1, {n_layers - 1: 1})
    yield "bias", SparseUpdate.preset("bias", n_layers), (n_layers, {})
    for kb, (k, ratios) in PAPER[name].items():
        yield f"paper {kb} KB", SparseUpdate(k, dict(ratios)), (k, ratios)


def artifact_row(model_label: str, label: str, art, x, run_tflm, run_m7) -> str:
    """The table row of one converted artifact (its own plan; no TensorFlow column)."""
    rep = art.memory_report()
    row = (f"{model_label:<18} {label:<28} {rep.variable_bytes / 1024:>8.1f}KB "
           f"{rep.peak_sram_bytes / 1024:>8.1f}KB {rep.arena_bytes / 1024:>7.1f}KB "
           f"{len(art.flatbuffer) / 1024:>7.1f}KB {'-':>9} {'-':>8}")
    if run_tflm:
        got = run_tflm(art.flatbuffer, x)
        row += (f" {got[0] / 1024:>9.1f}KB {got[1] / 1024:>8.1f}KB" if isinstance(got, tuple)
                else f" {got}")
        if isinstance(got, tuple) and got[0] != rep.arena_bytes:
            row += "  (differs from the plan!)"
    if run_m7:
        m7 = run_m7(art.flatbuffer, rep.variable_bytes)
        row += f" {m7[0] / 1024:>7.1f}KB" if isinstance(m7, tuple) else f" {m7}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 only, no TF column")
    parser.add_argument("--no-m7", action="store_true",
                        help="skip the Cortex-M7 column (TFLM in QEMU, about 20 s per row)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    args = parser.parse_args()
    from tfmicro_train import convert, zoo
    from tfmicro_train.search import MemoryModel

    os.makedirs(args.out, exist_ok=True)
    names = ["mobilenetv2_w035"] if args.quick else list(PAPER)
    rep = [np.random.default_rng(i).random((1, 128, 128, 3), np.float32) for i in range(4)]
    run_tflm = tflm_runner()
    run_m7 = m7_runner() if run_tflm and not args.no_m7 else None
    header = (f"{'model':<18} {'update':<28} {'trainable':>10} {'peak SRAM':>10} {'arena':>9} "
              f"{'flash':>9} {'TF host':>9} {'TF/ours':>8}"
              + (f" {'TFLM arena':>11} {'TFLM used':>10}" if run_tflm else "")
              + (f" {'M7 used':>9}" if run_m7 else ""))
    rows = [header, "-" * len(header)]
    m7_split = None
    for name in names:
        model = getattr(zoo, name)()
        mm = MemoryModel(model, rep)
        n = len(mm.imported.layers)
        for label, update, (k, ratios) in schemes(name, n):
            peak, flash = mm.measure(update)
            g_peak = mm.plan(update)
            tf_bytes = None if args.quick else tf_step_bytes(name, k, ratios)
            ratio = f"{tf_bytes / peak:>7.0f}x" if tf_bytes else f"{'-':>8}"
            tf_text = f"{tf_bytes / 2**20:>7.1f}MB" if tf_bytes else f"{'-':>9}"
            row = (f"{LABELS[name]:<18} {label:<28} {g_peak.variable_bytes / 1024:>8.1f}KB "
                   f"{peak / 1024:>8.1f}KB {g_peak.arena_bytes / 1024:>7.1f}KB "
                   f"{flash / 1024:>7.1f}KB {tf_text} {ratio}")
            if run_tflm:
                got = run_tflm(mm.flatbuffer(update), rep[0])
                row += (f" {got[0] / 1024:>9.1f}KB {got[1] / 1024:>8.1f}KB" if isinstance(got, tuple)
                        else f" {got}")
                if isinstance(got, tuple) and got[0] != g_peak.arena_bytes:
                    row += "  (differs from the plan!)"
            if run_m7:
                m7 = run_m7(mm.flatbuffer(update), g_peak.variable_bytes)
                row += f" {m7[0] / 1024:>7.1f}KB" if isinstance(m7, tuple) else f" {m7}"
                if isinstance(m7, tuple) and name == "mobilenetv2_w035" and label == "paper 99 KB":
                    m7_split = m7_breakdown(*m7) + "\n  the plan's bookkeeping estimate: " + ", ".join(
                        f"{k} {v / 1024:.1f} KB" for k, v in g_peak.overhead_parts.items())
            rows.append(row)
            print(rows[-1], flush=True)
        if name == "mobilenetv2_w035":
            k, ratios = PAPER[name][99]
            from tfmicro_train import SparseUpdate

            art = convert(model, rep, update=SparseUpdate(k, dict(ratios)))
            png = art.memory_report().plot(os.path.join(args.out, "mbv2_w035_paper100kb.png"))
            # the same scheme with the image streamed from outside the arena (stream_input)
            streamed = convert(model, rep, update=SparseUpdate(k, dict(ratios)), stream_input=True)
            rows.append(artifact_row(LABELS[name], "paper 99 KB, streamed input", streamed, rep[0],
                                     run_tflm, run_m7))
            print(rows[-1], flush=True)
            # and with the feature cache (convert(feature_cache=True)): the features an input
            cached = convert(model, rep, update=SparseUpdate(k, dict(ratios)), feature_cache=True)
            rows.append(artifact_row(LABELS[name], "paper 99 KB, feature cache", cached, rep[0],
                                     run_tflm, run_m7))
            print(rows[-1], flush=True)
    print()
    print("\n".join(rows))
    print(f"\nmemory over the paper's 100 KB MobileNetV2-w0.35 step: {png}")
    print("peak SRAM = the converter's estimate of the arena TFLM needs on a 32-bit MCU: planned "
          "arena + trainable variables + TFLM bookkeeping (its structs' Cortex-M sizes); TF host = "
          "RSS growth of model + one eager step")
    print("streamed input (convert(stream_input=True)): the int8 input image is no arena tensor; "
          "the first fused block reads it from outside the arena (flash, PSRAM, a camera buffer): "
          "those 48 KB live outside SRAM's arena and are not counted")
    print("feature cache (convert(feature_cache=True)): the sample's features (the frozen prefix's "
          "output) are an input live for the whole step, for steps that skip the prefix")
    if run_tflm:
        print("TFLM arena / used: TFLM on this host (x86-64) after one training step: the arena "
              "head (planned activations) and arena_used_bytes() (head + variables + bookkeeping)")
    if run_m7:
        print("M7 used: arena_used_bytes() of the same artifact in TFLM on the Cortex-M7 (QEMU "
              "mps2-an500; 32-bit structs): the SRAM the microcontroller's arena needs")
    if m7_split:
        print(f"\nM7 used by the paper's 100 KB MobileNetV2-w0.35 step: {m7_split}")


if __name__ == "__main__":
    main()
