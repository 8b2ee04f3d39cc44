"""Cortex-M4 / M7 under QEMU: the kernels, the DSP path, checkpoints and (with TFLM) whole training
steps give the host's results bit for bit.

Cross-compiled with Debian's arm-none-eabi-gcc (newlib, semihosting: `--specs=rdimon.specs
-nostartfiles` with tflm_ops/cortex_m/startup.c and mps2.ld) and run with
`qemu-system-arm -M mps2-an500` (Cortex-M7, soft float, as TFLM's cortex-m7 library) and
`-M mps2-an386` (Cortex-M4 with its FPU, hard float). Skipped, with the reason, when the tools are
absent (.ci/run installs them: gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm).

* golden: the host's golden driver (tflm_ops/tests/golden_test_main.cc) and tflm_ops/core on the
  target, on TMT_CM_CASES (default 150) numpy-reference cases per op (and per fp32 variant,
  `<op>_F32`: soft float on the M7, the FPU on the M4); its per-op report must equal
  the host build's, line for line, with 0 mismatches;
* DSP: tflm_ops/cortex_m/dsp_kernels (SMLAD weight gradient) equals the portable core on every
  case, on both CPUs, in fewer instructions; the requantization's SMMULR path equals TFLM's
  rounding (tflm_ops/tests/multiplier_test.cc on the target);
* checkpoints: the C++ core under QEMU writes the same bytes as tfmicro_train/checkpoint.py;
* TFLM (TFLM_DIR with the cortex-m7 library built): an artifact trains in TFLM on the Cortex-M7,
  every loss and checkpoint byte equal to HostSimulator's, and a reboot restores and continues;
  once with int8 and once with fp32 (float32-gradient) backward ops.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tflm_ops" / "cortex_m"))
sys.path.insert(0, str(ROOT / "tests" / "golden"))

import cmbuild  # noqa: E402

MISSING = cmbuild.missing_cross_tools()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"Cortex-M tests skipped: {MISSING}")

N_CASES = int(os.environ.get("TMT_CM_CASES", "150"))
N_DSP_CASES = int(os.environ.get("TMT_CM_DSP_CASES", "400"))
CPUS = ["cortex-m7", "cortex-m4"]
CORE = sorted((ROOT / "tflm_ops/core").glob("*.cc"))


def _build(name: str, cpu: str, sources: list[Path], kernels: list[Path], **kw) -> Path:
    try:
        return cmbuild.build_arm(name, cpu, sources, cmbuild.DRIVER_FLAGS, kernels, **kw)
    except cmbuild.BuildError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory):
    import golden_cases

    d = tmp_path_factory.mktemp("cm_golden")
    written = golden_cases.write_all(d, N_CASES, seed=11)
    # the forward fused block too: its DSP loops run only on the Cortex-M builds
    written.update(golden_cases.write_all(d, N_CASES, seed=11, ops=["TMT_FUSED_IRB"]))
    return d, written


@pytest.fixture(scope="module")
def host_golden_report(golden_dir):
    d, _ = golden_dir
    exe = cmbuild.build_host("golden_test", [ROOT / "tflm_ops/tests/golden_test_main.cc", *CORE])
    res = subprocess.run([str(exe), str(d)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
    return [ln for ln in res.stdout.splitlines() if ln.startswith("golden ") or "passed" in ln]


@pytest.mark.parametrize("cpu", CPUS)
def test_golden_cases_on_cortex_m(cpu, golden_dir, host_golden_report):
    d, written = golden_dir
    elf = _build("golden_test", cpu, [ROOT / "tflm_ops/tests/golden_test_main.cc"], CORE,
                 includes=[cmbuild.SHIM])
    # names relative to the golden directory: semihosting's command line is short (about 1 KB)
    files = sorted(p.name for p in d.glob("*.tmtg"))
    res = cmbuild.run_qemu(elf, cpu, files, timeout=600, cwd=str(d))
    report = [ln for ln in res.stdout.splitlines() if ln.startswith("golden ") or "passed" in ln]
    print(f"\n{cpu} ({cmbuild.CPUS[cpu].board}):\n" + "\n".join(report))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    for op, n in written.items():
        assert f"golden {op}: {n} cases, 0 mismatches" in report, op
    assert report == host_golden_report, "the Cortex-M report differs from the host's"


@pytest.mark.parametrize("cpu", CPUS)
def test_requantization_fast_path_bit_exact(cpu):
    """tflm_reference.h's MultiplyByQuantizedMultiplier on the target (its SMMULR paths: right
    shifts of accumulators under 2^30 in magnitude, left shifts whose result stays under 2^30)
    equals TFLM's two-step rounding on random and edge accumulators (at the left-shift bounds
    too), multipliers (negative ones too) and shifts; Requantize with Requant::fast (no checks)
    equals the checked path under WithFastPath's bound, which holds at its edges; so do
    RequantizeRun / RequantizeRuns with Requant::folded (the SMMLAR path) under its bound."""
    elf = _build("multiplier_test", cpu, [ROOT / "tflm_ops/tests/multiplier_test.cc"], [])
    res = cmbuild.run_qemu(elf, cpu, ["20000"], timeout=600)
    print(f"\n{cpu}: {res.stdout.strip()}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "requantize_test: 80000 checked, 0 mismatches (DSP path 1)" in res.stdout
    assert "fast_path_test: 20006 checked, 0 mismatches" in res.stdout
    assert "folded_path_test: 5000 runs, 63367 checked, 0 mismatches" in res.stdout


@pytest.mark.parametrize("cpu", CPUS)
def test_fused_residual_add_bit_exact(cpu):
    """fused_irb.cc's AddResidualRun (AddStage: the ADD's three multiplications by SMMULR and
    one rounding shift each) equals AddResidual (TFLM's reference ADD arithmetic) on every int8
    pair, for 400 random add.cc-style parameter sets."""
    elf = _build("fused_add_test", cpu, [ROOT / "tflm_ops/tests/fused_add_test.cc"],
                 [ROOT / "tflm_ops/core/training_ops.cc"])
    res = cmbuild.run_qemu(elf, cpu, [], timeout=600)
    print(f"\n{cpu}: {res.stdout.strip()}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "fused_add_test: 26214400 checked, 0 mismatches, 400 fast" in res.stdout


@pytest.mark.parametrize("cpu", CPUS)
def test_dsp_weight_gradient_bit_exact(cpu, tmp_path):
    import golden_cases

    golden_cases.write_all(tmp_path, N_DSP_CASES, seed=12, ops=["TMT_CONV_WEIGHT_UPDATE"])
    elf = _build("dsp_golden", cpu, [ROOT / "tflm_ops/cortex_m/dsp_golden_main.cc"],
                 [*CORE, ROOT / "tflm_ops/cortex_m/dsp_kernels.cc"])
    res = cmbuild.run_qemu(elf, cpu, [str(tmp_path / "TMT_CONV_WEIGHT_UPDATE.tmtg")], icount=True)
    print(f"\n{cpu}: {res.stdout.strip()}")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    m = re.search(r"(\d+) cases, (\d+) mismatches, portable insns (\d+), dsp insns (\d+), dsp (\d)",
                  res.stdout)
    assert m and int(m[1]) == N_DSP_CASES and int(m[2]) == 0
    assert m[5] == "1", "the DSP path was not compiled in (__ARM_FEATURE_DSP unset?)"
    assert int(m[4]) < int(m[3]), "the DSP path is not faster"


def test_checkpoint_core_on_cortex_m(tmp_path):
    from test_checkpoint import LAYOUT, _Cpp, check_cpp_matches_python

    from tfmicro_train import checkpoint as ck

    src = ROOT / "tflm_ops/checkpoint"
    elf = _build("checkpoint_tool", "cortex-m4", [src / "checkpoint_tool.cc"], [src / "checkpoint.cc"])
    layout = ck.Layout(LAYOUT.names + ("tmt/dw/weights",), LAYOUT.sizes + (13,))
    n = check_cpp_matches_python(_Cpp(elf, tmp_path, layout, "cortex-m4"), layout, 3, 6)
    print(f"checkpoint on Cortex-M4 == Python: {n} checks")


@pytest.mark.parametrize("backward", ["int8", "fp32"])
def test_tflm_training_step_on_cortex_m7(residual_model, calib, tmp_path, backward):
    """The whole training step in TFLM on the Cortex-M7: losses and checkpoints equal
    HostSimulator's; a reboot restores and continues (needs TFLM_DIR). Both backward modes (fp32:
    float32 gradients, here in the M7 library's soft float)."""
    from test_checkpoint import run_reboot_scenario, tflm_train_sources

    import tfmicro_train as tmt

    tflm = cmbuild.find_tflm("cortex-m7")
    if isinstance(tflm, str):
        pytest.skip(tflm)
    art = tmt.convert(residual_model, calib, update=tmt.SparseUpdate(2, {2: 0.5, 3: 1}),
                      backward=backward)
    try:
        elf = cmbuild.build_arm("tflm_train", "cortex-m7", [], cmbuild.DRIVER_FLAGS,
                                tflm_train_sources(), defines=["TMT_ARENA_BYTES=262144"],
                                libs=[str(tflm.lib)], extra_flags=list(tflm.flags))
    except cmbuild.BuildError as e:
        pytest.fail(str(e))

    def run(model, steps, region, restore):
        res = cmbuild.run_qemu(elf, "cortex-m7", [str(model), str(steps), str(region),
                                                  *(["restore"] if restore else [])],
                               icount=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
        return res.stdout

    out = run_reboot_scenario(run, lambda: tmt.HostSimulator(art, learning_rate=0.05), art, tmp_path)
    r = out["runs"][0]
    print(f"\nCortex-M7 TFLM ({backward} backward): arena {r['arena']} B, "
          f"forward {r['inference_insns']} insns, training steps {[s['insns'] for s in r['steps']]} insns")
    # the per-operator profile of the last step (TFLM's profiler interface): every operator type
    # of the step, its instructions within the step's
    ops, last = r.get("ops", {}), r["steps"][-1]["insns"]
    total = sum(insns for _, insns in ops.values())
    print(f"profile: {len(ops)} operator types, {total} of the step's {last} insns")
    assert {"TMT_CONV_WEIGHT_UPDATE", "TMT_BIAS_UPDATE", "TMT_SOFTMAX_CE_GRAD"} <= set(ops)
    assert all(calls >= 1 for calls, _ in ops.values())
    assert 0.9 * last <= total <= last
    # the stack high-water mark of the steps (painted stack, tflm_train_main.cc): printed, and
    # within what a microcontroller's stack holds (the kernels keep at most a few hundred bytes of
    # tap pointers and patches on it)
    print(f"stack: {r['stack']} B")
    assert 512 <= r["stack"] <= 8192


def test_plan_predicts_the_cortex_m7_arena(residual_model, calib, tmp_path):
    """memory_report().peak_sram_bytes is the arena TFLM needs on the Cortex-M7 (32-bit
    bookkeeping): AllocateTensors() succeeds in exactly that arena, and the smallest arena in
    which it succeeds (bisection) is at most 1 KB + 2% smaller (needs TFLM_DIR). For a residual
    CNN (int8 and fp32 backward, sparse and full) and frozen fused blocks."""
    import numpy as np
    from test_checkpoint import tflm_train_sources
    from test_fuse import irb_net

    import tfmicro_train as tmt

    tflm = cmbuild.find_tflm("cortex-m7")
    if isinstance(tflm, str):
        pytest.skip(tflm)
    rng = np.random.default_rng(5)
    calib16 = [rng.random((1, 16, 16, 3)).astype(np.float32) for _ in range(16)]
    sparse = tmt.SparseUpdate(2, {2: 0.5, 3: 1})
    arts = {
        "sparse int8": tmt.convert(residual_model, calib, update=sparse),
        "sparse fp32": tmt.convert(residual_model, calib, update=sparse, backward="fp32"),
        "full int8": tmt.convert(residual_model, calib, update="full"),
        "fused, last": tmt.convert(irb_net(), calib16, update="last", fuse=True),
    }
    lines = []
    for name, art in arts.items():
        peak = art.memory_report().peak_sram_bytes
        work = tmp_path / name.replace(" ", "_").replace(",", "")
        work.mkdir()
        art.export_c(work / "model_data.h")
        try:
            elf = cmbuild.build_arm(
                "tflm_train", "cortex-m7", [], cmbuild.DRIVER_FLAGS,
                [*tflm_train_sources(), work / "model_data.cpp"],
                defines=["TMT_EMBEDDED_MODEL=g_model", f"TMT_ARENA_BYTES={peak}",
                         "TMT_STEPS_MAX_BYTES=12", "TMT_REGION_MAX_BYTES=65536"],
                libs=[str(tflm.lib)], extra_flags=list(tflm.flags))
        except cmbuild.BuildError as e:
            pytest.fail(str(e))

        def allocates(arena: int, elf=elf, region=work / "region.bin") -> dict | None:
            res = cmbuild.run_qemu(elf, "cortex-m7", ["-", "-", str(region), f"arena={arena}"],
                                   timeout=300)
            out = cmbuild.parse_train_output(res.stdout)
            return out if res.returncode == 0 and out.get("done") else None

        out = allocates(peak)
        assert out is not None, f"{name}: AllocateTensors() failed in the predicted {peak}-byte arena"
        lo, hi = out["arena"] - 1, peak  # fails at lo (below what TFLM uses), works at hi
        while hi - lo > 16:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if allocates(mid) else (mid, hi)
        lines.append(f"{name}: plan {peak} B; smallest arena that allocates {hi} B (+-16), "
                     f"arena_used_bytes() {out['arena']} B")
        assert hi <= peak <= hi + 1024 + hi // 50, lines[-1]
        if name in ("sparse int8", "fused, last"):  # the bookkeeping by kind
            _check_bookkeeping(name, art, work, tflm, tflm_train_sources())
    print("\n" + "\n".join(lines))


def _check_bookkeeping(name, art, work, tflm, sources):
    """memory_report().bookkeeping against TFLM's RecordingMicroInterpreter on the M7: the eval
    tensors and nodes exactly (but for the 16-byte rounding), the op data (TFLM's persistent
    buffers) as an upper bound within 64 bytes + 10%."""
    rep = art.memory_report()
    try:
        elf = cmbuild.build_arm(
            "tflm_train_rec", "cortex-m7", [], cmbuild.DRIVER_FLAGS,
            [*sources, work / "model_data.cpp"],
            defines=["TMT_EMBEDDED_MODEL=g_model", "TMT_ARENA_BYTES=262144", "TMT_STEPS_MAX_BYTES=12",
                     "TMT_REGION_MAX_BYTES=65536", "TMT_RECORD_ALLOCATIONS"],
            libs=[str(tflm.lib)], extra_flags=list(tflm.flags))
    except cmbuild.BuildError as e:
        pytest.fail(str(e))
    res = cmbuild.run_qemu(elf, "cortex-m7", ["-", "-", str(work / "region.bin")], timeout=300)
    allocs = cmbuild.parse_train_output(res.stdout).get("allocs", {})
    assert res.returncode == 0 and allocs, res.stdout[-2000:]
    got = {k: allocs[k][0] for k in ("eval_tensors", "nodes", "persistent_buffers")}
    want = rep.bookkeeping
    print(f"{name}: TFLM {got}; plan {want}")
    for k in ("eval_tensors", "nodes"):  # (the plan's counts rounded up to 16 bytes)
        assert 0 <= want[k] - got[k] < 16, k
    assert got["persistent_buffers"] <= want["op_data"] + want["interpreter"]
    assert want["op_data"] <= got["persistent_buffers"] + 64 + got["persistent_buffers"] // 10
