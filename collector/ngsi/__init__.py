"""City data hub feeds: NGSI-LD API (Smart Data Models), context-broker push, live streams,
webhook subscriptions, and history at city scale (aggregates + retention).

Wiring (see docs/hub-feed.md):
    migrations  collector.ngsi.MIGRATIONS (versions 40-49)
    hub         install_ngsi(hub) after the environment and parking features
"""

from collector.ngsi.install import HubFeedSettings, install_ngsi
from collector.ngsi.tables import MIGRATIONS

__all__ = ["MIGRATIONS", "HubFeedSettings", "install_ngsi"]
