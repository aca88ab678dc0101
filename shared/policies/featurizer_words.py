"""The word lists behind the prompt featurizer (shared/policies/featurizer.py).

A module of their own because they are data, not rules: they were tuned by reading the
even-numbered reference prompts against the published features (docs/profiles.md,
scripts/featurizer_fidelity.py), and a fidelity fix usually edits a list here without touching
the tokenizer (featurizer_tokens.py), the tagger (featurizer_tags.py) or the counts
(featurizer_counts.py) that read them.
"""

from __future__ import annotations

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
