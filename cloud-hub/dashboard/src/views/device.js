// One device: its readings and predictions live, its heartbeat's
// counters over time, what it runs and its history of changes, its
// stages, its dead letters with their reasons, its recent results.
import { get } from "../api.js";
import { liveChart } from "../chart.js";
import { ago, bytes, esc, micros, num, share, time } from "../format.js";

export function render(el, [rawId]) {
  const id = decodeURIComponent(rawId);
  const path = `/api/v1/devices/${encodeURIComponent(id)}`;
  el.innerHTML = `<h1>Device <span id="device-id">${esc(id)}</span>
    <span id="device-status" class="status">…</span></h1>
  <dl class="kv" id="facts"></dl>
  <div class="charts">
    <div class="chart" id="chart-stream"></div>
    <div class="chart" id="chart-heartbeat"></div>
  </div>
  <h2>What it runs</h2><div id="running"><p class="muted">No report from its agent yet.</p></div>
  <h2>History of changes</h2><div id="history"><p class="muted">No change yet.</p></div>
  <h2>Stages</h2><div id="stages"><p class="muted">No heartbeat yet.</p></div>
  <h2>Dead letters</h2><div id="dead-letters"><p class="muted">None reported.</p></div>
  <h2>Recent results</h2><div id="results"></div>`;
  const streamChart = liveChart(el.querySelector("#chart-stream"),
    "Readings (first channel) and the predictions' confidence",
    [{ label: "reading" }, { label: "confidence", scale: "conf", points: true }],
    { scales: { x: { time: true }, conf: { range: [0, 1] } } });
  const hbChart = liveChart(el.querySelector("#chart-heartbeat"),
    "Heartbeats over the last 10 minutes: log, drops, dead letters, windows/s, memory",
    [{ label: "log records" }, { label: "dropped" }, { label: "dead letters" },
      { label: "windows/s", scale: "rate" }, { label: "memory MB", scale: "mb" }],
    { scales: { x: { time: true }, rate: { auto: true }, mb: { auto: true } } });
  let lastHeartbeat = null;

  async function loadDevice() {
    const d = await get(path);
    const hb = d.last_heartbeat;
    const status = el.querySelector("#device-status");
    status.textContent = d.online ? "online" : "offline";
    status.className = `status ${d.online ? "online" : "offline"}`;
    el.querySelector("#facts").innerHTML = `
      <dt>Last seen</dt><dd>${ago(d.last_seen_us)} (${time(d.last_seen_us)})</dd>
      <dt>Agent</dt><dd>${esc(d.status?.agent_version ?? "–")}</dd>
      <dt>Records stored</dt><dd>${num(d.records)} (${num(d.records_per_sec)}/s), ${num(d.duplicates)} duplicates dropped</dd>
      <dt>Memory</dt><dd>${hb ? bytes(hb.rss_bytes) : "–"}</dd>
      <dt>Log</dt><dd>${hb ? `${num(hb.log_records)} records, ${bytes(hb.log_bytes)}; dropped ${num(hb.log_dropped_full + hb.log_dropped_age + (hb.log_dropped_unwritable ?? 0))}` : "–"}${hb?.storage_fault ? ` <span class="error">storage: ${esc(hb.storage_fault)}</span>` : ""}</dd>
      <dt>Update</dt><dd>desired generation ${d.ota?.desired_generation ?? "–"}, applied ${d.ota?.applied_generation ?? "–"}${d.ota?.phase ? ` (${esc(d.ota.phase)})` : ""}</dd>`;
    if (hb && hb.ts_us !== lastHeartbeat) {
      lastHeartbeat = hb.ts_us;
      el.querySelector("#stages").innerHTML = stagesTable(hb.stages ?? []);
      el.querySelector("#dead-letters").innerHTML = deadLettersTable(hb.dead_letters ?? []);
    }
  }

  async function loadTrend() {
    const { points } = await get(`${path}/heartbeats`);
    const cols = [[], [], [], [], [], []];
    points.forEach((p, i) => {
      const prev = points[i - 1];
      cols[0].push(p.ts_us / 1e6);
      cols[1].push(p.log_records);
      cols[2].push(p.dropped);
      cols[3].push(p.dead_lettered);
      cols[4].push(prev ? Math.max(0, p.windows - prev.windows) / ((p.ts_us - prev.ts_us) / 1e6) : null);
      cols[5].push(p.rss_bytes / 1e6);
    });
    hbChart.set(cols);
  }

  async function loadHistory() {
    const { history } = await get(`${path}/history?limit=30`);
    el.querySelector("#history").innerHTML = history.length ? `<table><thead><tr><th>When</th><th>Generation</th><th>Event</th><th>What</th><th>By</th></tr></thead><tbody>${
      history.slice().reverse().map((h) => `<tr><td>${time(h.at_us)}</td><td>${h.generation ?? "–"}</td>
        <td class="phase-${esc(h.event)}">${esc(h.event)}</td><td>${esc(h.what)}</td><td>${esc(h.by ?? "agent")}</td></tr>`).join("")
    }</tbody></table>` : `<p class="muted">No change yet: it runs its own config.</p>`;
  }

  async function loadRecords() {
    const { records } = await get(`${path}/records?limit=1000`);
    const t = [], reading = [], conf = [];
    for (const r of records) {
      t.push(r.source_ts_us / 1e6);
      reading.push(r.values?.length ? r.values[0] : null);
      conf.push(r.prediction ? r.prediction.confidence : null);
    }
    streamChart.set([t, reading, conf]);
    const preds = records.filter((r) => r.prediction).slice(-15).reverse();
    el.querySelector("#results").innerHTML = preds.length ? `<table><thead><tr><th>Seq</th><th>Time</th><th>Edge</th><th class="num">Confidence</th><th>Final</th><th>Decided by</th><th>Truth</th></tr></thead><tbody>${
      preds.map((r) => `<tr><td>${r.seq}</td><td>${time(r.source_ts_us)}</td><td>${esc(r.prediction.label)} <span class="muted">${esc(r.prediction.model_id)}@${esc(r.prediction.model_version)}</span></td>
        <td class="num">${share(r.prediction.confidence)}</td><td>${esc(r.result?.prediction?.label ?? "–")}</td><td>${esc(r.result?.decided_by ?? "–")}</td><td>${esc(r.label || "–")}</td></tr>`).join("")
    }</tbody></table>` : `<p class="muted">No predictions stored yet.</p>`;
  }

  async function loadState() {
    let st;
    try { st = await get(`${path}/state`); } catch { return; }
    const rows = Object.entries(st.stages ?? {}).map(([name, s]) => `<tr><td>${esc(name)}</td><td>${runningText(s.running)}</td>
      <td>${s.previous ? runningText(s.previous) : "–"}</td><td>${s.shadow ? `${esc(s.shadow.name)}@${esc(s.shadow.version)}` : "–"}</td></tr>`).join("");
    const c = st.last_change;
    el.querySelector("#running").innerHTML = `<table><thead><tr><th>Stage</th><th>Runs</th><th>Before</th><th>In shadow</th></tr></thead><tbody>${rows}</tbody></table>
      ${c ? `<p>Last change: generation ${c.generation ?? "–"}, <strong>${esc(c.phase)}</strong> ${time(c.since_us)}${c.reason ? ` <span class="error">${esc(c.reason)}</span>` : ""}</p>` : ""}
      <p class="muted">Tags: ${Object.entries(st.tags ?? {}).map(([k, v]) => `<code>${esc(k)}=${esc(v)}</code>`).join(" ") || "none"}</p>`;
  }

  const tick = () => Promise.all([loadDevice(), loadRecords(), loadState(), loadTrend(), loadHistory()]).catch((e) => {
    el.querySelector("#facts").innerHTML = `<dt>Error</dt><dd class="error">${esc(e.message)}</dd>`;
  });
  tick();
  const timer = setInterval(tick, 2000);
  return () => { clearInterval(timer); streamChart.destroy(); hbChart.destroy(); };
}

function runningText(r) {
  if (r.model) return `${esc(r.model.name)}@${esc(r.model.version)}`;
  if (r.transforms) return r.transforms.map((t) => `${esc(t.name)}@${esc(t.version)}`).join(" → ");
  return "–";
}

function deadLettersTable(letters) {
  if (!letters.length) return `<p class="muted">None since the agent started.</p>`;
  return `<table><thead><tr><th>When</th><th>Stage</th><th>Stream</th><th>Transform</th><th>Kind</th><th>Reason</th></tr></thead><tbody>${
    letters.slice().reverse().map((l) => `<tr><td>${time(l.at_us)}</td><td>${esc(l.stage)}</td><td>${esc(l.stream)}</td><td>${esc(l.transform)}</td>
      <td>${esc(l.kind)}</td><td class="error">${esc(l.reason)}</td></tr>`).join("")
  }</tbody></table><p class="muted">The last ${letters.length} the agent reported; the records themselves are kept on the device (<code>edge-agent dead-letters</code>).</p>`;
}

function stagesTable(stages) {
  if (!stages.length) return `<p class="muted">No stages.</p>`;
  return `<table><thead><tr><th>Stage</th><th>Kind</th><th>Runs</th><th class="num">In</th><th class="num">Out</th><th class="num">Windows</th>
    <th class="num">Escalated</th><th>Dropped</th><th>Transforms (dead letters, failures)</th><th>Shadow</th></tr></thead><tbody>${
    stages.map((s) => `<tr><td>${esc(s.name)}</td><td>${esc(s.kind)}</td><td>${s.model_id ? `${esc(s.model_id)}@${esc(s.model_version)}` : "–"}</td>
      <td class="num">${num(s.records_in)}</td><td class="num">${num(s.records_out)}</td><td class="num">${num(s.windows)}</td>
      <td class="num">${num(s.escalated ?? 0)}</td><td>${Object.entries(s.dropped ?? {}).map(([k, n]) => `${esc(k)} ${num(n)}`).join(", ") || "–"}</td>
      <td>${(s.transforms ?? []).map((t) => `${esc(t.transform)} (${esc(t.state)}): ${num(t.dead_lettered)} dead letters${
        Object.keys(t.failures ?? {}).length ? `; ${Object.entries(t.failures).map(([k, n]) => `${esc(k)} ${num(n)}`).join(", ")}` : ""}${t.disabled_reason ? ` <span class="error">${esc(t.disabled_reason)}</span>` : ""}`).join("<br>") || "–"}</td>
      <td>${s.shadow ? `${esc(s.shadow.model_id)}@${esc(s.shadow.model_version)}: agrees on ${share(s.shadow.windows ? s.shadow.agreed / s.shadow.windows : 0)} of ${num(s.shadow.windows)}; p50 ${micros(s.shadow.candidate_p50_us)} vs ${micros(s.shadow.champion_p50_us)}` : "–"}</td></tr>`).join("")
  }</tbody></table>`;
}
