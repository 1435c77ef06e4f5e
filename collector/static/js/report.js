// The phone report page: a patrol member (signed in with a crew or ops token) or a citizen
// (no token) reports a problem with where it is, a few words and a photo.

import {$, api, html, render, start, token} from "./common.js";

let maxPhoto = 2_000_000;  // the collector says its own limit ([grid] photo_max_bytes)
let position = null;

function readPhoto(file) {
  return new Promise((resolve, reject) => {
    if (!file) { resolve(null); return; }
    if (file.size > maxPhoto) { reject(new Error(`The photo is larger than ${Math.floor(maxPhoto / 1e6 * 10) / 10} MB.`)); return; }
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(new Error("The photo could not be read."));
    reader.readAsDataURL(file);
  });
}

function locate() {
  $("where").textContent = "Finding you…";
  navigator.geolocation.getCurrentPosition((p) => {
    position = {lat: p.coords.latitude, lon: p.coords.longitude};
    $("where").textContent = `${position.lat.toFixed(5)}, ${position.lon.toFixed(5)}`;
    $("send").disabled = false;
  }, (e) => { $("where").textContent = "No location: " + e.message; },
  {enableHighAccuracy: true, timeout: 15000});
}

async function send(event) {
  event.preventDefault();
  const patrol = Boolean(token());
  $("send").disabled = true;
  try {
    const body = {kind: $("kind").value, ...position, text: $("text").value,
                  photo: await readPhoto($("photo").files[0])};
    if (!patrol) body.contact = $("contact").value;
    const got = await api(patrol ? "/api/v1/reports" : "/api/v1/public/reports", {method: "POST", body});
    $("status").className = "";
    render($("status"), html`Thank you — report ${got.id} is with grid ${got.grid || got.district || "—"}.`);
    document.body.dataset.sent = "yes";
    $("report-form").reset();
  } catch (e) {
    $("status").className = "error";
    $("status").textContent = e instanceof Error ? e.message : String(e);
  } finally {
    $("send").disabled = !position;
  }
}

// A public page: citizens have no token (and no navigation); a patrol link carries one.
async function main() {
  start();
  $("who").textContent = token() ? "patrol" : "citizen";
  $("contact-row").hidden = Boolean(token());
  $("locate").addEventListener("click", locate);
  $("report-form").addEventListener("submit", send);
  const offered = await api("/api/v1/public/report-kinds");  // the city's own list
  maxPhoto = offered.photo_max_bytes;
  render($("kind"), html`${offered.kinds.map((k) => html`<option value="${k}">${k.replace(/_/g, " ")}</option>`)}`);
  document.body.dataset.ready = "yes";
}

main().catch((e) => { $("status").className = "error"; $("status").textContent = e.message; });
