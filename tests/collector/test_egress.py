"""Webhook destinations: global addresses only, unless the operator allows more."""

from __future__ import annotations

import ipaddress

import pytest

from collector.ngsi import HubFeedSettings
from collector.ngsi.egress import EgressPolicy, EgressRefused

DEFAULT = EgressPolicy()


@pytest.mark.parametrize(("address", "allowed"), [
    ("93.184.215.14", True),  # a public address
    ("2a00:1450:4001:80b::200e", True),
    ("127.0.0.1", False),  # the collector's own services
    ("::1", False),
    ("10.20.0.5", False),  # the city's private network
    ("192.168.1.10", False),
    ("172.16.0.1", False),
    ("169.254.169.254", False),  # cloud metadata service
    ("100.64.0.1", False),  # carrier-grade NAT
    ("0.0.0.0", False),
    ("::ffff:127.0.0.1", False),  # loopback in IPv4-mapped form
    ("fd00::1", False),
    ("224.0.0.1", False),
])
def test_only_global_addresses_by_default(address: str, allowed: bool) -> None:
    assert DEFAULT.allows(ipaddress.ip_address(address)) is allowed


def test_operator_allows_networks_and_host_names() -> None:
    policy = EgressPolicy.parse(["10.20.0.0/16", "127.0.0.1", "Hooks.City.Internal."])
    assert policy.allows(ipaddress.ip_address("10.20.3.4"))
    assert policy.allows(ipaddress.ip_address("127.0.0.1"))
    assert not policy.allows(ipaddress.ip_address("10.21.0.1"))
    assert not policy.allows(ipaddress.ip_address("127.0.0.2"))
    # a listed name may resolve to anything, an unlisted one must resolve to allowed addresses
    assert policy.verdict("hooks.city.internal", [ipaddress.ip_address("10.99.0.1")]) is None
    reason = policy.verdict("other.city", [ipaddress.ip_address("93.184.215.14"),
                                           ipaddress.ip_address("10.99.0.1")])
    assert reason is not None and "10.99.0.1" in reason and "webhook_allow" in reason


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/x",
    "http://169.254.169.254/latest/meta-data/", "https://10.0.0.1/", "ftp://example.org/",
    "http:///nohost", "http://no-such-host.invalid/hook",
])
def test_check_refuses_internal_and_unresolvable_endpoints(url: str) -> None:
    with pytest.raises(EgressRefused):
        DEFAULT.check(url)


def test_check_accepts_an_allowed_loopback_endpoint() -> None:
    EgressPolicy.parse(["127.0.0.0/8"]).check("http://127.0.0.1:9/hook")


@pytest.mark.parametrize(("entries", "words"), [
    (["10.0.0.0/33"], "not a network"),
    (["bad host!"], "not a network"),
    ([""], "not a network or a host name"),
    ([5], "not a network or a host name"),
])
def test_bad_allow_entries_are_refused(entries: list[object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        EgressPolicy.parse(entries)  # type: ignore[arg-type]


@pytest.mark.parametrize(("section", "words"), [
    ({"raw_day": 30}, "hub_feed.raw_day: unknown key"),
    ({"raw_days": -1}, "hub_feed.raw_days: -1 must be a positive number of days"),
    ({"raw_days": "90"}, "hub_feed.raw_days"),
    ({"webhook_allow": "10.0.0.0/8"}, "hub_feed.webhook_allow: must be a list"),
    ({"webhook_allow": ["10.0.0.0/33"]}, "webhook_allow: '10.0.0.0/33'"),
])
def test_hub_feed_section_errors_name_the_key(section: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        HubFeedSettings.from_section(section)


def test_hub_feed_section_reads_every_key() -> None:
    s = HubFeedSettings.from_section({"broker_url": "http://orion:1026", "raw_days": 30,
                                      "minute_days": 100, "hour_days": 3650, "every_s": 600,
                                      "webhook_allow": ["10.1.0.0/16"]})
    assert s.broker_url == "http://orion:1026"
    assert (s.retention.raw_days, s.retention.minute_days, s.retention.hour_days,
            s.retention.every_s) == (30, 100, 3650, 600)
    assert s.egress.networks == (ipaddress.ip_network("10.1.0.0/16"),)
