"""The device page in Chromium, at phone and desktop size: a write issued through the panel
reaches `done`, a refused value shows the collector's reason, a dangerous write asks for its
confirmation, a reader sees no form, and hostile text stays text."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from citygate.rig import served, wait_for
from collector import auth
from collector.commands import repo
from devices.commands import DeviceCommand, parse_command
from devices.contract import ReplyMessage
from tests.browser.conftest import ARTIFACTS, CHROMIUM
from tests.browser.demo_hub import DemoHub, demo_hub
from tests.collector.hostile_city import IMG, SCRIPT, SVG, HostileCity, hostile_city

if Path(CHROMIUM).exists():
    from playwright.sync_api import Page, expect
else:  # pragma: no cover - the module is skipped
    Page = Any

GATEWAY, LIFT, STATION = "gw-cmd-01", "lift-c01", "dust-c01"
SIZES = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 900}}
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""


class Gateways:
    """The broker side of the command service: what it sent, and a link that is up."""

    def __init__(self) -> None:
        self.sent: list[DeviceCommand] = []
        self.connected = threading.Event()
        self.connected.set()

    def send(self, gateway: str, name: str, payload: bytes) -> bool:
        self.sent.append(parse_command(payload))
        return True


@pytest.fixture
def city(tmp_path: Path) -> Iterator[tuple[DemoHub, Gateways]]:
    """The demo city's collector with a lift of the shipped profile behind its own gateway."""
    with demo_hub(tmp_path) as c:
        gateways = Gateways()
        c.hub.app.state.commands.channel = gateways
        now = int(time.time() * 1000)
        c.send(GATEWAY, "state", {"v": 1, "gateway": GATEWAY, "state": "online", "ts": now,
                                  "version": "1.0", "devices": {
                                      LIFT: {"kind": "elevator", "profile": "elevator-gbt24476"},
                                      STATION: {"kind": "dust_monitor",
                                                "profile": "dust-hj212"}}})
        c.send(GATEWAY, "data", {"readings": [
            {"device": LIFT, "ts": now, "values": {"floor": 3, "home_floor": 0,
                                                   "service_mode": 1}},
            {"device": STATION, "ts": now, "values": {"pm10": 61.0}}]})
        yield c, gateways


def reply(c: DemoHub, cmd: DeviceCommand, **detail: object) -> None:
    """The lift's gateway reports a status of a command."""
    c.hub.app.state.commands.on_reply(ReplyMessage(
        v=1, gateway=GATEWAY, command="device", id=cmd.id, ok=True,
        detail={"cv": 1, "at": int(time.time() * 1000), **detail}))


def open_device(page: Page, base: str, token: str, size: str, device: str = LIFT) -> None:
    page.set_viewport_size(SIZES[size])
    page.add_init_script(WATCH)
    page.goto(f"{base}/device?id={device}&token={token}")
    page.wait_for_selector('body[data-updated="1"]', state="attached", timeout=10_000)


def form(page: Page, point: str) -> Any:
    return page.locator(f'#forms form[data-point="{point}"]')


@pytest.mark.parametrize("size", list(SIZES))
def test_a_write_through_the_panel_reaches_done_and_shows_its_audit(
        page: Page, city: tuple[DemoHub, Gateways], size: str) -> None:
    c, gateways = city
    open_device(page, c.base, c.token, size)
    expect(page.locator("#f-kind")).to_have_text("elevator")
    expect(page.locator("#f-gateway")).to_contain_text(GATEWAY)
    expect(page.locator('#latest [data-quantity="service_mode"]')).to_contain_text("normal")
    home = form(page, "home_floor")
    expect(home.locator(".hint")).to_contain_text("-5 … 128")
    home.locator('input[name="value"]').fill("5")
    home.locator('button[type="submit"]').click()
    expect(home.locator(".outcome")).to_have_attribute("data-kind", "ok")
    cmd = wait_for(lambda: gateways.sent[0] if gateways.sent else None, 10, "the command sent")
    assert (cmd.device, cmd.args) == (LIFT, {"point": "home_floor", "value": 5})
    row = page.locator(f'#commands tr[data-command="{cmd.id}"]')
    expect(row).to_have_attribute("data-status", "sent")
    reply(c, cmd, status="accepted")
    reply(c, cmd, status="done", value=5)
    expect(row).to_have_attribute("data-status", "done", timeout=10_000)
    expect(row.locator('td[data-label="Result"]')).to_have_text("5")
    row.locator("button[data-audit]").click()
    trail = page.locator(f'tr[data-audit-of="{cmd.id}"]')
    for step in ("issued", "sent", "accepted", "done"):
        expect(trail).to_contain_text(step)
    expect(page.locator("#commands")).to_have_attribute("data-open", "0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"device-write-done-{size}.png"), full_page=True)
    assert page.evaluate("window.__violations") == []
    assert page.evaluate("document.documentElement.scrollWidth") <= SIZES[size]["width"]


@pytest.mark.parametrize("size", list(SIZES))
def test_a_refused_value_shows_the_collectors_reason(page: Page,
                                                     city: tuple[DemoHub, Gateways],
                                                     size: str) -> None:
    c, gateways = city
    open_device(page, c.base, c.token, size)
    home = form(page, "home_floor")
    home.locator('input[name="value"]').fill("129")  # the hint says 128 at most; the server judges
    home.locator('button[type="submit"]').click()
    outcome = home.locator(".outcome")
    expect(outcome).to_have_attribute("data-kind", "refused")
    expect(outcome.locator(".reason")).to_have_text("out_of_range")
    expect(outcome).to_contain_text("above 128")
    assert gateways.sent == []
    expect(page.locator("#commands")).to_have_attribute("data-count", "0")
    page.screenshot(path=str(ARTIFACTS / f"device-refused-{size}.png"), full_page=True)


@pytest.mark.parametrize("size", list(SIZES))
def test_a_dangerous_write_waits_for_the_confirm_button(page: Page,
                                                        city: tuple[DemoHub, Gateways],
                                                        size: str) -> None:
    c, gateways = city
    open_device(page, c.base, c.token, size)
    mode = form(page, "service_mode")
    expect(mode).to_contain_text("needs confirmation")
    mode.locator('select[name="value"]').select_option("0")
    mode.locator('button[type="submit"]').click()
    expect(mode.locator(".outcome")).to_have_attribute("data-kind", "awaiting")
    row = page.locator('#commands tr[data-status="awaiting_confirmation"]')
    expect(row).to_have_count(1)
    assert gateways.sent == []  # nothing leaves before the second step
    page.screenshot(path=str(ARTIFACTS / f"device-confirm-{size}.png"), full_page=True)
    # Four eyes: the token that issued it may not confirm it; a second operator does.
    row.locator("button[data-confirm]").click()
    expect(page.locator("#commands-note")).to_contain_text("same_person")
    assert gateways.sent == []
    second = auth.create_token(c.store.engine, f"ops-second-{size}", auth.Role.OPS)
    open_device(page, c.base, second, size)
    row = page.locator('#commands tr[data-status="awaiting_confirmation"]')
    row.locator("button[data-confirm]").click()
    cmd = wait_for(lambda: gateways.sent[0] if gateways.sent else None, 10, "the command sent")
    assert cmd.args == {"point": "service_mode", "value": 0}
    sent = page.locator(f'#commands tr[data-command="{cmd.id}"]')
    expect(sent).to_have_attribute("data-status", "sent")
    expect(sent.locator("button[data-confirm]")).to_have_count(0)
    expect(sent).to_contain_text("confirmed by")


@pytest.mark.parametrize("size", list(SIZES))
def test_a_reader_sees_the_device_but_no_form(page: Page, city: tuple[DemoHub, Gateways],
                                              size: str) -> None:
    c, _ = city
    reader = auth.create_token(c.store.engine, "city-viewer", auth.Role.READER)
    open_device(page, c.base, reader, size)
    expect(page.locator("#f-id")).to_have_text(LIFT)
    expect(page.locator("#panel")).to_have_attribute("data-may", "false")
    expect(page.locator("#panel-note")).to_contain_text("may not command")
    expect(page.locator("#forms form")).to_have_count(0)
    expect(page.locator("#latest")).not_to_have_attribute("data-count", "0")
    expect(page.locator("#sign-in")).to_have_count(0)  # a refusal is shown, not a sign-in
    expect(page.locator("#commands")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / f"device-reader-{size}.png"), full_page=True)


def test_a_station_offers_its_operations(page: Page, city: tuple[DemoHub, Gateways]) -> None:
    c, gateways = city
    open_device(page, c.base, c.token, "desktop", STATION)
    expect(page.locator("#forms form[data-op]")).to_have_count(4)
    interval = page.locator('#forms form[data-op="set_rtd_interval"] input[name="rtd_interval"]')
    expect(interval).to_have_attribute("max", "3600")
    history = page.locator('#forms form[data-op="request_history"]')
    history.locator('select[name="cn"]').select_option("2061")
    history.locator('input[name="begin"]').fill("2026-01-05T08:00")
    history.locator('input[name="end"]').fill("2026-01-20T08:00")  # over a week: refused
    history.locator('button[type="submit"]').click()
    expect(history.locator(".outcome .reason")).to_have_text("bad_args")
    expect(history.locator(".outcome")).to_contain_text("7 days")
    history.locator('input[name="end"]').fill("2026-01-05T10:00")
    history.locator('button[type="submit"]').click()
    expect(history.locator(".outcome")).to_have_attribute("data-kind", "ok")
    cmd = wait_for(lambda: gateways.sent[0] if gateways.sent else None, 10, "the command sent")
    assert cmd.op == "request_history" and cmd.args["cn"] == "2061"
    page.screenshot(path=str(ARTIFACTS / "device-station-desktop.png"), full_page=True)


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[HostileCity, str]]:
    with hostile_city(tmp_path) as c:
        c.feed_hostile()
        service = c.hub.app.state.commands
        now = int(time.time() * 1000)
        row = {"id": "c-hostile", "key": "k-hostile", "device_id": "lift-1",
               "gateway_id": "gw-tower", "op": "write",
               "args": orjson.dumps({"point": "home_floor", "value": 2}).decode(),
               "issuer": "ops-anna", "issuer_role": "ops", "issued": now,
               "expires": now + 60_000, "dangerous": False, "status": "sent", "updated": now}
        with service.engine.begin() as conn:
            repo.insert(conn, row, "ops-anna", now)
        service.on_reply(ReplyMessage(v=1, gateway="gw-tower", command="device",
                                      id="c-hostile", ok=True, detail={
                                          "cv": 1, "status": "failed", "at": now,
                                          "reason": SVG, "message": IMG}))
        with served(c.hub.app) as base:
            yield c, base


def test_hostile_text_on_the_device_page_stays_text(page: Page,
                                                    hostile: tuple[HostileCity, str]) -> None:
    c, base = hostile
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_device(page, base, c.token, "desktop", "lift-1")
    expect(page.locator("#f-kind")).to_have_text(f"lift {IMG}")
    expect(page.locator("#incidents")).to_contain_text("trapped_passenger")
    expect(page.locator("#incidents")).to_contain_text(SCRIPT)  # in its title (the site name)
    row = page.locator('#commands tr[data-command="c-hostile"]')
    expect(row.locator(".reason")).to_have_text(SVG)
    expect(row).to_contain_text(IMG)
    row.locator("button[data-audit]").click()
    expect(page.locator('tr[data-audit-of="c-hostile"]')).to_contain_text("failed")
    page.screenshot(path=str(ARTIFACTS / "device-xss.png"), full_page=True)
    page.goto(f"{base}/device?id={IMG}")  # a hostile id in the address: an error, as text
    page.wait_for_selector('body[data-updated="error"]', state="attached", timeout=10_000)
    expect(page.locator("#error")).to_contain_text(IMG)
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    assert page.evaluate("window.__violations") == []
    assert page.locator("img, script:not([src]), svg, [onerror], [onload]").count() == 0


def test_the_overview_and_the_control_room_link_devices_to_their_page(
        page: Page, city: tuple[DemoHub, Gateways]) -> None:
    c, _ = city
    c.trapped("gw-tcp-01", "lift-t01")
    page.set_viewport_size(SIZES["desktop"])
    page.goto(f"{c.base}/ops?token={c.token}")
    expect(page.locator('#incidents a.device-link[href="/device?id=lift-t01"]')).to_have_count(1)
    page.goto(f"{c.base}/")
    link = page.locator(f'#devices a.device-link[href="/device?id={LIFT}"]')
    link.click()
    page.wait_for_selector('body[data-updated="1"]', state="attached", timeout=10_000)
    expect(page.locator("#f-id")).to_have_text(LIFT)


def test_a_refusal_by_scope_after_the_page_opened_is_shown_in_the_form(
        page: Page, city: tuple[DemoHub, Gateways]) -> None:
    c, gateways = city
    crew = auth.create_token(c.store.engine, "crew-wang", auth.Role.CREW,
                             unit="lift-maintenance")
    c.store.move_device(LIFT, "gw-tcp-01")  # a site of the crew's unit
    open_device(page, c.base, crew, "phone")
    expect(page.locator("#panel")).to_have_attribute("data-may", "true")
    c.store.move_device(LIFT, GATEWAY)  # handed to a site of no unit meanwhile
    home = form(page, "home_floor")
    home.locator('input[name="value"]').fill("4")
    home.locator('button[type="submit"]').click()
    outcome = home.locator(".outcome")
    expect(outcome.locator(".reason")).to_have_text("forbidden")
    expect(outcome).to_contain_text("not to unit 'lift-maintenance'")
    expect(page.locator("#sign-in")).to_have_count(0)
    assert gateways.sent == []
    page.screenshot(path=str(ARTIFACTS / "device-forbidden-phone.png"), full_page=True)
