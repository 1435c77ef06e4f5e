"""A private Mosquitto with auth, ACL and TLS from files the registry generates (for HIL tests)."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from citygate.broker import BrokerSecurity, mosquitto_binary, mosquitto_config
from citygate.rig import Proc, free_port, http_json, port_open, wait_for
from collector.features import open_store
from collector.registry.mqtt_auth import BrokerFiles, hash_password, new_password
from collector.registry.pki import CertFiles, ensure_pki

COLLECTOR_USER = "citygate-collector"


@dataclass
class SecureBroker:
    """Mosquitto with gateways' plain and TLS ports and the collector's port, registered users
    only."""

    root: Path
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    collector_port: int = field(default_factory=free_port)
    collector_password: str = field(default_factory=new_password)
    proc: Proc | None = None

    def __post_init__(self) -> None:
        self.ca, self.server = self._pki()
        self.files = BrokerFiles(self.root / "passwd", self.root / "acl",
                                 collector_user=COLLECTOR_USER,
                                 collector_password_hash=hash_password(self.collector_password),
                                 pid_file=self.root / "mosquitto.pid",
                                 collector_password_file=self.root / "passwd-collector")
        self.passwords: dict[str, str] = {}

    def _pki(self) -> tuple[CertFiles, CertFiles]:
        return ensure_pki(self.root / "pki", ["127.0.0.1", "localhost"])

    @property
    def url(self) -> str:
        """Plain MQTT URL."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def collector_url(self) -> str:
        """The collector's own listener (plain)."""
        return f"mqtt://127.0.0.1:{self.collector_port}"

    @property
    def tls_url(self) -> str:
        """MQTT over TLS URL."""
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def add_gateway(self, gateway: str) -> str:
        """Register a gateway's credentials, rewrite the files, reload; return its password."""
        password = new_password()
        self.passwords[gateway] = hash_password(password)
        self.files.write(dict(self.passwords))
        return password

    def start(self) -> SecureBroker:
        """Write the files and config, start mosquitto, wait for both listeners."""
        binary = mosquitto_binary()
        assert binary, "mosquitto is not installed (make system-deps)"
        self.files.write(dict(self.passwords), reload=False)
        sec = BrokerSecurity(password_file=self.files.password_file,
                             acl_file=self.files.acl_file, tls_port=self.tls_port,
                             cafile=self.ca.cert, certfile=self.server.cert,
                             keyfile=self.server.key, pid_file=self.files.pid_file,
                             collector_port=self.collector_port,
                             collector_password_file=self.files.collector_password_file)
        conf = mosquitto_config(self.port, self.root / "data", security=sec,
                                extra="log_type notice\nlog_type subscribe\n")
        self.proc = Proc("mosquitto", [binary, "-c", str(conf)], self.root / "broker.log").start()
        wait_for(lambda: all(port_open(p) for p in (self.port, self.tls_port,
                                                     self.collector_port))
                 or not self.proc or not self.proc.alive, 15, "the secured broker")
        assert self.proc.alive, self.proc.tail()
        return self

    def stop(self) -> None:
        """Stop mosquitto."""
        if self.proc is not None:
            self.proc.stop()

    def log(self) -> str:
        """Mosquitto's own log."""
        path = self.root / "data" / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


def client(user: str, password: str, port: int, *, ca: Path | None = None,
           tls: bool = False, client_id: str = "") -> mqtt.Client:
    """A connected paho client (raises ConnectionError when the broker refuses it)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{user}",
                    protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    if tls:
        if ca is not None:
            c.tls_set(ca_certs=str(ca))
        else:
            c.tls_set(cert_reqs=ssl.CERT_REQUIRED)  # the system store: must not trust our CA
    result: dict[str, int] = {}

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        result.setdefault("rc", rc.value)

    c.on_connect = on_connect
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    wait_for(lambda: "rc" in result, 10, f"CONNACK for {user}")
    if result["rc"] != 0:
        c.loop_stop()
        raise ConnectionError(f"broker refused {user}: {mqtt.connack_string(result['rc'])}")
    return c


class HubServer:
    """The collector's web app (core API + registry) served by uvicorn in a thread, with a
    command channel on the secured broker: the composition the lead wires into the service."""

    def __init__(self, root: Path, broker: SecureBroker, install_dir: Path) -> None:
        from collector import auth
        from collector.api import create_app
        from collector.registry import install
        from collector.registry.commands import CommandChannel
        from collector.registry.service import Registry, RegistrySettings

        root.mkdir(parents=True, exist_ok=True)
        self.store = open_store(f"sqlite:///{root / 'hub.sqlite'}")
        settings = RegistrySettings(
            broker_urls=[broker.tls_url], ca_pem=broker.ca.cert.read_text(),
            broker_files=broker.files, install_dir=str(install_dir),
            data_dir=str(root / "gateway-data"), collector_user=COLLECTOR_USER,
            collector_password_hash=broker.files.collector_password_hash)
        self.commands = CommandChannel(broker.collector_url, username=COLLECTOR_USER,
                                       password=broker.collector_password)
        self.registry = Registry(self.store.engine, settings, self.commands)
        self.app = create_app(self.store)
        install(self.app, self.registry)
        self.admin = auth.create_token(self.store.engine, "admin", auth.Role.ADMIN)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> HubServer:
        """Serve and connect the command channel; wait until both are up."""
        import uvicorn

        self.commands.start()
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                     log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="hub", daemon=True)
        self._thread.start()
        wait_for(lambda: self._server.started, 10, "the hub's API")
        wait_for(self.commands.connected.is_set, 10, "the command channel")
        self.registry.rollouts.start_driver(0.2)  # the collector runs it as a feature task
        return self

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        self.registry.rollouts.stop_driver()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.commands.stop()
        self.store.close()

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """A JSON call with the admin token (or another)."""
        return http_json(self.url + path, method=method, body=body, token=token or self.admin)
