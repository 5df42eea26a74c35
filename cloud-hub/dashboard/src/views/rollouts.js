// Every rollout, newest first, with its progress; and the audit log:
// who changed what the fleet runs.
import { get } from "../api.js";
import { esc, time } from "../format.js";
import { progressBar, targetText } from "./rollout_parts.js";

export function render(el) {
  el.innerHTML = `<h1>Rollouts</h1><div id="list"><p class="muted">Loading…</p></div>
  <p class="muted">Start one with <code>cloud-hub rollout start</code> or <code>POST /api/v1/rollouts</code>.</p>
  <h2>Audit log</h2><div id="audit"><p class="muted">Loading…</p></div>`;
  async function load() {
    const { rollouts } = await get("/api/v1/rollouts");
    el.querySelector("#list").innerHTML = rollouts.length ? `<table><thead><tr><th>Id</th><th>Stage</th><th>Target</th><th>State</th><th>Wave</th><th>Devices</th><th>Why</th></tr></thead><tbody>${
      rollouts.map((r) => `<tr data-rollout="${r.id}"><td><a href="#/rollouts/${r.id}">${r.id}</a></td><td>${esc(r.stage)}</td><td>${targetText(r.target)}</td>
        <td class="state-${esc(r.state)}">${esc(r.state)}</td><td>${r.summary.wave} of ${r.summary.waves}</td>
        <td>${progressBar(r.summary.phases, r.summary.devices)} ${r.summary.devices}</td><td>${esc(r.reason ?? "")}</td></tr>`).join("")
    }</tbody></table>` : `<p class="muted">No rollout yet.</p>`;
    const { entries } = await get("/api/v1/audit?limit=50");
    el.querySelector("#audit").innerHTML = entries.length ? `<table><thead><tr><th>When</th><th>Who</th><th>Action</th><th>On</th><th>What</th></tr></thead><tbody>${
      entries.slice().reverse().map((a) => `<tr><td>${time(a.at_us)}</td><td>${esc(a.by)}</td><td>${esc(a.action)}</td><td>${esc(a.target)}</td><td>${esc(a.detail)}</td></tr>`).join("")
    }</tbody></table>` : `<p class="muted">Nothing changed yet.</p>`;
  }
  load().catch((e) => { el.querySelector("#list").innerHTML = `<p class="error">${esc(e.message)}</p>`; });
  const timer = setInterval(() => load().catch(() => {}), 2000);
  return () => clearInterval(timer);
}
