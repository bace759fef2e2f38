// The demo page: one seeded answer, streamed at once by every client in clients.js, side by side.

import {CLIENTS, fetchAnswer, fetchTransports, runClient} from "./clients.js";
import {Tally} from "./record.js";
import {nowMs} from "./wire.js";

const $ = (selector, root = document) => root.querySelector(selector);
const NUMBERS = ["tokens", "rate", "ttft_ms", "jitter", "seed"];
const panes = new Map();  // key -> {el, rec}
let current = null;       // the running demo: {stop, startMs, cuts: [ms]}

function readParams() {
  const params = {};
  for (const name of NUMBERS) params[name] = Number($(`#${name}`).value);
  params.text = $("#text").value;
  return params;
}

function describe(params) {
  $("#seed-note").textContent =
    `seed ${params.seed} · ${params.text} · ${params.tokens} tokens at ${params.rate}/s after ${params.ttft_ms} ms`;
}

/** A pane for the client `key`; `transport` (a registry entry) gives its label and colour. */
function buildPane(key, transport = null) {
  const {title, variant, how} = CLIENTS[key];
  const el = $("#pane-template").content.firstElementChild.cloneNode(true);
  el.dataset.key = key;
  $("h2", el).textContent = transport ? [transport.label, variant].filter(Boolean).join(" · ") : title;
  if (transport) {
    el.dataset.transport = transport.key;
    $("h2", el).style.color = transport.colour;  // the colour the charts give it
  }
  $("code", el).textContent = how;
  $("code", el).title = how;
  $("#panes").append(el);
  panes.set(key, {el, rec: null, drawn: false});
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const ms = (value) => value < 1000 ? `${Math.round(value)} ms` : `${(value / 1000).toFixed(2)} s`;

/** The one-line verdict under a pane: what its client experienced, nothing assumed. */
function status(key, rec) {
  const breaks = rec.breaks.length;
  const back = rec.recoveries.length ? `, back in ${ms(Math.max(...rec.recoveries))}` : "";
  if (rec.error) {
    const cut = breaks ? `cut after #${rec.breaks[0].afterSeq}, did not recover: ` : "";
    return ["bad", `✗ ${cut}${rec.error}`];
  }
  if (!rec.endMs) {
    if (rec.brokenAtMs) return ["warn", `✂ connection lost after #${rec.lastSeq}: reconnecting…`];
    if (breaks) return ["good", `↻ reconnected by itself${back}, resumed after #${rec.breaks.at(-1).afterSeq}`];
    if (key === "fake" && rec.count) return ["", `typing an answer that is already complete… ${rec.count}/${rec.expected}`];
    return ["", rec.count ? `streaming… ${rec.count}/${rec.expected}` : "waiting for the first token…"];
  }
  const lost = rec.expected - rec.count;
  const whole = lost === 0 && rec.duplicates === 0;
  let text = whole
    ? `✓ ${rec.count}/${rec.expected} tokens, none lost or repeated`
    : `✗ ${rec.count}/${rec.expected} tokens, ${lost} lost, ${rec.duplicates} repeated`;
  if (breaks) text += ` · survived ${plural(breaks, "broken connection")}${back}`;
  else if (current?.cuts.some((at) => at > rec.sentMs && at < rec.endMs)) text += " · no error reached its JavaScript";
  return [whole ? "good" : "bad", text];
}

function draw(key) {
  const pane = panes.get(key);
  pane.drawn = false;
  const {el, rec} = pane;
  const answer = $(".answer", el);
  const text = rec.text();
  if ($(".text", el).textContent !== text) {
    $(".text", el).textContent = text;
    answer.scrollTop = answer.scrollHeight;
  }
  const figure = (name, value) => { $(`[data-f=${name}]`, el).textContent = value; };
  figure("ttft", rec.firstMs ? ms(rec.firstMs - rec.sentMs) : "–");
  const span = rec.lastMs - rec.firstMs;
  figure("rate", rec.count < 2 ? "–" : span < 1 ? "burst" : ((rec.count - 1) * 1000 / span).toFixed(1));
  figure("bytes", rec.bytes.toLocaleString("en"));
  figure("requests", String(rec.requests));
  figure("reconnects", String(rec.reconnects));
  const [tone, line] = status(key, rec);
  $(".status", el).textContent = line;
  el.dataset.tone = tone;
  el.classList.toggle("live", !rec.endMs && rec.count > 0);
}

function redrawSoon(key) {
  const pane = panes.get(key);
  if (!pane.drawn) {
    pane.drawn = true;
    requestAnimationFrame(() => draw(key));
  }
}

/** The server's count of streams ever created (GET /stats, server-wide). */
async function streamsCreated() {
  try {
    const response = await fetch("/stats", {cache: "no-store"});
    return (await response.json()).hub.streams_created;
  } catch {
    return NaN;  // no /stats: the banner then says nothing about extra answers
  }
}

async function start() {
  current?.stop.abort(new Error("restarted"));
  const params = readParams();
  describe(params);
  const createdBefore = await streamsCreated();
  const run = {stop: new AbortController(), startMs: nowMs(), cuts: []};
  current = run;
  document.body.dataset.state = "running";
  $("#banner").textContent = "";
  $("#cut").disabled = false;
  const base = location.origin, signal = run.stop.signal;
  for (const [key, pane] of panes) pane.rec = new Tally(params.tokens, () => redrawSoon(key));
  // The fake typewriter types the one-shot pane's answer instead of fetching its own: one
  // more HTTP request at once would wait for one of Chrome's six connections per origin.
  const sharing = [...panes.keys()].filter((key) => CLIENTS[key].sharesAnswer);
  const answer = sharing.length ? fetchAnswer(base, params, panes.get(sharing[0]).rec, signal) : null;
  answer?.catch(() => {});  // each pane that shares it reports the failure itself
  const finished = [...panes].map(([key, pane]) => {
    redrawSoon(key);
    const extra = CLIENTS[key].sharesAnswer ? [answer] : [];
    return runClient(key, base, params, pane.rec, signal, ...extra);
  });
  await Promise.all(finished);
  if (current !== run) return;
  $("#cut").disabled = true;
  if (run.cuts.length) {
    // The panes sharing one answer asked for it once. More streams mean a request was sent
    // again: by a client that restarted, or by Chrome itself, which silently re-sends a
    // request whose reused keep-alive connection was reset before any response.
    const asked = panes.size - Math.max(sharing.length - 1, 0);
    const extra = (await streamsCreated()) - createdBefore - asked;
    if (!Number.isNaN(extra)) $("#banner").textContent += extra > 0
      ? ` Afterwards: the server had generated ${plural(extra, "extra answer")} (server-wide /stats): a request cut before its response was sent again.`
      : " Afterwards: the server generated no answer twice (server-wide /stats).";
  }
  document.body.dataset.state = "finished";  // tests and screenshots wait for this
}

/** Ask the server to reset our connections (transports/web/page.py, POST /debug/cut). */
async function cut() {
  const run = current;
  const atMs = nowMs();
  run.cuts.push(atMs);
  const response = await fetch("/debug/cut", {method: "POST"});
  const result = await response.json();
  if (!response.ok) {
    $("#banner").textContent = response.status === 404
      ? "cut failed: the server runs without --lab-debug, which mounts POST /debug/cut"
      : `cut failed: ${result.error.message}`;
    return;
  }
  $("#banner").textContent =
    `✂ at +${((atMs - run.startMs) / 1000).toFixed(2)} s the server reset ${plural(result.reset, "connection")} ` +
    `from ${result.peer}. Which panes recover by themselves?`;
}

/** With `pushlab serve --auth` the page needs a session first (docs/SECURITY.md): the key
 * pasted here is exchanged once for an HttpOnly, SameSite=Strict cookie that every pane's
 * client then carries by itself: EventSource and WebSocket can send nothing else. */
async function signIn() {
  const session = await (await fetch("/auth/session", {cache: "no-store"})).json();
  if (!session.auth || session.identity) {
    $("#whoami").textContent = session.identity ? `signed in as ${session.identity}` : "";
    return;
  }
  $("#signin").hidden = false;
  $("#start").disabled = true;
  await new Promise((resolve) => $("#signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("#key").value.trim();
    const response = await fetch("/auth/session", {method: "POST", headers: {Authorization: `Bearer ${key}`}});
    const body = await response.json();
    if (!response.ok) {
      $("#signin-error").textContent = body.error.message;
      return;
    }
    $("#key").value = "";
    $("#signin").hidden = true;
    $("#start").disabled = false;
    $("#whoami").textContent = `signed in as ${body.identity}`;
    resolve();
  }));
}

/** Panes: the registry's browser clients in its display order, then the page's own extras. */
for (const transport of await fetchTransports(location.origin)) {
  for (const key of transport.browser_clients) {
    if (key in CLIENTS) buildPane(key, transport);
    else console.error(`the registry names a browser client ${key} that static/clients.js lacks`);
  }
}
for (const [key, client] of Object.entries(CLIENTS)) if (client.pageOnly) buildPane(key);
describe(readParams());
$("#start").addEventListener("click", start);
$("#cut").addEventListener("click", cut);
$("#reseed").addEventListener("click", () => {
  $("#seed").value = Math.floor(Math.random() * 10000);
  describe(readParams());
});
$("#params").addEventListener("input", () => describe(readParams()));
await signIn();
document.body.dataset.state = "ready";
