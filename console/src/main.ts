// The console's shell: a History-API router under /console, the navigation, sign-in state, and
// focus management when the view changes.

import { session, setUnauthenticatedHandler } from "./api.js";
import { announce, h, replace } from "./dom.js";
import { BASE } from "./paths.js";
import { approvalsView } from "./views/approvals.js";
import { batchView } from "./views/batch.js";
import { batchesView } from "./views/batches.js";
import { refundView } from "./views/refund.js";
import { signInView } from "./views/signin.js";


export interface ViewContext {
  /** Aborted when the view is left: streams and calls of the view stop. */
  signal: AbortSignal;
  navigate(path: string, options?: { replace?: boolean }): void;
  /** Replaces the URL without re-rendering (e.g. a new batch's id once it is accepted). */
  setPath(path: string): void;
  /** A message handed from the previous view (e.g. why sign-in is shown). */
  flash: string | null;
  query: URLSearchParams;
}

type View = (root: HTMLElement, params: string[], ctx: ViewContext) => void;

interface Route {
  pattern: RegExp;
  view: View;
  /** Whether the view needs an API key. */
  auth: boolean;
  nav?: string;
}

const routes: Route[] = [
  { pattern: /^\/signin$/, view: signInView, auth: false },
  { pattern: /^\/batches$/, view: batchesView, auth: true, nav: "batches" },
  { pattern: /^\/batches\/([^/]+)$/, view: batchView, auth: true, nav: "batches" },
  { pattern: /^\/refunds$/, view: refundView, auth: true, nav: "refunds" },
  { pattern: /^\/refunds\/([^/]+)$/, view: refundView, auth: true, nav: "refunds" },
  { pattern: /^\/approvals$/, view: approvalsView, auth: true, nav: "approvals" },
];

const NAV: [string, string, string][] = [
  ["batches", `${BASE}/batches`, "Batches"],
  ["refunds", `${BASE}/refunds`, "Look up a refund"],
  ["approvals", `${BASE}/approvals`, "Approvals"],
];

let current: AbortController | null = null;
let flash: string | null = null;

function navigate(path: string, options: { replace?: boolean } = {}): void {
  if (options.replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  render();
}

function setPath(path: string): void {
  history.replaceState(null, "", path);
}

function renderChrome(active: string | undefined): void {
  const nav = document.getElementById("nav");
  const sessionBox = document.getElementById("session");
  if (!nav || !sessionBox) return;
  const signedIn = session.key() !== null;
  replace(
    nav,
    signedIn
      ? h(
          "ul",
          null,
          NAV.map(([id, href, text]) =>
            h("li", null, h("a", { href, "aria-current": id === active ? "page" : null }, text)),
          ),
        )
      : null,
  );
  replace(
    sessionBox,
    signedIn
      ? h(
          "button",
          {
            type: "button",
            class: "secondary",
            onclick: () => {
              session.signOut();
              flash = "Signed out. The API key was removed from this tab.";
              navigate(`${BASE}/signin`);
            },
          },
          "Sign out",
        )
      : null,
  );
}

function render(): void {
  current?.abort(new DOMException("view left", "AbortError"));
  const controller = new AbortController();
  current = controller;

  const url = new URL(window.location.href);
  let path = url.pathname.startsWith(BASE) ? url.pathname.slice(BASE.length) : url.pathname;
  path = path.replace(/\/+$/, "");
  if (path === "") {
    navigate(session.key() ? `${BASE}/batches` : `${BASE}/signin`, { replace: true });
    return;
  }
  const match = routes
    .map((r) => ({ route: r, m: r.pattern.exec(path) }))
    .find((x) => x.m !== null);
  const main = document.getElementById("main");
  if (!main) return;
  if (!match || !match.m) {
    renderChrome(undefined);
    replace(
      main,
      h("h1", { tabindex: "-1", class: "view-heading" }, "Page not found"),
      h("p", null, h("a", { href: `${BASE}/` }, "Back to the console")),
    );
    focusHeading(main);
    return;
  }
  if (match.route.auth && !session.key()) {
    const next = url.pathname + url.search;
    navigate(`${BASE}/signin?next=${encodeURIComponent(next)}`, { replace: true });
    return;
  }
  renderChrome(match.route.nav);
  main.replaceChildren();
  const ctx: ViewContext = {
    signal: controller.signal,
    navigate,
    setPath,
    flash,
    query: url.searchParams,
  };
  flash = null;
  const params = match.m.slice(1).map((p) => decodeURIComponent(p));
  match.route.view(main, params, ctx);
  focusHeading(main);
}

/** Moves focus to the new view's heading, so keyboard and screen reader users start there. */
function focusHeading(main: HTMLElement): void {
  const heading = main.querySelector<HTMLElement>("h1");
  if (heading) {
    heading.focus({ preventScroll: false });
    document.title = `${heading.textContent ?? ""} · Refund console`;
    announce(heading.textContent ?? "");
  } else {
    main.focus();
  }
}

function onClick(event: MouseEvent): void {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const a = (event.target as Element | null)?.closest?.("a");
  if (!a || a.hasAttribute("download") || (a.target && a.target !== "_self")) return;
  const url = new URL(a.href, window.location.href);
  if (url.origin !== window.location.origin || !url.pathname.startsWith(BASE)) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
}

setUnauthenticatedHandler((message) => {
  session.signOut();
  flash = `The service refused the API key (${message}). Sign in again.`;
  const here = window.location.pathname + window.location.search;
  navigate(`${BASE}/signin?next=${encodeURIComponent(here)}`);
});

document.addEventListener("click", onClick);
window.addEventListener("popstate", render);
render();
