"""GeoJSON (RFC 7946) response models shared by the map routes: [lon, lat] order, WGS-84.

Generic over the properties model, so each layer's properties are typed in the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

P = TypeVar("P")


class PointGeometry(BaseModel):
    """A point: [lon, lat]."""

    type: Literal["Point"] = "Point"
    coordinates: tuple[float, float] = Field(description="[longitude, latitude]")


class PolygonGeometry(BaseModel):
    """A polygon: one closed ring of [lon, lat] points."""

    type: Literal["Polygon"] = "Polygon"
    coordinates: list[list[tuple[float, float]]] = Field(
        description="[[[lon, lat], ...]]: the outer ring, first point repeated last")


class Feature(BaseModel, Generic[P]):
    """One mapped thing; `geometry` is null when its location is not known."""

    type: Literal["Feature"] = "Feature"
    id: str | int
    geometry: PointGeometry | PolygonGeometry | None
    properties: P


class FeatureCollection(BaseModel, Generic[P]):
    """A map layer."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[Feature[P]]


def point(lat: float | None, lon: float | None) -> PointGeometry | None:
    """A point geometry, or None without coordinates."""
    if lat is None or lon is None:
        return None
    return PointGeometry(coordinates=(lon, lat))


def polygon(ring: Sequence[tuple[float, float]]) -> PolygonGeometry:
    """A polygon from an open or closed ring of [lon, lat] points."""
    points = [(float(x), float(y)) for x, y in ring]
    if points and points[0] != points[-1]:
        points.append(points[0])
    return PolygonGeometry(coordinates=[points])


BBox = tuple[float, float, float, float]


def parse_bbox(text: str | None) -> BBox | None:
    """`minLon,minLat,maxLon,maxLat` as numbers in range, or ValueError saying what is wrong."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4 or len(text) > 200:
        raise ValueError("write bbox=minLon,minLat,maxLon,maxLat")
    try:
        w, s, e, n = (float(p) for p in parts)
    except ValueError:
        raise ValueError("bbox values must be numbers") from None
    if not (-180 <= w <= e <= 180 and -90 <= s <= n <= 90):
        raise ValueError("bbox must satisfy -180 <= minLon <= maxLon <= 180 and "
                         "-90 <= minLat <= maxLat <= 90")
    return (w, s, e, n)


def in_bbox(box: BBox | None, lat: float | None, lon: float | None) -> bool:
    """Whether a point lies in a box (everything does without a box; unplaced only then)."""
    if box is None:
        return True
    if lat is None or lon is None:
        return False
    return box[0] <= lon <= box[2] and box[1] <= lat <= box[3]
