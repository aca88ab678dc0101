"""The paper router's 8 prompt features, computed without spaCy.

The published features (profiles/reference/prompt_features.csv) came from the
authors' spaCy pipeline (qizhengyang98/HADIS hadis/router/promptFeature.py,
en_core_web_sm): token counts over a parse. This module reproduces the same
definitions with a spaCy-like regex tokenizer, word lists and a few positional
rules, so the router can score prompts outside the reference set. All features
are integer counts:

- prompt_length      tokens that are not punctuation
- token_rarity       tokens with wordfreq zipf < 4 (word_frequency < 1e-5), punctuation included
- num_objects        subjects of finite verbs + direct objects + objects of prepositions
- abstractness       tokens on the abstract-word list (Brysbaert concreteness < 2.5)
- attribute_density  adjectives and participles used as noun modifiers or complements
- spatial_relations  occurrences of the spatial terms (single words by token, phrases by substring)
- action_verbs       verbs (not auxiliaries)
- named_entities     runs of capitalised words, and gazetteer names in lower-case prompts

Fidelity against the published features: docs/profiles.md, scripts/featurizer_fidelity.py.

This module assembles the features; the pieces are modules of their own, each changed for its
own reason: the word lists (featurizer_words.py, data tuned against the reference prompts), the
tokenizer (featurizer_tokens.py, spaCy's token boundaries), the coarse tagger
(featurizer_tags.py, one tag per token shared by every count) and the counts over the tags
(featurizer_counts.py, the feature definitions).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np
from wordfreq import zipf_frequency

from shared.policies.featurizer_counts import count_attributes, count_named_entities, count_objects, count_spatial
from shared.policies.featurizer_tags import tag
from shared.policies.featurizer_tokens import is_punct, tokenize
from shared.policies.featurizer_words import ABSTRACT_WORDS
from shared.reference import FEATURE_NAMES

RARE_ZIPF = 4.0  # word_frequency < 1e-5 in the original, i.e. zipf < 4


def featurize(prompt: str) -> np.ndarray:
    """The 8 features of one prompt, in FEATURE_NAMES order, as floats."""
    return np.array(_features(prompt), dtype=float)


def featurize_many(prompts: Iterable[str]) -> np.ndarray:
    """(n, 8) array of features."""
    rows = [_features(prompt) for prompt in prompts]
    return np.array(rows, dtype=float).reshape(len(rows), len(FEATURE_NAMES))


@lru_cache(maxsize=8192)
def _features(prompt: str) -> tuple[int, ...]:
    tokens = tokenize(prompt)
    lower = [token.lower() for token in tokens]
    tags = tag(lower)
    return (
        sum(not is_punct(token) for token in tokens),
        sum(_is_rare(token) for token in lower),
        count_objects(lower, tags),
        sum(token in ABSTRACT_WORDS for token in lower),
        count_attributes(lower, tags),
        count_spatial(lower),
        sum(t == "VERB" for t in tags),
        count_named_entities(tokens),
    )


def _is_rare(token: str) -> bool:
    return zipf_frequency(token, "en") < RARE_ZIPF
