// teddyflow dashboard: draws each view the server sends (server-sent events; polling
// /state when the stream is unavailable). Everything is built with textContent, so no
// value from a topic is ever parsed as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, text) {
  const ns = ["svg", "rect", "text", "line", "path", "polyline", "polygon", "g"].includes(tag);
  const e = ns ? document.createElementNS(SVG, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const ms = (v) => (v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms");
const num = (v) => Math.round(v).toLocaleString("en");
const pct = (b) => (b === null || b === undefined ? "" : Math.round(b * 100) + " %");

function setMetric(name, text) {
  const e = document.querySelector(`[data-metric="${name}"]`);
  if (e) e.textContent = text;
}

function totals(v) {
  setMetric("utterances_done", String(v.utterances_done));
  setMetric("utterances_per_s", v.utterances_per_s.toFixed(2));
  setMetric("deadletters", String(v.deadletters));
  setMetric("alerts", String(v.alerts));
  setMetric("alerts_by_kind", Object.entries(v.alerts_by_kind).map(([k, n]) => `${k} ${n}`).join(" · "));
  setMetric("in_flight", String(v.in_flight));
  const fa = v.stages.find((s) => s.stage === "first_audio");
  setMetric("first_audio", fa && fa.count ? `${ms(fa.p50_ms)} / ${ms(fa.p95_ms)}` : "–");
}

// The graph's stages, left to right; speech-to-text and acoustic analysis run side by side.
const LAYOUT = [
  ["decode", 10, 48], ["asr", 170, 10], ["acoustic", 170, 86], ["understand", 330, 48],
  ["reply", 490, 48], ["tts", 650, 48], ["sink_ack", 810, 48],
];
const EDGES = [["decode", "asr"], ["decode", "acoustic"], ["asr", "understand"], ["acoustic", "understand"],
  ["understand", "reply"], ["reply", "tts"], ["tts", "sink_ack"]];
const BOX_W = 136, BOX_H = 56;

function pipeline(v) {
  const svg = $("#pipeline");
  svg.replaceChildren();
  const at = Object.fromEntries(LAYOUT.map(([s, x, y]) => [s, [x, y]]));
  for (const [a, b] of EDGES) {
    const [x1, y1] = at[a], [x2, y2] = at[b];
    svg.append(el("line", { x1: x1 + BOX_W, y1: y1 + BOX_H / 2, x2, y2: y2 + BOX_H / 2, stroke: "#bbb", "stroke-width": 2 }));
  }
  const rows = Object.fromEntries(v.stages.map((s) => [s.stage, s]));
  for (const [stage, x, y] of LAYOUT) {
    const s = rows[stage] || { busy: null, count: 0, p50_ms: 0 };
    const busy = Math.min(Math.max(s.busy || 0, 0), 1);
    const g = el("g", { "data-pipeline-stage": stage });
    g.append(el("rect", { x, y, width: BOX_W, height: BOX_H, rx: 8, fill: `rgba(208,116,60,${0.08 + 0.8 * busy})`, stroke: "#d0743c" }));
    g.append(el("text", { x: x + 10, y: y + 19, "font-weight": 600, "font-size": 14 }, stage === "sink_ack" ? "sink" : stage));
    const compute = s.busy !== null && s.busy !== undefined;
    const lines = !s.count ? ["idle"]
      : compute ? [`${pct(s.busy)} busy`, `p50 ${ms(s.p50_ms)}`] : [`ack p50 ${ms(s.p50_ms)}`];
    lines.forEach((line, i) =>
      g.append(el("text", { x: x + 10, y: y + 35 + 14 * i, "font-size": 12, fill: "#444" }, line)));
    svg.append(g);
  }
}

// A sparkline of one stage: p95 as a shaded band, p50 as a line, over the kept history.
function spark(history, stage) {
  const svg = el("svg", { viewBox: "0 0 180 28", preserveAspectRatio: "none" });
  const pts = history.map((p, i) => [i, p.stages[stage]]).filter(([, s]) => s);
  if (pts.length < 2) return svg;
  const max = Math.max(...pts.map(([, s]) => s[1]), 1);
  const n = Math.max(history.length - 1, 1);
  const x = (i) => (i / n) * 178 + 1, y = (v) => 27 - (v / max) * 25;
  const p95 = pts.map(([i, s]) => `${x(i)},${y(s[1])}`);
  const base = `${x(pts[pts.length - 1][0])},27 ${x(pts[0][0])},27`;
  svg.append(el("polygon", { points: p95.join(" ") + " " + base, fill: "rgba(60,127,208,0.2)" }));
  svg.append(el("polyline", { points: pts.map(([i, s]) => `${x(i)},${y(s[0])}`).join(" "), fill: "none", stroke: "#3c7fd0", "stroke-width": 1.5 }));
  return svg;
}

function stages(v) {
  const body = $("#stages tbody");
  body.replaceChildren();
  for (const s of v.stages) {
    const tr = el("tr", { "data-stage": s.stage, class: s.count ? "" : "idle" });
    tr.append(el("td", {}, s.stage), el("td", { "data-field": "count" }, String(s.count)),
      el("td", { "data-field": "p50_ms" }, s.count ? s.p50_ms.toFixed(1) : "–"),
      el("td", { "data-field": "p95_ms" }, s.count ? s.p95_ms.toFixed(1) : "–"),
      el("td", { "data-field": "busy" }, pct(s.busy)));
    const chart = el("td");
    chart.append(spark(v.history, s.stage));
    tr.append(chart);
    body.append(tr);
  }
}

function lag(v) {
  const box = $("#lag");
  box.replaceChildren();
  const entries = Object.entries(v.lag_by_partition);
  if (!entries.length) box.append(el("div", { class: "sub" }, "no partitions reported yet"));
  const max = Math.max(1, ...entries.map(([, l]) => l));
  for (const [p, l] of entries) {
    const row = el("div", { class: "bar", "data-partition": p });
    const fill = el("span", { class: "fill" });
    fill.style.width = `${(l / max) * 240}px`;
    row.append(el("span", {}, `partition ${p}`), fill, el("span", {}, num(l)));
    box.append(row);
  }
}

function workers(v) {
  const body = $("#workers tbody");
  body.replaceChildren();
  for (const w of v.workers) {
    const tr = el("tr", { "data-worker": `${w.process}/${w.worker}`, class: w.live ? "" : "gone" });
    tr.append(el("td", {}, String(w.process)), el("td", {}, String(w.worker)),
      el("td", {}, (w.rss_bytes / 1048576).toFixed(0)), el("td", {}, String(w.in_flight)),
      el("td", {}, num(w.consumer_lag)), el("td", {}, String(w.utterances_done)),
      el("td", {}, w.live ? `${(w.age_ms / 1000).toFixed(0)} s ago` : "gone"));
    body.append(tr);
  }
}

function render(v) {
  totals(v); pipeline(v); stages(v); lag(v); workers(v);
  document.body.dataset.updated = String(v.ts_ms);
}

function status(text, live) {
  const s = $("#status");
  s.textContent = text;
  s.className = live ? "status live" : "status";
}

function poll() {
  fetch("/state").then((r) => r.json()).then((v) => { render(v); status("polling", true); })
    .catch(() => status("disconnected", false))
    .finally(() => setTimeout(poll, 2000));
}

if (window.EventSource) {
  const events = new EventSource("/events");
  events.addEventListener("view", (e) => { render(JSON.parse(e.data)); status("live", true); });
  events.onerror = () => status("reconnecting…", false);
} else {
  poll();
}
