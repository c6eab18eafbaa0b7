// Throughput over time as an inline SVG: results per second, one point per time bucket.

import { svg } from "./dom.js";

const H = 160;
const PAD_L = 40;
const PAD_B = 22;
const PAD_T = 10;
const PAD_R = 8;
/** At most this many points; longer runs are drawn in wider buckets. */
const MAX_POINTS = 120;

/**
 * `perSecond[i]` is how many results arrived in second i of the run (since the first live result).
 * Returns the chart and a one-line text for assistive technology.
 */
export function throughputChart(perSecond: number[], title: string, width = 600): { chart: SVGElement; text: string } {
  // Drawn at the box's own width, so that text is never stretched.
  const W = Math.max(240, Math.round(width));
  const seconds = perSecond.length;
  const bucket = Math.max(1, Math.ceil(seconds / MAX_POINTS));
  const points: number[] = [];
  for (let i = 0; i < seconds; i += bucket) {
    let sum = 0;
    let n = 0;
    for (let j = i; j < Math.min(seconds, i + bucket); j++) {
      sum += perSecond[j] ?? 0;
      n++;
    }
    points.push(sum / n);
  }
  const peak = Math.max(1, ...points);
  const yMax = niceCeiling(peak);
  const plotW = W - PAD_L - PAD_R;
  const plotH = H - PAD_T - PAD_B;
  const x = (i: number) => PAD_L + (points.length <= 1 ? plotW : (i / (points.length - 1)) * plotW);
  const y = (v: number) => PAD_T + plotH - (v / yMax) * plotH;
  const line = points.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  const area = points.length ? `${x(0).toFixed(1)},${y(0)} ${line} ${x(points.length - 1).toFixed(1)},${y(0)}` : "";
  const last = points.length ? points[points.length - 1] ?? 0 : 0;
  const text = seconds
    ? `${title}: over ${seconds} s, peak ${fmt(Math.max(...points))} results/s, latest ${fmt(last)} results/s.`
    : `${title}: no results seen live yet.`;

  const gridValues = [0, yMax / 2, yMax];
  const chart = svg(
    "svg",
    {
      viewBox: `0 0 ${W} ${H}`,
      class: "chart",
      role: "img",
      "aria-label": text,
      width: W,
      height: H,
    },
    svg("title", null, text),
    gridValues.map((v) => [
      svg("line", { x1: PAD_L, x2: W - PAD_R, y1: y(v), y2: y(v), class: "chart-grid" }),
      svg("text", { x: PAD_L - 6, y: y(v) + 4, "text-anchor": "end", class: "chart-label" }, fmt(v)),
    ]),
    svg("text", { x: PAD_L, y: H - 4, class: "chart-label" }, "0 s"),
    svg("text", { x: W - PAD_R, y: H - 4, "text-anchor": "end", class: "chart-label" }, `${seconds} s`),
    area ? svg("polygon", { points: area, class: "chart-area" }) : null,
    points.length > 1 ? svg("polyline", { points: line, class: "chart-line", fill: "none" }) : null,
    points.length === 1 ? svg("circle", { cx: x(0), cy: y(points[0] ?? 0), r: 3, class: "chart-dot" }) : null,
  );
  return { chart, text };
}

function niceCeiling(v: number): number {
  const exp = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * exp >= v) return m * exp;
  return 10 * exp;
}

function fmt(v: number): string {
  return v >= 10 ? String(Math.round(v)) : String(Math.round(v * 10) / 10);
}
