// The jobs page: counts per status, upload with a progress bar per file, the live list with its
// filters and bulk actions, and the last hour's chart.
import {
  Live, api, authHeaders, badge, between, clock, confirmAction, detail, every, h, json, notice, seconds, size,
} from "./common.js";
import { drawDurations, drawThroughput } from "./chart.js";

const STATUSES = ["pending", "running", "retrying", "processed", "failed", "cancelled"];
const PARALLEL_UPLOADS = 3;
const OPTIMISTIC_MS = 15000;

const $ = (id) => document.getElementById(id);
const state = { status: "", handler: "", q: "", cursors: [], data: null };
const optimistic = new Map(); // job id -> {job, at}: shown at once, until the board has it

function params(extra = {}) {
  const p = new URLSearchParams();
  if (state.status) p.set("status", state.status);
  if (state.handler) p.set("handler", state.handler);
  if (state.q) p.set("q", state.q);
  const cursor = state.cursors[state.cursors.length - 1];
  if (cursor) p.set("cursor", cursor);
  for (const [k, v] of Object.entries(extra)) p.set(k, v);
  return p.toString();
}

function matches(job) {
  if (state.cursors.length) return false;
  if (state.status && job.status !== state.status) return false;
  if (state.handler && job.handler !== state.handler) return false;
  if (state.q) {
    const q = state.q.toLowerCase();
    return job.filename.toLowerCase().includes(q) || job.sha256.startsWith(q) || job.id.startsWith(q);
  }
  return true;
}

function row(job) {
  const took = between(job.started_at, job.finished_at);
  return h("tr", { dataset: { jobId: job.id, status: job.status } },
    h("td", {}, badge(job)),
    h("td", { class: "file" },
      h("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}`, class: "filename" }, job.filename),
      h("small", { class: "sha", title: `sha256 ${job.sha256}` }, job.sha256.slice(0, 12))),
    h("td", {}, job.handler),
    h("td", { class: "num" }, size(job.size)),
    h("td", { class: "num" }, `${job.attempts}/${job.max_attempts}`),
    h("td", { title: job.created_at }, clock(job.created_at)),
    h("td", { class: "num" }, took === null ? "" : seconds(took)));
}

// The chart follows the list: drawn again (at most every CHART_MIN_MS) when jobs finish.
const CHART_MIN_MS = 3000;
let finishedSeen = null;
let chartAt = 0;
let chartTimer = null;

function chartFollows(counts) {
  const finished = (counts.processed || 0) + (counts.failed || 0);
  if (finishedSeen === null || finished === finishedSeen) { finishedSeen = finished; return; }
  finishedSeen = finished;
  clearTimeout(chartTimer);
  chartTimer = setTimeout(() => { chartAt = Date.now(); chart.now(); },
    Math.max(0, chartAt + CHART_MIN_MS - Date.now()));
}

function render(data) {
  state.data = data;
  chartFollows(data.counts);
  const now = Date.now();
  const shown = new Set(data.items.map((j) => j.id));
  for (const [id, entry] of optimistic) {
    if (shown.has(id) || now - entry.at > OPTIMISTIC_MS) optimistic.delete(id);
  }
  const extra = [...optimistic.values()].map((e) => e.job).filter(matches);
  const items = [...extra, ...data.items].sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at)
    || (a.id < b.id ? 1 : -1));
  $("rows").replaceChildren(...items.map(row));
  $("empty").hidden = items.length > 0;
  $("older").hidden = !data.next_cursor;
  $("newer").hidden = state.cursors.length === 0;
  for (const el of document.querySelectorAll("[data-count]")) {
    el.textContent = String(data.counts[el.dataset.count] ?? 0);
  }
  for (const el of document.querySelectorAll("button.count")) {
    el.setAttribute("aria-pressed", String((state.status || "all") === el.dataset.status));
  }
  label("bulk-retry", "Retry failed", bulkCount("failed"));
  label("bulk-cancel", "Cancel pending", bulkCount("pending"));
}

function label(id, text, n) {
  $(id).textContent = n === null ? `${text}…` : `${text} (${n})`;
  $(id).disabled = n === 0;
}

// How many jobs a bulk action on ``status`` would touch under the current filter: 0 when the status
// filter excludes them, null when a search is on (the board's counts do not follow the search).
function bulkCount(status) {
  if (!state.data || (state.status && state.status !== status)) return 0;
  if (state.q) return null;
  return state.data.counts[status] || 0;
}

// Asks how many match right now (GET /jobs/count), says so, and acts only on a yes.
async function bulk(status, verb) {
  const p = new URLSearchParams({ status });
  if (state.handler) p.set("handler", state.handler);
  if (state.q) p.set("q", state.q);
  let n = bulkCount(status);
  try {
    n = (await json(`/jobs/count?${p}`)).count;
  } catch (error) {
    if (n === null) { notice(`${verb}: cannot count the matching jobs: ${error.message}`, "error"); return; }
  }
  if (!n) { notice(`No ${status} jobs match.`, "info"); return; }
  const scope = (state.handler ? ` of handler ${state.handler}` : "") + (state.q ? ` matching “${state.q}”` : "");
  if (!(await confirmAction(`${verb} ${n} ${status} job${n === 1 ? "" : "s"}${scope}?`, `${verb} ${n}`))) return;
  const path = status === "failed" ? `/jobs/retry?${p}` : `/jobs/cancel?${p}`;
  try {
    const body = await json(path, { method: "POST" });
    const done = ["count", "retried", "cancelled", "matched"].map((k) => body && body[k]).find(Number.isInteger);
    notice(`${verb}: ${done ?? n} job${(done ?? n) === 1 ? "" : "s"}.`, "ok");
  } catch (error) {
    notice(`${verb} failed: ${error.message}`, "error");
  }
  live.restart();
}

// --- upload ------------------------------------------------------------------------------------
const queue = [];
let running = 0;

function enqueue(files) {
  for (const file of files) {
    const bar = h("progress", { max: "1", value: "0" });
    const status = h("span", { class: "state" }, "waiting");
    const item = h("li", { class: "upload-item", dataset: { state: "waiting" } },
      h("span", { class: "name" }, file.name), bar, status);
    $("uploads").prepend(item);
    queue.push({ file, item, bar, status, notify: $("notify").value.trim() });
  }
  pump();
}

function pump() {
  while (running < PARALLEL_UPLOADS && queue.length) {
    running += 1;
    send(queue.shift()).finally(() => { running -= 1; pump(); });
  }
}

function send(task) {
  const { file, item, bar, status, notify } = task;
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/uploads");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = e.loaded / e.total;
    });
    const finish = (kind, text, child = null) => {
      item.dataset.state = kind;
      status.replaceChildren(text, ...(child ? [" ", child] : []));
      resolve();
    };
    xhr.addEventListener("load", async () => {
      const body = xhr.response;
      if (xhr.status === 202 && body) {
        bar.value = 1;
        optimistic.set(body.id, { job: body, at: Date.now() });
        if (state.data) render(state.data);
        finish("accepted", "accepted →", h("a", { href: `/ui/jobs/${encodeURIComponent(body.id)}` }, "job"));
      } else if (xhr.status === 401) {
        await api("/board?limit=1"); // asks for the key (once), then this file goes again
        send(task).then(resolve);
      } else {
        finish("refused", `${xhr.status}: ${detail(body, { status: xhr.status, statusText: xhr.statusText })}`);
      }
    });
    xhr.addEventListener("error", () => finish("refused",
      "the connection closed before an answer (a file over the server's size limit is cut off)"));
    const form = new FormData();
    form.append("file", file, file.name);
    if (notify) form.append("notify", notify);
    status.textContent = "uploading";
    item.dataset.state = "uploading";
    xhr.send(form);
  });
}

function wireUpload() {
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) enqueue([...e.dataTransfer.files]);
  });
  $("file-input").addEventListener("change", (e) => {
    enqueue([...e.target.files]);
    e.target.value = "";
  });
}

// --- filters -----------------------------------------------------------------------------------
function fromLocation() {
  const p = new URLSearchParams(window.location.search);
  state.status = STATUSES.includes(p.get("status")) ? p.get("status") : "";
  state.handler = p.get("handler") || "";
  state.q = p.get("q") || "";
  $("f-status").value = state.status;
  $("f-q").value = state.q;
}

function changed() {
  state.cursors = [];
  const p = new URLSearchParams();
  if (state.status) p.set("status", state.status);
  if (state.handler) p.set("handler", state.handler);
  if (state.q) p.set("q", state.q);
  const query = p.toString();
  window.history.replaceState(null, "", query ? `/?${query}` : "/");
  $("chart-scope").textContent = state.handler || "all handlers";
  finishedSeen = null;
  live.restart();
  chart.now();
}

async function loadHandlers() {
  const handlers = await json("/handlers");
  const select = $("f-handler");
  select.replaceChildren(h("option", { value: "" }, "any"),
    ...handlers.map((x) => h("option", { value: x.name }, x.name)));
  if (state.handler && !handlers.some((x) => x.name === state.handler)) {
    select.append(h("option", { value: state.handler }, state.handler));
  }
  select.value = state.handler;
}

function wireFilters() {
  $("f-status").addEventListener("change", (e) => { state.status = e.target.value; changed(); });
  $("f-handler").addEventListener("change", (e) => { state.handler = e.target.value; changed(); });
  let typing = null;
  $("f-q").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.q = e.target.value.trim(); changed(); }, 250);
  });
  for (const button of document.querySelectorAll("button.count")) {
    button.addEventListener("click", () => {
      state.status = button.dataset.status === "all" ? "" : button.dataset.status;
      $("f-status").value = state.status;
      changed();
    });
  }
  $("older").addEventListener("click", () => {
    if (state.data && state.data.next_cursor) state.cursors.push(state.data.next_cursor);
    live.restart();
  });
  $("newer").addEventListener("click", () => { state.cursors = []; live.restart(); });
  $("bulk-retry").addEventListener("click", () => bulk("failed", "Retry"));
  $("bulk-cancel").addEventListener("click", () => bulk("pending", "Cancel"));
}

// --- start -------------------------------------------------------------------------------------
const live = new Live({
  eventsPath: () => `/board/events?${params()}`,
  pollPath: () => `/board?${params()}`,
  onData: render,
});
let chart = { now() {} };

fromLocation();
wireUpload();
wireFilters();
$("chart-scope").textContent = state.handler || "all handlers";
live.restart();
chart = every(15000, async () => {
  chartAt = Date.now();
  const p = new URLSearchParams();
  if (state.handler) p.set("handler", state.handler);
  const stats = await json(`/board/stats?${p}`);
  drawThroughput($("throughput"), stats, state.handler || "all");
  drawDurations($("durations"), stats);
});
loadHandlers().catch((error) => notice(`handlers: ${error.message}`, "error"));
