"""Who may command which device, and which status may follow which: small pure rules."""

from __future__ import annotations

from devices.commands import ACCEPTED, FINAL

# Statuses kept at the collector: the gateway's four and the collector's own.
AWAITING, QUEUED, SENT, CANCELLED = "awaiting_confirmation", "queued", "sent", "cancelled"
OPEN = frozenset({AWAITING, QUEUED, SENT, ACCEPTED})  # not final yet
UNDELIVERED = frozenset({QUEUED, SENT})  # the gateway has not said it holds the command
COMMANDERS = frozenset({"admin", "ops", "crew"})


def refusal(role: str, token_unit: str | None, device_unit: str) -> str | None:
    """Why a token may not command a device (None: it may).

    Admin and ops command every device; a crew token (a maintenance company's unit) only the
    devices of sites that unit is responsible for; no other role commands at all.
    """
    if role not in COMMANDERS:
        return f"role {role!r} may not command devices; needs ops, crew or admin"
    if role != "crew":
        return None
    if not token_unit or token_unit != device_unit:
        owner = f"unit {device_unit!r}" if device_unit else "no unit"
        return f"this device belongs to {owner}, not to unit {token_unit!r}"
    return None


def may_follow(current: str, reported: str) -> bool:
    """Whether a status reported by a gateway replaces the recorded one: a final status is
    never replaced, and `accepted` never follows a final one (replies can overtake)."""
    if current in FINAL or current == "cancelled":
        return False
    return not (reported == ACCEPTED and current == ACCEPTED)
