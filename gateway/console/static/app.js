// polyhead console: one ES module, no dependencies, no network but this gateway's public API.
// Views: #/models, #/playground, #/dashboard/<model>. Charts are plain SVG drawn below.

const KEY_STORE = "polyhead.apiKey"; // sessionStorage: this tab only, gone when it closes
const state = { models: [], modelsLoaded: null, dashboardTimer: null };

// -- DOM helpers ------------------------------------------------------------------------------------
const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

const fmt = {
  pct: (v) => (v === null || v === undefined ? "—" : `${(v * 100).toFixed(1)}%`),
  num: (v, digits = 0) => (v === null || v === undefined ? "—" : Number(v).toLocaleString("en", {
    maximumFractionDigits: digits, minimumFractionDigits: digits })),
  ms: (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(v < 10 ? 2 : 1)} ms`),
  prob: (v) => (v === null || v === undefined ? "—" : Number(v).toFixed(3)),
};

function notice(message) {
  const box = $("#notice");
  box.textContent = message || "";
  box.hidden = !message;
}

// -- API (with the user's key, asked for on a 401) -------------------------------------------------
class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

let keyRequest = null; // one dialog shared by every call waiting for a key

function askForKey(reason) {
  if (!keyRequest) {
    keyRequest = new Promise((resolve) => {
      const dialog = $("#key-dialog");
      $("#key-reason").textContent = reason;
      $("#key-input").value = "";
      dialog.addEventListener("close", function done() {
        dialog.removeEventListener("close", done);
        const key = $("#key-input").value.trim();
        if (key) sessionStorage.setItem(KEY_STORE, key);
        keyRequest = null;
        showKeyState();
        resolve(Boolean(key));
      });
      dialog.showModal();
      $("#key-input").focus();
    });
  }
  return keyRequest;
}

function showKeyState() {
  const has = Boolean(sessionStorage.getItem(KEY_STORE));
  $("#key-state").textContent = has ? "API key: set for this tab" : "";
  $("#forget-key").hidden = !has;
}

async function api(path, { method = "GET", body } = {}) {
  for (let attempt = 0; ; attempt++) {
    const key = sessionStorage.getItem(KEY_STORE);
    const headers = { accept: "application/json" };
    if (key) headers.authorization = `Bearer ${key}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = await response.json().catch(() => null);
    if (response.status === 401 && attempt < 3) {
      sessionStorage.removeItem(KEY_STORE);
      showKeyState();
      const message = data?.error?.message || "this gateway requires an API key";
      if (await askForKey(key ? `The key was refused: ${message}` : `This gateway requires an API key (${message}).`)) continue;
    }
    if (!response.ok) {
      const err = data?.error;
      throw new ApiError(response.status, err?.message || data?.detail || response.statusText, err?.field);
    }
    return data;
  }
}

const modelPath = (name, tail) => `/v1/models/${encodeURIComponent(name)}/${tail}`;

// -- models -------------------------------------------------------------------------------------------
async function loadModels() {
  state.modelsLoaded = api("/v1/models").then((listing) => {
    state.models = listing.data;
    renderModels();
    renderModelChoices();
    notice("");
    return state.models;
  }).catch((err) => {
    notice(`Cannot list models: ${err.message}`);
    $("#models-table tbody").replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "muted" }, err.message)));
    return [];
  });
  return state.modelsLoaded;
}

function renderModels() {
  const rows = state.models.map((m) => {
    const drift = m.drift ? (m.drift.flagged ? h("span", { class: "badge bad" }, "flagged") : h("span", { class: "badge ok" }, "ok")) : "—";
    const why = m.error || Object.entries(m.checks || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
    return h("tr", { "data-model": m.name, "data-ready": String(m.ready) },
      h("td", {}, h("strong", {}, m.name), m.description ? h("div", { class: "muted small" }, m.description) : null),
      h("td", {}, h("span", { class: `badge ${m.ready ? "ok" : "bad"}`, title: why }, m.ready ? "ready" : "not ready")),
      h("td", { class: "mono" }, m.version || "—"),
      h("td", {}, (m.labels || []).map((l) => h("span", { class: "chip" }, l))),
      h("td", { class: "num" }, fmt.pct(m.metrics?.accuracy)),
      h("td", { class: "num" }, fmt.pct(m.metrics?.f1_weighted)),
      h("td", {}, drift),
      h("td", {}, h("a", { href: `#/dashboard/${encodeURIComponent(m.name)}` }, "dashboard")));
  });
  $("#models-table tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "no models routed"))]));
}

// -- playground ----------------------------------------------------------------------------------
function renderModelChoices() {
  const checked = new Set($$("#model-choices input:checked").map((i) => i.value));
  const first = !$("#model-choices input");
  $("#model-choices").replaceChildren(...state.models.map((m) => h("label", { class: "choice" },
    h("input", { type: "checkbox", name: "model", value: m.name, checked: first ? m.ready : checked.has(m.name) }),
    ` ${m.name}`, m.ready ? null : h("span", { class: "muted small" }, " (not ready)"))));
}

async function classify(event) {
  event.preventDefault();
  const text = $("#playground-text").value;
  const names = $$("#model-choices input:checked").map((i) => i.value);
  if (!text.trim()) return notice("Type a text to classify.");
  if (!names.length) return notice("Pick at least one model.");
  notice("");
  const results = $("#results");
  results.replaceChildren();
  // One predict call per model, all at once; each card fills in as its answer arrives.
  await Promise.all(names.map(async (name) => {
    const card = h("article", { class: "result card", "data-model": name, "data-state": "pending" },
      h("h3", {}, name), h("p", { class: "muted" }, "classifying…"));
    results.append(card);
    try {
      const reply = await api(modelPath(name, "predict"), { method: "POST", body: { text } });
      renderPrediction(card, name, text, reply);
    } catch (err) {
      card.dataset.state = "error";
      card.replaceChildren(h("h3", {}, name), h("p", { class: "error" }, `${err.status || ""} ${err.message}`));
    }
  }));
}

function renderPrediction(card, name, text, reply) {
  const p = reply.predictions[0];
  card.dataset.state = "done";
  card.dataset.label = p.label;
  const rows = p.top_k.map((t) => {
    const fill = h("div", { class: "fill" });
    fill.style.width = `${(t.probability * 100).toFixed(1)}%`;
    return h("li", { "data-label": t.label, "data-probability": t.probability },
      h("span", { class: "topk-label" }, t.label), h("div", { class: "meter" }, fill),
      h("span", { class: "num" }, fmt.prob(t.probability)));
  });
  const explainBox = h("div", { class: "explanation" });
  card.replaceChildren(
    h("header", {}, h("h3", {}, name), h("span", { class: "muted small mono" }, `v ${reply.version} · ${fmt.ms(reply.latency_ms)}`)),
    h("p", { class: "prediction" }, h("span", { class: "label" }, p.label), " ",
      h("span", { class: "muted" }, `p = ${fmt.prob(p.probability)}`),
      p.abstained ? h("span", { class: "badge warn" }, "abstained: under the threshold") : null),
    h("ol", { class: "topk" }, rows),
    h("div", { class: "actions" }, h("button", { type: "button", class: "explain", onclick: () => explain(explainBox, name, text) }, "Explain")),
    explainBox);
}

/** The text with each word a span coloured by its importance (orange: for the label, blue: against). */
function highlighted(text, reply) {
  const scale = Math.max(1e-6, ...reply.words.map((w) => Math.abs(w.importance)));
  const parts = [];
  let at = 0;
  for (const w of reply.words) {
    parts.push(text.slice(at, w.start));
    const span = h("span", { class: `word ${w.importance >= 0 ? "for" : "against"}`, "data-importance": w.importance,
      title: `${w.importance >= 0 ? "+" : ""}${w.importance.toFixed(3)}: p(${reply.label}) without "${w.word}" is ` +
        `${(reply.probability - w.importance).toFixed(3)}` }, text.slice(w.start, w.end));
    const alpha = Math.abs(w.importance) / scale;
    span.style.backgroundColor = w.importance >= 0 ? `rgba(230, 120, 20, ${alpha.toFixed(3)})` : `rgba(40, 110, 220, ${alpha.toFixed(3)})`;
    parts.push(span);
    at = w.end;
  }
  parts.push(text.slice(at));
  return parts;
}

async function explain(box, name, text) {
  box.replaceChildren(h("p", { class: "muted" }, "explaining…"));
  let reply;
  try {
    reply = await api(modelPath(name, "explain"), { method: "POST", body: { text } });
  } catch (err) {
    box.replaceChildren(h("p", { class: "error" }, `${err.status || ""} ${err.message}`));
    return;
  }
  const parts = highlighted(text, reply);
  const top = [...reply.words].sort((a, b) => b.importance - a.importance).slice(0, 3).filter((w) => w.importance > 0);
  box.replaceChildren(
    h("p", { class: "highlighted", "data-label": reply.label }, parts),
    h("p", { class: "muted small" }, `Orange: the word supports “${reply.label}” (its probability drops without it); ` +
      "blue: it argues against. " + (top.length ? `Strongest: ${top.map((w) => `${w.word} (+${w.importance.toFixed(3)})`).join(", ")}.` : "")));
}

// -- dashboard -----------------------------------------------------------------------------------
const RANGES = { "24h": { hours: 24, bucket: "hour" }, "7d": { hours: 24 * 7, bucket: "day" }, "30d": { hours: 24 * 30, bucket: "day" } };
const isoSeconds = (date) => date.toISOString().replace(/\.\d{3}Z$/, "Z");

async function showDashboard(requested) {
  await state.modelsLoaded;
  const select = $("#dashboard-model");
  const current = select.value;
  select.replaceChildren(...state.models.map((m) => h("option", { value: m.name }, m.name)));
  const name = requested || current || state.models[0]?.name;
  if (!name) return ($("#dashboard-status").textContent = "No models routed.");
  select.value = name;
  await loadReport(name);
}

async function loadReport(name) {
  const range = RANGES[$("#dashboard-range").value];
  // No `until`: the server's "now" ends the range, so what was served a moment ago is in it.
  const since = new Date(Date.now() - range.hours * 3600e3);
  const status = $("#dashboard-status");
  status.textContent = `loading the report of ${name}…`;
  let report;
  try {
    report = await api(`${modelPath(name, "report")}?since=${isoSeconds(since)}&bucket=${range.bucket}`);
  } catch (err) {
    const missingApi = err.status === 404 && !err.field && /^not found$/i.test(err.message);
    status.textContent = missingApi ? "This gateway has no report API (GET /v1/models/{name}/report): the dashboard needs it."
      : `Cannot load the report of ${name}: ${err.status || ""} ${err.message}`;
    $("#dashboard").hidden = true;
    return;
  }
  if ($("#dashboard-model").value !== name) return; // another model was picked meanwhile
  status.textContent = `${report.model}: ${new Date(report.since).toLocaleString()} – ${new Date(report.until).toLocaleString()}, ` +
    `per ${report.bucket}; refreshed ${new Date().toLocaleTimeString()}`;
  renderReport(report, state.models.find((m) => m.name === name));
  $("#dashboard").hidden = false;
  await loadChallengers(name);
}

// Champion vs challengers on the same live texts, and the audit log (GET .../challengers, .../audit).
async function loadChallengers(name) {
  const status = $("#challengers-status");
  const cell = (text, cls = "num") => h("td", { class: cls }, text);
  try {
    const [body, audit] = await Promise.all([api(modelPath(name, "challengers")), api(modelPath(name, "audit"))]);
    if ($("#dashboard-model").value !== name) return;
    const champ = body.champion_offline_test?.accuracy;
    status.textContent = `champion ${body.champion} · policy ${body.policy.mode}` + (body.guard?.active
      ? ` · guard watching since ${new Date(body.guard.since).toLocaleString()} (previous ${body.guard.previous})` : "");
    $("#challengers-table tbody").replaceChildren(...(body.challengers.length ? body.challengers.map((c) => {
      const fb = c.feedback;
      return h("tr", { "data-version": c.version },
        cell(c.version + (c.in_shadow ? "" : " (not shadowed)"), "mono"), cell(fmt.num(c.shadowed)), cell(fmt.pct(c.agreement)),
        cell(fb ? `${fmt.pct(fb.champion_accuracy)} → ${fmt.pct(fb.challenger_accuracy)} (n=${fmt.num(fb.paired)})` : "no feedback"),
        cell(fb ? Number(fb.mcnemar_p).toPrecision(2) : "–"), cell(c.confidence.shift === null ? "–" : Number(c.confidence.shift).toFixed(3)),
        cell(`${fmt.pct(champ)} → ${fmt.pct(c.offline_test?.accuracy)}`), cell(c.gate.reason, "small"));
    }) : [h("tr", {}, h("td", { colspan: 8, class: "muted" }, "no challengers: `polyhead train` writes new versions as challengers"))]));
    $("#audit-table tbody").replaceChildren(...(audit.entries.length ? audit.entries.map((a) => h("tr", {},
      cell(new Date(a.ts).toLocaleString(), ""), cell(a.event, ""), cell(a.version || "", "mono"), cell(a.previous || "", "mono"),
      cell(a.actor, ""), cell(a.reason, "small"))) : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no promotion or rollback yet"))]));
  } catch (err) {
    status.textContent = `Challengers unavailable: ${err.status || ""} ${err.message}`;
  }
}

function renderReport(report, model) {
  const s = report.summary;
  $("#summary-tiles").replaceChildren(
    tile("Requests", fmt.num(s.requests), "requests"), tile("Texts", fmt.num(s.texts), "texts"),
    tile("Mean confidence", fmt.prob(s.confidence_mean), "confidence"), tile("Abstain rate", fmt.pct(s.abstain_rate), "abstain"),
    tile("Latency p50 / p95 / p99", `${fmt.ms(s.latency_ms.p50)} / ${fmt.ms(s.latency_ms.p95)} / ${fmt.ms(s.latency_ms.p99)}`, "latency", "wide"),
    tile("Live accuracy", s.feedback.count ? `${fmt.pct(s.feedback.accuracy)} of ${fmt.num(s.feedback.count)}` : "no feedback", "accuracy"),
    liveTile(report.review));

  const slots = timeSlots(report);
  const date = (t) => `${String(t.getMonth() + 1).padStart(2, "0")}-${String(t.getDate()).padStart(2, "0")}`;
  const labelOf = (t) => (report.bucket === "day" ? t.toISOString().slice(5, 10)
    : t.getHours() === 0 ? date(t) : `${String(t.getHours()).padStart(2, "0")}:00`); // midnight shows the date
  chart("#chart-volume", barChart({
    labels: slots.map((slot) => labelOf(slot.start)), values: slots.map((slot) => slot.texts),
    titles: slots.map((slot) => `${slot.start.toLocaleString()}: ${slot.texts} texts in ${slot.requests} requests` +
      (slot.versions.length > 1 ? ` (versions ${slot.versions.join(", ")})` : "")),
  }));

  const labels = Object.entries(s.label_distribution || {}).sort((a, b) => b[1] - a[1]);
  chart("#chart-labels", hbarChart({ labels: labels.map(([l]) => l), values: labels.map(([, n]) => n), format: (v) => fmt.num(v) }));

  const hist = s.confidence_histogram;
  const edge = (v) => (v === 0 || v === 1 ? String(v) : v.toFixed(1).replace(/^0/, ""));
  chart("#chart-confidence", barChart({
    labels: hist.counts.map((_, i) => `${edge(hist.edges[i])}–${edge(hist.edges[i + 1])}`), values: hist.counts,
    titles: hist.counts.map((n, i) => `${hist.edges[i].toFixed(1)}–${hist.edges[i + 1].toFixed(1)}: ${n} texts`),
  }));

  chart("#chart-latency", lineChart({
    labels: slots.map((slot) => labelOf(slot.start)),
    series: ["p50", "p95", "p99"].map((p) => ({ name: p, values: slots.map((slot) => slot.latency[p]) })),
  }));

  renderDrift(report.drift);

  const acc = [];
  // Versions are long UTC timestamps: their tail tells them apart in a narrow label.
  const short = (version) => (report.versions.length > 1 ? ` …${String(version).slice(-8)}` : "");
  if (model?.metrics?.accuracy !== undefined && model.metrics.accuracy !== null) acc.push(["test set", model.metrics.accuracy]);
  for (const v of report.versions) if (v.feedback.count) acc.push([`live${short(v.version)} (n=${v.feedback.count})`, v.feedback.accuracy]);
  const liveAccuracy = hbarChart({ labels: acc.map(([l]) => l), values: acc.map(([, a]) => a), max: 1, format: fmt.pct,
    empty: "no test metrics and no feedback yet" });
  chart("#chart-accuracy", s.feedback.count ? liveAccuracy : h("div", {}, liveAccuracy,
    h("p", { class: "muted small" }, "No feedback yet: send the true labels to POST /v1/models/{name}/feedback.")));

  $("#versions-table tbody").replaceChildren(...report.versions.map((v) => h("tr", { "data-version": v.version },
    h("td", { class: "mono" }, v.version), h("td", { class: "num" }, fmt.num(v.requests)), h("td", { class: "num" }, fmt.num(v.texts)),
    h("td", { class: "num" }, fmt.prob(v.confidence_mean)), h("td", { class: "num" }, fmt.pct(v.abstain_rate)),
    h("td", { class: "num" }, fmt.ms(v.latency_ms.p95)), h("td", { class: "num" }, fmt.num(v.feedback.count)),
    h("td", { class: "num" }, fmt.pct(v.feedback.accuracy)))));
}

function renderDrift(drift) {
  const names = { label_shift_js: "label shift (JS)", confidence_shift: "confidence shift", ood_rate: "OOD rate" };
  const figure = $("#chart-drift");
  const caption = $("figcaption", figure);
  if (!drift || drift.available === false) {
    caption.textContent = "Drift scores";
    return chart(figure, emptyChart(drift ? "this artifact has no drift reference statistics" : "drift unavailable (no answer from the head)"));
  }
  const keys = Object.keys(names).filter((k) => k in (drift.scores || {}));
  caption.replaceChildren("Drift scores (bar: size of the score, line: threshold) ",
    h("span", { class: `badge ${drift.flagged ? "bad" : "ok"}` }, drift.flagged ? "flagged" : "ok"));
  const body = hbarChart({ labels: keys.map((k) => names[k]), values: keys.map((k) => drift.scores[k]),
    markers: keys.map((k) => drift.thresholds?.[k]), max: Math.max(0.05, ...keys.map((k) => Math.max(Math.abs(drift.scores[k] ?? 0), drift.thresholds?.[k] ?? 0) * 1.15)),
    format: (v) => Number(v).toFixed(3) });
  const note = h("p", { class: "muted small" }, drift.window < drift.min_window
    ? `collecting: ${fmt.num(drift.window)} of the ${fmt.num(drift.min_window)} texts needed for scores`
    : `window: the last ${fmt.num(drift.window)} texts`,
    ...(drift.reasons || []).map((r) => h("span", { class: "reason" }, ` · ${r}`)));
  chart(figure, h("div", {}, body, note));
}

/** Live accuracy from the review queue's random slice only: the other strategies pick likely mistakes. */
function liveTile(review) {
  const live = review?.live_accuracy;
  if (!live?.count) return tile("Live accuracy (random slice)", "no random reviews yet", "live-random");
  const ci = live.ci95 ? ` (${fmt.pct(live.ci95[0])}–${fmt.pct(live.ci95[1])})` : "";
  return tile("Live accuracy (random slice)", `${fmt.pct(live.accuracy)} of ${fmt.num(live.count)}${ci}`, "live-random", "wide");
}

function tile(title, value, key, size = "") {
  return h("div", { class: `tile ${size}`, "data-tile": key }, h("div", { class: "muted small" }, title), h("div", { class: "value" }, value));
}

function chart(figure, content) {
  const el = typeof figure === "string" ? $(figure) : figure;
  const holder = $(".chart", el);
  holder.replaceChildren(content);
  const points = $$("[data-value]", holder).filter((p) => Number(p.dataset.value) > 0).length;
  el.dataset.points = String(points); // how many non-zero data points are drawn (the tests read it)
}

/** Buckets from `since` to `until` (missing ones are zero), each summed over the versions serving in it. */
function timeSlots(report) {
  const step = report.bucket === "day" ? 86400e3 : 3600e3;
  const floor = (ms) => Math.floor(ms / step) * step; // UTC hours / days
  const byStart = new Map();
  const slot = (ms) => {
    if (!byStart.has(ms)) byStart.set(ms, { start: new Date(ms), requests: 0, texts: 0, versions: [], latency: { p50: null, p95: null, p99: null } });
    return byStart.get(ms);
  };
  for (let t = floor(Date.parse(report.since)); t < Date.parse(report.until); t += step) slot(t);
  for (const entry of report.timeline) {
    const s = slot(Date.parse(entry.start));
    s.requests += entry.requests;
    s.texts += entry.texts;
    s.versions.push(entry.version);
    for (const p of ["p50", "p95", "p99"]) { // several versions in a bucket: show the slowest
      const v = entry.latency_ms?.[p];
      if (v !== null && v !== undefined) s.latency[p] = Math.max(s.latency[p] ?? 0, v);
    }
  }
  return [...byStart.values()].sort((a, b) => a.start - b.start);
}

// -- SVG charts --------------------------------------------------------------------------------------
const W = 480, H = 210, M = { top: 12, right: 18, bottom: 30, left: 44 };

/** The top of a 4-step axis: the smallest "round" step (1, 1.5, 2, 2.5 ... x 10^n) times 4 that covers value. */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const mag = 10 ** Math.floor(Math.log10(value / 4));
  return 4 * [1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5, 8, 10].map((f) => f * mag).find((step) => 4 * step >= value);
}

function axes(max, format = (v) => fmt.num(v, Number.isInteger(max / 4) ? 0 : 2)) {
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => f * max);
  const y = (v) => M.top + (H - M.top - M.bottom) * (1 - v / max);
  return { y, grid: ticks.map((t) => svg("g", { class: "grid" },
    svg("line", { x1: M.left, x2: W - M.right, y1: y(t), y2: y(t) }),
    svg("text", { x: M.left - 6, y: y(t) + 4, "text-anchor": "end" }, format(t)))) };
}

function xLabels(labels, xOf) {
  const every = Math.ceil(labels.length / 12);
  return labels.map((l, i) => (i % every ? null : svg("text", { class: "xlabel", x: xOf(i), y: H - M.bottom + 16, "text-anchor": "middle" }, l)));
}

function emptyChart(message) {
  return svg("svg", { viewBox: `0 0 ${W} 60`, class: "chart-svg", "data-empty": "true", role: "img" },
    svg("text", { x: W / 2, y: 34, "text-anchor": "middle", class: "empty" }, message));
}

function barChart({ labels, values, titles = [] }) {
  if (!values.some((v) => v > 0)) return emptyChart("no traffic in this range");
  const max = niceMax(Math.max(...values));
  const { y, grid } = axes(max);
  const band = (W - M.left - M.right) / values.length;
  const xOf = (i) => M.left + band * (i + 0.5);
  const bars = values.map((v, i) => svg("rect", { class: "bar", x: M.left + band * i + band * 0.12, width: Math.max(1, band * 0.76),
    y: y(v), height: Math.max(0, y(0) - y(v)), "data-label": labels[i], "data-value": v }, svg("title", {}, titles[i] || `${labels[i]}: ${v}`)));
  return svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img" }, grid, bars, xLabels(labels, xOf));
}

function hbarChart({ labels, values, markers = [], max, format = (v) => String(v), empty = "no traffic in this range" }) {
  if (!labels.length) return emptyChart(empty);
  const row = 26, left = 150, right = 64;
  const height = M.top + row * labels.length + 6;
  const top = max ?? niceMax(Math.max(...values.map((v) => Math.abs(v ?? 0))));
  const x = (v) => left + (W - left - right) * Math.min(1, Math.abs(v ?? 0) / top); // a signed score: its size
  const rows = labels.map((label, i) => {
    const yTop = M.top + row * i;
    const v = values[i];
    return svg("g", { class: "hrow" },
      svg("text", { x: left - 8, y: yTop + 16, "text-anchor": "end" }, label.length > 20 ? `${label.slice(0, 19)}…` : label),
      svg("rect", { class: "track", x: left, y: yTop + 4, width: W - left - right, height: row - 10 }),
      svg("rect", { class: "bar", x: left, y: yTop + 4, width: Math.max(0, x(v) - left), height: row - 10, "data-label": label,
        "data-value": v ?? "" }, svg("title", {}, `${label}: ${v === null || v === undefined ? "n/a" : format(v)}`)),
      markers[i] !== undefined && markers[i] !== null
        ? svg("line", { class: "marker", x1: x(markers[i]), x2: x(markers[i]), y1: yTop + 1, y2: yTop + row - 3 }) : null,
      svg("text", { x: W - right + 6, y: yTop + 16 }, v === null || v === undefined ? "n/a" : format(v)));
  });
  return svg("svg", { viewBox: `0 0 ${W} ${height}`, class: "chart-svg", role: "img" }, rows);
}

function lineChart({ labels, series }) {
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  if (!all.length) return emptyChart("no traffic in this range");
  const max = niceMax(Math.max(...all));
  const { y, grid } = axes(max);
  const step = labels.length > 1 ? (W - M.left - M.right) / (labels.length - 1) : 0;
  const xOf = (i) => (labels.length > 1 ? M.left + step * i : (M.left + W - M.right) / 2);
  const lines = series.map((s, k) => {
    const pts = s.values.map((v, i) => (v === null || v === undefined ? null : [xOf(i), y(v), v, i])).filter(Boolean);
    return svg("g", { class: `series s${k}` },
      svg("polyline", { points: pts.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ") }),
      pts.map(([px, py, v, i]) => svg("circle", { class: "point", cx: px, cy: py, r: 3, "data-series": s.name, "data-value": v },
        svg("title", {}, `${s.name} ${labels[i]}: ${fmt.ms(v)}`))));
  });
  const legend = series.map((s, k) => svg("g", { class: `legend s${k}` },
    svg("rect", { x: M.left + 8 + k * 60, y: M.top, width: 10, height: 10 }),
    svg("text", { x: M.left + 22 + k * 60, y: M.top + 9 }, s.name)));
  return svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img" }, grid, lines, xLabels(labels, xOf), legend);
}

// -- review: one logged text at a time, answered as feedback -------------------------------------------
const review = { queue: null, pos: 0, history: [], answers: new Map(), model: "" };

async function showReview(name) {
  const models = await state.modelsLoaded;
  const select = $("#review-model");
  const current = name || select.value || models[0]?.name || "";
  select.replaceChildren(...models.map((m) => h("option", { value: m.name }, m.name)));
  if (!current) return ($("#review-status").textContent = "No models routed.");
  select.value = current;
  if (!review.queue || review.model !== current) await loadQueue();
}

async function loadQueue() {
  const name = $("#review-model").value;
  const strategy = $("#review-strategy").value;
  const status = $("#review-status");
  status.textContent = `loading the ${strategy} queue of ${name}…`;
  let queue;
  try {
    queue = await api(`${modelPath(name, "review")}?n=20&strategy=${encodeURIComponent(strategy)}`);
  } catch (err) {
    status.textContent = `Cannot load the review queue of ${name}: ${err.status || ""} ${err.message}`;
    $("#review-card").hidden = true;
    return;
  }
  Object.assign(review, { queue, pos: 0, history: [], answers: new Map(), model: name });
  status.textContent = `${name}: ${queue.items.length} texts to review (${strategy}, picked from ${queue.pool} unlabelled)`;
  renderReviewItem();
}

function reviewProgress() {
  const items = review.queue?.items || [];
  const skipped = new Set(review.history.filter((e) => e.action === "skip").map((e) => e.pos));
  for (const pos of review.answers.keys()) skipped.delete(pos);
  const done = review.answers.size, left = Math.max(0, items.length - review.pos);
  const box = $("#review-progress");
  Object.assign(box.dataset, { done: String(done), skipped: String(skipped.size), left: String(left) });
  box.textContent = items.length ? `done ${done} · skipped ${skipped.size} · left ${left}` : "";
}

function renderReviewItem() {
  reviewProgress();
  const items = review.queue.items;
  const card = $("#review-card");
  if (review.pos >= items.length) {
    card.hidden = true;
    $("#review-status").textContent = items.length
      ? `Queue done: ${review.answers.size} labelled. Load the queue again for more (labelled texts leave it).`
      : "Nothing to review: every logged text has feedback (or none is logged yet).";
    return;
  }
  const item = items[review.pos];
  card.hidden = false;
  card.dataset.predictionId = item.prediction_id;
  card.dataset.index = String(item.index);
  $("#review-meta").textContent = `${review.pos + 1} / ${items.length} · ${item.strategy}` +
    (item.score === null ? "" : ` ${item.score_name} ${fmt.prob(item.score)}`) + ` · v ${item.version}` +
    (item.challenger ? ` · challenger ${item.challenger.version} says ${item.challenger.label}` : "");
  $("#review-text").replaceChildren(item.text);
  $("#review-explained").textContent = "explaining…";
  $("#review-topk").replaceChildren(...item.top_k.map((t) => {
    const fill = h("div", { class: "fill" });
    fill.style.width = `${(t.probability * 100).toFixed(1)}%`;
    return h("li", { "data-label": t.label, "data-probability": t.probability }, h("span", { class: "topk-label" }, t.label),
      h("div", { class: "meter" }, fill), h("span", { class: "num" }, fmt.prob(t.probability)));
  }));
  $("#review-labels").replaceChildren(...review.queue.labels.map((label, i) => h("button", {
    type: "button", "data-label": label, class: label === item.predicted ? "" : "secondary",
    onclick: () => answer(label) }, label, i < 9 ? h("kbd", {}, String(i + 1)) : null)));
  $("#review-new-label").hidden = review.queue.new_labels !== "open";
  const given = review.answers.get(review.pos);
  $("#review-answer").textContent = given ? `answered: ${given} (a new answer replaces it)` : "";
  explainReviewItem(item);
}

async function explainReviewItem(item) {
  try {
    const reply = await api(modelPath(review.model, "explain"), { method: "POST", body: { text: item.text } });
    if (review.queue.items[review.pos] !== item) return; // moved on meanwhile
    $("#review-text").replaceChildren(...highlighted(item.text, reply));
    $("#review-explained").textContent = `Orange words support “${reply.label}”, blue ones speak against it.`;
  } catch (err) {
    if (review.queue.items[review.pos] === item) $("#review-explained").textContent = `no explanation: ${err.message}`;
  }
}

async function answer(label) {
  const item = review.queue?.items[review.pos];
  if (!item || !label) return;
  const pos = review.pos;
  try {
    await api(modelPath(review.model, "feedback"), { method: "POST",
      body: { prediction_id: item.prediction_id, index: item.index, label, strategy: item.strategy } });
  } catch (err) {
    notice(`Feedback not stored: ${err.status || ""} ${err.message}`);
    return;
  }
  notice("");
  review.answers.set(pos, label);
  review.history.push({ pos, action: "label", label });
  review.pos = pos + 1;
  renderReviewItem();
}

function skip() {
  if (!review.queue || review.pos >= review.queue.items.length) return;
  review.history.push({ pos: review.pos, action: "skip" });
  review.pos += 1;
  renderReviewItem();
}

function undo() {
  const last = review.history.pop();
  if (!last) return;
  review.pos = last.pos; // back to that text; its feedback stays until a new answer replaces it
  renderReviewItem();
}

function reviewKeys(event) {
  if ($("#view-review").hidden || $("#review-card").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
  if (["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName) || $("#key-dialog").open) return;
  const digit = Number(event.key);
  if (Number.isInteger(digit) && digit >= 1 && digit <= 9) {
    const label = review.queue.labels[digit - 1];
    if (label !== undefined) answer(label);
  } else if (event.key === "s") skip();
  else if (event.key === "u") undo();
  else return;
  event.preventDefault();
}

// -- routing and start-up --------------------------------------------------------------------------
function route() {
  const [view, arg] = location.hash.replace(/^#\/?/, "").split("/");
  const name = ["models", "playground", "dashboard", "review"].includes(view) ? view : "models";
  for (const section of $$(".view")) section.hidden = section.id !== `view-${name}`;
  for (const link of $$("nav a")) link.toggleAttribute("aria-current", link.dataset.view === name);
  clearInterval(state.dashboardTimer);
  if (name === "dashboard") {
    showDashboard(arg ? decodeURIComponent(arg) : "");
    // A dashboard keeps itself current while it is on screen.
    state.dashboardTimer = setInterval(() => $("#dashboard-model").value && loadReport($("#dashboard-model").value), 15000);
  }
  if (name === "review") showReview(arg ? decodeURIComponent(arg) : "");
}

function start() {
  $("#reload-models").addEventListener("click", loadModels);
  $("#playground-form").addEventListener("submit", classify);
  $("#playground-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("#playground-form").requestSubmit();
  });
  $("#pick-all").addEventListener("click", () => $$("#model-choices input").forEach((i) => (i.checked = true)));
  $("#pick-none").addEventListener("click", () => $$("#model-choices input").forEach((i) => (i.checked = false)));
  $("#dashboard-controls").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/dashboard/${encodeURIComponent($("#dashboard-model").value)}`;
    loadReport($("#dashboard-model").value);
  });
  $("#dashboard-model").addEventListener("change", () => (location.hash = `#/dashboard/${encodeURIComponent($("#dashboard-model").value)}`));
  $("#dashboard-range").addEventListener("change", () => loadReport($("#dashboard-model").value));
  $("#forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    showKeyState();
    loadModels();
  });
  $("#review-controls").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/review/${encodeURIComponent($("#review-model").value)}`;
    loadQueue();
  });
  $("#review-skip").addEventListener("click", skip);
  $("#review-undo").addEventListener("click", undo);
  $("#review-new-label").addEventListener("submit", (e) => {
    e.preventDefault();
    answer($("#review-new-label-input").value.trim());
    $("#review-new-label-input").value = "";
  });
  document.addEventListener("keydown", reviewKeys);
  window.addEventListener("hashchange", route);
  showKeyState();
  loadModels();
  route();
}

start();
