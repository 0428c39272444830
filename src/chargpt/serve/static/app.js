// chargpt playground: streams completions from /v1/completions, shows attention from /api/attention and loss
// curves from /api/runs. Plain JavaScript, no libraries: the page works without internet.
"use strict";

const $ = (sel) => document.querySelector(sel);
const COLORS = ["#c2410c", "#2563eb", "#059669", "#7c3aed", "#db2777", "#0891b2", "#ca8a04", "#4b5563"];
const VISIBLE = { "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };

const state = {
  runs: [],            // rows of /api/runs
  current: null,       // the run sampled from
  details: new Map(),  // run name -> {config, summary, metrics}
  overlay: new Set(),  // runs whose curves are drawn with the current one
  x: "step",
  text: "",            // prompt + generated text, one span per character in #text
  spans: [],
  controller: null,    // aborts the running stream
  pinned: null,        // index of the character whose attention stays shown
  shown: null,         // index whose attention is drawn
  head: null,          // [layer, head] drawn over the text, or null for the mean of all heads
  attention: null,     // last /api/attention answer, with its window start
  cache: new Map(),
  seq: 0,
  heated: [],
};

// ---------------------------------------------------------------------------------------------- api
async function api(path, body, signal) {
  const init = body === undefined ? { signal } :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal };
  const res = await fetch(path, init);
  if (!res.ok) throw new Error(await errorText(res));
  return res;
}

async function errorText(res) {
  try { return (await res.json()).error.message; } catch (e) { return `${res.status} ${res.statusText}`; }
}

// --------------------------------------------------------------------------------------------- runs
async function loadRuns() {
  const data = await (await api("/api/runs")).json();
  state.runs = data.runs;
  const servable = data.runs.filter((r) => r.servable);
  const select = $("#run");
  select.replaceChildren(...servable.slice().reverse().map((r) => new Option(r.name, r.name)));
  if (!state.current || !servable.some((r) => r.name === state.current)) state.current = data.default;
  if (state.current) select.value = state.current;
  await chooseRun(state.current);
}

async function details(name) {
  if (!state.details.has(name)) {
    state.details.set(name, await (await api(`/api/runs/${encodeURIComponent(name)}`)).json());
  }
  return state.details.get(name);
}

async function chooseRun(name) {
  state.current = name;
  state.cache.clear();
  if (name) await details(name);
  for (const n of state.overlay) await details(n);
  renderSummary();
  renderRunsTable();
  drawCurves();
  if (state.shown !== null) showAttention(state.shown);
}

function colorOf(name) {
  const i = state.runs.findIndex((r) => r.name === name);
  return COLORS[(i < 0 ? 0 : i) % COLORS.length];
}

function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return v.toLocaleString("en");
    return Math.abs(v) >= 100 ? v.toLocaleString("en", { maximumFractionDigits: 1 }) : v.toFixed(digits);
  }
  return String(v);
}

function params(n) {
  if (n === null || n === undefined) return "-";
  return n >= 1e5 ? `${(n / 1e6).toFixed(2)}M` : `${(n / 1e3).toFixed(1)}k`;
}

function duration(s) {
  if (s === null || s === undefined) return "-";
  return s < 60 ? `${s.toFixed(1)}s` : `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, "0")}s`;
}

// The final full-pass loss as `chargpt runs` shows it: `± standard error` when estimated from a subset.
function valFull(r) {
  if (r.val_full === null || r.val_full === undefined) return "-";
  return r.val_full_stderr === null || r.val_full_stderr === undefined ? r.val_full.toFixed(4)
    : `${r.val_full.toFixed(4)} \u00b1${r.val_full_stderr.toFixed(4)}`;
}

function datasetLabel(r) {
  return [r.dataset, (r.dataset_hash || "").slice(0, 8)].filter(Boolean).join(" ") || "-";
}

// Runs on different datasets are never overlaid: their losses are on different text.
function otherDataset(r) {
  const current = state.runs.find((x) => x.name === state.current);
  return Boolean(current && current.dataset_hash && r.dataset_hash && r.dataset_hash !== current.dataset_hash);
}

function renderSummary() {
  const box = $("#summary");
  const d = state.current && state.details.get(state.current);
  if (!d) { box.replaceChildren(); return; }
  const s = d.summary, m = (d.config.model || {});
  const row = state.runs.find((r) => r.name === state.current) || {};
  const val = row.eval_cut_short ? "final evaluation cut short"
    : row.val_full !== null && row.val_full !== undefined ? `${valFull(row)} nats/char`
    : row.best_val ? `${row.best_val.toFixed(4)} (estimate, unfinished)` : "unfinished";
  const chips = [
    // a bigram's config carries the GPT fields' defaults too: its shape is its context alone
    ["model", `${m.model || s.model || "?"}${m.n_layer && (m.model || s.model) !== "bigram"
      ? ` ${m.n_layer}\u00d7${m.n_head}, ${m.n_embd} wide` : ""}`],
    ["params", params(s.params ?? row.params)],
    ["steps", fmt(s.steps ?? row.steps)],
    ["val", val],
    ["context", m.block_size ? `${m.block_size} chars` : "-"],
  ];
  box.replaceChildren(...chips.map(([k, v]) => {
    const c = document.createElement("span");
    c.className = "chip";
    c.innerHTML = `${k} <b></b>`;
    c.querySelector("b").textContent = v;
    return c;
  }));
  const dl = $("#details");
  const skip = new Set(["sample"]), plain = new Set(["seed"]);  // an identifier, not a quantity: no separators
  dl.replaceChildren(...Object.entries(s).filter(([k]) => !skip.has(k)).map(([k, v]) => {
    const div = document.createElement("div");
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k.replaceAll("_", " ");
    dd.textContent = typeof v === "object" && v !== null ? JSON.stringify(v) : plain.has(k) ? String(v) : fmt(v);
    dd.title = dd.textContent;
    div.append(dt, dd);
    return div;
  }));
}

function renderRunsTable() {
  const body = $("#runs tbody");
  const labels = [...document.querySelectorAll("#runs thead th")].map((th) => th.textContent);
  body.replaceChildren(...state.runs.slice().reverse().map((r) => {
    const tr = document.createElement("tr");
    if (r.name === state.current) tr.className = "current";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = r.name === state.current || (state.overlay.has(r.name) && !otherDataset(r));
    box.disabled = r.name === state.current || otherDataset(r);
    box.title = otherDataset(r) ? `trained on another dataset (${datasetLabel(r)}): its losses do not compare`
      : "overlay its curves";
    box.addEventListener("change", async () => {
      if (box.checked) { state.overlay.add(r.name); await details(r.name); } else state.overlay.delete(r.name);
      drawCurves();
    });
    const cells = [r.model === r.preset || !r.preset ? r.model || "-" : `${r.model} (${r.preset})`, datasetLabel(r),
      params(r.params),
      fmt(r.steps), fmt(r.best_val), valFull(r), duration(r.seconds)];
    const first = document.createElement("td");
    first.append(box);
    const name = document.createElement("td");
    name.className = r.servable ? "name" : "name off";
    name.innerHTML = `<span class="dot"></span>`;
    name.firstChild.style.background = colorOf(r.name);
    name.append(r.name);
    name.title = r.servable ? `sample from ${r.name}` : `${r.name} has no checkpoint yet`;
    if (r.servable) name.addEventListener("click", () => { $("#run").value = r.name; chooseRun(r.name); });
    tr.append(first, name, ...cells.map((c, i) => {
      const td = document.createElement("td");
      td.textContent = c;
      td.dataset.label = labels[i + 2];  // shown above the value where the rows stack (a narrow Loss card)
      return td;
    }));
    return tr;
  }));
}

// ------------------------------------------------------------------------------------------- curves
function drawCurves() {
  const canvas = $("#curves");
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth, H = canvas.clientHeight;
  canvas.width = W * dpr; canvas.height = H * dpr;
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, W, H);
  const names = [state.current, ...[...state.overlay].filter((n) => n !== state.current
    && !otherDataset(state.runs.find((r) => r.name === n) || {}))].filter(Boolean);
  const series = [];
  for (const name of names) {
    const d = state.details.get(name);
    if (!d) continue;
    for (const key of name === state.current ? ["loss", "val_loss", "train_loss"] : ["val_loss", "train_loss"]) {
      const pts = d.metrics.filter((r) => r[key] !== undefined && r[key] !== null && r[state.x] !== undefined)
        .map((r) => [r[state.x], r[key]]);
      if (pts.length) series.push({ name, key, pts, color: colorOf(name) });
    }
  }
  const legend = $("#legend");
  if (!series.length) {
    g.fillStyle = "#6b7078"; g.font = "13px system-ui, sans-serif";
    g.fillText("no metrics.jsonl records for this run yet", 16, 30);
    legend.replaceChildren();
    return;
  }
  const xs = series.flatMap((s) => s.pts.map((p) => p[0])), ys = series.flatMap((s) => s.pts.map((p) => p[1]));
  const x1 = Math.max(...xs) || 1, y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pad = (y1 - y0) * 0.06 || 0.1;
  const [lo, hi] = [y0 - pad, y1 + pad];
  const L = 46, R = 12, T = 10, B = 30;
  const px = (x) => L + (x / x1) * (W - L - R), py = (y) => T + (1 - (y - lo) / (hi - lo)) * (H - T - B);
  g.font = "11px system-ui, sans-serif"; g.lineWidth = 1;
  for (const t of ticks(lo, hi, 5)) {
    g.strokeStyle = "#eeece6"; g.beginPath(); g.moveTo(L, py(t)); g.lineTo(W - R, py(t)); g.stroke();
    g.fillStyle = "#6b7078"; g.textAlign = "right"; g.fillText(t.toFixed(2), L - 6, py(t) + 4);
  }
  g.textAlign = "center";
  for (const t of ticks(0, x1, 6)) {
    g.fillStyle = "#6b7078"; g.fillText(state.x === "step" ? fmt(t) : `${t}s`, px(t), H - B + 16);
  }
  g.fillText(state.x === "step" ? "step" : "training time (s)", (L + W - R) / 2, H - 2);
  g.save(); g.translate(11, (T + H - B) / 2); g.rotate(-Math.PI / 2); g.fillText("loss (nats/char)", 0, 0); g.restore();
  for (const s of series) {
    g.globalAlpha = s.key === "loss" ? 0.22 : 1;  // every logged step's loss: noisy, drawn faint under the evaluations
    g.strokeStyle = s.color; g.lineWidth = s.key === "val_loss" ? 2.2 : s.key === "loss" ? 1 : 1.4;
    g.setLineDash(s.key === "train_loss" ? [5, 4] : []);
    g.beginPath();
    s.pts.forEach(([x, y], i) => (i ? g.lineTo(px(x), py(y)) : g.moveTo(px(x), py(y))));
    g.stroke();
    if (s.key === "val_loss") {
      g.fillStyle = s.color;
      for (const [x, y] of s.pts) { g.beginPath(); g.arc(px(x), py(y), 2.4, 0, 7); g.fill(); }
    }
  }
  g.setLineDash([]);
  g.globalAlpha = 1;
  legend.replaceChildren(...names.map((n) => {
    const span = document.createElement("span");
    span.innerHTML = `<span class="sw"></span>`;
    span.firstChild.style.borderColor = colorOf(n);
    span.append(n);
    return span;
  }), keyLegend("val", false), keyLegend("train (estimate)", true));
}

function keyLegend(label, dashed) {
  const span = document.createElement("span");
  span.innerHTML = `<span class="sw${dashed ? " dash" : ""}" style="border-color:#6b7078"></span>${label}`;
  return span;
}

function ticks(lo, hi, n) {
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n || 1)));
  const unit = [1, 2, 5, 10].map((m) => m * step).find((u) => (hi - lo) / u <= n) || step * 10;
  const out = [];
  for (let t = Math.ceil(lo / unit) * unit; t <= hi + 1e-9; t += unit) out.push(Number(t.toPrecision(12)));
  return out;
}

// ----------------------------------------------------------------------------------------- generate
function controls() {
  const num = (id) => Number($(id).value);
  const body = {
    model: state.current, prompt: $("#prompt").value || "\n", max_tokens: num("#length"),
    temperature: num("#temperature"), seed: num("#seed"), stream: true,
  };
  if (num("#top_p") < 1) body.top_p = num("#top_p");
  if (num("#top_k") > 0) body.top_k = num("#top_k");
  return body;
}

function setText(text, cls) {
  state.text = "";
  state.spans = [];
  state.heated = [];
  state.pinned = state.shown = null;
  state.cache.clear();
  $("#text").replaceChildren();
  appendText(text, cls);
}

function appendText(text, cls) {
  const box = $("#text");
  const follow = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
  const frag = document.createDocumentFragment();
  for (const ch of text) {
    const span = document.createElement("span");
    span.textContent = ch;
    span.dataset.i = state.spans.length;
    span.className = cls + (ch === "\n" ? " nl" : "");
    state.spans.push(span);
    state.text += ch;
    frag.append(span);
  }
  box.append(frag);
  if (follow) box.scrollTop = box.scrollHeight;
}

async function generate() {
  const body = controls();
  const status = $("#status");
  status.className = "";
  setText(body.prompt, "p");
  clearAttention();
  const controller = new AbortController();
  state.controller = controller;
  $("#generate").disabled = true;
  $("#stop").disabled = false;
  $("#text").classList.add("streaming");
  let count = 0, timings = null;
  try {
    const res = await api("/v1/completions", body, controller.signal);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const ev of events) {
        const data = ev.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const event = JSON.parse(data);
        const piece = event.choices[0]?.text || "";
        count += [...piece].length;
        appendText(piece, "g");
        timings = event.timings || timings;  // on the last chunk
      }
      status.textContent = `${count.toLocaleString("en")} characters`;
    }
    status.textContent = `done: ${count.toLocaleString("en")} characters${rate(timings)}, seed ${body.seed}`;
  } catch (e) {
    if (e.name === "AbortError") status.textContent = `stopped after ${count.toLocaleString("en")} characters`;
    else { status.textContent = e.message; status.className = "error"; }
  } finally {
    state.controller = null;
    $("#generate").disabled = false;
    $("#stop").disabled = true;
    $("#text").classList.remove("streaming");
  }
}

// The decode rate as the server measured it, from the completion's first character to its last: a clock here would
// also count the model's load, the queue and the prompt's prefill (a first generation then reads ~15x too slow).
function rate(timings) {
  const r = timings && timings.chars_per_second;
  return r ? `, ${Math.round(r).toLocaleString("en")} chars/s` : "";
}

// ---------------------------------------------------------------------------------------- attention
function windowStart(length, block) {
  // chargpt.model.window_start: the context used to predict token `length`
  if (length <= block) return 0;
  const stride = Math.max(1, Math.floor(block / 2));
  return Math.ceil((length - block) / stride) * stride;
}

function heat(w) {
  const a = Math.min(1, Math.sqrt(Math.max(w, 0)));
  return `rgba(234, 88, 12, ${a.toFixed(3)})`;
}

function clearAttention() {
  state.attention = null;
  state.shown = null;
  clearHeat();
  const box = $("#attention");
  box.replaceChildren();
  delete box.dataset.query;
  const empty = document.createElement("div");
  empty.className = "empty";
  empty.textContent = "Hover over or click a character of the text.";
  box.append(empty);
  $("#attention-title").textContent = "no character chosen";
}

function clearHeat() {
  for (const span of state.heated) { span.style.background = ""; span.style.color = ""; span.classList.remove("q"); }
  state.heated = [];
}

async function showAttention(i) {
  const d = state.details.get(state.current);
  const block = d && d.config.model && d.config.model.block_size;
  if (!block || i === null || i >= state.text.length) return;
  state.shown = i;
  const start = windowStart(i + 1, block);
  const prompt = state.text.slice(start, i + 1);
  const key = `${state.current}\u0000${start}\u0000${prompt}`;
  const seq = ++state.seq;
  let res = state.cache.get(key);
  if (!res) {
    try {
      res = await (await api("/api/attention", { model: state.current, prompt, query: -1 })).json();
    } catch (e) {
      if (seq !== state.seq) return;
      $("#attention").replaceChildren(Object.assign(document.createElement("div"), { className: "empty", textContent: e.message }));
      $("#attention-title").textContent = "";
      return;
    }
    state.cache.set(key, res);
  }
  if (seq !== state.seq) return;  // a newer character was chosen meanwhile
  state.attention = { ...res, offset: start, index: i };
  renderAttention();
}

function renderAttention() {
  const a = state.attention;
  if (!a) return;
  const box = $("#attention");
  const n = a.chars.length;
  const ch = state.text[a.index];
  $("#attention-title").textContent =
    `'${VISIBLE[ch] || ch}' at ${a.index}: ${a.n_layer} layers \u00d7 ${a.n_head} heads over ${n} characters`;
  const rows = [];
  a.weights.forEach((layer, l) => layer.forEach((w, h) => {
    const row = document.createElement("div");
    row.className = "row" + (h === 0 ? " layer-start" : "");
    if (state.head && state.head[0] === l && state.head[1] === h) row.classList.add("sel");
    row.dataset.l = l; row.dataset.h = h;
    const lab = document.createElement("span");
    lab.className = "lab";
    lab.textContent = `L${l} H${h}`;
    lab.title = `layer ${l}, head ${h}`;
    row.append(lab);
    w.forEach((v, j) => {
      const c = document.createElement("span");
      c.className = "c" + (j === n - 1 ? " query" : "");
      c.textContent = VISIBLE[a.chars[j]] || a.chars[j];
      c.style.background = heat(v);
      if (v > 0.36) c.style.color = "#fff";
      c.title = `'${VISIBLE[a.chars[j]] || a.chars[j]}' at ${a.offset + j}: ${v.toFixed(3)}`;
      row.append(c);
    });
    row.addEventListener("click", () => {
      state.head = state.head && state.head[0] === l && state.head[1] === h ? null : [l, h];
      renderAttention();
    });
    rows.push(row);
  }));
  box.replaceChildren(...rows);
  box.dataset.query = a.index;
  box.scrollLeft = box.scrollWidth;
  drawHeatOnText();
}

function drawHeatOnText() {
  const a = state.attention;
  clearHeat();
  let w;
  if (state.head) w = a.weights[state.head[0]][state.head[1]];
  else {  // the mean over every layer and head
    const all = a.weights.flat();
    w = all[0].map((_, j) => all.reduce((s, r) => s + r[j], 0) / all.length);
  }
  w.forEach((v, j) => {
    const span = state.spans[a.offset + j];
    if (!span) return;
    span.style.background = heat(v);
    if (v > 0.36) span.style.color = "#fff";
    state.heated.push(span);
  });
  const q = state.spans[a.index];
  if (q) { q.classList.add("q"); state.heated.push(q); }
}

// ------------------------------------------------------------------------------------------- server
const STATUS_MS = 2000;  // how often the header shows what the server decodes

async function showServer() {
  try {
    const s = await (await api("/api/status")).json();
    const queued = s.queued ? `, ${s.queued.toLocaleString("en")} queued` : "";
    $("#server").textContent = `server: ${s.streams.toLocaleString("en")} stream${s.streams === 1 ? "" : "s"}` +
      `${queued}, ${Math.round(s.rate).toLocaleString("en")} chars/s`;
  } catch (e) {
    $("#server").textContent = "";
  }
}

// ------------------------------------------------------------------------------------------- wiring
function init() {
  for (const id of ["#temperature", "#top_p"]) {
    const input = $(id), out = input.nextElementSibling;
    const show = () => { out.textContent = Number(input.value).toFixed(2); };
    input.addEventListener("input", show);
    show();
  }
  $("#dice").addEventListener("click", () => { $("#seed").value = Math.floor(Math.random() * 2 ** 31); });
  $("#generate").addEventListener("click", generate);
  $("#stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("#prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !state.controller) { e.preventDefault(); generate(); }
  });
  $("#run").addEventListener("change", (e) => chooseRun(e.target.value));
  $("#prompt").addEventListener("input", () => {
    if (!state.controller) { setText($("#prompt").value, "p"); clearAttention(); }
  });
  let timer = null;
  const text = $("#text");
  text.addEventListener("mouseover", (e) => {
    const i = e.target.dataset && e.target.dataset.i;
    if (i === undefined || state.pinned !== null) return;
    clearTimeout(timer);
    timer = setTimeout(() => showAttention(Number(i)), 60);
  });
  text.addEventListener("click", (e) => {
    const i = e.target.dataset && e.target.dataset.i;
    if (i === undefined) return;
    clearTimeout(timer);
    state.pinned = state.pinned === Number(i) ? null : Number(i);
    showAttention(Number(i));
  });
  document.querySelectorAll(".toggle button").forEach((b) => b.addEventListener("click", () => {
    document.querySelectorAll(".toggle button").forEach((o) => o.classList.toggle("on", o === b));
    state.x = b.dataset.x;
    drawCurves();
  }));
  window.addEventListener("resize", drawCurves);
  clearAttention();
  setText($("#prompt").value, "p");
  loadRuns().catch((e) => { $("#status").textContent = e.message; $("#status").className = "error"; });
  showServer();
  setInterval(() => { if (!document.hidden) showServer(); }, STATUS_MS);
}

init();
