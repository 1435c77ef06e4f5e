// Parking availability per zone, refreshed every 3 s.
import {$, ago, api, html, render, start} from "./common.js";

const share = (n, total) => (total ? (100 * n) / total : 0);
let rounds = 0;

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
  const cls = z.available === 0 ? "full" : z.available / Math.max(1, z.total) < 0.15 ? "few" : "plenty";
  return html`<tr class="${cls}" data-zone="${z.id}" data-available="${z.available}"><td>${z.id}</td><td>${z.name}</td>
    <td class="num avail">${z.available} / ${z.total}</td><td class="num">${z.occupied}</td><td class="num">${z.unknown}</td>
    <td class="num">${z.closed}</td><td>${bar(z)}</td><td>${z.updated ? ago(z.updated) : "–"}</td></tr>`;
}

async function refresh() {
  const status = $("status");
  try {
    const [zones, alerts] = await Promise.all([api("/api/v1/parking/zones"), api("/api/v1/parking/alerts?limit=10000")]);
    const sum = (k) => zones.reduce((a, z) => a + z[k], 0);
    $("free").textContent = sum("available");
    $("total").textContent = sum("total");
    $("unknown").textContent = sum("unknown");
    $("alerts").textContent = alerts.length;
    render(document.querySelector("#zones tbody"), html`${zones.map(row)}`);
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

start();
refresh();
