// Live time-series charts on uPlot: a rolling window of points, redrawn
// as data arrives.
import uPlot from "uplot";

const COLOURS = ["#2463eb", "#13804b", "#b45309", "#b42318", "#7c3aed"];

// A chart in `el` with one line per entry of `series` ({label, scale?,
// points?: dots only, dots?: a line with its points marked}),
// keeping the last `keep` points. `push(t, ...values)` adds a point (t in
// seconds since the epoch).
export function liveChart(el, title, series, { keep = 300, height = 190, scales } = {}) {
  el.innerHTML = "";
  const h = document.createElement("h3");
  h.textContent = title;
  el.appendChild(h);
  const data = [[], ...series.map(() => [])];
  const opts = {
    width: Math.max(280, el.clientWidth - 16),
    height,
    scales: scales ?? { x: { time: true } },
    series: [{}, ...series.map((s, i) => ({
      label: s.label, stroke: COLOURS[i % COLOURS.length], width: 1.6,
      scale: s.scale ?? "y", points: { show: s.points || s.dots || false }, paths: s.points ? () => null : undefined,
    }))],
    // One axis per scale: the first on the left, the others on the right.
    axes: [{}, ...[...new Set(series.map((s) => s.scale ?? "y"))].map((scale, i) =>
      (i === 0 ? { scale } : { scale, side: 1, grid: { show: false } }))],
    legend: { live: true },
  };
  const plot = new uPlot(opts, data, el);
  const resize = () => plot.setSize({ width: Math.max(280, el.clientWidth - 16), height });
  window.addEventListener("resize", resize);
  return {
    push(t, ...values) {
      data[0].push(t);
      values.forEach((v, i) => data[i + 1].push(v));
      if (data[0].length > keep) data.forEach((col) => col.shift());
      // Fresh arrays: uPlot re-ranges its scales on new data.
      plot.setData(data.map((col) => col.slice()));
    },
    set(columns) {
      columns.forEach((col, i) => { data[i] = col; });
      plot.setData(data);
    },
    destroy() { window.removeEventListener("resize", resize); plot.destroy(); },
  };
}
