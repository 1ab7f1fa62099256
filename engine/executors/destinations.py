"""The SSRF guard of outbound calls (HTTP connectors, task callbacks): only public addresses, unless allowed.

A connector's URL comes from a manifest and its placeholders from task input, so without a guard a task could
make workers call the cloud metadata service, the cluster's internal services or the worker itself. Every address
the host resolves to must be public; a plain-HTTP call then connects to the address that was checked (``pin``),
so a DNS answer that changes between the check and the connection (rebinding) cannot send it elsewhere. Over
HTTPS a rebound name would have to present a certificate for that name, which internal services and the metadata
endpoint (plain HTTP) do not have.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from engine.errors import StepError

DESTINATION_REFUSED = "DestinationRefused"
CONNECTION_ERROR = "ConnectionError"
INVALID_URL = "InvalidURL"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Host name to its addresses (``resolve_host``; tests give their own).
Resolver = Callable[[str], Sequence[str]]

# IPv6 forms that carry an IPv4 address a gateway may forward to: NAT64's well-known prefix (RFC 6052) and the
# deprecated IPv4-compatible form (::a.b.c.d). Mapped (::ffff:), 6to4 and Teredo have ipaddress accessors.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (a literal address resolves to itself), in resolver order."""
    seen: dict[str, None] = {}
    for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM):
        seen.setdefault(str(info[4][0]), None)
    return list(seen)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that embed one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or _is_ipv4_compatible(address):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_ipv4_compatible(address: ipaddress.IPv6Address) -> bool:
    return address in _IPV4_COMPATIBLE and int(address) > 1  # :: and ::1 are themselves


def _translated(address: ipaddress.IPv6Address) -> bool:
    """Whether the address is only a way to reach its embedded IPv4 address (mapped, NAT64, IPv4-compatible)."""
    return address.ipv4_mapped is not None or address in _NAT64 or _is_ipv4_compatible(address)


def is_public(address: Address) -> bool:
    """Globally routable unicast: not loopback, private, link-local (metadata services), shared, reserved,
    multicast or unspecified, nor an IPv6 form of such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        embedded = embedded_ipv4(address)
        if embedded is not None:
            if not is_public(embedded):
                return False
            if _translated(address):
                # ipaddress counts these prefixes as reserved, yet behind DNS64 every public name resolves to one.
                return True
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def check_destination(url: str, allow_private_networks: bool, resolve: Resolver = resolve_host) -> str | None:
    """Refuse a URL whose host resolves to any non-public address unless the caller allows private networks (SSRF).

    Returns the checked address to connect to, or None when private networks are allowed (nothing to pin).
    """
    if allow_private_networks:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError as exc:
        raise StepError(INVALID_URL, f"{url!r} is not a valid URL: {exc}", retryable=False) from exc
    if not host:
        raise StepError(INVALID_URL, f"{url!r} has no host", retryable=False)
    try:
        addresses = list(resolve(host))
    except (OSError, UnicodeError) as exc:
        raise StepError(CONNECTION_ERROR, f"cannot resolve {host!r}: {exc}", retryable=True) from exc
    if not addresses:
        raise StepError(CONNECTION_ERROR, f"{host!r} resolves to no address", retryable=True)
    for text in addresses:
        address = ipaddress.ip_address(text)
        if not is_public(address):
            raise StepError(
                DESTINATION_REFUSED,
                f"{host} resolves to non-public address {address}; set allowPrivateNetworks on the connector "
                "if this is intended",
                retryable=False,
            )
    return addresses[0]
