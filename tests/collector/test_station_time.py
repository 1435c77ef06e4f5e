"""HJ 212 readings keep the station's own DataTime, whatever the gateway's clock says."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from collector.store import Accepted, Store
from devices import contract
from devices.hj212 import build
from devices.model import Reading
from edge.config import DeviceSection, Hj212TcpBus
from edge.hj212_source import Hj212Source, Line

MN = "010000A8900016F000169DC0"
# 2024-05-01 10:00:00 at +08:00 (the dust profile's utc_offset) is 02:00:00 UTC.
DATA_TIME_MS = int(datetime(2024, 5, 1, 2, 0, tzinfo=UTC).timestamp() * 1000)


def station_readings() -> list[Reading]:
    """One real-time dust upload through the gateway's HJ 212 source."""
    out: list[Reading] = []
    source = Hj212Source(Hj212TcpBus(name="hj", port=0),
                         [DeviceSection(id="dust-1", bus="hj", profile="dust-hj212", mn=MN)],
                         lambda items: out.extend(i for i in items if isinstance(i, Reading)))
    frame = build(qn="20240501100000000", st="39", cn="2011", pw="123456", mn=MN, flag=4,
                  cp={"DataTime": "20240501100000", "a34002-Rtd": "85", "a34002-Flag": "N"})
    source.feed(Line("hj", lambda _: None), frame)
    return out


def test_station_data_time_survives_an_unsynchronised_gateway_clock(store: Store) -> None:
    readings = station_readings()
    assert [r.ts for r in readings] == [DATA_TIME_MS]
    # The gateway's clock is half an hour ahead and not synchronised: its own readings are
    # shifted by the send/receive offset, but the station's DataTime is not the gateway's.
    received = DATA_TIME_MS + 60_000
    sent = received + 1_800_000
    body = contract.envelope("gw1", contract.DATA, 1, sent, contract.encode_batch(readings),
                             clock={"synced": False, "boot": "b1", "sent_boot": "b1"})
    env = contract.DataEnvelope.model_validate(orjson.loads(body))
    result = store.ingest([Accepted("gw1", env, received)])
    assert result.time_corrected == {}
    assert [r["ts"] for r in store.latest("dust-1")] == [DATA_TIME_MS]


def test_a_station_time_in_the_future_is_still_clamped(store: Store) -> None:
    readings = station_readings()
    received = DATA_TIME_MS - 3_600_000  # the station's clock is an hour ahead
    body = contract.envelope("gw1", contract.DATA, 1, received, contract.encode_batch(readings))
    env = contract.DataEnvelope.model_validate(orjson.loads(body))
    result = store.ingest([Accepted("gw1", env, received)])
    assert result.time_corrected == {"clamped": 1}
    assert [r["ts"] for r in store.latest("dust-1")] == [received]
