"""The featurizer's coarse part-of-speech tags, in place of spaCy's tagger.

Apart from the tokenizer and the counts because several features read the same tags (objects,
attributes, action verbs): a word is tagged once, from the word lists (featurizer_words.py)
and then by its position, and every count sees the same tag.
"""

from __future__ import annotations

from shared.policies.featurizer_tokens import is_punct
from shared.policies.featurizer_words import (
    ADJECTIVE_SUFFIXES,
    ADJECTIVES,
    ADVERBS,
    AUXILIARIES,
    CONJUNCTIONS,
    DETERMINERS,
    ED_ADJECTIVES,
    ED_NOT_VERBS,
    ING_NOUNS,
    IRREGULAR_PARTICIPLES,
    NOT_ADJECTIVES,
    NUMBER_WORDS,
    PREPOSITIONS,
    PRONOUNS,
    RELATIVE_PRONOUNS,
    VERB_FORMS,
)


def tag(lower: list[str]) -> list[str]:
    """One coarse tag per lower-cased token: DET NUM PRON REL ADP CCONJ AUX ADV
    ADJ VERB PART POS PUNCT SPACE NOUN. Ambiguous words are resolved by position,
    left to right."""
    tags = [_lexical_tag(token) for token in lower]
    for i in range(len(lower)):
        tags[i] = _positional_tag(lower, tags, i)
    return tags


def _lexical_tag(token: str) -> str:
    if token == " ":
        return "SPACE"
    if is_punct(token):
        return "PUNCT"
    if token.isdigit() or token in NUMBER_WORDS:
        return "NUM"
    for tag_name, words in (
        ("CCONJ", CONJUNCTIONS),
        ("AUX", AUXILIARIES),
        ("ADP", PREPOSITIONS),
        ("DET", DETERMINERS),
        ("REL", RELATIVE_PRONOUNS),
        ("PRON", PRONOUNS),
        ("ADV", ADVERBS),
    ):
        if token in words:
            return tag_name
    if token in ADJECTIVES or token in ED_ADJECTIVES or _looks_adjective(token):
        return "ADJ"
    if _looks_verb(token):
        return "VERB"
    return "NOUN"


def _looks_adjective(token: str) -> bool:
    if token in NOT_ADJECTIVES or len(token) <= 5:
        return False
    return token.endswith(ADJECTIVE_SUFFIXES)


def _looks_verb(token: str) -> bool:
    if token in VERB_FORMS or token in IRREGULAR_PARTICIPLES:
        return True
    if token.endswith("ing") and len(token) > 4 and token not in ING_NOUNS:
        return True
    return token.endswith("ed") and len(token) > 3 and token not in ED_NOT_VERBS


def _positional_tag(lower: list[str], tags: list[str], i: int) -> str:
    if tags[i] in ("VERB", "NOUN", "ADJ"):
        return _content_word_tag(lower, tags, i)
    return _function_word_tag(lower, tags, i)


def _content_word_tag(lower: list[str], tags: list[str], i: int) -> str:
    token, current = lower[i], tags[i]
    prev, nxt = prev_word_tag(tags, i), next_tag(tags, i)
    if current == "VERB" and token in VERB_FORMS and not _verb_position(lower, tags, i):
        return "NOUN"  # "a stand", "manhole cover": a bare verb form where no verb can be
    if current == "VERB" and token.endswith("ing") and prev in ("DET", "ADJ", "NUM", "POS") and nxt != "DET":
        return "NOUN"  # "a swimming pool", "the packaging"
    if current == "NOUN" and token in ING_NOUNS and prev == "AUX":
        return "VERB"  # "is sewing"
    if current != "VERB" and i > 0 and lower[i - 1] == "to" and nxt in ("DET", "PRON"):
        return "VERB"  # "trying to block the ball"
    return current


def _function_word_tag(lower: list[str], tags: list[str], i: int) -> str:
    token, current = lower[i], tags[i]
    prev, nxt = prev_word_tag(tags, i), next_tag(tags, i)
    if token == "can" and prev in ("DET", "ADJ"):
        return "NOUN"
    if token == "that" and i + 1 < len(tags) and tags[i + 1] in ("NOUN", "ADJ"):
        return "DET"
    if token == "'s" and nxt in ("NOUN", "ADJ"):
        return "POS"  # possessive: "a person's hand"
    if current == "ADP" and token in ("up", "out", "down", "off", "over") and nxt in ("ADP", "PUNCT", "END"):
        return "PART"  # a particle: "sticking out of", "close up of"
    if token == "to" and nxt == "VERB":
        return "PART"
    if current == "ADV" and prev in ("DET", "ADJ") and token not in ("very", "really", "so", "too"):
        return "NOUN"  # "a striped back", "a close up of"
    return current


def _verb_position(lower: list[str], tags: list[str], i: int) -> bool:
    """Whether a bare verb form (sits, pose, held) can be a verb here: a finite
    -s form after a noun or pronoun, a base form after a plural noun, a pronoun, "to"
    or a modal, and a participle after a noun."""
    token = lower[i]
    j = i - 1
    while j >= 0 and tags[j] in ("SPACE", "ADV"):
        j -= 1
    if j < 0:
        return False
    prev, prev_tag = lower[j], tags[j]
    if token in IRREGULAR_PARTICIPLES or token.endswith(("ing", "ed")):
        return prev_tag in ("NOUN", "PRON", "AUX", "REL", "PART", "CCONJ")
    if prev_tag in ("REL", "AUX") or prev in ("to", "they", "we", "you", "i", "he", "she", "it"):
        return True
    if token.endswith("s"):
        return prev_tag in ("NOUN", "PRON", "CCONJ")
    return prev_tag == "NOUN" and prev.endswith("s") and not prev.endswith("ss")


def prev_word_tag(tags: list[str], i: int) -> str:
    """The tag of the token before `i`, spaces skipped; START at the beginning."""
    for j in range(i - 1, -1, -1):
        if tags[j] not in ("SPACE",):
            return tags[j]
    return "START"


def next_tag(tags: list[str], i: int) -> str:
    """The tag of the token after `i`, spaces and adverbs skipped ("sticking out of", "a very
    red ball"); END at the end."""
    for j in range(i + 1, len(tags)):
        if tags[j] not in ("SPACE", "ADV"):
            return tags[j]
    return "END"
