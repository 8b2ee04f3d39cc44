"""Write the golden files of every TMT_* op: python3 tests/golden/make_golden.py OUT_DIR [-n N] [--seed S].

Then: TMT_GOLDEN_DIR=OUT_DIR bazel test //tflm_ops/tests:golden_test
With --counter0 the same files also drive the TFLM glue replay:
      TFLM_DIR=... TMT_GOLDEN_DIR=OUT_DIR bazel test //tflm_ops/tflm:glue_test
(or run the compiled golden_test with OUT_DIR as its argument). One file per op, and per fp32-backward
variant (`<op>_F32.tmtg`). Do not commit the files.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import golden_cases  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("-n", "--cases", type=int, default=1000, help="cases per op (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--op", action="append", help="only these ops (repeatable)")
    ap.add_argument("--counter0", action="store_true",
                    help="update ops use counter 0 (for the TFLM glue test, which starts fresh ops)")
    args = ap.parse_args(argv)
    counts = golden_cases.write_all(args.out_dir, args.cases, args.seed, args.op, args.counter0)
    for op, n in counts.items():
        print(f"{op}: {n} cases")
    print(f"wrote {sum(counts.values())} cases to {os.path.abspath(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
