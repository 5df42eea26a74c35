// Numbers with units, and times in the viewer's own zone.

const nf = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const nf3 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });

export const num = (n) => (n == null || Number.isNaN(n) ? "–" : nf.format(n));
export const share = (n) => (n == null || Number.isNaN(n) ? "–" : nf3.format(n));
export const pct = (a, b) => (b > 0 ? `${nf.format((100 * a) / b)} %` : "–");

export function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${nf.format(n)} ${units[i]}`;
}

export function micros(us) {
  if (us == null) return "–";
  if (us < 1000) return `${nf.format(us)} µs`;
  if (us < 1e6) return `${nf.format(us / 1000)} ms`;
  return `${nf.format(us / 1e6)} s`;
}

// µs since the epoch, as a local date and time.
export const time = (us) => (us ? new Date(us / 1000).toLocaleString() : "–");

export function ago(us, now = Date.now() * 1000) {
  if (!us) return "never";
  const s = Math.max(0, (now - us) / 1e6);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${nf.format(s / 3600)} h ago`;
}

// Escapes text for HTML.
export function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
