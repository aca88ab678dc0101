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
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
from wordfreq import zipf_frequency

from shared.reference import FEATURE_NAMES

RARE_ZIPF = 4.0  # word_frequency < 1e-5 in the original, i.e. zipf < 4

# Copied from ../shared/data/diffserve/diffserve-2/router/spatial_terms.txt
# (md5 e84b7d8bbc007d4bb5d71fc9c43d0f60), the list behind feature 6.
SPATIAL_TERMS = (
    "above", "across", "against", "along", "among", "around", "at", "behind", "below",
    "beneath", "beside", "between", "beyond", "by", "down", "from", "in", "in front of",
    "inside", "near", "next to", "off", "on", "on top of", "onto", "out", "outside", "over",
    "past", "through", "to", "toward", "under", "underneath", "up", "upon", "with", "within",
    "without",
)

# Words rated below 2.5 on the Brysbaert concreteness scale (the original's cut-off;
# the norms themselves were not published with the data): function words checked
# against the published feature on the even-numbered reference prompts, and common
# abstract words of image prompts.
ABSTRACT_WORDS = frozenset("""
a an the of and or but nor is are was were be been being am have had do does did
to for by at from with into onto over around against about during without within
this that these those its your my our some any each every all both either neither no
not other different various such same own more most much few what who whom whose which
something anything everything nothing anyone everyone whatever
says say said making keep keeps trying try including include includes variety
range while when where why how if because although though than then there here so too
very just also only even really quite rather almost maybe perhaps
great wild medieval modern flowing fashioned rendering shaped middle nowhere general
beautiful beauty concept idea ideas love hope dream dreams dreamy fantasy
magic magical mysterious mystical surreal abstract epic dramatic ethereal elegant
peaceful serene majestic intricate detailed highly ultra realistic realism photorealistic
quality trending aesthetic atmosphere atmospheric mood emotion emotional spirit spiritual
freedom truth justice future history imagination inspiration
vibe vibes cinematic masterpiece award winning amazing awesome incredible stunning
""".split())

DETERMINERS = frozenset("""
a an the this these those some any each every all both another
no its his her their my your our much more most either neither
""".split())

NUMBER_WORDS = frozenset("""
one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty hundred thousand dozen
""".split())

PRONOUNS = frozenset("""
it them him her me us you they he she we i itself themselves himself herself myself
something someone somebody anything anyone everything everyone nothing others
""".split())

RELATIVE_PRONOUNS = frozenset("that which who".split())

PREPOSITIONS = frozenset("""
about above across after against along alongside amid among amongst around as at atop before
behind below beneath beside besides between beyond by despite down during except for from in
inside into like near of off on onto out outside over past per through throughout to toward
towards under underneath until up upon via with within without
""".split())

CONJUNCTIONS = frozenset("and or but nor & while".split())

AUXILIARIES = frozenset("""
is are was were be been being am 's 're 'm do does did can could will would may might
shall should must ca wo
""".split())

ADVERBS = frozenset("""
very really just also not n't so too together away back here there almost only still
partially slightly fully nearly quite rather about close closely high low far well next
""".split())

# Adjectives a tagger would mark ADJ. Materials are only here when spaCy treats them
# as adjectives in the reference prompts (wooden, golden, silver, plastic), not nouns (metal).
ADJECTIVES = frozenset("""
black white red green blue yellow orange pink purple brown gray grey silver golden gold
beige tan turquoise violet maroon navy teal cyan magenta crimson scarlet ivory olive khaki
dark light bright pale colorful colourful multicolored colored coloured vivid vibrant
large small big little tiny huge giant enormous massive tall short long wide narrow thick
thin fat skinny slim deep shallow high low heavy miniature mini full empty
old young new ancient vintage antique modern medieval older newer elderly
round square flat curved rectangular circular oval triangular pointed straight crooked
fluffy furry hairy smooth rough shiny soft hard wet dry dirty clean rusty muddy sandy
grassy rocky snowy icy frozen dusty sticky spiky curly wavy fuzzy silky glossy leafy mossy
cloudy sunny rainy foggy misty stormy windy blurry clear transparent translucent sharp
wooden plastic metallic stainless concrete woolen woollen
hot cold warm cool fresh ripe raw cooked frozen sweet sour spicy salty tasty delicious
happy sad angry cute pretty beautiful ugly funny scary sleepy lonely lovely friendly
wild domestic tame fierce female male adult juvenile single double open closed
other different various many several same whole entire own separate
digital electronic electric electrical mechanical solar nuclear military musical
floral tropical polar arctic marine aquatic natural artificial fake real
good bad great nice fine best better worst poor rich fancy plain simple
busy quiet loud crowded rural urban local foreign native exotic rare common
chinese japanese american french german italian english british indian african
mexican spanish russian korean thai greek roman irish dutch swiss egyptian
siamese persian arabian belgian australian canadian brazilian asian european
western eastern northern southern central upright broken torn cracked
shaggy bushy woody thorny juicy creamy crispy crunchy grainy bumpy
safe dangerous strange weird unusual famous popular typical classic traditional
dead alive lone uneven
""".split())

ADJECTIVE_SUFFIXES = ("ful", "ous", "ive", "ical", "less", "able", "ible")
NOT_ADJECTIVES = frozenset("""
vegetable vegetables stable stables constable timetable turntable motive detective locomotive
explosive explosives convertible convertibles handful mouthful spoonful
""".split()) - frozenset(["native"])

# -ing words that are nouns, so not verbs.
ING_NOUNS = frozenset("""
building buildings painting paintings clothing ceiling ring rings king kings thing things
string strings spring springs wing wings swing swings sling morning evening wedding pudding
stuffing frosting icing railing railings siding lighting bedding dumpling dumplings sibling
duckling seedling earring earrings awning landing parking sterling viking fencing
handwriting wiring carving carvings drawing drawings writing writings sewing bowling
nothing something anything everything ping pong during lightning
""".split())

# Participles without -ed: a verb group ending in one of these is passive.
IRREGULAR_PARTICIPLES = frozenset("""
held made built shown seen set cut spread put sold told found left kept hung sewn woven
worn torn drawn written broken frozen taken given eaten grown thrown known done bought caught
""".split())

# Past-tense / participle forms on -ed that are not verbs.
ED_NOT_VERBS = frozenset("""
red bed beds shed sled seed weed speed reed steed feed need hundred sacred naked wicked
rugged ragged jagged crooked shred bred fled ted fred ned
""".split())

# -ed adjectives that a tagger marks ADJ, not VERB.
ED_ADJECTIVES = frozenset("""
striped spotted colored coloured checkered speckled dotted curved pointed crooked naked
wicked rugged ragged jagged sacred multicolored
""".split())

# Finite and base verb forms that carry no -ing/-ed ending.
VERB_FORMS = frozenset("""
sits sit sat stands stand stood lies lie lay lays holds hold held says say said
reads read shows show shown hangs hang hung looks look walks walk runs run ran
eats eat ate grows grow grew flies fly flew swims swim swam sleeps sleep slept
rests rest waits wait plays play wears wear wore carries carry carried rides ride rode
drives drive drove makes make made takes take took gives give gave gets get got
goes go went comes come came sees see saw seen has have had keep keeps kept
hits hit jumps jump climbs climb pulls pull pushes push leans lean
reaches reach uses use used covers cover fills fill cut cuts set sets put puts
built broken written drawn sewn woven worn torn frozen spread peek peeks pose poses
""".split())

# Lower-case names a prompt may carry without capitals (countries, big cities, brands).
GAZETTEER = frozenset("""
africa america asia europe australia antarctica china japan india germany france italy spain
russia brazil canada mexico england britain scotland ireland egypt kenya rwanda hawaii
alaska texas california florida paris london tokyo kyoto rome berlin sydney moscow
chicago boston york normandy indonesia philippines maldives thailand vietnam korea
microsoft google apple samsung sony canon nikon ibm dell nasa ford bmw chevrolet
cadillac adidas nike polaroid epson lg vodafone disney
""".split())

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
        sum(not _is_punct(token) for token in tokens),
        sum(_is_rare(token) for token in lower),
        count_objects(lower, tags),
        sum(token in ABSTRACT_WORDS for token in lower),
        count_attributes(lower, tags),
        count_spatial(lower),
        sum(t == "VERB" for t in tags),
        count_named_entities(tokens),
    )


# --- tokenizer ---------------------------------------------------------------


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


def _is_punct(token: str) -> bool:
    return all(unicodedata.category(ch).startswith("P") for ch in token)


def _is_rare(token: str) -> bool:
    return zipf_frequency(token, "en") < RARE_ZIPF


# --- coarse part-of-speech tags ---------------------------------------------


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
    if _is_punct(token):
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
    prev, nxt = _prev_word_tag(tags, i), _next_tag(tags, i)
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
    prev, nxt = _prev_word_tag(tags, i), _next_tag(tags, i)
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


def _prev_word_tag(tags: list[str], i: int) -> str:
    for j in range(i - 1, -1, -1):
        if tags[j] not in ("SPACE",):
            return tags[j]
    return "START"


def _next_tag(tags: list[str], i: int) -> str:
    for j in range(i + 1, len(tags)):
        if tags[j] not in ("SPACE", "ADV"):
            return tags[j]
    return "END"


# --- counts ------------------------------------------------------------------

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
        return _next_tag(tags, i) in ("NOUN", "ADJ")  # "of parked motorcycles"
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
    prev = _prev_word_tag(tags, i)
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
        return _prev_word_tag(tags, i) in ("NOUN", "PRON", "REL")
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
        elif current == "VERB" and lower[i].endswith("ed") and _next_tag(tags, i) in ("NOUN", "ADJ"):
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
