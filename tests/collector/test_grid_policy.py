"""The grid's pure parts with tables: placement, routing order, who is on call, photo sniffing,
CSV cells."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from collector.alarms.config import load_alarms_config
from collector.alarms.policy import RouteQuery, SiteIndex
from collector.grid.assessment import _cell
from collector.grid.geo import OutlineError, Outlines, parse_collection
from collector.grid.intake import ReportError, decode_photo, sniff_image
from collector.grid.routing import SiteFacts, decide
from collector.grid.shifts import Rotation, Shift, on_call
from tests.collector.grid_fixtures import ALARMS, IN_G1, IN_G2, city, feature, square

H = 3_600_000


def outlines(doc: dict[str, Any] | None = None) -> Outlines:
    return Outlines.of(parse_collection(doc or city()))


@pytest.mark.parametrize(("lat", "lon", "where"), [
    (*IN_G1, ("g1", "a1", "d1")),
    (*IN_G2, ("g2", "a1", "d1")),
    (34.80, 113.60, ("g1", "a1", "d1")),  # a corner of g1 is in g1
    (34.805, 113.61, ("g1", "a1", "d1")),  # on the edge of g1: in g1
    (34.76, 113.56, ("", "a1", "d1")),  # in the area, in no grid
    (34.71, 113.51, ("", "", "d1")),
    (10.0, 10.0, ("", "", "")),
])
def test_placement(lat: float, lon: float, where: tuple[str, str, str]) -> None:
    p = outlines().locate(lat, lon)
    assert (p.grid, p.area, p.district) == where


def test_overlapping_grids_place_in_the_lowest_id_and_hierarchy_comes_from_parents() -> None:
    doc = {"type": "FeatureCollection", "features": [
        feature("zz", "grid", square(1, 1, 2)), feature("aa", "grid", square(1.5, 1.5, 2)),
        feature("d", "district", square(0, 0, 10))]}
    p = outlines(doc).locate(2, 2)
    assert (p.grid, p.area, p.district) == ("aa", "", "d")  # d: the district around the point


def test_line_department_grid_then_area_then_district() -> None:
    o = outlines()
    at_g1 = o.locate(*IN_G1)
    assert o.department(at_g1, "dust") == ("crew-g1", "g1")  # g1's "*" comes first
    assert o.department(o.locate(34.71, 113.51), "dust") == ("env-d1", "d1")
    assert o.department(o.locate(34.71, 113.51), "noise") == ("", "")


CFG = load_alarms_config({**ALARMS, "routes": [{"kinds": ["fire"], "unit": "city-desk"}],
                          "sites": {"conf-site": {"unit": "crew-g2", "lat": IN_G1[0],
                                                  "lon": IN_G1[1]}}})


@pytest.mark.parametrize(("kind", "site", "facts", "evidence", "unit", "why"), [
    ("fire", "s", SiteFacts(*IN_G1, unit="lift-co"), {}, "city-desk", "[alarms] routes[0]"),
    ("door", "s", SiteFacts(*IN_G1, unit="lift-co"), {}, "lift-co", "site registry"),
    ("door", "conf-site", SiteFacts(), {}, "crew-g2", "[alarms.sites] conf-site"),
    ("door", "s", SiteFacts(*IN_G1, unit="ghost-co"), {}, "crew-g1", "line department"),
    ("door", "s", SiteFacts(*IN_G1), {"lat": IN_G2[0], "lon": IN_G2[1]}, "crew-g2",
     "line department for door of g2"),
    ("door", "s", SiteFacts(*IN_G1), {"lat": True, "lon": 1}, "crew-g1", "line department"),
    ("noise", "s", SiteFacts(34.71, 113.51), {}, "city-desk", "default unit"),
    ("noise", "s", SiteFacts(), {}, "city-desk", "default unit"),
])
def test_routing_order(kind: str, site: str, facts: SiteFacts, evidence: dict[str, Any],
                       unit: str, why: str) -> None:
    d = decide(RouteQuery(kind, site, evidence=evidence), facts, CFG, SiteIndex.from_config(CFG),
               outlines(), CFG.units)
    assert d.unit == unit and d.reason.startswith(why), d


def test_an_unknown_unit_is_skipped_and_said() -> None:
    d = decide(RouteQuery("noise", "s"), SiteFacts(34.71, 113.51, unit="ghost-co"), CFG,
               SiteIndex.from_config(CFG), outlines(), CFG.units)
    assert d.unit == "city-desk"
    assert "unknown unit 'ghost-co' of site s skipped" in d.reason


UNIT = CFG.units["crew-g1"]  # Li Wei (on call), Wang Fang


@pytest.mark.parametrize(("shifts", "rotation", "now", "who", "why"), [
    ([], None, 0, "Li Wei", "roster"),
    ([Shift(1, "Wang Fang", 0, 8 * H)], None, H, "Wang Fang", "shift 1"),
    ([Shift(1, "Wang Fang", 0, 8 * H)], None, 8 * H, "Li Wei", "roster"),  # [start, end)
    ([Shift(1, "Wang Fang", 0, 8 * H), Shift(2, "Li Wei", 2 * H, 3 * H)], None, 2 * H,
     "Li Wei", "shift 2"),  # the latest started wins: a hand-over
    ([Shift(1, "Ghost", 0, 8 * H)], None, H, "Li Wei", "roster"),  # not a member
    ([], Rotation(("Wang Fang", "Li Wei"), 0, 12 * H), 11 * H, "Wang Fang", "rotation"),
    ([], Rotation(("Wang Fang", "Li Wei"), 0, 12 * H), 12 * H, "Li Wei", "rotation"),
    ([], Rotation(("Wang Fang", "Li Wei"), 0, 12 * H), 24 * H, "Wang Fang", "rotation"),
    ([], Rotation(("Wang Fang", "Li Wei"), 5 * H, 12 * H), H, "Li Wei", "roster"),
    ([Shift(1, "Li Wei", 0, H)], Rotation(("Wang Fang",), 0, H), 0, "Li Wei", "shift 1"),
])
def test_who_is_on_call(shifts: list[Shift], rotation: Rotation | None, now: int, who: str,
                        why: str) -> None:
    oc = on_call(UNIT, shifts, rotation, now)
    assert (oc.member.name if oc.member else None, oc.why) == (who, why)


def test_nobody_on_call_in_an_empty_unit() -> None:
    assert on_call(None, [], None, 0).why == "nobody"


@pytest.mark.parametrize(("data", "kind"), [
    (b"\xff\xd8\xff\xe0rest", "image/jpeg"), (b"\x89PNG\r\n\x1a\nrest", "image/png"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"), (b"GIF89a", None),
    (b"<svg onload=alert(1)>", None), (b"RIFF\x00\x00\x00\x00WAVE", None), (b"", None),
])
def test_photo_type_is_sniffed_from_its_bytes(data: bytes, kind: str | None) -> None:
    assert sniff_image(data) == kind


def test_photo_bounds() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    assert decode_photo("data:image/jpeg;base64," + base64.b64encode(png).decode(),
                        1000) == (png, "image/png")  # the claim is not what counts
    with pytest.raises(ReportError) as big:
        decode_photo(base64.b64encode(png + bytes(1000)).decode(), 1000)
    assert big.value.status == 413


def test_outline_document_bounds() -> None:
    many = {"type": "FeatureCollection",
            "features": [feature(f"g{i}", "grid", square(1, 1)) for i in range(5001)]}
    with pytest.raises(OutlineError, match="5001 features; at most 5000"):
        parse_collection(many)
    twice = {"type": "FeatureCollection", "features": [feature("g", "grid", square(1, 1))] * 2}
    with pytest.raises(OutlineError, match="duplicate id"):
        parse_collection(twice)


@pytest.mark.parametrize(("value", "cell"), [
    ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1", "'+1"), ("-1", "'-1"), ("@a", "'@a"),
    ("crew-g1", "crew-g1"), (None, ""), (3, 3),
])
def test_csv_cells_never_run_as_formulas(value: Any, cell: Any) -> None:
    assert _cell(value) == cell


def test_a_unit_document_validates_back_to_the_same_unit() -> None:
    from collector.alarms.config import Unit
    from collector.grid.roster import unit_document

    unit = Unit.model_validate({"members": [{"name": "A", "on_call": False}], "escalation": [
        {"after": "0s", "channels": ["a"]}, {"after": "5min", "channels": ["b"], "to": "boss"},
        {"when": "not_resolved", "after": "2h", "channels": ["c"]}]})
    assert Unit.model_validate(unit_document(unit)) == unit
