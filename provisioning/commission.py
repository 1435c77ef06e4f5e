"""Commissioning: the checklist a technician runs before leaving a site, as PASS/FAIL with hints.

Each check is independent: a dead device does not hide a broker problem. The end-to-end check
publishes an `echo` reply as the gateway (its own credentials, through the ACL) and polls the
collector's API until the collector has seen it: proof that gateway → broker → collector works
before the agent is even started.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from devices import contract
from devices.modbus import codec
from devices.modbus.planner import plan_reads
from devices.profiles import load_profile
from edge.config import MODBUS_BUS_TYPES, ConfigError, GatewayConfig, SerialSettings, load_config
from edge.modbus_link import ModbusLink, ModbusReadError
from edge.uplink import Broker
from provisioning.errors import ProvisionError
from provisioning.session import Collector

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
MIN_FREE_BYTES = 200 * 1024 * 1024
CLOCK_TOLERANCE_S = 5.0
ECHO_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist."""

    check: str
    status: str
    detail: str = ""
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready."""
        return asdict(self)


def check_config(path: Path) -> tuple[Check, GatewayConfig | None]:
    """The config file is valid under the gateway's schema."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        detail = "; ".join(f"{k}: {m}" for k, m in exc.problems)
        return Check("config valid", FAIL, detail, f"fix {path}, then run "
                     f"`citygate edge check --config {path}`"), None
    return Check("config valid", PASS, f"{cfg.gateway.id}, {len(cfg.devices)} device(s)"), cfg


def _open_port(bus: Any) -> str | None:
    """None when the bus's port opens, else why not."""
    if isinstance(bus, SerialSettings) or bus.type == "modbus-rtu":
        import serial

        try:
            serial.Serial(bus.port, bus.baudrate, parity=bus.parity, bytesize=bus.bytesize,
                          stopbits=bus.stopbits, timeout=0.1).close()
        except (serial.SerialException, OSError) as exc:
            return str(exc)
        return None
    if bus.type == "modbus-tcp":
        try:
            socket.create_connection((bus.host, bus.port), timeout=2).close()
        except OSError as exc:
            return str(exc)
        return None
    kind = socket.SOCK_DGRAM if bus.type == "coap" else socket.SOCK_STREAM
    family = socket.AF_INET6 if ":" in bus.host else socket.AF_INET
    try:
        with socket.socket(family, kind) as s:  # a listener: can we have its port?
            s.bind((bus.host, bus.port))
    except OSError as exc:
        return str(exc)
    return None


def check_ports(cfg: GatewayConfig) -> list[Check]:
    """Every bus's port or endpoint opens."""
    out = []
    for bus in cfg.buses:
        why = _open_port(bus)
        where = getattr(bus, "port", "")
        if bus.type == "modbus-tcp":
            where = f"{bus.host}:{bus.port}"
        if why is None:
            out.append(Check(f"port {bus.name}", PASS, f"{bus.type} {where}"))
        elif isinstance(bus, SerialSettings) or bus.type == "modbus-rtu":
            out.append(Check(f"port {bus.name}", FAIL, f"{where}: {why}",
                             "check the adapter is plugged in (ls /dev/serial/by-id), the path "
                             "in the config, and that no other program holds the port"))
        elif bus.type == "modbus-tcp":
            out.append(Check(f"port {bus.name}", FAIL, f"{where}: {why}",
                             "check the device's IP address, power and network cable"))
        else:
            out.append(Check(f"port {bus.name}", FAIL, f"{where}: {why}",
                             "another program listens there: stop it or change the port"))
    return out


def _plausible(profile_name: str, values: dict[str, Any]) -> str | None:
    bad = [q for q, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        return f"non-finite values for {', '.join(bad)}"
    if values and all(v is None for v in values.values()):
        return f"every point reads 'not available' ({profile_name})"
    return None


async def _read_device(link: ModbusLink, dev: Any) -> dict[str, Any]:
    prof = load_profile(dev.profile)
    timeout = dev.response_timeout or prof.timing.response_timeout
    retries = dev.retries if dev.retries is not None else prof.timing.retries
    values: dict[str, Any] = {}
    for block in plan_reads(prof.points):
        regs = await link.read(block.table, block.start, block.count, dev.unit, timeout, retries)
        for p in block.points:
            values[p.quantity] = codec.decode(p, block.slice_for(p, regs))
    return values


def _link(bus: Any) -> tuple[ModbusLink, str]:
    if bus.type == "modbus-tcp":
        return ModbusLink.tcp(bus.host, bus.port), f"--host {bus.host} --port {bus.port}"
    link = ModbusLink.rtu(bus.port, bus.baudrate, bus.parity, bus.bytesize, bus.stopbits)
    return link, f"--serial {bus.port}"


async def check_devices(cfg: GatewayConfig) -> list[Check]:
    """Every polled device answers with plausible values, decoded with its profile."""
    out = []
    for bus in cfg.buses:
        devs = [d for d in cfg.devices if d.bus == bus.name]
        if bus.type not in MODBUS_BUS_TYPES:
            out += [Check(f"device {d.id}", SKIP, f"{bus.type}: the device sends by itself",
                          f"to hear it now: citygate provision scan --serial "
                          f"{getattr(bus, 'port', '?')} --listen") for d in devs]
            continue
        link, scan_args = _link(bus)
        opened = await link.open()
        try:
            for d in devs:
                out.append(await _device(link, opened, bus, d, scan_args))
        finally:
            link.close()
    return out


async def _device(link: ModbusLink, opened: bool, bus: Any, dev: Any, scan_args: str) -> Check:
    name = f"device {dev.id}"
    where = link.describe
    wiring = ("check A/B polarity, termination and the baud rate/parity"
              if bus.type == "modbus-rtu" else "check the device is powered and its cable")
    scan_hint = f"{wiring}; is the unit id right? try `citygate provision scan {scan_args}`"
    if not opened:
        return Check(name, FAIL, f"no response from unit {dev.unit} at {where}: the line or "
                     "endpoint does not open", scan_hint)
    try:
        values = await _read_device(link, dev)
    except ModbusReadError as exc:
        if exc.kind == "exception":
            return Check(name, FAIL, f"unit {dev.unit} at {where} answered Modbus exception "
                         f"{exc.exception_code}", f"the device is there but the profile "
                         f"{dev.profile!r} does not match it: check the model, or preview its "
                         f"registers with `citygate provision preview {scan_args} --unit "
                         f"{dev.unit}`")
        return Check(name, FAIL, f"no response from unit {dev.unit} at {where}", scan_hint)
    except codec.CodecError as exc:
        return Check(name, FAIL, str(exc), f"the profile {dev.profile!r} does not fit")
    implausible = _plausible(dev.profile, values)
    if implausible:
        return Check(name, FAIL, implausible, "check the profile and the device's setup")
    sample = ", ".join(f"{q}={v}" for q, v in list(values.items())[:3])
    return Check(name, PASS, f"unit {dev.unit}: {len(values)} points ({sample}, ...)")


# --- the uplink ----------------------------------------------------------------------------------

def _password(cfg: GatewayConfig) -> str | None:
    pf = cfg.uplink.password_file
    if pf is None:
        return cfg.uplink.password
    try:
        return Path(pf).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ProvisionError(f"cannot read the MQTT password file {pf}: {exc.strerror}",
                             "apply the config bundle first: citygate provision apply BUNDLE "
                             "--to DIR") from None


def mqtt_client(cfg: GatewayConfig, broker: Broker) -> mqtt.Client:
    """A paho client set up with the gateway's own credentials, client id and CA."""
    # The broker binds the credential to its username as client id (run with the agent stopped).
    client_id = cfg.uplink.username or cfg.gateway.id
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                    protocol=mqtt.MQTTv311)
    if cfg.uplink.username:
        c.username_pw_set(cfg.uplink.username, _password(cfg))
    if broker.tls:
        c.tls_set(ca_certs=str(cfg.uplink.ca_file) if cfg.uplink.ca_file else None)
    return c


def _connect(c: mqtt.Client, broker: Broker, timeout: float = 5.0) -> int:
    done: dict[str, int] = {}

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        done.setdefault("rc", rc.value)

    c.on_connect = on_connect
    c.connect(broker.host, broker.port, keepalive=15)
    c.loop_start()
    end = time.monotonic() + timeout
    while "rc" not in done and time.monotonic() < end:
        time.sleep(0.05)
    return done.get("rc", -1)


def _broker_failure(url: str, exc: BaseException | None, rc: int) -> Check:
    name = f"broker {url}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Check(name, FAIL, f"TLS: {exc.verify_message}",
                     "the broker's certificate is not signed by the CA in ca_file: put the "
                     "project CA (ca.pem from the bundle) there")
    if isinstance(exc, OSError | ssl.SSLError):
        return Check(name, FAIL, str(exc), "check the network route and firewall to the "
                     "broker, and the host and port in uplink.brokers")
    if rc in (4, 5):
        return Check(name, FAIL, mqtt.connack_string(rc), "the broker refused this gateway's "
                     "credentials: check mqtt-password, or have them re-issued")
    return Check(name, FAIL, "no answer from the broker" if rc < 0 else mqtt.connack_string(rc),
                 "check the broker is running")


def check_broker(cfg: GatewayConfig) -> list[Check]:
    """Each broker accepts the gateway's own credentials."""
    out = []
    for url in cfg.uplink.brokers:
        broker = Broker.parse(url)
        c = mqtt_client(cfg, broker)
        try:
            rc = _connect(c, broker)
            out.append(Check(f"broker {url}", PASS, f"connected as {cfg.uplink.username}")
                       if rc == 0 else _broker_failure(url, None, rc))
        except (OSError, ssl.SSLError) as exc:
            out.append(_broker_failure(url, exc, -1))
        finally:
            c.loop_stop()
            c.disconnect()
    return out


def check_echo(cfg: GatewayConfig, collector: Collector | None) -> Check:
    """A reply published as the gateway reaches the collector."""
    name = "end-to-end via collector"
    if collector is None:
        return Check(name, SKIP, "offline: no collector login",
                     "run `citygate provision login` and commission again when online")
    nonce = "commission-" + secrets.token_hex(6)
    gw = cfg.gateway.id
    payload = orjson.dumps({"v": contract.VERSION, "gateway": gw, "command": "echo",
                            "id": nonce, "ok": True, "detail": {"by": "commission"}})
    broker = Broker.parse(cfg.uplink.brokers[0])
    c = mqtt_client(cfg, broker)
    try:
        if _connect(c, broker) != 0:
            return Check(name, FAIL, "cannot connect to the broker", "see the broker check")
        c.publish(contract.topic(gw, contract.REPLY), payload, qos=1).wait_for_publish(5)
        end = time.monotonic() + ECHO_WAIT_S
        while time.monotonic() < end:
            got = collector.call("GET", f"/api/v1/gateways/{gw}/replies/{nonce}",
                                 ok=(200, 404))
            if got.status == 200:
                return Check(name, PASS, f"the collector received {nonce}")
            time.sleep(0.3)
    except (OSError, ValueError, RuntimeError) as exc:
        return Check(name, FAIL, str(exc), "check the broker link")
    except ProvisionError as exc:
        return Check(name, FAIL, exc.message, exc.hint)
    finally:
        c.loop_stop()
        c.disconnect()
    return Check(name, FAIL, f"the collector did not see the echo within {ECHO_WAIT_S:g}s",
                 "the broker accepted it but the collector did not get it: is the collector "
                 "connected to the same broker? is this gateway registered there?")


def check_clock(collector: Collector | None) -> Check:
    """The clock is synchronised (NTP), or agrees with the collector's."""
    timedatectl = shutil.which("timedatectl")
    if timedatectl:
        r = subprocess.run([timedatectl, "show", "-p", "NTPSynchronized", "--value"],
                           capture_output=True, text=True, timeout=5, check=False)
        if r.returncode == 0 and r.stdout.strip() in ("yes", "no"):
            if r.stdout.strip() == "yes":
                return Check("clock", PASS, "NTP synchronised")
            return Check("clock", FAIL, "NTP not synchronised",
                         "enable time sync: timedatectl set-ntp true; check UDP 123 is open")
    if collector is None:
        return Check("clock", SKIP, "no timedatectl and no collector to compare with",
                     "check the time by hand, or commission again when online")
    try:
        answer = collector.call("GET", "/api/v1/whoami")
    except ProvisionError as exc:
        return Check("clock", SKIP, exc.message, exc.hint)
    if answer.date is None:
        return Check("clock", SKIP, "the collector sent no Date header")
    skew = time.time() - answer.date
    if abs(skew) <= CLOCK_TOLERANCE_S:
        return Check("clock", PASS, f"within {abs(skew):.1f}s of the collector")
    return Check("clock", FAIL, f"{skew:+.0f}s off the collector's clock",
                 "set up NTP (chrony or systemd-timesyncd) before installing")


def check_disk(cfg: GatewayConfig) -> Check:
    """Enough free space where the gateway keeps its outbox."""
    where = cfg.outbox_path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    detail = f"{free / 2**20:.0f} MiB free at {where}"
    if free >= MIN_FREE_BYTES:
        return Check("disk space", PASS, detail)
    return Check("disk space", FAIL, detail, f"free at least {MIN_FREE_BYTES // 2**20} MiB: "
                 "the outbox buffers data while the link is down")


def run_checks(path: Path, collector: Collector | None) -> tuple[GatewayConfig | None, list[Check]]:
    """The whole checklist, in order."""
    first, cfg = check_config(path)
    if cfg is None:
        return None, [first]
    checks = [first, *check_ports(cfg), *asyncio.run(check_devices(cfg)), *check_broker(cfg),
              check_echo(cfg, collector), check_clock(collector), check_disk(cfg)]
    return cfg, checks
