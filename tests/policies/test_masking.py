"""Masking per Policy: redact, tenant-salted hash, reversible tokens for holders of a role; structure kept."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from crds.policy import PII
from policies.effective import EffectivePII
from policies.masking import WorkflowMasking, detokenize, mask, mask_text, masks_in
from policies.tokens import InvalidTokenError, MaskingKeyError, MaskingKeys, UnmaskDeniedError

ALL = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "DATE_OF_BIRTH", "PERSON"]
CLAIM: dict[str, Any] = {
    "claimant": {"firstName": "Jane", "lastName": "Roe", "email": "jane.roe@example.com", "dob": "1984-03-12"},
    "contacts": [{"phone": "+1 415-555-0132"}, {"phone": "(212) 555-0187"}],
    "incidentDate": "2024-05-01",
    "orderNumber": "ORD-123456789",
    "description": "Pay back to DE89 3704 0044 0532 0130 00; card 4111 1111 1111 1111 was used. SSN 219-09-9999.",
    "cardNumber": 4111111111111111,
    "amount": 12000,
    "approved": True,
    "policyNumber": "PN-77812",
}
SECRETS = [
    "Jane",
    "Roe",
    "jane.roe@example.com",
    "1984-03-12",
    "415-555-0132",
    "555-0187",
    "DE89 3704",
    "4111 1111",
    "219-09-9999",
    "4111111111111111",
    "PN-77812",
]


@pytest.fixture(scope="module")
def keys() -> MaskingKeys:
    return MaskingKeys(bytes(range(32)))


def policy(action: str = "redact", **kwargs: Any) -> PII:
    return PII.model_validate({"entities": ALL, "action": action, **kwargs})


def dumped(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize("action", ["redact", "hash", "tokenize"])
def test_every_action_masks_the_personal_data_and_keeps_the_rest(action: str, keys: MaskingKeys) -> None:
    masked = mask(CLAIM, policy(action, fields=["policyNumber"], unmaskRoles=["auditor"]), "acme", keys, root="input")
    text = dumped(masked.value)
    for secret in SECRETS:
        assert secret not in text, secret
    value = masked.value
    assert set(value) == set(CLAIM)
    assert value["incidentDate"] == "2024-05-01"  # a date, not a birth date
    assert value["orderNumber"] == "ORD-123456789"
    assert value["amount"] == 12000
    assert value["approved"] is True
    assert value["description"].startswith("Pay back to <IBAN_CODE")
    assert len(value["contacts"]) == 2


def test_the_summary_names_entities_and_paths_never_values(keys: MaskingKeys) -> None:
    masked = mask(CLAIM, policy("hash", fields=["policyNumber"]), "acme", keys, root="input")
    summary = masked.summary.to_dict()
    assert summary["action"] == "hash"
    assert summary["entities"] == {
        "CREDIT_CARD": 2,
        "DATE_OF_BIRTH": 1,
        "EMAIL_ADDRESS": 1,
        "FIELD": 1,
        "IBAN_CODE": 1,
        "PERSON": 2,
        "PHONE_NUMBER": 2,
        "US_SSN": 1,
    }
    assert "input.contacts[1].phone" in summary["paths"]
    assert "input.claimant.firstName" in summary["paths"]
    text = dumped(summary)
    for secret in SECRETS:
        assert secret not in text


def test_no_policy_returns_the_payload_itself() -> None:
    masked = mask(CLAIM, None, "acme")
    assert masked.value is CLAIM
    assert not masked.summary


def test_hashes_are_stable_per_tenant_and_differ_across_tenants(keys: MaskingKeys) -> None:
    pii = policy("hash")
    a1 = mask({"email": "x@example.com"}, pii, "a", keys).value["email"]
    a2 = mask({"email": "X@Example.com"}, pii, "a", keys).value["email"]
    b = mask({"email": "x@example.com"}, pii, "b", keys).value["email"]
    assert a1 == a2  # normalized (emails compared without case)
    assert a1 != b
    assert a1.startswith("<EMAIL_ADDRESS:h:")


def test_tokens_round_trip_for_a_holder_of_an_unmask_role_only(keys: MaskingKeys) -> None:
    pii = policy("tokenize", fields=["policyNumber"], unmaskRoles=["auditor"])
    masked = mask(CLAIM, pii, "acme", keys).value
    assert detokenize(masked, pii, "acme", keys, roles=["auditor"]) == CLAIM  # JSON types too (cardNumber)
    with pytest.raises(UnmaskDeniedError, match="auditor"):
        detokenize(masked, pii, "acme", keys, roles=["submitter"])


def test_a_token_does_not_open_under_another_tenant(keys: MaskingKeys) -> None:
    pii = policy("tokenize", unmaskRoles=["auditor"])
    masked = mask({"email": "x@example.com"}, pii, "acme", keys).value
    with pytest.raises(InvalidTokenError):
        detokenize(masked, pii, "globex", keys, roles=["auditor"])


def test_masking_is_deterministic_and_idempotent(keys: MaskingKeys) -> None:
    for action in ("redact", "hash", "tokenize"):
        pii = policy(action)
        once = mask(CLAIM, pii, "acme", keys).value
        assert mask(CLAIM, pii, "acme", keys).value == once
        twice = mask(once, pii, "acme", keys)
        assert twice.value == once
        assert not twice.summary


def test_field_paths_match_by_suffix_and_root(keys: MaskingKeys) -> None:
    payload = {"claimant": {"ref": "A1", "address": {"street": "1 Main St", "city": "Springfield"}}, "ref": "B2"}
    only_claimant = mask(payload, policy(fields=["claimant.ref", "address"]), "t", keys, root="input").value
    assert only_claimant == {"claimant": {"ref": "<FIELD>", "address": "<FIELD>"}, "ref": "B2"}
    rooted = mask(payload, policy(fields=["output.ref"]), "t", keys, root="input").value
    assert rooted == payload  # the field names outputs, this is an input
    wildcard = mask(payload, policy(fields=["input.*.ref"]), "t", keys, root="input").value
    assert wildcard["claimant"]["ref"] == "<FIELD>"
    assert wildcard["ref"] == "B2"


def test_names_are_found_by_label_only_when_person_is_asked_for(keys: MaskingKeys) -> None:
    payload = {"name": "Jane Roe", "claimant": "John Doe", "full_name": "A B", "title": "Water damage"}
    masked = mask(payload, policy(), "t", keys).value
    assert masked == {"name": "<PERSON>", "claimant": "<PERSON>", "full_name": "<PERSON>", "title": "Water damage"}
    without = mask(payload, PII(entities=["EMAIL_ADDRESS"]), "t", keys).value
    assert without == payload


def test_the_effective_policy_masks_like_a_policy(keys: MaskingKeys) -> None:
    effective = EffectivePII(frozenset({"EMAIL_ADDRESS"}), ("secret",), "redact", frozenset())
    assert mask({"a": "mail x@example.com", "secret": 7}, effective, "t", keys).value == {
        "a": "mail <EMAIL_ADDRESS>",
        "secret": "<FIELD>",
    }


def test_free_text_masking() -> None:
    assert mask_text("lookup failed for jane@example.com", policy(), "t") == "lookup failed for <EMAIL_ADDRESS>"
    assert mask_text("as is", None, "t") == "as is"


def test_hash_and_tokenize_need_a_key_and_redact_does_not() -> None:
    assert mask({"e": "x@example.com"}, policy("redact"), "t").value == {"e": "<EMAIL_ADDRESS>"}
    with pytest.raises(MaskingKeyError, match="AIPLANE_PII_KEY"):
        mask({"e": "x@example.com"}, policy("hash"), "t")


def test_keys_come_from_the_environment_or_a_mounted_secret(tmp_path: Path) -> None:
    raw = os.urandom(32)
    assert MaskingKeys.from_env({}) is None
    from_env = MaskingKeys.from_env({"AIPLANE_PII_KEY": base64.b64encode(raw).decode()})
    secret = tmp_path / "key"
    secret.write_bytes(base64.b64encode(raw) + b"\n")
    from_file = MaskingKeys.from_env({"AIPLANE_PII_KEY_FILE": str(secret)})
    assert from_env is not None
    assert from_file is not None
    assert from_env.hash("t", "EMAIL_ADDRESS", "x") == from_file.hash("t", "EMAIL_ADDRESS", "x")
    with pytest.raises(MaskingKeyError, match="at least 32 bytes"):
        MaskingKeys(b"short")


def test_masks_in_lists_what_a_payload_holds(keys: MaskingKeys) -> None:
    masked = mask(CLAIM, policy(), "t", keys).value
    assert sorted(set(masks_in(masked))) == [
        "<CREDIT_CARD>",
        "<DATE_OF_BIRTH>",
        "<EMAIL_ADDRESS>",
        "<IBAN_CODE>",
        "<PERSON>",
        "<PHONE_NUMBER>",
        "<US_SSN>",
    ]


def test_workflow_masking_redacts_when_a_key_is_missing_rather_than_pass_data_in_clear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    summaries: list[dict[str, Any]] = []
    masking = WorkflowMasking(
        lambda workflow: policy("tokenize") if workflow == "claims" else None,
        None,
        on_masked=lambda tenant, workflow, summary: summaries.append(summary.to_dict()),
    )
    assert masking.input("t", "claims", {"email": "x@example.com"}) == {"email": "<EMAIL_ADDRESS>"}
    assert masking.input("t", "other", {"email": "x@example.com"}) == {"email": "x@example.com"}
    assert masking.output("t", "claims", "score", {"to": "x@example.com"}) == {"to": "<EMAIL_ADDRESS>"}
    assert masking.text("t", "claims", "no x@example.com") == "no <EMAIL_ADDRESS>"
    assert "no key is configured" in caplog.text
    assert [s["paths"] for s in summaries] == [["input.email"], ["steps.score.to"]]
