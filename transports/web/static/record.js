// What one browser client saw of one stream. The page's panes draw it; the Python fleet
// (clients/browser.py) reads it back as JSON and turns it into a StreamRecord.

import {nowMs} from "./wire.js";

export class Tally {
  constructor(expected, onChange = () => {}) {
    this.expected = expected;    // tokens the stream will have
    this.onChange = onChange;    // (what, ...details) -> redraw
    this.stream = "";            // stream id, once known
    this.sentMs = 0;             // first request sent: TTFT and end-to-end count from here
    this.firstMs = 0;            // first non-empty token received
    this.lastMs = 0;             // latest token received
    this.endMs = 0;
    this.endReason = "";         // done, cancelled, idle, ... (from the server)
    this.error = "";             // why the client gave up, if it did
    this.requests = 0;           // HTTP requests sent, WebSocket handshakes included
    this.reconnects = 0;
    this.bytes = 0;              // bytes handed to this page's JavaScript (see addBytes)
    this.texts = new Map();      // seq -> text, first delivery only
    this.tokens = [];            // every delivery: [seq, t_emit_ns, receive ms, request index, text]
    this.duplicates = 0;
    this.lost = 0;               // tokens the server sent that never came (WebTransport datagrams)
    this.sessions = [];          // WebTransport: per session, {up, down} bytes JS wrote and read
    this.lastSeq = 0;            // highest seq held: what a resume continues after
    this.breaks = [];            // {atMs, afterSeq, why}: each time a connection broke under us
    this.recoveries = [];        // ms from a break to the next new token
    this.brokenAtMs = 0;
  }

  get count() { return this.texts.size; }

  /** The first request goes out now (later ones do not move the origin). */
  sent() { if (!this.sentMs) this.sentMs = nowMs(); }

  /** One more HTTP request, WebSocket handshake or WebTransport session. */
  request() { this.requests += 1; this.onChange("request"); }

  /** Bytes the page's JavaScript received: response body bytes for fetch (after HTTP
   *  de-chunking), message text for EventSource and WebSocket (UTF-8). Headers, SSE field
   *  names, WebSocket frame headers and TCP never reach JavaScript, so they are not here. */
  addBytes(n) { this.bytes += n; }

  token(tok, atMs) {
    const fresh = !this.texts.has(tok.seq);
    if (fresh) this.texts.set(tok.seq, tok.text);
    else this.duplicates += 1;
    this.tokens.push([tok.seq, String(tok.t_emit_ns), atMs, this.requests - 1, tok.text]);
    this.stream ||= tok.stream;
    this.lastSeq = Math.max(this.lastSeq, tok.seq);
    if (fresh && this.brokenAtMs) {
      this.recoveries.push(atMs - this.brokenAtMs);
      this.brokenAtMs = 0;
    }
    if (!this.firstMs && tok.text) this.firstMs = atMs;
    this.lastMs = atMs;
    this.onChange("token", tok, fresh);
  }

  /** The connection under this client failed (whether or not it will recover). */
  broken(why) {
    const atMs = nowMs();
    this.breaks.push({atMs, afterSeq: this.lastSeq, why: String(why)});
    this.brokenAtMs ||= atMs;
    this.onChange("broken");
  }

  reconnect() { this.reconnects += 1; this.onChange("reconnect"); }

  finish(reason) {
    this.endMs = nowMs();
    this.endReason = this.endReason || reason;
    this.onChange("end");
  }

  fail(err) {
    this.endMs = nowMs();
    this.error = String(err?.message ?? err);
    this.onChange("end");
  }

  /** The answer as received: each seq's text once, in seq order. */
  text() {
    return [...this.texts.keys()].sort((a, b) => a - b).map((seq) => this.texts.get(seq)).join("");
  }

  toJSON() {
    return {
      stream: this.stream, sentMs: this.sentMs, endMs: this.endMs, endReason: this.endReason,
      error: this.error, requests: this.requests, reconnects: this.reconnects, bytes: this.bytes,
      lost: this.lost, sessions: this.sessions,
      breaks: this.breaks, recoveries: this.recoveries, tokens: this.tokens,
    };
  }
}
