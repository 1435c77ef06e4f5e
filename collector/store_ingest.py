"""The ingest transaction: a batch of gateway messages stored atomically, in one lock order.

Every transaction that writes `gateways` and `devices` takes its row locks in the same order —
gateways by id, then (gateway, seq) claims in `batches`, then devices by id — and everything
else it writes for a device (`latest`, `active_faults`, derived tables) is covered by that
device's row lock. Two such transactions (two collectors on a shared subscription, a birth and
a data batch) therefore wait for each other but never deadlock.

Device ownership: a device belongs to one gateway (`devices.gateway_id`): the registry's
assignment if the device is registered (`reg_devices` of a gateway not revoked), else the
first gateway that reported it. Readings, events and inventory entries of a device from any
other gateway are refused and counted (`foreign_device`). A replacement gateway takes devices
over when the old one is revoked and the new one registered with them, or when an admin moves
a device with `PUT /api/v1/devices/{id}/gateway`.

Device limit: a gateway creates at most `Store.max_devices_per_gateway` devices by reporting
them (collector.toml `[ingest] max_devices_per_gateway`), so a gateway inventing device ids
cannot grow the hub's tables and the features' models without bound. Devices first reported
beyond it are not created; their readings, events and inventory entries are refused and
counted (`device_limit`). Devices the registry assigns to the gateway are always admitted.
A gateway's devices are counted while its row is locked (step 1 of every transaction), so two
collectors storing the same gateway's reports cannot both admit devices past its limit.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

import orjson

from collector.placement import EARLIEST_MS, GatewayClock, judge, place_in_time, worth_storing
from devices.contract import DataEnvelope, EventsEnvelope, HealthMessage, StateMessage
from devices.hj212.normalise import SERIES_SEP, Interval
from devices.quantities import QUANTITIES

if TYPE_CHECKING:
    from collector.store import Accepted, GatewayMessage, IngestResult, Store

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
CHUNK = 500  # ids per IN list
CLAIMS = 1000  # (gateway, seq) claims per statement (7 parameters each: SQLite allows 32,766)
REGISTRY_DEVICES = "reg_devices"  # the registry's (gateway_id, device_id) assignments
REGISTRY_GATEWAYS = "reg_gateways"  # a revoked gateway's assignments no longer count
_warned_foreign: set[tuple[str, str]] = set()
_warned_limit: set[str] = set()
AVERAGE_SUFFIXES = frozenset(i.value for i in Interval if i is not Interval.REALTIME)
LAST_SEEN_STEP_MS = 10_000  # devices.last_seen is advanced by at least this, or not at all


def chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    """Slices of at most CHUNK ids, for IN lists."""
    for i in range(0, len(ids), CHUNK):
        yield ids[i:i + CHUNK]


class IngestTx:
    """One ingest transaction on a driver cursor (see Store.ingest)."""

    def __init__(self, store: Store, cur: Any, result: IngestResult) -> None:
        self.store, self.cur, self.result = store, cur, result
        self.refused: Counter[str] = Counter()
        self.over_limit: set[str] = set()  # devices not created: their gateway is at its limit
        self.last_seen: dict[str, int | None] = {}  # each locked device's stored last_seen

    def run(self, items: Sequence[Accepted | GatewayMessage]) -> None:
        """Store the batch: every step below runs inside the caller's transaction."""
        from collector.store import Accepted

        envs = [a for a in items if isinstance(a, Accepted)]
        clocks = self._lock_gateways(items)
        stored_clocks = dict(clocks)  # as stored: _rows judges each message on from there
        fresh = self._claim(envs)
        owners = self._lock_devices(fresh, items)
        ordered = [a for a in items if not isinstance(a, Accepted) or id(a) in fresh]
        kept = self._owned(ordered, owners)
        rows, events = self._rows(kept, clocks)
        rows = self._without_stored_averages(rows)
        s = self.store
        s._insert_readings(self.cur, rows)
        s._write_derived(self.cur, rows)
        s._upsert_latest(self.cur, rows)
        s._insert_events(self.cur, events)
        self._update_devices(kept)
        self._update_gateways(kept, clocks, stored_clocks)
        r = self.result
        r.fresh = [a for a in kept if isinstance(a, Accepted)]
        r.messages = len(r.fresh)
        r.duplicates = len(envs) - len(fresh)
        r.readings, r.events = len(rows), len(events)
        r.refused.update(self.refused)

    def _in(self, ids: Sequence[str]) -> Iterable[tuple[str, list[Any]]]:
        """`(condition, parameters)` matching a column against `ids`, to follow the column:
        on PostgreSQL one `= ANY` of one array, so the statement's text, its conversion by the
        driver and its prepared plan are the same whatever the count; on SQLite IN lists of
        CHUNK ids."""
        if self.store.is_pg:
            if ids:
                yield "= ANY(%s::text[])", [pg_array(ids)]
            return
        for part in chunks(ids):
            yield f"IN ({','.join('?' * len(part))})", list(part)

    def _write(self, rows: list[Row], pg: str, sqlite: str) -> None:
        """Write rows: on PostgreSQL in one statement `pg` taking each column as one array,
        on SQLite with `sqlite` row by row (executemany)."""
        if not rows:
            return
        if self.store.is_pg:
            self.cur.execute(pg, pg_columns(rows))
        else:
            self.cur.executemany(sqlite, rows)

    # --- 1. gateways -------------------------------------------------------------------------

    def _lock_gateways(self, items: Sequence[Accepted | GatewayMessage]) -> dict[str, GatewayClock]:
        """Create or touch every gateway of the batch, in id order; their known clocks."""
        gws: dict[str, tuple[int | None, int]] = {}
        for it in items:
            seq = it.envelope.seq if hasattr(it, "envelope") else None
            last_seq, last_seen = gws.get(it.gateway, (None, 0))
            if seq is not None and (last_seq is None or seq > last_seq):
                last_seq = seq
            gws[it.gateway] = (last_seq, max(last_seen, it.received))
        rows = [(gw, seq, seen) for gw, (seq, seen) in sorted(gws.items())]
        upsert = (
            " ON CONFLICT (gateway_id) DO UPDATE SET"
            " last_seq = CASE WHEN excluded.last_seq IS NOT NULL AND (gateways.last_seq IS NULL"
            " OR excluded.last_seq > gateways.last_seq) THEN excluded.last_seq"
            " ELSE gateways.last_seq END,"
            " last_seen = CASE WHEN gateways.last_seen IS NULL OR excluded.last_seen >"
            " gateways.last_seen THEN excluded.last_seen ELSE gateways.last_seen END")
        clock = "gateway_id, clock_offset_ms, clock_measured_at, clock_source, clock_wrong"
        # PostgreSQL: in id order (the lock order), returning the clocks
        self._write(rows, "INSERT INTO gateways (gateway_id, state, state_reason, version, boot,"
                    " last_seq, last_seen) SELECT g, 'unknown', '', '', '', s, t FROM"
                    " unnest(%s::text[], %s::bigint[], %s::bigint[]) WITH ORDINALITY AS"
                    " x(g, s, t, o) ORDER BY o" + upsert + " RETURNING " + clock,
                    "INSERT INTO gateways (gateway_id, state, state_reason, version, boot,"
                    " last_seq, last_seen) VALUES (?,'unknown','','','',?,?)" + upsert)
        if not rows:
            return {}
        if self.store.is_pg:
            found = self.cur.fetchall()
        else:
            found = []
            for cond, params in self._in(sorted(gws)):
                self.cur.execute(f"SELECT {clock} FROM gateways WHERE gateway_id {cond}", params)
                found += self.cur.fetchall()
        return {gw: GatewayClock(off, at, source, bool(wrong))
                for gw, off, at, source, wrong in found}

    # --- 2. (gateway, seq) claims ------------------------------------------------------------

    def _claim(self, envs: Sequence[Accepted]) -> set[int]:
        """Claim every envelope's (gateway, seq) in key order, in one statement per CLAIMS
        keys; the ids of those stored now.

        An envelope whose key an earlier one of the same batch holds is a duplicate like one
        stored before: the first in arrival order is the one stored.
        """
        first: dict[tuple[str, int], Accepted] = {}
        for a in envs:
            first.setdefault((a.gateway, a.envelope.seq), a)
        keys = sorted(first)
        claimed: set[tuple[str, int]] = set()
        for i in range(0, len(keys), CLAIMS):
            rows = []
            for key in keys[i:i + CLAIMS]:
                a = first[key]
                env = a.envelope
                if isinstance(env, DataEnvelope):
                    rows.append((a.gateway, env.seq, "data", env.sent, a.received,
                                 len(env.readings), env.replay))
                else:
                    rows.append((a.gateway, env.seq, "events", env.sent, a.received,
                                 len(env.events), env.replay))
            claimed.update(self._claim_rows(rows))
        return {id(first[k]) for k in claimed}

    def _claim_rows(self, rows: list[Row]) -> list[tuple[str, int]]:
        """Insert claim rows (in the order given) skipping keys already held; the new keys."""
        if self.store.is_pg:  # one prepared statement whatever the batch size
            gws, seqs, channels, sents, receiveds, ns, replays = zip(*rows, strict=True)
            self.cur.execute(
                "INSERT INTO batches (gateway_id, seq, channel, sent, received, n, replay)"
                " SELECT gateway_id, seq, channel, sent, received, n, replay"
                " FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::bigint[],"
                " %s::bigint[], %s::integer[], %s::boolean[]) WITH ORDINALITY AS"
                " t(gateway_id, seq, channel, sent, received, n, replay, o) ORDER BY o"
                " ON CONFLICT DO NOTHING RETURNING gateway_id, seq",
                # array literals: built in one join each, where psycopg dumps item by item
                (_text_array(gws), _int_array(seqs), _text_array(channels), _int_array(sents),
                 _int_array(receiveds), _int_array(ns),
                 "{" + ",".join("t" if r else "f" for r in replays) + "}"))
        else:
            self.cur.execute(
                "INSERT INTO batches (gateway_id, seq, channel, sent, received, n, replay)"
                " VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * len(rows))
                + " ON CONFLICT DO NOTHING RETURNING gateway_id, seq",
                list(chain.from_iterable(rows)))
        return [(gw, int(seq)) for gw, seq in self.cur.fetchall()]

    # --- 3. devices and their owners ---------------------------------------------------------

    def _lock_devices(self, fresh: set[int],
                      items: Sequence[Accepted | GatewayMessage]) -> dict[str, str]:
        """Create unknown devices, lock every device of the batch in id order; their owners."""
        first: dict[str, str] = {}  # device -> first gateway reporting it in this batch
        claim = first.setdefault
        for it in items:
            if id(it) in fresh:  # a data or events envelope stored now
                env = it.envelope  # type: ignore[union-attr]
                for e in env.readings if isinstance(env, DataEnvelope) else env.events:
                    claim(e.device, it.gateway)
            elif isinstance(msg := getattr(it, "message", None), StateMessage):
                for dev in msg.devices:
                    claim(dev, it.gateway)
        if not first:
            return {}
        ids = sorted(first)
        registered = self._registered(ids)
        rows = [(d, _registry_owner(registered.get(d), None, first[d]) or first[d])
                for d in ids]
        created = self._create_devices(rows)
        if created:
            self.over_limit = self._beyond_limit(
                [d for d in first if d in created and d not in registered], created)
            ids = [d for d in ids if d not in self.over_limit]
        owners: dict[str, str] = {}
        lock = " ORDER BY device_id FOR UPDATE" if self.store.is_pg else ""
        for cond, params in self._in(ids):
            self.cur.execute(self.store.sql("SELECT device_id, gateway_id, last_seen FROM devices"
                                            f" WHERE device_id {cond}{lock}"), params)
            for dev, owner, seen in self.cur.fetchall():
                owners[dev], self.last_seen[dev] = owner, seen
        # The registry outranks a first claim made before the device was registered.
        moved = {}
        for d in ids:
            owner = _registry_owner(registered.get(d), owners[d], first[d])
            if owner is not None and owner != owners[d]:
                moved[d] = owners[d] = owner
        if moved:
            self.cur.executemany(self.store.sql(
                "UPDATE devices SET gateway_id = ? WHERE device_id = ?"),
                [(gw, d) for d, gw in sorted(moved.items())])
        return owners

    def _create_devices(self, rows: list[Row]) -> dict[str, str]:
        """Insert the (device, owner) rows not stored yet; those created, with their owner."""
        created: dict[str, str] = {}
        if self.store.is_pg:
            self.cur.execute("INSERT INTO devices (device_id, gateway_id, kind, profile) SELECT"
                             " d, g, 'unknown', '' FROM unnest(%s::text[], %s::text[]) WITH"
                             " ORDINALITY AS x(d, g, o) ORDER BY o ON CONFLICT (device_id) DO"
                             " NOTHING RETURNING device_id, gateway_id", pg_columns(rows))
            created.update(self.cur.fetchall())
            return created
        for i in range(0, len(rows), CHUNK):
            part = rows[i:i + CHUNK]
            self.cur.execute("INSERT INTO devices (device_id, gateway_id, kind, profile) VALUES "
                             + ",".join(["(?,?,'unknown','')"] * len(part))
                             + " ON CONFLICT (device_id) DO NOTHING RETURNING device_id,"
                             " gateway_id", list(chain.from_iterable(part)))
            created.update(self.cur.fetchall())
        return created

    def _beyond_limit(self, candidates: list[str], created: dict[str, str]) -> set[str]:
        """Of the devices just created by first report (`candidates`, in arrival order), those
        that take their gateway past its limit: deleted again, before anyone else saw them."""
        limit = self.store.max_devices_per_gateway
        gateways = sorted({created[d] for d in candidates})
        if not gateways:
            return set()
        excess: dict[str, int] = {}
        for cond, params in self._in(gateways):
            self.cur.execute(self.store.sql(
                f"SELECT gateway_id, COUNT(*) FROM devices WHERE gateway_id {cond}"
                " GROUP BY gateway_id"), params)
            excess.update((gw, n - limit) for gw, n in self.cur.fetchall() if n > limit)
        if not excess:
            return set()
        by_gateway: dict[str, list[str]] = {}
        for d in candidates:
            by_gateway.setdefault(created[d], []).append(d)
        over: set[str] = set()
        for gw, n in excess.items():
            over.update(by_gateway[gw][-n:])  # n > 0: the last n, or all of them
            if gw not in _warned_limit and len(_warned_limit) < 10_000:
                _warned_limit.add(gw)
                log.warning("collector: %s reports more than %d devices: devices it reports "
                            "beyond them are refused (counted as device_limit from now on; "
                            "collector.toml [ingest] max_devices_per_gateway)", gw, limit)
        for cond, params in self._in(sorted(over)):
            self.cur.execute(self.store.sql(f"DELETE FROM devices WHERE device_id {cond}"),
                             params)
        return over

    def _registered(self, ids: Sequence[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for cond, params in self._in(ids):
            self.cur.execute(self.store.sql(
                f"SELECT d.device_id, d.gateway_id FROM {REGISTRY_DEVICES} d"
                f" JOIN {REGISTRY_GATEWAYS} g ON g.gateway_id = d.gateway_id"
                f" WHERE g.revoked = FALSE AND d.device_id {cond}"), params)
            for dev, gw in self.cur.fetchall():
                out.setdefault(dev, set()).add(gw)
        return out

    def _owned(self, items: Sequence[Accepted | GatewayMessage],
               owners: dict[str, str]) -> list[Accepted | GatewayMessage]:
        """The batch without what its gateway reported of devices it does not own (counted)."""
        out: list[Accepted | GatewayMessage] = []
        for item in items:
            it = item
            msg = it.envelope if hasattr(it, "envelope") else it.message
            if isinstance(msg, DataEnvelope | EventsEnvelope):
                field = "readings" if isinstance(msg, DataEnvelope) else "events"
                entries = getattr(msg, field)
                keep = [e for e in entries if owners.get(e.device) == it.gateway]
                if len(keep) != len(entries):
                    self._foreign(it.gateway, [e.device for e in entries
                                               if owners.get(e.device) != it.gateway])
                    it = _replace(it, msg.model_copy(update={field: keep}))
            elif isinstance(msg, StateMessage) and msg.devices:
                inv = {d: v for d, v in msg.devices.items() if owners.get(d) == it.gateway}
                if len(inv) != len(msg.devices):
                    self._foreign(it.gateway, [d for d in msg.devices if d not in inv])
                    it = _replace(it, msg.model_copy(update={"devices": inv}))
            out.append(it)
        return out

    def _foreign(self, gateway: str, devices: list[str]) -> None:
        over = [d for d in devices if d in self.over_limit]
        if over:
            self.refused["device_limit"] += len(over)
            devices = [d for d in devices if d not in self.over_limit]
            if not devices:
                return
        self.refused["foreign_device"] += len(devices)
        for dev in devices:
            key = (gateway, dev)
            if key not in _warned_foreign and len(_warned_foreign) < 10_000:
                _warned_foreign.add(key)
                log.warning("collector: %s reported device %s, which another gateway owns: "
                            "refused (counted as foreign_device from now on)", gateway, dev)

    # --- rows --------------------------------------------------------------------------------

    def _rows(self, items: Sequence[Accepted | GatewayMessage],
              clocks: dict[str, GatewayClock]) -> tuple[list[Row], list[Row]]:
        """Readings and events rows, placed in time; every message updates its gateway's clock."""
        policy = self.store.clock_policy
        rows: list[Row] = []
        append = rows.append
        events: list[Row] = []
        r = self.result
        quantities = QUANTITIES
        unknown = GatewayClock()
        for it in items:
            known = clocks.get(it.gateway, unknown)
            msg = it.envelope if hasattr(it, "envelope") else it.message
            if isinstance(msg, HealthMessage):
                clocks[it.gateway] = judge(known, msg.sent, it.received, it.live, policy)
                continue
            if not isinstance(msg, DataEnvelope | EventsEnvelope):
                continue
            clock = clocks[it.gateway] = judge(known, msg.sent, it.received, it.live, policy)
            trusted = not clock.wrong
            # A synchronised, trusted gateway's time stands unless it is out of bounds: those
            # readings skip place_in_time (which gives the same answer).
            keep = msg.clock.synced and trusted
            latest = it.received + policy.max_future_ms
            gateway, seq, replay = it.gateway, msg.seq, msg.replay
            for e in msg.events if isinstance(msg, EventsEnvelope) else ():
                ts, _ = self._placed(e.ts, e.mono, msg, it.received, trusted)
                events.append((e.device, it.gateway, msg.seq, ts, e.kind, e.action, e.severity,
                               e.code, orjson.dumps(e.evidence).decode(), e.message,
                               it.received))
            for rd in msg.readings if isinstance(msg, DataEnvelope) else ():
                if keep and EARLIEST_MS <= rd.ts <= latest:
                    ts, quality = rd.ts, rd.q
                else:
                    ts, clamped = self._placed(rd.ts, rd.mono, msg, it.received, trusted,
                                               rd.station_time)
                    quality = "uncertain" if clamped and rd.q == "good" else rd.q
                device = rd.device
                for q, v in rd.values.items():
                    if v is None:
                        continue
                    if q not in quantities:
                        r.dropped_values["unknown_quantity"] = \
                            r.dropped_values.get("unknown_quantity", 0) + 1
                        continue
                    if isinstance(v, str):
                        append((device, q, ts, None, v, quality, gateway, seq, replay))
                    else:
                        append((device, q, ts, float(v), None, quality, gateway, seq, replay))
        return rows, events

    def _without_stored_averages(self, rows: list[Row]) -> list[Row]:
        """Drop readings of an averaged series (an HJ 212 station's minute, hour or day data:
        `<device>:min` ...) stored already with the same time, value and quality: a station
        answering a history request sends the periods again (counted as dropped
        `already_stored`). A different value for a stored period (a station's correction) is
        kept, and becomes the latest. Real-time series are untouched."""
        spans: dict[str, tuple[int, int]] = {}
        for r in rows:
            if r[0].rpartition(SERIES_SEP)[2] in AVERAGE_SUFFIXES:
                lo, hi = spans.get(r[0], (r[2], r[2]))
                spans[r[0]] = (min(lo, r[2]), max(hi, r[2]))
        if not spans:
            return rows
        have: set[tuple[Any, ...]] = set()
        for dev, (lo, hi) in sorted(spans.items()):
            self.cur.execute(self.store.sql("SELECT quantity, ts, value, vtext, quality FROM "
                                            "readings WHERE device_id = ? AND ts >= ? AND "
                                            "ts <= ?"), (dev, lo, hi))
            have.update((dev, q, int(ts), v, vt, ql) for q, ts, v, vt, ql in self.cur.fetchall())
        out: list[Row] = []
        for r in rows:
            if r[0] in spans:
                key = (r[0], r[1], r[2], r[3], r[4], r[5])
                if key in have:
                    continue
                have.add(key)
            out.append(r)
        if len(out) < len(rows):
            d = self.result.dropped_values
            d["already_stored"] = d.get("already_stored", 0) + len(rows) - len(out)
        return out

    def _placed(self, ts: int, mono: int | None, env: DataEnvelope | EventsEnvelope,
                received: int, trusted: bool, station: bool = False) -> tuple[int, bool]:
        p = place_in_time(ts, mono, env.clock, env.sent, received, trusted,
                          self.store.clock_policy, station)
        r = self.result
        if p.how not in ("gateway", "station"):
            r.time_corrected[p.how] = r.time_corrected.get(p.how, 0) + 1
        if p.clamped:
            r.flagged[p.clamped] = r.flagged.get(p.clamped, 0) + 1
        return p.ts, bool(p.clamped)

    # --- final updates of rows locked above ----------------------------------------------------

    def _update_devices(self, items: Sequence[Accepted | GatewayMessage]) -> None:
        seen: dict[str, int] = {}
        kinds: dict[str, tuple[str | None, str | None]] = {}
        for it in items:
            msg = it.envelope if hasattr(it, "envelope") else it.message
            if isinstance(msg, DataEnvelope | EventsEnvelope):
                for e in msg.readings if isinstance(msg, DataEnvelope) else msg.events:
                    seen[e.device] = max(seen.get(e.device, 0), it.received)
            elif isinstance(msg, StateMessage):
                for dev, info in msg.devices.items():
                    kinds[dev] = (info.get("kind") or None, info.get("profile") or None)
        rows = []
        for dev in sorted(seen.keys() | kinds.keys()):
            kind, profile = kinds.get(dev, (None, None))
            ts = seen.get(dev)
            if kind is None and profile is None and not self._advances(dev, ts):
                continue
            rows.append((kind, profile, ts, dev))
        # every row is locked already (_lock_devices)
        self._write(rows, "UPDATE devices SET kind = COALESCE(x.k, devices.kind),"
                    " profile = COALESCE(x.p, devices.profile),"
                    " first_seen = COALESCE(devices.first_seen, x.t),"
                    " last_seen = CASE WHEN x.t IS NULL THEN devices.last_seen"
                    " WHEN devices.last_seen IS NULL OR x.t > devices.last_seen THEN x.t"
                    " ELSE devices.last_seen END FROM unnest(%s::text[], %s::text[],"
                    " %s::bigint[], %s::text[]) AS x(k, p, t, d) WHERE devices.device_id = x.d",
                    "UPDATE devices SET kind = COALESCE(?1, kind), profile = COALESCE(?2, profile),"
                    " first_seen = COALESCE(first_seen, CAST(?3 AS BIGINT)),"
                    " last_seen = CASE WHEN CAST(?3 AS BIGINT) IS NULL THEN last_seen"
                    " WHEN last_seen IS NULL OR CAST(?3 AS BIGINT) > last_seen"
                    " THEN CAST(?3 AS BIGINT) ELSE last_seen END WHERE device_id = ?4")

    def _advances(self, dev: str, ts: int | None) -> bool:
        """Whether a report at `ts` moves the device's last_seen on by a step or more.

        Rewriting the row on every report of a device that reports every second would cost
        PostgreSQL a row version per envelope for a figure read in seconds, so last_seen is
        the time of the device's last report to within LAST_SEEN_STEP_MS (docs/data-model.md).
        """
        if ts is None:
            return False
        stored = self.last_seen.get(dev)
        return stored is None or ts >= stored + LAST_SEEN_STEP_MS

    def _update_gateways(self, items: Sequence[Accepted | GatewayMessage],
                         clocks: dict[str, GatewayClock],
                         stored: dict[str, GatewayClock]) -> None:
        sql = self.store.sql
        for it in items:
            msg = getattr(it, "message", None)
            if isinstance(msg, StateMessage):
                self.cur.execute(sql(
                    "UPDATE gateways SET state = ?, state_reason = ?, state_ts = ?, version = ?,"
                    " boot = ? WHERE gateway_id = ?"),
                    (msg.state, msg.reason, msg.ts, msg.version, msg.boot, it.gateway))
                self.result.states.append((it.gateway, msg.state, list(msg.devices)))
            elif isinstance(msg, HealthMessage):
                self.cur.execute(sql(
                    "UPDATE gateways SET health = ?, health_ts = ? WHERE gateway_id = ?"),
                    (orjson.dumps(msg.model_dump()).decode(), it.received, it.gateway))
        rows = [(c.offset_ms, c.measured_at, c.source, c.wrong, gw)
                for gw, c in sorted(clocks.items()) if worth_storing(stored.get(gw), c)]
        # every row is locked already (_lock_gateways)
        self._write(rows, "UPDATE gateways SET clock_offset_ms = x.o, clock_measured_at = x.m,"
                    " clock_source = x.s, clock_wrong = x.w FROM unnest(%s::bigint[],"
                    " %s::bigint[], %s::text[], %s::boolean[], %s::text[]) AS x(o, m, s, w, g)"
                    " WHERE gateways.gateway_id = x.g",
                    "UPDATE gateways SET clock_offset_ms = ?, clock_measured_at = ?,"
                    " clock_source = ?, clock_wrong = ? WHERE gateway_id = ?")


def pg_columns(rows: Sequence[Row]) -> list[str]:
    """The rows' columns, each as one PostgreSQL array literal (for unnest)."""
    return [pg_array(col) for col in zip(*rows, strict=True)]


def _int_array(values: Sequence[int]) -> str:
    """A PostgreSQL array literal of integers."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


def _text_array(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of texts, each quoted."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for v in values) + "}"


_NUMBERS_OR_NULL = frozenset({int, float, type(None)})  # repr() of none of them holds "None"


def pg_array(values: Sequence[Any]) -> str:
    """A PostgreSQL array literal of texts, numbers or booleans, None as NULL.

    Hot-path statements on PostgreSQL pass a batch column as one such literal (with a cast,
    unnest in SQL): one join in Python where the driver dumps item by item. A column of one
    type (the usual case) is joined whole.
    """
    kinds = set(map(type, values))
    if kinds == {str}:
        whole = "".join(values)
        if '"' not in whole and "\\" not in whole:
            return '{"' + '","'.join(values) + '"}'
    elif kinds and kinds <= _NUMBERS_OR_NULL:  # bool is not int here: type(True) is bool
        return "{" + ",".join(map(repr, values)).replace("None", "NULL") + "}"
    out = []
    for v in values:
        if v is None:
            out.append("NULL")
        elif isinstance(v, str):
            out.append('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif isinstance(v, bool):
            out.append("t" if v else "f")
        else:
            out.append(repr(v))
    return "{" + ",".join(out) + "}"


def _registry_owner(registered: set[str] | None, current: str | None,
                    reporter: str) -> str | None:
    """The owner the registry gives a device: None when it is not registered."""
    if not registered:
        return None
    if current in registered:
        return current
    if reporter in registered:
        return reporter
    return min(registered)


def _replace(it: Any, msg: Any) -> Any:
    from dataclasses import replace

    return replace(it, envelope=msg) if hasattr(it, "envelope") else replace(it, message=msg)
