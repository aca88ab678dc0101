import numpy as np
from scipy.stats import spearmanr

from shared import reference
from shared.policies.featurizer import featurize, featurize_many
from shared.policies.featurizer_tokens import tokenize

# Measured Spearman of our features against the published ones on the 5,000
# reference prompts (scripts/featurizer_fidelity.py), minus a margin of 0.03.
# named_entities (0.43, weight 0.01) is not reproduced on lower-case captions.
SPEARMAN_BOUNDS = {
    "prompt_length": 0.97,
    "token_rarity": 0.97,
    "num_objects": 0.92,
    "abstractness": 0.96,
    "attribute_density": 0.90,
    "spatial_relations": 0.97,
    "action_verbs": 0.88,
}


def test_eight_non_negative_numbers():
    features = featurize("a red ball sits in the grass on a green field")
    assert features.shape == (8,)
    assert np.all(features >= 0)
    assert np.all(features == np.round(features))


def test_empty_and_punctuation_only_prompts():
    assert np.all(featurize("") == 0)
    assert np.all(featurize("   ") == 0)
    assert featurize("!!")[0] == 0  # punctuation is not length


def test_length_grows_with_the_prompt():
    short = featurize("a cat")
    longer = featurize("a small grey cat sleeping on a wooden chair in the garden")
    assert longer[0] > short[0]


def test_counts_spatial_phrases():
    assert featurize("a cat on top of a box")[5] == 2  # "on" and "on top of", as the original
    assert featurize("a dog next to a tree")[5] == 2  # "next to" and "to"
    assert featurize("a dog and a tree")[5] == 0


def test_counts_a_capitalised_name():
    assert featurize("a photo of Barack Obama in a garden")[7] == 1
    assert featurize("a photo of a man in a garden")[7] == 0
    assert featurize("Cat on a mat")[7] == 0  # sentence case is not a name


def test_counts_verbs_objects_and_attributes():
    features = featurize("a man is playing a violin in a blurry photo")
    assert features[2] == 3  # man (subject), violin (object), photo (object of "in")
    assert features[4] == 1  # blurry
    assert features[6] == 1  # playing


def test_rare_words_are_counted():
    assert featurize("a humpback whale")[1] > featurize("a big house")[1]


def test_tokenizer_splits_like_spacy():
    assert tokenize("a person's hand") == ["a", "person", "'s", "hand"]
    assert tokenize("a t-shirt, blue") == ["a", "t", "-", "shirt", ",", "blue"]
    assert tokenize("sc-5500 printer") == ["sc-5500", "printer"]
    assert tokenize("clock  photo") == ["clock", " ", "photo"]


def test_featurize_many_matches_featurize():
    prompts = ["a cat", "two dogs standing next to each other"]
    assert np.array_equal(featurize_many(prompts), np.stack([featurize(p) for p in prompts]))
    assert featurize_many([]).shape == (0, 8)


def test_spearman_against_published_features():
    ours = featurize_many(reference.prompts())
    published = reference.features()
    for name, bound in SPEARMAN_BOUNDS.items():
        j = reference.FEATURE_NAMES.index(name)
        rho = spearmanr(ours[:, j], published[:, j])[0]
        assert rho > bound, f"{name}: Spearman {rho:.3f} <= {bound}"
