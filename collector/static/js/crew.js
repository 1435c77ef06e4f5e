// The crew's phone page: my unit's incidents, most urgent first, live; where to go and how urgent.
import {$, ApiError, ago, api, clock, html, live, render, safeUrl, serverNow, since, start} from "./common.js";
import {alertNewCritical, enableAlerts, alertsReady} from "./alerts.js";

const LABELS = {ack: "Acknowledge", arrive: "Arrived", resolve: "Resolved", close: "Close"};
const SHOWN = ["open", "acknowledged", "on_site", "resolved"];
const LIFT_REFRESH_MS = 15000;
// devices/quantities.py SERVICE_MODES: the API gives the enum's number.
const SERVICE_MODES = ["out of service", "normal", "inspection", "fire return", "firefighter",
  "emergency power", "earthquake", "unknown"];
const RANK = {critical: 0, major: 1, minor: 2, warning: 3, info: 4};
const incidents = new Map();
const overrides = new Map();  // incident id -> {action, message}: a refused step awaiting a reason
const seen = new Set();       // incidents this page has already shown (alert only on new ones)
let mapUrl = "https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=18/{lat}/{lon}";
let loaded = false;

const rank = (i) => i.severity_rank ?? RANK[i.severity] ?? 5;
/** Critical first, then the oldest first. */
const urgency = (a, b) => rank(a) - rank(b) || Date.parse(a.opened_at) - Date.parse(b.opened_at) || a.id - b.id;
const hhmm = (iso) => (iso ? new Date(iso).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", hourCycle: "h23"}) : "");
const tel = (phone) => "tel:" + String(phone).replace(/[^0-9+]/g, "");

function timerText(inc, now = serverNow()) {
  if (inc.trapped_since) {
    const end = inc.device_cleared_at ? Date.parse(inc.device_cleared_at) : now;
    return "trapped for " + clock((end - Date.parse(inc.trapped_since)) / 1000);
  }
  if (inc.resolved_at) return "resolved after " + clock((Date.parse(inc.resolved_at) - Date.parse(inc.opened_at)) / 1000);
  return "open for " + clock(since(inc.opened_at, now));
}

function mapLinks(site) {
  if (site?.lat === null || site?.lat === undefined || site?.lon === null || site?.lon === undefined) return "";
  const lat = Number(site.lat), lon = Number(site.lon);
  if (!Number.isFinite(lat) || !Number.isFinite(lon)) return "";
  const label = encodeURIComponent(site.name || site.address || "");
  const web = mapUrl.replaceAll("{lat}", String(lat)).replaceAll("{lon}", String(lon));
  return html`<a class="nav" href="${safeUrl(`geo:${lat},${lon}?q=${lat},${lon}(${label})`)}">Navigate</a>
    <a class="map" href="${safeUrl(web)}" target="_blank" rel="noopener noreferrer">Map</a>`;
}

function liftNow(lift) {
  if (!lift) return "";
  const parts = [];
  if (lift.floor !== null && lift.floor !== undefined) parts.push(`floor ${lift.floor}`);
  if (lift.door) parts.push(`door ${lift.door}`);
  if (lift.passenger_present) parts.push("passenger present");
  if (lift.car_running) parts.push("car moving");
  const mode = typeof lift.service_mode === "number" ? SERVICE_MODES[lift.service_mode] : lift.service_mode;
  if (mode && mode !== "normal" && mode !== "unknown") parts.push(String(mode).replaceAll("_", " "));
  if (!parts.length) return "";
  return html`<dt>Lift now</dt><dd class="lift-now" data-floor="${lift.floor ?? ""}" data-door="${lift.door ?? ""}">${parts.join(" · ")}
    ${lift.at ? html`<small>(${ago(lift.at)})</small>` : ""}</dd>`;
}

function escalation(inc) {
  const fired = inc.escalations || [];
  const next = inc.next_escalation;
  if (!fired.length && !next) return "";
  return html`<div class="escalation" data-stages="${fired.length}"><b>Escalation</b>
    <ol>${fired.map((e) => html`<li data-stage="${e.stage}">${e.text} <small>${hhmm(e.at)}</small></li>`)}</ol>
    ${next ? html`<small>next: ${next.text} at ${hhmm(next.due_at)}</small>` : ""}</div>`;
}

function notices(inc) {
  const out = [];
  if (inc.awaiting_confirmation) {
    out.push(html`<p class="notice cleared">Cleared by device, awaiting confirmation</p>`);
  } else if (inc.condition_present && (inc.conditions || []).length && inc.state === "on_site") {
    out.push(html`<p class="notice present">Device still reports: ${inc.conditions.join(", ")}</p>`);
  }
  if (inc.arrival_overdue && !inc.on_site_at) out.push(html`<p class="notice overdue">Arrival overdue (due ${hhmm(inc.arrive_by)})</p>`);
  return out;
}

function overrideForm(inc) {
  const o = overrides.get(inc.id);
  if (!o) return "";
  return html`<form class="override" data-id="${inc.id}" data-action="${o.action}">
    <p>${o.message}</p>
    <label>Why is it safe to ${LABELS[o.action] === "Close" ? "close" : "resolve"} anyway?
      <input name="reason" required maxlength="500" autocomplete="off"></label>
    <button type="submit">${LABELS[o.action]} with override</button></form>`;
}

function card(inc) {
  const site = inc.site_info || {};
  const contact = site.contact || {};
  const fault = inc.fault || {};
  const name = fault.en || inc.title;
  const buttons = (inc.allowed || []).map((a) => html`<button type="button" data-action="${a}" data-id="${inc.id}">${LABELS[a] || a}</button>`);
  const place = [site.address, site.building, site.entrance].filter(Boolean);
  return html`<section class="card ${inc.severity}" id="incident-${inc.id}" data-id="${inc.id}" data-state="${inc.state}"
      data-severity="${inc.severity}">
    <div class="top-line"><span class="sev ${inc.severity}">${String(inc.severity).toUpperCase()}</span>
      <span class="state ${inc.state}">${inc.state.replace("_", " ")}</span><span>#${inc.id}</span>
      <span class="timer" data-id="${inc.id}">${timerText(inc)}</span></div>
    <h2><span class="fault-name">${name}</span>${fault.zh && fault.zh !== fault.en ? html`<span class="zh" lang="zh">${fault.zh}</span>` : ""}</h2>
    <div class="where">${inc.device !== "*" ? inc.device : ""}${inc.device !== "*" ? " · " : ""}${site.name || inc.site}</div>
    ${notices(inc)}
    <dl class="facts">
      ${place.length ? html`<dt>Address</dt><dd class="address">${place.join(" · ")}</dd>` : ""}
      ${liftNow(inc.lift)}
      ${contact.name || contact.phone ? html`<dt>Contact</dt><dd class="contact">${contact.name || ""} ${contact.phone || ""}</dd>` : ""}
      <dt>Assigned</dt><dd class="assignee">${inc.assignee?.name || "nobody yet"}</dd>
      ${inc.arrive_by && !inc.on_site_at ? html`<dt>Arrive by</dt><dd>${hhmm(inc.arrive_by)}</dd>` : ""}
      <dt>Opened</dt><dd>${hhmm(inc.opened_at)}${inc.acknowledged_by ? ` · ack by ${inc.acknowledged_by}` : ""}${inc.occurrences > 1 ? ` · ${inc.occurrences}×` : ""}</dd>
    </dl>
    <div class="links">${contact.phone ? html`<a class="call" href="${safeUrl(tel(contact.phone))}">Call ${contact.name ? "site contact" : contact.phone}</a>` : ""}${mapLinks(site)}</div>
    ${escalation(inc)}
    ${buttons.length ? html`<textarea placeholder="Note (optional)" aria-label="note for incident ${inc.id}"></textarea>
      <div class="actions">${buttons}</div>` : ""}
    ${overrideForm(inc)}
    <p class="error" role="alert"></p></section>`;
}

/** A card; an incident the page cannot draw still shows as its title, never blanks the list. */
function safeCard(inc) {
  try {
    return card(inc);
  } catch (e) {
    return html`<section class="card ${inc.severity}" id="incident-${inc.id}" data-state="${inc.state}">
      <h2>${inc.title}</h2><p class="error">${e.message}</p></section>`;
  }
}

function renderCards() {
  const list = [...incidents.values()].filter((i) => SHOWN.includes(i.state)).sort(urgency);
  const box = $("incidents");
  // What the crew member is typing survives a pushed update.
  const typed = {};
  box.querySelectorAll(".card textarea, .card form.override input").forEach((t) => {
    if (t.value) typed[`#${CSS.escape(t.closest(".card").id)} ${t.tagName === "TEXTAREA" ? "textarea" : "form.override input"}`] = t.value;
  });
  render(box, list.length ? html`${list.map(safeCard)}` : html`<p class="empty">No open incidents.</p>`);
  for (const [selector, value] of Object.entries(typed)) {
    const t = document.querySelector(selector);
    if (t) t.value = value;
  }
  box.dataset.count = String(list.length);
  box.dataset.order = list.map((i) => i.id).join(",");
  document.body.dataset.updated = String(Number(document.body.dataset.updated || 0) + 1);
  if (location.hash && !box.dataset.scrolled) {
    const target = document.getElementById(location.hash.slice(1));
    if (target) { target.scrollIntoView(); box.dataset.scrolled = "1"; }
  }
}

function tick() {
  const now = serverNow();
  for (const el of document.querySelectorAll(".timer")) {
    const inc = incidents.get(Number(el.dataset.id));
    if (inc) el.textContent = timerText(inc, now);
  }
}

function refused(inc, action, e) {
  const d = e.body?.detail;
  if (e.status === 409 && d?.error === "condition_present") {
    overrides.set(inc.id, {action, message: d.message || `The device still reports ${(d.conditions || []).join(", ")}.`});
    renderCards();
    return true;
  }
  return false;
}

async function step(id, action, body, sec) {
  try {
    const inc = await api(`/api/v1/incidents/${id}/${action}`, {method: "POST", body});
    overrides.delete(id);
    const box = document.querySelector(`#incident-${id} textarea`);
    if (box) box.value = "";  // the note went with the step
    incidents.set(inc.id, inc);
    renderCards();
  } catch (e) {
    if (e instanceof ApiError && refused(incidents.get(id), action, e)) return;
    const allowed = e.body?.detail?.allowed;
    sec.querySelector(".error").textContent = e.message + (allowed ? ` (allowed: ${allowed.join(", ")})` : "");
    sec.querySelectorAll("button").forEach((b) => { b.disabled = false; });
  }
}

function onClick(ev) {
  const b = ev.target.closest("button[data-action]");
  if (!b) return;
  const sec = b.closest(".card");
  b.disabled = true;
  step(Number(b.dataset.id), b.dataset.action, {note: sec.querySelector("textarea")?.value || ""}, sec);
}

function onOverride(ev) {
  const form = ev.target.closest("form.override");
  if (!form) return;
  ev.preventDefault();
  const sec = form.closest(".card");
  const reason = form.elements.reason.value.trim();
  if (!reason) return;
  form.querySelector("button").disabled = true;
  step(Number(form.dataset.id), form.dataset.action,
    {note: sec.querySelector("textarea")?.value || "", override: true, reason}, sec);
}

function arrived(inc) {
  if (loaded && !seen.has(inc.id) && inc.severity === "critical" && inc.state === "open") alertNewCritical(inc);
  seen.add(inc.id);
}

let pushes = 0;  // counts pushed updates, so a list fetched before one cannot undo it
async function load() {
  const before = pushes;
  const list = await api("/api/v1/incidents?state=" + SHOWN.join(","));
  const newer = [...incidents.values()].filter((i) => (i._push || 0) > before);
  incidents.clear();
  list.forEach((i) => { arrived(i); incidents.set(i.id, i); });
  newer.forEach((i) => incidents.set(i.id, i));
  loaded = true;
  renderCards();
}

async function settings() {
  try {
    const s = await api("/pages/settings.json");
    if (s?.map_url) mapUrl = s.map_url;
  } catch { /* the default map link stands */ }
}

function showError(e) { $("error").textContent = e.message; }

async function main() {
  start();
  $("incidents").addEventListener("click", onClick);
  $("incidents").addEventListener("submit", onOverride);
  $("enable-alerts").addEventListener("click", () => enableAlerts().then((state) => { $("alerts-state").textContent = state; }));
  alertsReady().then((state) => { $("alerts-state").textContent = state; });
  await settings();
  try {
    await load();
  } catch (e) {
    if (e.status === 401 || e.status === 403) { document.body.dataset.sse = "no-token"; return; }
    showError(e);
  }
  live("/api/v1/incidents/stream", {
    incident: (inc) => { inc._push = ++pushes; arrived(inc); incidents.set(inc.id, inc); renderCards(); },
    reload: () => load().catch(showError),
  }, {onOpen: () => load().catch(showError)});
  setInterval(tick, 1000);
  // The lift's floor and door as of now: pushes come on incident changes, not on every reading.
  setInterval(() => { if (document.body.dataset.sse === "open") load().catch(showError); }, LIFT_REFRESH_MS);
}

main();
