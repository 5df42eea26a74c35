// The fleet at a glance: counts, live rates and latency, versions per
// stage, alerts.
import { liveChart } from "../chart.js";
import { esc, micros, num, pct } from "../format.js";

const card = (id, label, unit = "") =>
  `<div class="card"><div class="label">${label}</div><div class="value"><span id="${id}">–</span><span class="unit">${unit}</span></div></div>`;

export function render(el, _params, fleet) {
  el.innerHTML = `<h1>Fleet overview</h1>
  <div class="cards">
    ${card("devices-online", "Devices online")}
    ${card("devices-offline", "Devices offline")}
    ${card("ingest-rate", "Ingest", "records/s")}
    ${card("latency-p99", "End-to-end latency p99")}
    ${card("predictions-rate", "Edge predictions", "/s")}
    ${card("hub-decided", "Decided by the hub")}
    ${card("dropped", "Dropped at the edge", "records")}
    ${card("dead-letters", "Dead letters")}
  </div>
  <div class="charts">
    <div class="chart" id="chart-ingest"></div>
    <div class="chart" id="chart-latency"></div>
  </div>
  <h2>Alerts</h2><ul class="alerts" id="alerts"><li class="muted">None.</li></ul>
  <h2>Versions per stage</h2><div id="versions"><p class="muted">No device has reported what it runs yet.</p></div>`;
  const ingest = liveChart(el.querySelector("#chart-ingest"), "Ingest (records/s) and edge predictions (/s)",
    [{ label: "records/s" }, { label: "predictions/s" }]);
  const latency = liveChart(el.querySelector("#chart-latency"), "End-to-end latency, sensor to stored (ms)",
    [{ label: "p50" }, { label: "p99" }]);
  let prev = null;
  const set = (id, v) => { el.querySelector(`#${id}`).textContent = v; };
  const off = fleet.subscribe(({ overview: o, stats }) => {
    const t = o.ts_us / 1e6;
    const perSec = prev && t > prev.t ? (o.predictions - prev.predictions) / (t - prev.t) : 0;
    prev = { t, predictions: o.predictions };
    set("devices-online", num(o.devices_online));
    set("devices-offline", num(o.devices_known - o.devices_online));
    set("ingest-rate", num(o.ingest_records_per_sec));
    set("latency-p99", micros(stats.latency.p99_us));
    set("predictions-rate", num(Math.max(0, perSec)));
    set("hub-decided", `${num(o.decided_by_hub)} (${pct(o.decided_by_hub, o.results)})`);
    set("dropped", num(o.dropped));
    set("dead-letters", num(o.dead_letters));
    ingest.push(t, o.ingest_records_per_sec, Math.max(0, perSec));
    latency.push(t, stats.latency.p50_us / 1000, stats.latency.p99_us / 1000);
    el.querySelector("#alerts").innerHTML = o.alerts.length
      ? o.alerts.map((a) => `<li class="${esc(a.kind)}">${a.device ? `<a href="#/devices/${encodeURIComponent(a.device)}">${esc(a.device)}</a>: ` : ""}${esc(a.text)}</li>`).join("")
      : `<li class="muted">None.</li>`;
    const stages = Object.entries(o.versions);
    if (stages.length) {
      el.querySelector("#versions").innerHTML = `<table><thead><tr><th>Stage</th><th>Runs</th><th class="num">Devices</th></tr></thead><tbody>${
        stages.flatMap(([stage, versions]) => Object.entries(versions).map(([v, n]) =>
          `<tr><td>${esc(stage)}</td><td><a href="#/devices?version=${encodeURIComponent(v)}">${esc(v)}</a></td><td class="num">${num(n)}</td></tr>`)).join("")
      }</tbody></table>`;
    }
  });
  return () => { off(); ingest.destroy(); latency.destroy(); };
}
