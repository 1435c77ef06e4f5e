"""One token system through REST: crew tokens scoped to a unit, ops tokens, the last admin,
and one-time crew sign-in links (QR), next to the `[alarms]` TOML tokens that keep working."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from citygate.rig import served
from collector import auth
from collector.alarms import pages, router
from collector.api import create_app
from collector.features import open_store
from collector.registry import install
from collector.registry.service import Registry, RegistrySettings
from tests.collector.test_alarms_engine import CONFIG, Rig

ADMIN = "cg_admin-" + "a" * 20


@dataclass
class Api:
    """The collector's incident and access API over a real store, and its alarm rig."""

    client: TestClient
    rig: Rig

    def as_(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def token(self, name: str, role: str, **scope: Any) -> str:
        r = self.client.post("/api/v1/tokens", json={"name": name, "role": role, **scope},
                             headers=self.as_(ADMIN))
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def trapped(self, device: str = "lift-1") -> int:
        self.rig.events("gw-a", (device, "trapped_passenger", "raise"), severity="critical")
        return int(self.client.get("/api/v1/incidents", headers=self.as_(ADMIN)).json()[0]["id"])


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    store = open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    rig = Rig(store, CONFIG)
    app = create_app(store)
    app.state.alarms = rig.desk
    app.include_router(router)
    app.include_router(pages)
    install(app, Registry(store.engine, RegistrySettings(broker_urls=["mqtt://127.0.0.1:1"])))
    auth.create_token(store.engine, "root", auth.Role.ADMIN, token=ADMIN)
    with TestClient(app) as client:
        yield Api(client, rig)
    store.close()


# --- crew and ops API tokens on every incident route ---------------------------------------

def test_a_crew_api_token_works_on_its_units_incidents_only(api: Api) -> None:
    li = api.as_(api.token("li-phone", "crew", unit="crew-north", member="Li Wei"))
    zhao = api.as_(api.token("zhao-phone", "crew", unit="env-east", member="Zhao"))
    iid = api.trapped()
    c = api.client
    assert [i["id"] for i in c.get("/api/v1/incidents", headers=li).json()] == [iid]
    assert c.get("/api/v1/incidents", headers=zhao).json() == []
    assert c.get(f"/api/v1/incidents/{iid}", headers=li).status_code == 200
    assert c.get(f"/api/v1/incidents/{iid}", headers=zhao).status_code == 403
    assert c.get("/api/v1/incidents?unit=crew-north", headers=zhao).status_code == 403
    assert c.get("/api/v1/incidents/stats", headers=li).status_code == 200
    assert c.get("/api/v1/alarms", headers=li).status_code == 200
    assert c.get("/api/v1/silences", headers=li).status_code == 200
    assert c.post(f"/api/v1/incidents/{iid}/ack", headers=zhao).status_code == 403
    r = c.post(f"/api/v1/incidents/{iid}/ack", headers=li, json={"note": "on my way"})
    assert r.status_code == 200, r.text
    history = c.get(f"/api/v1/incidents/{iid}", headers=li).json()["history"]
    assert [(h["to"], h["who"]) for h in history][-1] == ("acknowledged", "Li Wei")
    assert c.get(f"/api/v1/incidents?token={api.token('li-2', 'crew', unit='crew-north')}") \
        .status_code == 200  # ?token= for the page's EventSource
    who = c.get("/api/v1/whoami", headers=li).json()
    assert who == {"name": "li-phone", "role": "crew", "unit": "crew-north",
                   "member": "Li Wei", "rate_per_min": None}


def test_ops_and_admin_tokens_see_every_unit_other_roles_do_not(api: Api) -> None:
    iid = api.trapped()
    api.rig.events("gw-plant", ("boiler-1", "boiler_nox_exceedance", "raise"))
    ops = api.as_(api.token("ops-desk", "ops"))
    for headers in (ops, api.as_(ADMIN)):
        r = api.client.get("/api/v1/incidents", headers=headers)
        assert r.status_code == 200 and iid in [i["id"] for i in r.json()]
    assert api.client.post(f"/api/v1/incidents/{iid}/ack", headers=ops).json()["state"] \
        == "acknowledged"
    for role in ("reader", "technician"):
        r = api.client.get("/api/v1/incidents", headers=api.as_(api.token(f"t-{role}", role)))
        assert r.status_code == 403, (role, r.text)


def test_revoking_a_crew_token_takes_effect_at_once(api: Api) -> None:
    li = api.as_(api.token("li-phone", "crew", unit="crew-north", member="Li Wei"))
    assert api.client.get("/api/v1/incidents", headers=li).status_code == 200
    r = api.client.delete("/api/v1/tokens/li-phone", headers=api.as_(ADMIN))
    assert r.status_code == 204
    assert api.client.get("/api/v1/incidents", headers=li).status_code == 401
    listed = {t["name"]: t for t in api.client.get("/api/v1/tokens",
                                                  headers=api.as_(ADMIN)).json()}
    assert listed["li-phone"]["revoked"] is True
    assert (listed["li-phone"]["unit"], listed["li-phone"]["member"]) == ("crew-north", "Li Wei")


def test_toml_tokens_keep_working_beside_api_tokens(api: Api) -> None:
    iid = api.trapped()
    assert [i["id"] for i in api.client.get("/api/v1/incidents", headers=api.as_("tok-li"))
            .json()] == [iid]
    assert len(api.client.get("/api/v1/incidents", headers=api.as_("tok-ops")).json()) == 1
    assert api.client.get("/api/v1/incidents", headers=api.as_("tok-zhao")).json() == []


@pytest.mark.parametrize(("body", "error"), [
    ({"role": "crew"}, "needs `unit`"),
    ({"role": "crew", "unit": "nowhere"}, "not defined under [alarms.units]"),
    ({"role": "reader", "unit": "crew-north"}, "for crew tokens"),
])
def test_crew_token_scope_is_checked(api: Api, body: dict[str, Any], error: str) -> None:
    r = api.client.post("/api/v1/tokens", json={"name": "x", **body}, headers=api.as_(ADMIN))
    assert r.status_code == 422 and error in r.text, r.text


def test_the_last_admin_token_cannot_be_revoked_or_replaced(api: Api) -> None:
    admin = api.as_(ADMIN)
    r = api.client.delete("/api/v1/tokens/root", headers=admin)
    assert r.status_code == 409 and "last valid admin token" in r.text
    r = api.client.post("/api/v1/tokens", json={"name": "root", "role": "reader"},
                        headers=admin)
    assert r.status_code == 409
    assert api.client.get("/api/v1/tokens", headers=admin).status_code == 200  # still admin
    second = api.as_(api.token("root-2", "admin"))
    assert api.client.delete("/api/v1/tokens/root", headers=second).status_code == 204
    assert api.client.get("/api/v1/tokens", headers=admin).status_code == 401
    assert api.client.delete("/api/v1/tokens/root-2", headers=second).status_code == 409


# --- one-time sign-in links ----------------------------------------------------------------

def link(api: Api, token: str = ADMIN, **body: Any) -> Any:
    return api.client.post("/api/v1/signin-links", headers=api.as_(token),
                           json={"member": "Li Wei", "unit": "crew-north", **body})


def code_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_a_signin_link_gives_a_crew_token_exactly_once(api: Api) -> None:
    iid = api.trapped()
    r = link(api, "tok-ops", ttl="10min")  # a TOML ops login may create links
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["url"].startswith("https://cg.test/signin/") and len(code_of(doc["url"])) == 43
    assert doc["qr_svg"].startswith("<svg") and doc["token_name"] == "crew.crew-north.li-wei"
    code = code_of(doc["url"])
    page = api.client.get(f"/signin/{code}")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["cache-control"] == "no-store"
    first = api.client.post(f"/api/v1/signin/{code}")  # the GET above did not spend it
    assert first.status_code == 200, first.text
    token = first.json()["token"]
    assert first.json() | {"token": "-"} == {"token": "-", "token_name": "crew.crew-north.li-wei",
                                             "role": "crew", "unit": "crew-north",
                                             "member": "Li Wei"}
    assert [i["id"] for i in api.client.get("/api/v1/incidents", headers=api.as_(token))
            .json()] == [iid]
    again = api.client.post(f"/api/v1/signin/{code}")
    assert again.status_code == 410 and "already been used" in again.text
    r = api.client.delete("/api/v1/tokens/crew.crew-north.li-wei", headers=api.as_(ADMIN))
    assert r.status_code == 204
    assert api.client.get("/api/v1/incidents", headers=api.as_(token)).status_code == 401


def test_an_expired_signin_link_is_refused(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    code = code_of(link(api, ttl="30s").json()["url"])
    real = auth.now_ms
    monkeypatch.setattr(auth, "now_ms", lambda: real() + 31_000)
    r = api.client.post(f"/api/v1/signin/{code}")
    assert r.status_code == 410 and "expired" in r.text


def test_failed_signin_attempts_are_rate_limited(api: Api) -> None:
    good = code_of(link(api).json()["url"])
    for i in range(10):
        assert api.client.post(f"/api/v1/signin/wrong-{i}").status_code == 404
    r = api.client.post(f"/api/v1/signin/{good}")
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 500
    api.client.app.state.signin_failures.window_s = 0  # the window passes
    assert api.client.post(f"/api/v1/signin/{good}").status_code == 200


@pytest.mark.parametrize(("token", "status"), [("tok-li", 403), ("nope", 401)])
def test_only_ops_create_signin_links(api: Api, token: str, status: int) -> None:
    assert link(api, token).status_code == status


@pytest.mark.parametrize(("body", "status"), [
    ({"unit": "nowhere"}, 422), ({"ttl": "8d"}, 422), ({"ttl": "5s"}, 422),
    ({"member": ""}, 422)])
def test_signin_link_input_is_checked(api: Api, body: dict[str, Any], status: int) -> None:
    assert link(api, **body).status_code == status


def test_an_open_stream_ends_when_its_token_is_revoked(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.alarms import api as incidents_api

    monkeypatch.setattr(incidents_api, "KEEPALIVE_S", 0.2)
    monkeypatch.setattr(incidents_api, "TOKEN_RECHECK_S", 0.2)
    token = api.token("li-phone", "crew", unit="crew-north", member="Li Wei")
    with served(api.client.app) as base, httpx.Client(base_url=base, timeout=10) as http, \
            http.stream("GET", f"/api/v1/incidents/stream?token={token}") as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert next(lines) == "retry: 3000"
        iid = api.trapped()
        seen = ""
        while f'"id":{iid}' not in seen:
            seen = next(lines)
        assert api.client.delete("/api/v1/tokens/li-phone",
                                 headers=api.as_(ADMIN)).status_code == 204
        deadline = time.monotonic() + 5
        rest = []
        for line in lines:  # ends when the server closes the stream
            rest.append(line)
            assert time.monotonic() < deadline, rest
        assert "event: signed-out" in rest
