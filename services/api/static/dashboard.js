// The operator's live page (services/api/routes/dashboard.py): plain JavaScript, no library, nothing
// fetched from anywhere but this api. The operator's key stays in this tab's sessionStorage and goes
// out only as an Authorization header: on the event stream (read with fetch, since EventSource sends
// no headers) and on the thumbnails (fetched, shown from blob: URLs). docs/observability-page.md.
"use strict";

const KEY_STORE = "hadis.operatorKey";
const KEY_RE = /^hds_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/;
const STALE_MS = 5000;
const THUMBS_KEPT = 64;
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = {
  light: ["#3fb8af", "#8fd9d2", "#23827b", "#b7ece7"],
  heavy: ["#e8833a", "#f4b887", "#b35d1c", "#f9d7b8"],
};
const C = { light: "#3fb8af", heavy: "#e8833a", total: "#c9d1d9", good: "#5cb85c", bad: "#e05d5d", muted: "#8994a3" };
const STEP_COLOURS = {
  queued: "#59636f", routed: "#4a78b5", generating: "#3fb8af", judging: "#8e6cc2", escalated: "#e8833a",
};

const state = { key: null, ctrl: null, lastAt: 0, retryMs: 1000, thumbs: new Map(), cards: new Map(), models: {} };
const $ = (id) => document.getElementById(id);

// ---- small helpers ----------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else if (name === "cls") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function num(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return Number(value).toFixed(digits);
}

function pct(value) {
  return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)} %`;
}

function ago(at) {
  const seconds = Math.max(0, Date.now() / 1000 - at);
  if (seconds < 90) return `${seconds.toFixed(0)} s ago`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(0)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function message(text, kind) {
  const box = $("message");
  box.hidden = !text;
  box.textContent = text || "";
  box.className = kind === "info" ? "message info" : "message";
}

function badge(text, kind) {
  const live = $("live");
  live.textContent = text;
  live.className = `badge ${kind}`;
}

// ---- the key and the stream -------------------------------------------------------------------
function auth() {
  return { Authorization: `Bearer ${state.key}` };
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.error.message}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function login(text) {
  stop();
  state.key = null;
  sessionStorage.removeItem(KEY_STORE);
  $("login").hidden = false;
  $("forget").hidden = true;
  badge("not connected", "off");
  message(text || "Paste an operator's API key (hadis api-key create --tenant NAME --operator).", text ? "" : "info");
}

function stop() {
  if (state.ctrl) state.ctrl.abort();
  state.ctrl = null;
}

function start(key) {
  state.key = key;
  sessionStorage.setItem(KEY_STORE, key);
  $("login").hidden = true;
  $("forget").hidden = false;
  message("");
  stream();
}

async function stream() {
  stop();
  const ctrl = new AbortController();
  state.ctrl = ctrl;
  badge("connecting", "stale");
  let response;
  try {
    response = await fetch("/v1/ops/dashboard/stream", { headers: auth(), signal: ctrl.signal, cache: "no-store" });
  } catch (_) {
    if (!ctrl.signal.aborted) retry("the api does not answer");
    return;
  }
  if (response.status === 401 || response.status === 403) {
    login(await errorOf(response));
    return;
  }
  if (!response.ok) {
    retry(await errorOf(response));
    return;
  }
  try {
    await readFrames(response.body.getReader());
  } catch (_) {
    if (ctrl.signal.aborted) return;
  }
  if (!ctrl.signal.aborted) retry("the stream ended");
}

async function readFrames(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      frame(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
  }
}

function frame(text) {
  let event = "message";
  const data = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("event: ")) event = line.slice(7);
    else if (line.startsWith("data: ")) data.push(line.slice(6));
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (event === "snapshot") {
    state.lastAt = Date.now();
    state.retryMs = 1000;
    badge("live", "on");
    message("");
    render(payload);
  } else if (event === "status" && payload.error) {
    message(payload.error);
  }
}

function retry(why) {
  badge("reconnecting", "stale");
  message(`${why}; trying again in ${(state.retryMs / 1000).toFixed(0)} s`, "info");
  const wait = state.retryMs;
  state.retryMs = Math.min(state.retryMs * 2, 30000);
  setTimeout(() => { if (state.key) stream(); }, wait);
}

setInterval(() => {
  if (state.key && state.lastAt && Date.now() - state.lastAt > STALE_MS) badge("stale", "stale");
}, 1000);

// ---- the panels -------------------------------------------------------------------------------
function render(snap) {
  $("board").hidden = false;
  $("where").textContent = `namespace ${snap.namespace} · profile ${snap.profile} · SLO ${snap.slo_s} s`;
  renderGpus(snap.gpus || []);
  renderPlan(snap.plan);
  renderChanges(snap.changes || []);
  renderHeadline(snap);
  renderCharts(snap.series, snap.plan, snap.slo_s);
  renderTable($("tenants"), snap.window.tenants || []);
  renderTable($("classes"), snap.window.classes || []);
  renderRecent(snap.recent || []);
  const cost = snap.cost || {};
  $("cost").textContent = `this tick: ${cost.events ?? 0} events, ${cost.ended ?? 0} jobs ended, ` +
    `${cost.store_round_trips ?? 0} store and ${cost.broker_round_trips ?? 0} broker round trips, ` +
    `${cost.tick_ms ?? 0} ms (${cost.cpu_ms ?? 0} ms CPU) · ${cost.viewers ?? 0} viewer(s)` +
    (cost.behind ? " · catching up with the event stream" : "");
}

function colour(tier, model) {
  const seen = (state.models[tier] = state.models[tier] || []);
  if (!seen.includes(model)) seen.push(model);
  const palette = PALETTE[tier] || ["#888"];
  return palette[seen.indexOf(model) % palette.length];
}

function renderGpus(gpus) {
  const cells = gpus.map((gpu) => {
    const cell = el("div", { cls: `gpu ${gpu.state}`, "data-gpu": gpu.gpu, "data-tier": gpu.tier,
      "data-model": gpu.model, "data-state": gpu.state,
      title: `${gpu.gpu} on ${gpu.host || "?"}: planned ${gpu.tier || "nothing"} ${gpu.model || ""}; ` +
        `its worker serves ${gpu.worker_tier || "nothing"} ${gpu.worker_model || ""}` },
    el("div", { cls: "name", text: gpu.gpu }),
    el("div", { cls: "what", text: gpu.tier ? `${gpu.tier} · ${gpu.model}` : "not planned" }),
    el("div", { cls: "what", text: gpu.state }));
    if (gpu.tier) cell.style.background = colour(gpu.tier, gpu.model);
    return cell;
  });
  $("gpus").replaceChildren(...cells);
  const planned = gpus.filter((gpu) => gpu.tier).length;
  const serving = gpus.filter((gpu) => gpu.state === "serving").length;
  $("gpu-count").textContent = `${planned} planned, ${serving} serving as planned`;
  const legend = [];
  for (const tier of ["light", "heavy"]) {
    for (const model of state.models[tier] || []) {
      const swatch = el("span", { cls: "swatch" });
      swatch.style.background = colour(tier, model);
      legend.push(el("span", {}, swatch, `${tier}: ${model}`));
    }
  }
  legend.push(el("span", { text: "dashed: switching to its planned work · red edge: no worker" }));
  $("gpu-legend").replaceChildren(...legend);
}

function renderPlan(plan) {
  $("plan-version").textContent = plan ? `v${plan.version} · ${ago(plan.created_at)}` : "none yet";
  if (!plan) { $("plan").replaceChildren(); $("plan-reason").textContent = ""; return; }
  const rows = [
    ["pair", `${plan.light_model} → ${plan.heavy_model}`],
    ["r (routed to heavy)", num(plan.r)], ["d (escalated)", num(plan.d)], ["heavy share h", num(plan.heavy_share)],
    ["batch light / heavy", `${plan.light_batch} / ${plan.heavy_batch}`],
    ["GPUs light / heavy", `${plan.light_gpus} / ${plan.heavy_gpus}`], ["expected FID", num(plan.fid)],
  ];
  $("plan").replaceChildren(...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]));
  $("plan-reason").textContent = plan.reason ? `why: ${plan.reason}` : "";
}

function renderChanges(changes) {
  const rows = changes.map((change) => el("tr", { "data-version": change.version },
    el("td", { text: `v${change.version}` }), el("td", { text: ago(change.at) }),
    el("td", { text: change.changes.join("; ") || "—" }),
    el("td", {}, el("div", { cls: "why", text: change.reason || "—", title: change.reason || "" })),
    el("td", { text: num(change.expected_s, 1) }),
    el("td", { text: change.in_progress ? "switching…" : num(change.realised_s, 1) }),
    el("td", { text: num(change.dark_gpu_s, 1) })));
  $("changes").tBodies[0].replaceChildren(...rows);
}

function renderHeadline(snap) {
  const w = snap.window;
  const queued = Object.values(snap.queues || {}).reduce((a, b) => a + b, 0);
  const figures = [
    [num(w.arrivals_qps, 1), "arrivals, jobs/s"], [pct(w.attainment), "within SLO"],
    [num(w.p50_s), "p50 latency, s"], [num(w.p99_s), "p99 latency, s"], [num(w.fid), "mean FID"],
    [`${pct(w.escalation)} / ${snap.plan ? num(snap.plan.d) : "—"}`, "escalated / plan's d"],
    [String(queued), "jobs queued"], [String(w.ended), "jobs ended"],
  ];
  $("headline").replaceChildren(...figures.map(([value, label]) =>
    el("div", { cls: "figure" }, el("div", { cls: "value", text: value }), el("div", { cls: "label", text: label }))));
  $("window-span").textContent = w.window_s >= 120 ? `last ${num(w.window_s / 60, 0)} min` : `last ${num(w.window_s, 0)} s`;
}

function renderTable(table, rows) {
  table.tBodies[0].replaceChildren(...rows.map((row) => el("tr", {},
    el("td", { text: row.name }), el("td", { text: String(row.ended) }), el("td", { text: pct(row.attainment) }),
    el("td", { text: num(row.p50_s) }), el("td", { text: num(row.p99_s) }), el("td", { text: num(row.fid) }),
    el("td", { text: String(row.expired) }), el("td", { text: String(row.failed) }))));
}

// ---- charts -----------------------------------------------------------------------------------
function renderCharts(s, plan, sloS) {
  if (!s) return;
  const percent = (values) => values.map((v) => (v === null ? null : v * 100));
  chart($("chart-arrivals"), s.t, [
    { name: "all", values: s.arrivals, colour: C.total },
    { name: "light", values: s.arrivals_light, colour: C.light },
    { name: "heavy", values: s.arrivals_heavy, colour: C.heavy }]);
  chart($("chart-depth"), s.t, [
    { name: "light", values: s.depth_light, colour: C.light },
    { name: "heavy", values: s.depth_heavy, colour: C.heavy }]);
  chart($("chart-attainment"), s.t, [{ name: "within SLO", values: percent(s.attainment), colour: C.good }],
    { min: 0, max: 100 });
  chart($("chart-latency"), s.t, [
    { name: "p50", values: s.p50_s, colour: C.light }, { name: "p99", values: s.p99_s, colour: C.heavy },
    { name: "SLO", values: s.t.map(() => sloS), colour: C.bad, ref: true }]);
  chart($("chart-fid"), s.t, [{ name: "FID", values: s.fid, colour: C.total }], { zero: false });
  chart($("chart-escalation"), s.t, [
    { name: "escalated", values: percent(s.escalation), colour: C.heavy },
    { name: "plan's d", values: percent(s.d), colour: C.muted, ref: true }], { min: 0 });
}

function chart(svg, t, lines, opts = {}) {
  const width = svg.clientWidth || 360, height = svg.clientHeight || 150;
  const pad = { left: 38, right: 8, top: 16, bottom: 16 };
  const values = lines.flatMap((line) => line.values.filter((v) => v !== null && v !== undefined));
  const measured = lines.filter((line) => !line.ref)
    .flatMap((line) => line.values.filter((v) => v !== null && v !== undefined));
  let low = opts.min ?? (opts.zero === false && values.length ? Math.min(...values) : 0);
  let high = opts.max ?? (values.length ? Math.max(...values) : 1);
  if (high <= low) high = low + 1;
  if (opts.max === undefined) high += (high - low) * 0.1;
  if (opts.zero === false && opts.min === undefined) low -= (high - low) * 0.05;
  const first = t.length ? t[0] : -1;
  const x = (ts) => pad.left + ((ts - first) / (0 - first || 1)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - ((v - low) / (high - low)) * (height - pad.top - pad.bottom);
  const nodes = [];
  for (const v of [low, (low + high) / 2, high]) {
    nodes.push(svgEl("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }));
    const label = svgEl("text", { x: pad.left - 4, y: y(v) + 3, "text-anchor": "end" });
    label.textContent = Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(Math.abs(v) >= 10 ? 1 : 2);
    nodes.push(label);
  }
  const axis = svgEl("text", { x: pad.left, y: height - 3 });
  axis.textContent = `${first.toFixed(0)} s`;
  const now = svgEl("text", { x: width - pad.right, y: height - 3, "text-anchor": "end" });
  now.textContent = "now";
  nodes.push(axis, now);
  let legendX = pad.left;
  for (const line of lines) {
    nodes.push(...trace(line, t, x, y));
    const last = [...line.values].reverse().find((v) => v !== null && v !== undefined);
    const legend = svgEl("text", { x: legendX, y: 11, fill: line.colour });
    legend.textContent = `${line.name} ${last === undefined ? "—" : Number(last).toFixed(last >= 100 ? 0 : 2)}`;
    nodes.push(legend);
    legendX += 16 + legend.textContent.length * 6;
  }
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.dataset.points = String(measured.length);
  svg.dataset.max = String(measured.length ? Math.max(...measured) : 0);
  svg.replaceChildren(...nodes);
}

function trace(line, t, x, y) {
  const nodes = [];
  let path = "", run = [];
  const flush = () => {
    if (run.length === 1) nodes.push(svgEl("circle", { cx: run[0][0], cy: run[0][1], r: 2, fill: line.colour }));
    run = [];
  };
  line.values.forEach((v, i) => {
    if (v === null || v === undefined) { flush(); return; }
    const point = [x(t[i]).toFixed(1), y(v).toFixed(1)];
    path += `${run.length ? "L" : "M"}${point[0]},${point[1]}`;
    run.push(point);
  });
  flush();
  if (path) nodes.unshift(svgEl("path", { d: path, class: line.ref ? "ref" : "line", stroke: line.colour }));
  return nodes;
}

// ---- recent jobs ------------------------------------------------------------------------------
function renderRecent(jobs) {
  // A job's card is made once (its thumbnail fetched once) and kept while the job is listed.
  const cards = new Map();
  for (const job of jobs) cards.set(job.job_id, state.cards.get(job.job_id) || card(job));
  state.cards = cards;
  $("recent").replaceChildren(...cards.values());
}

function card(job) {
  const image = job.state === "done" ? el("img", { alt: "", title: `job ${job.job_id}`, "data-job": job.job_id })
    : el("div", { cls: "noimg" });
  if (job.state === "done") thumbnail(job.job_id, image);
  const late = job.state === "done" && job.slo_s !== null && job.latency_s > job.slo_s;
  const outcome = job.state === "done" ? (late ? "late" : "on time") : job.state;
  const body = el("div", { cls: "body" },
    el("div", { cls: "id", text: job.job_id }),
    el("div", { text: `${job.tenant || "—"} · ${job.tier || "—"} ${job.model || ""}${job.escalated ? " · escalated" : ""}` }),
    el("div", { cls: late ? "late" : job.state, text: `${outcome}: ${num(job.latency_s)} s of ${num(job.slo_s, 0)} s` }),
    steps(job));
  return el("div", { cls: "job", "data-state": job.state }, image, body);
}

function steps(job) {
  const bar = el("div", { cls: "steps" });
  const total = Math.max(job.latency_s || 0, 1e-6);
  job.steps.forEach((step, i) => {
    const next = i + 1 < job.steps.length ? job.steps[i + 1].t_s : job.latency_s;
    const span = el("span", { title: `${step.state} at ${num(step.t_s, 3)} s` });
    span.style.width = `${(Math.max(next - step.t_s, 0) / total) * 100}%`;
    span.style.background = STEP_COLOURS[step.state] || "#444";
    bar.append(span);
  });
  bar.title = job.steps.map((step) => `${step.state} ${num(step.t_s, 3)} s`).join(" → ");
  return bar;
}

async function thumbnail(jobId, image) {
  const known = state.thumbs.get(jobId);
  if (known) { image.src = await known; return; }
  const loading = fetch(`/v1/ops/dashboard/jobs/${encodeURIComponent(jobId)}/thumbnail`, { headers: auth() })
    .then((response) => (response.ok ? response.blob() : null))
    .then((blob) => (blob ? URL.createObjectURL(blob) : ""))
    .catch(() => "");
  state.thumbs.set(jobId, loading);
  while (state.thumbs.size > THUMBS_KEPT) {
    const [oldest, url] = state.thumbs.entries().next().value;
    state.thumbs.delete(oldest);
    url.then((u) => { if (u) URL.revokeObjectURL(u); });
  }
  const url = await loading;
  if (url) image.src = url;
  else image.className = "noimg";
}

// ---- start ------------------------------------------------------------------------------------
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("key").value.trim();
  $("key").value = "";
  if (!KEY_RE.test(key)) { message("That is not an API key (hds_<id>_<secret>)."); return; }
  start(key);
});
$("forget").addEventListener("click", () => login());

const saved = sessionStorage.getItem(KEY_STORE);
if (saved) start(saved);
else login();
