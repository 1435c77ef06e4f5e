"""`citygate edge run` on a disk it cannot use: it says why in one clear line and exits
non-zero (so systemd restarts it) — never hangs waiting for an agent that will not start, and
never moves a healthy outbox aside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from citygate.rig import free_port
from edge.outbox import Outbox
from tests.edge.smalldisk import fill, small_disk

CONFIG = """
[gateway]
id = "gw-disk"
data_dir = "{data}"
clock = "trust"

[uplink]
brokers = ["mqtt://127.0.0.1:{port}"]
connect_timeout = "1s"

[[buses]]
name = "tcp0"
type = "modbus-tcp"
host = "127.0.0.1"
port = {port}

[[devices]]
id = "lift-001"
bus = "tcp0"
profile = "elevator-gbt24476"
poll = "60s"
"""


def edge_run(tmp_path: Path, data: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(data=data, port=free_port()), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "citygate.cli", "edge", "run", "--config",
                           str(config)], capture_output=True, text=True, timeout=30, check=False)


def test_full_disk_at_start_fails_loudly_and_keeps_the_outbox(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        ob = Outbox(disk / "outbox.sqlite").open()
        ob.add([])
        ob.close()
        fill(disk)
        done = edge_run(tmp_path, disk)
        assert done.returncode == 1, done.stderr[-2000:]
        critical = [ln for ln in done.stderr.splitlines() if "CRITICAL" in ln]
        assert len(critical) == 1, done.stderr[-2000:]
        assert "gateway gw-disk cannot start" in critical[0]
        assert "the disk holding it is full" in critical[0]
        assert "Traceback" not in done.stderr
        assert (disk / "outbox.sqlite").exists()
        assert not list(disk.glob("outbox.sqlite.corrupt-*"))


def test_outbox_that_cannot_be_created_fails_loudly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("a file where the data directory should be")
    done = edge_run(tmp_path, data)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "gateway gw-disk cannot start" in done.stderr
    assert "Traceback" not in done.stderr
