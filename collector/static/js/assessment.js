// The assessment page: per unit, grid or district over a period, what was found, handled and
// closed, how fast, and how much within the SLA; the same as CSV.

import {$, api, html, render, takeToken, token} from "./common.js";

const COUNTS = ["found", "dispatched", "acknowledged", "arrived", "handled", "closed", "reopened", "overdue"];
const pct = (v) => (v === null || v === undefined ? "—" : `${Math.round(v * 1000) / 10}%`);
const mins = (s) => (s === null || s === undefined ? "—" : `${Math.round(s / 6) / 10} min`);

function query() {
  return new URLSearchParams({from: $("from").value, to: $("to").value, by: $("by").value});
}

function row(key, f) {
  const src = f.found_by;
  return html`<tr><th>${key === "" ? "(none)" : key}</th>${COUNTS.map((c) => html`<td>${f[c]}</td>`)}
    <td>${src.device} / ${src.patrol} / ${src.citizen}</td><td>${pct(f.within_sla)}</td>
    <td>${mins(f.times.acknowledge.mean_s)} · ${mins(f.times.acknowledge.p90_s)}</td>
    <td>${mins(f.times.arrive.mean_s)} · ${mins(f.times.arrive.p90_s)}</td>
    <td>${mins(f.times.resolve.mean_s)} · ${mins(f.times.resolve.p90_s)}</td></tr>`;
}

async function show(event) {
  event?.preventDefault();
  $("status").textContent = "Loading…";
  const got = await api(`/api/v1/assessment?${query()}`);
  const head = html`<tr><th>${got.by}</th>${COUNTS.map((c) => html`<th>${c}</th>`)}
    <th>device / patrol / citizen</th><th>within SLA</th><th>ack mean · p90</th>
    <th>arrive mean · p90</th><th>resolve mean · p90</th></tr>`;
  render($("figures"), html`${head}${got.groups.map((g) => row(g.key, g))}${row("all", got.total)}`);
  render($("weeks"), html`<tr><th>week</th>${COUNTS.map((c) => html`<th>${c}</th>`)}<th>sources</th><th>within SLA</th><th>ack</th><th>arrive</th><th>resolve</th></tr>
    ${got.total.weeks.map((w) => row(w.week, w))}`);
  $("status").textContent = `As of ${got.as_of}`;
  document.body.dataset.loaded = "yes";
}

async function download() {
  const response = await fetch(`/api/v1/assessment?${query()}&format=csv`,
                               {headers: {Authorization: "Bearer " + token()}});
  if (!response.ok) { $("status").textContent = `CSV: HTTP ${response.status}`; return; }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `assessment-${$("by").value}-${$("from").value}-${$("to").value}.csv`;
  link.click();
  URL.revokeObjectURL(link.href);
}

takeToken();
const today = new Date();
$("to").value = today.toISOString().slice(0, 10);
$("from").value = new Date(today.getTime() - 30 * 86400000).toISOString().slice(0, 10);
$("period").addEventListener("submit", (e) => show(e).catch((err) => { $("status").textContent = err.message; }));
$("csv").addEventListener("click", () => download().catch((err) => { $("status").textContent = err.message; }));
show().catch((err) => { $("status").textContent = err.message; });
