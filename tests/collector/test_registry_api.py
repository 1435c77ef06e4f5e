"""Registry API over a real store: role per endpoint, identities, claims, commissioning, hooks."""

from __future__ import annotations

import stat
from typing import Any

import pytest

from collector.registry import repo
from collector.registry.mqtt_auth import verify_password
from tests.collector.registry_fixtures import COLLECTOR_PASSWORD, ROLES, Hub, hub

__all__ = ["hub"]

A, T, C, R, B = "admin", "technician", "crew", "reader", "broker"
CONFIG = """schema_version = 1
[gateway]
id = "gw-1"
[[devices]]
id = "lift-1"
bus = "line1"
profile = "elevator-gbt24476"
unit = 3
"""
RUN = {"run_id": "run-00000001", "ts": 1_763_000_000_000, "technician": "li",
       "results": [{"check": "config", "status": "PASS"}], "config_toml": CONFIG}

# (method, path, body, roles admitted). Every endpoint of the registry and access routers.
ENDPOINTS: list[tuple[str, str, Any, set[str]]] = [
    ("GET", "/api/v1/sites", None, {A, T, C, R}),
    ("PUT", "/api/v1/sites/s2", {"name": "Site 2"}, {A}),
    ("POST", "/api/v1/gateways", {"site": "s1"}, {A, T}),
    ("GET", "/api/v1/registry/gateways", None, {A, T, C}),
    ("GET", "/api/v1/gateways/gw-1/registration", None, {A, T, C}),
    ("POST", "/api/v1/gateways/gw-1/credentials", None, {A}),
    ("DELETE", "/api/v1/gateways/gw-1/credentials", None, {A}),
    ("POST", "/api/v1/sites/s1/provision-tokens", None, {A, T}),
    ("POST", "/api/v1/gateways/gw-1/commissioning", RUN, {A, T}),
    ("GET", "/api/v1/gateways/gw-1/commissioning", None, {A, T, C}),
    ("GET", "/api/v1/gateways/gw-1/replies/abc", None, {A, T}),
    ("POST", "/api/v1/gateways/gw-1/echo?wait_s=0.1", None, {A, T}),
    ("POST", "/api/v1/gateways/gw-1/config", {"config_toml": CONFIG}, {A, T}),
    ("GET", "/api/v1/gateways/gw-1/config/abc", None, {A, T}),
    ("GET", "/api/v1/whoami", None, {A, T, C, R, B}),
    ("GET", "/api/v1/tokens", None, {A}),
    ("POST", "/api/v1/tokens", {"name": "x", "role": "reader"}, {A}),
    ("DELETE", "/api/v1/tokens/t-reader", None, {A}),
    ("POST", "/api/v1/mqtt/auth", {"username": "gw-1", "password": "x"}, {A, B}),
    ("POST", "/api/v1/mqtt/acl", {"username": "gw-1", "topic": "a", "action": "publish"},
     {A, B}),
]


def setup_gateway(hub: Hub) -> dict[str, Any]:
    r = hub.client.put("/api/v1/sites/s1", json={"name": "Erqi lifts", "lat": 34.72,
                                                 "lon": 113.62, "district": "Erqi",
                                                 "responsible_unit": "Erqi market bureau"},
                       headers=hub.as_(A))
    assert r.status_code == 204, r.text
    r = hub.client.post("/api/v1/gateways", json={"site": "s1", "id": "gw-1"},
                        headers=hub.as_(T))
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.mark.parametrize(("method", "path", "body", "admitted"), ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_each_role_reaches_only_what_it_may(hub: Hub, method: str, path: str, body: Any,
                                            admitted: set[str]) -> None:
    setup_gateway(hub)
    assert hub.client.request(method, path, json=body).status_code == 401
    bad = hub.client.request(method, path, json=body, headers={"Authorization": "Bearer cg_x"})
    assert bad.status_code == 401
    for role in ROLES:
        if role == "reader" and "tokens/t-reader" in path:
            continue  # the reader's own token is the one deleted by the admin's call
        r = hub.client.request(method, path, json=body, headers=hub.as_(role))
        if role in admitted:
            assert r.status_code not in (401, 403), (role, r.status_code, r.text)
        else:
            assert r.status_code == 403, (role, r.status_code, r.text)


def test_new_gateway_gets_credentials_the_broker_files_and_hook_accept(hub: Hub) -> None:
    issued = setup_gateway(hub)
    password = issued["mqtt"]["password"]
    assert issued["gateway_id"] == "gw-1" and issued["mqtt"]["username"] == "gw-1"
    assert issued["ca_pem"] == "CA-PEM"
    assert 'username = "gw-1"' in issued["config_toml"]
    files = hub.registry.settings.broker_files
    assert files is not None
    line = next(x for x in files.password_file.read_text().splitlines()
                if x.startswith("gw-1:"))
    assert verify_password(password, line.split(":", 1)[1])
    assert password not in files.password_file.read_text()
    assert stat.S_IMODE(files.password_file.stat().st_mode) == 0o600
    assert "user gw-1\ntopic write citygate/v1/gw-1/data" in files.acl_file.read_text()
    hook = hub.as_("broker")

    def login(user: str, pw: str, clientid: str) -> str:
        return str(hub.client.post("/api/v1/mqtt/auth", headers=hook, json={
            "username": user, "password": pw, "clientid": clientid}).json()["result"])

    assert login("gw-1", password, "gw-1") == "allow"
    assert login("gw-1", "no", "gw-1") == "deny"
    assert login("citygate-collector", COLLECTOR_PASSWORD, "citygate-collector") == "allow"
    assert login("citygate-collector", COLLECTOR_PASSWORD, "collector-3") == "allow"

    def acl(user: str, topic: str, action: str, clientid: str | None = None) -> str:
        return str(hub.client.post("/api/v1/mqtt/acl", headers=hook, json={
            "username": user, "topic": topic, "action": action,
            "clientid": user if clientid is None else clientid}).json()["result"])

    assert acl("gw-1", "citygate/v1/gw-1/data", "publish") == "allow"
    assert acl("gw-1", "citygate/v1/gw-2/data", "publish") == "deny"
    assert acl("gw-1", "citygate/v1/gw-1/cmd/+", "subscribe") == "allow"
    assert acl("gw-1", "citygate/v1/gw-1/cmd/config", "publish") == "deny"
    assert acl("gw-1", "citygate/v1/+/cmd/#", "subscribe") == "deny"
    assert acl("gw-1", "citygate/v1/_collector/+/state", "subscribe") == "allow"
    assert acl("citygate-collector", "citygate/v1/gw-1/cmd/config", "publish") == "allow"
    assert acl("citygate-collector", "citygate/v1/#", "subscribe") == "allow"


def test_the_hook_binds_each_credential_to_its_own_client_id(hub: Hub) -> None:
    password = setup_gateway(hub)["mqtt"]["password"]
    r = hub.client.post("/api/v1/gateways", json={"site": "s1", "id": "gw-2"},
                        headers=hub.as_(T))
    assert r.status_code == 201
    hook = hub.as_("broker")

    def login(user: str, pw: str, clientid: str) -> str:
        return str(hub.client.post("/api/v1/mqtt/auth", headers=hook, json={
            "username": user, "password": pw, "clientid": clientid}).json()["result"])

    # A gateway's right password with any client id but its own: the collector's, another
    # gateway's, a variant of its own, or none.
    for clientid in ("citygate-collector", "collector-1", "gw-2", "gw-gw-1", "gw-1-x", ""):
        assert login("gw-1", password, clientid) == "deny", clientid
    # The collector may not take a gateway's session either.
    assert login("citygate-collector", COLLECTOR_PASSWORD, "gw-1") == "deny"
    assert login("citygate-collector", COLLECTOR_PASSWORD, "elsewhere") == "deny"
    acl = hub.client.post("/api/v1/mqtt/acl", headers=hook, json={
        "username": "gw-1", "clientid": "gw-2", "topic": "citygate/v1/gw-1/data",
        "action": "publish"}).json()
    assert acl["result"] == "deny"


@pytest.mark.parametrize("gid", ["citygate-collector-cmd", "citygate-x", "collector-1",
                                 "collector", "admin"])
def test_gateway_ids_stay_out_of_the_collectors_client_ids(hub: Hub, gid: str) -> None:
    setup_gateway(hub)
    r = hub.client.post("/api/v1/gateways", json={"site": "s1", "id": gid}, headers=hub.as_(T))
    assert r.status_code == 422 and "collector's client ids" in r.json()["detail"][0]["msg"]
    hub.client.put("/api/v1/sites/collector-yard", json={"name": "Yard"}, headers=hub.as_(A))
    auto = hub.client.post("/api/v1/gateways", json={"site": "collector-yard"},
                           headers=hub.as_(T))
    assert auto.status_code == 201 and auto.json()["gateway_id"].startswith("gw-collector-yard-")


def test_duplicate_and_bad_ids_and_unknown_sites_are_explained(hub: Hub) -> None:
    setup_gateway(hub)
    dup = hub.client.post("/api/v1/gateways", json={"site": "s1", "id": "gw-1"},
                          headers=hub.as_(T))
    assert dup.status_code == 409 and "already exists" in dup.json()["detail"]
    bad = hub.client.post("/api/v1/gateways", json={"site": "s1", "id": "GW 1"},
                          headers=hub.as_(T))
    assert bad.status_code == 422
    nosite = hub.client.post("/api/v1/gateways", json={"site": "nowhere"}, headers=hub.as_(T))
    assert nosite.status_code == 404 and "create it first" in nosite.json()["detail"]
    auto = hub.client.post("/api/v1/gateways", json={"site": "s1"}, headers=hub.as_(T))
    assert auto.json()["gateway_id"].startswith("s1-")


def test_zero_touch_claim_works_once_and_not_after_expiry(hub: Hub) -> None:
    setup_gateway(hub)
    tok = hub.client.post("/api/v1/sites/s1/provision-tokens", headers=hub.as_(T)).json()
    first = hub.client.post("/api/v1/provision/claim", json={"token": tok["token"]})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["site_id"] == "s1" and body["mqtt"]["password"]
    assert body["gateway_id"] in hub.registry.settings.broker_files.password_file.read_text()  # type: ignore[union-attr]
    again = hub.client.post("/api/v1/provision/claim", json={"token": tok["token"]})
    assert again.status_code == 403 and "used or expired" in again.json()["detail"]
    token, _ = repo.create_provision_token(hub.registry.engine, "s1", -1.0, "t")
    expired = hub.client.post("/api/v1/provision/claim", json={"token": token})
    assert expired.status_code == 403


@pytest.mark.parametrize(("gid", "status"), [("gw-1", 409), ("GW 1", 422),
                                              ("collector-9", 422)])
def test_a_failed_claim_leaves_the_token_usable(hub: Hub, gid: str, status: int) -> None:
    setup_gateway(hub)
    tok = hub.client.post("/api/v1/sites/s1/provision-tokens", headers=hub.as_(T)).json()
    failed = hub.client.post("/api/v1/provision/claim",
                             json={"token": tok["token"], "gateway_id": gid})
    assert failed.status_code == status, failed.text
    retry = hub.client.post("/api/v1/provision/claim",
                            json={"token": tok["token"], "gateway_id": "gw-claimed"})
    assert retry.status_code == 201, retry.text
    assert retry.json()["gateway_id"] == "gw-claimed"
    spent = hub.client.post("/api/v1/provision/claim", json={"token": tok["token"]})
    assert spent.status_code == 403
    names = [g["gateway_id"] for g in hub.client.get("/api/v1/registry/gateways",
                                                     headers=hub.as_(A)).json()]
    assert names == ["gw-1", "gw-claimed"]


def test_commissioning_upload_is_idempotent_and_registers_devices(hub: Hub) -> None:
    setup_gateway(hub)
    url = "/api/v1/gateways/gw-1/commissioning"
    assert hub.client.post(url, json=RUN, headers=hub.as_(T)).status_code == 201
    assert hub.client.post(url, json=RUN, headers=hub.as_(T)).status_code == 200
    runs = hub.client.get(url, headers=hub.as_(C)).json()
    assert len(runs) == 1 and runs[0]["passed"] is True
    reg = hub.client.get("/api/v1/gateways/gw-1/registration", headers=hub.as_(C)).json()
    assert reg["devices"] == [{"gateway_id": "gw-1", "device_id": "lift-1", "bus": "line1",
                               "profile": "elevator-gbt24476", "unit": 3}]
    assert reg["commissioning"]["passed"] is True and "mqtt_hash" not in reg


def test_revoked_gateway_leaves_the_broker_files(hub: Hub) -> None:
    setup_gateway(hub)
    r = hub.client.delete("/api/v1/gateways/gw-1/credentials", headers=hub.as_(A))
    assert r.status_code == 204
    files = hub.registry.settings.broker_files
    assert files is not None
    assert "gw-1" not in files.password_file.read_text()
    assert "user gw-1" not in files.acl_file.read_text()


def test_reader_tokens_are_rate_limited(hub: Hub) -> None:
    r = hub.client.post("/api/v1/tokens", json={"name": "bus-company", "role": "reader",
                                                "rate_per_min": 3}, headers=hub.as_(A))
    headers = {"Authorization": f"Bearer {r.json()['token']}"}
    codes = [hub.client.get("/api/v1/sites", headers=headers).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = hub.client.get("/api/v1/sites", headers=headers)
    assert int(limited.headers["Retry-After"]) >= 1


def test_is_registered_follows_revocation(hub: Hub) -> None:
    setup_gateway(hub)
    assert hub.registry.is_registered("gw-1")
    assert not hub.registry.is_registered("gw-unknown")
    hub.client.delete("/api/v1/gateways/gw-1/credentials", headers=hub.as_(A))
    assert not hub.registry.is_registered("gw-1", max_age=0)
