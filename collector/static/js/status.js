// The operator's overview: gateways, devices and how fresh each kind's data is, with any
// device's raw latest values one click away.
import {$, ago, api, deviceLink, duration, html, missing, num, render, since, start} from "./common.js";

const STALE_S = 15 * 60;  // a device silent this long is "stale" (when the collector gives no figure)
const open = new Map();   // device id -> its latest values, for the rows opened
let devices = [];

async function overview(gws, devs) {
  try {
    return await api("/api/v1/overview");
  } catch (e) {
    if (!missing(e)) throw e;
  }
  const kinds = new Map();
  for (const d of devs) {
    const k = kinds.get(d.kind) || {kind: d.kind, devices: 0, online: 0, stale: 0, newest: null, oldest: null, stale_after_s: STALE_S};
    k.devices += 1;
    if (d.state === "online") k.online += 1; else k.stale += 1;
    if (d.last_seen && (!k.newest || d.last_seen > k.newest)) k.newest = d.last_seen;
    if (!k.oldest || !d.last_seen || d.last_seen < k.oldest) k.oldest = d.last_seen || k.oldest;
    kinds.set(d.kind, k);
  }
  const incidents = await api("/api/v1/incidents?limit=500").catch(() => null);
  const active = (incidents || []).filter((i) => i.state !== "closed");
  return {kinds: [...kinds.values()],
    incidents: incidents && {active: active.length, critical: active.filter((i) => i.severity === "critical").length,
      breached: active.filter((i) => i.arrival_overdue).length},
    devices: {total: devs.length, online: devs.filter((d) => d.state === "online").length}};
}

async function deviceList() {
  try {
    return await api("/api/v1/overview/devices?limit=5000");
  } catch (e) {
    if (!missing(e)) throw e;
  }
  return (await api("/api/v1/devices")).map((d) => ({...d,
    state: d.last_seen && since(d.last_seen) < STALE_S ? "online" : "stale", latest_url: `/api/v1/devices/${encodeURIComponent(d.id)}/latest`}));
}

function kindRow(k) {
  const fresh = k.freshness_s ?? (k.newest ? since(k.newest) : null);
  const colour = fresh == null ? "red" : fresh > (k.stale_after_s || STALE_S) ? "red" : fresh > (k.stale_after_s || STALE_S) / 3 ? "amber" : "green";
  return html`<tr data-kind="${k.kind}"><td data-label="Kind"><b>${k.kind}</b></td><td class="num" data-label="Devices">${k.devices}</td>
    <td class="num" data-label="Reporting">${k.online}</td><td class="num" data-label="Stale / silent">${(k.stale || 0) + (k.offline || 0)}</td>
    <td class="fresh" data-colour="${colour}" data-label="Newest value">${k.newest ? ago(k.newest) : "never"}</td>
    <td data-label="Oldest device">${k.oldest ? ago(k.oldest) : "never"}</td></tr>`;
}

function gatewayRow(g) {
  const c = g.health?.counters || {};
  const outbox = c.outbox_messages != null ? `${num(c.outbox_messages)} waiting${c.outbox_oldest_age_s ? `, oldest ${duration(c.outbox_oldest_age_s)}` : ""}` : "–";
  return html`<tr data-gateway="${g.id}"><td data-label="Gateway"><b>${g.id}</b></td>
    <td data-label="State"><span class="chip ${g.state}" data-colour="${g.state === "online" ? "green" : g.state === "offline" ? "red" : "grey"}">${g.state}</span>
      ${g.state_reason && g.state !== "online" ? html`<small>${g.state_reason}</small>` : ""}</td>
    <td class="num" data-label="Devices">${g.device_count}</td><td data-label="Outbox">${outbox}</td>
    <td data-label="Last seen">${ago(g.last_seen)}</td><td data-label="Version">${g.version || "–"}</td></tr>`;
}

function value(name, v) {
  return html`<div><b>${name}</b> = ${String(v.value)}${v.unit ? ` ${v.unit}` : ""}
    <small>${ago(v.observed_at)}${v.quality && v.quality !== "good" ? ` · ${v.quality}` : ""}</small></div>`;
}

function deviceRows(d) {
  const latest = open.get(d.id);
  const row = html`<tr data-device="${d.id}" data-state="${d.state}"><td data-label="Device"><b>${deviceLink(d.id)}</b></td><td data-label="Kind">${d.kind}</td>
    <td data-label="Gateway">${d.gateway}</td>
    <td data-label="Last seen"><span class="chip" data-colour="${d.state === "online" ? "green" : "amber"}">${ago(d.last_seen)}</span></td>
    <td><button type="button" class="secondary small" data-raw="${d.id}" aria-expanded="${open.has(d.id)}">${open.has(d.id) ? "Hide" : "Raw values"}</button></td></tr>`;
  if (!latest) return row;
  const q = Object.entries(latest.quantities || {});
  return html`${row}<tr class="raw-row" data-raw-of="${d.id}"><td colspan="5"><div class="raw">${q.length ? q.map(([k, v]) => value(k, v)) : html`<small>No values stored.</small>`}</div>
    <small><a href="${d.latest_url || `/api/v1/devices/${encodeURIComponent(d.id)}/latest`}">JSON</a> ·
    <a href="/api/v1/devices/${encodeURIComponent(d.id)}/readings">readings</a></small></td></tr>`;
}

function drawDevices() {
  const f = $("device-filter").elements;
  const kinds = [...new Set(devices.map((d) => d.kind))].sort();
  const chosen = f.kind.value;
  render(f.kind, html`<option value="">all</option>${kinds.map((k) => html`<option>${k}</option>`)}`);
  f.kind.value = kinds.includes(chosen) ? chosen : "";
  const q = f.q.value.trim().toLowerCase();
  const shown = devices.filter((d) => (!f.kind.value || d.kind === f.kind.value)
    && (!f.state.value || (f.state.value === "online" ? d.state === "online" : d.state !== "online"))
    && (!q || d.id.toLowerCase().includes(q) || String(d.gateway).toLowerCase().includes(q)));
  render(document.querySelector("#devices tbody"), html`${shown.slice(0, 300).map(deviceRows)}`);
  $("devices").dataset.count = String(shown.length);
  $("dev-shown").textContent = `${Math.min(shown.length, 300)} of ${devices.length} shown`;
}

async function refresh() {
  try {
    const [health, gws, devs] = await Promise.all([api("/api/v1/health"), api("/api/v1/gateways"), deviceList()]);
    devices = devs;
    const o = await overview(gws, devs);
    const online = gws.filter((g) => g.state === "online").length;
    $("gw-online").textContent = `${online} / ${gws.length}`;
    $("t-gateways").dataset.colour = online < gws.length ? "red" : "green";
    $("dev-count").textContent = `${o.devices.online} / ${o.devices.total}`;
    $("dev-note").textContent = o.devices.total - o.devices.online ? `${o.devices.total - o.devices.online} stale or silent` : "all reporting";
    $("inc-count").textContent = o.incidents ? o.incidents.active : "–";
    $("inc-note").textContent = o.incidents ? `${o.incidents.critical} critical, ${o.incidents.breached} past SLA` : "see the control room";
    $("readings").textContent = num(health.counts.readings);
    $("ingest").textContent = health.status;
    $("t-ingest").dataset.colour = health.status === "ok" ? "green" : "red";
    $("ingest-note").textContent = (health.reasons || []).join("; ");
    render(document.querySelector("#kinds tbody"), html`${o.kinds.map(kindRow)}`);
    $("kinds").dataset.count = String(o.kinds.length);
    render(document.querySelector("#gateways tbody"), html`${gws.map(gatewayRow)}`);
    $("gateways").dataset.count = String(gws.length);
    await Promise.all([...open.keys()].map(loadRaw));
    drawDevices();
    document.body.dataset.updated = String(Number(document.body.dataset.updated || 0) + 1);
  } catch (e) {
    $("ingest").textContent = e.status === 401 || e.status === 403 ? "sign in" : "unreachable";
    if (e.status === 401) return;  // the sign-in screen is up: stop polling
  }
  setTimeout(refresh, 5000);
}

async function loadRaw(id) {
  const d = devices.find((x) => x.id === id);
  open.set(id, await api(d?.latest_url || `/api/v1/devices/${encodeURIComponent(id)}/latest`));
}

function wire() {
  $("devices").addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-raw]");
    if (!b) return;
    const id = b.dataset.raw;
    if (open.has(id)) open.delete(id);
    else await loadRaw(id);
    drawDevices();
  });
  $("device-filter").addEventListener("input", drawDevices);
  $("device-filter").addEventListener("submit", (ev) => ev.preventDefault());
}

start();
wire();
refresh();
