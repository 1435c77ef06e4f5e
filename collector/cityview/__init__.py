"""The city at a glance: map layers for the control room and the operator's overview.

Reads what the features keep (alarms, parking, environment, lifts, gateways) through the app's
state at request time, so it owns no tables and needs no wiring beyond its router, which
`collector.api.create_app` includes.
"""

from collector.cityview.api import router

__all__ = ["router"]
