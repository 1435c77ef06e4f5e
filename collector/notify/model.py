"""What is pushed: a notice about an incident, independent of the channel that carries it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fact:
    """One labelled fact a crew needs (address, floor, contact, running time...).

    `key` names it for programs (webhook JSON, SMS template variables); `label` is what people
    read. `href` makes the value a link (tel: for a contact, a map link for coordinates).
    `since_ms` makes it a running time: channels render it as "mm:ss" counted at send time.
    """

    key: str
    label: str
    value: str = ""
    href: str = ""
    since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """One message for people; channels render it (markdown, e-mail, JSON, SMS)."""

    key: str  # incident id (or digest key): notices with one key belong together
    title: str  # one line, e.g. "[CRITICAL] Trapped passenger — lift-t03 at Jinshui Rd 12"
    text: str  # markdown body
    severity: str  # critical | major | minor | warning | info
    link: str  # deep link to the incident in CityGate (crews acknowledge there)
    created_ms: int
    mention_phones: tuple[str, ...] = ()  # @-mentions for DingTalk / WeCom
    emails: tuple[str, ...] = ()  # extra e-mail recipients (on-call people)
    facts: tuple[Fact, ...] = ()  # shown first by every channel; missing ones are left out
