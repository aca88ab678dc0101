"""`hadis router-eval` on a subset, and the pieces of its measurement."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest

from shared.commands import router_eval
from shared.commands.router_eval import evaluate, fold_indices, precision_at

ROW = re.compile(r"^\s+([012])\s+(paper|learned)\s+(\d\.\d{3}) ± (\d\.\d{3})((?:\s+\d\.\d{3}){3})$")
LAST = re.compile(r"^router_auc paper=(\d\.\d{4}) learned=(\d\.\d{4})$")


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    router_eval.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_quick_run_prints_the_table_and_the_last_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_command(["router-eval", "--prompts", "500", "--folds", "2", "--cache-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    rows = [ROW.match(line) for line in lines if ROW.match(line)]
    assert [(m.group(1), m.group(2)) for m in rows] == [(str(k), name) for k in (0, 1, 2)
                                                        for name in ("paper", "learned")]
    for match in rows:
        assert 0.0 <= float(match.group(3)) <= 1.0
        assert all(0.0 <= float(p) <= 1.0 for p in match.group(5).split())
    last = LAST.match(lines[-1])
    assert last, lines[-1]
    paper, learned = float(last.group(1)), float(last.group(2))
    aucs = {name: [float(m.group(3)) for m in rows if m.group(2) == name] for name in ("paper", "learned")}
    assert paper == pytest.approx(np.mean(aucs["paper"]), abs=1e-3)
    assert learned == pytest.approx(np.mean(aucs["learned"]), abs=1e-3)
    assert list(tmp_path.glob("*.npy")), "the embeddings are cached"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        run_command(["router-eval", "--folds", "1"])
    with pytest.raises(SystemExit):
        run_command(["router-eval", "--d", "1.0"])


def test_folds_partition_the_prompts() -> None:
    folds = fold_indices(103, 5, seed=0)
    assert len(folds) == 5
    assert sorted(np.concatenate(folds).tolist()) == list(range(103))
    assert {len(f) for f in folds} <= {20, 21}


def test_precision_at_r() -> None:
    labels = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=float)
    scores = np.arange(10.0)[::-1]  # prompt 0 scores highest
    assert precision_at(labels, scores, 0.1) == 1.0
    assert precision_at(labels, scores, 0.3) == pytest.approx(2 / 3)
    assert precision_at(labels, scores, 1.0) == pytest.approx(0.3)


def test_a_learnable_signal_is_found_and_a_useless_score_is_not() -> None:
    # Judge scores that a linear function of the embedding predicts, and a "paper" score of noise.
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(600, 8))
    judge = np.repeat((embeddings @ rng.normal(size=8) + 0.3 * rng.normal(size=600))[:, None], 4, axis=1)
    results = evaluate(embeddings, rng.normal(size=600), judge, folds=3)
    auc = {(r.model, r.router): r.auc for r in results}
    for model in (0, 1, 2):
        assert auc[(model, "learned")] > 0.9
        assert abs(auc[(model, "paper")] - 0.5) < 0.1
    learned = next(r for r in results if r.router == "learned")
    assert np.mean(learned.precision_at["0.1"]) > 0.9  # the top 10 % are nearly all escalations


def test_defaults_agree_with_the_learned_router() -> None:
    from shared.policies import learned_router

    assert router_eval.DEFAULT_D == learned_router.LABEL_D
    assert router_eval.DEFAULT_L2 == learned_router.L2
    assert router_eval.LIGHT_INDICES == learned_router.LIGHT_INDICES
