// The environment one map: sites coloured by exceedance of their limits (not by the data
// flag), a site's panel with who answers for it and how long it has been over, and a chart of
// real-time, minute, hour or day values with the limit drawn and labelled.
import {$, api, clock, html, missing, render, safeUrl, serverNow, since, start} from "./common.js";
import {SOURCE_KINDS, cityMap, kindLegend, legend, markerLayer, sourceLayer} from "./map.js";

const KEY = {dust: "pm10", boiler: "nox_converted"};
const RANGE_S = {rt: 3600, min: 6 * 3600, hour: 7 * 86400, day: 90 * 86400};
const RANGE_TEXT = {rt: "real-time values, last hour", min: "minute averages, last 6 h",
  hour: "hourly averages, last 7 days", day: "daily averages, last 90 days"};
const NS = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(location.search);
const REFRESH_S = Math.max(0.5, Number(params.get("refresh") || 5));
let selected = null, interval = "rt", quantity = null, sites = [], updates = 0, layer = null;
let fitted = false, view = null;
// Pollution sources (when the collector has the feature): the map layer, the owners' open tasks.
const SOURCES_EVERY_S = 30;
let sourceMap = null, sourcesOff = false, sourceProps = new Map(), openTasks = [], sourcesAt = 0;

/** Over a limit, by the latest real-time values; a flagged value is not a measurement. */
export function exceedance(s) {
  if (s.exceedance) return s.exceedance;
  const over = Object.entries(s.limits || {}).filter(([q, lim]) => {
    const v = s.latest?.[q];
    return v && v.quality !== "bad" && typeof v.value === "number" && v.value > lim;
  });
  const alarmSince = (s.alarms || []).map((a) => a.raised_at).sort()[0] || null;
  if (over.length || s.status === "exceeded") return {state: "exceeded", since: alarmSince,
    quantities: over.map(([q, lim]) => ({quantity: q, value: s.latest[q].value, unit: s.latest[q].unit, limit: lim}))};
  const measured = Object.keys(s.limits || {}).some((q) => s.latest?.[q] && s.latest[q].quality !== "bad");
  if (!s.last_seen || s.status === "offline" || !measured) return {state: "unknown", since: null, quantities: []};
  return {state: "normal", since: null, quantities: []};
}

const STATE_TEXT = {exceeded: "over a limit", normal: "within limits", unknown: "no recent data"};
const chipColour = {exceeded: "red", normal: "green", unknown: "grey"};

function keyValue(s) {
  const q = KEY[s.kind] || Object.keys(s.latest || {})[0];
  const v = q && s.latest?.[q];
  return v ? `${q} ${v.value} ${v.unit}` : "–";
}

function drawSites() {
  const items = sites.map((s) => {
    const ex = exceedance(s);
    return {id: s.id, lat: s.lat, lon: s.lon, state: ex.state === "normal" ? "ok" : ex.state,
      label: `${s.name || s.id} — ${STATE_TEXT[ex.state]} · ${keyValue(s)}`, radius: s.kind === "boiler" ? 10 : 8};
  });
  layer.update(items);
  if (!fitted && items.length) { view.fit(items.map((i) => [i.lat, i.lon])); fitted = true; }
  render(document.querySelector("#sites tbody"), html`${sites.map((s) => {
    const ex = exceedance(s);
    return html`<tr data-site="${s.id}" data-state="${ex.state}" class="${s.id === selected ? "selected" : ""}">
      <td data-label="Site"><b>${s.name || s.id}</b></td><td data-label="District">${s.district}</td>
      <td data-label="State"><span class="chip" data-colour="${chipColour[ex.state]}">${STATE_TEXT[ex.state]}</span></td>
      <td data-label="Value">${keyValue(s)}</td>
      <td data-label="Data">${s.status_reason ? html`<small>${s.status === "fault" ? `device/data fault: ${s.status_reason}` : s.status_reason}</small>` : ""}</td></tr>`;
  })}`);
  $("sites").dataset.count = String(sites.length);
  const n = (st) => sites.filter((s) => exceedance(s).state === st).length;
  $("n-sites").textContent = sites.length;
  $("n-exceeded").textContent = n("exceeded");
  $("n-silent").textContent = n("unknown");
}

function drawAlarms(alarms) {
  const ul = $("alarms");
  const name = (id) => sites.find((s) => s.id === id)?.name || id;
  render(ul, alarms.length ? html`${alarms.map((a) => html`<li data-site="${a.site}" data-rule="${a.rule}" tabindex="0"><b>${name(a.site)}</b> · ${a.rule}<br>
    <small>${a.message} · since ${new Date(a.raised_at).toLocaleString()}</small></li>`)}` : html`<li class="none">No active alarms</li>`);
  ul.dataset.count = String(alarms.length);
  $("n-alarms").textContent = alarms.length;
}

const kindName = (kind) => (SOURCE_KINDS[kind] || SOURCE_KINDS.other)[1];
const TASK_COLOUR = {pushed: "red", acknowledged: "amber", reported: "blue"};

function person(p) {
  if (!p?.contact_name && !p?.contact_phone) return html`<span class="muted">not registered</span>`;
  return html`${p.contact_name}${p.contact_phone ? html` · <a href="${safeUrl("tel:" + p.contact_phone)}">${p.contact_phone}</a>` : ""}`;
}

function taskLine(t) {
  return html`<span class="chip" data-colour="${TASK_COLOUR[t.state] || "grey"}">${t.state}</span>
    <small>pushed ${new Date(t.pushed_at).toLocaleString()}${t.report_text ? html` · “${t.report_text}”` : ""}</small>`;
}

/** A source's popup: kind, owner, the responsible person, and its open tasks. */
function sourcePopup(p) {
  const tasks = openTasks.filter((t) => t.source_id === p.id);
  return html`<b>${p.name || p.id}</b> <span class="chip">${kindName(p.kind)}</span>
    <dl class="facts">
      <dt>Owner</dt><dd>${p.company || "–"}</dd>
      <dt>Responsible</dt><dd class="responsible">${person(p)}</dd>
      <dt>District</dt><dd>${p.district || "–"}</dd>
      ${p.ts ? html`<dt>Last fix</dt><dd>${new Date(p.ts).toLocaleString()}</dd>` : ""}
      <dt>Open tasks</dt><dd class="tasks">${tasks.length ? tasks.map((t) => html`<div>${taskLine(t)}</div>`) : "none"}</dd>
    </dl>`;
}

/** The owners' open tasks of exceedances at a site, for its panel. */
function siteTasks(siteId) {
  if (sourcesOff) return "";
  const tasks = openTasks.filter((t) => t.site_id === siteId)  // the latest exceedance first, by rank
    .sort((a, b) => b.exceedance_id - a.exceedance_id || a.rank - b.rank);
  return html`<h3>Owner tasks</h3>
    <ul class="owner-tasks" id="owner-tasks" data-count="${tasks.length}">${tasks.length ? tasks.map((t) => {
      const p = sourceProps.get(t.source_id) || {id: t.source_id};
      return html`<li data-task="${t.id}"><b>${p.name || t.source_id}</b> (#${t.rank}, ${t.company || "no owner"})<br>
        ${person(p)}<br>${taskLine(t)}</li>`;
    }) : html`<li class="none">No open tasks for the sources around this site.</li>`}</ul>`;
}

async function refreshSources() {
  if (sourcesOff || (sourcesAt && serverNow() - sourcesAt < SOURCES_EVERY_S * 1000)) return;
  try {
    const [geo, tasks, exceedances] = await Promise.all([api("/api/v1/sources.geojson"),
      api("/api/v1/sources/tasks?limit=1000"), api("/api/v1/sources/exceedances?limit=1000")]);
    const siteOf = new Map(exceedances.map((e) => [e.id, e.site_id]));
    openTasks = tasks.filter((t) => t.state !== "closed").map((t) => ({...t, site_id: siteOf.get(t.exceedance_id) || ""}));
    sourceProps = new Map(geo.features.map((f) => [f.properties.id, f.properties]));
    sourceMap.update(geo);
    sourcesAt = serverNow();
  } catch (e) {
    if (!missing(e)) throw e;
    sourcesOff = true;  // this collector has no sources feature: the page works without it
  }
}

function facts(s) {
  const ex = exceedance(s);
  const who = s.responsible;
  const lasting = ex.state === "exceeded" && ex.since
    ? html`<span class="lasting" id="lasting" data-since="${ex.since}">${clock(since(ex.since))}</span> (since ${new Date(ex.since).toLocaleString()})`
    : ex.state === "exceeded" ? "over the limit now" : "–";
  const over = (ex.quantities || []).map((q) => `${q.quantity} ${q.value} ${q.unit || ""} > ${q.limit}`).join("; ");
  return html`<dl class="facts">
    <dt>State</dt><dd><span class="chip" data-colour="${chipColour[ex.state]}" id="site-state">${STATE_TEXT[ex.state]}</span> ${over}</dd>
    <dt>Exceeded for</dt><dd>${lasting}</dd>
    <dt>Responsible</dt><dd id="responsible">${who?.name ? html`${who.name}${who.unit ? ` (${who.unit})` : ""}${who.phone ? html` · <a href="${"tel:" + who.phone}">${who.phone}</a>` : ""}` : "not set in the site's config"}</dd>
    <dt>District</dt><dd>${s.district}</dd>
    <dt>Last data</dt><dd>${s.last_seen ? new Date(s.last_seen).toLocaleString() : "never"}${s.status === "fault" ? html` · <small>data flagged: ${s.status_reason}</small>` : ""}</dd>
  </dl>${siteTasks(s.id)}`;
}

async function select(id) {
  if (selected !== id) { quantity = null; }
  selected = id;
  $("site-panel").dataset.site = id;
  document.querySelectorAll("#sites tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.site === id));
  const s = await api(`/api/v1/environment/sites/${encodeURIComponent(id)}`);
  $("site-title").textContent = s.name || s.id;
  $("site-hint").hidden = true;
  $("site-body").hidden = false;
  render($("site-facts"), facts(s));
  const names = [...new Set([...Object.keys(s.limits || {}), ...Object.keys(s.latest || {})])];
  quantity ??= KEY[s.kind] && names.includes(KEY[s.kind]) ? KEY[s.kind] : names[0] || KEY[s.kind];
  render($("quantity"), html`${names.map((q) => html`<option value="${q}"${q === quantity ? html` selected` : ""}>${q}</option>`)}`);
  render($("site-values"), html`${Object.entries(s.latest || {}).map(([k, v]) =>
    html`<tr><td>${k}</td><td>${v.value} ${v.unit}</td><td><small>${v.quality === "good" ? "" : `data ${v.quality}`}</small></td></tr>`)}`);
  await loadChart(s);
}

async function series(s) {
  const q = encodeURIComponent(quantity);
  const from = new Date(serverNow() - RANGE_S[interval] * 1000).toISOString();
  const base = `/api/v1/environment/sites/${encodeURIComponent(s.id)}`;
  try {
    const a = await api(`${base}/averages?quantity=${q}&interval=${interval}&since=${from}`);
    return {unit: a.unit, limit: a.limit, label: a.limit_label, points: a.points.map((p) => ({t: p.t, v: p.avg, min: p.min, max: p.max}))};
  } catch (e) {
    if (!missing(e) && e.status !== 422) throw e;
  }
  const h = await api(`${base}/history?quantity=${q}&interval=${interval}&since=${from}&limit=5000`);
  return {unit: h.unit, limit: h.limit, label: null,
    points: h.points.filter((p) => typeof p.v === "number").map((p) => ({t: p.t, v: p.v, flagged: p.q !== "good"}))};
}

function el(name, attrs, parent, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}

const tickLabel = (t) => (interval === "day" || interval === "hour"
  ? new Date(t).toLocaleDateString([], {day: "numeric", month: "short"}) + (interval === "hour" ? " " + new Date(t).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}) : "")
  : new Date(t).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}));

async function loadChart(s) {
  const data = await series(s);
  const svg = $("chart");
  svg.replaceChildren();
  const W = 480, H = 240, l = 46, r = 10, t = 12, b = 28;
  const pts = data.points;
  const ts = pts.map((p) => Date.parse(p.t));
  const top = Math.max(1, ...pts.map((p) => p.max ?? p.v), data.limit ?? 0) * 1.12;
  const t0 = pts.length ? Math.min(...ts) : serverNow() - RANGE_S[interval] * 1000;
  const t1 = pts.length ? Math.max(...ts, t0 + 1) : serverNow();
  const X = (x) => l + (x - t0) / (t1 - t0) * (W - l - r), Y = (v) => H - b - v / top * (H - t - b);
  for (let i = 0; i <= 4; i++) {
    const v = top * i / 4;
    el("line", {class: "grid", x1: l, x2: W - r, y1: Y(v), y2: Y(v)}, svg);
    el("text", {x: l - 4, y: Y(v) + 3, "text-anchor": "end"}, svg, v >= 100 ? v.toFixed(0) : v.toFixed(1));
  }
  el("line", {class: "axis", x1: l, y1: H - b, x2: W - r, y2: H - b}, svg);
  el("line", {class: "axis", x1: l, y1: t, x2: l, y2: H - b}, svg);
  el("text", {x: l + 4, y: t + 8}, svg, data.unit || "");
  if (pts.length > 1 && pts.some((p) => p.min !== undefined)) {
    const upper = pts.map((p, i) => `${X(ts[i])},${Y(p.max ?? p.v)}`);
    const lower = pts.map((p, i) => `${X(ts[i])},${Y(p.min ?? p.v)}`).reverse();
    el("polygon", {class: "band", points: upper.concat(lower).join(" ")}, svg);
  }
  if (pts.length) {
    el("polyline", {class: "series", points: pts.map((p, i) => `${X(ts[i])},${Y(p.v)}`).join(" ")}, svg);
    pts.forEach((p, i) => {
      const cls = p.flagged ? "flagged" : data.limit != null && p.v > data.limit ? "over" : "";
      if (cls || pts.length < 60) el("circle", {class: cls || "pt", cx: X(ts[i]), cy: Y(p.v), r: cls ? 3 : 2, fill: cls ? "" : "#1565c0"}, svg);
    });
    el("text", {x: l, y: H - 8}, svg, tickLabel(t0));
    el("text", {x: (l + W - r) / 2, y: H - 8, "text-anchor": "middle"}, svg, tickLabel((t0 + t1) / 2));
    el("text", {x: W - r, y: H - 8, "text-anchor": "end"}, svg, tickLabel(t1));
  } else {
    el("text", {x: (l + W) / 2, y: H / 2, "text-anchor": "middle"}, svg, "no values in this range");
  }
  if (data.limit != null) {
    el("line", {class: "limit", x1: l, x2: W - r, y1: Y(data.limit), y2: Y(data.limit)}, svg);
    el("text", {class: "limit-label", x: W - r - 2, y: Y(data.limit) - 4, "text-anchor": "end"}, svg,
      data.label || `limit ${data.limit} ${data.unit || ""}`);
  }
  svg.dataset.site = s.id;
  svg.dataset.interval = interval;
  svg.dataset.quantity = quantity;
  svg.dataset.points = String(pts.length);
  $("chart-note").textContent = `${quantity} (${data.unit || ""}), ${RANGE_TEXT[interval]} · ${pts.length} values` +
    (pts.some((p) => p.flagged) ? " · yellow dots: values flagged by the logger" : "");
}

/** A site chosen by the user: its panel, brought into view on a phone. */
async function choose(id) {
  await select(id);
  if (matchMedia("(max-width: 900px)").matches) $("site-panel").scrollIntoView({behavior: "smooth", block: "start"});
}

function tick() {
  const lasting = $("lasting");
  if (lasting) lasting.textContent = clock(since(lasting.dataset.since));
}

async function refresh() {
  try {
    const [list, alarms] = await Promise.all([api("/api/v1/environment/sites"),
      api("/api/v1/environment/alarms?active=true")]);
    sites = list;
    drawSites();
    drawAlarms(alarms);
    await refreshSources();
    if (selected) await select(selected);
    document.body.dataset.updated = String(++updates);
  } catch (e) {
    document.body.dataset.error = String(e.message || e);
    if (e.status === 401) return;  // the sign-in screen is up: stop polling
  }
  setTimeout(refresh, REFRESH_S * 1000);
}

function wire() {
  $("range").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-interval]");
    if (!b) return;
    interval = b.dataset.interval;
    $("range").querySelectorAll("button").forEach((x) => x.setAttribute("aria-pressed", String(x === b)));
    if (selected) select(selected).catch((e) => { document.body.dataset.error = e.message; });
  });
  $("quantity").addEventListener("change", () => {
    quantity = $("quantity").value;
    if (selected) select(selected);
  });
  const pick = (ev) => {
    const row = ev.target.closest("[data-site]");
    if (row && (ev.type === "click" || ev.key === "Enter")) choose(row.dataset.site);
  };
  $("sites").addEventListener("click", pick);
  $("alarms").addEventListener("click", pick);
  $("alarms").addEventListener("keydown", pick);
}

async function main() {
  $("refresh-note").textContent = `refreshed every ${REFRESH_S} s`;
  if (!start()) return;
  wire();
  view = await cityMap($("map"));
  layer = markerLayer(view.map, "environment", {onClick: (item) => choose(item.id)});
  legend(view.map, [["exceeded", "over a limit"], ["ok", "within limits"], ["unknown", "no recent data"]], "Sites");
  sourceMap = sourceLayer(view.map, "sources", {popup: sourcePopup});
  kindLegend(view.map);
  setInterval(tick, 1000);
  refresh();
}

main();
