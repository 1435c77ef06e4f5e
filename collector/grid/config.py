"""The `[grid]` section of collector.toml: what citizens may report, and assessment rules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from collector.alarms.config import DurationMs
from collector.config import CollectorConfigError

DEFAULT_CITIZEN_KINDS = ("dust", "garbage", "illegal_parking", "road_damage", "lift_fault",
                         "noise", "water_leak", "other")


class GridSettings(BaseModel):
    """Reported events and department assessment."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    citizen_kinds: tuple[str, ...] = DEFAULT_CITIZEN_KINDS
    citizen_per_minute: int = Field(default=5, ge=1, le=1000)  # per client address
    citizen_total_per_minute: int = Field(default=120, ge=1, le=100_000)  # all citizens
    photo_max_bytes: int = Field(default=2_000_000, ge=10_000, le=10_000_000)
    # Time to resolve within which an incident counts as handled in time, per kind.
    resolve_within_ms: dict[str, DurationMs] = Field(
        default_factory=lambda: {"*": 86_400_000, "trapped_passenger": 3_600_000},
        alias="resolve_within")
    week_timezone: str = "Asia/Shanghai"  # weeks of the trends start on Monday 00:00 here

    @field_validator("week_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except Exception:
            raise ValueError(f"{value!r} is not an IANA time zone like \"Asia/Shanghai\"") \
                from None
        return value

    def resolve_sla(self, kind: str) -> int | None:
        """The resolve SLA of a kind (ms), or the default ("*"), or None."""
        return self.resolve_within_ms.get(kind, self.resolve_within_ms.get("*"))


def load_grid_settings(raw: dict[str, Any], source: str = "collector.toml") -> GridSettings:
    """Validate `[grid]`; errors name the file and the key."""
    try:
        return GridSettings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CollectorConfigError(f"{source}: [grid] {where}: {first['msg']}") from None
