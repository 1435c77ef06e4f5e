"""Who may command which device, and which status may follow which: small pure rules."""

from __future__ import annotations

from dataclasses import dataclass

from collector.clock import iso_seconds
from devices.commands import ACCEPTED, FINAL

# Statuses kept at the collector: the gateway's four and the collector's own.
AWAITING, QUEUED, SENT, CANCELLED = "awaiting_confirmation", "queued", "sent", "cancelled"
OPEN = frozenset({AWAITING, QUEUED, SENT, ACCEPTED})  # not final yet
UNDELIVERED = frozenset({QUEUED, SENT})  # the gateway has not said it holds the command
COMMANDERS = frozenset({"admin", "ops", "crew"})
TECHNICIAN = "technician"  # commands only the devices of a gateway being commissioned


@dataclass(frozen=True, slots=True)
class Commissioning:
    """What the registry knows of a gateway's commissioning."""

    gateway: str
    site_unit: str  # the responsible unit of its registry site ("" if none)
    claimed: int  # when its identity was created (claimed or registered), ms
    commissioned_at: int | None  # when its last commissioning run passed (None: not passed)
    last_run: int | None  # when its latest commissioning run was received, ms
    revoked: bool = False


def technician_refusal(gateway: str, reg: Commissioning | None, token_unit: str | None,
                       now: int, window_ms: int) -> str | None:
    """Why a technician may not command a gateway's devices (None: it may).

    A technician commands a gateway only while it is being commissioned: registered, not
    revoked, its commissioning not passed, and within `window_ms` of its claim or of its latest
    commissioning run (a failed run reopens the window). A token scoped to a unit commands
    only gateways of sites that unit is responsible for.
    """
    hours = f"{window_ms / 3_600_000:g} h"
    if reg is None:
        return (f"{gateway} is not in the registry; a technician commands only the devices of "
                "a registered gateway while it is being commissioned")
    if reg.revoked:
        return f"{gateway}'s credentials are revoked"
    if token_unit and token_unit != reg.site_unit:
        owner = f"unit {reg.site_unit!r}" if reg.site_unit else "no unit"
        return f"{gateway} is at a site of {owner}, not of unit {token_unit!r}"
    if reg.commissioned_at is not None:
        return (f"{gateway} was commissioned at {iso_seconds(reg.commissioned_at)}; a "
                "technician commands a gateway only while it is being commissioned")
    opened = max(reg.claimed, reg.last_run or 0)
    if now >= opened + window_ms:
        since = "latest commissioning run" if reg.last_run and reg.last_run >= reg.claimed \
            else "claim"
        return (f"{gateway}'s commissioning window closed at "
                f"{iso_seconds(opened + window_ms)} ({hours} after its {since}); "
                "upload a commissioning run to open it again")
    return None


def refusal(role: str, token_unit: str | None, device_unit: str) -> str | None:
    """Why a token may not command a device (None: it may).

    Admin and ops command every device; a crew token (a maintenance company's unit) only the
    devices of sites that unit is responsible for; no other role commands at all.
    """
    if role not in COMMANDERS:
        return (f"role {role!r} may not command devices; needs ops, crew or admin (or "
                "technician, while the device's gateway is being commissioned)")
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
