// The city map every page shares: Leaflet (vendored), a base map, and point layers whose
// markers carry their state (data-state) and colour, so a state change is a colour change.
//
// The base map is the configured tile server ([pages] tile_url) or, without one, the offline
// vector map of the city shipped with the collector (districts, main roads, landmarks).
import {esc, html, render, settings} from "./common.js";

const L = window.L;

/** One palette for every page: a state names its colour. */
export const COLOURS = {
  green: "#1a9c48", amber: "#e8a200", red: "#c62828", grey: "#8a939c", blue: "#1a73e8",
};
const STATE_COLOUR = {
  ok: "green", normal: "green", online: "green", free: "green", met: "green",
  filling: "amber", due_soon: "amber", acknowledged: "amber", resolved: "blue", on_site: "blue",
  warning: "amber", few: "amber",
  exceeded: "red", fault: "red", incident: "red", offline: "red", full: "red", breached: "red",
  open: "red", critical: "red",
  unknown: "grey", closed: "grey", none: "grey",
};
/** The colour (hex) of a state name. */
export const colourOf = (state) => COLOURS[STATE_COLOUR[state] || "grey"];

/** A parking zone's level: free (30 % or more of its usable bays), filling, full, or unknown
 *  when no sensor of it has reported (the collector's `level` when it sends one). */
export function parkingLevel(z) {
  if (z.level) return z.level;
  const usable = z.total - z.closed;
  if (usable <= 0 || z.unknown >= usable) return "unknown";
  const share = z.free_share ?? z.available / usable;
  return z.available === 0 ? "full" : share >= 0.3 ? "free" : "filling";
}

/** Create a map in `el` with the deployment's base map; resolves to {map, fit, base}. */
export async function cityMap(el, {zoom = 13} = {}) {
  const cfg = await settings();
  const map = L.map(el, {zoomControl: true, attributionControl: true, preferCanvas: false,
    tap: true, zoomSnap: 0.5});
  map.attributionControl.setPrefix(false);
  // data-moving says when a pan or zoom animation runs (tests and screenshots wait for "0").
  el.dataset.moving = "0";
  map.on("movestart zoomstart", () => { el.dataset.moving = "1"; });
  map.on("moveend zoomend", () => { el.dataset.moving = "0"; });
  let bounds = null;
  if (cfg.tile_url) {
    L.tileLayer(cfg.tile_url, {maxZoom: cfg.tile_max_zoom || 19,
      attribution: esc(cfg.tile_attribution || "")}).addTo(map);
    el.dataset.base = "tiles";
  } else {
    bounds = await vectorBase(map, cfg.base_map || "/static/map/demo-city.geojson");
    el.dataset.base = "vector";
  }
  if (cfg.center) map.setView(cfg.center, zoom);
  else if (bounds) map.fitBounds(bounds, {padding: [6, 6]});
  else map.setView([0, 0], 2);
  const fit = (latlngs) => {
    if (cfg.center || !latlngs.length) return;
    map.fitBounds(L.latLngBounds(latlngs).pad(0.15), {maxZoom: 16});
  };
  return {map, fit};
}

async function vectorBase(map, url) {
  const response = await fetch(url);
  if (!response.ok) return null;
  const data = await response.json();
  map.createPane("base").style.zIndex = 250;
  const ROAD = {ring: {color: "#f2c46b", weight: 5}, major: {color: "#ffffff", weight: 4},
    minor: {color: "#ffffff", weight: 2.2}};
  const layer = L.geoJSON(data, {
    pane: "base",
    interactive: false,
    style: (f) => (f.properties.layer === "district"
      ? {color: "#a9b4c0", weight: 1.5, fillColor: "#f4f1ea", fillOpacity: 1}
      : {...(ROAD[f.properties.class] || ROAD.minor), lineCap: "round", fill: false, opacity: 1}),
    pointToLayer: (f, latlng) => L.circleMarker(latlng, {pane: "base", radius: 2, stroke: false,
      fillColor: "#8a7f6a", fillOpacity: 1, interactive: false}),
    onEachFeature: (f, layer) => {
      const name = f.properties.name || "";
      if (f.properties.layer === "district") {
        layer.bindTooltip(name, {permanent: true, direction: "center", className: "district-label"});
      } else if (f.properties.layer === "place") {
        layer.bindTooltip(name, {permanent: true, direction: "right", className: "place-label", offset: [3, 0]});
      }
    },
  }).addTo(map);
  // Classes once drawn (Leaflet sets a path's class only when it creates it).
  layer.eachLayer((l) => l.getElement()?.classList.add("base-" + l.feature.properties.layer));
  map.getContainer().classList.add("vector-base");
  return layer.getBounds();
}

/**
 * A layer of point markers kept in step with data: `update(items)` adds, moves, recolours and
 * removes markers by id. Each item: {id, lat, lon, state, label, radius?}.
 */
export function markerLayer(map, name, {onClick, above = 0} = {}) {
  // Each layer in its own pane: `above` orders layers whose markers share a place.
  const pane = "layer-" + name;
  if (!map.getPane(pane)) map.createPane(pane).style.zIndex = String(410 + above);
  const group = L.featureGroup().addTo(map);
  const byId = new Map();
  function update(items) {
    const seen = new Set();
    for (const item of items) {
      if (item.lat == null || item.lon == null) continue;
      const key = String(item.id);
      seen.add(key);
      const colour = colourOf(item.state);  // one legend on every page: the state names the colour
      let m = byId.get(key);
      if (!m) {
        m = L.circleMarker([item.lat, item.lon], {radius: item.radius || 8, weight: 2, color: "#fff",
          fillOpacity: 0.92, fillColor: colour, className: "marker marker-" + name, bubblingMouseEvents: false,
          pane});
        m.addTo(group);
        if (onClick) m.on("click", () => onClick(m.item));
        byId.set(key, m);
        const path = m.getElement();
        path.dataset.layer = name;
        path.dataset.id = key;
        path.setAttribute("tabindex", "0");
        path.setAttribute("role", "button");
        if (onClick) path.addEventListener("keydown", (ev) => { if (ev.key === "Enter") onClick(m.item); });
      }
      m.item = item;
      m.setLatLng([item.lat, item.lon]);
      m.setStyle({fillColor: colour, radius: item.radius || 8});
      const path = m.getElement();
      path.dataset.state = item.state || "";
      path.setAttribute("aria-label", item.label || key);
      m.unbindTooltip();
      m.bindTooltip(esc(item.label || key), {direction: "top", offset: [0, -6]});
    }
    for (const [key, m] of byId) {
      if (!seen.has(key)) { group.removeLayer(m); byId.delete(key); }
    }
    map.getPane(pane).dataset.count = String(byId.size);
    return byId.size;
  }
  return {group, update, marker: (id) => byId.get(String(id))};
}

/** A legend control: [[state, label], …] as coloured dots. */
export function legend(map, entries, title = "") {
  const control = L.control({position: "bottomleft"});
  control.onAdd = () => {
    const div = L.DomUtil.create("div", "map-legend");
    render(div, html`${title ? html`<b>${title}</b>` : ""}${entries.map(([state, label]) =>
      html`<span><i class="dot" data-colour="${STATE_COLOUR[state] || "grey"}"></i>${label}</span>`)}`);
    return div;
  };
  control.addTo(map);
  return control;
}

/** Pollution-source kinds: a colour apart from the state palette, and a name people read. */
export const SOURCE_KINDS = {
  construction_site: ["#8d6e63", "construction site"], industrial: ["#6a1b9a", "industry"],
  boiler: ["#37474f", "boiler"], restaurant: ["#ad1457", "restaurant"],
  muck_truck: ["#00897b", "muck truck"], other: ["#9e9d24", "other"],
};
const kindOf = (kind) => SOURCE_KINDS[kind] || SOURCE_KINDS.other;

/**
 * A layer of GeoJSON sources (points and outlines) coloured by kind, under the state markers;
 * `update(collection)` redraws it. `popup(properties)` returns the popup's markup (made with
 * `html`, so every value is escaped). Each drawn path carries data-layer, data-id, data-kind.
 */
export function sourceLayer(map, name, {popup} = {}) {
  const pane = "layer-" + name;
  if (!map.getPane(pane)) map.createPane(pane).style.zIndex = "405";
  const group = L.featureGroup().addTo(map);
  function update(collection) {
    group.clearLayers();
    const drawn = L.geoJSON(collection, {
      pane,
      style: (f) => ({color: kindOf(f.properties.kind)[0], weight: 2, fillOpacity: 0.18,
        className: "source source-" + name}),
      pointToLayer: (f, latlng) => L.circleMarker(latlng, {pane, radius: 6, weight: 2,
        color: "#263238", fillColor: kindOf(f.properties.kind)[0], fillOpacity: 0.95,
        className: "source source-" + name, bubblingMouseEvents: false}),
      onEachFeature: (f, layer) => {
        layer.bindTooltip(esc(`${f.properties.name || f.id} (${kindOf(f.properties.kind)[1]})`),
          {direction: "top", offset: [0, -4]});
        if (popup) {
          layer.bindPopup(() => {
            const div = L.DomUtil.create("div", "source-popup");
            div.dataset.source = String(f.id);
            render(div, popup(f.properties));
            return div;
          });
        }
      },
    });
    drawn.addTo(group);
    drawn.eachLayer((l) => {
      const path = l.getElement();
      if (!path) return;
      path.dataset.layer = name;
      path.dataset.id = String(l.feature.id);
      path.dataset.kind = l.feature.properties.kind || "";
    });
    map.getPane(pane).dataset.count = String(collection.features.length);
    return collection.features.length;
  }
  return {group, update};
}

/** A legend control of the source kinds (swatches drawn as SVG: no inline style). */
export function kindLegend(map, title = "Pollution sources") {
  const control = L.control({position: "bottomright"});
  control.onAdd = () => {
    const div = L.DomUtil.create("div", "map-legend");
    render(div, html`<b>${title}</b>${Object.values(SOURCE_KINDS).map(([colour, label]) =>
      html`<span><svg class="swatch" viewBox="0 0 12 12" width="12" height="12" aria-hidden="true"><circle cx="6" cy="6" r="5" fill="${colour}" stroke="#263238" stroke-width="1.5"/></svg> ${label}</span>`)}`);
    return div;
  };
  control.addTo(map);
  return control;
}
