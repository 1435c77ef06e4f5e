"""Units, shifts, rotations and hand-over through the REST API, in force without a restart."""

from __future__ import annotations

from tests.collector.grid_fixtures import HOUR, MIN, T0, GridCity, grid_city

__all__ = ["grid_city"]


def page_to(g: GridCity) -> tuple[str, tuple[str, ...]]:
    """Assignee and phones of the last page sent."""
    _channel, notice = g.sent[-1]
    assignee = next(line for line in notice.text.splitlines() if "assigned to" in line)
    return assignee.split(": ", 1)[1], notice.mention_phones


def test_a_shift_moves_the_next_page_to_the_new_member(grid_city: GridCity) -> None:
    g = grid_city
    g.event("gw-a", "lift-1", "door_fault")  # default unit city-desk
    r = g.client.put("/api/v1/units/city-desk", headers=g.h(), json={
        "members": [{"name": "Desk", "phone": "100"}, {"name": "Night Desk", "phone": "200"}],
        "escalation": [{"after": "0s", "channels": ["push-desk"]}]})
    assert r.status_code == 204, r.text
    g.event("gw-a", "lift-2", "door_fault")
    assert page_to(g) == ("Desk", ("100",))
    r = g.client.post("/api/v1/units/city-desk/shifts", headers=g.h(), json={
        "member": "Night Desk", "starts_at": str(T0 + HOUR), "ends_at": str(T0 + 9 * HOUR)})
    assert r.status_code == 201, r.text
    g.clock.now = T0 + 2 * HOUR
    g.event("gw-a", "lift-3", "door_fault")
    assert page_to(g) == ("Night Desk", ("200",))
    assert g.client.get("/api/v1/units/city-desk/on-call", headers=g.h()).json() == {
        "member": "Night Desk", "phone": "200", "why": f"shift {r.json()['id']}",
        "until": "2026-01-01T09:00:00.000Z"}
    # the shift ends: back to the roster
    g.clock.now = T0 + 10 * HOUR
    g.event("gw-a", "lift-4", "door_fault")
    assert page_to(g) == ("Desk", ("100",))


def test_rotation_and_handover_move_pages_and_open_incidents(grid_city: GridCity) -> None:
    g = grid_city
    # crew-g1 from collector.toml: Li Wei (on call), Wang Fang
    r = g.client.put("/api/v1/units/crew-g1/rotation", headers=g.h(), json={
        "members": ["Wang Fang", "Li Wei"], "starts_at": "2026-01-01T00:00:00Z",
        "period": "12h"})
    assert r.status_code == 204, r.text
    g.engine.set_config(g.engine.cfg.model_copy(update={"default_unit": "crew-g1"}))
    g.event("gw-a", "lift-1", "door_fault")
    assert page_to(g)[0] == "Wang Fang"
    g.clock.now = T0 + 13 * HOUR
    g.event("gw-a", "lift-2", "door_fault")
    assert page_to(g)[0] == "Li Wei"
    li_incident = g.incidents()[-1]["id"]
    r = g.client.post("/api/v1/units/crew-g1/handover", headers=g.h(),
                      json={"to": "Wang Fang", "note": "Li is sick"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["from"], got["to"], got["incidents"], got["until"]) == \
        ("Li Wei", "Wang Fang", [li_incident], "2026-01-02T00:00:00.000Z")
    view = g.client.get(f"/api/v1/incidents/{li_incident}", headers=g.h()).json()
    assert view["assignee"]["name"] == "Wang Fang"
    g.event("gw-a", "lift-3", "door_fault")
    assert page_to(g)[0] == "Wang Fang"
    assert g.client.post("/api/v1/units/crew-g1/handover", headers=g.h(),
                         json={"to": "Wang Fang"}).status_code == 409
    assert g.client.post("/api/v1/units/crew-g1/handover", headers=g.h(),
                         json={"to": "Nobody"}).status_code == 422


def test_roster_changes_need_ops_and_known_members(grid_city: GridCity) -> None:
    g = grid_city
    crew = g.client.post("/api/v1/tokens", headers=g.h(), json={
        "name": "li", "role": "crew", "unit": "crew-g1", "member": "Li Wei"}).json()["token"]
    body = {"member": "Li Wei", "starts_at": str(T0), "ends_at": str(T0 + HOUR)}
    assert g.client.post("/api/v1/units/crew-g1/shifts", headers=g.h(crew),
                         json=body).status_code == 403
    assert g.client.get("/api/v1/units/crew-g2/on-call", headers=g.h(crew)).status_code == 403
    assert [u["id"] for u in g.client.get("/api/v1/units", headers=g.h(crew)).json()] == \
        ["crew-g1"]
    bad = [{**body, "member": "Nobody"}, {**body, "ends_at": str(T0)},
           {**body, "ends_at": str(T0 + 40 * 24 * HOUR)}]
    for b in bad:
        assert g.client.post("/api/v1/units/crew-g1/shifts", headers=g.h(),
                             json=b).status_code == 422, b
    assert g.client.put("/api/v1/units/x", headers=g.h(), json={
        "members": [{"name": "A", "token_hash": "not-hex"}]}).status_code == 422
    assert g.client.delete("/api/v1/units/crew-g1", headers=g.h()).status_code == 409
    # a crew member hands over within their own unit
    r = g.client.post("/api/v1/units/crew-g1/handover", headers=g.h(crew),
                      json={"to": "Wang Fang"})
    assert r.status_code == 200, r.text


def test_later_stages_mention_whoever_is_on_call_then(grid_city: GridCity) -> None:
    g = grid_city
    people = [{"name": n, "phone": p} for n, p in
              (("Desk", "100"), ("Night Desk", "200"), ("Spare", "300"))]  # all on_call
    r = g.client.put("/api/v1/units/city-desk", headers=g.h(), json={
        "members": people,
        "escalation": [{"after": "0s", "channels": ["push-desk"]},
                       {"after": "5min", "channels": ["push-boss"], "to": "supervisor"}]})
    assert r.status_code == 204, r.text
    g.client.post("/api/v1/units/city-desk/shifts", headers=g.h(), json={
        "member": "Night Desk", "starts_at": str(T0), "ends_at": str(T0 + 8 * HOUR)})
    g.event("gw-a", "lift-1", "door_fault")
    assert page_to(g) == ("Night Desk", ("200",))
    g.clock.now = T0 + 6 * MIN
    g.engine.tick()
    channel, notice = g.sent[-1]
    # the roster flags all three as on call; the shift says only Night Desk is
    assert (channel, notice.mention_phones) == ("push-boss", ("200",))
