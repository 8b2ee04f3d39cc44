"""Maintain the Arduino library (Arduino ignores this `extras/` folder).

    python3 arduino/extras/make_library.py sync      # copy the C++ sources into arduino/src/
    python3 arduino/extras/make_library.py check     # exit 1 if arduino/src/ is out of date
    python3 arduino/extras/make_library.py example   # regenerate examples/FineTuneDigits data

An installed Arduino library must be self-contained, so arduino/src/tflm_ops/ holds copies of the
repository's tflm_ops/ sources (same relative paths, so their #includes resolve against src/).
tests/test_codegen.py fails when they differ from the originals.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ARDUINO = Path(__file__).resolve().parents[1]
ROOT = ARDUINO.parent
EXAMPLE = ARDUINO / "examples" / "FineTuneDigits"

# Sources copied into the library: the kernel cores, the TFLM glue, checkpoints, the DSP paths.
SOURCE_GLOBS = ["tflm_ops/core/*.h", "tflm_ops/core/*.cc", "tflm_ops/tflm/training_ops.h",
                "tflm_ops/tflm/training_ops.cc", "tflm_ops/tflm/conv_op.cc", "tflm_ops/tflm/options.h",
                "tflm_ops/checkpoint/checkpoint.h",
                "tflm_ops/checkpoint/checkpoint.cc", "tflm_ops/checkpoint/tflm_checkpoint.h",
                "tflm_ops/checkpoint/tflm_checkpoint.cc", "tflm_ops/cortex_m/dsp_kernels.h",
                "tflm_ops/cortex_m/dsp_kernels.cc"]

# The example: the demo's digits CNN seen through a camera mounted sideways (rotated digits).
N_TRAIN = 150
N_TEST = 100
EPOCHS = 3
LEARNING_RATE = 0.05


def library_sources() -> list[Path]:
    """Repository files (relative to the root) the library holds copies of."""
    out = []
    for pattern in SOURCE_GLOBS:
        out += sorted(p.relative_to(ROOT) for p in ROOT.glob(pattern))
    return out


def out_of_date() -> list[str]:
    """Library files missing, differing from the repository, or no longer in it."""
    bad = []
    wanted = set()
    for rel in library_sources():
        dst = ARDUINO / "src" / rel
        wanted.add(dst)
        if not dst.exists() or dst.read_bytes() != (ROOT / rel).read_bytes():
            bad.append(str(rel))
    for p in (ARDUINO / "src" / "tflm_ops").rglob("*"):
        if p.is_file() and p not in wanted:
            bad.append(f"{p.relative_to(ARDUINO / 'src')} (not in the repository)")
    return bad


def sync() -> list[str]:
    """Copy the sources into arduino/src/; returns what changed."""
    changed = out_of_date()
    keep = set()
    for rel in library_sources():
        dst = ARDUINO / "src" / rel
        keep.add(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, dst)
    for p in (ARDUINO / "src" / "tflm_ops").rglob("*"):
        if p.is_file() and p not in keep:
            p.unlink()
    return changed


def example_training(sim, xs, ys, epochs: int = EPOCHS, lr: float = LEARNING_RATE) -> list[float]:
    """What the sketch does, on the HostSimulator: samples in order, `epochs` times."""
    losses = []
    for _ in range(epochs):
        for x, y in zip(xs, ys):
            losses.append(sim.train_step(x, int(y), lr))
    return losses


def make_example(pretrain_epochs: int = 20) -> dict:
    """Pretrain the demo CNN on upright digits, convert (the demo's sparse update), and write
    model_data.h/.cpp and samples.h/.cpp (rotated digits) for the sketch."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    import tfmicro_train as tmt
    from tfmicro_train.codegen import export_arrays
    from tfmicro_train.demo import digits_data, pretrain, rotate, small_cnn

    (xp, yp), (xd, yd), (xt, yt) = digits_data()
    model = pretrain(small_cnn(), xp, yp, epochs=pretrain_epochs)
    art = tmt.convert(model, [xp[i:i + 1] for i in range(100)],
                      update=tmt.SparseUpdate(bias_last_k=5, weight_ratios={3: 1, 4: 1}))
    sim = tmt.HostSimulator(art)
    train_x = np.stack([sim.quantize_input(x) for x in rotate(xd[:N_TRAIN])])
    test_x = np.stack([sim.quantize_input(x) for x in rotate(xt[:N_TEST])])
    train_y, test_y = yd[:N_TRAIN].astype(np.int32), yt[:N_TEST].astype(np.int32)
    before = sim.evaluate(test_x, test_y)
    example_training(sim, train_x, train_y)
    after = sim.evaluate(test_x, test_y)
    plan = art.memory_report()
    from tfmicro_train.checkpoint import simulator_layout

    region = simulator_layout(sim)[0].region_bytes()
    arena = (plan.peak_sram_bytes * 5 // 4 + 2048 + 15) & ~15  # the plan's estimate + margin
    comment = (f"Rotated digits (the demo's sideways camera): {N_TRAIN} labelled training samples, "
               f"{N_TEST} test samples.\nHostSimulator: accuracy {before:.1%} before, {after:.1%} "
               f"after {EPOCHS} epochs at lr {LEARNING_RATE}.")
    art.export_c(EXAMPLE / "model_data.h")
    export_arrays({"kTrainImages": train_x.reshape(N_TRAIN, -1), "kTrainLabels": train_y,
                   "kTestImages": test_x.reshape(N_TEST, -1), "kTestLabels": test_y},
                  EXAMPLE / "samples.h",
                  defines={"kNumTrain": N_TRAIN, "kNumTest": N_TEST, "kImageBytes": 64,
                           "kEpochs": EPOCHS, "kArenaBytes": arena,
                           "kCheckpointBytes": region},
                  comment=comment)
    print(comment)
    return {"before": before, "after": after}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["sync", "check", "example"])
    args = ap.parse_args(argv)
    if args.command == "sync":
        changed = sync()
        print("\n".join(f"updated {c}" for c in changed) or "arduino/src is up to date")
    elif args.command == "check":
        bad = out_of_date()
        if bad:
            print("arduino/src is out of date (run `python3 arduino/extras/make_library.py sync`):\n  "
                  + "\n  ".join(bad))
            return 1
        print("arduino/src is up to date")
    else:
        make_example()
    return 0


if __name__ == "__main__":
    sys.exit(main())
