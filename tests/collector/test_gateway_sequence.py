"""`GET /gateways/{id}/sequence`: missing message numbers, and the readings a gateway reported
lost, counted per device from its data gaps (not from sequence numbers it never used)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.auth import Role, create_token
from collector.features import open_store
from collector.store import Accepted
from devices.contract import DataEnvelope, EventsEnvelope

T0 = 1_763_000_000_000


def _data(seq: int) -> Accepted:
    readings = [{"device": "lift-1", "ts": T0 + seq * 1000, "values": {"floor": seq}}]
    return Accepted("gw-a", DataEnvelope.model_validate(
        {"v": 1, "gateway": "gw-a", "seq": seq, "sent": T0, "readings": readings}), T0)


def _gaps(seq: int, *gaps: tuple[str, int, str]) -> Accepted:
    events: list[dict[str, Any]] = [
        {"device": d, "ts": T0, "kind": "data_gap", "action": "info", "severity": "warning",
         "evidence": {"count": n, "from": T0, "to": T0 + 1000, "reason": reason}}
        for d, n, reason in gaps]
    return Accepted("gw-a", EventsEnvelope.model_validate(
        {"v": 1, "gateway": "gw-a", "seq": seq, "sent": T0, "events": events}), T0)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    store.record_state("gw-a", "online", T0, "", "0.1.0", "b", {
        "lift-1": {"kind": "elevator", "profile": "elevator-gbt24476"},
        "lift-2": {"kind": "elevator", "profile": "elevator-gbt24476"}})
    # Seqs 2-3 were evicted (reported below), 5-10004 a reservation the gateway skipped.
    store.ingest([_data(1), _data(4), _gaps(10_005, ("lift-1", 7, "quota"), ("lift-2", 3, "quota")),
                  _gaps(10_006, ("lift-1", 2, "outbox_lost")), _data(10_007)])
    app = create_app(store)
    token = create_token(store.engine, "city-brain", Role.READER)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c
    store.close()


def test_sequence_counts_lost_readings_per_device_not_missing_numbers(
        client: TestClient) -> None:
    body = client.get("/api/v1/gateways/gw-a/sequence").json()
    assert body["last_seq"] == 10_007
    assert body["missing"] == [[2, 3], [5, 10_004]]
    assert body["lost_readings"] == 12
    assert body["lost_by_device"] == {"lift-1": 9, "lift-2": 3}
    assert len(body["reported_gaps"]) == 3


def test_sequence_of_an_unknown_gateway_is_404(client: TestClient) -> None:
    assert client.get("/api/v1/gateways/gw-zz/sequence").status_code == 404
