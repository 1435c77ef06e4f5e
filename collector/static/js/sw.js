// The crew page's service worker: it only shows and opens incident notifications (no caching).
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = new URL(event.notification.data?.url || "/crew", self.location.origin);
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({type: "window", includeUncontrolled: true});
    const crew = windows.find((w) => new URL(w.url).pathname === url.pathname);
    if (crew) {
      crew.postMessage({hash: url.hash});  // the page is not controlled: it scrolls itself
      return crew.focus();
    }
    return self.clients.openWindow(url.href);
  })());
});
