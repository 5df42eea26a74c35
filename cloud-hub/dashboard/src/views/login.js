// Signing in: an API token (`cloud-hub token create`) becomes the page's
// session cookie (HttpOnly: the page itself never keeps it).
import { post } from "../api.js";
import { esc } from "../format.js";

export function render(el, message) {
  el.innerHTML = `<h1>Sign in</h1>
  <p>This hub asks for an API token. Make one on the hub with
  <code>cloud-hub token create --name NAME --role viewer</code> (or <code>operator</code> to run rollouts).</p>
  <form id="login" class="toolbar">
    <label>API token <input name="token" type="password" autocomplete="off" required size="50"></label>
    <button type="submit">Sign in</button>
  </form>
  <p id="login-error" class="error" role="alert">${esc(message ?? "")}</p>`;
  el.querySelector("#login").onsubmit = async (e) => {
    e.preventDefault();
    try {
      await signIn(el.querySelector("input[name=token]").value.trim());
      location.reload();
    } catch (err) {
      el.querySelector("#login-error").textContent = err.message;
    }
  };
}

export async function signIn(token) {
  return post("/api/v1/session", { token });
}
