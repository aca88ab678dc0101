"""The featurizer's tokenizer: spaCy-like tokens from a prompt, without spaCy.

Apart from the tagger and the counts because every feature depends on where a token begins and
ends (a clitic, a unit split off a number, a run of spaces), and these rules follow spaCy's
English tokenizer, not the word lists: they change when a tokenization differs from the
authors' pipeline, not when a word is tagged wrong.
"""

from __future__ import annotations

import re
import unicodedata

# Unit suffixes spaCy splits off a number ("4g" -> "4", "g"); case-sensitive as there.
_UNITS = frozenset("""
km m dm cm mm nm ha yd in ft kg g mg t lb oz kmh mph mb MB kb KB gb GB tb TB T G M K
""".split())
_PREFIX_CHARS = "\"'([{<*$#`"
_SUFFIX_CHARS = "\"')]}>.,;:!?*%"
_CLITICS = ("n't", "'s", "'m", "'re", "'ve", "'ll", "'d")
_INFIX = re.compile(
    r"(?<=[A-Za-z])(--|-)(?=[A-Za-z])"  # hyphen between letters
    r"|(?<=[A-Za-z0-9])([:<>=/])(?=[A-Za-z])"  # slash and friends before a letter
    r"|(?<=[A-Za-z]),(?=[A-Za-z])"  # comma between letters
    r"|(?<=[0-9])([+*^])(?=[0-9-])"  # arithmetic between digits
)
_NUMBER_UNIT = re.compile(r"([0-9]+(?:[.,][0-9]+)?)([A-Za-z]+)")


def tokenize(text: str) -> list[str]:
    """spaCy-like tokens. Non-ASCII characters are dropped first, as the authors'
    pipeline read its prompt file with errors='ignore'; each extra space in a run
    of spaces becomes a " " token, as in spaCy."""
    text = re.sub(r"[\t\n\r\f\v]", " ", text.encode("ascii", "ignore").decode("ascii")).strip(" ")
    if not text:
        return []
    tokens: list[str] = []
    for chunk in text.split(" "):
        tokens.extend(_split_chunk(chunk) if chunk else [" "])
    return tokens


def _split_chunk(chunk: str) -> list[str]:
    prefixes: list[str] = []
    suffixes: list[str] = []
    while len(chunk) > 1 and chunk[0] in _PREFIX_CHARS:
        prefixes.append(chunk[0])
        chunk = chunk[1:]
    while len(chunk) > 1:
        clitic = next((c for c in _CLITICS if chunk.lower().endswith(c) and len(chunk) > len(c)), None)
        if clitic:
            suffixes.insert(0, chunk[-len(clitic) :])
            chunk = chunk[: -len(clitic)]
        elif chunk[-1] in _SUFFIX_CHARS:
            suffixes.insert(0, chunk[-1])
            chunk = chunk[:-1]
        else:
            break
    return prefixes + _split_infixes(chunk) + suffixes


def _split_infixes(core: str) -> list[str]:
    unit = _NUMBER_UNIT.fullmatch(core)
    if unit and unit.group(2) in _UNITS:
        return [unit.group(1), unit.group(2)]
    pieces: list[str] = []
    start = 0
    for match in _INFIX.finditer(core):
        pieces.extend([core[start : match.start()], match.group(0)])
        start = match.end()
    pieces.append(core[start:])
    return [piece for piece in pieces if piece]


def is_punct(token: str) -> bool:
    """Every character is punctuation (spaCy's is_punct): not a word for prompt_length, and
    tagged PUNCT."""
    return all(unicodedata.category(ch).startswith("P") for ch in token)
