// The live status page: gateways, devices and their latest values.
import {$, ago, api, html, render, start} from "./common.js";

function value(name, v) {
  if (v.value === true) return name;
  if (v.value === false) return null;
  return `${name}=${v.value}${v.unit ? " " + v.unit : ""}`;
}

function gatewayRow(g) {
  return html`<tr data-gateway="${g.id}"><td>${g.id}</td><td class="${g.state}">${g.state}</td><td>${g.device_count}</td>
    <td>${g.last_seq ?? "–"}</td><td>${ago(g.last_seen)}</td></tr>`;
}

function deviceRow(d, latest) {
  const q = latest.quantities;
  const fault = q.fault_code && q.fault_code.value ? html`<span class="fault">fault ${q.fault_code.value}</span> ` : "";
  const values = Object.entries(q).map(([k, v]) => value(k, v)).filter(Boolean).join(", ");
  return html`<tr data-device="${d.id}"><td>${d.id}</td><td>${d.kind}</td><td>${d.gateway}</td><td>${ago(d.last_seen)}</td>
    <td>${fault}<small>${values}</small></td></tr>`;
}

async function refresh() {
  try {
    const [health, gws, devs] = await Promise.all([api("/api/v1/health"), api("/api/v1/gateways"), api("/api/v1/devices")]);
    $("gw-online").textContent = `${gws.filter((g) => g.state === "online").length} / ${gws.length}`;
    $("dev-count").textContent = devs.length;
    $("readings").textContent = health.counts.readings ?? "–";
    $("ingest").textContent = health.status;
    render(document.querySelector("#gateways tbody"), html`${gws.map(gatewayRow)}`);
    const shown = devs.slice(0, 60);
    const latest = await Promise.all(shown.map((d) =>
      api(`/api/v1/devices/${encodeURIComponent(d.id)}/latest`).catch(() => ({quantities: {}}))));
    render(document.querySelector("#devices tbody"), html`${shown.map((d, i) => deviceRow(d, latest[i]))}`);
    document.body.dataset.updated = String(Number(document.body.dataset.updated || 0) + 1);
  } catch (e) {
    $("ingest").textContent = e.status === 401 || e.status === 403 ? "sign in" : "unreachable";
    if (e.status === 401) return;  // the sign-in screen is up: stop polling
  }
  setTimeout(refresh, 2000);
}

start();
refresh();
