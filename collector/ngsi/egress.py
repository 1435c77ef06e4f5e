"""Where the hub may send webhooks: global addresses, plus what the operator allows.

A subscription's endpoint is chosen by whoever holds a reader token, so without a check any
downstream system could make the collector POST into the city's own network (server-side
request forgery): a database or broker admin port, a gateway, the cloud metadata service at
169.254.169.254. An endpoint must resolve to global addresses only, unless its host name or its
addresses are listed in `[hub_feed] webhook_allow` (host names and networks such as
"10.20.0.0/16"). The check runs when a subscription is made (a clear 400 for the caller) and
again before every delivery, since a name can later resolve elsewhere. What it cannot stop is a
name that changes its answer between that check and httpx's own lookup a moment later (DNS
rebinding within milliseconds); pinning the connection to the checked address would.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(ValueError):
    """An endpoint the hub will not send to; the message names the address and the setting."""


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Allowed webhook destinations beyond global addresses."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> EgressPolicy:
        """From `webhook_allow`: networks ("10.0.0.0/8", "127.0.0.1") and host names."""
        networks: list[Network] = []
        hosts: set[str] = set()
        for entry in entries:
            text = entry.strip() if isinstance(entry, str) else ""
            if not text:
                raise ValueError(f"webhook_allow: {entry!r} is not a network or a host name")
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                if "/" in text or not _hostname(text):
                    raise ValueError(f"webhook_allow: {entry!r} is not a network "
                                     "(e.g. \"10.20.0.0/16\") or a host name") from None
                hosts.add(text.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allows(self, address: Address) -> bool:
        """A global unicast address, or one inside an allowed network."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return ((address.is_global and not address.is_multicast)
                or any(address in n for n in self.networks))

    def verdict(self, host: str, addresses: Iterable[Address]) -> str | None:
        """Why a host with these addresses is refused, or None when every one is allowed."""
        if host.lower().rstrip(".") in self.hosts:
            return None
        for address in addresses:
            if not self.allows(address):
                return (f"{host} resolves to {address}, which is not a public address; an "
                        "operator may allow it in [hub_feed] webhook_allow")
        return None

    def check(self, url: str) -> None:
        """Raise EgressRefused unless `url` may receive webhooks (resolves its host now)."""
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise EgressRefused(f"{url!r} is not an http(s) URL with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, ValueError) as exc:
            raise EgressRefused(f"cannot resolve {host!r}: {exc}") from None
        reason = self.verdict(host, {ipaddress.ip_address(str(i[4][0]).partition("%")[0])
                                     for i in infos})
        if reason is not None:
            raise EgressRefused(reason)


def _hostname(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return all(label and len(label) < 64 and label.replace("-", "").isalnum()
               and not label.startswith("-") for label in labels)
