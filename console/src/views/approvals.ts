// Approvals inbox: refunds waiting in REQUIRES_APPROVAL, approved or rejected by another key (the
// four-eyes rule is the server's; a refusal such as SELF_APPROVAL is shown with its reason).

import { client, isAbort, triage } from "../api.js";
import { announce, h, replace } from "../dom.js";
import { formatCount, formatMoney, formatTimestamp, reasonName, refundStatusName } from "../format.js";
import { RefundStatus, type Refund } from "../gen/refunds/v1/refund_service_pb.js";
import { paths, type ViewContext } from "../paths.js";
import { badge, heading, problemBox } from "../ui.js";

export function approvalsView(root: HTMLElement, _params: string[], ctx: ViewContext): void {
  const list = h("ul", { class: "approvals", id: "approvals-list", "aria-label": "Refunds waiting for approval" });
  const status = h("div", { class: "list-status", "aria-live": "polite" });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const refresh = h("button", { type: "button", class: "secondary" }, "Refresh");
  let token = "";
  let count = 0;

  function row(r: Refund): HTMLLIElement {
    const outcome = h("div", { class: "outcome", "aria-live": "polite" });
    const statusCell = h("dd", null, badge(refundStatusName(r.status)));
    const approve = h("button", { type: "button", "aria-label": `Approve ${r.id}` }, "Approve");
    const reject = h("button", { type: "button", class: "danger", "aria-label": `Reject ${r.id}` }, "Reject");
    const actions = h("div", { class: "actions" }, approve, reject);
    const titleId = `approval-${r.id}`;
    const item = h(
      "li",
      { class: "approval", "data-refund-id": r.id, "aria-labelledby": titleId },
      h(
        "div",
        { class: "approval-head" },
        h("h3", { id: titleId }, h("a", { href: paths.refund(r.id) }, r.id)),
        h("span", { class: "amount" }, formatMoney(r.amount, r.currency)),
      ),
      h(
        "dl",
        { class: "facts" },
        h("div", null, h("dt", null, "Payment"), h("dd", null, h("code", null, r.paymentId))),
        h("div", null, h("dt", null, "Reason"), h("dd", null, reasonName(r.reason) + (r.reasonDetail ? `: ${r.reasonDetail}` : ""))),
        h("div", null, h("dt", null, "Asked by key"), h("dd", null, h("code", null, r.createdByKeyId || "—"))),
        h("div", null, h("dt", null, "Created"), h("dd", null, formatTimestamp(r.createdAt))),
        h("div", null, h("dt", null, "Status"), statusCell),
      ),
      actions,
      outcome,
    );

    const settle = (updated: Refund, verb: string) => {
      replace(statusCell, badge(refundStatusName(updated.status)));
      actions.remove();
      const line = `${updated.id} ${verb}; it is now ${refundStatusName(updated.status)}.`;
      replace(outcome, h("p", { class: "ok", role: "status" }, line));
      announce(line);
    };

    async function act(kind: "approve" | "reject"): Promise<void> {
      approve.disabled = true;
      reject.disabled = true;
      replace(outcome, h("p", null, kind === "approve" ? "Approving…" : "Rejecting…"));
      try {
        const updated =
          kind === "approve"
            ? await client.approveRefund({ id: r.id }, { signal: ctx.signal })
            : await client.rejectRefund({ id: r.id }, { signal: ctx.signal });
        settle(updated, kind === "approve" ? "approved" : "rejected");
      } catch (err) {
        if (isAbort(err, ctx.signal)) return;
        const p = triage(err);
        if (!p) return;
        approve.disabled = false;
        reject.disabled = false;
        replace(outcome, problemBox(p, kind === "approve" ? `Could not approve ${r.id}` : `Could not reject ${r.id}`));
        if (p.reason === "NOT_AWAITING_APPROVAL") {
          // Someone else decided: show where it is now.
          try {
            const now = await client.getRefund({ id: r.id }, { signal: ctx.signal });
            replace(statusCell, badge(refundStatusName(now.status)));
            if (now.status !== RefundStatus.REQUIRES_APPROVAL) actions.remove();
          } catch {
            /* the refusal is shown already */
          }
        }
      }
    }

    approve.addEventListener("click", () => void act("approve"));
    reject.addEventListener("click", () => {
      const yes = h("button", { type: "button", class: "danger" }, `Yes, reject ${r.id}`);
      const no = h("button", { type: "button", class: "secondary" }, "No");
      const confirm = h("div", { class: "confirm", role: "group", "aria-label": `Confirm rejecting ${r.id}` }, h("p", null, "Reject it? It ends CANCELED and its amount is released."), h("div", { class: "actions inline" }, yes, no));
      yes.addEventListener("click", () => {
        confirm.remove();
        void act("reject");
      });
      no.addEventListener("click", () => {
        confirm.remove();
        reject.focus();
      });
      replace(outcome, confirm);
      yes.focus();
    });
    return item;
  }

  async function load(reset: boolean): Promise<void> {
    if (reset) {
      token = "";
      count = 0;
      list.replaceChildren();
    }
    replace(status, "Loading…");
    try {
      const res = await client.listRefunds({ status: RefundStatus.REQUIRES_APPROVAL, pageSize: 50, pageToken: token }, { signal: ctx.signal });
      for (const r of res.refunds) list.append(row(r));
      count += res.refunds.length;
      token = res.nextPageToken;
      more.hidden = token === "";
      replace(status, count === 0 ? "Nothing waits for approval." : `${formatCount(count)} ${count === 1 ? "refund waits" : "refunds wait"} for approval, newest first.`);
    } catch (err) {
      if (isAbort(err, ctx.signal)) return;
      const p = triage(err);
      if (p) replace(status, problemBox(p, "Could not list refunds waiting for approval"));
    }
  }
  more.addEventListener("click", () => void load(false));
  refresh.addEventListener("click", () => void load(true));

  root.append(
    heading("Approvals"),
    h(
      "p",
      { class: "intro" },
      "Refunds above their account's approval threshold wait here, their amount reserved, until a key other than the one that asked for them approves or rejects them.",
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "approvals-title" },
      h("div", { class: "section-head" }, h("h2", { id: "approvals-title" }, "Waiting for approval"), refresh),
      list,
      status,
      h("div", { class: "actions" }, more),
    ),
  );
  void load(true);
}
