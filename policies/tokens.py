"""Keys for PII masking: tenant-salted hashes and reversible tokens, and the role check for unmasking.

One master key (32+ random bytes, from ``AIPLANE_PII_KEY`` as base64 or the file ``AIPLANE_PII_KEY_FILE``, a
mounted Secret) is stretched per tenant with HKDF into:

- a hash key: ``HMAC-SHA256(key, normalized value)``; the same value gives the same hash within a tenant (joins,
  counts and deduplication still work) and an unrelated one in another tenant;
- a token key for AES-SIV (RFC 5297): deterministic authenticated encryption, so masking stays a pure function
  (the same input masks to the same token, a retried step stores what the first attempt stored) and a token is
  bound to its tenant and entity type (the associated data): moved to another tenant it does not decrypt.

The token is the vault: the ciphertext travels in the masked value, so there is no table to keep, purge or
replicate; erasing the master key (or a tenant's, by rotating) makes every token of it unreadable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_ENV = "AIPLANE_PII_KEY"
KEY_FILE_ENV = "AIPLANE_PII_KEY_FILE"
MIN_KEY_BYTES = 32
#: Hex digits of the HMAC kept in a hashed value: 80 bits, far beyond collisions in any one tenant's data.
HASH_HEX = 20


class MaskingKeyError(ValueError):
    """No usable master key: hash and tokenize need one (redact does not)."""


class UnmaskDeniedError(PermissionError):
    """The caller holds none of the roles the policy lets see tokenized values in clear."""


class InvalidTokenError(ValueError):
    """A token that does not decrypt under this tenant's key (another tenant's, or altered)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MaskingKeys:
    """Per-tenant hash and token keys derived from one master key (kept only in memory)."""

    def __init__(self, master: bytes) -> None:
        if len(master) < MIN_KEY_BYTES:
            raise MaskingKeyError(f"the PII master key must be at least {MIN_KEY_BYTES} bytes; got {len(master)}")
        self._master = master
        self._tenants: dict[str, tuple[bytes, AESSIV]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> MaskingKeys | None:
        """The key from ``AIPLANE_PII_KEY`` (base64) or ``AIPLANE_PII_KEY_FILE`` (raw or base64); None if unset."""
        env = os.environ if environ is None else environ
        if env.get(KEY_FILE_ENV):
            raw = Path(env[KEY_FILE_ENV]).read_bytes().strip()
            try:
                decoded = base64.b64decode(raw, validate=True)
            except ValueError:
                decoded = raw
            return cls(decoded if len(decoded) >= MIN_KEY_BYTES else raw)
        if env.get(KEY_ENV):
            try:
                return cls(base64.b64decode(env[KEY_ENV], validate=True))
            except ValueError as exc:
                raise MaskingKeyError(f"{KEY_ENV} must be base64: {exc}") from exc
        return None

    def _tenant(self, tenant: str) -> tuple[bytes, AESSIV]:
        keys = self._tenants.get(tenant)
        if keys is None:
            with self._lock:
                keys = self._tenants.get(tenant)
                if keys is None:
                    material = HKDF(
                        algorithm=hashes.SHA256(), length=96, salt=None, info=b"aiplane-pii\0" + tenant.encode()
                    ).derive(self._master)
                    keys = self._tenants[tenant] = (material[:32], AESSIV(material[32:]))
        return keys

    def hash(self, tenant: str, entity: str, value: str) -> str:
        """Hex HMAC of the normalized value (so ``+1 415-555-0132`` and ``(415) 555 0132`` hash alike... when
        normalized the same: digits only for numbers, lower case for emails)."""
        key, _ = self._tenant(tenant)
        digest = hmac.new(key, f"{entity}\0{normalize(entity, value)}".encode(), hashlib.sha256).hexdigest()
        return digest[:HASH_HEX]

    def tokenize(self, tenant: str, entity: str, value: Any) -> str:
        _, siv = self._tenant(tenant)
        plain = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        return _b64(siv.encrypt(plain, [tenant.encode(), entity.encode()]))

    def detokenize(self, tenant: str, entity: str, token: str) -> Any:
        _, siv = self._tenant(tenant)
        try:
            plain = siv.decrypt(_unb64(token), [tenant.encode(), entity.encode()])
        except (InvalidTag, ValueError) as exc:
            raise InvalidTokenError(f"a {entity} token does not belong to tenant {tenant!r} or was altered") from exc
        return json.loads(plain)


def normalize(entity: str, value: str) -> str:
    if entity in ("EMAIL_ADDRESS",):
        return value.strip().lower()
    if entity in ("PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "US_ITIN", "UK_NHS", "PL_PESEL", "IN_AADHAAR"):
        return "".join(c for c in value if c.isdigit() or c == "+")
    if entity in ("IBAN_CODE", "UK_NINO", "ES_NIF", "IT_FISCAL_CODE"):
        return "".join(value.split()).upper()
    return value


def may_unmask(roles: Iterable[str], unmask_roles: Iterable[str]) -> bool:
    return not set(roles).isdisjoint(unmask_roles)
