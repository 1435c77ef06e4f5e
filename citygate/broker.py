"""A local MQTT broker for the demo and tests: Mosquitto when installed, else an embedded one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")


def mosquitto_binary() -> str | None:
    """Path of the mosquitto executable, or None."""
    for name in MOSQUITTO_PATHS:
        found = shutil.which(name)
        if found:
            return found
    return None


def mosquitto_config(port: int, data_dir: Path, *, extra: str = "") -> Path:
    """Write a mosquitto.conf for a private broker on 127.0.0.1:`port`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {data_dir}/\n"
        "autosave_interval 5\n"
        # The collector acknowledges after it stored a batch: let it have many in flight, and
        # let its persistent session queue without a cap while it restarts.
        "max_inflight_messages 1000\n"
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
