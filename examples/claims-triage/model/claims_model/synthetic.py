"""A labelled synthetic set of insurance-claim documents, generated deterministically from a seed.

Each document is free text in one of three layouts (a claim form, an e-mail, a narrative paragraph) with:

- a claim type (auto, property, health, travel) told by a description whose vocabulary overlaps between types on
  purpose (a stolen car vs. a burglary vs. a passport stolen abroad; a car accident treated at a clinic is health);
- the claimed amount in USD, EUR or GBP, in varied notations (``$1,234.50``, ``EUR 1.234,50``, ``1,234 pounds``),
  sometimes next to a distracting amount (a deductible, a premium, a previous claim);
- the incident date in varied notations, sometimes next to a distracting date (submission date, date of birth);
- a policy number (canonical ``PL-12345678``, written with or without the dash, in any case);
- the claimant's name, e-mail address and phone number (personal data for the PII-masking tests).

Noise: typos (swapped, dropped, doubled and replaced letters) in the wording around the fields, case changes and
irregular whitespace. The field values themselves are never corrupted, so the labels stay exact.

``python -m claims_model.synthetic --n 3 --seed 1`` prints a few documents with their labels.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal

from claims_model import CLAIM_TYPES

CURRENCIES: tuple[str, ...] = ("USD", "EUR", "GBP")


@dataclass(frozen=True)
class ClaimRecord:
    """One synthetic claim document and the values an extractor should find in it."""

    text: str
    claim_type: str
    amount: Decimal
    """The claimed amount, two decimals."""
    currency: str
    """ISO 4217 code of the claimed amount."""
    incident_date: dt.date
    policy_number: str
    """Canonical form, ``PL-`` and eight digits."""
    claimant_name: str
    claimant_email: str
    claimant_phone: str

    def to_json(self) -> dict[str, str]:
        """The record as JSON-ready strings (amount as a decimal string, date as ISO 8601)."""
        data = asdict(self)
        return {key: str(value) if not isinstance(value, dt.date) else value.isoformat() for key, value in data.items()}


# --- vocabulary -------------------------------------------------------------------------------------------------

_SLOTS: dict[str, tuple[str, ...]] = {
    "vehicle": ("car", "truck", "SUV", "van", "sedan", "hatchback", "pickup", "motorbike", "estate car"),
    "part": ("bumper", "fender", "door", "windshield", "headlight", "side mirror", "hood", "tailgate", "wheel"),
    "place": ("parking lot", "intersection", "highway", "motorway", "roundabout", "car park", "school run", "bridge"),
    "room": ("kitchen", "bathroom", "basement", "living room", "attic", "garage", "bedroom", "hallway"),
    "item": ("laptop", "television", "jewelry", "bicycle", "sofa", "carpet", "washing machine", "camera"),
    "home": ("house", "flat", "apartment", "home", "cottage", "property"),
    "body": ("wrist", "ankle", "knee", "shoulder", "back", "hip", "arm", "collarbone"),
    "procedure": ("surgery", "an MRI scan", "an x-ray", "physiotherapy", "stitches", "a CT scan", "blood tests"),
    "facility": ("hospital", "clinic", "emergency room", "urgent care centre", "medical centre"),
    "city": ("Lisbon", "Rome", "Bangkok", "Toronto", "Madrid", "Athens", "Prague", "Dublin", "Cairo", "Lima"),
    "transport": ("flight", "train", "ferry", "connecting flight", "cruise", "overnight bus"),
    "bag": ("luggage", "suitcase", "backpack", "baggage", "carry-on bag", "duffel bag"),
    "years": ("two", "three", "five", "seven", "ten", "twelve"),
}

# Descriptions per claim type. Several borrow another type's words (roof, stolen, clinic, car, holiday) on purpose.
_NARRATIVES: dict[str, tuple[str, ...]] = {
    "auto": (
        "I was rear-ended at a red light and the {part} of my {vehicle} is crushed.",
        "Another driver hit my {vehicle} in the {place} and drove off without leaving details.",
        "My {vehicle} slid on ice near the {place} and struck a guardrail; the {part} is broken.",
        "The {vehicle} was towed to the body shop to repair the {part} and both headlights.",
        "Hail dented the {part} and the roof of my {vehicle} while it was parked outside the {home}.",
        "My {vehicle} was stolen from outside my {home} overnight and found later with a smashed {part}.",
        "A truck merged into my lane on the {place} and scraped the whole side of my {vehicle}.",
        "I hit a deer on a country road; the {part} and radiator of the {vehicle} need replacing.",
        "I hurt my {body} slightly but the main damage is to my {vehicle}, which will not start.",
        "While reversing in the {place} a pillar cracked my rear {part}; the garage quoted the repair.",
        "Vandals keyed my {vehicle} and broke the {part} during the night.",
    ),
    "property": (
        "A pipe burst in the {room} and water damaged the floors and the cabinets.",
        "A storm tore shingles off the roof of our {home} and rain leaked into the {room}.",
        "Someone broke into the {home} and stole my {item} and some cash.",
        "A fire started in the {room} and smoke damaged the rest of the {home}.",
        "The {room} flooded after heavy rain and the {item} and the boiler are ruined.",
        "A tree fell on the fence and the shed of our {home} during the windstorm.",
        "Hail broke several windows of the {home} and damaged the {item} inside.",
        "A delivery van reversed into our {home} and cracked the front wall next to the {room}.",
        "The washing machine leaked for days and the {room} ceiling below collapsed.",
        "Lightning struck the {home} and the power surge destroyed my {item}.",
        "Burglars forced the back door of the {home}; the lock and my {item} are gone.",
    ),
    "health": (
        "I was admitted to the {facility} for {procedure} after severe abdominal pain.",
        "I broke my {body} and needed {procedure}, a cast and several follow-up visits.",
        "I went to the {facility} after a severe allergic reaction; the prescriptions are attached.",
        "I had outpatient surgery on my {body} with anesthesia and two specialist consultations.",
        "I was injured in a collision at the {place} and treated at the {facility} for my {body}.",
        "My doctor referred me for {procedure} because of chronic pain in my {body}.",
        "I fell ill during my holiday and needed {procedure} at the {facility} after returning home.",
        "My daughter needed {procedure} at the {facility} after falling off her bicycle.",
        "I sprained my {body} playing football and the {facility} prescribed physiotherapy.",
        "The dentist had to remove a broken tooth and I needed antibiotics afterwards.",
        "I was kept overnight at the {facility} for observation and {procedure}.",
    ),
    "travel": (
        "My {transport} to {city} was cancelled and I had to pay for an extra hotel night.",
        "The airline lost my checked {bag} on the way to {city} and I bought clothes and toiletries.",
        "I had to cut my trip to {city} short because of a family emergency; the tours were not refunded.",
        "I needed {procedure} at a {facility} in {city} while on vacation and paid the bill abroad.",
        "My passport and my {bag} were stolen from the hotel room in {city}.",
        "The rental {vehicle} was damaged in {city} and the agency charged me for the repair.",
        "My {bag} was delayed for three days after the {transport} to {city}, so I bought essentials.",
        "A strike cancelled my {transport} home from {city} and I booked a new ticket.",
        "I missed the {transport} to {city} because my first flight was late, and paid for rebooking.",
        "The tour operator in {city} went bankrupt and the prepaid excursions were lost.",
        "I fell ill before departure and had to cancel the whole trip to {city}.",
    ),
}

# Descriptions that tell nothing of the type: a document made only of these is a coin toss for any classifier.
_GENERIC = (
    "The damage is described in the attached report.",
    "Everything happened very quickly and I could not prevent it.",
    "I had to pay the costs myself and kept all the receipts.",
    "The police were informed and have a record of it.",
    "An expert looked at it the next day.",
    "I had to take two days off work because of it.",
    "It was a very stressful experience for the whole family.",
    "The bill arrived last week.",
)
# Asides that mention another type's world without being the claim ("we were driving back from the airport").
_ASIDES = (
    "We were driving back from the airport at the time.",
    "My car was parked outside the {home} when it happened.",
    "I went to see my doctor afterwards for a check-up.",
    "Our {home} was empty because we were on holiday in {city}.",
    "I had just come back from a business trip to {city}.",
    "My neighbour drove me to the {facility} to get my {body} checked.",
    "I had to rent a {vehicle} for a week while this was sorted out.",
    "We had to stay in a hotel for two nights.",
)

_SUBJECTS: dict[str, tuple[str, ...]] = {
    "auto": ("Car accident claim", "Claim for my vehicle", "Motor claim"),
    "property": ("Home insurance claim", "Damage at my home", "Household claim"),
    "health": ("Medical expenses claim", "Claim for treatment costs", "Health claim"),
    "travel": ("Travel insurance claim", "Claim for my trip", "Trip disruption claim"),
}
_GENERIC_SUBJECTS = ("New claim", "Claim submission", "Request for reimbursement", "Insurance claim", "Re: my claim")

_FILLERS = (
    "Photos are attached.",
    "Receipts are attached.",
    "Please let me know if you need anything else.",
    "This is my first claim.",
    "I have been a customer for {years} years.",
    "Thank you for your help.",
    "I would appreciate a quick decision.",
    "Nobody else was involved.",
    "I can send more documents on request.",
    "A copy of the invoice is attached.",
)

_AMOUNT_PHRASES = (
    "I am claiming {money} in total.",
    "Total claimed: {money}",
    "Amount claimed: {money}",
    "The repair estimate came to {money}.",
    "The total bill was {money}.",
    "Please reimburse {money}.",
    "I request reimbursement of {money}.",
    "Claim amount - {money}",
    "The costs add up to {money}.",
    "{money} is the amount I am claiming.",
    "I paid {money} out of pocket and would like it back.",
)
_DISTRACTOR_AMOUNT_PHRASES = (
    "My deductible is {money}.",
    "The policy has a deductible of {money}.",
    "I pay a monthly premium of {money}.",
    "A previous claim of {money} was settled last year.",
    "The coverage limit is {money}.",
)
_DATE_PHRASES = (
    "The incident occurred on {date}.",
    "Date of loss: {date}",
    "It happened on {date}.",
    "This took place on {date}.",
    "Incident date: {date}",
    "The event was on {date}.",
    "On {date} the trouble began.",
)
_DISTRACTOR_DATE_PHRASES = (
    "Submitted on {other_date}.",
    "Date submitted: {other_date}",
    "Report date: {other_date}",
    "Date of birth: {dob}",
    "I was born on {dob}.",
    "Policy effective since {start_date}.",
)
_POLICY_PHRASES = (
    "Policy number: {policy}",
    "Policy no. {policy}",
    "My policy is {policy}.",
    "Ref policy {policy}",
    "I am insured under {policy}.",
)
_CONTACT_PHRASES = (
    "You can reach me at {email} or {phone}.",
    "Contact: {email}, {phone}",
    "Call me on {phone} or write to {email}.",
)

# Line items of an itemised claim: the parts add up to the claimed amount, and only the total is the answer.
_ITEMS: dict[str, tuple[str, ...]] = {
    "auto": ("towing", "parts", "labour", "paint work", "replacement vehicle"),
    "property": ("plumber", "materials", "cleaning", "drying equipment", "replacement furniture"),
    "health": ("consultation", "medication", "hospital stay", "physiotherapy sessions", "ambulance"),
    "travel": ("hotel", "taxi", "new ticket", "clothes", "meals"),
}

_FIRST_NAMES = (
    "Anna", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Keiko", "Liam",
    "Maria", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera", "Wen", "Yusuf", "Zoe",
)  # fmt: skip
_LAST_NAMES = (
    "Andersen", "Brown", "Costa", "Dubois", "Eriksson", "Fischer", "Garcia", "Huang", "Ivanova", "Jensen",
    "Kowalski", "Lopez", "Murphy", "Nakamura", "O'Brien", "Patel", "Rossi", "Schmidt", "Tanaka", "Weber",
)  # fmt: skip
_EMAIL_DOMAINS = ("example.com", "mail.example.org", "post.example.net", "inbox.example.com")

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

_PLACEHOLDER = re.compile(r"(\{[a-z_]+\})")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


# --- rendering of field values -----------------------------------------------------------------------------------


def _group(integer: int, sep: str) -> str:
    return f"{integer:,}".replace(",", sep)


def render_money(amount: Decimal, currency: str, rng: random.Random) -> str:
    """One of the notations people use for ``amount`` in ``currency``."""
    integer = int(amount)
    cents = int((amount - integer) * 100)
    whole = cents == 0 and rng.random() < 0.5  # sometimes "$1,200" instead of "$1,200.00"
    grouped = _group(integer, ",") if rng.random() < 0.8 else str(integer)
    us = grouped if whole else f"{grouped}.{cents:02d}"
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}[currency]
    word = {"USD": "dollars", "EUR": "euros", "GBP": "pounds"}[currency]
    choices = [f"{symbol}{us}", f"{currency} {us}", f"{us} {currency}", f"{us} {word}"]
    if currency == "USD":
        choices.append(f"US${us}")
    if currency == "EUR" and not whole:
        european = f"{_group(integer, '.')},{cents:02d}"  # "1.234,50"
        choices += [f"{european} EUR", f"EUR {european}", f"{european} €"]
    return rng.choice(choices)


def render_date(day: dt.date, rng: random.Random) -> str:
    """One of the notations people use for a date (numeric dates are US month/day/year)."""
    month = _MONTHS[day.month - 1]
    suffix = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}.get(day.day, "th")
    return rng.choice(
        (
            day.isoformat(),
            f"{month} {day.day}, {day.year}",
            f"{day.day} {month} {day.year}",
            f"{month[:3]} {day.day}, {day.year}",
            f"{day.day}{suffix} of {month} {day.year}",
            f"{day.month:02d}/{day.day:02d}/{day.year}",
            f"{day.day:02d} {month[:3]} {day.year}",
        )
    )


def render_policy(digits: str, rng: random.Random) -> str:
    """The policy number as people write it: ``PL-12345678``, ``PL 12345678``, ``pl12345678``, ``PL-1234-5678``."""
    prefix = rng.choice(("PL", "PL", "pl", "Pl"))
    return rng.choice(
        (
            f"{prefix}-{digits}",
            f"{prefix}-{digits}",
            f"{prefix} {digits}",
            f"{prefix}{digits}",
            f"{prefix}-{digits[:4]}-{digits[4:]}",
        )
    )


def render_phone(rng: random.Random) -> str:
    area, mid, last = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        (
            f"+1 {area}-{mid}-{last:04d}",
            f"({area}) {mid}-{last:04d}",
            f"{area}.{mid}.{last:04d}",
            f"+44 20 {mid} {last:04d}",
        )
    )


# --- noise -------------------------------------------------------------------------------------------------------


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    op = rng.randrange(4)
    if op == 0:  # swap two neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:  # drop a letter
        return word[:i] + word[i + 1 :]
    if op == 2:  # double a letter
        return word[:i] + word[i] + word[i:]
    return word[:i] + rng.choice(_LETTERS) + word[i + 1 :]  # replace a letter


def add_typos(text: str, rng: random.Random, rate: float) -> str:
    """Corrupt about ``rate`` of the words of four letters or more; ``{placeholders}`` are left alone."""
    parts = _PLACEHOLDER.split(text)
    out: list[str] = []
    for part in parts:
        if _PLACEHOLDER.fullmatch(part):
            out.append(part)
            continue
        words = re.split(r"(\s+)", part)
        out.append(
            "".join(w if not (len(w) >= 4 and w.isalpha() and rng.random() < rate) else _typo(w, rng) for w in words)
        )
    return "".join(out)


# --- documents ---------------------------------------------------------------------------------------------------


def _fill(template: str, rng: random.Random) -> str:
    return _PLACEHOLDER.sub(
        lambda m: rng.choice(_SLOTS[m.group(1)[1:-1]]) if m.group(1)[1:-1] in _SLOTS else m.group(1), template
    )


def _draw_amount(claim_type: str, rng: random.Random) -> Decimal:
    # Log-uniform amounts; auto and property claims run larger than health and travel, with a wide overlap.
    low, high = {"auto": (150, 60_000), "property": (200, 150_000), "health": (40, 40_000), "travel": (30, 12_000)}[
        claim_type
    ]
    value = low * (high / low) ** rng.random()
    if rng.random() < 0.3:  # round amounts are common in estimates
        return Decimal(round(value, -1)).quantize(Decimal("0.01"))
    return Decimal(str(round(value, 2))).quantize(Decimal("0.01"))


def _breakdown(claim_type: str, amount: Decimal, currency: str, rng: random.Random) -> str | None:
    """ "Breakdown: towing $120.00, parts $800.50." with parts that add up to ``amount``, or None when too small."""
    cents = int(amount * 100)
    k = rng.randint(2, 3)
    if cents < 100 * k:
        return None
    cuts = sorted(rng.sample(range(1, cents), k - 1))
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, cents], strict=True)]
    labels = rng.sample(_ITEMS[claim_type], k)
    items = ", ".join(
        f"{label} {render_money(Decimal(p) / 100, currency, rng)}" for label, p in zip(labels, parts, strict=True)
    )
    return f"{rng.choice(('Breakdown:', 'Itemised:', 'Details -'))} {items}."


def _story(claim_type: str, rng: random.Random, typo_rate: float) -> list[str]:
    """The description: mostly one to three sentences of the type, sometimes only generic ones, sometimes with an
    aside from another type's world."""
    n_specific = rng.choices((0, 1, 2, 3), weights=(6, 50, 30, 14))[0]
    chosen = rng.sample(_NARRATIVES[claim_type], n_specific)
    if n_specific == 0:
        chosen = rng.sample(_GENERIC, rng.randint(1, 2))
    elif rng.random() < 0.3:
        chosen.append(rng.choice(_GENERIC))
    if rng.random() < 0.2:
        chosen.insert(rng.randrange(len(chosen) + 1), rng.choice(_ASIDES))
    return [add_typos(_fill(t, rng), rng, typo_rate) for t in chosen]


def _shake(text: str, rng: random.Random) -> str:
    """Whitespace and case noise on the whole document (the extractor is case-insensitive)."""
    if rng.random() < 0.15:
        text = re.sub(r" ", "  ", text, count=rng.randint(1, 4))
    case = rng.random()
    if case < 0.08:
        return text.lower()
    if case < 0.12:
        return text.upper()
    return text


def generate_record(rng: random.Random, typo_rate: float = 0.04) -> ClaimRecord:
    """One random claim document and its labels."""
    claim_type = rng.choice(CLAIM_TYPES)
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    name = f"{first} {last}"
    email = f"{first.lower()}.{last.lower().replace(chr(39), '')}{rng.randint(1, 99)}@{rng.choice(_EMAIL_DOMAINS)}"
    phone = render_phone(rng)
    digits = f"{rng.randrange(10**8):08d}"
    amount = _draw_amount(claim_type, rng)
    currency = rng.choices(CURRENCIES, weights=(5, 3, 2))[0]
    incident = dt.date(2022, 1, 1) + dt.timedelta(days=rng.randrange(4 * 365))
    values = {
        "money": render_money(amount, currency, rng),
        "date": render_date(incident, rng),
        "other_date": render_date(incident + dt.timedelta(days=rng.randint(1, 60)), rng),
        "dob": render_date(dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(64 * 365)), rng),
        "start_date": render_date(incident - dt.timedelta(days=rng.randint(30, 2000)), rng),
        "policy": render_policy(digits, rng),
        "name": name,
        "email": email,
        "phone": phone,
    }
    distractor_money = render_money(_draw_amount(claim_type, rng), currency, rng)
    breakdown = _breakdown(claim_type, amount, currency, rng) if rng.random() < 0.15 else None

    def say(template: str, **overrides: str) -> str:
        noisy = add_typos(template, rng, typo_rate)
        fields = values | overrides
        return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1)[1:-1], m.group(1)), noisy)

    story = _story(claim_type, rng, typo_rate)
    fillers = [add_typos(_fill(t, rng), rng, typo_rate) for t in rng.sample(_FILLERS, rng.randint(0, 2))]
    amount_sentence = say(rng.choice(_AMOUNT_PHRASES))
    date_sentence = say(rng.choice(_DATE_PHRASES))
    policy_sentence = say(rng.choice(_POLICY_PHRASES))
    contact_sentence = say(rng.choice(_CONTACT_PHRASES))
    extras: list[str] = []
    if rng.random() < 0.3:
        extras.append(say(rng.choice(_DISTRACTOR_AMOUNT_PHRASES), money=distractor_money))
    if rng.random() < 0.3:
        extras.append(say(rng.choice(_DISTRACTOR_DATE_PHRASES)))
    if breakdown:
        extras.insert(0, breakdown)

    layout = rng.choice(("form", "email", "narrative"))
    if layout == "form":
        lines = [
            rng.choice(("CLAIM FORM", "Claim form", "Insurance claim form")),
            policy_sentence,
            f"Claimant: {name}",
            f"Email: {email}",
            f"Phone: {phone}",
            date_sentence,
            amount_sentence,
            *extras,
            "Description: " + " ".join(story),
            *fillers,
        ]
        text = "\n".join(lines)
    elif layout == "email":
        subjects = _SUBJECTS[claim_type] if rng.random() < 0.3 else _GENERIC_SUBJECTS
        body = [*story, date_sentence, amount_sentence, *extras, policy_sentence, *fillers]
        rng.shuffle(body)
        greeting = rng.choice(("Hello,", "Dear claims team,", "Hi,", "To whom it may concern,"))
        closing = rng.choice(("Kind regards,", "Best,", "Thanks,", "Sincerely,"))
        text = "\n".join(
            [
                f"Subject: {add_typos(rng.choice(subjects), rng, typo_rate)}",
                "",
                greeting,
                "",
                " ".join(body),
                contact_sentence,
                "",
                closing,
                name,
            ]
        )
    else:
        sentences = [*story, date_sentence, amount_sentence, *extras, policy_sentence, contact_sentence, *fillers]
        rng.shuffle(sentences)
        text = f"My name is {name}. " + " ".join(sentences)

    return ClaimRecord(
        text=_shake(text, rng),
        claim_type=claim_type,
        amount=amount,
        currency=currency,
        incident_date=incident,
        policy_number=f"PL-{digits}",
        claimant_name=name,
        claimant_email=email,
        claimant_phone=phone,
    )


def generate(n: int, seed: int, typo_rate: float = 0.04) -> list[ClaimRecord]:
    """``n`` claim documents; the same ``n``, ``seed`` and ``typo_rate`` always give the same documents."""
    rng = random.Random(seed)
    return [generate_record(rng, typo_rate) for _ in range(n)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print synthetic claim documents with their labels (JSON lines).")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    for record in generate(args.n, args.seed):
        print(json.dumps(record.to_json()))


if __name__ == "__main__":
    main()
