"""Which features a collector runs, in which order, and the thin adapter of each.

This module is the composition: the only place that names every feature. The core
(collector/hub.py, api.py, store.py) knows them only through the `Feature` contract of
collector/feature.py. Each adapter below translates the contract to its feature's own objects
and does nothing else; the order of `default_features` is the mount order (the environment
raises its alarms through the alarm engine, the hub feeds read the environment's sites and the
parking model).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from collector import (
    alarms,
    commands,
    elevators,
    environment,
    grid,
    ngsi,
    parking,
    registry,
    sources,
    updates,
)
from collector.auth_tables import AUTH
from collector.clock import now_ms
from collector.config import CollectorConfig, CollectorConfigError
from collector.core_tables import CORE
from collector.feature import BaseFeature, BrokerLink, Core, Feature, Task
from collector.feed import FEED
from collector.hub import Hub, assemble
from collector.migrations import MigrationSet
from collector.notify.queue import MIGRATIONS as NOTIFY_MIGRATIONS
from collector.notify.queue import NotifyQueue
from collector.registry.tables import MIGRATIONS as REGISTRY_MIGRATIONS
from collector.store import Accepted, Store
from collector.updates.tables import MIGRATIONS as UPDATES_MIGRATIONS


class AlarmsAndPush(BaseFeature):
    """Alarm engine, incidents desk and the push channels that carry its notices."""

    name = "alarms"
    migrations = (NOTIFY_MIGRATIONS, alarms.MIGRATIONS)

    def mount(self, core: Core) -> None:
        """Build the notify queue, its dispatcher and the alarm engine; add their routes."""
        from collector.notify.config import load_notify_config
        from collector.notify.dispatcher import Dispatcher

        cfg = core.config
        queue = NotifyQueue(core.store)
        self.dispatcher = Dispatcher(queue, load_notify_config(cfg.notify,
                                                               source=core.config_source),
                                     digest_link=f"{cfg.public_url}/ops")
        self.engine = alarms.AlarmEngine(core.store, alarms.load_alarms_config(alarm_sites(cfg)),
                                         queue.enqueue, public_url=cfg.public_url)
        self.engine.load()
        core.app.state.alarms = alarms.IncidentDesk(self.engine)
        core.app.state.notify_queue = queue
        core.app.state.live_streams["incidents"] = self.engine.bus
        core.app.include_router(alarms.router)
        core.app.include_router(alarms.pages)

    def on_stored(self, items: list[Accepted]) -> None:
        """Raise and clear alarms from fresh events."""
        self.engine.on_stored(items)

    def on_state(self, gateway: str, state: str, devices: list[str]) -> None:
        """A gateway going offline is an alarm of its own."""
        self.engine.on_gateway_state(gateway, state, devices)

    def tasks(self) -> Sequence[Task]:
        """The push dispatcher and the escalation clock."""
        async def dispatch() -> None:
            await self.dispatcher.start()

        return (dispatch, lambda: alarms.run_escalations(self.engine))

    async def close(self) -> None:
        """Stop delivering, handing leased notices back to the queue."""
        if hasattr(self, "dispatcher"):
            await self.dispatcher.stop()


def alarm_sites(cfg: CollectorConfig) -> dict[str, Any]:
    """The alarms section, with every environmental site known as an alarm site too.

    So a station's exceedance is an incident of its site (name, district as grid) rather than
    of the collector; sites given in [alarms.sites] take precedence.
    """
    raw = dict(cfg.alarms)
    sites = dict(raw.get("sites", {}))
    for site in cfg.sites.get("sites", []):
        if isinstance(site, dict) and "id" in site:
            sites.setdefault(site["id"], {"name": site.get("name") or site["id"],
                                          "devices": list(site.get("devices", [])),
                                          "grid": site.get("district", ""),
                                          "lat": site.get("lat"), "lon": site.get("lon")})
    raw["sites"] = sites
    return raw


class Environment(BaseFeature):
    """Dust and boiler sites: threshold rules whose alarms go through the alarm engine."""

    name = "environment"
    migrations = (environment.MIGRATIONS,)

    def __init__(self, alarms_feature: AlarmsAndPush) -> None:
        self.alarms = alarms_feature
        self.seq = itertools.count(1)

    def mount(self, core: Core) -> None:
        """Build the monitor on the sites of the config; add its routes and page."""
        from collector.environment.config import load_environment_config

        self.monitor = environment.EnvironmentMonitor(
            core.store, load_environment_config(core.config.sites), on_alarm=self.raise_alarm)
        environment.install(core.app, self.monitor, dependencies=list(core.readers))

    def raise_alarm(self, alarm: environment.EnvAlarm) -> None:
        """Hand a site's threshold alarm to the alarm engine as a collector event."""
        from devices.contract import EventsEnvelope

        site = next((s for s in self.monitor.config.sites if s.id == alarm.site), None)
        env = EventsEnvelope.model_validate({
            "v": 1, "gateway": "collector", "seq": next(self.seq), "sent": alarm.ts,
            "events": [{
                "device": site.devices[0] if site else alarm.site, "ts": alarm.ts,
                "kind": alarm.rule, "action": alarm.action, "severity": "major",
                "evidence": {"site": alarm.site, "quantity": alarm.quantity,
                             "value": alarm.value, "threshold": alarm.threshold},
                "message": alarm.message}]})
        self.alarms.engine.on_stored([Accepted("collector", env, now_ms())])

    def on_stored(self, items: list[Accepted]) -> None:
        """Check fresh readings against the sites' thresholds."""
        self.monitor.on_stored(items)


class Sources(BaseFeature):
    """Pollution sources: registry, truck tracks, attribution and owner tasks."""

    name = "sources"
    migrations = (sources.MIGRATIONS,)

    def __init__(self, environment_feature: Environment) -> None:
        self.environment = environment_feature

    def mount(self, core: Core) -> None:
        """Build the registry on the environment's sites; push through the notify queue."""
        try:
            cfg = sources.load_sources_config(core.config.sources)
        except ValueError as exc:
            raise CollectorConfigError(f"{core.config_source}: [sources] {exc}") from None
        monitor = self.environment.monitor
        self.service = sources.SourcesService(
            core.store, cfg, monitor.config, core.app.state.notify_queue.enqueue,
            public_url=core.config.public_url).load()
        sources.wire(monitor, self.service)
        sources.install(core.app, self.service)

    def on_stored(self, items: list[Accepted]) -> None:
        """Keep truck tracks, monitor values and wind; attribute fresh exceedances."""
        self.service.on_stored(items)

    def tasks(self) -> Sequence[Task]:
        """Task escalation and track retention."""
        return (lambda: sources.run_upkeep(self.service),)


class Grid(BaseFeature):
    """Grids as geography, routing by place, rosters, reported events and assessment."""

    name = "grid"
    migrations = (grid.MIGRATIONS,)

    def __init__(self, alarms_feature: AlarmsAndPush) -> None:
        self.alarms = alarms_feature

    def mount(self, core: Core) -> None:
        """Place and route the alarm engine's incidents; add the grid, roster, report and
        assessment routes and pages."""
        self.app = core.app
        grid.install(core.app, self.alarms.engine, core.config.grid, core.config_source)

    def tasks(self) -> Sequence[Task]:
        """Follow outline and roster changes made through another collector."""
        return (lambda: grid.keep_fresh(self.app),)


class Parking(BaseFeature):
    """Spots, zones and live availability from parking-sensor readings."""

    name = "parking"
    migrations = (parking.MIGRATIONS,)

    def mount(self, core: Core) -> None:
        """Open the parking model on the store and add its routes and page."""
        from collector.parking.api import pages

        self.service = parking.ParkingService(core.store, parking.load_parking_config(
            core.config.parking or None, "collector.toml [parking]")).open()
        core.app.state.parking = self.service
        core.app.include_router(parking.router, dependencies=list(core.readers))
        core.app.include_router(pages)
        self.service.start()

    def on_stored(self, items: list[Accepted]) -> None:
        """Apply fresh sensor readings to spots and zones."""
        self.service.on_stored(items)

    async def close(self) -> None:
        """Stop the parking writer."""
        if hasattr(self, "service"):
            self.service.close()


class Elevators(BaseFeature):
    """Lift statistics, risk ranking and the live event stream (no tables of its own)."""

    name = "elevators"

    def mount(self, core: Core) -> None:
        """Add the lift routes and the live event stream."""
        self.stream = elevators.install(core.app, dependencies=core.readers)
        core.app.state.live_streams["lift_events"] = self.stream.broadcast

    def on_stored(self, items: list[Accepted]) -> None:
        """Publish fresh lift events to the stream's subscribers."""
        self.stream.on_stored(items)


class HubFeeds(BaseFeature):
    """NGSI-LD API, live streams, webhooks, context-broker push, history and retention."""

    name = "hub_feeds"
    migrations = (ngsi.MIGRATIONS,)

    def mount(self, core: Core) -> None:
        """Build the feeds on the environment's sites and the parking model."""
        try:
            settings = ngsi.HubFeedSettings.from_section(core.config.hub_feed)
        except ValueError as exc:
            raise CollectorConfigError(f"{core.config_source}: {exc}") from None
        self.feeds = ngsi.install_ngsi(core, settings)
        for channel, bus in self.feeds.bus.channels.items():
            core.app.state.live_streams[f"feed_{channel}"] = bus

    def on_stored(self, items: list[Accepted]) -> None:
        """Turn fresh envelopes into entity changes and live-stream items."""
        self.feeds.on_stored(items)

    def tasks(self) -> Sequence[Task]:
        """The context-broker and webhook worker, history retention and the hourly roll-up."""
        return self.feeds.tasks()

    async def close(self) -> None:
        """Stop the worker."""
        if hasattr(self, "feeds"):
            self.feeds.close()


class Registry(BaseFeature):
    """Gateway registry, provisioning, remote configuration and broker auth files."""

    name = "registry"
    migrations = (REGISTRY_MIGRATIONS,)

    def mount(self, core: Core) -> None:
        """Build the registry and its command channel to gateways; add its routes."""
        from collector.registry.commands import CommandChannel
        from collector.registry.service import Registry as Service

        self.commands = CommandChannel(core.broker.url, username=core.broker.username,
                                       password=core.broker.password,
                                       client_id=f"{core.broker.client_id}-cmd")
        settings = registry_settings(core.config.registry, core.broker)
        service = Service(core.store.engine, settings, self.commands)
        self.rollouts = service.rollouts
        registry.install(core.app, service)
        if settings.broker_files is not None:
            service.sync_broker()

    def tasks(self) -> Sequence[Task]:
        """The command channel's broker link and the config rollout driver."""
        return (self.commands.run, self.rollouts.run)

    async def close(self) -> None:
        """Disconnect the command channel."""
        if hasattr(self, "commands"):
            await self.commands.aclose()


def registry_settings(cfg: dict[str, Any], broker: BrokerLink) -> Any:
    """The registry's settings from the `[registry]` section and the collector's broker link."""
    from collector.registry.mqtt_auth import BrokerFiles, hash_password
    from collector.registry.service import RegistrySettings

    ca_file = cfg.get("ca_file")
    files = None
    if cfg.get("password_file") and cfg.get("acl_file"):
        files = BrokerFiles(Path(cfg["password_file"]), Path(cfg["acl_file"]),
                            collector_user=broker.username or "citygate-collector",
                            collector_password_hash=hash_password(broker.password or ""),
                            pid_file=Path(cfg["pid_file"]) if cfg.get("pid_file") else None,
                            collector_password_file=(Path(cfg["collector_password_file"])
                                                     if cfg.get("collector_password_file")
                                                     else None))
    return RegistrySettings(
        broker_urls=list(cfg.get("broker_urls", [broker.url])),
        ca_pem=Path(ca_file).read_text() if ca_file else "",
        broker_files=files,
        install_dir=cfg.get("install_dir", "/etc/citygate"),
        data_dir=cfg.get("data_dir", "/var/lib/citygate"),
        collector_user=broker.username or "citygate-collector")


class Updates(BaseFeature):
    """Signed agent updates (bundles, staged rollouts, per-gateway results) and /metrics."""

    name = "updates"
    migrations = (UPDATES_MIGRATIONS,)

    def mount(self, core: Core) -> None:
        """Build the update service and its channel to gateways; add its routes."""
        from collector.registry.commands import CommandChannel
        from collector.updates.metrics import router as metrics_router
        from collector.updates.service import UpdateService

        self.channel = CommandChannel(core.broker.url, username=core.broker.username,
                                      password=core.broker.password,
                                      client_id=f"{core.broker.client_id}-upd")
        self.service = UpdateService(core.store.engine, self.channel, core.config.public_url)
        self.channel.on_reply = self.service.on_reply
        updates.install(core.app, self.service)
        core.app.include_router(metrics_router)

    def tasks(self) -> Sequence[Task]:
        """The update channel's broker link and the rollout driver."""
        return (self.channel.run, self.service.run)

    async def close(self) -> None:
        """Disconnect the update channel."""
        if hasattr(self, "channel"):
            await self.channel.aclose()


class DeviceCommands(BaseFeature):
    """Audited writes to field devices: issue, confirm, deliver, follow up, expire."""

    name = "commands"
    migrations = (commands.MIGRATIONS,)

    def __init__(self, alarms_feature: AlarmsAndPush) -> None:
        self.alarms = alarms_feature

    def mount(self, core: Core) -> None:
        """Build the command service and its channel to gateways; add its routes."""
        from collector.commands.api import router
        from collector.commands.service import CommandService, CommandSettings
        from collector.registry.commands import CommandChannel

        try:
            settings = CommandSettings.from_section(core.config.commands)
        except ValueError as exc:
            raise CollectorConfigError(f"{core.config_source}: {exc}") from None
        self.channel = CommandChannel(core.broker.url, username=core.broker.username,
                                      password=core.broker.password,
                                      client_id=f"{core.broker.client_id}-dev")
        self.service = CommandService(core.store.engine, self.channel, self.unit_of, settings)
        self.channel.on_reply = self.service.on_reply
        core.app.state.commands = self.service
        core.app.state.device_site_of = self.site_of
        core.app.include_router(router)

    def unit_of(self, device: str, gateway: str) -> str:
        """The unit responsible for a device: its site's unit in `[alarms.sites]`."""
        sites = self.alarms.engine.book.sites
        return sites.units.get(sites.site_of(device, gateway), "")

    def site_of(self, device: str, gateway: str) -> str:
        """The site of a device, as alarm routing decides it."""
        return str(self.alarms.engine.book.sites.site_of(device, gateway))

    def on_state(self, gateway: str, state: str, devices: list[str]) -> None:
        """A gateway back online gets what it has not taken yet."""
        if state == "online":
            self.service.resend_to(gateway)

    def tasks(self) -> Sequence[Task]:
        """The channel's broker link and the sweeper."""
        return (self.channel.run, self.service.run)

    async def close(self) -> None:
        """Disconnect the channel."""
        if hasattr(self, "channel"):
            await self.channel.aclose()


def default_features() -> list[Feature]:
    """Every feature of a collector, in mount order."""
    alarms_and_push = AlarmsAndPush()
    env = Environment(alarms_and_push)
    return [alarms_and_push, env, Sources(env), Grid(alarms_and_push), Parking(), Elevators(),
            HubFeeds(), Registry(), Updates(), DeviceCommands(alarms_and_push), CityView()]


class CityView(BaseFeature):
    """The map layers and the city overview: they read the other features' state per request,
    so they mount last."""

    name = "cityview"

    def mount(self, core: Core) -> None:
        """Add the map and overview routes."""
        from collector.cityview import router

        core.app.include_router(router)


def schema(features: Sequence[Feature] | None = None) -> list[MigrationSet]:
    """The migration sets of the core and of `features` (default: every feature)."""
    chosen = default_features() if features is None else features
    return [CORE, AUTH, FEED, *(m for f in chosen for m in f.migrations)]


def open_store(url: str) -> Store:
    """Open a collector database with every feature's tables up to date."""
    return Store.open(url, schema=schema())


def build_hub(store: Store, config: CollectorConfig, ingest_stats: Callable[[], dict[str, Any]],
              *, config_source: str = "collector.toml", broker: BrokerLink | None = None,
              admin_token_file: Path | None = None,
              features: Sequence[Feature] | None = None) -> Hub:
    """Mount every feature (or the given ones) on the store and the web app."""
    return assemble(store, config, list(features or default_features()),
                    core_schema=(CORE, AUTH, FEED), ingest_stats=ingest_stats,
                    config_source=config_source,
                    broker=broker or BrokerLink("mqtt://127.0.0.1:1883"),
                    admin_token_file=admin_token_file or Path("admin-token"))
