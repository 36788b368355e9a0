// The handlers page: what each handler accepts, how it retries, and how it has been doing.
import { badge, every, h, json, seconds, setLive } from "./common.js";

const STATUSES = ["pending", "running", "retrying", "processed", "failed", "cancelled"];

function retry(policy) {
  const on = policy.on && policy.on.length ? `; retries on ${policy.on.join(", ")}` : "";
  return `${policy.attempts} attempts, backoff ${policy.backoff} s${policy.jitter ? " + jitter" : ""}` +
    ` (max ${policy.max_backoff} s)${on}`;
}

function counts(figures, name) {
  const c = (figures && figures.counts) || {};
  const handler = encodeURIComponent(name);
  return STATUSES.filter((s) => c[s]).map((s) => h("a", { href: `/?status=${s}&handler=${handler}`,
    class: "count-link" }, badge({ status: s }), ` ${c[s]}`));
}

async function load() {
  const [handlers, figures] = await Promise.all([json("/handlers"), json("/board/handlers")]);
  document.getElementById("handlers").replaceChildren(...handlers.map((x) => {
    const f = figures[x.name] || {};
    const hour = f.last_hour || {};
    const jobs = counts(f, x.name);
    return h("tr", { dataset: { handler: x.name } },
      h("td", {}, h("strong", {}, x.name), x.doc ? h("small", { class: "doc" }, x.doc.split("\n")[0]) : null),
      h("td", {}, x.types.join(", ")),
      h("td", {}, x.extensions.join(" ")),
      h("td", {}, retry(x.retry)),
      h("td", { class: "num" }, `${x.timeout} s`),
      h("td", { class: "jobs" }, jobs.length ? jobs : "none yet"),
      h("td", { class: "num" }, String(hour.runs || 0)),
      h("td", { class: "num", dataset: { p: "50" } }, seconds(hour.p50)),
      h("td", { class: "num", dataset: { p: "95" } }, seconds(hour.p95)));
  }));
  setLive("polling", "refreshing every 10 s");
}

every(10000, load);
