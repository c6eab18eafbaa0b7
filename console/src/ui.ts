// Shared pieces of the views.

import type { Problem } from "./api.js";
import { h, type Child } from "./dom.js";

/** An error as the operator reads it: reason (or code), what it means, the server's message. */
export function problemBox(p: Problem, title?: string): HTMLElement {
  const label = p.reason ? `${p.reason} (${p.codeName})` : p.codeName;
  return h(
    "div",
    { class: "problem", role: "alert", "data-code": p.codeName, "data-reason": p.reason ?? "" },
    h("p", { class: "problem-title" }, title ? `${title}: ` : "", h("strong", { class: "problem-reason" }, label)),
    p.explanation ? h("p", { class: "problem-explanation" }, p.explanation) : null,
    h("p", { class: "problem-message" }, "Server: ", h("q", null, p.message || "(no message)")),
    p.violations.length
      ? h(
          "ul",
          { class: "problem-violations" },
          p.violations.map((v) => h("li", null, h("code", null, v.field), ": ", v.description)),
        )
      : null,
  );
}

/** A small coloured badge for a status name (SUCCEEDED, FAILED, …); the text carries the meaning. */
export function badge(name: string): HTMLElement {
  return h("span", { class: `badge badge-${name.toLowerCase().replace(/_/g, "-")}` }, name);
}

/** The view's heading, focusable so that focus can move to it when the view changes. */
export function heading(text: string, ...extra: Child[]): HTMLHeadingElement {
  return h("h1", { tabindex: "-1", class: "view-heading" }, text, ...extra);
}

/** A definition list of label → value pairs. */
export function facts(pairs: [string, Child][], attrs?: Record<string, string>): HTMLDListElement {
  return h(
    "dl",
    { class: "facts", ...attrs },
    pairs.map(([k, v]) => h("div", null, h("dt", null, k), h("dd", null, v))),
  );
}

/** A labelled form control: `<div><label for=id>text</label>control hint</div>`. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  const id = control.id;
  const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", `${id}-hint`);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl);
}

/** A table in a horizontally scrollable, keyboard-reachable region (narrow screens). */
export function scrollTable(label: string, table: HTMLTableElement): HTMLElement {
  return h("div", { class: "table-scroll", role: "region", "aria-label": label, tabindex: "0" }, table);
}
