"""Command line: `python -m tfmicro_train demo`."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tfmicro-train` console script."""
    parser = argparse.ArgumentParser(prog="tfmicro-train")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="pretrain on digits, convert, fine-tune on the simulated device")
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--lr", type=float, default=0.05)
    demo.add_argument("--update", default="default",
                      help="full | last | bias | default (a sparse update)")
    demo.add_argument("--out", default="digits_train.tflite", help="where to save the artifact")
    args = parser.parse_args(argv)
    from .demo import run_demo

    result = run_demo(args.epochs, args.update, args.lr, args.out)
    print(f"done in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
