// The job page: one view from upload to email. Refreshes while the job or its emails still move.
import {
  badge, between, clock, confirmAction, downloadLink, every, h, json, notice, seconds, setLive, size,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const jobId = $("job").dataset.jobId;
const base = `/jobs/${encodeURIComponent(jobId)}`;
const SETTLED = new Set(["processed", "failed", "cancelled"]);
const MAIL_SETTLED = new Set(["sent", "failed", "uncertain"]);
let last = null;

function fact(name, ...value) {
  return [h("dt", {}, name), h("dd", { dataset: { fact: name } }, ...value)];
}

function evidence(info) {
  const parts = Object.entries(info || {}).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`);
  return parts.length ? parts.join(" · ") : "";
}

function renderJob(job, attempts) {
  document.title = `${job.filename} · Chute`;
  $("j-name").textContent = job.filename;
  $("j-status").replaceWith(Object.assign(badge(job), { id: "j-status" }));
  $("retry").hidden = job.status !== "failed";
  $("cancel").hidden = !["pending", "retrying"].includes(job.status);
  $("facts").replaceChildren(
    ...fact("name", job.filename),
    ...fact("type", job.content_type),
    ...fact("type evidence", evidence(job.type_info)),
    ...fact("size", `${size(job.size)} (${job.size} bytes)`),
    ...fact("sha256", h("code", {}, job.sha256)),
    ...fact("handler", h("a", { href: "/ui/handlers" }, job.handler)),
    ...fact("attempts", `${job.attempts} of ${job.max_attempts}`),
    ...fact("created", clock(job.created_at)),
    ...fact("started", clock(job.started_at)),
    ...fact("finished", clock(job.finished_at)),
    ...(job.next_attempt_at && job.status === "retrying" ? fact("next attempt", clock(job.next_attempt_at)) : []),
    ...fact("notify", (job.notify || []).join(", ")),
    ...fact("job id", h("code", {}, job.id)));
  const artifacts = Object.keys(job.links || {}).filter((k) => k.startsWith("artifact:")).map((k) => k.slice(9));
  $("downloads").replaceChildren(
    h("li", {}, downloadLink(`${base}/file`, job.filename, "the uploaded file"), ` (${size(job.size)})`),
    ...artifacts.map((name) => h("li", {},
      downloadLink(`${base}/artifacts/${encodeURIComponent(name)}`, name, name), " (artifact)")));
  $("error-box").hidden = !job.error;
  if (job.error) {
    $("e-type").textContent = job.error.type;
    $("e-message").textContent = job.error.message;
    $("e-traceback").textContent = job.error.traceback || "";
    $("e-traceback").hidden = !job.error.traceback;
  }
  const hasResult = job.result !== null && job.result !== undefined;
  $("result").textContent = hasResult || job.status === "processed" ? JSON.stringify(job.result ?? null, null, 2)
    : "(no result yet)";
  $("result").hidden = Boolean(job.error) && !hasResult;
  $("attempts").replaceChildren(...attempts.map((a) => h("tr", { dataset: { attempt: String(a.number) } },
    h("td", {}, String(a.number)),
    h("td", {}, clock(a.started_at)),
    h("td", { class: "num" }, a.finished_at ? seconds(between(a.started_at, a.finished_at)) : "running"),
    h("td", {}, h("span", { class: `outcome outcome-${a.outcome || "running"}` }, a.outcome || "running")),
    h("td", { class: "worker" }, a.worker),
    h("td", { class: "error" }, a.error_type ? `${a.error_type}: ${a.error_message || ""}` : ""))));
  const mails = job.notifications || [];
  $("emails").replaceChildren(...mails.map((m) => h("tr", { dataset: { email: m.recipient } },
    h("td", {}, m.event),
    h("td", {}, m.recipient),
    h("td", {}, h("span", { class: `badge mail-${m.status}`, dataset: { state: m.status } }, m.status)),
    h("td", { class: "num" }, String(m.attempts)),
    h("td", {}, clock(m.sent_at)),
    h("td", { class: "error" }, m.last_error || ""))));
  $("no-emails").hidden = mails.length > 0 || !SETTLED.has(job.status);
}

async function load() {
  const [job, attempts] = await Promise.all([json(base), json(`${base}/attempts`)]);
  last = job;
  renderJob(job, attempts);
  const moving = !SETTLED.has(job.status) || (job.notifications || []).some((m) => !MAIL_SETTLED.has(m.status));
  setLive(moving ? "polling" : "settled", moving ? "refreshing" : "up to date");
  return moving ? 1500 : 10000;
}

async function act(path, verb) {
  const el = $("j-action");
  try {
    await json(path, { method: "POST" });
    notice(`${verb}: done.`, "ok", el);
  } catch (error) {
    notice(`${verb} refused: ${error.message}`, "error", el);
  }
  await refresher.now();
}

$("retry").addEventListener("click", () => act(`${base}/retry`, "Retry"));
$("cancel").addEventListener("click", async () => {
  if (await confirmAction(`Cancel ${last ? last.filename : "this job"}? It will never run, and nobody is mailed.`,
    "Cancel job")) await act(`${base}/cancel`, "Cancel");
});

const refresher = every(1500, load);
