"""Composition of the collector: store, ingest, features (alarms, push, ...) and the web app.

Each feature contributes what it needs: hooks on stored batches and gateway states, routers
and pages, and background tasks. `service.run_collector` runs the result.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from collector.api import create_app
from collector.config import CollectorConfig
from collector.store import Accepted, Store, now_ms

log = logging.getLogger(__name__)

StoredHook = Callable[[list[Accepted]], None]
StateHook = Callable[[str, str, list[str]], None]


@dataclass
class Hub:
    """Everything a collector process runs, built from its config and store."""

    store: Store
    config: CollectorConfig
    app: FastAPI
    stored_hooks: list[StoredHook] = field(default_factory=list)
    state_hooks: list[StateHook] = field(default_factory=list)
    tasks: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_stored(self, items: list[Accepted]) -> None:
        """Fan a committed batch out to every feature."""
        for hook in self.stored_hooks:
            hook(items)

    def on_state(self, gateway: str, state: str, devices: list[str]) -> None:
        """Fan a gateway state change out to every feature."""
        for hook in self.state_hooks:
            try:
                hook(gateway, state, devices)
            except Exception:
                log.exception("collector: a gateway-state hook failed")

    async def close(self) -> None:
        """Stop the features' workers (idempotent)."""
        closers, self.closers = self.closers, []
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()


@dataclass(frozen=True, slots=True)
class BrokerLink:
    """How the collector itself reaches the broker (for commands to gateways)."""

    url: str
    username: str | None = None
    password: str | None = None
    client_id: str = "citygate-collector"


def build_hub(store: Store, config: CollectorConfig, ingest_stats: Callable[[], dict[str, Any]],
              *, config_source: str = "collector.toml", broker: BrokerLink | None = None,
              admin_token_file: Path | None = None) -> Hub:
    """Create the app and wire every feature to the store."""
    app = create_app(store, ingest_stats=ingest_stats)
    app.state.pages = _pages_config(config, config_source)
    hub = Hub(store, config, app)
    engine = _push_and_alarms(hub, config_source)
    _environment(hub, engine)
    _grid(hub, engine, config_source)
    _parking(hub)
    _elevators(hub)
    _hub_feeds(hub, config_source)
    link = broker or BrokerLink("mqtt://127.0.0.1:1883")
    _registry(hub, link, admin_token_file or Path("admin-token"))
    _updates(hub, link)
    return hub


def _pages_config(config: CollectorConfig, source: str) -> Any:
    from pydantic import ValidationError

    from collector.config import CollectorConfigError
    from collector.pages import PagesConfig

    try:
        return PagesConfig.model_validate(config.pages)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise CollectorConfigError(f"{source}: [pages] {key}: {first['msg']}") from None


def _readers() -> list[Any]:
    from fastapi import Depends

    from collector.api import READ_ROLES
    from collector.auth import require

    return [Depends(require(*READ_ROLES))]


def _push_and_alarms(hub: Hub, source: str) -> Any:
    from collector import alarms
    from collector.notify.config import load_notify_config
    from collector.notify.dispatcher import Dispatcher
    from collector.notify.queue import NotifyQueue

    cfg = hub.config
    queue = NotifyQueue(hub.store)
    dispatcher = Dispatcher(queue, load_notify_config(cfg.notify, source=source),
                            digest_link=f"{cfg.public_url}/ops")
    engine = alarms.AlarmEngine(hub.store, alarms.load_alarms_config(_alarm_sites(cfg)),
                                queue.enqueue, public_url=cfg.public_url)
    engine.load()
    hub.stored_hooks.append(engine.on_stored)
    hub.state_hooks.append(engine.on_gateway_state)
    hub.app.state.alarms = alarms.IncidentDesk(engine)
    hub.app.state.notify_queue = queue
    hub.app.include_router(alarms.router)
    hub.app.include_router(alarms.pages)

    async def dispatch() -> None:
        await dispatcher.start()

    hub.tasks.append(dispatch)
    hub.tasks.append(lambda: alarms.run_escalations(engine))
    hub.closers.append(dispatcher.stop)
    return engine


def _alarm_sites(cfg: CollectorConfig) -> dict[str, Any]:
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


def _environment(hub: Hub, engine: Any) -> None:
    """Dust and boiler sites: threshold rules whose alarms go through the alarm engine."""
    from collector.environment import EnvAlarm, EnvironmentMonitor, install
    from collector.environment.config import load_environment_config
    from devices.contract import EventsEnvelope

    seq = itertools.count(1)

    def bridge(alarm: EnvAlarm) -> None:
        site = next((s for s in monitor.config.sites if s.id == alarm.site), None)
        env = EventsEnvelope.model_validate({
            "v": 1, "gateway": "collector", "seq": next(seq), "sent": alarm.ts,
            "events": [{
                "device": site.devices[0] if site else alarm.site, "ts": alarm.ts,
                "kind": alarm.rule, "action": alarm.action, "severity": "major",
                "evidence": {"site": alarm.site, "quantity": alarm.quantity,
                             "value": alarm.value, "threshold": alarm.threshold},
                "message": alarm.message}]})
        engine.on_stored([Accepted("collector", env, now_ms())])

    monitor = EnvironmentMonitor(hub.store, load_environment_config(hub.config.sites),
                                 on_alarm=bridge)
    hub.stored_hooks.append(monitor.on_stored)
    install(hub.app, monitor, dependencies=_readers())


def _grid(hub: Hub, engine: Any, source: str) -> None:
    """Grids as geography, routing by place, rosters, reported events, assessment."""
    from collector.grid import install, keep_fresh

    install(hub.app, engine, hub.config.grid, source)
    hub.tasks.append(lambda: keep_fresh(hub.app))


def _parking(hub: Hub) -> None:
    """Spots, zones and live availability from parking-sensor readings."""
    from collector.parking import ParkingService, load_parking_config, router
    from collector.parking.api import pages

    service = ParkingService(hub.store, load_parking_config(
        hub.config.parking or None, "collector.toml [parking]")).open()
    hub.stored_hooks.append(service.on_stored)
    hub.app.state.parking = service
    hub.app.include_router(router, dependencies=_readers())
    hub.app.include_router(pages)
    service.start()

    async def close() -> None:
        service.close()

    hub.closers.append(close)


def _elevators(hub: Hub) -> None:
    """Lift statistics, risk ranking and the live event stream."""
    from collector.elevators import install

    install(hub, dependencies=_readers())


def _hub_feeds(hub: Hub, source: str) -> None:
    """NGSI-LD API, live streams, webhooks, context-broker push, history and retention."""
    from collector.config import CollectorConfigError
    from collector.ngsi import HubFeedSettings, install_ngsi

    try:
        settings = HubFeedSettings.from_section(hub.config.hub_feed)
    except ValueError as exc:
        raise CollectorConfigError(f"{source}: {exc}") from None
    install_ngsi(hub, settings)


def _registry(hub: Hub, broker: BrokerLink, admin_token_file: Path) -> None:
    """Gateway registry, provisioning, remote configuration, API tokens and broker auth."""
    from collector.auth import bootstrap_admin
    from collector.registry import install
    from collector.registry.commands import CommandChannel
    from collector.registry.mqtt_auth import BrokerFiles, hash_password
    from collector.registry.service import Registry, RegistrySettings

    cfg = hub.config.registry
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
    settings = RegistrySettings(
        broker_urls=list(cfg.get("broker_urls", [broker.url])),
        ca_pem=Path(ca_file).read_text() if ca_file else "",
        broker_files=files,
        install_dir=cfg.get("install_dir", "/etc/citygate"),
        data_dir=cfg.get("data_dir", "/var/lib/citygate"),
        collector_user=broker.username or "citygate-collector")
    commands = CommandChannel(broker.url, username=broker.username, password=broker.password,
                              client_id=f"{broker.client_id}-cmd")
    registry = Registry(hub.store.engine, settings, commands)
    install(hub.app, registry)
    bootstrap_admin(hub.store.engine, admin_token_file)
    if files is not None:
        registry.sync_broker()
    commands.start()

    async def close() -> None:
        commands.stop()

    hub.closers.append(close)


def _updates(hub: Hub, broker: BrokerLink) -> None:
    """Signed agent updates (bundles, staged rollouts, per-gateway results) and /metrics."""
    from collector.registry.commands import CommandChannel
    from collector.updates import install
    from collector.updates.metrics import router as metrics_router
    from collector.updates.service import UpdateService

    channel = CommandChannel(broker.url, username=broker.username, password=broker.password,
                             client_id=f"{broker.client_id}-upd")
    service = UpdateService(hub.store.engine, channel, hub.config.public_url)
    channel.on_reply = service.on_reply
    install(hub.app, service)
    hub.app.include_router(metrics_router)
    channel.start()
    hub.tasks.append(service.run)

    async def close() -> None:
        channel.stop()

    hub.closers.append(close)
