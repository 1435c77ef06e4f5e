"""A demo city for the environment map: two districts (simple outlines) and four sites.

Coordinates are around Zhengzhou; the outlines are rough polygons, not survey data.
"""

from __future__ import annotations

from typing import Any

DEMO_SECTION: dict[str, Any] = {
    "defaults": {"nox_limit": 30, "nox_duration": "10min", "pm10_margin": 80},
    "districts": [
        {"id": "jinshui", "name": "Jinshui",
         "outline": [[113.62, 34.76], [113.70, 34.75], [113.78, 34.78], [113.77, 34.86],
                     [113.68, 34.88], [113.61, 34.83]]},
        {"id": "erqi", "name": "Erqi",
         "outline": [[113.58, 34.66], [113.66, 34.65], [113.70, 34.70], [113.70, 34.75],
                     [113.62, 34.76], [113.56, 34.72]]},
    ],
    "sites": [
        {"id": "site-metro12", "name": "Metro line 12 works", "lat": 34.80, "lon": 113.66,
         "district": "jinshui", "kind": "dust", "devices": ["dust-1"]},
        {"id": "site-east-tower", "name": "East tower block", "lat": 34.83, "lon": 113.73,
         "district": "jinshui", "kind": "dust", "devices": ["dust-2"]},
        {"id": "boiler-hospital", "name": "Hospital boiler house", "lat": 34.71,
         "lon": 113.63, "district": "erqi", "kind": "boiler", "devices": ["boiler-1"],
         "limits": {"nox_duration": "5min"}},
        {"id": "boiler-school", "name": "School heating plant", "lat": 34.69, "lon": 113.60,
         "district": "erqi", "kind": "boiler", "devices": ["boiler-2"]},
    ],
}
