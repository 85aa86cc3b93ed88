"""English nouns to the singular exactly as ``pattern.en.singularize`` (CLiPS Pattern 3.6) does,
which CHAIR's reference uses on every word of a caption. ``pattern`` no longer installs, so this
reproduces its behaviour: the same word tables and suffix rules, tried in the same order, with
its quirks (``bus`` -> ``bu``, ``glass`` -> ``glas``, ``four`` -> ``fmy``, ``taxes`` -> ``taxe``,
``'`` -> ``'s``, ``cookies`` unchanged). ``benchmarks/chair_parity.py`` compares it with Pattern's own module word by
word.

The order of the checks is what makes the quirks: a word is kept as it is when it is the *end*
of an invariable noun (so ``s``, ``ice`` and ``ales`` are kept: ``advice``, ``series``,
``measles``), then plurals of ``-ie`` nouns (kept, lower-cased), then irregular plurals matched as suffixes (first in table
order: ``women`` -> ``woman``, ``your`` -> ``ymy``), then the first suffix rule that matches.
"""

from __future__ import annotations

import re
from functools import lru_cache

# nouns that do not change in the plural; a word that is the end of one of them is kept as is
_UNINFLECTED = (
    "bison", "debris", "headquarters", "pincers", "trout", "bream", "diabetes", "herpes", "pliers", "tuna",
    "breeches", "djinn", "high-jinks", "proceedings", "whiting", "britches", "eland", "homework", "rabies",
    "wildebeest", "carp", "elk", "innings", "salmon", "chassis", "flounder", "jackanapes", "scissors",
    "christmas", "gallows", "mackerel", "series", "clippers", "georgia", "measles", "shears", "cod",
    "graffiti", "mews", "species", "contretemps", "mumps", "swine", "corps", "news", "swiss",
    # uncountable nouns (Pattern keeps them in a second table, read the same way)
    "advice", "equipment", "happiness", "luggage", "software", "bread", "fruit", "information",
    "mathematics", "progress", "understanding", "butter", "furniture", "ketchup", "mayonnaise", "research",
    "water", "cheese", "garbage", "knowledge", "meat", "rice", "electricity", "gravel", "love", "mustard",
    "sand",
)

# "-ie" nouns: Pattern returns their plural as it is, lower-cased ("cookies" stays "cookies");
# "^pie" and "^tie" are Pattern's, literal carets included, so they never match
_IE_NOUNS = (
    "alergie", "cutie", "hoagie", "newbie", "softie", "veggie", "auntie", "doggie", "hottie", "nightie",
    "sortie", "weenie", "beanie", "eyrie", "indie", "oldie", "stoolie", "yuppie", "birdie", "freebie",
    "junkie", "^pie", "sweetie", "zombie", "bogie", "goonie", "laddie", "pixie", "techie", "bombie",
    "groupie", "laramie", "quickie", "^tie", "collie", "hankie", "lingerie", "reverie", "toughie", "cookie",
    "hippie", "meanie", "rookie", "valkyrie",
)

# irregular plurals, matched as word endings in this order (the first ending that fits wins)
_IRREGULAR = (
    ("atlantes", "atlas"), ("atlases", "atlas"), ("axes", "axe"), ("beeves", "beef"), ("brethren", "brother"),
    ("children", "child"), ("corpora", "corpus"), ("corpuses", "corpus"), ("ephemerides", "ephemeris"),
    ("feet", "foot"), ("ganglia", "ganglion"), ("geese", "goose"), ("genera", "genus"), ("genii", "genie"),
    ("graffiti", "graffito"), ("helves", "helve"), ("kine", "cow"), ("leaves", "leaf"), ("loaves", "loaf"),
    ("men", "man"), ("mongooses", "mongoose"), ("monies", "money"), ("moves", "move"), ("mythoi", "mythos"),
    ("numena", "numen"), ("occipita", "occiput"), ("octopodes", "octopus"), ("opera", "opus"),
    ("opuses", "opus"), ("our", "my"), ("oxen", "ox"), ("penes", "penis"), ("penises", "penis"),
    ("people", "person"), ("sexes", "sex"), ("soliloquies", "soliloquy"), ("teeth", "tooth"),
    ("testes", "testis"), ("trilbys", "trilby"), ("turves", "turf"), ("zoa", "zoon"),
)

# suffix rules, tried in order; the first whose pattern is found rewrites the word
# (some are case-sensitive in Pattern, and stay so; "[octop|vir]" is a character class there)
_RULES = tuple((re.compile(pattern), replacement) for pattern, replacement in (
    (r"(?i)(.)ae$", r"\1a"), (r"(?i)(.)itis$", r"\1itis"), (r"(?i)(.)eaux$", r"\1eau"),
    (r"(?i)(quiz)zes$", r"\1"), (r"(?i)(matr)ices$", r"\1ix"), (r"(?i)(ap|vert|ind)ices$", r"\1ex"),
    (r"(?i)^(ox)en", r"\1"), (r"(?i)(alias|status)es$", r"\1"), (r"(?i)([octop|vir])i$", r"\1us"),
    (r"(?i)(cris|ax|test)es$", r"\1is"), (r"(?i)(shoe)s$", r"\1"), (r"(?i)(o)es$", r"\1"),
    (r"(?i)(bus)es$", r"\1"), (r"(?i)([m|l])ice$", r"\1ouse"), (r"(?i)(x|ch|ss|sh)es$", r"\1"),
    (r"(?i)(m)ovies$", r"\1ovie"), (r"(?i)(.)ombies$", r"\1ombie"), (r"(?i)(s)eries$", r"\1eries"),
    (r"(?i)([^aeiouy]|qu)ies$", r"\1y"),
    # -f and -fe nouns that take -ves
    (r"([aeo]l)ves$", r"\1f"), (r"([^d]ea)ves$", r"\1f"), (r"arves$", "arf"), (r"erves$", "erve"),
    (r"([nlw]i)ves$", r"\1fe"), (r"(?i)([lr])ves$", r"\1f"), (r"([aeo])ves$", r"\1ve"),
    (r"(?i)(sive)s$", r"\1"), (r"(?i)(tive)s$", r"\1"), (r"(?i)(hive)s$", r"\1"), (r"(?i)([^f])ves$", r"\1fe"),
    # -ses
    (r"(?i)(^analy)ses$", r"\1sis"),
    (r"(?i)((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)ses$", r"\1\2sis"),
    (r"(?i)(.)opses$", r"\1opsis"), (r"(?i)(.)yses$", r"\1ysis"), (r"(?i)(h|d|r|o|n|b|cl|p)oses$", r"\1ose"),
    (r"(?i)(fruct|gluc|galact|lact|ket|malt|rib|sacchar|cellul)ose$", r"\1ose"), (r"(?i)(.)oses$", r"\1osis"),
    # -a
    (r"(?i)([ti])a$", r"\1um"), (r"(?i)(n)ews$", r"\1ews"),
    (r"(?i)s$", ""),
))

# compounds such as "mothers-in-law" are made singular in their first part
_COMPOUND_LINKS = frozenset((
    "about", "before", "during", "of", "till", "above", "behind", "except", "off", "to", "across", "below",
    "for", "on", "under", "after", "beneath", "from", "onto", "until", "among", "beside", "in", "out", "unto",
    "around", "besides", "into", "over", "upon", "at", "between", "near", "since", "with", "athwart",
    "betwixt", "beyond", "but", "by",
))


@lru_cache(maxsize=1 << 16)
def singularize(word: str) -> str:
    """``word`` made singular as ``pattern.en.singularize(word)`` makes it (a noun, no custom
    table), quirks included."""
    if "-" in word:
        head, *rest = word.split("-")
        if rest[0] in _COMPOUND_LINKS:
            return singularize(head) + "-" + "-".join(rest)
    if word.endswith("'"):  # dogs' -> dog's (and a lone ' -> 's)
        return singularize(word[:-1]) + "'s"
    lower = word.lower()
    if any(noun.endswith(lower) for noun in _UNINFLECTED):
        return word
    if any(lower.endswith(noun + "s") for noun in _IE_NOUNS):
        return lower
    for plural, singular in _IRREGULAR:
        if lower.endswith(plural):
            return re.sub("(?i)" + plural + "$", singular, word)
    for pattern, replacement in _RULES:
        if pattern.search(word):
            return pattern.sub(replacement, word)  # an unmatched group is replaced by nothing
    return word
