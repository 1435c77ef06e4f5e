"""Sources from a CSV table or a GeoJSON FeatureCollection (pure: text in, sources and errors out).

CSV: a header row naming the SourceIn fields; `devices` is a `;`-separated list; `outline` is
optional (`lon lat;lon lat;...`). GeoJSON: a Feature per source, its `properties` holding the
fields and its geometry a Point or a Polygon (outer ring used). A bad row or feature is reported
with its line or index and the reason; the good ones are kept.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from collector.sources.model import MAX_OUTLINE, SourceIn

MAX_ROWS = 50_000
MAX_BYTES = 32 * 1024 * 1024


class ImportRefused(ValueError):
    """The whole file cannot be read (not CSV/GeoJSON, too large)."""


@dataclass
class Parsed:
    """Sources that validated, and one message per refused row or feature."""

    sources: list[SourceIn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _why(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where + ': ' if where else ''}{first['msg']}"


def _add(out: Parsed, where: str, raw: dict[str, Any], seen: set[str]) -> None:
    try:
        source = SourceIn.model_validate(raw)
    except ValidationError as exc:
        out.errors.append(f"{where}: {_why(exc)}")
        return
    if source.id in seen:
        out.errors.append(f"{where}: id {source.id!r} appears twice in the file")
        return
    seen.add(source.id)
    out.sources.append(source)


def parse_csv(text: str) -> Parsed:
    """Sources from CSV with a header row."""
    out, seen = Parsed(), set[str]()
    reader = csv.DictReader(io.StringIO(text))
    for n, row in enumerate(reader, start=2):
        if n - 1 > MAX_ROWS:
            raise ImportRefused(f"more than {MAX_ROWS} rows; split the file")
        if None in row:
            out.errors.append(f"line {n}: more cells than the header names")
            continue
        raw: dict[str, Any] = {k.strip(): v.strip() for k, v in row.items()
                               if k and v is not None and v.strip() != ""}
        try:
            for key in ("lat", "lon"):
                if key in raw:
                    raw[key] = float(raw[key])
            raw["devices"] = [d.strip() for d in raw.get("devices", "").split(";") if d.strip()]
            if "outline" in raw:
                raw["outline"] = _outline_text(raw["outline"])
        except ValueError as exc:
            out.errors.append(f"line {n}: {exc}")
            continue
        _add(out, f"line {n}", raw, seen)
    return out


def _outline_text(text: str) -> list[tuple[float, float]]:
    points = []
    for pair in text.split(";")[:MAX_OUTLINE + 1]:
        lon, _, lat = pair.strip().partition(" ")
        try:
            points.append((float(lon), float(lat)))
        except ValueError:
            raise ValueError(f"outline point {pair.strip()[:40]!r} is not 'lon lat'") from None
    return points


def parse_geojson(data: bytes) -> Parsed:
    """Sources from a GeoJSON FeatureCollection."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ImportRefused(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" \
            or not isinstance(doc.get("features"), list):
        raise ImportRefused("GeoJSON must be a FeatureCollection with a features list")
    if len(doc["features"]) > MAX_ROWS:
        raise ImportRefused(f"more than {MAX_ROWS} features; split the file")
    out, seen = Parsed(), set[str]()
    for i, feature in enumerate(doc["features"]):
        where = f"feature {i}"
        if not isinstance(feature, dict) or not isinstance(feature.get("properties"), dict):
            out.errors.append(f"{where}: a Feature with properties is needed")
            continue
        raw = dict(feature["properties"])
        if "id" not in raw and isinstance(feature.get("id"), str):
            raw["id"] = feature["id"]
        problem = _geometry(raw, feature.get("geometry"))
        if problem:
            out.errors.append(f"{where}: {problem}")
            continue
        _add(out, where, raw, seen)
    return out


def _geometry(raw: dict[str, Any], geometry: Any) -> str:
    """Put a Point's or Polygon's coordinates into `raw`; the reason when it cannot."""
    if geometry is None:
        return ""  # a truck: no fixed place
    if not isinstance(geometry, dict):
        return "geometry must be an object"
    coords = geometry.get("coordinates")
    try:
        if geometry.get("type") == "Point":
            raw["lon"], raw["lat"] = float(coords[0]), float(coords[1])  # type: ignore[index]
        elif geometry.get("type") == "Polygon":
            ring = coords[0][:MAX_OUTLINE + 2]  # type: ignore[index]
            points = [(float(p[0]), float(p[1])) for p in ring]
            raw["outline"] = points[:-1] if len(points) > 1 and points[0] == points[-1] \
                else points
        else:
            return "geometry must be a Point or a Polygon"
    except (TypeError, ValueError, IndexError, KeyError):
        return "geometry coordinates are not [lon, lat] numbers"
    return ""


def parse(data: bytes, content_type: str = "") -> Parsed:
    """CSV or GeoJSON, told apart by the content type or, failing that, the first byte."""
    if len(data) > MAX_BYTES:
        raise ImportRefused(f"the file is larger than {MAX_BYTES // (1024 * 1024)} MiB")
    kind = content_type.split(";", maxsplit=1)[0].strip().lower()
    if kind in ("application/geo+json", "application/json") or \
            (kind not in ("text/csv",) and data.lstrip()[:1] == b"{"):
        return parse_geojson(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportRefused("CSV must be UTF-8") from None
    return parse_csv(text)
