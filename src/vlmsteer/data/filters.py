"""One typed filter for samples, store records, vectors and conditions.

A filter is a conjunction of :class:`Condition` s, written on the command line as
``field=value``, ``field=a|b`` (any of), ``field~set`` (contains a whole word of a keyword
set, see :mod:`vlmsteer.data.keywords`) or ``field!~set`` (contains none), joined by commas:

>>> f = Filter.parse("answer_type=number, response=1|one")
>>> str(f)
'answer_type=number,response=1|one'
>>> Filter.parse("response!~colors").conditions[0]
Condition(field='response', op=<Op.LACKS: '!~'>, values=('colors',))

Parsing happens once; ``str()`` prints the filter back canonically (that text is what a
vector records as its source or target). ``answer`` and ``response`` compare VQA-normalized
answers ("Two." equals "2"); ``meta.style`` reads a nested field.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Iterable

from vlmsteer.data.keywords import keyword_set
from vlmsteer.data.sample import Sample
from vlmsteer.data.text import normalize_answer
from vlmsteer.errors import VlmsteerError

ANSWER_FIELDS = ("answer", "response")


class Op(str, enum.Enum):
    EQUALS = "="
    HAS = "~"  # contains a word of the keyword set
    LACKS = "!~"  # contains no word of the keyword set


@dataclass(frozen=True)
class Condition:
    field: str
    op: Op
    values: tuple[str, ...]

    def __post_init__(self):
        if not self.field or not self.values or any(v == "" for v in self.values):
            raise VlmsteerError(f"incomplete condition {self}")
        if self.op is not Op.EQUALS:
            if len(self.values) != 1:
                raise VlmsteerError(f"condition {self}: a keyword condition names one keyword set")
            keyword_set(self.values[0])  # unknown set: one-line error at parse time

    def __str__(self) -> str:
        return f"{self.field}{self.op.value}{'|'.join(self.values)}"

    def holds(self, value: Any) -> bool:
        """Whether a field's ``value`` (a text, a list of texts, or None) satisfies the condition."""
        if self.op is Op.EQUALS:
            return normalized(self.field, value) in {normalized(self.field, v) for v in self.values}
        texts = value if isinstance(value, list) else [value]
        hit = any(t is not None and keyword_set(self.values[0]).matches(str(t)) for t in texts)
        return hit == (self.op is Op.HAS)


_CONDITION = re.compile(r"\s*([^=~!]+?)\s*(=|!~|~)(.*)")
# a comma starts a new condition only where a field name and an operator follow
_SPLIT = re.compile(r",(?=[^,=~]+(?:=|!?~))")


@dataclass(frozen=True)
class Filter:
    conditions: tuple[Condition, ...]

    @classmethod
    def parse(cls, text: str) -> "Filter":
        conditions = []
        for part in (p for p in _SPLIT.split(text) if p.strip()):
            m = _CONDITION.fullmatch(part)
            if not m:
                raise VlmsteerError(f"filter {text!r}: expected field=value, field~keywords or field!~keywords, "
                                    f"got {part!r}")
            name, op, rest = m.groups()
            conditions.append(Condition(name, Op(op), tuple(v.strip() for v in rest.split("|"))))
        if not conditions:
            raise VlmsteerError(f"empty filter {text!r}")
        return cls(tuple(conditions))

    @classmethod
    def of(cls, *conditions: str | Condition) -> "Filter":
        """``Filter.of("response~colors", "answer_type=other")``."""
        return cls(tuple(c for item in conditions
                         for c in (cls.parse(item).conditions if isinstance(item, str) else (item,))))

    def __str__(self) -> str:
        return ",".join(map(str, self.conditions))

    def value_of(self, *fields: str) -> str | None:
        """The one value an ``=`` condition on one of ``fields`` asks for (None if none or several)."""
        hits = [c.values[0] for c in self.conditions
                if c.op is Op.EQUALS and c.field in fields and len(c.values) == 1]
        return hits[0] if len(hits) == 1 else None

    def matches_record(self, record: dict) -> bool:
        """A store record (``"meta.style"`` reads nested fields)."""
        return all(c.holds(record_value(record, c.field)) for c in self.conditions)

    def matches_sample(self, sample: Sample) -> bool:
        """A :class:`Sample`: its attributes (``answer`` is the most common reference), else ``meta``."""
        return all(c.holds(sample_value(sample, c.field)) for c in self.conditions)

    def samples(self, samples: Iterable[Sample]) -> list[Sample]:
        return [s for s in samples if self.matches_sample(s)]


def as_filter(value: "Filter | str | None") -> Filter | None:
    """A filter from its text (or itself); None stays None."""
    return Filter.parse(value) if isinstance(value, str) else value


def normalized(field: str, value: Any) -> Any:
    """The value filters compare: VQA-normalized for answer fields, unchanged otherwise."""
    return normalize_answer(str(value)) if field in ANSWER_FIELDS and value is not None else value


def record_value(record: dict, key: str) -> Any:
    """A record field; ``"meta.style"`` reads nested fields."""
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def sample_value(sample: Sample, key: str) -> Any:
    if key.startswith("meta."):
        return record_value(sample.meta, key[5:])
    return getattr(sample, key) if hasattr(sample, key) else sample.meta.get(key)
