"""`citygate provision`: the field technician's tool (identity, bundle, scan, commission)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from provisioning.errors import ProvisionError

console = Console(highlight=False)
STYLE = {"PASS": "bold green", "FAIL": "bold red", "SKIP": "yellow"}


def _collector(optional: bool = False) -> Any:
    from provisioning.session import Collector, Login

    try:
        return Collector(Login.load())
    except ProvisionError:
        if optional:
            return None
        raise


def _journal() -> Any:
    from provisioning.journal import Journal
    from provisioning.session import home

    return Journal(home() / "installs.json")


# --- commands ------------------------------------------------------------------------------------

def cmd_login(args: argparse.Namespace) -> int:
    """Check a technician token against the collector and store it."""
    from provisioning.session import Collector, Login

    login = Login(args.collector.rstrip("/"), args.token)
    who = Collector(login).call("GET", "/api/v1/whoami").body
    if who["role"] not in ("technician", "admin"):
        raise ProvisionError(f"this token belongs to {who['name']!r} with role {who['role']!r}",
                             "log in with a technician token")
    path = Login(login.collector, login.token, who["name"]).save()
    console.print(f"[green]logged in[/] to {login.collector} as {who['name']} ({who['role']});"
                  f" saved in {path}")
    return 0


def cmd_gateway_new(args: argparse.Namespace) -> int:
    """Create a gateway identity at the collector and write its config bundle."""
    from provisioning.bundle import write_bundle

    body = {"site": args.site, "id": args.id}
    with console.status("asking the collector for a new identity..."):
        issued = _collector().call("POST", "/api/v1/gateways", body).body
    out = args.out or Path(f"bundle-{issued['gateway_id']}")
    write_bundle(out, issued)
    console.print(f"[green]gateway {issued['gateway_id']}[/] at site {issued['site_id']}: "
                  f"bundle in {out}/ (label.png and label.svg carry the id; print the label)")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Create a one-time zero-touch provisioning token for a site."""
    body = _collector().call("POST", f"/api/v1/sites/{args.site}/provision-tokens").body
    expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(body["expires"] / 1000))
    console.print(f"provisioning token for site {args.site} (one use, until {expires}):")
    print(body["token"])
    return 0


def cmd_claim(args: argparse.Namespace) -> int:
    """Exchange a provisioning token for an identity (run on the gateway; no login needed)."""
    from provisioning.bundle import apply_bundle, write_bundle
    from provisioning.session import Collector, Login

    anon = Collector(Login(args.collector.rstrip("/"), ""))
    issued = anon.call("POST", "/api/v1/provision/claim",
                       {"token": args.token, "gateway_id": args.id}).body
    out = args.out or Path(f"bundle-{issued['gateway_id']}")
    write_bundle(out, issued)
    console.print(f"[green]claimed[/] identity {issued['gateway_id']}; bundle in {out}/")
    if args.to:
        apply_bundle(out, args.to)
        console.print(f"installed into {args.to}/")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Install a bundle (e.g. from a USB stick) into the gateway's config directory."""
    from provisioning.bundle import apply_bundle

    cfg = apply_bundle(args.bundle, args.to)
    console.print(f"[green]installed[/] gateway {cfg.gateway.id} into {args.to}/ — next: "
                  f"citygate provision commission --config {args.to}/gateway.toml")
    return 0


def cmd_device_add(args: argparse.Namespace) -> int:
    """Add a device (and its bus, if new) to a gateway config, validating the result."""
    from provisioning.devices import add_device

    add_device(args.config, vars(args))
    console.print(f"[green]added[/] {args.id} ({args.profile}) on bus {args.bus} to "
                  f"{args.config}; the config is valid")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    """Find responding unit ids (and serial settings), or listen for a talking protocol."""
    from provisioning import scan

    if not args.serial and not args.host:
        raise ProvisionError("nothing to scan", "give --host HOST [--port 502] or --serial PORT")
    probe = scan.Probe.for_profile(args.profile) if args.profile else scan.Probe()
    with console.status("scanning...") as status:
        def progress(msg: str) -> None:
            status.update(f"scanning: {msg}")
        if args.serial and args.listen:
            heard = scan.listen_all(args.serial, args.listen, progress=progress)
            if heard is None:
                raise ProvisionError(f"no HJ 212 or parking frame heard on {args.serial}",
                                     "is the device sending? check wiring; listen longer")
            console.print(f"[green]{heard[1].protocol}[/] at {heard[0]}: {heard[1].frames} "
                          f"frame(s), {heard[1].detail}")
            return 0
        if args.serial:
            found = asyncio.run(scan.scan_serial(args.serial, args.units, probe,
                                                 timeout=args.timeout, progress=progress))
            if found is None:
                raise ProvisionError(f"no Modbus unit answered on {args.serial} at any setting",
                                     "check A/B polarity, termination and power; try --listen "
                                     "in case the device sends by itself")
            setting, units = found
            console.print(f"line settings: [bold]{setting}[/]")
        else:
            units = asyncio.run(scan.scan_tcp(args.host, args.port, args.units, probe,
                                              timeout=args.timeout, progress=progress))
    _print_units(units)
    return 0 if units else 1


def _print_units(units: list[Any]) -> None:
    table = RichTable("unit", "answer")
    for u in units:
        answer = (f"exception {u.exception_code}" if u.exception_code is not None
                  else " ".join(f"{r:04X}" for r in u.registers))
        table.add_row(str(u.unit), answer)
    console.print(table if units else "[red]no unit answered[/]")
    if any(u.exception_code is not None for u in units):
        console.print("units answering only with an exception may be absent units a TCP "
                      "gateway answers for; those with registers are devices")


def cmd_preview(args: argparse.Namespace) -> int:
    """Read registers and show every type × word order interpretation side by side."""
    from devices.modbus.codec import Table
    from edge.modbus_link import ModbusLink, ModbusReadError
    from provisioning.preview import ORDERS, preview, raw_line

    if not args.serial and not args.host:
        raise ProvisionError("nothing to read from", "give --host HOST [--port 502] or --serial "
                             "PORT [--baud 9600 --parity N]")

    async def read() -> list[int]:
        link = (ModbusLink.rtu(args.serial, args.baud, args.parity, 8, 1) if args.serial
                else ModbusLink.tcp(args.host, args.port))  # pymodbus wants a running loop
        if not await link.open():
            raise ProvisionError(f"cannot open {link.describe}", "check the address or port")
        try:
            return await link.read(Table(args.table), args.address, args.count, args.unit,
                                   args.timeout, 1)
        except ModbusReadError as exc:
            raise ProvisionError(f"unit {args.unit} at {link.describe}: {exc}",
                                 "check the unit id and address; `citygate provision scan` "
                                 "lists the units that answer") from None
        finally:
            link.close()

    regs = asyncio.run(read())
    console.print(raw_line(args.address, regs))
    table = RichTable("address", "type", *[o.value for o in ORDERS])
    for row in preview(args.address, regs, every_offset=args.all_offsets):
        table.add_row(str(row.address), row.type.value, *[row.values[o] for o in ORDERS])
    console.print(table)
    return 0


def cmd_commission(args: argparse.Namespace) -> int:
    """Run the commissioning checklist, log it locally, upload it (or queue it)."""
    from provisioning.commission import FAIL, run_checks

    collector = None if args.offline else _collector(optional=True)
    with console.status("running the commissioning checks..."):
        cfg, checks = run_checks(args.config, collector)
    for c in checks:
        console.print(f"[{STYLE[c.status]}]{c.status}[/] {c.check}: {c.detail}")
        if c.hint and c.status != "PASS":
            console.print(f"       → {c.hint}")
    failed = sum(c.status == FAIL for c in checks)
    if cfg is not None:
        _record(cfg.gateway.id, args.config, checks, collector)
    console.print("[bold green]ALL PASS[/]" if not failed
                  else f"[bold red]{failed} check(s) FAILED[/]")
    return 1 if failed else 0


def _record(gateway_id: str, path: Path, checks: list[Any], collector: Any) -> None:
    journal = _journal()
    journal.add({"run_id": uuid.uuid4().hex, "gateway_id": gateway_id,
                 "ts": int(time.time() * 1000),
                 "technician": collector.login.technician if collector else "",
                 "results": [c.as_dict() for c in checks],
                 "config_toml": path.read_text(encoding="utf-8")})
    if collector is None:
        console.print(f"saved in {journal.path}; upload later with `citygate provision sync`")
        return
    done, waiting = journal.sync(collector)
    console.print(f"uploaded {done} run(s)" + (f"; {waiting} still queued (offline?) — "
                                               "run `citygate provision sync` later"
                                               if waiting else ""))


def cmd_sync(args: argparse.Namespace) -> int:
    """Upload commissioning results queued while offline."""
    done, waiting = _journal().sync(_collector())
    console.print(f"uploaded {done} run(s), {waiting} still queued")
    return 0 if not waiting else 1


def cmd_log(args: argparse.Namespace) -> int:
    """Show the local install log."""
    for run in _journal().runs(args.gateway):
        verdict = "FAIL" if any(r["status"] == "FAIL" for r in run["results"]) else "PASS"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["ts"] / 1000))
        up = "uploaded" if run["uploaded"] else "queued"
        console.print(f"{when} {run['gateway_id']} [{STYLE[verdict]}]{verdict}[/] ({up})")
    return 0


# --- config rollouts -------------------------------------------------------------------------

CONFIG_MAX_BYTES = 256 * 1024
ROLLOUT_OVER = ("done", "halted")
STATUS_STYLE = {"confirmed": "green", "applied": "cyan", "pending": "dim", "sent": "cyan",
                "skipped": "yellow"}


def _read_toml_file(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > CONFIG_MAX_BYTES:
            raise ProvisionError(f"{path} has {size} bytes; a config may have at most "
                                 f"{CONFIG_MAX_BYTES}", "push only the tables that change "
                                 "with --patch")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"cannot read {path}: {exc}") from None


def cmd_config_push(args: argparse.Namespace) -> int:
    """Start a staged config rollout and (with --wait) follow it to its end."""
    body: dict[str, Any] = {"canaries": args.canaries, "canary_percent": args.canary_percent,
                            "batch": args.batch, "max_failures": args.max_failures,
                            "deadline_s": args.deadline, "device_grace_s": args.device_grace}
    if args.config is not None:
        body["config_toml"] = _read_toml_file(args.config)
    else:
        body["patch_toml"] = _read_toml_file(args.patch)
    if args.gateway:
        body["gateways"] = args.gateway
    elif args.group:
        body["group"] = args.group
    elif args.site:
        body["site"] = args.site
    else:
        body["all"] = True
    collector = _collector()
    status = collector.call("POST", "/api/v1/config/rollouts",
                            {k: v for k, v in body.items() if v is not None}).body
    console.print(f"rollout [bold]{status['rollout_id']}[/] to "
                  f"{len(status['gateways'])} gateway(s), {status['canaries']} canary")
    return _follow(collector, status, args.wait)


def cmd_config_status(args: argparse.Namespace) -> int:
    """Show a rollout's stage and every gateway's state."""
    collector = _collector()
    status = collector.call("GET", f"/api/v1/config/rollouts/{args.rollout}").body
    return _follow(collector, status, args.wait)


def cmd_config_revert(args: argparse.Namespace) -> int:
    """Send the previous config back to every gateway a rollout changed."""
    collector = _collector()
    status = collector.call("POST", f"/api/v1/config/rollouts/{args.rollout}/revert").body
    console.print(f"revert rollout [bold]{status['rollout_id']}[/] of {args.rollout} to "
                  f"{len(status['gateways'])} gateway(s)")
    return _follow(collector, status, args.wait)


def _follow(collector: Any, status: dict[str, Any], wait: float | None) -> int:
    """Print the status; with `wait`, poll until the rollout is over or `wait` seconds pass.
    Exit code: 0 done (or started, without --wait), 1 halted or still running."""
    end = time.monotonic() + (wait or 0)
    while wait and status["stage"] not in ROLLOUT_OVER and time.monotonic() < end:
        time.sleep(1.0)
        status = collector.call("GET", f"/api/v1/config/rollouts/{status['rollout_id']}").body
    _print_rollout(status)
    if status["stage"] == "halted":
        return 1
    return 1 if wait and status["stage"] != "done" else 0


def _print_rollout(status: dict[str, Any]) -> None:
    table = RichTable("gateway", "stage", "status", "detail")
    for g in status["gateways"]:
        d = g["detail"] if isinstance(g["detail"], dict) else {}
        why = d.get("reason", "")
        if d.get("devices") and why:
            why = f"{why}: {', '.join(map(str, d['devices']))}"
        style = STATUS_STYLE.get(g["status"], "red")
        table.add_row(g["gateway_id"], g["stage"], f"[{style}]{g['status']}[/]", str(why))
    console.print(table)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(status["summary"].items()))
    console.print(f"rollout {status['rollout_id']} ({status['kind']}): stage "
                  f"[bold]{status['stage']}[/] — {summary}")


def add_parser(sub: Any) -> None:
    """Register `provision` and its subcommands on the citygate parser."""
    from provisioning.cli_args import add_arguments

    prov = sub.add_parser("provision", help="provision and commission gateways (technicians)")
    add_arguments(prov.add_subparsers(dest="prov_cmd", required=True), sys.modules[__name__])


def run(args: argparse.Namespace) -> int:
    """Run a provision subcommand, turning ProvisionError into a plain message and exit 2."""
    try:
        code: int = args.prov_func(args)
    except ProvisionError as exc:
        console.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            console.print(f"  → {exc.hint}")
        return 2
    return code


def main(argv: list[str] | None = None) -> int:
    """`python -m provisioning.cli ...` (the same as `citygate provision ...`)."""
    p = argparse.ArgumentParser(prog="citygate")
    add_parser(p.add_subparsers(dest="command", required=True))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

