// The control room: the city map (incidents, lifts, gateways, parking, environment), every
// incident with its running age and SLA colour (filter, sort, acknowledge, close, notes,
// history), gateway health, summary tiles, the high-risk lifts per district, overrides,
// silences, closed-loop figures and sign-in links for crew phones.
import {$, ApiError, ago, api, clock, deviceLink, duration, html, live, missing, render, serverNow, start} from "./common.js";
import {cityMap, legend, markerLayer, parkingLevel} from "./map.js";

const incidents = new Map();
const details = new Map();     // incident id -> {version, history} for incidents with overrides
const closing = new Map();     // incident id -> message: a refused Close awaiting a reason
const expanded = new Set();    // incidents whose history is shown
const noting = new Set();      // incidents with the note form open
const histories = new Map();   // incident id -> history list (for the expanded rows)
const SEVERITY = {critical: 0, major: 1, minor: 2, warning: 3};
const STATES = ["open", "acknowledged", "on_site", "resolved", "closed"];
const LAYERS = [["incidents", "Incidents"], ["lifts", "Lifts"], ["gateways", "Gateways"],
  ["parking", "Parking zones"], ["environment", "Environment sites"]];
let sortKey = "urgency", sortDir = 1, view = null, layers = {}, gatewayList = [];
const hm = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const hhmm = (iso) => (iso ? new Date(iso).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", hourCycle: "h23"}) : "");

function age(inc, now = serverNow()) {
  const end = inc.closed_at ? Date.parse(inc.closed_at) : now;
  return clock((end - Date.parse(inc.opened_at)) / 1000);
}

/** A short time: "08:59" today, "3 Dec 08:59" on another day. */
function short(iso) {
  const t = new Date(iso);
  const hhmmText = t.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", hourCycle: "h23"});
  return t.toDateString() === new Date(serverNow()).toDateString() ? hhmmText
    : t.toLocaleDateString([], {day: "numeric", month: "short"}) + " " + hhmmText;
}

function steps(i) {
  const done = [["ack", i.acknowledged_at, i.acknowledged_by], ["on site", i.on_site_at, i.on_site_by],
    ["resolved", i.resolved_at, i.resolved_by], ["closed", i.closed_at, i.closed_by]].filter(([, at]) => at);
  return html`${done.map(([name, at, who]) => html`<div>${name} ${short(at)} <small>${who || ""}</small></div>`)}`;
}

function escalation(inc) {
  const fired = inc.escalations || [];
  const next = inc.next_escalation;
  return html`<ol>${fired.map((e) => html`<li data-stage="${e.stage}">${e.text} <small>${hhmm(e.at)}</small></li>`)}</ol>
    ${next ? html`<small>next: ${next.text} at ${hhmm(next.due_at)}</small>` : ""}
    ${!fired.length && !next && inc.escalation_stages_sent ? html`<small>${inc.escalation_stages_sent} stage(s) sent</small>` : ""}`;
}


/** The SLA of an incident: the collector's verdict, or one from arrive-by when it has none. */
export function sla(i, now = serverNow()) {
  if (i.sla) return i.sla;
  if (!i.arrive_by) return {state: "none", colour: "grey"};
  const due = Date.parse(i.arrive_by);
  if (i.on_site_at) return {state: Date.parse(i.on_site_at) <= due ? "met" : "breached", colour: Date.parse(i.on_site_at) <= due ? "green" : "red", due_at: i.arrive_by};
  if (i.state === "closed" || i.state === "resolved") return {state: "none", colour: "grey"};
  const left = due - now, total = due - Date.parse(i.opened_at);
  if (left <= 0) return {state: "breached", colour: "red", due_at: i.arrive_by};
  return left < total * 0.25 ? {state: "due_soon", colour: "amber", due_at: i.arrive_by} : {state: "ok", colour: "green", due_at: i.arrive_by};
}
const district = (i) => i.district || i.grid || "";
const where = (i) => ({lat: i.lat ?? i.site_info?.lat ?? null, lon: i.lon ?? i.site_info?.lon ?? null});

function actions(inc) {
  const allowed = inc.allowed || [];
  const refused = closing.get(inc.id);
  return html`<div class="actions">
    ${allowed.includes("ack") ? html`<button type="button" data-act="ack" data-id="${inc.id}">Acknowledge</button>` : ""}
    ${allowed.includes("close") && !refused ? html`<button type="button" data-close="${inc.id}" class="secondary">Close</button>` : ""}
    <button type="button" class="secondary" data-note="${inc.id}">Note</button>
    <button type="button" class="secondary" data-history="${inc.id}" aria-expanded="${expanded.has(inc.id)}">History</button></div>
    ${refused ? html`<form class="close-form" data-id="${inc.id}"><small>${refused}</small>
      <input name="reason" required maxlength="500" placeholder="reason for the override" aria-label="override reason for incident ${inc.id}">
      <button type="submit">Close anyway</button></form>` : ""}
    ${noting.has(inc.id) ? html`<form class="note-form" data-id="${inc.id}">
      <input name="note" required maxlength="1000" placeholder="note for the log" aria-label="note for incident ${inc.id}">
      <button type="submit">Add note</button></form>` : ""}`;
}

function row(i) {
  const name = i.fault?.en || i.title;
  const site = i.site_info?.name || i.site;
  const s = sla(i);
  const overdue = s.state === "breached" && !i.on_site_at;
  const main = html`<tr id="incident-${i.id}" data-state="${i.state}" data-sla="${s.state}" class="${overdue ? "overdue" : ""} ${i.state === "closed" ? "closed-row" : ""}">
    <td data-label="#">${i.id}</td><td data-label="Severity"><span class="sev ${i.severity}">${i.severity}</span></td>
    <td class="${i.state}" data-label="State">${i.state.replace("_", " ")}${i.awaiting_confirmation ? html`<br><span class="tag ok">cleared by device</span>` : ""}</td>
    <td class="age" data-id="${i.id}" data-sla="${s.colour}" data-label="Age">${age(i)}</td>
    <td data-label="Unit">${i.unit || "unassigned"}${i.assignee?.name ? html`<br><small>${i.assignee.name}</small>` : ""}</td>
    <td class="title" data-label="Incident"><b>${name}</b> ${i.device !== "*" ? deviceLink(i.device) : ""}<br><small>${site}${district(i) ? ` · ${district(i)}` : ""}${i.occurrences > 1 ? ` · ${i.occurrences}×` : ""}</small>
      ${(i.devices || []).length > 1 ? html`<br><small>${i.devices.length} devices: ${i.devices.slice(0, 6).join(", ")}${i.devices.length > 6 ? "…" : ""}</small>` : ""}
      ${overdue ? html`<br><span class="tag">arrival overdue</span>` : s.state === "due_soon" ? html`<br><span class="tag">arrival due ${hhmm(s.due_at)}</span>` : ""}</td>
    <td class="esc" data-label="Escalation">${escalation(i)}</td>
    <td class="steps">${steps(i)}</td>
    <td class="num">${i.overrides ? html`${i.overrides} override(s)` : ""}</td><td>${actions(i)}</td></tr>`;
  if (!expanded.has(i.id)) return main;
  const h = histories.get(i.id);
  return html`${main}<tr class="history-row" data-history-of="${i.id}"><td></td><td colspan="9">${h ? html`<ol>${h.map((x) => html`<li>${short(x.at)} <b>${x.who || "system"}</b>
    ${x.event === "note" ? "noted" : html`${x.from || "–"} → ${x.to || "–"}`}${x.note ? html`: ${x.note}` : ""}
    ${x.override ? html` <span class="tag">override: ${x.override.reason}${(x.override.conditions || []).length ? ` (still reported: ${x.override.conditions.join(", ")})` : ""}</span>` : ""}</li>`)}</ol>` : "loading…"}</td></tr>`;
}

function filtered() {
  const f = $("filters").elements;
  const want = {unit: f.unit.value, kind: f.kind.value, district: f.district.value, state: f.state.value};
  return [...incidents.values()].filter((i) => (!want.unit || (i.unit || "") === want.unit)
    && (!want.kind || i.kind === want.kind) && (!want.district || district(i) === want.district)
    && (!want.state || (want.state === "active" ? i.state !== "closed" : i.state === want.state)));
}

const SORTS = {
  id: (a, b) => a.id - b.id,
  severity: (a, b) => (SEVERITY[a.severity] ?? 9) - (SEVERITY[b.severity] ?? 9),
  state: (a, b) => STATES.indexOf(a.state) - STATES.indexOf(b.state),
  age: (a, b) => Date.parse(b.opened_at) - Date.parse(a.opened_at),
  unit: (a, b) => String(a.unit || "").localeCompare(String(b.unit || "")),
  kind: (a, b) => String(a.kind).localeCompare(String(b.kind)),
  // The default: breached SLA first, then by severity, then the oldest first.
  urgency: (a, b) => (Number(sla(b).state === "breached") - Number(sla(a).state === "breached"))
    || SORTS.severity(a, b) || Date.parse(a.opened_at) - Date.parse(b.opened_at),
};

function options(select, values) {
  const current = select.value;
  const first = select.options[0];
  render(select, html`<option value="${first.value}">${first.textContent}</option>${[...values].filter(Boolean).sort().map((v) => html`<option>${v}</option>`)}`);
  select.value = [...select.options].some((o) => o.value === current) ? current : first.value;
}

function renderIncidents() {
  const all = [...incidents.values()];
  const count = (states) => all.filter((i) => states.includes(i.state)).length;
  $("n-open").textContent = count(["open"]);
  $("n-working").textContent = count(["acknowledged", "on_site"]);
  $("n-resolved").textContent = count(["resolved"]);
  $("n-breached").textContent = all.filter((i) => i.state !== "closed" && sla(i).state === "breached").length;
  const f = $("filters").elements;
  options(f.unit, new Set(all.map((i) => i.unit)));
  options(f.kind, new Set(all.map((i) => i.kind)));
  options(f.district, new Set(all.map(district)));
  const list = filtered().sort((a, b) => sortDir * SORTS[sortKey](a, b) || b.id - a.id);
  const typed = [...document.querySelectorAll("form.close-form, form.note-form")].map((x) => [x.className, x.dataset.id, x.elements[0].value]);
  render(document.querySelector("#incidents tbody"), list.length ? html`${list.map(row)}`
    : html`<tr><td colspan="10"><small>No incident matches.</small></td></tr>`);
  for (const [cls, id, value] of typed) {  // what is being typed survives a pushed update
    const form = document.querySelector(`form.${cls.split(" ")[0]}[data-id="${CSS.escape(id)}"]`);
    if (form && value) form.elements[0].value = value;
  }
  $("incidents").dataset.count = String(all.length);
  $("incidents").dataset.shown = String(list.length);
  $("shown").textContent = `${list.length} of ${all.length} shown`;
  document.querySelectorAll("th button.sort").forEach((b) => {
    if (b.dataset.sort === sortKey) b.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
    else b.removeAttribute("aria-sort");
  });
  document.body.dataset.updated = String(Number(document.body.dataset.updated || 0) + 1);
  loadOverrides().catch(showError);
  mapSoon();
}

function tick() {
  const now = serverNow();
  for (const el of document.querySelectorAll("td.age")) {
    const inc = incidents.get(Number(el.dataset.id));
    if (!inc) continue;
    el.textContent = age(inc, now);
    el.dataset.sla = sla(inc, now).colour;
  }
}

async function loadOverrides() {
  const wanted = [...incidents.values()].filter((i) => i.overrides);
  const version = (i) => `${i.updated_at}|${i.state}|${i.overrides}`;
  await Promise.all(wanted.filter((i) => details.get(i.id)?.version !== version(i)).map(async (i) => {
    const d = await api(`/api/v1/incidents/${i.id}`);
    details.set(i.id, {version: version(i), history: d.history || []});
  }));
  const rows = wanted.flatMap((i) => (details.get(i.id)?.history || []).filter((h) => h.override).map((h) => ({id: i.id, ...h})));
  rows.sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
  render(document.querySelector("#overrides tbody"), rows.length ? html`${rows.map((h) => html`<tr data-incident="${h.id}">
    <td data-label="#">${h.id}</td><td data-label="When">${short(h.at)}</td><td data-label="Who">${h.who}</td><td data-label="Step">${h.from} → ${h.to}</td>
    <td data-label="Still reported">${(h.override.conditions || []).join(", ")}</td><td class="reason" data-label="Reason">${h.override.reason}</td></tr>`)}`
    : html`<tr><td colspan="6"><small>No step was forced.</small></td></tr>`);
  $("overrides").dataset.count = String(rows.length);
}

function scope(s) {
  const parts = [s.site && `site ${s.site}`, s.device && `device ${s.device}`, s.kind && `kind ${s.kind}`, s.unit && `unit ${s.unit}`];
  return parts.filter(Boolean).join(" · ") || "everything";
}

async function loadSilences() {
  const list = await api("/api/v1/silences?include_expired=true&include_deleted=true");
  const state = (s) => (s.deleted_at ? `ended by ${s.deleted_by || "?"} ${short(s.deleted_at)}` : s.in_force ? "in force" : Date.parse(s.starts_at) > serverNow() ? "planned" : "expired");
  render(document.querySelector("#silences tbody"), list.length ? html`${list.map((s) => html`<tr data-silence="${s.id}" class="${s.in_force ? "" : "closed-row"}">
    <td data-label="#">${s.id}</td><td data-label="Scope">${scope(s)}${s.life_safety ? html` <span class="tag">life safety</span>` : ""}</td>
    <td data-label="Set by">${s.created_by}${s.role ? html` <small>(${s.role})</small>` : ""}</td><td class="reason" data-label="Reason">${s.reason}</td>
    <td data-label="From">${short(s.starts_at)}</td><td data-label="Until">${short(s.ends_at)}</td><td data-label="State">${state(s)}</td></tr>`)}`
    : html`<tr><td colspan="7"><small>No silences.</small></td></tr>`);
  $("silences").dataset.count = String(list.length);
}

function statsRow(name, f) {
  const arrive = f.time_to_arrive || {};
  const share = arrive.share_within_sla;
  return html`<tr><td data-label="For"><b>${name}</b></td><td data-label="Found">${f.found}</td><td data-label="Acked">${f.acknowledged}</td>
    <td data-label="Resolved">${f.resolved}</td><td data-label="Closed">${f.closed}</td>
    <td data-label="TTA mean">${duration(f.time_to_acknowledge.mean_s)}</td><td data-label="TTA p90">${duration(f.time_to_acknowledge.p90_s)}</td>
    <td data-label="Arrive mean">${duration(arrive.mean_s)}</td><td data-label="Arrive p90">${duration(arrive.p90_s)}</td>
    <td data-label="Within SLA">${share === null || share === undefined ? "–" : `${Math.round(share * 100)}% (${arrive.within_sla}/${arrive.with_sla})`}</td>
    <td data-label="TTR mean">${duration(f.time_to_resolve.mean_s)}</td><td data-label="TTR p90">${duration(f.time_to_resolve.p90_s)}</td></tr>`;
}

async function loadStats() {
  const s = await api("/api/v1/incidents/stats");
  $("tta").textContent = duration(s.total.time_to_acknowledge.mean_s);
  $("ttr").textContent = duration(s.total.time_to_resolve.p90_s);
  const arrive = s.total.time_to_arrive;
  $("ttar").textContent = duration(arrive?.mean_s);
  $("sla").textContent = arrive?.share_within_sla == null ? "–" : Math.round(arrive.share_within_sla * 100) + "%";
  const rows = [statsRow("all", s.total)]
    .concat(Object.entries(s.units).map(([u, f]) => statsRow("unit " + (u || "unassigned"), f)))
    .concat(Object.entries(s.kinds).map(([k, f]) => statsRow("kind " + k, f)));
  render(document.querySelector("#stats tbody"), html`${rows}`);
  const t = $("stats");
  t.dataset.loaded = String(Number(t.dataset.loaded) + 1);
  t.dataset.found = String(s.total.found);
  render($("units"), html`${Object.keys(s.units).filter(Boolean).map((u) => html`<option value="${u}">`)}`);
}


// --- the map ----------------------------------------------------------------------------------

function point(f) {
  const g = f.geometry;
  if (!g) return {lat: null, lon: null};
  if (g.type === "Point") return {lat: g.coordinates[1], lon: g.coordinates[0]};
  const ring = g.type === "Polygon" ? g.coordinates[0] : g.type === "MultiPolygon" ? g.coordinates[0][0] : [];
  if (!ring.length) return {lat: null, lon: null};
  return {lat: ring.reduce((a, p) => a + p[1], 0) / ring.length, lon: ring.reduce((a, p) => a + p[0], 0) / ring.length};
}

const LABEL = {
  incidents: (p) => `#${p.id} ${p.title || p.name || p.kind} — ${p.state}${p.sla?.state && p.sla.state !== "none" ? `, SLA ${p.sla.state}` : ""}`,
  lifts: (p) => `${p.name || p.id} — ${p.state}${p.risk_score ? `, risk ${p.risk_score}` : ""}`,
  gateways: (p) => `${p.id} — ${p.state}${p.outbox_age_s ? `, outbox ${duration(p.outbox_age_s)} old` : ""}`,
  parking: (p) => `${p.name} — ${p.available} of ${p.total} free`,
  environment: (p) => `${p.name} — ${p.state === "exceeded" ? "over a limit" : p.state}`,
};
const MAP_STATE = {parking: (p) => p.level || p.state, environment: (p) => (p.state === "normal" ? "ok" : p.state)};

async function layerData() {
  try {
    const all = await api("/api/v1/map/layers");
    const collections = Object.entries(all.layers || all).filter(([, fc]) => Array.isArray(fc?.features));
    return Object.fromEntries(collections.map(([name, fc]) => [name, fc.features.map((f) => {
      const p = f.properties;
      const flatSla = p.sla_state ? {state: p.sla_state, colour: p.sla_colour, due_at: p.sla_due_at} : undefined;
      return {...p, ...point(f), sla: p.sla || flatSla, state: (MAP_STATE[name] || ((x) => x.state))(p)};
    })]));
  } catch (e) {
    if (!missing(e)) throw e;
  }
  // A collector without the map endpoint: the same layers from the per-feature routes.
  const soft = (p) => api(p).catch((e) => { if (missing(e)) return []; throw e; });
  const [gws, zones, sites, lifts] = await Promise.all([soft("/api/v1/gateways"), soft("/api/v1/parking/zones"),
    soft("/api/v1/environment/sites"), soft("/api/v1/devices?kind=elevator")]);
  const active = [...incidents.values()].filter((i) => i.state !== "closed");
  const liftAt = new Map(active.filter((i) => where(i).lat != null).map((i) => [i.device, where(i)]));
  return {
    incidents: active.map((i) => ({...i, ...where(i), sla: sla(i)})),
    lifts: lifts.map((d) => ({id: d.id, name: d.id, state: active.some((i) => i.device === d.id) ? "incident" : d.last_seen ? "ok" : "unknown",
      lat: liftAt.get(d.id)?.lat ?? null, lon: liftAt.get(d.id)?.lon ?? null})),
    gateways: gws.map((g) => ({id: g.id, state: g.state, last_seen: g.last_seen, outbox_age_s: g.health?.counters?.outbox_oldest_age_s ?? null,
      device_count: g.device_count, lat: null, lon: null})),
    parking: zones.map((z) => ({...z, state: parkingLevel(z)})),
    environment: sites.map((s) => ({...s, state: s.exceedance?.state === "normal" ? "ok" : s.exceedance?.state || (s.status === "exceeded" ? "exceeded" : s.status === "offline" ? "unknown" : "ok")})),
  };
}

const RADIUS = {incidents: 10, lifts: 7, gateways: 6, parking: 9, environment: 8};
let fitted = false;
async function drawMap() {
  if (!view) return;
  const data = await layerData();
  const points = [];
  for (const [name] of LAYERS) {
    const items = (data[name] || []).map((p) => ({...p, id: p.id, label: LABEL[name](p), radius: RADIUS[name]}));
    layers[name].update(items);
    items.forEach((i) => { if (i.lat != null) points.push([i.lat, i.lon]); });
  }
  if (!fitted && points.length) { view.fit(points); fitted = true; }
  $("map").dataset.layers = LAYERS.map(([n]) => `${n}:${layers[n].group.getLayers().length}`).join(" ");
  drawGateways(data.gateways || []);
  drawTiles(data);
}

/** A marker clicked: its row in the lists, or the page that has it. */
function focusRow(layer, item) {
  const row = layer === "incidents" ? $(`incident-${item.id}`)
    : layer === "gateways" ? document.querySelector(`#gateways tr[data-gateway="${CSS.escape(String(item.id))}"]`) : null;
  if (row) {
    document.querySelectorAll("tr.focused").forEach((r) => r.classList.remove("focused"));
    row.classList.add("focused");
    row.scrollIntoView({behavior: "smooth", block: "center"});
  } else if (layer === "parking") location.assign("/parking");
  else if (layer === "environment") location.assign("/environment");
}

let mapTimer = null;
function mapSoon() {
  clearTimeout(mapTimer);
  mapTimer = setTimeout(() => drawMap().catch(showError), 300);
}

function drawGateways(list) {
  gatewayList = list;
  render(document.querySelector("#gateways tbody"), list.length ? html`${list.map((g) => html`<tr data-gateway="${g.id}" data-state="${g.state}">
    <td data-label="Gateway"><b>${g.id}</b>${g.site ? html`<br><small>${g.site}</small>` : ""}</td>
    <td data-label="State"><span class="chip" data-colour="${g.state === "online" ? "green" : g.state === "offline" ? "red" : "grey"}">${g.state}</span></td>
    <td data-label="Outbox age" class="num">${g.outbox_age_s == null ? "–" : duration(g.outbox_age_s)}${g.outbox_depth ? html` <small>(${g.outbox_depth})</small>` : ""}</td>
    <td data-label="Last seen">${ago(g.last_seen)}</td></tr>`)}` : html`<tr><td colspan="4"><small>No gateway has reported.</small></td></tr>`);
  $("gateways").dataset.count = String(list.length);
  $("t-gateways").textContent = `${list.filter((g) => g.state === "online").length} / ${list.length}`;
}

function drawTiles(data) {
  const zones = data.parking || [], sites = data.environment || [];
  const sum = (k) => zones.reduce((a, z) => a + (z[k] || 0), 0);
  $("t-parking").textContent = zones.length ? `${sum("available")} / ${sum("total")}` : "–";
  $("t-parking-note").textContent = zones.length ? `${zones.filter((z) => z.state === "full").length} of ${zones.length} zones full` : "not configured";
  $("t-env").textContent = sites.length ? sites.filter((s) => s.state === "exceeded").length : "–";
  $("t-env-note").textContent = sites.length ? `of ${sites.length} sites` : "not configured";
}

// --- lifts by risk, per district --------------------------------------------------------------

async function loadRisk() {
  let list;
  try {
    list = await api("/api/v1/elevators/risk?rank_by=per_1000_trips&limit=50");
  } catch (e) {
    if (!missing(e)) throw e;
    list = [];
  }
  const byDistrict = new Map();
  for (const r of list.filter((x) => x.score > 0)) {
    const d = r.district || "no district";
    if (!byDistrict.has(d)) byDistrict.set(d, []);
    byDistrict.get(d).push(r);
  }
  render($("risk"), byDistrict.size ? html`${[...byDistrict].map(([d, rs]) => html`<div class="district" data-district="${d}"><b>${d}</b><ol>
    ${rs.slice(0, 5).map((r) => html`<li data-lift="${r.device}"><b>${r.device}</b>${r.site ? ` (${r.site})` : ""} — score ${r.score_per_1000_trips ?? r.score}${r.score_per_1000_trips != null ? " per 1000 trips" : ""}
      <small>${(r.explanation || []).join(" · ")}</small></li>`)}</ol></div>`)}`
    : html`<p class="muted">No lift has had a fault in the last 30 days.</p>`);
  $("risk").dataset.count = String(list.length);
}

async function makeSignInLink(ev) {
  ev.preventDefault();
  const form = ev.target;
  const out = $("signin-result");
  out.hidden = false;
  try {
    const link = await api("/api/v1/signin-links", {method: "POST",
      body: {member: form.elements.member.value.trim(), unit: form.elements.unit.value.trim(), ttl: form.elements.ttl.value}});
    // The QR is generated SVG; shown as an image it cannot run anything whatever it holds.
    const svg = link.qr_svg && !/^<svg[^>]*xmlns=/.test(link.qr_svg)
      ? link.qr_svg.replace("<svg", '<svg xmlns="http://www.w3.org/2000/svg"') : link.qr_svg;
    const qr = svg ? "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svg) : "";
    render(out, html`${qr ? html`<img id="signin-qr" src="${qr}" alt="QR code of the sign-in link">` : ""}
      <div><p>Sign-in link for <b>${link.member}</b> (${link.unit}), valid until ${hm(link.expires)}, once:</p>
        <p class="url" id="signin-url">${link.url}</p>
        <p><small>Scan with the crew member's phone, or send the link. Signing in again on another phone
          signs the old phone out.</small></p></div>`);
    out.dataset.member = link.member;
  } catch (e) {
    render(out, html`<p class="error">${e.message}</p>`);
  }
}


async function act(id, action, body) {
  try {
    const inc = await api(`/api/v1/incidents/${id}/${action}`, {method: "POST", body});
    if (action === "close") closing.delete(id);
    if (action === "note") noting.delete(id);
    incidents.set(inc.id, inc);
    if (expanded.has(id)) await loadHistory(id);
  } catch (e) {
    const d = e instanceof ApiError ? e.body?.detail : null;
    if (e.status === 409 && d?.error === "condition_present") closing.set(id, d.message);
    else showError(e);
  }
  renderIncidents();
}

async function loadHistory(id) {
  let h;
  try {
    h = await api(`/api/v1/incidents/${id}/history`);
  } catch (e) {
    if (!missing(e)) throw e;
    h = (await api(`/api/v1/incidents/${id}`)).history || [];
  }
  histories.set(id, h);
}

function onClick(ev) {
  const b = ev.target.closest("button");
  if (!b) return;
  if (b.dataset.close) { b.disabled = true; act(Number(b.dataset.close), "close", {note: ""}); }
  else if (b.dataset.act) { b.disabled = true; act(Number(b.dataset.id), b.dataset.act, {note: ""}); }
  else if (b.dataset.note) {
    const id = Number(b.dataset.note);
    if (noting.has(id)) noting.delete(id); else noting.add(id);
    renderIncidents();
    document.querySelector(`form.note-form[data-id="${id}"] input`)?.focus();
  } else if (b.dataset.history) {
    const id = Number(b.dataset.history);
    if (expanded.has(id)) { expanded.delete(id); renderIncidents(); return; }
    expanded.add(id);
    renderIncidents();
    loadHistory(id).then(renderIncidents).catch(showError);
  }
}

function onSubmit(ev) {
  const form = ev.target.closest("form.close-form, form.note-form");
  if (!form) return;
  ev.preventDefault();
  form.querySelector("button").disabled = true;
  const id = Number(form.dataset.id);
  if (form.classList.contains("note-form")) act(id, "note", {note: form.elements.note.value.trim()});
  else act(id, "close", {note: "", override: true, reason: form.elements.reason.value.trim()});
}

function onSort(ev) {
  const b = ev.target.closest("button.sort");
  if (!b) return;
  if (sortKey === b.dataset.sort) sortDir = -sortDir;
  else { sortKey = b.dataset.sort; sortDir = 1; }
  renderIncidents();
}

let soon = null;
function figuresSoon() {
  clearTimeout(soon);
  soon = setTimeout(() => Promise.all([loadStats(), loadSilences()]).catch(showError), 500);
}

function showError(e) { $("error").textContent = e.message; }

let pushes = 0;  // counts pushed updates, so a list fetched before one cannot undo it
async function load() {
  const before = pushes;
  const list = await api("/api/v1/incidents?limit=500");
  const newer = [...incidents.values()].filter((i) => (i._push || 0) > before);
  incidents.clear();
  list.forEach((i) => incidents.set(i.id, i));
  newer.forEach((i) => incidents.set(i.id, i));
  renderIncidents();
  await Promise.all([loadStats(), loadSilences(), loadRisk()]);
}

async function main() {
  start();
  const tbody = document.querySelector("#incidents tbody");
  tbody.addEventListener("click", onClick);
  tbody.addEventListener("submit", onSubmit);
  document.querySelector("#incidents thead").addEventListener("click", onSort);
  $("filters").addEventListener("change", renderIncidents);
  $("filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("signin-link").addEventListener("submit", makeSignInLink);
  view = await cityMap($("map"));
  const overlays = {};
  LAYERS.forEach(([name], i) => {  // incidents on top, then lifts, gateways, …
    layers[name] = markerLayer(view.map, name, {onClick: (item) => focusRow(name, item), above: LAYERS.length - i});
  });
  for (const [name, title] of LAYERS) overlays[title] = layers[name].group;
  window.L.control.layers(null, overlays, {collapsed: matchMedia("(max-width: 600px)").matches}).addTo(view.map);
  legend(view.map, [["exceeded", "alarm, fault, offline, full"], ["acknowledged", "acknowledged, filling"],
    ["on_site", "crew on site"], ["ok", "normal, online, free"], ["unknown", "no data"]]);
  try {
    await load();
  } catch (e) {
    if (e.status === 401 || e.status === 403) { document.body.dataset.sse = "no-token"; return; }
    showError(e);
  }
  live("/api/v1/incidents/stream", {
    incident: (i) => { i._push = ++pushes; incidents.set(i.id, i); renderIncidents(); figuresSoon(); },
    reload: () => load().catch(showError),
  }, {onOpen: () => load().catch(showError)});
  setInterval(tick, 1000);
  setInterval(() => drawMap().catch(showError), 10000);
}

main();
