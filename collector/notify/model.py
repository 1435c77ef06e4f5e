"""What is pushed: a notice about an incident, independent of the channel that carries it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Notice:
    """One message for people; channels render it (markdown, e-mail, JSON)."""

    key: str  # incident id (or digest key): notices with one key belong together
    title: str  # one line, e.g. "[CRITICAL] Trapped passenger — lift-t03 at Jinshui Rd 12"
    text: str  # markdown body
    severity: str  # critical | major | minor | warning | info
    link: str  # deep link to the incident in CityGate (crews acknowledge there)
    created_ms: int
    mention_phones: tuple[str, ...] = ()  # @-mentions for DingTalk / WeCom
    emails: tuple[str, ...] = ()  # extra e-mail recipients (on-call people)
