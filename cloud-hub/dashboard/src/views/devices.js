// Every device, a page at a time, filtered on the hub (so thousands stay
// fast): search by id, status, tag, version.
import { get } from "../api.js";
import { ago, bytes, esc, num } from "../format.js";

const PAGE = 50;

export function render(el, [query]) {
  const params = new URLSearchParams(query ?? "");
  let offset = Number(params.get("offset") ?? 0) || 0;
  el.innerHTML = `<h1>Devices</h1>
  <form class="toolbar" id="filter" role="search">
    <label>Search <input name="q" type="search" placeholder="device id" value="${esc(params.get("q"))}"></label>
    <label>Status <select name="status">
      <option value="">all</option><option value="online">online</option><option value="offline">offline</option>
    </select></label>
    <label>Tag <input name="tag" placeholder="key=value" value="${esc(params.get("tag"))}"></label>
    <label>Version <input name="version" placeholder="e.g. 2.0.0" value="${esc(params.get("version"))}"></label>
  </form>
  <p id="count" class="muted" aria-live="polite"></p>
  <table><thead><tr>
    <th>Device</th><th>Status</th><th>Runs</th><th>Tags</th><th class="num">Records</th><th class="num">Rate</th>
    <th class="num">Memory</th><th class="num">Log</th><th class="num">Dropped</th><th>Last seen</th>
  </tr></thead><tbody id="rows"></tbody></table>
  <div class="toolbar" style="margin-top:.6rem">
    <button id="prev" type="button">← Previous</button><button id="next" type="button">Next →</button>
  </div>`;
  const form = el.querySelector("#filter");
  form.status.value = params.get("status") ?? "";
  let timer = null;
  let seq = 0;
  async function load() {
    const f = new FormData(form);
    const q = new URLSearchParams();
    for (const [k, v] of f) if (v) q.set(k, v);
    const hash = `#/devices${q.toString() ? `?${q}` : ""}`;
    // The filter is in the address, so a reload or a shared link keeps it.
    if (location.hash !== hash) history.replaceState(null, "", hash);
    q.set("offset", offset);
    q.set("limit", PAGE);
    const mine = ++seq;
    let page;
    try {
      page = await get(`/api/v1/fleet/devices?${q}`);
    } catch (e) {
      el.querySelector("#count").innerHTML = `<span class="error">${esc(e.message)}</span>`;
      return;
    }
    if (mine !== seq) return;
    const first = page.total ? offset + 1 : 0;
    el.querySelector("#count").textContent = `${num(first)}–${num(offset + page.devices.length)} of ${num(page.total)} devices`;
    el.querySelector("#prev").disabled = offset === 0;
    el.querySelector("#next").disabled = offset + page.devices.length >= page.total;
    el.querySelector("#rows").innerHTML = page.devices.map((d) => `<tr data-device="${esc(d.device_id)}">
      <td><a href="#/devices/${encodeURIComponent(d.device_id)}">${esc(d.device_id)}</a></td>
      <td class="status ${d.online ? "online" : "offline"}">${d.online ? "online" : "offline"}</td>
      <td>${Object.entries(d.running).map(([s, v]) => `${esc(s)}: ${esc(v)}`).join("<br>") || "–"}${d.behind ? ' <span class="muted">(updating)</span>' : ""}</td>
      <td>${Object.entries(d.tags).map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(" ")}</td>
      <td class="num">${num(d.records)}</td><td class="num">${num(d.records_per_sec)}/s</td>
      <td class="num">${d.rss_bytes ? bytes(d.rss_bytes) : "–"}</td><td class="num">${num(d.log_records)}</td>
      <td class="num">${num(d.dropped)}</td><td>${ago(d.last_seen_us)}</td></tr>`).join("");
  }
  const reload = () => { offset = 0; load(); };
  form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(reload, 250); });
  form.addEventListener("submit", (e) => { e.preventDefault(); reload(); });
  el.querySelector("#prev").onclick = () => { offset = Math.max(0, offset - PAGE); load(); };
  el.querySelector("#next").onclick = () => { offset += PAGE; load(); };
  load();
  const refresh = setInterval(load, 2000);
  return () => { clearInterval(refresh); clearTimeout(timer); };
}
