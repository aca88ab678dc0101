"""The featurizer's counts over tagged tokens: four of the eight features (num_objects,
attribute_density, spatial_relations, named_entities), each a rule in place of a count over
spaCy's dependency parse or its entity recognizer.

Apart from the tokenizer and the tagger because these are the feature definitions themselves
(what the paper's router counts), each checked against the published features on its own
(scripts/featurizer_fidelity.py); the tags they read come from featurizer_tags.py."""

from __future__ import annotations

from shared.policies.featurizer_tags import next_tag, prev_word_tag
from shared.policies.featurizer_words import GAZETTEER, IRREGULAR_PARTICIPLES, SPATIAL_TERMS, VERB_FORMS

_NP_START = ("DET", "NUM", "ADJ", "NOUN", "PRON")


def count_objects(lower: list[str], tags: list[str]) -> int:
    """Subjects of active finite verbs, direct objects of verbs that follow their
    subject, and objects of prepositions (spaCy's nsubj + dobj + pobj)."""
    count = 0
    for i, current in enumerate(tags):
        starts_np = _starts_noun_phrase(lower, tags, i + 1)
        if current == "ADP" and starts_np:
            count += 1 + _small_clause(lower, tags, i)
        elif current == "VERB" and starts_np and _is_predicate(lower, tags, i):
            count += 1
        if _starts_active_clause(lower, tags, i) and _has_subject_before(tags, i):
            count += 1
    return count


def _starts_noun_phrase(lower: list[str], tags: list[str], i: int) -> bool:
    while i < len(tags) and tags[i] in ("SPACE", "ADV"):
        i += 1
    if i >= len(tags):
        return False
    if tags[i] == "VERB" and lower[i].endswith("ed"):
        return next_tag(tags, i) in ("NOUN", "ADJ")  # "of parked motorcycles"
    return tags[i] in _NP_START


def _small_clause(lower: list[str], tags: list[str], i: int) -> int:
    """1 for "with its mouth open": the noun phrase after "with" also heads a clause."""
    if lower[i] != "with":
        return 0
    j = i + 1
    while j < len(tags) and tags[j] in ("DET", "NUM", "ADJ", "NOUN", "SPACE"):
        j += 1
    if j - 1 > i + 1 and lower[j - 1] in _SMALL_CLAUSE_PREDICATES:
        return int(tags[j - 2] == "NOUN")  # "with its mouth open"
    return int(j < len(tags) and lower[j] in _SMALL_CLAUSE_PREDICATES and tags[j - 1] == "NOUN")


_SMALL_CLAUSE_PREDICATES = frozenset("open closed outstretched spread raised".split())


def _is_predicate(lower: list[str], tags: list[str], i: int) -> bool:
    # A verb inside a noun phrase ("a sleeping bag", "embroidered star") takes no object.
    prev = prev_word_tag(tags, i)
    return prev not in ("DET", "ADJ", "NUM", "START") and not lower[i].endswith("ed")


def _starts_active_clause(lower: list[str], tags: list[str], i: int) -> bool:
    """A finite verb group begins here and is not passive ("is shown")."""
    if tags[i] == "AUX":
        if i > 0 and tags[i - 1] == "AUX":
            return False
        j = i + 1
        while j < len(tags) and tags[j] in ("AUX", "ADV"):
            j += 1
        return not (j < len(tags) and tags[j] == "VERB" and _is_participle(lower[j]))
    if tags[i] == "VERB" and lower[i] in VERB_FORMS and lower[i] not in IRREGULAR_PARTICIPLES:
        return prev_word_tag(tags, i) in ("NOUN", "PRON", "REL")
    return False


def _is_participle(token: str) -> bool:
    return token.endswith(("ed", "en", "wn")) or token in IRREGULAR_PARTICIPLES


def _has_subject_before(tags: list[str], i: int) -> bool:
    return any(t in ("NOUN", "PRON", "REL") for t in tags[:i])


def count_attributes(lower: list[str], tags: list[str]) -> int:
    """Adjectives, plus participles that modify a following noun ("embroidered star")."""
    count = 0
    for i, current in enumerate(tags):
        if current == "ADJ":
            count += 1
        elif current == "VERB" and lower[i].endswith("ed") and next_tag(tags, i) in ("NOUN", "ADJ"):
            count += 1
    return count


def count_spatial(lower: list[str]) -> int:
    """As the original: single words by token match, phrases by substring count."""
    joined = " ".join(lower)
    return sum(joined.count(term) if " " in term else lower.count(term) for term in SPATIAL_TERMS)


def count_named_entities(tokens: list[str]) -> int:
    """Runs of capitalised words, and runs of gazetteer names in any case. A lone
    capitalised first word is ordinary sentence case, not a name."""
    count = 0
    previous = "none"
    for i in range(len(tokens)):
        kind = _name_kind(tokens, i)
        count += kind != "none" and kind != previous
        previous = kind
    return count


def _name_kind(tokens: list[str], i: int) -> str:
    token = tokens[i]
    if token.lower() in GAZETTEER:
        return "gazetteer"
    if not (token[:1].isupper() and token.isalpha()):
        return "none"
    if i == 0 and not (len(tokens) > 1 and tokens[1][:1].isupper()):
        return "none"
    return "capital"
