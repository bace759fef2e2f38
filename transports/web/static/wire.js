// Wire helpers every browser client shares: the clock, exact JSON, an SSE parser, NDJSON lines.
// The formats are in docs/PROTOCOL.md; the Python codecs in transports/ are their twins.

/** Wall-clock time in milliseconds (a float). Browsers have no nanosecond clock:
 *  performance.now() is coarsened to 100 µs unless the page is cross-origin isolated. */
export const nowMs = () => performance.timeOrigin + performance.now();

/** JSON.parse, except that `t_emit_ns` (19 digits, beyond the 2^53 a JS number holds exactly)
 *  becomes a BigInt read from its source text, where the browser offers it (Chrome 114+). */
export function parseJSON(text) {
  return JSON.parse(text, (key, value, context) =>
    key === "t_emit_ns" && context?.source ? BigInt(context.source) : value);
}

/** A token object in either envelope (PROTOCOL.md "The token object") -> {stream, seq, t_emit_ns, text}. */
export function readToken(obj) {
  if (obj.pushlab) {  // envelope=openai: a chat.completion.chunk with pushlab's ids beside it
    const {stream, seq, t_emit_ns} = obj.pushlab;
    return {stream, seq, t_emit_ns, text: obj.choices[0].delta.content ?? ""};
  }
  return {stream: obj.stream, seq: obj.seq, t_emit_ns: obj.t_emit_ns, text: obj.text};
}

/** Bytes of a string in UTF-8, without allocating an encoded copy. */
export function utf8Length(text) {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) { n += 4; i++; }  // a surrogate pair: one 4-byte character
    else n += 3;
  }
  return n;
}

/** Generation parameters as a query string: tokens=64&rate=20&... */
export const query = (params) => new URLSearchParams(params).toString();

/** A response body as [chunk, receive time] pairs, stamped when each read completes. */
export async function* chunks(response) {
  const reader = response.body.getReader();
  try {
    for (;;) {
      const {done, value} = await reader.read();  // rejects with a TypeError if the connection breaks
      if (done) return;
      yield [value, nowMs()];
    }
  } finally {
    reader.cancel().catch(() => {});  // we stopped reading early (end marker seen): release it
  }
}

/** Server-sent events, as the WHATWG HTML standard parses them (section 9.2.6, "Interpreting
 *  an event stream"): bytes in, events out, nothing else. EventSource does this inside the
 *  browser; a fetch() client has to do it itself. */
export class SSEParser {
  constructor() {
    this.decoder = new TextDecoder();  // UTF-8; also drops the one leading BOM the spec allows
    this.rest = "";            // an unterminated line, waiting for its end
    this.afterCR = false;      // the last chunk ended in CR: an LF opening the next one pairs with it
    this.data = "";            // the spec's data buffer
    this.type = "";            // event type buffer
    this.idBuffer = "";        // last event ID buffer
    this.lastEventId = "";     // committed at each dispatch: what a reconnect sends as Last-Event-ID
    this.retry = null;         // the server's `retry:` in ms
  }

  feed(bytes) {
    let text = this.decoder.decode(bytes, {stream: true});  // a character split across chunks waits
    if (this.afterCR && text.startsWith("\n")) text = text.slice(1);
    if (text) this.afterCR = text.endsWith("\r");
    const lines = (this.rest + text).split(/\r\n|\r|\n/);   // lines end at CRLF, LF or CR
    this.rest = lines.pop();
    const events = [];
    for (const line of lines) this.line(line, events);
    return events;
  }

  line(line, events) {
    if (line === "") return this.dispatch(events);  // a blank line dispatches the event
    if (line.startsWith(":")) return;               // a comment: the server's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data += value + "\n";
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.idBuffer = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  dispatch(events) {
    this.lastEventId = this.idBuffer;  // committed even for a block without data (our opening block)
    if (this.data !== "") {
      events.push({type: this.type || "message", data: this.data.slice(0, -1), lastEventId: this.lastEventId});
    }
    this.data = "";
    this.type = "";
  }
}

/** NDJSON: bytes in, complete LF-terminated lines out (empty lines, the keep-alives, skipped). */
export class LineSplitter {
  constructor() {
    this.decoder = new TextDecoder();
    this.rest = "";
  }

  feed(bytes) {
    const lines = (this.rest + this.decoder.decode(bytes, {stream: true})).split("\n");
    this.rest = lines.pop();
    return lines.filter((line) => line !== "");
  }
}
