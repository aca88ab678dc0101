"""How closely shared.policies.featurizer reproduces the published router features.

For the 5,000 reference prompts: per feature, the Pearson and Spearman correlation
and the exact-match rate between our features and the published ones, and the
Spearman correlation of the router scores built from each (same z-scoring and
weights). The word lists were tuned by reading even-numbered prompts, so the
odd-numbered half is reported separately as held out.

    .venv/bin/python scripts/featurizer_fidelity.py [--markdown]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import reference
from shared.policies.featurizer import featurize_many
from shared.policies.router import RuleRouter


def correlations(ours: np.ndarray, published: np.ndarray) -> tuple[float, float, float]:
    return (
        float(pearsonr(ours, published)[0]),
        float(spearmanr(ours, published)[0]),
        float(np.mean(ours == published)),
    )


Row = tuple[str, float, float, float, float]


def table_rows(ours: np.ndarray, published: np.ndarray, router: RuleRouter) -> list[Row]:
    held_out = np.arange(1, len(published), 2)
    rows = []
    for j, name in enumerate(reference.FEATURE_NAMES):
        pearson, spearman, exact = correlations(ours[:, j], published[:, j])
        held = float(spearmanr(ours[held_out, j], published[held_out, j])[0])
        rows.append((name, pearson, spearman, held, exact))
    score_ours = router.score_features(ours)
    score_published = router.score_features(published)
    pearson, spearman, _ = correlations(score_ours, score_published)
    held = float(spearmanr(score_ours[held_out], score_published[held_out])[0])
    rows.append(("router score", pearson, spearman, held, float("nan")))
    return rows


def print_table(rows: list[Row], markdown: bool) -> None:
    header = ("feature", "Pearson", "Spearman", "Spearman (held-out half)", "exact match")
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
    else:
        print(f"{header[0]:<18} {header[1]:>8} {header[2]:>9} {'held-out':>9} {'exact':>7}")
    for name, pearson, spearman, held, exact in rows:
        exact_text = "" if np.isnan(exact) else f"{exact:.3f}"
        if markdown:
            print(f"| {name} | {pearson:.3f} | {spearman:.3f} | {held:.3f} | {exact_text} |")
        else:
            print(f"{name:<18} {pearson:>8.3f} {spearman:>9.3f} {held:>9.3f} {exact_text:>7}")


def top_fraction_agreement(router: RuleRouter, ours: np.ndarray, r: float = 0.3) -> float:
    """Share of the published top-r prompts that our scores also put in the top r."""
    k = int(round(r * len(ours)))
    top_published = set(np.argsort(-router.reference_scores, kind="stable")[:k])
    top_ours = set(np.argsort(-router.score_features(ours), kind="stable")[:k])
    return len(top_published & top_ours) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    published = reference.features()
    ours = featurize_many(reference.prompts())
    router = RuleRouter()
    print_table(table_rows(ours, published, router), args.markdown)
    print(f"\ntop-30% agreement (published vs ours): {top_fraction_agreement(router, ours):.3f}")


if __name__ == "__main__":
    main()
