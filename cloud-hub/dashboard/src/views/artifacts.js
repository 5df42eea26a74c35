// The artifact registry: every model and transform the hub can ship, with
// who signed it.
import { get } from "../api.js";
import { bytes, esc, time } from "../format.js";

export async function render(el) {
  el.innerHTML = `<h1>Artifacts</h1><div id="list"><p class="muted">Loading…</p></div>`;
  const [{ artifacts }, { keys }] = await Promise.all([get("/api/v1/artifacts"), get("/api/v1/keys")]);
  const key = keys?.[0];
  el.querySelector("#list").innerHTML = `<p class="muted">Signed by the hub's key ${esc(key?.id ?? "")}; agents verify every manifest and file against it.</p>
  ${artifacts.length ? `<table><thead><tr><th>Name</th><th>Version</th><th>Kind</th><th class="num">Size</th><th>Signed by</th><th>Pushed</th><th>Id</th></tr></thead><tbody>${
    artifacts.map((a) => `<tr><td>${esc(a.name)}</td><td>${esc(a.version)}</td><td>${esc(a.kind)}</td><td class="num">${bytes(a.size_bytes)}</td>
      <td><code>${esc(a.signed_by)}</code></td><td>${time(a.created_at_us)}</td><td><code title="${esc(a.id)}">${esc(String(a.id).slice(0, 19))}…</code></td></tr>`).join("")
  }</tbody></table>` : `<p class="muted">No artifact yet: <code>cloud-hub artifact push models/basicmotions/v2/edge.int8.json</code>.</p>`}`;
}
