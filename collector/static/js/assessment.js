// The assessment page: per unit, grid or district over a period, what was found, handled and
// closed, how fast, and how much within the SLA; the same as CSV.

import {$, api, ApiError, duration, html, num, render, start, token} from "./common.js";

const COUNTS = ["found", "dispatched", "acknowledged", "arrived", "handled", "closed", "reopened", "overdue"];
const STEPS = [["acknowledge", "ack"], ["arrive", "arrive"], ["resolve", "resolve"]];
const pct = (v) => (v === null || v === undefined ? "–" : `${num(v * 100, 1)} %`);

function query() {
  return new URLSearchParams({from: $("from").value, to: $("to").value, by: $("by").value});
}

function head(first) {
  return html`<thead><tr><th scope="col">${first}</th>${COUNTS.map((c) => html`<th scope="col">${c}</th>`)}
    <th scope="col">device / patrol / citizen</th><th scope="col">within SLA</th>
    ${STEPS.map(([, label]) => html`<th scope="col">${label} mean · p90</th>`)}</tr></thead>`;
}

function row(key, f, cls = "") {
  const src = f.found_by;
  return html`<tr class="${cls}"><th scope="row">${key === "" ? "(none)" : key}</th>
    ${COUNTS.map((c) => html`<td class="num" data-label="${c}">${f[c]}</td>`)}
    <td data-label="device / patrol / citizen">${src.device} / ${src.patrol} / ${src.citizen}</td>
    <td class="num" data-label="within SLA">${pct(f.within_sla)}</td>
    ${STEPS.map(([step, label]) => html`<td data-label="${label} mean · p90">${duration(f.times[step].mean_s)} · ${duration(f.times[step].p90_s)}</td>`)}</tr>`;
}

function totals(t) {
  return html`<div class="tile">Found <b>${t.found}</b></div>
    <div class="tile">Handled <b>${t.handled}</b></div>
    <div class="tile" data-colour="${t.overdue ? "red" : "green"}">Overdue <b>${t.overdue}</b></div>
    <div class="tile">Within SLA <b>${pct(t.within_sla)}</b></div>`;
}

async function show(event) {
  event?.preventDefault();
  $("status").textContent = "Loading…";
  const got = await api(`/api/v1/assessment?${query()}`);
  render($("totals"), totals(got.total));
  render($("figures"), html`${head(got.by)}<tbody>${got.groups.map((g) => row(g.key, g))}${row("all", got.total, "all")}</tbody>`);
  const weeks = got.total.weeks.length ? got.total.weeks.map((w) => row(w.week, w))
    : html`<tr><td colspan="${COUNTS.length + 6}" class="muted">No incidents were opened in this period.</td></tr>`;
  render($("weeks"), html`${head("week of")}<tbody>${weeks}</tbody>`);
  const day = (iso) => String(iso || "").slice(0, 10);
  $("status").textContent = `${got.groups.length} ${got.by}(s) · ${day(got.from)} to ${day(got.to)} (end excluded) · as of ${new Date(got.as_of).toLocaleString()}`;
  document.body.dataset.loaded = "yes";
}

async function download() {
  const headers = token() ? {Authorization: "Bearer " + token()} : {};
  const response = await fetch(`/api/v1/assessment?${query()}&format=csv`, {headers});
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null), "CSV");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `assessment-${$("by").value}-${$("from").value}-${$("to").value}.csv`;
  link.click();
  URL.revokeObjectURL(link.href);
}

const failed = (err) => { $("status").textContent = err.message; };

function main() {
  start();
  const today = new Date();
  $("to").value = today.toISOString().slice(0, 10);
  $("from").value = new Date(today.getTime() - 30 * 86400000).toISOString().slice(0, 10);
  $("period").addEventListener("submit", (e) => show(e).catch(failed));
  $("csv").addEventListener("click", () => download().catch(failed));
  show().catch(failed);
}

main();
