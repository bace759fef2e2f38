// One browser client per transport. Read each next to its section of docs/PROTOCOL.md.
//
// Every client is `async (base, params, rec, signal) => endReason`: it follows one stream
// from the server at `base`, reports to `rec` (a Tally: requests, bytes, tokens, breaks) and
// stops when `signal` aborts. It returns when the stream has ended and throws when it gives up.

import {LineSplitter, SSEParser, chunks, nowMs, parseJSON, query, readToken, utf8Length} from "./wire.js";

const MAX_FAILURES = 5;            // reconnects in a row without a new token before giving up
const LONGPOLL_WAIT_S = 25;        // how long the server may hold a long poll
const SHORTPOLL_INTERVAL_MS = 100; // how often the short poller asks
const JSON_BODY = {"Content-Type": "application/json"};

/** A broken connection (reset, closed early, HTTP 5xx): worth reconnecting. fetch() itself
 *  signals a network failure with a TypeError. */
class Broken extends Error {}
const isBroken = (err) => err instanceof Broken || err instanceof TypeError;

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const onAbort = () => { clearTimeout(timer); reject(signal.reason); };
  const timer = setTimeout(() => { signal.removeEventListener("abort", onAbort); resolve(); }, ms);
  signal.addEventListener("abort", onAbort, {once: true});
});

/** The reconnect loop of every client that resumes by itself (all but EventSource, which the
 *  browser reconnects, and one-shot, which cannot): run `attempt` until it returns; when the
 *  connection breaks, wait (doubling, at least `minDelayMs()`) and run it again. `attempt`
 *  itself knows how to continue after the last token held. */
async function resuming(rec, signal, attempt, minDelayMs = () => 0) {
  for (let failures = 0; ;) {
    const held = rec.count;
    try {
      return await attempt();
    } catch (err) {
      if (signal.aborted || !isBroken(err)) throw err;
      rec.broken(err.message);
      failures = rec.count > held ? 1 : failures + 1;
      if (failures > MAX_FAILURES) throw new Error(`gave up after ${MAX_FAILURES} failed reconnects`);
      await sleep(Math.max(minDelayMs(), 100 * 2 ** (failures - 1)), signal);
      rec.reconnect();
    }
  }
}

/** Throw the server's JSON error for an unexpected status (5xx: Broken, worth a retry). */
async function expectStatus(response, status = 200) {
  if (response.status === status) return;
  let message = `HTTP ${response.status}`;
  try { message += `: ${(await response.json()).error.message}`; } catch { /* not our JSON */ }
  throw response.status >= 500 ? new Broken(message) : new Error(message);
}

/** One JSON request (a poll, a one-shot answer): the parsed body and when it arrived. */
async function fetchJSON(rec, url, init, status = 200) {
  rec.request();
  const response = await fetch(url, {cache: "no-store", ...init});
  await expectStatus(response, status);
  const body = await response.arrayBuffer();
  const atMs = nowMs();
  rec.addBytes(body.byteLength);
  return {...parseJSON(new TextDecoder().decode(body)), atMs};
}

// --- SSE with EventSource (PROTOCOL.md "sse") -----------------------------------------------
/** The browser does everything: the request, the parsing, and the reconnect after a broken
 *  connection, `retry:` ms later, with `Last-Event-ID: <stream>:<seq>` so the server resumes the
 *  same stream. Our one duty: close it at `data: [DONE]`, or it reconnects for ever (the
 *  server would answer 204, which finally stops it). */
export function sseEventSource(base, params, rec, signal) {
  return new Promise((resolve, reject) => {
    rec.sent();
    rec.request();
    const source = new EventSource(`${base}/sse?${query(params)}`);
    let held = 0, failures = 0, finished = false;
    const end = (settle, value) => {
      source.close();
      signal.removeEventListener("abort", onAbort);
      settle(value);
    };
    const onAbort = () => end(reject, signal.reason);
    signal.addEventListener("abort", onAbort);
    source.onmessage = (event) => {
      const atMs = nowMs();
      rec.addBytes(utf8Length(event.data));   // JavaScript only ever sees the data field
      if (event.data === "[DONE]") {
        // The answer is complete. The server ends the response right after [DONE], which fires
        // `error` below; closing there (or 250 ms from now, whichever comes first) lets the
        // response finish instead of being aborted, and still beats the reconnect timer.
        finished = true;
        setTimeout(() => end(resolve, "done"), 250);
        return;
      }
      rec.token(readToken(parseJSON(event.data)), atMs);
    };
    source.addEventListener("cancelled", (event) => { rec.endReason = parseJSON(event.data).reason; });
    source.onerror = () => {
      if (finished) return end(resolve, "done");
      if (source.readyState === EventSource.CLOSED) {  // an HTTP error, or the 204 "stop"
        return rec.count === rec.expected ? end(resolve, "done") : end(reject, new Error("EventSource gave up"));
      }
      // CONNECTING: the connection broke, and the browser is already reconnecting by itself.
      rec.broken("connection lost");
      failures = rec.count > held ? 1 : failures + 1;
      held = rec.count;
      if (failures > MAX_FAILURES) return end(reject, new Error(`gave up after ${MAX_FAILURES} failed reconnects`));
      rec.reconnect();
      rec.request();
    };
  });
}

// --- SSE with fetch() and our own parser (PROTOCOL.md "sse", POST) ---------------------------
/** What the OpenAI SDKs do in a browser: POST the parameters as JSON, read the body with a
 *  stream reader, parse the event stream ourselves (SSEParser), and after a broken connection
 *  POST again with the `Last-Event-ID` the parser committed, waiting the server's `retry:`. */
export function sseFetch(base, params, rec, signal) {
  let lastEventId = "", retryMs = 0;
  rec.sent();
  return resuming(rec, signal, async () => {
    const headers = {...JSON_BODY, Accept: "text/event-stream"};
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;  // resume: the body is then ignored
    rec.request();
    const response = await fetch(`${base}/sse`, {method: "POST", headers, body: JSON.stringify(params), signal});
    if (response.status === 204) return "done";  // the stream had ended: nothing after our id
    await expectStatus(response);
    const parser = new SSEParser();
    let ended = false;
    try {
      for await (const [bytes, atMs] of chunks(response)) {  // to the end: [DONE] comes last
        rec.addBytes(bytes.length);
        for (const event of parser.feed(bytes)) {
          if (event.data === "[DONE]") ended = true;
          else if (event.type === "cancelled") rec.endReason = parseJSON(event.data).reason;
          else rec.token(readToken(parseJSON(event.data)), atMs);
        }
      }
    } finally {
      lastEventId = parser.lastEventId || lastEventId;
      retryMs = parser.retry ?? retryMs;
    }
    if (ended) return "done";
    throw new Broken("the event stream ended before [DONE]");
  }, () => retryMs);
}

// --- WebSocket (PROTOCOL.md "websocket") ----------------------------------------------------
/** One upgraded connection; we send `start`, the server sends `started`, `token`s and `done`.
 *  A close before `done` (1006 when TCP broke) means: open a new WebSocket and send
 *  `{"type":"resume","stream":ID,"after":SEQ}` with the last seq we hold. */
export function websocket(base, params, rec, signal) {
  rec.sent();
  return resuming(rec, signal, () => new Promise((resolve, reject) => {
    rec.request();
    const ws = new WebSocket(`${base.replace(/^http/, "ws")}/ws`);
    const onAbort = () => { ws.close(1000); reject(signal.reason); };
    signal.addEventListener("abort", onAbort, {once: true});
    const settle = (how, value) => { signal.removeEventListener("abort", onAbort); how(value); };
    ws.onopen = () => ws.send(JSON.stringify(rec.stream
      ? {type: "resume", stream: rec.stream, after: rec.lastSeq}
      : {type: "start", ...params}));
    ws.onmessage = (event) => {
      const atMs = nowMs();
      rec.addBytes(utf8Length(event.data));
      const message = parseJSON(event.data);
      if (message.type === "token") rec.token(readToken(message), atMs);
      else if (message.type === "started") rec.stream ||= message.stream;
      else if (message.type === "done") { ws.close(1000); settle(resolve, message.reason); }
      else if (message.type === "error") settle(reject, new Error(message.error.message));
    };
    // After `done` this is our own close and changes nothing (the promise is settled).
    ws.onclose = (event) => settle(reject, new Broken(`WebSocket closed (${event.code})`));
  }));
}

// --- WebTransport over HTTP/3 (transports/webtransport.py) ----------------------------------
/** Where the server's WebTransport endpoint is: GET /webtransport (its URL names 127.0.0.1:
 *  with `localhost` Chromium tries ::1 first) and the hash of its short-lived certificate,
 *  which `serverCertificateHashes` makes the browser accept without a CA. Asked once per page
 *  (and per server origin); forgotten when a session fails, since a restarted server has a
 *  new certificate. `auth`: whether the server runs with --auth (GET /auth/session). */
const wtEndpoints = new Map();  // base -> Promise<{url, hashes, auth}>
function wtEndpoint(base) {
  if (!wtEndpoints.has(base)) {
    const asked = (async () => {
      const response = await fetch(`${base}/webtransport`, {cache: "no-store"});
      await expectStatus(response);
      const info = await response.json();
      const session = await fetch(`${base}/auth/session`, {cache: "no-store"})
        .then((r) => r.ok ? r.json() : {auth: false}, () => ({auth: false}));
      const hashes = info.certificate_hashes.map(({algorithm, value}) =>
        ({algorithm, value: Uint8Array.from(atob(value), (c) => c.charCodeAt(0))}));
      return {url: info.url, hashes, auth: Boolean(session.auth)};
    })();
    asked.catch(() => wtEndpoints.delete(base));
    wtEndpoints.set(base, asked);
  }
  return wtEndpoints.get(base);
}

const WT_DATAGRAM_GRACE_MS = 250;  // after `done`, how long datagrams still on their way may come
const WT_CANCEL_GRACE_MS = 1000;   // after a cancel, how long we wait for its `done` before closing

/** The highest seq below which every token is held: where a datagram resume continues, so
 *  that datagrams lost before a break are sent again. */
function contiguousSeq(rec) {
  let seq = 0;
  while (rec.texts.has(seq + 1)) seq += 1;
  return seq;
}

/** One session per attempt: a QUIC connection to the server's own UDP endpoint, an extended
 *  CONNECT to /wt (with `?ticket=` under --auth: WebTransport carries no cookie), then we open
 *  the control stream and send `start` (or `resume` after a break); the server opens a
 *  unidirectional stream: `started`, `token` lines (or, with `delivery: "datagram"`, one
 *  datagram per token), `done`, FIN. Datagrams may be lost or reordered: what never came is
 *  counted from `done`'s seq (`rec.lost`). A session that ends before `done` is a broken
 *  connection; a session that cannot even open on the first attempt (wrong certificate hash,
 *  nothing listening, QUIC off in the browser) is an error: the browser does not say which. */
export function webtransport(base, params, rec, signal, {delivery = "stream"} = {}) {
  if (typeof WebTransport === "undefined") {
    return Promise.reject(new Error("this browser has no WebTransport (it needs a secure context)"));
  }
  rec.sent();
  const encoder = new TextEncoder();
  return resuming(rec, signal, async () => {
    const endpoint = await wtEndpoint(base);
    let url = endpoint.url;
    if (endpoint.auth) {  // a single-use ticket per session, bought with the page's cookie
      const {ticket} = await fetchJSON(rec, `${base}/auth/ticket`, {method: "POST"});
      url += `?ticket=${encodeURIComponent(ticket)}`;
    }
    const first = !rec.stream;
    rec.request();
    const transport = new WebTransport(url, {serverCertificateHashes: endpoint.hashes});
    transport.closed.catch(() => {});  // observed below; never an unhandled rejection
    const onEarlyAbort = () => transport.close();  // `ready` then rejects, and we stop
    signal.addEventListener("abort", onEarlyAbort, {once: true});
    try {
      await transport.ready;
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      wtEndpoints.delete(base);  // the server may have restarted with another certificate
      const why = `${err.name ?? "Error"}: ${err.message} (WebTransport session to ${endpoint.url} not established)`;
      if (first) throw new Error(why);
      throw new Broken(why);
    } finally {
      signal.removeEventListener("abort", onEarlyAbort);
    }
    return await wtSession(transport, rec, signal, encoder, first
      ? {type: "start", ...params, delivery}
      : {type: "resume", stream: rec.stream, after: delivery === "datagram" ? contiguousSeq(rec) : rec.lastSeq, delivery});
  });
}

/** One established session: send `message` on the control stream, read what comes back. */
async function wtSession(transport, rec, signal, encoder, message) {
  let control = null, cancelled = false;
  const bytes = {up: 0, down: 0};  // what this session's JavaScript wrote and read
  rec.sessions.push(bytes);
  const send = (text) => { const data = encoder.encode(text); bytes.up += data.byteLength; return control.write(data); };
  const close = (reason) => { try { transport.close({closeCode: 0, reason}); } catch { /* closed */ } };
  const onAbort = async () => {
    cancelled = true;  // the server answers `done` with reason "cancelled"; we wait for it a while
    try { if (control) await send('{"type":"cancel"}\n'); } catch { /* gone */ }
    setTimeout(() => close("cancelled"), WT_CANCEL_GRACE_MS);
  };
  signal.addEventListener("abort", onAbort, {once: true});
  const sessionEnd = transport.closed.then(
    ({closeCode, reason}) => closeCode === 1008
      ? new Error(`WebTransport session closed ${closeCode}: ${reason}`)
      : new Broken(`WebTransport session closed (${closeCode}${reason ? `: ${reason}` : ""})`),
    (err) => new Broken(`${err.name ?? "Error"}: ${err.message}`));
  try {
    const bidi = await transport.createBidirectionalStream();
    control = bidi.writable.getWriter();
    await send(JSON.stringify(message) + "\n");
    const ended = sessionEnd.then((err) => { throw err; });
    const controlFailed = readControl(bidi.readable);
    if (message.delivery === "datagram") readDatagrams(transport, rec, bytes);
    const streams = transport.incomingUnidirectionalStreams.getReader();
    const {value: stream, done} = await Promise.race([streams.read(), controlFailed, ended]);
    if (done) throw new Broken("the session ended before its token stream opened");
    const outcome = await Promise.race([readTokenStream(stream, rec, bytes), controlFailed, ended]);
    if (message.delivery === "datagram") await datagramsSettle(rec, outcome.seq);
    close("done");
    return outcome.reason;
  } catch (err) {
    close("gave up");
    if (cancelled) throw signal.reason;
    throw err instanceof Error && !(err instanceof Broken) && err.name === "WebTransportError"
      ? new Broken(`${err.name}: ${err.message}`) : err;
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

/** The control stream's answers: only `{"type":"error"}` before the server closes. */
async function readControl(readable) {
  const lines = new LineSplitter();
  for await (const bytes of readable) {
    for (const line of lines.feed(bytes)) {
      const message = parseJSON(line);
      if (message.type === "error") throw new Error(message.error.message);
    }
  }
  return new Promise(() => {});  // the control stream ended: the token stream decides
}

/** The token stream: `started`, tokens (stream delivery), `done`, then FIN. */
async function readTokenStream(readable, rec, bytes) {
  const lines = new LineSplitter();
  const reader = readable.getReader();
  let end = null;
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      throw new Broken(`${err.name ?? "Error"}: ${err.message}`);
    }
    if (chunk.done) break;
    const atMs = nowMs();
    rec.addBytes(chunk.value.byteLength);
    bytes.down += chunk.value.byteLength;
    for (const line of lines.feed(chunk.value)) {
      const message = parseJSON(line);
      if (message.type === "token") rec.token(readToken(message), atMs);
      else if (message.type === "started") rec.stream ||= message.stream;
      else if (message.type === "done") end = message;
      else if (message.type === "error") throw new Error(message.error.message);
    }
  }
  if (end) return end;
  throw new Broken("the token stream ended before the done line");
}

/** Datagram delivery: each datagram one token object. Runs until the session ends. */
async function readDatagrams(transport, rec, bytes) {
  const decoder = new TextDecoder();
  try {
    for await (const datagram of transport.datagrams.readable) {
      const atMs = nowMs();
      rec.addBytes(datagram.byteLength);
      bytes.down += datagram.byteLength;
      const message = parseJSON(decoder.decode(datagram));
      if (message.type === "token") rec.token(readToken(message), atMs);
    }
  } catch { /* the session ended */ }
}

/** After `done` (seq LAST): give datagrams still in flight a moment, then count the rest lost. */
async function datagramsSettle(rec, last) {
  const deadline = nowMs() + WT_DATAGRAM_GRACE_MS;
  while (rec.count < last && nowMs() < deadline) await new Promise((r) => setTimeout(r, 10));
  rec.lost = Math.max(0, last - rec.count);
}

// --- NDJSON over fetch() (PROTOCOL.md "ndjson") ---------------------------------------------
/** One chunked response, one JSON object per line; we split the lines ourselves. After a
 *  broken connection: GET /ndjson?stream=ID&after=SEQ continues the same stream. */
export function ndjson(base, params, rec, signal) {
  rec.sent();
  return resuming(rec, signal, async () => {
    const url = rec.stream
      ? `${base}/ndjson?stream=${rec.stream}&after=${rec.lastSeq}`
      : `${base}/ndjson?${query(params)}`;
    rec.request();
    const response = await fetch(url, {signal, cache: "no-store", headers: {Accept: "application/x-ndjson"}});
    await expectStatus(response);
    rec.stream ||= response.headers.get("X-Pushlab-Stream") ?? "";
    const lines = new LineSplitter();
    let reason = "";
    for await (const [bytes, atMs] of chunks(response)) {  // to the end: the done line comes last
      rec.addBytes(bytes.length);
      for (const line of lines.feed(bytes)) {
        const item = parseJSON(line);
        if (item.type === "done") reason = item.reason;
        else if (item.type === "started") rec.stream ||= item.stream;
        else rec.token(readToken(item), atMs);
      }
    }
    if (reason) return reason;
    throw new Broken("the response ended before the done line");
  });
}

// --- Long and short polling (PROTOCOL.md "longpoll", "shortpoll") ----------------------------
/** POST creates the stream; then each GET asks for every token after our cursor. A long poll
 *  is held by the server until a token exists; a short poll answers at once and we ask again
 *  `SHORTPOLL_INTERVAL_MS` later. A broken poll is simply asked again with the same cursor. */
function poller(key, hold) {
  return async function poll(base, params, rec, signal) {
    rec.sent();
    const init = {method: "POST", headers: JSON_BODY, body: JSON.stringify(params), signal};
    const created = await resuming(rec, signal, () => fetchJSON(rec, `${base}/${key}`, init, 201));
    rec.stream = created.stream;
    let cursor = 0;  // the last seq held: each poll asks for what follows it
    for (;;) {
      const askedMs = nowMs();
      const url = `${base}/${key}/${rec.stream}?after=${cursor}` + (hold ? `&wait=${LONGPOLL_WAIT_S}` : "");
      const batch = await resuming(rec, signal, () => fetchJSON(rec, url, {signal}));
      for (const token of batch.tokens) rec.token(readToken(token), batch.atMs);
      cursor = batch.next;
      if (batch.done) return batch.reason || "done";
      if (!hold) await sleep(Math.max(0, SHORTPOLL_INTERVAL_MS - (nowMs() - askedMs)), signal);
    }
  };
}
export const longpoll = poller("longpoll", true);
export const shortpoll = poller("shortpoll", false);

// --- One-shot (PROTOCOL.md "oneshot") -------------------------------------------------------
/** The classic request/response: one GET, the whole answer once generation has ended. If the
 *  connection breaks before then, nothing can be resumed: the stream id would have come in
 *  the response headers, which had not been sent yet. */
export async function fetchAnswer(base, params, rec, signal) {
  rec.sent();
  try {
    return await fetchJSON(rec, `${base}/oneshot?${query(params)}`, {signal});
  } catch (err) {
    if (signal.aborted || !isBroken(err)) throw err;
    rec.broken(err.message);
    throw new Error("connection lost before the answer came; no stream id to resume with");
  }
}

export async function oneshot(base, params, rec, signal, answer = fetchAnswer(base, params, rec, signal)) {
  const batch = await answer;
  for (const token of batch.tokens) rec.token(readToken(token), batch.atMs);
  return batch.reason || "done";
}

// --- The fake typewriter (front end only) ---------------------------------------------------
/** NOT a streaming transport: it waits for the whole one-shot answer (its own request, or
 *  `answer` when given one), then types it out with a timer at `rate` tokens per second. It
 *  looks live, but its first character appears only once the entire answer exists. */
export async function fakeTypewriter(base, params, rec, signal, answer = fetchAnswer(base, params, rec, signal)) {
  rec.sent();
  const batch = await answer;
  for (const [i, token] of batch.tokens.entries()) {
    if (i > 0) await sleep(1000 / params.rate, signal);
    rec.token(readToken(token), nowMs());  // "received" here means typed: it all came at batch.atMs
  }
  return batch.reason || "done";
}

/** The page's client functions, by name. Which of them get a pane, in what order, under which
 *  transport's label and colour, is the server's registry (GET /transports, each transport's
 *  `browser_clients`); here each name says only how to run it: `variant` follows the
 *  transport's label in the pane title, `how` is the request it makes. `pageOnly` clients are
 *  no transport (they get a pane after the registry's); `sharesAnswer` clients take one
 *  shared one-shot answer as their extra argument; the others may take an options object
 *  (`webtransport`: `{delivery: "datagram"}`, clients/browser.py's `client_options`). */
export const CLIENTS = {
  "sse": {run: sseEventSource, variant: "EventSource", how: "GET /sse"},
  "sse-fetch": {run: sseFetch, variant: "fetch + parser", how: "POST /sse"},
  "websocket": {run: websocket, how: "GET /ws"},
  "webtransport": {run: webtransport, variant: "HTTP/3", how: "CONNECT /wt · one uni stream"},
  "ndjson": {run: ndjson, variant: "fetch", how: "GET /ndjson"},
  "longpoll": {run: longpoll, how: `GET /longpoll/{id}?wait=${LONGPOLL_WAIT_S}`},
  "shortpoll": {run: shortpoll, how: `GET /shortpoll/{id} /${SHORTPOLL_INTERVAL_MS} ms`},
  "oneshot": {run: oneshot, how: "GET /oneshot", sharesAnswer: true},
  "fake": {run: fakeTypewriter, title: "Fake typewriter", how: "one-shot + a timer", pageOnly: true, sharesAnswer: true},
};

/** The transports the server has (GET /transports): [{key, label, colour, browser_clients, …}]
 *  in display order. */
export async function fetchTransports(base) {
  const response = await fetch(`${base}/transports`, {cache: "no-store"});
  await expectStatus(response);
  return response.json();
}

/** Run one client to its end; whatever happens is recorded in `rec`, nothing is thrown. */
export async function runClient(key, base, params, rec, signal, ...extra) {
  try {
    rec.finish(await CLIENTS[key].run(base, params, rec, signal, ...extra));
  } catch (err) {
    rec.fail(signal.aborted ? (signal.reason ?? err) : err);
  }
}
