"""`hadis router-eval`: how well each router predicts the judge's verdict, by cross-validation.

For each light model of the paper (0, 1, 2) the label of a prompt is "the judge would
escalate its light image at d" (its published judge score is in the lowest d of that
model's scores, d = 0.3 by default). The prompts are split into k folds; on each fold
the learned router is trained on the other folds and both routers score the held-out
prompts. Reported per router and model, as the mean (and spread) over folds:

- ROC AUC of the router score for the label (0.5 = no better than chance);
- precision at r: the fraction of the top-r prompts by router score that the judge
  would escalate (a random split gets the base rate, about d).

The paper's score needs no training: it is the published features, z-scored with the
reference statistics and weighted. The last line is `router_auc paper=<x> learned=<y>`,
means over the light models.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from shared.schemas import Strict

# The policies (scipy, the featurizer's word lists) are imported where used: `hadis` builds
# every subcommand's parser at start-up, and its other commands should not pay for them.
LIGHT_INDICES = (0, 1, 2)
DEFAULT_D = 0.3
DEFAULT_L2 = 1.0
PRECISION_AT = (0.1, 0.3, 0.5)
ROUTERS = ("paper", "learned")


class RouterScore(Strict):
    model: int
    router: str
    auc_folds: list[float]
    precision_at: dict[str, list[float]] = Field(description="r -> precision of the top r on each fold.")

    @property
    def auc(self) -> float:
        return float(np.mean(self.auc_folds))


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """A shuffled split of range(n) into `folds` parts of near-equal size."""
    return np.array_split(np.random.default_rng(seed).permutation(n), folds)


def precision_at(labels: np.ndarray, scores: np.ndarray, r: float) -> float:
    """Fraction of the judge's escalations among the top-r prompts by score."""
    top = max(1, math.ceil(r * len(scores)))
    return float(labels[np.argsort(-scores, kind="stable")[:top]].mean())


def evaluate(embeddings: np.ndarray, paper_scores: np.ndarray, judge_scores: np.ndarray, *, folds: int = 5,
             d: float = DEFAULT_D, l2: float = DEFAULT_L2, seed: int = 0) -> list[RouterScore]:
    """Per light model and router, the cross-validated AUC and precision at r."""
    from shared.policies.learned_router import escalation_labels, fit_logistic, roc_auc

    splits = fold_indices(len(paper_scores), folds, seed)
    results: list[RouterScore] = []
    for model in LIGHT_INDICES:
        labels = escalation_labels(judge_scores[:, model], d)
        auc: dict[str, list[float]] = {name: [] for name in ROUTERS}
        precision: dict[str, dict[str, list[float]]] = {name: {str(r): [] for r in PRECISION_AT} for name in ROUTERS}
        for held in splits:
            train = np.setdiff1d(np.arange(len(labels)), held)
            weights, bias = fit_logistic(embeddings[train], labels[train], l2)
            fold_scores = {"paper": paper_scores[held], "learned": embeddings[held] @ weights + bias}
            for name, scores in fold_scores.items():
                auc[name].append(roc_auc(labels[held], scores))
                for r in PRECISION_AT:
                    precision[name][str(r)].append(precision_at(labels[held], scores, r))
        results.extend(RouterScore(model=model, router=name, auc_folds=auc[name], precision_at=precision[name])
                       for name in ROUTERS)
    return results


def format_table(results: list[RouterScore], base_rates: dict[int, float]) -> list[str]:
    header = f"{'model':>5}  {'router':<8} {'ROC AUC':>15}  " + "  ".join(f"{f'P@r={r}':>8}" for r in PRECISION_AT)
    lines = [header, "-" * len(header)]
    for result in results:
        spread = float(np.std(result.auc_folds))
        cells = "  ".join(f"{np.mean(result.precision_at[str(r)]):>8.3f}" for r in PRECISION_AT)
        lines.append(f"{result.model:>5}  {result.router:<8} {result.auc:>7.3f} ± {spread:.3f}  {cells}")
    lines.append("")
    lines.append("P@r = share of the top-r prompts the judge would escalate; a random split gets the base rate: "
                 + ", ".join(f"model {m} {rate:.3f}" for m, rate in base_rates.items()))
    return lines


def summary_line(results: list[RouterScore]) -> str:
    means = {name: np.mean([r.auc for r in results if r.router == name]) for name in ROUTERS}
    return f"router_auc paper={means['paper']:.4f} learned={means['learned']:.4f}"


def run_eval(args: argparse.Namespace) -> int:
    from shared import reference
    from shared.backends.text_embedding import DEFAULT_CACHE_DIR, cached_embeddings
    from shared.policies.learned_router import escalation_labels
    from shared.policies.router import default_router

    started = time.perf_counter()
    count = len(reference.prompts()) if args.prompts is None else min(args.prompts, len(reference.prompts()))
    prompts = reference.prompts()[:count]
    paper_scores = default_router().reference_scores[:count]
    judge_scores = reference.judge_scores()[:count]
    embeddings = cached_embeddings(prompts, args.cache_dir or DEFAULT_CACHE_DIR)
    embedded = time.perf_counter()
    results = evaluate(embeddings, paper_scores, judge_scores, folds=args.folds, d=args.d, l2=args.l2, seed=args.seed)
    base_rates = {m: float(escalation_labels(judge_scores[:, m], args.d).mean()) for m in LIGHT_INDICES}
    print(f"router-eval: {count} reference prompts, {args.folds}-fold cross-validation by prompt, "
          f"label = judge escalates at d = {args.d}")
    for line in format_table(results, base_rates):
        print(line)
    print(f"time: embeddings {embedded - started:.1f} s, cross-validation {time.perf_counter() - embedded:.1f} s")
    print(summary_line(results))
    return 0


def at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"need at least 2, got {value}")
    return value


def open_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"need a fraction strictly between 0 and 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("router-eval", help="cross-validated quality of the paper's and the learned router",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=at_least_two, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--prompts", type=at_least_two, help="the first N reference prompts only (default: all)")
    parser.add_argument("--d", type=open_fraction, default=DEFAULT_D, help="judge fraction of the label (default 0.3)")
    parser.add_argument("--l2", type=float, default=DEFAULT_L2, help="L2 penalty of the classifier (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold split")
    parser.add_argument("--cache-dir", type=Path, help="where prompt embeddings are cached (~/.cache/hadis/embeddings)")
    parser.set_defaults(handler=run_eval)
