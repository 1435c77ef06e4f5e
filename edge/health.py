"""Per-device health: online/offline with backoff probing of offline devices (pure policy)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DeviceHealth:
    """Tracks consecutive failures; says when an offline device is due for a probe."""

    poll: float  # normal poll period, seconds
    offline_after: int = 3  # consecutive failed polls before a device counts as offline
    probe_max: float = 60.0  # longest wait between probes of an offline device
    online: bool = True
    failures: int = 0
    probes: int = 0
    counters: dict[str, int] = field(default_factory=lambda: {
        "polls": 0, "ok": 0, "timeouts": 0, "exceptions": 0, "io_errors": 0, "partial": 0,
    })

    def success(self) -> bool:
        """Record a good poll; return True if the device just came back online."""
        self.counters["polls"] += 1
        self.counters["ok"] += 1
        came_back = not self.online
        self.online, self.failures, self.probes = True, 0, 0
        return came_back

    def failure(self, kind: str) -> bool:
        """Record a failed poll; return True if the device just went offline."""
        self.counters["polls"] += 1
        key = {"timeout": "timeouts", "exception": "exceptions"}.get(kind, "io_errors")
        self.counters[key] += 1
        self.failures += 1
        if not self.online:
            self.probes += 1
            return False
        if self.failures >= self.offline_after:
            self.online = False
            return True
        return False

    def next_interval(self) -> float:
        """Seconds until the next poll: the poll period, or a doubling probe interval offline."""
        if self.online:
            return self.poll
        return min(self.probe_max, self.poll * 2 ** min(self.probes + 1, 16))


def probe_fits(now: float, next_online_due: float | None, cost: float,
               deferred_since: float | None, max_defer: float) -> bool:
    """Whether probing an offline device now leaves the online devices on schedule.

    A probe runs only in leftover time: when it can take `cost` seconds (its timeout) and still
    end before the next online device is due. So a probe cannot starve for ever on a full bus,
    one that has been put off for `max_defer` seconds runs anyway.
    """
    if next_online_due is None or next_online_due - now >= cost:
        return True
    return deferred_since is not None and now - deferred_since >= max_defer


def suspect_retries(retries: int, failures: int) -> int:
    """Retries for a device's next read: none once it has failed, so a dead unit costs one
    timeout per poll instead of `retries + 1` while it is counted down to offline."""
    return 0 if failures > 0 else retries
