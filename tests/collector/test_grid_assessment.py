"""Department assessment over a seeded month equals the figures worked out by hand, through
the REST API (JSON and CSV) on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
import sqlalchemy as sa

from citygate.cli import main
from citygate.rig import served
from collector.alarms.tables import incident_history, incidents
from tests.collector.grid_fixtures import MIN, GridCity, grid_city

__all__ = ["grid_city"]

JAN = "2026-01-01T00:00:00Z"
FEB = "2026-02-01T00:00:00Z"
NOW = 1_771_113_600_000  # 2026-02-15T00:00:00Z


def _ms(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# unit, grid, kind, found_by, opened, assigned, stages, ack, arrive, resolve, by, close, reopened
# (step times in minutes after opening)
MONTH: list[tuple[Any, ...]] = [
    ("crew-g1", "g1", "door_fault", "device", "2026-01-02T10:00:00Z", True, 1,
     10, 30, 120, "Li Wei", 180, False),
    ("crew-g1", "g1", "trapped_passenger", "device", "2026-01-06T01:00:00Z", True, 1,
     2, 8, 90, "Li Wei", 100, False),
    ("crew-g1", "g1", "garbage", "citizen", "2026-01-13T08:00:00Z", True, 1,
     60, None, None, None, None, False),
    ("crew-g2", "g2", "illegal_dumping", "patrol", "2026-01-20T12:00:00Z", False, 1,
     20, 40, 600, "Zhao Lei", None, True),
    ("crew-g2", "g2", "door_fault", "device", "2026-01-21T00:00:00Z", True, 1,
     None, None, 30, "system", 60, False),
    ("env-d1", "", "dust", "device", "2026-01-31T23:00:00Z", False, 0,
     None, None, None, None, None, False),
    ("crew-g1", "g1", "door_fault", "device", "2026-02-02T00:00:00Z", True, 1,  # after
     5, None, None, None, None, False),
    ("crew-g1", "g1", "door_fault", "device", "2025-12-31T23:59:00Z", True, 1,  # before
     5, None, None, None, None, False),
]


def seed(g: GridCity) -> None:
    with g.hub.store.engine.begin() as conn:
        for n, (unit, grid, kind, found_by, opened, assigned, stages, ack, arrive, resolve,
                by, close, reopened) in enumerate(MONTH, 1):
            t0 = _ms(opened)

            def at(minutes: int | None, t0: int = t0) -> int | None:
                return None if minutes is None else t0 + minutes * MIN

            iid = conn.execute(sa.insert(incidents).values(
                alarm_id=n, unit=unit, site=f"site-{n}", grid=grid, district="d1", kind=kind,
                device_id=f"dev-{n}", severity="major", title=kind, state="open",
                found_by=found_by, opened_at=t0, updated_at=t0, stages_sent=stages,
                assignee="someone" if assigned else None, assigned_at=t0 if assigned else None,
                acked_at=at(ack), arrived_at=at(arrive), resolved_at=at(resolve),
                resolved_by=by, closed_at=at(close))).inserted_primary_key[0]  # type: ignore[index]
            if reopened:
                conn.execute(sa.insert(incident_history).values(
                    incident_id=iid, ts=t0 + 700 * MIN, from_state="resolved",
                    to_state="acknowledged", who="system", event="recurred"))


def times(ack: tuple[Any, Any], arrive: tuple[Any, Any], resolve: tuple[Any, Any],
          close: tuple[Any, Any], n: tuple[int, int, int, int]) -> dict[str, Any]:
    steps = zip(("acknowledge", "arrive", "resolve", "close"), (ack, arrive, resolve, close),
                n, strict=True)
    return {s: {"n": k, "mean_s": m, "p90_s": p} for s, (m, p), k in steps}


G1 = {"found": 3, "found_by": {"device": 2, "patrol": 0, "citizen": 1}, "dispatched": 3,
      "acknowledged": 3, "arrived": 2, "handled": 2, "closed": 2, "reopened": 0, "overdue": 2,
      "within_sla": 0.333,
      "times": times((1440.0, 3600.0), (1140.0, 1800.0), (6300.0, 7200.0), (8400.0, 10800.0),
                     (3, 2, 2, 2))}
G2 = {"found": 2, "found_by": {"device": 1, "patrol": 1, "citizen": 0}, "dispatched": 2,
      "acknowledged": 1, "arrived": 1, "handled": 1, "closed": 1, "reopened": 1, "overdue": 0,
      "within_sla": 1.0,
      "times": times((1200.0, 1200.0), (2400.0, 2400.0), (18900.0, 36000.0), (3600.0, 3600.0),
                     (1, 1, 2, 1))}
ENV = {"found": 1, "found_by": {"device": 1, "patrol": 0, "citizen": 0}, "dispatched": 0,
       "acknowledged": 0, "arrived": 0, "handled": 0, "closed": 0, "reopened": 0, "overdue": 1,
       "within_sla": 0.0, "times": times((None, None), (None, None), (None, None),
                                         (None, None), (0, 0, 0, 0))}
TOTAL_COUNTS = {"found": 6, "found_by": {"device": 4, "patrol": 1, "citizen": 1},
                "dispatched": 5, "acknowledged": 4, "arrived": 3, "handled": 3, "closed": 3,
                "reopened": 1, "overdue": 3, "within_sla": 0.5}


def without_weeks(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in ("weeks", "key")}


def get(g: GridCity, **params: str) -> Any:
    r = g.client.get("/api/v1/assessment", headers=g.h(),
                     params={"from": JAN, "to": FEB, **params})
    assert r.status_code == 200, r.text
    return r


def test_assessment_of_a_seeded_month_equals_the_hand_computed_figures(
        grid_city: GridCity) -> None:
    g = grid_city
    seed(g)
    g.clock.now = NOW
    got = get(g, by="unit").json()
    assert [x["key"] for x in got["groups"]] == ["crew-g1", "crew-g2", "env-d1"]
    assert [without_weeks(x) for x in got["groups"]] == [G1, G2, ENV]
    total = without_weeks(got["total"])
    assert {k: total[k] for k in TOTAL_COUNTS} == TOTAL_COUNTS
    # weeks start on Monday in Asia/Shanghai: the dust of Jan 31 23:00Z is Sunday Feb 1 there
    assert [(w["week"], w["found"]) for w in got["total"]["weeks"]] == [
        ("2025-12-29", 1), ("2026-01-05", 1), ("2026-01-12", 1), ("2026-01-19", 2),
        ("2026-01-26", 1)]
    assert [(w["week"], w["overdue"]) for w in got["groups"][0]["weeks"]] == [
        ("2025-12-29", 0), ("2026-01-05", 1), ("2026-01-12", 1)]
    by_grid = get(g, by="grid").json()
    assert [(x["key"], x["found"]) for x in by_grid["groups"]] == [("", 1), ("g1", 3),
                                                                   ("g2", 2)]
    by_district = get(g, by="district").json()
    assert [(x["key"], x["found"], x["handled"]) for x in by_district["groups"]] == \
        [("d1", 6, 3)]


def test_assessment_csv_page_and_access(grid_city: GridCity) -> None:
    g = grid_city
    seed(g)
    g.clock.now = NOW
    r = get(g, by="unit", format="csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="assessment-unit-2026-01-01-2026-02-01.csv"' in \
        r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    first = rows[0]
    assert (first["key"], first["week"], first["found"], first["found_citizen"],
            first["overdue"], first["within_sla"], first["acknowledge_p90_s"]) == \
        ("crew-g1", "", "3", "1", "2", "0.333", "3600.0")
    assert [r["key"] for r in rows if r["week"] == ""] == ["crew-g1", "crew-g2", "env-d1", "*"]
    assert len([r for r in rows if r["week"]]) == 3 + 1 + 1 + 5
    reader = g.client.post("/api/v1/tokens", headers=g.h(),
                           json={"name": "city-eval", "role": "reader"}).json()["token"]
    crew = g.client.post("/api/v1/tokens", headers=g.h(), json={
        "name": "li", "role": "crew", "unit": "crew-g1", "member": "Li Wei"}).json()["token"]
    url = "/api/v1/assessment"
    assert g.client.get(url, params={"from": JAN, "to": FEB},
                        headers=g.h(reader)).status_code == 200
    assert g.client.get(url, params={"from": JAN, "to": FEB},
                        headers=g.h(crew)).status_code == 403
    assert g.client.get(url, params={"from": FEB, "to": JAN},
                        headers=g.h()).status_code == 422
    assert g.client.get(url, params={"from": "soon", "to": FEB},
                        headers=g.h()).status_code == 422
    page = g.client.get("/assessment")
    assert page.status_code == 200 and "/static/js/assessment.js" in page.text


def test_cli_prints_the_assessment_as_csv(grid_city: GridCity,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    g = grid_city
    seed(g)
    g.clock.now = NOW
    with served(g.hub.app) as url:
        assert main(["grid", "assess", "--by", "district", "--from", JAN, "--to", FEB,
                     "--collector", url, "--token", g.admin]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert [(r["key"], r["found"], r["handled"]) for r in rows if not r["week"]] == \
            [("d1", "6", "3"), ("*", "6", "3")]
        assert main(["grid", "assess", "--from", FEB, "--to", JAN, "--collector", url,
                     "--token", g.admin]) == 2
        assert "error: assessment refused (422)" in capsys.readouterr().err
