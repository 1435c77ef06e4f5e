"""Signed agent updates end to end, with every reading counted (hil_tests/chaos.py).

Real processes: broker, counting simulator, collector (ingest, counts) and the gateway
(`citygate edge run`). The update side of the collector (collector/updates: bundle store,
rollout, download endpoint, command channel over the broker) runs in this test process on
uvicorn until the lead mounts it in the collector (see the report's wiring steps).

What is emulated, honestly:
- a "version" is this working tree packed into a wheel with another version string (built
  here with zipfile, not setuptools: the dev venv has no `wheel`); the broken version is the
  same tree with an uplink that never connects;
- bundles are app-only (`deps = "inherit"`): the new venv links the dev venv's site-packages
  for paho, pymodbus, ... instead of installing them from a full wheelhouse;
- the switch-over re-executes the new interpreter in the same process, exactly as in the
  field; `current` lives under the test's temp directory instead of /opt/citygate.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from citygate.rig import Broker, free_port, port_open, wait_for
from collector.registry.commands import CommandChannel
from collector.updates.service import FINAL, UpdateService
from collector.updates.tables import metadata as update_tables
from edge.update import build_bundle
from hil_tests.chaos import ChaosCity, hold

pytestmark = pytest.mark.hil
REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("citygate", "edge", "collector", "devices", "provisioning")
RELEASE_KEY = Ed25519PrivateKey.generate()
BROKEN_UPLINK = ('        """Stay connected until cancelled, failing over between brokers with '
                 'jittered backoff."""\n')


def build_wheel(out: Path, version: str, patch: dict[str, tuple[str, str]] | None = None) -> Path:
    """A py3-none-any wheel of this working tree at `version`; `patch`: path -> (old, new)."""
    name = f"citygate-{version}-py3-none-any.whl"
    dist = f"citygate-{version}.dist-info"
    record: list[str] = []
    with zipfile.ZipFile(out / name, "w", zipfile.ZIP_DEFLATED) as whl:
        def add(arc: str, data: bytes) -> None:
            whl.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arc},sha256={digest.decode()},{len(data)}")

        for pkg in PACKAGES:
            for f in sorted((REPO / pkg).rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                    arc = f.relative_to(REPO).as_posix()
                    data = f.read_bytes()
                    if patch and arc in patch:
                        old, new = patch[arc]
                        assert old.encode() in data, f"{arc}: patch point moved"
                        data = data.replace(old.encode(), new.encode())
                    add(arc, data)
        add(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: citygate\nVersion: {version}\n"
            .encode())
        add(f"{dist}/WHEEL", b"Wheel-Version: 1.0\nGenerator: citygate-hil\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n")
        add(f"{dist}/entry_points.txt", b"[console_scripts]\ncitygate = citygate.cli:main\n")
        whl.writestr(f"{dist}/RECORD", "\n".join([*record, f"{dist}/RECORD,,"]) + "\n")
    return out / name


def bundle_of(wheel: Path, version: str, key: Ed25519PrivateKey = RELEASE_KEY) -> bytes:
    """A signed app-only bundle holding one wheel."""
    return build_bundle({f"wheels/{wheel.name}": wheel.read_bytes()}, version, key,
                        deps="inherit")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The good and the broken test versions."""
    out = tmp_path_factory.mktemp("wheels")
    broken = {"edge/uplink.py": (
        BROKEN_UPLINK, BROKEN_UPLINK + "        await asyncio.Event().wait()  # broken\n")}
    return {"0.1.1": build_wheel(out, "0.1.1"), "0.1.2": build_wheel(out, "0.1.2", broken)}


class UpdateServer:
    """collector/updates served over HTTP by uvicorn, with its own command channel."""

    def __init__(self, root: Path, broker: Broker) -> None:
        import uvicorn
        from fastapi import FastAPI

        from collector.updates import install

        self.engine = sa.create_engine(f"sqlite:///{root / 'updates.sqlite'}")
        update_tables.create_all(self.engine)
        self.port = free_port()
        self.channel = CommandChannel(broker.url, client_id="hil-updates")
        self.service = UpdateService(self.engine, self.channel, f"http://127.0.0.1:{self.port}")
        self.channel.on_reply = self.service.on_reply
        app = FastAPI()
        install(app, self.service)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> UpdateServer:
        """Serve and connect the command channel."""
        self.thread.start()
        self.channel.start()
        wait_for(lambda: port_open(self.port) and self.channel.connected.is_set(), 20,
                 "the update server")
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.channel.stop()
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.dispose()

    def roll_out(self, bundle: bytes, version: str, timeout: float = 120) -> dict[str, Any]:
        """Offer `version` to the chaos gateway and wait for its verdict."""
        self.service.add_bundle(bundle, "hil")
        rid = self.service.start_rollout(version, ["gw-chaos"], deadline_s=timeout)

        def verdict() -> dict[str, Any] | None:
            self.service.step()
            t = self.service.overview()["gateways"].get("gw-chaos")
            return t if t and t["rollout_id"] == rid and t["status"] in FINAL else None

        wait_for(verdict, timeout, f"the gateway's verdict on {version}", interval=0.5)
        result = verdict()
        assert result is not None
        return result


@pytest.fixture
def updates(tmp_path: Path, broker: Broker) -> Iterator[UpdateServer]:
    server = UpdateServer(tmp_path, broker).start()
    try:
        yield server
    finally:
        server.stop()


def start_city(tmp_path: Path, procs: Any, broker: Broker) -> ChaosCity:
    """The chaos city with updates on: release key, install root, short health deadline."""
    pub = RELEASE_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    section = (f'\n[update]\npublic_key = "{pub}"\nroot = "{tmp_path / "opt"}"\n'
               'health_deadline = "12s"\n')
    (tmp_path / "opt").mkdir()
    return ChaosCity(tmp_path, procs, broker, outbox=section).start()


def cmdline(city: ChaosCity) -> str:
    """The gateway process's current command line (it changes on re-exec, the PID does not)."""
    assert city.gateway is not None and city.gateway.popen is not None
    return Path(f"/proc/{city.gateway.popen.pid}/cmdline").read_bytes().replace(b"\0", b" ") \
        .decode()


def assert_exact(city: ChaosCity) -> None:
    """Every reading the devices gave is stored once."""
    hold(3)
    acc = city.finish()
    assert (acc.duplicates, acc.lost) == (0, 0), acc
    assert acc.stored == acc.produced, acc


def test_good_version_applies(tmp_path: Path, broker: Broker, procs: Any,
                              updates: UpdateServer, wheels: dict[str, Path]) -> None:
    city = start_city(tmp_path, procs, broker)
    hold(2)
    result = updates.roll_out(bundle_of(wheels["0.1.1"], "0.1.1"), "0.1.1")
    assert result["status"] == "applied", result
    assert result["detail"]["running"] == "0.1.1" and result["detail"]["previous"] == "0.1.0"
    assert "venvs/0.1.1/bin/python" in cmdline(city)
    assert (tmp_path / "opt" / "current").resolve() == tmp_path / "opt" / "venvs" / "0.1.1"
    hold(3)  # the new version polls and forwards
    assert_exact(city)


def test_bad_signature_is_refused(tmp_path: Path, broker: Broker, procs: Any,
                                  updates: UpdateServer, wheels: dict[str, Path]) -> None:
    city = start_city(tmp_path, procs, broker)
    before = cmdline(city)
    hold(2)
    forged = bundle_of(wheels["0.1.1"], "0.1.1", Ed25519PrivateKey.generate())
    result = updates.roll_out(forged, "0.1.1")
    assert result["status"] == "refused", result
    assert "bad signature" in result["detail"]["reason"]
    assert cmdline(city) == before and not (tmp_path / "opt" / "venvs").exists()
    assert_exact(city)


@pytest.mark.slow  # `make chaos`; make test keeps the good and the badly signed update
def test_unhealthy_version_rolls_back_by_itself(tmp_path: Path, broker: Broker, procs: Any,
                                                updates: UpdateServer,
                                                wheels: dict[str, Path]) -> None:
    city = start_city(tmp_path, procs, broker)
    before = cmdline(city)
    hold(2)
    t0 = time.monotonic()
    result = updates.roll_out(bundle_of(wheels["0.1.2"], "0.1.2"), "0.1.2")
    assert result["status"] == "rolled_back", result
    assert "uplink" in result["detail"]["reason"], result
    assert result["detail"]["running"] == "0.1.0"
    assert cmdline(city) == before
    print(f"offer to rolled-back report: {time.monotonic() - t0:.1f} s")
    assert_exact(city)
