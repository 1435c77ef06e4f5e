// Shared by every page: escaping, the signed-in token, the API, time helpers, navigation.
//
// Every value that reaches the DOM as markup goes through `html` (which escapes each
// interpolation) or through textContent. Pages never build markup with plain string
// concatenation; the Content-Security-Policy forbids inline script as the second line.

const ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "`": "&#96;"};

/** Escape text for HTML content and quoted attribute values. */
export const esc = (value) => String(value ?? "").replace(/[&<>"'`]/g, (c) => ENTITIES[c]);

/** Markup known to be safe: only `html` and `raw` make it. */
class Markup {
  constructor(text) { this.text = text; }
  toString() { return this.text; }
}

/** Trusted markup written in our own code (never data from the API). */
export const raw = (text) => new Markup(String(text));

function part(value) {
  if (value instanceof Markup) return value.text;
  if (Array.isArray(value)) return value.map(part).join("");
  if (value === null || value === undefined || value === false) return "";
  return esc(value);
}

/** Tagged template: every interpolation is escaped unless it is itself `html`/`raw`. */
export function html(strings, ...values) {
  let out = strings[0];
  values.forEach((value, i) => { out += part(value) + strings[i + 1]; });
  return new Markup(out);
}

/** Replace an element's content with markup made by `html` (plain strings are escaped). */
export function render(el, markup) {
  el.innerHTML = markup instanceof Markup ? markup.text : esc(markup);
}

const SAFE_URL = /^(https:|http:|tel:|geo:|mailto:|\/(?!\/)|#)/i;
/** A URL for href: only web, phone, geo, mail and same-origin paths; anything else is "#". */
export const safeUrl = (url) => (SAFE_URL.test(String(url ?? "")) ? String(url) : "#");

/** A device id as a link to its page (escaped; the id also URL-encoded). */
export const deviceLink = (id) => html`<a class="device-link" href="/device?id=${encodeURIComponent(String(id ?? ""))}">${id}</a>`;

/** Shorthand for document.getElementById. */
export const $ = (id) => document.getElementById(id);

// --- the signed-in token ----------------------------------------------------------------------

const TOKEN_KEY = "citygate.token";

/** Take `?token=` from the address into this browser's storage and out of the address bar. */
export function takeToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    localStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  return token();
}

/** The token this browser signed in with ("" when none). */
export const token = () => localStorage.getItem(TOKEN_KEY) || "";
/** Keep a token for the pages of this collector. */
export const setToken = (value) => localStorage.setItem(TOKEN_KEY, value.trim());
/** Forget the token. */
export const signOut = () => localStorage.removeItem(TOKEN_KEY);

// --- the API ----------------------------------------------------------------------------------

/** An API answer that was not 2xx; `body` is the parsed JSON (FastAPI's `detail`). */
export class ApiError extends Error {
  constructor(status, body, path) {
    const d = body?.detail;
    const text = typeof d === "string" ? d : d?.message || (Array.isArray(d) ? d.map((e) => e.msg).join("; ") : "");
    super(text || `${path}: HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

let serverOffsetMs = 0;
/** Now by the collector's clock (phones' clocks drift; the Date header says the server's). */
export const serverNow = () => Date.now() + serverOffsetMs;

function noteServerClock(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (Number.isNaN(date)) return;
  const offset = date - Date.now();
  // The header has whole seconds: correct only a drift larger than its resolution.
  serverOffsetMs = Math.abs(offset) > 2000 ? offset : 0;
}

/** Fetch JSON from the collector with the bearer token; a 401 shows the sign-in screen, and so
 *  does a 403 unless `signIn` is false (a refusal the page shows itself, e.g. of a command). */
export async function api(path, {method = "GET", body, signIn = true} = {}) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  noteServerClock(response);
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (response.status === 401) showSignIn(t ? "This token was not accepted. Sign in again." : "");
  if (response.status === 403 && signIn) showSignIn("Signed in, but this token may not see this page: " + (new ApiError(403, data, path)).message);
  if (!response.ok) throw new ApiError(response.status, data, path);
  return data;
}

/** Server-sent events with the token; `document.body.dataset.sse` says the connection state. */
export function live(path, handlers, {onOpen} = {}) {
  const sep = path.includes("?") ? "&" : "?";
  const es = new EventSource(path + sep + "token=" + encodeURIComponent(token()));
  const conn = $("conn");
  const mark = (state, text) => {
    document.body.dataset.sse = state;
    if (conn) conn.textContent = text;
  };
  es.onopen = () => { mark("open", "live"); if (onOpen) onOpen(); };
  es.onerror = () => mark("reconnecting", "reconnecting");
  for (const [name, handle] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => handle(JSON.parse(ev.data)));
  }
  es.addEventListener("signed-out", () => {  // the token was revoked, or replaced on another phone
    es.close();
    signOut();
    mark("closed", "signed out");
    showSignIn("This sign-in has ended (revoked, or used on another phone). Sign in again.");
  });
  return es;
}

// --- sign-in screen ---------------------------------------------------------------------------

/** A one-time sign-in link (or its bare code) pasted where a token would go: its code. */
export function signInCode(text) {
  const value = String(text || "").trim();
  const m = value.match(/(?:^|\/)signin\/([A-Za-z0-9_-]{8,200})\/?(?:[?#].*)?$/);
  return m ? m[1] : "";
}

const NEXT_KEY = "citygate.next";
/** Where a one-time link sends the browser after signing in: this page, or /crew. */
export function nextPage() {
  const next = sessionStorage.getItem(NEXT_KEY) || "";
  sessionStorage.removeItem(NEXT_KEY);
  return /^\/(?!\/)[\w/.-]*$/.test(next) ? next : "/crew";
}

/** Show the sign-in screen instead of the page (on a 401, or with no token at all). */
export function showSignIn(message = "") {
  document.body.dataset.auth = "required";
  if ($("conn")) $("conn").textContent = "signed out";
  let box = $("sign-in");
  if (!box) {
    box = document.createElement("section");
    box.id = "sign-in";
    box.className = "sign-in";
    render(box, html`<h2>Sign in to CityGate</h2>
      <p>Paste your access token, or the one-time sign-in link the operations room gave you
        (or scan its QR code with this phone). The sign-in is kept in this browser only.</p>
      <p class="error" id="sign-in-message" role="alert"></p>
      <form id="sign-in-form">
        <label for="sign-in-token">Token or sign-in link</label>
        <input id="sign-in-token" type="password" autocomplete="current-password" required
          maxlength="2000" spellcheck="false">
        <button type="submit">Sign in</button>
      </form>`);
    const main = document.querySelector("main") || document.body;
    main.prepend(box);
    $("sign-in-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $("sign-in-token").value;
      const code = signInCode(value);
      if (code) {  // a one-time link: spend it on its own page, then come back here
        sessionStorage.setItem(NEXT_KEY, location.pathname);
        location.assign("/signin/" + encodeURIComponent(code));
        return;
      }
      setToken(value);
      location.reload();
    });
  }
  box.hidden = false;
  $("sign-in-message").textContent = message;
}

// --- time -------------------------------------------------------------------------------------

/** "45 s ago", "12 min ago", "3 h ago" or a date, from an ISO time. */
export function ago(iso, now = serverNow()) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return new Date(iso).toLocaleString();
}

const pad = (n) => String(n).padStart(2, "0");
/** A running clock: "mm:ss", "h:mm:ss", or "N d hh:mm:ss". */
export function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  const mmss = pad(m) + ":" + pad(s % 60);
  if (d) return `${d} d ${pad(h)}:${mmss}`;
  return h ? `${h}:${mmss}` : mmss;
}

/** A duration for figures: "95 s", "2.5 min", "1.2 h" ("–" when unknown). */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return Math.round(seconds) + " s";
  if (seconds < 7200) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

/** Seconds since an ISO time, by the collector's clock. */
export const since = (iso, now = serverNow()) => (iso ? (now - Date.parse(iso)) / 1000 : 0);

// --- navigation -------------------------------------------------------------------------------

// [path, name, roles that may open it (none: everyone signed in)]
const PAGES = [["/", "Overview"], ["/ops", "Control room"], ["/parking", "Parking"],
  ["/environment", "Environment"], ["/assessment", "Assessment", ["reader", "ops", "admin"]],
  ["/crew", "Crew"], ["/docs", "API"]];

/** Show the links of role-bound pages to the roles that may open them (asked once). */
async function showRoleLinks(nav) {
  const bound = nav.querySelectorAll("a[data-roles]");
  if (!bound.length) return;
  const t = token();
  const response = await fetch("/api/v1/whoami", {headers: t ? {Authorization: "Bearer " + t} : {}});
  if (!response.ok) return;
  const {role} = await response.json();
  nav.dataset.role = role;
  for (const a of bound) a.hidden = !a.dataset.roles.split(" ").includes(role);
}

/** Fill the page's <nav id="nav"> and wire the sign-out link. */
export function navigation() {
  const nav = $("nav");
  if (!nav) return;
  const here = location.pathname;
  render(nav, html`${PAGES.map(([path, name, roles]) => html`<a href="${path}"${path === here ? raw(' aria-current="page"') : ""}${roles && path !== here ? html` data-roles="${roles.join(" ")}" hidden` : ""}>${name}</a>`)}
    <a href="#" id="sign-out">Sign out</a>`);
  $("sign-out").addEventListener("click", (ev) => { ev.preventDefault(); signOut(); showSignIn("Signed out."); });
  showRoleLinks(nav).catch(() => {});
}

/** Every page's start: the token from the address, then navigation. A 401 signs in (an
 *  open collector needs no token, so the pages ask the API before asking the user). */
export function start() {
  takeToken();
  navigation();
  return true;
}

let pageSettings = null;
/** The deployment's page settings (map links, base map), fetched once. */
export function settings() {
  pageSettings ??= fetch("/pages/settings.json").then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
  return pageSettings;
}

/** Fill a template URL's {name} fields with URL-encoded values. */
export const fill = (template, values) =>
  String(template || "").replace(/\{(\w+)\}/g, (m, k) => (k in values ? encodeURIComponent(values[k]) : m));

/** A number with thousands grouping, or "–". */
export const num = (n, digits = 0) => (n === null || n === undefined || Number.isNaN(n) ? "–"
  : Number(n).toLocaleString("en", {maximumFractionDigits: digits, minimumFractionDigits: digits}));

/** Great-circle distance in metres between two [lat, lon] points. */
export function metres(lat1, lon1, lat2, lon2) {
  const r = Math.PI / 180, R = 6371008.8;
  const a = Math.sin((lat2 - lat1) * r / 2) ** 2 +
    Math.cos(lat1 * r) * Math.cos(lat2 * r) * Math.sin((lon2 - lon1) * r / 2) ** 2;
  return 2 * R * Math.asin(Math.min(1, Math.sqrt(a)));
}

/** True when an API error means "this collector has no such route/feature" (older or unconfigured). */
export const missing = (e) => e instanceof ApiError && (e.status === 404 || e.status === 405 || e.status === 503);
