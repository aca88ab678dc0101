"""`hadis train-judge --real DIR --generated DIR --out FILE`: train the judge's
real-vs-generated head on the frozen open_clip image encoder (see
shared/backends/judge_training.py) and print a JSON report. The judge service
loads the file with HADIS_JUDGE_HEAD_PATH; it must run the same encoder
(architecture, and seed or checkpoint) the head was trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson


def run_train_judge(args: argparse.Namespace) -> int:
    from shared.backends.judge_training import train_judge_head

    report = train_judge_head(args.real, args.generated, args.out, arch=args.arch, checkpoint=args.checkpoint,
                              seed=args.seed, device=args.device, epochs=args.epochs, batch_size=args.batch_size,
                              holdout=args.holdout)
    sys.stdout.write(orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def holdout_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"need a fraction in [0, 1), got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train-judge", help="train the judge's real-vs-generated head from two folders",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, required=True, help="folder of real images (searched recursively)")
    parser.add_argument("--generated", type=Path, required=True, help="folder of generated images")
    parser.add_argument("--out", type=Path, required=True, help="the head, a .safetensors file")
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture of the frozen encoder")
    parser.add_argument("--checkpoint", help="a local open_clip checkpoint (default: random weights from --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random encoder and of the head")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=300, help="full-batch training steps of the head")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    parser.add_argument("--holdout", type=holdout_fraction, default=0.0, help="share of each class held out")
    parser.set_defaults(handler=run_train_judge)
