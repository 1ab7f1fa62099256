"""The SSRF guard: which addresses are refused (every IPv4 and IPv6 form of loopback, link-local, metadata,
private and reserved ranges, and DNS names that resolve to them), and how a guarded call connects to the address
that was checked and checks every redirect, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from crds.workflow import Step
from engine.errors import StepError
from engine.executors.base import StepContext
from engine.executors.destinations import Resolver, check_destination, is_public
from engine.executors.http import Guard, HttpCaller
from tests.fixtures.downstream import Downstream, Reply

NOT_PUBLIC = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "198.18.0.1",  # benchmarking
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo of 10.0.0.1
]
PUBLIC = [
    "8.8.8.8",
    "::ffff:8.8.8.8",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "2a00:1450:4001::200e",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def resolver(table: dict[str, list[str]]) -> Resolver:
    def resolve(host: str) -> list[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("url", "answers"),
    [
        ("http://internal.corp/x", ["10.20.30.40"]),
        ("http://metadata.google.internal/computeMetadata/v1/", ["169.254.169.254"]),
        # One private answer among public ones is enough to refuse: the client may connect to any of them.
        ("https://mixed.example/x", ["93.184.216.34", "192.168.0.10"]),
        ("http://v6.example/x", ["2606:4700:4700::1111", "fd00::5"]),
        ("http://rebind.example/x", ["::ffff:127.0.0.1"]),
    ],
)
def test_names_resolving_to_private_addresses_are_refused(url: str, answers: list[str]) -> None:
    host = urlsplit(url).hostname or ""
    with pytest.raises(StepError) as refused:
        check_destination(url, allow_private_networks=False, resolve=resolver({host: answers}))
    assert refused.value.kind == "DestinationRefused"
    assert not refused.value.retryable
    assert check_destination(url, allow_private_networks=True, resolve=resolver({})) is None


def test_a_public_name_is_pinned_to_its_checked_address() -> None:
    resolve = resolver({"api.example": ["93.184.216.34", "2606:2800:220:1::1"]})
    assert check_destination("https://api.example/v1", allow_private_networks=False, resolve=resolve) == "93.184.216.34"


def test_an_unresolvable_name_is_a_retryable_connection_error() -> None:
    with pytest.raises(StepError) as failed:
        check_destination("http://nowhere.invalid/", allow_private_networks=False, resolve=resolver({}))
    assert failed.value.kind == "ConnectionError"
    assert failed.value.retryable


# ---------------------------------------------------------------- guarded calls


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    server = Downstream()
    yield server
    server.close()


@pytest.fixture
def caller() -> Iterator[HttpCaller]:
    http = HttpCaller()
    yield http
    http.close()


CTX = StepContext(
    task_id="t1",
    tenant="acme",
    workflow="w",
    workflow_version="v1",
    step=Step.model_validate({"name": "call", "type": "connector", "connector": {"name": "c"}}),
    attempt=1,
    idempotency_key="t1-1-call",
    input={},
    steps={},
    vars={},
    timeout=5.0,
)


def lab_guard(public: set[str]) -> Guard:
    """The real check, except that the names in ``public`` count as public hosts served on 127.0.0.1 (there is
    no public address in a test); they do not resolve in DNS at all, so a call that arrives was pinned."""

    def guard(url: str) -> str | None:
        if urlsplit(url).hostname in public:
            return "127.0.0.1"
        return check_destination(url, allow_private_networks=False)

    return guard


def test_a_guarded_call_connects_to_the_checked_address_with_the_original_host(
    caller: HttpCaller, downstream: Downstream
) -> None:
    port = downstream.server.server_address[1]
    out = caller.call(
        CTX,
        downstream="connector/c",
        method="POST",
        url=f"http://api.public.test:{port}/v1?x=1",
        body={"a": 1},
        timeout=5,
        guard=lab_guard({"api.public.test"}),
    )
    assert out == {"path": "/v1", "received": {"a": 1}}
    (call,) = downstream.calls["/v1"]
    assert call.headers["Host"] == f"api.public.test:{port}"
    assert call.query == "x=1"


def test_a_redirect_to_a_private_address_is_refused(caller: HttpCaller, downstream: Downstream) -> None:
    port = downstream.server.server_address[1]
    for target in ("http://169.254.169.254/latest/meta-data/", f"http://127.0.0.1:{port}/admin", "http://[::1]/"):
        downstream.script("/start", Reply(302, headers={"Location": target}))
        with pytest.raises(StepError) as refused:
            caller.call(
                CTX,
                downstream="connector/c",
                method="GET",
                url=f"http://api.public.test:{port}/start",
                timeout=5,
                guard=lab_guard({"api.public.test"}),
            )
        assert refused.value.kind == "DestinationRefused", target
    assert downstream.count("/admin") == 0


def test_redirects_to_another_origin_leave_credentials_behind(caller: HttpCaller, downstream: Downstream) -> None:
    port = downstream.server.server_address[1]
    downstream.script("/start", Reply(303, headers={"Location": f"http://other.public.test:{port}/landing"}))
    caller.call(
        CTX,
        downstream="connector/c",
        method="POST",
        url=f"http://api.public.test:{port}/start",
        body={"a": 1},
        headers={"Authorization": "Bearer s3cr3t"},
        timeout=5,
        guard=lab_guard({"api.public.test", "other.public.test"}),
    )
    (landing,) = downstream.calls["/landing"]
    # 303: a GET without the body; another origin: no Authorization, the idempotency key still there.
    assert (landing.method, landing.body) == ("GET", None)
    assert "Authorization" not in landing.headers
    assert landing.headers["Idempotency-Key"] == "t1-1-call"
    assert landing.headers["Host"] == f"other.public.test:{port}"


def test_redirect_loops_end(caller: HttpCaller, downstream: Downstream) -> None:
    downstream.script("/loop", Reply(302, headers={"Location": "/loop"}))
    with pytest.raises(StepError) as looped:
        caller.call(
            CTX, downstream="connector/c", method="GET", url=downstream.url("/loop"), timeout=5, guard=lambda _: None
        )
    assert looped.value.kind == "TooManyRedirects"
    assert not looped.value.retryable
    assert downstream.count("/loop") == 6


def test_without_a_guard_redirects_are_not_followed(caller: HttpCaller, downstream: Downstream) -> None:
    # Model calls have no guard (their endpoints come from Model status): a redirect is an error, not followed.
    downstream.script("/m", Reply(302, headers={"Location": "http://169.254.169.254/"}))
    with pytest.raises(StepError) as failed:
        caller.call(CTX, downstream="model/m", method="POST", url=downstream.url("/m"), timeout=5)
    assert failed.value.kind == "HTTP302"
    assert "not followed" in failed.value.message
