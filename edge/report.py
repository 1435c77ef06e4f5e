"""Report on change with a periodic full snapshot (pure policy)."""

from __future__ import annotations

from dataclasses import dataclass, field

from devices.model import Value


@dataclass
class ChangeFilter:
    """Decides which values of a new observation are worth sending."""

    heartbeat: float  # seconds between full snapshots
    deadbands: dict[str, float] = field(default_factory=dict)
    _last: dict[str, Value] = field(default_factory=dict)
    _last_full: float | None = None

    def select(self, values: dict[str, Value], now: float) -> dict[str, Value]:
        """Return the values to report at `now` (all of them when a heartbeat is due)."""
        if self._last_full is None or now - self._last_full >= self.heartbeat:
            self._last_full = now
            self._last = dict(values)
            return dict(values)
        changed = {q: v for q, v in values.items() if self._changed(q, v)}
        self._last.update(changed)
        return changed

    def _changed(self, q: str, v: Value) -> bool:
        if q not in self._last:
            return True
        old = self._last[q]
        band = self.deadbands.get(q, 0.0)
        if band and isinstance(v, int | float) and isinstance(old, int | float) \
                and not isinstance(v, bool):
            return abs(v - old) >= band
        return v != old

    def forget(self) -> None:
        """Force a full snapshot next time (after the device was offline)."""
        self._last_full = None
        self._last = {}
