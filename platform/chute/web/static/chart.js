// Two small inline SVG charts, drawn from GET /board/stats: jobs finished per minute (stacked
// processed / failed) and each handler's duration p50 and p95. Labels are text nodes.
import { seconds } from "./common.js";

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text = null) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== null) el.textContent = String(text);
  return el;
}

export function drawThroughput(box, stats, key) {
  const minutes = stats.finished[key] || stats.finished.all.map(() => ({ processed: 0, failed: 0 }));
  const W = 600;
  const H = 150;
  const pad = { l: 28, r: 6, t: 8, b: 18 };
  const top = Math.max(1, ...minutes.map((m) => m.processed + m.failed));
  const bw = (W - pad.l - pad.r) / minutes.length;
  const y = (n) => pad.t + (H - pad.t - pad.b) * (1 - n / top);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img" });
  const total = minutes.reduce((a, m) => a + m.processed + m.failed, 0);
  svg.append(s("title", {}, `${total} jobs finished in the last hour`));
  svg.append(s("line", { x1: pad.l, x2: W - pad.r, y1: y(0), y2: y(0), class: "axis" }));
  svg.append(s("text", { x: pad.l - 4, y: y(top) + 4, class: "tick", "text-anchor": "end" }, top));
  svg.append(s("text", { x: pad.l - 4, y: y(0), class: "tick", "text-anchor": "end" }, 0));
  minutes.forEach((m, i) => {
    const x = pad.l + i * bw;
    const g = s("g", { class: "bar" });
    g.append(s("title", {}, `${minutes.length - i} min ago: ${m.processed} processed, ${m.failed} failed`));
    if (m.processed) {
      g.append(s("rect", { x: x + 0.5, width: Math.max(1, bw - 1), y: y(m.processed), height: y(0) - y(m.processed),
                           class: "processed" }));
    }
    if (m.failed) {
      const base = y(m.processed);
      g.append(s("rect", { x: x + 0.5, width: Math.max(1, bw - 1), y: base - (y(0) - y(m.failed)),
                           height: y(0) - y(m.failed), class: "failed" }));
    }
    svg.append(g);
  });
  for (const [i, label] of [[0, "−60 min"], [30, "−30 min"], [59, "now"]]) {
    svg.append(s("text", { x: pad.l + i * bw + bw / 2, y: H - 4, class: "tick",
                           "text-anchor": i === 0 ? "start" : i === 59 ? "end" : "middle" }, label));
  }
  box.dataset.total = String(total);
  box.replaceChildren(svg);
}

export function drawDurations(box, stats) {
  const rows = Object.entries(stats.durations);
  if (!rows.length) {
    box.replaceChildren(document.createTextNode("No runs in the last hour."));
    return;
  }
  const W = 600;
  const rowH = 22;
  const label = 130;
  const H = rows.length * rowH + 4;
  const top = Math.max(0.001, ...rows.map(([, d]) => d.p95 || 0));
  const x = (v) => label + (W - label - 90) * (v / top);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img" });
  svg.append(s("title", {}, "attempt duration per handler, last hour"));
  rows.forEach(([name, d], i) => {
    const yy = i * rowH + 4;
    const g = s("g", { class: "duration", "data-handler": name });
    g.append(s("title", {}, `${name}: ${d.runs} runs, p50 ${seconds(d.p50)}, p95 ${seconds(d.p95)}`));
    g.append(s("text", { x: label - 6, y: yy + 13, class: "tick", "text-anchor": "end" }, name));
    g.append(s("rect", { x: label, y: yy + 2, width: Math.max(1, x(d.p95) - label), height: 14, class: "p95" }));
    g.append(s("rect", { x: label, y: yy + 5, width: Math.max(1, x(d.p50) - label), height: 8, class: "p50" }));
    g.append(s("text", { x: x(d.p95) + 6, y: yy + 13, class: "tick" }, `${seconds(d.p50)} · ${seconds(d.p95)}`));
    svg.append(g);
  });
  box.replaceChildren(svg);
}
