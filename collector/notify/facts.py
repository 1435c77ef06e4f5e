"""The facts a crew needs from an incident, as labelled Facts every channel renders (pure).

Reads the incident's public shape (`site_info`, `lift`, `assignee`, `trapped_since`) and falls
back to its stored row (`site`, `opened_at` in epoch ms); whatever is missing is left out, so a
notice never fails for want of an address.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from collector.notify.model import Fact

RUNNING_KINDS = ("trapped_passenger",)  # "Trapped for"; other incidents show "Open for"


def epoch_ms(value: Any) -> int | None:
    """Epoch ms from epoch ms or an ISO 8601 string ("...Z"); None when absent or unreadable."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    if isinstance(value, int | float):
        return int(value)
    try:
        return int(datetime.fromisoformat(str(value)).timestamp() * 1000)
    except ValueError:
        return None


def tel_href(phone: str) -> str:
    """A tap-to-call link, or "" when the text holds no number."""
    digits = re.sub(r"[^0-9+]", "", phone)
    return f"tel:{digits}" if len(digits) >= 3 else ""


def map_href(lat: float, lon: float, name: str = "") -> str:
    """A web map marker (AMap URI API; the site's coordinates are WGS-84)."""
    query = {"position": f"{lon:.6f},{lat:.6f}", "name": name or "site",
             "coordinate": "wgs84", "callnative": "1"}
    return "https://uri.amap.com/marker?" + urlencode(query)


def _text(*parts: Any) -> str:
    return ", ".join(str(p).strip() for p in parts if p not in (None, "") and str(p).strip())


def _person(who: Any) -> tuple[str, str]:
    if isinstance(who, str):  # a stored row names the person only
        return who.strip(), ""
    if not isinstance(who, Mapping):
        return "", ""
    phone = str(who.get("phone") or "")
    return _text(who.get("name"), phone), tel_href(phone)


def _floor(lift: Any) -> str:
    if not isinstance(lift, Mapping) or lift.get("floor") in (None, ""):
        return ""
    door = lift.get("door")
    return f"{lift['floor']}" + (f" (door {door})" if door else "")


def incident_facts(inc: Mapping[str, Any]) -> tuple[Fact, ...]:
    """Site, address, map, floor, contact, assignee and the running time of an incident."""
    site = inc.get("site_info") if isinstance(inc.get("site_info"), Mapping) else {}
    assert isinstance(site, Mapping)
    facts = [Fact("site", "Site", _text(site.get("name")) or str(inc.get("site") or "")),
             Fact("address", "Address", _text(site.get("address"), site.get("building"),
                                              site.get("entrance")))]
    lat, lon = site.get("lat"), site.get("lon")
    if isinstance(lat, int | float) and isinstance(lon, int | float):
        facts.append(Fact("map", "Map", f"{lat:.5f}, {lon:.5f}",
                          href=map_href(lat, lon, _text(site.get("name")))))
    facts.append(Fact("floor", "Floor", _floor(inc.get("lift"))))
    contact, call = _person(site.get("contact"))
    facts.append(Fact("contact", "Site contact", contact, href=call))
    assignee, call = _person(inc.get("assignee"))
    facts.append(Fact("assignee", "Assigned to", assignee, href=call))
    trapped = inc.get("kind") in RUNNING_KINDS or bool(inc.get("life_safety"))
    since = epoch_ms(inc.get("trapped_since")) or epoch_ms(inc.get("opened_at"))
    if since is not None:
        facts.append(Fact("trapped_for", "Trapped for", since_ms=since) if trapped
                     else Fact("open_for", "Open for", since_ms=since))
    return tuple(f for f in facts if f.value or f.since_ms is not None)
