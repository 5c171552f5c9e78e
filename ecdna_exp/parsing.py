"""Parse a model's free-text answer into an ecDNA count.

:func:`parse_count` turns one ``answer_text`` into a :class:`ParsedAnswer`: the
count to score, how it was stated (:class:`ParseStatus`) and the text it came
from. Backend failures never reach the parser, so ``error`` is not a status.

The count is taken from the first of these rules that finds one:

1. a JSON object with a count-like key (``{"ecDNA_count": 12}``), where keys
   that name a confidence, probability or score are never read as the count;
2. ``\\boxed{...}`` or a "Final answer" marker, the last one in the text;
3. another marker followed by a quantity ("Answer: 14", "Count: 14",
   "Total = 14", "The count of ecDNA is 14"), the last one in the text;
4. a quantity attached to ecDNA, dots, spots or foci ("12 ecDNA",
   "20 green dots", "10 instances of ecDNA"), the last one in the text;
5. a refusal ("cannot be determined", "I'm unable to count") has value None;
6. a stated zero ("There are no ecDNA", "none are visible") is 0, ``exact``;
7. in an answer of at most 40 words, the last number that is not followed by
   a unit or another object ("256x256", "3 nuclei", "80%") and is not a
   confidence.

Anything else is ``none``. A quantity is a number in digits ("1,024", "12.5")
or words ("twenty-one", "one hundred and five"), optionally hedged
("about 20" is ``approximate``), a range ("10-15", "between 3 and 5" give the
midpoint) or a bound ("more than 10", "10+" give the bound). Counts cannot be
negative, so a number written with a leading minus ("-3") is skipped, while a
dash bullet with a space ("- 3") is read as 3.

A refusal is checked before a zero, so "I cannot see any ecDNA" is a refusal
and not 0, while "There are no ecDNA" is 0. The whole answer "None" reads as 0
because it answers "how many", but a missing answer (Python None) is
``none``. Markers and spans are matched after NFKC normalisation, with dashes
folded to "-" and markdown emphasis, backticks and ``$`` removed.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger(__name__)


class ParseStatus(str, Enum):
    """How an answer stated its count."""

    EXACT = "exact"
    APPROXIMATE = "approximate"
    RANGE = "range"
    BOUND = "bound"
    REFUSAL = "refusal"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ParsedAnswer:
    """A count read from an answer.

    ``value`` is the count to score (a float, since ranges give midpoints and
    answers may be decimals), or None for ``refusal`` and ``none``. ``span`` is
    the part of the answer the value came from, after Unicode (NFKC) and
    markdown normalisation, or None when there is no value.
    """

    value: float | None
    status: ParseStatus
    span: str | None = None


# Number words ----------------------------------------------------------------

_UNIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_UNIT_NAMES += (
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_UNIT_WORDS = {word: value for value, word in enumerate(_UNIT_NAMES)}
_UNIT_WORDS["single"] = 1
_TENS_WORDS = dict(
    zip(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], range(20, 100, 10))
)
_TENS_WORDS["fourty"] = 40
_WORD_VALUES = {**_UNIT_WORDS, **_TENS_WORDS}


def _alternation(words) -> str:
    return "|".join(sorted(words, key=len, reverse=True))


_ONE_TO_NINE = _alternation(w for w, v in _UNIT_WORDS.items() if 1 <= v <= 9 and w != "single")
_UNITS = _alternation(w for w in _UNIT_WORDS if w != "single")
# A tens word followed by a unit word is one number, so "twenty-one" never reads as the range 20-1.
_TENS = _alternation(_TENS_WORDS)
_BELOW_100 = (
    rf"(?:(?:{_TENS})(?:[-\s](?:{_ONE_TO_NINE})(?![a-z])|(?![-\s](?:{_ONE_TO_NINE})(?![a-z])))"
    rf"|(?:{_UNITS}))"
)
_BELOW_1000 = rf"(?:(?:(?:a|{_ONE_TO_NINE})\s+)?hundred(?:\s+(?:and\s+)?{_BELOW_100})?|{_BELOW_100})"
_WORD_NUMBER = (
    rf"(?:(?:(?:a|{_BELOW_1000})\s+)?thousand(?:,?\s+(?:and\s+)?{_BELOW_1000})?|a\s+single|{_BELOW_1000})"
    r"(?![a-z])"
)


def _word_value(words: str) -> int:
    """Return the value of a phrase matched by ``_WORD_NUMBER``."""
    thousands, value = 0, 0
    for token in re.findall(r"[a-z]+", words.lower()):
        if token == "thousand":
            thousands, value = max(value, 1) * 1000, 0
        elif token == "hundred":
            value = max(value, 1) * 100
        else:
            value += _WORD_VALUES.get(token, 0)
    return thousands + value


# Quantities ------------------------------------------------------------------


def _number(name: str, after_dash: bool = False) -> str:
    """Build a named group for one number in digits or words.

    A number directly after a minus sign is a negative value and not a count,
    so the guard against a leading ``-`` is dropped only for the upper end of
    a range ("10-15").
    """
    dash = "" if after_dash else "-"
    digits = rf"(?<![\w.^{dash}])(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?"
    words = rf"(?<![a-z{dash}]){_WORD_NUMBER}"
    return rf"(?P<{name}>{digits}|{words})"


_APPROX = (
    r"approximately|approx|about|around|roughly|nearly|almost|close\s+to|circa|some|an\s+estimated"
    r"|estimated(?:\s+(?:at|to\s+be))?|~|≈"
)
_BOUND_BEFORE = (
    r"more\s+than|greater\s+than|over|above|at\s+least|no\s+(?:fewer|less)\s+than|fewer\s+than|less\s+than"
    r"|under|below|at\s+most|up\s+to|no\s+more\s+than|>=|<=|≥|≤|>|<"
)
_QUANTITY = (
    rf"(?P<quantity>(?:(?P<approx>{_APPROX})\s*|(?P<bound>{_BOUND_BEFORE})\s*)?"
    rf"(?:between\s+{_number('between_low')}\s+and\s+{_number('between_high')}"
    rf"|(?:from\s+)?{_number('low')}\s*(?:-|to)\s*{_number('high', after_dash=True)}"
    rf"|{_number('single')}(?P<plus>\+(?!\s*\d)|\s+or\s+(?:more|greater|fewer|less)(?![a-z]))?"
    rf"(?P<or_so>\s+or\s+so(?![a-z]))?))"
)
_QUANTITY_RE = re.compile(_QUANTITY, re.IGNORECASE)


def _number_value(text: str) -> float:
    """Return the value of a number in digits ("1,024", "12.5") or words."""
    if text[0].isdigit():
        return float(text.replace(",", ""))
    return float(_word_value(text))


def _from_quantity(match: re.Match, lead: str = "") -> ParsedAnswer:
    """Turn a match of ``_QUANTITY`` into a parsed answer.

    ``lead`` is text before the match in the same sentence, where a word such
    as "estimated" makes a plain number ``approximate``.
    """
    span = match.group("quantity").strip()
    for low, high in (("between_low", "between_high"), ("low", "high")):
        if match.group(low):
            midpoint = (_number_value(match.group(low)) + _number_value(match.group(high))) / 2
            return ParsedAnswer(midpoint, ParseStatus.RANGE, span)
    value = _number_value(match.group("single"))
    if match.group("bound") or match.group("plus"):
        return ParsedAnswer(value, ParseStatus.BOUND, span)
    if (
        match.group("approx")
        or match.group("or_so")
        or re.search(r"estimat|approximat|rough", lead, re.IGNORECASE)
    ):
        return ParsedAnswer(value, ParseStatus.APPROXIMATE, span)
    return ParsedAnswer(value, ParseStatus.EXACT, span)


# Where a count is stated -----------------------------------------------------

# Things counted in a metaphase other than ecDNA. A marker or number next to one of them is not the ecDNA count.
_OTHER_OBJECT = r"nucle\w*|chromosom\w*|cells?|confiden\w*"
_OTHER_OBJECT_RE = re.compile(rf"(?<![a-z])(?:{_OTHER_OBJECT})(?![a-z])", re.IGNORECASE)
_ECDNA_WORD = r"ecdnas?|extrachromosomal|dots?|spots?|foci|puncta|specks?"

_CONNECTOR = r"(?:\s*[:=]|\s+(?:is|are|was|equals|would\s+be|will\s+be)(?![a-z]))\s*"
_MARKER_GAP = r"(?P<gap>[^.\n:=]{0,40}?)"
_FINAL_MARKER_RE = re.compile(rf"final\s+(?:answer|count){_MARKER_GAP}{_CONNECTOR}{_QUANTITY}", re.IGNORECASE)
_MARKER_RE = re.compile(
    rf"(?<![a-z])(?:answer|count|total|number|tally|estimate|result|{_ECDNA_WORD})(?![a-z])"
    rf"{_MARKER_GAP}{_CONNECTOR}{_QUANTITY}",
    re.IGNORECASE,
)
_BOXED_RE = re.compile(r"\\boxed\{(?P<inner>[^{}]*)\}")
_ATTACHED_RE = re.compile(
    rf"{_QUANTITY}(?P<tail>\s+(?:(?:instances?|copies|counts?|pieces|units|molecules|fragments|particles"
    rf"|occurrences)\s+of\s+(?:the\s+)?)?(?:[a-z]+\s+){{0,2}}?)(?:{_ECDNA_WORD})(?![a-z])",
    re.IGNORECASE,
)
# Words between a number and "ecDNA" that tie the number to something else, as in "3 nuclei with ecDNA".
_DETACHING_WORD_RE = re.compile(
    rf"(?<![a-z])(?:{_OTHER_OBJECT}|and|or|with|in|per|than)(?![a-z])", re.IGNORECASE
)
# A unit must follow on the same line: "6\nConfidence: 0.8" states a count of 6.
_NOT_A_COUNT_AFTER_RE = re.compile(
    r"[^\S\n]*(?:[x×]\s*\d|[x×](?![a-z])|%|\^|/\s*\d"
    rf"|(?:px|pixels?|images?|patch\w*|metaphases?|percent|degrees?|[µμu]m|nm|microns?|kb|mb|bp|times|fold"
    rf"|{_OTHER_OBJECT})(?![a-z]))",
    re.IGNORECASE,
)
_CONFIDENCE_BEFORE_RE = re.compile(r"confiden\w*[^.\n\d]{0,20}$", re.IGNORECASE)
_OTHER_OBJECT_BEFORE_RE = re.compile(rf"(?:{_OTHER_OBJECT})\s*$", re.IGNORECASE)

_REFUSAL_RE = re.compile(
    r"cannot|can\s?not|can't|unable|impossible|not\s+(?:be\s+)?(?:possible|able)|i'?m\s+sorry|i\s+am\s+sorry"
    r"|not\s+(?:provided|specified|given|available|mentioned)|does(?:\s+not|n't)\s+(?:provide|specify)"
    r"|not\s+enough|insufficient|no\s+(?:\w+\s+)?(?:value|count|number|information|data)\s+(?:is\s+)?"
    r"(?:provided|given|available|specified)|无法|不能",
    re.IGNORECASE,
)
# "no ecDNA" is a zero, but "no ecDNA count provided" is not.
_ZERO_RE = re.compile(
    rf"(?:(?<![a-z])(?:no|zero|not\s+(?:[a-z]+\s+)?any|without(?:\s+any)?)|n't\s+(?:[a-z]+\s+)?any)"
    rf"\s+(?:[a-z]+\s+)?(?:{_ECDNA_WORD})(?![a-z])"
    r"(?!\s+(?:values?|counts?|numbers?|information|data)(?![a-z]))"
    r"|(?<![a-z])none\s+(?:are|is|were|was|can\s+be|could\s+be)\s+(?:visible|present|detected|seen|observed"
    r"|found|identified)|^\W*none\W*$",
    re.IGNORECASE,
)
# NOTE: 40 words is a judgement, not a measured limit. A longer answer whose numbers carry no marker
# and no ecDNA word parses as none.
_SHORT_ANSWER_WORDS = 40
_COUNT_KEY_RE = re.compile(r"count|ecdna|number|total|answer|dots", re.IGNORECASE)
_NOT_COUNT_KEY_RE = re.compile(r"confiden|prob|score|certain", re.IGNORECASE)


def _sentence_before(text: str, end: int) -> str:
    start = max(text.rfind(mark, 0, end) for mark in ".!?\n") + 1
    return text[start:end]


def _last_accepted(pattern: re.Pattern, text: str, accept) -> re.Match | None:
    """Return the last match of ``pattern`` that ``accept`` keeps.

    After a rejected match the search resumes one character later, so a
    rejected marker cannot hide an overlapping one that is valid.
    """
    last, position = None, 0
    while (match := pattern.search(text, position)) is not None:
        if accept(match):
            last, position = match, match.end()
        else:
            position = match.start() + 1
    return last


def _marker_is_for_ecdna(match: re.Match) -> bool:
    before = match.string[max(0, match.start() - 16) : match.start()]
    if _OTHER_OBJECT_RE.search(match.group("gap")) or _OTHER_OBJECT_BEFORE_RE.search(before):
        return False
    return _NOT_A_COUNT_AFTER_RE.match(match.string, match.end()) is None


def _is_attached(match: re.Match) -> bool:
    return not _DETACHING_WORD_RE.search(match.group("tail"))


def _is_plain_count(match: re.Match) -> bool:
    text = match.string
    after_unit = _NOT_A_COUNT_AFTER_RE.match(text, match.end())
    after_confidence = _CONFIDENCE_BEFORE_RE.search(text[: match.start()])
    return not (after_unit or after_confidence)


def _parsed(match: re.Match | None) -> ParsedAnswer | None:
    if match is None:
        return None
    return _from_quantity(match, _sentence_before(match.string, match.start("quantity")))


def _normalise(text: str) -> str:
    """Fold Unicode forms, dashes and "approx." and drop markdown emphasis, code marks and ``$``."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"[\u2010-\u2015\u2212]", "-", text)
    text = text.replace("\\approx", "≈").replace("\\sim", "~")
    text = re.sub(r"(?<![a-z])approx\.", "approximately", text, flags=re.IGNORECASE)
    return re.sub(r"\*+|`+|\$+|(?<!\w)__|__(?!\w)", "", text)


def _from_json(text: str) -> ParsedAnswer | None:
    """Read the count from the first JSON object with a count-like key."""
    for match in re.finditer(r"\{[^{}]*\}", text):
        try:
            record = json.loads(match.group(0))
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        for key, value in record.items():
            if not _COUNT_KEY_RE.search(key) or _NOT_COUNT_KEY_RE.search(key):
                continue
            if isinstance(value, str):
                return _parse_text(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if value < 0:
                    log.debug(
                        "JSON answer %r has the negative count %r, parsed as none", match.group(0), value
                    )
                    return ParsedAnswer(None, ParseStatus.NONE, None)
                return ParsedAnswer(float(value), ParseStatus.EXACT, match.group(0))
    return None


def _parse_text(text: str) -> ParsedAnswer:
    """Apply rules 2-7 of the module docstring to normalised text."""
    for boxed in reversed(list(_BOXED_RE.finditer(text))):
        quantity = _QUANTITY_RE.search(boxed.group("inner"))
        if quantity is not None:
            return _from_quantity(quantity, boxed.group("inner")[: quantity.start()])
    for pattern in (_FINAL_MARKER_RE, _MARKER_RE):
        parsed = _parsed(_last_accepted(pattern, text, _marker_is_for_ecdna))
        if parsed is not None:
            return parsed
    # NOTE: arithmetic is not evaluated, so "20 green dots ... Count(ecDNA) = dots - 1" reads as 20.
    parsed = _parsed(_last_accepted(_ATTACHED_RE, text, _is_attached))
    if parsed is not None:
        return parsed
    refusal = _REFUSAL_RE.search(text)
    if refusal is not None:
        return ParsedAnswer(None, ParseStatus.REFUSAL, _sentence_around(text, refusal))
    zero = _ZERO_RE.search(text)
    if zero is not None:
        return ParsedAnswer(0.0, ParseStatus.EXACT, zero.group(0).strip())
    if len(text.split()) <= _SHORT_ANSWER_WORDS:
        parsed = _parsed(_last_accepted(_QUANTITY_RE, text, _is_plain_count))
        if parsed is not None:
            return parsed
    return ParsedAnswer(None, ParseStatus.NONE, None)


def _sentence_around(text: str, match: re.Match) -> str:
    start = max(text.rfind(mark, 0, match.start()) for mark in ".!?\n") + 1
    ends = [i for i in (text.find(mark, match.end()) for mark in ".!?\n") if i >= 0]
    return text[start : min(ends) + 1 if ends else len(text)].strip()


_PLAIN_INTEGER_RE = re.compile(r"\s*(\d+)\s*")


def parse_count(answer_text: str | None) -> ParsedAnswer:
    """Parse the ecDNA count stated in a model's answer.

    Parameters
    ----------
    answer_text : str or None
        The raw answer of a model. None (no answer) and blank text give
        status ``none``.

    Returns
    -------
    ParsedAnswer
        ``value`` is the count as a float (a range gives its midpoint, a bound
        its bound) or None for ``refusal`` and ``none``. The rules that pick
        the count among several numbers are listed in the module docstring.

    Examples
    --------
    >>> parse_count("I see 3 nuclei and 40 chromosomes. Answer: 14")
    ParsedAnswer(value=14.0, status=<ParseStatus.EXACT: 'exact'>, span='14')
    >>> parse_count("between 3 and 5 ecDNA").value
    4.0
    """
    if answer_text is None:
        return ParsedAnswer(None, ParseStatus.NONE, None)
    plain = _PLAIN_INTEGER_RE.fullmatch(answer_text)
    if plain is not None:
        return ParsedAnswer(float(plain.group(1)), ParseStatus.EXACT, plain.group(1))
    text = _normalise(answer_text).strip()
    if not text:
        return ParsedAnswer(None, ParseStatus.NONE, None)
    from_json = _from_json(text)
    if from_json is not None:
        return from_json
    return _parse_text(text)


# Confidence ------------------------------------------------------------------

#: Values for confidence stated in words. "Very high" and "very low" map like "high" and "low".
CONFIDENCE_LEVELS = {"high": 0.9, "medium": 0.6, "moderate": 0.6, "low": 0.3}

_LEVEL = r"(?P<level>high|medium|moderate|low)"
_CONFIDENCE_RES = (
    re.compile(
        r"confiden(?:ce|t)\W{0,3}(?:(?:level|score)\W{0,3})?(?:(?:is|of|at)\W{0,3})?"
        r"(?P<number>\d+(?:\.\d+)?)\s*(?P<percent>%|percent)?(?:\s*/\s*(?P<scale>10|100)(?!\d))?",
        re.IGNORECASE,
    ),
    re.compile(
        r"(?P<number>\d+(?:\.\d+)?)\s*(?P<percent>%|percent)\s+(?:confiden|sure|certain)", re.IGNORECASE
    ),
    re.compile(rf"(?<![a-z]){_LEVEL}(?:ly)?\s+confiden", re.IGNORECASE),
    re.compile(
        rf"confiden(?:ce|t)\W{{0,3}}(?:level\W{{0,3}})?(?:(?:is|of)\s+)?(?:very\s+)?{_LEVEL}(?![a-z])",
        re.IGNORECASE,
    ),
)


def parse_confidence(answer_text: str | None) -> float | None:
    """Parse the confidence a model states alongside its count.

    Parameters
    ----------
    answer_text : str or None
        The raw answer of a model, for example "Count: 12. Confidence: 0.8".

    Returns
    -------
    float or None
        Confidence in [0, 1]. Percentages ("80%", "confidence: 80") and
        scores out of 10 or 100 ("8/10") are divided to that range, and the
        words high, medium (or moderate) and low map to 0.9, 0.6 and 0.3.
        None when the answer states no confidence or states one outside
        [0, 1] after scaling. When several are stated, the last one counts.
    """
    if not answer_text:
        return None
    text = _normalise(answer_text)
    found: tuple[int, float | None] | None = None
    for pattern in _CONFIDENCE_RES:
        for match in pattern.finditer(text):
            if found is None or match.start() >= found[0]:
                found = (match.start(), _confidence_value(match))
    return None if found is None else found[1]


def _confidence_value(match: re.Match) -> float | None:
    groups = match.groupdict()
    if groups.get("level"):
        return CONFIDENCE_LEVELS[groups["level"].lower()]
    value = float(groups["number"])
    if groups.get("scale"):
        value /= float(groups["scale"])
    elif groups.get("percent") or value > 1:
        value /= 100
    return value if 0 <= value <= 1 else None
