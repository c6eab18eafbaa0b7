// Look up a refund and watch its status live (WatchRefund), with each change announced.

import { client, isAbort, problem, transient, triage, triageProblem } from "../api.js";
import { announce, h, replace, sleep, uid } from "../dom.js";
import { reopenDelayMs, MAX_REOPENS } from "../follow.js";
import { formatMoney, formatTime, formatTimestamp, reasonName, refundStatusName } from "../format.js";
import { RefundStatus, type Refund } from "../gen/refunds/v1/refund_service_pb.js";
import { paths, type ViewContext } from "../paths.js";
import { badge, facts, field, heading, problemBox } from "../ui.js";

const TERMINAL = new Set([RefundStatus.SUCCEEDED, RefundStatus.FAILED, RefundStatus.CANCELED]);

export function refundView(root: HTMLElement, params: string[], ctx: ViewContext): void {
  const id = params[0] ?? "";
  const input = h("input", { id: uid("refund-id"), type: "text", autocomplete: "off", spellcheck: "false", value: id, required: true });
  const form = h(
    "form",
    { class: "card", role: "search", "aria-label": "Look up a refund" },
    field("Refund id", input, "rf_… (refunds of your account only)."),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Look up")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (value) ctx.navigate(paths.refund(value));
  });
  const details = h("section", { class: "card", "aria-labelledby": "refund-title", hidden: true });
  const statusLine = h("p", { class: "refund-status", role: "status", "aria-live": "polite", id: "refund-status" });
  const history = h("ol", { class: "timeline", "aria-label": "Status changes seen" });
  const watchState = h("p", { class: "connection", "aria-live": "polite" });
  const errorEl = h("div");

  root.append(heading("Look up a refund"), form, errorEl, details);
  if (!id) return;

  let shown: RefundStatus | null = null;

  function show(r: Refund): void {
    details.hidden = false;
    const name = refundStatusName(r.status);
    if (shown !== r.status) {
      const now = new Date();
      history.append(h("li", null, h("time", null, formatTime(now)), " ", badge(name)));
      if (shown !== null) {
        const line = `Status changed from ${refundStatusName(shown)} to ${name}.`;
        replace(statusLine, "Status: ", badge(name), h("span", { class: "visually-hidden" }, ` ${line}`));
        announce(line);
      } else {
        replace(statusLine, "Status: ", badge(name));
      }
      shown = r.status;
    }
    replace(
      details,
      h("h2", { id: "refund-title" }, r.id),
      statusLine,
      facts([
        ["Amount", formatMoney(r.amount, r.currency)],
        ["Payment", h("code", null, r.paymentId)],
        ["Provider", r.provider + (r.connectionId ? ` (connection ${r.connectionId})` : "")],
        ["Provider refund id", r.providerRefundId || "—"],
        ["Reason", reasonName(r.reason) + (r.reasonDetail ? `: ${r.reasonDetail}` : "")],
        ["Failure", r.failureCode ? `${r.failureCode}: ${r.failureReason}` : "—"],
        ["Created by key", h("code", null, r.createdByKeyId || "—")],
        ["Approved by key", h("code", null, r.approvedByKeyId || "—")],
        ["Idempotency key", h("code", null, r.idempotencyKey || "—")],
        ["Created", formatTimestamp(r.createdAt)],
        ["Updated", formatTimestamp(r.updatedAt)],
      ]),
      r.status === RefundStatus.REQUIRES_APPROVAL
        ? h("p", { class: "notice" }, "Waits for approval by another key: ", h("a", { href: paths.approvals() }, "approvals inbox"), ".")
        : null,
      h("h3", null, "Status changes seen"),
      history,
      watchState,
    );
  }

  async function load(): Promise<void> {
    try {
      show(await client.getRefund({ id }, { signal: ctx.signal }));
    } catch (err) {
      if (isAbort(err, ctx.signal)) return;
      const p = triage(err);
      if (p) replace(errorEl, problemBox(p, "Could not look up the refund"));
      return;
    }
    if (shown !== null && TERMINAL.has(shown)) {
      replace(watchState, "Final status: it will not change.");
      return;
    }
    // Watch: the refund now, then again at every status change, ending after a final one.
    let reopens = 0;
    for (;;) {
      replace(watchState, "Watching for status changes…");
      try {
        for await (const r of client.watchRefund({ id }, { signal: ctx.signal })) {
          reopens = 0;
          show(r);
          replace(watchState, TERMINAL.has(r.status) ? "Final status: it will not change." : "Watching for status changes…");
        }
        if (shown !== null && TERMINAL.has(shown)) return;
        if (++reopens > MAX_REOPENS) return;
      } catch (err) {
        if (isAbort(err, ctx.signal)) return;
        const p = problem(err);
        if (!triageProblem(p)) return;
        if (!transient(p.code) || ++reopens > MAX_REOPENS) {
          replace(watchState, problemBox(p, "Stopped watching"));
          return;
        }
        replace(watchState, `Connection lost (${p.codeName}); watching again shortly…`);
      }
      try {
        await sleep(reopenDelayMs(Math.max(1, reopens)), ctx.signal);
      } catch {
        return;
      }
    }
  }
  void load();
}
