// Sign-in: an API key, checked against the service, kept in this tab's sessionStorage only.

import { client, Code, problem, session } from "../api.js";
import { h, replace, uid } from "../dom.js";
import { BASE, paths, type ViewContext } from "../paths.js";
import { field, heading, problemBox } from "../ui.js";

export function signInView(root: HTMLElement, _params: string[], ctx: ViewContext): void {
  const input = h("input", {
    id: uid("api-key"),
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
  });
  const status = h("div", { class: "form-status", "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Sign in");
  const next = ctx.query.get("next");
  const target = next && next.startsWith(`${BASE}/`) && !next.startsWith(paths.signIn()) ? next : paths.batches();

  const form = h(
    "form",
    { class: "card narrow", novalidate: true },
    field(
      "API key",
      input,
      "A key of your account (rsk_…). It stays in this browser tab only and is forgotten when the tab closes.",
    ),
    h("div", { class: "actions" }, submit),
    status,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void signIn();
  });

  async function signIn(): Promise<void> {
    const key = input.value.trim();
    if (!key) {
      replace(status, h("p", { class: "error", role: "alert" }, "Enter an API key."));
      input.focus();
      return;
    }
    submit.disabled = true;
    replace(status, h("p", null, "Checking the key…"));
    try {
      // Any call that needs a key tells whether the service knows it; ListProviders is cheap.
      await client.listProviders({}, { headers: { authorization: `Bearer ${key}` }, signal: ctx.signal });
      session.signIn(key);
      ctx.navigate(target, { replace: true });
    } catch (err) {
      if (ctx.signal.aborted) return;
      const p = problem(err);
      if (p.code === Code.PermissionDenied) {
        // A key without refunds:read is still a key: let the operator in, and say what is missing.
        session.signIn(key);
        ctx.navigate(target, { replace: true });
        return;
      }
      submit.disabled = false;
      replace(status, problemBox(p, p.code === Code.Unauthenticated ? "The service refused this key" : "Could not sign in"));
      input.focus();
    }
  }

  root.append(
    heading("Sign in"),
    ...(ctx.flash ? [h("p", { class: "notice", role: "status" }, ctx.flash)] : []),
    form,
  );
}
