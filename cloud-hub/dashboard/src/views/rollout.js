// One rollout: its waves, each device's phase and gate figures, the
// gates' figures over time, the operators' commands, and its recorded
// steps (who, when, what).
import { get, post } from "../api.js";
import { liveChart } from "../chart.js";
import { esc, num, share, time } from "../format.js";
import { progressBar, targetText } from "./rollout_parts.js";

const COMMANDS = [
  ["pause", "Pause", (s) => s === "running"],
  ["resume", "Resume", (s) => s === "paused"],
  ["abort", "Abort", (s) => s === "running" || s === "paused"],
  ["rollback", "Roll back", (s) => s !== "rolled_back" && s !== "superseded"],
];

export function render(el, [id]) {
  el.innerHTML = `<h1>Rollout ${esc(id)} <span id="state"></span></h1>
  <dl class="kv" id="facts"></dl>
  <div class="toolbar" id="commands" style="margin-top:.8rem">${
    COMMANDS.map(([verb, label]) => `<button type="button" data-command="${verb}" class="${verb === "abort" || verb === "rollback" ? "danger" : ""}">${label}</button>`).join("")
  }<span id="command-result" role="status" aria-live="polite"></span></div>
  <h2>Gate figures over time</h2><div class="chart" id="chart-figures"></div><div id="figures-now" class="muted"></div>
  <h2>Waves</h2><div id="waves"></div>
  <h2>Devices</h2><div id="devices"></div>
  <h2>Steps</h2><div id="log"></div>`;
  const chart = liveChart(el.querySelector("#chart-figures"),
    "Agreement and accuracy over the devices judged (0-1), and errors since their soak began",
    [{ label: "shadow agreement" }, { label: "teacher agreement" }, { label: "teacher (replaced model)" },
      { label: "accuracy" }, { label: "accuracy (replaced model)" }, { label: "errors", scale: "n" }]
      .map((s) => ({ ...s, dots: true })),
    { scales: { x: { time: true }, y: { range: [0, 1] }, n: { auto: true } } });
  let state = null;
  async function load() {
    const r = await get(`/api/v1/rollouts/${id}`);
    state = r.state;
    const pts = r.figures?.points ?? [];
    const col = (f) => pts.map(f);
    chart.set([col((p) => p.at_us / 1e6), col((p) => p.shadow_agreement), col((p) => p.teacher_agreement),
      col((p) => p.champion_teacher_agreement), col((p) => p.accuracy), col((p) => p.champion_accuracy), col((p) => p.errors)]);
    const last = pts[pts.length - 1];
    el.querySelector("#figures-now").innerHTML = last
      ? `At ${time(last.at_us)}: ${last.shadowing} shadowing (${num(last.shadow_windows)} windows, agreement ${share(last.shadow_agreement)}), ${last.soaking} soaking (teacher agreement ${share(last.teacher_agreement)} on ${num(last.teacher_samples)} samples, accuracy ${share(last.accuracy)} on ${num(last.labelled)} labelled windows, ${num(last.errors)} errors).`
      : "No device judged yet.";
    const st = el.querySelector("#state");
    st.textContent = r.state;
    st.className = `state-${r.state}`;
    const p = r.policy;
    el.querySelector("#facts").innerHTML = `
      <dt>Stage</dt><dd>${esc(r.stage)}</dd><dt>Target</dt><dd>${targetText(r.target)}</dd>
      <dt>Wave</dt><dd>${r.summary.wave} of ${r.summary.waves}</dd>
      <dt>Soak</dt><dd>${p.soak_us / 1e6} s; device timeout ${p.device_timeout_us / 1e6} s</dd>
      <dt>Shadow</dt><dd>${p.shadow ? `${p.shadow.windows} windows, agreement at least ${p.shadow.min_agreement}${p.shadow.only ? " (shadow only)" : ""}` : "none"}</dd>
      ${r.reason ? `<dt>Why</dt><dd id="reason">${esc(r.reason)}</dd>` : ""}`;
    el.querySelectorAll("[data-command]").forEach((b) => {
      const allowed = COMMANDS.find(([v]) => v === b.dataset.command)[2];
      b.disabled = !allowed(r.state);
    });
    el.querySelector("#waves").innerHTML = `<table><thead><tr><th>Wave</th><th>Devices</th><th>Progress</th><th>Phases</th></tr></thead><tbody>${
      r.summary.per_wave.map((w) => `<tr><td>${w.wave}</td><td>${w.devices}</td><td>${progressBar(w.phases, w.devices)}</td>
        <td>${Object.entries(w.phases).map(([k, n]) => `<span class="phase-${esc(k)}">${esc(k)} ${n}</span>`).join(", ")}</td></tr>`).join("")
    }</tbody></table>`;
    el.querySelector("#devices").innerHTML = `<table><thead><tr><th>Device</th><th>Phase</th><th>Shadow figures</th><th>Reason</th></tr></thead><tbody>${
      r.devices.map((d) => `<tr data-device="${esc(d.device)}"><td><a href="#/devices/${encodeURIComponent(d.device)}">${esc(d.device)}</a></td>
        <td class="phase-${esc(d.phase)}">${esc(d.phase)}</td><td>${esc(d.shadow_figures ?? "")}</td><td>${esc(d.reason ?? "")}</td></tr>`).join("")
    }</tbody></table>`;
    el.querySelector("#log").innerHTML = `<table><thead><tr><th>When</th><th>Who</th><th>What</th></tr></thead><tbody>${
      r.log.slice().reverse().map((s) => `<tr><td>${time(s.at_us)}</td><td>${esc(s.by)}</td><td>${esc(s.what)}</td></tr>`).join("")
    }</tbody></table>`;
  }
  el.querySelectorAll("[data-command]").forEach((b) => {
    b.onclick = async () => {
      const verb = b.dataset.command;
      if ((verb === "abort" || verb === "rollback") && !confirm(`${b.textContent} rollout ${id}?`)) return;
      const out = el.querySelector("#command-result");
      try {
        await post(`/api/v1/rollouts/${id}/${verb}`, { by: "dashboard" });
        out.textContent = `${verb}: done`;
      } catch (e) {
        out.innerHTML = `<span class="error">${esc(e.message)}</span>`;
      }
      load().catch(() => {});
    };
  });
  load().catch((e) => { el.querySelector("#facts").innerHTML = `<dt>Error</dt><dd class="error">${esc(e.message)}</dd>`; });
  const timer = setInterval(() => load().catch(() => {}), 2000);
  return () => { clearInterval(timer); chart.destroy(); };
}
