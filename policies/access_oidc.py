"""OIDC bearer tokens: a JWT verified against the issuer's JWKS, turned into a tenant, a subject and roles.

Verification is PyJWT's (signature, ``exp``/``nbf``/``iat`` with a leeway, ``iss``, ``aud``); this module adds what
a gateway needs around it:

- an algorithm allow-list (RS256 and ES256 by default): ``none``, HMAC and anything else are refused before any
  key is looked at, and the key named by ``kid`` must be of the token's algorithm (no RSA key used as an HMAC
  secret, no algorithm confusion);
- the JWKS fetched once and cached for ``jwks_ttl``; a token with an unknown ``kid`` refreshes it (key rotation),
  at most once per ``refresh_interval``, so a flood of made-up kids cannot turn into a flood of fetches;
- the tenant from one claim (``tenant_claim``), roles from another (``roles_claim``, a list or a space-separated
  string; unknown names are ignored) and groups from a third (``groups_claim``). The roles Policies bind to the
  subject or its groups are added per request by the gateway (``policies.access.RoleGrants``), not here: a
  verified token is cached, and a Policy change must apply to it too.

Blocking (the JWKS fetch): callers on an event loop use ``cached`` first and run ``verify`` in a thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from policies.access import ROLES

DEFAULT_ALGORITHMS = ("RS256", "ES256")
ENV_PREFIX = "AIPLANE_OIDC_"


class TokenError(Exception):
    """The token is not acceptable; ``reason`` says why in words a client can act on (RFC 6750 invalid_token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksUnavailableError(Exception):
    """The issuer's JWKS could not be fetched and no cached key fits: not the caller's fault (503)."""


@dataclass(frozen=True)
class OIDCConfig:
    """Where the keys are and what a token must say."""

    issuer: str
    audience: str
    jwks_url: str
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS
    tenant_claim: str = "tenant"
    roles_claim: str = "roles"
    groups_claim: str = "groups"
    subject_claim: str = "sub"
    leeway: float = 30.0
    jwks_ttl: float = 300.0
    refresh_interval: float = 10.0
    fetch_timeout: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OIDCConfig | None:
        """From ``AIPLANE_OIDC_*`` variables (ISSUER, AUDIENCE and JWKS_URL required together; TENANT_CLAIM,
        ROLES_CLAIM, GROUPS_CLAIM, SUBJECT_CLAIM and ALGORITHMS, comma-separated, optional); None without an
        issuer."""
        issuer = environ.get(ENV_PREFIX + "ISSUER", "")
        if not issuer:
            return None
        missing = [n for n in ("AUDIENCE", "JWKS_URL") if not environ.get(ENV_PREFIX + n)]
        if missing:
            raise ValueError(f"{ENV_PREFIX}ISSUER is set; set {', '.join(ENV_PREFIX + n for n in missing)} too")
        algorithms = environ.get(ENV_PREFIX + "ALGORITHMS", "")
        return cls(
            issuer=issuer,
            audience=environ[ENV_PREFIX + "AUDIENCE"],
            jwks_url=environ[ENV_PREFIX + "JWKS_URL"],
            algorithms=tuple(a.strip() for a in algorithms.split(",") if a.strip()) or DEFAULT_ALGORITHMS,
            tenant_claim=environ.get(ENV_PREFIX + "TENANT_CLAIM") or "tenant",
            roles_claim=environ.get(ENV_PREFIX + "ROLES_CLAIM") or "roles",
            groups_claim=environ.get(ENV_PREFIX + "GROUPS_CLAIM") or "groups",
            subject_claim=environ.get(ENV_PREFIX + "SUBJECT_CLAIM") or "sub",
        )

    def __post_init__(self) -> None:
        unsupported = [a for a in self.algorithms if a not in ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")]
        if unsupported or not self.algorithms:
            raise ValueError(f"algorithms must be asymmetric (RS256, ES256, ...); not {unsupported or 'none'}")


@dataclass(frozen=True)
class Identity:
    """Who a verified token speaks for."""

    tenant: str
    subject: str
    #: The roles the token's claim names (Policies' bindings are added by the gateway).
    roles: frozenset[str]
    groups: frozenset[str]
    expires: float  # unix time


class OIDCVerifier:
    def __init__(
        self,
        config: OIDCConfig,
        *,
        fetch: Callable[[str, float], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
        max_cached: int = 10_000,
    ) -> None:
        self.config = config
        self.clock = clock
        self.fetches = 0
        self._fetch = fetch or _fetch_json
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()
        self._tokens: dict[str, Identity] = {}
        self._max_cached = max_cached

    # ------------------------------------------------------------ tokens

    def cached(self, token: str) -> Identity | None:
        """A token verified before and not yet expired, without any I/O (for the event loop)."""
        identity = self._tokens.get(token)
        if identity is not None and identity.expires > self.clock():
            return identity
        return None

    def verify(self, token: str) -> Identity:
        """The identity of a valid token; raises ``TokenError`` (401) or ``JwksUnavailableError`` (503)."""
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"the bearer token is not a JWT ({exc})") from exc
        alg = header.get("alg")
        if alg not in config.algorithms:
            raise TokenError(f"the token's algorithm {alg!r} is not accepted; use one of {list(config.algorithms)}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("the token has no 'kid' header naming its signing key")
        key = self._key(kid)
        if key.algorithm_name != alg:
            raise TokenError(f"key {kid!r} is for {key.algorithm_name}, not {alg}")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"require": ["exp", "iss", "aud", config.subject_claim]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("the token has expired; get a new one from the identity provider") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenError("the token is not valid yet (nbf or iat is in the future)") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError(f"the token is not for this API (aud must be {config.audience!r})") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError(f"the token is not from the configured issuer {config.issuer!r}") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"the token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"the token is invalid ({exc})") from exc
        identity = self._identity(claims)
        if len(self._tokens) >= self._max_cached:
            self._tokens.clear()
        self._tokens[token] = identity
        return identity

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        config = self.config
        tenant = claims.get(config.tenant_claim)
        if not isinstance(tenant, str) or not 1 <= len(tenant) <= 253:
            raise TokenError(f"the token has no {config.tenant_claim!r} claim naming a tenant")
        subject = claims.get(config.subject_claim)
        if not isinstance(subject, str) or not 1 <= len(subject) <= 253:
            raise TokenError(f"the token's {config.subject_claim!r} claim must be a string of 1-253 characters")
        groups = frozenset(_strings(claims.get(config.groups_claim)))
        roles = frozenset(r for r in _strings(claims.get(config.roles_claim)) if r in ROLES)
        return Identity(tenant=tenant, subject=subject, roles=roles, groups=groups, expires=float(claims["exp"]))

    # ------------------------------------------------------------ keys

    def _key(self, kid: str) -> jwt.PyJWK:
        now = time.monotonic()
        with self._lock:
            key = self._keys.get(kid)
            stale = now - self._fetched_at > self.config.jwks_ttl
            may_refresh = now - self._fetched_at >= self.config.refresh_interval
            if key is not None and not stale:
                return key
            if stale or may_refresh:
                try:
                    self._refresh(now)
                except (httpx.HTTPError, ValueError) as exc:
                    if key is not None:
                        return key  # the issuer is down; a key it served before still verifies
                    if not self._keys:
                        raise JwksUnavailableError(f"the JWKS at {self.config.jwks_url} is unreachable: {exc}") from exc
                key = self._keys.get(kid)
        if key is None:
            raise TokenError(f"no key {kid!r} in the issuer's JWKS")
        return key

    def _refresh(self, now: float) -> None:
        self._fetched_at = now  # even if it fails: the next try waits refresh_interval
        self.fetches += 1
        document = self._fetch(self.config.jwks_url, self.config.fetch_timeout)
        raw = document.get("keys")
        if not isinstance(raw, list):
            raise ValueError("the JWKS has no 'keys' list")
        keys: dict[str, jwt.PyJWK] = {}
        for item in raw:
            if not isinstance(item, dict) or item.get("use", "sig") != "sig" or not isinstance(item.get("kid"), str):
                continue
            try:
                keys[item["kid"]] = jwt.PyJWK(item)
            except jwt.PyJWTError:
                continue  # a key of a type this gateway cannot use; the others still count
        self._keys = keys


def _fetch_json(url: str, timeout: float) -> Mapping[str, Any]:
    response = httpx.get(url, timeout=timeout, follow_redirects=False)
    response.raise_for_status()
    document = response.json()
    if not isinstance(document, dict):
        raise ValueError("the JWKS is not a JSON object")
    return document


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
