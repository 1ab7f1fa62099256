"""OIDC bearer tokens: JWTs signed with keys generated here, verified against a JWKS that a real local HTTP server
serves (PyJWT does the verifying; nothing of it is mocked; the identity provider is ``tests.fixtures.oidc``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from api import create_app
from api.fast_submit import SubmitFastPath
from engine import Engine
from policies.access_oidc import JwksUnavailableError, OIDCConfig, TokenError
from tests.api.conftest import SETTINGS, Keys, Upstream, assert_problem, auth
from tests.fixtures.oidc import AUDIENCE, ISSUER, JwksServer, Signer, verifier


def test_rs256_and_es256_tokens_give_tenant_subject_and_roles(
    jwks: JwksServer, rsa_key: Signer, ec_key: Signer
) -> None:
    check = verifier(jwks)
    identity = check.verify(rsa_key.token(roles=["submitter", "approver", "superuser"], groups=["claims-team"]))
    assert (identity.tenant, identity.subject) == ("acme", "dana@acme.example")
    assert identity.roles == {"submitter", "approver"}  # unknown role names are ignored
    assert identity.groups == {"claims-team"}
    assert check.verify(ec_key.token(roles="auditor admin", tenant="globex")).roles == {"auditor", "admin"}
    assert jwks.fetches == 1  # one JWKS fetch serves both keys
    token = rsa_key.token()
    check.verify(token)
    assert check.cached(token) is not None  # the event loop's look-up, no I/O


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"nbf": int(time.time()) + 600}, "not valid yet"),
        ({"aud": "someone-else"}, "not for this API"),
        ({"iss": "https://evil.example.test/"}, "not from the configured issuer"),
        ({"exp": None}, "lacks the 'exp' claim"),
        ({"sub": None}, "lacks the 'sub' claim"),
        ({"tenant": None}, "no 'tenant' claim"),
    ],
)
def test_claims_are_checked(jwks: JwksServer, rsa_key: Signer, claims: dict[str, Any], reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        verifier(jwks).verify(rsa_key.token(**claims))


def test_only_allowed_algorithms_and_matching_keys_verify(jwks: JwksServer, rsa_key: Signer, ec_key: Signer) -> None:
    check = verifier(jwks)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "tenant": "acme", "exp": int(time.time()) + 60}
    forged = {
        # The classic confusion: HMAC "signed" with something public.
        "HS256": jwt.encode(
            claims, "a-public-value-used-as-an-hmac-secret", algorithm="HS256", headers={"kid": "rsa-1"}
        ),
        "none": jwt.encode(claims, "", algorithm="none", headers={"kid": "rsa-1"}),
    }
    for alg, token in forged.items():
        with pytest.raises(TokenError, match=r"algorithm .* is not accepted"):
            check.verify(token)
        assert alg
    # An ES256 signature presented under the RSA key's kid.
    mismatched = jwt.encode(claims, ec_key.private, algorithm="ES256", headers={"kid": "rsa-1"})
    with pytest.raises(TokenError, match="is for RS256, not ES256"):
        check.verify(mismatched)
    # A valid signature over altered claims.
    header, _, signature = rsa_key.token().split(".")
    altered = jwt.utils.base64url_encode(json.dumps({**claims, "tenant": "globex"}).encode()).decode()
    with pytest.raises(TokenError, match="invalid"):
        check.verify(f"{header}.{altered}.{signature}")
    with pytest.raises(TokenError, match="not a JWT"):
        check.verify("not-a-token")
    with pytest.raises(ValueError, match="asymmetric"):
        OIDCConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks.url, algorithms=["HS256"])


def test_an_unknown_kid_refreshes_the_jwks_once_per_interval(jwks: JwksServer, rsa_key: Signer) -> None:
    check = verifier(jwks, refresh_interval=3600)
    check.verify(rsa_key.token())
    assert jwks.fetches == 1
    # The issuer rotates to a new key: but the last fetch was just now, so made-up kids cannot force fetches.
    rotated = Signer("rsa-2", "RS256")
    jwks.keys.append(rotated.jwk)
    for _ in range(5):
        with pytest.raises(TokenError, match="no key 'rsa-2'"):
            check.verify(rotated.token())
    assert jwks.fetches == 1
    # With the interval passed, the unknown kid refreshes the set and the new key verifies.
    eager = verifier(jwks, refresh_interval=0)
    eager.verify(rsa_key.token())
    assert eager.verify(rotated.token()).subject == "dana@acme.example"
    jwks.keys.remove(rsa_key.jwk)  # the old key retires: refresh when the TTL ends, then it is gone
    fetched = jwks.fetches
    with pytest.raises(TokenError, match="no key 'made-up'"):
        eager.verify(jwt.encode({"sub": "x"}, rsa_key.private, algorithm="RS256", headers={"kid": "made-up"}))
    assert jwks.fetches == fetched + 1


def test_the_token_gives_its_groups_and_only_its_own_roles(jwks: JwksServer, rsa_key: Signer) -> None:
    # Roles Policies bind to the subject or its groups are the gateway's to add, per request
    # (tests/api/test_role_bindings.py): a cached identity must not keep a grant a Policy has since taken back.
    identity = verifier(jwks).verify(rsa_key.token(roles=[], groups=["claims-leads"]))
    assert (identity.roles, identity.groups) == (frozenset(), frozenset({"claims-leads"}))


def test_an_unreachable_jwks_is_not_the_callers_fault(rsa_key: Signer) -> None:
    down = JwksServer()
    down.close()
    with pytest.raises(JwksUnavailableError):
        verifier(down).verify(rsa_key.token())


# ---------------------------------------------------------------- through the gateway


@pytest.fixture
def oidc_client(engine: Engine, jwks: JwksServer, upstream: Upstream) -> Iterator[TestClient]:
    with TestClient(create_app(engine, SETTINGS, oidc=verifier(jwks))) as client:
        yield client


BODY = {"workflow": {"name": "echo"}, "input": {"claimId": "c-1"}}


def test_the_gateway_takes_oidc_tokens_and_api_keys(
    oidc_client: TestClient, engine: Engine, keys: Keys, rsa_key: Signer, ec_key: Signer
) -> None:
    # Through the fast path (async submission) and the routes alike.
    submitted = oidc_client.post("/v1/tasks", json=BODY, headers=auth(rsa_key.token()))
    assert submitted.status_code == 202, submitted.text
    task = submitted.json()
    assert engine.get("acme", task["id"]).submitted_by == "dana@acme.example"
    # The task is acme's: an acme API key sees it, a globex token does not (404, as for an unknown id).
    assert oidc_client.get(f"/v1/tasks/{task['id']}", headers=auth(keys.carol)).status_code == 200
    outsider = ec_key.token(tenant="globex", sub="gina", roles=["submitter", "auditor"])
    assert_problem(oidc_client.get(f"/v1/tasks/{task['id']}", headers=auth(outsider)), 404, "task-not-found")
    # Roles come from the token.
    reader = rsa_key.token(roles=["auditor"])
    assert oidc_client.get("/v1/tasks", headers=auth(reader)).status_code == 200
    assert_problem(oidc_client.post("/v1/tasks", json=BODY, headers=auth(reader)), 403, "forbidden")
    assert_problem(oidc_client.post("/v1/tasks?mode=sync", json=BODY, headers=auth(reader)), 403, "forbidden")


def test_bad_tokens_are_401_with_the_reason(oidc_client: TestClient, rsa_key: Signer) -> None:
    for token, reason in (
        (rsa_key.token(exp=int(time.time()) - 120), "expired"),
        (rsa_key.token(aud="other"), "aud must be 'aiplane'"),
        ("eyJhbGciOiJub25lIn0.e30.", "'none' is not accepted"),
    ):
        for path in ("/v1/tasks", "/v1/models/echo/predict"):
            response = oidc_client.post(path, json=BODY, headers=auth(token))
            problem = assert_problem(response, 401, "invalid-token")
            assert reason in problem["detail"]
            assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_an_unreachable_identity_provider_is_503(engine: Engine, rsa_key: Signer, keys: Keys) -> None:
    down = JwksServer()
    down.close()
    with TestClient(create_app(engine, SETTINGS, oidc=verifier(down))) as client:
        response = client.get("/v1/tasks", headers=auth(rsa_key.token()))
        assert_problem(response, 503, "identity-provider-unavailable")
        assert response.headers["retry-after"] == "5"
        assert client.get("/v1/tasks", headers=auth(keys.alice)).status_code == 200  # API keys still work


def test_the_config_comes_from_the_environment() -> None:
    assert OIDCConfig.from_env({}) is None
    config = OIDCConfig.from_env(
        {
            "AIPLANE_OIDC_ISSUER": ISSUER,
            "AIPLANE_OIDC_AUDIENCE": AUDIENCE,
            "AIPLANE_OIDC_JWKS_URL": "https://idp.example.test/jwks",
            "AIPLANE_OIDC_TENANT_CLAIM": "org",
            "AIPLANE_OIDC_ALGORITHMS": "ES256",
        }
    )
    assert config is not None
    assert (config.tenant_claim, config.roles_claim, tuple(config.algorithms)) == ("org", "roles", ("ES256",))
    with pytest.raises(ValueError, match="AIPLANE_OIDC_AUDIENCE"):
        OIDCConfig.from_env({"AIPLANE_OIDC_ISSUER": ISSUER, "AIPLANE_OIDC_JWKS_URL": "https://x"})


def test_the_fast_path_and_the_route_answer_tokens_alike(engine: Engine, jwks: JwksServer, rsa_key: Signer) -> None:
    fast_app = create_app(engine, SETTINGS, oidc=verifier(jwks))
    routed_app = create_app(engine, SETTINGS, oidc=verifier(jwks))
    routed_app.user_middleware = [m for m in routed_app.user_middleware if m.cls is not SubmitFastPath]  # type: ignore[comparison-overlap]
    tokens = {
        "valid": rsa_key.token(),
        "auditor": rsa_key.token(roles=["auditor"]),
        "expired": rsa_key.token(exp=int(time.time()) - 120),
        "other audience": rsa_key.token(aud="other"),
        "no tenant": rsa_key.token(tenant=None),
    }
    with TestClient(fast_app) as fast, TestClient(routed_app) as routed:
        for name, token in tokens.items():
            answers = [client.post("/v1/tasks?mode=async", json=BODY, headers=auth(token)) for client in (fast, routed)]
            assert answers[0].status_code == answers[1].status_code, name
            if answers[0].status_code == 202:
                assert answers[0].json()["workflow"] == answers[1].json()["workflow"]
            else:
                assert answers[0].json() == answers[1].json(), name
                assert answers[0].headers.get("www-authenticate") == answers[1].headers.get("www-authenticate")
