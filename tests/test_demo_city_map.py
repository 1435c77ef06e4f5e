"""The demo city's things lie inside the districts the pages' base map draws."""

from __future__ import annotations

from citygate.demo_city import DISTRICT_BOXES, ENVIRONMENT, LIFT_SITE_FACTS, PARKING
from collector.environment import load_environment_config
from collector.parking import ParkingModel, load_parking_config


def district_of(lat: float, lon: float) -> list[str]:
    return [d for d, (_, w, s, e, n) in DISTRICT_BOXES.items()
            if w <= lon <= e and s <= lat <= n]


def test_every_demo_place_is_in_the_district_it_names() -> None:
    env = load_environment_config(ENVIRONMENT)
    assert {d.id for d in env.districts} == set(DISTRICT_BOXES)
    for site in env.sites:
        assert district_of(site.lat, site.lon) == [site.district], site.id
        assert site.responsible.name and site.responsible.phone, site.id
    parking = load_parking_config(PARKING)
    for zone in parking.zones:
        assert district_of(zone.lat, zone.lon) == [zone.district], zone.id
        assert all(district_of(lat, lon) == [zone.district] for lon, lat in zone.outline)
    bays = ParkingModel(parking).locations
    assert len(bays) == sum(len(parking.spots_of(z)) for z in parking.zones)  # all placed
    assert all(district_of(lat, lon) == ["erqi"] for lat, lon in bays.values())
    for site, facts in LIFT_SITE_FACTS.items():
        assert district_of(facts["lat"], facts["lon"]) == [facts["grid"]], site
