"""A local MQTT broker for the demo and tests: Mosquitto when installed, else an embedded one."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")


def mosquitto_binary() -> str | None:
    """Path of the mosquitto executable, or None (also when CITYGATE_BROKER=embedded)."""
    if os.environ.get("CITYGATE_BROKER") == "embedded":
        return None
    for name in MOSQUITTO_PATHS:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """Auth (password and ACL files), a TLS listener and the collector's own listener.

    Gateways and the collector log in on different listeners, each with its own password
    file: on the gateways' listeners the client id is replaced by the username, so a gateway
    credential can hold no session but its own, and it is refused on the collector's listener,
    where the collector's connections keep the client ids they choose.
    """

    password_file: Path | None = None  # the gateways'
    acl_file: Path | None = None
    tls_port: int | None = None
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    pid_file: Path | None = None  # so the registry can SIGHUP it after changing the files
    collector_port: int | None = None
    collector_password_file: Path | None = None

    def config_lines(self, port: int) -> str:
        """mosquitto.conf lines: global options, then each listener with its own auth."""
        lines = ["per_listener_settings true"]
        if self.pid_file:
            lines.append(f"pid_file {self.pid_file}")
        gateway_auth = [*self._auth(self.password_file), "use_username_as_clientid true"]
        lines += [f"listener {port} 127.0.0.1", *gateway_auth]
        if self.tls_port:
            lines += [f"listener {self.tls_port} 127.0.0.1", *gateway_auth,
                      f"cafile {self.cafile}", f"certfile {self.certfile}",
                      f"keyfile {self.keyfile}", "tls_version tlsv1.2"]
        if self.collector_port:
            lines += [f"listener {self.collector_port} 127.0.0.1",
                      *self._auth(self.collector_password_file)]
        return "\n".join(lines) + "\n"

    def _auth(self, password_file: Path | None) -> list[str]:
        lines = ["allow_anonymous false"]
        if password_file:
            lines.append(f"password_file {password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        return lines


def mosquitto_config(port: int, data_dir: Path, *, extra: str = "",
                     security: BrokerSecurity | None = None) -> Path:
    """Write a mosquitto.conf for a private broker on 127.0.0.1:`port` (anonymous by default)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "mosquitto.conf"
    conf.write_text(
        # Keep running as the user who starts it: as root, mosquitto would switch to its own
        # user, which can write neither the data dir (no persistence, no log) nor read the
        # 0600 auth files.
        f"user {getpass.getuser()}\n" +
        (security.config_lines(port) if security
         else f"listener {port} 127.0.0.1\nallow_anonymous true\n") +
        "persistence true\n"
        f"persistence_location {data_dir}/\n"
        "autosave_interval 5\n"
        # The collector acknowledges after it stored a batch: let it have many in flight, and
        # let its persistent session queue without a cap while it restarts.
        "max_inflight_messages 4000\n"
        "max_queued_messages 0\n"
        "max_queued_bytes 0\n"
        "log_type error\nlog_type warning\n"
        f"log_dest file {data_dir}/mosquitto.log\n"
        + extra
    )
    return conf


def start_broker(port: int, data_dir: Path, *,
                 log_file: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a private broker process on 127.0.0.1:`port`."""
    binary = mosquitto_binary()
    out = open(log_file or data_dir / "broker.out", "ab")  # noqa: SIM115 - owned by the child
    if binary:
        conf = mosquitto_config(port, data_dir)
        return subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=out)
    return subprocess.Popen([sys.executable, "-m", "citygate.embedded_broker", str(port)],
                            stdout=out, stderr=out)
