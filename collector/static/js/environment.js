// The environment one map: sites coloured by state, active alarms, a site's history.
import {$, api, html, render, start} from "./common.js";

const COLOURS = {ok: "#2e7d32", exceeded: "#c62828", fault: "#f9a825", offline: "#9e9e9e"};
const KEY = {dust: "pm10", boiler: "nox_converted"};
const W = 800, H = 560, PAD = 30, NS = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(location.search);
const REFRESH_S = Math.max(0.5, Number(params.get("refresh") || 5));
let selected = null, updates = 0, mapDrawn = "";

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

// Equirectangular projection fitted to every outline point and site (no tiles, no network).
function projection(districts, sites) {
  const pts = districts.flatMap(d => d.outline).concat(sites.map(s => [s.lon, s.lat]));
  if (!pts.length) return () => [W / 2, H / 2];
  const lons = pts.map(p => p[0]), lats = pts.map(p => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...lons), Math.max(...lons), Math.min(...lats), Math.max(...lats)];
  const k = Math.cos((y0 + y1) / 2 * Math.PI / 180);
  const spanX = Math.max((x1 - x0) * k, 1e-6), spanY = Math.max(y1 - y0, 1e-6);
  const scale = Math.min((W - 2 * PAD) / spanX, (H - 2 * PAD) / spanY);
  const offX = (W - spanX * scale) / 2, offY = (H - spanY * scale) / 2;
  return (lon, lat) => [offX + (lon - x0) * k * scale, H - offY - (lat - y0) * scale];
}

function drawMap(districts, sites) {
  const svg = document.getElementById("map");
  svg.replaceChildren();
  const proj = projection(districts, sites);
  for (const d of districts) {
    if (!d.outline.length) continue;
    const pts = d.outline.map(p => proj(p[0], p[1]));
    el("polygon", {class: "district", points: pts.map(p => p.join(",")).join(" "), "data-district": d.id}, svg);
    const cx = pts.reduce((a, p) => a + p[0], 0) / pts.length, cy = pts.reduce((a, p) => a + p[1], 0) / pts.length;
    el("text", {class: "district-label", x: cx, y: cy, "text-anchor": "middle"}, svg).textContent = d.name;
  }
  for (const s of sites) {
    const [x, y] = proj(s.lon, s.lat);
    const c = el("circle", {class: "site" + (s.id === selected ? " selected" : ""), cx: x, cy: y,
      r: s.kind === "boiler" ? 11 : 9, fill: COLOURS[s.status], "data-site": s.id,
      "data-status": s.status, "data-kind": s.kind, tabindex: 0}, svg);
    const key = s.latest[KEY[s.kind]];
    el("title", {}, c).textContent = `${s.name} — ${s.status}${s.status_reason ? " (" + s.status_reason + ")" : ""}` +
      (key ? `\n${KEY[s.kind]} ${key.value} ${key.unit}` : "");
    c.addEventListener("click", () => select(s.id));
    el("text", {class: "site-label", x: x + 13, y: y + 4}, svg).textContent = s.name || s.id;
  }
}

function drawAlarms(alarms, sites) {
  const ul = document.getElementById("alarms");
  const name = id => (sites.find(s => s.id === id) || {}).name || id;
  render(ul, alarms.length ? html`${alarms.map((a) => html`<li data-site="${a.site}" data-rule="${a.rule}"><b>${name(a.site)}</b> · ${a.rule}<br>
    <small>${a.message} · since ${a.raised_at}</small></li>`)}` : html`<li class="none">No active alarms</li>`);
  ul.dataset.count = String(alarms.length);
}

function drawLegend(sites) {
  const n = st => sites.filter(s => s.status === st).length;
  render($("legend"), html`${Object.keys(COLOURS).map((st) =>
    html`<span data-status="${st}"><i class="dot ${st}"></i>${st} ${n(st)}</span>`)}`);
}

async function select(id) {
  selected = id;
  document.querySelectorAll("circle.site").forEach(c => c.classList.toggle("selected", c.dataset.site === id));
  const site = await api(`/api/v1/environment/sites/${encodeURIComponent(id)}`);
  const q = KEY[site.kind];
  const hist = await api(`/api/v1/environment/sites/${encodeURIComponent(id)}/history?quantity=${q}&limit=2000`);
  drawChart(site, hist);
}

function drawChart(site, hist) {
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const pts = hist.points.filter(p => typeof p.v === "number");
  document.getElementById("chart-title").textContent = `${site.name || site.id}: ${hist.quantity} (${hist.unit}), real-time`;
  const cw = 480, ch = 220, l = 44, r = 8, t = 10, b = 24;
  const ts = pts.map(p => Date.parse(p.t)), vs = pts.map(p => p.v);
  const lim = hist.limit;
  const vmax = Math.max(1, ...vs, lim ?? 0) * 1.1, tmin = Math.min(...ts), tmax = Math.max(...ts, tmin + 1);
  const X = t0 => l + (t0 - tmin) / (tmax - tmin) * (cw - l - r), Y = v => ch - b - v / vmax * (ch - t - b);
  el("line", {class: "axis", x1: l, y1: ch - b, x2: cw - r, y2: ch - b}, svg);
  el("line", {class: "axis", x1: l, y1: t, x2: l, y2: ch - b}, svg);
  el("text", {x: 2, y: t + 8}, svg).textContent = vmax.toFixed(0);
  el("text", {x: 2, y: ch - b}, svg).textContent = "0";
  if (lim != null) el("line", {class: "limit", x1: l, x2: cw - r, y1: Y(lim), y2: Y(lim)}, svg);
  if (pts.length) {
    el("polyline", {class: "series", points: pts.map((p, i) => `${X(ts[i])},${Y(p.v)}`).join(" ")}, svg);
    pts.forEach((p, i) => { if (p.q !== "good") el("circle", {cx: X(ts[i]), cy: Y(p.v), r: 3, fill: COLOURS.fault}, svg); });
    el("text", {x: l, y: ch - 6}, svg).textContent = new Date(tmin).toLocaleTimeString();
    el("text", {x: cw - r, y: ch - 6, "text-anchor": "end"}, svg).textContent = new Date(tmax).toLocaleTimeString();
  }
  svg.dataset.site = site.id;
  svg.dataset.points = String(pts.length);
  render($("site-values"), html`${Object.entries(site.latest).map(([k, v]) =>
    html`<tr><td>${k}</td><td>${v.value} ${v.unit}</td><td><small>${v.quality}</small></td></tr>`)}`);
}

async function refresh() {
  try {
    const [districts, sites, alarms] = await Promise.all([api("/api/v1/environment/districts"),
      api("/api/v1/environment/sites"), api("/api/v1/environment/alarms?active=true")]);
    const drawn = JSON.stringify([districts, sites]);
    if (drawn !== mapDrawn) {  // redraw only on change: no flicker, focus and hover stay
      drawMap(districts, sites);
      mapDrawn = drawn;
    }
    drawAlarms(alarms, sites);
    drawLegend(sites);
    if (selected) await select(selected);
    document.body.dataset.updated = String(++updates);
  } catch (e) {
    document.body.dataset.error = String(e);
    if (e.status === 401) return;  // the sign-in screen is up: stop polling
  }
  setTimeout(refresh, REFRESH_S * 1000);
}
document.getElementById("refresh-note").textContent = `refreshed every ${REFRESH_S} s`;
start();
refresh();
