"""Training the judge's head end to end on a tiny set of images made here."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from PIL import Image

from shared.backends import make_scorer
from shared.backends.base import ScoreInput
from shared.backends.clip_judge import ClipJudge
from shared.backends.judge_training import holdout_split, image_paths
from shared.commands import train_judge
from shared.policies.learned_router import roc_auc
from shared.profiles import load_profile

SIDE = 64


def gradient(rng: np.random.Generator) -> Image.Image:
    ramp = np.linspace(0.0, 1.0, SIDE)
    red, green, blue = rng.uniform(64, 255, 3)
    pixels = np.stack([np.outer(np.ones(SIDE), ramp) * red, np.outer(ramp, np.ones(SIDE)) * green,
                       np.full((SIDE, SIDE), blue)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def noise(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))


def make_folders(root: Path, per_class: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    real, generated = root / "real", root / "generated" / "nested"
    real.mkdir()
    generated.mkdir(parents=True)
    for i in range(per_class):
        gradient(rng).save(real / f"{i}.png")
        noise(rng).save(generated / f"{i}.jpg", quality=95)
    (real / "notes.txt").write_text("not an image")
    return real, root / "generated"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_folders(tmp_path_factory.mktemp("images"), per_class=8)


def score_folder(judge: ClipJudge, folder: Path) -> list[float]:
    model = load_profile("tiny-cpu").model("tiny-sd")
    images = [Image.open(path) for path in image_paths(folder)]
    return judge.score([ScoreInput(f"job-{i}", "a picture", image, model) for i, image in enumerate(images)])


def test_train_judge_command_separates_the_training_images(folders, tmp_path: Path, capsys) -> None:
    real, generated = folders
    out = tmp_path / "head.safetensors"
    parser = argparse.ArgumentParser()
    train_judge.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train-judge", "--real", str(real), "--generated", str(generated), "--out", str(out),
                              "--epochs", "200"])
    assert args.handler(args) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["real_images"] == 8 and report["generated_images"] == 8  # the .txt is skipped
    assert report["encoder"] == "open_clip ViT-B-32 random seed 0"
    assert report["train_accuracy"] >= 0.75 and report["train_auc"] > 0.75
    assert report["mean_p_real"]["real"] > report["mean_p_real"]["generated"]

    # The file loads into the judge service's scorer and separates the images there too.
    judge = make_scorer("clip", head_path=str(out))
    real_scores, generated_scores = score_folder(judge, real), score_folder(judge, generated)
    assert all(0.0 <= s <= 1.0 for s in real_scores + generated_scores)
    labels = [1] * len(real_scores) + [0] * len(generated_scores)
    assert roc_auc(labels, real_scores + generated_scores) > 0.75
    assert np.mean(real_scores) > np.mean(generated_scores)


def test_a_head_is_refused_beside_another_encoder(tmp_path: Path, capsys) -> None:
    real, generated = make_folders(tmp_path, per_class=4)
    out = tmp_path / "head.safetensors"
    parser = argparse.ArgumentParser()
    train_judge.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train-judge", "--real", str(real), "--generated", str(generated), "--out", str(out),
                              "--epochs", "5", "--seed", "3", "--holdout", "0.25"])
    args.handler(args)
    report = orjson.loads(capsys.readouterr().out)
    assert report["holdout_images"] == 2 and report["holdout_accuracy"] is not None
    assert ClipJudge(head_path=str(out), seed=3).score([]) == []
    with pytest.raises(ValueError, match="random seed 3"):
        ClipJudge(head_path=str(out), seed=0)


def test_image_paths_needs_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images"):
        image_paths(tmp_path)


def test_holdout_split_keeps_both_classes_in_training() -> None:
    labels = torch.tensor([1] * 10 + [0] * 3)
    train, held = holdout_split(labels, 0.9, seed=0)
    assert sorted(train.tolist() + held.tolist()) == list(range(13))
    assert set(labels[train].tolist()) == {0, 1}
    assert holdout_split(labels, 0.0, seed=0)[1].numel() == 0
