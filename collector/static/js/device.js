// One device: who it is, its latest values, its open incidents, and a command panel.
//
// The panel offers what GET .../commands/capabilities says applies (writable points with their
// bounds, HJ 212 station operations, parking-node settings). Its hints never stop a form: the
// collector judges every command and the page shows its refusal as it gave it. Commands still
// open are followed by polling with backoff until they are final.
import {$, ApiError, ago, api, html, render, start} from "./common.js";

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const FINAL = new Set(["done", "failed", "expired", "cancelled"]);
const POLL_MIN_MS = 1000, POLL_MAX_MS = 15000, IDLE_MS = 30000;
const id = new URLSearchParams(location.search).get("id") || "";
const base = `/api/v1/devices/${encodeURIComponent(id)}`;
let caps = null;
let commands = [];
const expanded = new Map();  // command id -> its audit trail (for the rows opened)
let pollDelay = POLL_MIN_MS, pollTimer = null;

// --- identity, values, incidents --------------------------------------------------------------

function identity(c) {
  $("title").textContent = c.device;
  document.title = `CityGate — ${c.device}`;
  $("f-id").textContent = c.device;
  $("f-kind").textContent = c.kind;
  $("f-profile").textContent = c.profile || "none (reports without a profile)";
  const colour = c.gateway_state === "online" ? "green" : c.gateway_state === "offline" ? "red" : "grey";
  render($("f-gateway"), html`${c.gateway} <span class="chip" data-colour="${colour}">${c.gateway_state}</span>`);
  $("f-site").textContent = [c.site, c.unit && `unit ${c.unit}`].filter(Boolean).join(" · ") || "–";
  render($("f-seen"), html`${ago(c.last_seen)}${c.last_seen ? html` <small>${c.last_seen}</small>` : ""}`);
}

function valueLine(name, v) {
  const label = caps?.points.find((p) => p.point === name)?.labels?.[String(v.value)];
  return html`<div data-quantity="${name}"><b>${name}</b> = ${String(v.value)}${v.unit ? ` ${v.unit}` : ""}${label ? ` (${label})` : ""}
    <small>${ago(v.observed_at)}${v.quality && v.quality !== "good" ? ` · ${v.quality}` : ""}</small></div>`;
}

async function latest() {
  try {
    const out = await api(`${base}/latest`, {signIn: false});
    const q = Object.entries(out.quantities || {});
    render($("latest"), q.length ? html`${q.map(([k, v]) => valueLine(k, v))}` : html`<small>No values stored.</small>`);
    $("latest").dataset.count = String(q.length);
  } catch (e) {
    render($("latest"), html`<small>${e.status === 403 ? "This token may not read device values." : e.message}</small>`);
  }
}

async function incidents() {
  const box = $("incidents");
  try {
    const site = caps.site ? `&site=${encodeURIComponent(caps.site)}` : "";
    const all = await api(`/api/v1/incidents?state=active&limit=500${site}`, {signIn: false});
    const mine = all.filter((i) => i.device === caps.device || (i.devices || []).includes(caps.device));
    render(box, mine.length ? html`${mine.map((i) => html`<li data-incident="${i.id}"><span class="sev ${i.severity}">${i.severity}</span>
      <b>${i.title || i.kind}</b> · ${i.state.replace("_", " ")} · ${ago(i.opened_at)}<br><small>${i.kind} · unit ${i.unit} · <a href="/ops">control room</a></small></li>`)}`
      : html`<li><small>None open.</small></li>`);
    box.dataset.count = String(mine.length);
  } catch (e) {
    render(box, html`<li><small>${e.status === 403 || e.status === 404 ? "Incidents are not shown to this token." : e.message}</small></li>`);
  }
}

// --- the forms --------------------------------------------------------------------------------

const newKey = () => `p-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
const bounds = (lo, hi) => (lo != null && hi != null ? `${lo} … ${hi}` : lo != null ? `≥ ${lo}` : hi != null ? `≤ ${hi}` : "");

function ttlField(defaultS) {
  return html`<label>Expires after (s)<input name="ttl_s" type="number" inputmode="numeric" value="${defaultS}"
    min="1" max="${caps.max_ttl_s}" step="1"></label>`;
}

function valueInput(p) {
  if (p.allowed.length) {
    return html`<label>Value<select name="value">${p.allowed.map((a) => html`<option value="${String(a)}">${String(a)}${p.labels[String(a)] ? ` — ${p.labels[String(a)]}` : ""}</option>`)}</select></label>`;
  }
  if (p.type === "bool") {
    return html`<label>Value<select name="value"><option>true</option><option>false</option></select></label>`;
  }
  return html`<label>Value${p.unit ? ` (${p.unit})` : ""}<input name="value" type="number" step="any" inputmode="decimal"
    ${p.minimum != null ? html`min="${p.minimum}"` : ""} ${p.maximum != null ? html`max="${p.maximum}"` : ""}></label>`;
}

function writeForm(p) {
  const hint = p.allowed.length ? `one of ${p.allowed.map((a) => p.labels[String(a)] || String(a)).join(", ")}` : bounds(p.minimum, p.maximum);
  return html`<form novalidate data-op="write" data-point="${p.point}" data-key="${newKey()}">
    <h3>Write ${p.point} ${p.dangerous ? html`<span class="tag danger">needs confirmation</span>` : ""}</h3>
    ${hint ? html`<p class="hint">${hint}${p.unit ? ` ${p.unit}` : ""}</p>` : ""}
    <div class="fields">${valueInput(p)}${ttlField(60)}<button type="submit">${p.dangerous ? "Issue (then confirm)" : "Send"}</button></div>
    <p class="outcome" role="status"></p></form>`;
}

function argInput(a) {
  const req = a.required ? "" : " (optional)";
  if (a.type === "integer") {
    return html`<label>${a.name}${req}<input name="${a.name}" data-type="integer" type="number" step="1" inputmode="numeric"
      ${a.minimum != null ? html`min="${a.minimum}"` : ""} ${a.maximum != null ? html`max="${a.maximum}"` : ""}
      placeholder="${bounds(a.minimum, a.maximum)}"></label>`;
  }
  if (a.type === "time") {
    return html`<label>${a.name} (UTC)${req}<input name="${a.name}" data-type="time" type="datetime-local" step="60"
      title="${a.description}"></label>`;
  }
  if (a.type === "choice") {
    return html`<label>${a.name}${req}<select name="${a.name}" data-type="choice">${a.required ? "" : html`<option value="">—</option>`}
      ${Object.entries(a.choices).map(([v, what]) => html`<option value="${v}">${v} — ${what}</option>`)}</select></label>`;
  }
  return html`<fieldset class="fields" data-name="${a.name}" data-type="choices"><legend class="hint">${a.name}${req}</legend>
    ${Object.entries(a.choices).map(([v, what]) => html`<label class="check"><input type="checkbox" value="${v}"> ${v} <small>${what}</small></label>`)}</fieldset>`;
}

function opForm(o) {
  const ttl = caps.kind === "parking_node" ? 3600 : 60;  // a node takes a command only at its next report
  const fields = o.args_known ? o.args.map(argInput)
    : html`<label>Arguments (JSON)<textarea name="args" rows="2" maxlength="2000">{}</textarea></label>`;
  return html`<form novalidate data-op="${o.op}" data-key="${newKey()}">
    <h3>${o.op}</h3><p class="hint">${o.summary}${o.rule ? html`<br>${o.rule}` : ""}</p>
    <div class="fields">${fields}${ttlField(ttl)}<button type="submit">Run</button></div>
    <p class="outcome" role="status"></p></form>`;
}

function panel() {
  const box = $("panel");
  box.dataset.may = String(caps.may_command);
  if (caps.profile_problem) {
    $("panel-note").textContent = caps.profile_problem;
    return;
  }
  if (!caps.may_command) {
    $("panel-note").textContent = `This token may not command this device: ${caps.why_not}`;
    render($("forms"), "");
    return;
  }
  const ops = caps.ops.filter((o) => o.op !== "write");
  $("panel-note").textContent = caps.ops.length ? "" : "No commands apply to this device.";
  render($("forms"), html`${caps.points.map(writeForm)}${ops.map(opForm)}`);
}

function readValue(form, point) {
  const text = form.elements.value.value.trim();
  if (point.type === "bool") return text === "true";
  const n = Number(text);
  return text !== "" && Number.isFinite(n) ? n : text || null;  // the collector says what is wrong
}

function readArgs(form) {
  if (form.elements.args) {
    try { return JSON.parse(form.elements.args.value || "{}"); } catch { return form.elements.args.value; }
  }
  const args = {};
  for (const el of form.querySelectorAll("[data-type]")) {
    if (el.dataset.type === "choices") {
      const chosen = [...el.querySelectorAll("input:checked")].map((c) => c.value);
      if (chosen.length) args[el.dataset.name] = chosen;
      continue;
    }
    const v = el.value.trim();
    if (v === "") continue;
    if (el.dataset.type === "integer") args[el.name] = /^-?\d+$/.test(v) ? Number(v) : v;
    else if (el.dataset.type === "time") args[el.name] = v.length === 16 ? v + ":00" : v;
    else args[el.name] = v;
  }
  return args;
}

function refusal(e) {
  const d = e instanceof ApiError ? e.body?.detail : null;
  const reason = d && typeof d === "object" && !Array.isArray(d) ? d.reason : e.status === 422 ? "invalid" : `HTTP ${e.status ?? "?"}`;
  return html`Refused — <b class="reason">${reason || "refused"}</b>: <span class="message">${e.message}</span>`;
}

function outcome(form, kind, markup) {
  const box = form.querySelector(".outcome");
  box.dataset.kind = kind;
  render(box, markup);
}

async function submit(form) {
  const op = form.dataset.op;
  const point = caps.points.find((p) => p.point === form.dataset.point);
  const ttl = Number(form.elements.ttl_s.value);
  const body = op === "write" ? {point: form.dataset.point, value: readValue(form, point)} : {op, args: readArgs(form)};
  Object.assign(body, {ttl_s: Number.isFinite(ttl) && form.elements.ttl_s.value !== "" ? ttl : 60, key: form.dataset.key});
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const out = await api(`${base}/commands`, {method: "POST", body, signIn: false});
    form.dataset.key = newKey();  // the next submit is a new command; a double click is not
    if (out.status === "awaiting_confirmation") {
      outcome(form, "awaiting", html`Issued <code>${out.id}</code>; it waits for a confirmation (below, within ${Math.round(caps.confirm_within_s)} s).`);
    } else {
      outcome(form, "ok", html`Issued <code>${out.id}</code>: ${out.status}. Followed below.`);
    }
    upsert(out);
    followSoon();
  } catch (e) {
    outcome(form, "refused", refusal(e));
  } finally {
    button.disabled = false;
  }
}

// --- recent commands --------------------------------------------------------------------------

function what(c) {
  if (c.op === "write") return html`write <b>${c.point}</b> = ${String(c.value_written)}`;
  const args = Object.entries(c.args || {});
  return html`<b>${c.op}</b>${args.length ? html` <small>${args.map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ")}</small>` : ""}`;
}

function result(c) {
  if (c.status === "done") {
    const v = c.value_read_back;
    return html`${typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? "")}`;
  }
  return html`${c.reason ? html`<b class="reason">${c.reason}</b> ` : ""}${c.message}`;
}

const colourOf = (s) => (s === "done" ? "green" : s === "failed" || s === "expired" ? "red" : s === "awaiting_confirmation" ? "amber" : "blue");

function auditRow(c) {
  const trail = expanded.get(c.id);
  if (!trail) return "";
  return html`<tr class="audit-row" data-audit-of="${c.id}"><td colspan="6"><ol>${trail.map((a) => html`<li>
    <small>${new Date(a.at).toISOString()}</small> <b>${a.what}</b> by ${a.who}
    ${Object.keys(a.detail || {}).length ? html`<code>${JSON.stringify(a.detail)}</code>` : ""}</li>`)}</ol></td></tr>`;
}

function commandRow(c) {
  const confirm = c.status === "awaiting_confirmation" && caps?.may_command
    ? html`<button type="button" class="small" data-confirm="${c.id}">Confirm</button> ` : "";
  return html`<tr data-command="${c.id}" data-status="${c.status}">
    <td data-label="Issued">${ago(new Date(c.issued).toISOString())}</td>
    <td data-label="Command">${what(c)}${c.dangerous ? html` <span class="tag danger">dangerous</span>` : ""}</td>
    <td data-label="Status"><span class="chip status" data-colour="${colourOf(c.status)}">${c.status.replaceAll("_", " ")}</span></td>
    <td data-label="Result">${result(c)}</td>
    <td data-label="By">${c.issuer}${c.confirmed_by ? html`<br><small>confirmed by ${c.confirmed_by}</small>` : ""}</td>
    <td>${confirm}<button type="button" class="secondary small" data-audit="${c.id}" aria-expanded="${expanded.has(c.id)}">${expanded.has(c.id) ? "Hide" : "Audit"}</button></td></tr>
    ${auditRow(c)}`;
}

function drawCommands() {
  render(document.querySelector("#commands tbody"), html`${commands.map(commandRow)}`);
  $("commands").dataset.count = String(commands.length);
  $("commands").dataset.open = String(commands.filter((c) => !FINAL.has(c.status)).length);
}

function upsert(c) {
  const at = commands.findIndex((x) => x.id === c.id);
  if (at >= 0) commands[at] = c; else commands.unshift(c);
  drawCommands();
}

async function loadCommands() {
  commands = await api(`${base}/commands?limit=20`, {signIn: false});
  await Promise.all([...expanded.keys()].map(async (cid) => {
    expanded.set(cid, (await api(`/api/v1/commands/${encodeURIComponent(cid)}`, {signIn: false})).audit);
  }));
  drawCommands();
}

/** Poll again soon: 1 s, then backing off to 15 s while a command is open; 30 s when none is. */
async function follow() {
  clearTimeout(pollTimer);
  try {
    await loadCommands();
    $("commands-note").textContent = "";
    $("commands-note").className = "muted";
  } catch (e) {
    $("commands-note").textContent = `Commands could not be loaded: ${e.message}`;
  }
  const open = commands.some((c) => !FINAL.has(c.status));
  pollDelay = open ? Math.min(POLL_MAX_MS, Math.round(pollDelay * 1.5)) : IDLE_MS;
  pollTimer = setTimeout(follow, pollDelay);
}

function followSoon() {
  clearTimeout(pollTimer);
  pollDelay = POLL_MIN_MS / 1.5;
  pollTimer = setTimeout(follow, POLL_MIN_MS);
}

async function confirmCommand(button) {
  const cid = button.dataset.confirm;
  button.disabled = true;
  try {
    upsert(await api(`/api/v1/commands/${encodeURIComponent(cid)}/confirm`, {method: "POST", signIn: false}));
    $("commands-note").textContent = "";
    $("commands-note").className = "muted";
    followSoon();
  } catch (e) {
    render($("commands-note"), refusal(e));
    $("commands-note").className = "error";
    button.disabled = false;
  }
}

async function toggleAudit(button) {
  const cid = button.dataset.audit;
  if (expanded.has(cid)) expanded.delete(cid);
  else expanded.set(cid, (await api(`/api/v1/commands/${encodeURIComponent(cid)}`, {signIn: false})).audit);
  drawCommands();
}

// --- start ------------------------------------------------------------------------------------

function wire() {
  $("forms").addEventListener("submit", (ev) => {
    ev.preventDefault();
    submit(ev.target.closest("form"));
  });
  $("commands").addEventListener("click", (ev) => {
    const confirm = ev.target.closest("button[data-confirm]");
    if (confirm) { confirmCommand(confirm); return; }
    const audit = ev.target.closest("button[data-audit]");
    if (audit) toggleAudit(audit).catch((e) => { $("commands-note").textContent = e.message; });
  });
}

async function main() {
  start();
  if (!ID_RE.test(id)) {
    render($("error"), html`Not a device id: <code>${id.slice(0, 200)}</code>. Open a device from the <a href="/">overview</a>.`);
    document.body.dataset.updated = "error";
    return;
  }
  $("title").textContent = id;
  try {
    caps = await api(`${base}/commands/capabilities`, {signIn: false});
  } catch (e) {
    if (e.status === 401) return;  // the sign-in screen is up
    render($("error"), e.status === 404 ? html`No device ${id} has reported.`
      : e.status === 403 ? html`This token may not see devices: ${e.message}` : html`${e.message}`);
    document.body.dataset.updated = "error";
    return;
  }
  identity(caps);
  panel();
  wire();
  await Promise.all([latest(), incidents()]);
  if (caps.may_command) await follow();
  else {
    $("commands").hidden = true;
    $("commands-note").textContent = "Commands are shown to the tokens that may command this device.";
  }
  document.body.dataset.updated = "1";
}

main();
