// The `auth` experiment's probe (experiments/auth.py), driven through Playwright: can this
// browser API carry this credential form? Each probe tries to complete one short stream from
// this page's own server and says how far it got. Nothing is assumed: where an API has no
// slot for a credential we still write the call a developer would try (`new EventSource(url,
// {headers})`, `new WebSocket(url, {headers})`) and report what the browser did with it:
// EventSource ignores the unknown member and sends the request bare (the server answers 401,
// which the page cannot see: the experiment reads the status from the DevTools protocol);
// the WebSocket constructor throws, since its second argument is the subprotocol list.
//
// Credential forms (docs/SECURITY.md): "none", "header" (Authorization: Bearer), "cookie"
// (POST /auth/session with the key first, DELETE after; HttpOnly, so no script touches it),
// "ticket" (POST /auth/ticket, then /ws?ticket=), "query" (?access_token= on every URL).
// Loaded on demand: `(await import("/static/authprobe.js")).probe(...)`.

import {LineSplitter, SSEParser, chunks, parseJSON, query} from "./wire.js";

const JSON_BODY = {"Content-Type": "application/json"};

/** Cannot be written: the API offers no place for the credential (the constructor threw). */
class Inexpressible extends Error {}

/** Where the credential goes for one probe: extra headers and a URL rewriter. */
async function carrier(credential, key, api) {
  const none = {headers: {}, url: (url) => url};
  if (credential === "none" || credential === "cookie") return none;
  if (credential === "header") return {...none, headers: {Authorization: `Bearer ${key}`}};
  if (credential === "query") {
    return {...none, url: (url) => `${url}${url.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(key)}`};
  }
  if (credential === "ticket" && api === "websocket") {
    const response = await fetch("/auth/ticket", {method: "POST", headers: {Authorization: `Bearer ${key}`}});
    if (!response.ok) throw new Error(`POST /auth/ticket: HTTP ${response.status}`);
    const {ticket} = await response.json();
    return {...none, url: (url) => `${url}?ticket=${encodeURIComponent(ticket)}`};
  }
  throw new Error(`no credential form ${credential} for ${api}`);
}

/** A failed HTTP exchange, with its status (the server's 401 is the answer we look for). */
class Refused extends Error {
  constructor(status) { super(`HTTP ${status}`); this.status = status; }
}
const ok = (response, status = 200) => { if (response.status !== status) throw new Refused(response.status); };

const API = {
  eventsource: (c, params, out) => new Promise((resolve, reject) => {
    const source = new EventSource(c.url(`/sse?${query(params)}`), {headers: c.headers});
    source.onmessage = (event) => {
      if (event.data === "[DONE]") { source.close(); resolve(); } else out.tokens += 1;
    };
    source.onerror = () => { source.close(); reject(new Error("EventSource error")); };
  }),
  async "fetch-sse"(c, params, out) {
    const headers = {...c.headers, ...JSON_BODY, Accept: "text/event-stream"};
    const response = await fetch(c.url("/sse"), {method: "POST", headers, body: JSON.stringify(params)});
    ok(response);
    const parser = new SSEParser();
    for await (const [bytes] of chunks(response)) {
      for (const event of parser.feed(bytes)) {
        if (event.data === "[DONE]") return;
        out.tokens += 1;
      }
    }
    throw new Error("the event stream ended before [DONE]");
  },
  async "fetch-ndjson"(c, params, out) {
    const response = await fetch(c.url(`/ndjson?${query(params)}`), {headers: c.headers});
    ok(response);
    const lines = new LineSplitter();
    for await (const [bytes] of chunks(response)) {
      for (const line of lines.feed(bytes)) {
        const item = parseJSON(line);
        if (item.type === "done") return;
        if (item.type !== "started") out.tokens += 1;
      }
    }
    throw new Error("the response ended before the done line");
  },
  "fetch-longpoll": (c, params, out) => poll("longpoll", "&wait=25", c, params, out),
  "fetch-shortpoll": (c, params, out) => poll("shortpoll", "", c, params, out),
  async "fetch-oneshot"(c, params, out) {
    const response = await fetch(c.url(`/oneshot?${query(params)}`), {headers: c.headers});
    ok(response);
    out.tokens += (await response.json()).tokens.length;
  },
  websocket: (c, params, out) => new Promise((resolve, reject) => {
    const url = c.url(`${location.origin.replace(/^http/, "ws")}/ws`);
    let ws;
    try {  // the header form: the one call with a second argument
      ws = Object.keys(c.headers).length ? new WebSocket(url, {headers: c.headers}) : new WebSocket(url);
    } catch (err) {
      throw new Inexpressible(`new WebSocket(url, {headers}) threw ${err.name}: ${err.message}`);
    }
    ws.onopen = () => ws.send(JSON.stringify({type: "start", ...params}));
    ws.onmessage = (event) => {
      const message = parseJSON(event.data);
      if (message.type === "token") out.tokens += 1;
      else if (message.type === "done") { ws.close(1000); resolve(); }
    };
    ws.onclose = (event) => reject(new Error(`WebSocket closed (${event.code})`));
  }),
};

/** POST creates the stream; GETs read it to the end, every request carrying the credential. */
async function poll(key, hold, c, params, out) {
  const init = {method: "POST", headers: {...c.headers, ...JSON_BODY}, body: JSON.stringify(params)};
  const created = await fetch(c.url(`/${key}`), init);
  ok(created, 201);
  const {stream} = await created.json();
  for (let cursor = 0; ;) {
    const response = await fetch(c.url(`/${key}/${stream}?after=${cursor}${hold}`), {headers: c.headers, cache: "no-store"});
    ok(response);
    const batch = await response.json();
    out.tokens += batch.tokens.length;
    cursor = batch.next;
    if (batch.done) return;
    if (!hold) await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Try one stream of `api` carrying `credential` (made from the key `key`): {outcome, status,
 *  tokens, detail}; outcome "complete", "inexpressible", or "failed" (with the HTTP status
 *  when the page could see it; an EventSource or a WebSocket cannot, the experiment asks the
 *  DevTools protocol). */
export async function probe(api, credential, key, params, timeoutMs) {
  const out = {outcome: "complete", status: 0, tokens: 0, detail: ""};
  let timer;
  try {
    if (credential === "cookie") {
      const response = await fetch("/auth/session", {method: "POST", headers: {Authorization: `Bearer ${key}`}});
      if (!response.ok) throw new Error(`POST /auth/session: HTTP ${response.status}`);
    }
    const c = await carrier(credential, key, api);
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
    });
    await Promise.race([API[api](c, params, out), timeout]);
  } catch (err) {
    out.outcome = err instanceof Inexpressible ? "inexpressible" : "failed";
    out.status = err.status ?? 0;
    out.detail = err.message;
  } finally {
    clearTimeout(timer);
    if (credential === "cookie") await fetch("/auth/session", {method: "DELETE"});
  }
  return out;
}

export const APIS = Object.keys(API);
