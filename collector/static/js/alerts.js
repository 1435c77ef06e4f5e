// Sound, vibration and a system notification when a new critical incident arrives.
// Everything is made here: the tone by WebAudio, the notification by our own service worker.

const WORKER = "/static/js/sw.js";
let audio = null;
let registration = null;

function bump(name) {
  document.body.dataset[name] = String(Number(document.body.dataset[name] || 0) + 1);
}

async function register() {
  if (!("serviceWorker" in navigator)) return null;
  navigator.serviceWorker.addEventListener("message", (ev) => {
    if (typeof ev.data?.hash === "string" && ev.data.hash.startsWith("#incident-")) location.hash = ev.data.hash;
  });
  try {
    // The worker's scope is its folder, not the page: wait for this registration, not `ready`.
    const reg = await navigator.serviceWorker.register(WORKER);
    const worker = reg.installing || reg.waiting || reg.active;
    if (worker && worker.state !== "activated") {
      await new Promise((resolve) => worker.addEventListener("statechange", () => {
        if (worker.state === "activated") resolve();
      }));
    }
    registration = reg;
    document.body.dataset.sw = "ready";
  } catch (e) {
    document.body.dataset.sw = "failed";
  }
  return registration;
}

function describe() {
  if (!("Notification" in window)) return "notifications not supported here";
  return {granted: "notifications on", denied: "notifications blocked in this browser", default: "notifications off"}[Notification.permission];
}

function unlockSound() {
  try {
    audio = audio || new AudioContext();
    audio.resume();
  } catch { /* no sound on this device */ }
}

/** Register the worker (no prompt); the first tap anywhere unlocks sound; say what works now. */
export async function alertsReady() {
  document.addEventListener("pointerdown", unlockSound, {once: true});
  await register();
  return describe();
}

/** On a tap: unlock sound and ask for notification permission. */
export async function enableAlerts() {
  unlockSound();
  if ("Notification" in window && Notification.permission === "default") await Notification.requestPermission();
  if (!registration) await register();
  document.body.dataset.alertsEnabled = "1";
  return describe();
}

function tone() {
  try {
    audio = audio || new AudioContext();
    const now = audio.currentTime;
    for (let i = 0; i < 3; i += 1) {  // three rising beeps: hard to miss, not a siren
      const osc = audio.createOscillator(), gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = 880 + i * 220;
      gain.gain.setValueAtTime(0.0001, now + i * 0.35);
      gain.gain.exponentialRampToValueAtTime(0.3, now + i * 0.35 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + i * 0.35 + 0.28);
      osc.connect(gain).connect(audio.destination);
      osc.start(now + i * 0.35);
      osc.stop(now + i * 0.35 + 0.3);
    }
    bump("beeps");
  } catch { /* no sound on this device */ }
}

async function notify(inc) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const site = inc.site_info || {};
  const title = `CRITICAL: ${inc.fault?.en || inc.title}`;
  const options = {
    body: [inc.device, site.name || inc.site, site.address].filter(Boolean).join(" · "),
    tag: `incident-${inc.id}`, renotify: true, requireInteraction: true,
    vibrate: [400, 150, 400, 150, 400], data: {url: `/crew#incident-${inc.id}`},
  };
  try {
    if (registration) await registration.showNotification(title, options);
    else new Notification(title, options);
    bump("notified");
  } catch (e) {
    document.body.dataset.notifyError = String(e);
  }
}

/** A new critical incident: tone, vibration and a notification (as far as the device allows). */
export function alertNewCritical(inc) {
  bump("alerts");
  document.body.dataset.lastAlert = String(inc.id);
  tone();
  if (navigator.vibrate) navigator.vibrate([400, 150, 400, 150, 400]);
  notify(inc);
}
