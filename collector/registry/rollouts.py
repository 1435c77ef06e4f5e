"""Config rollouts: one config (or a patch) to many gateways, staged like agent updates.

A rollout selects gateways (a list, a group, a site or all), computes each one's config (a
whole file with the gateway's own id and site, or a patch merged into the config the registry
knows it runs), and offers it over `cmd/config`: the canaries first; the rest, `batch` at a
time, only once every canary answered `confirmed` (applied, uplink back, and the devices that
answered before answering again). A canary that is refused, rolls back, fails or says nothing
within `deadline_s` halts the rollout; in the rest wave more than `max_failures` failures do.
The staging decision is the one of agent updates (collector.updates.service.next_step).

A revert is a rollout of its own that sends every gateway the original one changed the config
it ran before (all at once: there is nothing left to protect by waiting).

A group is the `district` of the registry's sites: `--group north` selects the gateways of
every site whose district is `north`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import tomllib
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from collector.clock import now_ms
from collector.registry import repo
from collector.registry import tables as t
from collector.updates.service import FAILED, CommandSender, Target, next_step
from devices.contract import GATEWAY_ID_RE, ReplyMessage
from provisioning import tomlout

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 256 * 1024  # the gateway refuses bigger (edge/remote_config.py)
SUCCEEDED = ("confirmed",)
IN_FLIGHT = ("sent", "applied")
# the gateway runs, or may yet run, the rollout's config (commands run in order on a gateway)
REVERTIBLE = ("sent", "applied", "confirmed", "timeout")
STATUSES = frozenset({"applied", "confirmed", "refused", "rolled_back", "failed"})
COUNTERS = ("rollouts", "reverts", "refused_unknown_group", "refused_unknown_site",
            "refused_unknown_gateway",
            "refused_oversize", "refused_invalid_toml", "refused_no_base_config",
            "refused_request", "replies", "replies_unknown")


class RolloutError(repo.RegistryError):
    """A rollout request refused; `status` is the HTTP status, `counter` what it counts."""

    def __init__(self, status: int, detail: str, counter: str = "refused_request") -> None:
        super().__init__(status, detail)
        self.counter = counter


@dataclass(frozen=True, slots=True)
class Selector:
    """Which gateways a rollout is for: exactly one of the four."""

    gateways: tuple[str, ...] = ()
    group: str | None = None
    site: str | None = None
    all: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The selector as stored and shown."""
        if self.gateways:
            return {"gateways": list(self.gateways)}
        if self.group is not None:
            return {"group": self.group}
        if self.site is not None:
            return {"site": self.site}
        return {"all": True}


def canary_count(total: int, canaries: int | None, percent: float | None) -> int:
    """How many of `total` gateways are canaries: N, or a percentage rounded up; at least 1."""
    if percent is not None:
        n = math.ceil(total * percent / 100.0)
    else:
        n = canaries if canaries is not None else 1
    return max(1, min(total, n))


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` over `base`: tables merge key by key, any other value (arrays of tables
    included) replaces the base's."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_toml(text: str, what: str) -> dict[str, Any]:
    """A TOML document, bounded in size; RolloutError (counted) when too big or invalid."""
    size = len(text.encode())
    if size > MAX_CONFIG_BYTES:
        raise RolloutError(413, f"{what} of {size} bytes: at most {MAX_CONFIG_BYTES} bytes",
                           "refused_oversize")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RolloutError(422, f"{what} is not valid TOML: {exc}", "refused_invalid_toml") \
            from None


def config_for(gateway: dict[str, Any], mode: str, doc: dict[str, Any]) -> str:
    """The config one gateway is sent: the whole file with its own id and site, or the patch
    merged into the config the registry has for it."""
    if mode == "patch":
        if not gateway["config_toml"]:
            raise RolloutError(409, f"no config of {gateway['gateway_id']} is known to the "
                                    "registry to patch: push a whole config to it first, or "
                                    "upload its commissioning", "refused_no_base_config")
        base = tomllib.loads(gateway["config_toml"])
        doc = merge(base, doc)
    section = doc.get("gateway")
    if not isinstance(section, dict):
        raise RolloutError(422, "the config has no [gateway] table", "refused_invalid_toml")
    doc = {**doc, "gateway": {**section, "id": gateway["gateway_id"],
                              "site": gateway["site_id"]}}
    try:
        text = tomlout.dumps(doc)
        same = tomllib.loads(text) == doc
    except (TypeError, ValueError) as exc:  # e.g. TOML dates, which a gateway config has none of
        raise RolloutError(422, f"cannot write the config: {exc}", "refused_invalid_toml") \
            from None
    if not same:  # nested deeper than a gateway config: refuse rather than lose a part
        raise RolloutError(422, "the config has tables nested deeper than a gateway config's",
                           "refused_invalid_toml")
    repo.devices_of_config(text)  # device ids checked as the registry will store them
    return text


class ConfigRollouts:
    """Rollouts and per-gateway results in the collector's database."""

    def __init__(self, engine: sa.Engine, channel: CommandSender | None) -> None:
        self.engine, self.channel = engine, channel
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()  # one step at a time (API thread, driver, replies)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def count(self, counter: str) -> None:
        """Add one to a counter (a refusal's or a reply's)."""
        self.counters[counter] = self.counters.get(counter, 0) + 1

    # --- starting ------------------------------------------------------------------------------

    def select(self, sel: Selector) -> list[dict[str, Any]]:
        """The registered, not revoked gateways a selector names; RolloutError when unknown."""
        kinds = bool(sel.gateways) + (sel.group is not None) + (sel.site is not None) + sel.all
        if kinds != 1:
            raise RolloutError(422, "name exactly one of: gateways, group, site, all")
        live = [g for g in repo.gateways(self.engine) if not g["revoked"]]
        if sel.gateways:
            by_id = {g["gateway_id"]: g for g in live}
            unknown = [g for g in sel.gateways if g not in by_id]
            if unknown:
                raise RolloutError(404, "unknown or revoked gateway(s): "
                                   + ", ".join(repr(g[:64]) for g in unknown[:10]),
                                   "refused_unknown_gateway")
            return [by_id[g] for g in dict.fromkeys(sel.gateways)]
        if sel.group is not None:
            sites = {s["site_id"] for s in repo.sites(self.engine)
                     if s["district"] == sel.group}
            if not sites:
                raise RolloutError(404, f"unknown group {sel.group[:100]!r}: no site has this "
                                        "district (set it with PUT /api/v1/sites/{id})",
                                   "refused_unknown_group")
            chosen = [g for g in live if g["site_id"] in sites]
        elif sel.site is not None:
            if repo.site(self.engine, sel.site) is None and not any(
                    g["site_id"] == sel.site for g in live):
                raise RolloutError(404, f"unknown site {sel.site[:100]!r}",
                                   "refused_unknown_site")
            chosen = [g for g in live if g["site_id"] == sel.site]
        else:
            chosen = live
        if not chosen:
            raise RolloutError(422, f"no registered gateway in {sel.as_dict()}")
        return chosen

    def start(self, sel: Selector, *, config_toml: str | None = None,
              patch_toml: str | None = None, canaries: int | None = None,
              canary_percent: float | None = None, batch: int = 10, max_failures: int = 0,
              deadline_s: float = 900.0, device_grace_s: float | None = None,
              by: str = "") -> dict[str, Any]:
        """Validate and create a rollout, then offer it to its canaries; its status."""
        try:
            return self._start(sel, config_toml, patch_toml, canaries, canary_percent, batch,
                               max_failures, deadline_s, device_grace_s, by)
        except RolloutError as exc:
            self.count(exc.counter)
            raise
        except repo.RegistryError:
            self.count("refused_request")
            raise

    def _start(self, sel: Selector, config_toml: str | None, patch_toml: str | None,
               canaries: int | None, canary_percent: float | None, batch: int,
               max_failures: int, deadline_s: float, device_grace_s: float | None,
               by: str) -> dict[str, Any]:
        if (config_toml is None) == (patch_toml is None):
            raise RolloutError(422, "give either config_toml (a whole config) or patch_toml")
        mode, body = ("config", config_toml) if config_toml is not None else ("patch",
                                                                            patch_toml)
        assert body is not None
        doc = parse_toml(body, "the config" if mode == "config" else "the patch")
        chosen = self.select(sel)
        configs = {g["gateway_id"]: config_for(g, mode, doc) for g in chosen}
        n = canary_count(len(chosen), canaries, canary_percent)
        rollout = f"cfg-{secrets.token_hex(6)}"
        with self.engine.begin() as conn:
            conn.execute(sa.insert(t.config_rollouts).values(
                rollout_id=rollout, created=now_ms(), created_by=by, kind="push",
                selector=orjson.dumps(sel.as_dict()).decode(), mode=mode, body=body,
                canaries=n, batch=max(1, batch), max_failures=max(0, max_failures),
                deadline_s=deadline_s, device_grace_s=device_grace_s, state="canary"))
            conn.execute(sa.insert(t.config_targets), [
                {"rollout_id": rollout, "gateway_id": g, "wave": 0 if i < n else 1,
                 "status": "pending", "config_toml": text}
                for i, (g, text) in enumerate(configs.items())])
        self.count("rollouts")
        log.info("config rollout %s to %d gateway(s), %d canary", rollout, len(chosen), n)
        self.step()
        return self.status(rollout)

    def revert(self, rollout_id: str, by: str = "") -> dict[str, Any]:
        """Send the config they ran before to every gateway a rollout changed; a rollout still
        running is halted first (its gateways not yet sent anything are skipped)."""
        original = self._rollout(rollout_id)
        if original["state"] in ("canary", "rolling"):
            with self._lock, self.engine.begin() as conn:
                conn.execute(sa.update(t.config_rollouts).where(
                    t.config_rollouts.c.rollout_id == rollout_id).values(state="halted"))
            self._skip_rest(rollout_id)
            log.info("config rollout %s: halted for a revert", rollout_id)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.config_targets).where(
                t.config_targets.c.rollout_id == rollout_id,
                t.config_targets.c.status.in_(REVERTIBLE))
                .order_by(t.config_targets.c.gateway_id)).all()
        back = [r for r in rows if r.previous_toml]
        if not back:
            self.count("refused_request")
            raise RolloutError(409, f"rollout {rollout_id} changed no gateway whose previous "
                                    "config is known: nothing to revert")
        rollout = f"cfg-{secrets.token_hex(6)}"
        with self.engine.begin() as conn:
            conn.execute(sa.insert(t.config_rollouts).values(
                rollout_id=rollout, created=now_ms(), created_by=by, kind="revert",
                reverts=rollout_id, selector=orjson.dumps(
                    {"gateways": [r.gateway_id for r in back]}).decode(),
                mode="config", body="", canaries=len(back), batch=len(back), max_failures=0,
                deadline_s=original["deadline_s"], device_grace_s=original["device_grace_s"],
                state="canary"))
            conn.execute(sa.insert(t.config_targets), [
                {"rollout_id": rollout, "gateway_id": r.gateway_id, "wave": 0,
                 "status": "pending", "config_toml": r.previous_toml} for r in back])
        self.count("reverts")
        log.info("config rollout %s reverts %s on %d gateway(s)", rollout, rollout_id, len(back))
        self.step()
        return self.status(rollout)

    # --- driving -------------------------------------------------------------------------------

    def step(self) -> None:
        """Advance every active rollout: time out silent gateways, offer the next gateways."""
        with self._lock:
            with self.engine.connect() as conn:
                active = conn.execute(sa.select(t.config_rollouts).where(
                    t.config_rollouts.c.state.in_(["canary", "rolling"]))).all()
            for r in active:
                self._step(r)

    def _step(self, r: Any) -> None:
        self._time_out(r.rollout_id, r.deadline_s)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.config_targets).where(
                t.config_targets.c.rollout_id == r.rollout_id)
                .order_by(t.config_targets.c.gateway_id)).all()
        send, state = next_step((Target(x.gateway_id, x.wave, x.status) for x in rows),
                                succeeded=SUCCEEDED, max_failures=r.max_failures)
        if state == "rolling":  # the rest wave, `batch` gateways in flight at a time
            busy = sum(x.status in IN_FLIGHT for x in rows if x.wave != 0)
            send = send[:max(0, r.batch - busy)]
        by_gw = {x.gateway_id: x for x in rows}
        for gateway in send:
            self._offer(r, by_gw[gateway])
        if state != r.state:
            log.info("config rollout %s: %s", r.rollout_id, state)
            with self.engine.begin() as conn:
                conn.execute(sa.update(t.config_rollouts).where(
                    t.config_rollouts.c.rollout_id == r.rollout_id).values(state=state))
            if state == "halted":
                self._skip_rest(r.rollout_id)

    def _offer(self, r: Any, target: Any) -> None:
        if self.channel is None:
            return
        try:
            gw = repo.gateway(self.engine, target.gateway_id)
        except repo.RegistryError:  # deleted meanwhile
            self._finish(r.rollout_id, target.gateway_id, "failed",
                         {"reason": "the gateway is no longer registered"})
            return
        push_id = secrets.token_hex(8)
        version = int(gw["config_version"]) + 1
        command: dict[str, Any] = {"id": push_id, "version": version,
                                   "toml": target.config_toml}
        if r.device_grace_s is not None:
            command["device_grace_s"] = r.device_grace_s
        this = (t.config_targets.c.rollout_id == r.rollout_id,
                t.config_targets.c.gateway_id == target.gateway_id)
        with self.engine.begin() as conn:  # claimed first: another hub's step sends nothing
            claimed = conn.execute(sa.update(t.config_targets).where(
                *this, t.config_targets.c.status == "pending").values(
                status="sent", sent=now_ms(), push_id=push_id, version=version,
                previous_toml=gw["config_toml"], previous_version=gw["config_version"])).rowcount
        if not claimed:
            return
        repo.record_push(self.engine, push_id, target.gateway_id, version, target.config_toml)
        if not self.channel.send(target.gateway_id, "config", orjson.dumps(command)):
            with self.engine.begin() as conn:  # the broker link is down: again at the next step
                conn.execute(sa.update(t.config_targets).where(
                    *this, t.config_targets.c.push_id == push_id,
                    t.config_targets.c.status == "sent").values(status="pending", sent=None))


    def _time_out(self, rollout: str, deadline_s: float) -> None:
        limit = now_ms() - int(deadline_s * 1000)
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.config_targets).where(
                t.config_targets.c.rollout_id == rollout,
                t.config_targets.c.status.in_(IN_FLIGHT),
                t.config_targets.c.sent < limit).values(
                status="timeout", finished=now_ms(),
                detail=orjson.dumps({"reason": f"not confirmed within {deadline_s:g}s"})
                .decode()))

    def _skip_rest(self, rollout: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.config_targets).where(
                t.config_targets.c.rollout_id == rollout,
                t.config_targets.c.status == "pending").values(
                status="skipped", finished=now_ms(),
                detail=orjson.dumps({"reason": "the rollout halted"}).decode()))

    def _finish(self, rollout: str, gateway: str, status: str, detail: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.config_targets).where(
                t.config_targets.c.rollout_id == rollout,
                t.config_targets.c.gateway_id == gateway).values(
                status=status, finished=now_ms(), detail=orjson.dumps(detail).decode()))

    def on_reply(self, reply: ReplyMessage) -> None:
        """Record a gateway's answer to a rollout's push (other replies are ignored)."""
        if reply.command != "config" or not reply.id:
            return
        status = str(reply.detail.get("status", ""))
        if status not in STATUSES:
            status = "applied" if reply.ok else "failed"
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.config_targets).where(
                t.config_targets.c.push_id == reply.id,
                t.config_targets.c.gateway_id == reply.gateway)).first()
        if row is None:
            return
        self.count("replies")
        done = status != "applied"
        allowed = ["sent", "timeout"] + (["applied"] if done else [])
        detail = {k: v for k, v in reply.detail.items() if k != "status"}
        with self.engine.begin() as conn:
            conn.execute(sa.update(t.config_targets).where(
                t.config_targets.c.rollout_id == row.rollout_id,
                t.config_targets.c.gateway_id == row.gateway_id,
                t.config_targets.c.status.in_(allowed)).values(
                status=status, finished=now_ms() if done else None,
                detail=orjson.dumps(detail).decode()[:20_000]))
        log.info("config rollout %s on %s: %s", row.rollout_id, row.gateway_id, status)

    async def run(self, interval: float = 1.0) -> None:
        """Advance rollouts until cancelled (the collector's task)."""
        while True:
            try:
                await asyncio.to_thread(self.step)
            except sa.exc.SQLAlchemyError:
                log.exception("config rollouts: a step failed; retrying")
            await asyncio.sleep(interval)

    def start_driver(self, interval: float = 0.25) -> None:
        """Advance rollouts on a thread of their own (for callers without an event loop)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._drive, args=(interval,),
                                            name="config-rollouts", daemon=True)
            self._thread.start()

    def stop_driver(self) -> None:
        """Stop the thread of `start_driver` (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(10)

    def _drive(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.step()
            except sa.exc.SQLAlchemyError:
                log.exception("config rollouts: a step failed; retrying")

    # --- what people see -------------------------------------------------------------------------

    def _rollout(self, rollout_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.config_rollouts).where(
                t.config_rollouts.c.rollout_id == rollout_id)).first()
        if row is None:
            raise RolloutError(404, f"no config rollout {rollout_id[:64]!r}")
        return dict(row._mapping)

    def status(self, rollout_id: str) -> dict[str, Any]:
        """A rollout, its stage and every gateway's state."""
        r = self._rollout(rollout_id)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.config_targets).where(
                t.config_targets.c.rollout_id == rollout_id)
                .order_by(t.config_targets.c.wave, t.config_targets.c.gateway_id)).all()
        targets = [{"gateway_id": x.gateway_id, "stage": "canary" if x.wave == 0 else "rest",
                    "status": x.status, "push_id": x.push_id, "version": x.version,
                    "sent": x.sent, "finished": x.finished, "detail": orjson.loads(x.detail)}
                   for x in rows]
        summary: dict[str, int] = {}
        for x in targets:
            summary[x["status"]] = summary.get(x["status"], 0) + 1
        failed = sum(x["status"] in FAILED for x in targets)
        return {"rollout_id": r["rollout_id"], "kind": r["kind"], "reverts": r["reverts"],
                "created": r["created"], "created_by": r["created_by"],
                "selector": orjson.loads(r["selector"]), "mode": r["mode"],
                "stage": r["state"], "canaries": r["canaries"], "batch": r["batch"],
                "max_failures": r["max_failures"], "deadline_s": r["deadline_s"],
                "device_grace_s": r["device_grace_s"], "failed": failed,
                "summary": summary, "gateways": targets}

    def latest(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest rollouts, newest first (without their gateways)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.config_rollouts.c.rollout_id).order_by(
                t.config_rollouts.c.created.desc()).limit(limit)).all()
        out = []
        for row in rows:
            s = self.status(row.rollout_id)
            s.pop("gateways")
            out.append(s)
        return out


def valid_gateway_ids(ids: list[str]) -> tuple[str, ...]:
    """Gateway ids as given, each checked; RolloutError (counted by the caller) if not."""
    bad = [g for g in ids if not GATEWAY_ID_RE.fullmatch(g)]
    if bad:
        raise RolloutError(422, f"not a valid gateway id: {bad[0][:64]!r}")
    return tuple(ids)
