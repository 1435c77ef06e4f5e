"""Who is looking at the map or overview, and which incidents they may see.

One dependency for the control room's routes: an ops or crew login of the alarms config, or an
API token. Ops and admin see every incident, crew their unit's; readers and technicians see
the map and the overview but no incidents (those name people and phones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request

from collector.auth import Role, admit, lookup, presented_token


@dataclass(frozen=True, slots=True)
class Viewer:
    """A caller and the units whose incidents it may see (None: all; False: none)."""

    name: str
    incident_units: list[str] | Literal[False] | None

    def may_see(self, unit: str) -> bool:
        """Whether an incident of this unit is visible."""
        units = self.incident_units
        return units is None or (units is not False and unit in units)


def get_viewer(request: Request) -> Viewer:
    """Authenticate the bearer token (header or `?token=`): 401 unknown, 403 wrong role."""
    presented = presented_token(request)
    if not presented:
        raise HTTPException(401, "this endpoint needs a token: send 'Authorization: Bearer "
                                 "<token>'", headers={"WWW-Authenticate": "Bearer"})
    desk = getattr(request.app.state, "alarms", None)
    if desk is not None:
        from collector.alarms.api import find_principal

        who = find_principal(desk.engine.cfg, presented)
        if who is not None:
            return Viewer(who.name, None if who.role == "ops" else list(who.units))
    central = lookup(request.app.state.store.engine, presented)
    if central is None:
        raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate":
                                                                      "Bearer"})
    admit(request, central)
    if central.role in (Role.ADMIN, Role.OPS):
        return Viewer(central.name, None)
    if central.role is Role.CREW and central.unit:
        return Viewer(central.name, [central.unit])
    if central.role in (Role.READER, Role.TECHNICIAN, Role.CREW):
        return Viewer(central.name, False)
    raise HTTPException(403, f"role {central.role.value!r} may not read the city map")


ViewerDep = Annotated[Viewer, Depends(get_viewer)]
