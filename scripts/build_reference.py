"""Copy the reference prompts, router features and per-prompt judge scores from the
team's data folder into profiles/reference/ (run once; the outputs are committed).

Sources (see ../shared/data/README.md and diffserve/SOURCES.md):
- diffserve-2/traces/text_imagenet1k_hr_5k.txt                    -> prompts.txt
- diffserve-2/router/prompt_features.csv                           -> prompt_features.csv
- diffserve-2/discriminator/confidence_scores/scores_model_{0..3}  -> judge_scores.csv
  (per-prompt score = mean P(real) of the prompt's 4 images)
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "diffserve")
    parser.add_argument("--out", type=Path, default=REPO / "profiles" / "reference")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.data / "diffserve-2"
    shutil.copyfile(base / "traces" / "text_imagenet1k_hr_5k.txt", args.out / "prompts.txt")
    shutil.copyfile(base / "router" / "prompt_features.csv", args.out / "prompt_features.csv")
    columns = []
    for model_index in range(4):
        rows = np.loadtxt(base / "discriminator" / "confidence_scores" / f"scores_model_{model_index}.txt")
        columns.append(rows[:, 1].reshape(-1, 4).mean(axis=1))
    with open(args.out / "judge_scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt_id"] + [f"model_{i}" for i in range(4)])
        for prompt_id, scores in enumerate(zip(*columns, strict=False)):
            writer.writerow([prompt_id] + [f"{s:.6f}" for s in scores])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
