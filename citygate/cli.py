"""The `citygate` command line: one entry point for the gateway, collector, simulators and demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from devices.modbus.units import parse_units

DEFAULT_DB = "sqlite:///citygate-hub.sqlite"
log = logging.getLogger("citygate")


def _setup_logging(verbose: bool = False, cfg: Any = None) -> None:
    """Log to stderr (journald under systemd), or to a size-capped file when configured."""
    fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    level = logging.DEBUG if verbose else getattr(logging, getattr(cfg, "level", "INFO"))
    if cfg is not None and cfg.file is not None:
        from logging.handlers import RotatingFileHandler

        Path(cfg.file).parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = RotatingFileHandler(cfg.file, maxBytes=cfg.max_bytes,
                                                       backupCount=cfg.backups)
        handler.setFormatter(logging.Formatter(fmt))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    for noisy in ("pymodbus", "amqtt", "transitions", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def host_port(text: str) -> tuple[str, int]:
    """Parse HOST:PORT."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def unit_list(text: str) -> list[int]:
    """Parse "1-10,12" into unit ids (an argparse type)."""
    try:
        return parse_units(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_until_signal(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> int:
    """Run `main(stop)` with SIGINT/SIGTERM setting `stop`; return the exit code."""
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
    return 0


# --- subcommands ----------------------------------------------------------------------------------

def cmd_edge_check(args: argparse.Namespace) -> int:
    """Validate a gateway config and explain what it will do."""
    from edge.config import ConfigError, config_warnings, explain, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"config NOT valid ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for key, msg in exc.problems:
            print(f"  {exc.path}: {key}: {msg}", file=sys.stderr)
        return 2
    for key, msg in config_warnings(cfg):
        print(f"warning: {args.config}: {key}: {msg}", file=sys.stderr)
    print(f"{args.config}: valid")
    for line in explain(cfg):
        print(f"  {line}")
    return 0


def cmd_edge_run(args: argparse.Namespace) -> int:
    """Run the gateway agent."""
    from edge.config import ConfigError, config_warnings, load_config
    from edge.managed import run_managed
    from edge.outbox import OutboxError

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    _setup_logging(args.verbose, cfg.logging)
    for key, msg in config_warnings(cfg):
        log.warning("%s: %s: %s", args.config, key, msg)

    async def main(stop: asyncio.Event) -> None:
        # The supervised agent also answers remote configuration and echo commands.
        await run_managed(args.config, stop)

    try:
        return run_until_signal(main)
    except OutboxError:  # logged as the reason; a non-zero exit lets systemd restart us
        return 1


def _behaviours(args: argparse.Namespace) -> dict[int, Any]:
    """Per-unit misbehaviour from --dead, --slow and --reject."""
    from devices.sim.elevator import UnitBehaviour

    dead = set(args.dead or [])
    slow = dict(args.slow or [])
    reject = dict(args.reject or [])
    return {u: UnitBehaviour(dead=u in dead, delay=slow.get(u, 0.0), reject=reject.get(u))
            for u in dead | set(slow) | set(reject)}


def unit_delay(text: str) -> tuple[int, float]:
    """Parse UNIT:DURATION, e.g. "5:250ms"."""
    from devices.durations import parse_duration

    unit, _, delay = text.partition(":")
    try:
        return int(unit), parse_duration(delay)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not UNIT:DELAY like 5:250ms") from None


def unit_range(text: str) -> tuple[int, tuple[int, int]]:
    """Parse UNIT:FIRST-LAST register addresses, e.g. "6:10-13"."""
    unit, _, span = text.partition(":")
    lo, _, hi = span.partition("-")
    try:
        return int(unit), (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not UNIT:FIRST-LAST like 6:10-13") \
            from None


def duration_arg(text: str) -> float:
    """Parse a duration like 2s or 250ms."""
    from devices.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 2s") from None


def cmd_sim_elevators(args: argparse.Namespace) -> int:
    """Serve simulated lift controllers over Modbus TCP and/or RTU."""
    from devices.sim.elevator import ElevatorBank, make_bank, serve_control, serve_rtu, serve_tcp
    from devices.sim.ptylink import PtyLink
    from devices.sim.scenarios import ScenarioError, ScenarioSchedule

    _setup_logging(args.verbose)
    if not args.tcp and not args.rtu:
        print("give --tcp HOST:PORT and/or --rtu PATH", file=sys.stderr)
        return 2
    if args.babble and not args.rtu:
        print("--babble needs --rtu (garbage is injected on the serial line)", file=sys.stderr)
        return 2
    try:
        ScenarioSchedule.parse(args.scenario or [])
    except ScenarioError as exc:
        print(f"--scenario: {exc}", file=sys.stderr)
        return 2
    behaviours = _behaviours(args)
    if args.control:
        with contextlib.suppress(FileNotFoundError):
            Path(args.control).unlink()

    count_log = None
    resume: dict[int, int] = {}
    if args.count_reads:  # carry on counting where a previous run of the log stopped
        with contextlib.suppress(OSError):
            for line in Path(args.count_reads).read_text().splitlines():
                _, unit, value = line.split()
                resume[int(unit)] = int(value)
        count_log = open(args.count_reads, "a")  # noqa: SIM115 - closed when serving ends

    def bank() -> ElevatorBank:
        b = make_bank(args.units, args.profile, static=args.static, seed=args.seed)
        b.count_log, b.behaviours = count_log, behaviours
        b.schedule = ScenarioSchedule.parse(args.scenario) if args.scenario else None
        for unit, value in resume.items():
            if unit in b.models:
                b.models[unit].values["trip_count"] = value
        return b

    async def main(stop: asyncio.Event) -> None:
        tasks = []
        banks: list[ElevatorBank] = []
        link = None
        if args.tcp:
            banks.append(bank())
            tasks.append(asyncio.create_task(serve_tcp(banks[-1], *args.tcp)))
            log.info("simulating %d lifts on modbus-tcp %s:%d", len(args.units), *args.tcp)
        if args.rtu:
            link = PtyLink(baudrate=args.wire_baud).open()
            link.link(args.rtu, end="b")
            banks.append(bank())
            tasks.append(asyncio.create_task(serve_rtu(banks[-1], link.a_path, args.baud)))
            if args.babble:
                link.start_babble(args.babble, seed=args.seed)
            log.info("simulating %d lifts on modbus-rtu, gateway end: %s",
                     len(args.units), args.rtu)
        if behaviours:
            log.info("misbehaving units: %s", behaviours)
        if args.control:
            tasks.append(asyncio.create_task(serve_control(banks, args.control)))
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if link is not None:
            link.close()
        if count_log is not None:
            count_log.close()

    return run_until_signal(main)


def cmd_sim_environment(args: argparse.Namespace) -> int:
    """Run a simulated environmental station (HJ 212 over a serial line or TCP)."""
    from devices.sim.environment import main as environment_main

    return environment_main(args.args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the simulated city end to end."""
    from citygate.demo import run_demo

    _setup_logging(args.verbose)
    return run_demo(args)


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the embedded broker in the foreground."""
    from citygate.embedded_broker import serve

    _setup_logging(args.verbose)
    asyncio.run(serve(args.port))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every subcommand (tools other than `command` only listed)."""
    p = argparse.ArgumentParser(prog="citygate", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the simulated city end to end")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--http", type=host_port, default=("127.0.0.1", 8080),
                      help="where the collector serves its API (default 127.0.0.1:8080)")
    demo.add_argument("--data-dir", type=Path,
                      help="where state and logs go (default: ./var/demo, replaced each run)")
    demo.add_argument("--elevators", type=int, default=6, help="lifts per gateway (default 6)")
    demo.add_argument("--scenario", action="append", metavar="NAME@SECONDS[:unit=N][:for=S]",
                      help="inject a lift fault scenario on the Modbus TCP lifts (repeatable), "
                           "e.g. trapped_passenger@20:unit=2:for=90 (the default)")
    demo.add_argument("--notify-webhook", metavar="URL",
                      help="also push every incident to this webhook (JSON, unsigned)")
    demo.set_defaults(func=cmd_demo)

    edge = sub.add_parser("edge", help="the gateway agent").add_subparsers(dest="edge_cmd",
                                                                         required=True)
    run = edge.add_parser("run", help="run the gateway agent")
    run.add_argument("--config", required=True, type=Path)
    run.set_defaults(func=cmd_edge_run)
    check = edge.add_parser("check", help="validate a gateway config and explain it")
    check.add_argument("--config", required=True, type=Path)
    check.set_defaults(func=cmd_edge_check)

    from citygate.cli_collector import add_collector_commands

    add_collector_commands(sub)

    sim = sub.add_parser("sim", help="device simulators").add_subparsers(dest="sim_cmd",
                                                                        required=True)
    el = sim.add_parser("elevators", help="simulated lift controllers over Modbus")
    el.add_argument("--tcp", type=host_port, help="serve Modbus TCP on HOST:PORT")
    el.add_argument("--rtu", help="serve Modbus RTU on a pseudo-terminal linked at PATH")
    el.add_argument("--baud", type=int, default=9600)
    el.add_argument("--units", type=unit_list, default=unit_list("1-4"),
                    help="unit ids, e.g. 1-10 (default 1-4)")
    el.add_argument("--profile", default="elevator-gbt24476")
    el.add_argument("--static", action="store_true", help="hold every lift still")
    el.add_argument("--seed", type=int)
    el.add_argument("--scenario", action="append", metavar="NAME@SECONDS[:unit=N][:for=S]",
                    help="play a fault scenario (repeatable), e.g. trapped_passenger@20:unit=3"
                         ":for=120; names: see docs/elevators.md")
    el.add_argument("--dead", type=unit_list, metavar="UNITS",
                    help="units that never answer, e.g. 3 or 3,7")
    el.add_argument("--slow", type=unit_delay, action="append", metavar="UNIT:DELAY",
                    help="a unit that answers late, e.g. 5:250ms (repeatable)")
    el.add_argument("--reject", type=unit_range, action="append", metavar="UNIT:FIRST-LAST",
                    help="a unit answering exception 2 to reads touching these registers, "
                         "e.g. 6:10-13 (repeatable)")
    el.add_argument("--babble", type=duration_arg, metavar="PERIOD",
                    help="inject random bytes on the RTU line every PERIOD, e.g. 2s")
    el.add_argument("--wire-baud", type=int, metavar="BAUD",
                    help="pace the RTU pty like a real line at BAUD (ptys ignore baud rates)")
    el.add_argument("--control", metavar="SOCKET",
                    help="Unix socket taking `set UNIT QUANTITY VALUE` / `clear UNIT` lines")
    el.add_argument("--count-reads", metavar="LOG",
                    help="chaos-test mode: every read bumps the trip counter, logged to LOG")
    el.set_defaults(func=cmd_sim_elevators)

    sim.add_parser("parking", add_help=False,
                   help="parking sensors: a concentrator on a serial line and CoAP nodes "
                        "(see `citygate sim parking --help`)")
    env = sim.add_parser("environment", add_help=False,
                         help="simulated dust / boiler station sending HJ 212 "
                              "(see `citygate sim environment --help`)")
    env.add_argument("args", nargs=argparse.REMAINDER)
    env.set_defaults(func=cmd_sim_environment)

    br = sub.add_parser("broker", help="embedded MQTT broker (when Mosquitto is not installed)")
    br.add_argument("--port", type=int, default=1883)
    br.set_defaults(func=cmd_broker)

    # Tools with heavy imports (rich, QR codes, NATS) are registered only when asked for, so a
    # gateway's `edge run` does not carry them in memory; the rest get a placeholder for --help.
    for name, (module, what) in _TOOLS.items():
        if command in (None, name):
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=what, add_help=False)
    return p


_TOOLS = {
    "decode": ("citygate.decode", "read HJ 212 frames from a capture or a serial line"),
    "provision": ("provisioning.cli", "the technician's tool: identities, bundles, scan, "
                                      "preview, commission"),
    "cluster-demo": ("citygate.cluster_demo", "the city on a 3-node NATS cluster"),
    "sources": ("citygate.sources_cli", "pollution-source registry: import, list, attribute"),
    "grid": ("collector.grid.cli", "district/area/grid outlines and department figures"),
    "command": ("citygate.command_cli", "writes to field devices: send, confirm, list, show"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `citygate` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["sim", "environment"]:  # its own parser, options and --help included
        from devices.sim.environment import main as environment_main

        return environment_main(argv[2:])
    if argv[:2] == ["sim", "parking"]:
        from devices.sim.parking import main as parking_main

        return parking_main(argv[2:])
    command = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(command).parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        code = 130
    return code


if __name__ == "__main__":
    sys.exit(main())
