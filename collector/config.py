"""Collector configuration file (TOML): each feature validates its own section."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CollectorConfigError(ValueError):
    """A collector config that cannot be used; the message names the file and key."""


class CollectorConfig(BaseModel):
    """Top level of collector.toml; feature sections stay raw until their feature reads them."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    public_url: str = Field(default="http://127.0.0.1:8080",
                            description="base URL used in deep links sent to crews")
    notify: dict[str, Any] = Field(default_factory=dict)  # push channels (collector.notify)
    alarms: dict[str, Any] = Field(default_factory=dict)  # rules, routing, rosters
    sites: dict[str, Any] = Field(default_factory=dict)  # environment sites and thresholds
    parking: dict[str, Any] = Field(default_factory=dict)  # zones, spots, sensor-health limits
    # NGSI-LD push to a context broker, history retention (days of raw, 1-minute, 1-hour data)
    hub_feed: dict[str, Any] = Field(default_factory=dict)
    # what new gateways are told (broker URLs, CA), and the broker's auth files
    registry: dict[str, Any] = Field(default_factory=dict)
    # ingest: clock tolerances (collector.placement), max_pending, max_devices_per_gateway
    ingest: dict[str, Any] = Field(default_factory=dict)
    pages: dict[str, Any] = Field(default_factory=dict)  # what the web pages link to (map URL)
    # pollution-source attribution: radius, weights, owner push channel and escalation
    sources: dict[str, Any] = Field(default_factory=dict)
    # ingest processes (collector.workers); more than one needs PostgreSQL
    workers: int = Field(default=1, ge=1, le=64)
    # reported events (citizen kinds and rate limits) and assessment (SLAs, week time zone)
    grid: dict[str, Any] = Field(default_factory=dict)
    # device commands: rate per token, confirmation window, re-send delay (collector.commands)
    commands: dict[str, Any] = Field(default_factory=dict)


def load_collector_config(path: str | Path | None) -> CollectorConfig:
    """Read collector.toml, or return the defaults when no file is given."""
    if path is None:
        return CollectorConfig()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
        return CollectorConfig.model_validate(data)
    except OSError as exc:
        raise CollectorConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CollectorConfigError(f"{p}: not valid TOML: {exc}") from None
    except ValueError as exc:
        raise CollectorConfigError(f"{p}: {exc}") from None
