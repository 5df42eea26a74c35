// Pieces the rollout views share.
import { esc } from "../format.js";

export function targetText(t) {
  if (t?.model) return `${esc(t.model.name)}@${esc(t.model.version)}`;
  if (t?.transforms) return t.transforms.map((l) => `${esc(l.artifact.name)}@${esc(l.artifact.version)}`).join(" → ");
  return "–";
}

// Devices per phase as a bar: healthy, in progress, failed, rolled back.
export function progressBar(phases, devices) {
  const n = (k) => phases?.[k] ?? 0;
  const parts = [
    ["healthy", n("healthy")],
    ["progress", n("downloading") + n("verifying") + n("applying") + n("shadowing") + n("applied")],
    ["failed", n("failed") + n("timed_out")],
    ["back", n("rolling_back") + n("rolled_back")],
  ];
  const title = Object.entries(phases ?? {}).map(([k, v]) => `${k} ${v}`).join(", ");
  return `<span class="bar" role="img" aria-label="${esc(title)}" title="${esc(title)}">${
    parts.map(([c, k]) => (devices ? `<span class="${c}" style="width:${(100 * k) / devices}%"></span>` : "")).join("")
  }</span>`;
}
