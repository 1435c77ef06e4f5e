"""Wiring of the hub feeds into the collector (the one entry point: `install_ngsi`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from collector.ngsi import api, feeds, history, model, subscriptions
from collector.ngsi.egress import EgressPolicy
from collector.ngsi.source import EntitySource
from collector.ngsi.worker import FeedTiming, HubFeedWorker
from collector.store import Accepted

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HubFeedSettings:
    """The `[hub_feed]` options: external broker, retention, webhook destinations."""

    broker_url: str | None = None
    retention: history.Retention = field(default_factory=history.Retention)
    timing: FeedTiming = field(default_factory=FeedTiming)
    egress: EgressPolicy = field(default_factory=EgressPolicy)

    RETENTION_KEYS = ("raw_days", "minute_days", "hour_days", "every_s")
    KEYS = ("broker_url", *RETENTION_KEYS, "webhook_allow")

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> HubFeedSettings:
        """Read a config section like {"broker_url": ..., "raw_days": 30, ...}.

        Raises ValueError naming the key for an unknown key or a bad value.
        """
        s = dict(section or {})
        for key in s:
            if key not in cls.KEYS:
                raise ValueError(f"hub_feed.{key}: unknown key; known: {', '.join(cls.KEYS)}")
        keep = {k: s[k] for k in cls.RETENTION_KEYS if k in s}
        for k, v in keep.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v <= 0):
                raise ValueError(f"hub_feed.{k}: {v!r} must be a positive number of "
                                 f"{'seconds' if k == 'every_s' else 'days'}")
        allow = s.get("webhook_allow", [])
        if not isinstance(allow, list):
            raise ValueError("hub_feed.webhook_allow: must be a list of networks and host names")
        return cls(broker_url=s.get("broker_url") or None,
                   retention=history.Retention(**keep), egress=EgressPolicy.parse(allow))


def sites_of(env_config: Any) -> list[model.SiteInfo]:
    """SiteInfo of every environment site in an EnvironmentConfig (None: no sites)."""
    if env_config is None:
        return []
    return [model.SiteInfo(s.id, s.name, s.kind, s.lat, s.lon, s.district, tuple(s.devices))
            for s in env_config.sites]


def topology(hub_app: Any, store: Any) -> feeds.Topology:
    """Device kind, site and zone maps from the store and the running features."""
    topo = feeds.Topology()
    topo.kind = {d["device_id"]: d["kind"] for d in store.devices()}
    env = getattr(hub_app.state, "environment", None)
    if env is not None:
        topo.site = {d: s.id for s in env.config.sites for d in s.devices}
    parking = getattr(hub_app.state, "parking", None)
    if parking is not None:
        topo.zone = {sid: spot.zone for sid, spot in parking.model.spots.items() if spot.zone}
    return topo


@dataclass(slots=True)
class HubFeeds:
    """The running hub feeds: what the collector's feature adapter drives."""

    worker: HubFeedWorker
    keeper: history.HistoryKeeper
    bus: feeds.FeedBus
    topo: feeds.Topology

    def on_stored(self, items: list[Accepted]) -> None:
        """Offer fresh envelopes to the broker/webhook worker and the live streams."""
        for d in _new_devices(items, self.topo):
            self.topo.kind.setdefault(d, "unknown")
        self.worker.offer(feeds.changes(items, self.topo))
        if self.bus.listening():  # live-stream items only for open streams
            for channel, item in feeds.stream_items(items, self.topo):
                self.bus.publish(channel, item)

    def tasks(self) -> tuple[Callable[[], Coroutine[Any, Any, None]], ...]:
        """The context-broker/webhook worker, history retention and the hourly roll-up."""
        return (self.worker.run, self.keeper.run_retention, self.keeper.run_rollup)

    def close(self) -> None:
        """Stop the worker."""
        self.worker.stop()


def install_ngsi(core: Any, settings: HubFeedSettings | None = None) -> HubFeeds:
    """Add the NGSI-LD API, live streams, webhooks, broker push and history to the app of
    `core` (a `collector.feature.Core`).

    Call after the environment and parking features are mounted (it reads their config).
    """
    settings = settings or HubFeedSettings.from_section(
        getattr(core.config, "hub_feed", None))
    app = core.app
    env = getattr(app.state, "environment", None)
    source = EntitySource(core.store, sites_of(env.config if env else None),
                          public_url=core.config.public_url)
    worker = HubFeedWorker(source, settings.broker_url, timing=settings.timing,
                           egress=settings.egress)
    keeper = history.HistoryKeeper(core.store, settings.retention)
    bus = feeds.FeedBus()
    app.state.ngsi_source = source
    app.state.ngsi_worker = worker
    app.state.ngsi_egress = settings.egress
    app.state.ngsi_history = keeper
    app.state.ngsi_feeds = bus
    api.add_problem_handler(app)
    for r in (api.router, subscriptions.router, feeds.stream_router, history.history_router):
        app.include_router(r, dependencies=list(core.readers))
    core.store.row_writers.append(keeper.write_rows)
    keeper.maintain()
    return HubFeeds(worker, keeper, bus, topology(app, core.store))


def _new_devices(items: list[Accepted], topo: feeds.Topology) -> list[str]:
    from devices.contract import DataEnvelope

    return [r.device for a in items if isinstance(a.envelope, DataEnvelope)
            for r in a.envelope.readings if r.device not in topo.kind]
