// Parking: zones on the map by free share, bays when zoomed in, a driver's "nearest free
// parking" (from the phone's location or a tapped point), a zone's occupancy history and its
// sensors' health, refreshed every 3 s.
import {$, ago, api, fill, html, metres, missing, num, render, safeUrl, start} from "./common.js";
import {cityMap, colourOf, markerLayer, parkingLevel} from "./map.js";

const DETOUR = 1.3, WALK_M_S = 1.3;  // streets are not straight lines; an easy walking pace
const BAYS_FROM_ZOOM = 17;
// Directions on foot when the collector sends no link of its own ([parking] navigation_url).
const ROUTE = "https://www.openstreetmap.org/directions?engine=fossgis_osrm_foot&route={from_lat},{from_lon};{lat},{lon}";
let rounds = 0, zones = [], selected = null, by = "hour", view = null, zoneLayer = null, bayLayer = null;
let fitted = false, origin = null, originMarker = null, outlines = null;

const share = (n, total) => (total ? (100 * n) / total : 0);
const level = parkingLevel;
const ROW_CLASS = {free: "plenty", filling: "few", full: "full", unknown: ""};

function bar(z) {
  // Widths are SVG attributes, not inline styles: the page's CSP allows no inline style.
  let x = 0;
  const rects = [["free", z.available], ["occ", z.occupied], ["unk", z.unknown], ["clo", z.closed]].map(([cls, n]) => {
    const w = share(n, z.total);
    const r = html`<rect class="${cls}" x="${x.toFixed(2)}" y="0" width="${w.toFixed(2)}" height="10"></rect>`;
    x += w;
    return r;
  });
  return html`<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true">${rects}</svg>`;
}

function row(z) {
  return html`<tr class="${ROW_CLASS[level(z)]} ${z.id === selected ? "selected" : ""}" data-zone="${z.id}" data-available="${z.available}" data-level="${level(z)}">
    <td data-label="Zone"><b>${z.name}</b><br><small>${z.id}</small></td>
    <td class="num avail" data-label="Free">${z.available} / ${z.total}</td><td data-label="Bays">${bar(z)}</td>
    <td data-label="Changed">${z.updated ? ago(z.updated) : "–"}</td></tr>`;
}

function drawZones() {
  zoneLayer.update(zones.map((z) => ({id: z.id, lat: z.lat, lon: z.lon, state: level(z), radius: 11,
    label: `${z.name}: ${z.available} of ${z.total} free`})));
  if (!fitted && zones.length) { view.fit(zones.map((z) => [z.lat, z.lon])); fitted = true; }
  // A zone's outline (when the collector knows it) shows its extent once zoomed in.
  outlines.clearLayers();
  for (const z of zones.filter((x) => Array.isArray(x.outline) && x.outline.length > 2)) {
    window.L.polygon(z.outline.map(([lon, lat]) => [lat, lon]), {color: colourOf(level(z)), weight: 1.5,
      fillOpacity: 0.15, interactive: false}).addTo(outlines);
  }
  render(document.querySelector("#zones tbody"), html`${zones.map(row)}`);
  const sum = (k) => zones.reduce((a, z) => a + z[k], 0);
  $("free").textContent = sum("available");
  $("total").textContent = sum("total");
  $("unknown").textContent = sum("unknown");
}

// --- bays, when zoomed in ---------------------------------------------------------------------
async function drawBays() {
  if (!bayLayer) return;
  if (view.map.getZoom() < BAYS_FROM_ZOOM) { bayLayer.update([]); return; }
  const b = view.map.getBounds();
  const shown = zones.filter((z) => b.pad(0.5).contains([z.lat, z.lon]));
  const lists = await Promise.all(shown.map((z) => api(`/api/v1/parking/spots?zone=${encodeURIComponent(z.id)}`).catch(() => [])));
  bayLayer.update(lists.flat().filter((s) => s.lat != null).map((s) => ({id: s.id, lat: s.lat, lon: s.lon,
    state: s.status === "free" ? "free" : s.status === "occupied" ? "full" : "unknown", radius: 4,
    label: `${s.id}: ${s.status}${[].concat(s.health || []).filter((h) => h && h !== "ok").map((h) => " · " + h).join("")}`})));
}

// --- the driver's nearest free parking --------------------------------------------------------
async function nearest(lat, lon) {
  try {
    const n = await api(`/api/v1/parking/nearest?lat=${lat}&lon=${lon}&limit=3&radius=5000`);
    return n.results.map((r) => ({zone: r.zone, walking_m: r.walking_m, walking_min: r.walking_min,
      target: r.target || {lat: r.zone.lat, lon: r.zone.lon}, web: r.navigation?.web, geo: r.navigation?.geo}));
  } catch (e) {
    if (!missing(e) && e.status !== 422) throw e;
  }
  const list = await api(`/api/v1/parking/zones?near=${lat},${lon}&radius=5000`);
  return list.filter((z) => z.available > 0).slice(0, 3).map((z) => {
    const walking = (z.distance_m ?? metres(lat, lon, z.lat, z.lon)) * DETOUR;
    return {zone: z, walking_m: walking, walking_min: walking / WALK_M_S / 60, target: {lat: z.lat, lon: z.lon}};
  });
}

async function findNear(lat, lon, how) {
  origin = {lat, lon};
  const box = $("nearest");
  $("driver").dataset.state = "searching";
  box.hidden = false;
  render(box, html`<p class="muted">Looking for free spaces near ${how}…</p>`);
  if (originMarker) originMarker.setLatLng([lat, lon]);
  else originMarker = window.L.circleMarker([lat, lon], {radius: 7, color: "#fff", weight: 3, fillColor: "#1a73e8",
    fillOpacity: 1, className: "origin"}).addTo(view.map);
  try {
    const results = await nearest(lat, lon);
    if (!results.length) {
      render(box, html`<p><b>No free space within a 5 km walk of ${how}.</b> Zones fill and empty all the time: try again in a few minutes.</p>`);
      box.dataset.zone = "";
      $("driver").dataset.state = "none";
      return;
    }
    const [best, ...others] = results;
    const to = best.target;
    const web = best.web || fill(ROUTE, {from_lat: lat, from_lon: lon, lat: to.lat, lon: to.lon});
    const geo = best.geo || `geo:${to.lat},${to.lon}?q=${to.lat},${to.lon}`;
    render(box, html`<div class="best"><b class="big">${best.zone.available}</b> free at <b>${best.zone.name}</b></div>
      <div id="walk">≈ ${num(best.walking_m)} m walk from ${how} (about ${Math.max(1, Math.round(best.walking_min))} min)</div>
      <div class="go"><a id="navigate" href="${safeUrl(web)}" target="_blank" rel="noopener noreferrer">Directions</a>
        <a class="alt" href="${safeUrl(geo)}">Open in maps app</a></div>
      ${others.length ? html`<small>Also:</small><ol class="others">${others.map((o) => html`<li data-zone="${o.zone.id}">${o.zone.name}: ${o.zone.available} free, ≈ ${num(o.walking_m)} m</li>`)}</ol>` : ""}`);
    box.dataset.zone = best.zone.id;
    box.dataset.walkingM = String(Math.round(best.walking_m));
    $("driver").dataset.state = "found";
    view.map.fitBounds(window.L.latLngBounds([[lat, lon], [to.lat, to.lon]]).pad(0.4), {maxZoom: 17});
  } catch (e) {
    render(box, html`<p class="error">${e.message}</p>`);
  }
}

function nearMe() {
  if (!navigator.geolocation) { findFailed("This browser cannot tell where you are: tap the map instead."); return; }
  $("driver").dataset.state = "locating";
  navigator.geolocation.getCurrentPosition(
    (p) => findNear(p.coords.latitude, p.coords.longitude, "you"),
    () => findFailed("Your location is not available (permission refused?): tap the map where you are going."),
    {enableHighAccuracy: true, timeout: 10000, maximumAge: 30000});
}

function findFailed(message) {
  $("nearest").hidden = false;
  render($("nearest"), html`<p class="error">${message}</p>`);
  $("driver").dataset.state = "failed";
}

// --- a zone: history and sensor health --------------------------------------------------------
async function showZone(id) {
  selected = id;
  const z = zones.find((x) => x.id === id);
  if (!z) return;
  const panel = $("zone-panel");
  panel.hidden = false;
  panel.dataset.zone = id;
  $("zone-title").textContent = `${z.name}: ${z.available} of ${z.total} free`;
  document.querySelectorAll("#zones tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.zone === id));
  await Promise.all([drawHistory(id), drawHealth(id)]);
}

async function drawHistory(id) {
  const svg = $("history");
  let points = [];
  try {
    points = (await api(`/api/v1/parking/zones/${encodeURIComponent(id)}/history?by=${by}`)).points;
    $("history-note").textContent = `Average free share per ${by}; darker bars: full at times.`;
  } catch (e) {
    if (!missing(e)) throw e;
    $("history-note").textContent = "This collector keeps no occupancy history yet.";
  }
  const W = 480, H = 160, l = 38, b = 20, t = 8;
  const sampled = points.filter((p) => p.free_share_avg != null);
  if (points.length && !sampled.length) $("history-note").textContent = `No samples in this range (by ${by}).`;
  const bw = points.length ? (W - l - 4) / points.length : 0;
  const Y = (v) => H - b - v * (H - t - b);
  render(svg, html`${[0, 0.5, 1].map((v) => html`<text x="${l - 4}" y="${Y(v) + 3}" text-anchor="end">${v * 100}%</text>`)}
    ${points.map((p, i) => {
      const s = p.free_share_avg ?? 0;
      const cls = p.free_min === 0 ? "full" : s < 0.3 ? "few" : "";
      return html`<rect class="h ${cls}" x="${(l + i * bw + 1).toFixed(1)}" width="${Math.max(1, bw - 2).toFixed(1)}"
        y="${Y(s).toFixed(1)}" height="${(H - b - Y(s)).toFixed(1)}"><title>${new Date(p.t).toLocaleString()}: ${Math.round(s * 100)} % free</title></rect>`;
    })}
    ${!points.length ? html`<text x="${(l + W) / 2}" y="${H / 2}" text-anchor="middle">no history in this range</text>` : ""}
    ${points.length ? html`<text x="${l}" y="${H - 5}">${new Date(points[0].t).toLocaleString()}</text>
      <text x="${W - 4}" y="${H - 5}" text-anchor="end">${new Date(points[points.length - 1].t).toLocaleString()}</text>` : ""}`);
  svg.dataset.points = String(points.length);
  svg.dataset.by = by;
}

async function drawHealth(id) {
  let items;
  try {
    const h = await api(`/api/v1/parking/health?zone=${encodeURIComponent(id)}`);
    items = h.spots.map((s) => ({spot: s.id, text: `${(s.health || []).join(", ")}${s.battery_mv ? ` · ${s.battery_mv} mV` : ""}`,
      lat: s.lat, lon: s.lon}));
  } catch (e) {
    if (!missing(e)) throw e;
    items = (await api(`/api/v1/parking/alerts?zone=${encodeURIComponent(id)}`)).map((a) => ({spot: a.spot, text: a.message}));
  }
  render($("health"), items.length ? html`${items.map((i) => html`<li data-spot="${i.spot}" tabindex="0"><b>${i.spot}</b> ${i.text}</li>`)}`
    : html`<li class="ok">Every sensor of this zone reports normally.</li>`);
  $("health").dataset.count = String(items.length);
}

function drawAlerts(alerts) {
  $("alerts").textContent = alerts.length;
  render($("alert-list"), alerts.length ? html`${alerts.slice(0, 50).map((a) => html`<li data-alert="${a.id}" data-zone="${a.zone || ""}" data-spot="${a.spot}" tabindex="0">
    <b>${a.spot}</b> ${a.kind.replace("_", " ")} <small>(${a.zone || "no zone"}, ${ago(a.raised)})</small><br><small>${a.message}</small></li>`)}`
    : html`<li class="ok">No open sensor alerts.</li>`);
  $("alert-list").dataset.count = String(alerts.length);
}

function openAlert(li) {
  document.querySelectorAll("ul.alerts li.chosen").forEach((x) => x.classList.remove("chosen"));
  li.classList.add("chosen");
  const zone = li.dataset.zone || zones.find((z) => z.id === li.dataset.spotZone)?.id;
  if (zone) {
    const z = zones.find((x) => x.id === zone);
    if (z) view.map.setView([z.lat, z.lon], BAYS_FROM_ZOOM + 1);
    showZone(zone);
    // The bay itself, when its position is known: its label opens once the bays are drawn.
    drawBays().then(() => bayLayer.marker(li.dataset.spot)?.openTooltip()).catch(() => {});
  }
}

async function refresh() {
  const status = $("status");
  try {
    const [list, alerts] = await Promise.all([api("/api/v1/parking/zones"), api("/api/v1/parking/alerts?limit=1000")]);
    zones = list;
    drawZones();
    drawAlerts(alerts);
    if (selected && rounds % 5 === 0) await showZone(selected);
    drawBays().catch(() => {});
    status.textContent = "updated " + new Date().toLocaleTimeString();
    status.className = "";
    rounds += 1;
    document.body.dataset.updated = String(rounds);
  } catch (e) {
    status.textContent = "cannot reach the collector: " + e.message;
    status.className = "err";
    if (e.status === 401) return;  // the sign-in screen is up: stop polling
  }
  setTimeout(refresh, 3000);
}

function wire() {
  $("near-me").addEventListener("click", nearMe);
  $("zones").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-zone]");
    if (!tr) return;
    const z = zones.find((x) => x.id === tr.dataset.zone);
    if (z) view.map.setView([z.lat, z.lon], BAYS_FROM_ZOOM + 1);  // close enough for its bays
    showZone(tr.dataset.zone);
  });
  for (const list of ["alert-list", "health"]) {
    const on = (ev) => {
      const li = ev.target.closest("li[data-spot]");
      if (li && (ev.type === "click" || ev.key === "Enter")) openAlert(li);
    };
    $(list).addEventListener("click", on);
    $(list).addEventListener("keydown", on);
  }
  $("by").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-by]");
    if (!b) return;
    by = b.dataset.by;
    $("by").querySelectorAll("button").forEach((x) => x.setAttribute("aria-pressed", String(x === b)));
    if (selected) drawHistory(selected);
  });
}

async function main() {
  start();
  wire();
  view = await cityMap($("map"));
  outlines = window.L.layerGroup().addTo(view.map);
  zoneLayer = markerLayer(view.map, "parking", {onClick: (item) => showZone(item.id)});
  bayLayer = markerLayer(view.map, "bays");
  view.map.on("click", (ev) => findNear(ev.latlng.lat, ev.latlng.lng, "the point you tapped"));
  view.map.on("zoomend moveend", () => drawBays().catch(() => {}));
  refresh();
}

main();
