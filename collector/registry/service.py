"""The registry as the API sees it: database, broker files and command channel together."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from collector.registry import repo
from collector.registry.commands import CommandChannel
from collector.registry.mqtt_auth import BrokerFiles, may_connect, permitted, verify_password
from collector.registry.rollouts import STATUSES, ConfigRollouts
from devices.contract import ReplyMessage

log = logging.getLogger(__name__)


@dataclass
class RegistrySettings:
    """What new gateways are told and where the broker's auth files are."""

    broker_urls: list[str] = field(default_factory=lambda: ["mqtts://127.0.0.1:8883"])
    ca_pem: str = ""  # the project CA certificate, handed to gateways
    broker_files: BrokerFiles | None = None  # None: an external broker (EMQX uses the hook)
    install_dir: str = "/etc/citygate"  # where a bundle is installed on the gateway
    data_dir: str = "/var/lib/citygate"
    collector_user: str = "citygate-collector"
    collector_password_hash: str = ""  # `$7$` hash, for the EMQX auth hook
    provision_ttl_s: float = 7 * 86400.0
    command_wait_s: float = 30.0


def render_gateway_toml(gateway_id: str, site_id: str, settings: RegistrySettings) -> str:
    """The starting gateway config of a new identity (validated by the tool with edge.config)."""
    tls = any(u.startswith("mqtts://") for u in settings.broker_urls)
    brokers = ", ".join(f'"{u}"' for u in settings.broker_urls)
    lines = ["schema_version = 1", "", "[gateway]", f'id = "{gateway_id}"',
             f'site = "{site_id}"', f'data_dir = "{settings.data_dir}"', "", "[uplink]",
             f"brokers = [{brokers}]", f'username = "{gateway_id}"',
             f'password_file = "{settings.install_dir}/mqtt-password"']
    if tls:
        lines.append(f'ca_file = "{settings.install_dir}/ca.pem"')
    return "\n".join(lines) + "\n"


class Registry:
    """Registry operations that touch more than the database."""

    def __init__(self, engine: sa.Engine, settings: RegistrySettings,
                 commands: CommandChannel | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.commands = commands
        self.rollouts = ConfigRollouts(engine, commands)
        if commands is not None:
            commands.on_reply = self.on_reply
        self._known: tuple[float, frozenset[str]] = (0.0, frozenset())

    def is_registered(self, gateway_id: str, max_age: float = 10.0) -> bool:
        """Is this gateway registered and not revoked (cached for `max_age` seconds)?"""
        at, known = self._known
        if time.monotonic() - at > max_age or gateway_id not in known:
            known = frozenset(repo.mqtt_hashes(self.engine))  # refresh also on a miss
            self._known = (time.monotonic(), known)
        return gateway_id in known

    def mqtt_authenticate(self, username: str, password: str, client_id: str) -> bool:
        """The EMQX authentication hook: right password, and the client id bound to the user."""
        hashes = repo.mqtt_hashes(self.engine)
        if username == self.settings.collector_user:
            stored: str | None = self.settings.collector_password_hash or None
        else:
            stored = hashes.get(username)
        return (stored is not None and verify_password(password, stored)
                and may_connect(username, client_id, gateways=set(hashes),
                                collector_user=self.settings.collector_user))

    def mqtt_authorize(self, username: str, client_id: str, topic: str, action: str) -> bool:
        """The EMQX authorization hook: the topic policy, for a user on its own client id."""
        gateways = set(repo.mqtt_hashes(self.engine))
        collector = self.settings.collector_user
        if not may_connect(username, client_id, gateways=gateways, collector_user=collector):
            return False
        actions = ("publish", "subscribe") if action == "all" else (action,)
        return all(permitted(username, topic, a, gateways=gateways, collector_user=collector)
                   for a in actions)

    def sync_broker(self) -> None:
        """Rewrite the broker's password and ACL files from the registry and reload it."""
        if self.settings.broker_files is not None:
            self.settings.broker_files.write(repo.mqtt_hashes(self.engine))

    def issue(self, ident: repo.Identity) -> dict[str, Any]:
        """What a new gateway receives: identity, MQTT credentials, CA and starting config."""
        self.sync_broker()
        return {
            "gateway_id": ident.gateway_id, "site_id": ident.site_id,
            "mqtt": {"username": ident.gateway_id, "password": ident.password,
                     "brokers": self.settings.broker_urls},
            "ca_pem": self.settings.ca_pem,
            "config_toml": render_gateway_toml(ident.gateway_id, ident.site_id, self.settings),
        }

    def on_reply(self, reply: ReplyMessage) -> None:
        """Record a gateway's answer to a config push (other replies are only remembered).

        The registry takes a pushed config as the gateway's once it is `confirmed` (its devices
        answer with it), or `applied` by a gateway that does not watch its devices (its applied
        reply names no `watching`)."""
        if reply.command != "config":
            return
        pushed = repo.push(self.engine, reply.id)
        if pushed is None or pushed["gateway_id"] != reply.gateway:
            return
        status = str(reply.detail.get("status", ""))
        if status not in STATUSES:
            status = "applied" if reply.ok else "refused"
        repo.finish_push(self.engine, reply.id, status, reply.detail)
        if status == "confirmed" or (status == "applied" and "watching" not in reply.detail):
            repo.store_config(self.engine, reply.gateway, pushed["config_toml"],
                              version=pushed["version"])
        self.rollouts.on_reply(reply)
        log.info("config push %s to %s: %s", reply.id, reply.gateway, status)
