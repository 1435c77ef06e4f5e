"""Config bundles: valid under edge.config, private credentials, QR label, install, device add."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from collector.registry.service import RegistrySettings, render_gateway_toml
from edge.config import load_config, parse_config
from provisioning.bundle import apply_bundle, label_payload, write_bundle
from provisioning.devices import add_device
from provisioning.errors import ProvisionError
from provisioning.tomlout import dumps


def issued(gateway: str = "erqi-lift-01") -> dict[str, Any]:
    settings = RegistrySettings(broker_urls=["mqtts://broker.city:8883"])
    return {"gateway_id": gateway, "site_id": "erqi",
            "mqtt": {"username": gateway, "password": "pw-secret",
                     "brokers": settings.broker_urls},
            "ca_pem": "-----BEGIN CERTIFICATE-----\n...\n",
            "config_toml": render_gateway_toml(gateway, "erqi", settings)}


def test_bundle_files_validate_and_keep_the_password_private(tmp_path: Path) -> None:
    out = write_bundle(tmp_path / "b", issued())
    cfg = parse_config((out / "gateway.toml").read_text())
    assert cfg.gateway.id == "erqi-lift-01" and cfg.uplink.username == "erqi-lift-01"
    assert cfg.uplink.brokers == ["mqtts://broker.city:8883"]
    assert stat.S_IMODE((out / "mqtt-password").stat().st_mode) == 0o600
    assert "pw-secret" not in (out / "gateway.toml").read_text()
    assert (out / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE")


def test_qr_label_exists_and_carries_the_id(tmp_path: Path) -> None:
    out = write_bundle(tmp_path / "b", issued())
    png, svg = out / "label.png", out / "label.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 200
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert label_payload("erqi-lift-01", "erqi") in text
    assert "erqi-lift-01" in text


def test_apply_points_the_config_at_the_installed_files(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "usb" / "b", issued())
    target = tmp_path / "etc" / "citygate"
    cfg = apply_bundle(bundle, target)
    assert cfg.uplink.password_file == target / "mqtt-password"
    assert cfg.uplink.ca_file == target / "ca.pem"
    again = load_config(target / "gateway.toml")
    assert again == cfg
    assert (target / "mqtt-password").read_text().strip() == "pw-secret"
    assert stat.S_IMODE((target / "mqtt-password").stat().st_mode) == 0o600


def test_apply_of_something_else_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="not a config bundle") as err:
        apply_bundle(tmp_path, tmp_path / "etc")
    assert "gateway new" in err.value.hint


def test_device_add_creates_the_bus_and_stays_valid(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", issued())
    conf = bundle / "gateway.toml"
    opts = {"id": "lift-1", "profile": "elevator-gbt24476", "bus": "line1", "unit": 3,
            "poll": "500ms", "bus_type": "modbus-rtu", "port": "/dev/ttyUSB0", "baud": 19200,
            "parity": "E", "host": None, "mn": None}
    add_device(conf, opts)
    add_device(conf, {**opts, "id": "lift-2", "unit": 4, "bus_type": None})
    cfg = load_config(conf)
    assert [(d.id, d.unit) for d in cfg.devices] == [("lift-1", 3), ("lift-2", 4)]
    assert cfg.bus("line1").baudrate == 19200 and cfg.bus("line1").parity == "E"


def test_device_add_refuses_what_edge_config_refuses_and_leaves_the_file(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", issued())
    conf = bundle / "gateway.toml"
    opts = {"id": "lift-1", "profile": "elevator-gbt24476", "bus": "line1", "unit": 3,
            "poll": "1s", "bus_type": "modbus-tcp", "host": "10.0.0.5", "port": None,
            "baud": 9600, "parity": "N", "mn": None}
    add_device(conf, opts)
    before = conf.read_text()
    with pytest.raises(ProvisionError, match="unit 3 is used twice"):
        add_device(conf, {**opts, "id": "lift-9", "bus_type": None})
    with pytest.raises(ProvisionError, match="no profile named"):
        add_device(conf, {**opts, "id": "lift-9", "unit": 9, "profile": "nope"})
    with pytest.raises(ProvisionError, match="no bus named 'line2'") as err:
        add_device(conf, {**opts, "bus": "line2", "bus_type": None})
    assert "--bus-type" in err.value.hint
    assert conf.read_text() == before


def test_toml_writer_round_trips_a_config() -> None:
    import tomllib

    doc = {"schema_version": 1, "gateway": {"id": "g1", "site": "s \"q\""},
           "uplink": {"brokers": ["mqtt://a:1", "mqtt://b:2"], "keepalive": 30.5,
                      "wait_for_collector": True},
           "buses": [{"name": "l1", "type": "modbus-tcp", "host": "h", "port": 502}],
           "devices": [{"id": "d1", "bus": "l1", "profile": "elevator-gbt24476"},
                       {"id": "d2", "bus": "l1", "profile": "elevator-gbt24476", "unit": 2}]}
    assert tomllib.loads(dumps(doc)) == doc
