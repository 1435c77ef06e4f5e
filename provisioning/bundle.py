"""Config bundles: everything a gateway needs, in one directory a USB stick can carry.

A bundle holds gateway.toml (valid under edge.config), mqtt-password (0600), ca.pem, a QR label
(label.png, label.svg) carrying the gateway id, and bundle.json describing it.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import segno

from edge.config import ConfigError, GatewayConfig, parse_config
from provisioning.errors import ProvisionError
from provisioning.tomlout import dumps

CONFIG, PASSWORD, CA, MANIFEST = "gateway.toml", "mqtt-password", "ca.pem", "bundle.json"


def label_payload(gateway_id: str, site: str) -> str:
    """What the QR label encodes: a URN a phone app or the collector UI can look up."""
    return f"urn:citygate:gateway:{gateway_id}?site={site}"


def write_label(directory: Path, gateway_id: str, site: str) -> tuple[Path, Path]:
    """Write label.png and label.svg with the gateway id as QR code and caption."""
    qr = segno.make(label_payload(gateway_id, site), error="m")
    png, svg = directory / "label.png", directory / "label.svg"
    qr.save(str(png), scale=8, border=4)
    qr.save(str(svg), scale=8, border=4, title=f"CityGate gateway {gateway_id}",
            desc=label_payload(gateway_id, site))
    return png, svg


def validate(text: str, where: str) -> GatewayConfig:
    """Validate a config with the gateway's own schema; raise ProvisionError listing problems."""
    try:
        return parse_config(text, where)
    except ConfigError as exc:
        lines = "\n".join(f"{k}: {m}" for k, m in exc.problems)
        raise ProvisionError(f"{where} is not a valid gateway config:\n{lines}",
                             "fix the keys named above, then run the command again") from None


def _private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_bundle(directory: Path, issued: dict[str, Any]) -> Path:
    """Write a bundle from the collector's answer to `gateway new` or a claim."""
    gid, site = issued["gateway_id"], issued["site_id"]
    config = validate(issued["config_toml"], f"{directory / CONFIG}")
    if config.gateway.id != gid:
        raise ProvisionError(f"the collector's config names {config.gateway.id!r}, not {gid!r}",
                             "report this to the collector's administrator")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG).write_text(issued["config_toml"], encoding="utf-8")
    _private(directory / PASSWORD, issued["mqtt"]["password"] + "\n")
    if issued.get("ca_pem"):
        (directory / CA).write_text(issued["ca_pem"], encoding="utf-8")
    write_label(directory, gid, site)
    manifest = {"gateway_id": gid, "site_id": site, "brokers": issued["mqtt"]["brokers"],
                "files": sorted(p.name for p in directory.iterdir())}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def apply_bundle(bundle: Path, target: Path) -> GatewayConfig:
    """Install a bundle into `target` (e.g. /etc/citygate), pointing the config at its files."""
    if not (bundle / CONFIG).exists():
        raise ProvisionError(f"{bundle} is not a config bundle (no {CONFIG})",
                             "give the directory `citygate provision gateway new` wrote")
    doc = tomllib.loads((bundle / CONFIG).read_text(encoding="utf-8"))
    uplink = doc.setdefault("uplink", {})
    if (bundle / PASSWORD).exists():
        uplink["password_file"] = str(target / PASSWORD)
    if (bundle / CA).exists():
        uplink["ca_file"] = str(target / CA)
    text = dumps(doc)
    cfg = validate(text, str(target / CONFIG))
    target.mkdir(parents=True, exist_ok=True)
    if (bundle / PASSWORD).exists():
        _private(target / PASSWORD, (bundle / PASSWORD).read_text(encoding="utf-8"))
    if (bundle / CA).exists():
        shutil.copyfile(bundle / CA, target / CA)
    tmp = target / (CONFIG + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target / CONFIG)
    return cfg
