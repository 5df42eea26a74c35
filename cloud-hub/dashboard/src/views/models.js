// The hub's models (batching, latency, queue, errors) and the edge
// models seen in the fleet, with their accuracy on labelled windows and
// their agreement with the hub's teacher.
import { get } from "../api.js";
import { esc, micros, num, pct } from "../format.js";

export function render(el, _params, fleet) {
  el.innerHTML = `<h1>Models</h1>
  <h2>On the hub</h2><div id="hub-models"><p class="muted">Loading…</p></div>
  <h2>At the edge</h2><div id="edge-models"><p class="muted">No prediction received yet.</p></div>`;
  async function loadHub() {
    const { device, models } = await get("/api/v1/models");
    el.querySelector("#hub-models").innerHTML = models.length ? `<p class="muted">Running on ${esc(device)}.</p>
      <table><thead><tr><th>Model</th><th>Backend</th><th>Input</th><th class="num">Batch (max, mean)</th><th class="num">Queue</th>
      <th class="num">Requests</th><th class="num">Failed</th><th class="num">p50</th><th class="num">p99</th></tr></thead><tbody>${
      models.map((m) => `<tr><td>${esc(m.id)}@${esc(m.version)}</td><td>${esc(m.backend)}</td><td>${m.channels} × ${m.window}</td>
        <td class="num">${m.max_batch}, ${num(m.mean_batch)}</td><td class="num">${m.queue}</td><td class="num">${num(m.requests_ok)}</td>
        <td class="num">${num(m.requests_failed)}</td><td class="num">${micros(m.latency?.p50_us)}</td><td class="num">${micros(m.latency?.p99_us)}</td></tr>`).join("")
    }</tbody></table>` : `<p class="muted">The hub serves no models (see <code>[[models]]</code> in hub.toml).</p>`;
  }
  loadHub().catch((e) => { el.querySelector("#hub-models").innerHTML = `<p class="error">${esc(e.message)}</p>`; });
  const timer = setInterval(() => loadHub().catch(() => {}), 3000);
  const off = fleet.subscribe(({ overview }) => {
    const rows = Object.entries(overview.edge_models ?? {});
    if (!rows.length) return;
    el.querySelector("#edge-models").innerHTML = `<table><thead><tr><th>Model</th><th class="num">Devices</th><th class="num">Predictions</th>
      <th class="num">Accuracy (labelled windows)</th><th class="num">Agreement with the hub's teacher</th></tr></thead><tbody>${
      rows.map(([m, t]) => `<tr><td>${esc(m)}</td><td class="num">${num(t.devices)}</td><td class="num">${num(t.predictions)}</td>
        <td class="num">${pct(t.correct, t.scored)} <span class="muted">of ${num(t.scored)}</span></td>
        <td class="num">${pct(t.teacher_agreed, t.teacher_sampled)} <span class="muted">of ${num(t.teacher_sampled)}</span></td></tr>`).join("")
    }</tbody></table>`;
  });
  return () => { clearInterval(timer); off(); };
}
