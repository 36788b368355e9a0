// Shared by every page: calls with the API key, the key prompt, building DOM from data (as text,
// never as markup), formatting, and the live feed (server-sent events read with fetch, polling when
// they fail, paused while the tab is hidden).

const KEY = "chute.apiKey";
let asking = null; // the one key prompt in flight; every call that got a 401 waits on it

export function key() {
  return sessionStorage.getItem(KEY);
}

export function authHeaders(extra = {}) {
  const k = key();
  return k ? { ...extra, Authorization: `Bearer ${k}` } : { ...extra };
}

function askKey(refused) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  const error = document.getElementById("key-error");
  error.hidden = !refused;
  error.textContent = refused ? "That key was refused; try another." : "";
  input.value = "";
  asking = new Promise((resolve) => {
    const form = document.getElementById("key-form");
    const done = (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY, value);
      form.removeEventListener("submit", done);
      dialog.close();
      asking = null;
      showForget();
      resolve();
    };
    form.addEventListener("submit", done);
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
  return asking;
}

function showForget() {
  const button = document.getElementById("forget-key");
  button.hidden = !key();
}

// fetch() with the key; a 401 asks for the key (once for all calls) and tries again.
export async function api(path, options = {}) {
  for (;;) {
    const sent = key();
    const response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
    if (response.status !== 401) return response;
    if (key() === sent) {
      if (sent) sessionStorage.removeItem(KEY);
      await askKey(Boolean(sent));
    }
  }
}

export async function json(path, options = {}) {
  const response = await api(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(detail(body, response));
  return body;
}

// The server's reason, as text: {"detail": "..."} or FastAPI's [{"msg": ...}] list.
export function detail(body, response) {
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map((item) => (item && item.msg) || JSON.stringify(item)).join("; ");
  return `${response.status} ${response.statusText || "error"}`;
}

// h("td", {class: "x"}, "text", node): strings become text nodes, never markup.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function badge(job) {
  const text = job.status === "retrying" && job.next_attempt_at
    ? `retrying · next ${clock(job.next_attempt_at)}` : job.status;
  return h("span", { class: `badge status-${job.status}`, dataset: { status: job.status },
                     title: job.error ? `${job.error.type}: ${job.error.message}` : null }, text);
}

export function size(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes;
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
  return unit === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 1 : 0)} ${units[unit]}`;
}

export function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function between(start, end) {
  if (!start || !end) return null;
  return (new Date(end) - new Date(start)) / 1000;
}

export function notice(text, kind = "info", el = document.getElementById("notice")) {
  el.textContent = text;
  el.className = `notice ${kind}`;
  el.hidden = !text;
}

// A modal yes/no with the text given; resolves true on yes.
export function confirmAction(text, yes = "Yes") {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = yes;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

export function setLive(mode, text) {
  document.body.dataset.live = mode;
  document.getElementById("live-text").textContent = text || mode;
}

// Reads a server-sent event stream with fetch (so the key goes in a header, not the URL).
async function readEvents(path, signal, onEvent) {
  const response = await api(path, { signal, headers: { Accept: "text/event-stream" } });
  if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

// The live feed of one view: SSE first; after a failure, poll every POLL_MS for FALLBACK_MS, then
// try SSE again. Nothing runs while the tab is hidden. ``restart()`` after the view's filter changes.
export class Live {
  static POLL_MS = 2000;
  static FALLBACK_MS = 30000;

  constructor({ eventsPath, pollPath, onData }) {
    this.eventsPath = eventsPath; // functions: the current filter goes in each call
    this.pollPath = pollPath;
    this.onData = onData;
    this.generation = 0;
    this.controller = null;
    this.timer = null;
    this.sseAfter = 0;
    document.addEventListener("visibilitychange", () => this.restart());
  }

  restart() {
    this.generation += 1;
    if (this.controller) this.controller.abort();
    this.controller = null;
    clearTimeout(this.timer);
    if (document.hidden) { setLive("paused", "paused (tab hidden)"); return; }
    this.run(this.generation);
  }

  current(gen) {
    return gen === this.generation && !document.hidden;
  }

  async run(gen) {
    while (this.current(gen)) {
      if (Date.now() >= this.sseAfter) {
        const controller = new AbortController();
        this.controller = controller;
        let frames = 0;
        try {
          setLive("connecting", "connecting");
          await readEvents(this.eventsPath(), controller.signal, (event, data) => {
            if (event === "board" && this.current(gen)) { frames += 1; setLive("sse", "live"); this.onData(data); }
          });
          // The server ends a stream after a while (its life is capped): reconnect at once. One that
          // ended without a frame (a proxy cutting it short) counts as a failure.
          if (frames) continue;
          throw new Error("the event stream ended empty");
        } catch (error) {
          if (!this.current(gen)) return;
          this.sseAfter = Date.now() + Live.FALLBACK_MS;
        }
      }
      try {
        const data = await json(this.pollPath());
        if (!this.current(gen)) return;
        setLive("polling", "polling");
        this.onData(data);
      } catch (error) {
        if (!this.current(gen)) return;
        setLive("offline", "offline, retrying");
      }
      await new Promise((resolve) => { this.timer = setTimeout(resolve, Live.POLL_MS); });
    }
  }
}

// Runs ``tick`` now and every ``ms`` while the tab is visible (the job page, the chart); a tick
// may return another delay for the next one.
export function every(ms, tick) {
  let timer = null;
  const loop = async () => {
    clearTimeout(timer);
    if (document.hidden) return;
    let next = ms;
    try { next = (await tick()) || ms; } catch (error) { notice(String(error.message || error), "error"); }
    clearTimeout(timer);
    timer = setTimeout(loop, next);
  };
  document.addEventListener("visibilitychange", () => { if (!document.hidden) loop(); else clearTimeout(timer); });
  loop();
  return { now: loop };
}

// A download that carries the key: plain link without one, fetch + blob with one.
export function downloadLink(path, name, label) {
  const a = h("a", { href: path, download: name }, label);
  a.addEventListener("click", async (event) => {
    if (!key()) return;
    event.preventDefault();
    const response = await api(path);
    if (!response.ok) { notice(detail(await response.json().catch(() => null), response), "error"); return; }
    const url = URL.createObjectURL(await response.blob());
    const tmp = h("a", { href: url, download: name });
    document.body.append(tmp);
    tmp.click();
    tmp.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
  return a;
}

showForget();
// Escape does not close the key prompt: nothing on the page works without the key.
document.getElementById("key-dialog").addEventListener("cancel", (event) => event.preventDefault());
document.getElementById("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  window.location.reload();
});
