"""Editing a gateway config: add a device (and its bus), keeping the file valid."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from provisioning.bundle import validate
from provisioning.errors import ProvisionError
from provisioning.tomlout import dumps


def _bus(opts: dict[str, Any]) -> dict[str, Any]:
    kind = opts["bus_type"]
    bus: dict[str, Any] = {"name": opts["bus"], "type": kind}
    if kind == "modbus-tcp":
        if not opts.get("host"):
            raise ProvisionError("a modbus-tcp bus needs --host", "add --host IP [--port 502]")
        bus.update(host=opts["host"], port=int(opts.get("port") or 502))
    else:
        if not opts.get("port"):
            raise ProvisionError(f"a {kind} bus needs --port", "add --port /dev/ttyUSB0")
        bus.update(port=opts["port"], baudrate=opts["baud"], parity=opts["parity"])
    return bus


def add_device(path: Path, opts: dict[str, Any]) -> None:
    """Add a device to the config at `path`; the file changes only if the result is valid."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProvisionError(f"cannot read {path}: {exc.strerror}",
                             "give the gateway.toml of a bundle") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"{path} is not valid TOML: {exc}", "fix the file first") from None
    buses = doc.setdefault("buses", [])
    if not any(b.get("name") == opts["bus"] for b in buses):
        if not opts.get("bus_type"):
            names = ", ".join(b.get("name", "?") for b in buses) or "none"
            raise ProvisionError(f"no bus named {opts['bus']!r} in {path} (buses: {names})",
                                 "use an existing bus, or create one with --bus-type")
        buses.append(_bus(opts))
    device = {"id": opts["id"], "bus": opts["bus"], "profile": opts["profile"],
              "unit": opts["unit"], "poll": opts["poll"]}
    if opts.get("mn"):
        device["mn"] = opts["mn"]
    doc.setdefault("devices", []).append(device)
    text = dumps(doc)
    validate(text, str(path))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
