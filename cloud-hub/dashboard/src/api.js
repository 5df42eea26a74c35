// The hub's public HTTP API: the only thing the page talks to.

// An answer that is not 2xx, with its status (401: sign in).
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function get(path) {
  const r = await fetch(path, { headers: { accept: "application/json" } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, body.error ?? `${r.status} ${r.statusText}`);
  return body;
}

export async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body ?? {}),
  });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, answer.error ?? `${r.status} ${r.statusText}`);
  return answer;
}

// A Server-Sent Events stream; `onData` gets each `event`'s parsed data,
// `onState` true/false as the stream opens and drops (the browser
// reconnects by itself). Returns a function that closes it.
export function stream(path, event, onData, onState = () => {}) {
  const source = new EventSource(path);
  source.addEventListener(event, (e) => onData(JSON.parse(e.data)));
  source.onopen = () => onState(true);
  source.onerror = () => onState(false);
  return () => source.close();
}
