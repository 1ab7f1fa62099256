"""Field extraction by patterns and context: claimed amount and currency, incident date, policy number.

Each kind of field is found with a regular expression that knows the common notations; when a document holds
several candidates (a claimed amount next to a deductible, an incident date next to a date of birth), the words
around each candidate, within its sentence, decide: "claimed", "total", "reimburse" count for an amount,
"deductible", "premium", "previous" against it, and an amount that is the sum of other amounts mentioned (the
total of an itemised claim) gets a bonus. Ties go to the first candidate in the document.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

_NUMBER = r"(?<![\w.,])(?:\d{1,3}(?:[,.]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?)(?![\d])"
_MONEY = re.compile(
    r"(?:(?P<pre>US\$|\$|€|£|\b(?:USD|EUR|GBP)\b)[ \t]{0,3})?"
    rf"(?P<num>{_NUMBER})"
    # A code or symbol after the number, unless it is the prefix of the next number ("June 2022 €4,471").
    r"(?:[ \t]{0,3}(?P<post>(?:USD|EUR|GBP|dollars?|euros?|pounds?)\b|€)(?![ \t]*\d))?",
    re.IGNORECASE,
)
_CURRENCY_OF = {
    "$": "USD",
    "us$": "USD",
    "usd": "USD",
    "dollar": "USD",
    "dollars": "USD",
    "€": "EUR",
    "eur": "EUR",
    "euro": "EUR",
    "euros": "EUR",
    "£": "GBP",
    "gbp": "GBP",
    "pound": "GBP",
    "pounds": "GBP",
}

_MONTH = (
    r"(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_ORDINAL = r"(?:st|nd|rd|th)?"
_DATES = (
    re.compile(r"\b(?P<year>\d{4})-(?P<mnum>\d{1,2})-(?P<day>\d{1,2})\b"),
    re.compile(r"\b(?P<mnum>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{4})\b"),  # US month/day/year
    re.compile(rf"\b{_MONTH}\s+(?P<day>\d{{1,2}}){_ORDINAL},?\s+(?P<year>\d{{4}})\b", re.IGNORECASE),
    re.compile(rf"\b(?P<day>\d{{1,2}}){_ORDINAL}(?:\s+of)?\s+{_MONTH},?\s+(?P<year>\d{{4}})\b", re.IGNORECASE),
)
_MONTH_NUMBER = {
    name: i + 1
    for i, name in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))
}

_POLICY = re.compile(r"\bPL[\s-]{0,3}(?P<a>\d{4})[\s-]?(?P<b>\d{4})\b", re.IGNORECASE)

# Sentence boundaries: a full stop, ! or ? followed by white space (not a decimal point), or a line break.
_BOUNDARY = re.compile(r"(?<=[.!?])\s|\n")

_AMOUNT_FOR = ("claim", "total", "reimburs", "estimat", "bill", "amount", "request", "cost", "invoice", "out of pocket")
_AMOUNT_AGAINST = ("deductib", "premium", "excess", "previous", "prior", "limit", "coverage", "settled")
_DATE_FOR = ("occur", "happen", "incident", "loss", "took place", "event", "accident", "trouble")
_DATE_AGAINST = ("submit", "report", "birth", "born", "dob", "effective", "since", "sent", "issued")

FIELD_NAMES: tuple[str, ...] = ("amount", "currency", "incident_date", "policy_number")


@dataclass(frozen=True)
class ExtractedFields:
    """What the patterns found in one document; ``None`` where nothing was found."""

    amount: Decimal | None = None
    currency: str | None = None
    incident_date: dt.date | None = None
    policy_number: str | None = None
    """Canonical form ``PL-12345678``."""
    fields_found: list[str] = field(default_factory=list)


def _contexts(text: str, spans: list[tuple[int, int]], before: int = 80, after: int = 60) -> list[tuple[str, str]]:
    """For each span (in document order), the lower-cased text left and right of it, cut at sentence boundaries
    and at the neighbouring spans, so that a label belongs to the value it precedes."""
    out: list[tuple[str, str]] = []
    for i, (start, end) in enumerate(spans):
        left_limit = max(0, start - before, spans[i - 1][1] if i > 0 else 0)
        right_limit = min(len(text), end + after, spans[i + 1][0] if i + 1 < len(spans) else len(text))
        left = text[left_limit:start]
        cuts = list(_BOUNDARY.finditer(left))
        if cuts:
            left = left[cuts[-1].end() :]
        right = text[end:right_limit]
        cut = _BOUNDARY.search(right)
        if cut:
            right = right[: cut.start()]
        out.append((left.lower(), right.lower()))
    return out


def _score(context: tuple[str, str], good: tuple[str, ...], bad: tuple[str, ...]) -> int:
    """Keywords for the field count +1, keywords against it -2; the left side (labels) counts double."""

    def side(words: str) -> int:
        return sum(word in words for word in good) - 2 * sum(word in words for word in bad)

    left, right = context
    return 2 * side(left) + side(right)


def parse_number(raw: str) -> Decimal | None:
    """``1,234.50``, ``1.234,50``, ``1234`` and ``1,234`` as decimals: a last separator followed by one or two
    digits is the decimal point, every other separator groups thousands."""
    match = re.search(r"[.,](\d{1,2})$", raw)
    if match:
        integer, fraction = raw[: match.start()], match.group(1)
    else:
        integer, fraction = raw, "0"
    digits = re.sub(r"[.,]", "", integer)
    try:
        return Decimal(f"{digits}.{fraction}").quantize(Decimal("0.01"))
    except InvalidOperation:
        return None


def find_amounts(text: str) -> list[tuple[Decimal, str, int]]:
    """Every money mention as (amount, currency, score), in document order."""
    mentions: list[tuple[Decimal, str, int, int]] = []
    for m in _MONEY.finditer(text):
        marker = m.group("pre") or m.group("post")
        if not marker:
            continue  # a bare number: a year, a phone number, a count
        value = parse_number(m.group("num"))
        if value is not None:
            mentions.append((value, _CURRENCY_OF[marker.lower()], m.start(), m.end()))
    contexts = _contexts(text, [(start, end) for _, _, start, end in mentions])
    values = [value for value, _, _, _ in mentions]
    return [
        (value, currency, _score(context, _AMOUNT_FOR, _AMOUNT_AGAINST) + (3 if _is_total(i, values) else 0))
        for i, ((value, currency, _, _), context) in enumerate(zip(mentions, contexts, strict=True))
    ]


def _is_total(i: int, values: list[Decimal]) -> bool:
    """Whether ``values[i]`` is the sum of two or more of the other values (the total of an itemised claim)."""
    others = [v for j, v in enumerate(values) if j != i]
    if len(others) < 2 or len(others) > 6:  # beyond a handful of amounts, some subset adds up by chance
        return False
    return any(
        sum(combo, Decimal(0)) == values[i]
        for size in range(2, len(others) + 1)
        for combo in itertools.combinations(others, size)
    )


def find_dates(text: str) -> list[tuple[dt.date, int]]:
    """Every valid date as (date, score), in document order."""
    mentions: list[tuple[dt.date, int, int]] = []
    for pattern in _DATES:
        for m in pattern.finditer(text):
            groups = m.groupdict()
            month = int(groups["mnum"]) if groups.get("mnum") else _MONTH_NUMBER[groups["month"][:3].lower()]
            try:
                day = dt.date(int(groups["year"]), month, int(groups["day"]))
            except ValueError:
                continue
            mentions.append((day, m.start(), m.end()))
    mentions.sort(key=lambda item: item[1])
    contexts = _contexts(text, [(start, end) for _, start, end in mentions])
    return [
        (day, _score(context, _DATE_FOR, _DATE_AGAINST))
        for (day, _, _), context in zip(mentions, contexts, strict=True)
    ]


def extract_fields(text: str) -> ExtractedFields:
    """The claimed amount and currency, the incident date and the policy number of one claim document."""
    amount: Decimal | None = None
    currency: str | None = None
    amounts = find_amounts(text)
    if amounts:
        # max() keeps the first of equal scores, so ties go to the earliest mention.
        amount, currency, _ = max(amounts, key=lambda item: item[2])
    incident: dt.date | None = None
    dates = find_dates(text)
    if dates:
        incident = max(dates, key=lambda item: item[1])[0]
    policy: str | None = None
    if m := _POLICY.search(text):
        policy = f"PL-{m.group('a')}{m.group('b')}"
    values = {"amount": amount, "currency": currency, "incident_date": incident, "policy_number": policy}
    return ExtractedFields(
        amount=amount,
        currency=currency,
        incident_date=incident,
        policy_number=policy,
        fields_found=[name for name in FIELD_NAMES if values[name] is not None],
    )
