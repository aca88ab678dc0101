"""The 5,000 reference prompts with their published router features and judge scores
(profiles/reference/, built by scripts/build_reference.py from the team's data)."""

from __future__ import annotations

import csv
from functools import lru_cache

import numpy as np

from shared.profiles import PROFILES_DIR

REFERENCE_DIR = PROFILES_DIR / "reference"
FEATURE_NAMES = (
    "prompt_length",
    "token_rarity",
    "num_objects",
    "abstractness",
    "attribute_density",
    "spatial_relations",
    "action_verbs",
    "named_entities",
)


@lru_cache(maxsize=1)
def prompts() -> tuple[str, ...]:
    """Prompt id i is line i of the reference file."""
    return tuple((REFERENCE_DIR / "prompts.txt").read_text(encoding="utf-8").splitlines())


@lru_cache(maxsize=1)
def _ids_by_text() -> dict[str, int]:
    ids: dict[str, int] = {}
    for prompt_id, text in enumerate(prompts()):
        ids.setdefault(text, prompt_id)
    return ids


def prompt_id(text: str) -> int | None:
    """The reference id of a prompt, or None for a prompt outside the set."""
    return _ids_by_text().get(text)


@lru_cache(maxsize=1)
def features() -> np.ndarray:
    """(5000, 8) array of the published features, in FEATURE_NAMES order."""
    with open(REFERENCE_DIR / "prompt_features.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([[float(row[name]) for name in FEATURE_NAMES] for row in rows])


@lru_cache(maxsize=1)
def judge_scores() -> np.ndarray:
    """(5000, 4) array: per-prompt mean P(real) of each reference model's images."""
    data = np.loadtxt(REFERENCE_DIR / "judge_scores.csv", delimiter=",", skiprows=1)
    return data[:, 1:]
