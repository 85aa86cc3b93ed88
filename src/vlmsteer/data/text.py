"""Answer text normalization, exactly as the official VQAv2 evaluator processes an answer.

Written from the behaviour of the official evaluation code (``vqaEval.py`` of the VQA
release, "Fixed processing answers bug" revision), quirks included:

- punctuation: each of 21 characters is deleted where it touches a space in the *original*
  text (or anywhere, if the text holds a digit-comma-digit group), else replaced by a
  space; ``:`` and ``'`` are left alone;
- periods not followed by a digit are deleted, but at most 32 of them: the official code
  passes ``re.UNICODE`` (= 32) where ``re.sub`` expects its ``count``;
- lower case, number words ``none``/``zero``..``ten`` to digits, articles ``a an the``
  dropped, then the official contraction table — which leaves ``were``, ``well``, ``im``
  (its key is ``Im``, never matched after lower-casing) alone, and maps ``somebody'd`` to
  ``somebodyd``.

This module is the one place answers are normalized: VQA accuracy, answer counts, sample
filters and steering conditions all use :func:`normalize_answer`.
"""

from __future__ import annotations

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern: a typo'd look-behind, in effect r"\.(?!\d)"
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_OFFICIAL_PERIOD_COUNT = 32  # int(re.UNICODE), passed as count by the official code
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})


def _table(rows: str) -> dict[str, str]:
    """``"key value, key value, ..."`` -> dict; a value of ``=`` repeats the key."""
    out = {}
    for row in rows.split(","):
        key, value = row.split()
        out[key] = key if value == "=" else value
    return out


# The official contraction table, entry for entry (including its capitalized keys, which a
# lower-cased word never matches, and its identity and odd entries).
CONTRACTIONS = _table("""
aint ain't, arent aren't, cant can't, couldve could've, couldnt couldn't, couldn'tve couldn't've,
couldnt've couldn't've, didnt didn't, doesnt doesn't, dont don't, hadnt hadn't, hadnt've hadn't've,
hadn'tve hadn't've, hasnt hasn't, havent haven't, hed he'd, hed've he'd've, he'dve he'd've, hes he's,
howd how'd, howll how'll, hows how's, Id've I'd've, I'dve I'd've, Im I'm, Ive I've, isnt isn't, itd it'd,
itd've it'd've, it'dve it'd've, itll it'll, let's =, maam ma'am, mightnt mightn't, mightnt've mightn't've,
mightn'tve mightn't've, mightve might've, mustnt mustn't, mustve must've, neednt needn't, notve not've,
oclock o'clock, oughtnt oughtn't, ow's'at 'ow's'at, 'ows'at 'ow's'at, 'ow'sat 'ow's'at, shant shan't,
shed've she'd've, she'dve she'd've, she's =, shouldve should've, shouldnt shouldn't,
shouldnt've shouldn't've, shouldn'tve shouldn't've, somebody'd somebodyd, somebodyd've somebody'd've,
somebody'dve somebody'd've, somebodyll somebody'll, somebodys somebody's, someoned someone'd,
someoned've someone'd've, someone'dve someone'd've, someonell someone'll, someones someone's,
somethingd something'd, somethingd've something'd've, something'dve something'd've,
somethingll something'll, thats that's, thered there'd, thered've there'd've, there'dve there'd've,
therere there're, theres there's, theyd they'd, theyd've they'd've, they'dve they'd've, theyll they'll,
theyre they're, theyve they've, twas 'twas, wasnt wasn't, wed've we'd've, we'dve we'd've, weve we've,
werent weren't, whatll what'll, whatre what're, whats what's, whatve what've, whens when's, whered where'd,
wheres where's, whereve where've, whod who'd, whod've who'd've, who'dve who'd've, wholl who'll, whos who's,
whove who've, whyll why'll, whyre why're, whys why's, wont won't, wouldve would've, wouldnt wouldn't,
wouldnt've wouldn't've, wouldn'tve wouldn't've, yall y'all, yall'll y'all'll, y'allll y'all'll,
yall'd've y'all'd've, y'alld've y'all'd've, y'all'dve y'all'd've, youd you'd, youd've you'd've,
you'dve you'd've, youll you'll, youre you're, youve you've
""")


def clean_whitespace(text: str) -> str:
    """Tabs and newlines to spaces, then stripped (applied to every answer first)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def strip_punctuation(text: str) -> str:
    """The official punctuation step (see the module docstring)."""
    out = text
    comma_group = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or comma_group:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def digits_and_articles(text: str) -> str:
    """The official word step: lower case, number words to digits, articles dropped,
    contractions restored."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """An answer as the official VQAv2 evaluator compares it (when references disagree)."""
    return digits_and_articles(strip_punctuation(clean_whitespace(answer)))
