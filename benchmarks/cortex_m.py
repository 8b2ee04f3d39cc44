"""What a training step costs on a Cortex-M: instruction counts under QEMU.

    python3 benchmarks/cortex_m.py                  # our backward/update kernels on Cortex-M7
    TFLM_DIR=/path/to/tflite-micro python3 benchmarks/cortex_m.py   # + whole steps in TFLM
    ... --paper-res 0                               # without the MobileNetV2 section

Models:
* the demo's digits CNN (tfmicro_train/demo.py: 8x8x1 input, conv 3x3x16, depthwise 3x3,
  pointwise 24, max-pool, conv 3x3x32, global average pool, dense 10), briefly pretrained,
  converted four times: full update (every weight and bias), a sparse update (sparse_update()
  below: biases of the last two layers, a quarter of conv2's output channels and the classifier
  weights), the classifier alone and bias-only (--model mcunet64: an MCUNet-like net instead);
* the paper-scale model: MobileNetV2-w0.35 (tfmicro_train.zoo.mobilenetv2_w035, random weights,
  settled BatchNorm statistics) at --paper-res (default 128x128, the paper's resolution: the full
  update's 1.5 MB arena fits the board's 4 MB of RAM), converted with a full update, the MIT
  paper's 99 KB sparse scheme (benchmarks/memory.py PAPER: biases of the last 25 layers, weights
  of layers 27..48) and bias-only.

Measurement: `qemu-system-arm -M mps2-an500` (Cortex-M7; 4 MB at 0x0 hold code and the model,
4 MB at 0x20000000 data, arena and stack: tflm_ops/cortex_m/mps2.ld) with `-icount shift=0`, so
each guest instruction takes 1 ns of virtual time; the program reads CMSDK timer 0 (25 MHz of
virtual time) around the measured call: instructions = ticks * 40, exact to within 40
(tflm_ops/cortex_m/cm_timer.h). These are instructions executed, not cycles (QEMU models no
pipeline, caches or wait states).

Printed, in one run (about 5 minutes on 2 cores with TFLM):
1. our backward/update kernels of each digits artifact (tflm_ops/core, C++, -O2), called
   once per TMT_* conv/depthwise/dense/bias op of the artifact with its shapes (random data),
   the conv weight gradient as core::ConvWeightUpdatePortable; plus the same with the Cortex-M
   DSP weight-gradient path (core::ConvWeightUpdateDsp, what core::ConvWeightUpdate is on DSP
   targets unless built with -DTMT_PORTABLE_ONLY; the other kernels are the default build's in
   both columns);
2. with TFLM (TFLM_DIR, cortex-m7 library built): the whole training step in TFLM on the
   Cortex-M7 (model in flash via TrainingModel.export_c; forward: our TMT_CONV / TMT_FUSED_IRB
   and TFLM's reference kernels for the other builtins; our ops backward), the forward pass
   alone (an lr = 0 call), arena bytes, the deepest stack of a step, and flash / RAM of the
   linked program from arm-none-eabi-size; the default build (DSP paths of the weight gradients
   and forward convolutions) and the portable one (every kernel core with -DTMT_PORTABLE_ONLY),
   whose losses and checkpoints must be identical; the ratios use the default build;
3. instructions per multiply-accumulate of our backward kernels per layer, next to TFLM's
   reference int8 convolution forward (needs TFLM's headers: TFLM_DIR); then both ratios for the
   digits model: whole training step and backward + update pass (the part of a step the update
   scheme controls: the step minus its forward pass in TFLM, else the sum of our kernels);
4. the paper-scale model (unless --paper-res 0): per update, the trainable variables, the
   whole step, forward pass and backward + update pass in TFLM (default build, median of
   --paper-steps steps), the sum of our kernels with its shapes and the share of it spent on
   input gradients, arena, stack, flash and RAM; then both ratios as in 3 (whole step with
   TFLM), and the paper's comparison: the sparse step against a full update whose forward
   pass runs on TFLM's reference kernels (convert(fuse=False, flash_requant=False)), backward
   portable, and against the paper's baseline, a full update with TFLM's kernels throughout:
   that step with its gradient convolutions computed by TFLM's reference kernels instead
   (TRANSPOSE_CONV, FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D: kernel_bench's tflm_* kinds,
   measured with each op's shapes; with a TFLM library built with OPTIMIZED_KERNEL_DIR=cmsis_nn,
   TFLM's builtins run CMSIS-NN's kernels and the baseline's gradient convolutions are computed
   with CMSIS-NN too: kernel_bench's cmsis_* kinds, whose outputs must equal the reference
   kernels'); then the sparse step on a sample seen before
   (convert(feature_cache=True), each step on the sample's cached features: the frozen prefix
   does not run), which must train exactly as on the images, against the full updates;
5. last line: `sparse vs full: <N>x fewer instructions (<what>; <model>, sparse = <scheme>;
   Cortex-M7)`: N is the same-kernel ratio (our sparse vs our full update) of the whole training
   step when TFLM is configured, else of the backward + update pass (sum of our kernels), on the
   paper-scale model, or on --model with --paper-res 0; with the paper-scale model's TFLM steps
   <what> adds the paper's comparison (our sparse step vs the full update with TFLM's kernels:
   the reference ones, or CMSIS-NN's with such a library). The lines above give every ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tflm_ops" / "cortex_m"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cmbuild  # noqa: E402
import numpy as np  # noqa: E402

CPU = "cortex-m7"
N_STEPS = 4
CORE_SOURCES = sorted((ROOT / "tflm_ops/core").glob("*.cc"))


def sparse_update():
    """The sparse scheme: biases of the last 2 layers, 1/4 of conv2's channels, the classifier."""
    import tfmicro_train as tmt

    return tmt.SparseUpdate(bias_last_k=2, weight_ratios={3: 0.25, 4: 1})


@dataclass
class KernelCall:
    """One backward/update kernel call of an artifact (kernel_bench_main.cc plan line)."""

    label: str
    kind: str
    g: tuple[int, int, int]  # OH, OW, CO
    k: tuple[int, int]
    x: tuple[int, int, int]  # IH, IW, CI
    geom: tuple[int, int, int, int]
    n: int
    macs: int

    def line(self, kind: str | None = None) -> str:
        v = (*self.g, *self.k, *self.x, *self.geom, self.n)
        return f"{self.label} {kind or self.kind} " + " ".join(str(int(a)) for a in v)


def _hwc(shape) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in shape)
    if len(shape) == 4:
        return shape[1], shape[2], shape[3]
    return 1, 1, int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]


def _valid(out: int, inp: int, k: int, stride: int, pad: int) -> int:
    """Sum over kernel offsets of the output positions whose input lands inside the image."""
    return sum(sum(1 for o in range(out) if 0 <= o * stride - pad + kk < inp) for kk in range(k))


def kernel_calls(art, prefix: str = "") -> list[KernelCall]:
    """The conv / depthwise / dense / bias backward and update ops of an artifact, with shapes
    (labels: `prefix` + the parameter tensor's name)."""
    from tfmicro_train import HostSimulator

    sg = HostSimulator(art).main
    calls = []
    for op in sg.ops:
        o = op.options if isinstance(op.options, dict) else {}
        geom = (o.get("stride_h", 1), o.get("stride_w", 1), o.get("pad_top", 0), o.get("pad_left", 0))
        shape = [sg.infos[t].shape if t >= 0 else () for t in op.inputs]
        if op.name in ("TMT_CONV_INPUT_GRAD", "TMT_DW_INPUT_GRAD"):
            g, w, x = _hwc(shape[0]), shape[2], _hwc(sg.infos[op.outputs[0]].shape)
            kind = "conv_input_grad" if op.name == "TMT_CONV_INPUT_GRAD" else "dw_input_grad"
            n = g[2]
        elif op.name in ("TMT_CONV_WEIGHT_UPDATE", "TMT_DW_WEIGHT_UPDATE"):
            g, x, w = _hwc(shape[0]), _hwc(shape[2]), shape[3]
            kind = "conv_weight_update" if op.name == "TMT_CONV_WEIGHT_UPDATE" else "dw_weight_update"
            n = int(o["update_channels"])
        elif op.name == "TMT_BIAS_UPDATE":
            g = _hwc(shape[0])
            calls.append(KernelCall(prefix + sg.infos[op.inputs[2]].name.replace(" ", "_"), "bias_update",
                                    g, (1, 1), (1, 1, 1), (1, 1, 0, 0), int(o["update_channels"]),
                                    g[0] * g[1] * int(o["update_channels"])))
            continue
        else:
            continue
        kh, kw = (int(w[1]), int(w[2])) if len(w) == 4 else (1, 1)
        pos = _valid(g[0], x[0], kh, geom[0], geom[2]) * _valid(g[1], x[1], kw, geom[1], geom[3])
        depthwise = kind.startswith("dw")
        macs = pos * (n if depthwise else n * x[2])
        label = prefix + sg.infos[op.inputs[3 if "update" in kind else 2]].name.replace(" ", "_")
        calls.append(KernelCall(label, kind, g, (kh, kw), x, geom, n, macs))
    return calls


def run_plan(elf: Path, lines: list[str], work: Path,
             mismatch: dict[str, int] | None = None) -> dict[str, int]:
    """Run kernel_bench on plan lines; {"<label> <kind>": instructions}. `mismatch` receives the
    cmsis_* lines' "<label> <kind>": output bytes differing from TFLM's reference kernels."""
    plan = work / "plan.txt"
    plan.write_text("\n".join(lines) + "\n")
    res = cmbuild.run_qemu(elf, CPU, [str(plan)], icount=True, timeout=600)
    if res.returncode or "done" not in res.stdout:
        raise RuntimeError(f"kernel_bench failed:\n{res.stdout[-3000:]}{res.stderr[-2000:]}")
    out = {}
    for ln in res.stdout.splitlines():
        w = ln.split()
        if len(w) == 4 and w[2] == "insns":
            out[f"{w[0]} {w[1]}"] = int(w[3])
        elif len(w) == 4 and w[2] == "mismatch" and mismatch is not None:
            mismatch[f"{w[0]} {w[1]}"] = int(w[3])
    return out


def cmsis_nn_include(tflm) -> Path | None:
    """CMSIS-NN's Include directory when the TFLM library was built with
    OPTIMIZED_KERNEL_DIR=cmsis_nn (the library then holds CMSIS-NN's kernels), else None."""
    if isinstance(tflm, str):
        return None
    inc = tflm.root / "tensorflow/lite/micro/tools/make/downloads/cmsis_nn/Include"
    if not inc.is_dir() or b"arm_convolve_wrapper_s8" not in tflm.lib.read_bytes():
        return None
    return inc


def build_kernel_bench(tflm) -> Path:
    defines, flags, libs, sources = [], [], [], [ROOT / "tflm_ops/cortex_m/kernel_bench_main.cc"]
    if not isinstance(tflm, str):
        defines, flags, libs = ["TMT_WITH_TFLM_REFERENCE"], list(tflm.flags), [str(tflm.lib)]
        cmsis = cmsis_nn_include(tflm)
        if cmsis:  # the cmsis_* kinds: CMSIS-NN's kernels, from the library
            defines.append("TMT_WITH_CMSIS_NN")
            flags += ["-isystem", str(cmsis)]
            sources.append(ROOT / "tflm_ops/cortex_m/kernel_bench_cmsis.cc")
    return cmbuild.build_arm("kernel_bench", CPU, sources,
                             cmbuild.DRIVER_FLAGS,
                             [*CORE_SOURCES, ROOT / "tflm_ops/cortex_m/dsp_kernels.cc"],
                             defines=defines, extra_flags=flags, libs=libs)


def _train_sources(work: Path) -> list[Path]:
    """The sources of the TFLM training-step program (tflm_ops/cortex_m/tflm_train_main.cc) with
    the model exported to work/model_data.cpp."""
    return [ROOT / "tflm_ops/cortex_m/tflm_train_main.cc", work / "model_data.cpp",
            ROOT / "tflm_ops/checkpoint/tflm_checkpoint.cc", ROOT / "tflm_ops/checkpoint/checkpoint.cc",
            *[p for p in sorted((ROOT / "tflm_ops/tflm").glob("*.cc")) if not p.name.endswith("_test.cc")],
            *CORE_SOURCES]


def _build_train(tflm, work: Path, arena: int, steps_bytes: int, region_bytes: int,
                 source_flags=None) -> Path:
    return cmbuild.build_arm(
        "tflm_train", CPU, [], cmbuild.DRIVER_FLAGS, _train_sources(work),
        defines=["TMT_EMBEDDED_MODEL=g_model", f"TMT_ARENA_BYTES={arena}",
                 f"TMT_STEPS_MAX_BYTES={steps_bytes}", f"TMT_REGION_MAX_BYTES={region_bytes}"],
        extra_flags=list(tflm.flags), libs=[str(tflm.lib)], source_flags=source_flags)


def _run_train(elf: Path, work: Path, steps: str) -> dict:
    region = work / "region.bin"
    if region.exists():
        region.unlink()
    res = cmbuild.run_qemu(elf, CPU, ["-", steps, str(region)], icount=True, timeout=1800)
    out = cmbuild.parse_train_output(res.stdout)
    if res.returncode or not out.get("done"):
        raise RuntimeError(f"tflm_train failed:\n{res.stdout[-3000:]}{res.stderr[-2000:]}")
    return out


PROBE_ARENA = 2 * 1024 * 1024  # the board has 4 MB of RAM at 0x20000000 (mps2.ld)


def tflm_arena(flatbuffer: bytes, variable_bytes: int, tflm, work: Path, breakdown: bool = False):
    """The arena TFLM needs for `flatbuffer` on the Cortex-M7 (32-bit: its real bookkeeping),
    from AllocateTensors in a 2 MB arena: MicroInterpreter::arena_used_bytes(). With
    `breakdown`, (that, {kind: (used bytes, count)} of TFLM's persistent allocations)."""
    from tfmicro_train.codegen import export_c

    work.mkdir(parents=True, exist_ok=True)
    export_c(flatbuffer, work / "model_data.h")
    region_bytes = 2 * ((32 + variable_bytes + 3) & ~3)
    elf = cmbuild.build_arm(
        "tflm_train", CPU, [], cmbuild.DRIVER_FLAGS, _train_sources(work),
        defines=["TMT_EMBEDDED_MODEL=g_model", f"TMT_ARENA_BYTES={PROBE_ARENA}",
                 "TMT_STEPS_MAX_BYTES=12", f"TMT_REGION_MAX_BYTES={region_bytes}"]
        + (["TMT_RECORD_ALLOCATIONS"] if breakdown else []),
        extra_flags=list(tflm.flags), libs=[str(tflm.lib)])
    out = _run_train(elf, work, "-")
    return (int(out["arena"]), out.get("allocs", {})) if breakdown else int(out["arena"])


def tflm_step(art, tflm, work: Path, dsp: bool, xs, ys, cached: bool = False) -> dict:
    """Whole training steps of `art` in TFLM on the Cortex-M7 (model in flash); `cached` (an
    artifact converted with feature_cache=True): every step on its sample's cached features."""
    from tfmicro_train import HostSimulator

    work.mkdir(parents=True, exist_ok=True)
    art.export_c(work / "model_data.h")
    sim = HostSimulator(art)
    steps = work / "steps.bin"
    features = [sim.features(x[None]) for x in xs] if cached else None
    steps.write_bytes(cmbuild.steps_file(sim, xs, ys, [0.05] * len(xs), features))
    # The kernel cores take their DSP paths on DSP targets by default (the weight gradients in
    # training_ops.cc, the forward convolutions of TMT_CONV / TMT_FUSED_IRB in tflm_reference.h);
    # the portable build compiles every core source with -DTMT_PORTABLE_ONLY.
    source_flags = None if dsp else {str(p): ["-DTMT_PORTABLE_ONLY"] for p in CORE_SOURCES}
    region_bytes = 2 * ((32 + sum(int(v.nbytes) for v in sim.variables.values()) + 3) & ~3)
    steps_bytes = len(steps.read_bytes())

    # The arena TFLM uses, from AllocateTensors in a 2 MB arena, then the program with exactly
    # that arena.
    probe = _run_train(_build_train(tflm, work, PROBE_ARENA, steps_bytes, region_bytes, source_flags),
                       work, "-")
    # AllocateTensors needs more than arena_used_bytes() while it plans (TFLM's greedy planner
    # takes its temporary data from the free middle of the arena, and faults instead of failing
    # when that is too small: MobileNetV2 at 32x32, whose activations are small): more slack then.
    for slack in (1024, 16 * 1024, 64 * 1024):
        arena = (probe["arena"] + slack + 15) & ~15
        elf = _build_train(tflm, work, arena, steps_bytes, region_bytes, source_flags)
        try:
            out = _run_train(elf, work, str(steps))
            break
        except RuntimeError:
            if slack == 64 * 1024:
                raise
    insns = [s["insns"] for s in out["steps"]]
    return {"forward": out["inference_insns"], "step": int(statistics.median(insns)),
            "losses": [st["loss_bits"] for st in out["steps"]],
            "checkpoint": (work / "region.bin").read_bytes(),
            "arena": out["arena"], "arena_reserved": arena, "size": cmbuild.elf_size(elf),
            "model_bytes": len(art.flatbuffer), "save": out.get("save_insns", 0),
            "ops": out.get("ops", {}), "stack": out.get("stack", 0)}


PAPER_MODEL = "MobileNetV2-w0.35"
PAPER_BUDGET_KB = 99  # the MIT paper's 100 KB scheme (benchmarks/memory.py PAPER)


def paper_scale(res: int, n_steps: int, tflm, elf: Path, work: Path) -> dict:
    """Section 4: MobileNetV2-w0.35 (zoo, random weights) at res x res with full, the MIT paper's
    99 KB sparse scheme and bias-only updates; whole steps in TFLM (default build) when TFLM is
    configured, our kernels always. Returns {"whole": ..., "backward": ..., "title": ...}."""
    from memory import PAPER

    import tfmicro_train as tmt
    from tfmicro_train import HostSimulator, zoo

    model = zoo.mobilenetv2_w035(res)
    rng = np.random.default_rng(0)
    calib = [rng.random((1, res, res, 3), dtype=np.float32) for _ in range(8)]
    k, ratios = PAPER["mobilenetv2_w035"][PAPER_BUDGET_KB]
    sparse = tmt.SparseUpdate(k, dict(ratios))
    updates = {"full": "full", "sparse": sparse, "bias-only": "bias"}
    arts = {name: tmt.convert(model, calib, update=u) for name, u in updates.items()}
    xs = rng.random((n_steps, res, res, 3), dtype=np.float32)
    ys = rng.integers(0, 10, n_steps)
    title = f"{PAPER_MODEL} {res}x{res}"
    print(f"\n{PAPER_MODEL} (zoo.mobilenetv2_w035, {res}x{res}x3 -> 10, random weights), the MIT "
          f"paper's {PAPER_BUDGET_KB} KB scheme as sparse = {sparse}")

    calls = {name: kernel_calls(a, f"mbv2-{name}:") for name, a in arts.items()}
    kres = run_plan(elf, sorted({c.line(_dsp_kind(c.kind)) for cs in calls.values() for c in cs}),
                    work)
    kernels, input_share = {}, {}
    for name, cs in calls.items():
        ins = [kres[f"{c.label} {_dsp_kind(c.kind)}"] for c in cs]
        kernels[name] = sum(ins)
        input_share[name] = sum(i for i, c in zip(ins, cs) if "input_grad" in c.kind) / max(sum(ins), 1)
    variables = {name: sum(int(v.nbytes) for v in HostSimulator(a).variables.values())
                 for name, a in arts.items()}

    whole, paper = None, None
    backward = {name: float(v) for name, v in kernels.items()}
    if isinstance(tflm, str):
        print(f"whole training step in TFLM: skipped ({tflm})")
        print(f"{'update':<10} {'variables B':>11} {'kernels':>11} {'input grads':>11}")
        for name in arts:
            print(f"{name:<10} {variables[name]:>11,} {_fmt(kernels[name]):>11} "
                  f"{input_share[name]:>11.0%}")
    else:
        steps = {name: tflm_step(a, tflm, work / f"mbv2_{name}", True, xs, ys)
                 for name, a in arts.items()}
        print(f"whole training step in TFLM on the Cortex-M7, default (DSP) build, median of "
              f"{n_steps} steps; kernels = our backward/update kernels with the artifact's shapes "
              "(random data), input grads = their share spent on input gradients")
        print(f"{'update':<10} {'variables B':>11} {'step':>11} {'forward':>11} {'bwd+update':>11} "
              f"{'kernels':>11} {'input grads':>11} {'arena B':>10} {'stack B':>8} {'flash B':>10} "
              f"{'RAM B':>10}")
        for name in arts:
            st = steps[name]
            print(f"{name:<10} {variables[name]:>11,} {_fmt(st['step']):>11} {_fmt(st['forward']):>11} "
                  f"{_fmt(st['step'] - st['forward']):>11} {_fmt(kernels[name]):>11} "
                  f"{input_share[name]:>11.0%} {st['arena']:>10,} {st['stack']:>8,} "
                  f"{st['size']['flash']:>10,} {st['size']['ram']:>10,}")
        whole = {name: float(st["step"]) for name, st in steps.items()}
        backward = {name: float(st["step"] - st["forward"]) for name, st in steps.items()}
        print_op_profile({name: st["ops"] for name, st in steps.items()})
        print("whole training step (forward pass included), fewer instructions than full: "
              + ", ".join(f"{n} {whole['full'] / whole[n]:.1f}x" for n in arts if n != "full"))
        # The paper's speed comparison (23-25x) sets its sparse update with its own kernels
        # against a full update run with TFLM's kernels. First the full update with TFLM's builtin
        # reference kernels for the whole forward pass (no fused blocks, no TMT_CONV / TMT_MEAN)
        # and our portable backward build; then the same with its gradient convolutions on TFLM's
        # reference kernels too (tflm_kernels_full_update). With a TFLM library built with
        # OPTIMIZED_KERNEL_DIR=cmsis_nn, TFLM's builtins run Arm's CMSIS-NN kernels (the strongest
        # stock TFLM on a Cortex-M7): the forward is theirs, and the baseline's gradient
        # convolutions are computed with CMSIS-NN too (kernel_bench cmsis_*).
        cmsis = cmsis_nn_include(tflm) is not None
        builtins = "TFLM + CMSIS-NN's" if cmsis else "TFLM's reference"
        ref_art = tmt.convert(model, calib, update="full", fuse=False, flash_requant=False)
        ref = tflm_step(ref_art, tflm, work / "mbv2_full_tflm_ref", False, xs, ys)
        print(f"full update with {builtins} kernels forward (convert(fuse=False, "
              f"flash_requant=False)) and the portable backward: step {_fmt(ref['step'])}, forward "
              f"{_fmt(ref['forward'])}, arena {ref['arena']:,} B")
        print(f"sparse (our kernels, DSP) vs that full update: {ref['step'] / whole['sparse']:.1f}x "
              "fewer instructions")
        paper = tflm_kernels_full_update(ref_art, ref, elf, work)
        what = ("with TFLM's reference kernels for its gradient convolutions only" if cmsis else
                "the paper's baseline, a full update with TFLM's kernels throughout")
        print(f"{what}: that step with "
              f"its {paper['calls']} gradient convolutions ({paper['macs'] / 1e6:.1f} M MACs; "
              f"TMT_CONV/DW_INPUT_GRAD, TMT_CONV/DW_WEIGHT_UPDATE: {_fmt(paper['ours'])} portable, "
              f"update included, {paper['ours'] / paper['macs']:.1f} per MAC) computed by TFLM's "
              f"reference kernels instead (TRANSPOSE_CONV, FULLY_CONNECTED, CONV_2D, "
              f"DEPTHWISE_CONV_2D with the layers' shapes, kernel_bench: {_fmt(paper['tflm'])}, "
              f"{paper['tflm'] / paper['macs']:.1f} per MAC; transposes and the update itself not "
              f"counted): step {_fmt(paper['step'])}")
        if cmsis:
            cm = tflm_kernels_full_update(ref_art, ref, elf, work, "cmsis")
            print(f"the same with its gradient convolutions on CMSIS-NN's kernels (kernel_bench "
                  f"cmsis_*: arm_transpose_conv_wrapper_s8, arm_convolve_wrapper_s8, "
                  f"arm_fully_connected_s8, arm_depthwise_conv_wrapper_s8; outputs equal to the "
                  f"reference kernels'): {_fmt(cm['tflm'])}, {cm['tflm'] / cm['macs']:.1f} per MAC; "
                  f"step {_fmt(cm['step'])}, a full update with TFLM + CMSIS-NN's kernels throughout")
            paper = {**cm, "what": "TFLM + CMSIS-NN's kernels"}
        else:
            paper["what"] = "TFLM's kernels"
        print(f"sparse (our kernels, DSP) vs the full update with {paper['what']}, the paper's "
              f"comparison (23-25x there, STM32F746, TFLM's kernels): "
              f"{paper['step'] / whole['sparse']:.1f}x fewer instructions")
        # A sample seen before (the next epochs of a few-shot fine-tuning): the sparse artifact
        # converted with feature_cache=True, each step on the sample's cached features, so the
        # frozen prefix (the fused blocks) does not run. It must train exactly as on the image.
        c_art = tmt.convert(model, calib, update=sparse, feature_cache=True)
        fc = c_art.metadata["feature_cache"]
        cached = tflm_step(c_art, tflm, work / "mbv2_sparse_cached", True, xs, ys, cached=True)
        same = cached["losses"] == steps["sparse"]["losses"]
        print(f"sparse on cached features (convert(feature_cache=True): the frozen prefix, "
              f"{fc['ops']} fused blocks, skipped; {fc['bytes']:,} B of features per sample): "
              f"step {_fmt(cached['step'])}, arena {cached['arena']:,} B "
              f"(sparse {steps['sparse']['arena']:,}); "
              f"losses identical to the steps on the images: {same}")
        if not same:
            raise RuntimeError("the steps on cached features did not train as on the images")
        print(f"sparse on cached features vs full: {whole['full'] / cached['step']:.1f}x fewer "
              f"instructions (same kernels), {ref['step'] / cached['step']:.1f}x vs the full update "
              f"with {builtins} forward, {paper['step'] / cached['step']:.1f}x vs the full "
              f"update with {paper['what']} (the paper's comparison)")
    what = "TFLM step minus forward pass" if whole else "sum of our backward/update kernels"
    print(f"backward + update pass ({what}), fewer instructions than full: "
          + ", ".join(f"{n} {backward['full'] / backward[n]:.1f}x" for n in arts if n != "full"))
    return {"whole": whole, "backward": backward, "title": title,
            "tflm_kernels_full": paper["step"] if whole else None,
            "baseline_kernels": paper["what"] if whole else None}


GRADIENT_OPS = ("TMT_CONV_INPUT_GRAD", "TMT_DW_INPUT_GRAD", "TMT_CONV_WEIGHT_UPDATE",
                "TMT_DW_WEIGHT_UPDATE")


def tflm_kernels_full_update(art, step: dict, elf: Path, work: Path, kernels: str = "tflm") -> dict:
    """The paper's baseline from a measured TFLM step of the full update `art` (`step`, from
    tflm_step): its gradient convolution ops (GRADIENT_OPS, the TFLM profiler's instructions)
    replaced by the same gradients computed with TFLM's reference kernels, each measured by
    kernel_bench with the op's shapes (kinds tflm_*; kernels="cmsis": CMSIS-NN's kernels, kinds
    cmsis_*, whose outputs must equal the reference kernels'). What the rest of the step costs
    (forward pass, loss, bias and elementwise gradient ops) is kept as measured."""
    ops = step["ops"]
    if not ops:
        raise RuntimeError("the TFLM step has no per-operator profile")
    calls = [c for c in kernel_calls(art, "tflm-full:") if c.kind != "bias_update"]
    kinds = {c.kind for c in calls}
    if kinds - {"conv_input_grad", "dw_input_grad", "conv_weight_update", "dw_weight_update"}:
        raise RuntimeError(f"unexpected kernel kinds {sorted(kinds)}")
    lines = [c.line(f"{kernels}_" + c.kind.replace("weight_update", "weight_grad")) for c in calls]
    mismatch: dict[str, int] = {}
    res = run_plan(elf, lines, work, mismatch)
    if any(mismatch.values()):
        raise RuntimeError(f"{kernels}_* outputs differ from TFLM's reference kernels: "
                           f"{ {k: v for k, v in mismatch.items() if v} }")
    tflm = sum(res.values())
    counted = sum(ops.get(op, (0, 0))[0] for op in GRADIENT_OPS)
    if counted != len(calls):
        raise RuntimeError(f"{counted} gradient ops in the TFLM profile, {len(calls)} in the artifact")
    ours = sum(ops.get(op, (0, 0))[1] for op in GRADIENT_OPS)
    return {"step": step["step"] - ours + tflm, "ours": ours, "tflm": tflm, "calls": len(calls),
            "macs": sum(c.macs for c in calls)}


def print_op_profile(ops: dict[str, dict[str, tuple[int, int]]], top: int = 12) -> None:
    """Instructions per operator type of the last TFLM training step of each artifact (TFLM's
    profiler interface), the largest first: where a step's time goes."""
    if not all(ops.values()):
        return
    names = list(ops)
    order = sorted({op for o in ops.values() for op in o},
                   key=lambda op: -max(o.get(op, (0, 0))[1] for o in ops.values()))
    print("instructions per operator type in one training step (TFLM profiler; calls, share):")
    print(f"{'operator':<24}" + "".join(f" {n + ' insns':>16} {'calls':>6} {'share':>6}" for n in names))
    totals = {n: sum(v[1] for v in o.values()) for n, o in ops.items()}
    for op in order[:top]:
        row = f"{op:<24}"
        for n in names:
            calls, insns = ops[n].get(op, (0, 0))
            row += f" {_fmt(insns):>16} {calls:>6} {insns / max(totals[n], 1):>6.0%}"
        print(row)
    if len(order) > top:
        print(f"({len(order) - top} more operator types)")


def _dsp_kind(kind: str) -> str:
    return "conv_weight_update_dsp" if kind == "conv_weight_update" else kind


def _fmt(n: float) -> str:
    return f"{n / 1e6:.3f} M" if n >= 1e5 else f"{int(n):,}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["digits", "mcunet64"], default="digits",
                    help="digits: the demo CNN (default); mcunet64: zoo.mcunet_like at 64x64x3 "
                         "(random weights) with the MIT paper's ~50 KB sparse scheme")
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=N_STEPS, help="TFLM training steps measured")
    ap.add_argument("--work", help="directory for generated files (default: a temporary one)")
    ap.add_argument("--paper-res", type=int, default=128,
                    help=f"input resolution of the {PAPER_MODEL} section (0: skip it)")
    ap.add_argument("--paper-steps", type=int, default=2,
                    help=f"TFLM training steps measured for {PAPER_MODEL}")
    args = ap.parse_args(argv)
    missing = cmbuild.missing_cross_tools()
    if missing:
        print(f"cannot run: {missing}")
        return 1
    import tfmicro_train as tmt

    work = Path(args.work or tempfile.mkdtemp(prefix="tmt_cortex_m_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model == "digits":
        from tfmicro_train.demo import digits_data, pretrain, rotate, small_cnn

        (xp, yp), (xd, yd), _ = digits_data()
        model = pretrain(small_cnn(), xp, yp, epochs=args.pretrain_epochs)
        calib = [xp[i:i + 1] for i in range(64)]
        xs, ys = rotate(xd[:args.steps]), yd[:args.steps]
        sparse = sparse_update()
        title = "demo digits CNN (8x8x1 -> 10)"
    else:
        from tfmicro_train import zoo

        model = zoo.mcunet_like(input_size=64)
        rng = np.random.default_rng(0)
        calib = [rng.random((1, 64, 64, 3)).astype(np.float32) for _ in range(16)]
        xs, ys = rng.random((args.steps, 64, 64, 3)).astype(np.float32), rng.integers(0, 10, args.steps)
        sparse = tmt.SparseUpdate(20, {24: 0.25, 27: 0.5, 30: 0.5})
        title = "MCUNet-like (zoo.mcunet_like, 64x64x3 -> 10, random weights)"
    updates = {"full": "full", "sparse": sparse, "last-layer": "last", "bias-only": "bias"}
    arts = {k: tmt.convert(model, calib, update=u) for k, u in updates.items()}
    tflm = cmbuild.find_tflm(CPU)
    print(f"model: {title}, Cortex-M7 ({cmbuild.CPUS[CPU].board}), "
          f"QEMU -icount shift=0; sparse = {updates['sparse']}")

    # 1. our backward / update kernels per artifact
    elf = build_kernel_bench(tflm)
    calls = {k: kernel_calls(a, f"{k}:") for k, a in arts.items()}
    lines = [c.line() for cs in calls.values() for c in cs]
    lines += [c.line("conv_weight_update_dsp") for cs in calls.values() for c in cs
              if c.kind == "conv_weight_update"]
    kres = run_plan(elf, sorted(set(lines)), work)
    kernel_sum, kernel_sum_dsp = {}, {}
    for k, cs in calls.items():
        kernel_sum[k] = sum(kres[f"{c.label} {c.kind}"] for c in cs)
        kernel_sum_dsp[k] = sum(kres[f"{c.label} {_dsp_kind(c.kind)}"] for c in cs)
    print("\nbackward + update kernels per training step (our cores, called with each artifact's shapes)")
    print(f"{'update':<10} {'kernel calls':>12} {'MACs':>10} {'insns portable':>16} {'insns DSP':>12}")
    for k, cs in calls.items():
        print(f"{k:<10} {len(cs):>12} {sum(c.macs for c in cs):>10,} {_fmt(kernel_sum[k]):>16} "
              f"{_fmt(kernel_sum_dsp[k]):>12}")

    # 2. whole training steps in TFLM
    backward = {k: float(v) for k, v in kernel_sum.items()}
    whole = None
    if isinstance(tflm, str):
        print(f"\nwhole training step in TFLM: skipped ({tflm})")
    else:
        steps = {k: tflm_step(a, tflm, work / k, False, xs, ys) for k, a in arts.items()}
        builtins = "TFLM + CMSIS-NN's" if cmsis_nn_include(tflm) else "TFLM's reference"
        steps_dsp = {k: tflm_step(a, tflm, work / f"{k}_dsp", True, xs, ys) for k, a in arts.items()}
        print(f"\nwhole training step in TFLM on the Cortex-M7 (median of {len(xs)} steps; forward: our "
              f"TMT_CONV / TMT_FUSED_IRB and {builtins} kernels for the other builtins; our ops "
              "backward; step / forward / bwd+update: the default build, with the Cortex-M DSP "
              "paths; portable / fwd port.: every kernel core built with -DTMT_PORTABLE_ONLY; "
              "flash/RAM of the linked program from arm-none-eabi-size)")
        print(f"{'update':<10} {'step':>11} {'forward':>11} {'bwd+update':>11} {'portable':>11} "
              f"{'fwd port.':>11} {'arena B':>8} {'stack B':>8} {'flash B':>9} {'RAM B':>8} "
              f"{'model B':>8} {'ckpt save':>10}")
        for k in arts:
            s, d = steps[k], steps_dsp[k]
            print(f"{k:<10} {_fmt(d['step']):>11} {_fmt(d['forward']):>11} "
                  f"{_fmt(d['step'] - d['forward']):>11} {_fmt(s['step']):>11} "
                  f"{_fmt(s['forward']):>11} {d['arena']:>8,} {d['stack']:>8,} "
                  f"{d['size']['flash']:>9,} {d['size']['ram']:>8,} {d['model_bytes']:>8,} "
                  f"{_fmt(d['save']):>10}")
        print("(RAM = .data + .bss: the arena plus newlib/semihosting buffers and the test driver's "
              "step and checkpoint buffers; flash includes newlib's stdio; stack = the deepest stack "
              "of a training step, DSP build, from the top of the stack, main's frame included)")
        same = all(steps[k]["losses"] == steps_dsp[k]["losses"]
                   and steps[k]["checkpoint"] == steps_dsp[k]["checkpoint"] for k in arts)
        print(f"DSP build: losses and checkpoint bytes identical to the portable build: "
              f"{'yes' if same else 'NO'}")
        backward = {k: float(steps_dsp[k]["step"] - steps_dsp[k]["forward"]) for k in arts}
        whole = {k: float(steps_dsp[k]["step"]) for k in arts}

    # 3. cost per MAC, per layer of the full-update artifact
    full = calls["full"]
    rows = [c for c in full if c.kind != "bias_update"]
    if not isinstance(tflm, str):
        fwd_lines = []
        for c in rows:
            if "weight_update" in c.kind:
                fwd = "dw_forward" if c.kind.startswith("dw") else "conv_forward"
                fwd_lines.append(c.line(fwd))
        kres.update(run_plan(elf, fwd_lines, work))
    print("\ninstructions per MAC (full-update artifact; MACs = in-image multiply-accumulates)")
    print(f"{'layer tensor':<34} {'kernel':<22} {'MACs':>8} {'insn/MAC':>9} {'DSP':>7} {'TFLM fwd':>9}")
    for c in rows:
        ins = kres[f"{c.label} {c.kind}"]
        dsp = kres.get(f"{c.label} conv_weight_update_dsp") if c.kind == "conv_weight_update" else None
        fwd_kind = "dw_forward" if c.kind.startswith("dw") else "conv_forward"
        fwd = kres.get(f"{c.label} {fwd_kind}") if "weight_update" in c.kind else None
        fwd_macs = c.macs * (c.g[2] / c.n) if c.n else 0
        print(f"{c.label.split(':', 1)[1][-34:]:<34} {c.kind:<22} {c.macs:>8,} {ins / max(c.macs, 1):>9.1f} "
              f"{(f'{dsp / max(c.macs, 1):.1f}' if dsp else '-'):>7} "
              f"{(f'{fwd / max(fwd_macs, 1):.1f}' if fwd else '-'):>9}")
    if isinstance(tflm, str):
        print("(TFLM forward column: needs TFLM_DIR)")
    else:
        print("(TFLM fwd: TFLM's reference int8 kernels, whichever library TFLM_DIR has)")
    print("(weight-update rows include the per-weight requantization and stochastic rounding)")

    if whole:
        print("\nwhole training step (forward pass included), fewer instructions than full: "
              + ", ".join(f"{k} {whole['full'] / whole[k]:.1f}x" for k in arts if k != "full"))
    what = "TFLM step minus forward pass" if whole else "sum of our backward/update kernels"
    print(f"backward + update pass ({what}), fewer instructions than full: "
          + ", ".join(f"{k} {backward['full'] / backward[k]:.1f}x" for k in arts if k != "full"))
    short = "digits CNN" if args.model == "digits" else "MCUNet-like 64x64"
    last = (whole or backward, short, updates["sparse"])
    baseline, baseline_kernels = None, None

    # 4. the paper-scale model
    if args.paper_res:
        paper = paper_scale(args.paper_res, args.paper_steps, tflm, elf, work)
        last = (paper["whole"] or paper["backward"], paper["title"],
                f"the paper's {PAPER_BUDGET_KB} KB scheme")
        baseline = paper["tflm_kernels_full"]
        baseline_kernels = paper["baseline_kernels"]

    # the last line: the same-kernel ratio (our sparse vs our full update) per whole training step
    # when TFLM ran it, else per backward + update pass; on the paper-scale model when it ran, else
    # on --model; with the paper-scale model's TFLM steps also the paper's comparison (our sparse
    # step vs the full update with TFLM's kernels: the reference ones, or CMSIS-NN's when the
    # library holds them)
    ratios, on, scheme = last
    same = ratios["full"] / ratios["sparse"]
    kind = "whole training step in TFLM" if whole else "backward + update pass, our kernels"
    paper_text = (f"; {baseline / ratios['sparse']:.1f}x vs a full update with {baseline_kernels}, "
                  "the paper's comparison" if baseline else "")
    print(f"sparse vs full: {same:.1f}x fewer instructions ({kind}, same kernels{paper_text}; {on}, "
          f"sparse = {scheme}; Cortex-M7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
