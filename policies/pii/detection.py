"""Finds personal data in a string: presidio-analyzer's pattern recognizers on a blank spaCy pipeline.

Why presidio and these settings:

- Its recognizers carry the checks that make pattern matching precise: Luhn for payment cards, the IBAN
  checksum per country, SSN area/group rules, the NHS, NIF, PESEL, Aadhaar and fiscal-code check digits, and
  context words that raise a weak match (nine bare digits next to "ssn") over the threshold.
- No NER model: the machine cannot download spaCy models, and names are found by field label instead (see
  ``policies.masking``). ``spacy.blank("en")`` only tokenizes; a one-line component copies each token's lower
  case into its lemma, so presidio's context enhancer sees the words around a match (a blank pipeline has no
  lemmatizer and would leave them empty).
- Offline: presidio's email recognizer validates the domain through ``tldextract``, whose default extractor
  fetches the public-suffix list over the network on first use (and retries each process). Ours reads the
  snapshot that ships in the tldextract wheel.
- Phone numbers: presidio's ``PhoneRecognizer`` runs libphonenumber's matcher over the whole text once per
  region (about 1-2.5 ms per short string with one to three regions on the development machine, most of a call).
  Here a regular expression proposes candidates and libphonenumber validates only those: same validity rules,
  one parse per candidate and region. Bare digit runs without separators or ``+`` score below the threshold
  unless a context word ("phone", "mobile") is near, so order numbers stay unmasked.
- Dates of birth: presidio's date patterns (plus written-out months) under their own entity with a score below
  the threshold, so only a date next to "born", "birth" or "dob" (in the text or in the field's name) counts.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

from crds.policy import PIIEntity

if TYPE_CHECKING:  # presidio and spaCy take seconds to import: only a policy with PII loads them
    from presidio_analyzer import EntityRecognizer

#: Entities found in text by a recognizer. PERSON is found by field label (``policies.masking``), not here.
TEXT_ENTITIES: tuple[str, ...] = tuple(entity for entity in get_args(PIIEntity) if entity != "PERSON")
#: Regions a number without an international prefix is tried in (the libphonenumber region codes).
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "NL", "ES", "IT", "CH", "AT", "BE", "IE")
#: Presidio scores: 1.0 for a checksum-validated match, 0.4-0.5 for a good pattern, ~0.05 for a weak one; a
#: context word lifts a match by 0.35 to at least 0.4. 0.4 keeps weak patterns out unless context backs them.
DEFAULT_THRESHOLD = 0.4

# Presidio logs the decision process at DEBUG, including context words from the text; never let a debug
# configuration put payload text into the logs.
logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class Finding:
    entity: str
    start: int
    end: int
    score: float


_BIRTH_CONTEXT = ["birth", "born", "dob", "birthday", "birthdate", "geburt", "naissance", "nacimiento"]
_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
    r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)


def _recognizers(regions: tuple[str, ...]) -> dict[str, Callable[[], EntityRecognizer]]:
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        DateRecognizer,
        EmailRecognizer,
        EsNifRecognizer,
        FiPersonalIdentityCodeRecognizer,
        IbanRecognizer,
        InAadhaarRecognizer,
        ItFiscalCodeRecognizer,
        NhsRecognizer,
        PlPeselRecognizer,
        UkNinoRecognizer,
        UsItinRecognizer,
        UsSsnRecognizer,
    )

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return bool(_suffixes()(pattern_text).fqdn)

    class PhoneNumberRecognizer(PatternRecognizer):
        def __init__(self) -> None:
            super().__init__(
                supported_entity="PHONE_NUMBER",
                name="PhoneNumberRecognizer",
                patterns=[
                    # +CC and separators, or a parenthesised area code: looks like a phone number as written.
                    Pattern("international", r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?!\w)", 0.4),
                    Pattern(
                        "formatted",
                        r"(?<![\w+])(?:\(\d{2,5}\)[ .-]?|\d{2,5}[ .-])\d{2,5}(?:[ .-]\d{2,5}){0,3}(?![\w-])",
                        0.4,
                    ),
                    Pattern("digits", r"(?<![\w+])\d{7,13}(?!\w)", 0.2),
                ],
                context=["phone", "tel", "telephone", "mobile", "fax"],
            )

        def invalidate_result(self, pattern_text: str) -> bool:
            return not _valid_phone(pattern_text, regions)

    class DateOfBirthRecognizer(PatternRecognizer):
        def __init__(self) -> None:
            patterns = [Pattern(p.name, p.regex, 0.1) for p in DateRecognizer.PATTERNS]
            patterns += [
                Pattern("d month yyyy", rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{4}}\b", 0.1),
                Pattern("month d, yyyy", rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", 0.1),
            ]
            super().__init__(
                supported_entity="DATE_OF_BIRTH",
                name="DateOfBirthRecognizer",
                patterns=patterns,
                context=_BIRTH_CONTEXT,
                global_regex_flags=re.IGNORECASE | re.DOTALL | re.MULTILINE,
            )

    return {
        "EMAIL_ADDRESS": OfflineEmailRecognizer,
        "PHONE_NUMBER": PhoneNumberRecognizer,
        "CREDIT_CARD": CreditCardRecognizer,
        "IBAN_CODE": IbanRecognizer,
        "US_SSN": UsSsnRecognizer,
        "US_ITIN": UsItinRecognizer,
        "UK_NHS": NhsRecognizer,
        "UK_NINO": UkNinoRecognizer,
        "ES_NIF": EsNifRecognizer,
        "IT_FISCAL_CODE": ItFiscalCodeRecognizer,
        "PL_PESEL": PlPeselRecognizer,
        "IN_AADHAAR": InAadhaarRecognizer,
        "FI_PERSONAL_IDENTITY_CODE": FiPersonalIdentityCodeRecognizer,
        "DATE_OF_BIRTH": DateOfBirthRecognizer,
    }


@functools.cache
def _suffixes() -> Any:
    import tldextract

    # The public-suffix snapshot bundled in the wheel: no fetch, no cache directory.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


_DATE_SHAPED = re.compile(r"\d{4}[./-]\d{1,2}[./-]\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")


@functools.lru_cache(maxsize=4096)
def _valid_phone(text: str, regions: tuple[str, ...]) -> bool:
    # Cheap refusals first: libphonenumber's parse costs ~50-100 us per region and an invalid candidate is tried in
    # every region. E.164 has at most 15 digits; a date (1984-03-12) can pass as a national number somewhere.
    digits = sum(c.isdigit() for c in text)
    if not 7 <= digits <= 15 or _DATE_SHAPED.fullmatch(text.strip()):
        return False
    import phonenumbers

    candidates = (None,) if text.startswith("+") else tuple(r for r in regions if digits in _region_lengths(r))
    for region in candidates:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


@functools.cache
def _region_lengths(region: str) -> frozenset[int]:
    """Digit counts a national number of ``region`` can have as written (with its trunk prefix or without)."""
    import phonenumbers

    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None or metadata.general_desc is None:
        return frozenset(range(7, 16))
    lengths = set(metadata.general_desc.possible_length or range(7, 16))
    prefix = len(metadata.national_prefix or "")
    return frozenset(lengths | {n + prefix for n in lengths})


@functools.cache
def _nlp_engine() -> Any:
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from spacy.language import Language

    if "aiplane_lower_lemma" not in Language.factories:

        @Language.component("aiplane_lower_lemma")
        def lower_lemma(doc: Any) -> Any:
            for token in doc:
                token.lemma_ = token.lower_
            return doc

    class BlankSpacyNlpEngine(SpacyNlpEngine):
        """Tokenizer only: nothing to download, no NER (names come from field labels)."""

        def load(self) -> None:
            nlp = spacy.blank("en")
            nlp.add_pipe("aiplane_lower_lemma")
            self.nlp = {"en": nlp}  # type: ignore[assignment]  # presidio annotates it as None

    engine = BlankSpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank:en"}])
    engine.load()
    return engine


_build_lock = threading.Lock()


class Detector:
    """Finds ``entities`` in strings; one per entity set and settings (``detector()`` shares them).

    Presidio's recognizers and context enhancer, without ``AnalyzerEngine.analyze``: that tokenizes every text
    and deep-copies every result for the context pass, ~3x the recognizers' own cost on short strings. Here a text
    is tokenized, and the enhancer run, only when a match is below the threshold and context could lift it.
    """

    def __init__(
        self,
        entities: Iterable[str],
        *,
        phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        wanted = sorted(set(entities) & set(TEXT_ENTITIES))
        unknown = sorted(set(entities) - set(TEXT_ENTITIES) - {"PERSON"})
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; known: {[*TEXT_ENTITIES, 'PERSON']}")
        self.entities = tuple(wanted)
        self.threshold = threshold
        self._needs_at = "EMAIL_ADDRESS" in wanted
        self._needs_digit = any(e != "EMAIL_ADDRESS" for e in wanted)
        self._regions = tuple(phone_regions)
        self._built: tuple[list[EntityRecognizer], Any] | None = None
        self._context: dict[str, tuple[str, ...]] = {}

    def _build(self) -> tuple[list[EntityRecognizer], Any]:
        if self._built is None:
            with _build_lock:
                if self._built is None:
                    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

                    factories = _recognizers(self._regions)
                    recognizers = []
                    for entity in self.entities:
                        recognizer = factories[entity]()
                        # Country recognizers default to their country's language; payloads are analyzed as "en".
                        recognizer.supported_language = "en"
                        recognizers.append(recognizer)
                    self._context = {
                        r.supported_entities[0]: tuple(c.lower() for c in r.context or ()) for r in recognizers
                    }
                    enhancer = LemmaContextAwareEnhancer(
                        context_similarity_factor=_CONTEXT_BOOST, min_score_with_context_similarity=_MIN_WITH_CONTEXT
                    )
                    self._built = (recognizers, enhancer)
        return self._built

    def warm_up(self) -> None:
        """Import and build everything now rather than on the first payload."""
        self.find("warm up a@example.com 4111 1111 1111 1111 born 1984-03-12")

    def find(self, text: str, context: Sequence[str] = ()) -> list[Finding]:
        """Non-overlapping findings in ``text``, in order; ``context``: words that describe it (its field name)."""
        if not self.entities:
            return []
        digits = sum(c.isdigit() for c in text) if _DIGIT.search(text) else 0
        recognizers, enhancer = self._build()
        results = []
        for recognizer in recognizers:
            entity = recognizer.supported_entities[0]
            # Cheap necessary conditions first: most strings have too few digits for most recognizers.
            if digits < _MIN_DIGITS.get(entity, 1) or (entity == "EMAIL_ADDRESS" and "@" not in text):
                continue
            trigger = _TRIGGERS.get(entity)
            if trigger is not None and trigger.search(text) is None:
                continue
            # Pattern recognizers do not read the NLP artifacts; the text is tokenized below only if needed.
            for result in recognizer.analyze(text, recognizer.supported_entities, None):  # type: ignore[arg-type]
                if entity in _NEEDS_CONTEXT:
                    result.score = min(result.score, _WEAK)
                results.append(result)
        if not results:
            return []
        weak = [r for r in results if r.score < self.threshold]
        if weak and context:
            # The field's name first, as presidio's enhancer would count it (substring match, +0.35, at least 0.4),
            # without tokenizing the text: most leaves are a bare value under a telling key ("dob", "ssn").
            words = [w.lower() for w in context]
            for result in weak:
                cues = self._context.get(result.entity_type, ())
                if any(cue in word for cue in cues for word in words):
                    result.score = max(result.score + _CONTEXT_BOOST, _MIN_WITH_CONTEXT)
            weak = [r for r in weak if r.score < self.threshold]
        if weak and _words_around(text, weak):
            artifacts = _nlp_engine().process_text(text, "en")
            results = enhancer.enhance_using_context(text, results, artifacts, recognizers, list(context))
        return _without_overlaps(
            Finding(r.entity_type, r.start, r.end, r.score)
            for r in results
            if r.score >= self.threshold and not _in_longer_code(text, r.start, r.end)
        )


#: What a text must contain for a recognizer with many patterns to be worth running: a date has a separator
#: between digits or a month name next to a number.
_TRIGGERS = {"DATE_OF_BIRTH": re.compile(r"\d[/.-]\d|\d\s*[A-Za-z]{3}|[A-Za-z]{3}\.?\s*\d")}
_CONTEXT_BOOST = 0.35  # presidio's defaults, also used where the field name alone decides
_MIN_WITH_CONTEXT = 0.4
_LETTERS = re.compile(r"[^\W\d_]{2,}")


def _words_around(text: str, results: Sequence[Any]) -> bool:
    """Whether the text has words besides the weak matches (else tokenizing it cannot find a context word)."""
    rest, position = [], 0
    for r in sorted(results, key=lambda r: r.start):
        rest.append(text[position : max(position, r.start)])
        position = max(position, r.end)
    rest.append(text[position:])
    return _LETTERS.search(" ".join(rest)) is not None


#: Digits an entity's value has at least (ES NIE: X1234567L; UK NINO: AB123456C; a date: 1/2/84).
_MIN_DIGITS = {
    "EMAIL_ADDRESS": 0,
    "PHONE_NUMBER": 7,
    "CREDIT_CARD": 12,
    "IBAN_CODE": 10,
    "US_SSN": 9,
    "US_ITIN": 9,
    "UK_NHS": 10,
    "UK_NINO": 6,
    "ES_NIF": 7,
    "IT_FISCAL_CODE": 6,
    "PL_PESEL": 11,
    "IN_AADHAAR": 12,
    "FI_PERSONAL_IDENTITY_CODE": 6,
    "DATE_OF_BIRTH": 3,
}
#: Plain digit runs whose only check is a mod-11/Verhoeff digit: 1 random number in ~10 passes it, so a match
#: counts only with a context word near it (or in the field name): "NHS", "PESEL", "Aadhaar".
_NEEDS_CONTEXT = frozenset({"UK_NHS", "PL_PESEL", "IN_AADHAAR"})
_WEAK = 0.3
# A 4-character group of capitals or digits, then a space: a block of a grouped code (an IBAN, a card) before.
_GROUP_BEFORE = re.compile(r"(?:^|\s)([A-Z0-9]{4}) $")
_GROUP_AFTER = re.compile(r"^[ -]\d")


def _in_longer_code(text: str, start: int, end: int) -> bool:
    """Whether the match is a piece of a longer grouped code: ``NL90 WOVX 2756 4235 95`` (an IBAN that failed its
    check) holds a valid phone number, ``ES10 5457 9554 2178 1800 2580`` a Luhn-valid card; neither is one."""
    if _GROUP_AFTER.match(text[end : end + 2]):
        return True
    position = start
    while (group := _GROUP_BEFORE.search(text, max(0, position - 6), position)) is not None:
        if any(c.isdigit() for c in group.group(1)):
            return True
        position = group.start(1)
    return False


_DIGIT = re.compile(r"\d")


def _without_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    """Best first (score, then length); a finding overlapping one already kept is dropped."""
    kept: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (-f.score, -(f.end - f.start), f.start)):
        if all(finding.end <= k.start or finding.start >= k.end for k in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)


@functools.lru_cache(maxsize=64)
def detector(entities: frozenset[str], phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS) -> Detector:
    """The shared detector for an entity set (building presidio's engine takes a while)."""
    return Detector(entities, phone_regions=phone_regions)
