"""What the parking pages show of a spot's sensor beyond its status (pure: time is passed in)."""

from __future__ import annotations

from collector.parking.model import Spot, SpotStatus

# Alert kinds as the maintenance unit calls them ("silent" is a sensor gone offline).
HEALTH_NAMES = {"silent": "offline", "low_battery": "low_battery", "flapping": "flapping",
                "magnetic_jump": "magnetic_jump"}
HEALTH_KINDS = ("offline", "low_battery", "stuck", "flapping", "magnetic_jump")


def spot_health(spot: Spot, now_ms: int, stuck_after_s: float) -> list[str]:
    """The problems of a spot's sensor, in HEALTH_KINDS order; [] when it is healthy.

    offline: silent past its heartbeat, or never heard; stuck: still reporting, but the same
    occupancy for longer than `stuck_after_s` (a frozen detector reports forever unchanged).
    """
    found = {HEALTH_NAMES[a] for a in spot.alerts if a in HEALTH_NAMES}
    if spot.last_ts is None or spot.silent:
        found.add("offline")
    elif spot.status in (SpotStatus.FREE, SpotStatus.OCCUPIED) and spot.since is not None \
            and now_ms - spot.since > stuck_after_s * 1000:
        found.add("stuck")
    return [k for k in HEALTH_KINDS if k in found]
