// One batch, live: progress, counters, throughput, ETA, failures (filterable, downloadable as the
// dead-letter CSV), cancel. Started here (BulkRefund's own stream) or re-attached by id
// (WatchBulkRefund from the start, so the failure list is complete; results that were already
// stored when re-attaching are not counted in the rate).

import { client, Code, isAbort, triage, triageProblem, type Problem } from "../api.js";
import { rememberSource, sourceOf, takePendingStart, type CsvSource } from "../batchStore.js";
import { throughputChart } from "../chart.js";
import { deadLetterCsv } from "../deadLetter.js";
import { announce, download, h, replace, setText, uid } from "../dom.js";
import { follow, FollowError, type FollowEvent, type Open } from "../follow.js";
import {
  batchStateName,
  durationSeconds,
  formatCount,
  formatMoney,
  formatSeconds,
  formatTime,
  formatTimestamp,
  itemStatusName,
} from "../format.js";
import {
  BulkItemStatus,
  BulkRefundState,
  type BulkJobResult,
  type BulkProviderWaiting,
  type BulkSummary,
} from "../gen/refunds/v1/refund_service_pb.js";
import { paths, type ViewContext } from "../paths.js";
import { badge, heading, problemBox, scrollTable } from "../ui.js";

/** Rows of the failure table drawn at most; the download has them all. */
const MAX_ROWS_SHOWN = 1000;
/** The rate (and so the ETA) is over the results of this many last seconds. */
const RATE_WINDOW_MS = 10_000;

interface Counts {
  total: number;
  succeeded: number;
  awaitingApproval: number;
  failed: number;
  skipped: number;
  canceled: number;
}

function done(c: Counts): number {
  return c.succeeded + c.failed + c.skipped + c.canceled;
}

/** What a failure is called in the table and the filter: its error code, else its status. */
export function failureCode(r: BulkJobResult): string {
  return r.error?.code || r.refund?.failureCode || itemStatusName(r.status);
}

export function failureMessage(r: BulkJobResult): string {
  return r.error?.message || r.refund?.failureReason || "";
}

export function batchView(root: HTMLElement, params: string[], ctx: ViewContext): void {
  const idParam = params[0] ?? "";
  const starting = idParam === "new" ? takePendingStart() : null;
  if (idParam === "new" && !starting) {
    ctx.navigate(paths.batches(), { replace: true });
    return;
  }

  let bulkId: string | null = starting ? null : idParam;
  let source: CsvSource | null = starting ? starting.source : sourceOf(idParam);
  const counts: Counts = { total: starting ? starting.request.jobs.length : 0, succeeded: 0, awaitingApproval: 0, failed: 0, skipped: 0, canceled: 0 };
  let state: BulkRefundState = BulkRefundState.RUNNING;
  let summary: BulkSummary | null = null;
  let lastSequence = 0n;
  /** Results stored before this view attached: replayed, not counted in the rate. */
  let replayUntil = 0n;
  const seen = new Set<number>();
  const failures: BulkJobResult[] = [];
  let failuresDirty = true;
  const waits = new Map<string, BulkProviderWaiting>();
  let liveStart: number | null = null;
  const perSecond: number[] = [];
  const recent: number[] = [];
  let lastHeard: Date | null = null;
  let connection = "Connecting…";
  let lastAnnouncedTenth = -1;

  // ---- DOM ----
  const title = heading(starting ? "Starting batch…" : `Batch ${idParam}`);
  const stateBadge = h("span", { class: "state" });
  const progressLabelId = uid("progress-label");
  const progress = h("progress", { max: "1", value: "0", "aria-labelledby": progressLabelId, id: "batch-progress" });
  const progressText = h("span", { id: progressLabelId, class: "progress-text" }, "Progress");
  const liveProgress = h("p", { class: "visually-hidden", "aria-live": "polite", "aria-atomic": "true", id: "progress-announcer" });
  const counter = (name: string) => h("dd", { "data-count": name }, "0");
  const counterEls = {
    total: counter("total"),
    succeeded: counter("succeeded"),
    failed: counter("failed"),
    skipped: counter("skipped"),
    canceled: counter("canceled"),
    pending: counter("pending"),
  };
  const approvalsNote = h("span", { class: "hint", "data-count": "awaiting-approval" });
  const counters = h(
    "dl",
    { class: "counters", "aria-label": "Job counts" },
    h("div", null, h("dt", null, "Total"), counterEls.total),
    h("div", { class: "c-succeeded" }, h("dt", null, "Succeeded"), counterEls.succeeded),
    h("div", { class: "c-failed" }, h("dt", null, "Failed"), counterEls.failed),
    h("div", { class: "c-skipped" }, h("dt", null, "Skipped"), counterEls.skipped),
    h("div", { class: "c-canceled" }, h("dt", null, "Canceled"), counterEls.canceled),
    h("div", null, h("dt", null, "Pending"), counterEls.pending),
  );
  const rateEl = h("dd", { "data-stat": "rate" }, "—");
  const etaEl = h("dd", { "data-stat": "eta" }, "—");
  const elapsedEl = h("dd", { "data-stat": "elapsed" }, "—");
  const connectionEl = h("p", { class: "connection", role: "status", "aria-live": "polite" });
  const waitsEl = h("div", { class: "waits", "aria-live": "polite" });
  const chartBox = h("figure", { class: "chart-box" });
  const summaryEl = h("section", { class: "summary", "aria-live": "polite", id: "batch-summary" });
  const errorEl = h("div", { class: "batch-error" });
  const actionStatus = h("div", { class: "form-status", "aria-live": "polite" });

  const cancelButton = h("button", { type: "button", class: "danger" }, "Cancel batch");
  const downloadButton = h("button", { type: "button", class: "secondary" }, "Download failures (CSV)");
  const confirmBox = h("div", { class: "confirm", hidden: true, role: "group", "aria-label": "Confirm cancel" });

  const codeFilter = h("select", { id: uid("failure-code") }, h("option", { value: "" }, "All codes"));
  const textFilter = h("input", { id: uid("failure-text"), type: "search", autocomplete: "off" });
  const failureCount = h("p", { class: "list-status", "aria-live": "polite", id: "failure-count" });
  const failureBody = h("tbody");
  const lineHeader = h("th", { scope: "col", class: "num" }, "Line");
  const failureTable = h(
    "table",
    { class: "data failures stack", id: "failure-table" },
    h("caption", { class: "visually-hidden" }, "Jobs that did not succeed"),
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        lineHeader,
        h("th", { scope: "col", class: "num" }, "Job"),
        h("th", { scope: "col" }, "Payment"),
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col" }, "Code"),
        h("th", { scope: "col" }, "Message"),
        h("th", { scope: "col" }, "Retryable"),
        h("th", { scope: "col" }, "Refund"),
      ),
    ),
    failureBody,
  );

  root.append(
    title,
    h(
      "section",
      { class: "card", "aria-labelledby": "live-title" },
      h("div", { class: "section-head" }, h("h2", { id: "live-title" }, "Progress"), stateBadge),
      h("div", { class: "progress-row" }, progress, progressText),
      liveProgress,
      counters,
      approvalsNote,
      h(
        "dl",
        { class: "facts stats" },
        h("div", null, h("dt", null, "Rate"), rateEl),
        h("div", null, h("dt", null, "ETA"), etaEl),
        h("div", null, h("dt", null, "Elapsed"), elapsedEl),
      ),
      connectionEl,
      waitsEl,
      h("div", { class: "actions" }, cancelButton, downloadButton),
      confirmBox,
      actionStatus,
      errorEl,
    ),
    summaryEl,
    h("section", { class: "card", "aria-labelledby": "chart-title" }, h("h2", { id: "chart-title" }, "Throughput"), chartBox),
    h(
      "section",
      { class: "card", "aria-labelledby": "failures-title" },
      h("h2", { id: "failures-title" }, "Failures"),
      h(
        "div",
        { class: "filters" },
        h("div", { class: "field" }, h("label", { for: codeFilter.id }, "Code"), codeFilter),
        h("div", { class: "field" }, h("label", { for: textFilter.id }, "Filter"), textFilter),
      ),
      failureCount,
      scrollTable("Failures", failureTable),
    ),
  );

  // ---- rendering, coalesced ----
  let renderTimer: number | null = null;
  let lastChartAt = 0;
  function schedule(): void {
    if (renderTimer !== null) return;
    renderTimer = window.setTimeout(() => {
      renderTimer = null;
      render();
    }, 120);
  }

  function rateNow(now: number): number | null {
    while (recent.length && (recent[0] ?? 0) < now - RATE_WINDOW_MS) recent.shift();
    if (liveStart === null) return null;
    const window = Math.min(RATE_WINDOW_MS, now - liveStart);
    if (window < 1000 || recent.length === 0) return null;
    return (recent.length * 1000) / window;
  }

  function render(): void {
    const now = Date.now();
    const d = done(counts);
    const total = Math.max(counts.total, d);
    progress.max = Math.max(total, 1);
    progress.value = d;
    const pct = total ? Math.floor((d * 100) / total) : 0;
    setText(progressText, `${formatCount(d)} of ${formatCount(total)} done (${pct}%)`);
    setText(counterEls.total, formatCount(total));
    setText(counterEls.succeeded, formatCount(counts.succeeded));
    setText(counterEls.failed, formatCount(counts.failed));
    setText(counterEls.skipped, formatCount(counts.skipped));
    setText(counterEls.canceled, formatCount(counts.canceled));
    setText(counterEls.pending, formatCount(Math.max(0, total - d)));
    setText(
      approvalsNote,
      counts.awaitingApproval
        ? `${formatCount(counts.awaitingApproval)} of the succeeded jobs made refunds that wait for approval by another key.`
        : "",
    );
    replace(stateBadge, badge(batchStateName(state)));

    const running = state === BulkRefundState.RUNNING && summary === null;
    cancelButton.hidden = !running || bulkId === null;
    if (!running) confirmBox.hidden = true;
    downloadButton.disabled = bulkId === null || counts.failed + counts.skipped + counts.canceled === 0;

    if (summary) {
      const secs = durationSeconds(summary.duration);
      setText(elapsedEl, secs === null ? "—" : formatSeconds(secs));
      setText(rateEl, secs && secs > 0 ? `${(summary.total / secs).toFixed(1)} jobs/s (whole batch)` : "—");
      setText(etaEl, "done");
    } else {
      const rate = rateNow(now);
      setText(rateEl, rate === null ? "—" : `${rate.toFixed(1)} results/s`);
      const remaining = total - d;
      setText(etaEl, rate && remaining > 0 ? `about ${formatSeconds(remaining / rate)}` : remaining === 0 && total > 0 ? "finishing" : "—");
      setText(elapsedEl, liveStart === null ? "—" : formatSeconds((now - liveStart) / 1000));
    }

    setText(
      connectionEl,
      lastHeard && running ? `${connection} Last heard from the server at ${formatTime(lastHeard)}.` : connection,
    );

    // Milestones for screen readers: every 10%, not every result.
    const tenth = total ? Math.floor((d * 10) / total) : 0;
    if (running && tenth !== lastAnnouncedTenth && d > 0) {
      lastAnnouncedTenth = tenth;
      setText(liveProgress, `${pct}% done: ${counts.succeeded} succeeded, ${counts.failed} failed.`);
    }

    if (now - lastChartAt > 1000 || !running) {
      lastChartAt = now;
      const { chart, text } = throughputChart(perSecond, "Results per second", chartBox.clientWidth || 600);
      const caption =
        perSecond.length === 0 && summary !== null
          ? "The batch had finished before this page attached: only results seen live are charted."
          : text;
      replace(chartBox, chart, h("figcaption", null, caption));
    }
    if (failuresDirty) renderFailures();
  }

  function renderWaits(): void {
    replace(
      waitsEl,
      [...waits.values()].map((w) =>
        h(
          "p",
          { class: "notice" },
          h("strong", null, `Waiting for ${w.provider}`),
          `: ${w.reason}. ${w.heldJobs} ${w.heldJobs === 1 ? "job" : "jobs"} held; next try ${formatTimestamp(w.nextAttemptTime)}, giving up ${formatTimestamp(w.giveUpTime)}.`,
        ),
      ),
    );
  }

  function renderFailures(): void {
    failuresDirty = false;
    lineHeader.hidden = source === null;
    const codes = [...new Set(failures.map(failureCode))].sort();
    const selected = codeFilter.value;
    const existing = [...codeFilter.options].map((o) => o.value).slice(1);
    if (existing.join("\n") !== codes.join("\n")) {
      replace(codeFilter, h("option", { value: "" }, "All codes"), codes.map((c) => h("option", { value: c }, c)));
      codeFilter.value = codes.includes(selected) ? selected : "";
    }
    const code = codeFilter.value;
    const text = textFilter.value.trim().toLowerCase();
    const matching = failures.filter((r) => {
      if (code && failureCode(r) !== code) return false;
      if (!text) return true;
      const line = source?.rows[r.index]?.line;
      const hay = [r.paymentId, failureCode(r), failureMessage(r), itemStatusName(r.status), String(r.index), line === undefined ? "" : String(line), r.refund?.id ?? ""]
        .join(" ")
        .toLowerCase();
      return hay.includes(text);
    });
    const shown = matching.slice(0, MAX_ROWS_SHOWN);
    failureBody.replaceChildren(
      ...shown.map((r) => {
        const line = source?.rows[r.index]?.line;
        const statusName = itemStatusName(r.status);
        return h(
          "tr",
          { "data-index": String(r.index), "data-status": statusName, "data-code": failureCode(r) },
          source === null ? null : h("td", { class: "num", "data-label": "Line" }, line === undefined ? "" : String(line)),
          h("td", { class: "num", "data-label": "Job" }, String(r.index)),
          h("td", { "data-label": "Payment" }, h("code", { class: "id" }, r.paymentId || "—")),
          h("td", { "data-label": "Status" }, badge(statusName)),
          h("td", { "data-label": "Code" }, h("code", null, failureCode(r))),
          h("td", { class: "message", "data-label": "Message" }, failureMessage(r)),
          h("td", { "data-label": "Retryable" }, r.error ? (r.error.retryable ? "yes" : "no") : "no"),
          h(
            "td",
            { "data-label": "Refund" },
            r.refund?.id
              ? h("a", { href: paths.refund(r.refund.id) }, r.refund.id, " ", h("span", { class: "hint" }, formatMoney(r.refund.amount, r.refund.currency)))
              : "—",
          ),
        );
      }),
    );
    const all = failures.length;
    setText(
      failureCount,
      all === 0
        ? "No failures."
        : matching.length === all
          ? `${formatCount(all)} ${all === 1 ? "job" : "jobs"} did not succeed${shown.length < matching.length ? `; the first ${formatCount(shown.length)} are shown (the download has all)` : ""}.`
          : `${formatCount(matching.length)} of ${formatCount(all)} shown${shown.length < matching.length ? ` (the first ${formatCount(shown.length)} are listed)` : ""}.`,
    );
  }

  codeFilter.addEventListener("change", renderFailures);
  textFilter.addEventListener("input", renderFailures);

  // ---- events ----
  function addResult(r: BulkJobResult, sequence: bigint): void {
    if (seen.has(r.index)) return; // exactly once, whatever a stream repeats
    seen.add(r.index);
    switch (r.status) {
      case BulkItemStatus.SUCCEEDED:
        counts.succeeded++;
        break;
      case BulkItemStatus.REQUIRES_APPROVAL:
        counts.succeeded++;
        counts.awaitingApproval++;
        break;
      case BulkItemStatus.SKIPPED:
        counts.skipped++;
        break;
      case BulkItemStatus.CANCELED:
        counts.canceled++;
        break;
      default:
        counts.failed++;
        break;
    }
    if (r.status !== BulkItemStatus.SUCCEEDED && r.status !== BulkItemStatus.REQUIRES_APPROVAL) {
      // Keep the list in job order.
      let i = failures.length;
      while (i > 0 && (failures[i - 1]?.index ?? 0) > r.index) i--;
      failures.splice(i, 0, r);
      failuresDirty = true;
    }
    if (sequence > replayUntil) {
      const now = Date.now();
      if (liveStart === null) liveStart = now;
      const second = Math.floor((now - liveStart) / 1000);
      while (perSecond.length <= second) perSecond.push(0);
      perSecond[second] = (perSecond[second] ?? 0) + 1;
      recent.push(now);
    }
  }

  function onEvent(e: FollowEvent): void {
    lastHeard = new Date();
    switch (e.kind) {
      case "accepted":
        lastSequence = e.sequence;
        if (bulkId === null) {
          bulkId = e.accepted.bulkId;
          if (source) rememberSource(bulkId, source);
          ctx.setPath(paths.batch(bulkId));
          setText(title, `Batch ${bulkId}`);
          document.title = `Batch ${bulkId} · Refund console`;
          announce(`Batch ${bulkId} accepted with ${e.accepted.total} jobs.`);
        }
        counts.total = e.accepted.total;
        connection = "Live.";
        break;
      case "result":
        lastSequence = e.sequence;
        connection = "Live.";
        addResult(e.result, e.sequence);
        break;
      case "progress":
        counts.total = Math.max(counts.total, e.progress.total);
        state = e.progress.state || state;
        connection = "Live (keep-alive).";
        break;
      case "waiting":
        waits.set(e.waiting.provider, e.waiting);
        renderWaits();
        break;
      case "waitEnded":
        waits.delete(e.ended.provider);
        renderWaits();
        announce(
          e.ended.gaveUp
            ? `Gave up waiting for ${e.ended.provider}: ${e.ended.failedJobs} jobs failed.`
            : `${e.ended.provider} answers again; its jobs run.`,
        );
        break;
      case "summary":
        lastSequence = e.sequence;
        finish(e.summary);
        break;
      case "reopening":
        connection = `Connection lost (${e.why.codeName}: ${e.why.message}); re-attaching in ${formatSeconds(e.delayMs / 1000)} (attempt ${e.attempt}).`;
        break;
      case "reopened":
        connection = "Live again.";
        break;
    }
    schedule();
  }

  function finish(s: BulkSummary): void {
    summary = s;
    state = s.state;
    counts.total = s.total;
    counts.succeeded = s.succeeded;
    counts.failed = s.failed;
    counts.skipped = s.skipped;
    counts.canceled = s.canceled;
    connection = "Finished.";
    waits.clear();
    renderWaits();
    const secs = durationSeconds(s.duration);
    const stateName = batchStateName(s.state).toLowerCase();
    const line = `Batch ${stateName}: ${formatCount(s.succeeded)} succeeded, ${formatCount(s.failed)} failed, ${formatCount(s.skipped)} skipped, ${formatCount(s.canceled)} canceled, of ${formatCount(s.total)}${secs === null ? "" : `, in ${formatSeconds(secs)}`}.`;
    replace(
      summaryEl,
      h(
        "div",
        { class: "card summary-card", "data-state": batchStateName(s.state) },
        h("h2", null, "Summary"),
        h("p", { id: "summary-text" }, line),
        counts.awaitingApproval
          ? h(
              "p",
              null,
              `${formatCount(counts.awaitingApproval)} ${counts.awaitingApproval === 1 ? "refund waits" : "refunds wait"} for approval by another key: `,
              h("a", { href: paths.approvals() }, "open the approvals inbox"),
              ".",
            )
          : null,
      ),
    );
    announce(line);
    render();
  }

  // ---- actions ----
  cancelButton.addEventListener("click", () => {
    replace(
      confirmBox,
      h("p", null, "Cancel the batch? Jobs not started yet end CANCELED; jobs already done or in flight are kept."),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", class: "danger", onclick: () => void cancel() }, "Yes, cancel the batch"),
        h("button", { type: "button", class: "secondary", onclick: () => { confirmBox.hidden = true; cancelButton.focus(); } }, "Keep it running"),
      ),
    );
    confirmBox.hidden = false;
    confirmBox.querySelector("button")?.focus();
  });

  async function cancel(): Promise<void> {
    if (!bulkId) return;
    confirmBox.hidden = true;
    replace(actionStatus, h("p", null, "Canceling…"));
    try {
      const b = await client.cancelBulkRefund({ bulkId }, { signal: ctx.signal });
      replace(actionStatus, h("p", { role: "status" }, `Cancel requested: the batch is ${batchStateName(b.state).toLowerCase()}; ${b.pending} jobs were still pending.`));
    } catch (err) {
      if (isAbort(err, ctx.signal)) return;
      const p = triage(err);
      if (p) replace(actionStatus, problemBox(p, "Could not cancel"));
    }
    cancelButton.focus();
  }

  downloadButton.addEventListener("click", () => void downloadFailures());

  async function downloadFailures(): Promise<void> {
    if (!bulkId) return;
    replace(actionStatus, h("p", null, "Collecting the failed, skipped and canceled jobs…"));
    try {
      // The server's own list: the jobs that did not succeed, as `refund-service bulk` writes them.
      const items: BulkJobResult[] = [];
      for (const status of [BulkItemStatus.FAILED, BulkItemStatus.SKIPPED, BulkItemStatus.CANCELED]) {
        let pageToken = "";
        do {
          const res = await client.listBulkRefundItems({ bulkId, status, pageSize: 1000, pageToken }, { signal: ctx.signal });
          items.push(...res.items);
          pageToken = res.nextPageToken;
        } while (pageToken);
      }
      items.sort((a, b) => a.index - b.index);
      const map = new Map(items.map((r) => [r.index, r] as const));
      const csv = deadLetterCsv(source ? { headers: source.headers, rows: source.rows } : null, map);
      const name = source && source.fileName !== "pasted rows" ? `${source.fileName.replace(/\.csv$/i, "")}.failed.csv` : `${bulkId}.failed.csv`;
      download(name, csv);
      replace(
        actionStatus,
        h("p", { role: "status" }, `${name}: ${formatCount(items.length)} ${items.length === 1 ? "row" : "rows"}${source ? " as they were in the file" : " as the service recorded the jobs"}, with error_code, error_message, retryable and status.`),
      );
    } catch (err) {
      if (isAbort(err, ctx.signal)) return;
      const p = triage(err);
      if (p) replace(actionStatus, problemBox(p, "Could not download the failures"));
    }
  }

  // ---- following ----
  async function run(how: Open, after: bigint): Promise<void> {
    replace(errorEl);
    try {
      await follow(how, onEvent, ctx.signal, after);
    } catch (err) {
      if (isAbort(err, ctx.signal)) return;
      if (err instanceof FollowError) {
        showFollowError(err.problem);
      } else {
        const p = triage(err);
        if (p) showFollowError(p);
      }
    }
  }

  function showFollowError(p: Problem): void {
    if (!triageProblem(p)) return;
    connection = bulkId ? "Not following the batch." : "The batch was not started.";
    const retry = h(
      "button",
      {
        type: "button",
        onclick: () => {
          connection = "Re-attaching…";
          schedule();
          void run(bulkId ? { watch: bulkId } : (starting ? { create: starting.request } : { watch: idParam }), lastSequence);
        },
      },
      bulkId ? "Re-attach" : "Try again",
    );
    replace(
      errorEl,
      problemBox(p, bulkId ? (p.code === Code.NotFound ? "No such batch" : "Lost the batch's stream") : "The batch was not started"),
      h("div", { class: "actions" }, p.code === Code.NotFound || p.code === Code.InvalidArgument ? null : retry, h("a", { href: paths.batches() }, "Back to batches")),
    );
    if (!bulkId) setText(title, "Batch not started");
    schedule();
    errorEl.querySelector<HTMLElement>("[role=alert]")?.setAttribute("tabindex", "-1");
    errorEl.querySelector<HTMLElement>("[role=alert]")?.focus();
  }

  async function attach(id: string): Promise<void> {
    try {
      const b = await client.getBulkRefund({ bulkId: id }, { signal: ctx.signal });
      replayUntil = b.lastSequence;
      counts.total = b.total;
      state = b.state;
      for (const w of b.providerWaits) waits.set(w.provider, w);
      renderWaits();
      connection = b.state === BulkRefundState.RUNNING ? "Re-attached; replaying the results so far…" : "Loading the results…";
      schedule();
    } catch (err) {
      if (isAbort(err, ctx.signal)) return;
      const p = triage(err);
      if (p) showFollowError(p);
      return;
    }
    await run({ watch: id }, 0n);
  }

  render();
  if (starting) {
    connection = "Sending the batch…";
    void run({ create: starting.request }, 0n);
  } else {
    void attach(idParam);
  }
  ctx.signal.addEventListener("abort", () => {
    if (renderTimer !== null) window.clearTimeout(renderTimer);
  });
  // Keep elapsed/ETA moving between events.
  const ticker = window.setInterval(() => {
    if (summary === null) schedule();
  }, 1000);
  ctx.signal.addEventListener("abort", () => window.clearInterval(ticker));
  const onResize = () => {
    lastChartAt = 0;
    schedule();
  };
  window.addEventListener("resize", onResize);
  ctx.signal.addEventListener("abort", () => window.removeEventListener("resize", onResize));
}
