"""A labelled PII set, generated: insurance-claim-like JSON records with known personal data and look-alikes.

``generate(n, seed)`` is deterministic. Each ``Sample`` holds a record and its ``labels``: (JSON path, entity, the
exact text) for every piece of personal data in it. Everything else in a record is, by construction, not personal
data, and much of it is chosen to look like it: order and claim numbers, 16-digit references that fail the Luhn
check, IBANs with wrong check digits, incident dates and timestamps (dates, but not birth dates), nine-digit
tracking numbers without an SSN next to them, amounts, postcodes, versions and UUIDs.

Values are valid where the real thing has a check: cards pass Luhn (Visa, Mastercard, Amex), IBANs the mod-97
check (DE, GB, FR, NL, ES), SSNs follow the SSA's area/group/serial rules, NHS numbers and Spanish NIFs carry
their check digit or letter, phone numbers are valid in their numbering plan (libphonenumber says so; a number
a recognizer should find is a number that can be dialled).
"""

from __future__ import annotations

import random
import string
import uuid
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

FIRST = ["Jane", "John", "Maria", "Ahmed", "Chen", "Olga", "Liam", "Sofia", "Kwame", "Priya", "Lukas", "Emma", "Noah"]
LAST = ["Roe", "Doe", "Garcia", "Khan", "Wei", "Ivanova", "Murphy", "Rossi", "Mensah", "Patel", "Schmidt", "Dubois"]
DOMAINS = ["example.com", "mail.example.org", "insurer.co.uk", "post.example.de", "corp-mail.net", "claims.io"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
WORDS = ["water", "damage", "kitchen", "pipe", "burst", "second", "floor", "roof", "storm", "window", "broken"]

# The entities the set labels, as the Policy names them.
ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "UK_NHS",
    "ES_NIF",
    "DATE_OF_BIRTH",
    "PERSON",
)


@dataclass
class Sample:
    record: dict[str, Any]
    #: (path, entity, exact text) of every piece of personal data in the record.
    labels: list[tuple[str, str, str]] = field(default_factory=list)


def _luhn_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def card(rng: random.Random, valid: bool = True) -> str:
    kind = rng.choice(["visa", "mc", "amex"])
    if kind == "amex":
        body = rng.choice(["34", "37"]) + "".join(rng.choices(string.digits, k=12))
    else:
        prefix = "4" if kind == "visa" else str(rng.randint(51, 55))
        body = prefix + "".join(rng.choices(string.digits, k=15 - len(prefix)))
    check = _luhn_digit(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    number = body + check
    style = rng.choice(["spaces", "dashes", "plain"])
    if style == "plain":
        return number
    sep = " " if style == "spaces" else "-"
    groups = [number[0:4], number[4:10], number[10:]] if kind == "amex" else [number[i : i + 4] for i in (0, 4, 8, 12)]
    return sep.join(groups)


def iban(rng: random.Random, valid: bool = True) -> str:
    country, bban = rng.choice(
        [
            ("DE", "".join(rng.choices(string.digits, k=18))),
            ("GB", "".join(rng.choices(string.ascii_uppercase, k=4)) + "".join(rng.choices(string.digits, k=14))),
            ("FR", "".join(rng.choices(string.digits, k=23))),
            ("NL", "".join(rng.choices(string.ascii_uppercase, k=4)) + "".join(rng.choices(string.digits, k=10))),
            ("ES", "".join(rng.choices(string.digits, k=20))),
        ]
    )
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    if not valid:
        check = (check + rng.randint(1, 50)) % 97 + 2
    compact = f"{country}{check:02d}{bban}"
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def ssn(rng: random.Random, dashed: bool = True) -> str:
    area = rng.choice([a for a in range(1, 900) if a not in {0, 666}])
    group, serial = rng.randint(1, 99), rng.randint(1, 9999)
    if dashed:
        return f"{area:03d}-{group:02d}-{serial:04d}"
    return f"{area:03d}{group:02d}{serial:04d}"


def nhs(rng: random.Random) -> str:
    while True:
        digits = [rng.randint(0, 9) for _ in range(9)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        if check == 11:
            check = 0
        if check != 10:
            number = "".join(map(str, digits)) + str(check)
            return f"{number[:3]} {number[3:6]} {number[6:]}"


def nif(rng: random.Random) -> str:
    number = rng.randint(10_000_000, 99_999_999)
    return f"{number}{'TRWAGMYFPDXBNJZSQVHLCKE'[number % 23]}"


def phone(rng: random.Random) -> str:
    while True:
        kind = rng.choice(["us", "us", "uk", "de", "fr"])
        if kind == "us":
            area = rng.choice([212, 312, 415, 617, 206, 303, 512, 702])
            ex, line = rng.randint(201, 999), rng.randint(0, 9999)
            text = rng.choice(
                [
                    f"+1 {area}-{ex}-{line:04d}",
                    f"({area}) {ex}-{line:04d}",
                    f"{area}.{ex}.{line:04d}",
                    f"{area}-{ex}-{line:04d}",
                ]
            )
            region = "US"
        elif kind == "uk":
            london = f"+44 20 7{rng.randint(100, 999)} {rng.randint(1000, 9999)}"
            text = rng.choice([london, f"07700 9{rng.randint(10000, 99999)}"])
            region = "GB"
        elif kind == "de":
            text = f"+49 30 {rng.randint(1000000, 9999999)}"
            region = "DE"
        else:
            text = f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}"
            region = "FR"
        if phonenumbers.is_valid_number(phonenumbers.parse(text, region)):
            return text


def date(rng: random.Random, start: int, end: int) -> tuple[str, str]:
    """A date in several written forms: (text, form)."""
    y, m, d = rng.randint(start, end), rng.randint(1, 12), rng.randint(1, 28)
    form = rng.choice(["iso", "dmy", "mdy", "long"])
    if form == "iso":
        return f"{y}-{m:02d}-{d:02d}", form
    if form == "dmy":
        return f"{d:02d}/{m:02d}/{y}", form
    if form == "mdy":
        return f"{m:02d}/{d:02d}/{y}", form
    return f"{MONTHS[m - 1 if m <= 10 else 0]} {d}, {y}", form


def sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choices(WORDS, k=n)).capitalize() + "."


def one(rng: random.Random, index: int) -> Sample:
    sample = Sample({})
    rec = sample.record
    label = sample.labels.append

    first, last = rng.choice(FIRST), rng.choice(LAST)
    email = f"{first.lower()}.{last.lower()}{rng.randint(1, 999)}@{rng.choice(DOMAINS)}"
    claimant: dict[str, Any] = {}
    if rng.random() < 0.5:
        claimant["firstName"], claimant["lastName"] = first, last
        label(("$.claimant.firstName", "PERSON", first))
        label(("$.claimant.lastName", "PERSON", last))
    else:
        claimant["name"] = f"{first} {last}"
        label(("$.claimant.name", "PERSON", f"{first} {last}"))
    claimant["email"] = email
    label(("$.claimant.email", "EMAIL_ADDRESS", email))
    number = phone(rng)
    claimant["phone"] = number
    label(("$.claimant.phone", "PHONE_NUMBER", number))
    dob, _ = date(rng, 1940, 2005)
    dob_key = rng.choice(["dob", "dateOfBirth", "birthDate", "date_of_birth"])
    claimant[dob_key] = dob
    label((f"$.claimant.{dob_key}", "DATE_OF_BIRTH", dob))
    kind = rng.choice(["ssn", "ssn", "nhs", "nif"])
    if kind == "ssn":
        dashed = rng.random() < 0.7
        value = ssn(rng, dashed)
        claimant["ssn"] = value
        label(("$.claimant.ssn", "US_SSN", value))
    elif kind == "nhs":
        value = nhs(rng)
        claimant["nhsNumber"] = value
        label(("$.claimant.nhsNumber", "UK_NHS", value))
    else:
        value = nif(rng)
        claimant["nif"] = value
        label(("$.claimant.nif", "ES_NIF", value))
    rec["claimant"] = claimant
    _payment_and_text(rng, sample)
    _look_alikes(rng, rec, index)
    return sample


def _payment_and_text(rng: random.Random, sample: Sample) -> None:
    rec = sample.record
    label = sample.labels.append
    payment: dict[str, Any] = {}
    if rng.random() < 0.6:
        value = card(rng)
        payment["card"] = value
        label(("$.payment.card", "CREDIT_CARD", value))
    value = iban(rng)
    payment["iban"] = value
    label(("$.payment.iban", "IBAN_CODE", value))
    rec["payment"] = payment

    # Free text with PII in it, and some without.
    parts = [sentence(rng)]
    if rng.random() < 0.5:
        other = f"{rng.choice(FIRST).lower()}@{rng.choice(DOMAINS)}"
        parts.append(f"Please reply to {other} before Friday.")
        label(("$.description", "EMAIL_ADDRESS", other))
    if rng.random() < 0.4:
        other = phone(rng)
        parts.append(f"Call back on {other}.")
        label(("$.description", "PHONE_NUMBER", other))
    if rng.random() < 0.3:
        other = card(rng)
        parts.append(f"Refund to card {other}.")
        label(("$.description", "CREDIT_CARD", other))
    if rng.random() < 0.3:
        born, form = date(rng, 1940, 2005)
        parts.append(f"The driver was born {'on ' if form == 'long' else ''}{born}.")
        label(("$.description", "DATE_OF_BIRTH", born))
    if rng.random() < 0.2:
        other = ssn(rng)
        parts.append(f"SSN {other} on file.")
        label(("$.description", "US_SSN", other))
    rng.shuffle(parts)
    rec["description"] = " ".join(parts)


def _look_alikes(rng: random.Random, rec: dict[str, Any], index: int) -> None:
    """None of this is personal data."""
    incident, _ = date(rng, 2019, 2025)
    rec["incidentDate"] = incident
    rec["reportedAt"] = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:15:00Z"
    rec["orderNumber"] = rng.choice(
        [f"ORD-{rng.randint(2019, 2025)}-{rng.randint(100000, 999999)}", str(rng.randint(100_000_000, 999_999_999))]
    )
    rec["orderId"] = rng.randint(10**11, 10**12 - 1)
    rec["claimId"] = f"CLM-{index:07d}"
    rec["policyNumber"] = f"PN-{rng.randint(10000, 99999)}"
    rec["reference"] = card(rng, valid=False)
    rec["oldIban"] = iban(rng, valid=False)
    rec["amount"] = round(rng.uniform(100, 50000), 2)
    rec["amountText"] = f"{rng.randint(1, 99)},{rng.randint(100, 999)}.{rng.randint(10, 99)} EUR"
    rec["postcode"] = f"{rng.randint(10000, 99999)}"
    rec["modelVersion"] = f"{rng.randint(1, 3)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
    rec["requestId"] = str(uuid.UUID(int=rng.getrandbits(128)))
    rec["notes"] = f"Tracking {rng.randint(100_000_000, 999_999_999)} shipped {incident}; {sentence(rng, 6)}"
    rec["priority"] = rng.choice(["high", "normal", "low"])


def generate(n: int = 300, seed: int = 20261125) -> list[Sample]:
    rng = random.Random(seed)
    return [one(rng, i) for i in range(n)]


def hard(n: int = 100, seed: int = 7) -> list[Sample]:
    """Personal data where this detector is known to miss it, for an honest report (not a floor): names in free
    text (no NER model), phone numbers as bare digits with no phone word near, birth dates with no birth word."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sample = Sample({})
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        sample.record["note"] = f"Spoke with {name} about the claim."
        sample.labels.append(("$.note", "PERSON", name))
        digits = "".join(c for c in phone(rng) if c.isdigit())[-10:]
        sample.record["remark"] = f"reach {digits} after 5pm"
        sample.labels.append(("$.remark", "PHONE_NUMBER", digits))
        born, _ = date(rng, 1940, 2005)
        sample.record["details"] = f"claimant, {born}, resident since 2010"
        sample.labels.append(("$.details", "DATE_OF_BIRTH", born))
        out.append(sample)
    return out
