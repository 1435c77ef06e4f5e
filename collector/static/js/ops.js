// The operations room: every incident with running ages and escalation, overrides, silences,
// closed-loop figures, and sign-in links for crew phones.
import {$, ApiError, api, clock, duration, html, live, render, serverNow, start} from "./common.js";

const incidents = new Map();
const details = new Map();     // incident id -> {version, history} for incidents with overrides
const closing = new Map();     // incident id -> message: a refused Close awaiting a reason
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

function closeCell(inc) {
  if (!(inc.allowed || []).includes("close")) return "";
  const refused = closing.get(inc.id);
  if (!refused) return html`<button type="button" data-close="${inc.id}" class="secondary">Close</button>`;
  return html`<form class="close-form" data-id="${inc.id}"><small>${refused}</small>
    <input name="reason" required maxlength="500" placeholder="reason for the override" aria-label="override reason for incident ${inc.id}">
    <button type="submit">Close anyway</button></form>`;
}

function row(i) {
  const name = i.fault?.en || i.title;
  const site = i.site_info?.name || i.site;
  return html`<tr id="incident-${i.id}" data-state="${i.state}" class="${i.arrival_overdue && !i.on_site_at ? "overdue" : ""} ${i.state === "closed" ? "closed-row" : ""}">
    <td>${i.id}</td><td><span class="sev ${i.severity}">${i.severity}</span></td>
    <td class="${i.state}">${i.state.replace("_", " ")}${i.awaiting_confirmation ? html`<br><span class="tag ok">cleared by device</span>` : ""}</td>
    <td class="age" data-id="${i.id}">${age(i)}</td>
    <td>${i.unit || "unassigned"}${i.assignee?.name ? html`<br><small>${i.assignee.name}</small>` : ""}</td>
    <td class="title"><b>${name}</b> ${i.device !== "*" ? i.device : ""}<br><small>${site}${i.occurrences > 1 ? ` · ${i.occurrences}×` : ""}</small>
      ${i.arrival_overdue && !i.on_site_at ? html`<br><span class="tag">arrival overdue</span>` : ""}</td>
    <td class="esc">${escalation(i)}</td>
    <td class="steps">${steps(i)}</td>
    <td class="num">${i.overrides || ""}</td><td>${closeCell(i)}</td></tr>`;
}

function renderIncidents() {
  const list = [...incidents.values()].sort((a, b) => b.id - a.id);
  const count = (states) => list.filter((i) => states.includes(i.state)).length;
  $("n-open").textContent = count(["open"]);
  $("n-working").textContent = count(["acknowledged", "on_site"]);
  $("n-resolved").textContent = count(["resolved"]);
  const typed = [...document.querySelectorAll("form.close-form")].map((f) => [f.dataset.id, f.elements.reason.value]);
  render(document.querySelector("#incidents tbody"), html`${list.map(row)}`);
  for (const [id, value] of typed) {  // a reason being typed survives a pushed update
    const f = document.querySelector(`form.close-form[data-id="${CSS.escape(id)}"]`);
    if (f && value) f.elements.reason.value = value;
  }
  $("incidents").dataset.count = String(list.length);
  document.body.dataset.updated = String(Number(document.body.dataset.updated || 0) + 1);
  loadOverrides().catch(showError);
}

function tick() {
  const now = serverNow();
  for (const el of document.querySelectorAll("td.age")) {
    const inc = incidents.get(Number(el.dataset.id));
    if (inc) el.textContent = age(inc, now);
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
    <td>${h.id}</td><td>${short(h.at)}</td><td>${h.who}</td><td>${h.from} → ${h.to}</td>
    <td>${(h.override.conditions || []).join(", ")}</td><td class="reason">${h.override.reason}</td></tr>`)}`
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
    <td>${s.id}</td><td>${scope(s)}${s.life_safety ? html` <span class="tag">life safety</span>` : ""}</td>
    <td>${s.created_by}${s.role ? html` <small>(${s.role})</small>` : ""}</td><td class="reason">${s.reason}</td>
    <td>${short(s.starts_at)}</td><td>${short(s.ends_at)}</td><td>${state(s)}</td></tr>`)}`
    : html`<tr><td colspan="7"><small>No silences.</small></td></tr>`);
  $("silences").dataset.count = String(list.length);
}

function statsRow(name, f) {
  const arrive = f.time_to_arrive || {};
  const share = arrive.share_within_sla;
  return html`<tr><td>${name}</td><td>${f.found}</td><td>${f.acknowledged}</td><td>${f.resolved}</td><td>${f.closed}</td>
    <td>${duration(f.time_to_acknowledge.mean_s)}</td><td>${duration(f.time_to_acknowledge.p90_s)}</td>
    <td>${duration(arrive.mean_s)}</td><td>${duration(arrive.p90_s)}</td>
    <td>${share === null || share === undefined ? "–" : `${Math.round(share * 100)}% (${arrive.within_sla}/${arrive.with_sla})`}</td>
    <td>${duration(f.time_to_resolve.mean_s)}</td><td>${duration(f.time_to_resolve.p90_s)}</td></tr>`;
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

let soon = null;
function figuresSoon() {
  clearTimeout(soon);
  soon = setTimeout(() => Promise.all([loadStats(), loadSilences()]).catch(showError), 500);
}

async function close(id, body) {
  try {
    const inc = await api(`/api/v1/incidents/${id}/close`, {method: "POST", body});
    closing.delete(id);
    incidents.set(inc.id, inc);
  } catch (e) {
    const d = e instanceof ApiError ? e.body?.detail : null;
    if (e.status === 409 && d?.error === "condition_present") closing.set(id, d.message);
    else showError(e);
  }
  renderIncidents();
}

function onClick(ev) {
  const b = ev.target.closest("button[data-close]");
  if (!b) return;
  b.disabled = true;
  close(Number(b.dataset.close), {note: ""});
}

function onSubmit(ev) {
  const form = ev.target.closest("form.close-form");
  if (!form) return;
  ev.preventDefault();
  form.querySelector("button").disabled = true;
  close(Number(form.dataset.id), {note: "", override: true, reason: form.elements.reason.value.trim()});
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
  await Promise.all([loadStats(), loadSilences()]);
}

async function main() {
  start();
  document.querySelector("#incidents tbody").addEventListener("click", onClick);
  document.querySelector("#incidents tbody").addEventListener("submit", onSubmit);
  $("signin-link").addEventListener("submit", makeSignInLink);
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
}

main();
