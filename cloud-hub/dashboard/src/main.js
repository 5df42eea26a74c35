// The dashboard: a hash router over views, and one live stream of the
// fleet (`/api/v1/fleet/stream`) that every view may listen to.
import { get, stream } from "./api.js";
import * as login from "./views/login.js";
import * as overview from "./views/overview.js";
import * as devices from "./views/devices.js";
import * as device from "./views/device.js";
import * as models from "./views/models.js";
import * as rollouts from "./views/rollouts.js";
import * as rollout from "./views/rollout.js";
import * as artifacts from "./views/artifacts.js";

const routes = [
  [/^#?\/?$/, overview, "overview"],
  [/^#\/devices(?:\?(.*))?$/, devices, "devices"],
  [/^#\/devices\/(.+)$/, device, "devices"],
  [/^#\/models$/, models, "models"],
  [/^#\/rollouts$/, rollouts, "rollouts"],
  [/^#\/rollouts\/(\d+)$/, rollout, "rollouts"],
  [/^#\/artifacts$/, artifacts, "artifacts"],
];

// The fleet stream, shared: views subscribe while they are shown.
const listeners = new Set();
let last = null;
const live = document.getElementById("live");
function startStream() {
  stream("/api/v1/fleet/stream", "fleet", (data) => {
    last = data;
    live.textContent = `live · ${new Date().toLocaleTimeString()}`;
    listeners.forEach((f) => f(data));
  }, (up) => {
    live.className = up ? "live on" : "live off";
    if (!up) live.textContent = "reconnecting…";
  });
}
const fleet = {
  subscribe(f) {
    listeners.add(f);
    if (last) f(last);
    return () => listeners.delete(f);
  },
};

let cleanup = null;
async function show() {
  if (location.hash.startsWith("#token=")) return; // signing in (above)
  const hash = location.hash || "#/";
  const [, view, nav, params] = routes
    .map(([re, v, n]) => [re, v, n, hash.match(re)])
    .find(([, , , m]) => m) ?? [null, null, null, null];
  if (cleanup) { cleanup(); cleanup = null; }
  document.querySelectorAll("[data-nav]").forEach((a) => {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  const el = document.getElementById("view");
  if (!view) {
    el.innerHTML = `<h1>Not found</h1><p><a href="#/">Back to the overview</a></p>`;
    return;
  }
  const args = params.slice(1);
  try {
    cleanup = (await view.render(el, args, fleet)) ?? null;
  } catch (e) {
    el.innerHTML = `<p class="error">Could not load this page: ${String(e.message ?? e)}</p>`;
  }
}
// A link with `#token=...` (the demo prints one) signs in once and
// leaves the address without it; a hub that asks for a token and has
// none from this browser gets the sign-in page.
// (Also when only the address's fragment changes to `#token=`: the page
// does not load again then, so it signs in and reloads itself.)
window.addEventListener("hashchange", async () => {
  const given = location.hash.match(/^#token=(.+)$/);
  if (!given) return;
  history.replaceState(null, "", "#/");
  try { await login.signIn(decodeURIComponent(given[1])); } catch { /* the form says why */ }
  location.reload();
});
async function boot() {
  const given = location.hash.match(/^#token=(.+)$/);
  if (given) {
    history.replaceState(null, "", "#/");
    try { await login.signIn(decodeURIComponent(given[1])); } catch { /* the form says why */ }
  }
  try {
    await get("/api/v1/fleet");
  } catch (e) {
    if (e.status === 401) {
      live.textContent = "signed out";
      login.render(document.getElementById("view"), given ? "That token is unknown or revoked." : "");
      return;
    }
  }
  startStream();
  window.addEventListener("hashchange", show);
  show();
}
boot();
