"""Grid outlines as geography: validate a GeoJSON import and place points in district/area/grid.

Pure: no database, no clock. An outline set is parsed once into `Outlines`, whose STRtree index
answers "which grid is this point in" in logarithmic time, so placing every site and report
again after an import is cheap.

shapely (~22 MiB resident with numpy) is imported when the first outline is parsed or loaded,
not with this module: a collector without outlines does not carry it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from shapely.geometry import MultiPolygon, Point, Polygon
    from shapely.strtree import STRtree

Level = Literal["district", "area", "grid"]
LEVELS: tuple[Level, ...] = ("district", "area", "grid")
PARENT_LEVEL: dict[str, str | None] = {"district": None, "area": "district", "grid": "area"}

MAX_BYTES = 8_000_000  # an import file (a city's 189 grids with fine outlines is ~1 MB)
MAX_FEATURES = 5_000
MAX_FEATURE_VERTICES = 20_000
MAX_TOTAL_VERTICES = 500_000
MAX_ID = 100
MAX_NAME = 200
MAX_DEPARTMENTS = 100


class OutlineError(ValueError):
    """An outline set that cannot be used; `where` names the feature, the message says why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


@dataclass(frozen=True, slots=True)
class Outline:
    """One district, area or grid: its outline and the line departments per event kind."""

    id: str
    level: Level
    name: str
    parent: str
    departments: Mapping[str, str]
    geometry: Polygon | MultiPolygon

    def feature(self) -> dict[str, Any]:
        """As a GeoJSON feature (what was imported, normalised)."""
        import shapely.geometry

        return {"type": "Feature", "id": self.id,
                "properties": {"level": self.level, "name": self.name, "parent": self.parent,
                               "departments": dict(self.departments)},
                "geometry": shapely.geometry.mapping(self.geometry)}


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a point is: its grid, area and district ids ("" where none contains it)."""

    grid: str = ""
    area: str = ""
    district: str = ""

    @property
    def placed(self) -> bool:
        """Say whether any outline contains the point."""
        return bool(self.grid or self.area or self.district)

    def as_dict(self) -> dict[str, str]:
        """JSON-ready."""
        return {"grid": self.grid, "area": self.area, "district": self.district}


UNPLACED = Placement()


def _text(value: Any, where: str, key: str, limit: int, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise OutlineError(where, f"{key} must be text of at most {limit} characters")
    if required and not value.strip():
        raise OutlineError(where, f"{key} is required")
    return value


def _departments(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_DEPARTMENTS:
        raise OutlineError(where, "departments must be an object of event kind → unit "
                                  f"(at most {MAX_DEPARTMENTS})")
    return {_text(k, where, "departments key", MAX_ID, True):
            _text(v, where, f"departments.{k}", MAX_ID, True) for k, v in value.items()}


def _vertices(geometry: Any, where: str) -> int:
    """Count coordinates of a GeoJSON (Multi)Polygon before shapely builds anything from it."""
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    polys = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else None
    if polys is None or not isinstance(polys, list):
        raise OutlineError(where, "geometry must be a GeoJSON Polygon or MultiPolygon")
    count = 0
    for poly in polys:
        if not isinstance(poly, list) or not poly:
            raise OutlineError(where, "a polygon needs at least one ring")
        for ring in poly:
            if not isinstance(ring, list):
                raise OutlineError(where, "a ring must be a list of [lon, lat] positions")
            count += len(ring)
            if count > MAX_FEATURE_VERTICES:
                raise OutlineError(where, f"more than {MAX_FEATURE_VERTICES} vertices")
            for pos in ring:
                if (not isinstance(pos, list) or len(pos) not in (2, 3)
                        or not all(isinstance(c, int | float) and not isinstance(c, bool)
                                   for c in pos)
                        or not (-180 <= pos[0] <= 180 and -90 <= pos[1] <= 90)):
                    raise OutlineError(where, "positions must be [lon, lat] in WGS-84 degrees")
    return count


def _geometry(raw: Any, where: str) -> Polygon | MultiPolygon:
    from shapely.geometry import MultiPolygon, Polygon, shape
    from shapely.validation import explain_validity

    if not isinstance(raw, dict):
        raise OutlineError(where, "geometry is required")
    geom = shape(raw)
    if geom.is_empty:
        raise OutlineError(where, "geometry is empty")
    if not geom.is_valid:
        raise OutlineError(where, f"invalid polygon: {explain_validity(geom)}")
    assert isinstance(geom, Polygon | MultiPolygon)
    return geom


def parse_feature(raw: Any, index: int) -> tuple[Outline, int]:
    """One GeoJSON feature as an outline, and its vertex count; OutlineError when unusable."""
    where = f"features[{index}]"
    if not isinstance(raw, dict) or raw.get("type") != "Feature":
        raise OutlineError(where, "not a GeoJSON Feature")
    props = raw.get("properties") or {}
    if not isinstance(props, dict):
        raise OutlineError(where, "properties must be an object")
    fid = _text(raw.get("id", props.get("id")), where, "id", MAX_ID, True)
    where = f"{where} ({fid})"
    level = props.get("level")
    if level not in LEVELS:
        raise OutlineError(where, f"level must be one of {', '.join(LEVELS)}")
    geometry = raw.get("geometry")
    count = _vertices(geometry if isinstance(geometry, dict) else {}, where)
    return Outline(fid, level, _text(props.get("name"), where, "name", MAX_NAME),
                   _text(props.get("parent"), where, "parent", MAX_ID),
                   _departments(props.get("departments"), where),
                   _geometry(geometry, where)), count


def parse_collection(doc: Any) -> list[Outline]:
    """A GeoJSON FeatureCollection of outlines, checked for size, geometry and ids."""
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" \
            or not isinstance(doc.get("features"), list):
        raise OutlineError("document", "not a GeoJSON FeatureCollection")
    raw = doc["features"]
    if len(raw) > MAX_FEATURES:
        raise OutlineError("document", f"{len(raw)} features; at most {MAX_FEATURES}")
    out: list[Outline] = []
    total = 0
    seen: set[str] = set()
    for i, feature in enumerate(raw):
        outline, count = parse_feature(feature, i)
        total += count
        if total > MAX_TOTAL_VERTICES:
            raise OutlineError("document", f"more than {MAX_TOTAL_VERTICES} vertices in all")
        if outline.id in seen:
            raise OutlineError(f"features[{i}] ({outline.id})", "duplicate id")
        seen.add(outline.id)
        out.append(outline)
    return out


def check_hierarchy(outlines: Iterable[Outline]) -> None:
    """Every parent exists one level up: a grid's is an area, an area's is a district."""
    by_id = {o.id: o for o in outlines}
    for o in by_id.values():
        want = PARENT_LEVEL[o.level]
        if not o.parent:
            continue
        parent = by_id.get(o.parent)
        if want is None:
            raise OutlineError(o.id, "a district has no parent")
        if parent is None or parent.level != want:
            raise OutlineError(o.id, f"parent {o.parent!r} must be an existing {want}")


@dataclass
class Outlines:
    """An indexed outline set: placement of points and the chain grid → area → district."""

    by_id: dict[str, Outline] = field(default_factory=dict)
    _trees: dict[str, tuple[STRtree, list[Outline]]] = field(default_factory=dict)

    @classmethod
    def of(cls, outlines: Iterable[Outline]) -> Outlines:
        """Index outlines by level."""
        me = cls({o.id: o for o in outlines})
        for level in LEVELS:
            members = sorted((o for o in me.by_id.values() if o.level == level),
                             key=lambda o: o.id)
            if members:
                from shapely.strtree import STRtree

                me._trees[level] = (STRtree([o.geometry for o in members]), members)
        return me

    def _containing(self, level: str, point: Point) -> Outline | None:
        tree = self._trees.get(level)
        if tree is None:
            return None
        index, members = tree
        hits = sorted(int(i) for i in index.query(point, predicate="covered_by"))
        return members[hits[0]] if hits else None  # overlapping outlines: lowest id wins

    def locate(self, lat: float | None, lon: float | None) -> Placement:
        """The grid, area and district that contain a point (parents by the hierarchy)."""
        if lat is None or lon is None or not self._trees:
            return UNPLACED
        from shapely.geometry import Point

        point = Point(lon, lat)
        for level in ("grid", "area", "district"):
            hit = self._containing(level, point)
            if hit is not None:
                return self.chain(hit.id, point)
        return UNPLACED

    def chain(self, outline_id: str, point: Point | None = None) -> Placement:
        """The placement an outline stands for: itself and its parents."""
        ids: dict[str, str] = {}
        current = self.by_id.get(outline_id)
        while current is not None and current.level not in ids:
            ids[current.level] = current.id
            current = self.by_id.get(current.parent)
        if point is not None:  # a parent not named: the outline of that level around the point
            for level in ("area", "district"):
                if level not in ids and (hit := self._containing(level, point)) is not None:
                    ids[level] = hit.id
        return Placement(ids.get("grid", ""), ids.get("area", ""), ids.get("district", ""))

    def department(self, placement: Placement, kind: str) -> tuple[str, str]:
        """(unit, outline id) of the line department for a kind: grid first, then area,
        then district ("", "" when none names one). A "*" entry covers every kind."""
        for oid in (placement.grid, placement.area, placement.district):
            o = self.by_id.get(oid)
            if o is None:
                continue
            unit = o.departments.get(kind) or o.departments.get("*")
            if unit:
                return unit, oid
        return "", ""
